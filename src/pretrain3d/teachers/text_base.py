"""The interface every text encoder implements (``TextEncoder``), in a module of its own: the encoders
(``text_bert``, ``text_clip``) subclass it and ``text`` builds them, so all three import it from here
rather than from each other (which was an import cycle)."""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import nn


class TextEncoder(nn.Module, metaclass=abc.ABCMeta):
    """A frozen text encoder: ``encode(texts)`` → (n, dim) float32, unit L2 norm per row.

    Subclasses set ``name`` and ``dim`` and implement ``_encode_batch`` (tokenise + forward) and
    ``identity`` (everything that changes the output, for cache keys)."""

    name: str
    dim: int
    weights_source: str  # the package, file or hub repository the weights came from
    max_batch: int = 256

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised or normalised (len(texts), dim) embeddings, on ``self.device``."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """JSON-able description of everything that determines the embeddings."""

    @torch.no_grad()  # not inference_mode: callers may use the rows as constants inside autograd
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):  # a bare string would be encoded character by character
            raise TypeError("encode() takes a list of strings, not a single string")
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode() takes strings, got {type(bad[0]).__name__}: {bad[0]!r}")
        if self.training:
            self.eval()
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        rows = [self._encode_batch(texts[i:i + self.max_batch]) for i in range(0, len(texts), self.max_batch)]
        out = torch.cat(rows).float()
        return torch.nn.functional.normalize(out, dim=-1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"
