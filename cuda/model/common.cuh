// Shared helpers of the model kernels: bf16 <-> f32 and block reductions.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <math_constants.h>

namespace capmoe {
namespace model {

__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ __nv_bfloat16 bf(float x) { return __float2bfloat16_rn(x); }

// Sum (kSum) or max over the block; every thread gets the result. `red` holds 32 floats.
// blockDim.x must be a multiple of 32.
template <bool kSum>
__device__ __forceinline__ float block_reduce(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kSum ? v + w : fmaxf(v, w);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // red may still be read by a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < warps ? red[lane] : (kSum ? 0.0f : -CUDART_INF_F);
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kSum ? v + w : fmaxf(v, w);
  }
  return v;
}

inline int blocks_for(long long n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

}  // namespace model
}  // namespace capmoe
