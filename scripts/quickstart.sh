#!/usr/bin/env bash
# Quickstart: install edgegen in .venv and generate with the embedded default model
# (exported to ONNX and OpenVINO on first use, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export
exec .venv/bin/edgegen run "${@:-Write a short poem about the sea.}"
