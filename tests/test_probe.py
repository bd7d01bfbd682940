"""Linear probe: the frozen features' scale must not decide the result (issue #16)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("spconv.pytorch")

from pretrain3d.config import ModelConfig, ProtocolsConfig  # noqa: E402
from pretrain3d.methods.linear_probe import (  # noqa: E402
    backbone_features, feature_standardization, fold_standardization, recompute_bn_statistics, train_probe)
from pretrain3d.models.segmentor import build_segmentor  # noqa: E402

TINY = ModelConfig(stem_channels=8, channels=[8, 16, 16, 16, 16, 16, 16, 16], layers=[1] * 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scenes(n: int, seed: int) -> list[dict]:
    """Slabs of voxels whose colour is red on one side and blue on the other; label = colour."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        xs, ys = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten(), torch.zeros(576, dtype=torch.long)], 1)
        grid = torch.unique(grid, dim=0)
        cut = int(torch.randint(6, 18, (1,), generator=g))
        label = (grid[:, 0] >= cut).long()
        colour = torch.stack([1.0 - label, 0.2 + 0 * label, label.float()], 1) + 0.05 * torch.randn(len(grid), 3,
                                                                                                 generator=g)
        normal = torch.tensor([0.0, 0.0, 1.0]).expand(len(grid), 3)
        out.append({"grid_coord": grid, "feat": torch.cat([colour, normal], 1).float(), "segment": label})
    return out


def accuracy(model, samples) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for s in samples:
            logits = model({"grid_coord": s["grid_coord"], "feat": s["feat"], "offset": torch.tensor([len(s["feat"])])})
            correct += int((logits.argmax(1) == s["segment"]).sum())
            total += len(s["segment"])
    return correct / total


def probe(features: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_segmentor(TINY, 2)  # a random ("scratch") backbone with initial BN statistics
    model.freeze_backbone()
    train = scenes(4, seed=1)
    train_probe(model.backbone, model.head, train, features, epochs=20, lr=0.01, weight_decay=0.01, seed=seed,
                device=torch.device("cpu"))
    return model, accuracy(model, scenes(2, seed=2))


def test_scratch_features_vanish_without_bn_statistics():
    # The cause: eval-mode BN with initial statistics and trunc-normal(0.02) weights.
    torch.manual_seed(0)
    model = build_segmentor(TINY, 2)
    feats, _ = backbone_features(model.backbone, scenes(2, seed=1), torch.device("cpu"))
    assert float(feats.std(dim=0).mean()) < 0.05


def test_default_probe_learns_on_a_random_backbone():
    # Fails with the old probe (raw features): a colour-separable task, two balanced classes.
    assert ProtocolsConfig().probe_features == "standardize"
    _, acc_std = probe("standardize")
    _, acc_raw = probe("raw")
    assert acc_std > 0.9
    assert acc_raw < 0.75  # the raw scratch features: the head cannot scale them up in time


def test_recomputed_bn_statistics_restore_the_feature_scale():
    torch.manual_seed(0)
    model = build_segmentor(TINY, 2)
    model.freeze_backbone()
    before = model.backbone.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    n = recompute_bn_statistics(model.backbone, scenes(2, seed=1), torch.device("cpu"))
    assert n > 0 and not model.backbone.training
    feats, _ = backbone_features(model.backbone, scenes(2, seed=1), torch.device("cpu"))
    assert float(feats.std(dim=0).mean()) > 0.1
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    # the momentum of every BN layer is restored
    assert {m.momentum for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm1d)} == {TINY.bn_momentum}


def test_folded_head_equals_head_on_standardised_features():
    torch.manual_seed(0)
    feats = torch.randn(500, 7) * torch.tensor([1e-3, 1, 10, 0.1, 5, 1e-2, 2]) + torch.arange(7.0)
    mean, std = feature_standardization(feats)
    z = (feats - mean) / std
    assert torch.allclose(z.mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(7), atol=1e-4)
    lin = torch.nn.Linear(7, 3)
    expected = lin(z)
    fold_standardization(lin, mean, std)
    assert torch.allclose(lin(feats), expected, atol=1e-4)


def test_dead_channel_is_not_amplified():
    feats = torch.cat([torch.randn(100, 2), torch.full((100, 1), 3.0)], 1)
    mean, std = feature_standardization(feats)
    assert torch.allclose((feats - mean)[:, 2] / std[2], torch.zeros(100))


def test_unknown_probe_features_is_an_error():
    model = build_segmentor(TINY, 2)
    with pytest.raises(ValueError, match="probe features"):
        train_probe(model.backbone, model.head, scenes(1, 0), "whiten", 1, 0.01, 0.0, 0, torch.device("cpu"))
