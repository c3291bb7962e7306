#!/usr/bin/env bash
# Builds the emulated kernels: libcapmoe_emu.so (cuda/emu/runtime.cpp and every hand-written
# cuda/**/*.cu compiled as host C++ with -DCAPMOE_EMULATE; no CUTLASS) and the fake driver
# libcuda.so (cuda/emu/fake_driver.cpp), into OUT. The one place the emulation flags live; used by
# build.rs (feature `emulate`) and tools/mutants.sh.
#   tools/emu-build.sh CUDA_DIR OUT [sanitize]
set -euo pipefail
src=$1 out=$2 san=${3:-}
cxx=${CXX:-c++}
mkdir -p "$out/obj"
flags=(-std=c++17 -O1 -g -fPIC -DCAPMOE_EMULATE -I"$src/emu/include" -ffp-contract=off -fno-fast-math
       -fno-strict-aliasing -fno-omit-frame-pointer -Wall -Wno-unknown-pragmas -Wno-unused-parameter)
if [[ $san == sanitize ]]; then
  flags+=(-fsanitize=address,undefined -fno-sanitize-recover=all)
fi
files=$(cd "$src" && find . -name '*.cu' -not -path '*/cutlass/*' -not -name '_*' | sort)
objs=()
pids=()
jobs=${CAPMOE_EMU_JOBS:-2}
i=0
for f in $files emu/runtime.cpp; do
  o="$out/obj/$(echo "${f#./}" | tr / _).o"
  objs+=("$o")
  lang=c++
  # Until every launch goes through CAPMOE_LAUNCH: compile a copy with <<<>>> rewritten.
  in="$src/$f"
  if grep -q '<<<' "$in"; then
    mkdir -p "$out/rw/$(dirname "$f")"
    python3 "$src/emu/rewrite_launches.py" "$in" "$out/rw/$f"
    # Keep relative includes working: compile from the original folder via -iquote.
    "$cxx" "${flags[@]}" -iquote "$(dirname "$in")" -x $lang -c "$out/rw/$f" -o "$o" &
  else
    "$cxx" "${flags[@]}" -x $lang -c "$in" -o "$o" &
  fi
  pids+=($!)
  i=$((i + 1))
  if (( i % jobs == 0 )); then for p in "${pids[@]}"; do wait "$p"; done; pids=(); fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" "${flags[@]}" -shared -o "$out/libcapmoe_emu.so" "${objs[@]}"
"$cxx" "${flags[@]}" -shared -o "$out/libcuda.so" "$src/emu/fake_driver.cpp"
ln -sf libcuda.so "$out/libcuda.so.1"
if [[ -f "$src/emu/fake_cublas.cpp" ]]; then
  "$cxx" "${flags[@]}" -shared -o "$out/libcublas.so" "$src/emu/fake_cublas.cpp"
fi
