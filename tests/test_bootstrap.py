"""Every branch of scripts/bootstrap.sh and scripts/system_deps.sh, run for real against stand-ins.

The scripts run unchanged; PATH holds only fakes (python3.11/python3, apt-get, id, uname) and
links to the machine's other tools, so nothing is installed. The fakes record every call in a
log and keep their state under FAKESYS/have/: a probe ("lib:libusb-1.0.so.0",
"module:ensurepip") is present when its file exists, and the fake apt-get creates the files of
the packages it installs, as envs/system-packages.txt says. The fake python answers
scripts/envcheck.py the way the real one does for that state (open3d's import fails with the
real libusb message while the library is missing), creates fake virtual environments, and
records pip.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "envs" / "system-packages.txt"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

# the machine's tools the scripts may use, minus those the fakes stand in for (or hide)
HIDDEN = re.compile(r"^(apt|apt-get|aptitude|id|sudo|uname|git|python.*|pip.*|pytest|snakemake|dvc|mlflow|pretrain3d)$")

FAKE_PYTHON = r"""#!/bin/bash
# stand-in for a Python interpreter (a base one, or bin/python of a fake virtual environment)
echo "python $0 $*" >>"$FAKE_LOG"
self=$0 venv=""
case $self in */bin/python) venv=${self%/bin/python} ;; esac
have() { [ -e "$FAKESYS/have/$1" ]; }
case ${1##*/} in
  envcheck.py)
    shift
    case $1 in
      version) echo "${FAKE_PY_VERSION:-3.11}" ;;
      lib) have "lib:$2" || { echo "$2: cannot open shared object file: No such file or directory"; exit 1; } ;;
      module) have "module:$2" || { echo "$2: ModuleNotFoundError: No module named '$2'"; exit 1; } ;;
      url) [ -n "${FAKE_URL_OK:-}" ] || { echo "$2: <urlopen error [Errno -2] Name or service not known>"; exit 1; } ;;
      pip-sources)
        [ -z "${FAKE_SOURCES_FAIL:-}" ] || { echo "pip config list: $FAKE_SOURCES_FAIL"; exit 1; }
        [ -z "${FAKE_PIP_SOURCES:-}" ] || printf '%s\n' $FAKE_PIP_SOURCES ;;
      imports)
        shift
        rc=0
        for m in "$@"; do
          if [ ! -e "$venv/.fake-installed" ]; then
            echo "$m: ModuleNotFoundError: No module named '$m'"; rc=1
          elif [ "$m" = open3d ] && ! have lib:libusb-1.0.so.0; then
            echo "open3d: ImportError: libusb-1.0.so.0: cannot open shared object file: No such file or directory"; rc=1
          elif [ "$m" = "${FAKE_IMPORT_FAIL%%:*}" ]; then
            echo "$m: ${FAKE_IMPORT_FAIL#*:}"; rc=1
          fi
        done
        exit $rc ;;
      *) exit 3 ;;
    esac
    exit 0 ;;
  *.py) exit 0 ;;  # scripts/stage_times.py under run.sh
esac
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$self" "$3/bin/python" && echo "home = fake" >"$3/pyvenv.cfg"
  if ! have module:ensurepip || [ -n "${FAKE_VENV_FAIL:-}" ]; then  # what Debian's python3 does
    echo "The virtual environment was not created successfully because ensurepip is not available."
    exit 1
  fi
  touch "$3/.fake-pip"
  exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
  [ -e "$venv/.fake-pip" ] || { echo "$self: No module named pip"; exit 1; }
  shift 2
  case " $* " in *" --version "*) echo "pip 23.2.1 from $venv"; exit 0 ;; esac
  case " $* " in *" --dry-run "*) [ -n "${FAKE_TORCH_LOCAL:-}" ]; exit ;; esac
  if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ " $* " == *"$FAKE_PIP_FAIL"* ]]; then
    echo "ERROR: Could not find a version that satisfies the requirement spconv==2.3.8"
    exit 1
  fi
  echo "WARNING: Location '/nowhere' is ignored"
  case " $* " in *" uv=="*)
    [ -z "${FAKE_NO_UV:-}" ] || { echo "ERROR: No matching distribution found for uv"; exit 1; }
    touch "$venv/.fake-uv" ;;
  esac
  case " $* " in *" -e . "*)
    touch "$venv/.fake-installed"
    printf '#!/bin/sh\necho "pretrain3d $*" >>"$FAKE_LOG"\n' >"$venv/bin/pretrain3d"
    chmod +x "$venv/bin/pretrain3d" ;;
  esac
  exit 0
fi
if [ "$1 $2 $3" = "-m uv pip" ]; then
  [ -e "$venv/.fake-uv" ] || { echo "$self: No module named uv"; exit 1; }
  echo "uv SSL_CERT_FILE=${SSL_CERT_FILE:-}" >>"$FAKE_LOG"
  if [ -n "${FAKE_UV_FAIL:-}" ] && [[ " $* " == *"$FAKE_UV_FAIL"* ]]; then
    echo "error: No solution found when resolving dependencies"
    exit 1
  fi
  exit 0
fi
[ "$1 $2" = "-m pytest" ] && exit 0
echo "fake python: unexpected arguments: $*" >&2
exit 3
"""

FAKE_APT = r"""#!/bin/bash
echo "apt-get $*" >>"$FAKE_LOG"
case $1 in
  update) echo "Hit:1 http://deb.debian.org/debian bookworm InRelease"; touch "$FAKESYS/apt-updated" ;;
  install)
    if [ -n "${FAKE_APT_FAIL:-}" ]; then echo "E: Unable to locate package $FAKE_APT_FAIL"; exit 100; fi
    if [ -n "${FAKE_APT_NEEDS_UPDATE:-}" ] && [ ! -e "$FAKESYS/apt-updated" ]; then
      echo "E: Package 'libusb-1.0-0' has no installation candidate"; exit 100
    fi
    for arg in "$@"; do
      for pair in $FAKE_PROVIDES; do
        if [ "${pair%%=*}" = "$arg" ]; then
          probe=${pair#*=}
          touch "$FAKESYS/have/$probe"
          case $probe in cmd:*) printf '#!/bin/sh\n' >"$FAKEBIN/${probe#cmd:}"; chmod +x "$FAKEBIN/${probe#cmd:}" ;; esac
        fi
      done
    done
    echo "Setting up the packages" ;;
esac
"""

FAKE_ID = """#!/bin/bash
echo "id $*" >>"$FAKE_LOG"
[ "$1" = -u ] && echo "${FAKE_UID:-0}"
"""

FAKE_UNAME = """#!/bin/bash
case $1 in -s) echo Linux ;; -m) echo "${FAKE_ARCH:-x86_64}" ;; *) echo Linux ;; esac
"""

FAKE_TOOL = """#!/bin/bash
echo "$(basename "$0") $*" >>"$FAKE_LOG"
"""


def _table_rows(path: Path = TABLE) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            rows.append(line.split(None, 3))
    return rows


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture(scope="session")
def sysbin(tmp_path_factory) -> Path:
    """Links to this machine's tools, without apt-get, id, python, ... (the fakes' job)."""
    d = tmp_path_factory.mktemp("sysbin")
    for src in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not os.path.isdir(src):
            continue
        for name in os.listdir(src):
            if HIDDEN.match(name) or (d / name).exists() or (d / name).is_symlink():
                continue
            (d / name).symlink_to(os.path.join(src, name))
    return d


class Machine:
    """A stand-in machine: fakes on PATH, their state and their log."""

    def __init__(self, root: Path, sysbin: Path):
        self.root = root
        self.bin = root / "fakebin"
        self.sys = root / "fakesys"
        self.log = root / "calls.log"
        self.venv = root / "venv"
        self.bin.mkdir()
        (self.sys / "have").mkdir(parents=True)
        self.log.touch()
        for name in ("python3.11", "python3"):
            _write(self.bin / name, FAKE_PYTHON)
        _write(self.bin / "apt-get", FAKE_APT)
        _write(self.bin / "id", FAKE_ID)
        _write(self.bin / "uname", FAKE_UNAME)
        provides = " ".join(f"{pkg.replace('{py}', '3.11')}={probe}" for _, pkg, probe, _ in _table_rows())
        self.env = {
            "PATH": f"{self.bin}:{sysbin}",
            "HOME": str(root / "home"),
            "TMPDIR": str(root),
            "LANG": "C.UTF-8",
            "FAKESYS": str(self.sys),
            "FAKEBIN": str(self.bin),
            "FAKE_LOG": str(self.log),
            "FAKE_PROVIDES": provides,
            "PRETRAIN3D_VENV": str(self.venv),
            "PRETRAIN3D_INSTALLER": "pip",  # the pip-only path; the uv tests set uv (the default)
        }
        for _, _, probe, _ in _table_rows():  # a complete machine; tests take away what they need
            self.have(probe)

    def have(self, probe: str) -> None:
        (self.sys / "have" / probe).touch()
        if probe.startswith("cmd:"):  # a command is there when it is on PATH
            _write(self.bin / probe[4:], FAKE_TOOL)

    def lack(self, probe: str) -> None:
        (self.sys / "have" / probe).unlink()
        if probe.startswith("cmd:"):
            (self.bin / probe[4:]).unlink()

    def remove(self, name: str) -> None:
        (self.bin / name).unlink()

    def run(self, script: str = "scripts/bootstrap.sh", *args: str, **env: str) -> subprocess.CompletedProcess:
        self.log.write_text("")
        r = subprocess.run(["/bin/bash", str(REPO / script), *args], cwd=self.root, env={**self.env, **env},
                           capture_output=True, text=True, timeout=120)
        r.calls = self.log.read_text().splitlines()
        r.out = r.stdout + r.stderr
        return r

    def pip_calls(self, r) -> list[str]:
        return [c for c in r.calls if " -m pip " in c and "--version" not in c]

    def uv_calls(self, r) -> list[str]:
        return [c for c in r.calls if " -m uv pip " in c]

    def apt_calls(self, r) -> list[str]:
        return [c for c in r.calls if c.startswith("apt-get")]

    @property
    def stamp(self) -> Path:
        return self.venv / ".pretrain3d-installed"


@pytest.fixture
def m(tmp_path, sysbin) -> Machine:
    return Machine(tmp_path, sysbin)


def _assert_ok(r):
    assert r.returncode == 0, r.out


# --- the table and the helper -------------------------------------------------------------

def test_table_is_the_one_place_and_well_formed():
    rows = _table_rows()
    assert rows, "envs/system-packages.txt has no rows"
    for stage, pkg, probe, needed in rows:
        assert stage in {"venv", "run"}
        assert re.fullmatch(r"[a-z0-9.+{}-]+", pkg), pkg
        assert probe.split(":")[0] in {"lib", "module", "cmd"} and ":" in probe, probe
        assert needed.strip()
    assert ["run", "libusb-1.0-0", "lib:libusb-1.0.so.0"] in [r[:3] for r in rows]
    assert ["venv", "python{py}-venv", "module:ensurepip"] in [r[:3] for r in rows]
    assert ["run", "git", "cmd:git"] in [r[:3] for r in rows]
    # no script names a system package the table does not list
    for script in ("bootstrap.sh", "run.sh", "test.sh"):
        assert "libusb-1.0-0" not in (REPO / "scripts" / script).read_text()


def test_required_python_is_what_the_constraints_pin():
    header = (REPO / "envs/constraints-cpu.txt").read_text().splitlines()[0]
    pinned = re.search(r"Python (\d+\.\d+)", header).group(1)
    want = re.search(r"^PY_WANT=(\S+)", (REPO / "scripts/bootstrap.sh").read_text(), re.M).group(1)
    assert want == pinned == "3.11"
    # numpy 2.4 dropped Python 3.10: 3.10 must be refused (issue #17)
    assert "numpy==2.4" in (REPO / "envs/constraints-cpu.txt").read_text()


def test_envcheck_with_the_real_python():
    def ec(*args):
        return subprocess.run([sys.executable, str(REPO / "scripts/envcheck.py"), *args],
                              capture_output=True, text=True)

    assert ec("version").stdout.strip() == "%d.%d" % sys.version_info[:2]
    assert ec("lib", "libc.so.6").returncode == 0
    r = ec("lib", "libpretrain3d-absent.so.0")
    assert r.returncode == 1 and "libpretrain3d-absent.so.0" in r.stdout
    assert ec("module", "json").returncode == 0
    r = ec("imports", "json", "pretrain3d_absent_module", "os")
    assert r.returncode == 1
    assert r.stdout.strip() == "pretrain3d_absent_module: ModuleNotFoundError: No module named 'pretrain3d_absent_module'"
    assert ec("url", "http://127.0.0.1:9/", "2").returncode == 1  # nothing listens on port 9
    assert ec("nonsense").returncode == 2


# --- the Python version ---------------------------------------------------------------------

def test_python_too_old_is_refused_before_anything_is_installed(m):
    m.remove("python3.11")  # only python3, and it is 3.10 (issue #17: 3.10 used to be accepted)
    r = m.run(FAKE_PY_VERSION="3.10")
    assert r.returncode == 1
    assert "needs Python 3.11" in r.out and "python3: Python 3.10" in r.out and "python3.11: not found" in r.out
    assert "PYTHON=" in r.out and "apt-get install -y python3.11 python3.11-venv" in r.out
    assert not m.pip_calls(r) and not m.apt_calls(r) and not m.venv.exists()


def test_python_missing(m):
    m.remove("python3.11")
    m.remove("python3")
    r = m.run()
    assert r.returncode == 1 and "python3.11: not found; python3: not found;" in r.out
    assert not m.venv.exists()


def test_PYTHON_is_used_when_set(m):
    other = m.root / "py311"
    _write(other, FAKE_PYTHON)
    r = m.run(PYTHON=str(other))
    _assert_ok(r)
    assert any(c.startswith(f"python {other} -m venv {m.venv}") for c in r.calls), r.calls


# --- system packages ------------------------------------------------------------------------

def test_missing_libusb_as_root_is_installed_with_apt(m):
    m.lack("lib:libusb-1.0.so.0")  # the bug of issue #9
    r = m.run()
    _assert_ok(r)
    assert m.apt_calls(r) == ["apt-get install -y -q --no-install-recommends libusb-1.0-0"]
    assert "missing system packages" in r.out and "libusb-1.0.so.0: cannot open shared object file" in r.out
    assert "installing system packages: apt-get install -y libusb-1.0-0" in r.out
    # system packages come before pip (a minutes-long pip install is not wasted on a missing library)
    first_pip = next(i for i, c in enumerate(r.calls) if " -m pip install" in c)
    assert r.calls.index(m.apt_calls(r)[0]) < first_pip
    assert m.stamp.exists() and "ready:" in r.out


def test_minimal_debian_gets_every_package_in_one_apt_call(m):
    """What a bookworm minbase lacks (seen in a debootstrap chroot): every row of the table."""
    rows = _table_rows()
    for _, _, probe, _ in rows:
        m.lack(probe)
    r = m.run()
    _assert_ok(r)
    pkgs = [pkg.replace("{py}", "3.11") for stage, pkg, _, _ in rows]
    assert m.apt_calls(r) == ["apt-get install -y -q --no-install-recommends " + " ".join(pkgs)]
    for pkg in pkgs:
        assert f"  {pkg} (for " in r.out
    assert m.stamp.exists()


def test_apt_package_lists_are_updated_when_install_fails_first(m):
    m.lack("lib:libusb-1.0.so.0")  # the bug of issue #9
    r = m.run(FAKE_APT_NEEDS_UPDATE="1")
    _assert_ok(r)
    assert m.apt_calls(r) == ["apt-get install -y -q --no-install-recommends libusb-1.0-0", "apt-get update -q",
                              "apt-get install -y -q --no-install-recommends libusb-1.0-0"]
    assert "retrying" in r.out


def test_not_root_without_libusb_prints_the_exact_command(m):
    m.lack("lib:libusb-1.0.so.0")  # the bug of issue #9
    r = m.run(FAKE_UID="1000")
    assert r.returncode == 1
    assert "sudo apt-get update && sudo apt-get install -y libusb-1.0-0" in r.out
    assert "needs root" in r.out and "open3d-cpu" in r.out
    assert not m.apt_calls(r) and not m.pip_calls(r)
    assert not m.venv.exists() and not m.stamp.exists()


def test_no_apt_get(m):
    m.remove("apt-get")
    m.lack("lib:libusb-1.0.so.0")
    r = m.run()
    assert r.returncode == 1
    assert "no apt-get" in r.out and "libusb-1.0.so.0" in r.out and "apt-get install -y libusb-1.0-0" in r.out
    assert not m.pip_calls(r) and not m.venv.exists()


def test_apt_failure_shows_its_output(m):
    m.lack("lib:libusb-1.0.so.0")  # the bug of issue #9
    r = m.run(FAKE_APT_FAIL="libusb-1.0-0")
    assert r.returncode == 1
    assert "apt: E: Unable to locate package libusb-1.0-0" in r.out  # apt's own words
    assert "apt-get failed" in r.out and "apt-get update && apt-get install -y libusb-1.0-0" in r.out
    assert "apt-get update -q" in m.apt_calls(r)
    assert not m.pip_calls(r) and not m.stamp.exists()


def test_missing_ensurepip_installs_python_venv_then_creates_the_venv(m):
    m.lack("module:ensurepip")
    r = m.run()
    _assert_ok(r)
    assert m.apt_calls(r) == ["apt-get install -y -q --no-install-recommends python3.11-venv"]
    assert (m.venv / ".fake-pip").exists() and m.stamp.exists()


def test_missing_ensurepip_not_root_leaves_no_venv(m):
    m.lack("module:ensurepip")
    r = m.run(FAKE_UID="1000")
    assert r.returncode == 1
    assert "sudo apt-get install -y python3.11-venv\n" in r.out
    assert not m.venv.exists()


def test_venv_creation_failure_removes_the_half_made_venv(m):
    r = m.run(FAKE_VENV_FAIL="1")
    assert r.returncode == 1
    assert "venv: The virtual environment was not created successfully" in r.out
    assert "could not create the virtual environment" in r.out
    assert not m.venv.exists() and not m.pip_calls(r)


def test_half_made_venv_from_an_earlier_run_is_replaced(m):
    (m.venv / "bin").mkdir(parents=True)  # what Debian's `python3 -m venv` leaves without python3-venv
    _write(m.venv / "bin" / "python", FAKE_PYTHON)
    (m.venv / "pyvenv.cfg").write_text("home = fake\n")
    r = m.run()
    _assert_ok(r)
    assert "removing the unusable virtual environment" in r.out
    assert (m.venv / ".fake-pip").exists() and m.stamp.exists()


def test_a_folder_that_is_no_venv_is_not_deleted(m):
    m.venv.mkdir()
    (m.venv / "precious.txt").write_text("keep me")
    r = m.run()
    assert r.returncode == 1 and "is not a virtual environment" in r.out
    assert (m.venv / "precious.txt").read_text() == "keep me"


def test_existing_venv_skips_the_venv_stage(m):
    _assert_ok(m.run())
    m.stamp.unlink()
    m.lack("module:ensurepip")  # not needed any more: the venv exists
    r = m.run(FAKE_UID="1000")
    _assert_ok(r)
    assert not any(" -m venv " in c for c in r.calls) and not m.apt_calls(r)


def test_cmd_probe_rows_follow_the_same_pattern(m, tmp_path):
    """A later system dependency (SLURM, PostgreSQL, chromium, ...) is one more row. The command is one
    no machine has (the UI test installs the real chromium on this one)."""
    table = tmp_path / "table.txt"
    table.write_text("run  fake-browser  cmd:pretrain3d-fake-browser  browser tests\n"
                     "run libusb-1.0-0 lib:libusb-1.0.so.0 open3d\n")
    r = m.run("scripts/system_deps.sh", "--table", str(table), "--python", "python3", "--check-only")
    assert r.returncode == 1 and "fake-browser (for browser tests): pretrain3d-fake-browser: not on PATH" in r.out
    _write(m.bin / "pretrain3d-fake-browser", FAKE_TOOL)
    r = m.run("scripts/system_deps.sh", "--table", str(table), "--python", "python3", "--check-only")
    _assert_ok(r)
    assert "all present" in r.out
    (m.bin / "pretrain3d-fake-browser").unlink()
    r = m.run("scripts/system_deps.sh", "--table", str(table), "--python", "python3",
              FAKE_PROVIDES="fake-browser=cmd:pretrain3d-fake-browser")
    _assert_ok(r)
    assert m.apt_calls(r) == ["apt-get install -y -q --no-install-recommends fake-browser"]
    table.write_text("run libusb-1.0-0 file:/usr/lib/x open3d\n")
    r = m.run("scripts/system_deps.sh", "--table", str(table), "--python", "python3")
    assert r.returncode == 1 and "unknown probe 'file:/usr/lib/x'" in r.out


# --- pip --------------------------------------------------------------------------------------

def test_pip_failure_shows_pip_output_and_writes_no_stamp(m):
    r = m.run(FAKE_PIP_FAIL="envs/requirements-cpu.txt")
    assert r.returncode == 1
    assert "pip: ERROR: Could not find a version that satisfies the requirement spconv==2.3.8" in r.out
    assert "pip failed: envs/requirements-cpu.txt" in r.out
    assert "see the pip output above" not in r.out
    assert not any("requirements-nodeps" in c for c in r.calls)  # stops at the failing step
    assert not m.stamp.exists()


def test_failing_import_is_named_and_no_stamp(m):
    r = m.run(FAKE_IMPORT_FAIL="spconv:ImportError: libcumm.so: undefined symbol: foo")
    assert r.returncode == 1
    assert "spconv: ImportError: libcumm.so: undefined symbol: foo" in r.out
    assert "pip installed the pinned environment, but these imports fail" in r.out
    assert "see the pip output above" not in r.out and not m.stamp.exists()


def test_library_lost_after_the_check_is_explained(m):
    """The import check names the system package when an import fails on a library of the table."""
    # the probe passes, the import does not (e.g. LD_LIBRARY_PATH differs between the two)
    r = m.run(FAKE_IMPORT_FAIL="open3d:ImportError: libusb-1.0.so.0: cannot open shared object file")
    assert r.returncode == 1
    assert "open3d: ImportError: libusb-1.0.so.0" in r.out
    assert "libusb-1.0.so.0 is missing: Debian/Ubuntu package libusb-1.0-0" in r.out


def test_fast_path_calls_neither_pip_nor_apt(m):
    _assert_ok(m.run())
    r = m.run()
    _assert_ok(r)
    assert r.calls == [] and r.out == ""  # not even a python start
    # a stamp that does not match the inputs reinstalls
    m.stamp.write_text("stale\n")
    r = m.run()
    _assert_ok(r)
    assert m.pip_calls(r)


@pytest.mark.parametrize(
    "local, reachable, arch, extra_index",
    [
        ("", "1", "x86_64", True),     # fresh machine elsewhere: the CPU build from PyTorch's index
        ("1", "1", "x86_64", False),   # this machine: a local wheel (find-links) satisfies the pin
        ("", "", "x86_64", False),     # index unreachable: PyPI's wheel, with a warning
        ("", "1", "aarch64", False),   # PyPI's aarch64 wheel is the CPU build already
    ],
)
def test_torch_cpu_build(m, local, reachable, arch, extra_index):
    r = m.run(FAKE_TORCH_LOCAL=local, FAKE_URL_OK=reachable, FAKE_ARCH=arch)
    _assert_ok(r)
    with_index = [c for c in m.pip_calls(r) if f"--extra-index-url {TORCH_INDEX}" in c]
    probed = any("envcheck.py url" in c for c in r.calls)
    if extra_index:
        assert with_index == [f"python {m.venv}/bin/python -m pip install -q torch==2.13.0 "
                              f"-c envs/constraints-cpu.txt --extra-index-url {TORCH_INDEX}"]
        assert "the CPU build from" in r.out
    else:
        assert with_index == []
    assert probed == (arch == "x86_64" and not local)  # no network probe when a local wheel serves
    if arch == "x86_64" and not local and not reachable:
        assert "cannot be reached" in r.out and "CUDA build" in r.out
    # the main install never carries the extra index
    main = [c for c in m.pip_calls(r) if "-r envs/requirements-cpu.txt" in c]
    assert len(main) == 1 and "extra-index-url" not in main[0]


def test_torch_index_can_be_switched_off(m):
    r = m.run(PRETRAIN3D_TORCH_INDEX="")
    _assert_ok(r)
    assert not any("--dry-run" in c or "envcheck.py url" in c for c in r.calls)


# --- run.sh / test.sh ---------------------------------------------------------------------------

@pytest.mark.parametrize("script, tool", [("scripts/test.sh", "-m pytest -q -k x"), ("scripts/run.sh", "snakemake")])
def test_run_and_test_use_PRETRAIN3D_VENV(m, script, tool):
    _assert_ok(m.run())
    _write(m.venv / "bin" / "snakemake", FAKE_TOOL)
    r = m.run(script, "-k", "x") if "test" in script else m.run(script, "-n")
    _assert_ok(r)
    if "test" in script:
        assert f"python {m.venv}/bin/python -m pytest -q -k x" in r.calls
    else:
        assert "snakemake --cores all --show-failed-logs -n" in r.calls
        assert any(c.startswith(f"python {m.venv}/bin/python scripts/stage_times.py") for c in r.calls)
    assert not m.pip_calls(r)  # the bootstrap took its fast path


# --- uv, the default installer ---------------------------------------------------------------

def test_uv_installs_the_environment_from_pips_sources(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_TORCH_LOCAL="1",
              FAKE_PIP_SOURCES="--find-links /wheels --extra-index-url file:///mirror/simple")
    _assert_ok(r)
    py = f"{m.venv}/bin/python"
    assert f"python {py} -m pip install -q uv==0.13.9" in r.calls  # envs/requirements-bootstrap.txt
    uv = [c[len(f"python {py} -m uv pip install --python {py} "):] for c in m.uv_calls(r)]
    src = ("--find-links /wheels --extra-index-url file:///mirror/simple --index-strategy unsafe-best-match "
           "--compile-bytecode")  # .pyc written once at install, as pip does, not by every job
    assert uv == [f"{src} -q -r envs/requirements-cpu.txt -c envs/constraints-cpu.txt",
                  f"{src} -q --no-deps -r envs/requirements-nodeps.txt"]
    # pip only installs uv and the editable project
    assert [c.split(" -m pip ")[1] for c in m.pip_calls(r) if "--dry-run" not in c] == [
        "install -q uv==0.13.9", "install -q --no-deps --no-build-isolation -e ."]
    assert "installer: uv==0.13.9" in r.out and m.stamp.exists()


def test_uv_torch_cpu_build_from_the_torch_index(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_URL_OK="1")
    _assert_ok(r)
    torch = [c for c in m.uv_calls(r) if "torch==2.13.0" in c]
    assert len(torch) == 1 and f"--extra-index-url {TORCH_INDEX}" in torch[0]
    assert "--index-strategy unsafe-best-match" in torch[0]  # 2.13.0+cpu wins over PyPI's 2.13.0, as with pip
    assert not any("torch==" in c for c in m.pip_calls(r) if "--dry-run" not in c)


def test_uv_that_cannot_be_installed_leaves_it_to_pip(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_NO_UV="1")
    _assert_ok(r)
    assert "pip could not install uv==0.13.9" in r.out and "No matching distribution found for uv" in r.out
    assert not m.uv_calls(r)
    assert any("-r envs/requirements-cpu.txt" in c for c in m.pip_calls(r)) and m.stamp.exists()


def test_unreadable_pip_sources_leave_it_to_pip(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_SOURCES_FAIL="exit status 2")
    _assert_ok(r)
    assert "could not read pip's package sources (pip config list: exit status 2)" in r.out
    assert not m.uv_calls(r) and any("-r envs/requirements-cpu.txt" in c for c in m.pip_calls(r))


def test_a_failing_uv_step_is_shown_and_pip_retries_it(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_UV_FAIL="requirements-nodeps")
    _assert_ok(r)
    assert "uv: error: No solution found when resolving dependencies" in r.out
    assert "uv failed: envs/requirements-nodeps.txt (--no-deps)" in r.out and "pip tries it" in r.out
    assert [c for c in m.pip_calls(r) if "requirements" in c] == [
        f"python {m.venv}/bin/python -m pip install -q --no-deps -r envs/requirements-nodeps.txt"]
    assert m.stamp.exists()


def test_uv_and_pip_failing_stops_with_pips_output(m):
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_UV_FAIL="requirements-cpu", FAKE_PIP_FAIL="requirements-cpu")
    assert r.returncode == 1
    assert "uv: error: No solution found" in r.out and "pip failed: envs/requirements-cpu.txt" in r.out
    assert not m.stamp.exists()


def test_unknown_installer_is_refused(m):
    r = m.run(PRETRAIN3D_INSTALLER="conda")
    assert r.returncode == 1 and "PRETRAIN3D_INSTALLER must be uv or pip, not 'conda'" in r.out
    assert not m.pip_calls(r)


def test_pip_sources_reads_pips_configuration(tmp_path):
    """envcheck.py pip-sources with the real pip: config file, then PIP_* variables override it."""
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /opt/w\nextra-index-url = file:///a/simple file:///b/simple\n"
                    "timeout = 60\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))

    def sources(**extra):
        r = subprocess.run([sys.executable, str(REPO / "scripts" / "envcheck.py"), "pip-sources"],
                           env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()

    base = sources()
    assert base[base.index("--find-links") + 1] == "/opt/w"
    assert [base[i + 1] for i, a in enumerate(base) if a == "--extra-index-url"] == ["file:///a/simple",
                                                                                   "file:///b/simple"]
    over = sources(PIP_FIND_LINKS="/x /y", PIP_INDEX_URL="https://mirror/simple", PIP_NO_INDEX="1",
                   PIP_CERT="/etc/ca.pem")
    assert over[:2] == ["--index-url", "https://mirror/simple"]
    assert [over[i + 1] for i, a in enumerate(over) if a == "--find-links"] == ["/x", "/y"]
    assert "--no-index" in over and "timeout" not in " ".join(over)
    assert over[over.index("--cert") + 1] == "/etc/ca.pem"


def test_uv_gets_pips_ca_bundle(m):
    """pip's `cert` (the CA of a TLS-inspecting proxy) reaches uv as SSL_CERT_FILE, not as an option."""
    r = m.run(PRETRAIN3D_INSTALLER="uv", FAKE_TORCH_LOCAL="1",
              FAKE_PIP_SOURCES="--cert /etc/ssl/proxy-ca.pem --find-links /wheels")
    _assert_ok(r)
    assert "uv SSL_CERT_FILE=/etc/ssl/proxy-ca.pem" in r.calls
    assert all("--cert" not in c and "--find-links /wheels" in c for c in m.uv_calls(r))
    assert "CA bundle /etc/ssl/proxy-ca.pem" in r.out
