"""The pure-PyTorch sparse convolution (models.sparse_torch) against spconv 2.3 on the CPU (< 30 s).

scripts/bench_sparse_conv.py times it against spconv; these tests check that both compute the same
thing: outputs, output coordinates and their row order, gradients, parameter layout and init.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spconv = pytest.importorskip("spconv.pytorch")

from pretrain3d.models import sparse_torch as st  # noqa: E402
from pretrain3d.models import spunet  # noqa: E402
from pretrain3d.models.batching import offset2batch  # noqa: E402
from pretrain3d.models.spconv_compat import ensure_spconv_cpu_backward  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = ("pairs", "pairs-keep", "offset", "gemm")


def _bench_backbone():
    spec = importlib.util.spec_from_file_location("bench_backbone", REPO / "scripts" / "bench_backbone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    ensure_spconv_cpu_backward()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rooms():
    """Two room-like samples (2 x 2500 voxels): model input dict, indices [b, x, y, z], spatial shape."""
    data = _bench_backbone().make_batch(2500, 2, seed=3)
    b = offset2batch(data["offset"])
    idx = torch.cat([b[:, None], data["grid_coord"].long()], 1).int()
    shape = (data["grid_coord"].max(0).values + spunet.SPATIAL_MARGIN).tolist()
    return data, idx, shape


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach(), ref.detach()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def pair(cls_name: str, *args, **kw):
    """The same layer in both backends, initialised from the same random draws."""
    torch.manual_seed(7)
    a = getattr(spconv, cls_name)(*args, **kw)
    torch.manual_seed(7)
    t = getattr(st, cls_name)(*args, **kw)
    return a, t


LAYERS = [
    ("SubMConv3d", (16, 16), dict(kernel_size=3, padding=1, bias=False, indice_key="k")),
    ("SubMConv3d", (32, 24), dict(kernel_size=3, padding=1, bias=False, indice_key="k")),
    ("SubMConv3d", (6, 16), dict(kernel_size=5, padding=1, bias=False, indice_key="stem")),
    ("SubMConv3d", (48, 20), dict(kernel_size=1, bias=True)),
    ("SparseConv3d", (16, 32), dict(kernel_size=2, stride=2, bias=False, indice_key="d")),
    ("SparseConv3d", (8, 12), dict(kernel_size=3, stride=2, padding=1, bias=True, indice_key="d")),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,chans,kw", LAYERS, ids=lambda v: str(v))
def test_layer_matches_spconv(rooms, name, chans, kw, mode):
    _, idx, shape = rooms
    a, t = pair(name, *chans, **kw)
    t.mode = mode
    assert t.weight.shape == a.weight.shape and torch.equal(t.weight, a.weight)
    assert (t.bias is None) == (a.bias is None) and (a.bias is None or torch.equal(t.bias, a.bias))
    g = torch.Generator().manual_seed(1)
    f = torch.randn(idx.shape[0], chans[0], generator=g)
    fa, ft = f.clone().requires_grad_(), f.clone().requires_grad_()
    ya = a(spconv.SparseConvTensor(fa, idx, shape, 2))
    yt = t(st.SparseConvTensor(ft, idx, shape, 2))
    assert torch.equal(yt.indices, ya.indices)          # same coordinates in the same row order
    assert yt.spatial_shape == list(ya.spatial_shape) and yt.batch_size == ya.batch_size
    assert rel(yt.features, ya.features) < 1e-5
    up = torch.randn(ya.features.shape, generator=g)
    (ya.features * up).sum().backward()
    (yt.features * up).sum().backward()
    assert rel(ft.grad, fa.grad) < 1e-4
    assert rel(t.weight.grad, a.weight.grad) < 1e-4
    if a.bias is not None:
        assert rel(t.bias.grad, a.bias.grad) < 1e-4
    if name == "SparseConv3d":   # and the transposed conv back through the same map
        ia, it = pair("SparseInverseConv3d", chans[1], 5, kernel_size=kw["kernel_size"], indice_key="d", bias=False)
        it.mode = mode
        h = torch.randn(ya.features.shape, generator=g)
        ha, ht = h.clone().requires_grad_(), h.clone().requires_grad_()
        za, zt = ia(ya.replace_feature(ha)), it(yt.replace_feature(ht))
        assert torch.equal(zt.indices, idx) and torch.equal(za.indices, idx) and zt.spatial_shape == list(shape)
        assert rel(zt.features, za.features) < 1e-5
        q = torch.randn(za.features.shape, generator=g)
        (za.features * q).sum().backward()
        (zt.features * q).sum().backward()
        assert rel(ht.grad, ha.grad) < 1e-4 and rel(it.weight.grad, ia.weight.grad) < 1e-4


def build(backend: str, **kw):
    """SpUNet with spconv, or with sparse_torch swapped in for the module it builds from."""
    torch.manual_seed(0)
    if backend == "spconv":
        return spunet.SpUNet(6, 20, **spunet.SMALL_CONFIG, **kw)
    orig = spunet._spconv
    spunet._spconv = lambda: st
    try:
        return spunet.SpUNet(6, 20, **spunet.SMALL_CONFIG, **kw)
    finally:
        spunet._spconv = orig


def run(model, data, backend, monkeypatch):
    if backend != "spconv":
        monkeypatch.setattr(spunet, "_spconv", lambda: st)
    feat = data["feat"].clone().requires_grad_()
    out = model({**data, "feat": feat})
    out.square().mean().backward()
    monkeypatch.undo()
    return out.detach(), feat.grad, {k: p.grad.clone() for k, p in model.named_parameters()}


def test_spunet_matches_spconv(rooms, monkeypatch):
    data, _, _ = rooms
    ma, mt = build("spconv").train(), build("torch").train()
    sa, stt = ma.state_dict(), mt.state_dict()
    assert list(sa) == list(stt)
    assert all(sa[k].shape == stt[k].shape and torch.equal(sa[k], stt[k]) for k in sa)  # same init draws
    oa, ga, pa = run(ma, data, "spconv", monkeypatch)
    ot, gt, pt = run(mt, data, "torch", monkeypatch)
    assert rel(ot, oa) < 1e-5
    assert rel(gt, ga) < 1e-4
    for k in pa:
        assert rel(pt[k], pa[k]) < 1e-4, k


def test_state_dict_round_trip(rooms, monkeypatch):
    data, _, _ = rooms
    ma, mt = build("spconv").eval(), build("torch").eval()
    with torch.no_grad():   # make the two differ, then move each one's weights into the other
        for p in mt.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd_t = {k: v.clone() for k, v in mt.state_dict().items()}
    ma.load_state_dict(sd_t)
    assert all(torch.equal(ma.state_dict()[k], v) for k, v in sd_t.items())
    with torch.no_grad():
        oa = ma(data)
        monkeypatch.setattr(spunet, "_spconv", lambda: st)
        ot = mt(data)
        monkeypatch.undo()
    assert rel(ot, oa) < 1e-5
    mt2 = build("torch")
    mt2.load_state_dict(ma.state_dict())
    assert all(torch.equal(mt2.state_dict()[k], v) for k, v in sd_t.items())


def test_deterministic(rooms, monkeypatch):
    data, _, _ = rooms
    r1 = run(build("torch").train(), data, "torch", monkeypatch)
    r2 = run(build("torch").train(), data, "torch", monkeypatch)
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    assert all(torch.equal(r1[2][k], r2[2][k]) for k in r1[2])


def test_sorted_key_lookup_equals_dense_table(rooms, monkeypatch):
    _, idx, shape = rooms
    dense = st.subm_map(idx, shape, 3).pair_list()
    monkeypatch.setattr(st, "DENSE_TABLE_CELLS_PER_VOXEL", 0)
    monkeypatch.setattr(st, "DENSE_TABLE_MIN_CELLS", 0)
    sparse = st.subm_map(idx, shape, 3).pair_list()
    assert sparse.starts == dense.starts
    assert torch.equal(sparse.in_rows, dense.in_rows) and torch.equal(sparse.out_rows, dense.out_rows)


def test_batches_do_not_mix():
    """The same coordinates in two samples: no pairs across samples, outputs per sample as if alone."""
    coords = torch.tensor([[3, 3, 3], [3, 3, 4], [4, 3, 3], [7, 7, 7]], dtype=torch.int32)
    idx = torch.cat([torch.cat([torch.full((4, 1), b, dtype=torch.int32), coords], 1) for b in (0, 1)])
    f = torch.randn(8, 4)
    a, t = pair("SubMConv3d", 4, 6, kernel_size=3, bias=False)
    ya = a(spconv.SparseConvTensor(f, idx, [16, 16, 16], 2)).features
    yt = t(st.SparseConvTensor(f, idx, [16, 16, 16], 2)).features
    y0 = t(st.SparseConvTensor(f[:4], idx[:4], [16, 16, 16], 1)).features
    assert rel(yt, ya) < 1e-5 and torch.allclose(yt[:4], y0, atol=1e-6)
    d, dt = pair("SparseConv3d", 4, 5, kernel_size=2, stride=2, bias=False)
    za, zt = d(spconv.SparseConvTensor(f, idx, [16, 16, 16], 2)), dt(st.SparseConvTensor(f, idx, [16, 16, 16], 2))
    assert torch.equal(zt.indices, za.indices) and rel(zt.features, za.features) < 1e-5
    assert zt.indices.shape[0] == 8 and int((zt.indices[:, 0] == 1).sum()) == 4   # 4 cells per sample


def test_single_voxel_and_empty():
    idx = torch.tensor([[0, 5, 6, 7]], dtype=torch.int32)
    f = torch.randn(1, 3, requires_grad=True)
    for name, kw in (("SubMConv3d", dict(kernel_size=3)), ("SubMConv3d", dict(kernel_size=5)),
                     ("SparseConv3d", dict(kernel_size=2, stride=2))):
        a, t = pair(name, 3, 4, bias=False, indice_key="s", **kw)
        ya = a(spconv.SparseConvTensor(f, idx, [10, 10, 10], 1))
        yt = t(st.SparseConvTensor(f, idx, [10, 10, 10], 1))
        assert torch.equal(yt.indices, ya.indices) and rel(yt.features, ya.features) < 1e-5
    inv = st.SparseInverseConv3d(4, 3, kernel_size=2, indice_key="s", bias=False)
    assert torch.equal(inv(yt).indices, idx)
    # no voxels at all: empty outputs of the right width, and a backward that reaches the weights
    e = st.SparseConvTensor(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 4, dtype=torch.int32),
                            [10, 10, 10], 1)
    for m in (st.SubMConv3d(3, 4, 3, bias=False), st.SparseConv3d(3, 4, 2, 2, bias=False, indice_key="e")):
        y = m(e)
        assert y.features.shape == (0, 4)
        y.features.sum().backward()
        assert m.weight.grad is not None and not m.weight.grad.any()


def test_spunet_stem_on_cpu_is_spconvs_layer_computed_by_sparse_torch(rooms):
    """The model's k=5 stem (spunet._stem_conv_class): a spconv SubMConv3d (its state dict, its CUDA path)
    whose CPU forward is sparse_torch's; output and weight gradient equal plain spconv's."""
    data, idx, shape = rooms
    torch.manual_seed(7)
    ref = spconv.SubMConv3d(6, 16, kernel_size=5, padding=1, bias=False, indice_key="stem")
    stem = spunet._stem_conv_class()(6, 16, kernel_size=5, padding=1, bias=False, indice_key="stem")
    stem.load_state_dict(ref.state_dict())
    assert isinstance(stem, spconv.SubMConv3d) and list(stem.state_dict()) == list(ref.state_dict())
    feat = data["feat"]
    outs = []
    for layer in (ref, stem):
        y = layer(spconv.SparseConvTensor(feat, idx, shape, 2))
        y.features.pow(2).sum().backward()
        outs.append((y.features, layer.weight.grad))
    assert rel(outs[1][0], outs[0][0]) < 1e-5 and rel(outs[1][1], outs[0][1]) < 1e-4
    model = spunet.SpUNet(6, 20, **spunet.SMALL_CONFIG)
    assert type(model.stem.conv) is spunet._stem_conv_class()


def test_unsupported_arguments_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match=r"odd kernel size .*\[2, 2, 2\]"):
        st.subm_map(torch.zeros(1, 4, dtype=torch.int32), [4, 4, 4], 2)
    with pytest.raises(ValueError, match="groups=1 only \\(got 2\\)"):
        st.SubMConv3d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="record_voxel_count"):
        st.SparseConv3d(4, 4, 2, stride=2, record_voxel_count=True)
