#!/usr/bin/env bash
# Nsight Compute on one decode step's MoE layer: T = 64 tokens (one token per sequence of a
# 64-sequence decode batch), Mixtral-8x7B shapes, EP-8, the expert GEMMs + SwiGLU and the whole
# routing pipeline (gating, capacity selection, cub sorts, plan, dispatch, gather, combine). At
# this size the grouped GEMMs should be bound by reading the experts' weights from HBM.
#
# A full decode step (attention over the KV cache, the dense projections, CUDA graphs) needs the
# model on the GPU, which capmoe does not have yet: this profiles the MoE layer part of the step.
#
#   bash tools/nsight/ncu-decode-step.sh        on the device: carry [".gpu-check"], $OUT set
# Environment as ncu-moe-layer.sh; TOKENS defaults to 64, COUNT to 80.
set -euo pipefail
TOKENS="${TOKENS:-64}"
NAME="ncu-decode-step-T$TOKENS"
COUNT="${COUNT:-80}"
source "$(dirname "$0")/common.sh"
KERNELS="${KERNELS:-${KERNELS_FFN}|${KERNELS_ROUTING#regex:}}"
source "$(dirname "$0")/ncu-lib.sh"
