"""The pre-training methods, one line each: what the pipeline must know without importing torch.

Snakemake, DVC (workflow.steps) and the config read these declarations; nothing else names a method.
A method is one module (``plugin``: ``build(cfg, method, scenes) -> methods.plugin.MethodSetup``),
one config section (``pretrain.<section>`` in config.py / params.yaml) and one line here.

``needs``: what the processed dataset must provide -- ``scenes`` (processed point clouds), ``frames``
(posed RGB-D views), ``features`` (the 2D teacher's cached features: the ``cache_features`` step runs),
``labels`` (ground-truth labels, so ``uses_gt_labels`` must be true), ``datasets`` (the processed scenes of
the ``multi_dataset.datasets`` beside ``data``: the ``domain_data`` step makes them).
"""

from __future__ import annotations

from dataclasses import dataclass

NEEDS = ("scenes", "frames", "features", "labels", "datasets")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    plugin: str | None                  # the method module; None: not trained (scratch)
    needs: frozenset[str]
    fields: tuple[str, ...]             # config prefixes it reads beyond the shared loop (pretrain.*, model...)
    uses_gt_labels: bool = False
    exclude: tuple[str, ...] = ()       # leaves under `fields` that cannot change any output (chunk sizes...)
    check_only: tuple[str, ...] = ()    # leaves under `fields` only the real-data check reads
    stage: str = "pretrain3d.stages.pretrain"  # the CLI stage module that makes its backbone.pt
    after_training: str | None = None   # "module:function"(methods.plugin.AfterTraining) -> dict: held-out check
    real_check: str | None = None       # "module:function": short run on the real RGB-D fixture -> PNG + JSON
    report_visual: str | None = None    # "module:function": the report's figures from its saved backbones
    query_source: str | None = None     # "module:Class"(cfg, backbone, device): scene-query features (retrieval.sources)
    description: str = ""

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"method {self.name}: unknown needs {sorted(unknown)} (known: {NEEDS})")
        if ("labels" in self.needs) != self.uses_gt_labels:
            raise ValueError(f"method {self.name}: 'labels' in needs and uses_gt_labels must agree")


_PONDER_EXCLUDE = ("pretrain.ponderv2.render_chunk",)

REGISTRY: dict[str, MethodSpec] = {s.name: s for s in [
    MethodSpec("scratch", None, frozenset(), (), stage="pretrain3d.stages.init_backbone",
               description="no pre-training: a seeded random initialisation, saved like a pre-trained backbone"),
    MethodSpec("imported", None, frozenset(), ("pretrain.imported", "model"), stage="pretrain3d.stages.import_checkpoint", description="a released Pointcept/PonderV2 checkpoint converted strictly (pretrain.imported; uses_gt_labels from its setting)"),
    MethodSpec("ppkt", "pretrain3d.methods.ppkt", frozenset({"scenes", "frames", "features"}),
               ("pretrain.ppkt", "teacher"), exclude=("teacher.batch_size",),
               query_source="pretrain3d.retrieval.ppkt_features:PPKTSource",
               description="pixel-to-point distillation of a frozen 2D teacher (Liu et al., arXiv 2104.04687)"),
    MethodSpec("ponderv2", "pretrain3d.methods.ponderv2", frozenset({"scenes", "frames"}), ("pretrain.ponderv2",),
               exclude=_PONDER_EXCLUDE, check_only=("pretrain.ponderv2.real_check_steps",),
               after_training="pretrain3d.stages.render:heldout_render_check",
               real_check="pretrain3d.stages.render:real_data_check",
               report_visual="pretrain3d.stages.render:report_renders",
               description="neural-rendering pre-training on RGB-D, label-free (Zhu et al., arXiv 2310.08586)"),
    MethodSpec("ponderv2_semantic", "pretrain3d.methods.ponderv2", frozenset({"scenes", "frames", "labels"}),
               ("pretrain.ponderv2",), uses_gt_labels=True, exclude=_PONDER_EXCLUDE,
               check_only=("pretrain.ponderv2.real_check_steps",),
               after_training="pretrain3d.stages.render:heldout_render_check",
               report_visual="pretrain3d.stages.render:report_renders",
               description="PonderV2 plus the semantic rendering loss against class-name text embeddings "
                           "(uses ground-truth labels)"),
    MethodSpec("ppt", "pretrain3d.methods.ppt", frozenset({"scenes", "labels", "datasets"}),
               ("pretrain.ppt", "multi_dataset"), uses_gt_labels=True,
               description="Point Prompt Training: supervised on several datasets with PDNorm and language-guided "
                           "categorical alignment, folded to one dataset (Wu et al., arXiv 2308.09718)"),
    MethodSpec("ponderv2_ppt", "pretrain3d.methods.ponderv2_ppt", frozenset({"scenes", "frames", "labels", "datasets"}),
               ("pretrain.ponderv2", "pretrain.ponderv2_ppt", "multi_dataset"), uses_gt_labels=True,
               exclude=_PONDER_EXCLUDE, check_only=("pretrain.ponderv2.real_check_steps",),
               description="PonderV2's rendering pre-training over several datasets with PDNorm, PPT's loss "
                           "added (uses ground-truth labels)"),
    MethodSpec("condense", "pretrain3d.methods.condense", frozenset({"scenes", "frames"}), ("pretrain.condense", "teacher"),
               exclude=("pretrain.condense.render_chunk", "teacher.batch_size", "teacher.cache_root"),
               check_only=("pretrain.condense.real_check_steps",),
               after_training="pretrain3d.stages.condense_checks:after_training",
               real_check="pretrain3d.stages.condense_checks:real_data_check",
               report_visual="pretrain3d.stages.condense_checks:report_section",
               query_source="pretrain3d.retrieval.condense_features:CondenseSource",
               description="joint 2D/3D pre-training: rendered 3D features and a trainable 2D ViT kept consistent "
                           "(a reconstruction of Zhang et al., ECCV 2024; methods/condense.py states every choice)"),
]}


def method_names() -> list[str]:
    return list(REGISTRY)


def trained_method_names() -> list[str]:
    return [n for n, s in REGISTRY.items() if s.plugin is not None]


def spec(name: str) -> MethodSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown pre-training method {name!r}; registered: {', '.join(REGISTRY)} "
                         "(pretrain3d.methods.registry)") from None


def resolve(ref: str):
    """'package.module:function' -> the function (imported on use: the registry stays torch-free)."""
    import importlib

    module, _, func = ref.partition(":")
    return getattr(importlib.import_module(module), func)
