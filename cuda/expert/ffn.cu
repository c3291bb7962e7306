// Hand-written parts of the expert FFN around the CUTLASS grouped GEMMs (build/ffn.rs):
// the SwiGLU pass between GEMM1 and GEMM2, and the hashed weight init.
// CPU twins: capmoe::expert::reference (SwiGLU) and capmoe::expert::init (hash).
#include <cuda_bf16.h>
#include <cstdint>

#include "../include/capmoe_abi.h"
#include "../common/status.cuh"

namespace capmoe {

constexpr uint32_t kPadRow = 0xffffffffu;
constexpr int kFfnThreads = 256;

// One thread makes 4 outputs from 4 interleaved (gate, up) pairs: a 16-byte load, an 8-byte store.
// Rows past *total_rows and padding rows are left alone: GEMM2 reads only each expert's real rows.
__global__ void swiglu_bf16_kernel(const __nv_bfloat16* h13, const uint32_t* row_token, const int* total_rows,
                                   long long max_rows, int inter, __nv_bfloat16* h) {
  const int vecs = inter / 4;
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long r = i / vecs;
  if (r >= max_rows || r >= *total_rows || row_token[r] == kPadRow) return;
  const int v = static_cast<int>(i % vecs);
  const uint4 in = reinterpret_cast<const uint4*>(h13 + r * 2 * inter)[v];
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&in);
  __nv_bfloat16 out[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float a = __bfloat162float(pairs[j].x);
    const float b = __bfloat162float(pairs[j].y);
    // silu(a) * b, rounded once to bf16 as the CPU twin does.
    out[j] = __float2bfloat16_rn(a / (1.0f + expf(-a)) * b);
  }
  reinterpret_cast<uint2*>(h + r * inter)[v] = *reinterpret_cast<const uint2*>(out);
}

__device__ __forceinline__ uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x045d9f3bu;
  x ^= x >> 16;
  x *= 0x045d9f3bu;
  x ^= x >> 16;
  return x;
}

__global__ void fill_hash_bf16_kernel(__nv_bfloat16* out, unsigned long long n, uint32_t key, float scale) {
  const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
  for (unsigned long long i = static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const uint32_t u = hash32(static_cast<uint32_t>(i) ^ key);
    // (u >> 8) * 2^-24 is exact in f32; 2f - 1 too; one rounding in "* scale", one to bf16.
    const float f = static_cast<float>(u >> 8) * 5.9604644775390625e-8f;
    out[i] = __float2bfloat16_rn(__fmul_rn(2.0f * f - 1.0f, scale));
  }
}

}  // namespace capmoe

// h[r, j] = bf16(silu(h13[r, 2j]) * h13[r, 2j+1]) for the real rows r < *total_rows (row_token != PAD).
extern "C" int capmoe_swiglu_bf16(const void* h13, const uint32_t* row_token, const int32_t* total_rows,
                                  int64_t max_rows, int32_t inter, void* h, capmoe_stream_t stream) {
  using namespace capmoe;
  if (inter < 8 || inter % 8 != 0 || max_rows < 0 || !h13 || !row_token || !total_rows || !h) return kBadArgument;
  if (max_rows == 0) return 0;
  const long long n = max_rows * (inter / 4);
  const long long blocks = (n + kFfnThreads - 1) / kFfnThreads;
  if (blocks > 0x7fffffffLL) return kBadArgument;
  CAPMOE_LAUNCH(static_cast<unsigned>(blocks), kFfnThreads, 0, stream, swiglu_bf16_kernel)(
      static_cast<const __nv_bfloat16*>(h13), row_token, total_rows, max_rows, inter,
      static_cast<__nv_bfloat16*>(h));
  return last_status();
}

// out[i] = bf16((2 * (hash32(i ^ hash32(seed)) >> 8) * 2^-24 - 1) * scale), i < n < 2^32.
extern "C" int capmoe_fill_hash_bf16(void* out, uint64_t n, uint32_t seed, float scale, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!out || n > 0xffffffffULL) return kBadArgument;
  if (n == 0) return 0;
  const unsigned long long want = (n + kFfnThreads - 1) / kFfnThreads;
  const unsigned blocks = static_cast<unsigned>(want < 4096 ? want : 4096);
  // Host-side hash32 of the seed, so the kernel and the twin share one formula.
  uint32_t key = seed;
  key ^= key >> 16;
  key *= 0x045d9f3bu;
  key ^= key >> 16;
  key *= 0x045d9f3bu;
  key ^= key >> 16;
  CAPMOE_LAUNCH(blocks, kFfnThreads, 0, stream, fill_hash_bf16_kernel)(static_cast<__nv_bfloat16*>(out), n, key, scale);
  return last_status();
}
