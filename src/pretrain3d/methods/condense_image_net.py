"""ConDense's 2D network (``ImageNet2D``): a copy of the 2D teacher's ViT whose top blocks train.

The trained weights are offsets from the teacher's, and the frozen trunk's tokens can be cached per
frame. Why it is built this way (top blocks only, the learning-rate multiplier, the cache, the
frozen reference head that the regulariser compares against): the module docstring of
``methods.condense``, which states every design choice of the reconstruction.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.teachers.cache import cell_geometry

__all__ = ["ImageNet2D"]


class ImageNet2D(nn.Module):
    """A copy of a ViT teacher whose top ``train_blocks`` blocks (+ final norm) train.

    Trainable weights are kept as offsets from the teacher's: ``w = w_teacher + lr_mult * delta``
    with ``delta`` (initialised at 0) the only parameters. With Adam the step of ``w`` is then
    ``lr_mult`` times the shared learning rate (a per-network learning rate without a second
    optimiser), weight decay pulls ``w`` towards the teacher rather than towards 0, and the network
    equals the teacher bit for bit at initialisation.

    The frozen trunk (patch embedding + lower blocks) and the frozen reference head are the
    teacher's own modules, held outside the module tree: they are not in the state dict (rebuilt
    from the teacher, identified by ``metadata()``) but follow ``.to(device)``. Geometry
    (``metadata()``, ``geometry``, ``feature_size``) is the teacher's, so
    ``teachers.cache.pixel_to_grid`` applies unchanged."""

    def __init__(self, teacher, train_blocks: int, lr_mult: float = 1.0):
        super().__init__()
        vit = getattr(teacher, "vit", None)
        if vit is None:
            raise ValueError(f"ConDense's 2D network needs a ViT teacher, got {teacher.name!r}")
        idx = vit.resolve_layer(teacher.layer)
        used = vit.cfg.depth if idx is None else idx + 1
        k = int(train_blocks)
        if not 0 <= k <= used:
            raise ValueError(f"train_blocks must be in 0..{used} for {teacher.name} layer {teacher.layer}, got {k}")
        self._frozen = [teacher]  # a list: not a registered submodule
        self.train_blocks = k
        self.lr_mult = float(lr_mult)
        self.split = used - k
        self.used = used
        self.final_norm = idx is None
        self._names = [[n for n, _ in blk.named_parameters()] for blk in vit.encoder.layer[self.split:used]]
        self.delta = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.zeros_like(p)) for _, p in blk.named_parameters())
            for blk in vit.encoder.layer[self.split:used])
        self.norm_delta = (nn.ParameterList([nn.Parameter(torch.zeros_like(vit.layernorm.weight)),
                                             nn.Parameter(torch.zeros_like(vit.layernorm.bias))])
                           if self.final_norm and k > 0 else None)
        self.trunk_cache: dict[str, torch.Tensor] = {}
        self.reference_cache: dict[str, torch.Tensor] = {}

    def trained_vit_state(self) -> dict[str, torch.Tensor]:
        """The 2D network as a plain ViT state dict (teacher names, ``teachers.vit``): teacher weights
        with the trained offsets applied -- for a later stage that wants a stock ViT."""
        vit = self.teacher.vit
        sd = {k: v.detach().clone() for k, v in vit.state_dict().items()}
        for i, (names, deltas) in enumerate(zip(self._names, self.delta)):
            for n, d in zip(names, deltas):
                key = f"encoder.layer.{self.split + i}.{n}"
                sd[key] += self.lr_mult * d.detach().to(sd[key])
        if self.norm_delta is not None:
            sd["layernorm.weight"] += self.lr_mult * self.norm_delta[0].detach()
            sd["layernorm.bias"] += self.lr_mult * self.norm_delta[1].detach()
        return sd

    # ------------------------------------------------------------------ teacher facts
    @property
    def teacher(self):
        return self._frozen[0]

    def metadata(self) -> dict:
        return self.teacher.metadata()

    @property
    def name(self) -> str:
        return self.teacher.name

    @property
    def layer(self) -> str:
        return self.teacher.layer

    @property
    def geometry(self) -> dict:
        return cell_geometry(self.metadata(), "teacher")

    @property
    def dim(self) -> int:
        return self.teacher.dim

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.teacher.feature_size

    def preprocess(self, images) -> torch.Tensor:
        return self.teacher.preprocess(images)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ forward pieces
    @torch.no_grad()
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> tokens (B, 1 + h*w, D) after the frozen blocks."""
        vit = self.teacher.vit
        h = vit.embeddings(x)
        for blk in vit.encoder.layer[:self.split]:
            h = blk(h)
        return h

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.feature_size
        return tokens[:, 1:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Trunk tokens -> (B, D, h, w) dense patch features (top blocks + norm with the trained offsets)."""
        from torch.func import functional_call

        vit = self.teacher.vit
        m = self.lr_mult
        for i, (names, deltas) in enumerate(zip(self._names, self.delta)):
            blk = vit.encoder.layer[self.split + i]
            base = dict(blk.named_parameters())
            tokens = functional_call(blk, {n: base[n] + m * d for n, d in zip(names, deltas)}, (tokens,))
        if self.final_norm:
            ln = vit.layernorm
            w, b = ln.weight, ln.bias
            if self.norm_delta is not None:
                w, b = w + m * self.norm_delta[0], b + m * self.norm_delta[1]
            tokens = F.layer_norm(tokens, ln.normalized_shape, w, b, ln.eps)
        return self._to_map(tokens)

    @torch.no_grad()
    def reference(self, tokens: torch.Tensor) -> torch.Tensor:
        """Trunk tokens -> (B, D, h, w): the frozen teacher's features (its own top blocks)."""
        vit = self.teacher.vit
        for blk in vit.encoder.layer[self.split:self.used]:
            tokens = blk(tokens)
        if self.final_norm:
            tokens = vit.layernorm(tokens)
        return self._to_map(tokens)

    @torch.no_grad()
    def extract(self, images) -> torch.Tensor:
        """uint8 RGB frames -> (B, D, h, w) features of the (current) 2D network, without gradients."""
        return self.head(self.trunk(self.preprocess(images)))

    # ------------------------------------------------------------------ trunk cache
    @torch.no_grad()
    def cache_frames(self, keys: Sequence[str], read_image, batch_size: int = 8) -> None:
        """Trunk tokens and the teacher's features of frames ``keys`` (``read_image(key)`` -> uint8
        (H, W, 3)), computed once and kept on the CPU."""
        todo = [k for k in keys if k not in self.trunk_cache]
        for i in range(0, len(todo), batch_size):
            part = todo[i:i + batch_size]
            tok = self.trunk(self.preprocess([read_image(k) for k in part]))
            ref = self.reference(tok)
            for j, k in enumerate(part):
                self.trunk_cache[k] = tok[j].cpu()
                self.reference_cache[k] = ref[j].cpu()

    def tokens_and_reference(self, keys: Sequence[str], images: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk tokens (V, T, D) and teacher features (V, D, h, w) of the views: from the cache where
        present, else computed from ``images`` (uint8 (H, W, 3) each)."""
        dev = self.teacher._device
        miss = [i for i, k in enumerate(keys) if k not in self.trunk_cache]
        computed = {}
        if miss:
            tok = self.trunk(self.preprocess([images[i] for i in miss]))
            ref = self.reference(tok)
            computed = {i: (tok[j], ref[j]) for j, i in enumerate(miss)}
        toks, refs = [], []
        for i, k in enumerate(keys):
            if i in computed:
                t, r = computed[i]
            else:
                t, r = self.trunk_cache[k].to(dev), self.reference_cache[k].to(dev)
            toks.append(t)
            refs.append(r)
        return torch.stack(toks), torch.stack(refs)
