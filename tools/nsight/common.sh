# Shared by the tools/nsight/ scripts (sourced, not run). Resolves what to profile and where the
# Nsight tools are, on the device machine (no Rust there) or on any host with a GPU.
#
# What runs `capmoe bench --device cuda <flags>`, first found:
#   $CAPMOE_BIN                          a capmoe binary built with --features cuda
#   capmoe on PATH, target/release/capmoe, .gpu-check/bin/capmoe
#   the gpu-check pack (.gpu-check/bins.tar.xz from tools/gpu-check.sh): its test binary
#     test-gpu_ep_bench runs the same benchmark through the library when CAPMOE_GPU_BENCH_ARGS
#     holds the flags (test full_bench_from_env)
# $CAPMOE_PROFILE_CMD replaces all of that with a command of your own (e.g. a bench binary).
# Results go to $OUT (the device call's output folder), else ./nsight-out.

set -euo pipefail
nsight_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$PWD/nsight-out}"
mkdir -p "$OUT"

# find_tool NAME: prints the path of an Nsight tool (PATH, then the CUDA install folders).
find_tool() {
  local t="$1" c
  if command -v "$t" >/dev/null 2>&1; then command -v "$t"; return 0; fi
  for c in /usr/local/cuda/bin /usr/local/cuda-*/bin /opt/nvidia/nsight-compute/*/ \
           /opt/nvidia/nsight-systems/*/bin /usr/local/cuda/nsight-compute-*/ /usr/local/cuda/nsight-systems-*/bin; do
    if [ -x "$c/$t" ]; then echo "$c/$t"; return 0; fi
  done
  return 1
}

# unpack_test_binary NAME DIR: extracts bin/NAME from the gpu-check pack into DIR.
unpack_test_binary() {
  local name="$1" dir="$2" pack="$nsight_root/.gpu-check/bins.tar.xz"
  [ -f "$pack" ] || return 1
  if command -v xz >/dev/null 2>&1 && tar -C "$dir" -xJf "$pack" "bin/$name" 2>/dev/null; then
    :
  else
    python3 - "$pack" "$dir" "bin/$name" <<'PY' || return 1
import sys, tarfile
tarfile.open(sys.argv[1], "r:xz").extract(sys.argv[3], sys.argv[2])
PY
  fi
  [ -x "$dir/bin/$name" ]
}

# resolve_runner FLAGS...: sets RUN (an array) to the command that runs the benchmark.
resolve_runner() {
  local b
  if [ -n "${CAPMOE_PROFILE_CMD:-}" ]; then
    # shellcheck disable=SC2206
    RUN=($CAPMOE_PROFILE_CMD); return 0
  fi
  for b in "${CAPMOE_BIN:-}" "$(command -v capmoe 2>/dev/null || true)" \
           "$nsight_root/target/release/capmoe" "$nsight_root/.gpu-check/bin/capmoe"; do
    if [ -n "$b" ] && [ -x "$b" ]; then RUN=("$b" bench "$@"); return 0; fi
  done
  nsight_tmp="$(mktemp -d)"
  if unpack_test_binary test-gpu_ep_bench "$nsight_tmp"; then
    export CAPMOE_GPU_BENCH_ARGS="$*"
    RUN=("$nsight_tmp/bin/test-gpu_ep_bench" --exact full_bench_from_env --nocapture --test-threads=1)
    return 0
  fi
  echo "nsight: nothing to profile: set CAPMOE_BIN to a capmoe built with --features cuda, or run" >&2
  echo "        tools/gpu-check.sh on the build machine and carry .gpu-check to this one" >&2
  return 1
}

# The benchmark's flags for one MoE layer: T tokens, EP-8, mixtral skew, none vs drop:score at
# gamma 1.5, a few iterations (profilers replay kernels: keep runs short).
layer_flags() {
  local tokens="$1"
  echo "--device cuda --tokens $tokens --ep ${EP:-8} --skew ${SKEW:-mixtral} \
--policies ${POLICIES:-none,drop:score} --capacity-factors ${GAMMA:-1.5} --iters ${ITERS:-2} \
--warmup 1 --min-case-ms 0 --telemetry-ms 50 --out $OUT/bench-$tokens ${EXTRA_FLAGS:-}"
}

# Kernel-name filters (ncu matches them against demangled names): the CUTLASS grouped GEMMs
# (SM80 GemmGrouped, SM90 ptr-array GemmUniversal; both inside the capmoe_gg_* launchers), the
# SwiGLU pass, and the routing pipeline (gating, selection, cub radix sorts, plan, dispatch,
# gather, grouped-GEMM arguments, combine).
KERNELS_GEMM='regex:GemmGrouped|GemmUniversal|cutlass'
KERNELS_FFN='regex:GemmGrouped|GemmUniversal|cutlass|swiglu_bf16_kernel'
KERNELS_ROUTING='regex:gate|candidate_keys|segment_starts|mark_kept|apply_kept|order_slots|proposal_keys|advance|init_slots|finish_slots|count_served|write_plan|scatter_flagged|expert_keys|segment_offsets|place_rows|clear_rows|gather_rows_bf16|gemm_args_kernel|combine_kernel|RadixSort|Onesweep|Scan'
