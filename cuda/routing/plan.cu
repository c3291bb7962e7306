// Plan compaction: served slots -> token-major CSR plan (each token's experts
// in decreasing p, ties to the lower index), weights, per-expert load, and the
// compacted overflow list. CPU twin: src/routing/plan.rs and the overflow
// part of src/routing/dispatch.rs.
#include <cuda_runtime.h>
#include <cub/device/device_scan.cuh>
#include <algorithm>
#include <cstdint>
#include "../include/capmoe_abi.h"
#include "../common/canonical.cuh"
#include "../common/status.cuh"

namespace capmoe {

constexpr int kPlanThreads = 256;

inline int plan_blocks(long long n) { return static_cast<int>((n + kPlanThreads - 1) / kPlanThreads); }

// Next served slot of token t in preference order after (lp, le); -1 if none.
__device__ __forceinline__ int next_served(const int* served, int stride, const float* p, float lp, int le) {
  int best = -1;
  float bp = -1.0f;
  for (int s = 0; s < stride; ++s) {
    const int e = served[s];
    if (e >= 0 && (le < 0 || prefers(lp, le, p[e], e)) && prefers(p[e], e, bp, best)) {
      bp = p[e];
      best = e;
    }
  }
  return best;
}

__global__ void count_served(const int* served, int tokens, int stride, int* counts) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t > tokens) return;
  int c = 0;
  if (t < tokens)
    for (int s = 0; s < stride; ++s) c += served[static_cast<size_t>(t) * stride + s] >= 0;
  counts[t] = c;  // counts[tokens] = 0 so the exclusive scan's last entry is the total
}

__global__ void write_plan(const float* probs, const int* topk, const float* topk_sum, const int* served, int tokens,
                           int experts, int k, int stride, int renormalize, const int* offsets, int* expert_ids,
                           int* token_ids, float* weights, float* probs_out, unsigned* load, int* overflow_flag) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const float* p = probs + static_cast<size_t>(t) * experts;
  const int* sv = served + static_cast<size_t>(t) * stride;
  const int n = offsets[t + 1] - offsets[t];
  // Denominator: the top-k sum, or the served sum in decreasing-p order.
  float denom = topk_sum[t];
  if (renormalize) {
    denom = 0.0f;
    int e = -1;
    float lp = 0.0f;
    for (int j = 0; j < n; ++j) {
      e = next_served(sv, stride, p, lp, e);
      lp = p[e];
      denom = __fadd_rn(denom, lp);
    }
  }
  int e = -1;
  float lp = 0.0f;
  for (int j = 0; j < n; ++j) {
    e = next_served(sv, stride, p, lp, e);
    lp = p[e];
    const int a = offsets[t] + j;
    expert_ids[a] = e;
    token_ids[a] = t;
    probs_out[a] = lp;
    // Zero served mass (renormalised over experts with p == 0): weight 0, as the CPU plan.
    weights[a] = denom > 0.0f ? __fdiv_rn(lp, denom) : 0.0f;
    atomicAdd(load + e, 1u);  // a count: the value does not depend on order
  }
  for (int j = 0; j < k; ++j) {
    const int te = topk[static_cast<size_t>(t) * k + j];
    bool kept = false;
    for (int s = 0; s < stride; ++s) kept |= sv[s] == te;
    overflow_flag[static_cast<size_t>(t) * k + j] = !kept;
  }
}

// Overflow compaction as scan + scatter (cub's DeviceSelect spills on sm_80).
__global__ void scatter_flagged(const int* flags, const int* pos, long long n, int* out, int* count) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && flags[i]) out[pos[i]] = static_cast<int>(i);
  if (i == n) *count = pos[n];
}

inline size_t align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

inline size_t scan_bytes(int n) {
  size_t b = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, b, static_cast<const int*>(nullptr), static_cast<int*>(nullptr), n);
  return b;
}

inline size_t plan_workspace(int tokens, int k) {
  const long long nk = static_cast<long long>(tokens) * k;
  const size_t scan = std::max(scan_bytes(tokens + 1), scan_bytes(static_cast<int>(nk + 1)));
  return align256((tokens + 1) * sizeof(int)) + 2 * align256((nk + 1) * sizeof(int)) + align256(scan);
}

}  // namespace capmoe

extern "C" size_t capmoe_plan_workspace(int32_t tokens, int32_t top_k) { return capmoe::plan_workspace(tokens, top_k); }

extern "C" int capmoe_plan(const capmoe_plan_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_plan_args& a = *args;
  const int tokens = a.shape.tokens, experts = a.shape.experts, top_k = a.shape.k, stride = a.stride;
  if (tokens < 0 || experts < 1 || experts > 512 || top_k < 1 || top_k > experts || stride < top_k) return kBadArgument;
  if (a.workspace_bytes < plan_workspace(tokens, top_k)) return kBadArgument;
  cudaError_t err = cudaMemsetAsync(a.load, 0, experts * sizeof(unsigned), stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(a.overflow_count, 0, sizeof(int), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (tokens == 0) return cudaMemsetAsync(a.offsets, 0, sizeof(int), stream);
  const long long nk = static_cast<long long>(tokens) * top_k;
  char* w = static_cast<char*>(a.workspace);
  int* counts = reinterpret_cast<int*>(w);
  w += align256((tokens + 1) * sizeof(int));
  int* flags = reinterpret_cast<int*>(w);
  w += align256((nk + 1) * sizeof(int));
  int* pos = reinterpret_cast<int*>(w);
  w += align256((nk + 1) * sizeof(int));
  void* scan_tmp = w;
  size_t sb = scan_bytes(tokens + 1);
  size_t fb = scan_bytes(static_cast<int>(nk + 1));

  CAPMOE_LAUNCH(plan_blocks(tokens + 1), kPlanThreads, 0, stream, count_served)(a.served, tokens, stride, counts);
  err = cub::DeviceScan::ExclusiveSum(scan_tmp, sb, counts, a.offsets, tokens + 1, stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  err = cudaMemsetAsync(flags + nk, 0, sizeof(int), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  CAPMOE_LAUNCH(plan_blocks(tokens), kPlanThreads, 0, stream, write_plan)(
      a.probs, a.topk, a.topk_sum, a.served, tokens, experts, top_k, stride, a.renormalize, a.offsets, a.expert_ids,
      a.token_ids, a.weights, a.probs_out, a.load, flags);
  err = cub::DeviceScan::ExclusiveSum(scan_tmp, fb, flags, pos, static_cast<int>(nk + 1), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  CAPMOE_LAUNCH(plan_blocks(nk + 1), kPlanThreads, 0, stream, scatter_flagged)(flags, pos, nk, a.overflow,
                                                                               a.overflow_count);
  return last_status();
}
