"""CLIP with OpenCLIP's parameter names and numerics: OpenCLIP's and OpenAI's checkpoints load
into it, and its state dict is one `open_clip.create_model_and_transforms(...)` loads.

    model = OpenClipModel(get_model_config("ViT-B-32"))   # or "RN50", "ViT-L-14", a config .json
    model.load_state_dict(openclip_state_dict)             # keys as OpenCLIP's CLIP has them
    image_features, text_features, logit_scale = model(images, texts)  # (B, D), (B, D), (1,)

The layout, as OpenCLIP's `CLIP`: `visual` (a ViT: conv1, class_embedding, positional_embedding,
ln_pre, transformer.resblocks.N.{ln_1, attn.in_proj_weight/in_proj_bias/out_proj, ln_2,
mlp.c_fc, mlp.c_proj}, ln_post, proj; or a ModifiedResNet: a 3-convolution stem, layer1..4 of
bottlenecks with average-pool downsampling, attnpool), then the text tower at the top level:
token_embedding, positional_embedding, transformer, ln_final, text_projection; logit_scale.
QuickGELU (x * sigmoid(1.702 x)) where the config says so (OpenAI's weights).

Written from OpenCLIP's architecture description, not its code; the forward pass matches its
embeddings to 1e-5 (tests/trainer/test_openclip_models.py, on a fixture made by open_clip).
The interface is trainer/model.py's CLIP's (normalized embeddings by default, grad
checkpointing, patch dropout, layer units for FSDP2), so the trainer, evaluation and scoring
use either. Shapes: B batch, T tokens, N patches, C width, D embed_dim.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.configs import ModelConfig, TextConfig, UserError, VisionConfig
from trainer.model import drop_patches, interpolate_pos_embed, run_blocks, set_locked_groups


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (packed
    in_proj_weight / in_proj_bias, out_proj), computed with scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, is_causal: bool = False):
        B, T, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(C, dim=2)
        q, k, v = (y.view(B, T, self.heads, C // self.heads).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(hidden, width),
            )
        )

    def forward(self, x, is_causal: bool = False):
        x = x + self.attn(self.ln_1(x), is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu) for _ in range(layers)
        )

    def forward(self, x, is_causal: bool = False):
        return run_blocks(self.resblocks, x, self.grad_checkpointing, is_causal=is_causal)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        self.cfg = cfg
        self.patch_dropout = cfg.patch_dropout
        width, grid = cfg.width, cfg.image_size // cfg.patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def forward(self, images):  # (B, 3, H, W)
        x = self.conv1(images)  # (B, C, H/p, W/p)
        pos = interpolate_pos_embed(self.positional_embedding[None], x.shape[2:])[0]  # (1+N, C)
        x = x.flatten(2).transpose(1, 2) + pos[1:]  # (B, N, C)
        if self.training and self.patch_dropout > 0:
            keep = max(1, int(x.shape[1] * (1 - self.patch_dropout)))
            x = drop_patches(x, keep)  # (B, N', C)
        cls = (self.class_embedding + pos[0]).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = self.transformer(self.ln_pre(torch.cat([cls, x], dim=1)))  # (B, 1 + N', C)
        # ln_post is per token: on the class token alone, or on the patches before their mean
        x = self.ln_post(x[:, 0]) if self.cfg.pool == "cls" else self.ln_post(x[:, 1:]).mean(1)
        return x @ self.proj  # (B, D)

    def lock_groups(self) -> list:
        """OpenCLIP's groups for --lock-image-unlocked-groups, first to last."""
        blocks = list(self.transformer.resblocks)
        head = [self.conv1, self.class_embedding, self.positional_embedding, self.ln_pre]
        return [head, *blocks[:-1], [blocks[-1], self.ln_post], [self.proj]]

    def units(self) -> list[nn.Module]:
        return list(self.transformer.resblocks)

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.transformer.grad_checkpointing = enable


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 convolutions (4x expansion); a stride is an average pool after the 3x3,
    and the shortcut average-pools before its 1x1 convolution (anti-aliased downsampling)."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride > 1 or cin != cout:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(cin, cout, 1, bias=False)),
                        ("1", nn.BatchNorm2d(cout)),
                    ]
                )
            )

    def forward(self, x):  # (B, cin, H, W) -> (B, 4 planes, H / stride, W / stride)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.avgpool(F.relu(self.bn2(self.conv2(y))))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class AttentionPool(nn.Module):
    """The ResNet's head: one query, the mean of the feature map's positions, attends over
    them and itself (with learned position embeddings); q/k/v/c projections."""

    def __init__(self, grid: int, width: int, heads: int, embed_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, embed_dim)

    def forward(self, x):  # (B, C, h, w)
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, hw, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1 + hw, C)
        pos = interpolate_pos_embed(
            self.positional_embedding[None], (math.isqrt(x.shape[1] - 1),) * 2
        )
        x = x + pos  # (B, 1 + hw, C)
        hs = C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, self.heads, hs).transpose(1, 2)  # (B, nh, 1, hs)
        k = self.k_proj(x).view(B, -1, self.heads, hs).transpose(1, 2)  # (B, nh, 1 + hw, hs)
        v = self.v_proj(x).view(B, -1, self.heads, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, C))  # (B, D)


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        cin = width
        for i, blocks in enumerate(cfg.resnet_layers):
            planes = width * 2**i
            layer = [Bottleneck(cin, planes, stride=1 if i == 0 else 2)]
            layer += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin = planes * 4
        self.attnpool = AttentionPool(cfg.image_size // 32, width * 32, cfg.heads, embed_dim)
        self.grad_checkpointing = False
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in ("q_proj", "k_proj", "v_proj", "c_proj"):
            nn.init.normal_(getattr(self.attnpool, proj).weight, std=std)
        for name, p in self.named_parameters():
            if name.endswith("bn3.weight") and name.startswith("layer"):
                nn.init.zeros_(p)  # each residual branch starts as the identity

    def forward(self, images):  # (B, 3, H, W)
        x = F.relu(self.bn1(self.conv1(images)))  # (B, C/2, H/2, W/2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))  # (B, C, H/4, W/4)
        x = run_blocks(self.units(), x, self.grad_checkpointing)  # (B, 32 C, H/32, W/32)
        return self.attnpool(x)  # (B, D)

    def units(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def lock_groups(self) -> list:
        return [[self]]  # OpenCLIP locks a ModifiedResNet whole

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.grad_checkpointing = enable


class OpenClipModel(nn.Module):
    """OpenCLIP's `CLIP`: `visual`, and the text tower's parts at the top level."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        v, t = cfg.vision, cfg.text
        if v.kind == "resnet":
            self.visual = ModifiedResNet(v, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(v, cfg.embed_dim, cfg.quick_gelu)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, cfg.quick_gelu)
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, cfg.embed_dim))
        # (1,), not OpenCLIP's 0-dim: FSDP2 cannot shard a 0-dim parameter (export reshapes)
        self.logit_scale = nn.Parameter(torch.tensor([cfg.init_logit_scale]))
        self.logit_bias = None
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor([cfg.init_logit_bias]))
        self.frozen_norms: list[nn.Module] = []  # kept in eval mode (--lock-image-freeze-bn-stats)
        _init_text(self, t)

    def encode_image(self, images, normalize: bool = True):  # (B, 3, H, W) -> (B, D)
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize: bool = True):  # (B, T) -> (B, D), T <= context
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]  # (B, T, C)
        x = self.ln_final(self.transformer(x, is_causal=True))  # (B, T, C)
        # at the first end-of-text token (OpenCLIP: the argmax id, which CLIP's eot is)
        eot = (text == self.cfg.text.eot_token_id).int().argmax(dim=1)  # (B,)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images, text):
        outputs = self.encode_image(images), self.encode_text(text), self.logit_scale.exp()
        return outputs if self.logit_bias is None else (*outputs, self.logit_bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def set_patch_dropout(self, p: float) -> None:
        if isinstance(self.visual, VisionTransformer):
            self.visual.patch_dropout = p

    def layer_units(self) -> list[nn.Module]:
        return [*self.visual.units(), *self.transformer.resblocks]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("logit_scale", "logit_bias"):  # OpenCLIP's are 0-dim
            key = prefix + name
            if key in state_dict and state_dict[key].ndim == 0:
                state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))

    def no_weight_decay(self) -> set[str]:
        """As OpenCLIP's trainer: gains, biases, the class embedding and logit scale (every
        parameter of fewer than 2 dimensions); embeddings are decayed."""
        return {name for name, p in self.named_parameters() if p.ndim < 2}

    def tower(self, name: str) -> str:
        """ "image", "text" or "shared" (logit scale and bias): which tower a parameter is of."""
        if name.startswith("visual."):
            return "image"
        return "shared" if name in ("logit_scale", "logit_bias") else "text"

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        groups = self.visual.lock_groups()
        if unlocked_groups and isinstance(self.visual, ModifiedResNet):
            raise UserError("a ModifiedResNet image tower is locked whole (no unlocked groups)")
        set_locked_groups(groups, unlocked_groups)
        if freeze_bn_stats:
            self.frozen_norms = [m for m in self.visual.modules() if isinstance(m, nn.BatchNorm2d)]
            self.train(self.training)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        blocks = list(self.transformer.resblocks)
        groups = [
            [self.token_embedding, self.positional_embedding],
            *blocks[:-1],
            [blocks[-1], self.ln_final],
            [self.text_projection],
        ]
        set_locked_groups(groups, unlocked_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_norms:
            module.eval()  # running statistics stay those loaded
        return self


@torch.no_grad()
def _init_text(model: OpenClipModel, t: TextConfig) -> None:
    """OpenCLIP's text-tower initialization: widths and depth scale the standard deviations."""
    nn.init.normal_(model.token_embedding.weight, std=0.02)
    nn.init.normal_(model.positional_embedding, std=0.01)
    attn_std, fc_std = t.width**-0.5, (2 * t.width) ** -0.5
    proj_std = t.width**-0.5 * (2 * t.layers) ** -0.5
    for block in model.transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
    nn.init.normal_(model.text_projection, std=t.width**-0.5)
