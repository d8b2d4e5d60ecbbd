import webdataset as wds

from pipeline.demo import main
from schemas import Manifest, Stats


def test_demo_curates_bundled_digits_into_readable_shards(tmp_path):
    assert main(["--output", str(tmp_path), "--digits", "40", "--image-size", "32"]) == 0
    stats = Stats.from_json((tmp_path / "dataset/stats.json").read_text())
    assert stats.written == 42  # 40 digits + 2 photos
    assert stats.failed == {"decode": 1, "http_404": 1, "not_image": 1} and stats.duplicate == {
        "duplicate_url": 1
    }
    manifest = Manifest.from_json((tmp_path / "dataset/manifest.json").read_text())
    urls = [str(tmp_path / "dataset" / s.url) for s in manifest.shardlist]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 42 and all(s["jpg"].size == (32, 32) for s in samples)
    labels = [s["json"]["label"] for s in samples]
    assert sorted(set(labels) - {-1}) == list(range(10))
