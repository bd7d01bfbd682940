"""Point <-> pixel correspondences against exact synthetic geometry and real 7-Scenes frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain3d.data import synthetic as syn
from pretrain3d.geometry.camera import project_points
from pretrain3d.geometry.correspondence import (
    CorrespondenceStats,
    depth_normals,
    frame_pixel_points,
    frame_points_with_attributes,
    projection_stats,
    scene_point_pixels,
)

torch.set_num_threads(1)


def _sevenscenes_root() -> Path:
    env = os.environ.get("PRETRAIN3D_7SCENES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes-redkitchen"


@pytest.fixture(scope="module")
def scene():
    return syn.generate_scene(syn.scene_seed(7, "train", 0), scene_id="corr", num_frames=4, nthreads=1)


def test_projected_visible_points_hit_pixels_of_their_label(scene):
    """>= 95 % of the pairs land on a pixel that renders the point's own label.

    Asserted at a 10 % depth tolerance. OpenScene's 25 % (the config default
    ``pretrain.ppkt.visibility_rel``) is printed too: on these rooms it lets points hidden up to
    25 % behind a nearer object through (wall behind clutter, cabinet behind a chair), 91-99 %
    agreement per frame. A tight tolerance (2 %) in turn drops good pairs on surfaces seen at
    grazing angles, where the nearest pixel's depth differs from the point's by up to ~17 %.
    """
    pts = scene.coord_clean.astype(np.float64)
    for f in range(len(scene.poses)):
        stats = CorrespondenceStats()
        idx, pix = scene_point_pixels(pts, scene.frame_depth[f], scene.K, scene.poses[f], rel_thresh=0.1,
                                      margin=2, stats=stats)
        assert len(idx) > 2000, f"frame {f}: only {len(idx)} pairs"
        assert np.all(np.diff(idx) > 0)
        rendered = scene.frame_label[f][pix[:, 1], pix[:, 0]].astype(np.int64)
        agree = float((rendered == scene.label[idx]).mean())
        assert agree >= 0.95, f"frame {f}: label agreement {agree:.3f}"
        # the statistics add up and agree with the pairs returned
        assert stats.pairs == len(idx)
        assert stats.points == len(pts)
        assert stats.pairs + stats.out_of_image + stats.no_depth + stats.occluded + stats.in_front == stats.points
        # the border margin is respected
        H, W = scene.frame_depth[f].shape
        assert pix[:, 0].min() >= 2 and pix[:, 0].max() <= W - 3
        assert pix[:, 1].min() >= 2 and pix[:, 1].max() <= H - 3
        idx25, pix25 = scene_point_pixels(pts, scene.frame_depth[f], scene.K, scene.poses[f], rel_thresh=0.25)
        agree25 = float((scene.frame_label[f][pix25[:, 1], pix25[:, 0]] == scene.label[idx25]).mean())
        print(f"\nframe {f}: rel 0.10: {stats.as_dict()} label agreement {agree:.4f}; "
              f"rel 0.25: {len(idx25)} pairs, agreement {agree25:.4f}")


def test_backprojected_pairs_reproject_to_their_pixel(scene):
    for f in (0, 2):
        depth, K, P = scene.frame_depth[f], scene.K, scene.poses[f]
        for stride, margin in ((1, 0), (3, 5)):
            pts, pix = frame_pixel_points(depth, K, P, stride=stride, margin=margin)
            assert len(pts) > 1000
            H, W = depth.shape
            uv, z, inside = project_points(pts, K, P, W, H)
            assert inside.all()
            np.testing.assert_array_equal(np.floor(uv + 0.5).astype(np.int64), pix)
            np.testing.assert_allclose(uv, pix, atol=1e-6)
            np.testing.assert_allclose(z, depth[pix[:, 1], pix[:, 0]], rtol=1e-9)
            assert pix[:, 0].min() >= margin and pix[:, 1].max() <= H - 1 - margin
            assert (pix % stride == 0).all()
            # a back-projected point passes the depth test of its own frame at its own pixel
            idx, pix2 = scene_point_pixels(pts, depth, K, P, rel_thresh=1e-6, margin=0)
            assert len(idx) == len(pts)
            np.testing.assert_array_equal(pix2, pix)
    # points lie on the rendered surface: same label as the mesh triangle they came from
    pts, pix = frame_pixel_points(scene.frame_depth[1], scene.K, scene.poses[1], max_depth=3.0)
    assert (scene.frame_depth[1][pix[:, 1], pix[:, 0]] <= 3.0).all()


def test_occluded_points_are_rejected(scene):
    import open3d as o3d

    rc = scene.raycaster()
    pts = scene.coord_clean.astype(np.float64)
    for f in range(len(scene.poses)):
        P = scene.poses[f]
        H, W = scene.frame_depth[f].shape
        _, _, inside = project_points(pts, scene.K, P, W, H, margin=2)
        c = P[:3, 3]
        ray = pts - c
        dist = np.linalg.norm(ray, axis=1)
        rays = np.c_[np.broadcast_to(c, ray.shape), ray / dist[:, None]].astype(np.float32)
        t = rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        occluded = inside & (t < 0.6 * dist)  # another surface well in front of the point
        if occluded.sum() < 100:
            continue
        stats = CorrespondenceStats()
        idx, _ = scene_point_pixels(pts, scene.frame_depth[f], scene.K, P, stats=stats)
        paired = np.zeros(len(pts), bool)
        paired[idx] = True
        assert paired[occluded].mean() < 0.02, f"frame {f}: occluded points paired"
        assert stats.occluded >= 0.9 * occluded.sum()
    # a hand-made case: a wall 2 m away hides a point 4 m away on the same ray
    K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    depth = np.full((48, 64), 2.0)
    pts = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.0, 0.0, 1.0], [100.0, 0.0, 1.0], [0, 0, -1.0]])
    stats = CorrespondenceStats()
    idx, pix = scene_point_pixels(pts, depth, K, np.eye(4), stats=stats)
    assert idx.tolist() == [0]
    assert stats.as_dict() == {"points": 5, "pairs": 1, "out_of_image": 2, "no_depth": 0, "occluded": 1,
                               "in_front": 1}
    depth[24, 32] = 0.0
    s = projection_stats(pts, depth, K, np.eye(4))
    assert s.no_depth == 3 and s.pairs == 0
    # an absolute threshold replaces the relative one
    idx, _ = scene_point_pixels(pts, np.full((48, 64), 2.0), K, np.eye(4), abs_thresh=2.5)
    assert idx.tolist() == [0, 1, 2]


def test_depth_normals_match_the_mesh(scene):
    f = 0
    depth = scene.frame_depth[f]
    view = syn.render_view(scene, scene.K, scene.poses[f], scene.width, scene.height, nthreads=1)
    out = frame_points_with_attributes(depth, scene.K, scene.poses[f], color=scene.frame_color[f])
    true_n = scene.tri_normal[view["tri"][out["pix"][:, 1], out["pix"][:, 0]]]
    cos = np.abs(np.einsum("ij,ij->i", out["normal"], true_n))
    assert np.median(cos) > 0.99 and (cos > 0.9).mean() > 0.8
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1.0, atol=1e-9)
    # normals face the camera
    to_cam = scene.poses[f][:3, 3] - out["coord"]
    assert (np.einsum("ij,ij->i", out["normal"], to_cam) >= 0).all()
    np.testing.assert_array_equal(out["color"], scene.frame_color[f][out["pix"][:, 1], out["pix"][:, 0]])
    n, valid = depth_normals(depth, scene.K, stride=2)
    assert n.shape == (60, 80, 3) and valid.shape == (60, 80)


def test_sevenscenes_depth_warp():
    root = _sevenscenes_root()
    if not (root / "frame-000010.depth.png").is_file():
        pytest.skip(f"7-Scenes fixture not found at {root} (set PRETRAIN3D_7SCENES)")
    from pretrain3d.data.frames import read_depth, read_pose
    from pretrain3d.data.sevenscenes import read_sevenscenes_intrinsics

    K = read_sevenscenes_intrinsics(root)
    da = read_depth(root / "frame-000000.depth.png")
    db = read_depth(root / "frame-000010.depth.png")
    Pa, Pb = read_pose(root / "frame-000000.pose.txt"), read_pose(root / "frame-000010.pose.txt")
    pts, _ = frame_pixel_points(da, K, Pa, stride=2)
    # every point that lands on a valid depth pixel of frame B, no depth test: an unbiased median
    H, W = db.shape
    uv, z, inside = project_points(pts, K, Pb, W, H)
    ij = np.floor(uv[inside] + 0.5).astype(np.int64)
    d_b = db[ij[:, 1], ij[:, 0]]
    ok = d_b > 0
    err = np.abs(z[inside][ok] - d_b[ok])
    stats = CorrespondenceStats()
    idx, pix = scene_point_pixels(pts, db, K, Pb, stats=stats)
    err_pairs = np.abs(project_points(pts[idx], K, Pb, W, H)[1] - db[pix[:, 1], pix[:, 0]])
    print(f"\n7-Scenes warp frame-000000 -> frame-000010: {ok.sum()} pixels, median |dz| = "
          f"{1000 * np.median(err):.1f} mm (p90 {1000 * np.quantile(err, 0.9):.1f} mm); pairs with the depth "
          f"test: {stats.as_dict()}, median |dz| {1000 * np.median(err_pairs):.1f} mm")
    assert ok.sum() > 10_000
    assert np.median(err) < 0.05
    assert stats.pairs > 0.8 * ok.sum()


def test_sevenscenes_depth_normals_agree_with_the_fused_cloud():
    root = _sevenscenes_root()
    if not (root / "frame-000500.depth.png").is_file():
        pytest.skip(f"7-Scenes fixture not found at {root} (set PRETRAIN3D_7SCENES)")
    from scipy.spatial import cKDTree

    from pretrain3d.data.frames import read_depth, read_pose
    from pretrain3d.data.sevenscenes import fuse_sevenscenes, read_sevenscenes_intrinsics

    fused = fuse_sevenscenes(root, frame_step=10, max_frames=10, voxel_size=0.02, pixel_stride=2)
    tree = cKDTree(fused.coord)
    K = read_sevenscenes_intrinsics(root)
    for fid in ("000000", "000500"):
        depth, pose = read_depth(root / f"frame-{fid}.depth.png"), read_pose(root / f"frame-{fid}.pose.txt")
        out = frame_points_with_attributes(depth, K, pose, stride=4)
        d, i = tree.query(out["coord"])
        near = d < 0.02
        cos = np.abs(np.einsum("ij,ij->i", out["normal"][near], fused.normal[i[near]]))
        raw, _ = depth_normals(depth, K, stride=4, smooth=1)
        raw = raw[out["pix"][:, 1] // 4, out["pix"][:, 0] // 4] @ pose[:3, :3].T
        cos_raw = np.abs(np.einsum("ij,ij->i", raw[near], fused.normal[i[near]]))
        print(f"\n7-Scenes frame {fid}: median |cos| to the fused PCA normals {np.median(cos):.3f} "
              f"(unsmoothed depth {np.median(cos_raw):.3f}); > 0.9 for {(cos > 0.9).mean():.2f}")
        assert near.mean() > 0.95
        assert np.median(cos) > 0.95 and np.median(cos) > np.median(cos_raw)
