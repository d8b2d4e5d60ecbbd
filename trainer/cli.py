"""`webpairs train`: its command-line options, turned into the typed configs of trainer/configs.py,
and `main`, which runs the loop of trainer/train.py.

args = build_train_parser().parse_args(["--data", "s/{0..3}.tar", "--output", "runs/x"])
cfg = run_config_from_args(args)   # RunConfig(model=..., data=..., schedule=..., train=..., eval=...)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from trainer.checkpoint import CAPTIONS_FILE
from trainer.configs import (
    DataConfig,
    EvalConfig,
    LossConfig,
    Recipe,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    UserError,
    check_loss,
    get_model_config,
    get_recipe,
    list_models,
    validate_model_config,
)
from trainer.monitor import report_targets
from trainer.openclip_flags import (
    PRECISIONS,
    add_openclip_flags,
    precision_of,
    refuse_openclip_flags,
)
from trainer.schedule import check_input_sizes
from trainer.train import train


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="webpairs train", description="Train a CLIP dual encoder on WebDataset shards."
    )
    d, m, o, e, r = TrainConfig(), DataConfig(), ScheduleConfig(), EvalConfig(), "store_true"
    loss = LossConfig()
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        "--train-data",
        nargs="+",
        required=True,
        metavar="SHARDS",
        help="brace pattern, glob, manifest.json or URL; several (or A::B) for a mixture",
    )
    g.add_argument(
        "--mix",
        nargs="+",
        type=float,
        metavar="W",
        help="mixing weight per --data source (needs --resampled)",
    )
    g.add_argument(
        "--resampled",
        "--dataset-resampled",
        action=r,
        help="draw shards with replacement instead of epochs",
    )
    g.add_argument("--batch-size", type=int, default=m.batch_size, help="samples per rank per step")
    g.add_argument("--workers", type=int, default=m.workers, help="loader processes per rank")
    g.add_argument("--shuffle-buffer", type=int, default=m.shuffle_buffer)
    g.add_argument(
        "--crop-scale",
        type=float,
        metavar="MIN",
        help="random resized crops cover MIN to all of an image's area (default: the preset's)",
    )
    g.add_argument(
        "--max-skipped-fraction",
        type=float,
        default=m.max_skipped_fraction,
        help="fail when a loader stream skips more than this share of corrupt samples",
    )
    g.add_argument(
        "--tokenizer",
        metavar="FILE|byte|bpe|openai-clip",
        help="a tokenizer.json; byte: byte-level, no merges; bpe: a byte-level BPE learnt from "
        "the first --bpe-captions captions, saved as RUN/tokenizer.json; openai-clip: OpenAI "
        "CLIP's BPE (open_clip.tokenize's ids) (default: the preset's; OpenCLIP models: "
        "openai-clip)",
    )
    g.add_argument("--bpe-vocab-size", type=int, default=d.bpe_vocab_size, metavar="N")
    g.add_argument("--bpe-captions", type=int, default=d.bpe_captions, metavar="N")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=m.val_fraction,
        metavar="F",
        help="hold this share of the pairs (by key hash) out of training and report validation "
        "loss and recall on them (every --eval-every steps and at the end)",
    )
    g.add_argument(
        "--val-max-samples",
        type=int,
        default=m.val_max_samples,
        metavar="N",
        help="held-out pairs read for validation",
    )
    g.add_argument(
        "--exclude-fold",
        type=fold_spec,
        metavar="I/K",
        help="train without fold I of K (folds by key hash; `webpairs score --cross-fit K` "
        "trains one model per fold)",
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="tiny",
        help=f"preset: {', '.join(list_models())}; an OpenCLIP architecture (ViT-B-32, "
        "ViT-B-16, ViT-L-14, ViT-H-14, RN50, RN101, NAME-quickgelu) or config .json "
        "(with --resume: the checkpoint's)",
    )
    g.add_argument(
        "--image-size", type=int, help="training resolution (with --finetune-at: before it)"
    )
    g.add_argument(
        "--context-length", type=int, help="caption tokens (with --finetune-at: before it)"
    )
    g.add_argument(
        "--patch-dropout",
        "--force-patch-dropout",
        type=float,
        metavar="P",
        help="drop this share of image patches at random while training (FLIP; ViT)",
    )
    g.add_argument(
        "--finetune-at",
        type=int,
        default=o.finetune_at,
        metavar="STEP",
        help="from STEP on: full image size and context length, no patch dropout (CLIPA/FLIP)",
    )
    g.add_argument("--finetune-image-size", type=int, help="the model's (full) resolution")
    g.add_argument("--finetune-context-length", type=int, help="the model's (full) context")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model field, e.g. vision.width=96 (repeatable)",
    )
    g = p.add_argument_group("fine-tuning (OpenCLIP's flag names)")
    g.add_argument(
        "--pretrained",
        metavar="FILE|RUN",
        help="start from these weights: OpenCLIP / OpenAI checkpoints (.pt, .bin, .safetensors, "
        "TorchScript) for an OpenCLIP --model, or one of our checkpoints or run folders (its "
        "model and tokenizer)",
    )
    g.add_argument("--lock-image", action=r, help="freeze the image tower (LiT)")
    g.add_argument("--lock-image-unlocked-groups", type=int, default=0, metavar="N",
                   help="leave its last N layer groups training")  # fmt: skip
    g.add_argument("--lock-image-freeze-bn-stats", action=r,
                   help="keep its BatchNorm statistics as loaded (eval mode)")  # fmt: skip
    g.add_argument("--lock-text", action=r, help="freeze the text tower")
    g.add_argument("--lock-text-unlocked-layers", type=int, default=0, metavar="N",
                   help="leave its last N layer groups training")  # fmt: skip
    g.add_argument("--lr-image", type=float, metavar="LR", help="the image tower's peak lr")
    g.add_argument("--lr-text", type=float, metavar="LR", help="the text tower's peak lr")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    g.add_argument("--min-lr", type=float, default=o.min_lr)
    g.add_argument("--warmup", type=int, help="warmup steps (default: the preset's)")
    g.add_argument("--weight-decay", "--wd", type=float, help="AdamW decay (default: the preset's)")
    g.add_argument("--beta1", type=float, default=d.betas[0], help="AdamW beta1")
    g.add_argument("--beta2", type=float, default=d.betas[1], help="AdamW beta2")
    g.add_argument("--eps", type=float, default=d.eps, help="AdamW epsilon")
    g.add_argument("--grad-clip", "--grad-clip-norm", type=float, default=d.grad_clip,
                   help="max gradient norm; 0 disables clipping")  # fmt: skip
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, metavar="P",
                   help="auto (bf16 autocast on GPU), bf16 = amp_bf16 (bf16 autocast), fp32")  # fmt: skip
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    g.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads per rank (default: on CPU, the cores left by loader "
                        "workers; OMP_NUM_THREADS wins)")  # fmt: skip
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("contrastive batch and memory (BASIC, SigLIP)")
    g.add_argument(
        "--loss",
        choices=["infonce", "sigmoid"],
        default=loss.kind,
        help="softmax InfoNCE (CLIP) or pairwise sigmoid with a learnable bias (SigLIP)",
    )
    g.add_argument(
        "--loss-impl",
        choices=["dense", "tiled"],
        default=loss.impl,
        help="tiled: the loss in blocks, never the whole logit matrix (memory for time)",
    )
    g.add_argument(
        "--loss-tile", type=int, default=loss.tile, help="block side of --loss-impl tiled"
    )
    g.add_argument(
        "--positives",
        choices=["pairs", "captions"],
        help="captions: samples of the batch with identical captions are positives of each "
        "other (InfoNCE), not negatives (default: the preset's; pairs for --loss sigmoid)",
    )
    g.add_argument(
        "--micro-batch-size",
        type=int,
        metavar="N",
        help="hold N samples of each rank's batch at a time (contrastive gradient accumulation: "
        "the loss still sees the whole batch)",
    )
    g.add_argument(
        "--accum-freq",
        type=int,
        default=1,
        metavar="K",
        help="as OpenCLIP's: each rank's contrastive batch is K x --batch-size, held "
        "--batch-size (or --micro-batch-size) samples at a time",
    )
    g.add_argument("--accum-steps", type=int, help=argparse.SUPPRESS)  # refused: see below
    g.add_argument("--local-loss", action=r, help="always (accepted for OpenCLIP's commands)")
    g.add_argument("--gather-with-grad", action=r, help="always (accepted for OpenCLIP's)")
    g.add_argument("--siglip", action="store_const", const="sigmoid", dest="loss",
                   help="OpenCLIP's spelling of --loss sigmoid")  # fmt: skip
    g.add_argument(
        "--grad-checkpointing", action=r, help="recompute each block's activations in backward"
    )
    g.add_argument(
        "--strategy",
        choices=["ddp", "fsdp"],
        default=d.strategy,
        help="fsdp: shard weights, gradients and optimizer state per block (FSDP2)",
    )
    g.add_argument(
        "--compile", "--torchcompile", action=r, help="torch.compile every block (off by default)"
    )
    g.add_argument(
        "--compile-backend",
        default=d.compile_backend,
        metavar="NAME",
        help="torch.compile backend of --compile (aot_eager: no code generation)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--output", metavar="RUN_DIR", help="(or OpenCLIP's --logs DIR --name NAME)")
    g.add_argument("--logs", metavar="DIR", help="with --name: the run is DIR/NAME (OpenCLIP's)")
    g.add_argument("--name", help="with --logs: the run is DIR/NAME; the wandb run's name")
    g.add_argument("--resume", metavar="latest|CHECKPOINT")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    g.add_argument("--log-every", "--log-every-n-steps", type=int, default=d.log_every)
    g.add_argument(
        "--max-nonfinite",
        type=int,
        default=d.max_nonfinite,
        help="stop after this many non-finite steps in a row",
    )
    g.add_argument("--stall-timeout", type=float, default=d.stall_timeout)
    g.add_argument(
        "--report-to",
        default=",".join(d.report_to),
        metavar="tensorboard,wandb",
        help="metrics also to RUN/tensorboard/ and/or wandb (the wandb extra; WANDB_MODE=offline "
        "works); 'none': RUN/metrics.jsonl only",
    )
    g.add_argument("--wandb-project-name", default=d.wandb_project, metavar="PROJECT")
    g = p.add_argument_group("evaluation during training")
    g.add_argument("--eval-every", type=int, default=e.every, help="steps between evaluations")
    g.add_argument("--zeroshot", help="folder-per-class images or labelled shards")
    g.add_argument("--classnames", help="file or comma-separated list; seven|7: names of a class")
    g.add_argument(
        "--templates", help="openai_imagenet (OpenAI's 80), default, or a file, one a line"
    )
    g.add_argument(
        "--templates-from", metavar="SHARDS", help="templates from these shards' captions"
    )
    g.add_argument("--retrieval", help="shards of image-caption pairs")
    g = p.add_argument_group("debugging (tests use these)")
    g.add_argument(
        "--debug-seen-keys", action=r, help="log every trained key to RUN/seen-keys.rank*.txt"
    )
    g.add_argument("--debug-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    g.add_argument("--debug-nan-steps", type=int, nargs="+", default=[], help=argparse.SUPPRESS)
    add_openclip_flags(p)
    return p


def fold_spec(text: str) -> tuple[int, int]:
    """`2/5` -> (2, 5): fold 2 of folds 0..4."""
    fold, sep, folds = text.partition("/")
    try:
        fold_id, count = int(fold), int(folds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K (e.g. 0/2)") from None
    if not sep or count < 2 or not 0 <= fold_id < count:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= I < K and K >= 2")
    return fold_id, count


def recipe_for(args: argparse.Namespace) -> Recipe:
    """The recipe of the preset trained: --model's, or on --resume the run's own (config.json)."""
    name = args.model
    saved = Path(args.output) / "config.json"
    if args.resume and saved.is_file():
        name = json.loads(saved.read_text())["model"]["name"]
    return get_recipe(name)


def fill_from_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the flags left out set from the preset's recipe."""
    recipe = recipe_for(args)
    filled = {
        "lr": recipe.lr,
        "warmup": recipe.warmup_steps,
        "weight_decay": recipe.weight_decay,
        "crop_scale": recipe.crop_scale,
        "tokenizer": recipe.tokenizer,
        "positives": recipe.positives if args.loss == "infonce" else "pairs",
    }
    return argparse.Namespace(
        **{**vars(args), **{k: v for k, v in filled.items() if getattr(args, k) is None}}
    )


def resolve_spellings(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with OpenCLIP's spellings turned into ours (--logs/--name, A::B sources,
    --accum-freq, amp_bf16); UserError for a flag that would mean something else here."""
    refuse_openclip_flags(args)
    if args.accum_steps is not None:
        raise UserError(
            "--accum-steps is gone: --micro-batch-size N holds N samples of the batch at a time "
            "(--accum-steps K was N = batch/K); --accum-freq K multiplies the batch by K (OpenCLIP)"
        )
    output = args.output
    if output is None and args.name:
        output = str(Path(args.logs or "logs") / args.name)
    if output is None:
        raise UserError("--output RUN_DIR is needed (or OpenCLIP's --logs DIR --name NAME)")
    if min(args.batch_size, args.accum_freq, args.micro_batch_size or 1) < 1:
        raise UserError("--batch-size, --accum-freq and --micro-batch-size must be at least 1")
    batch = args.batch_size * args.accum_freq  # samples per rank in one contrastive batch
    micro = args.micro_batch_size or args.batch_size
    if micro > batch:
        raise UserError(
            f"--micro-batch-size {micro} is more than the batch of {batch} (--batch-size "
            f"{args.batch_size} x --accum-freq {args.accum_freq})"
        )
    return argparse.Namespace(
        **{
            **vars(args),
            "output": output,
            "data": [part for spec in args.data for part in spec.split("::") if part],
            "batch_size": batch,
            "accum_steps": -(-batch // micro),  # micro-batches of at most `micro` samples
            "precision": precision_of(args.precision),
        }
    )


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    args = fill_from_recipe(resolve_spellings(args))
    overrides = list(args.set)
    if args.loss == "sigmoid":  # SigLIP's initial temperature 1/10 and bias -10 (--set wins)
        overrides = [f"init_logit_scale={math.log(10)}", "init_logit_bias=-10", *overrides]
    model = get_model_config(args.model, overrides)
    finetune = args.finetune_at > 0
    if not finetune and (args.finetune_image_size or args.finetune_context_length):
        raise UserError("--finetune-image-size and --finetune-context-length need --finetune-at")
    # with a finetune phase, the model has the full sizes and --image-size etc. come before it
    image_size = args.finetune_image_size if finetune else args.image_size
    context_length = args.finetune_context_length if finetune else args.context_length
    if image_size is not None:
        model.vision.image_size = image_size
    if context_length is not None:
        model.text.context_length = context_length
    if args.patch_dropout is not None:
        model.vision.patch_dropout = args.patch_dropout
    validate_model_config(model)
    for name in (
        "steps",
        "batch_size",
        "checkpoint_every",
        "log_every",
        "max_nonfinite",
        "accum_steps",
        "loss_tile",
        "bpe_captions",
    ):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.finetune_at < args.steps:
        raise UserError(f"--finetune-at {args.finetune_at} must be below --steps {args.steps}")
    if args.workers < 0 or args.warmup < 0 or args.lr <= 0:
        raise UserError("--workers and --warmup must be >= 0 and --lr > 0")
    check_fine_tuning(args)
    if args.eval_every and not (args.zeroshot or args.retrieval or args.val_fraction):
        raise UserError("--eval-every needs --zeroshot, --retrieval or --val-fraction")
    if not 0 <= args.val_fraction < 1 or args.val_max_samples < 2:
        raise UserError("--val-fraction must be in [0, 1) and --val-max-samples at least 2")
    data = DataConfig(
        data=args.data,
        weights=args.mix,
        resampled=args.resampled,
        batch_size=args.batch_size,
        workers=args.workers,
        shuffle_buffer=args.shuffle_buffer,
        seed=args.seed,
        max_skipped_fraction=args.max_skipped_fraction,
        val_fraction=args.val_fraction,
        val_max_samples=args.val_max_samples,
        exclude_fold=args.exclude_fold,
    )
    if not 0 < args.crop_scale <= 1:
        raise UserError(f"--crop-scale must be in (0, 1], not {args.crop_scale}")
    data.crop_scale = (args.crop_scale, 1.0)
    schedule = ScheduleConfig(
        lr=args.lr,
        warmup_steps=args.warmup,
        total_steps=args.steps,
        min_lr=args.min_lr,
        finetune_at=args.finetune_at,
        image_size=(args.image_size or 0) if finetune else 0,
        context_length=(args.context_length or 0) if finetune else 0,
    )
    check_input_sizes(schedule, model)
    loss = LossConfig(
        kind=args.loss, impl=args.loss_impl, tile=args.loss_tile, positives=args.positives
    )
    check_loss(loss, model)
    train = TrainConfig(
        output=args.output,
        steps=args.steps,
        weight_decay=args.weight_decay,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        grad_clip=args.grad_clip,
        precision=args.precision,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        max_nonfinite=args.max_nonfinite,
        stall_timeout=args.stall_timeout,
        tokenizer=args.tokenizer,
        pretrained=args.pretrained,
        lock_image=args.lock_image,
        lock_image_unlocked_groups=args.lock_image_unlocked_groups,
        lock_image_freeze_bn_stats=args.lock_image_freeze_bn_stats,
        lock_text=args.lock_text,
        lock_text_unlocked_layers=args.lock_text_unlocked_layers,
        lr_image=args.lr_image,
        lr_text=args.lr_text,
        bpe_vocab_size=args.bpe_vocab_size,
        bpe_captions=args.bpe_captions,
        strategy=args.strategy,
        accum_steps=args.accum_steps,
        grad_checkpointing=args.grad_checkpointing,
        compile=args.compile,
        compile_backend=args.compile_backend,
        debug_seen_keys=args.debug_seen_keys,
        debug_step_delay=args.debug_step_delay,
        debug_nan_steps=tuple(args.debug_nan_steps),
        report_to=report_targets(args.report_to),
        wandb_project=args.wandb_project_name,
        run_name=args.name,
    )
    evaluation = EvalConfig(
        zeroshot=args.zeroshot,
        classnames=args.classnames,
        templates=args.templates,
        templates_from=args.templates_from,
        captions=str(Path(args.output) / CAPTIONS_FILE),  # written at start (session.py)
        retrieval=args.retrieval,
        every=args.eval_every,
    )
    return RunConfig(
        model=model, data=data, schedule=schedule, train=train, eval=evaluation, loss=loss
    )


def check_fine_tuning(args: argparse.Namespace) -> None:
    for flag, needs in (
        ("lock_image_unlocked_groups", "lock_image"),
        ("lock_image_freeze_bn_stats", "lock_image"),
        ("lock_text_unlocked_layers", "lock_text"),
    ):
        if getattr(args, flag) and not getattr(args, needs):
            raise UserError(f"--{flag.replace('_', '-')} needs --{needs.replace('_', '-')}")
    if args.lock_image_unlocked_groups < 0 or args.lock_text_unlocked_layers < 0:
        raise UserError("--lock-image-unlocked-groups and --lock-text-unlocked-layers must be >= 0")
    for flag in ("lr_image", "lr_text"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be > 0")


def user_error_message(e: BaseException) -> str | None:
    """The one line to show for a user mistake, or None for a bug (which should raise).

    A DataError raised in a DataLoader worker arrives re-raised with the worker's traceback
    in its message; the last line of that traceback is the message we want.
    """
    if not isinstance(e, UserError):
        return None
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith("Error") else text
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_train_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return train(run_config_from_args(args))
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        print(f"webpairs train: error: {message}", file=sys.stderr)
        return 2
