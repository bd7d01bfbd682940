"""The 2D feature cache: layout, fp16 round trip, resume, metadata checks and pixel alignment."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pretrain3d.data.frames import Frame, FrameIndex
from pretrain3d.errors import DataError
from pretrain3d.teachers.base import Teacher
from pretrain3d.teachers.cache import (
    cache_dir,
    cache_key,
    cache_scenes,
    load_scene_features,
    pixel_to_grid,
    read_cache_meta,
    write_scene_features,
)

torch.set_num_threads(1)


class ConvTeacher(Teacher):
    """A tiny teacher (one stride-14 convolution) that counts its forward calls."""

    def __init__(self, dim: int = 6, input_size=(28, 42), seed: int = 0):
        super().__init__("fake", "last", dim, 14, input_size)
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 14, stride=14)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.copy_(torch.randn(dim, generator=g))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def make_scene(root: Path, scene_id: str, ids: list[str], w: int = 64, h: int = 48, seed: int = 0) -> Path:
    """A processed scene folder with just its frame index (all the cache reads)."""
    d = root / scene_id
    (d / "frames" / "color").mkdir(parents=True)
    (d / "frames" / "depth").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    K = np.array([[50.0, 0, w / 2], [0, 50.0, h / 2], [0, 0, 1]])
    frames = []
    for fid in ids:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / "frames" / "color" / f"{fid}.png")
        Image.fromarray(np.full((h, w), 1500, np.uint16)).save(d / "frames" / "depth" / f"{fid}.png")
        frames.append(Frame(fid, f"frames/color/{fid}.png", f"frames/depth/{fid}.png", K, np.eye(4)))
    FrameIndex(frames, w, h).save(d / "frames.json")
    return d


@pytest.fixture
def scenes(tmp_path):
    root = tmp_path / "processed" / "train"
    return [
        make_scene(root, "scene_a", ["0", "10", "20"], seed=1),
        make_scene(root, "scene_b", ["frame_003", "frame_001", "frame_002", "x.4", "y-5"], seed=2),
    ]


def test_cache_key_and_dir(tmp_path):
    t = ConvTeacher()
    assert cache_key("dinov2_vits14", "last", (168, 224)) == "dinov2_vits14-last-168x224"
    assert cache_dir(tmp_path, t) == tmp_path / "fake-last-28x42"


def test_round_trip_fp16(tmp_path, scenes):
    t = ConvTeacher()
    out = cache_dir(tmp_path / "features", t)
    stats = cache_scenes(t, scenes, out, batch_size=2, progress=False)
    assert (stats["scenes"], stats["scenes_computed"], stats["scenes_skipped"], stats["frames"]) == (2, 2, 0, 8)
    assert t.calls == 2 + 3  # ceil(3/2) + ceil(5/2) batches
    assert stats["forward_seconds"] > 0 and stats["frames_per_s"] > 0

    meta = read_cache_meta(out)
    assert meta == json.loads(json.dumps(t.metadata()))
    assert meta["feature_size"] == [2, 3] and meta["dim"] == 6 and meta["stride"] == 14

    for d in scenes:
        index = FrameIndex.load(d / "frames.json")
        ids, feats = load_scene_features(out, d.name, expected_meta=t.metadata())
        assert ids == index.ids  # the scene's frame order
        assert feats.dtype == np.float16 and feats.shape == (len(ids), 6, 2, 3)
        ref = t.extract(np.stack([index.read_color(i) for i in range(len(index))])).numpy()
        np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        with zipfile.ZipFile(out / f"{d.name}.npz") as z:  # plain np.savez: stored, not deflated
            assert {i.filename for i in z.infolist()} == {"features.npy", "frame_ids.npy"}
            assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        with np.load(out / f"{d.name}.npz", allow_pickle=False) as z:
            assert z["frame_ids"].dtype.kind == "U"
    assert not list(out.glob(".*tmp"))  # no temporaries left behind


def test_resume_skips_done_scenes_and_rewrites_truncated(tmp_path, scenes):
    t = ConvTeacher()
    out = cache_dir(tmp_path, t)
    cache_scenes(t, scenes, out, batch_size=4, progress=False)
    first = {d.name: load_scene_features(out, d.name)[1] for d in scenes}
    t.calls = 0

    stats = cache_scenes(t, scenes, out, batch_size=4, progress=False)
    assert t.calls == 0
    assert (stats["scenes_skipped"], stats["frames"], stats["frames_skipped"]) == (2, 0, 8)

    # a truncated file (e.g. copied half-way) is recomputed; the complete one is kept
    npz = out / "scene_b.npz"
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"scene_b\.npz.*truncated or corrupt"):
        load_scene_features(out, "scene_b")
    mtime_a = (out / "scene_a.npz").stat().st_mtime_ns
    stats = cache_scenes(t, scenes, out, batch_size=4, progress=False)
    assert t.calls == 2 and (stats["scenes_computed"], stats["frames"]) == (1, 5)
    assert (out / "scene_a.npz").stat().st_mtime_ns == mtime_a
    np.testing.assert_array_equal(load_scene_features(out, "scene_b")[1], first["scene_b"])

    # a scene whose frame list changed is stale and recomputed
    index = FrameIndex.load(scenes[0] / "frames.json")
    index.subset(["0", "20"]).save(scenes[0] / "frames.json")
    t.calls = 0
    stats = cache_scenes(t, scenes, out, batch_size=4, progress=False)
    assert t.calls == 1 and stats["scenes_computed"] == 1
    assert load_scene_features(out, "scene_a")[0] == ["0", "20"]

    # resume=False recomputes everything
    t.calls = 0
    cache_scenes(t, scenes, out, batch_size=4, progress=False, resume=False)
    assert t.calls == 3


def test_metadata_mismatch_names_the_folder(tmp_path, scenes):
    t = ConvTeacher(seed=0)
    out = cache_dir(tmp_path, t)
    cache_scenes(t, scenes[:1], out, progress=False)
    other = ConvTeacher(seed=1)  # same name/layer/size, other weights: same folder, other sha256
    assert cache_dir(tmp_path, other) == out
    with pytest.raises(DataError, match=r"fake-last-28x42.*different teacher.*weights_sha256.*delete this folder"):
        cache_scenes(other, scenes, out, progress=False)
    assert other.calls == 0
    with pytest.raises(DataError, match=r"fake-last-28x42.*weights_sha256"):
        load_scene_features(out, "scene_a", expected_meta=other.metadata())
    # a meta.json that is not JSON
    (out / "meta.json").write_text("{trunc")
    with pytest.raises(DataError, match=r"meta\.json.*not valid JSON"):
        cache_scenes(t, scenes, out, progress=False)


def test_load_errors_name_the_file(tmp_path, scenes):
    t = ConvTeacher()
    out = cache_dir(tmp_path, t)
    with pytest.raises(DataError, match=r"meta\.json.*not found"):
        load_scene_features(out, "scene_a")
    cache_scenes(t, scenes[:1], out, progress=False)
    with pytest.raises(DataError, match=r"scene_b\.npz.*no cached 2D features"):
        load_scene_features(out, "scene_b")
    # wrong shape for the metadata
    write_scene_features(out, "scene_b", ["0"], np.zeros((1, 5, 2, 3), np.float32))
    with pytest.raises(DataError, match=r"scene_b\.npz.*shape"):
        load_scene_features(out, "scene_b")
    # arrays missing
    with open(out / "scene_c.npz", "wb") as f:
        np.savez(f, features=np.zeros((1, 6, 2, 3), np.float16))
    with pytest.raises(DataError, match=r"scene_c\.npz.*lacks arrays \['frame_ids'\]"):
        load_scene_features(out, "scene_c")
    (out / "scene_d.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"scene_d\.npz.*truncated or corrupt"):
        load_scene_features(out, "scene_d")


def test_write_rejects_fp16_overflow(tmp_path):
    with pytest.raises(ValueError, match="overflow float16"):
        write_scene_features(tmp_path, "s", ["0"], np.full((1, 1, 1, 1), 1e6, np.float32))
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("frame_wh,map_hw", [((160, 120), (12, 16)), ((64, 48), (2, 3)), ((100, 70), (5, 7))])
def test_pixel_to_grid_picks_the_right_cell(frame_wh, map_hw):
    """A feature map whose channels encode each cell's (row, col): sampling at a pixel returns the
    cell that holds the pixel's centre."""
    w0, h0 = frame_wh
    h, w = map_hw
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    fmap = torch.stack([rows, cols])[None]  # (1, 2, h, w)
    vv, uu = np.meshgrid(np.arange(h0), np.arange(w0), indexing="ij")
    uv = np.stack([uu.ravel(), vv.ravel()], axis=1)
    # the cell that holds the pixel's centre (u+0.5, v+0.5): floor((2u+1)·w / 2w0)
    exp_row, exp_col = ((2 * uv[:, 1] + 1) * h) // (2 * h0), ((2 * uv[:, 0] + 1) * w) // (2 * w0)
    # pixels whose centre falls exactly on a cell border are ambiguous for nearest sampling
    on_border = (((2 * uv[:, 0] + 1) * w) % (2 * w0) == 0) | (((2 * uv[:, 1] + 1) * h) % (2 * h0) == 0)
    grid = pixel_to_grid(uv, w0, h0)
    assert grid.dtype == np.float32 and grid.min() > -1 and grid.max() < 1
    got = F.grid_sample(fmap, torch.from_numpy(grid).view(1, 1, -1, 2), mode="nearest", align_corners=False)[0, :, 0]
    np.testing.assert_array_equal(got[0].numpy()[~on_border], exp_row[~on_border])
    np.testing.assert_array_equal(got[1].numpy()[~on_border], exp_col[~on_border])
    # bilinear at every pixel: the continuous cell coordinate (v+0.5)·h/h0 − 0.5, clamped at the borders
    got = F.grid_sample(fmap, torch.from_numpy(grid).view(1, 1, -1, 2), mode="bilinear", align_corners=False,
                        padding_mode="border")[0, :, 0]
    np.testing.assert_allclose(got[0].numpy(), np.clip((uv[:, 1] + 0.5) * h / h0 - 0.5, 0, h - 1), atol=1e-4)
    np.testing.assert_allclose(got[1].numpy(), np.clip((uv[:, 0] + 0.5) * w / w0 - 0.5, 0, w - 1), atol=1e-4)
    # tensors in, tensors out (float), same values
    t = pixel_to_grid(torch.from_numpy(uv), w0, h0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), grid, atol=1e-6)


def test_real_teacher_cache_aligns_with_the_frame(tmp_path):
    """End to end with the offline ViT-S: a frame whose left half is a flat colour and right half
    noise — the cached features of pixels in each half, located with pixel_to_grid, come from
    the matching side of the map."""
    from pretrain3d.teachers.registry import build_teacher

    teacher = build_teacher("dinov2_vits14", input_size=(84, 112))
    root = tmp_path / "scenes"
    d = make_scene(root, "real", ["0", "1"], w=160, h=120, seed=5)
    img = np.asarray(Image.open(d / "frames/color/0.png")).copy()
    img[:, :80] = (200, 40, 40)
    Image.fromarray(img).save(d / "frames/color/0.png")
    out = cache_dir(tmp_path / "features", teacher)
    stats = cache_scenes(teacher, [d], out, batch_size=8, progress=False)
    assert stats["frames"] == 2 and out.name == "dinov2_vits14-last-84x112"
    assert read_cache_meta(out)["weights_sha256"] == teacher.metadata()["weights_sha256"]
    ids, feats = load_scene_features(out, "real", expected_meta=teacher.metadata())
    assert ids == ["0", "1"] and feats.shape == (2, 384, 6, 8)
    f0 = torch.from_numpy(feats[0].astype(np.float32))[None]
    # left-half cells (columns 0..3) are nearly identical to each other; the right half differs
    left = f0[0, :, 1:5, 0:3].reshape(384, -1)
    right = f0[0, :, 1:5, 5:8].reshape(384, -1)
    spread_left = (left - left.mean(1, keepdim=True)).norm(dim=0).mean()
    assert spread_left < (right - left.mean(1, keepdim=True)).norm(dim=0).mean()
    uv = np.array([[10, 60], [150, 60]])  # a pixel in the flat half and one in the noisy half
    s = F.grid_sample(f0, torch.from_numpy(pixel_to_grid(uv, 160, 120)).view(1, 1, 2, 2), mode="nearest",
                      align_corners=False)[0, :, 0].T
    torch.testing.assert_close(s[0], f0[0, :, 60 * 6 // 120, 10 * 8 // 160])
    torch.testing.assert_close(s[1], f0[0, :, 60 * 6 // 120, 150 * 8 // 160])
