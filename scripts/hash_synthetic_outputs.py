"""Hash every file the pipeline writes for the embedded dataset, per generator domain.

Generates each domain's dataset with the project's default config into a temporary folder, then
preprocesses it, through the pipeline's own stage functions (``stages.data.generate`` /
``preprocess``, tracking off), and prints a JSON manifest ``{relative path: sha256}`` of every file
written. Two checkouts whose manifests are equal write the same bytes, so a refactoring of the
generator or of preprocessing can be shown to change nothing::

    PYTHONPATH=src python scripts/hash_synthetic_outputs.py --out before.json      # on main
    PYTHONPATH=src python scripts/hash_synthetic_outputs.py --out after.json       # on the branch
    cmp before.json after.json

The domains' configs: ``scannet`` is ``data`` of params.yaml; ``s3dis`` and ``structured3d`` are the
``multi_dataset.datasets`` entries of that domain (what the PPT stages generate), or, where there
is none, ``data`` with ``data.synthetic.domain`` and ``data.num_classes`` switched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import pretrain3d
from pretrain3d.config import load_config
from pretrain3d.data.labels import SYNTHETIC_DOMAINS, label_space
from pretrain3d.stages.data import generate, preprocess

REPO = Path(__file__).resolve().parents[1]


def domain_config(cfg, domain: str):
    """The default ``data`` section of ``domain`` (see the module docstring)."""
    if cfg.data.dataset == "synthetic" and cfg.data.synthetic.domain == domain:
        return cfg.data
    for data in cfg.multi_dataset.datasets.values():
        if data.dataset == "synthetic" and data.synthetic.domain == domain:
            return data
    synthetic = cfg.data.synthetic.model_copy(update={"domain": domain})
    return cfg.data.model_copy(update={"dataset": "synthetic", "synthetic": synthetic,
                                       "num_classes": label_space(domain).num_classes})


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path, prefix: str) -> dict[str, str]:
    return {f"{prefix}/{p.relative_to(root).as_posix()}": sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def hash_domain(cfg, domain: str, tmp: Path) -> dict[str, str]:
    data = domain_config(cfg, domain)
    data = data.model_copy(update={"raw_root": str(tmp / domain / "raw"),
                                   "processed_root": str(tmp / domain / "processed")})
    sub = cfg.model_copy(update={"data": data, "tracking": cfg.tracking.model_copy(update={"enabled": False})})
    generate(sub)
    preprocess(sub)
    return {**hash_tree(tmp / domain / "raw", f"{domain}/raw"),
            **hash_tree(tmp / domain / "processed", f"{domain}/processed")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=[str(REPO / "params.yaml")], help="params.yaml and overlays")
    ap.add_argument("--domains", nargs="+", default=list(SYNTHETIC_DOMAINS), choices=SYNTHETIC_DOMAINS)
    ap.add_argument("--out", help="write the manifest here (JSON) as well as to stdout")
    ap.add_argument("--workers", type=int, help="override data.workers (outputs do not depend on it)")
    args = ap.parse_args(argv)

    cfg = load_config(*args.config)
    if args.workers is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"workers": args.workers})})
        datasets = {k: v.model_copy(update={"workers": args.workers}) for k, v in cfg.multi_dataset.datasets.items()}
        cfg = cfg.model_copy(update={"multi_dataset": cfg.multi_dataset.model_copy(update={"datasets": datasets})})
    print(f"pretrain3d from {Path(pretrain3d.__file__).parent}", file=sys.stderr)
    manifest: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="synth-hash-") as tmp:
        for domain in args.domains:
            t0 = time.perf_counter()
            files = hash_domain(cfg, domain, Path(tmp))
            manifest.update(files)
            print(f"{domain}: {len(files)} files ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
