"""Scoring and selection benchmark: pairs/s of the ScorePairs stage (Beam RunInference) against
a plain PyTorch loop over the same shards, and rows/s of `webpairs select`'s decisions.

    .venv/bin/python bench/score.py --nice -10 score --model tiny --pairs 20000 --threads 1
    .venv/bin/python bench/score.py --nice -10 score --model base --pairs 96 --batch-size 16 --threads 1
    .venv/bin/python bench/score.py --nice -10 select --rows 1000000
    .venv/bin/python bench/score.py --nice -10 select --rows 1000000 --mode multi_processing --workers 2
    .venv/bin/python bench/score.py --nice -10 select --rows 100000 --copy    # the whole job, tars too
    .venv/bin/python bench/score.py report

score: N pairs (256 px JPEG crops of the scikit-image / scikit-learn photos, 4-12 word captions)
in tars of 500; a checkpoint of the preset with seeded random weights (the cost of a forward pass
does not depend on the weights). "plain" reads the same tars, decodes with the trainer's
evaluation view and calls the same `ClipScorer.score` in batches, in this process; "beam" is
Create(tars) | Reshuffle | read | ScorePairs | count on the DirectRunner. Both include the
model load on the worker; the driver's checkpoint check (identify_checkpoint) is outside both.
Beam's overhead = 1 - beam pairs/s / plain pairs/s, runs interleaved, best of --repeat.

select: a synthetic scored output (parquet metadata of N rows; with --copy also tars of tiny
members) and the selection top 30 % by clip_score + a --where rule + balanced seeded placement.
Without --copy the job stops after placement (what the metadata path costs); with --copy it is
`webpairs select` itself. Results are appended to bench/out/score/results.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "score"
WORDS = [
    "photo",
    "of",
    "a",
    "red",
    "blue",
    "old",
    "new",
    "dog",
    "cat",
    "car",
    "house",
    "tree",
    "city",
    "beach",
    "logo",
    "sale",
    "shoe",
    "book",
]


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    """-> (wall seconds, CPU seconds, fn's result)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def record(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


# --- score -------------------------------------------------------------------------------------


def bundled_photos() -> list[Path]:
    """Every photo scikit-image and scikit-learn ship (JPEG/PNG of 300 px or more)."""
    import skimage.data
    import sklearn.datasets

    folders = (
        Path(skimage.data.__file__).parent,
        Path(sklearn.datasets.__file__).parent / "images",
    )
    return sorted(p for f in folders for p in f.iterdir() if p.suffix in (".jpg", ".png"))


def make_pairs(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n JPEG pairs (256 px crops of bundled photos) in tars of 500 -> tar paths."""
    import webdataset as wds
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"done-{n}-{seed}"
    if not done.exists():
        rng = random.Random(seed)
        photos = [Image.open(p).convert("RGB") for p in bundled_photos()]
        with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=500, verbose=0) as sink:
            for i in range(n):
                im = rng.choice(photos)
                side = rng.randint(min(im.size) // 3, min(im.size))
                x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
                crop = im.crop((x, y, x + side, y + side)).resize((256, 256))
                buf = io.BytesIO()
                crop.save(buf, "JPEG", quality=90)
                caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
                sink.write({"__key__": f"{i:08d}", "jpg": buf.getvalue(), "txt": caption})
        done.touch()
    return sorted(str(p) for p in folder.glob("*.tar"))


def tar_rows(path: str):
    from schemas import group_samples, tar_members

    with open(path, "rb") as f:
        for sample in group_samples(tar_members(f)):
            yield {
                "key": sample["__key__"],
                "caption": sample["txt"].decode(),
                "_image": sample["jpg"],
            }


def make_checkpoint(model: str, folder: Path) -> Path:
    import torch

    from trainer.checkpoint import latest_checkpoint, save_checkpoint
    from trainer.configs import get_model_config
    from trainer.model import CLIP
    from trainer.tokenizer import CaptionTokenizer, byte_tokenizer

    run = folder / f"run-{model}"
    if latest_checkpoint(run) is None:
        cfg = get_model_config(model)
        tok = CaptionTokenizer(byte_tokenizer(), cfg.text.context_length)
        cfg.text.vocab_size, cfg.text.eot_token_id = tok.vocab_size, tok.eot_id
        cfg.text.pad_token_id = tok.pad_id
        torch.manual_seed(0)
        state = {
            "model": CLIP(cfg).state_dict(),
            "model_config": dataclasses.asdict(cfg),
            "tokenizer": tok.to_json(),
        }
        save_checkpoint(run, 0, state)
    return latest_checkpoint(run)


def run_plain(tars, scorer_id, cfg) -> dict:
    import torch

    from pipeline.scoring.handler import ClipScorer
    from trainer.transforms import decode_image, resize_center_crop

    scorer = ClipScorer(scorer_id, cfg)
    size, scores = scorer_id.image_size, {}

    def flush(batch):
        pixels = torch.stack(
            [resize_center_crop(decode_image(r["_image"], size), size) for r in batch]
        )
        values, _, _ = scorer.score(pixels, [r["caption"] for r in batch])
        scores.update(zip((r["key"] for r in batch), values.tolist()))

    batch = []
    for path in tars:
        for row in tar_rows(path):
            batch.append(row)
            if len(batch) == cfg.batch_size:
                flush(batch)
                batch = []
    if batch:
        flush(batch)
    return scores


def run_beam(tars, scorer_id, cfg, mode: str, workers: int) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.scoring.pairs import ScorePairs

    out = OUT / f"beam-scores-{os.getpid()}.json"
    options = PipelineOptions(
        [
            "--runner=DirectRunner",
            f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}",
        ]
    )
    p = beam.Pipeline(options=options)
    _ = (
        p
        | "Tars" >> beam.Create(tars)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.FlatMap(tar_rows)
        | "ScorePairs" >> ScorePairs(cfg, scorer_id)
        | "KeyScore" >> beam.Map(lambda r: (r["key"], r["clip_score"]))
        | "All" >> beam.combiners.ToDict()
        | "Write" >> beam.Map(lambda d: out.write_text(json.dumps(d)))
    )
    p.run().wait_until_finish()
    scores = json.loads(out.read_text())
    out.unlink()
    return scores


def bench_score(args) -> None:
    import torch

    from pipeline.scoring.identity import identify_checkpoint
    from pipeline.scoring.pairs import ScoreConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    tars = make_pairs(OUT / f"pairs-{args.pairs}", args.pairs)
    checkpoint = make_checkpoint(args.model, OUT)
    scorer_id = identify_checkpoint(str(checkpoint))
    cfg = ScoreConfig(str(checkpoint), batch_size=args.batch_size, threads=args.threads)
    best = {"plain": (float("inf"), 0.0), "beam": (float("inf"), 0.0)}
    worst = 0.0
    for _ in range(args.repeat):  # interleaved, best wall time of each
        wall, cpu, plain = timed(lambda: run_plain(tars, scorer_id, cfg))
        best["plain"] = min(best["plain"], (wall, cpu))
        wall, cpu, beam = timed(lambda: run_beam(tars, scorer_id, cfg, args.mode, args.workers))
        best["beam"] = min(best["beam"], (wall, cpu))
        assert len(beam) == len(plain) == args.pairs
        worst = max(worst, max(abs(plain[k] - beam[k]) for k in plain))
    rates = {k: args.pairs / v[0] for k, v in best.items()}
    record(
        {
            "bench": "score",
            "model": args.model,
            "pairs": args.pairs,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "mode": args.mode,
            "workers": args.workers,
            "plain_s": round(best["plain"][0], 2),
            "beam_s": round(best["beam"][0], 2),
            "plain_cpu_s": round(best["plain"][1], 2),
            "beam_cpu_s": round(best["beam"][1], 2),
            "plain_pairs_per_s": round(rates["plain"], 1),
            "beam_pairs_per_s": round(rates["beam"], 1),
            "beam_overhead": round(1 - rates["beam"] / rates["plain"], 3),
            "max_score_difference": worst,
            "load_before": os.getloadavg()[0],
        }
    )


# --- select ------------------------------------------------------------------------------------


def make_scored_output(folder: Path, n: int, per_shard: int, with_tars: bool) -> Path:
    """A synthetic scored webpairs output: parquet metadata (and tiny tars) of n rows."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.io.shards import write_manifest, write_tar
    from pipeline.results import rows_to_table
    from schemas import ShardEntry, key_for_url

    done = folder / "manifest.json"
    if done.exists():
        return folder
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for s in range(0, n, per_shard):
        name = f"{s // per_shard:05d}"
        count = min(per_shard, n - s)
        scores = rng.normal(0.25, 0.05, count)
        widths = rng.integers(64, 1024, count)
        rows = [
            {
                "key": key_for_url(f"synthetic:{s + i}"),
                "url": f"https://example.com/{s + i}.jpg",
                "caption": "a photo of something",
                "status": "ok",
                "original_width": int(widths[i]),
                "original_height": 256,
                "width": 256,
                "height": 256,
                "shard": name,
                "clip_score": float(scores[i]),
            }
            for i in range(count)
        ]
        pq.write_table(rows_to_table(rows), folder / "shards" / f"{name}.parquet")
        size, digest = 0, ""
        if with_tars:
            for row in rows:
                row.update(_image=b"\xff\xd8tiny", _ext="jpg")
            with open(folder / "shards" / f"{name}.tar", "wb") as f:
                size, digest = write_tar(rows, f)
        entries.append(
            ShardEntry(f"shards/{name}.tar", count, size, digest, f"shards/{name}.parquet")
        )
    write_manifest(entries, str(folder), {}, scorer={"model": "synthetic", "sha256": "0" * 64})
    return folder


def bench_select(args) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.curation.rules import Where, parse_rule
    from pipeline.io.reshard import PlaceSamples, ReadSource, open_source
    from pipeline.jobs.select import main
    from pipeline.scoring.clip_filter import ClipScoreConfig, ClipScoreFilter

    kind = "tars" if args.copy else "meta"
    source = make_scored_output(
        OUT / f"select-{kind}-{args.rows}", args.rows, args.per_shard, args.copy
    )
    beam_flags = [f"--direct_running_mode={args.mode}", f"--direct_num_workers={args.workers}"]
    start = time.perf_counter()
    if args.copy:
        out = OUT / f"selected-{args.rows}"
        code = main(
            ["--input", str(source), "--output", str(out), "--overwrite"]
            + ["--recipe", "datacomp_clip_top30", "--where", "original_width>=128"]
            + beam_flags
        )
        assert code == 0
    else:
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_flags]))
        rows = p | ReadSource(open_source(str(source)))
        kept = (rows | Where((parse_rule("original_width>=128"),)))["kept"]
        kept = (kept | ClipScoreFilter(ClipScoreConfig(top_fraction=0.3)))["kept"]
        placed = kept | PlaceSamples(seed=0, samples_per_shard=10_000)
        _ = placed["placed"] | beam.combiners.Count.Globally() | beam.Map(print)
        p.run().wait_until_finish()
    seconds = time.perf_counter() - start
    record(
        {
            "bench": "select",
            "rows": args.rows,
            "copy": args.copy,
            "mode": args.mode,
            "workers": args.workers,
            "seconds": round(seconds, 1),
            "rows_per_s": round(args.rows / seconds),
        }
    )


def report() -> None:
    for line in (OUT / "results.jsonl").read_text().splitlines():
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("score")
    s.add_argument("--model", default="tiny", choices=["tiny", "small", "base"])
    s.add_argument("--pairs", type=int, default=4000)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--repeat", type=int, default=2)
    s.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    s.add_argument("--workers", type=int, default=1)
    t = sub.add_parser("select")
    t.add_argument("--rows", type=int, default=1_000_000)
    t.add_argument("--per-shard", type=int, default=10_000)
    t.add_argument("--copy", action="store_true", help="the whole select job, tars included")
    t.add_argument("--mode", default="in_memory", choices=["in_memory", "multi_processing"])
    t.add_argument("--workers", type=int, default=1)
    sub.add_parser("report")
    parser.add_argument(
        "--nice", type=int, default=0, help="run at this niceness (-10: ahead of other work)"
    )
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)
    if args.what == "score":
        bench_score(args)
    elif args.what == "select":
        bench_select(args)
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
