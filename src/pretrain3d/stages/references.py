"""log-references stage: validate the paper numbers, log them as MLflow reference runs, write a JSON table.

The JSON (results/references.json) holds only the validated entries, so it is the same whatever
the MLflow store contains; the report reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pretrain3d.atomic import write_json
from pretrain3d.config import Params
from pretrain3d.tracking.references import load_references, log_reference_runs

log = logging.getLogger(__name__)


def log_references(cfg: Params, out: str | Path, references: str | Path | None = None) -> dict:
    refs = load_references(references)
    table = {"version": refs.version, "references": [refs.record(r) for r in refs.references]}
    if cfg.tracking.enabled:
        counts = log_reference_runs(refs, cfg.tracking)
        log.info("MLflow reference runs: %(created)d created, %(unchanged)d unchanged, %(deleted)d deleted", counts)
    else:
        log.info("tracking disabled: no MLflow reference runs logged")
    write_json(out, table)
    log.info("%d paper references -> %s", len(table["references"]), out)
    return table
