#!/usr/bin/env bash
# Creates (or completes) the development/CI environment in .venv: pinned torch,
# the OpenMMLab 2.x stack and mmcv 2.1.0 with compiled ops, then installs this
# package in editable mode. Safe to re-run: every step checks before it acts.
#
#   bash tools/setup_env.sh            # what `make env` runs
#   VENV=/path/to/venv PYTHON=python3.11 bash tools/setup_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
LOG_DIR="$ROOT/build/logs"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
UV_VERSION=0.13.9
WHEEL_CACHE="${CONVNEXT_MM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convnext_mm/wheels}"
mkdir -p "$LOG_DIR"

# step NAME CMD...: run CMD with its output in build/logs/NAME.log; stop with a
# message naming the step and the log when it fails.
step() {
    local name="$1"; shift
    local log="$LOG_DIR/$name.log"
    echo "[setup_env] $name ..."
    if ! "$@" >"$log" 2>&1; then
        echo "[setup_env] step '$name' FAILED; last lines of $log:" >&2
        tail -n 30 "$log" >&2
        echo "[setup_env] step '$name' FAILED; full log: $log" >&2
        exit 1
    fi
}

PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
UV="$VENV/bin/uv"

if [ ! -x "$PY" ]; then
    step venv "$PYTHON" -m venv "$VENV"
fi

# Packages go in through uv (a pinned release from PyPI, installed by pip): with its cache
# warm it links the 5.5 GB of torch into a new venv where pip unpacks them (this script takes
# about 50 s instead of 2.5 minutes). It is given the indexes, links and constraints pip is
# configured with and, like pip, takes the best version across them; it compiles the modules
# as pip does (with PYTHONDONTWRITEBYTECODE set, every process would compile torch again).
# Without uv, pip does it all.
if [ ! -x "$UV" ]; then
    "${PIP[@]}" install -q "uv==$UV_VERSION" >"$LOG_DIR/uv.log" 2>&1 ||
        echo "[setup_env] uv $UV_VERSION did not install (see $LOG_DIR/uv.log): installing with pip"
fi
INSTALL=("${PIP[@]}" install)
if [ -x "$UV" ]; then
    INSTALL=("$UV" pip install --python "$PY" --compile-bytecode --index-strategy unsafe-best-match)
    while IFS= read -r line; do  # e.g. extra-index-url='file:///a file:///b'
        key="${line%%=*}"; value="${line#*=}"; value="${value//\'/}"
        case "$key" in
            index-url) INSTALL+=(--index-url "$value") ;;
            extra-index-url) for url in $value; do INSTALL+=(--extra-index-url "$url"); done ;;
            find-links) for url in $value; do INSTALL+=(--find-links "$url"); done ;;
            constraint) for file in $value; do INSTALL+=(--constraint "$file"); done ;;
            cert) export SSL_CERT_FILE="$value" ;;
        esac
    done < <("${PIP[@]}" config list 2>/dev/null | sed 's/^[^.]*\.//' | sort -u)
fi

if ! "$PY" - <<PYEOF 2>/dev/null
import torch, torchvision
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert torchvision.__version__.split('+')[0] == '$TORCHVISION_VERSION', torchvision.__version__
PYEOF
then
    step torch "${INSTALL[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

if ! "$PY" -c "import ninja, wheel" 2>/dev/null; then
    step build-tools "${INSTALL[@]}" ninja wheel
fi

if ! "$PY" - "$ROOT/requirements/env.txt" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        req = Requirement(line)
        assert req.specifier.contains(version(req.name), prereleases=True), line
PYEOF
then
    step requirements "${INSTALL[@]}" -r "$ROOT/requirements/env.txt"
fi

mmcv_ok() {
    "$PY" - <<PYEOF 2>/dev/null
import mmcv, mmcv.ops
assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__
PYEOF
}

build_mmcv() (  # a subshell: the exports below stay inside it
    local src="$1" out="$2"
    # mmcv 2.1.0's setup.py is known to build with setuptools < 70 (it imports
    # pkg_resources and predates setuptools' later build changes), while the
    # venv must keep setuptools >= 77 for torch 2.14. The build (run without
    # isolation, so it compiles against the venv's torch) therefore sees
    # setuptools < 70 from a throw-away folder first on PYTHONPATH.
    "${PIP[@]}" install --target "$src/build-setuptools" "setuptools<70" &&
    export PYTHONPATH="$src/build-setuptools${PYTHONPATH:+:$PYTHONPATH}" &&
    export PATH="$VENV/bin:$PATH" &&
    "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$src" &&
    tar -xzf "$src/mmcv-$MMCV_VERSION.tar.gz" -C "$src" &&
    # torch >= 2.10 headers use C++20; mmcv 2.1.0 hard-codes -std=c++17 for
    # both g++ and nvcc, so raise the standard in its setup.py before building.
    sed -i 's/-std=c++17/-std=c++20/g' "$src/mmcv-$MMCV_VERSION/setup.py" &&
    grep -n 'std=c++20' "$src/mmcv-$MMCV_VERSION/setup.py" &&
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$out" "$src/mmcv-$MMCV_VERSION"
)

if ! mmcv_ok; then
    # A GPU build needs nvcc and a visible GPU (or FORCE_CUDA=1 from the user).
    if [ "${FORCE_CUDA:-0}" = "1" ] || { command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null \
            && nvidia-smi -L >/dev/null 2>&1; }; then
        export FORCE_CUDA=1
        flavour=cuda
    else
        export FORCE_CUDA=0
        flavour=cpu
    fi
    pytag="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    cache_dir="$WHEEL_CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$pytag-$flavour"
    wheel="$(ls "$cache_dir"/mmcv-*.whl 2>/dev/null | head -n 1 || true)"
    if [ -z "$wheel" ]; then
        echo "[setup_env] building mmcv $MMCV_VERSION with ops ($flavour, FORCE_CUDA=$FORCE_CUDA) from the PyPI sdist;"
        echo "[setup_env]   patching its setup.py from -std=c++17 to -std=c++20 (torch $TORCH_VERSION headers need C++20)."
        echo "[setup_env]   this takes 10-15 minutes on 2 cores; the wheel is kept in $cache_dir"
        work="$(mktemp -d)"
        step mmcv-build build_mmcv "$work" "$work/dist"
        mkdir -p "$cache_dir"
        cp "$work"/dist/mmcv-*.whl "$cache_dir/"
        rm -rf "$work"
        wheel="$(ls "$cache_dir"/mmcv-*.whl | head -n 1)"
    else
        echo "[setup_env] reusing the mmcv wheel built earlier: $wheel"
    fi
    step mmcv-install "${INSTALL[@]}" "$wheel"
    mmcv_ok || { echo "[setup_env] mmcv installed but mmcv.ops does not import; see $LOG_DIR/mmcv-install.log" >&2; exit 1; }
fi

# Checked from / so that the working tree's own folder does not count as installed.
if ! (cd / && "$PY" -c "import convnext_mm, sys; sys.exit(not convnext_mm.__file__.startswith('$ROOT/'))") 2>/dev/null; then
    step package "${INSTALL[@]}" --no-deps --no-build-isolation -e "$ROOT"
fi

# mmpretrain is a test reference only (tests/test_checkpoint.py), kept out of site-packages: mmdet
# imports it whenever it is installed, and mmpretrain 1.2's BLIP models fail to import with
# transformers 5 (TypeError), which would break every mmdet and mmseg model.
MMPRETRAIN_DIR="$VENV/test-reference/mmpretrain"
if [ ! -d "$MMPRETRAIN_DIR/mmpretrain-1.2.0.dist-info" ]; then
    step mmpretrain "${INSTALL[@]}" --no-deps --target "$MMPRETRAIN_DIR" mmpretrain==1.2.0
fi

echo "[setup_env] environment ready: $VENV"
