"""Download stage: build data.raw_root from data.download (URLs with sha256, and/or a user script).

With no data.download configured the raw root is the user's (or `generate`'s) and is only checked.
Otherwise every source is fetched into data.download.cache_dir (kept across failures, so reruns
resume), then raw_root is assembled in a temporary folder — script output, extracted archives,
plain files — with ``download_manifest.json`` (sha256 of every file) written last, and renamed
into place. The manifest is the completion marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pretrain3d.atomic import atomic_dir, write_json
from pretrain3d.config import Params
from pretrain3d.data.download import download, extract_archive, file_manifest, link_or_copy, run_script, sha256_file
from pretrain3d.errors import DataError
from pretrain3d.stages.common import job_params, job_tags
from pretrain3d.tracking.mlflow_runs import job_run

log = logging.getLogger(__name__)

MANIFEST = "download_manifest.json"
SCRIPT_OUTPUT = "script-output"  # under cache_dir: the script may skip files it already has on a rerun


def sources_key(cfg: Params) -> str:
    """Identity of what raw_root is built from (not how: cache_dir, retries and timeout are left out)."""
    dl = cfg.data.download
    script = dl.script
    ident = {
        "urls": [u.model_dump(mode="json") for u in dl.urls],
        "script": None if script is None else {
            "sha256": sha256_file(script) if Path(script).is_file() else None, "args": dl.script_args},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _manifest_key(raw_root: Path) -> str | None:
    try:
        return json.loads((raw_root / MANIFEST).read_text())["sources_key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def download_raw(cfg: Params, progress: bool = True) -> Path:
    dl = cfg.data.download
    raw = Path(cfg.data.raw_root)
    if not dl.enabled:
        if raw.is_dir() and any(raw.iterdir()):
            log.info("%s: raw data provided by the user; data.download configures nothing to fetch", raw)
            return raw
        hint = ("run `pretrain3d generate` first" if cfg.data.dataset == "synthetic"
                else "put the raw data there, or configure data.download (urls with sha256, or your own script)")
        raise DataError(raw, "raw data folder is missing or empty and data.download configures no source", hint)

    key = sources_key(cfg)
    if raw.exists():
        have = _manifest_key(raw)
        if have == key:
            log.info("%s: already complete (%s matches the configured sources)", raw, MANIFEST)
            return raw
        if have is None and any(raw.iterdir()):
            # Never replace data this stage did not make (Snakemake removes its own outputs before a rerun).
            raise DataError(raw, f"exists without {MANIFEST}, so it was not made by `pretrain3d download`",
                            "move it away or point data.raw_root elsewhere")

    cache = Path(dl.cache_dir)
    files = [download(u.url, cache / u.name, u.sha256, retries=dl.retries, timeout=dl.timeout, progress=progress)
             for u in dl.urls]
    script_out = None
    if dl.script is not None:
        script_out = cache / SCRIPT_OUTPUT
        run_script(dl.script, dl.script_args, script_out, dl.script_stdin)

    with atomic_dir(raw) as tmp:
        if script_out is not None:
            link_or_copy(script_out, tmp)
        for u, f in zip(dl.urls, files):
            target = tmp / u.dest if u.dest else tmp
            if u.extract:
                names = extract_archive(f, target)
                log.info("%s: extracted %d members into %s", f.name, len(names), raw / u.dest)
            else:
                link_or_copy(f, target / u.name)
        manifest = {
            "sources_key": key,
            "urls": [{"url": u.url, "sha256": u.sha256, "file": u.name, "extract": u.extract, "dest": u.dest}
                     for u in dl.urls],
            "script": None if dl.script is None else {"path": dl.script, "args": dl.script_args},
            "files": file_manifest(tmp),
        }
        write_json(tmp / MANIFEST, manifest)
    n = len(manifest["files"])
    size = sum(v.get("size", 0) for v in manifest["files"].values())
    log.info("%s: complete, %d files, %.1f MB (manifest: %s)", raw, n, size / 1e6, raw / MANIFEST)

    with job_run(cfg.tracking, "data/download", job_tags(cfg, "download", sources_key=key[:12]), job_params(cfg)) as run:
        run.log_metrics({"download/files": n, "download/bytes": size})
        run.log_artifact(raw / MANIFEST)
    return raw
