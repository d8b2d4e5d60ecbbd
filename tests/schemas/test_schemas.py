import json

import pyarrow as pa
import pytest

from schemas import (
    Manifest,
    ManifestError,
    Reason,
    ShardEntry,
    Stats,
    StatsMismatchError,
    key_for_url,
    result_schema,
)
from schemas.sample import sample_to_members, split_member_name


def test_manifest_round_trip_and_wids_fields():
    m = Manifest(shardlist=[ShardEntry("shards/00000.tar", 3, 100, "ab", "shards/00000.parquet")])
    d = json.loads(m.to_json())
    assert d["__kind__"] == "wids-shard-index-v1" and d["shardlist"][0]["nsamples"] == 3
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_refuses_unknown_versions_clearly():
    d = json.loads(Manifest(shardlist=[]).to_json())
    d["version"] = 99
    with pytest.raises(ManifestError, match="version 99 is not supported"):
        Manifest.from_dict(d)
    with pytest.raises(ManifestError, match="not a webpairs manifest"):
        Manifest.from_dict({"shardlist": []})


def test_stats_identity():
    s = Stats(
        input=5,
        written=2,
        failed={"http_404": 1},
        duplicate={"duplicate_url": 1},
        invalid={"bad_scheme": 1},
    )
    s.check()
    s.input = 6
    with pytest.raises(StatsMismatchError, match="input 6 != outcomes 5"):
        s.check()
    assert Stats.from_json(s.to_json()) == s


def test_result_schema_appends_extras_and_refuses_clashes():
    schema = result_schema([pa.field("similarity", pa.float64())])
    assert schema.names[0] == "key" and schema.names[-1] == "similarity"
    with pytest.raises(ValueError, match="clash"):
        result_schema([pa.field("status", pa.string())])


def test_keys_are_stable_fixed_width_and_dotless():
    k = key_for_url("http://example.com/a.jpg")
    assert k == key_for_url("http://example.com/a.jpg") and len(k) == 24 and "." not in k
    assert k != key_for_url("http://example.com/b.jpg")


def test_members_follow_webdataset_naming():
    members = sample_to_members("abc", b"img", "jpg", "a caption", {"key": "abc"})
    assert [m.name for m in members] == ["abc.jpg", "abc.json", "abc.txt"]
    assert split_member_name("dir/abc.seg.png") == ("dir/abc", "seg.png")
    with pytest.raises(ValueError):
        sample_to_members("a.b", b"", "jpg", "", {})


def test_transient_reasons():
    assert (
        Reason.is_transient("timeout")
        and Reason.is_transient("http_503")
        and Reason.is_transient("http_429")
    )
    assert not Reason.is_transient("http_404") and not Reason.is_transient("decode")
