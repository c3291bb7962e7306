#!/usr/bin/env bash
# The emulated kernel tests: every hand-written CUDA kernel built as host C++ (cuda/emu/) under
# ASan and UBSan and run on the CPU against its CPU twin, through the GPU tests and a fake
# libcuda/libcublas (and a fake one-rank libnccl for tests/gpu_nccl.rs). Results are *emulated*,
# not verified on a GPU (docs/EMULATION.md).
# Installs what it needs (a C++ compiler with libasan/libubsan) when missing; fails on any test
# failure or sanitizer report.
#   tools/emulate.sh [extra cargo test args, e.g. -- --test-threads=1]
# A subset while iterating: cargo test --features emulate --test gpu_driver (no sanitizers), or
# with them: CAPMOE_EMU_SANITIZE=1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=tools/emu-run.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cxx=${CXX:-c++}
if ! command -v "$cxx" > /dev/null || [[ ! -f $("$cxx" -print-file-name=libasan.so) ]]; then
  echo "== installing g++ (with libasan and libubsan)"
  sudo_=; [[ $(id -u) == 0 ]] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq g++ > /dev/null
fi
[[ $(uname -m) == x86_64 ]] || { echo "tools/emulate.sh: the emulator's fibers are x86-64 only" >&2; exit 1; }
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
export CAPMOE_EMU_SANITIZE=1
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$root/tools/emu-run.sh"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
set +e
cargo test --features emulate --test gpu_driver --test gpu_slot_order --test gpu_routing --test gpu_ffn \
  --test gpu_model_parity --test gpu_ep_dist --test gpu_ep_bench "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The launch gate's probe (a unit test: the gate is crate-private), both paths.
cargo test --features emulate --lib cuda::timing 2>&1 | tee -a "$log"
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
# NCCL with one rank over the fake libnccl (cuda/emu/fake_nccl.cpp, built only with feature
# `nccl`, which brings `mpi`: rsmpi's build needs libopenmpi-dev and libclang-dev).
cargo test --features emulate,nccl --test gpu_nccl "$@" 2>&1 | tee -a "$log"
[[ ${PIPESTATUS[0]} == 0 ]] || rc=1
set -e
if grep -qE "ERROR: AddressSanitizer|runtime error:|capmoe emulator:|capmoe fake lib(cuda|nccl):" "$log"; then
  echo "tools/emulate.sh: a sanitizer or emulator report (above)" >&2
  rc=1
fi
echo "tools/emulate.sh: exit $rc after $((SECONDS - start)) s (emulated on the CPU, not verified on a GPU)"
exit "$rc"
