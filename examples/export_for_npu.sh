#!/usr/bin/env bash
# Export the default model for a Core Ultra NPU (static shapes, symmetric int4, the input-embedding IR too) and
# run every strategy there. Without an NPU, EDGEGEN_NPUW_DEVICES=CPU runs the same NPU graph pieces on the CPU.
# The profile places the target on the NPU and the drafter on the CPU (--draft-device overrides); docs/npu.md.
set -euo pipefail
export EDGEGEN_NPUW_DEVICES="${EDGEGEN_NPUW_DEVICES:-}"
edgegen export --device-profile core-ultra-npu --out smollm2-npu
for strategy in ar prompt-lookup superposed; do
  edgegen run --model smollm2-npu --device NPU --strategy "$strategy" --raw "def fibonacci(n):"
done
edgegen run --model smollm2-npu --device NPU --strategy speculative --draft default --raw "def fibonacci(n):"
edgegen run --model default-lud --device NPU --strategy lexical --verified --raw "def fibonacci(n):"
