"""`pretrain3d import-checkpoint`: Pointcept / PPT / PonderV2 checkpoints -> backbone files, strictly.

The synthetic checkpoints have Pointcept's exact key layout and shapes: the backbone keys come from
our own model through the inverse mapping, the wrapper/head/renderer keys are written as Pointcept
and PonderV2 name them. The comparison with Pointcept's real source runs when its mirror is here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from pretrain3d.cli import main
from pretrain3d.config import Params, deep_merge
from pretrain3d.models.pdnorm import PDNormSpec
from pretrain3d.models.pointcept_import import (DEFAULT_BACKBONE_CONDITIONS, DEFAULT_PROMPT_CONDITIONS, our_to_pointcept_key,
                                                pointcept_to_our_key)
from pretrain3d.models.spunet import SpUNet

ARCH = dict(in_channels=6, stem_channels=8, channels=(8, 16, 16, 16, 16, 16, 16, 12), layers=(1, 2, 1, 1, 1, 1, 1, 2))
MODEL_CFG = {"stem_channels": 8, "channels": list(ARCH["channels"]), "layers": list(ARCH["layers"])}
# Source mirrors (git dirs) beside the repository, or where POINTCEPT_SRC / PONDERV2_SRC point
MIRROR = Path(os.environ.get("POINTCEPT_SRC", REPO.parent / ".mirror" / "Pointcept+Pointcept" / "repo"))
PONDER_MIRROR = Path(os.environ.get("PONDERV2_SRC", REPO.parent / ".mirror" / "OpenGVLab+PonderV2" / "repo"))


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith("bn.weight") else 0.0))


def _ours(spec=None, seed=0) -> SpUNet:
    torch.manual_seed(seed)
    m = SpUNet(num_classes=0, norm=spec, **ARCH)
    _randomize(m, seed)
    return m.eval()


def _pointcept_state(model: SpUNet, variant: str, prefix="backbone.") -> dict:
    return {prefix + our_to_pointcept_key(k, variant): v.clone() for k, v in model.state_dict().items()
            if not k.startswith("prompt.")}


def _save(tmp: Path, state: dict, name="ckpt.pth", ddp=True) -> Path:
    path = tmp / name
    torch.save({"epoch": 3, "state_dict": {("module." if ddp else "") + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "scheduler": {"last_epoch": 3},
                "scaler": None}, path)
    return path


def _import(*args: str) -> int:
    return main(["import-checkpoint", *args])


def _batch(condition=None, n=600, seed=1):
    g = torch.Generator().manual_seed(seed)
    gc = torch.unique(torch.randint(0, 24, (n, 3), generator=g), dim=0)
    b = {"grid_coord": gc, "feat": torch.randn(len(gc), 6, generator=g), "offset": torch.tensor([len(gc)])}
    if condition:
        b["condition"] = condition
    return b


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _spec(**kw) -> PDNormSpec:
    return PDNormSpec(conditions=DEFAULT_BACKBONE_CONDITIONS, context_channels=kw.pop("context_channels", 32), **kw)


def _ppt_state(model: SpUNet, head="v1m1") -> dict:
    """PPT wrapper keys around a v1m3 backbone: embedding_table rows in the wrapper's order."""
    sd = _pointcept_state(model, "v1m3")
    order = [model.norm_spec.conditions.index(c) for c in DEFAULT_PROMPT_CONDITIONS]
    sd["embedding_table.weight"] = model.prompt.weight.detach()[order].clone()
    c = model.out_channels
    if head == "v1m1":
        sd.update({"proj_head.weight": torch.randn(512, c), "proj_head.bias": torch.randn(512),
                   "class_embedding": torch.randn(36, 512), "logit_scale": torch.tensor(4.6052)})
    elif head == "v1m2":
        for i, k in enumerate((25, 20, 13)):
            sd.update({f"seg_heads.{i}.weight": torch.randn(k, c), f"seg_heads.{i}.bias": torch.randn(k)})
    return sd


# ----------------------------------------------------------------------------- key rules
@pytest.mark.parametrize("variant", ["v1m1", "v1m3"])
def test_key_rules_are_inverse_of_each_other(variant):
    spec = _spec() if variant == "v1m3" else None
    for k in SpUNet(num_classes=0, norm=spec, **ARCH).state_dict():
        if k.startswith("prompt."):
            continue
        pk = our_to_pointcept_key(k, variant)
        assert pointcept_to_our_key(pk, variant) == k
    assert our_to_pointcept_key("enc.0.blocks.1.conv1.weight", "v1m1") == "enc.0.block1.conv1.weight"
    assert our_to_pointcept_key("dec.3.blocks.0.proj_bn.running_var", "v1m1") == "dec.3.block0.proj.1.running_var"
    assert our_to_pointcept_key("dec.3.blocks.0.proj_bn.bns.2.weight", "v1m3") == "dec.3.block0.proj_norm.bns.2.weight"
    assert our_to_pointcept_key("stem.bn.modulation.1.bias", "v1m3") == "conv_input.bn.modulation.1.bias"
    assert our_to_pointcept_key("stem.conv.weight", "v1m1") == "conv_input.0.weight"


# ----------------------------------------------------------------------------- round trips
def test_v1m1_default_segmentor_round_trip_with_its_classifier(tmp_path):
    m = _ours()
    sd = _pointcept_state(m, "v1m1")
    sd["backbone.final.weight"] = torch.randn(5, 1, 1, 1, m.out_channels)
    sd["backbone.final.bias"] = torch.randn(5)
    ck_path = _save(tmp_path, sd)
    out = tmp_path / "bb.pt"
    assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(out),
                   "--class-names", "a,b,c,d,e") == 0
    ck = _load(out)
    assert ck["kind"] == "backbone" and ck["format"] == 1 and ck["method"] == "imported"
    assert ck["uses_gt_labels"] is True
    assert ck["architecture"] == {**{k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()},
                                  "bn_eps": 1e-3, "variant": "SpUNet-v1m1", "pdnorm": None}
    assert ck["source"]["format"] == "pointcept" and len(ck["source"]["sha256"]) == 64
    assert ck["source"]["wrapper"] == "DefaultSegmentor"
    plain = SpUNet(num_classes=0, **ARCH)
    plain.load_state_dict(ck["backbone"], strict=True)
    for k, v in m.state_dict().items():
        assert torch.equal(ck["backbone"][k], v), k
    head = ck["heads"]["final_conv"]
    assert head["class_names"] == list("abcde") and head["weight"].shape == (5, m.out_channels)
    # the kept head is the linear map spconv's 1x1 conv applies
    import spconv.pytorch as spconv
    b = _batch()
    feat = m(b)
    conv = spconv.SubMConv3d(m.out_channels, 5, kernel_size=1, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(sd["backbone.final.weight"])
        conv.bias.copy_(sd["backbone.final.bias"])
    from pretrain3d.models.spunet import build_sparse_tensor
    x = build_sparse_tensor(b["grid_coord"], feat, b["offset"])
    assert torch.allclose(conv(x).features, feat @ head["weight"].T + head["bias"], atol=1e-5)


def test_bare_backbone_and_default_segmentor_v2_seg_head(tmp_path):
    m = _ours()
    ck_path = _save(tmp_path, _pointcept_state(m, "v1m1", prefix=""), ddp=False)
    assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(tmp_path / "a.pt")) == 0
    assert _load(tmp_path / "a.pt")["source"]["wrapper"] == "backbone"
    sd = _pointcept_state(m, "v1m1")
    sd.update({"seg_head.weight": torch.randn(20, m.out_channels), "seg_head.bias": torch.randn(20)})
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"c{i}" for i in range(20)) + "\n")
    assert _import("--format", "pointcept", "--input", str(_save(tmp_path, sd)), "--output", str(tmp_path / "b.pt"),
                   "--class-names", str(names)) == 0
    ck = _load(tmp_path / "b.pt")
    assert ck["heads"]["seg_head"]["class_names"] == [f"c{i}" for i in range(20)]
    assert torch.equal(ck["heads"]["seg_head"]["weight"], sd["seg_head.weight"])


def test_ppt_v1m3_kept_and_folded_give_the_backbone_outputs(tmp_path, capsys):
    m = _ours(_spec())
    ck_path = _save(tmp_path, _ppt_state(m))
    assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(tmp_path / "pd.pt")) == 0
    ck = _load(tmp_path / "pd.pt")
    assert ck["source"]["wrapper"] == "PPT-v1m1"
    assert ck["architecture"]["pdnorm"]["conditions"] == list(DEFAULT_BACKBONE_CONDITIONS)
    assert ck["architecture"]["pdnorm"]["prompt_conditions"] == list(DEFAULT_PROMPT_CONDITIONS)
    kept = SpUNet(num_classes=0, norm=PDNormSpec.from_dict(ck["architecture"]["pdnorm"]), **ARCH).eval()
    kept.load_state_dict(ck["backbone"], strict=True)
    assert torch.equal(kept.prompt.weight, m.prompt.weight)  # rows back in the backbone's order
    assert ck["heads"]["language_head"]["class_embedding"].shape == (36, 512)
    with torch.no_grad():
        for cond in DEFAULT_BACKBONE_CONDITIONS:
            ref = m(_batch(cond))
            assert torch.equal(kept(_batch(cond)), ref)
            out = tmp_path / f"{cond}.pt"
            assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(out),
                           "--condition", cond) == 0
            f = _load(out)
            assert f["architecture"]["pdnorm"] is None and f["source"]["condition"] == cond
            plain = SpUNet(num_classes=0, **ARCH).eval()
            plain.load_state_dict(f["backbone"], strict=True)
            assert torch.allclose(plain(_batch()), ref, atol=1e-5)
    assert "PDNorm folded under condition 'S3DIS'" in capsys.readouterr().out


def test_ppt_v1m2_seg_heads_need_the_condition_for_class_names(tmp_path, capsys):
    m = _ours(_spec())
    ck_path = _save(tmp_path, _ppt_state(m, head="v1m2"))
    names = ",".join(f"s{i}" for i in range(20))
    assert re.search(r"seg_heads has one classifier per dataset .*--condition", _fails(
        capsys, "--format", "pointcept", "--input", str(ck_path), "--output", str(tmp_path / "x.pt"),
        "--class-names", names))
    assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(tmp_path / "x.pt"),
                   "--class-names", names, "--condition", "ScanNet") == 0  # ScanNet = wrapper row 1: 20 classes
    heads = _load(tmp_path / "x.pt")["heads"]["seg_heads"]
    assert [h["num_classes"] for h in heads["heads"]] == [25, 20, 13]
    assert heads["heads"][1]["class_names"][0] == "s0"
    assert _import("--format", "pointcept", "--input", str(ck_path), "--output", str(tmp_path / "y.pt"),
                   "--class-names", names, "--condition", "S3DIS") == 2  # 13 classes: a clean CLI error


def _ponder_state(m: SpUNet) -> dict:
    sd = _ppt_state(m)
    sd.update({"proj_net.encoders.0.basic_module.SingleConv1.conv.weight": torch.randn(32, 96, 3, 3, 3),
               "proj_net.final_conv.bias": torch.randn(128),
               "renderer.field.sdf_decoder.lin0.weight": torch.randn(128, 64),
               "renderer.field.deviation_network.variance": torch.tensor(0.3)})
    return sd


def test_ponderv2_pretraining_drops_renderer_and_projector_by_rule(tmp_path, capsys):
    m = _ours(_spec())
    ck_path = _save(tmp_path, _ponder_state(m))
    assert "--format ponderv2" in _fails(capsys, "--format", "pointcept", "--input", str(ck_path), "--output",
                                         str(tmp_path / "x"))
    assert _import("--format", "ponderv2", "--input", str(ck_path), "--output", str(tmp_path / "p.pt"),
                   "--condition", "ScanNet") == 0
    text = capsys.readouterr().out
    assert "PonderIndoor-v2" in text and "dropped 2 tensor(s) proj_net.*" in text and "renderer.*" in text
    ck = _load(tmp_path / "p.pt")
    assert sorted(ck["dropped"]) == sorted(k for k in _ponder_state(m) if k.startswith(("proj_net.", "renderer.")))
    assert ck["source"]["format"] == "ponderv2" and ck["architecture"]["pdnorm"] is None


def test_ponderv2_v1m1_drops_the_unused_prompt_table(tmp_path):
    m = _ours()
    sd = _pointcept_state(m, "v1m1")
    sd.update({"embedding_table.weight": torch.randn(1, 256), "renderer.field.beta": torch.tensor(0.3),
               "mtoken": torch.zeros(1, 6)})
    assert _import("--format", "ponderv2", "--input", str(_save(tmp_path, sd)), "--output", str(tmp_path / "p.pt")) == 0
    dropped = _load(tmp_path / "p.pt")["dropped"]
    assert set(dropped) == {"embedding_table.weight", "renderer.field.beta", "mtoken"}


# ----------------------------------------------------------------------------- strictness
def _fails(capsys, *args) -> str:
    """The CLI exits 2 with the error on stderr."""
    capsys.readouterr()
    assert main(["import-checkpoint", *args]) == 2
    return capsys.readouterr().err


def _err(tmp_path, capsys, state, *extra, fmt="pointcept") -> str:
    path = _save(tmp_path, state, name="bad.pth")
    msg = _fails(capsys, "--format", fmt, "--input", str(path), "--output", str(tmp_path / "o.pt"), *extra)
    assert str(path) in msg, msg
    assert not (tmp_path / "o.pt").exists()
    return msg


def test_a_missing_tensor_is_named_with_its_shape(tmp_path, capsys):
    sd = _pointcept_state(_ours(), "v1m1")
    del sd["backbone.dec.3.block0.bn2.running_var"]
    msg = _err(tmp_path, capsys, sd)
    assert "1 backbone tensor(s) missing" in msg and "backbone.dec.3.block0.bn2.running_var" in msg
    assert "(16,)" in msg


def test_an_extra_backbone_key_and_an_unknown_key_are_errors(tmp_path, capsys):
    sd = _pointcept_state(_ours(), "v1m1")
    msg = _err(tmp_path, capsys, {**sd, "backbone.enc.0.block7.conv1.weight": torch.zeros(8, 3, 3, 3, 8)})
    assert "'backbone.enc.0.block7.conv1.weight' maps to no tensor" in msg
    msg = _err(tmp_path, capsys, {**sd, "aux_head.weight": torch.zeros(3, 12)})
    assert "'aux_head.weight' (shape (3, 12)) maps nowhere" in msg
    msg = _err(tmp_path, capsys, {**sd, "renderer.x": torch.zeros(1)})
    assert "--format ponderv2" in msg


def test_a_wrong_shape_names_key_and_expectation(tmp_path, capsys):
    sd = _pointcept_state(_ours(), "v1m1")
    sd["backbone.enc.1.block1.conv2.weight"] = torch.zeros(16, 3, 3, 3, 15)
    msg = _err(tmp_path, capsys, sd)
    assert "'backbone.enc.1.block1.conv2.weight': shape (16, 3, 3, 3, 15), expected (16, 3, 3, 3, 16)" in msg


def test_wrong_class_names_and_unknown_condition(tmp_path, capsys):
    m = _ours(_spec())
    sd = _ppt_state(m)
    msg = _err(tmp_path, capsys, sd, "--class-names", "wall,floor")
    assert "class_embedding has 36 rows (classes), --class-names gives 2 names: expected 36" in msg
    msg = _err(tmp_path, capsys, sd, "--condition", "KITTI")
    assert "unknown condition 'KITTI'" in msg and "Structured3D" in msg
    msg = _err(tmp_path, capsys, _pointcept_state(_ours(), "v1m1"), "--condition", "ScanNet")
    assert "SpUNet-v1m1 (plain BatchNorm)" in msg
    msg = _err(tmp_path, capsys, sd, "--prompt-conditions", "A,B,C")
    assert "embedding_table.weight" in msg and "--prompt-conditions" in msg
    bad = dict(sd, **{"embedding_table.weight": torch.zeros(3, 31)})
    assert "embedding_table.weight: shape (3, 31), expected (3, 32)" in _err(tmp_path, capsys, bad)


def test_not_a_pointcept_checkpoint(tmp_path, capsys):
    path = tmp_path / "x.pth"
    torch.save({"epoch": 1, "weights": [1, 2]}, path)
    assert "x.pth: not a Pointcept checkpoint" in _fails(capsys, "--format", "pointcept", "--input", str(path),
                                                          "--output", str(tmp_path / "o"))


# ----------------------------------------------------------------------------- the pipeline
def _cfg(tmp_path, **imported) -> Params:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    over = {"experiment": {"methods": ["imported"], "pretrain_only": [], "seeds": [0, 1]},
            "model": MODEL_CFG, "tracking": {"enabled": False}, "pretrain": {"imported": imported}}
    return Params.model_validate(deep_merge(base, over))


def test_config_refuses_imported_without_a_checkpoint(tmp_path):
    with pytest.raises(Exception, match=r"'imported' but pretrain.imported.checkpoint is null"):
        _cfg(tmp_path)
    cfg = _cfg(tmp_path, checkpoint="/x/ponder.pth", format="ponderv2", condition="ScanNet")
    assert cfg.pretrain.imported.uses_gt_labels is True


def test_the_checkpoint_is_an_input_of_the_pretrain_step_and_its_fields_params(tmp_path):
    from pretrain3d.workflow import steps

    cfg = _cfg(tmp_path, checkpoint="/x/ponder.pth", format="ponderv2", condition="ScanNet")
    step = steps.STEPS["pretrain"]
    w = {"method": "imported", "seed": "1"}
    assert steps._pretrain_inputs(cfg, w) == {"pretrain_imported_checkpoint": "/x/ponder.pth"}
    fields = step.field_values(cfg, w)
    assert fields["pretrain.imported.condition"] == "ScanNet" and "model.channels" in fields
    assert step.outputs(cfg, w)["backbone"].endswith("/pretrain/imported/seed1/backbone.pt")
    assert "src/pretrain3d/stages/import_checkpoint.py" in step.code(w)
    assert steps._pretrain_inputs(cfg, {"method": "scratch", "seed": "0"}) == {}


def test_pretrain_cli_writes_a_seed_independent_backbone_that_fine_tuning_accepts(tmp_path):
    from pretrain3d.models.segmentor import build_backbone, check_backbone_architecture
    from pretrain3d.engine.trainer import load_state_strict
    from pretrain3d.errors import ConfigError

    m = _ours(_spec())
    ck_path = _save(tmp_path, _ppt_state(m))
    cfg = _cfg(tmp_path, checkpoint=str(ck_path), condition="ScanNet")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    outs = []
    for seed in (0, 1):
        d = tmp_path / f"seed{seed}"
        assert main(["pretrain", "-c", str(tmp_path / "p.yaml"), "--method", "imported", "--seed", str(seed),
                     "--out-dir", str(d)]) == 0
        outs.append(_load(d / "backbone.pt"))
    a, b = outs
    assert a["fingerprint"] == b["fingerprint"] and a["seed"] is None
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])
    check_backbone_architecture(a["architecture"], cfg.model, "x")
    load_state_strict(build_backbone(cfg.model), a["backbone"], "x")
    small = cfg.model.model_copy(update={"stem_channels": 16})
    with pytest.raises(ConfigError, match=r"set model.stem_channels: 8 .*configs/scannet-scratch.yaml"):
        check_backbone_architecture(a["architecture"], small, "x")
    # a PDNorm checkpoint without a condition cannot feed fine-tuning
    cfg2 = _cfg(tmp_path, checkpoint=str(ck_path))
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg2.model_dump(mode="json")))
    assert main(["pretrain", "-c", str(tmp_path / "q.yaml"), "--method", "imported", "--seed", "0",
                 "--out-dir", str(tmp_path / "q")]) == 2


# ----------------------------------------------------------------------------- Pointcept's own source
@pytest.mark.skipif(not MIRROR.exists(), reason=f"no Pointcept source at {MIRROR} (set POINTCEPT_SRC to a checkout "
                    "or git directory); the synthetic-layout tests above still ran")
def test_outputs_equal_pointcepts_own_models(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = tmp_path / "diff.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts/check_pointcept_import.py"), "--pointcept-src",
                        str(MIRROR), "--json", str(out),
                        *(["--ponderv2-src", str(PONDER_MIRROR)] if PONDER_MIRROR.exists() else [])],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json

    diffs = json.loads(out.read_text())["differences"]
    assert len(diffs) == (17 if PONDER_MIRROR.exists() else 11) and max(diffs.values()) < 1e-4


@pytest.mark.parametrize("decouple,adaptive,affine", [(False, True, True), (True, False, True), (True, True, False)])
def test_pdnorm_switches_are_read_from_the_tensors(tmp_path, decouple, adaptive, affine):
    m = _ours(_spec(decouple=decouple, adaptive=adaptive, affine=affine))
    sd = _pointcept_state(m, "v1m3")
    sd["embedding_table.weight"] = (m.prompt.weight.detach()[[1, 2, 0]] if adaptive else torch.randn(3, 32))
    assert _import("--format", "pointcept", "--input", str(_save(tmp_path, sd)), "--output", str(tmp_path / "k.pt"),
                   "--prompt-conditions", "S3DIS,Structured3D,ScanNet") == 0
    ck = _load(tmp_path / "k.pt")
    pd = ck["architecture"]["pdnorm"]
    assert (pd["decouple"], pd["adaptive"], pd["affine"]) == (decouple, adaptive, affine)
    assert ("embedding_table.weight" in ck["dropped"]) == (not adaptive)
    kept = SpUNet(num_classes=0, norm=PDNormSpec.from_dict(pd), **ARCH).eval()
    kept.load_state_dict(ck["backbone"], strict=True)
    with torch.no_grad():
        assert torch.equal(kept(_batch("S3DIS")), m(_batch("S3DIS")))
