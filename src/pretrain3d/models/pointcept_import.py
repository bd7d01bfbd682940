"""Map a checkpoint saved by Pointcept's (or PonderV2's) trainer onto this project's SpUNet, strictly.

What a Pointcept checkpoint holds (facts read from Pointcept d74c646 / PonderV2 aad65d6):

* the trainer saves ``{"epoch", "state_dict", "optimizer", "scheduler", "scaler"}``; under DDP every
  ``state_dict`` key starts with ``module.``; released weights may be the bare state dict;
* ``DefaultSegmentor``: ``backbone.*`` (the SpUNet, whose ``final`` 1x1 conv is the classifier when
  ``num_classes > 0``); ``DefaultSegmentorV2``: ``backbone.*`` + ``seg_head.{weight,bias}`` (Linear);
* ``PPT-v1m1`` (language guided): ``backbone.*`` (SpUNet-v1m3), ``embedding_table.weight`` (dataset
  prompts, rows in the *wrapper's* ``conditions`` order), ``proj_head.{weight,bias}``,
  ``class_embedding`` (text embeddings, one row per class name) and ``logit_scale``;
  ``PPT-v1m2`` (decoupled): ``seg_heads.<i>.{weight,bias}`` per dataset instead of the language head;
* PonderV2's ``PonderIndoor-v2``: ``backbone.*`` (v1m1 or v1m3), ``embedding_table.weight``,
  ``proj_net.*`` (dense 3D UNet projector), ``renderer.*`` (SDF field, NeuS), optionally
  ``mtoken``, ``class_embedding``, ``logit_scale``, ``proj_head.*`` (its PPT loss head).

Backbone key layouts (Pointcept -> ours):

=============================================  ==========================================
SpUNet-v1m1                                    SpUNet-v1m3 (PDNorm)
=============================================  ==========================================
``conv_input.0`` / ``conv_input.1`` (BN)       ``conv_input.conv`` / ``conv_input.bn``      -> ``stem.conv`` / ``stem.bn``
``down.<s>.0`` / ``down.<s>.1``                ``down.<s>.conv`` / ``down.<s>.bn``          -> ``down.<s>.conv`` / ``.bn``
``up.<s>.0`` / ``up.<s>.1``                    ``up.<s>.conv`` / ``up.<s>.bn``              -> ``up.<s>.conv`` / ``.bn``
``enc.<s>.block<i>.{conv1,bn1,conv2,bn2}``     same                                         -> ``enc.<s>.blocks.<i>.*``
``enc.<s>.block<i>.proj.0`` / ``proj.1``       ``...proj_conv`` / ``...proj_norm``          -> ``...proj_conv`` / ``...proj_bn``
``final.{weight,bias}`` (num_classes > 0)      same                                         -> the ``final_conv`` head (extra)
=============================================  ==========================================

``dec`` as ``enc``. Inside a PDNorm layer the suffixes (``bns.<k>.*``, ``bn.*``, ``modulation.1.*``)
are ours too. Sparse-conv weights keep spconv 2's layout (out, k, k, k, in) on both sides.

Dataset conditions: Pointcept's backbone indexes its per-dataset BatchNorms by the *backbone's*
``conditions`` and the wrapper indexes ``embedding_table`` by the *wrapper's* ``conditions``; the
released PPT / PonderV2 configs use different orders (backbone ScanNet, S3DIS, Structured3D;
wrapper Structured3D, ScanNet, S3DIS). Neither is stored in a checkpoint, so both are inputs
(defaults: those configs' orders) and the prompts are reordered into ours (``SpUNet.prompt`` rows
follow ``PDNormSpec.conditions`` = the backbone's order).

Strict: every tensor of our backbone is filled exactly once with the right shape, and every
checkpoint tensor is either mapped, kept as a head, or dropped by a named rule; anything else is
an ``ImportError_`` naming the file, the key and what was expected.

Over 500 lines because it is one mapping whose rules (backbone layouts, heads, prompts, dropped keys)
must be read together to see that every key of every supported release is accounted for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from pretrain3d.errors import Pretrain3DError

__all__ = ["CheckpointImportError", "ImportOptions", "ImportResult", "import_state", "extract_state_dict",
           "our_to_pointcept_key", "pointcept_to_our_key", "detect_variant", "infer_architecture",
           "DEFAULT_BACKBONE_CONDITIONS", "DEFAULT_PROMPT_CONDITIONS", "FORMATS", "parse_class_names"]

FORMATS = ("pointcept", "ponderv2")
# the orders of the released PPT (Pointcept configs/scannet/semseg-ppt-v1m1-0-sc-st-spunet.py) and
# PonderV2 (configs/scannet/pretrain-ponder-ppt-v1m1-0-sc-s3-st-spunet.py) configs
DEFAULT_BACKBONE_CONDITIONS = ("ScanNet", "S3DIS", "Structured3D")
DEFAULT_PROMPT_CONDITIONS = ("Structured3D", "ScanNet", "S3DIS")
BN_EPS = 1e-3  # Pointcept's SpUNet BatchNorm eps (v1m1 and v1m3)


class CheckpointImportError(Pretrain3DError):
    """A checkpoint cannot be mapped onto the backbone without guessing."""


# ----------------------------------------------------------------------------- key rules
# (pattern on the Pointcept backbone key without "backbone.", replacement giving our key)
_COMMON_RULES = [
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.(conv1|bn1|conv2|bn2|proj_conv)\.(.+)$", r"\1.\2.blocks.\3.\4.\5"),
]
_V1M1_RULES = [
    (r"^conv_input\.0\.(.+)$", r"stem.conv.\1"),
    (r"^conv_input\.1\.(.+)$", r"stem.bn.\1"),
    (r"^(down|up)\.(\d+)\.0\.(.+)$", r"\1.\2.conv.\3"),
    (r"^(down|up)\.(\d+)\.1\.(.+)$", r"\1.\2.bn.\3"),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.proj\.0\.(.+)$", r"\1.\2.blocks.\3.proj_conv.\4"),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.proj\.1\.(.+)$", r"\1.\2.blocks.\3.proj_bn.\4"),
] + _COMMON_RULES
_V1M3_RULES = [
    (r"^conv_input\.conv\.(.+)$", r"stem.conv.\1"),
    (r"^conv_input\.bn\.(.+)$", r"stem.bn.\1"),
    (r"^(down|up)\.(\d+)\.(conv|bn)\.(.+)$", r"\1.\2.\3.\4"),
    (r"^(enc|dec)\.(\d+)\.block(\d+)\.proj_norm\.(.+)$", r"\1.\2.blocks.\3.proj_bn.\4"),
] + _COMMON_RULES
_RULES = {"v1m1": _V1M1_RULES, "v1m3": _V1M3_RULES}

_INVERSE = {
    "v1m1": [
        (r"^stem\.conv\.(.+)$", r"conv_input.0.\1"),
        (r"^stem\.bn\.(.+)$", r"conv_input.1.\1"),
        (r"^(down|up)\.(\d+)\.conv\.(.+)$", r"\1.\2.0.\3"),
        (r"^(down|up)\.(\d+)\.bn\.(.+)$", r"\1.\2.1.\3"),
        (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.proj_conv\.(.+)$", r"\1.\2.block\3.proj.0.\4"),
        (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.proj_bn\.(.+)$", r"\1.\2.block\3.proj.1.\4"),
        (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.(conv1|bn1|conv2|bn2)\.(.+)$", r"\1.\2.block\3.\4.\5"),
    ],
    "v1m3": [
        (r"^stem\.conv\.(.+)$", r"conv_input.conv.\1"),
        (r"^stem\.bn\.(.+)$", r"conv_input.bn.\1"),
        (r"^(down|up)\.(\d+)\.(conv|bn)\.(.+)$", r"\1.\2.\3.\4"),
        (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.proj_bn\.(.+)$", r"\1.\2.block\3.proj_norm.\4"),
        (r"^(enc|dec)\.(\d+)\.blocks\.(\d+)\.(conv1|bn1|conv2|bn2|proj_conv)\.(.+)$", r"\1.\2.block\3.\4.\5"),
    ],
}


def _apply(rules, key: str) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def pointcept_to_our_key(key: str, variant: str) -> str | None:
    """Our backbone key for a Pointcept backbone key (without ``backbone.``), or None."""
    return _apply(_RULES[variant], key)


def our_to_pointcept_key(key: str, variant: str) -> str:
    """The inverse rule (tests build Pointcept-layout checkpoints from our model with it)."""
    if key.startswith("prompt."):
        raise ValueError("the prompts are the PPT wrapper's embedding_table, not a backbone key")
    out = _apply(_INVERSE[variant], key)
    if out is None:
        raise ValueError(f"no Pointcept key for {key!r} ({variant})")
    return out


# ----------------------------------------------------------------------------- containers
def extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The model state of a trainer checkpoint (``state_dict``), or a bare state dict; ``module.`` stripped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "state_dict" not in obj:
        state = obj["model"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointImportError(f"{source}: not a Pointcept checkpoint: expected a dict with 'state_dict' "
                                    f"(the trainer's CheckpointSaver) or a bare state dict, found {keys}")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointImportError(f"{source}: state_dict key {k!r} is a {type(v).__name__}, expected a tensor")
        key = k[len("module."):] if k.startswith("module.") else k
        if key in out:
            raise CheckpointImportError(f"{source}: key {key!r} appears with and without the 'module.' prefix")
        out[key] = v
    return out


def _split_backbone(state: Mapping[str, torch.Tensor]) -> tuple[str, dict, dict]:
    """(prefix, backbone tensors without the prefix, the rest). A bare backbone has the prefix ''."""
    if any(k.startswith("backbone.") for k in state):
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return "backbone.", bb, rest
    return "", dict(state), {}


def detect_variant(backbone: Mapping[str, torch.Tensor], source: str) -> str:
    if "conv_input.conv.weight" in backbone:
        return "v1m3"
    if "conv_input.0.weight" in backbone:
        return "v1m1"
    raise CheckpointImportError(
        f"{source}: no SpUNet stem found: expected 'backbone.conv_input.0.weight' (SpUNet-v1m1) or "
        f"'backbone.conv_input.conv.weight' (SpUNet-v1m3); this importer maps Pointcept's SpUNet only "
        f"(first keys: {sorted(backbone)[:5]})")


def _conv_out_in(w: torch.Tensor, key: str, source: str) -> tuple[int, int]:
    if w.ndim != 5:
        raise CheckpointImportError(f"{source}: {key}: expected a spconv 2 weight (out, k, k, k, in), "
                                    f"got shape {tuple(w.shape)}")
    return int(w.shape[0]), int(w.shape[-1])


def infer_architecture(backbone: Mapping[str, torch.Tensor], variant: str, prefix: str, source: str) -> dict:
    """in_channels, stem_channels, channels, layers (and the PDNorm layout) from the tensor shapes."""
    def get(key):
        if key not in backbone:
            raise CheckpointImportError(f"{source}: missing key {prefix + key!r}, expected in a SpUNet-{variant} "
                                        "backbone")
        return backbone[key]

    stem_key = "conv_input.0.weight" if variant == "v1m1" else "conv_input.conv.weight"
    stem, in_ch = _conv_out_in(get(stem_key), prefix + stem_key, source)
    conv = "0" if variant == "v1m1" else "conv"
    stages = sorted({int(m.group(1)) for k in backbone if (m := re.match(r"^down\.(\d+)\.", k))})
    if stages != [0, 1, 2, 3]:
        raise CheckpointImportError(f"{source}: expected 4 encoder stages ({prefix}down.0..3), found {stages}")
    enc_ch = [_conv_out_in(get(f"down.{s}.{conv}.weight"), prefix + f"down.{s}.{conv}.weight", source)[0]
              for s in range(4)]
    dec_ch = [_conv_out_in(get(f"up.{s}.{conv}.weight"), prefix + f"up.{s}.{conv}.weight", source)[0]
              for s in (3, 2, 1, 0)]

    def blocks(kind, s):
        return len({int(m.group(1)) for k in backbone if (m := re.match(rf"^{kind}\.{s}\.block(\d+)\.", k))})

    layers = [blocks("enc", s) for s in range(4)] + [blocks("dec", s) for s in (3, 2, 1, 0)]
    arch = {"in_channels": in_ch, "stem_channels": stem, "channels": enc_ch + dec_ch, "layers": layers,
            "bn_eps": BN_EPS, "variant": f"SpUNet-{variant}", "pdnorm": None}
    if variant == "v1m3":
        bns = {int(m.group(1)) for k in backbone if (m := re.match(r"^conv_input\.bn\.bns\.(\d+)\.", k))}
        mod = backbone.get("conv_input.bn.modulation.1.weight")
        arch["pdnorm"] = {
            "decouple": bool(bns), "n_conditions": len(bns) if bns else None, "adaptive": mod is not None,
            "affine": "conv_input.bn.bns.0.weight" in backbone or "conv_input.bn.bn.weight" in backbone,
            "context_channels": int(mod.shape[1]) if mod is not None else None}
    return arch


def _spconv_version() -> str:
    try:
        from spconv import __version__ as v

        return str(getattr(v, "__version__", v))
    except Exception:  # pragma: no cover - version metadata only
        return "unknown"


@torch.no_grad()
def conv1x1_as_linear(weight: torch.Tensor) -> torch.Tensor:
    """The (out, in) matrix a 1x1 ``SubMConv3d`` with this weight applies, measured with the installed spconv.

    spconv 2.3 computes a 1x1 sparse conv as ``features @ weight.view(in, out)`` although the weight is
    stored (out, 1, 1, 1, in): not the transpose one would read off the shape. Measuring keeps the
    kept head equal to what Pointcept's model computes with the same spconv."""
    import spconv.pytorch as spconv

    out_ch, in_ch = int(weight.shape[0]), int(weight.shape[-1])
    conv = spconv.SubMConv3d(in_ch, out_ch, kernel_size=1, bias=False)
    conv.weight.copy_(weight.to(conv.weight.dtype))
    idx = torch.zeros(in_ch, 4, dtype=torch.int32)
    idx[:, 1] = torch.arange(in_ch, dtype=torch.int32)
    x = spconv.SparseConvTensor(torch.eye(in_ch), idx, [in_ch, 1, 1], 1)
    y = conv(x)
    order = y.indices[:, 1].long()
    m = torch.empty(in_ch, out_ch)
    m[order] = y.features
    return m.T.contiguous()


def parse_class_names(text: str | Sequence[str] | None) -> list[str] | None:
    """A comma list, a file (one name a line, or comma-separated), or a list; None stays None."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [str(t).strip() for t in text]
    from pathlib import Path

    p = Path(text)
    if p.is_file():
        raw = p.read_text()
        parts = raw.splitlines() if "\n" in raw.strip() else raw.split(",")
    else:
        parts = text.split(",")
    names = [s.strip() for s in parts if s.strip()]
    if not names:
        raise CheckpointImportError(f"--class-names {text!r}: no class names")
    return names


# ----------------------------------------------------------------------------- the import
@dataclass
class ImportOptions:
    format: str = "pointcept"
    condition: str | None = None                 # fold PDNorm under this dataset (plain backbone out)
    conditions: Sequence[str] | None = None      # the backbone's PDNorm condition order
    prompt_conditions: Sequence[str] | None = None  # the wrapper's embedding_table order
    class_names: Sequence[str] | None = None


@dataclass
class ImportResult:
    backbone: dict[str, torch.Tensor]            # our SpUNet(num_classes=0) state (plain, or PDNorm kept)
    architecture: dict                           # in/stem/channels/layers/bn_eps, pdnorm spec or None
    variant: str                                 # "v1m1" | "v1m3"
    wrapper: str                                 # what held the backbone
    mapped: dict[str, str]                       # checkpoint key -> our key
    heads: dict[str, dict]                       # kept extras (classifier / language head)
    dropped: dict[str, str]                      # checkpoint key -> the rule that drops it
    notes: list[str] = field(default_factory=list)


# non-backbone keys: (pattern, what it is, formats where it is expected)
_DROP_RULES = [
    (r"^proj_net\.", "PonderV2 dense 3D UNet projector (pre-training only)", ("ponderv2",)),
    (r"^renderer\.", "PonderV2 neural renderer: SDF field, NeuS (pre-training only)", ("ponderv2",)),
    (r"^mtoken$", "PonderV2 mask token (pre-training only)", ("ponderv2",)),
    (r"^(ppt_criteria|criteria)\.", "loss module state", ("pointcept", "ponderv2")),
]


def _wrapper_of(rest: Mapping[str, torch.Tensor], fmt: str) -> str:
    if any(k.startswith(("renderer.", "proj_net.")) for k in rest):
        return "PonderIndoor-v2"
    if any(k.startswith("seg_heads.") for k in rest):
        return "PPT-v1m2"
    if "class_embedding" in rest or "proj_head.weight" in rest:
        return "PPT-v1m1"
    if "embedding_table.weight" in rest:
        return "PPT (backbone_mode)"
    if "seg_head.weight" in rest:
        return "DefaultSegmentorV2"
    return "DefaultSegmentor"


def import_state(state: Mapping[str, torch.Tensor], opts: ImportOptions, source: str) -> ImportResult:
    """Map a Pointcept/PonderV2 model state (``module.`` already stripped) onto our SpUNet, strictly."""
    from pretrain3d.models.pdnorm import PDNormSpec, fold_condition
    from pretrain3d.models.spunet import SpUNet

    if opts.format not in FORMATS:
        raise CheckpointImportError(f"unknown format {opts.format!r}; expected one of {FORMATS}")
    prefix, bb, rest = _split_backbone(state)
    variant = detect_variant(bb, source)
    arch = infer_architecture(bb, variant, prefix, source)
    wrapper = _wrapper_of(rest, opts.format) if prefix else "backbone"
    if wrapper == "PonderIndoor-v2" and opts.format != "ponderv2":
        raise CheckpointImportError(f"{source}: keys 'renderer.*' / 'proj_net.*' are PonderV2's pre-training model; "
                                    "import it with --format ponderv2")
    heads: dict[str, dict] = {}
    dropped: dict[str, str] = {}
    notes: list[str] = []
    consumed: set[str] = set()

    # -- the classifier inside the backbone (DefaultSegmentor + SpUNet with num_classes > 0)
    if "final.weight" in bb:
        w = bb["final.weight"]
        if w.ndim != 5 or tuple(w.shape[1:4]) != (1, 1, 1):
            raise CheckpointImportError(f"{source}: {prefix}final.weight: expected a 1x1 conv (classes, 1, 1, 1, "
                                        f"{arch['channels'][-1]}), got {tuple(w.shape)}")
        b = bb.get("final.bias")
        if b is None or tuple(b.shape) != (w.shape[0],):
            raise CheckpointImportError(f"{source}: {prefix}final.bias: expected shape ({w.shape[0]},), got "
                                        f"{None if b is None else tuple(b.shape)}")
        heads["final_conv"] = {"conv_weight": w.clone(), "weight": conv1x1_as_linear(w), "bias": b.clone(),
                               "num_classes": int(w.shape[0]), "spconv": _spconv_version(),
                               "what": "SpUNet's final 1x1 SubMConv3d; weight/bias: the Linear it computes under "
                                       "this spconv (measured), logits = feat @ weight.T + bias"}
        consumed |= {"final.weight", "final.bias"}

    # -- PDNorm spec and the dataset prompts
    spec = None
    if variant == "v1m3":
        pd = arch["pdnorm"]
        table = rest.get("embedding_table.weight")
        n = pd["n_conditions"] or (int(table.shape[0]) if table is not None else None)
        if n is None:
            raise CheckpointImportError(f"{source}: a shared-BN, non-adaptive SpUNet-v1m3 without "
                                        "'embedding_table.weight' gives no condition count; pass --conditions")
        conditions = tuple(opts.conditions) if opts.conditions else (
            DEFAULT_BACKBONE_CONDITIONS if n == 3 else None)
        if conditions is None:
            raise CheckpointImportError(f"{source}: the backbone has {n} dataset conditions; give their order "
                                        "(the backbone config's `conditions`) with --conditions A,B,...")
        if len(conditions) != n:
            raise CheckpointImportError(f"{source}: {prefix}conv_input.bn.bns has {n} per-dataset BatchNorms, "
                                        f"expected {len(conditions)} for --conditions {list(conditions)}")
        ctx = pd["context_channels"] or (int(table.shape[1]) if table is not None else 256)
        spec = PDNormSpec(conditions=conditions, decouple=pd["decouple"], adaptive=pd["adaptive"],
                          affine=pd["affine"], context_channels=ctx)
        arch["pdnorm"] = spec.as_dict()
        arch["pdnorm"]["prompt_conditions"] = None
    model = SpUNet(in_channels=arch["in_channels"], num_classes=0, stem_channels=arch["stem_channels"],
                   channels=arch["channels"], layers=arch["layers"], bn_eps=BN_EPS, norm=spec)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    mapped: dict[str, str] = {}
    where: dict[str, str] = {}

    if spec is not None and spec.adaptive:
        key = "embedding_table.weight"
        if key not in rest:
            raise CheckpointImportError(f"{source}: missing key {key!r}: an adaptive SpUNet-v1m3 (modulation "
                                        "layers) needs the PPT wrapper's dataset prompts")
        table = rest[key]
        want = (len(spec.conditions), spec.context_channels)
        if tuple(table.shape) != want:
            raise CheckpointImportError(f"{source}: {key}: shape {tuple(table.shape)}, expected {want} "
                                        f"({len(spec.conditions)} conditions x context {spec.context_channels})")
        pconds = tuple(opts.prompt_conditions) if opts.prompt_conditions else (
            DEFAULT_PROMPT_CONDITIONS if len(spec.conditions) == 3 else tuple(spec.conditions))
        if sorted(pconds) != sorted(spec.conditions):
            raise CheckpointImportError(f"{source}: {key}: the wrapper's conditions {list(pconds)} (--prompt-conditions)"
                                        f" are not the backbone's {list(spec.conditions)} (--conditions)")
        order = [pconds.index(c) for c in spec.conditions]
        out["prompt.weight"] = table[order].clone()
        mapped[key] = f"prompt.weight (rows reordered {list(pconds)} -> {list(spec.conditions)})"
        arch["pdnorm"]["prompt_conditions"] = list(pconds)
        rest = {k: v for k, v in rest.items() if k != key}
    elif "embedding_table.weight" in rest:
        dropped["embedding_table.weight"] = ("dataset prompts of the wrapper, unused by this backbone "
                                             f"(SpUNet-{variant}{'' if spec is None else ' without modulation'})")
        rest = {k: v for k, v in rest.items() if k != "embedding_table.weight"}

    for k, v in bb.items():
        if k in consumed:
            continue
        ours = pointcept_to_our_key(k, variant)
        if ours is None or ours not in expected:
            raise CheckpointImportError(
                f"{source}: key {prefix + k!r} maps to no tensor of the backbone "
                + (f"(rule gives {ours!r}, not a key of SpUNet(in={arch['in_channels']}, stem={arch['stem_channels']}, "
                   f"channels={arch['channels']}, layers={arch['layers']}))" if ours else
                   f"(no SpUNet-{variant} rule matches it)"))
        if ours in out:
            raise CheckpointImportError(f"{source}: keys {where[ours]!r} and {prefix + k!r} both map to {ours!r}")
        if tuple(v.shape) != tuple(expected[ours].shape):
            raise CheckpointImportError(f"{source}: key {prefix + k!r}: shape {tuple(v.shape)}, expected "
                                        f"{tuple(expected[ours].shape)} (our {ours})")
        out[ours] = v.detach().clone().to(expected[ours].dtype)
        mapped[prefix + k] = ours
        where[ours] = prefix + k
    missing = [k for k in expected if k not in out]
    if missing:
        shown = [(our_to_pointcept_key(k, variant) if not k.startswith("prompt.") else "embedding_table.weight")
                 for k in missing[:6]]
        raise CheckpointImportError(
            f"{source}: {len(missing)} backbone tensor(s) missing: expected {[prefix + s for s in shown]}"
            f"{' ...' if len(missing) > 6 else ''} (shapes {[tuple(expected[k].shape) for k in missing[:6]]}) for "
            f"SpUNet-{variant}(in={arch['in_channels']}, stem={arch['stem_channels']}, channels={arch['channels']}, "
            f"layers={arch['layers']})")

    # -- the rest: heads kept, known pre-training parts dropped, anything else is an error
    _take_heads(rest, heads, arch, source, opts, spec)
    for k in list(rest):
        if any(k == h or k.startswith(h + ".") for h in _HEAD_KEYS):
            continue
        for pattern, what, formats in _DROP_RULES:
            if re.match(pattern, k):
                if opts.format not in formats:
                    raise CheckpointImportError(f"{source}: key {k!r} ({what}) is not expected in a "
                                                f"{opts.format} checkpoint; use --format {formats[0]}")
                dropped[k] = what
                break
        else:
            raise CheckpointImportError(
                f"{source}: key {k!r} (shape {tuple(rest[k].shape)}) maps nowhere: expected 'backbone.*' or a known "
                f"{wrapper} key (seg_head.*, embedding_table.weight, proj_head.*, class_embedding, logit_scale, "
                f"seg_heads.<i>.*{', proj_net.*, renderer.*, mtoken' if opts.format == 'ponderv2' else ''})")
    _check_class_names(heads, opts, source, spec)

    if opts.condition is not None:
        if spec is None:
            raise CheckpointImportError(f"{source}: --condition {opts.condition!r} given, but the backbone is "
                                        "SpUNet-v1m1 (plain BatchNorm): there is no dataset condition to fold")
        if opts.condition not in spec.conditions:
            raise CheckpointImportError(f"{source}: unknown condition {opts.condition!r}: expected one of "
                                        f"{list(spec.conditions)} (--conditions)")
        model.load_state_dict(out, strict=True)
        model.eval()
        folded = fold_condition(model, opts.condition)
        arch = dict(arch, pdnorm=None, folded_from=arch["pdnorm"], condition=opts.condition)
        notes.append(f"PDNorm folded under condition {opts.condition!r}: a plain SpUNet-v1m1 backbone")
        out = folded
    return ImportResult(backbone=out, architecture=arch, variant=variant, wrapper=wrapper, mapped=mapped,
                        heads=heads, dropped=dropped, notes=notes)


_HEAD_KEYS = ("seg_head", "proj_head", "class_embedding", "logit_scale", "seg_heads")


def _take_heads(rest, heads, arch, source, opts, spec) -> None:
    c = arch["channels"][-1]
    if "seg_head.weight" in rest:
        w, b = rest["seg_head.weight"], rest.get("seg_head.bias")
        if w.ndim != 2 or w.shape[1] != c or b is None or tuple(b.shape) != (w.shape[0],):
            raise CheckpointImportError(f"{source}: seg_head: expected Linear({c}, classes) weight (classes, {c}) and "
                                        f"bias (classes,), got {tuple(w.shape)} / {None if b is None else tuple(b.shape)}")
        heads["seg_head"] = {"weight": w.clone(), "bias": b.clone(), "num_classes": int(w.shape[0])}
    if "proj_head.weight" in rest or "class_embedding" in rest:
        lang = {}
        if "proj_head.weight" in rest:
            w, b = rest["proj_head.weight"], rest.get("proj_head.bias")
            if w.ndim != 2 or w.shape[1] != c or b is None:
                raise CheckpointImportError(f"{source}: proj_head.weight: expected (text_dim, {c}) with a bias, got "
                                            f"{tuple(w.shape)}")
            lang.update(proj_weight=w.clone(), proj_bias=b.clone())
        if "class_embedding" in rest:
            e = rest["class_embedding"]
            if e.ndim != 2 or ("proj_weight" in lang and e.shape[1] != lang["proj_weight"].shape[0]):
                raise CheckpointImportError(f"{source}: class_embedding: expected (classes, text_dim"
                                            f"{'=' + str(lang['proj_weight'].shape[0]) if 'proj_weight' in lang else ''})"
                                            f", got {tuple(e.shape)}")
            lang.update(class_embedding=e.clone(), num_classes=int(e.shape[0]))
        if "logit_scale" in rest:
            lang["logit_scale"] = rest["logit_scale"].clone()
        heads["language_head"] = lang
    elif "logit_scale" in rest:
        heads["language_head"] = {"logit_scale": rest["logit_scale"].clone()}
    idx = sorted({int(m.group(1)) for k in rest if (m := re.match(r"^seg_heads\.(\d+)\.", k))})
    if idx:
        hs = []
        for i in idx:
            w, b = rest.get(f"seg_heads.{i}.weight"), rest.get(f"seg_heads.{i}.bias")
            if w is None or b is None or w.ndim != 2 or w.shape[1] != c:
                raise CheckpointImportError(f"{source}: seg_heads.{i}: expected Linear({c}, classes) weight and bias")
            hs.append({"weight": w.clone(), "bias": b.clone(), "num_classes": int(w.shape[0])})
        pconds = (arch.get("pdnorm") or {}).get("prompt_conditions") or (
            list(opts.prompt_conditions) if opts.prompt_conditions else
            list(DEFAULT_PROMPT_CONDITIONS) if len(hs) == 3 else None)
        heads["seg_heads"] = {"heads": hs, "conditions": pconds}
    for name, h in heads.items():
        h["class_names"] = None


def _check_class_names(heads, opts, source, spec) -> None:
    names = list(opts.class_names) if opts.class_names else None
    if names is None:
        return
    n = len(names)
    if not heads:
        raise CheckpointImportError(f"{source}: --class-names given ({n} names) but the checkpoint has no "
                                    "classifier (no final conv, seg_head, seg_heads or class_embedding)")
    for name, h in heads.items():
        if name == "seg_heads":
            conds = h["conditions"]
            if opts.condition is None or not conds or opts.condition not in conds:
                counts = {(conds[i] if conds else i): x["num_classes"] for i, x in enumerate(h["heads"])}
                raise CheckpointImportError(f"{source}: seg_heads has one classifier per dataset {counts}: give "
                                            "--condition to choose the one --class-names describes")
            i = conds.index(opts.condition)
            if h["heads"][i]["num_classes"] != n:
                raise CheckpointImportError(f"{source}: seg_heads.{i}.weight ({opts.condition}) has "
                                            f"{h['heads'][i]['num_classes']} classes, --class-names gives {n}")
            h["heads"][i]["class_names"] = names
        elif "num_classes" in h:
            if h["num_classes"] != n:
                key = {"final_conv": "backbone.final.weight", "seg_head": "seg_head.weight",
                       "language_head": "class_embedding"}[name]
                raise CheckpointImportError(f"{source}: {key} has {h['num_classes']} rows (classes), --class-names "
                                            f"gives {n} names: expected {h['num_classes']}")
            h["class_names"] = names
