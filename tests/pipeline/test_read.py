"""ReadPairs on every input format, with Beam's TestPipeline and real files."""

import gzip
import io
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.io.url_lists import InputError, ReadConfig, ReadPairs, iter_csv_rows, resolve


def _check(cfg: ReadConfig, n_input: int, pairs, invalid_reasons, pair_field: str = "caption"):
    """Run ReadPairs and assert on what came out: `pairs` are values of `pair_field`."""
    cfg = resolve(cfg)
    with test_pipeline.TestPipeline() as p:
        res = p | ReadPairs(cfg)
        assert_that(res["input_count"], equal_to([n_input]), label="CountsEveryRow")
        assert_that(
            res["pairs"] | "Field" >> beam.Map(lambda r: r[pair_field]),
            equal_to(pairs),
            label="Pairs",
        )
        assert_that(
            res["invalid"] | "Reason" >> beam.Map(lambda r: r["reason"]),
            equal_to(invalid_reasons),
            label="Invalid",
        )


def test_csv_with_quoted_newline_and_bad_lines(tmp_path):
    path = tmp_path / "urls.csv"
    path.write_text(
        "url,caption,w\n"
        'http://a.com/1.jpg,"two\nlines, and a comma",10\n'
        "http://a.com/2.jpg,plain,20\n"
        "http://a.com/3.jpg,too,many,fields\n"
        "ftp://a.com/4.jpg,bad scheme,40\n"
    )
    cfg = ReadConfig(input=str(path), extra_cols=("w",))
    _check(cfg, 4, ["two\nlines, and a comma", "plain"], ["malformed_row", "bad_scheme"])
    _check(cfg, 4, [{"w": "10"}, {"w": "20"}], ["malformed_row", "bad_scheme"], pair_field="extra")


def test_tsv_gzipped(tmp_path):
    path = tmp_path / "urls.tsv.gz"
    with gzip.open(path, "wt") as f:
        f.write("link\ttext\nhttp://a.com/1.jpg\tone\nhttp://a.com/2.jpg\ttwo\n")
    _check(ReadConfig(input=str(path), url_col="link", caption_col="text"), 2, ["one", "two"], [])


def test_jsonl_with_malformed_lines(tmp_path):
    path = tmp_path / "urls.jsonl"
    lines = [
        {"url": "http://a.com/1.jpg", "caption": "ok"},
        {"url": "http://a.com/2.jpg", "caption": 7},
        {"url": 12, "caption": "number url"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n[1, 2]\n")
    expected = ["caption_not_string", "unparsable_url", "malformed_row", "malformed_row"]
    _check(ReadConfig(input=str(path)), 5, ["ok"], expected)


def test_txt_one_url_per_line(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("http://a.com/1.jpg\n\nhttp://a.com/2.jpg\n")
    cfg = ReadConfig(input=str(path))
    _check(cfg, 3, ["http://a.com/1.jpg", "http://a.com/2.jpg"], ["missing_url"], pair_field="url")
    _check(cfg, 3, [None, None], ["missing_url"])


def test_parquet_glob_keeps_extra_column_types(tmp_path):
    for i in range(2):
        pq.write_table(
            pa.table(
                {"URL": [f"http://a.com/{i}.jpg"], "TEXT": [f"c{i}"], "similarity": [0.25 + i]}
            ),
            tmp_path / f"part-{i}.parquet",
        )
    cfg = ReadConfig(
        input=str(tmp_path / "part-*.parquet"),
        url_col="URL",
        caption_col="TEXT",
        extra_cols=("similarity",),
    )
    assert resolve(cfg).extra_fields == (pa.field("similarity", pa.float64()),)
    _check(cfg, 2, [{"similarity": 0.25}, {"similarity": 1.25}], [], pair_field="extra")


def test_several_inputs_comma_separated(tmp_path):
    (tmp_path / "a.txt").write_text("http://a.com/1.jpg\n")
    (tmp_path / "b.txt").write_text("http://b.com/1.jpg\n")
    cfg = ReadConfig(input=f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}")
    _check(cfg, 2, ["http://a.com/1.jpg", "http://b.com/1.jpg"], [], pair_field="url")


def test_unknown_column_is_one_clear_error(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://a.com/1.jpg"], "caption": ["c"]}), path)
    with pytest.raises(InputError, match=r"--url-col 'link' not in input columns: url, caption"):
        resolve(ReadConfig(input=str(path), url_col="link"))
    with pytest.raises(InputError, match=r"--save-additional-columns 'width' not in input columns"):
        resolve(ReadConfig(input=str(path), extra_cols=("width",)))


def test_missing_input_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        resolve(ReadConfig(input=str(tmp_path / "nope-*.parquet")))


def test_iter_csv_rows_is_a_plain_generator():
    rows = list(iter_csv_rows(io.StringIO("url,caption\nhttp://a/1,x\n\nhttp://a/2,y\n"), ","))
    assert rows == [{"url": "http://a/1", "caption": "x"}, {"url": "http://a/2", "caption": "y"}]
