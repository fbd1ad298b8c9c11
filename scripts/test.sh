#!/usr/bin/env bash
# Run the whole test suite (installs what it needs into .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export,dev
.venv/bin/ruff check --quiet edgegen export runtimes tests examples
exec .venv/bin/python -m pytest -q -rs "$@"
