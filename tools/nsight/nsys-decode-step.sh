#!/usr/bin/env bash
# Nsight Systems timeline of one decode step's MoE layer (T = 64, Mixtral-8x7B shapes, EP-8):
# routing, dispatch, the expert kernels per rank and their launch overheads. A full decode step
# (attention, dense layers, CUDA graphs) needs the model on the GPU, which does not exist yet.
#
#   bash tools/nsight/nsys-decode-step.sh       on the device: carry [".gpu-check"], $OUT set
# Environment as nsys-moe-layer.sh; TOKENS defaults to 64.
set -euo pipefail
TOKENS="${TOKENS:-64}"
NAME="nsys-decode-step-T$TOKENS"
source "$(dirname "$0")/nsys-lib.sh"
