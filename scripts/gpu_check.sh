#!/usr/bin/env bash
# The GPU check in one command: RLSD steps on CUDA through `rlsd train` and `--resume`, with
# rollout tokens/s, step time by stage and peak memory (bench/gpu_check.py does the work; its
# docstring lists the runs and the checks).
#
# The lent GPU machine has torch, transformers, accelerate, peft and pytest, and no network. So:
#
# 1. Once, on a CPU machine with PyPI (git-ignored, ~21 MB, 4 Python versions):
#        bash scripts/gpu_check.sh --prepare
#    downloads wheels of rlsd's pure-Python dependencies that such a machine may lack
#    (pydantic, rich, pluggy, pyyaml, packaging, latex2sympy2_extended and what they need)
#    into .gpu-check/wheels.
# 2. In a session that has the GPU machine, through the device tool (it copies the working
#    tree plus the `carry` paths, 64 MiB at most; the results under $OUT come back):
#        run(command="bash scripts/gpu_check.sh", carry=[".gpu-check/wheels"], timeout_s=600)
#    About 3-5 minutes on one H200. Extra arguments go to bench/gpu_check.py.
#
# On the GPU machine nothing is built or downloaded: the missing modules are installed from the
# carried wheels into a private directory (--target, put first on PYTHONPATH: the machine's own
# packages are not touched), and rlsd runs from the source tree with a generated dist-info that
# declares its entry points (no setuptools, no pip install of rlsd itself).
# Try it anywhere: bash scripts/gpu_check.sh --device cpu --small   (the CPU dry run)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$REPO/.gpu-check/wheels"
PY="${PYTHON:-python3}"
REQUIREMENTS=("pydantic>=2.6" "rich>=13" "latex2sympy2_extended>=1.10" "pluggy>=1.5" "pyyaml>=6"
              "packaging>=23")

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$WHEELS"
    for version in 3.10 3.11 3.12 3.13; do
        "$PY" -m pip download --quiet --only-binary=:all: --implementation cp \
            --python-version "$version" --platform manylinux2014_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            --dest "$WHEELS" "${REQUIREMENTS[@]}"
    done
    echo "gpu_check: wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry .gpu-check/wheels"
    exit 0
fi

SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/rlsd-gpu-check-site}"
mkdir -p "$SITE"
# Which requirements this interpreter cannot import at a suitable version (torch and friends
# must be the machine's own: a missing one is an error, not something to install).
MISSING=$("$PY" - "$SITE" <<'PYEOF'
import importlib.util, sys
from importlib.metadata import PackageNotFoundError, version
sys.path.insert(0, sys.argv[1])
for module in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
    if importlib.util.find_spec(module) is None:
        sys.exit(f"gpu_check: this machine lacks {module}; the check uses the machine's own")
wanted = {"pydantic": ("pydantic", 2), "rich": ("rich", 13), "pluggy": ("pluggy", 1),
          "yaml": ("pyyaml", 6), "latex2sympy2_extended": ("latex2sympy2_extended", 1),
          "packaging": ("packaging", 23)}
missing = []
for module, (dist, major) in wanted.items():
    try:
        ok = importlib.util.find_spec(module) is not None and int(version(dist).split(".")[0]) >= major
    except (PackageNotFoundError, ValueError):
        ok = False
    if not ok:
        missing.append(dist)
print(" ".join(missing))
PYEOF
)
if [[ -n "$MISSING" ]]; then
    if [[ ! -d "$WHEELS" ]]; then
        echo "gpu_check: missing $MISSING and no $WHEELS: run 'bash scripts/gpu_check.sh --prepare'" \
             "on a machine with PyPI and carry .gpu-check/wheels" >&2
        exit 2
    fi
    echo "gpu_check: installing $MISSING from the carried wheels into $SITE"
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" --upgrade $MISSING
fi

# rlsd from the source tree; its `rlsd` entry points (the built-in plugins) from a dist-info
# generated out of pyproject.toml, which is all entry-point discovery reads.
"$PY" - "$REPO/pyproject.toml" "$SITE" <<'PYEOF'
import re, sys
from pathlib import Path
text = Path(sys.argv[1]).read_text()
version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
section = text.split("[project.entry-points.rlsd]", 1)[1].split("\n[", 1)[0]
# TOML quotes the values (name = "module"); entry_points.txt must not (name = module).
points = [f"{m.group(1)} = {m.group(2)}" for m in
          re.finditer(r'^([\w.+-]+)\s*=\s*"([^"]+)"', section, re.M)]
dist = Path(sys.argv[2]) / f"rlsd-{version}.dist-info"
dist.mkdir(parents=True, exist_ok=True)
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: rlsd\nVersion: {version}\n")
(dist / "entry_points.txt").write_text("[rlsd]\n" + "\n".join(points) + "\n")
PYEOF
export PYTHONPATH="$SITE:$REPO:$REPO/verifiers:$REPO/plugins${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$REPO/bench/gpu_check.py" "$@"
