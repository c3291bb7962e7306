#!/usr/bin/env bash
# gpu-check: build every GPU test and benchmark binary HERE (no GPU needed), pack them into the
# git-ignored .gpu-check/, and print the one device call that runs them all (design.md §5).
#
#   tools/gpu-check.sh              build + pack, print the device call
#   tools/gpu-check.sh --rehearse   build + pack, then run .gpu-check/run.sh here with OUT=a temp
#                                   dir (GPU tests skip without a GPU) and show the report
#   tools/gpu-check.sh --quick      the first call of a device session: print (or with --rehearse,
#                                   run) `run.sh --quick`: correctness binaries only, no benches,
#                                   no peers, at most 240 s of tests; the first failing test is
#                                   rerun alone with CUDA_LAUNCH_BLOCKING=1, then under
#                                   compute-sanitizer memcheck if time is left
# Binaries run in a fixed order (lib unit tests, gpu_driver, gpu_routing, gpu_slot_order, gpu_ffn,
# gpu_model_parity, gpu_ep_dist, gpu_nccl (one NCCL rank; built with feature `nccl`; a machine
# without libnccl gives its typed error as a skip), then the EP and e2e benchmark tests, benches
# last), each under its own cap, so a hang costs at most its cap. Module loading is LAZY except
# for the timing binaries (EAGER); the decode-graph tests run under both.
# Options:
#   --all-tests      every test binary with every test (default: integration tests whose target
#                    name contains gpu or cuda, plus the unit tests under a `cuda` path of the lib)
#   --benches REGEX  bench targets to run (default: all but the CPU-only ones in SKIP_BENCHES)
#   --budget SECS    time run.sh may spend before it skips the remaining binaries (default 420)
#   --measure SECS   criterion --measurement-time per benchmark (default 1; warm-up is a quarter)
#   --peers SECS     seconds kept out of the budget for tools/peers/ffn_peers.py, which runs after
#                    the binaries (torch peers and ceilings of the expert-FFN report; default 75;
#                    0 skips it). Its own measurement budget is this minus 30 s of set-up.
#
# On the device (no Rust, no network; CUDA 13 driver; $OUT set) the call is:
#   command: bash .gpu-check/run.sh     carry: [".gpu-check"]     timeout_s: budget + 60
# The binaries travel xz-compressed (.gpu-check/bins.tar.xz: test binaries share the CUTLASS
# kernels, which compress well across files); run.sh unpacks them into a temp dir on the device.
# run.sh first checks glibc (>= 2.35) and the driver (>= 580.65, for CUDA 13.0), else it stops
# with that message, finds one cuBLAS tree (the first folder with both libcublas and libcublasLt
# among the CUDA toolkit dirs, PyTorch's nvidia/cublas/lib and torch/lib, ldconfig; it prints
# the one it uses; a GPU machine without it gets a failing `check libcublas` row), records
# `nvidia-smi -L` and the driver, runs each test binary with
# --test-threads=1 --nocapture, then each bench binary, then the peers script (if python3 is
# there; it records "torch not available" without torch), and writes $OUT/report.md (the first
# failing test of each binary with its panic message), $OUT/report.json, $OUT/peers.json,
# $OUT/log.txt and every log whole under $OUT/logs/; it exits non-zero if a test, a bench
# binary or the peers script failed.
#
# Committing a report: a kernel counts as verified only when a committed report shows its
# GPU-vs-oracle tests passing. Copy the markdown with the commit it measured:
#   cp <files_at>/report.md bench/results/gpu-check-$(date +%F)-$(git rev-parse --short HEAD).md
#   git add bench/results/gpu-check-*.md && git commit -m "gpu-check report"
# (report.md names the commit it was built from; a dirty tree is flagged there.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

rehearse=0 all_tests=0 budget=420 measure=1 benches="" peers=75 quick=0
SKIP_BENCHES="${SKIP_BENCHES:-routing}" # CPU-oracle benches: nothing to learn on the GPU machine
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) rehearse=1 ;;
    --quick) quick=1 ;;
    --all-tests) all_tests=1 ;;
    --benches) benches="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --measure) measure="$2"; shift ;;
    --peers) peers="$2"; shift ;;
    -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
command -v python3 >/dev/null || { echo "gpu-check: python3 is needed" >&2; exit 1; }
if [ -z "${NVCC:-}${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null && [ ! -x .cuda/site/nvidia/cu13/bin/nvcc ]; then
  echo "gpu-check: installing the CUDA toolchain (tools/setup-cuda.sh)" >&2
  tools/setup-cuda.sh >/dev/null
fi

pack="$root/.gpu-check"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Release test binaries: the EP and e2e runs inside them time real work, and host code in a debug
# build would add launch gaps; assert! still holds (only debug_assert! and overflow checks go).
echo "== building test binaries (cargo test --release --features cuda,telemetry --no-run)" >&2
cargo test --release --features cuda,telemetry --no-run --message-format=json >"$tmp/tests.json"
# The one-rank NCCL test needs feature `nccl` (which brings `mpi`: Open MPI to build; the binary
# does not load libmpi) and is built alone with it; libnccl is loaded at run time, if at all.
echo "== building the NCCL test (cargo test --release --features cuda,telemetry,nccl --test gpu_nccl --no-run)" >&2
cargo test --release --features cuda,telemetry,nccl --test gpu_nccl --no-run --message-format=json >"$tmp/nccl.json"
echo "== building bench binaries (cargo bench --features cuda,telemetry --no-run, release)" >&2
cargo bench --features cuda,telemetry --no-run --message-format=json >"$tmp/benches.json"

rm -rf "$pack"
mkdir -p "$pack" "$tmp/bin"
# manifest.txt: kind|name|file|args   (one binary per line, run in this order; file is relative
# to the folder bins.tar.xz unpacks into)
python3 - "$tmp" "$pack" "$all_tests" "$benches" "$SKIP_BENCHES" <<'PY'
import json, os, re, shutil, subprocess, sys
tmp, pack, all_tests, bench_re, skip = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5].split(",")
def artifacts(path):
    for line in open(path):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            yield m["target"]["name"], m["target"]["kind"][0], m["executable"], m["profile"]["test"]
rows, seen = [], set()
os.makedirs(os.path.join(tmp, "bin"), exist_ok=True)
def test_artifacts():
    # gpu_nccl from its own `nccl` build; the default build's copy holds no test (cfg(feature)).
    for a in artifacts(os.path.join(tmp, "nccl.json")):
        if a[0] == "gpu_nccl" and a[1] == "test":
            yield a
    for a in artifacts(os.path.join(tmp, "tests.json")):
        if not (a[0] == "gpu_nccl" and a[1] == "test"):
            yield a
for name, kind, exe, is_test in test_artifacts():
    if kind == "bin" and name == "capmoe" and not is_test:
        # The CLI itself (the GPU tests that run `capmoe bench` find it through CAPMOE_BIN).
        shutil.copy2(exe, os.path.join(tmp, "bin", "capmoe"))
        subprocess.run(["strip", "--strip-debug", os.path.join(tmp, "bin", "capmoe")], check=False)
        print(f"  tool  capmoe {os.path.getsize(exe) / 2**20:6.1f} MiB (unstripped)", file=sys.stderr)
        continue
    args = "--test-threads=1 --nocapture"  # --nocapture: the skip reasons of GPU tests show
    if kind == "test":
        if not all_tests and not re.search("gpu|cuda", name):
            continue
    elif kind == "lib":
        if not all_tests:
            args += " cuda"  # unit tests under a `cuda` module path only
    elif kind != "bin" or not all_tests:
        continue
    else:
        continue
    rows.append(("test", f"{kind}-{name}", exe, args))
for name, kind, exe, _ in artifacts(os.path.join(tmp, "benches.json")):
    if kind != "bench" or (bench_re and not re.search(bench_re, name)) or (not bench_re and name in skip):
        continue
    rows.append(("bench", name, exe, ""))
# A fixed order, cheapest and most basic first, so a failure or hang costs the least and the
# routing kernels (which everything else uses) report first. Each binary has its own cap (s).
# class: `check` binaries are correctness (the --quick call runs only these, with lazy module
# loading); `timed` ones time work (eager module loading: a first load behind the EP benchmark's
# gated stream stalls).
ORDER = [("lib-capmoe", 90, "check"), ("test-gpu_driver", 60, "check"), ("test-gpu_routing", 180, "check"),
         ("test-gpu_slot_order", 90, "check"), ("test-gpu_ffn", 150, "check"),
         ("test-gpu_model_parity", 150, "check"), ("test-gpu_ep_dist", 60, "check"),
         ("test-gpu_nccl", 60, "check"),
         ("test-gpu_ep_bench", 180, "timed"),
         ("test-gpu_e2e_bench", 180, "timed")]
def place(row):
    kind, name = row[0], row[1]
    for i, (n, cap, cls) in enumerate(ORDER):
        if n == name:
            return (i, cap, cls)
    return (len(ORDER) + (1 if kind == "bench" else 0), 120, "timed" if kind == "bench" else "check")
rows.sort(key=lambda r: (place(r)[0], r[1]))
with open(os.path.join(pack, "manifest.txt"), "w") as f:
    for row in rows:
        kind, name, exe, args = row
        if name in seen:
            continue
        seen.add(name)
        _, cap, cls = place(row)
        dest = os.path.join(tmp, "bin", name)
        shutil.copy2(exe, dest)
        subprocess.run(["strip", "--strip-debug", dest], check=False)
        f.write(f"{kind}|{name}|bin/{name}|{args}|{cap}|{cls}\n")
        print(f"  {kind:5} {name:32} {os.path.getsize(dest) / 2**20:6.1f} MiB  cap {cap:3d} s  {cls}", file=sys.stderr)
        if name == "test-gpu_model_parity":
            # The decode graph again under eager module loading (the first run is lazy, what
            # library users and `capmoe generate` get): captures must hold under both.
            f.write(f"test|{name}-eager|bin/{name}|{args} decode_graph|90|check-eager\n")
PY
raw=$(du -sb "$tmp/bin" | cut -f1)
echo "== compressing $((raw / 1048576)) MiB of binaries (xz, one 256 MiB window)" >&2
# One window over the whole tar (no multi-threaded blocks): every binary embeds the same CUTLASS
# fatbins, and a match back into the previous binary is what makes the pack small.
tar -C "$tmp" -cf - bin | xz -T1 --lzma2=preset=6,dict=256MiB >"$pack/bins.tar.xz"
cp tools/gpu-check-report.py "$pack/report.py"
mkdir -p "$pack/peers"
cp tools/peers/ffn_peers.py "$pack/peers/"
commit="$(git rev-parse --short=12 HEAD)"
dirty=0; git diff --quiet HEAD -- . ':!ptx' 2>/dev/null || dirty=1
cat >"$pack/meta.txt" <<EOF
commit=$commit
dirty=$dirty
built=$(date -u +%FT%TZ)
host=$(uname -m)
archs=${CAPMOE_CUDA_ARCHS:-80;90a}
budget_s=$budget
peers_s=$peers
binaries_mib=$((raw / 1048576))
build_root=$root
build_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
EOF

cat >"$pack/run.sh" <<'RUN'
#!/usr/bin/env bash
# Generated by tools/gpu-check.sh: runs the packed test and bench binaries, writes $OUT/report.*.
#   bash .gpu-check/run.sh            every binary in the manifest's order, each under its cap
#   bash .gpu-check/run.sh --quick    correctness binaries only (no benches, no peers), at most
#                                     GPU_CHECK_QUICK_S (default 240) s; the first failing test is
#                                     rerun alone with CUDA_LAUNCH_BLOCKING=1, then under
#                                     compute-sanitizer memcheck when time is left
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
: "${OUT:?OUT must name the folder for the report}"
mkdir -p "$OUT/logs"
quick=0; [ "${1:-}" = --quick ] && quick=1
budget="${GPU_CHECK_BUDGET_S:-@BUDGET@}" measure="${GPU_CHECK_MEASURE_S:-@MEASURE@}"
peers="${GPU_CHECK_PEERS_S:-@PEERS@}"
if [ "$quick" = 1 ]; then budget="${GPU_CHECK_QUICK_S:-240}"; peers=0; fi
command -v python3 >/dev/null || peers=0
work="$(mktemp -d)"
start=$(date +%s)
cp "$here/meta.txt" "$work/meta.txt"
# The binaries, unpacked next to the logs (tar with xz, else Python's lzma).
bins="$work/unpacked"
mkdir -p "$bins"
if ! { command -v xz >/dev/null && tar -C "$bins" -xJf "$here/bins.tar.xz"; }; then
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
    "$here/bins.tar.xz" "$bins" || { echo "gpu-check: cannot unpack $here/bins.tar.xz"; exit 1; }
fi
echo "unpacked the binaries in $(( $(date +%s) - start ))s"
echo "date=$(date -u +%F)" >>"$work/meta.txt"
echo "mode=$([ "$quick" = 1 ] && echo quick || echo full)" >>"$work/meta.txt"
have_gpu=0
command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q "^GPU " && have_gpu=1
# The driver first: the binaries link cudart 13.0, which needs driver 580.65 or newer. An older
# one fails every test with one opaque error, so stop here with the reason instead.
if [ "$have_gpu" = 1 ]; then
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')"
  echo "driver=${driver:-unknown}" >>"$work/meta.txt"
  if [ -z "$driver" ] || ! printf '%s\n580.65\n' "$driver" | sort -V -C -r 2>/dev/null; then
    msg="gpu-check: NVIDIA driver ${driver:-unknown} found; the binaries use CUDA 13.0, which needs driver >= 580.65: nothing can run here"
    echo "$msg" | tee "$OUT/report.md" >&2
    exit 1
  fi
fi
: >"$work/results.txt"
# The binaries are linked against the build machine's glibc: they need 2.35 or newer.
glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
[ -n "$glibc" ] || glibc="$(ldd --version 2>/dev/null | head -n1 | awk '{print $NF}')"
echo "glibc=${glibc:-unknown}" >>"$work/meta.txt"
echo "glibc here: ${glibc:-unknown} (the binaries need >= 2.35; built with $(sed -n 's/^build_glibc=//p' "$here/meta.txt"))"
if [ -z "$glibc" ] || ! printf '%s\n2.35\n' "$glibc" | sort -V -C -r 2>/dev/null; then
  msg="gpu-check: glibc ${glibc:-unknown} found, the packed binaries need glibc >= 2.35: nothing can run here"
  echo "$msg" | tee "$OUT/report.md" >&2
  exit 1
fi
# Module loading is lazy (CUDA 13's default, what library users get) except for the binaries
# that time work (class `timed` in the manifest): there a first load that waits behind the EP
# benchmark's gated stream stalls (issue 13), so they load eagerly.
export CUDA_MODULE_LOADING=LAZY
# cuBLAS for the GPU model (cudarc loads libcublas.so at run time). Looked for in PyTorch's
# environment (the nvidia-cublas wheel, torch/lib), the CUDA toolkit folders and ldconfig's
# cache; the folders found go on LD_LIBRARY_PATH.
cublas_dirs="$( {
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-13* /opt/cuda; do
    [ -n "$home" ] && ls -d "$home"/lib64 "$home"/lib "$home"/targets/*/lib 2>/dev/null
  done
  python3 - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = set(sys.path) | set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
try:
    import torch  # its wheel's own lib/ and the nvidia-* wheels next to it
    roots.add(os.path.dirname(os.path.dirname(torch.__file__)))
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
for r in sorted(r for r in roots if r and os.path.isdir(r)):
    for f in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so*"), recursive=True):
        print(os.path.dirname(f))
PY
  ldconfig -p 2>/dev/null | awk '/libcublas\.so/ {print $NF}' | xargs -r -n1 dirname
} | awk 'NF && !seen[$0]++')"
# One tree only: cuBLAS and cuBLASLt from different installs must not mix, so the first folder
# that holds both (CUDA 13's .so.13 first) is the one put on LD_LIBRARY_PATH.
cublas_found="" cublas_dir=""
for want in 13 ""; do
  for d in $cublas_dirs; do
    if ls "$d"/libcublas.so*${want:+.$want}* >/dev/null 2>&1 && ls "$d"/libcublasLt.so* >/dev/null 2>&1; then
      cublas_dir="$d"; break 2
    fi
  done
done
if [ -n "$cublas_dir" ]; then
  LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cublas_found="$(ls "$cublas_dir"/libcublas.so* | head -n1)"
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
if [ -n "$cublas_found" ]; then
  echo "libcublas: $cublas_found (the one tree used; cuBLASLt from the same folder)"
elif [ "$have_gpu" = 1 ]; then
  # A clear failure row instead of a panic inside the model tests; the routing and FFN
  # binaries (no cuBLAS) still run.
  msg="libcublas.so not found (looked in CUDA_HOME, /usr/local/cuda*, PyTorch's site-packages nvidia/cublas/lib and torch/lib, ldconfig): the GPU model tests cannot run; install the CUDA toolkit or nvidia-cublas, or set LD_LIBRARY_PATH"
  echo "gpu-check: $msg" >&2
  echo "$msg" >"$work/check-libcublas.log"
  echo "check|libcublas|2|0|$work/check-libcublas.log|$msg" >>"$work/results.txt"
else
  echo "libcublas: not found (no GPU here either: GPU tests skip)"
fi
# NCCL for test-gpu_nccl (one rank). cudarc loads `libnccl.so` (never `libnccl.so.2`, the name of
# the NVIDIA wheel nvidia-nccl-cu13 and of libnccl2): a folder holding libnccl.so goes on
# LD_LIBRARY_PATH; where only libnccl.so.2 exists, a libnccl.so symlink to it in a temp folder
# does (the remedy capmoe's typed error names). Without NCCL the test reports that typed error
# and skips: the expected outcome on such a machine, shown in the report's skip lines.
nccl_found=""
for d in $( {
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-13* /opt/cuda; do
    [ -n "$home" ] && ls -d "$home"/lib64 "$home"/lib "$home"/targets/*/lib 2>/dev/null
  done
  python3 - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = set(sys.path) | set(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
for r in sorted(r for r in roots if r and os.path.isdir(r)):
    for f in glob.glob(os.path.join(r, "nvidia", "nccl", "lib", "libnccl.so*")):
        print(os.path.dirname(f))
PY
  ldconfig -p 2>/dev/null | awk '/libnccl\.so/ {print $NF}' | xargs -r -n1 dirname
} | awk 'NF && !seen[$0]++'); do
  if [ -e "$d/libnccl.so" ]; then
    nccl_found="$d/libnccl.so"; LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break
  elif [ -e "$d/libnccl.so.2" ]; then
    mkdir -p "$work/nccl-link" && ln -sf "$d/libnccl.so.2" "$work/nccl-link/libnccl.so"
    nccl_found="$d/libnccl.so.2 (as $work/nccl-link/libnccl.so)"
    LD_LIBRARY_PATH="$work/nccl-link${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break
  fi
done
export LD_LIBRARY_PATH
echo "libnccl: ${nccl_found:-not found, so test-gpu_nccl reports the typed NoNccl error and skips}"
{
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "LD_LIBRARY_PATH (cuBLAS search): ${LD_LIBRARY_PATH:-<empty>}"
    echo "libcublas: ${cublas_found:-not found}; glibc ${glibc}; CUDA_MODULE_LOADING=$CUDA_MODULE_LOADING"
    echo "libnccl: ${nccl_found:-not found}"
  else
    echo "nvidia-smi not found: no NVIDIA driver here (GPU tests should skip)"
  fi
} >"$work/gpu.txt" 2>&1
cat "$work/gpu.txt"
# Tests that find fixtures through the compile-time CARGO_MANIFEST_DIR: point that path here.
build_root="$(sed -n 's/^build_root=//p' "$here/meta.txt")"
if [ -n "$build_root" ] && [ ! -e "$build_root" ] && [ "$build_root" != "$root" ]; then
  mkdir -p "$(dirname "$build_root")" 2>/dev/null && ln -s "$root" "$build_root" 2>/dev/null || true
fi
cd "$root"
export CARGO_MANIFEST_DIR="$root" RUST_BACKTRACE=1 CRITERION_HOME="$work/criterion" NO_COLOR=1
export CAPMOE_FIXTURES="$root/tests/fixtures"  # tests look here before their compile-time path
# The GPU tests that run the CLI (`capmoe bench`) find the packed binary here.
export CAPMOE_BIN="$bins/capmoe"
# The headline EP run (test-gpu_ep_bench's full_bench_from_env): Mixtral-8x7B experts, EP-8, the
# mixtral skew, gamma 1.5, prefill and decode batch sizes. Set CAPMOE_GPU_BENCH_ARGS to change it.
export CAPMOE_GPU_BENCH_ARGS="${CAPMOE_GPU_BENCH_ARGS:---device cuda --tokens 4096,64 --ranks 8 --skew mixtral --capacity-factors 1.5 --policies none,drop:score,drop:order,reroute:next-best,expand:local --iters 20 --out $OUT/ep-gpu}"
# The short whole-model run (test-gpu_e2e_bench's e2e_bench_from_env, `capmoe bench --device cuda
# --e2e`): Mixtral-8x7B's shapes cut to 4 layers (~12 GB of bf16 weights drawn on the device),
# T = 4 x 256 prefill + 8 decode steps, EP-8, mixtral skew, gamma 1.5, 4 cases; sized for well under a
# minute (the host's log-softmax over T x 32000 logits per case is most of it).
# The full model (32 layers, ~94 GB, T = 4096) is a separate call:
#   CAPMOE_GPU_E2E_ARGS="--device cuda --e2e --out $OUT/ep-gpu-e2e" bash .gpu-check/run.sh
export CAPMOE_GPU_E2E_ARGS="${CAPMOE_GPU_E2E_ARGS:---device cuda --e2e --config mixtral-8x7b --layers 4 --batch 4 --seq-len 256 --ranks 8 --skew mixtral --capacity-factors 1.5 --policies none,drop:score,reroute:next-best,expand:local --iters 3 --decode-steps 8 --out $OUT/ep-gpu-e2e}"
warm=$(awk "BEGIN{print $measure/4}")
first_fail=""  # binary|file|args|log of the first failing test binary (rerun by --quick)
while IFS='|' read -r kind name file args cap cls; do
  [ -n "$kind" ] || continue
  log="$work/$kind-$name.log"
  if [ "$quick" = 1 ] && [ "${cls:-check}" = timed ]; then
    continue  # --quick: correctness only
  fi
  used=$(( $(date +%s) - start ))
  left=$(( budget - peers - used ))  # the peers' share is kept for them
  if [ "$left" -lt 10 ]; then
    echo "$kind|$name|-1|0|$log|skipped: budget of ${budget}s spent (${peers}s kept for the peers)" >>"$work/results.txt"
    : >"$log"; continue
  fi
  lim=$left; [ -n "${cap:-}" ] && [ "$cap" -lt "$lim" ] && lim=$cap  # one hang costs at most its cap
  loading=LAZY; case "${cls:-check}" in timed|check-eager) loading=EAGER ;; esac
  echo "== $kind $name (cap ${lim}s, ${left}s of budget left, module loading $loading)"
  t0=$(date +%s.%N)
  if [ "$kind" = test ]; then
    # shellcheck disable=SC2086
    CUDA_MODULE_LOADING=$loading timeout -k 5 "$lim" "$bins/$file" $args >"$log" 2>&1
  else
    CUDA_MODULE_LOADING=$loading timeout -k 5 "$lim" "$bins/$file" --bench --noplot --warm-up-time "$warm" --measurement-time "$measure" >"$log" 2>&1
  fi
  rc=$?
  secs=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
  note=""; [ "$rc" = 124 ] && note="timed out"
  # On a machine with a GPU, a test that skipped because it could not open the device passed
  # without testing anything: count it as a failure.
  if [ "$rc" = 0 ] && [ "$have_gpu" = 1 ] && grep -qE "skipped.*(no CUDA driver|CUDA driver call failed)" "$log"; then
    rc=3; note="GPU present but tests skipped: the device could not be opened"
  fi
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out at its cap of ${lim}s"
  echo "$kind|$name|$rc|$secs|$log|$note" >>"$work/results.txt"
  tail -n 3 "$log"
  if [ "$rc" != 0 ] && [ "$kind" = test ] && [ -z "$first_fail" ]; then
    first_fail="$name|$file|$args|$log"
  fi
done <"$here/manifest.txt"
# --quick: the first failing test alone, with synchronous launches (the error surfaces at the
# launch that caused it), then under compute-sanitizer memcheck if time is left.
if [ "$quick" = 1 ] && [ -n "$first_fail" ]; then
  IFS='|' read -r fname ffile fargs flog <<<"$first_fail"
  ftest="$(python3 - "$flog" <<'PY' 2>/dev/null
import re, sys
text = open(sys.argv[1], errors="replace").read()
names = []
for b in re.finditer(r"^failures:\n((?:    \S+\n)+)", text, re.M):
    names = [l.strip() for l in b.group(1).splitlines()]
names = names or re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
names = names or re.findall(r"^test (\S+) \.\.\. $", text, re.M)[-1:]  # died inside this one
print(names[0] if names else "")
PY
)"
  if [ -n "$ftest" ]; then
    for how in blocking memcheck; do
      left=$(( budget - ($(date +%s) - start) ))
      [ "$left" -ge 20 ] || break
      pre=()
      if [ "$how" = memcheck ]; then
        command -v compute-sanitizer >/dev/null || break
        [ "$left" -ge 60 ] || break
        pre=(compute-sanitizer --tool memcheck --error-exitcode 9)
      fi
      rlog="$work/rerun-$fname-$how.log"
      echo "== rerun $fname $ftest ($how, ${left}s left)"
      t0=$(date +%s.%N)
      CUDA_LAUNCH_BLOCKING=1 timeout -k 5 "$left" "${pre[@]}" "$bins/$ffile" --exact "$ftest" --test-threads=1 --nocapture >"$rlog" 2>&1
      rc=$?
      secs=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
      echo "rerun|$fname::$ftest::$how|$rc|$secs|$rlog|" >>"$work/results.txt"
      tail -n 5 "$rlog"
    done
  fi
fi
rm -rf "$bins"
# Peers (torch._grouped_mm, the HF Mixtral block) and the ceilings, on the GPU the binaries left.
if [ "$peers" -gt 0 ]; then
  left=$(( budget - ($(date +%s) - start) ))
  pb=$(( (left < peers ? left : peers) - 30 )); [ "$pb" -lt 15 ] && pb=15
  log="$work/peer-ffn_peers.log"
  echo "== peer ffn_peers (${pb}s of measurements, ${left}s of budget left)"
  t0=$(date +%s.%N)
  timeout $(( pb + 60 )) python3 "$here/peers/ffn_peers.py" --out "$OUT" --budget "$pb" >"$log" 2>&1
  rc=$?
  secs=$(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")
  note=""; [ "$rc" = 124 ] && note="timed out"
  echo "peer|ffn_peers|$rc|$secs|$log|$note" >>"$work/results.txt"
  tail -n 3 "$log"
fi
echo "wall_s=$(( $(date +%s) - start ))" >>"$work/meta.txt"
for f in "$work"/*.log; do [ -e "$f" ] && { echo "===== $(basename "$f")"; tail -c 2000000 "$f"; }; done >"$OUT/log.txt"
# Every log whole, one file each (log.txt above keeps each one's last 2 MB in one place).
for f in "$work"/*.log; do [ -e "$f" ] && cp "$f" "$OUT/logs/"; done
if command -v python3 >/dev/null && python3 "$here/report.py" "$work" "$OUT"; then
  :
else
  { echo "# gpu-check (no python3: raw results)"; echo '```'; cat "$work/gpu.txt" "$work/results.txt"; echo '```'; } >"$OUT/report.md"
fi
echo "report: $OUT/report.md"
if awk -F'|' '$1 != "rerun" && $3 != 0 {bad=1} END {exit !bad}' "$work/results.txt"; then
  echo "gpu-check: FAILED:"; awk -F'|' '$1 != "rerun" && $3 != 0 {print "  " $1 " " $2 " exit " $3 " " $6}' "$work/results.txt"
  exit 1
fi
echo "gpu-check: all binaries passed"
RUN
sed -i "s/@BUDGET@/$budget/; s/@MEASURE@/$measure/; s/@PEERS@/$peers/" "$pack/run.sh"
chmod +x "$pack/run.sh"

size=$(du -sb "$pack" | cut -f1)
echo "== packed $(wc -l <"$pack/manifest.txt") binaries ($((raw / 1048576)) MiB) into .gpu-check/ ($((size / 1048576)) MiB compressed)" >&2
if [ "$size" -gt $((48 * 1048576)) ]; then
  echo "gpu-check: .gpu-check/ is over 48 MiB (compressed); the device call carries at most 64 MiB with the tree" >&2
  exit 1
fi

runarg=""; [ "$quick" = 1 ] && runarg=" --quick"
if [ "$rehearse" = 1 ]; then
  out="$(mktemp -d)"
  echo "== rehearsal: OUT=$out bash .gpu-check/run.sh$runarg" >&2
  rc=0; OUT="$out" bash "$pack/run.sh" $runarg || rc=$?
  echo "== report.md (exit $rc)" >&2
  cat "$out/report.md"
  echo "== rehearsal files: $out (report.md, report.json, log.txt)" >&2
  exit "$rc"
fi

if [ "$quick" = 1 ]; then
  qb="${GPU_CHECK_QUICK_S:-240}"
  cat <<EOF

First device call (--quick: correctness binaries only, at most ${qb}s of tests, then the first
failure rerun alone; the whole call fits in 5 minutes):
  run  command: bash .gpu-check/run.sh --quick
       carry:   [".gpu-check"]
       timeout_s: $((qb + 50))
The second call, when the first passed and time is left: bash .gpu-check/run.sh (every binary).
Then commit the report:
  cp <files_at>/report.md bench/results/gpu-check-\$(date +%F)-$commit.md
EOF
  exit 0
fi
cat <<EOF

Device call (one run; run.sh stops starting binaries after ${budget}s; each binary has its own
cap, in .gpu-check/manifest.txt):
  run  command: bash .gpu-check/run.sh
       carry:   [".gpu-check"]
       timeout_s: $((budget + 60))
Then commit the report:
  cp <files_at>/report.md bench/results/gpu-check-\$(date +%F)-$commit.md
EOF
