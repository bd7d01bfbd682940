"""What a run must record to be reproducible: code version, config and data identity, software."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any


def _git(*args: str, cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(cwd: str | Path | None = None) -> dict[str, str]:
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    # Untracked files count as dirty only if git would show them (i.e. not ignored).
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=cwd) or ""
    return {"git_commit": commit, "git_dirty": str(bool(status)).lower()}


def data_hash(processed_root: str | Path) -> str:
    """The processed dataset's content hash, recorded by preprocessing in manifest.json."""
    manifest = Path(processed_root) / "manifest.json"
    try:
        return str(json.loads(manifest.read_text())["data_hash"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def software_versions() -> dict[str, str]:
    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
        "platform": platform.platform(),
    }
    try:
        import spconv

        out["spconv"] = getattr(spconv, "__version__", "unknown")
    except ImportError:
        out["spconv"] = "missing"
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def provenance_tags(cfg_hash: str, processed_root: str | Path, extra: dict[str, Any] | None = None) -> dict[str, str]:
    tags = {**git_info(), "config_hash": cfg_hash, "data_hash": data_hash(processed_root)}
    tags.update({f"env.{k}": v for k, v in software_versions().items()})
    if extra:
        tags.update({k: str(v) for k, v in extra.items()})
    return tags
