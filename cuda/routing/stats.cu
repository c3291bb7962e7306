// Plan records: slots dropped, assignments rerouted, and the served and top-k gate mass in 2^-32
// fixed point, summed with integer atomics (their order cannot change a sum), next to the plan's
// checks and loads, so that the host reads a layer in one contiguous copy. CPU twin:
// RoutingPlan::totals (src/routing/plan.rs).
#include <cuda_runtime.h>
#include <cstdint>
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"

namespace capmoe {

constexpr int kStatsThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// trunc(p * 2^32): exact in double for an f32 p, so the host computes the same integer.
__device__ __forceinline__ unsigned long long mass_fx(float p) {
  return static_cast<unsigned long long>(static_cast<double>(p) * 4294967296.0);
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(kFullMask, v, d);
  return v;
}

// One thread per token; every thread of the grid reaches the warp sums (no early return).
// Threads 0..E of the grid also copy the loads, thread 0 the checks.
__global__ void plan_totals(const float* probs, const int* topk, const int* offsets, const int* expert_ids,
                            const float* probs_out, const uint64_t* nonfinite, const unsigned* load,
                            const int* nb_flags, int tokens, int experts, int k, unsigned* record) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long* stats = reinterpret_cast<unsigned long long*>(record + CAPMOE_REC_STATS);
  if (t < experts) record[CAPMOE_REC_HEAD + t] = load[t];
  if (t == 0) {
    const uint64_t nf = *nonfinite;
    record[CAPMOE_REC_NONFINITE] = static_cast<unsigned>(nf);
    record[CAPMOE_REC_NONFINITE + 1] = static_cast<unsigned>(nf >> 32);
    record[CAPMOE_REC_CONVERGED] = nb_flags ? static_cast<unsigned>(nb_flags[CAPMOE_NB_CONVERGED]) : 1u;
    record[CAPMOE_REC_CONVERGED + 1] = 0;
    if (experts & 1) record[CAPMOE_REC_HEAD + experts] = 0;
  }
  unsigned long long dropped = 0, rerouted = 0, served_fx = 0, topk_fx = 0;
  if (t < tokens) {
    const int* top = topk + static_cast<size_t>(t) * k;
    const float* p = probs + static_cast<size_t>(t) * experts;
    const int lo = offsets[t], n = offsets[t + 1] - lo;
    dropped = n < k ? static_cast<unsigned long long>(k - n) : 0;
    for (int a = lo; a < lo + n; ++a) {
      const int e = expert_ids[a];
      bool in_top = false;
      for (int j = 0; j < k; ++j) in_top |= top[j] == e;
      rerouted += !in_top;
      served_fx += mass_fx(probs_out[a]);
    }
    for (int j = 0; j < k; ++j) topk_fx += mass_fx(p[top[j]]);
  }
  dropped = warp_sum(dropped);
  rerouted = warp_sum(rerouted);
  served_fx = warp_sum(served_fx);
  topk_fx = warp_sum(topk_fx);
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(stats + CAPMOE_STAT_DROPPED, dropped);
    atomicAdd(stats + CAPMOE_STAT_REROUTED, rerouted);
    atomicAdd(stats + CAPMOE_STAT_SERVED_MASS, served_fx);
    atomicAdd(stats + CAPMOE_STAT_TOPK_MASS, topk_fx);
  }
}

}  // namespace capmoe

extern "C" int32_t capmoe_plan_record_words(int32_t experts) {
  if (experts < 1) return 0;
  return CAPMOE_REC_HEAD + experts + (experts & 1);
}

extern "C" int capmoe_plan_stats(const capmoe_plan_stats_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_plan_stats_args& a = *args;
  const int tokens = a.shape.tokens, experts = a.shape.experts, k = a.shape.k;
  if (tokens < 0 || experts < 1 || experts > 512 || k < 1 || k > experts || !a.record || !a.nonfinite || !a.load ||
      reinterpret_cast<uintptr_t>(a.record) % 8 != 0)
    return kBadArgument;
  cudaError_t err = cudaMemsetAsync(a.record + CAPMOE_REC_STATS, 0, CAPMOE_STATS * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  // At least one block: the loads and checks are copied even for T = 0.
  const int threads = tokens > experts ? tokens : experts;
  const int blocks = (threads + kStatsThreads - 1) / kStatsThreads;
  CAPMOE_LAUNCH(blocks, kStatsThreads, 0, stream, plan_totals)(
      a.probs, a.topk, a.offsets, a.expert_ids, a.probs_out, a.nonfinite, a.load, a.next_best_flags, tokens, experts,
      k, a.record);
  return last_status();
}
