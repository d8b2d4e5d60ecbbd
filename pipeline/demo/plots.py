"""The demo's pictures, drawn with matplotlib (the `demo` extra), and its one-page summary.

curve_png("run/metrics.jsonl", "training_curve.png", baseline=0.958)
confusion_png(matrix, classnames, "confusion.png")
"""

from __future__ import annotations

import html
import json
from pathlib import Path

_FONT = 11  # pt, at 110 dpi: readable in a browser at 100 %
_DPI = 110
_BLUE, _ORANGE, _GREEN, _GREY = "#3b6fb6", "#d9822b", "#2e8b57", "#666666"


def training_series(metrics_jsonl: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged step of a run's metrics.jsonl -> {"loss", "lr", "top1"}: (step, value)
    lists in step order (top1: the zero-shot evaluations during training)."""
    names = {"loss": "loss", "lr": "lr", "top1": "eval/top-1"}
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in names}
    for line in Path(metrics_jsonl).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        for name, field in names.items():
            if record.get(field) is not None:
                series[name].append((record["step"], float(record[field])))
    return {name: sorted(points) for name, points in series.items()}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _style(ax) -> None:
    ax.grid(True, color="#e3e3e3", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=_FONT - 1)


def curve_png(
    metrics_jsonl: str | Path,
    out: str | Path,
    baseline: float | None = None,
    evaluated_on: str = "held-out digits",
) -> Path:
    """Training loss and zero-shot top-1 against step (top), the learning rate under it
    (bottom); `baseline`: a top-1 to compare with, drawn dashed."""
    series = training_series(metrics_jsonl)
    fig = _figure(9, 6.4)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.2))
    fig.suptitle("Training the demo's CLIP", fontsize=_FONT + 3)
    if series["loss"]:
        steps, values = zip(*series["loss"])
        loss_ax.plot(steps, values, color=_BLUE, linewidth=1.6, marker="o", markersize=2.5,
                     label="contrastive loss (left axis)")  # fmt: skip
    loss_ax.set_ylabel("contrastive loss", fontsize=_FONT, color=_BLUE)
    loss_ax.set_ylim(bottom=0)
    _style(loss_ax)
    top1_ax = loss_ax.twinx()
    top1_ax.set_ylim(0, 1.02)
    top1_ax.set_ylabel(f"zero-shot top-1 on {evaluated_on}", fontsize=_FONT, color=_ORANGE)
    top1_ax.tick_params(labelsize=_FONT - 1)
    if series["top1"]:
        steps, values = zip(*series["top1"])
        top1_ax.plot(steps, values, color=_ORANGE, linewidth=2, marker="o", markersize=5,
                     label="zero-shot top-1 (right axis)")  # fmt: skip
        top1_ax.annotate(f"{values[-1]:.3f}", (steps[-1], values[-1]), xytext=(-4, -16),
                         textcoords="offset points", ha="right", color=_ORANGE,
                         fontsize=_FONT)  # fmt: skip
    if baseline is not None:
        top1_ax.axhline(baseline, color=_GREY, linestyle="--", linewidth=1.2,
                        label=f"logistic regression on raw pixels ({baseline:.3f})")  # fmt: skip
    handles = [h for ax in (loss_ax, top1_ax) for h in ax.get_legend_handles_labels()[0]]
    if handles:  # under the axes: the curves keep all of their area
        fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=_FONT - 1,
                   frameon=False)  # fmt: skip
    if series["lr"]:
        steps, values = zip(*series["lr"])
        lr_ax.plot(steps, values, color=_GREEN, linewidth=1.6)
    lr_ax.set_ylabel("learning rate", fontsize=_FONT)
    lr_ax.set_xlabel("training step", fontsize=_FONT)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    lr_ax.set_ylim(bottom=0)
    _style(lr_ax)
    fig.savefig(out)
    return Path(out)


def confusion_png(
    matrix: list[list[int]],
    classnames: list[str],
    out: str | Path,
    evaluated_on: str = "held-out digits",
) -> Path:
    """Rows: true class; columns: predicted; each cell's count written in it."""
    import numpy as np

    counts = np.asarray(matrix)
    share = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    fig = _figure(7, 6.2)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(counts.shape):
        if counts[i, j]:
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=_FONT - 1,
                    color="white" if share[i, j] > 0.55 else "black")  # fmt: skip
    ticks = range(len(classnames))
    ax.set_xticks(ticks, classnames, rotation=45, ha="right", fontsize=_FONT - 1)
    ax.set_yticks(ticks, classnames, fontsize=_FONT - 1)
    ax.set_xlabel("predicted class", fontsize=_FONT)
    ax.set_ylabel("true class", fontsize=_FONT)
    ax.set_title(f"Zero-shot confusion on the {evaluated_on}", fontsize=_FONT + 2)
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label("share of the true class", fontsize=_FONT - 1)
    fig.savefig(out)
    return Path(out)


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
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto}}td{{padding:2px 10px}}
img{{max-width:100%;height:auto}}</style></head><body>
<h1>webpairs demo</h1>
<p><b>Zero-shot top-1 on the held-out digits: {top1:.3f}</b>; a supervised logistic regression on the same
raw pixels scores {baseline:.3f}. The held-out digits were never in the training shards: the
decontamination stage searched the crawl for all {found.get("eval_items")} of them and removed the
copies of the {len(found.get("found", {}))} it matched ({noise.get("leaked")} leaks were planted; look-alike
digits within the perceptual-hash threshold match too, which costs a few training images, never a leak).</p>
<p>{stats["input"]} web pairs in, {stats["written"]} written in {stats["shards"]} shards. Planted noise: {html.escape(json.dumps(noise))}.
The whole demo took {seconds / 60:.1f} minutes.</p>
<h2>Funnel</h2><table><tr><th>status</th><th>reason</th><th>rows</th></tr>{funnel}</table>
<p><a href="dataset/report.html">The curation report</a> (the funnel, the distributions, and an
audit gallery of what curation removed: near duplicates beside their survivors, leaked digits beside
the held-out digits they copy) &middot; <a href="dataset/manifest.json">manifest</a>
&middot; <a href="dataset/decontamination.json">decontamination</a> &middot; <a href="zeroshot.json">zero-shot results</a>
&middot; <a href="demo.json">the figures and settings</a></p>
<h2>Training</h2><img src="training_curve.png" alt="training curve">
<h2>Zero-shot confusion</h2><img src="confusion.png" alt="confusion matrix">
</body></html>
"""
    path = out / "summary.html"
    path.write_text(page)
    return path
