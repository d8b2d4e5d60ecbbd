"""Typed configuration for training: dataclasses with a comment per field, named model presets.

    cfg = get_model_config("tiny", overrides=["vision.width=96", "text.causal=false"])
    list_models()  # ['base', 'small', 'smoke', 'tiny', 'tiny-resnet']
    get_recipe("tiny")  # Recipe(lr=0.003, warmup_steps=50, ...): what it trains with by default

`smoke` trains in seconds on a laptop CPU (tests); `tiny` learns on one (the CPU preset):

    python -m trainer train --data 'shards/{00000..00003}.tar' --output runs/smoke --model smoke --steps 50
    python -m trainer train --data 'shards/*.tar' --output runs/tiny --model tiny --batch-size 128 \\
        --image-size 32 --workers 2 --steps 600

`base` is ViT-B/16 image tower with the CLIP text transformer (the launch command of a real run):

    torchrun --nproc-per-node 8 -m trainer train --data out/manifest.json --output runs/b16 \\
        --model base --batch-size 256 --steps 100000 --warmup 2000 --lr 5e-4 --workers 8
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints it as one line and exits with 2."""


@dataclass
class VisionConfig:
    kind: str = (
        "vit"  # "vit" (patches + transformer) or "resnet" (family open_clip: ModifiedResNet)
    )
    image_size: int = 224  # square input side in pixels
    patch_size: int = 16  # ViT patch side; image_size must be a multiple
    width: int = 768  # ViT embedding width; ResNet channels of the first stage
    layers: int = 12  # ViT transformer blocks; ResNet residual blocks per stage
    heads: int = 12  # attention heads (ViT only)
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to `width`
    pool: str = "cls"  # ViT pooling: "cls" token or "mean" over patches
    stages: int = 4  # ResNet stages, each halving the resolution and doubling channels
    patch_dropout: float = 0.0  # share of patches dropped at random while training (FLIP); ViT only
    # ViT patch embedding: "patch" (one linear map of each patch, ViT) or "conv" (3x3 stride-2
    # convolutions down to the patch grid, then 1x1: Xiao et al. 2021, "Early convolutions help
    # transformers see better"); "conv" needs a power-of-two patch size
    stem: str = "patch"
    resnet_layers: tuple[int, ...] = ()  # ModifiedResNet (family open_clip): blocks per stage


@dataclass
class TextConfig:
    vocab_size: int = 49408  # set from the tokenizer at run time
    context_length: int = 77  # tokens per caption, including start/end tokens
    width: int = 512  # embedding width
    layers: int = 12  # transformer blocks
    heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # hidden width of the MLP relative to `width`
    causal: bool = True  # causal mask (CLIP) or bidirectional attention
    pool: str = "eot"  # "eot" (features at the end-of-text token, CLIP) or "mean" over tokens
    eot_token_id: int = 2  # set from the tokenizer at run time
    pad_token_id: int = 0  # set from the tokenizer at run time


@dataclass
class ModelConfig:
    name: str = "base"  # a preset, an OpenCLIP architecture or an OpenCLIP config file's stem
    # "webpairs" (trainer/model.py) or "open_clip": OpenCLIP's parameter names and numerics
    # (trainer/openclip_models.py; its checkpoints load, ours export to it)
    family: str = "webpairs"
    quick_gelu: bool = False  # family open_clip: x * sigmoid(1.702 x), as OpenAI's weights
    embed_dim: int = 512  # width of the shared image-text embedding space
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    max_logit_scale: float = 100.0  # exp(logit_scale) is clamped here after each step
    init_logit_bias: float | None = None  # SigLIP's learnable logit bias (-10); None: no bias
    # weights: "clip" (standard deviations scaled by width and depth, as CLIP's) or "normal"
    # (0.02 everywhere, what this trainer did before; kept to reproduce older runs)
    init: str = "clip"


@dataclass
class DataConfig:
    data: list[str] = field(default_factory=list)  # brace patterns, globs, manifest.json, URLs
    weights: list[float] | None = None  # mixing weight per `data` source (resampled mode only)
    resampled: bool = False  # draw shards with replacement instead of epochs over a fixed list
    batch_size: int = 64  # samples per rank per step
    workers: int = 2  # DataLoader worker processes per rank (0: load in the training process)
    shuffle_buffer: int = 1000  # samples held for shuffling in each loader stream
    image_size: int = 224  # set from the model's vision config
    context_length: int = 77  # set from the model's text config
    crop_scale: tuple[float, float] = (0.9, 1.0)  # random resized crop: area fraction range
    seed: int = 0  # shard order, shuffling and augmentation all derive from this
    max_skipped_fraction: float = 0.05  # fail when a stream skips more than this share ...
    skip_grace: int = 200  # ... once it has read at least this many samples
    prefetch: int = 2  # batches prefetched per worker
    val_fraction: float = 0.0  # share of sample keys held out of training (trainer/validation.py)
    val_max_samples: int = 2048  # held-out pairs read for validation (the first, in shard order)
    # (I, K): train without fold I of K (schemas/folds.py; `webpairs score --cross-fit K`)
    exclude_fold: tuple[int, int] | None = None


@dataclass
class ScheduleConfig:
    lr: float = 5e-4  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    total_steps: int = 1000  # cosine decay ends here
    min_lr: float = 0.0  # learning rate at the end of the cosine
    # CLIPA / FLIP: train on shorter sequences, then at the model's full size for a final phase
    finetune_at: int = 0  # from this step on: the model's image size and context length; 0: never
    image_size: int = 0  # training resolution before finetune_at; 0: the model's
    context_length: int = 0  # caption tokens before finetune_at (truncated); 0: the model's


@dataclass
class LossConfig:
    kind: str = "infonce"  # "infonce" (softmax over the batch, CLIP) or "sigmoid" (SigLIP)
    impl: str = "dense"  # "dense" (all logits at once) or "tiled" (blocks, recomputed in backward)
    tile: int = 1024  # rows and columns per block of the tiled loss
    # InfoNCE positives: "pairs" (a sample's own caption only) or "captions" (also every other
    # sample of the global batch with the identical caption, token for token)
    positives: str = "pairs"


@dataclass
class EvalConfig:
    zeroshot: str | None = None  # folder-per-class tree, or labelled shards
    classnames: str | None = None  # file with one class a line, or comma-separated; "seven|7"
    templates: str | None = None  # file with one prompt template a line ("a photo of a {}.")
    templates_from: str | None = (
        None  # shards whose captions give the templates (trainer/prompts.py)
    )
    # without templates or templates_from: a file of training captions (RUN/captions.txt) the
    # templates come from; the default ensemble when none or no caption names a class
    captions: str | None = None
    retrieval: str | None = None  # shards of image-caption pairs for recall@K
    batch_size: int = 64  # images per forward pass
    every: int = 0  # evaluate every N training steps (0: only when asked on the command line)


@dataclass
class TrainConfig:
    output: str = "runs/default"  # run folder: checkpoints/, metrics.jsonl, config.json
    steps: int = 1000  # optimizer steps in the whole run
    weight_decay: float = 0.2  # AdamW decay, not applied to gains, biases, embeddings, scale
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (CLIP's)
    eps: float = 1e-6  # AdamW epsilon (CLIP's)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    precision: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU), "bf16", "fp32"
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int = 0  # torch threads per rank; 0: on CPU, the cores the loader workers leave
    seed: int = 0  # model init and per-rank random state derive from this
    resume: str | None = None  # "latest" or a checkpoint file
    checkpoint_every: int = 500  # steps between checkpoints (the last step always saves)
    keep_checkpoints: int = 3  # newest checkpoints kept in RUN/checkpoints
    log_every: int = 10  # steps between progress lines and metrics records
    max_nonfinite: int = 5  # stop after this many non-finite steps in a row
    stall_timeout: float = 600.0  # seconds without a batch before a rank reports a stall
    tokenizer: str | None = None  # tokenizer.json, "byte", "bpe", "openai-clip"; None: session.py's
    # fine-tuning (OpenCLIP's flag names): the weights a fresh run starts from, frozen towers
    pretrained: str | None = None  # OpenCLIP / OpenAI weights file, or one of our checkpoints
    lock_image: bool = False  # LiT: the image tower frozen (no gradients, no optimizer state)
    lock_image_unlocked_groups: int = 0  # ... but for its last N layer groups
    lock_image_freeze_bn_stats: bool = False  # ... and its BatchNorm statistics (eval mode)
    lock_text: bool = False  # the text tower frozen
    lock_text_unlocked_layers: int = 0  # ... but for its last N layer groups
    lr_image: float | None = None  # peak learning rate of the image tower; None: the run's
    lr_text: float | None = None  # peak learning rate of the text tower; None: the run's
    bpe_vocab_size: int = 8192  # "bpe": at most this many tokens (fewer when captions repeat)
    bpe_captions: int = 20000  # "bpe": learnt from the first this many training captions
    strategy: str = "ddp"  # "ddp" (replicated weights) or "fsdp" (FSDP2: sharded per block)
    accum_steps: int = 1  # micro-batches per step, contrastive loss over the whole batch (BASIC)
    grad_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile each block (off by default: minutes to compile on CPU)
    compile_backend: str = "inductor"  # torch.compile backend; inductor needs a C++ compiler on CPU
    debug_seen_keys: bool = False  # write every trained sample key to RUN/seen-keys.rank*.txt
    debug_step_delay: float = 0.0  # sleep after each step (tests use it to interrupt a run)
    debug_nan_steps: tuple[int, ...] = ()  # make the loss NaN at these steps (tests)
    report_to: tuple[str, ...] = ("tensorboard",)  # metrics also to: tensorboard, wandb
    wandb_project: str = "webpairs"  # --report-to wandb: the project; the run is --name or RUN's
    run_name: str | None = None  # wandb's run name (default: the run folder's name)


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    schedule: ScheduleConfig
    train: TrainConfig
    eval: EvalConfig
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class Recipe:
    """How a preset trains unless the command line says otherwise (--lr, --warmup,
    --weight-decay, --crop-scale, --tokenizer, --positives). The presets' recipes were chosen on validation
    data, never on evaluation data (bench/RESULTS-learning.md)."""

    lr: float = 5e-4  # peak learning rate
    warmup_steps: int = 100  # linear warmup
    weight_decay: float = 0.2  # AdamW decay of weights (not gains, biases, embeddings, scale)
    crop_scale: float = 0.9  # random resized crops cover this share of the image, or more
    tokenizer: str = "bpe"  # "bpe" (learnt from the first training captions), "byte", a file
    positives: str = "pairs"  # InfoNCE positives: "pairs", or "captions" (identical captions too)


# Named model presets. Functions so every call returns fresh objects.
def _smoke() -> ModelConfig:
    """For tests that need speed, not learning: a 0.24 M parameter ViT on 32 px / 8 patches."""
    return ModelConfig(
        name="smoke",
        embed_dim=64,
        # mean pooling: the cls token learns noticeably slower at this size
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2, pool="mean"),
        text=TextConfig(context_length=32, width=64, layers=2, heads=2),
    )


def _tiny() -> ModelConfig:
    """The CPU preset: learns noisy web captions of 32 px digits in minutes on 2 cores.

    webpairs train --data 'shards/*.tar' --output runs/tiny --model tiny --batch-size 128 \\
        --image-size 32 --workers 2 --steps 600
    """
    cfg = _smoke()
    cfg.name = "tiny"
    # convolutions down to the 4 x 4 grid of 8 px patches: a linear map of raw 8 x 8 patches
    # learns far less at this size (bench/RESULTS-learning.md)
    cfg.vision.stem = "conv"
    cfg.text.context_length = 16  # BPE tokens: web captions this short rarely lose a word
    return cfg


def _tiny_resnet() -> ModelConfig:
    """The demo's model, as the demo's settings were chosen with it (bench/demo.py)."""
    cfg = _smoke()
    cfg.name = "tiny-resnet"
    cfg.init = "normal"
    cfg.vision = VisionConfig(kind="resnet", image_size=32, width=16, layers=1, stages=3)
    return cfg


def _small() -> ModelConfig:
    return ModelConfig(
        name="small",
        embed_dim=384,
        vision=VisionConfig(image_size=224, patch_size=16, width=384, layers=12, heads=6),
        text=TextConfig(width=384, layers=12, heads=6),
    )


def _base() -> ModelConfig:
    return ModelConfig(name="base", embed_dim=512, vision=VisionConfig(), text=TextConfig())


# preset: (model, recipe)
_MODELS = {
    "smoke": (_smoke, Recipe(tokenizer="byte")),  # the trainer's old defaults; no BPE to learn
    "tiny": (_tiny, Recipe(lr=3e-3, warmup_steps=50, crop_scale=0.5, positives="captions")),
    "tiny-resnet": (_tiny_resnet, Recipe()),  # the demo's model; it sets its own flags
    "small": (_small, Recipe()),
    "base": (_base, Recipe()),
}


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_recipe(name: str) -> Recipe:
    """The preset's recipe; the generic one for a model that is no preset (OpenCLIP's
    architectures: with OpenAI CLIP's tokenizer, as their checkpoints were trained)."""
    from trainer.openclip_configs import is_openclip_model

    if is_openclip_model(name):
        return Recipe(tokenizer="openai-clip")
    return _MODELS[name][1] if name in _MODELS else Recipe()


def get_model_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """A preset, an OpenCLIP architecture ("ViT-B-32") or an OpenCLIP config JSON file."""
    from trainer.openclip_configs import (
        is_openclip_model,
        list_architectures,
        openclip_model_config,
    )

    if is_openclip_model(name):
        cfg = openclip_model_config(name)
        apply_overrides(cfg, overrides)
        validate_model_config(cfg)
        return cfg
    if name not in _MODELS:
        known = ", ".join([*list_models(), *list_architectures()])
        raise UserError(f"unknown model {name!r}; known: {known}, or an OpenCLIP config .json")
    cfg = _MODELS[name][0]()
    apply_overrides(cfg, overrides)
    validate_model_config(cfg)
    return cfg


def apply_overrides(cfg: object, overrides: list[str] | tuple[str, ...]) -> None:
    """Set dotted fields from `key=value` strings: "vision.width=96", "text.causal=false"."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} is not key=value")
        *parents, leaf = path.strip().split(".")
        target = cfg
        for part in parents:
            target = getattr(target, part, None)
            if not dataclasses.is_dataclass(target):
                raise UserError(f"override {item!r}: {path!r} is not a config field")
        fields = {f.name: f for f in dataclasses.fields(target)}
        if leaf not in fields or dataclasses.is_dataclass(getattr(target, leaf)):
            known = ", ".join(sorted(fields))
            raise UserError(f"override {item!r}: no field {leaf!r} (fields: {known})")
        setattr(target, leaf, _parse_like(getattr(target, leaf), raw.strip(), item))


def _parse_like(current: object, raw: str, item: str) -> object:
    try:
        if current is None:  # the optional fields are floats ("init_logit_bias")
            return None if raw.lower() == "none" else float(raw)
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise UserError(f"override {item!r}: {raw!r} is not a {type(current).__name__}") from None
    return raw


def validate_model_config(cfg: ModelConfig) -> None:
    v, t = cfg.vision, cfg.text
    if cfg.init not in ("clip", "normal"):
        raise UserError(f"init must be 'clip' or 'normal', not {cfg.init!r}")
    if cfg.family not in ("webpairs", "open_clip"):
        raise UserError(f"family must be 'webpairs' or 'open_clip', not {cfg.family!r}")
    if cfg.family == "open_clip" and (v.stem != "patch" or t.pool != "eot" or not t.causal):
        raise UserError("OpenCLIP's towers have a patch stem and a causal, eot-pooled text tower")
    if v.kind not in ("vit", "resnet"):
        raise UserError(f"vision.kind must be 'vit' or 'resnet', not {v.kind!r}")
    check_image_size(cfg, v.image_size)
    if v.kind == "vit":
        if v.width % v.heads:
            raise UserError(f"vision width {v.width} is not divisible by {v.heads} heads")
        if v.pool not in ("cls", "mean"):
            raise UserError(f"vision.pool must be 'cls' or 'mean', not {v.pool!r}")
        if not 0 <= v.patch_dropout < 1:
            raise UserError(f"patch dropout must be in [0, 1), not {v.patch_dropout}")
        if v.stem not in ("patch", "conv"):
            raise UserError(f"vision.stem must be 'patch' or 'conv', not {v.stem!r}")
        if v.stem == "conv" and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1)):
            raise UserError(f"a conv stem needs a power-of-two patch size, not {v.patch_size}")
    elif v.patch_dropout:
        raise UserError("patch dropout needs a ViT image tower (vision.kind=vit)")
    if t.width % t.heads:
        raise UserError(f"text width {t.width} is not divisible by {t.heads} heads")
    if t.pool not in ("eot", "mean"):
        raise UserError(f"text.pool must be 'eot' or 'mean', not {t.pool!r}")
    if t.context_length < 3:
        raise UserError(f"context length {t.context_length} leaves no room for text")


def check_image_size(cfg: ModelConfig, size: int) -> None:
    """Can the image tower take `size`-pixel inputs? (Position embeddings are interpolated.)"""
    v = cfg.vision
    step = v.patch_size if v.kind == "vit" else 2 ** (v.stages + 1)
    if size < step or size % step:
        what = f"patch size {step}" if v.kind == "vit" else str(step)
        raise UserError(f"image size {size} is not a multiple of {what}")


def check_loss(loss: LossConfig, model: ModelConfig) -> None:
    """The sigmoid loss needs the model's logit bias, InfoNCE must not have one."""
    if loss.kind not in ("infonce", "sigmoid") or loss.impl not in ("dense", "tiled"):
        raise UserError(f"unknown loss {loss.kind!r} / implementation {loss.impl!r}")
    if loss.positives not in ("pairs", "captions"):
        raise UserError(f"--positives must be 'pairs' or 'captions', not {loss.positives!r}")
    if loss.kind == "sigmoid" and loss.positives != "pairs":
        raise UserError("--positives captions is for the InfoNCE loss, not --loss sigmoid")
    if loss.kind == "sigmoid" and model.init_logit_bias is None:
        raise UserError(
            "--loss sigmoid needs a model with a logit bias (a checkpoint's for InfoNCE?)"
        )
    if loss.kind == "infonce" and model.init_logit_bias is not None:
        raise UserError("the model has a SigLIP logit bias: train it with --loss sigmoid")


def model_config_from_dict(d: dict) -> ModelConfig:
    """Inverse of `dataclasses.asdict` for a ModelConfig (as stored in checkpoints)."""
    d = dict(d)
    vision = VisionConfig(**d.pop("vision"))
    vision.resnet_layers = tuple(vision.resnet_layers)
    text = TextConfig(**d.pop("text"))
    return ModelConfig(vision=vision, text=text, **d)
