"""pretrain3d.scatter: the native path against plain-Python references (always), and against torch-scatter
bit for bit (marker ``scatter``: skipped, with the import error as reason, where torch-scatter is absent;
`pip install -e .[scatter]` then `pytest -m scatter`, README "torch-scatter")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain3d import scatter as sc

HAVE_TS, WHY_NOT = sc.torch_scatter_status()
needs_ts = pytest.mark.skipif(not HAVE_TS, reason=WHY_NOT or "torch-scatter present")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(n=400, m=37, c=5, seed=0, device="cpu"):
    """Small integer-valued floats (many ties), targets with some rows left empty."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(-3, 4, (n, c), generator=g).double()
    index = torch.randint(0, m - 4, (n,), generator=g) * (m // (m - 4))  # leaves gaps -> empty rows
    index = index.clamp(max=m - 1)
    return src.to(device), index.to(device), m


def _loop_reference(src, index, m, reduce):
    """Row by row in Python: (values, arg) with ties to the lowest row, empty rows 0 / len(src)."""
    n, c = src.shape
    vals, arg = np.zeros((m, c)), np.full((m, c), n)
    s, ix = src.cpu().numpy(), index.cpu().numpy()
    for j in range(m):
        rows = np.flatnonzero(ix == j)
        if not len(rows):
            continue
        if reduce == "mean":
            vals[j] = s[rows].mean(0)
            continue
        pick = np.argmax(s[rows], 0) if reduce == "max" else np.argmin(s[rows], 0)  # first of ties
        arg[j] = rows[pick]
        vals[j] = s[rows[pick], np.arange(c)]
    return vals, arg


@pytest.mark.parametrize("reduce", ["mean", "max", "min"])
def test_native_matches_a_row_by_row_reference_with_ties_and_empty_rows(reduce):
    src, index, m = _inputs()
    want_v, want_a = _loop_reference(src, index, m, reduce)
    if reduce == "mean":
        got = sc.scatter_mean(src, index, m, backend="native")
        np.testing.assert_allclose(got.numpy(), want_v, rtol=0, atol=1e-12)
    else:
        fn = sc.scatter_max if reduce == "max" else sc.scatter_min
        v, a = fn(src, index, m, backend="native")
        assert np.array_equal(a.numpy(), want_a) and np.array_equal(v.numpy(), want_v)
    assert (np.bincount(index.numpy(), minlength=m) == 0).sum() >= 4  # the empty rows were exercised


def test_native_gradients_mean_divides_by_the_count_and_max_goes_to_the_arg_row_only():
    src, index, m = _inputs()
    w = torch.randn(m, src.shape[1], dtype=src.dtype)
    x = src.clone().requires_grad_(True)
    (sc.scatter_mean(x, index, m, backend="native") * w).sum().backward()
    count = torch.bincount(index, minlength=m).double()
    torch.testing.assert_close(x.grad, w[index] / count[index, None], rtol=0, atol=1e-12)

    x = src.clone().requires_grad_(True)
    v, a = sc.scatter_max(x, index, m, backend="native")
    (v * w).sum().backward()
    want = torch.zeros(len(src) + 1, src.shape[1], dtype=src.dtype).scatter_(0, a, w)[:-1]
    assert torch.equal(x.grad, want)
    assert float((x.grad != 0).sum()) == float((a < len(src)).sum())  # one row per (target, column): ties not split


def test_scatter_first_is_the_lowest_row_per_target_and_len_where_none():
    index = torch.tensor([3, 1, 3, 0, 1, 3])
    assert sc.scatter_first(index, 5, backend="native").tolist() == [3, 1, 6, 0, 6]
    src = torch.arange(6)
    assert torch.equal(sc.scatter_min(src, index, 5, backend="native")[1], sc.scatter_first(index, 5, backend="native"))


def test_backend_choice_env_var_auto_and_errors(monkeypatch):
    monkeypatch.setattr(sc, "_load_torch_scatter", lambda: (None, "torch-scatter cannot be imported (test)"))
    monkeypatch.delenv(sc.ENV_VAR, raising=False)
    assert sc.resolve_backend("mean") == "native"  # auto without torch-scatter
    monkeypatch.setenv(sc.ENV_VAR, "torch_scatter")
    with pytest.raises(ImportError, match=r"cannot be imported \(test\).*\[scatter\]"):
        sc.scatter_mean(torch.ones(2, 1), torch.zeros(2, dtype=torch.long), 1)
    monkeypatch.setenv(sc.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="PRETRAIN3D_SCATTER"):
        sc.resolve_backend("max")
    with pytest.raises(ValueError, match="unknown scatter op"):
        sc.resolve_backend("median", "native")
    # with torch-scatter importable, auto takes the measured default per op and the env var overrides it
    monkeypatch.setattr(sc, "_load_torch_scatter", lambda: (object(), ""))
    monkeypatch.setattr(sc, "AUTO", {**sc.AUTO, "mean": "torch_scatter"})
    monkeypatch.setenv(sc.ENV_VAR, "auto")
    assert sc.resolve_backend("mean") == "torch_scatter" and sc.resolve_backend("max") == sc.AUTO["max"]
    monkeypatch.setenv(sc.ENV_VAR, "native")
    assert sc.resolve_backend("mean") == "native" and sc.resolve_backend("mean", "torch_scatter") == "torch_scatter"


def test_index_must_be_one_row_per_source_row():
    with pytest.raises(ValueError, match=r"must be \(N,\)"):
        sc.scatter_max(torch.ones(4, 2), torch.zeros(3, dtype=torch.long), 2, backend="native")


def test_voxel_candidates_same_with_a_span_too_large_for_one_int64_per_cell():
    from pretrain3d.retrieval.keypoints import voxel_candidates

    rng = np.random.default_rng(0)
    xyz = rng.integers(0, 4, (300, 3)).astype(np.float64)
    xyz[0] = [-3e6, -3e6, -3e6]  # spans 6e6 cells per axis: > 2**62 cells in all
    want = np.sort(np.unique(np.floor(xyz).astype(np.int64), axis=0, return_index=True)[1])
    assert np.array_equal(voxel_candidates(xyz, 1.0), want)
    assert np.array_equal(voxel_candidates(xyz[1:], 1.0), np.sort(np.unique(xyz[1:], axis=0, return_index=True)[1]))


# ------------------------------------------------------------------- both paths (torch-scatter present)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduce", ["mean", "max", "min"])
@pytest.mark.scatter
@needs_ts
def test_both_backends_same_values_args_and_gradients(reduce, dtype, device):
    src, index, m = _inputs(n=3000, m=211, c=7, seed=1, device=device)
    src = (src + 0.25 * torch.randn(src.shape, dtype=torch.float64, device=device).round()).to(dtype)
    w = torch.randn(m, src.shape[1], dtype=dtype, device=device)
    got = {}
    for b in sc.BACKENDS:
        x = src.clone().requires_grad_(True)
        if reduce == "mean":
            out, arg = sc.scatter_mean(x, index, m, backend=b), None
        else:
            out, arg = (sc.scatter_max if reduce == "max" else sc.scatter_min)(x, index, m, backend=b)
        (out * w).sum().backward()
        got[b] = (out.detach(), arg, x.grad)
    (vn, an, gn), (vt, at, gt) = got["native"], got["torch_scatter"]
    if device == "cpu" or reduce != "mean":
        assert torch.equal(vn, vt)
    else:  # CUDA sums with atomics: the order, hence the last bits, vary
        torch.testing.assert_close(vn, vt)
    if arg is not None:
        if device == "cpu":
            assert torch.equal(an, at) and torch.equal(gn, gt)
        else:  # torch-scatter's CUDA kernel lets any tied row win: the arg row must hold the value
            pad = torch.cat([src, src.new_zeros(1, src.shape[1])])
            assert torch.equal(pad.gather(0, at), vt) and torch.equal(an == len(src), at == len(src))
    elif device == "cpu":
        assert torch.equal(gn, gt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.scatter
@needs_ts
def test_both_backends_same_first_rows_and_feature_volume(device, monkeypatch):
    from pretrain3d.models.feature_volume import scatter_mean_volume

    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, 500, (20000,), generator=g).to(device)
    assert torch.equal(sc.scatter_first(index, 520, backend="native"), sc.scatter_first(index, 520, backend="torch_scatter"))
    feat = torch.randn(20000, 8, generator=g).to(device)
    coord = torch.rand(20000, 3, generator=g).to(device)
    batch = torch.zeros(20000, dtype=torch.long, device=device)
    lo, hi = torch.zeros(1, 3, device=device), torch.ones(1, 3, device=device)
    vols = []
    for b in sc.BACKENDS:
        monkeypatch.setenv(sc.ENV_VAR, b)
        vols.append(scatter_mean_volume(feat, coord, batch, lo, hi, (16, 16, 8)))
    if device == "cpu":
        assert torch.equal(*vols)
    else:
        torch.testing.assert_close(*vols)
