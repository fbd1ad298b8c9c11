#!/bin/bash
# one engine per process, rotated; $1 rounds, F folder, VARS engines
cd /work/main
V=(${VARS:-edgegen-ov genai-pa})
N=${#V[@]}
for r in $(seq 1 ${1:-3}); do for i in $(seq 0 $((N-1))); do v=${V[$(( (i + r) % N ))]}; .venv/bin/python -W ignore /work/scratch/s12/ovvar.py $F $v 2>&1 | tail -1; done; done
