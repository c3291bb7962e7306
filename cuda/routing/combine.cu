// Combine: out[t] = sum_i w_i * y[row_i] over token t's assignments in plan
// order, each product and sum rounded separately (bit-identical to
// src/routing/combine.rs for f32 inputs).
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"

namespace capmoe {

template <typename In, typename Out>
__global__ void combine_kernel(const int* offsets, const float* weights, const int* assignment_row, const In* y,
                               int tokens, int hidden, Out* out) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(tokens) * hidden) return;
  const int t = static_cast<int>(i / hidden), h = static_cast<int>(i % hidden);
  float acc = 0.0f;
  for (int a = offsets[t]; a < offsets[t + 1]; ++a) {
    const float v = static_cast<float>(y[static_cast<size_t>(assignment_row[a]) * hidden + h]);
    acc = __fadd_rn(acc, __fmul_rn(weights[a], v));
  }
  out[i] = static_cast<Out>(acc);
}

template <typename In, typename Out>
int launch_combine(const capmoe_combine_args* args, capmoe_stream_t stream) {
  if (!args) return kBadArgument;
  const capmoe_combine_args& a = *args;
  if (a.tokens < 0 || a.hidden < 1) return kBadArgument;
  const long long n = static_cast<long long>(a.tokens) * a.hidden;
  if (n == 0) return 0;
  CAPMOE_LAUNCH(static_cast<int>((n + 255) / 256), 256, 0, stream, combine_kernel<In, Out>)(
      a.offsets, a.weights, a.assignment_row, static_cast<const In*>(a.y), a.tokens, a.hidden, static_cast<Out*>(a.out));
  return last_status();
}

}  // namespace capmoe

// y: [rows, hidden] expert outputs in dispatch layout; out: [T, hidden].
extern "C" int capmoe_combine_f32(const capmoe_combine_args* args, capmoe_stream_t stream) {
  return capmoe::launch_combine<float, float>(args, stream);
}

extern "C" int capmoe_combine_bf16(const capmoe_combine_args* args, capmoe_stream_t stream) {
  return capmoe::launch_combine<__nv_bfloat16, __nv_bfloat16>(args, stream);
}
