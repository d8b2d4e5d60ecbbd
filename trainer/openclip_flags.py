"""OpenCLIP's training flags (open_clip_train/params.py) as `webpairs train` takes them: each is
either ours under the same meaning (an alias the parser accepts) or one error line naming ours,
so that a ported command never trains on something other than what it says.

    p = build_train_parser()          # adds the aliases and, hidden, the flags refused here
    args = p.parse_args(["--train-data", "s/{0..3}.tar", "--epochs", "5", ...])
    refuse_openclip_flags(args)       # UserError: --epochs is OpenCLIP's; here: --steps N ...

docs/from-openclip.md is the table for users; tests/trainer/test_openclip_flags.py checks it
against this module, flag by flag.
"""

from __future__ import annotations

import argparse

from trainer.configs import UserError

# OpenCLIP flags whose meaning differs from anything here, or that have no counterpart:
# flag -> what to type instead. Each takes at most one value (nargs="?").
REFUSED = {
    "--epochs": "webpairs train counts optimizer steps: --steps N (the start of a run logs "
    "how many steps an epoch is, from manifest.json or sizes.json)",
    "--epochs-cooldown": "no cooldown phase; the schedule is warmup then cosine to --min-lr",
    "--train-num-samples": "not needed: --steps N sets the run's length, and shard counts "
    "come from manifest.json or sizes.json",
    "--val-num-samples": "--val-max-samples N (with --val-fraction)",
    "--train-data-upsampling-factors": "--mix W [W ...] (with --resampled)",
    "--val-data": "--retrieval SHARDS (recall@1/5/10 both ways) or --val-fraction F "
    "(held-out loss and recall)",
    "--val-frequency": "--eval-every STEPS",
    "--zeroshot-frequency": "--eval-every STEPS (with --zeroshot)",
    "--imagenet-val": "--zeroshot FOLDER --classnames FILE --templates openai_imagenet",
    "--imagenet-v2": "--zeroshot FOLDER --classnames FILE --templates openai_imagenet",
    "--save-frequency": "--checkpoint-every STEPS",
    "--save-most-recent": "always: RUN/checkpoints keeps the newest --keep-checkpoints",
    "--delete-previous-checkpoint": "--keep-checkpoints 1",
    "--log-local": "every rank's log goes to its own stderr; metrics come from rank 0",
    "--opt": "AdamW always (with --beta1, --beta2, --eps, --wd)",
    "--force-quick-gelu": "--model NAME-quickgelu (e.g. ViT-B-32-quickgelu, as OpenAI's weights need)",
    "--force-custom-text": "OpenCLIP architectures are built in CLIP's layout only (--model NAME)",
    "--pretrained-image": "--pretrained PATH (both towers' weights; --lock-text to keep one fixed)",
    "--momentum": "AdamW always (with --beta1, --beta2, --eps, --wd)",
    "--skip-scheduler": "--warmup 0 --min-lr equal to --lr gives a constant rate",
    "--lr-cooldown-end": "--min-lr (the end of the cosine)",
    "--lr-cooldown-power": "no cooldown phase; the schedule is warmup then cosine to --min-lr",
    "--use-bn-sync": "not offered",
    "--csv-separator": "webpairs curate --input-format csv turns a CSV into shards",
    "--csv-img-key": "webpairs curate --input-format csv --url-col turns a CSV into shards",
    "--csv-caption-key": "webpairs curate --input-format csv --caption-col turns a CSV into shards",
    "--cache-dir": "not used: --data reads local paths, gs://, s3:// and http(s):// directly",
    "--torchscript": "not offered; --compile for torch.compile",
    "--trace": "not offered; --compile for torch.compile",
    "--dist-url": "torchrun sets the rendezvous (--rdzv-endpoint); nothing to pass here",
    "--dist-backend": "chosen by --device: NCCL on GPU, Gloo on CPU",
    "--horovod": "torchrun only",
    "--no-set-device-rank": "each rank takes cuda:LOCAL_RANK",
    "--ddp-static-graph": "not offered",
    "--debug": "not offered; logs are at INFO",
    "--copy-codebase": "not offered",
    "--remote-sync": "--output may be a local folder only; copy RUN yourself",
    "--remote-sync-frequency": "--output may be a local folder only; copy RUN yourself",
    "--remote-sync-protocol": "--output may be a local folder only; copy RUN yourself",
    "--wandb-notes": "not offered; --wandb-project-name and --name are",
    "--coca-caption-loss-weight": "CoCa is not offered",
    "--coca-contrastive-loss-weight": "CoCa is not offered",
    "--distill-model": "distillation is not offered",
    "--distill-pretrained": "distillation is not offered",
    "--use-bnb-linear": "not offered",
    "--loss-dist-impl": "--loss-impl dense|tiled (the exchange of features is chosen for you)",
}

# Spelled like OpenCLIP's and meaning the same here, but only for some values.
VALUES = {
    "--dataset-type": (("webdataset", "auto"), "--data reads WebDataset shards only; "
                       "webpairs curate --input-format csv turns a CSV into shards"),
    "--lr-scheduler": (("cosine",), "the schedule is warmup then cosine to --min-lr"),
}  # fmt: skip

# --precision: OpenCLIP's spellings of what ours does, and what ours does not.
PRECISION_ALIASES = {"amp_bf16": "bf16", "amp_bfloat16": "bf16"}
PRECISION_REFUSED = {
    "amp": "fp16 autocast with a gradient scaler is not offered: --precision amp_bf16 "
    "(bf16 autocast) or fp32",
    "fp16": "pure fp16 weights are not offered: --precision amp_bf16 or fp32",
    "pure_fp16": "pure fp16 weights are not offered: --precision amp_bf16 or fp32",
    "pure_bf16": "pure bf16 weights are not offered: --precision amp_bf16 (bf16 autocast; "
    "with --strategy fsdp, bf16 parameters for compute)",
}
PRECISIONS = ("auto", "bf16", "fp32", *PRECISION_ALIASES, *PRECISION_REFUSED)


def _dest(flag: str) -> str:
    return "openclip_" + flag.lstrip("-").replace("-", "_")


def add_openclip_flags(parser: argparse.ArgumentParser) -> None:
    """The flags refused (hidden from --help) and those accepted for some values only."""
    for flag in (*REFUSED, *VALUES):
        parser.add_argument(flag, nargs="?", const=True, dest=_dest(flag), help=argparse.SUPPRESS)


def refuse_openclip_flags(args: argparse.Namespace) -> None:
    """UserError (one line, naming ours) for the first OpenCLIP flag given that means
    something else here or has no counterpart."""
    for flag, instead in REFUSED.items():
        if getattr(args, _dest(flag), None) is not None:
            raise UserError(f"{flag} is OpenCLIP's; here: {instead}")
    for flag, (accepted, instead) in VALUES.items():
        value = getattr(args, _dest(flag), None)
        if value is not None and value not in accepted:
            raise UserError(f"{flag} {value}: {instead}")
    if args.precision in PRECISION_REFUSED:
        raise UserError(f"--precision {args.precision}: {PRECISION_REFUSED[args.precision]}")


def precision_of(name: str) -> str:
    """Ours for an accepted spelling (amp_bf16 -> bf16)."""
    return PRECISION_ALIASES.get(name, name)
