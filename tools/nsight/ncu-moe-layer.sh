#!/usr/bin/env bash
# Nsight Compute on the MoE layer at prefill size: the CUTLASS grouped GEMMs (GEMM1 x W13^T, GEMM2
# x W2^T) and the SwiGLU pass of `capmoe bench --device cuda` on Mixtral-8x7B shapes, T = 4096,
# EP-8, mixtral skew, none and drop:score at gamma 1.5. The first kernels are the whole layer's
# forward (every expert), then each rank's forward alone. Runs with --clock-control none (kernels at
# the clocks the benchmark sees; the device machine cannot lock clocks anyway).
#
#   bash tools/nsight/ncu-moe-layer.sh          on the device: carry [".gpu-check"], $OUT set
# Environment: TOKENS (4096), COUNT kernels profiled (24), SKIP kernels first (0), KERNELS (ncu
# --kernel-name filter; default GEMMs + SwiGLU), NCU_SET (e.g. full: every section, slower), EP,
# SKEW, POLICIES, GAMMA, ITERS, EXTRA_FLAGS (benchmark flags), CAPMOE_BIN / CAPMOE_PROFILE_CMD
# (what runs; see common.sh). Reading the output: tools/nsight/README.md.
set -euo pipefail
TOKENS="${TOKENS:-4096}"
NAME="ncu-moe-layer-T$TOKENS"
COUNT="${COUNT:-24}"
source "$(dirname "$0")/common.sh"
KERNELS="${KERNELS:-$KERNELS_FFN}"
source "$(dirname "$0")/ncu-lib.sh"
