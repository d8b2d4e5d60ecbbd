"""CLIP dual encoder: an image tower (ViT or small ResNet) and a text transformer, each ending in
a linear projection to a shared, L2-normalized embedding space, and a learnable temperature.

Read top to bottom; shapes in comments use B batch, T tokens, N patches, C width, D embed_dim.

    model = create_model("tiny", **{"text.vocab_size": 259})
    image_features, text_features, logit_scale = model(images, texts)  # (B, D), (B, D), (1,)
    # with a SigLIP bias (init_logit_bias set), a fourth output: logit_bias (1,)

Training-only options: patch dropout (FLIP) keeps a random subset of patches per image;
`set_grad_checkpointing()` recomputes each transformer block / residual stage in backward.
Position embeddings are interpolated (bicubic) for inputs of another resolution (CLIPA).
The scalars are 1-element tensors, not 0-dim ones, because FSDP2 cannot shard a 0-dim parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.configs import ModelConfig, TextConfig, VisionConfig, get_model_config


class MLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, attn_mask=None, is_causal=False):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x, attn_mask=None, is_causal=False):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool, **kwargs):
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False, **kwargs)
        else:
            x = block(x, **kwargs)
    return x


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + g*g, C) class + patch position embeddings -> (1, 1 + gh*gw, C), bicubic;
    the same tensor when the grid is unchanged."""
    n, width = pos_embed.shape[1] - 1, pos_embed.shape[2]
    g = math.isqrt(n)
    if (g, g) == tuple(grid):
        return pos_embed
    patches = pos_embed[:, 1:].reshape(1, g, g, width).permute(0, 3, 1, 2)  # (1, C, g, g)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], width)  # (1, N', C)
    return torch.cat([pos_embed[:, :1], patches], dim=1)


def drop_patches(x: torch.Tensor, keep: int) -> torch.Tensor:
    """(B, N, C) -> (B, keep, C): a random subset of the patches of each sample (FLIP).
    One uniform draw per patch from the global generator: on CPU a batch draws exactly the
    numbers its micro-batches would, one after the other (tests/trainer/test_accum.py)."""
    noise = torch.rand(x.shape[0], x.shape[1], device=x.device)  # (B, N)
    index = noise.argsort(dim=1)[:, :keep]  # (B, keep)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def conv_stem(width: int, patch_size: int) -> nn.Sequential:
    """(B, 3, H, W) -> (B, width, H/p, W/p) by log2(p) 3x3 stride-2 convolutions, channels
    doubling up to `width`, then a 1x1 one. No normalization: each sample on its own, so
    accumulated gradients stay those of the whole batch."""
    steps = patch_size.bit_length() - 1
    layers, channels = [], 3
    for i in range(steps):
        out = max(8, width // 2 ** (steps - 1 - i))  # ..., width / 4, width / 2, width
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.patch_dropout = cfg.patch_dropout  # the training loop may change it (finetune phase)
        self.grad_checkpointing = False
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        if cfg.stem == "conv":
            self.patch_embed = conv_stem(cfg.width, cfg.patch_size)
        else:
            self.patch_embed = nn.Conv2d(
                3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False
            )
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.width) * cfg.width**-0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, cfg.width) * 0.01)
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)

    def forward(self, images):  # (B, 3, H, W)
        x = self.patch_embed(images)  # (B, C, H/p, W/p)
        pos = interpolate_pos_embed(self.pos_embed, x.shape[2:])  # (1, 1 + N, C)
        x = x.flatten(2).transpose(1, 2) + pos[:, 1:]  # (B, N, C)
        if self.training and self.patch_dropout > 0:
            keep = max(1, round(x.shape[1] * (1 - self.patch_dropout)))
            x = drop_patches(x, keep)  # (B, N', C)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = self.ln_pre(torch.cat([cls, x], dim=1))  # (B, 1 + N', C)
        x = run_blocks(self.blocks, x, self.grad_checkpointing)  # (B, 1 + N', C)
        x = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, C)
        return self.proj(self.ln_post(x))  # (B, D)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: stem (/2), then `stages` stages of `layers` blocks, each stage /2 and x2
    channels, global average pool. BatchNorm statistics are per rank (no SyncBatchNorm)."""

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.grad_checkpointing = False
        width = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages = []
        for i in range(cfg.stages):
            cin, cout = width * 2 ** max(i - 1, 0), width * 2**i
            blocks = [ResidualBlock(cin, cout, stride=1 if i == 0 else 2)]
            blocks += [ResidualBlock(cout, cout, 1) for _ in range(cfg.layers - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.proj = nn.Linear(width * 2 ** (cfg.stages - 1), embed_dim, bias=False)

    def forward(self, images):  # (B, 3, H, W)
        # BatchNorm running statistics are updated again when a checkpointed stage is recomputed
        x = run_blocks(self.stages, self.stem(images), self.grad_checkpointing)
        return self.proj(x.mean(dim=(2, 3)))  # (B, D); x was (B, C', H / 2^stages, W / 2^stages)


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.context_length, cfg.width) * 0.01)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)

    def forward(self, text):  # (B, T) token ids, T <= context_length (shorter: CLIPA truncation)
        cfg = self.cfg
        x = self.token_embed(text) + self.pos_embed[:, : text.shape[1]]  # (B, T, C)
        valid = text != cfg.pad_token_id  # (B, T)
        mask = None
        if not cfg.causal:  # bidirectional: do not attend to padding
            mask = valid[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        x = run_blocks(
            self.blocks, x, self.grad_checkpointing, attn_mask=mask, is_causal=cfg.causal
        )
        x = self.ln_final(x)  # (B, T, C)
        if cfg.pool == "eot":  # features at the first end-of-text token
            eot = (text == cfg.eot_token_id).int().argmax(dim=1)  # (B,)
            x = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, C)
        else:  # mean over non-padding tokens
            w = valid.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            x = (x * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)  # (B, C)
        return self.proj(x)  # (B, D)


class CLIP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tower = VisionTransformer if cfg.vision.kind == "vit" else ResNet
        self.visual = tower(cfg.vision, cfg.embed_dim)
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor([cfg.init_logit_scale]))  # (1,)
        self.logit_bias = None
        if cfg.init_logit_bias is not None:  # SigLIP
            self.logit_bias = nn.Parameter(torch.tensor([cfg.init_logit_bias]))  # (1,)
        self.apply(_init_weights)
        if cfg.init == "clip":
            for tower, width in ((self.visual, cfg.vision.width), (self.text, cfg.text.width)):
                if hasattr(tower, "blocks"):  # transformers; ResNets keep PyTorch's init
                    init_transformer(tower.blocks, width)
                    nn.init.normal_(tower.proj.weight, std=width**-0.5)

    def encode_image(self, images, normalize: bool = True):  # (B, 3, H, W) -> (B, D)
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize: bool = True):  # (B, T) -> (B, D)
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images, text):
        outputs = self.encode_image(images), self.encode_text(text), self.logit_scale.exp()
        return outputs if self.logit_bias is None else (*outputs, self.logit_bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.grad_checkpointing = self.text.grad_checkpointing = enable

    def set_patch_dropout(self, p: float) -> None:
        if isinstance(self.visual, VisionTransformer):
            self.visual.patch_dropout = p

    def layer_units(self) -> list[nn.Module]:
        """The units that are sharded (FSDP2), compiled and checkpointed one by one: every
        transformer block, or every residual stage of a ResNet."""
        visual = (
            self.visual.blocks if isinstance(self.visual, VisionTransformer) else self.visual.stages
        )
        return [*visual, *self.text.blocks]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "logit_scale"  # checkpoints written before it became a (1,) tensor
        if key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) <= max_logit_scale (CLIP clamps at 100 after every step)."""
        self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))

    def tower(self, name: str) -> str:
        """ "image", "text" or "shared" (logit scale and bias): which tower a parameter is of."""
        if name.startswith("visual."):
            return "image"
        return "text" if name.startswith("text.") else "shared"

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """LiT: the image tower frozen, but for its last `unlocked_groups` groups (OpenCLIP's:
        embeddings, each block, last block + final norm, projection)."""
        v = self.visual
        if isinstance(v, VisionTransformer):
            blocks = list(v.blocks)
            head = [v.patch_embed, v.cls_token, v.pos_embed, v.ln_pre]
            groups = [head, *blocks[:-1], [blocks[-1], v.ln_post], [v.proj]]
        else:
            groups = [[v.stem], *v.stages, [v.proj]]
        set_locked_groups(groups, unlocked_groups)
        if freeze_bn_stats:
            self.frozen_norms = [m for m in v.modules() if isinstance(m, nn.BatchNorm2d)]
            self.train(self.training)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        t = self.text
        blocks = list(t.blocks)
        groups = [[t.token_embed, t.pos_embed], *blocks[:-1], [blocks[-1], t.ln_final], [t.proj]]
        set_locked_groups(groups, unlocked_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in getattr(self, "frozen_norms", ()):
            module.eval()  # --lock-image-freeze-bn-stats: running statistics stay as loaded
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay: gains, biases, embeddings, logit scale."""
        names = set()
        for name, p in self.named_parameters():
            if p.ndim < 2 or name.endswith(("pos_embed", "cls_token", "token_embed.weight")):
                names.add(name)
        return names


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


@torch.no_grad()
def init_transformer(blocks: nn.ModuleList, width: int) -> None:
    """CLIP's initialization (OpenAI's, OpenCLIP's text tower): standard deviations scaled by
    the width, and by the depth for the projections back into the residual stream. A fixed
    0.02 is this at width ~2,500: at width 64 it starts every signal ~6x too small, and small
    models then spend hundreds of steps before they learn anything (bench/RESULTS-learning.md)."""
    attn_std, fc_std = width**-0.5, (2 * width) ** -0.5
    proj_std = width**-0.5 * (2 * len(blocks)) ** -0.5
    for block in blocks:
        nn.init.normal_(block.attn.qkv.weight, std=attn_std)
        nn.init.normal_(block.attn.proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.proj.weight, std=proj_std)


def set_locked_groups(groups: list, unlocked: int) -> None:
    """Freeze every parameter of `groups` (lists of modules and parameters, first to last),
    then let the last `unlocked` groups train again."""

    def params(group):
        for item in group if isinstance(group, (list, tuple)) else [group]:
            yield from [item] if isinstance(item, nn.Parameter) else item.parameters()

    for i, group in enumerate(groups):
        for p in params(group):
            p.requires_grad_(i >= len(groups) - unlocked if unlocked > 0 else False)


def model_from_config(cfg: ModelConfig) -> nn.Module:
    """The model a config describes: our CLIP, or (family "open_clip") OpenCLIP's layout."""
    if cfg.family == "open_clip":
        from trainer.openclip_models import OpenClipModel

        return OpenClipModel(cfg)
    return CLIP(cfg)


def create_model(name: str, **overrides) -> nn.Module:
    """A model from a named preset or OpenCLIP architecture; keyword overrides use dotted
    fields, e.g. create_model("tiny", **{"vision.pool": "mean", "embed_dim": 32})."""
    cfg = get_model_config(name, [f"{k}={v}" for k, v in overrides.items()])
    return model_from_config(cfg)
