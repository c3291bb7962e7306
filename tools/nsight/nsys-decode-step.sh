#!/usr/bin/env bash
# Nsight Systems timeline of whole-model decode steps on the GPU: `capmoe bench --device cuda
# --e2e` with Mixtral-8x7B shapes (LAYERS of them, random weights drawn on the device), BATCH
# sequences, STEPS greedy decode steps per case. Each step is one replay of the captured decode
# graph (every layer's attention and KV append, the device-routed MoE layer, the LM head and the
# greedy pick), traced node by node (--cuda-graph-trace node), and decode-syncs.py reads the API
# trace: per step, one cuGraphLaunch and the host syncs around it, none between the launch and
# the graph's last kernel.
#
#   bash tools/nsight/nsys-decode-step.sh       on the device: carry [".gpu-check"], $OUT set
# Environment: LAYERS (4), BATCH (64), SEQ_LEN (64), STEPS (8), POLICIES (none,drop:score), GAMMA
# (1.5), EXTRA_FLAGS, CAPMOE_BIN / CAPMOE_PROFILE_CMD (see common.sh).
set -euo pipefail
BATCH="${BATCH:-64}"
NAME="nsys-decode-step-B$BATCH"
OUT="${OUT:-$PWD/nsight-out}"
FLAGS="--device cuda --e2e --config mixtral-8x7b --layers ${LAYERS:-4} --batch $BATCH \
--seq-len ${SEQ_LEN:-64} --decode-steps ${STEPS:-8} --policies ${POLICIES:-none,drop:score} \
--capacity-factors ${GAMMA:-1.5} --iters 1 --out $OUT/bench-decode ${EXTRA_FLAGS:-}"
NSYS_EXTRA="--cuda-graph-trace node"
AFTER="decode_syncs"
decode_syncs() {
  "$nsys" stats --force-export true --format csv --output "$rep" --report cuda_api_trace \
    "$rep.nsys-rep" >>"$rep-stats.log" 2>&1 || true
  local trace
  trace="$(ls "$rep"_cuda_api_trace*.csv 2>/dev/null | head -1 || true)"
  if [ -n "$trace" ]; then
    python3 "$(dirname "${BASH_SOURCE[0]}")/decode-syncs.py" "$trace" | tee "$rep-syncs.txt"
  else
    echo "nsys: no cuda_api_trace export; see $rep-stats.log" >&2
  fi
}
source "$(dirname "$0")/nsys-lib.sh"
