"""Real-data check stage: a short run of a method on the real RGB-D fixture (data.sevenscenes.root),
with its figure (PNG) and losses (JSON) for the report. Which function runs is the method's
``real_check`` in methods.registry; a missing fixture is the function's recorded skip."""

from __future__ import annotations

from pathlib import Path

from pretrain3d.config import Params
from pretrain3d.methods import registry


def real_check(cfg: Params, method: str, out_dir: str | Path, steps: int | None = None, progress: bool = False,
               root: str | Path | None = None) -> dict:
    spec = registry.spec(method)
    if not spec.real_check:
        with_check = [n for n, s in registry.REGISTRY.items() if s.real_check]
        raise ValueError(f"method {method!r} has no real-data check (methods with one: {', '.join(with_check)})")
    return registry.resolve(spec.real_check)(cfg, out_dir, steps=steps, progress=progress, root=root)
