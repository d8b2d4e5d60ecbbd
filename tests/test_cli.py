"""The `webpairs` console script: one clear line for user mistakes, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WEBPAIRS = str(Path(sys.executable).with_name("webpairs"))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([WEBPAIRS, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def urls(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["c"]}), path)
    return path


def _one_error_line(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_usage_lists_commands():
    proc = _run()
    assert proc.returncode == 0 and "curate" in proc.stdout and "train" in proc.stdout


def test_unknown_command():
    _one_error_line(_run("crawl"), "unknown command 'crawl'")


def test_unknown_flag(urls, tmp_path):
    _one_error_line(
        _run("curate", "--input", str(urls), "--output", str(tmp_path), "--url-column", "x"),
        "--url-column",
    )


def test_missing_input(tmp_path):
    _one_error_line(
        _run("curate", "--input", str(tmp_path / "none.parquet"), "--output", str(tmp_path)),
        "matches no file",
    )


def test_unknown_column(urls, tmp_path):
    _one_error_line(
        _run("curate", "--input", str(urls), "--output", str(tmp_path / "o"), "--url-col", "link"),
        "--url-col 'link' not in input columns: url, caption",
    )


@pytest.mark.parametrize(
    ("value", "pointer"),
    [
        (
            "webdataset",
            "webpairs always writes WebDataset shards; the image codec is --encode-format",
        ),
        ("jpg", "the image codec is --encode-format jpg"),
    ],
)
def test_img2dataset_output_format_is_refused_with_a_pointer(urls, tmp_path, value, pointer):
    # img2dataset's --output_format is the container; ours would have been the codec
    args = ("--input", str(urls), "--output", str(tmp_path / "o"), "--output-format", value)
    _one_error_line(_run("curate", *args), pointer)
    assert not (tmp_path / "o").exists()


def test_bad_choice_is_argparse_error(urls, tmp_path):
    proc = _run(
        "curate", "--input", str(urls), "--output", str(tmp_path / "o"), "--resize-mode", "squash"
    )
    assert (
        proc.returncode == 2 and "Traceback" not in proc.stderr and "invalid choice" in proc.stderr
    )


def test_python_dash_m_pipeline_curate_help():
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.curate", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--resize-mode" in proc.stdout and "--runner" in proc.stdout
