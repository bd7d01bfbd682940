"""Use a ScanNet folder already preprocessed by Pointcept (v1.5.2+ npy layout) as it is.

Source layout: ``<root>/{train,val,test}/<scene>/{coord,color,normal,segment20,segment200,instance}.npy``
(test scenes have no labels). Each scene is checked (shapes, dtypes, label ranges) and linked, not
copied, into ``out_root/<split>/<scene>``, and a manifest with the data hash is written, so the
rest of the pipeline sees a normal processed root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pretrain3d.atomic import write_json
from pretrain3d.data.labels import SCANNET20_NAMES
from pretrain3d.data.scene import hash_scenes, list_scenes, load_processed_scene
from pretrain3d.errors import DataError


def link_pointcept_scenes(src_root: str | Path, out_root: str | Path, splits: Sequence[str] = ("train", "val"),
                          num_classes: int = 20, progress: bool = True) -> dict:
    """Validate every scene of ``splits`` under ``src_root`` and symlink it into ``out_root``."""
    from tqdm import tqdm

    src_root, out_root = Path(src_root).resolve(), Path(out_root)
    if not src_root.is_dir():
        raise DataError(src_root, "preprocessed ScanNet folder not found")
    manifest: dict = {"dataset": "scannet_npy", "source": str(src_root), "num_classes": num_classes,
                      "class_names": list(SCANNET20_NAMES) if num_classes == 20 else None,
                      "splits": {}, "scenes": {}, "class_histogram": {}, "ignored_points": {}}
    for split in splits:
        dirs = list_scenes(src_root, split)
        if not dirs and split != "test":
            raise DataError(src_root / split, "no scene folders (with coord.npy) found",
                            "expected Pointcept's layout: <root>/train/<scene>/coord.npy ...")
        hist = np.zeros(num_classes, dtype=np.int64)
        stats = {}
        for d in tqdm(dirs, desc=f"check {split}", unit="scene", disable=not progress):
            s = load_processed_scene(d, num_classes=num_classes, load_frames=False, mmap=True,
                                     allow_unlabelled=split == "test")
            seg = np.asarray(s.segment)
            hist += np.bincount(seg[seg >= 0], minlength=num_classes)[:num_classes]
            stats[d.name] = {"num_points": s.num_points, "num_frames": 0, "ignored_points": int((seg < 0).sum())}
            link = out_root / split / d.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()  # a rerun into the same folder
            elif link.exists():
                raise DataError(link, "exists and is not a link to a Pointcept scene", "use an empty output folder")
            os.symlink(d, link, target_is_directory=True)
        manifest["splits"][split] = sorted(stats)
        manifest["scenes"][split] = stats
        manifest["class_histogram"][split] = hist.tolist()
        manifest["ignored_points"][split] = int(sum(v["ignored_points"] for v in stats.values()))
    manifest["data_hash"] = hash_scenes([out_root / s / i for s in manifest["splits"] for i in manifest["splits"][s]])
    write_json(out_root / "manifest.json", manifest)
    return manifest
