"""The demo's pictures and its one-page summary, drawn with Pillow (no plotting library needed).

curve_png("run/metrics.jsonl", "training_curve.png")
confusion_png(matrix, classnames, "confusion.png")
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from PIL import Image, ImageDraw

_W, _H, _PAD = 760, 420, 56


def _axes(draw: ImageDraw.ImageDraw, title: str, xlabel: str, ylabel: str) -> None:
    draw.rectangle((_PAD, _PAD // 2, _W - _PAD // 2, _H - _PAD), outline=(0, 0, 0))
    draw.text((_PAD, 6), title, fill=(0, 0, 0))
    draw.text(((_W - len(xlabel) * 6) // 2, _H - 20), xlabel, fill=(0, 0, 0))
    draw.text((4, _PAD // 2 - 14), ylabel, fill=(0, 0, 0))


def curve_png(metrics_jsonl: str | Path, out: str | Path) -> None:
    """Training loss (blue) and held-out zero-shot top-1 (orange) against step."""
    loss, top1 = [], []
    for line in Path(metrics_jsonl).read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            loss.append((rec["step"], rec["loss"]))
        if "eval/top-1" in rec:
            top1.append((rec["step"], rec["eval/top-1"]))
    im = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(im)
    _axes(
        draw,
        "training loss (blue, left scale) and zero-shot top-1 (orange, 0..1 right scale)",
        "step",
        "loss",
    )
    if not loss:
        im.save(out)
        return
    x_max = max(s for s, _ in loss + top1) or 1
    y_max = max(v for _, v in loss) or 1
    x0, x1, y0, y1 = _PAD, _W - _PAD // 2, _H - _PAD, _PAD // 2

    def point(step, value, top):
        return x0 + (x1 - x0) * step / x_max, y0 - (y0 - y1) * value / top

    draw.line([point(s, v, y_max) for s, v in loss], fill=(40, 90, 200), width=2)
    if len(top1) > 1:
        draw.line([point(s, v, 1.0) for s, v in top1], fill=(230, 120, 20), width=3)
    for s, v in top1[-1:]:
        draw.text(point(s, v, 1.0), f" {v:.3f}", fill=(230, 120, 20))
    for frac in (0, 0.5, 1):
        draw.text((8, y0 - (y0 - y1) * frac - 6), f"{y_max * frac:.2f}", fill=(0, 0, 0))
        draw.text((x1 + 4, y0 - (y0 - y1) * frac - 6), f"{frac:.1f}", fill=(230, 120, 20))
        draw.text((x0 + (x1 - x0) * frac - 10, y0 + 6), f"{int(x_max * frac)}", fill=(0, 0, 0))
    im.save(out)


def confusion_png(
    matrix: list[list[int]], classnames: list[str], out: str | Path, cell: int = 44
) -> None:
    """Rows: true class; columns: predicted; darker = more."""
    n = len(classnames)
    left, top = 70, 40
    im = Image.new("RGB", (left + n * cell + 10, top + n * cell + 40), "white")
    draw = ImageDraw.Draw(im)
    draw.text((left, 8), "zero-shot confusion (rows: true, columns: predicted)", fill=(0, 0, 0))
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        draw.text((4, top + i * cell + cell // 3), classnames[i], fill=(0, 0, 0))
        for j, count in enumerate(row):
            shade = 255 - int(215 * count / total)
            box = (
                left + j * cell,
                top + i * cell,
                left + (j + 1) * cell - 1,
                top + (i + 1) * cell - 1,
            )
            draw.rectangle(
                box,
                fill=(shade, shade, 255) if i == j else (255, shade, shade),
                outline=(200, 200, 200),
            )
            if count:
                draw.text((box[0] + 6, box[1] + cell // 3), str(count), fill=(0, 0, 0))
    for j, name in enumerate(classnames):
        draw.text((left + j * cell + 4, top + n * cell + 6), name[:6], fill=(0, 0, 0))
    im.save(out)


def summary_html(
    out: Path, top1: float, baseline: float, noise: dict, found: dict, seconds: float
) -> Path:
    stats = json.loads((out / "dataset" / "stats.json").read_text())
    funnel = "".join(
        f"<tr><td>{html.escape(status)}</td><td>{html.escape(reason)}</td><td>{n}</td></tr>"
        for status in ("failed", "filtered", "duplicate", "invalid")
        for reason, n in sorted(stats.get(status, {}).items())
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>webpairs demo</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto}}td{{padding:2px 10px}}</style></head><body>
<h1>webpairs demo</h1>
<p><b>Zero-shot top-1 on the held-out digits: {top1:.3f}</b>; a supervised logistic regression on the same
raw pixels scores {baseline:.3f}. The held-out digits were never in the training shards: the
decontamination stage searched the crawl for all {found.get("eval_items")} of them and removed the
copies of the {len(found.get("found", {}))} it matched ({noise.get("leaked")} leaks were planted; look-alike
digits within the perceptual-hash threshold match too, which costs a few training images, never a leak).</p>
<p>{stats["input"]} web pairs in, {stats["written"]} written in {stats["shards"]} shards. Planted noise: {html.escape(json.dumps(noise))}.
The whole demo took {seconds / 60:.1f} minutes.</p>
<h2>Funnel</h2><table><tr><th>status</th><th>reason</th><th>rows</th></tr>{funnel}</table>
<p><a href="dataset/report.html">Full curation report</a> &middot; <a href="dataset/manifest.json">manifest</a>
&middot; <a href="dataset/decontamination.json">decontamination</a> &middot; <a href="zeroshot.json">zero-shot results</a>
&middot; <a href="demo.json">the figures and settings</a></p>
<h2>Training</h2><img src="training_curve.png" alt="training curve">
<h2>Zero-shot confusion</h2><img src="confusion.png" alt="confusion matrix">
</body></html>
"""
    path = out / "summary.html"
    path.write_text(page)
    return path
