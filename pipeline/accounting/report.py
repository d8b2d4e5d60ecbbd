"""The funnel report: distributions computed in Beam, `report.html` with inline SVG plots, and
`webpairs inspect OUTPUT` for the terminal.

    webpairs inspect out/
"""

from __future__ import annotations

import argparse
import collections
import html
import json
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.io.layout import FOUND_NAME, MANIFEST_NAME, REPORT_NAME, STATS_NAME, join_path
from schemas import Manifest, ManifestError, Stats, Status

_SIDE_BUCKETS = (0, 64, 128, 256, 512, 1024, 2048, 4096)


_RATIO_BUCKETS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


_CHAR_BUCKETS = (0, 1, 10, 20, 50, 100, 200, 500, 1000)


_WORD_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


_CLUSTER_BUCKETS = (2, 3, 4, 5, 10, 100, 1000)


def bucket(value: float, edges: tuple) -> str:
    """Label of the half-open bucket [edge_i, edge_i+1) holding value; the last is open-ended."""
    label = f"<{edges[0]}"
    for i, edge in enumerate(edges):
        if value >= edge:
            label = f"{edge}+" if i == len(edges) - 1 else f"{edge}-{edges[i + 1]}"
    return label


def row_features(row: dict) -> list[tuple[str, str]]:
    """(distribution, bucket) pairs of one written row."""
    w, h = row.get("original_width") or 0, row.get("original_height") or 0
    caption = row.get("caption") or ""
    out = [
        ("original smaller side (px)", bucket(min(w, h), _SIDE_BUCKETS)),
        ("aspect ratio", bucket(max(w, h) / max(1, min(w, h)), _RATIO_BUCKETS)),
        ("caption length (characters)", bucket(len(caption), _CHAR_BUCKETS)),
        ("caption length (words)", bucket(len(caption.split()), _WORD_BUCKETS)),
    ]
    if row.get("language"):
        out.append(("caption language", row["language"]))
    return out


class CounterCombineFn(beam.CombineFn):
    """Elements -> {label(element): count} with small accumulators; subclasses choose the label."""

    def label(self, element):
        return element

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, element):
        acc[self.label(element)] += 1
        return acc

    def merge_accumulators(self, accs):
        out = collections.Counter()
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc):
        return dict(acc)


class DistributionsFn(CounterCombineFn):
    """Written rows, or ready (distribution, bucket) pairs -> {distribution: {bucket: count}}.

    Features are taken inside the combiner: one element per row, not one per histogram."""

    def add_input(self, acc, element):
        for pair in (element,) if isinstance(element, tuple) else row_features(element):
            acc[pair] += 1
        return acc

    def extract_output(self, acc):
        out: dict[str, dict[str, int]] = {}
        for (name, b), n in sorted(
            acc.items(), key=lambda kv: (kv[0][0], _bucket_start(kv[0][1]), kv[0][1])
        ):
            out.setdefault(name, {})[b] = n
        return out


def _bucket_start(label: str) -> float:
    head = label.lstrip("<").split("-")[0].rstrip("+")
    try:
        return float(head) - (0.5 if label.startswith("<") else 0)
    except ValueError:
        return float("inf")  # non-numeric buckets (languages) after numeric ones, alphabetically


class Distributions(beam.PTransform):
    """{"written": written rows, "results": all rows} -> one dict of histograms."""

    def expand(self, pcolls):
        clusters = (
            pcolls["results"]
            | "Duplicates"
            >> beam.Filter(lambda r: r["status"] == Status.DUPLICATE and r.get("duplicate_of"))
            | "Survivor" >> beam.Map(lambda r: r["duplicate_of"])
            | "ClusterSize" >> beam.combiners.Count.PerElement()
            | "ClusterBucket"
            >> beam.Map(lambda kv: ("duplicate cluster size", bucket(kv[1] + 1, _CLUSTER_BUCKETS)))
        )
        return (
            (pcolls["written"], clusters)
            | "AllFeatures" >> beam.Flatten()
            | "Histograms" >> beam.CombineGlobally(DistributionsFn())
        )


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


def _svg_bars(items: list[tuple[str, int]], width: int = 560, bar: int = 18) -> str:
    peak = max((n for _, n in items), default=1) or 1
    height = bar * len(items) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
    ]
    for i, (label, n) in enumerate(items):
        y = i * bar + 2
        w = max(1, int((width - 260) * n / peak))
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(str(label))}</text>')
        parts.append(f'<rect x="180" y="{y}" width="{w}" height="{bar - 4}" fill="#4a78b5"/>')
        parts.append(f'<text x="{186 + w}" y="{y + 13}" font-size="12">{n:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(stats: Stats, manifest: Manifest | None, decontamination: dict | None) -> str:
    funnel = [(f"{s}: {r}" if s != "ok" else "written", n) for s, r, n in funnel_rows(stats)]
    sections = [
        "<h2>Funnel</h2>",
        f"<p>{stats.input:,} rows in; {stats.written:,} written in {stats.shards} shards"
        + (f" ({manifest.total_bytes / 1e6:,.1f} MB)" if manifest else "")
        + ".</p>",
        _svg_bars([("input", stats.input), *funnel]),
    ]
    for name, hist in stats.distributions.items():
        sections += [f"<h2>{html.escape(name)}</h2>", _svg_bars(list(hist.items()))]
    if stats.failed_by_domain:
        top = sorted(stats.failed_by_domain.items(), key=lambda kv: -sum(kv[1].values()))[:20]
        sections += [
            "<h2>Failures by domain (top 20)</h2>",
            _svg_bars([(d, sum(r.values())) for d, r in top]),
        ]
    if decontamination:
        found = ", ".join(html.escape(k) for k in decontamination.get("found", {})) or "none"
        sections += [
            "<h2>Decontamination</h2>",
            f"<p>{len(decontamination.get('found', {}))} of {decontamination.get('eval_items')} evaluation items found "
            f"in the crawl; {decontamination.get('samples_removed', 0)} samples removed. Found: {found}</p>",
        ]
    body = "\n".join(sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>webpairs report</title>"
        "<style>body{font-family:sans-serif;max-width:760px;margin:2em auto}h2{margin-top:1.6em}</style>"
        f"</head><body><h1>webpairs report</h1>{body}</body></html>\n"
    )


def write_report(output: str) -> str:
    stats = Stats.from_json(json.dumps(_read_json(join_path(output, STATS_NAME))))
    m = _read_json(join_path(output, MANIFEST_NAME))
    manifest = Manifest.from_dict(m) if m else None
    page = render_html(stats, manifest, _read_json(join_path(output, FOUND_NAME)))
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
        lines += ["", f"{name}:"] + _text_bars(list(hist.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "webpairs inspect") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Print the funnel and distributions of a curated output."
    )
    parser.add_argument("output", help="an output folder of `webpairs curate`")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
