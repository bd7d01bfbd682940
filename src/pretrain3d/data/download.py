"""Fetch raw data: resumable, checksum-verified HTTP downloads, safe archive extraction, user scripts.

Nothing here reads the config; `pretrain3d.stages.download` decides what to fetch and where.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

from pretrain3d.errors import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "pretrain3d-download/1"
# Errors after which a reconnect with a Range request can continue where the transfer stopped.
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- HTTP
def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: append to ``part`` from its current size (or restart it if the server can't resume)."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Nothing left to send: the previous run stopped after the last byte but before the rename.
            return
        raise
    with resp:
        mode = "ab"
        if offset and (resp.status != 206 or _content_range_start(resp.headers.get("Content-Range")) != offset):
            log.info("%s: server did not resume at byte %d; downloading from the start", url, offset)
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                         desc=part.name[:-len(".part")], disable=not progress, leave=False,
                                         # a log file (not a terminal) gets an update every 30 s, not 1 s
                                         mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            # urllib returns a short body without raising when the peer closes early.
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download(url: str, dest: str | Path, sha256: str, *, retries: int = 3, timeout: float = 60.0,
             progress: bool = True, backoff: float = 2.0) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is there already.

    Bytes go to ``<dest>.part`` first; an interrupted transfer (a dropped connection here, or a
    killed earlier run) continues from its size with an HTTP Range request. The file is renamed to
    ``dest`` only once its sha256 matches; a mismatching file is kept aside as
    ``<dest>.sha256-mismatch`` so that a rerun downloads afresh.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = sha256.lower()
    if dest.exists():
        if sha256_file(dest) == sha256:
            log.info("%s: already downloaded and verified", dest)
            return dest
        log.warning("%s: cached copy does not match its sha256; downloading again", dest)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    attempt, had = 0, -1
    while True:
        try:
            _transfer(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as err:
            # 4xx will not change on a retry; 5xx and 429 (rate limit) may.
            if (err.code < 500 and err.code != 429) or attempt >= retries:
                raise DataError(dest, f"downloading {url} failed: HTTP {err.code} {err.reason}",
                                "check the URL in data.download.urls" if err.code < 500 else "rerun later") from None
            attempt += 1
            log.warning("%s: HTTP %d; retry %d/%d", url, err.code, attempt, retries)
            time.sleep(backoff * attempt)
        except _TRANSIENT as err:
            have = part.stat().st_size if part.exists() else 0
            # `retries` bounds failures in a row: a connection that made progress before dropping resets the count.
            attempt = 1 if have > had else attempt + 1
            had = have
            if attempt > retries:
                raise DataError(part, f"downloading {url} failed after {attempt} attempt(s): {err}",
                                f"{have} bytes are kept; rerun to resume from there") from None
            log.warning("%s: %s; resuming from byte %d (retry %d/%d)", url, err, have, attempt, retries)
            time.sleep(backoff * attempt)
    got = sha256_file(part)
    if got != sha256:
        aside = dest.with_name(dest.name + ".sha256-mismatch")
        os.replace(part, aside)
        raise DataError(aside, f"sha256 of {url} is {got}, expected {sha256}",
                        "the file was moved aside; check the URL and checksum in data.download.urls, then rerun")
    os.replace(part, dest)
    log.info("%s: downloaded and verified (sha256 %s)", dest, sha256[:12])
    return dest


# ----------------------------------------------------------------------------- archives
def _unsafe_name(name: str) -> str | None:
    """Why a member name would write outside the extraction folder, or None if it stays inside."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return "is an absolute path"
    if ".." in n.split("/"):
        return "contains '..'"
    return None


def _link_escapes(member_name: str, target: str, relative_to_member: bool) -> bool:
    t = target.replace("\\", "/")
    if t.startswith("/") or re.match(r"^[A-Za-z]:", t):
        return True
    base = posixpath.dirname(member_name.replace("\\", "/")) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, t))
    return resolved == ".." or resolved.startswith("../")


def check_tar_members(archive: str | Path, members: Iterable[tarfile.TarInfo]) -> None:
    """Refuse names and links that leave the extraction folder, and device files, before writing anything."""
    for m in members:
        why = _unsafe_name(m.name)
        if why is None and m.issym() and _link_escapes(m.name, m.linkname, relative_to_member=True):
            why = f"is a symlink pointing outside the archive ({m.linkname!r})"
        if why is None and m.islnk() and (_unsafe_name(m.linkname) or _link_escapes(m.name, m.linkname, False)):
            why = f"is a hard link pointing outside the archive ({m.linkname!r})"
        if why is None and (m.ischr() or m.isblk() or m.isfifo()):
            why = "is a device or FIFO"
        if why:
            raise DataError(archive, f"refusing to extract member {m.name!r}: it {why}",
                            "the archive may be malicious or corrupt")


def _zip_symlink_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    if stat.S_ISLNK(info.external_attr >> 16):
        return zf.read(info).decode("utf-8", "replace")
    return None


def check_zip_members(archive: str | Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        why = _unsafe_name(info.filename)
        target = _zip_symlink_target(zf, info) if why is None else None
        if target is not None and _link_escapes(info.filename, target, relative_to_member=True):
            why = f"is a symlink pointing outside the archive ({target!r})"
        if why:
            raise DataError(archive, f"refusing to extract member {info.filename!r}: it {why}",
                            "the archive may be malicious or corrupt")


def extract_archive(archive: str | Path, out_dir: str | Path) -> list[str]:
    """Extract a tar (any compression) or zip archive into ``out_dir``; returns the member names.

    Members named with '..' or an absolute path, links pointing outside and device files are
    refused (DataError naming the archive and the member). For tar files, Python's 'data' filter
    then repeats the check against real paths during extraction (it also catches a member
    written through a symlink extracted earlier).
    """
    archive, out_dir = Path(archive), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            check_zip_members(archive, zf)
            zf.extractall(out_dir)
            return zf.namelist()
    try:
        tf = tarfile.open(archive)  # detects gzip/bz2/xz itself
    except tarfile.TarError as err:
        raise DataError(archive, f"not a tar or zip archive ({err})",
                        "set `extract: false` for this URL to copy it as is") from None
    with tf:
        members = tf.getmembers()
        check_tar_members(archive, members)

        def _filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
            try:
                return tarfile.data_filter(member, path)
            except tarfile.FilterError as err:
                raise DataError(archive, f"refusing to extract member {member.name!r}: {err}",
                                "the archive may be malicious or corrupt") from None

        if hasattr(tarfile, "data_filter"):
            tf.extractall(out_dir, filter=_filter)
        else:
            _extract_checking_real_paths(archive, tf, members, out_dir)
        return [m.name for m in members]


def _extract_checking_real_paths(archive: Path, tf: tarfile.TarFile, members: list, out_dir: Path) -> None:
    """What the 'data' filter checks, for Pythons without it (3.11 before 3.11.4: Debian 12 ships 3.11.2):
    member by member, the real path it is written to (and a link's real target) must stay inside
    ``out_dir`` given everything extracted before it; no set-uid/set-gid/sticky or group/other write bits."""
    root = os.path.realpath(out_dir)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    for m in members:
        dest = os.path.join(root, m.name)
        why = None
        if not inside(os.path.dirname(dest)) or (not m.issym() and not inside(dest)):
            why = "would be written outside the folder (through a link extracted before it)"
        elif m.issym() and not inside(os.path.join(os.path.dirname(dest), m.linkname)):
            why = f"is a symlink whose target {m.linkname!r} resolves outside the folder"
        elif m.islnk() and not inside(os.path.join(root, m.linkname)):
            why = f"is a hard link to {m.linkname!r}, outside the folder"
        if why:
            raise DataError(archive, f"refusing to extract member {m.name!r}: it {why}",
                            "the archive may be malicious or corrupt")
        if m.isfile() or m.isdir():
            m.mode &= 0o755
        tf.extract(m, root, set_attrs=not m.issym())


# ----------------------------------------------------------------------------- user script
def run_script(script: str | Path, args: Sequence[str], out_dir: str | Path, stdin: str | None = None) -> None:
    """Run a user-supplied download script (``python <script> <args>``; ``{out}`` in args → out_dir)."""
    script, out_dir = Path(script), Path(out_dir)
    if not script.is_file():
        raise DataError(script, "download script not found",
                        "ScanNet's terms of use require each user to request its download script from the "
                        "dataset authors; put your copy there or fix data.download.script")
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(script), *(a.replace("{out}", str(out_dir)) for a in args)]
    log.info("running %s", " ".join(argv))
    proc = subprocess.run(argv, input=stdin, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DataError(script, f"download script exited with status {proc.returncode}",
                        f"files it wrote so far are kept in {out_dir}; fix the cause and rerun")


# ----------------------------------------------------------------------------- assembling raw_root
def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Place a file or tree at ``dst`` by hard links (no extra space) or, across file systems, copies."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def _one(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_one, symlinks=True, dirs_exist_ok=True)
    else:
        _one(str(src), str(dst))


def file_manifest(root: str | Path, exclude: Sequence[str] = ()) -> dict[str, dict]:
    """{relative path: {sha256, size}} of every regular file under ``root`` (symlinks listed by target)."""
    root = Path(root)
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if rel in exclude:
                continue
            if p.is_symlink():
                out[rel] = {"symlink": os.readlink(p)}
            else:
                out[rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out
