"""Sparse-convolution UNet backbone (SpUNet-v1m1 topology at its full-size setting).

Layout (full size: stem 32, channels (32,64,128,256 | 256,128,96,96), layers (2,3,4,6 | 2,2,2,2)):

* stem: SubMConv3d(in -> stem, k=5, no bias) + BN + ReLU                      (stride 1)
* encoder stage s = 0..3: SparseConv3d(k=2, s=2, no bias, key "spconv{s+1}") + BN + ReLU,
  then ``layers[s]`` BasicBlocks at ``channels[s]``                          (stride 2^(s+1))
* decoder stage s = 3..0: SparseInverseConv3d(k=2, key "spconv{s+1}") + BN + ReLU back to stride
  2^s, concatenate the encoder skip at that stride, then ``layers[7-s]`` BasicBlocks, the first
  of which narrows (dec + skip) -> dec channels (256+128->256, 128+64->128, 96+32->96, 96+32->96)
* head: SubMConv3d 1x1 (channels[-1] -> num_classes, bias), or Identity when num_classes == 0,
  so the model returns ``out_channels`` (= channels[-1]) features per point.

BatchNorm1d(eps=1e-3, momentum=0.01), or with ``norm=PDNormSpec(...)`` the SpUNet-v1m3 topology: every
BatchNorm replaced by PDNorm (models.pdnorm), the batch's dataset in ``data["condition"]``, the dataset
prompts in ``prompt`` (adaptive only). SubMConv3d and Linear weights get trunc_normal(std 0.02),
the strided down/up convolutions keep spconv's default init.

Input is the backbone contract dict: ``grid_coord`` (N,3) int voxel indices >= 0 per sample,
``feat`` (N,C) float, ``offset`` (B,) cumulative point counts. Grid coordinates must be unique
within a sample (voxelisation happens in the data pipeline). The output rows follow the input
point order. spconv is imported when a model is built, not when this module is imported.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import torch
from torch import nn

from pretrain3d.models.batching import offset2batch
from pretrain3d.models.pdnorm import Condition, PDBatchNorm, PDNormSpec, condition_of
from pretrain3d.models.spconv_compat import ensure_spconv_cpu_backward

__all__ = ["SpUNet", "FULL_CHANNELS", "FULL_LAYERS", "SMALL_CONFIG", "build_sparse_tensor"]

FULL_CHANNELS = (32, 64, 128, 256, 256, 128, 96, 96)
FULL_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)
# A small setting with the same topology, for CPU tests and the embedded benchmark.
SMALL_CONFIG = dict(stem_channels=16, channels=(16, 32, 64, 64, 64, 64, 48, 48), layers=(1,) * 8)

SPATIAL_MARGIN = 96  # spatial_shape = max(grid_coord) + 96, as in Pointcept


def _spconv():
    import spconv.pytorch as spconv

    return spconv


@functools.lru_cache(maxsize=None)
def _stem_conv_class():
    """spconv's SubMConv3d for the k=5 stem (same parameters, state dict and CUDA path), computed on the
    CPU by ``sparse_torch``'s grouped pairs: spconv's CPU loop over the 125 kernel offsets made the stem
    about half of a training step (fwd+bwd at 25k voxels, one thread: 249 ms vs 151 ms; the whole step
    ~520 ms), and the stem never needs the input gradient (its input is the data). Same arithmetic:
    tests/test_sparse_torch.py checks the two against each other. A class made on first use, so that
    importing this module does not import spconv."""

    class StemConv(_spconv().SubMConv3d):
        def forward(self, x):
            if x.features.is_cuda:
                return super().forward(x)
            from pretrain3d.models import sparse_torch

            smap = sparse_torch.subm_map(x.indices, x.spatial_shape, self.kernel_size, self.dilation)
            out = sparse_torch.submconv(x.features.contiguous(), self.weight, smap)
            return x.replace_feature(out if self.bias is None else out + self.bias)

    return StemConv


class _NormFactory:
    """BatchNorm1d (SpUNet-v1m1), or PDNorm under a spec (SpUNet-v1m3: every BN replaced)."""

    def __init__(self, eps: float, momentum: float, spec: PDNormSpec | None):
        self.eps, self.momentum, self.spec = eps, momentum, spec

    def __call__(self, channels: int) -> nn.Module:
        if self.spec is None:
            return nn.BatchNorm1d(channels, eps=self.eps, momentum=self.momentum)
        return PDBatchNorm(channels, self.spec, self.eps, self.momentum)


def _norm(norm: nn.Module, feat: torch.Tensor, cond: Condition | None) -> torch.Tensor:
    return norm(feat, cond) if isinstance(norm, PDBatchNorm) else norm(feat)


class _ConvBNReLU(nn.Module):
    """A sparse convolution, then BatchNorm and ReLU on its features."""

    def __init__(self, conv: nn.Module, channels: int, norm_fn: _NormFactory):
        super().__init__()
        self.conv = conv
        self.bn = norm_fn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, cond: Condition | None = None):
        x = self.conv(x)
        return x.replace_feature(self.relu(_norm(self.bn, x.features, cond)))


class BasicBlock(nn.Module):
    """ResNet basic block on submanifold convs: SubM3 -> BN -> ReLU -> SubM3 -> BN, + residual, ReLU.

    The residual is the identity, or a 1x1 SubM conv + BN when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, indice_key: str, norm_fn: _NormFactory):
        super().__init__()
        spconv = _spconv()
        if in_channels == out_channels:
            self.proj_conv = None
            self.proj_bn = None
        else:
            self.proj_conv = spconv.SubMConv3d(in_channels, out_channels, kernel_size=1, bias=False)
            self.proj_bn = norm_fn(out_channels)
        self.conv1 = spconv.SubMConv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn1 = norm_fn(out_channels)
        self.conv2 = spconv.SubMConv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False,
                                       indice_key=indice_key)
        self.bn2 = norm_fn(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, cond: Condition | None = None):
        if self.proj_conv is None:
            identity = x.features
        else:
            identity = _norm(self.proj_bn, self.proj_conv(x).features, cond)
        out = self.conv1(x)
        out = out.replace_feature(self.relu(_norm(self.bn1, out.features, cond)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(_norm(self.bn2, out.features, cond) + identity))


class _Stage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, cond: Condition | None = None):
        for block in self.blocks:
            x = block(x, cond)
        return x


def build_sparse_tensor(grid_coord: torch.Tensor, feat: torch.Tensor, offset: torch.Tensor):
    """Validate the backbone input and build the spconv ``SparseConvTensor`` (indices [b, x, y, z])."""
    spconv = _spconv()
    if grid_coord.ndim != 2 or grid_coord.shape[1] != 3:
        raise ValueError(f"grid_coord must be (N, 3), got {tuple(grid_coord.shape)}")
    if grid_coord.dtype.is_floating_point:
        raise ValueError(f"grid_coord must be integer voxel indices, got {grid_coord.dtype}")
    if feat.ndim != 2 or feat.shape[0] != grid_coord.shape[0]:
        raise ValueError(f"feat must be (N, C) with N={grid_coord.shape[0]}, got {tuple(feat.shape)}")
    offset = torch.as_tensor(offset, device=grid_coord.device).long().reshape(-1)
    if offset.numel() == 0 or int(offset[-1]) != grid_coord.shape[0]:
        raise ValueError(f"offset[-1] must equal the number of points {grid_coord.shape[0]}, "
                         f"got offset={offset.tolist()}")
    if grid_coord.shape[0] == 0:
        raise ValueError("empty batch: no points")
    if bool((grid_coord < 0).any()):
        raise ValueError("grid_coord must be >= 0 (shift each sample by its minimum)")
    batch = offset2batch(offset)
    indices = torch.cat([batch.unsqueeze(1), grid_coord.long()], dim=1).int().contiguous()
    spatial_shape = (grid_coord.max(dim=0).values + SPATIAL_MARGIN).tolist()
    return spconv.SparseConvTensor(features=feat, indices=indices, spatial_shape=spatial_shape,
                                   batch_size=int(offset.numel()))


class SpUNet(nn.Module):
    """Sparse UNet backbone; ``forward(data_dict) -> (N, num_classes or out_channels)``."""

    def __init__(
        self,
        in_channels: int = 6,
        num_classes: int = 20,
        stem_channels: int = 32,
        channels: Sequence[int] = FULL_CHANNELS,
        layers: Sequence[int] = FULL_LAYERS,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        norm: PDNormSpec | None = None,
    ):
        super().__init__()
        channels, layers = tuple(int(c) for c in channels), tuple(int(n) for n in layers)
        if len(channels) != 8 or len(layers) != 8:
            raise ValueError("channels and layers need 8 entries each (4 encoder + 4 decoder stages)")
        if any(n < 1 for n in layers):
            raise ValueError(f"every stage needs at least one block, got layers={layers}")
        ensure_spconv_cpu_backward()
        spconv = _spconv()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.stem_channels = int(stem_channels)
        self.channels, self.layers = channels, layers
        self.out_channels = channels[-1]
        self.num_stages = n = len(layers) // 2
        self.norm_spec = norm
        norm_fn = _NormFactory(bn_eps, bn_momentum, norm)
        # PDNorm's dataset prompts (adaptive): owned here so that the backbone file is self-contained
        self.prompt = nn.Embedding(len(norm.conditions), norm.context_channels) \
            if norm is not None and norm.adaptive else None

        # spconv itself, or a stand-in module with the same API (scripts/bench_sparse_conv.py swaps it in)
        stem_conv = _stem_conv_class() if spconv.__name__.startswith("spconv") else spconv.SubMConv3d
        self.stem = _ConvBNReLU(
            stem_conv(in_channels, stem_channels, kernel_size=5, padding=1, bias=False, indice_key="stem"),
            stem_channels, norm_fn)

        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        enc_ch = stem_channels          # channels of the skip at this stage's input stride
        dec_ch = channels[-1]           # channels the decoder stage s produces
        for s in range(n):
            self.down.append(_ConvBNReLU(
                spconv.SparseConv3d(enc_ch, channels[s], kernel_size=2, stride=2, bias=False,
                                    indice_key=f"spconv{s + 1}"),
                channels[s], norm_fn))
            self.enc.append(_Stage([
                BasicBlock(channels[s], channels[s], f"subm{s + 1}", norm_fn) for _ in range(layers[s])
            ]))
            # decoder stage s maps stride 2^(s+1) -> 2^s; its input comes from the stage below
            below = channels[2 * n - s - 2]
            self.up.append(_ConvBNReLU(
                spconv.SparseInverseConv3d(below, dec_ch, kernel_size=2, bias=False,
                                           indice_key=f"spconv{s + 1}"),
                dec_ch, norm_fn))
            self.dec.append(_Stage([
                BasicBlock(dec_ch + enc_ch if i == 0 else dec_ch, dec_ch, f"subm{s}", norm_fn)
                for i in range(layers[2 * n - s - 1])
            ]))
            enc_ch = channels[s]
            dec_ch = below

        if self.num_classes > 0:
            self.head = spconv.SubMConv3d(channels[-1], self.num_classes, kernel_size=1, bias=True)
        else:
            self.head = nn.Identity()
        self._init_weights(spconv)

    def _init_weights(self, spconv) -> None:
        for m in self.modules():
            if isinstance(m, (spconv.SubMConv3d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cond = condition_of(data, self.norm_spec, self.prompt) if self.norm_spec is not None else None
        x = build_sparse_tensor(data["grid_coord"], data["feat"], data["offset"])
        x = self.stem(x, cond)
        skips = [x]
        for s in range(self.num_stages):
            x = self.enc[s](self.down[s](x, cond), cond)
            skips.append(x)
        x = skips.pop()
        for s in reversed(range(self.num_stages)):
            x = self.up[s](x, cond)
            skip = skips.pop()
            x = x.replace_feature(torch.cat((x.features, skip.features), dim=1))
            x = self.dec[s](x, cond)
        if self.num_classes > 0:
            x = self.head(x)
        return x.features

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"stem_channels={self.stem_channels}, channels={self.channels}, layers={self.layers}"
                + (f", pdnorm={self.norm_spec.as_dict()}" if self.norm_spec is not None else ""))
