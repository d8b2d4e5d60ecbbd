"""Dedupe benchmark: rows/s, CPU, peak memory and shuffle bytes of ExactDedupe and NearDedupe
on synthetic light rows, on the DirectRunner, and how they grow with the number of rows.

    .venv/bin/python bench/dedupe.py --sizes 100000 300000 1000000 --stages none exact near_b4
    .venv/bin/python bench/dedupe.py --sizes 25000 50000 100000 --stages none near
    .venv/bin/python bench/dedupe.py --sizes 1000000 --stages near near_b8 --fast-hamming
    .venv/bin/python bench/dedupe.py --sizes 300000 --stages exact --direct-mode multi_processing
    .venv/bin/python bench/dedupe.py --report          # tables, growth, 5e9-row estimate
    .venv/bin/python bench/dedupe.py --hot-key 50000   # one placeholder key's work, one worker
    .venv/bin/python bench/dedupe.py --chunk-costs     # one 4096-row chunk: before (f7f3d00) / now

Rows are generated inside the pipeline from (seed, row index) by a counter-based hash, so the
driver never holds them and any row's planted duplicate structure can be recomputed from its
key (the first 12 hex digits are the row index): ~5% exact copies of an original (same pixels),
~5% near copies (its phash with 1-10 bits flipped, fewer pixels), and with --popular 0.1 a
"placeholder" share drawn from 1000 popular phashes (log-uniform popularity, 0-3 bits of noise).
Each (size, stage) runs in a fresh subprocess; its peak RSS is the whole process tree's,
sampled from /proc. "none" is generation and verification alone: subtract it for the stage.
Results are appended to bench/out/dedupe/results.jsonl; --report reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "dedupe"
ORIGINAL, EXACT, NEAR, POPULAR = 0, 1, 2, 3
KINDS = ("original", "exact", "near", "popular")
# Streams of the counter-based generator: one independent random value per (stream, row).
S_KIND, S_PHASH, S_PIX_A, S_PIX_B, S_SHA, S_SIDE, S_SHRINK, S_FLIPS, S_BIT, S_WORDS = range(10)
S_KEY, S_POPULAR, S_PLACEHOLDER, S_SOURCE = 10, 11, 12, 100  # S_SOURCE + try
S_DHASH, S_DFLIPS, S_DBIT, S_DPLACE = 13, 14, 15, 16  # the dHash: its own bits and noise
# Caption words; a caption is 2-15 of them.
VOCAB = ("photo", "of", "a", "red", "blue", "old", "new", "dog", "cat", "car", "house", "tree")
VOCAB += ("city", "beach", "logo", "icon", "sale", "shoe", "dress", "phone", "book", "poster")


@dataclass(frozen=True)
class SynthSpec:
    n: int
    seed: int = 0
    exact: float = 0.05  # share of rows that copy an original's pixels
    near: float = 0.05  # share of rows that flip 1..max_flips bits of an original's phash
    popular: float = 0.0  # share drawn from `placeholders` popular phashes ("realistic" variant)
    placeholders: int = 1000
    max_flips: int = 10


def mix64(seed: int, stream: int, idx: np.ndarray) -> np.ndarray:
    """splitmix64 of (seed, stream, index): the same row gets the same value in any chunk."""
    salt = np.uint64((seed * 0xD1B54A32D192ED03 + stream * 0xABC98388FB8FAC03) % 2**64)
    with np.errstate(over="ignore"):
        z = np.asarray(idx, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _unit(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _kind(spec: SynthSpec, idx: np.ndarray) -> np.ndarray:
    u = _unit(mix64(spec.seed, S_KIND, idx))
    e1, e2, e3 = np.cumsum([spec.exact, spec.near, spec.popular])
    kind = np.full(len(u), ORIGINAL, dtype=np.int8)
    kind[u < e1] = EXACT
    kind[(u >= e1) & (u < e2)] = NEAR
    kind[(u >= e2) & (u < e3)] = POPULAR
    return kind


def _flip_masks(
    spec: SynthSpec, idx: np.ndarray, flips: np.ndarray, stream: int = S_BIT
) -> np.ndarray:
    """(m,) uint64 masks with flips[i] distinct random bits set."""
    bits = mix64(spec.seed, stream, idx[:, None].astype(np.uint64) * 64 + np.arange(64))  # (m, 64)
    rank = np.argsort(np.argsort(bits, axis=1), axis=1)
    chosen = (rank < flips[:, None]).astype(np.uint64) << np.arange(64, dtype=np.uint64)
    return chosen.sum(axis=1, dtype=np.uint64)


def planted(spec: SynthSpec, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every generated field of rows `idx`, and their planted group, as arrays."""
    idx = np.asarray(idx, dtype=np.int64)
    kind = _kind(spec, idx)
    source = idx.copy()
    dup = (kind == EXACT) | (kind == NEAR)
    todo = dup.copy()
    for t in range(32):  # a duplicate copies a random original
        cand = (mix64(spec.seed, S_SOURCE + t, idx) % np.uint64(spec.n)).astype(np.int64)
        ok = todo & (_kind(spec, cand) == ORIGINAL)
        source[ok] = cand[ok]
        todo &= ~ok
    kind[todo] = ORIGINAL  # no original found in 32 draws (p < 1e-30): stays unique
    dup &= ~todo
    u_pop = _unit(mix64(spec.seed, S_POPULAR, idx))
    place = np.minimum(spec.placeholders ** (u_pop) - 1, spec.placeholders - 1).astype(np.int64)
    group = np.where(dup, source, idx)
    group = np.where(kind == POPULAR, spec.n + place, group)

    phash = mix64(spec.seed, S_PHASH, source)
    placeholder_hash = mix64(spec.seed, S_PLACEHOLDER, place)
    phash = np.where(kind == POPULAR, placeholder_hash, phash)
    r = mix64(spec.seed, S_FLIPS, idx)
    flips = np.zeros(len(idx), dtype=np.int64)
    flips[kind == NEAR] = 1 + (r[kind == NEAR] % np.uint64(spec.max_flips)).astype(np.int64)
    flips[kind == POPULAR] = (r[kind == POPULAR] % np.uint64(4)).astype(np.int64)
    noisy = flips > 0
    phash[noisy] ^= _flip_masks(spec, idx[noisy], flips[noisy])
    # dHash: independent bits per image; a near copy's differs in 0-8 bits (real 5 %-crop copies
    # measured 4-12, bench/near_hashes.py), a placeholder draw's in 0-3, like its pHash.
    dhash = np.where(
        kind == POPULAR, mix64(spec.seed, S_DPLACE, place), mix64(spec.seed, S_DHASH, source)
    )
    rd = mix64(spec.seed, S_DFLIPS, idx)
    dflips = np.zeros(len(idx), dtype=np.int64)
    dflips[kind == NEAR] = (rd[kind == NEAR] % np.uint64(9)).astype(np.int64)
    dflips[kind == POPULAR] = (rd[kind == POPULAR] % np.uint64(4)).astype(np.int64)
    dnoisy = dflips > 0
    dhash[dnoisy] ^= _flip_masks(spec, idx[dnoisy], dflips[dnoisy], S_DBIT)

    own_pixels = kind != EXACT
    pix_src = np.where(own_pixels, idx, source)
    side = mix64(spec.seed, S_SIDE, source)  # copies start from their original's size
    width = 200 + (side % np.uint64(1800)).astype(np.int64)
    height = 200 + ((side >> np.uint64(32)) % np.uint64(1800)).astype(np.int64)
    shrink = 0.5 + 0.45 * _unit(mix64(spec.seed, S_SHRINK, idx))  # near copies are smaller
    near = kind == NEAR
    width[near] = (width[near] * shrink[near]).astype(np.int64)
    height[near] = (height[near] * shrink[near]).astype(np.int64)
    same_bytes = (kind == EXACT) & (mix64(spec.seed, S_SHA, idx) & np.uint64(1)).astype(bool)
    return {
        "kind": kind,
        "group": group,
        "flips": flips,
        "phash": phash,
        "dhash": dhash,
        "pix_src": pix_src,
        "sha_src": np.where(same_bytes, source, idx),
        "width": width,
        "height": height,
        "words": 2 + (mix64(spec.seed, S_WORDS, idx) % np.uint64(14)).astype(np.int64),
        "key_salt": mix64(spec.seed, S_KEY, idx) & np.uint64(0xFFFFFFFFFFFF),
    }


def _hex128(seed: int, stream_a: int, stream_b: int, idx: np.ndarray) -> list[str]:
    a, b = mix64(seed, stream_a, idx), mix64(seed, stream_b, idx)
    return [f"{x:016x}{y:016x}" for x, y in zip(a.tolist(), b.tolist())]


def light_rows(spec: SynthSpec, start: int, stop: int) -> Iterator[dict]:
    """Rows [start, stop) as the light rows curation stages see (schemas.records result fields)."""
    idx = np.arange(start, stop)
    f = planted(spec, idx)
    pixel = _hex128(spec.seed, S_PIX_A, S_PIX_B, f["pix_src"])
    sha = [a + b for a, b in zip(_hex128(spec.seed, S_SHA, S_PIX_A, f["sha_src"]), pixel)]
    cols = {k: f[k].tolist() for k in ("phash", "dhash", "width", "height", "words", "key_salt")}
    for j, i in enumerate(idx.tolist()):
        key = f"{i:012x}{cols['key_salt'][j]:012x}"
        w, h, words = cols["width"][j], cols["height"][j], cols["words"][j]
        yield {
            "key": key,
            "url": f"https://img{i % 97}.example.com/media/{key}.jpg",
            "caption": " ".join(VOCAB[(i * 7 + k * 13) % len(VOCAB)] for k in range(words)),
            "status": "ok",
            "reason": None,
            "error": None,
            "duplicate_of": None,
            "http_status": 200,
            "original_width": w,
            "original_height": h,
            "width": min(w, 512),
            "height": min(h, 512),
            "bytes": w * h // 6,
            "mime": "image/jpeg",
            "sha256": sha[j],
            "shard": None,
            "pixel_hash": pixel[j],
            "phash": f"{cols['phash'][j]:016x}",
            "dhash": f"{cols['dhash'][j]:016x}",
            "language": None,
            "_nbytes": min(w, 512) * min(h, 512) // 8,
        }


def expected_counts(spec: SynthSpec, chunk: int = 200_000) -> dict:
    """What a perfect stage removes: ExactDedupe the exact copies; a near dedupe every planted
    group but one row (exact and near copies of an original, placeholder draws)."""
    kinds = np.zeros(4, dtype=np.int64)
    flips = np.zeros(spec.max_flips + 1, dtype=np.int64)
    places: set[int] = set()
    for start in range(0, spec.n, chunk):
        f = planted(spec, np.arange(start, min(spec.n, start + chunk)))
        kinds += np.bincount(f["kind"], minlength=4)
        flips += np.bincount(f["flips"][f["kind"] == NEAR], minlength=spec.max_flips + 1)
        places.update(np.unique(f["group"][f["kind"] == POPULAR]).tolist())
    return {
        **{f"rows_{k}": int(v) for k, v in zip(KINDS, kinds)},
        "exact_removable": int(kinds[EXACT]),
        "near_removable": int(kinds[EXACT] + kinds[NEAR] + kinds[POPULAR] - len(places)),
        "near_by_flips": flips.tolist(),
        "placeholders_used": len(places),
    }


# ---------------------------------------------------------------------------------------------
# One measured run (in its own subprocess).


def popcount_hamming_matrix(hashes: list[str]) -> np.ndarray:
    """What-if replacement for schemas.imagehash.hamming_matrix: same (n, n) distances, one
    uint64 XOR + popcount per pair instead of 64 unpacked bytes."""
    ints = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    return np.bitwise_count(ints[:, None] ^ ints[None, :])  # (n, n) uint8


def stage_transform(name: str):
    from pipeline.curation.dedupe.exact import ExactDedupe
    from pipeline.curation.dedupe.near import NearDedupe, NearDedupeConfig

    if name == "exact":
        return ExactDedupe()
    if name == "near":
        return NearDedupe()
    if name.startswith("near_b"):  # near_b4: NearDedupe with 4 bands
        return NearDedupe(NearDedupeConfig(bands=int(name[len("near_b") :])))
    raise ValueError(f"unknown stage {name!r}: none, exact, near, near_b<bands>")


def _verify_batch(spec: SynthSpec, decisions: list[dict]) -> None:
    """Counts removed rows whose survivor is in the same planted group, by kind and bit flips."""
    from apache_beam.metrics import Metrics

    def inc(name, n=1):
        if n:
            Metrics.counter("bench", name).inc(int(n))

    loser = planted(spec, np.array([int(d["key"][:12], 16) for d in decisions]))
    target = planted(spec, np.array([int(d["duplicate_of"][:12], 16) for d in decisions]))
    same = loser["group"] == target["group"]
    inc("removed", len(decisions))
    inc("removed_same_group", same.sum())
    inc("removed_other_group", (~same).sum())
    for k, name in enumerate(KINDS):
        inc(f"found_{name}", (same & (loser["kind"] == k)).sum())
    for prefix, near in (
        ("found", same & (loser["kind"] == NEAR)),
        ("removed", loser["kind"] == NEAR),
    ):
        for d, n in enumerate(np.bincount(loser["flips"][near], minlength=spec.max_flips + 1)):
            inc(f"{prefix}_near_d{d}", n)  # found: with a survivor of its own planted group


def _dangling(element) -> Iterator[int]:
    """(key, {"removed": [1], "named": [..]}): survivors named by a decision but removed too."""
    _, g = element
    if list(g["removed"]):
        yield len(list(g["named"]))


def run_one(spec: SynthSpec, stage: str, chunk: int, beam_args: list[str]) -> dict:
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.options.pipeline_options import PipelineOptions

    starts = [(s, min(spec.n, s + chunk)) for s in range(0, spec.n, chunk)]
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    light = (
        p
        | "Chunks" >> beam.Create(starts)
        | "Generate" >> beam.FlatMap(lambda r: light_rows(spec, *r))
    )
    if stage == "none":
        kept, removed = light, p | "NoDecisions" >> beam.Create([])
    else:
        out = light | f"Stage_{stage}" >> stage_transform(stage)
        kept, removed = out["kept"], out["removed"]
    kept_counter = Metrics.counter("bench", "kept")
    _ = kept | "CountKept" >> beam.Map(lambda _: kept_counter.inc())
    _ = (
        removed
        | "BatchDecisions" >> beam.BatchElements(min_batch_size=2000, max_batch_size=20000)
        | "Verify" >> beam.Map(lambda b: _verify_batch(spec, b))
    )
    dangling_counter = Metrics.counter("bench", "dangling_survivor")
    _ = (
        {
            "removed": removed | "ByKey" >> beam.Map(lambda d: (d["key"], 1)),
            "named": removed | "BySurvivor" >> beam.Map(lambda d: (d["duplicate_of"], 1)),
        }
        | "JoinSurvivors" >> beam.CoGroupByKey()
        | "Dangling" >> beam.FlatMap(_dangling)
        | "CountDangling" >> beam.Map(dangling_counter.inc)
    )

    usage0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(usage0, usage1))
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query()["counters"]
        if c.key.metric.namespace in ("bench", "near_dedupe", "resolve_chains")
    }
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "maxrss_self_mib": usage1[0].ru_maxrss // 1024,
        "counters": counters,
        "shuffle": shuffle_volume(p, result, f"Stage_{stage}/"),
    }


def shuffle_volume(p, result, prefix: str) -> dict[str, dict]:
    """Elements and encoded bytes entering each GroupByKey under `prefix`: the runner's element
    counts and sampled encoded sizes of the GBK's input PCollection. CombinePerKey inputs are
    counted before combiner lifting (an upper bound of what a real shuffle carries)."""
    from apache_beam.metrics import monitoring_infos as mi

    counts, sizes = {}, {}
    for info in result.monitoring_infos():
        pcoll = info.labels.get("PCOLLECTION")
        if info.urn == mi.ELEMENT_COUNT_URN:
            counts[pcoll] = mi.extract_metric_result_map_value(info)
        elif info.urn == mi.SAMPLED_BYTE_SIZE_URN:
            sizes[pcoll] = mi.extract_metric_result_map_value(info)
    out = {}
    for t in p.to_runner_api().components.transforms.values():
        if t.spec.urn == "beam:transform:group_by_key:v1" and t.unique_name.startswith(prefix):
            (pcoll,) = t.inputs.values()
            n, size = counts.get(pcoll, 0), sizes.get(pcoll)
            mean = size.sum / size.count if size and size.count else 0.0
            out[t.unique_name[len(prefix) :]] = {"elements": n, "mean_bytes": round(mean, 1)}
    return out


# ---------------------------------------------------------------------------------------------
# The driver: one subprocess per measurement, peak RSS of its process tree from /proc.


def _tree_rss_kib(root: int) -> int:
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(entry))  # fields[1]: ppid
            rss[int(entry)] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def code_version() -> str:
    """The git commit plus a digest of the measured files, so uncommitted changes tell apart."""
    import hashlib

    digest = hashlib.sha256()
    measured = sorted((REPO / "pipeline/curation").rglob("*.py"))
    for path in [*measured, REPO / "schemas/imagehash.py"]:
        digest.update(path.read_bytes())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        head = "?"
    return f"{head}+{digest.hexdigest()[:10]}"


def measure(spec: SynthSpec, stage: str, args) -> dict:
    beam_args = []
    if args.direct_mode != "in_memory":
        beam_args = [
            f"--direct_running_mode={args.direct_mode}",
            f"--direct_num_workers={args.direct_workers}",
        ]
    job = {
        "spec": asdict(spec),
        "stage": stage,
        "chunk": args.chunk,
        "beam_args": beam_args,
        "fast_hamming": args.fast_hamming,
    }
    # Imported, not run as __main__, so multi_processing workers unpickle by module reference.
    entry = "import sys; from bench.dedupe import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, "--run-one", json.dumps(job)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()[0]  # the machine may be shared: CPU seconds are the figure
    log = OUT / "logs" / f"{stage}-{spec.n}-{time.strftime('%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=env,
            start_new_session=True,  # its own process group, so a timeout ends its workers too
        )
    peak, deadline = 0, time.monotonic() + args.timeout
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {**job, "error": f"timed out after {args.timeout} s"}
        time.sleep(0.25)
    out = proc.stdout.read()
    if proc.returncode != 0:
        return {**job, "error": f"exit {proc.returncode}, see {log}"}
    row = json.loads(out.strip().splitlines()[-1])
    return {
        **job,
        **row,
        "peak_rss_mib": peak // 1024,
        "rows_per_s": round(spec.n / row["wall_s"], 1),
        "expected": expected_counts(spec),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "code": code_version(),
    }


def summary_line(r: dict) -> str:
    if "error" in r:
        return f"{r['stage']:>8} n={r['spec']['n']:>8}: {r['error']}"
    c, e = r["counters"], r["expected"]
    want = e["exact_removable"] if r["stage"] == "exact" else e["near_removable"]
    return (
        f"{r['stage']:>8} n={r['spec']['n']:>8} pop={r['spec']['popular']:.2f}"
        f"{' fast' if r['fast_hamming'] else ''}: {r['wall_s']:8.1f} s wall, {r['cpu_s']:8.1f} s CPU,"
        f" {r['rows_per_s']:9.0f} rows/s, peak RSS {r['peak_rss_mib']:6d} MiB;"
        f" removed {c.get('removed', 0)} (planted {want}, same group"
        f" {c.get('removed_same_group', 0)}, other group {c.get('removed_other_group', 0)},"
        f" dangling survivors {c.get('dangling_survivor', 0)})"
    )


# ---------------------------------------------------------------------------------------------
# Report: growth, recall by planted distance, LSH at scale, and 5e9 rows on Dataflow.

TARGET_ROWS = 5_000_000_000
RECALL_FLIPS = (2, 3, 4, 5, 6, 8, 10)
# Dataflow batch list prices, us-central1, USD, as quoted 2026-11 (cloud.google.com/dataflow/pricing).
PRICES = {
    "vcpu_hour": 0.056,
    "memory_gb_hour": 0.003557,
    "pd_gb_hour": 0.000054,
    "shuffle_gb": 0.011,
}
MEMORY_GB_PER_VCPU, DISK_GB_PER_VCPU = 3.75, 25 / 4  # n1-standard-4 workers, 25 GB boot disks
UTILISATION = 0.7  # busy share of the vCPU-hours billed (start-up, stragglers, autoscaling)
SHUFFLE_BILLED_PER_BYTE = 2  # assume the bytes written to shuffle are billed again when read


def _variant(r: dict) -> str:
    mode = "mp2" if r["beam_args"] else "in-memory"
    return f"{'placeholders 10%' if r['spec']['popular'] else 'uniform'}, {mode}"


def _latest(rows: list[dict]) -> dict[tuple, dict]:
    """(variant, stage, fast, n) -> the last successful run."""
    out = {}
    for r in rows:
        if "error" not in r:
            out[(_variant(r), r["stage"], r["fast_hamming"], r["spec"]["n"])] = r
    return out


def _stage_cpu(runs: dict, key: tuple) -> float:
    variant, _, _, n = key
    base = runs.get((variant, "none", False, n))
    return runs[key]["cpu_s"] - (base["cpu_s"] if base else 0.0)


def _shuffle_bytes(r: dict) -> float:
    return sum(s["elements"] * s["mean_bytes"] for s in r["shuffle"].values())


def _slope(x1, y1, x2, y2) -> str:
    if min(x1, y1, x2, y2) <= 0:
        return "n/a"
    return f"{math.log(y2 / y1) / math.log(x2 / x1):.2f}"


def band_ranges(bands: int) -> list[tuple[int, int]]:
    """[lo, hi) bit ranges of pipeline.curation.lsh.contiguous_bands."""
    from pipeline.curation.lsh import contiguous_bands

    return [(t[0], t[-1] + 1) for t in contiguous_bands(bands)]


def chunked_lsh_recall(n: int, bands: int, max_bucket: int, flips: int, trials: int = 20_000):
    """Share of pairs `flips` bits apart that NearDedupe compares at all, on n uniform phashes.

    A pair is compared when it shares a band and lands in the same chunk of max_bucket items of
    that band's bucket, sorted by hash. In a bucket of B = n / 2**w items the sorted rank of a
    hash is B times its other 64 - w bits read as a fraction, so its chunk is that fraction
    times B / max_bucket. (Transitive links through third rows, which union-find adds, ignored.)"""
    rng = np.random.default_rng(flips)
    x = rng.integers(0, 2**63, trials, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, trials, dtype=np.uint64
    )
    rank = np.argsort(np.argsort(rng.random((trials, 64)), axis=1), axis=1)
    y = x ^ ((rank < flips).astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(
        axis=1, dtype=np.uint64
    )
    found = np.zeros(trials, dtype=bool)
    for lo, hi in band_ranges(bands):
        w = hi - lo
        same = (((x ^ y) >> np.uint64(lo)) & np.uint64((1 << w) - 1)) == 0
        chunks = n / 2**w / max_bucket
        if chunks <= 1:
            found |= same
            continue

        def chunk_of(v, lo=lo, hi=hi, w=w, chunks=chunks):
            top = (v >> np.uint64(hi)) << np.uint64(lo) if hi < 64 else np.zeros_like(v)
            rest = top | (v & np.uint64((1 << lo) - 1))
            return np.floor(rest.astype(np.float64) / 2.0 ** (64 - w) * chunks)

        found |= same & (chunk_of(x) == chunk_of(y))
    return float(found.mean())


def compares_per_row(n: int, bands: int, max_bucket: int) -> float:
    """Hamming distances computed per row: each item meets its whole chunk, in every band."""
    total = 0.0
    for lo, hi in band_ranges(bands):
        b = n / 2 ** (hi - lo)
        full, rest = divmod(b, max_bucket)
        total += (full * max_bucket**2 + rest**2) / b
    return total


def random_neighbours(n: int, threshold: int) -> float:
    """Expected unrelated rows within `threshold` bits of a row, for uniform 64-bit phashes."""
    return (n - 1) * sum(math.comb(64, k) for k in range(threshold + 1)) / 2**64


def pair_cost_ns(size: int = 4096) -> dict[str, float]:
    """ns per pair of pipeline.curation.dedupe.near.near_duplicate_pairs on one full chunk, as shipped and
    with popcount_hamming_matrix."""
    import pipeline.curation.dedupe.near as dd

    rows = list(light_rows(SynthSpec(n=10 * size), 0, size))
    items = [dd.NearItem(r["key"], r["phash"], None, dd.image_survivor_order(r)) for r in rows]
    out = {}
    for name, fn in (("shipped", dd.hamming_matrix), ("popcount", popcount_hamming_matrix)):
        saved, dd.hamming_matrix = dd.hamming_matrix, fn
        try:
            times = []
            for _ in range(3):  # the best of three: other work on the machine only adds
                start = time.process_time()
                dd.near_duplicate_pairs(items, 12)
                times.append(time.process_time() - start)
            out[name] = min(times) / size**2 * 1e9
        finally:
            dd.hamming_matrix = saved
    return out


def unpacked_hamming_matrix(hashes: list[str]) -> np.ndarray:
    """schemas.imagehash.hamming_matrix before the popcount fix (f7f3d00): 64 unpacked bytes per
    pair. Kept here as the "before" of --chunk-costs."""
    ints = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    x = ints[:, None] ^ ints[None, :]
    return np.unpackbits(x.view(np.uint8).reshape(len(hashes), len(hashes), 8), axis=-1).sum(
        axis=-1, dtype=np.int32
    )


def union_find_losers(keys, orders, adjacent) -> list:
    """pipeline.curation.decisions.cluster_losers before the fix (f7f3d00): a Python step per adjacent pair."""
    parent = list(range(len(keys)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows, cols = np.nonzero(np.triu(adjacent, k=1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
    best: dict[int, int] = {}
    for i in range(len(keys)):
        r = find(i)
        if r not in best or orders[i] < orders[best[r]]:
            best[r] = i
    return [
        (keys[i], keys[best[find(i)]], orders[best[find(i)]])
        for i in range(len(keys))
        if best[find(i)] != i
    ]


def chunk_costs(n: int = 4096) -> list[dict]:
    """CPU ms (best of 3) and tracemalloc peak MiB of the per-chunk pieces of NearDedupe and
    CaptionDedupe on one n-row chunk, before (f7f3d00, re-implemented above) and after: uniform
    phashes, and a placeholder chunk (one phash with 3 random bits flipped: every pair adjacent)."""
    import tracemalloc

    from pipeline.curation.decisions import cluster_losers
    from pipeline.curation.dedupe.captions import equal_minhash_counts
    from schemas.imagehash import hamming_matrix

    def cost(name, fn, repeat=3):
        times = []
        for _ in range(repeat):  # timed without tracemalloc, which slows Python allocations
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        tracemalloc.start()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out.append({"what": name, "cpu_ms": round(min(times) * 1e3, 1), "peak_mib": peak / 2**20})
        return result

    rng = np.random.default_rng(0)
    base = int(rng.integers(0, 2**63))
    flips = (np.uint64(1) << rng.integers(0, 64, size=(n, 3), dtype=np.uint64)).sum(axis=1)
    chunks = {
        "uniform": [f"{int(v):016x}" for v in rng.integers(0, 2**64, size=n, dtype=np.uint64)],
        "placeholder": [f"{base ^ int(m):016x}" for m in flips],
    }
    keys, orders = [f"k{i:05d}" for i in range(n)], [(i % 97,) for i in range(n)]
    out: list[dict] = []
    for data, hashes in chunks.items():
        before = cost(
            f"{data}: hamming_matrix, unpackbits (before)", partial(unpacked_hamming_matrix, hashes)
        )
        after = cost(f"{data}: hamming_matrix, np.bitwise_count", partial(hamming_matrix, hashes))
        table = cost(
            f"{data}: hamming_matrix, table fallback", partial(hamming_matrix, hashes, False)
        )
        assert np.array_equal(before, after) and np.array_equal(before, table)
        adjacent = after <= 12
        out.append({"what": f"{data}: adjacent pairs", "pairs": int(np.triu(adjacent, 1).sum())})
        a = cost(
            f"{data}: cluster_losers, union-find (before)",
            partial(union_find_losers, keys, orders, adjacent),
            1,
        )
        b = cost(
            f"{data}: cluster_losers, vectorised",
            partial(cluster_losers, keys, orders, adjacent),
        )
        assert a == b
    sigs = [tuple(int(v) for v in rng.integers(0, 2**32, size=64)) for _ in range(n)]

    def caption_before():
        sig = np.array(sigs, dtype=np.uint64)
        return (sig[:, None, :] == sig[None, :, :]).mean(axis=-1) >= 0.8

    before = cost("captions: (n, n, 64) similarity (before)", caption_before, 1)
    after = cost("captions: equal_minhash_counts", partial(equal_minhash_counts, sigs))
    assert np.array_equal(before, after >= 52)  # 52 / 64 is the first share >= 0.8
    return out


def hot_key(n: int) -> dict:
    """One placeholder image repeated n times, as the one worker that gets its key sees it:
    CPU s of ExactDedupe's decision function on a group of n rows sharing pixel_hash, and of
    NearDedupe's CompareBucketFn on one band bucket of n copies of a phash with 0-3 bits of
    noise (as shipped and with popcount). Outside a pipeline: the per-key work only."""
    import pipeline.curation.dedupe.near as dd
    from pipeline.curation.dedupe.buckets import CompareBucketFn
    from pipeline.curation.dedupe.exact import exact_duplicate_decisions

    spec = SynthSpec(n=n)
    rows = list(light_rows(spec, 0, n))
    for r in rows:
        r["pixel_hash"] = rows[0]["pixel_hash"]
    start = time.process_time()
    exact = sum(1 for _ in exact_duplicate_decisions(rows))
    out = {"rows": n, "exact_decisions": exact, "exact_cpu_s": time.process_time() - start}
    idx = np.arange(n)
    flips = (mix64(spec.seed, S_FLIPS, idx) % np.uint64(4)).astype(np.int64)
    hashes = np.full(n, int(rows[0]["phash"], 16), dtype=np.uint64)
    hashes[flips > 0] ^= _flip_masks(spec, idx[flips > 0], flips[flips > 0])
    items = [
        dd.NearItem(r["key"], f"{h:016x}", None, dd.image_survivor_order(r))
        for r, h in zip(rows, hashes.tolist())
    ]
    fn = CompareBucketFn(dd.near_duplicate_pairs, 12, 4096, "hot_key", sort_by="phash")
    for name, hm in (("shipped", dd.hamming_matrix), ("popcount", popcount_hamming_matrix)):
        saved, dd.hamming_matrix = dd.hamming_matrix, hm
        try:
            start = time.process_time()
            fn.start_bundle()
            out[f"near_losers_{name}"] = sum(1 for _ in fn.process((None, iter(items))))
            out[f"near_cpu_s_{name}"] = time.process_time() - start
        finally:
            dd.hamming_matrix = saved
    out["bucket_item_bytes"] = bucket_item_bytes()
    return out


def bucket_item_bytes() -> int:
    """Python heap bytes of one (key, phash, order) bucket item, as CompareBucketFn sorts it."""
    from pipeline.curation.decisions import image_survivor_order

    row = next(light_rows(SynthSpec(n=10), 0, 1))
    order = image_survivor_order(row)
    parts = (row["key"], row["phash"], order, *order[:2])
    return sys.getsizeof((row["key"], row["phash"], order)) + sum(map(sys.getsizeof, parts)) + 8


def false_matches_per_row(n: float, recall, threshold: int) -> float:
    """Unrelated rows within `threshold` bits that a row is actually compared with and matched
    to: uniform-phash neighbours at each distance d times the share of pairs compared,
    recall(d)."""
    return sum((n - 1) * math.comb(64, d) / 2**64 * recall(d) for d in range(threshold + 1))


def sampled_bits_recall(flips: int, bits: int, tables: int) -> float:
    """Recall of `tables` LSH tables keyed by `bits` random bit positions each (no chunking)."""
    p = math.comb(64 - flips, bits) / math.comb(64, bits)
    return 1 - (1 - p) ** tables


def lsh_at_scale(n: int, cost: dict[str, float], item: int, max_bucket: int = 4096) -> list[str]:
    """Bucket sizes, compares, memory and recall of NearDedupe's contiguous bands at n rows,
    and of sampled-bit tables keyed wide enough that no bucket needs chunking."""
    lines = [
        f"## LSH at {n:.0e} uniform phashes (model), max_bucket {max_bucket}",
        "",
        f"near_duplicate_pairs costs {cost['shipped']:.0f} ns/pair as shipped (from "
        f"{cost['source']}; micro-benchmark {cost['micro_shipped']:.0f}) and "
        f"{cost['popcount']:.1f} ns/pair with popcount (micro-benchmark, best of 3, 4096-row "
        f"chunk). A bucket item is ~{item} B of Python heap while CompareBucketFn sorts it.",
        "",
        "| bands | bits/band | keys | largest bucket, rows | its sorted list | compares/row "
        "| CPU h shipped | CPU h popcount | largest key, h popcount | "
        + " | ".join(f"d={d}" for d in RECALL_FLIPS)
        + " | false matches/row t=12 | t=5 |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|" + "--:|" * (len(RECALL_FLIPS) + 2),
    ]
    for bands in (13, 8, 6, 5, 4, 3):
        widths = [hi - lo for lo, hi in band_ranges(bands)]
        bucket = n / 2 ** min(widths)
        per_row = compares_per_row(n, bands, max_bucket)
        recall = [chunked_lsh_recall(n, bands, max_bucket, d, trials=4000) for d in RECALL_FLIPS]
        false = [
            false_matches_per_row(
                n, partial(chunked_lsh_recall, n, bands, max_bucket, trials=4000), t
            )
            for t in (12, 5)
        ]
        lines.append(
            f"| {bands} | {'/'.join(map(str, sorted(set(widths))))} "
            f"| {sum(2**w for w in widths):,} | {bucket:,.0f} | {bucket * item / 1e9:,.2f} GB "
            f"| {per_row:,.0f} | {per_row * n * cost['shipped'] * 1e-9 / 3600:,.0f} "
            f"| {per_row * n * cost['popcount'] * 1e-9 / 3600:,.0f} "
            f"| {bucket * min(bucket, max_bucket) * cost['popcount'] * 1e-9 / 3600:,.2f} | "
            + " | ".join(f"{x:.2f}" for x in recall)
            + f" | {false[0]:.3g} | {false[1]:.2g} |"
        )
    bits = math.ceil(math.log2(n / max_bucket))
    lines += [
        "",
        f"Proposal: T tables keyed by {bits} sampled bit positions each (2^{bits} buckets of "
        f"~{n / 2**bits:,.0f} rows, never chunked):",
        "",
        "| tables | compares/row | CPU h popcount | "
        + " | ".join(f"d={d}" for d in RECALL_FLIPS)
        + " | false matches/row t=12 | t=5 |",
        "|--:|--:|--:|" + "--:|" * (len(RECALL_FLIPS) + 2),
    ]
    for tables in (8, 14, 20, 30):
        per_row = tables * n / 2**bits
        false = [
            false_matches_per_row(n, partial(sampled_bits_recall, bits=bits, tables=tables), t)
            for t in (12, 5)
        ]
        lines.append(
            f"| {tables} | {per_row:,.0f} | {per_row * n * cost['popcount'] * 1e-9 / 3600:,.0f} | "
            + " | ".join(f"{sampled_bits_recall(d, bits, tables):.2f}" for d in RECALL_FLIPS)
            + f" | {false[0]:.3g} | {false[1]:.2g} |"
        )
    lines += [
        "",
        "Unrelated rows within t bits of a row (uniform phashes): "
        + ", ".join(f"t={t}: {random_neighbours(n, t):.2g}" for t in (12, 8, 6, 5, 4, 3)),
    ]
    return lines


def calibrated_pair_ns(runs: dict, micro: dict[str, float]) -> dict[str, float]:
    """ns/pair as shipped from a pipeline measured both ways at the same size (the extra CPU
    over the popcount run, per compare), else from the micro-benchmark."""
    out = {**micro, "micro_shipped": micro["shipped"], "source": "micro-benchmark"}
    for variant, stage, fast, n in runs:
        pop = (variant, stage, True, n)
        if variant == "uniform, in-memory" and stage == "near" and not fast and pop in runs:
            extra = _stage_cpu(runs, (variant, stage, fast, n)) - _stage_cpu(runs, pop)
            out["shipped"] = micro["popcount"] + extra / n / compares_per_row(n, 13, 4096) * 1e9
            out["source"] = f"NearDedupe at {n:,} rows, shipped vs popcount"
    return out


def report(rows: list[dict]) -> str:
    runs = _latest(rows)
    lines = [
        "## Runs",
        "",
        "| data, runner | stage | rows | wall s | CPU s | stage CPU s | rows/s (wall) "
        "| stage µs CPU/row | peak RSS MiB | removed / planted | other group | dangling "
        "| shuffle B/row | load |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in sorted(runs):
        variant, stage, fast, n = key
        r, c, e = runs[key], runs[key]["counters"], runs[key]["expected"]
        want = e["exact_removable"] if stage == "exact" else e["near_removable"]
        stage_cpu = _stage_cpu(runs, key)
        lines.append(
            f"| {variant} | {stage}{' (popcount)' if fast else ''} | {n:,} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {stage_cpu:.1f} | {n / r['wall_s']:,.0f} "
            f"| {stage_cpu / n * 1e6:.0f} | {r['peak_rss_mib']:,} "
            f"| {c.get('removed', 0):,} / {want if stage != 'none' else 0:,} "
            f"| {c.get('removed_other_group', 0):,} | {c.get('dangling_survivor', 0)} "
            f"| {_shuffle_bytes(r) / n:,.0f} | {r.get('load_before', float('nan')):.1f} |"
        )

    lines += [
        "",
        "## Precision and recall on planted duplicates",
        "",
        "precision: removals whose survivor is in the removed row's own planted group / all "
        "removals; recall: those / what a perfect stage removes (exact: the planted exact "
        "copies; near: every planted group but one row); near-copy recall: planted near copies "
        "(1-10 bits flipped) removed with a survivor of their own group / planted near copies.",
        "",
        "| data, runner | stage | rows | removed | correct | perfect | precision | recall "
        "| near-copy recall |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key in sorted(runs):
        variant, stage, fast, n = key
        if stage == "none":
            continue
        c, e = runs[key]["counters"], runs[key]["expected"]
        want = e["exact_removable"] if stage == "exact" else e["near_removable"]
        removed, correct = c.get("removed", 0), c.get("removed_same_group", 0)
        near = "-" if stage == "exact" else f"{c.get('found_near', 0) / e['rows_near']:.3f}"
        lines.append(
            f"| {variant} | {stage}{' (popcount)' if fast else ''} | {n:,} | {removed:,} "
            f"| {correct:,} | {want:,} | {correct / max(1, removed):.3f} "
            f"| {correct / max(1, want):.3f} | {near} |"
        )

    lines += [
        "",
        "## Growth (log-log slope; 1.0 = linear)",
        "",
        "| data, runner | stage | rows | stage CPU slope | peak RSS slope |",
        "|---|---|---|--:|--:|",
    ]
    series = defaultdict(list)
    for key in runs:
        if key[1] != "none":
            series[key[:3]].append(key[3])
    for (variant, stage, fast), sizes in sorted(series.items()):
        sizes.sort()
        for a, b in zip(sizes, sizes[1:]):
            ka, kb = (variant, stage, fast, a), (variant, stage, fast, b)
            cpu = _slope(a, _stage_cpu(runs, ka), b, _stage_cpu(runs, kb))
            rss = _slope(a, runs[ka]["peak_rss_mib"], b, runs[kb]["peak_rss_mib"])
            name = f"{stage}{' (popcount)' if fast else ''}"
            lines.append(f"| {variant} | {name} | {a:,} → {b:,} | {cpu} | {rss} |")

    lines += [
        "",
        "## Near copies found, by planted bit flips",
        "",
        "found: removed with a survivor of its own planted group; /removed: removed at all (runs "
        "that counted it); (model): chunked_lsh_recall, the share of pairs ever compared.",
        "",
        "| data | stage | rows | "
        + " | ".join(f"d={d}" for d in range(1, 11))
        + " | other-group removals (model) |",
        "|---|---|--:|" + "--:|" * 11,
    ]
    for key in sorted(runs):
        variant, stage, fast, n = key
        if not stage.startswith("near") or "mp2" in variant:
            continue
        r = runs[key]
        bands = int(stage[6:]) if stage != "near" else 13
        cells = []
        for d in range(1, 11):
            planted_d = r["expected"]["near_by_flips"][d]
            found = r["counters"].get(f"found_near_d{d}", 0) / max(1, planted_d)
            model = chunked_lsh_recall(n, bands, 4096, d, trials=4000)
            removed = r["counters"].get(f"removed_near_d{d}")
            removed = f"/{removed / max(1, planted_d):.2f}" if removed is not None else ""
            cells.append(f"{found:.2f}{removed} ({model:.2f})")
        name = f"{stage}{' (popcount)' if fast else ''}"
        recall = partial(chunked_lsh_recall, n, bands, 4096, trials=4000)
        model = false_matches_per_row(n, recall, 12) * n / 2  # pairs: each is counted twice
        other = f"{r['counters'].get('removed_other_group', 0):,} ({model:,.0f})"
        lines.append(f"| {variant} | {name} | {n:,} | " + " | ".join(cells) + f" | {other} |")

    cost = calibrated_pair_ns(runs, pair_cost_ns())
    lines += ["", *lsh_at_scale(TARGET_ROWS, cost, bucket_item_bytes())]
    lines += ["", *shuffle_breakdown(runs), "", *estimate(runs, cost)]
    return "\n".join(lines)


def _largest_uniform(runs: dict) -> dict[tuple[str, bool], tuple]:
    """(stage, popcount) -> key of its largest uniform, in-memory run."""
    largest: dict[tuple[str, bool], tuple] = {}
    for key in runs:
        variant, stage, fast, n = key
        best = largest.get((stage, fast))
        if variant == "uniform, in-memory" and stage != "none" and (not best or n > best[3]):
            largest[(stage, fast)] = key
    return largest


def _largest_per_stage(runs: dict) -> dict[str, tuple]:
    """stage -> key of its largest uniform, in-memory run, shipped or popcount."""
    largest: dict[str, tuple] = {}
    for (stage, _), key in _largest_uniform(runs).items():
        if stage not in largest or key[3] > largest[stage][3]:
            largest[stage] = key
    return largest


def shuffle_breakdown(runs: dict) -> list[str]:
    lines = [
        "## What each stage shuffles (largest uniform run; CombinePerKey before lifting)",
        "",
        "| stage | GroupByKey | elements/row | mean encoded B | B/row |",
        "|---|---|--:|--:|--:|",
    ]
    for stage, key in sorted(_largest_per_stage(runs).items()):
        n = key[3]
        for name, s in sorted(runs[key]["shuffle"].items()):
            lines.append(
                f"| {stage} | {name} | {s['elements'] / n:.2f} | {s['mean_bytes']:.0f} "
                f"| {s['elements'] * s['mean_bytes'] / n:,.0f} |"
            )
    return lines


def _bands(stage: str) -> int | None:
    return 13 if stage == "near" else int(stage[6:]) if stage.startswith("near_b") else None


def estimate(runs: dict, cost: dict[str, float]) -> list[str]:
    """The largest uniform in-memory run of each stage, extrapolated to 5e9 rows: CPU and shuffle
    per row stay, except the bucket compares, which grow until buckets reach max_bucket; they
    are re-costed at 5e9 rows with the measured ns/pair, as shipped and with popcount."""
    vcpu_hour = (
        PRICES["vcpu_hour"]
        + MEMORY_GB_PER_VCPU * PRICES["memory_gb_hour"]
        + DISK_GB_PER_VCPU * PRICES["pd_gb_hour"]
    )
    lines = [
        f"## {TARGET_ROWS:.0e} rows on Dataflow",
        "",
        f"${vcpu_hour:.4f} per vCPU-hour with its {MEMORY_GB_PER_VCPU} GB and "
        f"{DISK_GB_PER_VCPU} GB disk, {UTILISATION:.0%} busy; ${PRICES['shuffle_gb']}/GB, "
        f"billed {SHUFFLE_BILLED_PER_BYTE}x the encoded bytes entering GroupByKeys.",
        "",
        "| stage | hamming | measured at | µs CPU/row there | compares/row there → at 5e9 "
        "| µs CPU/row at 5e9 | billed vCPU-h | shuffle B/row | shuffle TB | workers $ "
        "| shuffle $ | total $ |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for stage, key in sorted(_largest_per_stage(runs).items()):
        n, bands, fast = key[3], _bands(stage), key[2]
        measured = _stage_cpu(runs, key) / n
        shuffle_row = _shuffle_bytes(runs[key]) / n
        tb = shuffle_row * TARGET_ROWS / 1e12
        shuffle = tb * 1000 * PRICES["shuffle_gb"] * SHUFFLE_BILLED_PER_BYTE
        there = compares_per_row(n, bands, 4096) if bands else 0.0
        at_target = compares_per_row(TARGET_ROWS, bands, 4096) if bands else 0.0
        ran_with = cost["popcount" if fast else "shipped"]
        for hamming in ("shipped", "popcount") if bands else ("-",):
            ns = cost.get(hamming, 0.0)
            cpu_row = measured + (at_target * ns - there * ran_with) * 1e-9
            hours = cpu_row * TARGET_ROWS / 3600 / UTILISATION
            workers = hours * vcpu_hour
            lines.append(
                f"| {stage} | {hamming} | {n:,}{' (popcount)' if fast else ''} "
                f"| {measured * 1e6:,.0f} | {there:,.0f} → {at_target:,.0f} "
                f"| {cpu_row * 1e6:,.0f} | {hours:,.0f} | {shuffle_row:,.0f} | {tb:,.1f} "
                f"| {workers:,.0f} | {shuffle:,.0f} | {workers + shuffle:,.0f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--stages", nargs="+", default=["none", "exact", "near_b4"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--popular", type=float, default=0.0, help="placeholder share (0.1: skewed)")
    p.add_argument("--chunk", type=int, default=10_000, help="rows generated per Create element")
    p.add_argument(
        "--fast-hamming",
        action="store_true",
        help="what-if for f7f3d00 (popcount hamming_matrix; shipped since)",
    )
    p.add_argument("--direct-mode", default="in_memory", choices=["in_memory", "multi_processing"])
    p.add_argument("--direct-workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    p.add_argument("--results", type=Path, default=OUT / "results.jsonl")
    p.add_argument("--report", action="store_true", help="summarise --results and exit")
    p.add_argument("--hot-key", type=int, metavar="N", help="time one key of N placeholder rows")
    p.add_argument("--chunk-costs", action="store_true", help="time one 4096-row chunk's pieces")
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fast_hamming and args.direct_mode != "in_memory":
        p.error("--fast-hamming patches the runner's own process: use it with in_memory only")

    if args.run_one:
        job = json.loads(args.run_one)
        if job["fast_hamming"]:
            import pipeline.curation.dedupe.near

            pipeline.curation.dedupe.near.hamming_matrix = popcount_hamming_matrix
        row = run_one(SynthSpec(**job["spec"]), job["stage"], job["chunk"], job["beam_args"])
        print(json.dumps(row))
        return 0
    if args.chunk_costs:
        for row in chunk_costs():
            print(json.dumps(row))
        return 0
    if args.hot_key:
        print(json.dumps(hot_key(args.hot_key)))
        return 0
    if args.report:
        print(report([json.loads(line) for line in args.results.read_text().splitlines()]))
        return 0

    args.results.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        for stage in args.stages:
            spec = SynthSpec(n=n, seed=args.seed, popular=args.popular)
            r = measure(spec, stage, args)
            with args.results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(summary_line(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
