"""Each teacher says where its feature cells are centred; checked against the receptive field
(the centroid of |d cell / d input|), and used when pixels sample the cached maps (issue #16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain3d.errors import DataError
from pretrain3d.teachers.cache import cell_geometry, pixel_to_cell, pixel_to_grid
from pretrain3d.teachers.resnet import ResNetTeacher


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grad_map(teacher, i: int, j: int, size) -> torch.Tensor:
    """|d (sum of cell (i, j)'s channels) / d input|, summed over the RGB channels: (H, W)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size, requires_grad=True)
    teacher(x)[0, :, i, j].sum().backward()
    return x.grad.abs().sum(1)[0].double()


def centroid(g: torch.Tensor) -> tuple[float, float]:
    ys, xs = (torch.arange(n, dtype=torch.float64) for n in g.shape)
    s = g.sum()
    return float((g.sum(1) * ys).sum() / s), float((g.sum(0) * xs).sum() / s)


def claimed(teacher, i: int) -> float:
    return teacher.cell_offset + teacher.stride * i


def random_resnet(size) -> ResNetTeacher:
    torch.manual_seed(0)
    t = ResNetTeacher(input_size=size).eval()
    for m in t.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    return t


def test_resnet_layer4_cells_are_centred_at_stride_times_index():
    # The padded ResNet's receptive field reaches far beyond the image, so the centroid of an
    # off-centre cell is pulled towards the image centre by the truncation. An input whose centre
    # is the claimed centre of cell (4, 4) makes the truncation symmetric: 257 = 2 * 128 + 1.
    t = random_resnet((257, 257))
    assert t.cell_offset == 0.0 and claimed(t, 4) == 128
    cy, cx = centroid(grad_map(t, 4, 4, (257, 257)))
    assert abs(cy - 128) < 2 and abs(cx - 128) < 2, (cy, cx)
    patch_convention = 32 * 4 + (32 - 1) / 2  # 143.5: what the cache assumed before
    assert abs(cy - patch_convention) > 10 and abs(cx - patch_convention) > 10
    # the (truncated) 224 x 224 case of the issue: cell (3, 3) nearer 96 than 111.5
    t.input_size = (224, 224)
    cy, cx = centroid(grad_map(t, 3, 3, (224, 224)))
    assert abs(cy - 96) < 5 and abs(cx - 96) < 5 and min(cy, cx) < 111.5 - 10, (cy, cx)


def test_vit_cells_are_centred_in_their_patches():
    from pretrain3d.teachers.registry import build_teacher
    # the first block: deeper blocks mix every patch through attention, so |grad| spreads over the
    # image; the patch's own pixels still carry the peak: centroid of the pixels >= half the maximum
    t = build_teacher("dinov2_vits14", layer="0", input_size=(224, 224)).eval()
    assert t.cell_offset == 6.5
    for c in (3, 8):
        g = grad_map(t, c, c, (224, 224))
        cy, cx = centroid(g * (g >= 0.5 * g.max()))
        assert abs(cy - claimed(t, c)) < 2 and abs(cx - claimed(t, c)) < 2, (c, cy, cx)


@pytest.mark.parametrize("teacher_meta", [
    {"stride": 14, "cell_offset": 6.5, "input_size": [168, 224], "feature_size": [12, 16]},
    {"stride": 32, "cell_offset": 0.0, "input_size": [160, 224], "feature_size": [5, 7]},
])
def test_pixel_at_a_cell_centre_samples_that_cell(teacher_meta):
    geo = cell_geometry(teacher_meta)
    (H, W), (h, w) = geo["input_size"], geo["feature_size"]
    w0, h0 = 2 * W, 2 * H  # a frame twice the input size: input pixel x covers frame pixels 2x, 2x+1
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    fmap = torch.stack([cols, rows])[None]
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # frame pixel whose centre is the input pixel centre cell_offset + stride * k: u + 0.5 = 2 (x + 0.5)
    u = 2 * (geo["cell_offset"] + geo["stride"] * j) + 0.5
    v = 2 * (geo["cell_offset"] + geo["stride"] * i) + 0.5
    uv = np.stack([u, v], -1).reshape(-1, 2)
    grid = torch.from_numpy(pixel_to_grid(uv, w0, h0, geo)).float().view(1, 1, -1, 2)
    s = F.grid_sample(fmap, grid, mode="bilinear", align_corners=False)[0, :, 0].T
    np.testing.assert_allclose(s.numpy(), np.stack([j.ravel(), i.ravel()], -1), atol=1e-4)
    np.testing.assert_array_equal(pixel_to_cell(uv, w0, h0, geo), np.stack([j.ravel(), i.ravel()], -1))


def test_patch_geometry_matches_the_tiling_formula():
    geo = cell_geometry({"stride": 14, "cell_offset": 6.5, "input_size": [168, 224], "feature_size": [12, 16]})
    uv = np.random.default_rng(0).uniform(0, 159, (100, 2))
    np.testing.assert_allclose(pixel_to_grid(uv, 160, 120, geo), pixel_to_grid(uv, 160, 120), atol=1e-12)


def test_teacher_metadata_records_the_cell_offset():
    assert random_resnet((64, 64)).metadata()["cell_offset"] == 0.0


def test_cache_without_cell_geometry_is_a_clear_error(tmp_path):
    meta = {"stride": 14, "input_size": [168, 224], "feature_size": [12, 16]}
    with pytest.raises(DataError, match="cell_offset") as e:
        cell_geometry(meta, tmp_path / "meta.json")
    assert "meta.json" in str(e.value) and "re-run `pretrain3d features`" in str(e.value)
