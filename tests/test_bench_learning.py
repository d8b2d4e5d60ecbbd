"""bench/learning.py keeps evaluation data out of every tuning path: a `--validation` dataset is
made of training digits only, and both trainers are evaluated with the same default prompts."""

import importlib.util
import json
from pathlib import Path

from trainer.prompts import DEFAULT_TEMPLATES

spec = importlib.util.spec_from_file_location(
    "bench_learning", Path(__file__).resolve().parent.parent / "bench" / "learning.py"
)
learning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning)


def test_validation_digits_are_training_digits_the_held_out_ones_never_rendered(tmp_path):
    train, held_out = learning.split(validation=False)
    web, validation = learning.split(validation=True)
    assert set(web) | set(validation) == set(train) and not set(web) & set(validation)
    assert len(held_out) == 450 and len(validation) == 337

    info = learning.make_data(tmp_path, validation=True, size=8, shards=2)
    assert info["evaluated_on"] == "validation" and not (tmp_path / "heldout").exists()
    # every image names its digit: the web's by URL, the evaluation folder's by file name
    rendered = {int(p.stem) for p in (tmp_path / "validation").glob("*/*.png")}
    for parquet in (tmp_path / "shards").glob("*.parquet"):
        import pyarrow.parquet as pq

        urls = pq.read_table(parquet, columns=["url"]).column("url").to_pylist()
        rendered |= {int(u.rsplit("/", 1)[1].split(".")[0]) for u in urls}
    assert rendered == set(train) and not rendered & set(held_out)
    assert json.loads((tmp_path / "data.json").read_text())["web_digits"] == len(web)


def test_openclip_is_evaluated_with_our_default_templates():
    assert learning.DEFAULT_TEMPLATES == DEFAULT_TEMPLATES  # a copy: it runs in another venv
