"""Several datasets in one training run: batches that never mix datasets, in a reproducible order.

PDNorm normalises a batch under its dataset's condition, so every batch comes from one dataset
(Pointcept's ``MultiDatasetDataloader`` serves one DataLoader per dataset round-robin; the first
dataset fixes the epoch length). Here one epoch is fixed up front instead, which keeps the loader
deterministic and resumable like every other one in this project:

* dataset d contributes ``loops[d]`` passes over its scenes (its sampling ratio; Pointcept's
  ``loop``), each pass in an order drawn from (seed, epoch, d, pass);
* its samples are cut into batches of ``batch_size`` (the last one may be short);
* the batches of all datasets are shuffled together by (seed, epoch).

A sample's augmentation seed is a function of (seed, epoch, dataset, position), so a run resumed at
batch ``start`` sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from pretrain3d.data.dataset import collate, sample_seed

__all__ = ["MultiDatasetBatches", "MultiDataset", "multi_collate"]


class MultiDatasetBatches(Sampler):
    """Yields batches ``[(dataset, scene index, sample seed), ...]``, each from one dataset."""

    def __init__(self, sizes: Mapping[str, int], batch_size: int, seed: int, epoch: int,
                 loops: Mapping[str, int] | None = None, start: int = 0):
        if not sizes:
            raise ValueError("no datasets")
        empty = [d for d, n in sizes.items() if n < 1]
        if empty:
            raise ValueError(f"datasets without training scenes: {empty}")
        loops = dict(loops or {})
        unknown = sorted(set(loops) - set(sizes))
        if unknown:
            raise ValueError(f"loops name datasets that are not in the run: {unknown} (datasets: {list(sizes)})")
        self.loops = {d: int(loops.get(d, 1)) for d in sizes}
        if any(v < 1 for v in self.loops.values()):
            raise ValueError(f"every dataset's loop must be >= 1, got {self.loops}")
        self.sizes, self.batch_size, self.seed, self.epoch, self.start = dict(sizes), int(batch_size), seed, epoch, start

    def all_batches(self) -> list[list[tuple[str, int, int]]]:
        batches = []
        for d, n in self.sizes.items():
            items = []
            for p in range(self.loops[d]):
                order = np.random.default_rng(sample_seed(self.seed, "order", self.epoch, d, p)).permutation(n)
                items += [int(i) for i in order]
            samples = [(d, i, sample_seed(self.seed, "sample", self.epoch, d, pos)) for pos, i in enumerate(items)]
            batches += [samples[k:k + self.batch_size] for k in range(0, len(samples), self.batch_size)]
        perm = np.random.default_rng(sample_seed(self.seed, "batches", self.epoch)).permutation(len(batches))
        return [batches[i] for i in perm]

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        yield from self.all_batches()[self.start:]

    def __len__(self) -> int:
        return max(0, self.num_batches(self.sizes, self.batch_size, self.loops) - self.start)

    @staticmethod
    def num_batches(sizes: Mapping[str, int], batch_size: int, loops: Mapping[str, int] | None = None) -> int:
        loops = loops or {}
        return sum(-(-n * int(loops.get(d, 1)) // batch_size) for d, n in sizes.items())


class MultiDataset(Dataset):
    """One map-style dataset per name; an item is ``(dataset, index, sample seed)`` and the sample
    gets ``condition`` = the dataset's name."""

    def __init__(self, datasets: Mapping[str, Dataset]):
        self.datasets = dict(datasets)

    def sizes(self) -> dict[str, int]:
        return {d: len(ds) for d, ds in self.datasets.items()}

    def __len__(self) -> int:
        return sum(self.sizes().values())

    def __getitem__(self, key: tuple[str, int, int]) -> dict:
        d, idx, seed = key
        sample = self.datasets[d][(idx, seed)]
        sample["condition"] = d
        return sample


def multi_collate(batch: Sequence[dict], inner=collate) -> dict:
    """``inner`` (the single-dataset collate) over the samples, plus the batch's one ``condition``."""
    names = {b["condition"] for b in batch}
    if len(names) != 1:
        raise ValueError(f"a batch mixes datasets {sorted(names)} (PDNorm needs one condition per batch)")
    out = inner([{k: v for k, v in b.items() if k != "condition"} for b in batch])
    out["condition"] = batch[0]["condition"]
    return out
