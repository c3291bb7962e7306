// Fused gating: logits -> softmax (canonical order) -> top-k -> Mixtral
// denominator, one warp per token. CPU twin: src/routing/gate.rs.
#include <cuda_runtime.h>
#include <cstdint>
#include "../include/capmoe_abi.h"
#include "../common/canonical.cuh"
#include "../common/status.cuh"

namespace capmoe {

constexpr int kWarpsPerBlock = 8;

// EPL = experts held per lane (ceil(E / 32)); expert of slot i is lane + 32 i,
// which makes each lane's running sum the canonical lane partial.
template <int EPL>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
gate_kernel(const float* __restrict__ logits, const float* __restrict__ bias, int tokens,
            int experts, int k,
            float* __restrict__ probs, int* __restrict__ topk, float* __restrict__ topk_sum,
            unsigned long long* __restrict__ nonfinite) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= tokens) return;
  const float* row = logits + static_cast<size_t>(t) * experts;
  float v[EPL];
  float m = -INFINITY;
  // This lane's first NaN/Inf logit as (index << 32 | bits) + 1, 0 when none (no second pass
  // over v: EPL = 16 has no registers to spare).
  unsigned long long bad = 0;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? (bias ? __fadd_rn(row[e], bias[e]) : row[e]) : -INFINITY;
    if (e < experts && !isfinite(v[i]) && bad == 0)
      bad = ((static_cast<unsigned long long>(t) * experts + e) << 32 | __float_as_uint(v[i])) + 1;
    m = fmaxf(m, v[i]);
  }
  // A NaN or Inf would make every top-k slot INT32_MAX below: flag the batch and give the
  // token in-range experts 0..k-1 with zero weight, so later kernels stay in bounds.
  if (__any_sync(kFullMask, bad != 0)) {
    float* prow = probs + static_cast<size_t>(t) * experts;
    for (int e = lane; e < experts; e += 32) prow[e] = 0.0f;
    for (int j = lane; j < k; j += 32) topk[static_cast<size_t>(t) * k + j] = j;
    if (lane == 0) topk_sum[t] = 0.0f;
    if (bad != 0) atomicMax(nonfinite, ~(bad - 1));
    return;
  }
  m = warp_max(m);
  float partial = 0.0f;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? exp_canonical(__fsub_rn(v[i], m)) : 0.0f;
    if (e < experts) partial = __fadd_rn(partial, v[i]);
  }
  const float sum = warp_sum(partial);
  float* prow = probs + static_cast<size_t>(t) * experts;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = lane + 32 * i;
    v[i] = __fdiv_rn(v[i], sum);
    if (e < experts) prow[e] = v[i];
  }
  // k rounds of warp argmax under the token preference order.
  uint32_t taken = 0;
  float s = 0.0f;
  for (int j = 0; j < k; ++j) {
    float bp = -1.0f;
    int be = INT32_MAX;
#pragma unroll
    for (int i = 0; i < EPL; ++i) {
      const int e = lane + 32 * i;
      if (e < experts && !(taken >> i & 1u) && prefers(v[i], e, bp, be)) {
        bp = v[i];
        be = e;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float op = __shfl_xor_sync(kFullMask, bp, off);
      const int oe = __shfl_xor_sync(kFullMask, be, off);
      if (prefers(op, oe, bp, be)) {
        bp = op;
        be = oe;
      }
    }
    if ((be & 31) == lane) taken |= 1u << (be >> 5);
    s = __fadd_rn(s, bp);
    if (lane == 0) topk[static_cast<size_t>(t) * k + j] = be;
  }
  if (lane == 0) topk_sum[t] = s;
}

template <int EPL>
int launch_gate(const capmoe_gate_args& a, capmoe_stream_t stream) {
  const int blocks = (a.shape.tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  CAPMOE_LAUNCH(blocks, kWarpsPerBlock * 32, 0, stream, gate_kernel<EPL>)(
      a.logits, a.bias, a.shape.tokens, a.shape.experts, a.shape.k, a.probs, a.topk, a.topk_sum,
      reinterpret_cast<unsigned long long*>(a.nonfinite));
  return last_status();
}

}  // namespace capmoe

extern "C" int capmoe_gate(const capmoe_gate_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_gate_args& a = *args;
  const capmoe_shape s = a.shape;
  if (s.tokens < 0 || s.experts < 1 || s.experts > 512 || s.k < 1 || s.k > s.experts || !a.nonfinite)
    return kBadArgument;
  if (s.tokens == 0) return 0;
  if (s.experts <= 32) return launch_gate<1>(a, stream);
  if (s.experts <= 64) return launch_gate<2>(a, stream);
  if (s.experts <= 128) return launch_gate<4>(a, stream);
  if (s.experts <= 256) return launch_gate<8>(a, stream);
  return launch_gate<16>(a, stream);
}
