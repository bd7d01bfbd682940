"""The source files a pipeline stage runs: the import closure of its entry module inside pretrain3d.

Both front ends use this list (Snakemake as rule inputs, DVC as stage deps), so editing a file a
stage imports reruns that stage in either tool, and editing one it does not import reruns nothing.
Imports are read statically (ast), including the lazy ones inside functions, so a file is a
dependency as soon as any code path of the stage can import it: over-approximate rather than miss.
Data files of the package that a stage reads (paper_references.yaml) are declared by the step.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "pretrain3d"
SRC = Path(__file__).resolve().parents[2]  # .../src


def _module_file(module: str, src: Path) -> Path | None:
    parts = module.split(".")
    base = src.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@lru_cache(maxsize=None)
def _imports(path: Path, module: str) -> frozenset[str]:
    """Fully qualified pretrain3d modules that ``path`` (the file of ``module``) imports anywhere.

    Cached: the steps' closures share most files, and a dry run asks for a dozen closures (each file is
    parsed once, not once per closure that contains it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            # `from pretrain3d.x import y` may name a submodule y
            found.update(f"{target}.{a.name}" for a in node.names)
    return frozenset(found)


@lru_cache(maxsize=None)
def import_closure(entry: str, src: Path = SRC) -> tuple[str, ...]:
    """Sorted repo-relative paths (``src/pretrain3d/...``) of every package file ``entry`` can import.

    Parent packages' ``__init__.py`` are included: importing ``a.b.c`` runs ``a/__init__`` and
    ``a/b/__init__`` first.
    """
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod, src)
        if path is None:
            continue  # a name imported from a module, not a module
        seen[mod] = path
        parts = mod.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(path, mod))
    root = src.parent
    return tuple(sorted(str(p.relative_to(root)) for p in seen.values()))
