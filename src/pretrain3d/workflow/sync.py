"""Keep the two front ends in step: the resolved config file, and DVC's lock after a Snakemake run.

After a successful Snakemake run that DVC did not start, every DVC stage whose outputs are all among
the outputs of that run's DAG (so Snakemake has just made them up to date with their current
inputs, code and params) is recorded with ``dvc commit``: its lock entry then hashes exactly what
is on disk, and ``dvc status`` / ``dvc repro`` cost hashing, not training. Stages outside the run
are left alone (DVC still tells whether they changed). Nothing is recorded when dvc.yaml is not
what ``pretrain3d dvc-yaml`` makes of params.yaml: DVC would then describe another graph.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pretrain3d.atomic import write_text
from pretrain3d.config import Params

log = logging.getLogger(__name__)

DVC_YAML = "dvc.yaml"


def write_resolved_config(path: str | Path, text: str) -> None:
    """Content-addressed, so an existing file already holds exactly this text; written atomically."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def dvc_yaml_is_current(params_file: str | Path = "params.yaml", dvc_yaml: str | Path = DVC_YAML,
                        params: Params | None = None) -> bool:
    """Whether dvc.yaml is what `pretrain3d dvc-yaml` makes of params_file (``params``: it, loaded)."""
    from pretrain3d.config import load_config
    from pretrain3d.workflow.dvc_yaml import generate

    dvc_yaml = Path(dvc_yaml)
    if not dvc_yaml.is_file():
        return False
    return dvc_yaml.read_text() == generate(params or load_config(params_file), params_file)


def _say(msg: str) -> None:
    print(f"[pretrain3d] {msg}", file=sys.stderr)


def _made(path: str, done: set[str]) -> bool:
    """``path`` is an output of the run or inside one (a folder tracked by its digest file)."""
    return path in done or any(path.startswith(d + os.sep) for d in done)


def record_dvc_stages(cfg: Params, done_files: set[str], root: str | Path = ".") -> list[str]:
    """``dvc commit`` the DVC stages whose outputs are all in ``done_files``; returns their names."""
    root = Path(root)
    if os.environ.get("DVC_STAGE") or not (root / ".dvc").is_dir() or not (root / DVC_YAML).is_file():
        return []
    if os.environ.get("PRETRAIN3D_NO_DVC_RECORD"):
        return []
    from pretrain3d.config import config_hash, load_config

    done = {os.path.normpath(f) for f in done_files}
    try:
        file_cfg = load_config(root / "params.yaml")
        current = dvc_yaml_is_current(root / "params.yaml", root / DVC_YAML, params=file_cfg)
    except Exception as err:  # a broken params.yaml was already reported by Snakemake's own parse
        _say(f"DVC lock not updated: cannot compare dvc.yaml with params.yaml ({err})")
        return []
    if current and config_hash(file_cfg) != config_hash(cfg):
        _say("DVC lock not updated: this run's config is not params.yaml's (overlays or --config); "
             "DVC versions the params.yaml graph only")
        return []
    if not current:
        _say("DVC lock not updated: dvc.yaml is not what `pretrain3d dvc-yaml` makes of params.yaml "
             "(run it, or run with --configfile overlays only under Snakemake)")
        return []
    from dvc.repo import Repo

    recorded = []
    with Repo(str(root)) as repo, repo.lock:
        stages = [s for s in repo.index.stages
                  if s.outs and all(_made(os.path.normpath(str(o.def_path)), done) for o in s.outs)]
        # What `dvc commit -f <stage>` does, for all stages in one pass with one write of dvc.lock:
        # a commit per stage re-reads the index and rewrites the lock each time (176 s for the 52
        # stages of the README run, against 11 s in one pass).
        # relink=False: the workspace files stay as Snakemake wrote them. Relinking re-copies them
        # from the cache with new modification times, in DVC's order, and Snakemake then sees
        # inputs newer than outputs and wants to rerun (measured on the README run).
        for stage in stages:
            stage.save()
            stage.commit(relink=False)
            recorded.append(stage.addressing)
        if stages:
            stages[0].dvcfile.dump_stages(stages, update_pipeline=False)
    if recorded:
        _say(f"recorded {len(recorded)} DVC stage(s) in dvc.lock (dvc status / dvc repro now agree with this run)")
    return recorded
