#!/usr/bin/env bash
# Builds the emulated kernels: libcapmoe_emu.so (cuda/emu/runtime.cpp and every hand-written
# cuda/**/*.cu compiled as host C++ with -DCAPMOE_EMULATE; no CUTLASS) and the fake driver
# libcuda.so (cuda/emu/fake_driver.cpp, fake_device.cpp), into OUT; with CAPMOE_EMU_NCCL=1 also the
# fake libnccl.so (cuda/emu/fake_nccl.cpp, one rank). The one place the emulation
# flags live; used by build.rs (feature `emulate`) and tools/mutants.sh.
#   tools/emu-build.sh CUDA_DIR OUT [sanitize]
set -euo pipefail
src=$1 out=$2 san=${3:-}
cxx=${CXX:-c++}
mkdir -p "$out/obj"
flags=(-std=c++17 -O2 -g -fPIC -DCAPMOE_EMULATE -I"$src/emu/include" -I"$src/include" -ffp-contract=off -fno-fast-math
       -fno-strict-aliasing -fno-omit-frame-pointer -Wall -Wno-unknown-pragmas -Wno-unused-parameter)
if [[ $san == sanitize ]]; then
  flags+=(-fsanitize=address,undefined -fno-sanitize-recover=all)
fi
# Objects are reused while their source, every header under CUDA_DIR and the flags are unchanged.
echo "$cxx ${flags[*]//$src/CUDA_DIR}" > "$out/flags.new"  # the same flags for any copy of cuda/
if ! cmp -s "$out/flags.new" "$out/flags"; then rm -f "$out"/obj/*.o; fi
mv "$out/flags.new" "$out/flags"
stale() { [[ ! -f $2 || $1 -nt $2 ]] || [[ -n $(find "$src" \( -name '*.cuh' -o -name '*.h' \) -newer "$2" | head -1) ]]; }
files=$(cd "$src" && find . -name '*.cu' -not -path '*/cutlass/*' -not -path '*/templates/*' -not -name '_*' | sort)
objs=()
pids=()
jobs=${CAPMOE_EMU_JOBS:-2}
i=0
gen=$(cd "$out" && ls gen/*.cpp 2>/dev/null || true)
for f in $files emu/runtime.cpp emu/ref_gemm.cpp $gen; do
  o="$out/obj/$(echo "${f#./}" | tr / _).o"
  objs+=("$o")
  lang=c++
  in="$src/$f"
  [[ $f == gen/* ]] && in="$out/$f"
  if ! stale "$in" "$o"; then continue; fi
  if grep -q '<<<' "$in"; then
    echo "emu-build: $in launches with <<<>>>: launch through CAPMOE_LAUNCH (cuda/common/launch.cuh)" >&2
    exit 1
  fi
  "$cxx" "${flags[@]}" -x $lang -c "$in" -o "$o" &
  pids+=($!)
  i=$((i + 1))
  if (( i % jobs == 0 )); then for p in "${pids[@]}"; do wait "$p"; done; pids=(); fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" "${flags[@]}" -shared -o "$out/libcapmoe_emu.so" "${objs[@]}"
"$cxx" "${flags[@]}" -shared -o "$out/libcuda.so" "$src/emu/fake_driver.cpp" "$src/emu/fake_device.cpp"
ln -sf libcuda.so "$out/libcuda.so.1"
if [[ -f "$src/emu/fake_cublas.cpp" ]]; then
  "$cxx" "${flags[@]}" -shared -o "$out/libcublas.so" "$src/emu/fake_cublas.cpp"
fi
# The fake NCCL (one rank), only for builds with feature `nccl` (build/emu.rs sets
# CAPMOE_EMU_NCCL=1): it copies through the fake driver above, found next to it ($ORIGIN).
if [[ ${CAPMOE_EMU_NCCL:-} == 1 && -f "$src/emu/fake_nccl.cpp" ]]; then
  "$cxx" "${flags[@]}" -shared -o "$out/libnccl.so" "$src/emu/fake_nccl.cpp" -L"$out" -lcuda -Wl,-rpath,'$ORIGIN'
else
  rm -f "$out/libnccl.so"
fi
