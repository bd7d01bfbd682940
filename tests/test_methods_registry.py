"""Methods are plug-ins: stages, rules and DVC stages read methods.registry and never name a method."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from conftest import REPO
import yaml

from pretrain3d.config import Params, deep_merge
from pretrain3d.methods import registry
from pretrain3d.methods.registry import MethodSpec
from pretrain3d.workflow import dvc_yaml, steps

# The generic parts of the pipeline; a method's own modules (methods/<name>.py, its check in
# stages/render.py) are what the registry points at.
GENERIC = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk")),
           "src/pretrain3d/stages/pretrain.py", "src/pretrain3d/stages/real_check.py",
           "src/pretrain3d/stages/finetune.py", "src/pretrain3d/stages/evaluate.py",
           "src/pretrain3d/stages/report.py", "src/pretrain3d/cli.py",
           *sorted(str(p.relative_to(REPO)) for p in (REPO / "src/pretrain3d/workflow").glob("*.py"))]


def _code(text: str) -> str:
    """The text without comments and docstrings/strings that only document (help texts stay: they are code)."""
    text = re.sub(r'"""(.|\n)*?"""', "", text)
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _cfg(overrides: dict) -> Params:
    return Params.model_validate(deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides))


@pytest.mark.parametrize("path", GENERIC)
def test_generic_code_names_no_trained_method(path):
    code = _code((REPO / path).read_text())
    for name in registry.trained_method_names():
        assert not re.search(rf"\b{name}\b", code, re.IGNORECASE), f"{path} names the method {name!r}"


def test_every_registered_plugin_has_a_build_function_and_its_hooks_resolve():
    import importlib

    for spec in registry.REGISTRY.values():
        if spec.plugin:
            assert callable(importlib.import_module(spec.plugin).build), spec.name
        for ref in (spec.after_training, spec.real_check, spec.report_visual, spec.query_source):
            if ref:
                assert callable(registry.resolve(ref)), (spec.name, ref)


def test_an_unregistered_method_is_a_config_error_naming_the_registry():
    with pytest.raises(Exception, match=r"unknown method\(s\) \['pointbert'\].*pretrain3d.methods.registry"):
        Params.model_validate({"experiment": {"methods": ["scratch", "pointbert"]}})
    with pytest.raises(Exception, match=r"pretrain_only takes"):
        Params.model_validate({"experiment": {"methods": ["ppkt"], "pretrain_only": ["scratch"]}})


def test_needs_and_gt_labels_must_agree():
    with pytest.raises(ValueError, match="uses_gt_labels"):
        MethodSpec("x", "m", frozenset({"scenes", "labels"}), ())
    with pytest.raises(ValueError, match="unknown needs"):
        MethodSpec("x", "m", frozenset({"lidar"}), ())


def test_a_new_method_is_one_registry_line(monkeypatch):
    """A line in the registry is all the workflow needs: the pretrain job reads its config section and
    runs its module, its real check and report figures get wired, and dvc.yaml gets its stage."""
    fake = MethodSpec("ponder_copy", "pretrain3d.methods.ponderv2", frozenset({"scenes", "frames"}),
                      ("pretrain.ponderv2",), exclude=("pretrain.ponderv2.render_chunk",),
                      check_only=("pretrain.ponderv2.real_check_steps",),
                      real_check="pretrain3d.stages.render:real_data_check",
                      report_visual="pretrain3d.stages.render:report_renders")
    monkeypatch.setitem(registry.REGISTRY, fake.name, fake)
    cfg = _cfg({"experiment": {"methods": ["scratch", "ponder_copy"], "pretrain_only": []}})
    step = steps.STEPS["pretrain"]
    w = {"method": "ponder_copy", "seed": "0"}
    fields = step.field_values(cfg, w)
    assert "pretrain.ponderv2.views" in fields and "pretrain.ponderv2.render_chunk" not in fields
    assert "pretrain.ponderv2.real_check_steps" not in fields and not any(k.startswith("pretrain.ppkt") for k in fields)
    assert "src/pretrain3d/methods/ponderv2.py" in step.code(w)
    assert step.inputs(cfg, w) == {"data": cfg.data.processed_root}
    check = steps.STEPS["real_check"]
    assert "pretrain.ponderv2.real_check_steps" in check.field_values(cfg, {"method": "ponder_copy"})
    names = [s.name for s, _ in steps.active_steps(cfg)]
    assert "real_check" in names and "cache_features" not in names
    assert steps.backbone(cfg, "ponder_copy", "0") in steps.STEPS["report"].inputs(cfg, {})["backbones"]
    # the report runs the figure functions by name: they are its code deps all the same
    report_code = steps.STEPS["report"].code({})
    assert "src/pretrain3d/stages/render.py" in report_code
    assert "src/pretrain3d/stages/condense_checks.py" in report_code
    stages = yaml.safe_load(dvc_yaml.generate(cfg, REPO / "params.yaml"))["stages"]
    assert "pretrain-ponder_copy" in stages and "real_check-ponder_copy" in stages
    assert "pretrain.ponderv2" in str(stages["pretrain-ponder_copy"]["params"])


def test_a_method_the_dataset_cannot_feed_is_refused(monkeypatch):
    cfg = _cfg({"data": {"dataset": "scannet_npy", "raw_root": str(REPO)},
                "experiment": {"methods": ["scratch", "ppkt"], "pretrain_only": []}})
    with pytest.raises(steps.WorkflowConfigError, match="'ppkt', which needs"):
        steps.check_runnable(cfg)


def test_the_condense_ablation_overlays_validate_and_change_one_thing():
    from pretrain3d.config import load_config

    base = load_config(REPO / "params.yaml")
    for name, field, value in (("condense-noreg", "reg_weight", 0.0), ("condense-frozen2d", "train_blocks", 0),
                               ("condense-uncentered", "center", False)):
        cfg = load_config(REPO / "params.yaml", REPO / "configs" / "ablations" / f"{name}.yaml")
        assert cfg.experiment.name == name and cfg.experiment.methods == ["condense"]
        assert getattr(cfg.pretrain.condense, field) == value
        rest = cfg.pretrain.condense.model_copy(update={field: getattr(base.pretrain.condense, field)})
        assert rest == base.pretrain.condense and cfg.experiment.seeds == base.experiment.seeds
