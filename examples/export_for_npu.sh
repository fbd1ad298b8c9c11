#!/usr/bin/env bash
# Export the default model for a Core Ultra NPU (static shapes, symmetric int4) and run it there.
# Without an NPU, EDGEGEN_NPUW_DEVICES=CPU runs the same NPU graph pieces on the CPU.
set -euo pipefail
edgegen export --device-profile core-ultra-npu --out smollm2-npu
EDGEGEN_NPUW_DEVICES="${EDGEGEN_NPUW_DEVICES:-}" edgegen run --model smollm2-npu --device NPU "Hello from the NPU!"
