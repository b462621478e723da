#!/usr/bin/env bash
# The first thing to run on a GPU machine (at most 8 minutes on one GPU):
#   bash launch/gpu_check.sh [WORKDIR]      # default WORKDIR: runs/gpu-check
# SmolLM2 erased on cuda in one process and on the distributed engine (1 group of 1 rank,
# NCCL), each ΔΘ checked against the CPU's (≤ 1e-3), one fd HVP and one erase timed on
# each, then a cut-down `eraser experiment qm --preset gpu`. Prints one JSON summary; exits
# 0 when every check holds, 1 when one fails, 2 on a machine without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout --signal=INT 480 "$PYTHON" -m launch.gpu_check "$@"
