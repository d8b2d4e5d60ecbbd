"""The demo's figures: every logged step of the run plotted, in a picture one can read."""

import json

import numpy as np
from PIL import Image

from pipeline.demo.plots import confusion_png, curve_png, training_series


def _metrics(path, steps=200, log_every=5, eval_every=20):
    lines = []
    for step in range(log_every, steps + 1, log_every):
        lines.append({"step": step, "loss": 4.0 / step**0.3, "lr": 4e-3 * min(1, step / 100)})
        if step % eval_every == 0:
            lines.append({"step": step, "eval/top-1": step / steps, "eval/top-5": 1.0})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_every_logged_step_is_a_point_of_the_curve(tmp_path):
    series = training_series(_metrics(tmp_path / "metrics.jsonl"))
    assert [s for s, _ in series["loss"]] == list(range(5, 201, 5))
    assert [s for s, _ in series["lr"]] == list(range(5, 201, 5))
    assert series["lr"][-1] == (200, 4e-3)
    assert series["top1"] == [(s, s / 200) for s in range(20, 201, 20)]


def test_the_curve_and_the_confusion_matrix_are_drawn_at_a_readable_size(tmp_path):
    curve = curve_png(_metrics(tmp_path / "metrics.jsonl"), tmp_path / "curve.png", baseline=0.9)
    with Image.open(curve) as im:
        assert im.size == (990, 704)
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 50  # lines, text and their anti-aliasing: not a blank canvas
    names = ["zero", "one", "two"]
    matrix = [[9, 1, 0], [0, 10, 0], [2, 0, 8]]
    with Image.open(confusion_png(matrix, names, tmp_path / "confusion.png")) as im:
        assert im.size == (770, 682)
