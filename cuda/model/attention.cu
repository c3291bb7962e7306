// Causal GQA attention of one sequence's new query rows over its KV cache (the new keys already
// appended), flash-style: one block per (query row, head) streams the visible keys in chunks of
// blockDim with an online softmax (running max and sum in f32), so prefill (n rows) and decode
// (n = 1) are the same kernel. Query i sits at position p0 + i (p0 = len - n) and sees keys j with
// max(0, pos + 1 - window) <= j <= pos (window 0: plain causal). CPU twin:
// backend::cpu::attention::attend (scores q.k * scale, softmax, P V; f32 there, bf16 inputs here).
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

constexpr int kAttnThreads = 128;
constexpr int kMaxHeadDim = 2 * kAttnThreads;

__global__ void __launch_bounds__(kAttnThreads)
    attention_kernel(const __nv_bfloat16* q, const __nv_bfloat16* kc, const __nv_bfloat16* vc, int n, int len,
                     int heads, int kv_heads, int hd, int window, float scale, __nv_bfloat16* out) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float ps[kAttnThreads];
  __shared__ float red[32];
  const int i = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int kvh = h / (heads / kv_heads);
  const int pos = len - n + i;
  const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
  const size_t qw = static_cast<size_t>(heads) * hd, kvw = static_cast<size_t>(kv_heads) * hd;
  const __nv_bfloat16* qrow = q + static_cast<size_t>(i) * qw + static_cast<size_t>(h) * hd;
  for (int d = tid; d < hd; d += blockDim.x) qs[d] = ld(qrow + d);
  __syncthreads();
  const __nv_bfloat16* kh = kc + static_cast<size_t>(kvh) * hd;
  const __nv_bfloat16* vh = vc + static_cast<size_t>(kvh) * hd;
  float m = -CUDART_INF_F, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
  for (int j0 = lo; j0 <= pos; j0 += blockDim.x) {
    const int j = j0 + tid;
    float s = -CUDART_INF_F;
    if (j <= pos) {
      const __nv_bfloat16* krow = kh + static_cast<size_t>(j) * kvw;
      float dot = 0.0f;
      for (int d = 0; d < hd; ++d) dot = __fadd_rn(dot, __fmul_rn(qs[d], ld(krow + d)));
      s = __fmul_rn(dot, scale);
    }
    const float new_m = fmaxf(m, block_reduce<false>(s, red));
    const float p = j <= pos ? expf(s - new_m) : 0.0f;
    ps[tid] = p;
    const float corr = expf(m - new_m);  // 0 on the first chunk (m = -inf, new_m finite)
    l = l * corr + block_reduce<true>(p, red);  // block_reduce syncs, so ps is complete
    const int cnt = min(static_cast<int>(blockDim.x), pos + 1 - j0);
    float a0 = 0.0f, a1 = 0.0f;
    for (int jj = 0; jj < cnt; ++jj) {
      const __nv_bfloat16* vrow = vh + static_cast<size_t>(j0 + jj) * kvw;
      if (tid < hd) a0 += ps[jj] * ld(vrow + tid);
      if (tid + kAttnThreads < hd) a1 += ps[jj] * ld(vrow + tid + kAttnThreads);
    }
    acc0 = acc0 * corr + a0;
    acc1 = acc1 * corr + a1;
    m = new_m;
    __syncthreads();  // ps is rewritten by the next chunk
  }
  __nv_bfloat16* orow = out + static_cast<size_t>(i) * qw + static_cast<size_t>(h) * hd;
  if (tid < hd) orow[tid] = bf(acc0 / l);
  if (tid + kAttnThreads < hd) orow[tid + kAttnThreads] = bf(acc1 / l);
}

}  // namespace model
}  // namespace capmoe

// q, out: [n, heads * hd] bf16 (one sequence's new rows); k_cache, v_cache: [>= len, kv_heads * hd]
// bf16 holding positions 0..len (the n new ones last). heads % kv_heads == 0, hd <= 256, n <= len,
// window 0 for none.
extern "C" int capmoe_model_attention(const capmoe_attn_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_attn_args& a = *args;
  const capmoe_attn_shape s = a.shape;
  if (s.n < 0 || s.len < s.n || s.heads < 1 || s.kv_heads < 1 || s.heads % s.kv_heads != 0 || s.head_dim < 1 ||
      s.head_dim > model::kMaxHeadDim || s.window < 0)
    return kBadArgument;
  if (s.n == 0) return 0;
  const dim3 grid(static_cast<unsigned>(s.n), static_cast<unsigned>(s.heads));
  CAPMOE_LAUNCH(grid, model::kAttnThreads, 0, stream, model::attention_kernel)(
      static_cast<const __nv_bfloat16*>(a.q), static_cast<const __nv_bfloat16*>(a.k_cache),
      static_cast<const __nv_bfloat16*>(a.v_cache), s.n, s.len, s.heads, s.kv_heads, s.head_dim, s.window, s.scale,
      static_cast<__nv_bfloat16*>(a.out));
  return last_status();
}
