#!/usr/bin/env bash
# Mutation check of the emulated kernel tests: applies each deliberate kernel mutant below, one
# at a time, to a temporary copy of cuda/. It rebuilds only the emulated kernel library
# (tools/emu-build.sh; the Rust test binaries are built once) and runs the emulated GPU tests,
# stopping at the first failure. It fails unless every mutant makes some test fail. A mutant
# whose text no longer matches the sources also fails the check: update the list.
#   tools/mutants.sh            (CAPMOE_EMU_SANITIZE=1: mutants under ASan/UBSan too;
#                                CAPMOE_MUTANTS=a,b: only mutants whose name contains a or b)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# Scratch under target/, not /tmp: a CI run lost its /tmp scratch mid-run (something outside this
# script removed it), and target/ is the build's own.
mkdir -p target
work=$(mktemp -d "$root/target/capmoe-mutants.XXXXXX")
trap 'rm -rf "$work"' EXIT
san=
[[ ${CAPMOE_EMU_SANITIZE:-0} == 1 ]] && san=sanitize

# Fastest-killing binaries first.
tests=(gpu_slot_order gpu_model_parity gpu_routing gpu_ffn)
echo "== building the emulated test binaries"
targs=()
for t in "${tests[@]}"; do targs+=(--test "$t"); done
cargo test --features emulate "${targs[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
    if m.get("reason") == "build-script-executed" and m["package_id"].find("capmoe") >= 0 and "/capmoe-" in m["out_dir"]:
        print("OUT_DIR", m["out_dir"])
' > "$work/bins.any"
for t in "${tests[@]}"; do grep "^$t " "$work/bins.any" >> "$work/bins"; done
gen=$(awk '$1 == "OUT_DIR" { print $2 "/emu/gen" }' "$work/bins.any" | tail -1)
[[ -d $gen ]] || { echo "no emulated build output ($gen)" >&2; exit 1; }

# name | file under cuda/ | exact text | replacement (python string literals) | test binary to try
# first (the others follow in the order above)
mutants=(
  "capacity off by one|routing/select.cu|'s - starts[b] < cap'|'s - starts[b] <= cap'"
  "tie-break to the higher expert|common/canonical.cuh|'(pa == pb && a < b)'|'(pa == pb && a > b)'"
  "slot sort dropped|routing/select.cu|'CAPMOE_LAUNCH(blocks_for(sh.tokens), kThreads, 0, stream, order_slots)(pb, a.flags, a.served);'|''"
  "overflow flag inverted|routing/plan.cu|'= !kept;'|'= kept;'|gpu_routing"
  "gate: one expert per lane up to E = 40|routing/gate.cu|'if (s.experts <= 32)'|'if (s.experts <= 40)'|gpu_routing"
  "dispatch tile rounds down|routing/dispatch.cu|'p += (c + tile - 1) / tile * tile;'|'p += c / tile * tile;'|gpu_routing"
  "gemm_args: C rows strided by k|routing/dispatch.cu|'c_ptrs[e] = c + row * n * elem_bytes;'|'c_ptrs[e] = c + row * k * elem_bytes;'|gpu_ffn"
  "combine reads one assignment too many|routing/combine.cu|'a < offsets[t + 1]; ++a'|'a <= offsets[t + 1]; ++a'|gpu_routing"
  "attention: barrier after the q load dropped|model/attention.cu|'qs[d] = ld(qrow + d);\n  __syncthreads();'|'qs[d] = ld(qrow + d);\n'"
  "block_reduce: barrier before reusing red dropped|model/common.cuh|'  __syncthreads();  // red may still be read by a previous reduction\n'|''"
  "rmsnorm sums with max|model/rmsnorm.cu|'ss = block_reduce<true>(ss, red);'|'ss = block_reduce<false>(ss, red);'"
  "swiglu: silu sign|expert/ffn.cu|'expf(-a)'|'expf(a)'|gpu_ffn"
  "plan stats: rerouted counts the top-k|routing/stats.cu|'rerouted += !in_top;'|'rerouted += in_top;'|gpu_model_parity"
  "plan stats: warp sum skips lanes 16-31|routing/stats.cu|'for (int d = 16; d > 0; d >>= 1)'|'for (int d = 8; d > 0; d >>= 1)'|gpu_model_parity"
  "plan record: loads reversed|routing/stats.cu|'record[CAPMOE_REC_HEAD + t] = load[t];'|'record[CAPMOE_REC_HEAD + t] = load[experts - 1 - t];'|gpu_model_parity"
  "plan record: convergence flag ignored|routing/stats.cu|'nb_flags ? static_cast<unsigned>(nb_flags[CAPMOE_NB_CONVERGED]) : 1u'|'1u'|gpu_routing"
  "greedy: ties to the higher column|model/greedy.cu|'(v == w && i < j)'|'(v == w && i > j)'|gpu_model_parity"
  "decode graph: positions never advance|model/greedy.cu|'  if (positions) positions[r] += 1;'|'  (void)positions;'|gpu_model_parity"
  "decode append: keys from the value row|model/attention.cu|'    kc[dst + i] = k[src + i];'|'    kc[dst + i] = v[src + i];'|gpu_model_parity"
)

survived=0
killed=0
start=$SECONDS
for m in "${mutants[@]}"; do
  IFS='|' read -r name file from to first <<< "$m"
  if [[ -n ${CAPMOE_MUTANTS:-} ]]; then
    keep=0
    IFS=',' read -ra want <<< "$CAPMOE_MUTANTS"
    for w in "${want[@]}"; do [[ $name == *"$w"* ]] && keep=1; done
    (( keep )) || continue
  fi
  rm -rf "$work/cuda" "$work/out"
  [[ -d $work ]] || { echo "FAIL: the scratch directory $work is gone (removed from outside)" >&2; exit 1; }
  cp -a cuda "$work/cuda"
  if ! python3 - "$work/cuda/$file" "$from" "$to" <<'PY'
import ast, sys
path, a, b = sys.argv[1], ast.literal_eval(sys.argv[2]), ast.literal_eval(sys.argv[3])
s = open(path).read()
if s.count(a) != 1:
    sys.exit(f"mutant text found {s.count(a)} times in {path}")
open(path, "w").write(s.replace(a, b))
PY
  then
    echo "FAIL: mutant \"$name\" no longer applies" >&2
    exit 1
  fi
  mkdir -p "$work/out"
  # Reuse the unmutated objects: only the mutated file (or every file, for a header) recompiles.
  cp -a "$(dirname "$gen")/obj" "$(dirname "$gen")/flags" "$gen" "$work/out/" 2>/dev/null || true
  t0=$SECONDS
  tools/emu-build.sh "$work/cuda" "$work/out" $san > "$work/build.log" 2>&1 || {
    echo "FAIL: mutant \"$name\" does not compile:" >&2; tail -20 "$work/build.log" >&2; exit 1; }
  verdict=survived
  while read -r tname bin; do
    # The test harness has no fail-fast: stop the binary at its first failing test or abort.
    : > "$work/run.log"  # exists before the poll below first greps it
    LD_LIBRARY_PATH="$work/out" CAPMOE_EMU_SEED=7 ${san:+tools/emu-run.sh} timeout 900 \
      "$bin" --test-threads=2 > "$work/run.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2> /dev/null; do
      if grep -qE "\.\.\. FAILED|panicked|capmoe emulator:|capmoe fake libcuda:|ERROR: AddressSanitizer|runtime error:" "$work/run.log"; then
        kill "$pid" 2> /dev/null || true
        break
      fi
      sleep 1
    done
    if ! wait "$pid" || grep -qE "\.\.\. FAILED|panicked" "$work/run.log"; then
      verdict="killed by $tname"
      break
    fi
  done < <(if [[ -n ${first:-} ]]; then grep "^$first " "$work/bins"; grep -v "^$first " "$work/bins"; else cat "$work/bins"; fi)
  printf '%-55s %s (%ds)\n' "$name" "$verdict" $((SECONDS - t0))
  if [[ $verdict == survived ]]; then survived=$((survived + 1)); else killed=$((killed + 1)); fi
done
echo "mutants: $killed killed, $survived survived, $((SECONDS - start)) s"
[[ $survived == 0 ]]
