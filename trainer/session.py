"""What the training loop works on, built from scratch or from a checkpoint, and saved again:
the model (plain, in DDP, or sharded by FSDP2), the optimizer, the tokenizer, the shards and
the data position, the step.

    session = setup(cfg, world)                 # --resume: from the latest checkpoint
    save(session, tracker, world, cfg.train)    # every rank calls it
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.checkpoint import (
    CAPTIONS_FILE,
    capture_rng,
    full_model_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    restore_training_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from trainer.configs import (
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    UserError,
    check_loss,
    model_config_from_dict,
)
from trainer.data import check_data, new_position
from trainer.distributed import World, all_gather_objects, barrier, is_sharded, wrap_model
from trainer.model import CLIP, model_from_config
from trainer.monitor import truncate_seen_keys
from trainer.position import DataPosition, PositionTracker, Topology
from trainer.schedule import check_input_sizes, data_at
from trainer.sources import resolve_sources
from trainer.tokenizer import (
    OPENAI_CLIP,
    CaptionTokenizer,
    byte_tokenizer,
    shard_captions,
    train_tokenizer,
)
from trainer.validation import held_out

log = logging.getLogger(__name__)

# a TrainConfig without a tokenizer (built in code); the command line takes the preset's recipe
DEFAULT_TOKENIZER = "byte"


@dataclass
class Session:
    model: CLIP  # FSDP2 shards it in place
    wrapped: torch.nn.Module  # what the loop calls: `model`, or `model` in DDP
    optimizer: torch.optim.Optimizer
    tokenizer: CaptionTokenizer  # at the model's full context length
    shards: list
    position: DataPosition
    step: int = 0
    nonfinite_total: int = 0
    resumed: bool = False
    loss: LossConfig = field(default_factory=LossConfig)


def uses_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def make_optimizer(model: CLIP, cfg: TrainConfig, peak_lr: float = 1.0) -> torch.optim.AdamW:
    """AdamW over the parameters that train (a locked tower has none here): decayed and not,
    and with --lr-image / --lr-text, per tower, each group's `lr_scale` its share of the
    schedule's learning rate (`peak_lr` at its peak)."""
    no_decay = model.no_weight_decay()
    per_tower = cfg.lr_image is not None or cfg.lr_text is not None
    peak = {"image": cfg.lr_image, "text": cfg.lr_text, "shared": None}
    groups: dict[tuple[str, bool], dict] = {}
    for decay in (True, False):  # decayed first: the order of checkpoints written before
        for name, p in model.named_parameters():
            if not p.requires_grad or (name not in no_decay) != decay:
                continue
            tower = model.tower(name) if per_tower else "shared"
            group = groups.setdefault(
                (tower, decay),
                {"params": [], "weight_decay": cfg.weight_decay if decay else 0.0},
            )
            if peak[tower] is not None:
                group["lr_scale"] = peak[tower] / peak_lr
            group["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=0.0, betas=cfg.betas, eps=cfg.eps)


def lock_towers(model: CLIP, t: TrainConfig) -> None:
    """--lock-image / --lock-text (LiT): frozen towers, as OpenCLIP's flags freeze them."""
    if t.lock_image:
        model.lock_image_tower(t.lock_image_unlocked_groups, t.lock_image_freeze_bn_stats)
    if t.lock_text:
        model.lock_text_tower(t.lock_text_unlocked_layers)


def build_model(cfg: ModelConfig, t: TrainConfig, device: torch.device) -> CLIP:
    check_compile(t, device)
    model = model_from_config(cfg).to(device)
    model.set_grad_checkpointing(t.grad_checkpointing)
    if t.compile:  # block by block, before sharding: what FSDP2 and checkpointing expect
        for unit in model.layer_units():
            unit.compile(backend=t.compile_backend)
    return model


def check_compile(t: TrainConfig, device: torch.device) -> None:
    """Refuse at start what torch.compile would fail on at the first step, minutes later."""
    if not t.compile:
        return
    if t.compile_backend not in torch.compiler.list_backends(exclude_tags=()):
        known = ", ".join(torch.compiler.list_backends())
        raise UserError(f"unknown --compile-backend {t.compile_backend!r}; known: {known}")
    cxx = any(map(shutil.which, ("g++", "clang++", "c++")))
    if t.compile_backend == "inductor" and device.type == "cpu" and not cxx:
        raise UserError(
            "--compile on CPU needs a C++ compiler (g++ or clang++) for inductor; "
            "--compile-backend aot_eager needs none"
        )


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Distinct, reproducible random state per rank (data randomness has its own seeds)."""
    torch.manual_seed(seed * 1_000_003 + rank * 7919 + step)


def resolve_model_config(
    cfg: RunConfig, model: ModelConfig, tokenizer: CaptionTokenizer
) -> ModelConfig:
    """A copy of `model` with what the tokenizer decides (vocab, special ids) filled in,
    checked against the run's schedule and loss."""
    text = dataclasses.replace(
        model.text,
        vocab_size=tokenizer.vocab_size,
        eot_token_id=tokenizer.eot_id,
        pad_token_id=tokenizer.pad_id,
    )
    resolved = dataclasses.replace(model, text=text)
    check_input_sizes(cfg.schedule, resolved)
    check_loss(cfg.loss, resolved)
    return resolved


def tokenizer_for(tokenizer: CaptionTokenizer, context_length: int) -> CaptionTokenizer:
    """The same tokenizer, truncating to `context_length` tokens (CLIPA's short captions)."""
    if context_length == tokenizer.context_length:
        return tokenizer
    return CaptionTokenizer(tokenizer.tokenizer, context_length, tokenizer.clean)


def training_captions(cfg: RunConfig) -> list[str]:
    """The first --bpe-captions training captions (never validation pairs), written to
    RUN/captions.txt: what the BPE learns from and what `webpairs eval` takes its default
    zero-shot templates from (trainer/prompts.py). Rank 0 only."""
    skip = held_out(cfg.data)
    captions = [
        " ".join(c.split()) for c in shard_captions(cfg.data.data, cfg.train.bpe_captions, skip)
    ]
    path = Path(cfg.train.output) / CAPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(c + "\n" for c in captions))
    return captions


def initial_tokenizer(
    cfg: RunConfig, world: World, context_length: int, captions: list[str] | None = None
) -> CaptionTokenizer:
    """--tokenizer FILE, "openai-clip" (OpenAI CLIP's BPE, OpenCLIP's ids), "byte" (256
    bytes, no merges) or "bpe": a byte-level BPE that rank 0
    learns from `captions` (the first training captions, never held-out pairs), written
    to RUN/tokenizer.json and handed to every rank."""
    t = cfg.train
    kind = t.tokenizer or DEFAULT_TOKENIZER
    if kind == OPENAI_CLIP:
        return CaptionTokenizer.openai_clip(context_length)
    if kind not in ("byte", "bpe"):
        return CaptionTokenizer.from_file(kind, context_length)
    if kind == "byte":
        return CaptionTokenizer(byte_tokenizer(), context_length)
    text = None
    if world.is_main:
        if captions is None:
            captions = training_captions(cfg)
        text = train_tokenizer(captions, t.bpe_vocab_size).to_str()
        path = Path(t.output) / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        tokenizer = CaptionTokenizer.from_json(text, context_length)
        log.info(
            "tokenizer: byte-level BPE of %d tokens learnt from the first %d captions, in %s",
            tokenizer.vocab_size,
            len(captions),
            path,
        )
    return CaptionTokenizer.from_json(all_gather_objects(text)[0], context_length)


def setup(cfg: RunConfig, world: World) -> Session:
    t, run_dir = cfg.train, Path(cfg.train.output)
    saved = None
    if t.resume:
        saved = load_checkpoint(resolve_checkpoint(t.resume, run_dir), tensors=False)
    # --pretrained (a fresh run): OpenCLIP / OpenAI weights, or one of our checkpoints
    start = read_pretrained(t.pretrained) if t.pretrained and saved is None else None
    # a resumed run's model is the checkpoint's, whatever the flags say; so is a run that
    # starts from one of our checkpoints (and its tokenizer)
    ours = saved or (start if start and "model_config" in start else None)
    model_cfg = model_config_from_dict(ours["model_config"]) if ours else cfg.model
    context_length = model_cfg.text.context_length
    if ours is not None:
        tokenizer = CaptionTokenizer.from_json(ours["tokenizer"], context_length)
    else:
        captions = training_captions(cfg) if world.is_main else None
        tokenizer = initial_tokenizer(cfg, world, context_length, captions)
    model_cfg = resolve_model_config(cfg, model_cfg, tokenizer)
    data = data_at(saved["step"] if saved else 0, cfg.schedule, cfg.data, model_cfg)

    shards = resolve_sources(data.data)
    topology = Topology(world.world_size, max(1, data.workers))
    check_data(shards, data, topology, tokenizer_for(tokenizer, data.context_length))
    if t.accum_steps > 1 and model_cfg.vision.kind == "resnet" and world.is_main:
        log.warning(
            "BatchNorm normalizes each micro-batch on its own (--micro-batch-size, --accum-freq)"
        )

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = build_model(model_cfg, t, world.device)
    if start is not None:
        load_start(model, start, t.pretrained)
    lock_towers(model, t)  # before wrapping: DDP and FSDP2 leave frozen parameters alone
    bf16 = uses_bf16(t.precision, world.device)
    wrapped = wrap_model(model, model.layer_units(), t.strategy, world, bf16)
    if t.strategy == "fsdp" and world.world_size == 1:
        log.info("one rank: --strategy fsdp has nothing to shard; the model stays whole")
    optimizer = make_optimizer(model, t, cfg.schedule.lr)  # after FSDP2 made the shards
    position = new_position(shards, data, topology)
    session = Session(model, wrapped, optimizer, tokenizer, shards, position, loss=cfg.loss)
    if saved is None:
        seed_rank(t.seed, world.rank, 0)
    else:
        try:
            restore_training_state(wrapped, optimizer, saved)
        except ValueError as e:  # torch: "... parameter group that doesn't match ..."
            raise UserError(
                f"the checkpoint's optimizer does not fit this run's ({e}): resume with the "
                f"--lock-image / --lock-text / --lr-image / --lr-text flags of the run"
            ) from None
        session.step, session.nonfinite_total = saved["step"], saved["nonfinite_steps"]
        session.position = resume_position(saved["data"], position, topology)
        session.resumed = True
        if len(saved["rng"]) == world.world_size:
            restore_rng(saved["rng"][world.rank])
        else:
            seed_rank(t.seed, world.rank, session.step)
        if world.is_main:
            truncate_seen_keys(run_dir, session.step)
    barrier()
    return session


def read_pretrained(path: str) -> dict:
    """--pretrained: one of our checkpoints (file, .dcp folder or run folder: its state, with
    "model_config" and "tokenizer"), or {"weights": an OpenCLIP / OpenAI state dict}."""
    from trainer.pretrained import openclip_state_dict, read_weights

    if Path(path).is_dir():
        return load_checkpoint(resolve_checkpoint(path))
    contents = read_weights(path)
    if isinstance(contents, dict) and "model_config" in contents and "model" in contents:
        return contents
    return {"weights": openclip_state_dict(contents)}


def load_start(model: CLIP, start: dict, path: str) -> None:
    from trainer.pretrained import check_openclip_family, load_weights

    if "weights" in start:
        check_openclip_family(model.cfg)
        load_weights(model, start["weights"], path)
    else:
        load_weights(model, start["model"], path)
    log.info("starting from the weights of %s", path)


def resume_position(saved: dict, fresh: DataPosition, topology: Topology) -> DataPosition:
    position = DataPosition.from_state_dict(saved)
    if position.fingerprint != fresh.fingerprint:
        if position.plan.num_shards != fresh.plan.num_shards:
            raise UserError(
                f"--data resolves to {fresh.plan.num_shards} shards, the checkpoint was trained on "
                f"{position.plan.num_shards}: the data position cannot be carried over"
            )
        log.warning("shard URLs differ from the checkpoint's; assuming the same shards, moved")
    if position.topology != topology:
        log.info(
            "redistributing the data position from %d x %d to %d x %d loader streams",
            position.topology.world,
            position.topology.workers,
            topology.world,
            topology.workers,
        )
    return position.for_topology(topology)


def save(s: Session, tracker: PositionTracker, world: World, t: TrainConfig) -> Path | None:
    """Checkpoint with every rank's data position and random state: one file from rank 0, or
    (FSDP2) every rank's shards."""
    data = tracker.merged(all_gather_objects(tracker.local_state()))
    state = {
        "model_config": dataclasses.asdict(s.model.cfg),
        "tokenizer": s.tokenizer.to_json(),
        "data": data.state_dict(),
        "rng": all_gather_objects(capture_rng()),
        "nonfinite_steps": s.nonfinite_total,
    }
    path = None
    if is_sharded(s.model):
        keep = t.keep_checkpoints
        path = save_sharded_checkpoint(
            t.output, s.step, s.model, s.optimizer, state, world.is_main, keep
        )
    elif world.is_main:
        tensors = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict()}
        path = save_checkpoint(t.output, s.step, {**tensors, **state}, keep=t.keep_checkpoints)
    if world.is_main:
        log.info("saved %s", path)
    barrier()
    return path


def full_model(s: Session, world: World) -> CLIP | None:
    """The whole model on rank 0 (None elsewhere): `s.model`, or, under FSDP2, a copy gathered
    from the shards (every rank calls this)."""
    if not is_sharded(s.model):
        return s.model if world.is_main else None
    state = full_model_state(s.model)
    if not world.is_main:
        return None
    model = model_from_config(s.model.cfg)
    model.load_state_dict(state)
    return model.to(world.device)
