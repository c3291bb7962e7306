#!/usr/bin/env bash
# Coverage-guided fuzzing of the .npy reader, the config.json parser,
# safetensors loading (header and index) and routing.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to $FUZZ_SECONDS or 30; TARGETs default to all
# four (npy config safetensors routing). Exits non-zero when a target
# crashes (panic, overflow, timeout of 10 s on one input, or 2 GiB RSS); the
# crashing input is left in fuzz/artifacts/<target>/ -- add it under
# tests/fuzz_regressions/<target>/ so that `cargo test` replays it.
#
# Why libFuzzer through libfuzzer-sys, built this way: it needs no nightly
# (cargo-fuzz passes the same SanitizerCoverage flags, which rustc takes on
# stable, plus -Z sanitizer, which is nightly-only and which safe Rust does
# not need), no external fuzzer binary and no kernel settings (AFL++ wants
# core_pattern and CPU governor changes a CI runner may refuse). The only
# system need is a C++ compiler, for libFuzzer itself.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-${FUZZ_SECONDS:-30}}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(npy config safetensors routing)

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: installing a C++ compiler (libFuzzer is C++)"
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq g++
fi

# cargo-fuzz's instrumentation, minus -Z flags; overflow and debug
# assertions on, so an overflow is a crash, not a wrap.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=fuzz/target
# Not --locked: fuzz/Cargo.lock follows the main crate's dependencies, and
# cargo updates it minimally when those change.
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros,
# which would otherwise need libFuzzer's hooks to link.
host=$(rustc -vV | sed -n 's/^host: //p')
start=$(date +%s)
cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --bins
echo "fuzz.sh: built in $(($(date +%s) - start)) s"

# The safetensors target writes its input to files: on a tmpfs that is ~5x
# faster than on a disk busy with other builds.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    TMPDIR=$(mktemp -d /dev/shm/capmoe-fuzz.XXXXXX)
    export TMPDIR
    trap 'rm -rf "$TMPDIR"' EXIT
fi

failed=()
for t in "${targets[@]}"; do
    seeds=fuzz/corpus/$t
    [ -d "$seeds" ] || { echo "fuzz.sh: no seed corpus $seeds" >&2; exit 2; }
    # New inputs go to a scratch corpus; the committed seeds stay as they are.
    work=fuzz/corpus-run/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    echo "fuzz.sh: $t for $secs s"
    if ! "fuzz/target/$host/release/$t" "$work" "$seeds" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2> "fuzz/artifacts/$t.log"; then
        tail -n 40 "fuzz/artifacts/$t.log" >&2
        failed+=("$t")
    else
        grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units)" "fuzz/artifacts/$t.log" || true
    fi
done
echo "fuzz.sh: total $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: CRASH in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${targets[*]}"
