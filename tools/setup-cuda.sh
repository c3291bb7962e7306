#!/usr/bin/env bash
# Installs the pinned CUDA toolchain (design.md §4) from PyPI into .cuda/ (git-ignored) and prints
# the environment to use:   eval "$(tools/setup-cuda.sh)"
# Idempotent: a second run only prints the exports. Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${CAPMOE_CUDA_DIR:-$root/.cuda}"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cutlass==4.2.0.0
)
stamp="$dest/.installed"
want="$(printf '%s\n' "${pins[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  py="$(command -v python3 || command -v python)" || { echo "setup-cuda: python3 is needed (pip installs the toolchain)" >&2; exit 1; }
  echo "setup-cuda: installing ${pins[*]} into $dest" >&2
  rm -rf "$dest"
  mkdir -p "$dest"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/site" "${pins[@]}" >&2
  printf '%s\n' "${pins[@]}" >"$stamp"
fi
site="$dest/site"
cuda_home="$site/nvidia/cu13"
[ -x "$cuda_home/bin/nvcc" ] || cuda_home="$(dirname "$(dirname "$(find "$site/nvidia" -path '*/bin/nvcc' -type f | head -n1)")")"
cutlass="$site/cutlass_library/source"
[ -x "$cuda_home/bin/nvcc" ] || { echo "setup-cuda: nvcc not found under $site" >&2; exit 1; }
[ -f "$cutlass/include/cutlass/cutlass.h" ] || { echo "setup-cuda: CUTLASS headers not found under $cutlass" >&2; exit 1; }
echo "export CUDA_HOME='$cuda_home'"
echo "export NVCC='$cuda_home/bin/nvcc'"
echo "export CUTLASS_DIR='$cutlass'"
echo "export PATH='$cuda_home/bin':\"\$PATH\""
