"""Real RGB-D data: the 7-Scenes "redkitchen" sample beside the repository (shared/data/).

Skipped when the fixture is absent. Nothing is copied into the repository: outputs go to tmp_path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from pretrain3d.data.frames import read_depth, read_pose
from pretrain3d.data.scene import load_processed_scene
from pretrain3d.data.sevenscenes import (
    fuse_sevenscenes,
    list_sevenscenes_frames,
    preprocess_sevenscenes,
    read_sevenscenes_intrinsics,
)
from pretrain3d.geometry.camera import backproject_depth, project_points


def _fixture_root() -> Path:
    env = os.environ.get("PRETRAIN3D_7SCENES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes-redkitchen"


ROOT = _fixture_root()
pytestmark = pytest.mark.skipif(
    not (ROOT / "camera-intrinsics.txt").is_file(),
    reason=f"7-Scenes fixture not found at {ROOT} (set PRETRAIN3D_7SCENES or put shared/data/ beside the repo)",
)


def test_list_frames():
    frames = list_sevenscenes_frames(ROOT)
    assert len(frames) == 100
    assert frames[0].id == "000000" and frames[-1].id == "000990"
    assert all(f.color.is_file() and f.depth.is_file() and f.pose.is_file() for f in frames)
    k = read_sevenscenes_intrinsics(ROOT)
    np.testing.assert_allclose(k, [[585, 0, 320], [0, 585, 240], [0, 0, 1]])


def test_fuse_ten_frames_gives_a_plausible_cloud():
    t0 = time.perf_counter()
    scene = fuse_sevenscenes(ROOT, frame_step=10, max_frames=10, voxel_size=0.02)
    dt = time.perf_counter() - t0
    n = scene.num_points
    extent = scene.coord.max(0) - scene.coord.min(0)
    print(f"\n7-Scenes fusion of {len(scene.frames)} frames: {n} points, extent {np.round(extent, 2)} m, {dt:.2f} s")
    assert len(scene.frames) == 10
    assert 10_000 <= n <= 500_000
    assert np.all(extent > 0.5) and np.all(extent < 10.0)
    assert np.isfinite(scene.coord).all() and np.isfinite(scene.normal).all()
    assert scene.coord.dtype == np.float32 and scene.color.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(scene.normal, axis=1), 1.0, atol=1e-4)
    assert (scene.segment == -1).all()
    # Colours are a real image's: spread out, not constant, not saturated.
    assert scene.color.std(axis=0).min() > 20
    assert 40 < scene.color.mean() < 220
    # Voxel averaging: one point per 2 cm cell (a cell's mean stays inside the cell).
    cells = np.floor(scene.coord.astype(np.float64) / 0.02).astype(np.int64)
    assert len(np.unique(cells, axis=0)) >= 0.99 * n


def test_depth_warp_between_frames_agrees():
    frames = list_sevenscenes_frames(ROOT)
    k = read_sevenscenes_intrinsics(ROOT)
    errors = []
    for a, b in [(0, 1), (10, 11), (50, 51)]:
        fa, fb = frames[a], frames[b]
        da, db = read_depth(fa.depth), read_depth(fb.depth)
        pts, _ = backproject_depth(da, k, read_pose(fa.pose), stride=2)
        h, w = db.shape
        uv, z, inside = project_points(pts, k, read_pose(fb.pose), w, h)
        ij = np.floor(uv[inside] + 0.5).astype(np.int64)
        d_b = db[ij[:, 1], ij[:, 0]]
        ok = d_b > 0
        err = np.abs(z[inside][ok] - d_b[ok])
        assert ok.sum() > 10_000, f"frames {fa.id}/{fb.id} overlap too little"
        errors.append(np.median(err))
        print(f"\nwarp {fa.id} -> {fb.id}: {ok.sum()} pixels, median |dz| = {1000 * np.median(err):.1f} mm")
    assert max(errors) < 0.05


def test_preprocess_writes_a_processed_scene(tmp_path):
    out = tmp_path / "7scenes" / "val" / "redkitchen"
    scene = preprocess_sevenscenes(ROOT, out, frame_step=25, voxel_size=0.05, pixel_stride=4)
    got = load_processed_scene(out, num_classes=20)
    assert got.num_points == scene.num_points > 1000
    assert got.frames.ids == ["000000", "000250", "000500", "000750"]
    assert (out / "frames" / "color" / "000250.jpg").is_file()
    d = got.frames.read_depth(1)
    assert d.shape == (480, 640) and d.max() < 10.0  # 65535 (invalid) reads as 0, not 65.5 m
    np.testing.assert_allclose(got.frames[1].pose, read_pose(ROOT / "frame-000250.pose.txt"))
