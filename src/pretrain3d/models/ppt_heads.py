"""Classifiers for training on several datasets with different label spaces (Point Prompt Training).

Each dataset keeps its own label indices (ScanNet-20, S3DIS-13, Structured3D-25...); a
``LabelSpaces`` object holds every dataset's class names in label order, the union of the names
and, per dataset, the union row of each of its labels (``valid_index``). Three heads:

* ``LanguageHead`` (PPT's language-guided categorical alignment): point features -> Linear -> unit
  vector; logits = cosine with the frozen, unit text embedding of each class name x 1/temperature
  (PPT: CLIP's logit scale 100, i.e. temperature 0.01, frozen). A dataset's logits are only over its
  own classes, so one dataset's classes are never negatives of another's; the same name in two
  datasets ("chair") shares one embedding, which is the alignment.
* ``DecoupledHeads`` (PPT-v1m2): one linear layer per dataset over its own classes.
* ``JointHead`` (the naive joint baseline): one linear layer over the union of the names; every
  dataset's labels are mapped into the union and its loss runs over all union classes, so a class
  that another dataset names differently ("bookshelf" / "bookcase") is a negative.

The mapping is checked, not trusted: ``LabelSpaces.check`` asserts that union row
``valid_index[d][k]`` is dataset d's class k, which is exactly what Pointcept's S3DIS
``valid_index`` (sorted union indices instead of S3DIS label order; Pointcept issue #425) violates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain3d.data.labels import IGNORE_INDEX

__all__ = ["LabelSpaces", "LanguageHead", "DecoupledHeads", "JointHead", "HEADS"]

HEADS = ("language", "decoupled", "joint")


@dataclass(frozen=True)
class LabelSpaces:
    names: dict[str, tuple[str, ...]]       # dataset -> its class names in label order
    union: tuple[str, ...]                  # every name once, in order of first appearance
    valid_index: dict[str, tuple[int, ...]]  # dataset -> union row of each of its labels

    @classmethod
    def build(cls, names: Mapping[str, Sequence[str]]) -> "LabelSpaces":
        union: list[str] = []
        for dataset, classes in names.items():
            if len(set(classes)) != len(classes):
                dup = sorted({c for c in classes if list(classes).count(c) > 1})
                raise ValueError(f"dataset {dataset!r}: class names repeat {dup}")
            union += [c for c in classes if c not in union]
        index = {d: tuple(union.index(c) for c in classes) for d, classes in names.items()}
        spaces = cls({d: tuple(c) for d, c in names.items()}, tuple(union), index)
        spaces.check()
        return spaces

    def check(self, valid_index: Mapping[str, Sequence[int]] | None = None) -> None:
        """Every dataset label k must point at the union row named like it (else the #425 bug)."""
        valid_index = self.valid_index if valid_index is None else valid_index
        for dataset, classes in self.names.items():
            rows = list(valid_index[dataset])
            if len(rows) != len(classes):
                raise ValueError(f"dataset {dataset!r}: {len(rows)} union rows for {len(classes)} classes")
            wrong = [(k, classes[k], self.union[r]) for k, r in enumerate(rows)
                     if r >= len(self.union) or self.union[r] != classes[k]]
            if wrong:
                k, want, got = wrong[0]
                raise ValueError(f"dataset {dataset!r}: label {k} ({want!r}) maps to union class {got!r} "
                                 f"({len(wrong)} of {len(classes)} labels wrong; is the index sorted instead of "
                                 f"in the dataset's label order?)")

    def to_union(self, dataset: str, segment: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> union labels (ignore stays ignore)."""
        table = torch.tensor(self.valid_index[dataset], dtype=torch.long, device=segment.device)
        out = torch.full_like(segment, IGNORE_INDEX)
        ok = segment != IGNORE_INDEX
        out[ok] = table[segment[ok]]
        return out

    def check_labels(self, dataset: str, segment: torch.Tensor, source: str = "") -> None:
        if dataset not in self.names:
            raise ValueError(f"{source or 'batch'}: dataset {dataset!r} is not one of {list(self.names)}")
        k = len(self.names[dataset])
        bad = (segment != IGNORE_INDEX) & ((segment < 0) | (segment >= k))
        if bool(bad.any()):
            vals = torch.unique(segment[bad])[:5].tolist()
            raise ValueError(f"{source or 'batch'}: labels {vals} outside dataset {dataset!r}'s {k} classes "
                             f"(0..{k - 1}, {IGNORE_INDEX} = ignore)")


class LanguageHead(nn.Module):
    def __init__(self, in_ch: int, spaces: LabelSpaces, text_embeddings: torch.Tensor, temperature: float = 0.01):
        super().__init__()
        if text_embeddings.shape[0] != len(spaces.union):
            raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {len(spaces.union)} class names")
        self.spaces, self.temperature = spaces, float(temperature)
        self.proj = nn.Linear(in_ch, text_embeddings.shape[1])
        self.register_buffer("class_embedding", F.normalize(text_embeddings.float(), dim=1))

    def forward(self, feat: torch.Tensor, dataset: str) -> torch.Tensor:
        rows = list(self.spaces.valid_index[dataset])
        z = F.normalize(self.proj(feat), dim=1)
        return z @ self.class_embedding[rows].t() / self.temperature


class DecoupledHeads(nn.Module):
    def __init__(self, in_ch: int, spaces: LabelSpaces):
        super().__init__()
        self.spaces = spaces
        self.heads = nn.ModuleDict({d: nn.Linear(in_ch, len(c)) for d, c in spaces.names.items()})

    def forward(self, feat: torch.Tensor, dataset: str) -> torch.Tensor:
        return self.heads[dataset](feat)


class JointHead(nn.Module):
    """Logits over the union; ``forward`` returns them whole (training) -- use ``dataset_logits`` to score
    one dataset's classes (evaluation)."""

    def __init__(self, in_ch: int, spaces: LabelSpaces):
        super().__init__()
        self.spaces = spaces
        self.linear = nn.Linear(in_ch, len(spaces.union))

    def forward(self, feat: torch.Tensor, dataset: str) -> torch.Tensor:
        return self.linear(feat)

    def dataset_logits(self, feat: torch.Tensor, dataset: str) -> torch.Tensor:
        return self.linear(feat)[:, list(self.spaces.valid_index[dataset])]


def init_linear(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
