# Sourced by nsys-moe-layer.sh and nsys-decode-step.sh: one Nsight Systems timeline of the
# benchmark and its summary tables. Needs: NAME, and TOKENS (the layer benchmark's flags) or FLAGS
# (the benchmark's flags as given). Optional: NSYS_EXTRA (more nsys profile flags), AFTER (a
# function run once the report exists, with $nsys and $rep set).
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nsys="$(find_tool nsys)" || {
  echo "nsys: Nsight Systems not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-systems); ncu-*.sh need only ncu" >&2
  exit 1
}
# shellcheck disable=SC2046,SC2086
resolve_runner ${FLAGS:-$(layer_flags "$TOKENS")}
rep="$OUT/$NAME"
echo "nsys: tracing ${RUN[*]}" >&2
rc=0
# shellcheck disable=SC2086
"$nsys" profile --trace cuda,nvtx,osrt --sample none --cpuctxsw none ${NSYS_EXTRA:-} \
  --force-overwrite true --output "$rep" "${RUN[@]}" >"$rep.log" 2>&1 || rc=$?
tail -n 20 "$rep.log"
if [ -f "$rep.nsys-rep" ]; then
  # Report names of nsys 2023+; older ones are tried if those fail.
  "$nsys" stats --force-export true --format csv --output "$rep" \
    --report cuda_gpu_kern_sum --report cuda_api_sum --report cuda_gpu_mem_time_sum "$rep.nsys-rep" \
    >"$rep-stats.log" 2>&1 ||
  "$nsys" stats --force-export true --format csv --output "$rep" \
    --report gpukernsum --report cudaapisum --report gpumemtimesum "$rep.nsys-rep" >>"$rep-stats.log" 2>&1 || true
  "$nsys" stats --force-export true --report cuda_gpu_kern_sum "$rep.nsys-rep" 2>/dev/null | head -n 40 || true
  if [ -n "${AFTER:-}" ]; then "$AFTER"; fi
  echo "nsys: wrote $rep.nsys-rep (open in the Nsight Systems GUI) and ${rep}_*.csv summaries" >&2
else
  echo "nsys: no report (exit $rc); see $rep.log" >&2
fi
exit "$rc"
