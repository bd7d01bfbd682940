"""The one interface every frozen 2D teacher implements.

A teacher maps RGB frames to a dense feature map::

    teacher.preprocess(images)  # uint8 (B,h,w,3) / (h,w,3) -> (B,3,H,W) float, normalised
    teacher(x)                  # (B,3,H,W) -> (B, dim, h', w')   with (h', w') = teacher.feature_size
    teacher.extract(images)     # both, under no_grad, in eval mode

The feature map always covers the *whole* frame: a frame of any size is resized (bilinear,
antialiased, aspect ratio not preserved) to ``input_size``. ``input_size`` should be a multiple of
``stride`` (the registry enforces it), so that the map lines up with the image.

Cell geometry belongs to the teacher: feature cell (i, j) is centred at input pixel
``(cell_offset + stride * i, cell_offset + stride * j)`` (row, column; pixel k's centre at k).
For a patch embedding (kernel = stride, no padding: the ViTs) a cell tiles its patch and
``cell_offset = (stride - 1) / 2``; a padded CNN (ResNet: 7x7/s2 p3, 3x3/s2 p1, stride on 3x3 p1)
keeps output j centred on input 2j at every stride-2 step, so its cells are centred at
``stride * i`` (offset 0) — half a cell (15.5 px at layer4) from the patch convention. The offset
is recorded in the feature cache's meta.json, and every consumer that samples the map (PPKT)
goes through ``teachers.cache.pixel_to_grid`` with it; tests check it against the centroid of
the input gradient of one output cell.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_state_dict(state_dict: dict) -> str:
    """A deterministic hash of a state dict: names, dtypes, shapes and raw bytes, in sorted order."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _to_uint8_batch(images) -> list[torch.Tensor]:
    """uint8 (B,h,w,3) / (h,w,3) array or tensor, or a sequence of (h,w,3) → list of (h,w,3) tensors."""
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            out.extend(_to_uint8_batch(im))
        return out
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"images must be a numpy array, a tensor or a list of them, got {type(images).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 RGB (0-255), got dtype {t.dtype}")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images must have shape (B,h,w,3) or (h,w,3), got {tuple(t.shape)}")
    return [t] if t.shape[0] else []


class Teacher(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the frozen 2D teachers (see the module docstring).

    Attributes: ``name``, ``layer`` (normalised string), ``dim`` (channels), ``stride`` (input
    pixels per feature cell), ``input_size`` (H, W), ``mean``/``std`` (per-channel, on [0,1]
    RGB), ``weights_source`` (where the weights came from) and ``weights_sha256``.
    """

    def __init__(
        self,
        name: str,
        layer: str,
        dim: int,
        stride: int,
        input_size: Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        if len(input_size) != 2 or min(int(s) for s in input_size) <= 0:
            raise ValueError(f"input_size must be (H, W) with positive entries, got {input_size}")
        self.name = str(name)
        self.layer = str(layer)
        self.dim = int(dim)
        self.stride = int(stride)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_source = "random-init"
        self._weights_file: Path | None = None
        self._weights_sha256: str | None = None
        # explicit CPU device: subclasses may build their networks under torch.device("meta")
        self.register_buffer("_mean", torch.tensor(self.mean, device="cpu").view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std, device="cpu").view(1, 3, 1, 1), persistent=False)

    # ---------------------------------------------------------------------------- weights info

    def set_weights_info(self, source: str, file: str | Path | None = None, sha256: str | None = None) -> None:
        """Record where the weights came from; the hash is of ``file`` (computed lazily) or given."""
        self.weights_source = str(source)
        self._weights_file = Path(file) if file is not None else None
        self._weights_sha256 = sha256

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            if self._weights_file is not None and self._weights_file.is_file():
                self._weights_sha256 = sha256_file(self._weights_file)
            else:
                self._weights_sha256 = sha256_state_dict(self.state_dict())
        return self._weights_sha256

    # -------------------------------------------------------------------------------- geometry

    @property
    def cell_offset(self) -> float:
        """Input-pixel coordinate of feature cell 0's centre (see the module docstring); cell i is
        centred at ``cell_offset + stride * i``. Patch embeddings: ``(stride - 1) / 2``."""
        return (self.stride - 1) / 2

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the feature map for ``input_size``."""
        h, w = self.input_size
        return h // self.stride, w // self.stride

    # ------------------------------------------------------------------------------ preprocess

    @property
    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return self._mean.device

    def preprocess(self, images) -> torch.Tensor:
        """uint8 RGB (B,h,w,3) / (h,w,3) (numpy or torch; or a list of frames of any sizes) →
        (B,3,H,W) float32 on the teacher's device: resized bilinearly (antialiased) to
        ``input_size``, scaled to [0,1], normalised with ``mean``/``std``."""
        frames = _to_uint8_batch(images)
        if not frames:
            return torch.zeros((0, 3, *self.input_size), device=self._device)
        outs = []
        for t in frames:  # one tensor per frame size (a stacked batch is a single tensor)
            x = t.to(self._device).permute(0, 3, 1, 2).float().div_(255.0)
            if tuple(x.shape[-2:]) != self.input_size:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
            outs.append(x)
        x = torch.cat(outs) if len(outs) > 1 else outs[0]
        return (x - self._mean) / self._std

    # --------------------------------------------------------------------------------- forward

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, dim, H/stride, W/stride) features."""

    @torch.no_grad()
    def extract(self, images) -> torch.Tensor:
        """preprocess + forward in eval mode without gradients → (B, dim, h, w) float32."""
        if self.training:
            self.eval()
        return self(self.preprocess(images))

    def metadata(self) -> dict:
        h, w = self.feature_size
        return {
            "name": self.name,
            "layer": self.layer,
            "dim": self.dim,
            "stride": self.stride,
            "cell_offset": float(self.cell_offset),
            "input_size": [self.input_size[0], self.input_size[1]],
            "feature_size": [h, w],
            "mean": list(self.mean),
            "std": list(self.std),
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
        }

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, layer={self.layer!r}, dim={self.dim}, stride={self.stride}, "
                f"input_size={self.input_size}")
