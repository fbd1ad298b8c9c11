#!/usr/bin/env bash
# Quickstart: install edgegen in .venv and generate with the embedded default model
# (exported to ONNX and OpenVINO on first use, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export
# A mild repetition penalty keeps a 135M model from looping on open-ended prompts.
exec .venv/bin/edgegen run --max-new-tokens 128 --repetition-penalty 1.15 "${@:-Write a short poem about the sea.}"
