"""Download stage: resumable, verified HTTP downloads (local server), safe extraction, user scripts."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from pretrain3d.cli import main
from pretrain3d.config import validate_config
from pretrain3d.data.download import download, extract_archive
from pretrain3d.errors import ConfigError, DataError
from pretrain3d.stages.download import MANIFEST, download_raw


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """http.server on 127.0.0.1 serving in-memory files with Range support and scripted failures."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_once: set[str] = set()  # first GET sends half the body, then drops the connection
        self.ignore_range = False
        self.fail_once: dict[str, int] = {}  # path -> HTTP status answered once
        self.requests: list[tuple[str, str | None]] = []
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                state.requests.append((self.path, rng))
                data = state.files.get(self.path)
                if self.path in state.fail_once:
                    self.send_error(state.fail_once.pop(self.path))
                    return
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not state.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in state.truncate_once:
                    state.truncate_once.discard(self.path)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


PAYLOAD = os.urandom(200_000)


# ----------------------------------------------------------------------------- HTTP
def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.truncate_once.add("/a.bin")
    out = download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), retries=2, backoff=0, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", None), ("/a.bin", f"bytes={len(PAYLOAD) // 2}-")]
    assert not (tmp_path / "a.bin.part").exists()


def test_part_file_from_an_interrupted_run_is_resumed(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.truncate_once.add("/a.bin")
    with pytest.raises(DataError) as e:  # no retries: the run stops, the half file stays
        download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), retries=0, backoff=0, progress=False)
    assert server.url("/a.bin") in str(e.value) and "a.bin.part" in str(e.value) and "resume" in str(e.value)
    assert (tmp_path / "a.bin.part").stat().st_size == len(PAYLOAD) // 2
    download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), retries=0, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/a.bin", f"bytes={len(PAYLOAD) // 2}-")
    # already verified: a rerun sends no request
    n = len(server.requests)
    download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), progress=False)
    assert len(server.requests) == n


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_a_body(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)  # killed between the last byte and the rename
    download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_moves_the_file_aside_and_names_url_and_file(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    wrong = sha(b"something else")
    with pytest.raises(DataError) as e:
        download(server.url("/a.bin"), tmp_path / "a.bin", wrong, progress=False)
    msg = str(e.value)
    assert server.url("/a.bin") in msg and "a.bin.sha256-mismatch" in msg and wrong in msg and sha(PAYLOAD) in msg
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()
    assert (tmp_path / "a.bin.sha256-mismatch").read_bytes() == PAYLOAD


def test_http_errors_name_the_url_and_server_errors_are_retried(server, tmp_path):
    with pytest.raises(DataError, match=r"/missing\.bin failed: HTTP 404"):
        download(server.url("/missing.bin"), tmp_path / "m.bin", sha(b""), progress=False)
    assert len(server.requests) == 1  # a 404 is not retried
    server.files["/a.bin"] = PAYLOAD
    server.fail_once["/a.bin"] = 503
    download(server.url("/a.bin"), tmp_path / "a.bin", sha(PAYLOAD), retries=1, backoff=0, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


# ----------------------------------------------------------------------------- archives
def _tar(path: Path, members: list[tuple[str, str, object]], mode: str = "w") -> Path:
    """members: (name, kind, payload) with kind file (bytes) | sym | hard (link target)."""
    with tarfile.open(path, mode) as tf:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                ti.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                ti.linkname = payload
                tf.addfile(ti)
    return path


@pytest.mark.parametrize("name,kind,payload", [
    ("../evil.txt", "file", b"x"),
    ("ok/../../evil.txt", "file", b"x"),
    ("/tmp/pretrain3d-evil.txt", "file", b"x"),
    ("link", "sym", "../../etc"),
    ("link", "sym", "/etc/passwd"),
    ("hard", "hard", "../outside.txt"),
])
def test_tar_members_leaving_the_folder_are_refused(tmp_path, name, kind, payload):
    arc = _tar(tmp_path / "bad.tar.gz", [("fine.txt", "file", b"ok"), (name, kind, payload)], "w:gz")
    out = tmp_path / "a" / "b"
    with pytest.raises(DataError) as e:
        extract_archive(arc, out)
    assert str(arc) in str(e.value) and repr(name) in str(e.value)
    assert not (tmp_path / "a" / "evil.txt").exists() and not Path("/tmp/pretrain3d-evil.txt").exists()
    assert not (out / "fine.txt").exists()  # checked before anything is written


def test_tar_link_escaping_through_an_earlier_link_is_refused(tmp_path):
    # lexically inside ("a/.." = "."), really outside because "a" is a link to the folder itself
    arc = _tar(tmp_path / "chain.tar", [("a", "sym", "."), ("b", "sym", "a/.."), ("b/evil.txt", "file", b"x")])
    with pytest.raises(DataError) as e:
        extract_archive(arc, tmp_path / "out")
    assert str(arc) in str(e.value) and "'b'" in str(e.value)
    assert not (tmp_path / "evil.txt").exists()


def test_without_pythons_data_filter_the_same_archives_are_refused_and_kept(tmp_path, monkeypatch):
    """Python 3.11 before 3.11.4 (Debian 12's 3.11.2) has no tarfile.data_filter: the fallback checks
    real paths member by member (found running the test command in a clean Debian 12 chroot)."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    arc = _tar(tmp_path / "chain.tar", [("a", "sym", "."), ("b", "sym", "a/.."), ("b/evil.txt", "file", b"x")])
    with pytest.raises(DataError) as e:
        extract_archive(arc, tmp_path / "out")
    assert str(arc) in str(e.value) and "'b'" in str(e.value)
    assert not (tmp_path / "evil.txt").exists()
    good = _tar(tmp_path / "good.tgz", [("scans/s0/a.txt", "file", b"a"), ("scans/s0/l", "sym", "a.txt")], "w:gz")
    assert "scans/s0/a.txt" in extract_archive(good, tmp_path / "t")
    assert (tmp_path / "t/scans/s0/a.txt").read_bytes() == b"a" and os.readlink(tmp_path / "t/scans/s0/l") == "a.txt"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "C:/evil.txt"])
def test_zip_members_leaving_the_folder_are_refused(tmp_path, name):
    arc = tmp_path / "bad.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("fine.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "x")
    with pytest.raises(DataError) as e:
        extract_archive(arc, tmp_path / "out")
    assert str(arc) in str(e.value) and repr(name) in str(e.value)


def test_zip_symlink_pointing_outside_is_refused(tmp_path):
    arc = tmp_path / "link.zip"
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(DataError, match="symlink pointing outside"):
        extract_archive(arc, tmp_path / "out")


def test_good_archives_extract(tmp_path):
    arc = _tar(tmp_path / "good.tgz", [("scans/s0/a.txt", "file", b"a"), ("scans/s0/l", "sym", "a.txt")], "w:gz")
    names = extract_archive(arc, tmp_path / "t")
    assert (tmp_path / "t/scans/s0/a.txt").read_bytes() == b"a" and os.readlink(tmp_path / "t/scans/s0/l") == "a.txt"
    assert "scans/s0/a.txt" in names
    z = tmp_path / "good.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("dir/b.txt", "b")
    extract_archive(z, tmp_path / "z")
    assert (tmp_path / "z/dir/b.txt").read_text() == "b"
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a tar or zip archive"):
        extract_archive(plain, tmp_path / "p")


# ----------------------------------------------------------------------------- the stage
def _cfg(tmp_path, download: dict, dataset: str = "scannet_like"):
    return validate_config({
        "data": {"dataset": dataset, "raw_root": str(tmp_path / "raw"),
                 "download": {"cache_dir": str(tmp_path / "cache"), **download}},
        "tracking": {"enabled": False},
    })


def _tgz_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_stage_downloads_extracts_and_writes_a_manifest(server, tmp_path):
    scans = _tgz_bytes({"scans/s0/s0_vh_clean_2.ply": b"ply", "splits/train.txt": b"s0\n"})
    server.files["/scans.tar.gz"] = scans
    server.files["/labels.tsv"] = b"id\tname\n"
    cfg = _cfg(tmp_path, {"urls": [
        {"url": server.url("/scans.tar.gz"), "sha256": sha(scans)},
        {"url": server.url("/labels.tsv"), "sha256": sha(b"id\tname\n"), "extract": False, "dest": "meta"},
    ]})
    raw = download_raw(cfg, progress=False)
    assert (raw / "scans/s0/s0_vh_clean_2.ply").read_bytes() == b"ply"
    assert (raw / "meta/labels.tsv").read_bytes() == b"id\tname\n"
    manifest = json.loads((raw / MANIFEST).read_text())
    assert manifest["files"]["splits/train.txt"] == {"sha256": sha(b"s0\n"), "size": 3}
    assert manifest["files"]["meta/labels.tsv"]["sha256"] == sha(b"id\tname\n")
    assert [u["url"] for u in manifest["urls"]] == [server.url("/scans.tar.gz"), server.url("/labels.tsv")]
    assert not list(tmp_path.glob(".raw.*"))  # no temporary folder left behind
    n = len(server.requests)
    download_raw(cfg, progress=False)  # complete: nothing fetched again
    assert len(server.requests) == n


def test_stage_refuses_to_replace_data_it_did_not_make(server, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("user data")
    server.files["/f"] = b"x"
    cfg = _cfg(tmp_path, {"urls": [{"url": server.url("/f"), "sha256": sha(b"x"), "extract": False}]})
    with pytest.raises(DataError, match="not made by `pretrain3d download`"):
        download_raw(cfg, progress=False)
    assert (tmp_path / "raw" / "mine.txt").read_text() == "user data"


def test_user_script_runs_with_configured_args(tmp_path):
    script = tmp_path / "download-scannet.py"
    script.write_text(
        "import argparse, pathlib, sys\n"
        "ap = argparse.ArgumentParser(); ap.add_argument('-o'); ap.add_argument('--type')\n"
        "a = ap.parse_args()\n"
        "answer = sys.stdin.readline()\n"
        "p = pathlib.Path(a.o, 'scans', 'scene0000_00'); p.mkdir(parents=True, exist_ok=True)\n"
        "(p / ('scene0000_00' + a.type)).write_text('data ' + answer)\n")
    cfg = _cfg(tmp_path, {"script": str(script), "script_args": ["-o", "{out}", "--type", "_vh_clean_2.ply"],
                          "script_stdin": "yes\n"})
    raw = download_raw(cfg, progress=False)
    assert (raw / "scans/scene0000_00/scene0000_00_vh_clean_2.ply").read_text() == "data yes\n"
    assert json.loads((raw / MANIFEST).read_text())["script"]["args"][-1] == "_vh_clean_2.ply"


def test_user_script_failure_and_absence_are_clear(tmp_path):
    bad = tmp_path / "fail.py"
    bad.write_text("import sys; sys.exit(3)\n")
    with pytest.raises(DataError, match="exited with status 3") as e:
        download_raw(_cfg(tmp_path, {"script": str(bad)}), progress=False)
    assert str(bad) in str(e.value)
    assert not (tmp_path / "raw").exists()
    with pytest.raises(DataError, match="ScanNet's terms") as e:
        download_raw(_cfg(tmp_path, {"script": str(tmp_path / "nope.py")}), progress=False)
    assert "nope.py" in str(e.value)


def test_without_download_config_the_raw_root_is_the_users(tmp_path, capsys):
    cfg = _cfg(tmp_path, {})
    with pytest.raises(DataError, match="configures no source") as e:
        download_raw(cfg)
    assert str(tmp_path / "raw") in str(e.value)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x").write_text("1")
    assert download_raw(cfg) == tmp_path / "raw"
    # the CLI reports the same error cleanly
    p = tmp_path / "p.yaml"
    p.write_text(f"data:\n  dataset: scannet_like\n  raw_root: {tmp_path / 'none'}\ntracking:\n  enabled: false\n")
    assert main(["download", "--config", str(p)]) == 2
    assert "configures no source" in capsys.readouterr().err


def test_download_config_is_validated():
    good = {"url": "https://example.org/a.zip", "sha256": "0" * 64}
    with pytest.raises(ConfigError, match="synthetic"):
        validate_config({"data": {"download": {"urls": [good]}}})
    cases = [({**good, "sha256": "xyz"}, "sha256"), ({**good, "url": "ftp://x/a"}, "url"),
             ({**good, "dest": "../up"}, "dest"), ({**good, "filename": "a/b"}, "filename")]
    for entry, key in cases:
        with pytest.raises(ConfigError, match=f"data.download.urls.0.{key}"):
            validate_config({"data": {"dataset": "scannet_like", "download": {"urls": [entry]}}})
    with pytest.raises(ConfigError, match="share the file name"):
        validate_config({"data": {"dataset": "scannet_like", "download": {
            "urls": [good, {**good, "url": "https://mirror.org/x/a.zip"}]}}})


def test_snakemake_adds_the_download_rule_only_when_configured(tmp_path):
    from conftest import REPO
    from pipeline_util import snakemake

    over = tmp_path / "dl.yaml"
    over.write_text("data:\n  dataset: scannet_like\n  raw_root: data/raw/dl\n  download:\n    urls:\n"
                    f"      - {{url: 'http://127.0.0.1:1/a.tgz', sha256: '{'0' * 64}'}}\n")
    out = snakemake(["-n", "--forceall", "--cores", "1", "--configfile", str(REPO / "params.yaml"), str(over),
                     "--directory", str(tmp_path), "-s", str(REPO / "Snakefile"), "data/raw/dl"], REPO).stdout
    assert re.search(r"rule download:\n(.*\n)*?\s+output: data/raw/dl\n", out), out
