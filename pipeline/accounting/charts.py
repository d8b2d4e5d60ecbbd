"""The report's charts as inline SVG (no plotting library on the workers or the driver): the
funnel as a waterfall from input to written rows, and labelled horizontal bar charts with an
axis, grid lines and counts.

    funnel_svg(stats)
    bars_svg([("0-64", 3), ("64-128", 0), ("128-256", 9)], total=12)
"""

from __future__ import annotations

import html
import math

from schemas import Stats, Status

STATUS_COLOURS = {
    Status.OK: "#3b6fb6",
    Status.INVALID: "#7f8c8d",
    Status.FAILED: "#c0392b",
    Status.FILTERED: "#d9822b",
    Status.DUPLICATE: "#8e44ad",
}
# What a row has passed once it is past a status's step, in the funnel's order.
_FUNNEL_STEPS = (
    (Status.INVALID, "valid rows"),
    (Status.FAILED, "downloaded and decoded"),
    (Status.FILTERED, "passed the filters"),
    (Status.DUPLICATE, "unique: written"),
)
_FONT = 13  # px
_ROW = 24  # px per bar
_WIDTH = 720


def nice_ticks(peak: float, most: int = 5) -> list[float]:
    """0 and round steps (1, 2 or 5 x 10^k) up to at least `peak`, at most `most` + 1 ticks."""
    if peak <= 0:
        return [0, 1]
    raw = peak / most
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    n = math.ceil(peak / step - 1e-9)
    return [i * step for i in range(n + 1)]


def _tick_label(v: float) -> str:
    return f"{v:,.0f}" if v == int(v) else f"{v:g}"


def _text(x, y, text, anchor="start", size=_FONT, fill="#222", weight="normal") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="{fill}" font-weight="{weight}">{html.escape(str(text))}</text>'
    )


def _label_width(labels: list[str]) -> int:
    return min(300, 16 + max((len(s) for s in labels), default=4) * 7)


def _axis(x0: float, x1: float, top: float, bottom: float, ticks: list[float], xlabel: str):
    """Grid lines at the ticks from `top` to `bottom`, their labels and the axis label below."""
    parts = []
    span = ticks[-1] or 1
    for t in ticks:
        x = x0 + (x1 - x0) * t / span
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd" stroke-width="1"/>'
        )
        parts.append(_text(x, bottom + 16, _tick_label(t), "middle", _FONT - 1, "#555"))
    parts.append(
        f'<line x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}" stroke="#888" stroke-width="1"/>'
    )
    parts.append(_text((x0 + x1) / 2, bottom + 34, xlabel, "middle", _FONT - 1, "#555"))
    return parts


def _svg(height: float, parts: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{_WIDTH}" '
        f'height="{height:.0f}" viewBox="0 0 {_WIDTH} {height:.0f}" role="img" '
        f'aria-label="{html.escape(title)}" font-family="sans-serif">' + "".join(parts) + "</svg>"
    )


def _share(n: int, total: int | None) -> str:
    return f"{n:,} ({100 * n / total:.1f} %)" if total else f"{n:,}"


def bars_svg(
    items: list[tuple[str, int]],
    *,
    total: int | None = None,
    colours: list[str] | None = None,
    xlabel: str = "rows",
    title: str = "",
) -> str:
    """Horizontal bars, one per (label, count) in the order given; an empty one shows as 0.
    `total`: each count is also shown as a share of it."""
    labels = [str(k) for k, _ in items]
    x0 = _label_width(labels)
    x1 = _WIDTH - 130  # room for "1,234,567 (12.3 %)"
    ticks = nice_ticks(max((n for _, n in items), default=0))
    top, bottom = 6, 6 + _ROW * len(items)
    parts = _axis(x0, x1, top, bottom, ticks, xlabel)
    for i, (label, n) in enumerate(items):
        y = top + i * _ROW
        w = (x1 - x0) * n / ticks[-1]
        colour = colours[i] if colours else STATUS_COLOURS[Status.OK]
        parts.append(_text(x0 - 8, y + _ROW / 2 + 4, label, "end"))
        if n:
            parts.append(
                f'<rect x="{x0}" y="{y + 3}" width="{max(w, 1.5):.1f}" height="{_ROW - 6}" '
                f'fill="{colour}"><title>{html.escape(label)}: {n:,}</title></rect>'
            )
        parts.append(_text(x0 + w + 6, y + _ROW / 2 + 4, _share(n, total), size=_FONT - 1))
    return _svg(bottom + 44, parts, title or xlabel)


def funnel_steps(stats: Stats) -> list[tuple[str, int, str, int]]:
    """(step, rows past it, status removed at it, rows removed) from input to written: each
    step's rows = the previous step's rows - its removals (the statuses are disjoint, so the
    counts hold whatever order the job ran its stages in)."""
    steps = []
    left = stats.input
    for status, name in _FUNNEL_STEPS:
        removed = sum(getattr(stats, status).values())
        left -= removed
        steps.append((name, left, status, removed))
    return steps


def funnel_svg(stats: Stats) -> str:
    """The funnel as a waterfall: a bar per step, the rows that go on (blue) beside those the
    step removed (its status's colour), every bar on one scale from the input down."""
    steps = funnel_steps(stats)
    labels = ["input", *(name for name, *_ in steps)]
    x0 = _label_width(labels)
    x1 = _WIDTH - 190
    ticks = nice_ticks(stats.input)
    scale = (x1 - x0) / (ticks[-1] or 1)
    top, bottom = 6, 6 + _ROW * len(labels)
    parts = _axis(x0, x1, top, bottom, ticks, "rows")
    ok = STATUS_COLOURS[Status.OK]
    rows = [("input", stats.input, None, 0), *steps]
    for i, (label, left, status, removed) in enumerate(rows):
        y = top + i * _ROW
        parts.append(
            _text(
                x0 - 8,
                y + _ROW / 2 + 4,
                label,
                "end",
                weight="bold" if i == 0 or i == len(rows) - 1 else "normal",
            )
        )
        w = left * scale
        parts.append(
            f'<rect x="{x0}" y="{y + 3}" width="{max(w, 1.5):.1f}" height="{_ROW - 6}" fill="{ok}">'
            f"<title>{html.escape(label)}: {left:,}</title></rect>"
        )
        note = f"{left:,}"
        if status is not None:
            wr = removed * scale
            if removed:
                parts.append(
                    f'<rect x="{x0 + w:.1f}" y="{y + 3}" width="{max(wr, 1.5):.1f}" '
                    f'height="{_ROW - 6}" fill="{STATUS_COLOURS[status]}">'
                    f"<title>{status}: {removed:,}</title></rect>"
                )
            note += f"  (−{removed:,} {status})" if removed else ""
            w += wr
        parts.append(_text(x0 + w + 6, y + _ROW / 2 + 4, note, size=_FONT - 1))
    return _svg(bottom + 44, parts, "funnel")


def removals_svg(stats: Stats) -> str:
    """Every reason a row was not written, biggest first within each status, coloured by
    status, with its share of the input."""
    items, colours = [], []
    for status in (Status.INVALID, Status.FAILED, Status.FILTERED, Status.DUPLICATE):
        for reason, n in sorted(getattr(stats, status).items(), key=lambda kv: (-kv[1], kv[0])):
            items.append((f"{status}: {reason}", n))
            colours.append(STATUS_COLOURS[status])
    if not items:
        return ""
    return bars_svg(items, total=stats.input, colours=colours, title="removals by reason")
