#!/usr/bin/env bash
# Nsight Systems timeline of the MoE-layer benchmark at prefill size (T = 4096, Mixtral-8x7B
# shapes, EP-8, mixtral skew, none and drop:score at gamma 1.5): every kernel, memory operation and
# CUDA API call, with the per-kernel and per-API summaries. The launch gate stays on (nsys does not
# serialise launches): each chunk of work starts after a cuStreamWaitValue32 and runs back to back.
#
#   bash tools/nsight/nsys-moe-layer.sh         on the device: carry [".gpu-check"], $OUT set
# Environment: TOKENS (4096), EP, SKEW, POLICIES, GAMMA, ITERS, EXTRA_FLAGS, CAPMOE_BIN /
# CAPMOE_PROFILE_CMD (see common.sh). Reading the output: tools/nsight/README.md.
set -euo pipefail
TOKENS="${TOKENS:-4096}"
NAME="nsys-moe-layer-T$TOKENS"
source "$(dirname "$0")/nsys-lib.sh"
