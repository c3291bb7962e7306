// RMSNorm, one block per row: out = w * (x * inv), inv = 1 / sqrt(mean(x^2) + eps), in f32 on
// bf16 rows, rounded to bf16 once. CPU twin: backend::cpu::ops::rms_norm (same formula and order;
// the sum of squares is a tree here, a left fold there).
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

constexpr int kNormThreads = 256;

__global__ void rmsnorm_kernel(const __nv_bfloat16* x, const float* w, int cols, float eps, __nv_bfloat16* out) {
  __shared__ float red[32];
  const size_t base = static_cast<size_t>(blockIdx.x) * cols;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = ld(x + base + c);
    ss = __fadd_rn(ss, __fmul_rn(v, v));
  }
  ss = block_reduce<true>(ss, red);
  const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(cols)), eps)));
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    out[base + c] = bf(__fmul_rn(w[c], __fmul_rn(ld(x + base + c), inv)));
  }
}

}  // namespace model
}  // namespace capmoe

// x, out: [rows, cols] bf16; w: cols f32.
extern "C" int capmoe_model_rmsnorm(const void* x, const float* w, int32_t rows, int32_t cols, float eps, void* out,
                                    capmoe_stream_t stream) {
  using namespace capmoe;
  if (rows < 0 || cols < 1) return kBadArgument;
  if (rows == 0) return 0;
  CAPMOE_LAUNCH(rows, model::kNormThreads, 0, stream, model::rmsnorm_kernel)(static_cast<const __nv_bfloat16*>(x), w,
                                                                             cols, eps, static_cast<__nv_bfloat16*>(out));
  return last_status();
}
