#!/usr/bin/env bash
# Create the virtual environment and install everything pretrain3d needs: the system packages
# (envs/system-packages.txt, via scripts/system_deps.sh), the pinned CPU environment and this
# package (editable). Re-running is cheap: nothing runs when the stamp matches the inputs.
#
# Environment:
#   PYTHON                  the interpreter (default: python3.11, else python3; must be PY_WANT)
#   PRETRAIN3D_VENV         the virtual environment (default .venv; relative to the repository)
#   PRETRAIN3D_TORCH_INDEX  where the CPU build of torch comes from when no local wheel satisfies
#                           the pin (default https://download.pytorch.org/whl/cpu; empty: PyPI only)
#   PRETRAIN3D_INSTALLER    uv (default: pip installs the pinned uv, uv installs the environment from
#                           the package sources pip is configured with) or pip (pip alone, slower)
#
# Every step says what it does; a failing step prints its tool's output and stops with what is
# missing. tests/test_bootstrap.py runs this script against stand-ins for python, apt-get and id.
set -euo pipefail
cd "$(dirname "$0")/.."

# envs/constraints-cpu.txt is a pip freeze of a Python 3.11 environment (numpy 2.4 needs >= 3.11,
# the pinned wheels are tested on 3.11 only): exactly this version (tests/test_bootstrap.py checks).
PY_WANT=3.11
VENV=${PRETRAIN3D_VENV:-.venv}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
TORCH_INDEX=${PRETRAIN3D_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
INSTALLER=${PRETRAIN3D_INSTALLER:-uv}
IMPORTS="torch spconv open3d snakemake dvc mlflow onnx tokenizers safetensors cv2 pretrain3d"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "[bootstrap] $*" >&2; }
die() { echo "[bootstrap] error: $*" >&2; exit 1; }

# Fast path: the stamp is written only after everything imported; it names the inputs.
stamp=$VENV/.pretrain3d-installed
want=$({ echo "python $PY_WANT"; cat envs/requirements-cpu.txt envs/requirements-nodeps.txt \
  envs/constraints-cpu.txt envs/requirements-bootstrap.txt envs/system-packages.txt pyproject.toml; } \
  | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ] \
  && [ -x "$VENV/bin/pretrain3d" ]; then
  exit 0
fi
t0=$(date +%s)
case $INSTALLER in uv | pip) ;; *) die "PRETRAIN3D_INSTALLER must be uv or pip, not '$INSTALLER'" ;; esac
say "installing into $VENV (first run: a few minutes)"

log=$(mktemp)
creating=""
cleanup() {
  rm -f "$log"
  # never leave a half-made virtual environment behind (failure or interrupt while creating it)
  if [ -n "$creating" ]; then rm -rf "$VENV"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The Python: exactly PY_WANT.
if [ -n "${PYTHON:-}" ]; then candidates=("$PYTHON"); else candidates=("python$PY_WANT" python3); fi
PY="" found=""
for c in "${candidates[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1; then found="$found $c: not found;"; continue; fi
  v=$("$c" scripts/envcheck.py version 2>/dev/null) || v="unknown version (it does not run)"
  if [ "$v" = "$PY_WANT" ]; then PY=$(command -v "$c"); break; fi
  found="$found $c: Python $v;"
done
if [ -z "$PY" ]; then
  die "pretrain3d needs Python $PY_WANT (envs/constraints-cpu.txt pins a Python $PY_WANT environment); found:$found
  install it (Debian 12: apt-get install -y python3 python3-venv; Ubuntu: apt-get install -y python$PY_WANT python$PY_WANT-venv)
  or point PYTHON at one, e.g.: PYTHON=/usr/bin/python$PY_WANT bash scripts/test.sh"
fi
say "Python $PY_WANT: $PY"

# 2. The virtual environment: reuse it when it runs PY_WANT and has pip, else make it anew.
venv_ok() {
  [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" scripts/envcheck.py version 2>/dev/null)" = "$PY_WANT" ] \
    && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}
stages="run"
if ! venv_ok; then
  stages="venv run"
  if [ -e "$VENV" ]; then
    if [ -f "$VENV/pyvenv.cfg" ]; then
      say "removing the unusable virtual environment $VENV (no Python $PY_WANT with pip in it)"
      rm -rf "$VENV"
    elif [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
      die "$VENV exists and is not a virtual environment: remove it or set PRETRAIN3D_VENV elsewhere"
    fi
  fi
fi

# 3. System packages (one table: envs/system-packages.txt): installed as root with apt-get,
#    otherwise the exact command to run is printed.
bash scripts/system_deps.sh --python "$PY" $stages

if [ "$stages" != run ]; then
  say "creating the virtual environment $VENV"
  creating=1
  if ! "$PY" -m venv "$VENV" >"$log" 2>&1 || ! "$VENV/bin/python" -m pip --version >>"$log" 2>&1; then
    sed 's/^/  venv: /' "$log" >&2
    die "could not create the virtual environment (output above); removed $VENV"
  fi
  creating=""
fi

# 4. pip: every step's exit status is checked; its output is shown (all of it when it fails).
pip_step() {  # pip_step DESCRIPTION PIP-ARGS...
  local what=$1
  shift
  say "pip: $what"
  if ! "$VENV/bin/python" -m pip "$@" >"$log" 2>&1; then
    sed 's/^/  pip: /' "$log" >&2
    die "pip failed: $what (its output above); the command was: $VENV/bin/python -m pip $*"
  fi
  grep -v '^WARNING: Location' "$log" | sed 's/^/  pip: /' >&2 || true  # warnings of a step that succeeded
}

# The installer: uv resolves and installs the pinned environment several times faster than pip
# (issue 14: the install counts toward the README run's 15 minutes). pip installs uv into the
# environment; uv is given the package sources pip is configured with. Without uv, pip does it all.
uv_sources=()
if [ "$INSTALLER" = uv ]; then
  uv_pin=$(grep -m1 -E '^uv==' envs/requirements-bootstrap.txt)
  if ! "$VENV/bin/python" -m pip install -q "$uv_pin" >"$log" 2>&1; then
    say "warning: pip could not install $uv_pin ($(tail -n1 "$log")): pip installs everything (slower)"
    INSTALLER=pip
  elif ! "$VENV/bin/python" scripts/envcheck.py pip-sources >"$log" 2>&1; then
    say "warning: could not read pip's package sources ($(tail -n1 "$log")): pip installs everything (slower)"
    INSTALLER=pip
  else
    mapfile -t found <"$log"
    # pip's CA bundle (pip's `cert`): uv reads it from SSL_CERT_FILE (it does not use the system's
    # store by default: behind a TLS-inspecting proxy every request failed with UnknownIssuer)
    for ((i = 0; i < ${#found[@]}; i++)); do
      if [ "${found[i]}" = --cert ]; then
        export SSL_CERT_FILE=${found[i + 1]}
        i=$((i + 1))
      else
        uv_sources+=("${found[i]}")
      fi
    done
    say "installer: $uv_pin, with the package sources of pip's configuration: ${uv_sources[*]:-its defaults}${SSL_CERT_FILE:+; CA bundle $SSL_CERT_FILE}"
  fi
fi

# install_step DESCRIPTION ARGS...: `pip install ARGS`, or `uv pip install ARGS` with pip's sources,
# any of which may serve a pinned version, as with pip (uv's default takes the first index that knows
# a package, even without that version; and 2.13.0+cpu must win over PyPI's 2.13.0, as with pip);
# when uv fails, its output is shown and pip tries the step. --compile-bytecode: pip writes the .pyc
# files when it installs, uv does not by default; without them (and with PYTHONDONTWRITEBYTECODE set,
# or a read-only environment) every job of the pipeline compiled torch, mlflow, ... again: imports
# took 11 s instead of 4 s per job in a README run.
install_step() {
  local what=$1
  shift
  if [ "$INSTALLER" = uv ]; then
    say "uv: $what"
    if "$VENV/bin/python" -m uv pip install --python "$VENV/bin/python" "${uv_sources[@]}" \
      --index-strategy unsafe-best-match --compile-bytecode "$@" >"$log" 2>&1; then
      return 0
    fi
    sed 's/^/  uv: /' "$log" >&2
    say "warning: uv failed: $what (its output above); pip tries it"
  fi
  pip_step "$what" install "$@"
}

# On Linux x86-64, PyPI's torch wheel is the CUDA build (several GB). Ask PyTorch's CPU index for
# it, unless a wheel already satisfies the pin without any index (installed, or a local
# find-links directory) or that index cannot be reached (then PyPI's wheel is taken).
torch_pin=$(grep -m1 -E '^torch==' envs/requirements-cpu.txt || true)
if [ -n "$torch_pin" ] && [ -n "$TORCH_INDEX" ] && [ "$(uname -s)/$(uname -m)" = Linux/x86_64 ]; then
  if "$VENV/bin/python" -m pip install --dry-run -q --no-index --no-deps "$torch_pin" >/dev/null 2>&1; then
    say "$torch_pin: installed or in a local wheel directory (no extra index)"
  elif "$VENV/bin/python" scripts/envcheck.py url "$TORCH_INDEX/torch/" 10 >"$log" 2>&1; then
    install_step "$torch_pin, the CPU build from $TORCH_INDEX" \
      -q "$torch_pin" -c envs/constraints-cpu.txt --extra-index-url "$TORCH_INDEX"
  else
    say "warning: $TORCH_INDEX cannot be reached ($(tail -n1 "$log")): torch comes from PyPI, which on Linux x86-64 is the CUDA build (several GB); PRETRAIN3D_TORCH_INDEX= skips this check"
  fi
fi
install_step "envs/requirements-cpu.txt with envs/constraints-cpu.txt" \
  -q -r envs/requirements-cpu.txt -c envs/constraints-cpu.txt
install_step "envs/requirements-nodeps.txt (--no-deps)" -q --no-deps -r envs/requirements-nodeps.txt
pip_step "pretrain3d (editable)" install -q --no-deps --no-build-isolation -e .

# 5. Everything imports, or say which import fails and why; only then the stamp.
say "checking the imports: $IMPORTS"
# shellcheck disable=SC2086
if ! "$VENV/bin/python" scripts/envcheck.py imports $IMPORTS >"$log" 2>&1; then
  sed 's/^/  /' "$log" >&2
  hint=$(bash scripts/system_deps.sh --python "$PY" --explain "$(cat "$log")")
  [ -z "$hint" ] || echo "$hint" | sed 's/^/  /' >&2
  die "pip installed the pinned environment, but these imports fail (above)"
fi
echo "$want" >"$stamp"
say "ready: $VENV ($(($(date +%s) - t0)) s)"
