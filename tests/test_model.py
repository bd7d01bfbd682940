"""SpUNet backbone, heads, offset batching and the spconv CPU work-arounds (CPU only, < 60 s)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

spconv = pytest.importorskip("spconv.pytorch")

from pretrain3d.models.batching import batch2offset, offset2batch  # noqa: E402
from pretrain3d.models.heads import LinearHead, ProjectionHead  # noqa: E402
from pretrain3d.models.spconv_compat import ensure_spconv_cpu_backward  # noqa: E402
from pretrain3d.models.spunet import SMALL_CONFIG, SpUNet  # noqa: E402

FULL_PARAMS = 39_157_844  # SpUNet-v1m1, 6 inputs, 20 classes (Pointcept's analytic count: 39.16 M)
REPO = Path(__file__).resolve().parents[1]


def unique_voxels(n: int, side: int, seed: int, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(side ** 3, generator=g)[:n]
    return torch.stack([flat // side ** 2, (flat // side) % side, flat % side], 1) + shift


def make_sample(n: int, seed: int, side: int = 32, in_ch: int = 6, shift: int = 0):
    g = torch.Generator().manual_seed(seed + 1000)
    return unique_voxels(n, side, seed, shift), torch.randn(n, in_ch, generator=g)


def batch_of(*samples):
    coords, feats = zip(*samples)
    offset = torch.cumsum(torch.tensor([len(c) for c in coords]), 0)
    return {"grid_coord": torch.cat(coords), "feat": torch.cat(feats), "offset": offset}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # One intra-op thread: on the shared 2-core box, OpenMP regions with 2 threads under load are
    # 5-10x slower than one thread. The race test below sets 2 threads on purpose.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SpUNet(in_channels=6, num_classes=20, **SMALL_CONFIG)


# --------------------------------------------------------------------------- architecture


def test_full_size_parameter_count():
    model = SpUNet(in_channels=6, num_classes=20)
    n = sum(p.numel() for p in model.parameters())
    print(f"\nSpUNet full size (6 in, 20 classes): {n:,} parameters = {n / 1e6:.3f} M")
    assert n == FULL_PARAMS
    assert abs(n - 39.2e6) < 0.05e6
    assert model.out_channels == 96
    # SpUNet-v1m1 topology: k=5 stem, decoder stages narrowing 256+128->256 ... 96+32->96
    assert tuple(model.stem.conv.weight.shape) == (32, 5, 5, 5, 6)
    first_dec = [model.dec[s].blocks[0] for s in range(4)]
    assert [(b.conv1.in_channels, b.conv1.out_channels) for b in first_dec] == [
        (96 + 32, 96), (96 + 32, 96), (128 + 64, 128), (256 + 128, 256)]
    assert [len(model.enc[s].blocks) for s in range(4)] == [2, 3, 4, 6]
    bn = model.stem.bn
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    assert model.head.bias is not None and model.head.out_channels == 20
    del model


def test_small_forward_backward_cpu(small_model):
    model = small_model.train()
    data = batch_of(make_sample(3000, 1), make_sample(2900, 2))
    out = model(data)
    assert out.shape == (5900, 20)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    nonzero = sum(bool(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero == len(list(model.parameters()))
    model.zero_grad(set_to_none=True)


def test_outputs_independent_of_batch_mates(small_model):
    model = small_model
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for seed in range(3):
            model(batch_of(make_sample(2000, 10 + seed), make_sample(2000, 20 + seed)))
    model.eval()
    a = make_sample(3000, 3)
    b = make_sample(3500, 4, side=40)  # overlapping coordinates, larger extent
    with torch.no_grad():
        out_a = model(batch_of(a))
        out_b = model(batch_of(b))
        out_ab = model(batch_of(a, b))
        out_ba = model(batch_of(b, a))
    torch.testing.assert_close(out_ab[:3000], out_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ab[3000:], out_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ba[:3500], out_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ba[3500:], out_a, atol=1e-5, rtol=1e-5)
    # and the result does not depend on where the sample sits in the grid (translation)
    shifted = (a[0] + torch.tensor([4, 6, 2]), a[1])
    with torch.no_grad():
        torch.testing.assert_close(model(batch_of(shifted)), out_a, atol=1e-5, rtol=1e-5)


def test_headless_returns_features():
    model = SpUNet(in_channels=3, num_classes=0, **SMALL_CONFIG).eval()
    assert isinstance(model.head, torch.nn.Identity)
    data = batch_of(make_sample(1500, 5, in_ch=3), make_sample(1200, 6, in_ch=3))
    with torch.no_grad():
        feat = model(data)
    assert feat.shape == (2700, model.out_channels) == (2700, SMALL_CONFIG["channels"][-1])
    logits = LinearHead(model.out_channels, 13)(feat)
    assert logits.shape == (2700, 13)


def test_input_validation(small_model):
    coord, feat = make_sample(100, 7)
    with pytest.raises(ValueError, match="offset"):
        small_model({"grid_coord": coord, "feat": feat, "offset": torch.tensor([50, 90])})
    with pytest.raises(ValueError, match=">= 0"):
        small_model({"grid_coord": coord - 5, "feat": feat, "offset": torch.tensor([100])})
    with pytest.raises(ValueError, match="integer"):
        small_model({"grid_coord": coord.float(), "feat": feat, "offset": torch.tensor([100])})


# --------------------------------------------------------------------------- spconv CPU fixes


def _dense_reference(conv, idx, feat, size, stride=1, padding=1):
    dense = torch.zeros(1, feat.shape[1], size, size, size, dtype=feat.dtype)
    dense[0, :, idx[:, 0], idx[:, 1], idx[:, 2]] = feat.t()
    weight = conv.weight.permute(0, 4, 1, 2, 3)  # spconv KRSC (out, kx, ky, kz, in) -> torch
    return torch.nn.functional.conv3d(dense, weight, stride=stride, padding=padding)[0]


def test_spconv_cpu_convs_match_dense_with_threads():
    """spconv's CPU scatter-add races with >1 OpenMP thread; the patch makes results exact."""
    state = ensure_spconv_cpu_backward()
    assert state == ensure_spconv_cpu_backward()  # idempotent
    assert state["scatter_add_cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs more than one OpenMP thread
    try:
        size = 30
        idx = unique_voxels(4500, size - 2, seed=11)
        ind = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), idx], 1).int()
        subm = spconv.SubMConv3d(8, 16, 3, padding=1, bias=False)
        down = spconv.SparseConv3d(8, 16, 2, stride=2, bias=False)
        for trial in range(3):
            feat = torch.randn(len(idx), 8)
            x = spconv.SparseConvTensor(feat, ind, [size] * 3, 1)
            ref = _dense_reference(subm, idx, feat, size)[:, idx[:, 0], idx[:, 1], idx[:, 2]].t()
            torch.testing.assert_close(subm(x).features, ref, atol=1e-5, rtol=1e-5)
            y = down(x)
            oi = y.indices.long()
            ref = _dense_reference(down, idx, feat, size, stride=2, padding=0)
            torch.testing.assert_close(y.features, ref[:, oi[:, 1], oi[:, 2], oi[:, 3]].t(),
                                       atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_spconv_cpu_backward_gradcheck():
    ensure_spconv_cpu_backward()
    idx = unique_voxels(30, 5, seed=3)
    ind = torch.cat([torch.zeros(len(idx), 1, dtype=torch.long), idx], 1).int()
    subm = spconv.SubMConv3d(3, 4, 3, padding=1, bias=False).double()
    down = spconv.SparseConv3d(3, 4, 2, stride=2, bias=False, indice_key="d").double()
    up = spconv.SparseInverseConv3d(4, 3, 2, bias=False, indice_key="d").double()
    feat = torch.randn(len(idx), 3, dtype=torch.float64, requires_grad=True)

    def fn(f):
        x = spconv.SparseConvTensor(f, ind, [8, 8, 8], 1)
        return up(down(x)).features * subm(x).features[:, :3]

    assert torch.autograd.gradcheck(fn, (feat,), fast_mode=True)


# --------------------------------------------------------------------------- helpers and heads


def test_offset_batch_roundtrip():
    offset = torch.tensor([3, 3, 5, 9])  # second sample is empty
    batch = offset2batch(offset)
    assert batch.tolist() == [0, 0, 0, 2, 2, 3, 3, 3, 3]
    assert batch2offset(batch, batch_size=4).tolist() == offset.tolist()
    assert batch2offset(torch.tensor([0, 0, 1])).tolist() == [2, 3]
    with pytest.raises(ValueError):
        offset2batch(torch.tensor([3, 2]))


def test_heads():
    feat = torch.randn(50, 96)
    assert LinearHead(96, 20)(feat).shape == (50, 20)
    for hidden in (None, 128):
        z = ProjectionHead(96, 64, hidden=hidden)(feat)
        assert z.shape == (50, 64)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(50))


# --------------------------------------------------------------------------- timing (printed only)


def test_report_cpu_time_small_config():
    spec = importlib.util.spec_from_file_location("bench_backbone", REPO / "scripts" / "bench_backbone.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    t0 = time.perf_counter()
    r = bench.bench(points=25_000, batch=2, width="small", iters=1, warmup=0)
    print(f"\nsmall SpUNet forward+backward on CPU, 2 x 25k voxels, {r['threads']} threads: "
          f"{r['ms_per_iter_median']:.0f} ms/iter (first iteration), peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"[{time.perf_counter() - t0:.1f} s with setup]")
    assert r["ms_per_iter_median"] > 0
