#!/usr/bin/env bash
# Test runner for emulated builds with CAPMOE_EMU_SANITIZE=1 (cargo's target runner): preloads
# the compiler's ASan and UBSan runtimes (the kernels are instrumented, the Rust binary is not)
# and makes any report fatal.
set -euo pipefail
cxx=${CXX:-c++}
asan=$("$cxx" -print-file-name=libasan.so)
ubsan=$("$cxx" -print-file-name=libubsan.so)
export LD_PRELOAD="$asan:$ubsan${LD_PRELOAD:+:$LD_PRELOAD}"
# Leaks: Rust test harnesses keep process-lifetime allocations (cudarc's library handles).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
exec "$@"
