#!/usr/bin/env bash
# Set up .venv with rlsd installed (editable). Usage: bash scripts/bootstrap.sh [--dev]
#
# torch is installed first and pinned (RLSD_TORCH, default torch==2.13.0, the CPU wheel these
# machines carry): an unpinned torch, pulled in by any dependency, downloads a multi-GB CUDA
# build. On a GPU machine set RLSD_TORCH to the build you want (e.g. RLSD_TORCH=torch).
# rlsd's own requirement stays a range (torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=""
[ "${1:-}" = "--dev" ] && EXTRAS="[dev]"

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "rlsd needs Python >= 3.10"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  "${PIP[@]}" install "${RLSD_TORCH:-torch==2.13.0}"
fi
"${PIP[@]}" install -e ".${EXTRAS}"
echo "rlsd is installed in .venv ($(.venv/bin/rlsd --version))" >&2
