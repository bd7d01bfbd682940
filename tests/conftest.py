"""Shared fixtures: tiny configs and tiny datasets made on the fly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def sevenscenes_root() -> Path | None:
    env = os.environ.get("PRETRAIN3D_7SCENES")
    p = Path(env) if env else REPO.parent / "shared" / "data" / "7scenes-redkitchen"
    return p if p.is_dir() else None


def tiny_overrides(tmp: Path) -> dict:
    """A config small enough for seconds-long CPU runs (used by several tests)."""
    return {
        "experiment": {"name": "tiny", "seeds": [0], "methods": ["scratch"], "pretrain_only": [], "protocols": ["full"]},
        "data": {
            "raw_root": str(tmp / "raw"), "processed_root": str(tmp / "processed"), "workers": 1,
            "synthetic": {"num_train": 2, "num_val": 1, "frames_per_scene": 2, "image_width": 64,
                          "image_height": 48, "points_per_m2": 120.0, "rescans": 0},
        },
        "model": {"stem_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 16], "layers": [1] * 8},
        "train": {"grid_size": 0.1, "epochs": 2, "batch_size": 1, "checkpoint_every": 1, "val_every": 1,
                  "num_workers": 0, "threads": 1},
        "protocols": {"la_points": 50, "probe_epochs": 2},
        "teacher": {"input_height": 56, "input_width": 70, "cache_root": str(tmp / "features")},
        "pretrain": {"epochs": 2, "batch_size": 1, "checkpoint_every": 1, "ppkt": {"num_pairs": 256},
                     "ponderv2": {"volume_resolution": [12, 12, 6], "volume_channels": 8, "unet_channels": [8],
                                  "hidden": 16, "rays_per_view": 32, "samples_uniform": 12, "samples_importance": 4,
                                  "real_check_steps": 3},
                     "condense": {"volume_resolution": [12, 12, 6], "volume_channels": 8, "unet_channels": [8],
                                  "hidden": 16, "rays_per_view": 32, "samples_uniform": 12, "samples_importance": 4,
                                  "real_check_steps": 3}},
        # the other datasets of multi-dataset runs (PPT), tiny; the study is off unless a test turns it on
        "multi_dataset": {"context_channels": 8, "datasets": {
            name: {"dataset": "synthetic", "num_classes": k, "raw_root": str(tmp / f"raw-{dom}"),
                   "processed_root": str(tmp / f"processed-{dom}"), "workers": 1,
                   "synthetic": {"domain": dom, "seed": seed, "num_train": 2, "num_val": 1, "frames_per_scene": 2,
                                 "image_width": 64, "image_height": 48, "points_per_m2": 120.0, "rescans": 0}}
            for name, dom, k, seed in (("S3DIS", "s3dis", 13, 7), ("Structured3D", "structured3d", 25, 8))}},
        "ppt_study": {"enabled": False, "epochs": 1},
        "queries": {"keypoints": 16, "head_points_per_scene": 256, "head_epochs": 3, "min_class_points": 10},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_root": str(tmp / "mlartifacts")},
    }


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (results independent of the machine's core count), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
