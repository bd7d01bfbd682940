#!/usr/bin/env bash
# The system packages pretrain3d needs (the table envs/system-packages.txt): probe each row,
# install what is missing with apt-get when root, else stop with the exact command to run.
#
#   bash scripts/system_deps.sh [--python PY] [--table FILE] [--check-only] [STAGE...]
#   bash scripts/system_deps.sh [--table FILE] --explain TEXT
#
# STAGE: venv and/or run (default: every row). --python: the interpreter that probes lib:/module:
# rows and whose version fills {py} (default python3). --check-only: report, install nothing
# (exit 1 if something is missing). --explain: print which table rows a failure message (e.g. an
# ImportError naming a shared library) points to. scripts/bootstrap.sh runs this before it creates
# the virtual environment; tests/test_bootstrap.py runs it against stand-ins for apt-get and id.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PY=python3
TABLE=$here/../envs/system-packages.txt
CHECK_ONLY=0
EXPLAIN=""
stages=()
while [ $# -gt 0 ]; do
  case $1 in
    --python) PY=$2; shift 2 ;;
    --table) TABLE=$2; shift 2 ;;
    --check-only) CHECK_ONLY=1; shift ;;
    --explain) EXPLAIN=$2; shift 2 ;;
    -*) echo "system_deps.sh: unknown option $1" >&2; exit 2 ;;
    *) stages+=("$1"); shift ;;
  esac
done
say() { echo "[bootstrap] $*" >&2; }
die() { echo "[bootstrap] error: $*" >&2; exit 1; }

# rows: "stage package probe needed-by..." without comments and blank lines
rows() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$TABLE"; }


# probe ROW-PROBE: exit 0 when present; otherwise print why it is missing
probe() {
  local kind=${1%%:*} arg=${1#*:}
  case $kind in
    lib | module) "$PY" "$here/envcheck.py" "$kind" "$arg" 2>&1 ;;
    cmd) command -v "$arg" >/dev/null 2>&1 || { echo "$arg: not on PATH"; return 1; } ;;
    *) echo "unknown probe '$1' in $TABLE"; return 2 ;;
  esac
}

wanted() {  # wanted STAGE: is STAGE among the requested stages (all when none given)?
  [ ${#stages[@]} -eq 0 ] && return 0
  local s
  for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

check() {  # sets missing_pkgs / missing_lines
  missing_pkgs=() missing_lines=()
  local stage pkg probe needed why rc
  while read -r stage pkg probe needed; do
    [ -n "$stage" ] || continue # an empty table
    [ -n "$needed" ] || die "$TABLE: row '$stage $pkg $probe' needs 4 columns: stage package probe needed-by"
    case $stage in venv | run) ;; *) die "$TABLE: unknown stage '$stage' (venv or run)" ;; esac
    wanted "$stage" || continue
    pkg=${pkg//\{py\}/$pyver}
    rc=0
    why=$(probe "$probe") || rc=$?
    [ $rc -eq 2 ] && die "$why"
    if [ $rc -ne 0 ]; then
      case " ${missing_pkgs[*]} " in *" $pkg "*) ;; *) missing_pkgs+=("$pkg") ;; esac
      missing_lines+=("$pkg (for $needed): ${why##*$'\n'}")
    fi
  done <<<"$(rows)"
}

pyver=""
if grep -q '{py}' "$TABLE"; then
  pyver=$("$PY" "$here/envcheck.py" version) || die "cannot run $PY (the Python that probes the table)"
fi
if [ -n "$EXPLAIN" ]; then
  rows | while read -r _stage pkg probe needed; do
    target=${probe#*:}
    case $EXPLAIN in *"$target"*)
      echo "$target is missing: Debian/Ubuntu package ${pkg//\{py\}/$pyver} (needed by $needed; envs/system-packages.txt)" ;;
    esac
  done
  exit 0
fi
check
if [ ${#missing_pkgs[@]} -eq 0 ]; then
  say "system packages: all present (${stages[*]:-all stages}; envs/system-packages.txt)"
  exit 0
fi
say "missing system packages:"
for line in "${missing_lines[@]}"; do echo "  $line" >&2; done
cmd="apt-get install -y ${missing_pkgs[*]}"
[ "$CHECK_ONLY" = 1 ] && exit 1
if ! command -v apt-get >/dev/null 2>&1; then
  die "this machine has no apt-get: install the packages that provide the above with its package manager (on Debian/Ubuntu: $cmd), then rerun"
fi
if [ "$(id -u)" != 0 ]; then
  die "installing them needs root; run:
    sudo apt-get update && sudo $cmd
then rerun this command"
fi
say "installing system packages: $cmd"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" >"$log" 2>&1; then
  say "apt-get install failed; updating the package lists (apt-get update) and retrying"
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"; } >>"$log" 2>&1; then
    sed 's/^/  apt: /' "$log" >&2
    die "apt-get failed (its output above); the command was: apt-get update && $cmd"
  fi
fi
check
if [ ${#missing_pkgs[@]} -ne 0 ]; then
  sed 's/^/  apt: /' "$log" >&2
  for line in "${missing_lines[@]}"; do echo "  $line" >&2; done
  die "apt-get succeeded but these are still missing (above)"
fi
say "system packages: installed ($cmd)"
