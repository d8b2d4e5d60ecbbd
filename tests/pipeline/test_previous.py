"""Runs that build on a previous output: --incremental and --retry-failed."""

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.jobs.curate import main
from schemas import Manifest, Stats


def _run(site, tmp_path, name, paths, *extra) -> tuple:
    out = tmp_path / name
    args = [
        "--output",
        str(out),
        "--allow-networks",
        "127.0.0.1/32",
        "--recipe",
        "none",
        "--retries",
        "0",
        *extra,
    ]
    if paths is not None:
        pq.write_table(
            pa.Table.from_pylist([{"url": site.url(p), "caption": p, "tag": name} for p in paths]),
            tmp_path / f"{name}.parquet",
        )
        args += ["--input", str(tmp_path / f"{name}.parquet"), "--save-additional-columns", "tag"]
    assert main(args) == 0
    return out, Stats.from_json((out / "stats.json").read_text())


def _keys(out) -> set[str]:
    return {
        k
        for p in (out / "shards").glob("*.parquet")
        for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()
    }


def test_incremental_fetches_only_new_urls(site, tmp_path):
    first = ["/img/coffee.jpg", "/img/chelsea.jpg", "/missing.jpg"]
    second = [*first, "/img/rocket.jpg", "/img/china.jpg"]
    a, sa = _run(site, tmp_path, "a", first)
    hits = dict(site.hits)
    b, sb = _run(site, tmp_path, "b", second, "--incremental", str(a))
    assert (
        sb.duplicate == {"in_previous_output": 2}
        and sb.written == 2
        and sb.failed == {"http_404": 1}
    )
    assert site.hits["/img/coffee.jpg"] == hits["/img/coffee.jpg"]  # not fetched again
    assert not (_keys(a) & _keys(b))  # together: no sample twice
    assert Manifest.from_json((b / "manifest.json").read_text()).source == str(a)


def test_retry_failed_reattempts_only_transient_failures(site, tmp_path):
    a, sa = _run(
        site,
        tmp_path,
        "a",
        ["/img/coffee.jpg", "/down-then-up/1.jpg", "/down-then-up/2.jpg", "/missing.jpg"],
    )
    assert sa.failed == {"http_503": 2, "http_404": 1}
    b, sb = _run(site, tmp_path, "b", None, "--retry-failed", str(a))  # second hit: still 503
    assert sb.input == 2 and sb.failed == {"http_503": 2}
    c, sc = _run(site, tmp_path, "c", None, "--retry-failed", str(b))  # third hit: up
    assert sc.input == 2 and sc.written == 2
    assert site.hits["/missing.jpg"] == 1  # a 404 is not transient: never retried
    rows = pq.read_table(next((c / "shards").glob("*.parquet"))).to_pylist()
    assert {r["tag"] for r in rows} == {"a"}  # pass-through columns survive the retries
    assert not (_keys(a) & _keys(c))


def test_retry_failed_with_input_is_an_error(site, tmp_path, capsys):
    a, _ = _run(site, tmp_path, "a", ["/img/coffee.jpg"])
    assert (
        main(["--retry-failed", str(a), "--input", "x.parquet", "--output", str(tmp_path / "z")])
        == 2
    )
    assert "drop --input" in capsys.readouterr().err
    assert (
        main(
            [
                "--incremental",
                str(tmp_path / "nope"),
                "--input",
                "x.parquet",
                "--output",
                str(tmp_path / "z"),
            ]
        )
        == 2
    )
