import numpy as np
import pytest
import torch

from pretrain3d.config import ModelConfig, Params, config_hash
from pretrain3d.data.protocols import limited_annotations, limited_reconstructions
from pretrain3d.models.segmentor import build_segmentor
from pretrain3d.errors import DataError
from pretrain3d.stages.finetune import run_fingerprint


def test_limited_annotations_keeps_n_labelled_points_fixed_per_scene():
    seg = np.random.default_rng(0).integers(-1, 20, 5000)
    a = limited_annotations(seg, 20, "scene_a")
    assert (a >= 0).sum() == 20
    kept = a >= 0
    np.testing.assert_array_equal(a[kept], seg[kept])  # labels unchanged where kept
    np.testing.assert_array_equal(a, limited_annotations(seg, 20, "scene_a"))  # fixed selection
    assert not np.array_equal(kept, limited_annotations(seg, 20, "scene_b") >= 0)
    few = np.full(100, -1)
    few[:5] = 3
    assert (limited_annotations(few, 20, "s") >= 0).sum() == 5  # fewer labelled than asked: keep all


def test_limited_reconstructions_is_a_fixed_subset():
    ids = [f"s{i:02d}" for i in range(16)]
    sub = limited_reconstructions(ids, 0.25)
    assert len(sub) == 4 and set(sub) <= set(ids)
    assert sub == limited_reconstructions(list(reversed(ids)), 0.25)
    assert len(limited_reconstructions(ids[:2], 0.1)) == 1


def test_frozen_backbone_gets_no_gradient_and_keeps_bn_stats():
    torch.manual_seed(0)
    cfg = ModelConfig(stem_channels=8, channels=[8, 16, 16, 16, 16, 16, 16, 16], layers=[1] * 8)
    model = build_segmentor(cfg, 5)
    model.freeze_backbone()
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d))
    before = bn.running_mean.clone()
    g = torch.randint(0, 20, (400, 3))
    g = torch.unique(g, dim=0)
    batch = {"grid_coord": g, "feat": torch.randn(len(g), 6), "offset": torch.tensor([len(g)])}
    out = model(batch)
    out.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert torch.equal(before, bn.running_mean) and not model.backbone.training


def test_benchmark_files_enter_the_fingerprint_by_content(tmp_path):
    """A changed la/lr file gives a new fingerprint (an old checkpoint is never resumed), an unchanged one
    the same; full/probe and runs without a file keep the fingerprint they always had."""
    la, lr = tmp_path / "points20", tmp_path / "1.txt"
    la.write_bytes(b"labelled points, version 1")
    lr.write_text("scene0000_00\n")
    data = {"processed_root": str(tmp_path / "processed")}
    plain = Params.model_validate({"data": data})
    cfg = Params.model_validate({"data": {**data, "scannet": {"la_file": str(la), "lr_file": str(lr)}}})

    def fp(c, protocol):
        return run_fingerprint(c, "scratch", 0, None, protocol)

    before = {p: fp(cfg, p) for p in ("la", "lr")}
    assert {p: fp(cfg, p) for p in ("la", "lr")} == before  # unchanged files: same runs
    assert before["la"] != fp(plain, "la") and before["lr"] != fp(plain, "lr")
    la.write_bytes(b"labelled points, version 2")  # same path, new content
    assert fp(cfg, "la") != before["la"] and fp(cfg, "lr") == before["lr"]
    (tmp_path / "copy").write_bytes(la.read_bytes())  # same content elsewhere: the same run
    moved = Params.model_validate({"data": {**data, "scannet": {"la_file": str(tmp_path / "copy")}}})
    assert fp(moved, "la") == fp(cfg, "la")
    lr.write_text("scene0001_00\n")
    assert fp(cfg, "lr") != before["lr"]
    for p in ("full", "probe"):
        assert fp(cfg, p) == fp(plain, p)
    # no benchmark file: the fingerprint is the one earlier versions wrote, so their checkpoints resume
    old = {"model": plain.model.model_dump(mode="json"), "train": plain.train.model_dump(mode="json"),
           "data": "unknown", "method": "scratch", "seed": 0, "init": None, "protocol": "la",
           "protocols": plain.protocols.model_dump(mode="json")}
    assert fp(plain, "la") == config_hash(old)
    la.unlink()
    with pytest.raises(DataError, match="la_file"):
        fp(cfg, "la")
