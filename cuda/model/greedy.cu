// Greedy pick at the end of a decode step: one block per logit row finds the first largest logit
// (NaN never wins) and the first non-finite one, in a fixed tree order (deterministic). CPU
// twins: model::generate::argmax, and the forward pass's non-finite check (ModelError::
// NonFiniteOutput names the first bad logit). With ids and positions it also advances the decode
// graph's device state, so a replayed step feeds itself the token it picked.
#include <climits>

#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

constexpr int kGreedyThreads = 256;

// (v, i) beats (w, j): j is none, or i is some and v > w, or v == w and i < j (first on ties).
__device__ __forceinline__ bool beats(float v, int i, float w, int j) {
  return j == INT_MAX || (i != INT_MAX && (v > w || (v == w && i < j)));
}

__global__ void __launch_bounds__(kGreedyThreads)
    greedy_kernel(const float* logits, int vocab, uint64_t* nonfinite, unsigned* next, unsigned* ids,
                  int* positions) {
  __shared__ float sv[kGreedyThreads];
  __shared__ int si[kGreedyThreads];
  __shared__ int sn[kGreedyThreads];
  const int r = blockIdx.x, tid = threadIdx.x;
  const float* row = logits + static_cast<size_t>(r) * vocab;
  float bv = 0.0f;
  int bi = INT_MAX, bad = INT_MAX;
  for (int c = tid; c < vocab; c += blockDim.x) {
    const float x = row[c];
    if (!isfinite(x) && bad == INT_MAX) bad = c;
    if (!isnan(x) && beats(x, c, bv, bi)) {
      bv = x;
      bi = c;
    }
  }
  sv[tid] = bv;
  si[tid] = bi;
  sn[tid] = bad;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (tid < half) {
      if (beats(sv[tid + half], si[tid + half], sv[tid], si[tid])) {
        sv[tid] = sv[tid + half];
        si[tid] = si[tid + half];
      }
      sn[tid] = min(sn[tid], sn[tid + half]);
    }
    __syncthreads();
  }
  if (tid != 0) return;
  const unsigned pick = si[0] == INT_MAX ? 0u : static_cast<unsigned>(si[0]);
  const int c = sn[0];
  nonfinite[r] = c == INT_MAX ? uint64_t{0} : ~(static_cast<uint64_t>(c) << 32 | __float_as_uint(row[c]));
  next[r] = pick;
  if (ids) ids[r] = pick;
  if (positions) positions[r] += 1;
}

}  // namespace model
}  // namespace capmoe

extern "C" int capmoe_model_greedy(const capmoe_greedy_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_greedy_args& a = *args;
  if (a.rows < 0 || a.vocab < 1 || !a.nonfinite || !a.next) return kBadArgument;
  if (a.rows == 0) return 0;
  if (!a.logits) return kBadArgument;
  CAPMOE_LAUNCH(static_cast<unsigned>(a.rows), model::kGreedyThreads, 0, stream, model::greedy_kernel)(
      a.logits, a.vocab, a.nonfinite, a.next, a.ids, a.positions);
  return last_status();
}
