// The one way capmoe launches a kernel:
//   CAPMOE_LAUNCH(grid, block, smem, stream, kernel)(args...);
// KERNEL is variadic so that template kernels with commas need no parentheses:
//   CAPMOE_LAUNCH(blocks, 256, 0, stream, combine_kernel<In, Out>)(...);
// Under nvcc it is the triple-chevron launch. With CAPMOE_EMULATE defined (the CPU emulation
// build, cuda/emu/) it is a call of ::capmoe_emu::launch, which returns a callable taking the
// kernel's arguments. No other file may launch with chevrons (tools/gen-bindings.sh --check
// greps for them).
#pragma once

#ifdef CAPMOE_EMULATE
#include "../emu/emu.cuh"
#define CAPMOE_LAUNCH(grid, block, smem, stream, ...) \
  ::capmoe_emu::launch((grid), (block), (smem), (stream), __VA_ARGS__)
#else
#define CAPMOE_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#endif
