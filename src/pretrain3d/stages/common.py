"""What every stage shares: config loading, logging, run naming, provenance tags."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pretrain3d.config import Params, config_hash, flatten, load_config
from pretrain3d.tracking.provenance import provenance_tags


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load(paths: list[str] | None) -> Params:
    return load_config(*(paths or ["params.yaml"]))


def job_tags(cfg: Params, job: str, **extra) -> dict[str, str]:
    tags = provenance_tags(config_hash(cfg), cfg.data.processed_root, {"job": job, **extra})
    tags["pipeline_key"] = f"{tags['config_hash']}-{tags['git_commit'][:12]}"
    return tags


def job_params(cfg: Params) -> dict:
    return flatten(cfg.model_dump(mode="json"))


def repo_root() -> Path:
    return Path.cwd()
