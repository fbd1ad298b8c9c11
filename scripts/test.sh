#!/usr/bin/env bash
# Run the test suite (installs what it needs into .venv first).
#   scripts/test.sh            the suite CI runs: everything but the real Gemma 3 270M, real-model NPU and torch
#                              tests and the `extended` ones
#   scripts/test.sh --quick    the inner loop: leaves out every test that exports a real model (< 3 min)
#   scripts/test.sh --all      everything, the real Gemma 3 270M GGUF and real-model NPU tests too (about 20 min more)
# Extra arguments go to pytest. EDGEGEN_TEST_CACHE=DIR keeps the test exports between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export,dev
.venv/bin/ruff check --quiet edgegen export runtimes tests examples
case "${1:-}" in
  --quick) shift; exec .venv/bin/python -m pytest -q -rs -m "not slow" "$@" ;;
  --all) shift; exec .venv/bin/python -m pytest -q -rs "$@" ;;
  *) exec .venv/bin/python -m pytest -q -rs -m "not real_gemma and not real_npu and not real_torch and not extended" "$@" ;;
esac
