#!/usr/bin/env bash
# Run the test suite (installs what it needs into .venv first).
#   scripts/test.sh            the whole suite (CI runs this)
#   scripts/test.sh --quick    the inner loop: leaves out every test that exports a real model (< 3 min)
# Extra arguments go to pytest. EDGEGEN_TEST_CACHE=DIR keeps the test exports between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export,dev
.venv/bin/ruff check --quiet edgegen export runtimes tests examples
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest -q -rs -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -q -rs "$@"
