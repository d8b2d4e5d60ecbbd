"""Zero-shot classification and image<->text retrieval of a trained dual encoder.

    python -m trainer eval --checkpoint runs/tiny --zeroshot digits-test/          # folder per class
    python -m trainer eval --checkpoint runs/tiny/checkpoints/step-00000300.pt \\
        --zeroshot 'labelled/{0..3}.tar' --classnames zero,one,two --templates openai_imagenet \\
        --retrieval 'val/{0..3}.tar'
    top-1 0.8125
    top-5 0.9900
    image_to_text_R@1 0.4100
    ...
    results: runs/tiny/checkpoints/step-00000300.eval.json

The printout is also written as JSON beside the checkpoint (CHECKPOINT.eval.json, or --results
FILE), with the checkpoint, the prompts and the data it was measured on.

Zero-shot: each class name goes through every prompt template; the normalized text embeddings
are averaged (and normalized again) into one classifier column per class. Labelled shards carry
the class index in KEY.cls or in KEY.json's "label". Any model with `encode_image(pixels)` and
`encode_text(ids)` can be evaluated; the training loop calls `evaluate()` every N steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from schemas.imagehash import DECODE_ERRORS
from schemas.sample import IMAGE_EXTENSIONS, image_extension
from trainer.checkpoint import load_model, resolve_checkpoint, run_captions
from trainer.configs import EvalConfig, UserError
from trainer.distributed import pick_device
from trainer.prompts import (
    DEFAULT_TEMPLATES,
    Prompts,
    read_classnames,
    read_templates,
    templates_from_captions,
)
from trainer.sources import SHARD_ERRORS, DataError, iter_shard, resolve_sources
from trainer.tokenizer import shard_captions
from trainer.transforms import decode_image, normalize, resize_center_crop

log = logging.getLogger(__name__)


def labelled_folder(
    root: Path, order: list[list[str]] | None = None
) -> tuple[list[list[str]], Iterator[tuple[bytes, int]]]:
    """A folder per class: (the names of each class, (image bytes, label) pairs).

    Without `order`, a class is named by its folder (spaces for underscores). `order` (as
    --classnames gives it) lists each class's names in the order labels should follow; one of
    a class's names must be its folder's."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise UserError(f"{root} has no class folders")
    by_name = {f.replace("_", " "): f for f in folders}
    classes = [[name] for name in by_name]
    if order:
        matched = [next((n for n in names if n in by_name), None) for names in order]
        if None in matched or sorted(matched) != sorted(by_name):
            given = ", ".join("|".join(names) for names in order)
            raise UserError(
                f"--classnames {given} do not match the class folders of {root}: "
                f"{', '.join(sorted(by_name))}"
            )
        folders, classes = [by_name[name] for name in matched], order

    def items():
        for label, name in enumerate(folders):
            for path in sorted((root / name).iterdir()):
                if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
                    yield path.read_bytes(), label

    return classes, items()


def shard_samples(spec: str) -> Iterator[dict]:
    for shard in resolve_sources([spec]):
        try:
            for _, key, members in iter_shard(shard.url):
                yield {"__key__": key, **members}
        except SHARD_ERRORS as e:
            log.warning("skipping the rest of unreadable shard %s: %s", shard.url, e)


def labelled_shards(spec: str) -> Iterator[tuple[bytes, int]]:
    for sample in shard_samples(spec):
        ext = image_extension(sample)
        try:
            if "cls" in sample:
                label = int(sample["cls"].decode().strip())
            else:
                label = json.loads(sample.get("json", b"{}")).get("label")
        except ValueError:  # not a number, not JSON
            label = None
        if ext is None or label is None:
            log.warning(
                "skipping %s: no image or no label (KEY.cls or json 'label')", sample["__key__"]
            )
            continue
        yield sample[ext], int(label)


def image_batches(items, image_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, list]]:
    """(image bytes, anything) pairs -> (uint8 (B, 3, S, S), [anything]) batches; bad images skipped."""
    pixels, extras = [], []
    for data, extra in items:
        try:
            pixels.append(resize_center_crop(decode_image(data, image_size), image_size))
        except DECODE_ERRORS as e:
            log.warning("skipping an undecodable image: %s", e)
            continue
        extras.append(extra)
        if len(pixels) == batch_size:
            yield torch.stack(pixels), extras
            pixels, extras = [], []
    if pixels:
        yield torch.stack(pixels), extras


@torch.no_grad()
def zeroshot_classifier(model, tokenizer, prompts: Prompts, device) -> torch.Tensor:
    """(D, C): per class, the normalized mean of its normalized prompt embeddings (every
    template with every name of the class)."""
    columns = []
    for label in range(len(prompts.classnames)):
        ids = tokenizer(prompts.texts(label)).to(device)  # (P, T)
        emb = F.normalize(model.encode_text(ids).float(), dim=-1).mean(dim=0)  # (D,)
        columns.append(F.normalize(emb, dim=0))
    return torch.stack(columns, dim=1)


@torch.no_grad()
def zeroshot_accuracy(
    model, classifier, batches, device, confusion: torch.Tensor | None = None
) -> dict[str, float]:
    """Top-1/top-5 over labelled batches; `confusion` (C, C), if given, counts (true, predicted)."""
    k = min(5, classifier.shape[1])
    hits1 = hits5 = total = 0
    for images, labels in batches:
        features = F.normalize(model.encode_image(normalize(images.to(device))).float(), dim=-1)
        top = (features @ classifier).topk(k, dim=1).indices  # (B, k)
        labels = torch.tensor(labels, device=device).unsqueeze(1)  # (B, 1)
        if confusion is not None:
            confusion.index_put_(
                (labels[:, 0].cpu(), top[:, 0].cpu()),
                torch.ones(len(labels), dtype=confusion.dtype),
                accumulate=True,
            )
        hits1 += (top[:, :1] == labels).sum().item()
        hits5 += (top == labels).any(dim=1).sum().item()
        total += labels.shape[0]
    if total == 0:
        raise DataError("no labelled image to evaluate zero-shot classification on")
    return {"top-1": hits1 / total, "top-5": hits5 / total, "zeroshot_images": total}


@torch.no_grad()
def retrieval_recall(model, tokenizer, spec, image_size, batch_size, device, ks=(1, 5, 10)):
    """Recall@K both ways over the image-caption pairs of shards `spec` (one caption each)."""
    pairs = (
        (s[image_extension(s)], s["txt"].decode("utf-8", errors="replace"))
        for s in shard_samples(spec)
        if image_extension(s) and "txt" in s
    )
    image_features, text_features = [], []
    for images, captions in image_batches(pairs, image_size, batch_size):
        image_features.append(model.encode_image(normalize(images.to(device))).float())
        text_features.append(model.encode_text(tokenizer(captions).to(device)).float())
    if not image_features:
        raise DataError(f"no image-caption pair in {spec} for retrieval")
    images = F.normalize(torch.cat(image_features), dim=-1)  # (N, D)
    texts = F.normalize(torch.cat(text_features), dim=-1)  # (N, D)
    sim = images @ texts.T  # (N, N); pair i is (image i, text i)
    true = sim.diagonal().unsqueeze(1)  # (N, 1)
    # rank of the true match = how many candidates score strictly higher
    i2t = (sim > true).sum(dim=1)  # (N,)
    t2i = (true < sim.T).sum(dim=1)  # (N,)
    results = {}
    for k in ks:
        results[f"image_to_text_R@{k}"] = (i2t < k).float().mean().item()
        results[f"text_to_image_R@{k}"] = (t2i < k).float().mean().item()
    results["retrieval_pairs"] = sim.shape[0]
    return results


def zeroshot_prompts(cfg: EvalConfig) -> tuple[Prompts, Iterator[tuple[bytes, int]]]:
    """The prompts of `cfg` and its labelled images. Templates: --templates, else those the
    captions of --templates-from name classes with, else those of the run's own training
    captions (RUN/captions.txt), else the default ensemble."""
    root = Path(cfg.zeroshot)
    if root.is_dir():
        classnames, items = labelled_folder(root, read_classnames(cfg.classnames))
    else:
        classnames, items = read_classnames(cfg.classnames), labelled_shards(cfg.zeroshot)
        if not classnames:
            raise UserError("--classnames is needed for labelled shards")
    templates = read_templates(cfg.templates)
    if templates is not None:
        return Prompts(classnames, templates, f"--templates {cfg.templates}"), items
    if cfg.templates_from:
        source, captions = (
            f"--templates-from {cfg.templates_from}",
            shard_captions([cfg.templates_from]),
        )
    elif cfg.captions and Path(cfg.captions).is_file():
        source = f"the training captions in {cfg.captions}"
        captions = Path(cfg.captions).read_text().splitlines()
    else:
        return Prompts(classnames, list(DEFAULT_TEMPLATES)), items
    templates = templates_from_captions(captions, classnames)
    if not templates:
        log.warning("no caption of %s names a class: default templates", source)
        return Prompts(classnames, list(DEFAULT_TEMPLATES)), items
    return Prompts(classnames, templates, source), items


def evaluate(
    model, tokenizer, cfg: EvalConfig, image_size: int, device, details: dict | None = None
) -> dict[str, float]:
    """Scalar results; `details`, if given, also receives the prompts (class names, templates)
    and the confusion matrix."""
    results: dict[str, float] = {}
    if cfg.zeroshot:
        prompts, items = zeroshot_prompts(cfg)
        classnames = prompts.labels()
        classifier = zeroshot_classifier(model, tokenizer, prompts, device)
        batches = image_batches(items, image_size, cfg.batch_size)
        confusion = (
            torch.zeros(len(classnames), len(classnames), dtype=torch.long)
            if details is not None
            else None
        )
        results.update(
            zeroshot_accuracy(
                model, classifier, _check_labels(batches, classnames), device, confusion
            )
        )
        if details is not None:
            details.update(
                classnames=classnames, prompts=prompts.to_dict(), confusion=confusion.tolist()
            )
    if cfg.retrieval:
        results.update(
            retrieval_recall(model, tokenizer, cfg.retrieval, image_size, cfg.batch_size, device)
        )
    return results


def _check_labels(batches, classnames):
    for images, labels in batches:
        bad = [label for label in labels if not 0 <= label < len(classnames)]
        if bad:
            raise UserError(f"label {bad[0]} is outside the {len(classnames)} class names")
        yield images, labels


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webpairs eval", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE")
    p.add_argument("--zeroshot", metavar="FOLDER_OR_SHARDS")
    p.add_argument(
        "--classnames",
        help="file with one class a line, or comma-separated classes; several names of a class "
        "separated by | (seven|7), their prompts averaged",
    )
    p.add_argument(
        "--templates",
        help="openai_imagenet (OpenAI's 80 ImageNet templates), default, or a file with one "
        "prompt template a line",
    )
    p.add_argument(
        "--templates-from",
        metavar="SHARDS",
        help="templates from how these shards' captions name the classes (the commonest)",
    )
    p.add_argument("--retrieval", metavar="SHARDS", help="recall@1/5/10 image->text, text->image")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument(
        "--results",
        metavar="FILE",
        help="where the results go as JSON (default: beside the checkpoint, CHECKPOINT.eval.json)",
    )
    p.add_argument(
        "--details",
        metavar="FILE",
        help="write results, class names and the confusion matrix as JSON",
    )
    return p


def results_path(checkpoint: Path) -> Path:
    """CHECKPOINT.eval.json beside a checkpoint file or a sharded checkpoint's folder."""
    return checkpoint.with_name(checkpoint.name.removesuffix(checkpoint.suffix) + ".eval.json")


def main(argv: list[str] | None = None) -> int:
    args = build_eval_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = EvalConfig(
        zeroshot=args.zeroshot,
        classnames=args.classnames,
        templates=args.templates,
        templates_from=args.templates_from,
        retrieval=args.retrieval,
        batch_size=args.batch_size,
    )
    try:
        if not (cfg.zeroshot or cfg.retrieval):
            raise UserError("nothing to evaluate: give --zeroshot and/or --retrieval")
        device = pick_device(args.device)
        checkpoint = resolve_checkpoint(args.checkpoint)
        model, tokenizer = load_model(str(checkpoint), device)
        if cfg.zeroshot and not (cfg.templates or cfg.templates_from):
            captions = run_captions(args.checkpoint)
            cfg.captions = str(captions) if captions else None
        details: dict = {}
        results = evaluate(model, tokenizer, cfg, model.cfg.vision.image_size, device, details)
        if args.details:
            Path(args.details).write_text(json.dumps({"results": results, **details}, indent=1))
    except UserError as e:
        print(f"webpairs eval: error: {e}", file=sys.stderr)
        return 2
    # the prompts too: a top-1 means little without them
    prompts = {"prompts": details["prompts"]} if cfg.zeroshot else {}
    record = {
        "checkpoint": str(checkpoint),
        "zeroshot": cfg.zeroshot,
        "retrieval": cfg.retrieval,
        "results": results,
        **prompts,
    }
    path = Path(args.results) if args.results else results_path(checkpoint)
    path.write_text(json.dumps(record, indent=1) + "\n")
    if args.json:
        print(json.dumps({**results, **prompts}))
    else:
        if cfg.zeroshot:  # on stderr: stdout stays "name value" lines
            used = details["prompts"]
            print(
                f"zero-shot templates ({used['templates_from']}): " + " | ".join(used["templates"]),
                file=sys.stderr,
            )
        for name, value in results.items():
            print(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}")
        print(f"results: {path}")
    return 0
