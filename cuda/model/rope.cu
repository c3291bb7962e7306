// RoPE (rotate_half) in place on bf16 rows [rows, heads * head_dim]. CPU twin:
// backend::cpu::ops::rope with Rope::cos_sin: angle = f32(pos) * inv_freq[i] rounded to f32, then
// cos/sin in f64 rounded to f32; the rotation in f32 without contraction, as Rust computes it.
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

__global__ void rope_kernel(__nv_bfloat16* x, const int* positions, const float* inv_freq, int rows, int heads,
                            int half) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long per_row = static_cast<long long>(heads) * half;
  if (i >= rows * per_row) return;
  const int r = static_cast<int>(i / per_row);
  const int rem = static_cast<int>(i % per_row);
  const int h = rem / half, j = rem % half;
  const float angle = __fmul_rn(__int2float_rn(positions[r]), inv_freq[j]);
  const float c = static_cast<float>(cos(static_cast<double>(angle)));
  const float s = static_cast<float>(sin(static_cast<double>(angle)));
  __nv_bfloat16* head = x + static_cast<size_t>(r) * heads * 2 * half + static_cast<size_t>(h) * 2 * half;
  const float a = ld(head + j), b = ld(head + j + half);
  head[j] = bf(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  head[j + half] = bf(__fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
}

}  // namespace model
}  // namespace capmoe

// x: [rows, heads * 2 * half] bf16, rotated in place; positions: rows i32 (>= 0); inv_freq: half f32.
extern "C" int capmoe_model_rope(const capmoe_rope_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_rope_args& a = *args;
  if (a.rows < 0 || a.heads < 1 || a.half < 1) return kBadArgument;
  const long long n = static_cast<long long>(a.rows) * a.heads * a.half;
  if (n == 0) return 0;
  CAPMOE_LAUNCH(model::blocks_for(n, 256), 256, 0, stream, model::rope_kernel)(
      static_cast<__nv_bfloat16*>(a.x), a.positions, a.inv_freq, a.rows, a.heads, a.half);
  return last_status();
}
