"""Import a checkpoint saved by Pointcept's / PonderV2's trainer as this project's backbone file.

``pretrain3d import-checkpoint --format pointcept|ponderv2 --input CKPT --output backbone.pt`` and
the pipeline's method ``imported`` (``pretrain.imported``: the pretrain step of that method writes
``results/<exp>/pretrain/imported/seed<k>/backbone.pt``, the same content for every seed).

The mapping and its strictness live in ``models.pointcept_import``. The file is the usual backbone
file (stages/pretrain.py) plus what makes it checkable:

* ``architecture``: in_channels, stem_channels, channels, layers, bn_eps and the PDNorm spec (None
  when plain / folded): fine-tuning compares it with ``cfg.model`` and names the settings to use;
* ``source``: path, sha256, format, Pointcept variant and wrapper, condition(s);
* ``heads``: the checkpoint's classifier(s) kept as extras (with class names when given);
* ``dropped``: every checkpoint key left out, with the rule that left it out (PonderV2's renderer...).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from pretrain3d.config import Params, config_hash
from pretrain3d.engine.trainer import save_checkpoint
from pretrain3d.models.pointcept_import import (CheckpointImportError, ImportOptions, ImportResult,
                                                extract_state_dict, import_state, parse_class_names)

log = logging.getLogger(__name__)

BACKBONE_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict:
    """torch.load with ``weights_only=True`` unless the user trusts the file (optimizer/scheduler state
    of some torch versions holds objects the safe loader refuses)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        hint = "" if allow_pickle else (" -- if you trust the file, --allow-pickle loads it with weights_only=False "
                                        "(it can run code)")
        raise CheckpointImportError(f"{path}: cannot load ({type(err).__name__}: {str(err)[:300]}){hint}") from None


def convert(input_path: str | Path, opts: ImportOptions, allow_pickle: bool = False) -> tuple[ImportResult, dict]:
    """The mapped backbone and the ``source`` record (path, sha256, format, variant, conditions)."""
    input_path = Path(input_path)
    state = extract_state_dict(read_checkpoint(input_path, allow_pickle), str(input_path))
    res = import_state(state, opts, str(input_path))
    pd = res.architecture.get("pdnorm") or res.architecture.get("folded_from") or {}
    source = {"path": str(input_path), "sha256": _sha256(input_path), "format": opts.format,
              "variant": f"SpUNet-{res.variant}", "wrapper": res.wrapper, "condition": opts.condition,
              "conditions": pd.get("conditions"), "prompt_conditions": pd.get("prompt_conditions"),
              "tensors": len(state), "mapped": len(res.mapped), "heads": sorted(res.heads),
              "dropped": len(res.dropped)}
    return res, source


def backbone_file(res: ImportResult, source: dict, *, method: str = "imported", seed: int | None = None,
                  uses_gt_labels: bool = True, cfg_hash: str | None = None) -> dict:
    fingerprint = hashlib.sha256(repr((source["sha256"], source["format"], source["condition"],
                                       source["conditions"], source["prompt_conditions"])).encode()).hexdigest()[:16]
    return {"format": BACKBONE_FORMAT, "kind": "backbone", "backbone": res.backbone, "method": method, "seed": seed,
            "fingerprint": fingerprint, "config_hash": cfg_hash, "uses_gt_labels": bool(uses_gt_labels),
            "teacher": None, "architecture": res.architecture, "source": source, "heads": res.heads,
            # what its training saw cannot be read from the tensors: the PDNorm conditions where there are some
            "datasets": list(source["conditions"] or ["unknown (imported)"]),
            "dropped": res.dropped, "notes": res.notes}


def summarize(res: ImportResult, source: dict, out: Path) -> str:
    arch = res.architecture
    lines = [f"imported {source['path']} (sha256 {source['sha256'][:16]}, {source['format']}: {res.wrapper} with "
             f"{source['variant']}) -> {out}",
             f"  backbone: {len(res.backbone)} tensors from {len(res.mapped)} checkpoint tensors; in_channels "
             f"{arch['in_channels']}, stem_channels {arch['stem_channels']}, channels {arch['channels']}, "
             f"layers {arch['layers']}, pdnorm {'kept' if arch.get('pdnorm') else 'none'}"]
    lines += [f"  note: {n}" for n in res.notes]
    for name, h in res.heads.items():
        n = h.get("num_classes", [x["num_classes"] for x in h.get("heads", [])])
        lines.append(f"  head kept: {name} (classes {n})")
    by_rule = Counter(res.dropped.values())
    for what, count in by_rule.items():
        example = next(k for k, v in res.dropped.items() if v == what)
        prefix = re.match(r"^[^.]+", example).group(0)
        lines.append(f"  dropped {count} tensor(s) {prefix}{'.*' if count > 1 or '.' in example else ''}: {what}")
    return "\n".join(lines)


def import_checkpoint(input_path: str | Path, output: str | Path, fmt: str = "pointcept", *,
                      condition: str | None = None, conditions: Sequence[str] | None = None,
                      prompt_conditions: Sequence[str] | None = None, class_names=None,
                      uses_gt_labels: bool = True, allow_pickle: bool = False) -> dict:
    """The CLI: convert and write the backbone file; returns it (and prints what was kept and dropped)."""
    opts = ImportOptions(format=fmt, condition=condition, conditions=conditions, prompt_conditions=prompt_conditions,
                         class_names=parse_class_names(class_names))
    res, source = convert(input_path, opts, allow_pickle)
    ck = backbone_file(res, source, uses_gt_labels=uses_gt_labels)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, ck)
    print(summarize(res, source, output))
    return ck


def build_backbone_file(cfg: Params, method: str, seed: int, out_dir: str | Path) -> Path:
    """The pipeline's pretrain job of a method made by this stage: ``out_dir/backbone.pt`` from
    ``pretrain.<method>`` (seed-independent content), checked against ``cfg.model``."""
    from pretrain3d.models.segmentor import check_backbone_architecture
    from pretrain3d.stages.common import job_params, job_tags
    from pretrain3d.tracking.mlflow_runs import job_run

    ic = getattr(cfg.pretrain, method)
    if not ic.checkpoint:
        raise CheckpointImportError(f"pretrain.{method}.checkpoint is null: set it to the checkpoint file")
    opts = ImportOptions(format=ic.format, condition=ic.condition, conditions=ic.conditions,
                         prompt_conditions=ic.prompt_conditions, class_names=ic.class_names)
    res, source = convert(ic.checkpoint, opts)
    if res.architecture.get("pdnorm"):
        raise CheckpointImportError(
            f"{ic.checkpoint}: a PDNorm (SpUNet-v1m3) checkpoint; fine-tuning builds a plain SpUNet: set "
            f"pretrain.{method}.condition to one of {res.architecture['pdnorm']['conditions']}")
    check_backbone_architecture(res.architecture, cfg.model, ic.checkpoint)
    out = Path(out_dir) / "backbone.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    ck = backbone_file(res, source, method=method, seed=None, uses_gt_labels=ic.uses_gt_labels,
                       cfg_hash=config_hash(cfg))
    tags = job_tags(cfg, "pretrain", method=method, seed=seed, uses_gt_labels=str(ic.uses_gt_labels).lower(),
                    source_sha256=source["sha256"], source_format=source["format"], source_variant=source["variant"],
                    source_condition=str(source["condition"]))
    with job_run(cfg.tracking, f"pretrain/{method}/seed{seed}", tags, job_params(cfg)):
        save_checkpoint(out, ck)
    log.info("%s", summarize(res, source, out))
    return out
