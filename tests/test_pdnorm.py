"""PDNorm (SpUNet-v1m3): per-dataset BatchNorm and prompt modulation, folding to a plain SpUNet."""

import pytest
import torch

from pretrain3d.models.pdnorm import PDNormSpec, fold_condition
from pretrain3d.models.spunet import SMALL_CONFIG, SpUNet

CONDITIONS = ("ScanNet", "S3DIS", "Structured3D")


def _batch(condition, n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    gc = torch.unique(torch.randint(0, 30, (n, 3), generator=g), dim=0)
    return {"grid_coord": gc, "feat": torch.randn(len(gc), 6, generator=g), "offset": torch.tensor([len(gc)]),
            "condition": condition}


def _trained(spec):
    torch.manual_seed(0)
    m = SpUNet(in_channels=6, num_classes=0, norm=spec, **SMALL_CONFIG)
    m.train()
    for i, c in enumerate(spec.conditions):  # distinct statistics per dataset
        b = _batch(c, seed=i)
        b["feat"] = b["feat"] * (1 + i) + i
        m(b)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm1d) and bn.affine:
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_()
    return m.eval()


@pytest.mark.parametrize("decouple,adaptive,affine", [(True, True, True), (True, False, True), (False, True, True),
                                                      (True, True, False)])
def test_fold_condition_gives_the_same_outputs_as_the_pdnorm_backbone(decouple, adaptive, affine):
    spec = PDNormSpec(CONDITIONS, decouple=decouple, adaptive=adaptive, affine=affine, context_channels=16)
    m = _trained(spec)
    plain = SpUNet(in_channels=6, num_classes=0, **SMALL_CONFIG)
    for cond in CONDITIONS:
        plain.load_state_dict(fold_condition(m, cond), strict=True)
        plain.eval()
        b = _batch(cond, seed=7)
        with torch.no_grad():
            y = m(b)
            y_plain = plain({k: v for k, v in b.items() if k != "condition"})
        assert torch.allclose(y, y_plain, atol=1e-5), (cond, (y - y_plain).abs().max())


def test_the_condition_changes_the_output_and_bad_conditions_fail():
    m = _trained(PDNormSpec(CONDITIONS, context_channels=16))
    with torch.no_grad():
        a, b = m(_batch("ScanNet")), m(_batch("S3DIS"))
    assert (a - b).abs().max() > 1e-2
    with pytest.raises(ValueError, match="unknown dataset condition 'Matterport'"):
        m(_batch("Matterport"))
    with pytest.raises(ValueError, match="one dataset"):
        m(_batch(["ScanNet", "S3DIS"]))
    with pytest.raises(ValueError, match="needs batch\\['condition'\\]"):
        m({k: v for k, v in _batch("ScanNet").items() if k != "condition"})


def test_plain_spunet_is_unchanged_by_the_norm_option():
    torch.manual_seed(3)
    a = SpUNet(in_channels=6, num_classes=0, **SMALL_CONFIG)
    torch.manual_seed(3)
    b = SpUNet(in_channels=6, num_classes=0, norm=None, **SMALL_CONFIG)
    assert a.prompt is None and list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not any(".bns." in k or "modulation" in k for k in a.state_dict())
