#!/usr/bin/env bash
# One command from a fresh clone to a working `runq`: a .venv with runq and its
# dev/test extras, plus a check of what building llama.cpp needs (cmake, a C/C++
# compiler, and nvcc when an NVIDIA GPU is present). Safe to run again.
set -euo pipefail

cd "$(dirname "$0")"

say() { printf '%s\n' "$*"; }
fail() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# 1. A Python >= 3.11.
python=""
for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
[ -n "$python" ] || fail "runq needs Python 3.11 or newer (Debian/Ubuntu: sudo apt install python3 python3-venv)"

# 2. The virtual environment (reused when it is already there and works).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Creating .venv with $("$python" --version 2>&1)…"
    rm -rf .venv
    "$python" -m venv .venv || fail "could not create .venv (Debian/Ubuntu: sudo apt install python3-venv)"
fi

say "Installing runq and its test tools into .venv…"
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# setuptools warns about every editable install (folders named like the package); nothing to act on here.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' ||
    fail "pip could not install runq: see the messages above (network or package index problem?)"

# 3. What building llama.cpp needs. runq plans and inspects without them; `runq build` needs them.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=("cmake (apt: cmake)")
{ command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1; } ||
    missing+=("a C compiler (apt: build-essential)")
{ command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1; } ||
    missing+=("a C++ compiler (apt: build-essential)")
command -v git >/dev/null 2>&1 || missing+=("git, to fetch llama.cpp from GitHub (apt: git; or use runq build --source pypi)")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nvcc_found=""
    command -v nvcc >/dev/null 2>&1 && nvcc_found=yes
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
        [ -x "$d/nvcc" ] && nvcc_found=yes
    done
    [ -n "$nvcc_found" ] || missing+=("nvcc, for a CUDA build of llama.cpp (apt: nvidia-cuda-toolkit, or NVIDIA's CUDA toolkit)")
fi

say ""
if [ ${#missing[@]} -eq 0 ]; then
    say "Build tools: all present."
else
    say "Missing for building llama.cpp (planning and inspecting work without them):"
    for m in "${missing[@]}"; do say "  - $m"; done
fi
say ""
say "runq is installed: .venv/bin/runq --help   (or: source .venv/bin/activate; runq --help)"
say "Start here: .venv/bin/runq demo   (a tiny model planned, served and verified; no download)"
