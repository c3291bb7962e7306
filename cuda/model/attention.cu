// Causal GQA attention of one sequence's new query rows over its KV cache (the new keys already
// appended), flash-style: one block per (query row, head) streams the visible keys in chunks of
// blockDim with an online softmax (running max and sum in f32), so prefill (n rows) and decode
// (n = 1) are the same kernel. Query i sits at position p0 + i (p0 = len - n) and sees keys j with
// max(0, pos + 1 - window) <= j <= pos (window 0: plain causal). CPU twin:
// backend::cpu::attention::attend (scores q.k * scale, softmax, P V; f32 there, bf16 inputs here).
// The decode variant reads positions from the device and a static cache (the decode graph).
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

constexpr int kAttnThreads = 128;
constexpr int kMaxHeadDim = 2 * kAttnThreads;

// One (query row, head): the row at position `pos` attends keys lo..pos of its cache (rows
// kvw apart, this head's kv slice first). The prefill and decode kernels share it, so a decode
// step over the static cache is bit for bit the eager one.
struct AttnSmem {
  float qs[kMaxHeadDim];
  float ps[kAttnThreads];
  float red[32];
};

// Where block (row, h) finds its q and output row and its kv head's first column.
struct RowHead {
  size_t qo, kv, kvw;
};
__device__ __forceinline__ RowHead row_head(int row, int h, int heads, int kv_heads, int hd) {
  const size_t qw = static_cast<size_t>(heads) * hd;
  const int kvh = h / (heads / kv_heads);
  return {static_cast<size_t>(row) * qw + static_cast<size_t>(h) * hd, static_cast<size_t>(kvh) * hd,
          static_cast<size_t>(kv_heads) * hd};
}

__device__ void attend(const __nv_bfloat16* qrow, const __nv_bfloat16* kh, const __nv_bfloat16* vh, int pos,
                       int window, size_t kvw, int hd, float scale, __nv_bfloat16* orow, AttnSmem& sm) {
  float* qs = sm.qs;
  float* ps = sm.ps;
  float* red = sm.red;
  const int tid = threadIdx.x;
  const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
  for (int d = tid; d < hd; d += blockDim.x) qs[d] = ld(qrow + d);
  __syncthreads();
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
  if (tid < hd) orow[tid] = bf(acc0 / l);
  if (tid + kAttnThreads < hd) orow[tid + kAttnThreads] = bf(acc1 / l);
}

__global__ void __launch_bounds__(kAttnThreads)
    attention_kernel(const __nv_bfloat16* q, const __nv_bfloat16* kc, const __nv_bfloat16* vc, int n, int len,
                     int heads, int kv_heads, int hd, int window, float scale, __nv_bfloat16* out) {
  __shared__ AttnSmem sm;
  const int i = blockIdx.x;
  const RowHead rh = row_head(i, blockIdx.y, heads, kv_heads, hd);
  attend(q + rh.qo, kc + rh.kv, vc + rh.kv, len - n + i, window, rh.kvw, hd, scale, out + rh.qo, sm);
}

// Decode over the static cache: block (b, h) is sequence b's one new row at positions[b], its
// cache rows b * max_positions .. (appended by kv_append_kernel). An out-of-range position
// (refused by the host before launch) writes zeros rather than reading past the cache.
__global__ void __launch_bounds__(kAttnThreads)
    decode_attention_kernel(const __nv_bfloat16* q, const __nv_bfloat16* kc, const __nv_bfloat16* vc,
                            const int* positions, int max_positions, int heads, int kv_heads, int hd, int window,
                            float scale, __nv_bfloat16* out) {
  __shared__ AttnSmem sm;
  const int b = blockIdx.x;
  const RowHead rh = row_head(b, blockIdx.y, heads, kv_heads, hd);
  const int pos = positions[b];
  if (pos < 0 || pos >= max_positions) {
    for (int d = threadIdx.x; d < hd; d += blockDim.x) out[rh.qo + d] = bf(0.0f);
    return;
  }
  const size_t base = static_cast<size_t>(b) * max_positions * rh.kvw + rh.kv;
  attend(q + rh.qo, kc + base, vc + base, pos, window, rh.kvw, hd, scale, out + rh.qo, sm);
}

// k, v: [batch, kvw] new rows; row b goes to cache row b * max_positions + positions[b].
__global__ void kv_append_kernel(const __nv_bfloat16* k, const __nv_bfloat16* v, const int* positions,
                                 int max_positions, int kvw, __nv_bfloat16* kc, __nv_bfloat16* vc) {
  const int b = blockIdx.x, pos = positions[b];
  if (pos < 0 || pos >= max_positions) return;
  const size_t dst = (static_cast<size_t>(b) * max_positions + pos) * kvw, src = static_cast<size_t>(b) * kvw;
  for (int i = threadIdx.x; i < kvw; i += blockDim.x) {
    kc[dst + i] = k[src + i];
    vc[dst + i] = v[src + i];
  }
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

static bool valid_decode(const capmoe_decode_attn_args& a) {
  return a.batch >= 0 && a.max_positions >= 1 && a.heads >= 1 && a.kv_heads >= 1 && a.heads % a.kv_heads == 0 &&
         a.head_dim >= 1 && a.head_dim <= capmoe::model::kMaxHeadDim && a.window >= 0 && a.positions && a.k_cache &&
         a.v_cache;
}

// Appends each sequence's new key and value row at its device position, then attends: the
// decode step's attention with no host value in it but the shapes.
extern "C" int capmoe_model_decode_attention(const capmoe_decode_attn_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args || !valid_decode(*args)) return kBadArgument;
  const capmoe_decode_attn_args& a = *args;
  if (a.batch == 0) return 0;
  if (!a.q || !a.k || !a.v || !a.out) return kBadArgument;
  const int kvw = a.kv_heads * a.head_dim;
  const int threads = kvw >= 256 ? 256 : 32 * ((kvw + 31) / 32);
  CAPMOE_LAUNCH(static_cast<unsigned>(a.batch), threads, 0, stream, model::kv_append_kernel)(
      static_cast<const __nv_bfloat16*>(a.k), static_cast<const __nv_bfloat16*>(a.v), a.positions, a.max_positions,
      kvw, static_cast<__nv_bfloat16*>(a.k_cache), static_cast<__nv_bfloat16*>(a.v_cache));
  const dim3 grid(static_cast<unsigned>(a.batch), static_cast<unsigned>(a.heads));
  CAPMOE_LAUNCH(grid, model::kAttnThreads, 0, stream, model::decode_attention_kernel)(
      static_cast<const __nv_bfloat16*>(a.q), static_cast<const __nv_bfloat16*>(a.k_cache),
      static_cast<const __nv_bfloat16*>(a.v_cache), a.positions, a.max_positions, a.heads, a.kv_heads, a.head_dim,
      a.window, a.scale, static_cast<__nv_bfloat16*>(a.out));
  return last_status();
}
