# Sourced by ncu-moe-layer.sh and ncu-decode-step.sh: one Nsight Compute run of the benchmark.
# Needs: TOKENS, NAME (output stem), KERNELS (ncu --kernel-name filter), COUNT (kernels profiled).
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ncu="$(find_tool ncu)" || { echo "ncu: Nsight Compute not found (PATH, /usr/local/cuda*/bin)" >&2; exit 1; }
# shellcheck disable=SC2046
resolve_runner $(layer_flags "$TOKENS")
# ncu serialises every launch, so the benchmark's launch gate would only wait for its watchdog.
export CAPMOE_NO_GATE=1

# The metrics that answer "is it at the ceiling", kept only where this ncu knows them (names
# differ across GPUs: gmma is Hopper's warpgroup MMA pipe, hmma the mma.sync one).
want=(
  gpu__time_duration.sum
  sm__throughput.avg.pct_of_peak_sustained_elapsed
  gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed
  dram__throughput.avg.pct_of_peak_sustained_elapsed
  dram__bytes_read.sum
  dram__bytes_write.sum
  lts__t_sector_hit_rate.pct
  sm__warps_active.avg.pct_of_peak_sustained_active
  sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
  sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  sm__inst_executed_pipe_tensor_op_gmma.sum
  sm__inst_executed_pipe_tensor_op_hmma.sum
  launch__grid_size
  launch__occupancy_limit_shared_mem
)
known="$("$ncu" --query-metrics 2>/dev/null | awk 'NF {print $1}' || true)"
keep=()
for m in "${want[@]}"; do
  if [ -z "$known" ] || grep -qx "${m%%.*}" <<<"$known"; then keep+=("$m"); fi
done
[ -n "$known" ] || echo "ncu: --query-metrics gave nothing; asking for every metric (an unknown one fails the run)" >&2
metrics="$(IFS=,; echo "${keep[*]}")"

if [ -n "${NCU_SET:-}" ]; then
  sections=(--set "$NCU_SET")
else
  sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis
            --section Occupancy --section LaunchStats --section SchedulerStats --section WarpStateStats)
fi
rep="$OUT/$NAME"
echo "ncu: profiling $COUNT kernels matching $KERNELS (skip ${SKIP:-0}) of: ${RUN[*]}" >&2
rc=0
"$ncu" --clock-control none --target-processes all \
  --kernel-name-base demangled --kernel-name "$KERNELS" \
  --launch-skip "${SKIP:-0}" --launch-count "$COUNT" \
  "${sections[@]}" --metrics "$metrics" \
  --export "$rep" --force-overwrite \
  "${RUN[@]}" >"$rep.log" 2>&1 || rc=$?
tail -n 20 "$rep.log"
if [ -f "$rep.ncu-rep" ]; then
  "$ncu" --import "$rep.ncu-rep" --print-summary per-kernel >"$rep-summary.txt" 2>&1 || true
  "$ncu" --import "$rep.ncu-rep" --page details --csv >"$rep-details.csv" 2>/dev/null || true
  "$ncu" --import "$rep.ncu-rep" --page raw --csv --metrics "$metrics" >"$rep-metrics.csv" 2>/dev/null || true
  echo "ncu: wrote $rep.ncu-rep (open in the Nsight Compute GUI), $rep-summary.txt, $rep-details.csv, $rep-metrics.csv" >&2
else
  echo "ncu: no report (exit $rc); see $rep.log (ERR_NVGPUCTRPERM: profiling needs admin rights to the GPU counters)" >&2
fi
exit "$rc"
