// Fused gating: logits -> softmax (canonical order) -> top-k -> Mixtral
// denominator, one warp per token. CPU twin: src/routing/gate.rs.
#include <cuda_runtime.h>
#include <cstdint>
#include "../common/canonical.cuh"
#include "../common/status.cuh"

namespace capmoe {

constexpr int kWarpsPerBlock = 8;

// EPL = experts held per lane (ceil(E / 32)); expert of slot i is lane + 32 i,
// which makes each lane's running sum the canonical lane partial.
template <int EPL>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
gate_kernel(const float* __restrict__ logits, int tokens, int experts, int k,
            float* __restrict__ probs, int* __restrict__ topk, float* __restrict__ topk_sum) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (t >= tokens) return;
  const float* row = logits + static_cast<size_t>(t) * experts;
  float v[EPL];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < EPL; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < experts ? row[e] : -INFINITY;
    m = fmaxf(m, v[i]);
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
int launch_gate(const float* logits, int tokens, int experts, int k, float* probs, int* topk,
                float* topk_sum, cudaStream_t stream) {
  const int blocks = (tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  gate_kernel<EPL><<<blocks, kWarpsPerBlock * 32, 0, stream>>>(logits, tokens, experts, k, probs, topk, topk_sum);
  return last_status();
}

}  // namespace capmoe

// probs [T, E], topk [T, k] (decreasing p, ties to the lower index),
// topk_sum [T] (sequential sum in that order). 1 <= E <= 512, 1 <= k <= E.
extern "C" int capmoe_gate(const float* logits, int tokens, int experts, int top_k, float* probs,
                           int* topk, float* topk_sum, cudaStream_t stream) {
  using namespace capmoe;
  if (tokens < 0 || experts < 1 || experts > 512 || top_k < 1 || top_k > experts) return kBadArgument;
  if (tokens == 0) return 0;
  if (experts <= 32) return launch_gate<1>(logits, tokens, experts, top_k, probs, topk, topk_sum, stream);
  if (experts <= 64) return launch_gate<2>(logits, tokens, experts, top_k, probs, topk, topk_sum, stream);
  if (experts <= 128) return launch_gate<4>(logits, tokens, experts, top_k, probs, topk, topk_sum, stream);
  if (experts <= 256) return launch_gate<8>(logits, tokens, experts, top_k, probs, topk, topk_sum, stream);
  return launch_gate<16>(logits, tokens, experts, top_k, probs, topk, topk_sum, stream);
}
