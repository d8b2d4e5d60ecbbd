"""What the trainer's presets learn from noisy web captions: scikit-learn's digits captioned the
way the web captions images (several phrasings, 15 % wrong digits, 5 % junk), written as
img2dataset-layout shards, trained with the README's CPU command, zero-shot top-1 on held-out
digits; and the same shards through OpenCLIP's own trainer.

    .venv/bin/python bench/learning.py data --out bench/out/learning/heldout
    .venv/bin/python bench/learning.py data --out bench/out/learning/validation --validation
    .venv/bin/python bench/learning.py --nice 10 ours --data bench/out/learning/validation \\
        --model tiny --steps 600 --seeds 0 1 2
    .venv/bin/python bench/learning.py report

`data` renders the digits: the held-out quarter (stratified, seed 0) becomes a folder per class
(`heldout/zero/...`), the rest the web. With `--validation` the held-out digits are neither
rendered nor read: the web is three quarters of the *training* digits and the folder
(`validation/`) the last quarter. Every choice of a preset's settings is made on a
`--validation` dataset; the held-out dataset only reports.

Every run is appended to bench/out/learning/results.jsonl; `report` prints the tables.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "learning"
RESULTS = OUT / "results.jsonl"

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# how people caption a picture of a digit; {name}: "seven", {digit}: "7"
PHRASINGS = (
    "a handwritten digit {name}",
    "the number {digit} written by hand",
    "handwritten {name}",
    "scan of a hand-written {digit}",
    "a photo of the number {name}",
    "digit {digit}",
    "{name}",
    "the numeral {name} drawn with a pen",
)
JUNK = ("IMG_{n:04d}.jpg", "image", "untitled", "DSC{n:05d}", "640x480", "click here", "photo")


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "trainer"], cwd=REPO, capture_output=True
    )
    return head.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")


def record(row: dict) -> None:
    row = {**row, "commit": commit(), "machine": machine(), "load": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


# --- data --------------------------------------------------------------------------------------


def split(validation: bool, seed: int = 0) -> tuple[list[int], list[int]]:
    """(digits the web is made of, digits to evaluate on): held-out = a stratified quarter of
    the 1,797; with `validation`, a stratified quarter of the other three quarters instead."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    idx = list(range(len(target)))
    train, held_out = train_test_split(idx, test_size=0.25, stratify=target, random_state=seed)
    if validation:
        train, held_out = train_test_split(
            train, test_size=0.25, stratify=target[train], random_state=seed
        )
    return sorted(train), sorted(held_out)


def render(pixels, size: int, rng: random.Random):
    """An 8x8 digit (0..16) as a dark-on-light, slightly tinted RGB image of `size` px."""
    import numpy as np
    from PIL import Image

    arr = (255 - np.asarray(pixels, dtype=float).reshape(8, 8) * 255 / 16).clip(0, 255)
    im = Image.fromarray(arr.astype("uint8"), "L").resize((size, size), Image.Resampling.BICUBIC)
    tint = tuple(rng.randint(215, 255) for _ in range(3))
    return Image.merge("RGB", [im.point(lambda v, t=t: v * t // 255) for t in tint])


def caption(label: int, rng: random.Random, n: int, wrong: float, junk: float) -> tuple[str, str]:
    """(caption, kind): kind is "right", "wrong" (names another digit) or "junk"."""
    roll = rng.random()
    if roll < junk:
        return rng.choice(JUNK).format(n=n), "junk"
    kind = "right"
    if roll < junk + wrong:
        label, kind = (label + rng.randint(1, 9)) % 10, "wrong"
    return rng.choice(PHRASINGS).format(name=DIGIT_NAMES[label], digit=label), kind


def write_shards(folder: Path, samples: list[dict], per_shard: int) -> list[str]:
    """img2dataset's output layout: NNNNN.tar (KEY.jpg, KEY.txt, KEY.json), NNNNN.parquet and
    NNNNN_stats.json per shard, keys of shard number + index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tars = []
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i, s in enumerate(samples[start : start + per_shard]):
                key = f"{shard:05d}{i:04d}"
                meta = {"key": key, "url": s["url"], "caption": s["caption"], "status": "success"}
                meta |= {"width": s["size"], "height": s["size"], "label": s["label"]}
                meta["caption_kind"] = s["kind"]
                for ext, data in (
                    ("jpg", s["jpg"]),
                    ("txt", s["caption"].encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
                rows.append(meta)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
        stats = {"count": len(rows), "successes": len(rows), "failed_to_download": 0}
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
        tars.append(str(folder / f"{shard:05d}.tar"))
    return tars


def make_data(
    out: Path,
    validation: bool = False,
    wrong: float = 0.15,
    junk: float = 0.05,
    size: int = 64,
    shards: int = 4,
    seed: int = 0,
) -> dict:
    """Shards of noisy captions in out/shards, the evaluation digits in out/{heldout|validation}
    (a folder per class name); -> counts, also written to out/data.json."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    web, evaluation = split(validation, seed)
    rng = random.Random(seed)
    samples, kinds = [], {"right": 0, "wrong": 0, "junk": 0}
    for i in web:
        label = int(digits.target[i])
        buf = io.BytesIO()
        render(digits.data[i], size, rng).save(buf, "JPEG", quality=rng.randint(80, 95))
        text, kind = caption(label, rng, i, wrong, junk)
        kinds[kind] += 1
        samples.append(
            {"jpg": buf.getvalue(), "caption": text, "label": label, "kind": kind, "size": size}
            | {"url": f"http://digits.example/{i:05d}.jpg"}
        )
    rng.shuffle(samples)
    tars = write_shards(out / "shards", samples, -(-len(samples) // shards))
    name = "validation" if validation else "heldout"
    for i in evaluation:
        folder = out / name / DIGIT_NAMES[int(digits.target[i])]
        folder.mkdir(parents=True, exist_ok=True)
        render(digits.data[i], size, rng).save(folder / f"{i:05d}.png")
    info = {
        "shards": tars,
        "web_digits": len(web),
        "eval_digits": len(evaluation),
        "evaluated_on": name,
        "captions": kinds,
        "wrong": wrong,
        "junk": junk,
    }
    (out / "data.json").write_text(json.dumps(info, indent=1))
    names = [f"{name}|{digit}" for digit, name in enumerate(DIGIT_NAMES)]
    (out / "classnames.txt").write_text("\n".join(names) + "\n")
    return info


def data(args) -> None:
    info = make_data(Path(args.out), args.validation, args.wrong, args.junk, seed=args.seed)
    print(json.dumps({k: v for k, v in info.items() if k != "shards"}))


# --- ours --------------------------------------------------------------------------------------


def eval_folder(data_dir: Path) -> Path:
    info = json.loads((data_dir / "data.json").read_text())
    return data_dir / info["evaluated_on"]


def ours(args) -> None:
    data_dir = Path(args.data)
    info = json.loads((data_dir / "data.json").read_text())
    shards = str(data_dir / "shards/*.tar")
    for seed in args.seeds:
        run = OUT / "runs" / f"{data_dir.name}-{args.name or args.model}-{args.steps}-s{seed}"
        cmd = [
            sys.executable, "-m", "trainer", "train", "--data", shards,
            "--output", str(run), "--model", args.model, "--batch-size", str(args.batch_size),
            "--image-size", "32", "--workers", "2", "--steps", str(args.steps),
            "--seed", str(seed), "--log-every", "50", *args.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(["rm", "-rf", str(run)], check=True)
        start = time.monotonic()
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        folder = eval_folder(data_dir)
        default = zeroshot(run, folder, args.eval_extra, env)
        names = data_dir / "classnames.txt"
        # the digit's word and numeral, templates from how the training captions name digits
        from_captions = zeroshot(
            run,
            folder,
            ["--classnames", str(names), "--templates-from", shards, *args.eval_extra],
            env,
        )
        ensemble = zeroshot(run, folder, ["--templates", ensemble_file(), *args.eval_extra], env)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in records if "loss" in r][-1]
        curve = {r["step"]: r["eval/top-1"] for r in records if "eval/top-1" in r}
        # training speed after the first logged step (start-up, tokenizer and workers excluded)
        timed = [r for r in records if "loss" in r]
        rate = (timed[-1]["step"] - timed[0]["step"]) * args.batch_size
        rate /= timed[-1]["time"] - timed[0]["time"]
        record(
            {
                "trainer": "webpairs",
                "name": args.name or args.model,
                "model": args.model,
                "extra": args.extra,
                "eval_extra": args.eval_extra,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "seed": seed,
                "evaluated_on": info["evaluated_on"],
                "top1": default["top-1"],
                "default_templates": default["prompts"]["templates"],
                "default_templates_from": default["prompts"].get("templates_from"),
                "top1_ensemble": ensemble["top-1"],
                "top1_caption_prompts": from_captions["top-1"],
                "caption_templates": from_captions["prompts"]["templates"],
                "final_loss": last.get("loss"),
                "final_batch_accuracy": last.get("batch_accuracy"),
                "eval_curve": curve,
                "seconds": round(seconds, 1),
                "samples_per_s": round(rate, 1),
                "parameters": parameters(run),
                "command": " ".join(cmd[2:]),
            }
        )


def parameters(run: Path) -> int:
    """The trained model's parameter count (the vocabulary is the run's tokenizer's)."""
    from trainer.checkpoint import load_model

    model, _ = load_model(str(run), "cpu")
    return sum(p.numel() for p in model.parameters())


def ensemble_file() -> str:
    """The default ensemble (DEFAULT_TEMPLATES) as a --templates file: what `webpairs eval`
    uses when a run recorded no captions naming the classes."""
    path = OUT / "ensemble-templates.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(DEFAULT_TEMPLATES) + "\n")
    return str(path)


def zeroshot(run: Path, folder: Path, extra: list[str], env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "eval", "--checkpoint", str(run), "--zeroshot",
         str(folder), "--json", *extra],
        check=True, env=env, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    """Training samples/s of each preset with the README's CPU command, presets interleaved
    round by round (compare within a round: the machine is shared)."""
    data_dir = Path(args.data)
    shards = str(data_dir / "shards/*.tar")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_ in range(args.rounds):
        for model in args.models:
            run = OUT / "runs" / f"speed-{model}"
            cmd = [
                sys.executable, "-m", "trainer", "train", "--data", shards, "--output", str(run),
                "--model", model, "--batch-size", str(args.batch_size), "--image-size", "32",
                "--workers", "2", "--steps", str(args.steps), "--log-every", "25",
            ]  # fmt: skip
            subprocess.run(["rm", "-rf", str(run)], check=True)
            load = os.getloadavg()[0]
            subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
            lines = (run / "metrics.jsonl").read_text().splitlines()
            timed = [r for r in map(json.loads, lines) if "loss" in r]
            rate = (timed[-1]["step"] - timed[0]["step"]) * args.batch_size
            rate /= timed[-1]["time"] - timed[0]["time"]
            row = {"model": model, "round": round_, "steps": args.steps, "load_before": load}
            row |= {"samples_per_s": round(rate, 1), "parameters": parameters(run)}
            row |= {"command": " ".join(cmd[2:]), "commit": commit(), "machine": machine()}
            with (OUT / "speed.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


# --- prompts -----------------------------------------------------------------------------------

# the four templates `webpairs eval` used by default before the ensemble with the bare name
PHOTO_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of the {}.",
)


def prompts(args) -> None:
    """Zero-shot top-1 of trained runs under each prompt set, on the data's evaluation folder."""
    data_dir = Path(args.data)
    folder, names = eval_folder(data_dir), str(data_dir / "classnames.txt")
    shards = str(data_dir / "shards/*.tar")
    photo = OUT / "photo-templates.txt"
    photo.write_text("\n".join(PHOTO_TEMPLATES) + "\n")
    ensemble = ensemble_file()
    sets = {
        "photo templates, folder names": ["--templates", str(photo)],
        "ensemble, folder names": ["--templates", ensemble],
        "ensemble, word|numeral": ["--classnames", names, "--templates", ensemble],
        "default: the run's training captions, folder names": [],
        "from captions, word|numeral": ["--classnames", names, "--templates-from", shards],
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for run in args.runs:
        for kind, flags in sets.items():
            top1 = zeroshot(Path(run), folder, flags, env)["top-1"]
            print(json.dumps({"run": run, "prompts": kind, "top1": top1}), flush=True)
            with (OUT / "prompts.jsonl").open("a") as f:
                f.write(
                    json.dumps({"run": run, "prompts": kind, "top1": top1, "commit": commit()})
                    + "\n"
                )


# --- OpenCLIP ----------------------------------------------------------------------------------

# OpenCLIP model configs of the sizes compared (open_clip/model_configs/*.json layout);
# vocabulary: OpenAI's CLIP BPE, which OpenCLIP's custom configs use.
OPENCLIP_MODELS = {
    # the size of our `tiny` ViT: 32 px / 8, width 64, 2 layers; text width 64, 2 layers
    "oc-tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                       "head_width": 32, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
    # the comparison: 32 px / 4, width 192, 4 layers; text width 128, 3 layers
    "oc-issue": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 192, "layers": 4,
                       "head_width": 64, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2,
                     "layers": 3},
    },
}  # fmt: skip

OPENCLIP_MAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
    "from open_clip_train.main import main; main(sys.argv[1:])"
)


def openclip(args) -> None:
    """OpenCLIP's own trainer (`open_clip_train.main`, its webdataset loader, its loss) on the
    same shards, steps, batch and schedule; evaluated by `openclip-eval` with the same prompts."""
    data_dir = Path(args.data)
    info = json.loads((data_dir / "data.json").read_text())
    configs = OUT / "openclip-configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{args.model}.json").write_text(json.dumps(OPENCLIP_MODELS[args.model]))
    shards = sorted((data_dir / "shards").glob("*.tar"))
    pattern = f"{data_dir / 'shards'}/{{{shards[0].stem}..{shards[-1].stem}}}.tar"
    epochs = 6  # resampled: `steps / epochs` batches an epoch
    for seed in args.seeds:
        name = f"{data_dir.name}-{args.name or args.model}-{args.steps}-s{seed}"
        logs = OUT / "openclip-runs"
        subprocess.run(["rm", "-rf", str(logs / name)], check=True)
        cmd = [
            args.python, "-c", OPENCLIP_MAIN, str(configs),
            "--train-data", pattern, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(args.steps * args.batch_size // epochs),
            "--epochs", str(epochs), "--batch-size", str(args.batch_size), "--workers", "2",
            "--model", args.model, "--lr", str(args.lr), "--warmup", str(args.warmup),
            "--wd", str(args.wd), "--precision", "fp32", "--device", "cpu", "--seed", str(seed),
            "--logs", str(logs), "--name", name, "--save-frequency", str(epochs),
            "--zeroshot-frequency", "0", "--val-frequency", "0", "--log-every-n-steps", "50",
            "--report-to", "",
        ]  # fmt: skip
        start = time.monotonic()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        checkpoint = logs / name / "checkpoints" / f"epoch_{epochs}.pt"
        folder, names = eval_folder(data_dir), data_dir / "classnames.txt"
        results = {}
        # the prompts `webpairs eval` would use: templates from the training captions with the
        # folder names (its default), the ensemble, those templates over "seven|7" names
        for kind, flags in (
            ("default", ["--templates", caption_templates(data_dir, folders=True)]),
            ("ensemble", []),
            ("caption_prompts", ["--classnames", str(names), "--templates",
                                 caption_templates(data_dir)]),
        ):  # fmt: skip
            out = subprocess.run(
                [args.python, __file__, "openclip-eval", "--configs", str(configs),
                 "--model", args.model, "--checkpoint", str(checkpoint), "--folder", str(folder),
                 *flags],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])["top-1"]
        record(
            {
                "trainer": "open_clip_train",
                "name": args.name or args.model,
                "model": args.model,
                "extra": [f"--lr {args.lr} --warmup {args.warmup} --wd {args.wd}"],
                "steps": args.steps,
                "batch_size": args.batch_size,
                "seed": seed,
                "evaluated_on": info["evaluated_on"],
                "top1": results["default"],
                "top1_ensemble": results["ensemble"],
                "top1_caption_prompts": results["caption_prompts"],
                "seconds": round(seconds, 1),
                "command": " ".join(cmd[3:]),
            }
        )


def caption_templates(data_dir: Path, folders: bool = False) -> str:
    """The templates our `--templates-from` derives from the training captions, as a file (so
    that both trainers are evaluated with the very same prompts): for the "word|numeral" class
    names, or (`folders`) for the folder names, as `webpairs eval` does by default."""
    from trainer.prompts import read_classnames, templates_from_captions
    from trainer.tokenizer import shard_captions

    names = read_classnames(str(data_dir / "classnames.txt"))
    if folders:
        names = [[n[0]] for n in names]
    templates = templates_from_captions(shard_captions([str(data_dir / "shards/*.tar")]), names)
    path = data_dir / (("folder-" if folders else "") + "caption-templates.txt")
    path.write_text("\n".join(templates) + "\n")
    return str(path)


def openclip_eval(args) -> None:
    """Zero-shot top-1 of an OpenCLIP checkpoint, with our prompts (runs in OpenCLIP's venv:
    the default templates and names are copied, not imported)."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    open_clip.add_model_config(args.configs)
    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=args.checkpoint
    )
    tokenizer = open_clip.get_tokenizer(args.model)
    model.eval()
    folder = Path(args.folder)
    folders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if args.classnames:
        lines = [ln for ln in Path(args.classnames).read_text().splitlines() if ln.strip()]
        classes = [[n.strip() for n in ln.split("|")] for ln in lines]
        folders = [next(n for n in names if n in folders) for names in classes]
    else:
        classes = [[f.replace("_", " ")] for f in folders]
    templates = (
        [t for t in Path(args.templates).read_text().splitlines() if t.strip()]
        if args.templates
        else list(DEFAULT_TEMPLATES)
    )
    hits = total = 0
    with torch.no_grad():
        columns = []
        for names in classes:
            ids = tokenizer([t.format(n) for n in names for t in templates])
            emb = F.normalize(model.encode_text(ids).float(), dim=-1).mean(dim=0)
            columns.append(F.normalize(emb, dim=0))
        classifier = torch.stack(columns, dim=1)  # (D, C)
        for label, name in enumerate(folders):
            paths = sorted((folder / name).iterdir())
            pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
            features = F.normalize(model.encode_image(pixels).float(), dim=-1)
            hits += ((features @ classifier).argmax(dim=1) == label).sum().item()
            total += len(paths)
    print(json.dumps({"top-1": hits / total, "images": total}))


# a copy of trainer/prompts.py's DEFAULT_TEMPLATES (openclip-eval runs in another venv);
# tests/test_bench.py checks they are the same
DEFAULT_TEMPLATES = (
    "{}",
    "a photo of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "the {}.",
    "a drawing of a {}.",
)


# --- report ------------------------------------------------------------------------------------


def report(args) -> None:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["evaluated_on"], r["trainer"], r["name"], r["steps"], r["batch_size"])
        groups.setdefault(key, []).append(r)
    print(
        "| evaluated on | trainer | setting | seeds | top-1, default prompts | top-1, ensemble "
        "| top-1, captions' templates, word\\|numeral | s/run | commits |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for (on, trainer, name, _, _), rs in groups.items():
        columns = [
            spread([r[k] for r in rs if k in r])
            for k in ("top1", "top1_ensemble", "top1_caption_prompts")
        ]
        secs = [r["seconds"] for r in rs if r.get("seconds")]
        commits = ", ".join(sorted({r["commit"] for r in rs}))
        seconds = f"{statistics.mean(secs):.0f}" if secs else ""
        print(
            f"| {on} | {trainer} | {name} | {len(rs)} | {' | '.join(columns)} | {seconds} | {commits} |"
        )


def spread(values: list[float]) -> str:
    """mean (min-max)"""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nice", type=int, default=0, help="lower this process's priority first")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="render noisy digit shards and the evaluation folder")
    d.add_argument("--out", required=True)
    d.add_argument("--validation", action="store_true")
    d.add_argument("--wrong", type=float, default=0.15)
    d.add_argument("--junk", type=float, default=0.05)
    d.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("ours", help="webpairs train + eval, one run per seed")
    o.add_argument("--data", required=True, help="a folder `data` wrote")
    o.add_argument("--model", default="tiny")
    o.add_argument("--name", help="the setting's name in the tables (default: the model)")
    o.add_argument("--steps", type=int, default=600)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--seeds", type=int, nargs="+", default=[0])
    o.add_argument("--extra", type=shlex.split, default=[], help="more train flags, one string")
    o.add_argument("--eval-extra", type=shlex.split, default=[], help="more eval flags")
    c = sub.add_parser("openclip", help="OpenCLIP's trainer + eval, one run per seed")
    c.add_argument("--data", required=True, help="a folder `data` wrote")
    c.add_argument("--python", default="/tmp/openclip-venv/bin/python", help="OpenCLIP's venv")
    c.add_argument("--model", default="oc-tiny", choices=sorted(OPENCLIP_MODELS))
    c.add_argument("--name", help="the setting's name in the tables (default: the model)")
    c.add_argument("--steps", type=int, default=600)
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=5e-4)
    c.add_argument("--warmup", type=int, default=100)
    c.add_argument("--wd", type=float, default=0.2)
    c.add_argument("--seeds", type=int, nargs="+", default=[0])
    e = sub.add_parser("openclip-eval", help="(internal) zero-shot top-1 in OpenCLIP's venv")
    for flag in ("--configs", "--model", "--checkpoint", "--folder"):
        e.add_argument(flag, required=True)
    e.add_argument("--classnames")
    e.add_argument("--templates")
    q = sub.add_parser("prompts", help="zero-shot top-1 of runs under each prompt set")
    q.add_argument("--data", required=True, help="a folder `data` wrote")
    q.add_argument("--runs", nargs="+", required=True, help="run folders")
    v = sub.add_parser("speed", help="training samples/s of presets, interleaved")
    v.add_argument("--data", required=True, help="a folder `data` wrote")
    v.add_argument("--models", nargs="+", default=["smoke", "tiny", "tiny-resnet"])
    v.add_argument("--steps", type=int, default=200)
    v.add_argument("--batch-size", type=int, default=128)
    v.add_argument("--rounds", type=int, default=2)
    sub.add_parser("report", help="print the tables")
    args = p.parse_args()
    if args.nice:
        os.nice(args.nice)
    commands = {"data": data, "ours": ours, "openclip": openclip, "report": report}
    commands["openclip-eval"] = openclip_eval
    commands["prompts"] = prompts
    commands["speed"] = speed
    commands[args.command](args)


if __name__ == "__main__":
    main()
