"""Scene datasets and offset batching (batches are concatenations, never padding)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pretrain3d import profiling
from pretrain3d.data import transforms as T
from pretrain3d.data.scene import list_scenes, load_processed_scene
from pretrain3d.errors import DataError


def sample_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from (run seed, epoch, position, ...): the augmentation of a sample
    depends only on these, so a resumed run sees exactly the samples an uninterrupted one would."""
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


@dataclass
class SceneArrays:
    scene_id: str
    coord: np.ndarray
    color: np.ndarray
    normal: np.ndarray
    segment: np.ndarray


def load_split(processed_root: str | Path, split: str, num_classes: int) -> list[SceneArrays]:
    with profiling.phase("data"):
        return _load_split(processed_root, split, num_classes)


def _load_split(processed_root: str | Path, split: str, num_classes: int) -> list[SceneArrays]:
    scenes = []
    for scene_dir in list_scenes(processed_root, split):
        s = load_processed_scene(scene_dir, num_classes=num_classes, load_frames=False)
        scenes.append(SceneArrays(s.scene_id, s.coord.astype(np.float64), s.color.astype(np.float64),
                                  s.normal.astype(np.float64), s.segment.astype(np.int64)))
    if not scenes:
        raise DataError(Path(processed_root) / split, "no processed scenes found",
                        "run the preprocess stage first, or check data.processed_root")
    return scenes


class EpochSampler(Sampler):
    """Yields (scene index, sample seed) pairs in an order fixed by (seed, epoch).

    ``start`` skips the first items, which is how a resumed run continues mid-epoch.
    """

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool = True, start: int = 0):
        self.n, self.seed, self.epoch, self.shuffle, self.start = n, seed, epoch, shuffle, start

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(sample_seed(self.seed, "order", self.epoch)).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for pos, idx in enumerate(self.order()):
            if pos >= self.start:
                yield int(idx), sample_seed(self.seed, "sample", self.epoch, pos)

    def __len__(self) -> int:
        return max(0, self.n - self.start)


class TrainDataset(Dataset):
    """Augmented, voxelised training samples; indexed by (scene index, sample seed)."""

    def __init__(self, scenes: Sequence[SceneArrays], grid_size: float, augment, max_points: int | None = None,
                 prefer_labelled: bool = False):
        self.scenes, self.grid_size, self.augment, self.max_points = scenes, grid_size, augment, max_points
        self.prefer_labelled = prefer_labelled  # limited annotations: voxels keep a labelled point if any

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        idx, seed = key
        s = self.scenes[idx]
        rng = np.random.default_rng(seed)
        sample = {"coord": s.coord.copy(), "color": s.color.copy(), "normal": s.normal.copy(), "segment": s.segment}
        sample = T.train_augment(sample, rng, self.augment)
        sample = T.voxelize_for_model(sample, self.grid_size, rng, self.max_points,
                                      prefer_labelled=self.prefer_labelled)
        return to_tensors(sample, ("grid_coord", "feat", "coord", "segment"))


class EvalDataset(Dataset):
    """Unaugmented voxelised scenes with the inverse map to every original point."""

    def __init__(self, scenes: Sequence[SceneArrays], grid_size: float):
        self.scenes, self.grid_size = scenes, grid_size

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, idx: int) -> dict:
        s = self.scenes[idx]
        sample = {"coord": s.coord.copy(), "color": s.color.copy(), "normal": s.normal.copy(), "segment": s.segment}
        sample = T.center_shift(sample, apply_z=True)
        sample = T.voxelize_for_model(sample, self.grid_size, rng=None)
        out = to_tensors(sample, ("grid_coord", "feat", "coord", "segment", "inverse"))
        out["segment_full"] = torch.from_numpy(s.segment)
        out["scene_id"] = s.scene_id
        return out


def to_tensors(sample: dict, keys: Sequence[str]) -> dict:
    out = {}
    for k in keys:
        v = sample[k]
        if k in ("grid_coord", "segment", "inverse"):
            out[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64))
        else:
            out[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    return out


def concat_fields(batch: list[dict], out: dict, skip: Sequence[str] = ()) -> dict:
    """Add every field of the samples not already in ``out`` (nor in ``skip``) to ``out``:
    tensors concatenated along dim 0, anything else as a list."""
    for k in batch[0]:
        if k in out or k in skip:
            continue
        if isinstance(batch[0][k], torch.Tensor):
            out[k] = torch.cat([b[k] for b in batch], dim=0)
        else:
            out[k] = [b[k] for b in batch]
    return out


def collate(batch: list[dict]) -> dict:
    """Concatenate samples; ``offset`` holds the cumulative point counts."""
    counts = [len(b["grid_coord"]) for b in batch]
    return concat_fields(batch, {"offset": torch.tensor(np.cumsum(counts), dtype=torch.int64)})
