"""The report of an output: `report.html` (the funnel, the removals by reason, the distributions
as charts, decontamination, and the audit gallery of what curation removed), and
`webpairs inspect OUTPUT` for the terminal.

    webpairs inspect out/
    webpairs inspect out/ --gallery     # the gallery's sampled rows, with their thumbnails' paths
"""

from __future__ import annotations

import argparse
import html
import json
import sys

from apache_beam.io.filesystems import FileSystems

from pipeline.accounting.charts import bars_svg, funnel_svg, removals_svg
from pipeline.accounting.distributions import histogram_bins
from pipeline.accounting.gallery import CLIP_SECTIONS, read_gallery
from pipeline.io.layout import (
    FOUND_NAME,
    MANIFEST_NAME,
    REPORT_DIR,
    REPORT_NAME,
    STATS_NAME,
    join_path,
)
from schemas import Manifest, ManifestError, Reason, Stats, Status

_CLIP_TITLES = {
    "clip_score:kept_lowest": "CLIP score: the lowest-scored pairs kept",
    "clip_score:kept_highest": "CLIP score: the highest-scored pairs kept",
    "clip_score:dropped_highest": "CLIP score: the highest-scored pairs dropped",
    "clip_score:dropped_lowest": "CLIP score: the lowest-scored pairs dropped",
}
_DISPLAY = 96  # px: smaller thumbnails are enlarged to this, their pixels kept sharp

_STYLE = """
body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin:1.4em 0 .4em}h3 .count{font-weight:normal;color:#666;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{box-sizing:border-box;margin:0;padding:8px;border:1px solid #ddd;border-radius:4px;width:174px;font-size:12px}
figure.pair{width:284px}
.imgs{display:flex;gap:8px;align-items:flex-start}
.imgs div{text-align:center}
.tag{display:block;color:#555;font-size:11px}
img.thumb{background:#f3f3f3;border:1px solid #ccc}
img.pixelated{image-rendering:pixelated}
.missing{display:inline-block;width:96px;height:96px;background:#f3f3f3;color:#888;font-size:11px;line-height:96px}
figcaption{margin-top:6px;word-wrap:break-word}
.detail{color:#555}
.key{color:#777;word-break:break-all}
table.rows{border-collapse:collapse;font-size:12px}
table.rows td,table.rows th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
"""


def _read_json(path: str):
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


def funnel_rows(stats: Stats) -> list[tuple[str, str, int]]:
    """(status, reason, count), biggest first within each status, written first."""
    rows = [("ok", "written", stats.written)]
    for status in (Status.FAILED, Status.FILTERED, Status.DUPLICATE, Status.INVALID):
        for reason, n in sorted(getattr(stats, status).items(), key=lambda kv: (-kv[1], kv[0])):
            rows.append((status, reason, n))
    return rows


def _esc(value) -> str:
    return html.escape(str(value))


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


def _img(shown: dict | None, tag: str, alt: str) -> str:
    """A thumbnail with its tag under it; a placeholder box where none could be made."""
    if not shown or not shown.get("thumb"):
        return (
            f'<div><span class="missing">no image</span><span class="tag">{_esc(tag)}</span></div>'
        )
    w, h = shown.get("thumb_size") or (_DISPLAY, _DISPLAY)
    scale = max(1.0, _DISPLAY / max(w, h, 1))  # small images enlarged to one size, to compare
    cls = "thumb pixelated" if scale > 1 else "thumb"
    return (
        f'<div><img class="{cls}" src="{_esc(shown["thumb"])}" width="{round(w * scale)}" '
        f'height="{round(h * scale)}" alt="{_esc(alt)}" loading="eager">'
        f'<span class="tag">{_esc(tag)}</span></div>'
    )


def _caption(row: dict) -> str:
    caption = row.get("caption")
    return f"“{_esc(caption)}”" if caption else "<i>no caption</i>"


def _figure(item: dict) -> str:
    """One sampled row: its image beside the survivor it duplicates or the evaluation image it
    matched, with the caption(s) and what decided it."""
    tag = "kept" if item.get("status") == Status.OK else "removed"
    images = [_img(item, tag if not item.get("uncurated") else "not downloaded", "sample")]
    lines = [_caption(item)]
    survivor, found = item.get("survivor"), item.get("eval")
    if survivor:
        images.append(_img(survivor, "survivor", "the survivor it duplicates"))
        lines.append(f"survivor: {_caption(survivor)}")
        if item.get("distances"):
            bits = item["distances"]
            d = ", ".join(f"{h} {bits[h]} bits" for h in ("phash", "dhash") if h in bits)
            lines.append(f"<b>hash distance: {_esc(d)}</b>")
    if found:  # the detail names the item and how it matched
        images.append(_img(found, "evaluation image", "the evaluation image it matched"))
    if item.get("clip_score") is not None:
        lines.append(f"<b>clip_score {item['clip_score']:.4f}</b>")
    if item.get("error"):
        lines.append(f'<span class="detail">{_esc(item["error"])}</span>')
    lines.append(f'<span class="key">key {_esc(item["key"])}</span>')
    cls = "pair" if len(images) > 1 else "single"
    return (
        f'<figure class="{cls}"><div class="imgs">{"".join(images)}</div>'
        f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
    )


def _rows_table(items: list[dict]) -> str:
    """Rows with no image (failed downloads, invalid rows): their URL and what went wrong."""
    rows = "".join(
        f"<tr><td>{_esc(it.get('url') or '')}</td><td>{_esc(it.get('error') or '')}</td></tr>"
        for it in items
    )
    return f'<table class="rows"><tr><th>url</th><th>detail</th></tr>{rows}</table>'


def _section_title(section: str, stats: Stats) -> tuple[str, int | None]:
    if section in _CLIP_TITLES:
        return _CLIP_TITLES[section], None
    status, _, reason = section.partition(":")
    return f"{status}: {reason}", getattr(stats, status, {}).get(reason)


def gallery_html(gallery: dict, stats: Stats) -> str:
    """The audit gallery: a section per removal reason (and per CLIP-score extreme)."""
    order = {s: i for i, (s, *_) in enumerate(CLIP_SECTIONS)}
    rank = [Status.DUPLICATE, Status.FILTERED, Status.FAILED, Status.INVALID]

    def place(section: dict) -> tuple:
        name = section["section"]
        status = name.partition(":")[0]
        first = rank.index(status) if status in rank else len(rank) + order.get(name, 0)
        return first, name

    parts = [
        '<section id="gallery"><h2>Audit gallery</h2>',
        f"<p>What curation removed, to check by eye: up to {gallery['per_reason']} rows per "
        f"removal reason, a sample seeded by {gallery['seed']} (the same rows on every run). "
        "A duplicate stands beside the sample that survived in the end (a chain of duplicates "
        "followed to it), with the hash distances between the two; a contaminated sample beside "
        "the evaluation image it matched. Thumbnails are in "
        f"<code>{REPORT_DIR}/</code> beside this page.</p>",
    ]
    sections = sorted(gallery.get("sections", []), key=place)
    if not sections:
        parts.append("<p>Nothing was removed.</p>")
    for section in sections:
        title, total = _section_title(section["section"], stats)
        items = section["items"]
        rows = f"{total:,} row{'s' if total != 1 else ''}, " if total else ""
        count = f"{rows}{len(items)} shown"
        parts.append(
            f'<section class="reason" id="gallery-{_anchor(section["section"])}">'
            f'<h3>{_esc(title)} <span class="count">({count})</span></h3>'
        )
        if any(it.get("thumb") or it.get("survivor") or it.get("eval") for it in items):
            parts.append('<div class="grid">' + "".join(_figure(it) for it in items) + "</div>")
        else:
            parts.append(_rows_table(items))
        parts.append("</section>")
    parts.append("</section>")
    return "\n".join(parts)


def _decontamination_html(found: dict) -> str:
    names = ", ".join(_esc(k) for k in found.get("found", {})) or "none"
    return (
        '<section id="decontamination"><h2>Decontamination</h2>'
        f"<p>{len(found.get('found', {}))} of {found.get('eval_items')} evaluation items found "
        f"in the crawl; {found.get('samples_removed', 0)} samples removed. Found: {names}</p>"
        "</section>"
    )


def render_html(
    stats: Stats,
    manifest: Manifest | None,
    decontamination: dict | None,
    gallery: dict | None = None,
) -> str:
    size = f" ({manifest.total_bytes / 1e6:,.1f} MB)" if manifest else ""
    sections = [
        '<section id="funnel"><h2>Funnel</h2>',
        f"<p>{stats.input:,} rows in; {stats.written:,} written in {stats.shards} shards{size}. "
        "Each row that was not written was removed at one step, for one reason.</p>",
        funnel_svg(stats),
        "</section>",
    ]
    removals = removals_svg(stats)
    if removals:
        sections += [
            '<section id="removals"><h2>Removals by reason</h2>',
            "<p>Share of the input rows.</p>",
            removals,
            "</section>",
        ]
    if stats.distributions:
        sections.append('<section id="distributions"><h2>Distributions of the written rows</h2>')
        for name, hist in stats.distributions.items():
            bins = histogram_bins(name, hist)
            total = sum(n for _, n in bins)
            sections += [
                f'<h3 id="dist-{_anchor(name)}">{_esc(name)}</h3>',
                bars_svg(bins, total=total, xlabel="written rows", title=name),
            ]
        sections.append("</section>")
    if stats.failed_by_domain:
        top = sorted(stats.failed_by_domain.items(), key=lambda kv: -sum(kv[1].values()))[:20]
        sections += [
            '<section id="failed-domains"><h2>Failures by domain (top 20)</h2>',
            bars_svg(
                [(d, sum(r.values())) for d, r in top],
                colours=["#c0392b"] * len(top),
                xlabel="failed rows",
            ),
            "</section>",
        ]
    if decontamination:
        sections.append(_decontamination_html(decontamination))
    if gallery is not None:
        sections.append(gallery_html(gallery, stats))
    body = "\n".join(sections)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>webpairs report</title><style>{_STYLE}</style></head>"
        f"<body><h1>webpairs report</h1>{body}</body></html>\n"
    )


def write_report(output: str) -> str:
    stats = Stats.from_json(json.dumps(_read_json(join_path(output, STATS_NAME))))
    m = _read_json(join_path(output, MANIFEST_NAME))
    manifest = Manifest.from_dict(m) if m else None
    found = _read_json(join_path(output, FOUND_NAME))
    page = render_html(stats, manifest, found, read_gallery(output))
    path = join_path(output, REPORT_NAME)
    with FileSystems.create(path) as f:
        f.write(page.encode("utf-8"))
    return path


def _text_bars(items: list[tuple[str, int]], width: int = 40) -> list[str]:
    peak = max((n for _, n in items), default=1) or 1
    label_w = max((len(str(k)) for k, _ in items), default=0)
    return [
        f"  {str(k):<{label_w}}  {n:>10,}  {'#' * max(1 if n else 0, round(width * n / peak))}"
        for k, n in items
    ]


def render_text(stats: Stats) -> str:
    lines = [
        f"input {stats.input:,} rows -> written {stats.written:,} in {stats.shards} shards",
        "",
        "funnel:",
    ]
    lines += _text_bars(
        [(f"{s}: {r}" if s != "ok" else "written", n) for s, r, n in funnel_rows(stats)]
    )
    for name, hist in stats.distributions.items():
        lines += ["", f"{name}:"] + _text_bars(histogram_bins(name, hist))
    return "\n".join(lines) + "\n"


def render_gallery_text(gallery: dict, output: str) -> str:
    """The gallery's sampled rows, a line each, with the paths of their thumbnails."""

    def where(shown: dict | None) -> str:
        return join_path(output, shown["thumb"]) if shown and shown.get("thumb") else "no image"

    lines = [f"audit gallery (seed {gallery['seed']}, up to {gallery['per_reason']} per reason):"]
    for section in gallery.get("sections", []):
        lines += ["", f"{section['section']}:"]
        for it in section["items"]:
            detail = f" [{it['error']}]" if it.get("error") else ""
            score = (
                f" clip_score {it['clip_score']:.4f}" if it.get("clip_score") is not None else ""
            )
            lines.append(f"  {it['key']} {it.get('caption')!r}{score}{detail}")
            lines.append(f"      image {where(it)}")
            if it.get("survivor"):
                d = ", ".join(f"{h} {n}" for h, n in sorted(it.get("distances", {}).items()))
                lines.append(
                    f"      survivor {it['survivor']['key']} ({d}) {where(it['survivor'])}"
                )
            if it.get("reason") == Reason.CONTAMINATED and it.get("eval"):
                lines.append(f"      evaluation item {it['eval']['id']} {where(it['eval'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "webpairs inspect") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Print the funnel and distributions of a curated output."
    )
    parser.add_argument("output", help="an output folder of `webpairs curate`")
    parser.add_argument(
        "--gallery",
        action="store_true",
        help="also print the audit gallery: the sampled removed rows, their survivors and the "
        "evaluation items they matched, with the paths of their thumbnails",
    )
    args = parser.parse_args(argv)
    data = _read_json(join_path(args.output, STATS_NAME))
    if data is None:
        sys.stderr.write(
            f"{prog}: error: {args.output} has no stats.json (not a finished webpairs output)\n"
        )
        return 2
    try:
        stats = Stats.from_json(json.dumps(data))
    except (ManifestError, TypeError) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    sys.stdout.write(render_text(stats))
    if args.gallery:
        gallery = read_gallery(args.output)
        if gallery is None:
            sys.stderr.write(
                f"{prog}: error: {args.output} has no audit gallery "
                "(an output written before the gallery existed)\n"
            )
            return 2
        sys.stdout.write("\n" + render_gallery_text(gallery, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
