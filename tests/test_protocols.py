import numpy as np
import torch

from pretrain3d.config import ModelConfig
from pretrain3d.data.protocols import limited_annotations, limited_reconstructions
from pretrain3d.models.segmentor import build_segmentor


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
