// Capacity selection: drop:* and expand:local, plus reroute:next-best as
// synchronous deferred-acceptance rounds. Every step is a stable cub radix
// sort by (bin, leading key) followed by "keep the first cap of each bin's
// segment", so no atomic ever decides an order.
// CPU twins: src/routing/drop.rs, expand.rs, reroute/next_best.rs.
#include <cuda_runtime.h>
#include <cub/device/device_radix_sort.cuh>
#include <cstdint>
#include "../include/capmoe_abi.h"
#include "../common/canonical.cuh"
#include "../common/status.cuh"

namespace capmoe {

constexpr uint64_t kInvalid = ~0ull;
constexpr int kThreads = 256;

struct Problem {
  const float* probs;  // [T, E]
  const int* topk;     // [T, k]
  int tokens, experts, k;
  int experts_per_bin;  // 1 (expert scope) or E / R (rank scope)
  int ranks;            // EP ranks (expand:local's locality)
  int cap;              // per bin
};

__host__ __device__ inline int blocks_for(long long n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// Rank of the token block holding t: ceil((t+1) R / T) - 1.
__device__ __forceinline__ int rank_of_token(int t, int ranks, int tokens) {
  const long long x = static_cast<long long>(t + 1) * ranks;
  return static_cast<int>((x + tokens - 1) / tokens) - 1;
}

// Candidate slot i = t * S + s: top-k position s < k, else the token's local
// expert s - k (expand:local), invalid when already in the top-k.
__global__ void candidate_keys(Problem pb, int stride, int rank, uint64_t seed, int* cand_expert,
                               uint64_t* keys, int* vals) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * stride;
  if (i >= n) return;
  const int t = static_cast<int>(i / stride), s = static_cast<int>(i % stride);
  const int* top = pb.topk + static_cast<size_t>(t) * pb.k;
  int e;
  if (s < pb.k) {
    e = top[s];
  } else {
    const int epr = pb.experts / pb.ranks;
    e = rank_of_token(t, pb.ranks, pb.tokens) * epr + (s - pb.k);
    for (int j = 0; j < pb.k; ++j)
      if (top[j] == e) e = -1;
  }
  cand_expert[i] = e;
  vals[i] = static_cast<int>(i);
  if (e < 0) {
    keys[i] = kInvalid;
    return;
  }
  const uint64_t bin = static_cast<uint64_t>(e / pb.experts_per_bin);
  uint64_t lead = 0;
  switch (rank) {
    case CAPMOE_RANK_SCORE: lead = ~__float_as_uint(pb.probs[static_cast<size_t>(t) * pb.experts + e]); break;
    case CAPMOE_RANK_ORDER: lead = 0; break;
    case CAPMOE_RANK_REVERSE: lead = static_cast<uint64_t>(pb.tokens - 1 - t); break;
    default: lead = random_key(seed, static_cast<uint32_t>(t), static_cast<uint32_t>(e)); break;
  }
  keys[i] = bin << 53 | lead;
}

// Bin of a sorted key; `shift` is where the bin field starts.
__device__ __forceinline__ int key_bin(uint64_t key, int shift) { return static_cast<int>(key >> shift); }

__device__ __forceinline__ bool is_done(const int* done) { return done && *done; }

// A key whose bin field is >= `bins` (kInvalid, or next-best's bins << 32) is an empty slot;
// empty slots sort after every bin.
__global__ void segment_starts(const uint64_t* keys, long long n, int shift, int bins, const int* done, int* starts) {
  const long long s = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (is_done(done) || s >= n) return;
  const int b = key_bin(keys[s], shift);
  if (b >= bins) return;
  if (s == 0 || key_bin(keys[s - 1], shift) != b) starts[b] = static_cast<int>(s);
}

// kept[val] = 1 for the first cap entries of each bin segment, 0 otherwise.
__global__ void mark_kept(const uint64_t* keys, const int* vals, long long n, int shift, const int* starts,
                          int cap, int bins, const int* done, uint8_t* kept) {
  const long long s = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (is_done(done) || s >= n) return;
  const int b = key_bin(keys[s], shift);
  kept[vals[s]] = b < bins && s - starts[b] < cap;
}

__global__ void apply_kept(const int* cand_expert, const uint8_t* kept, long long n, int* served) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) served[i] = kept[i] ? cand_expert[i] : -1;
}

// Workspace carve-up shared by the launchers below.
struct Workspace {
  uint64_t* keys_in;
  uint64_t* keys_out;
  int* vals_in;
  int* vals_out;
  int* cand;
  int* starts;
  uint8_t* kept;
  void* temp;
  size_t temp_bytes;
};

inline size_t align_up(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

inline size_t sort_temp_bytes(long long n) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs<uint64_t, int>(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                                 static_cast<uint64_t*>(nullptr), static_cast<const int*>(nullptr),
                                                 static_cast<int*>(nullptr), static_cast<int>(n));
  return bytes;
}

inline size_t workspace_bytes(long long n, int bins) {
  return 2 * align_up(n * sizeof(uint64_t)) + 3 * align_up(n * sizeof(int)) + align_up(bins * sizeof(int)) +
         align_up(n) + align_up(sort_temp_bytes(n));
}

inline Workspace carve(void* base, long long n, int bins) {
  char* p = static_cast<char*>(base);
  Workspace w{};
  auto take = [&](size_t bytes) {
    char* q = p;
    p += align_up(bytes);
    return q;
  };
  w.keys_in = reinterpret_cast<uint64_t*>(take(n * sizeof(uint64_t)));
  w.keys_out = reinterpret_cast<uint64_t*>(take(n * sizeof(uint64_t)));
  w.vals_in = reinterpret_cast<int*>(take(n * sizeof(int)));
  w.vals_out = reinterpret_cast<int*>(take(n * sizeof(int)));
  w.cand = reinterpret_cast<int*>(take(n * sizeof(int)));
  w.starts = reinterpret_cast<int*>(take(bins * sizeof(int)));
  w.kept = reinterpret_cast<uint8_t*>(take(n));
  w.temp_bytes = sort_temp_bytes(n);
  w.temp = take(w.temp_bytes);
  return w;
}

// Sort (keys_in, vals_in) and mark the first cap of every bin segment.
// `done` (device, may be null) set: a converged next-best round, whose kernels return at once.
inline int sort_and_keep(Workspace& w, long long n, int end_bit, int shift, int cap, int bins, const int* done,
                         cudaStream_t stream) {
  cudaError_t e = cub::DeviceRadixSort::SortPairs(w.temp, w.temp_bytes, w.keys_in, w.keys_out, w.vals_in, w.vals_out,
                                                  static_cast<int>(n), 0, end_bit, stream);
  if (e != cudaSuccess) return static_cast<int>(e);
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, segment_starts)(w.keys_out, n, shift, bins, done, w.starts);
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, mark_kept)(w.keys_out, w.vals_out, n, shift, w.starts, cap, bins,
                                                               done, w.kept);
  return last_status();
}

// ---- reroute:next-best ----------------------------------------------------
// Every kernel of a round first reads flags[CAPMOE_NB_DONE] and returns when it is set: the
// host cannot see convergence without a sync, so all rounds are enqueued, and the converged
// ones cost a flag read per kernel (plus cub's sort passes over the unchanged keys).

// Puts each token's slots in its preference order (p descending, lower
// expert first, empty slots last), so that slot order is (token, p, expert)
// and a stable sort by (bin, p) ranks ties by token, then expert.
__global__ void order_slots(Problem pb, const int* flags, int* slot_expert) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (flags[CAPMOE_NB_DONE] || t >= pb.tokens) return;
  int* s = slot_expert + static_cast<size_t>(t) * pb.k;
  const float* p = pb.probs + static_cast<size_t>(t) * pb.experts;
  for (int i = 1; i < pb.k; ++i) {
    const int e = s[i];
    int j = i;
    while (j > 0 && e >= 0 && (s[j - 1] < 0 || prefers(p[e], e, p[s[j - 1]], s[j - 1]))) {
      s[j] = s[j - 1];
      --j;
    }
    s[j] = e;
  }
}

// Key (bin, p descending) in the low 32 + bin_bits(bins) bits; an empty slot gets the bin
// `bins`, after every real one. Ties keep slot order, which order_slots made (token, expert)
// for equal p.
__global__ void proposal_keys(Problem pb, const int* flags, const int* slot_expert, uint64_t* keys, int* vals) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (flags[CAPMOE_NB_DONE] || i >= n) return;
  vals[i] = static_cast<int>(i);
  const int e = slot_expert[i];
  if (e < 0) {
    keys[i] = static_cast<uint64_t>(pb.experts / pb.experts_per_bin) << 32;
    return;
  }
  const int t = static_cast<int>(i / pb.k);
  const uint64_t bin = static_cast<uint64_t>(e / pb.experts_per_bin);
  const uint64_t p = ~__float_as_uint(pb.probs[static_cast<size_t>(t) * pb.experts + e]);
  keys[i] = bin << 32 | p;
}

// Each token moves its rejected slots, in slot order, to its next experts in
// preference order after the last one it proposed to. `last` holds that
// expert per token. Sets flags[MOVED] when any slot proposes again.
__global__ void advance(Problem pb, const uint8_t* kept, int* slot_expert, int* last, int* flags) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (flags[CAPMOE_NB_DONE] || t >= pb.tokens) return;
  const float* p = pb.probs + static_cast<size_t>(t) * pb.experts;
  int le = last[t];
  for (int s = 0; s < pb.k; ++s) {
    const size_t i = static_cast<size_t>(t) * pb.k + s;
    if (slot_expert[i] < 0 || kept[i]) continue;
    int best = -1;
    if (le >= 0) {
      const float lp = p[le];
      float bp = -1.0f;
      for (int e = 0; e < pb.experts; ++e)
        if (prefers(lp, le, p[e], e) && prefers(p[e], e, bp, best)) {
          bp = p[e];
          best = e;
        }
    }
    slot_expert[i] = best;
    if (best >= 0) {
      le = best;
      flags[CAPMOE_NB_MOVED] = 1;
    }
  }
  last[t] = le;
}

// Thread 0 also starts the flags: MOVED = 1 (round 0 has proposals to judge), DONE = 0.
__global__ void init_slots(Problem pb, int* slot_expert, int* last, int* flags) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (i < n) slot_expert[i] = pb.topk[i];
  if (i < pb.tokens) last[i] = pb.topk[i * pb.k + pb.k - 1];
  if (i == 0) {
    flags[CAPMOE_NB_MOVED] = 1;
    flags[CAPMOE_NB_CONVERGED] = 0;
    flags[CAPMOE_NB_DONE] = 0;
  }
}

// Before a round: when the previous round moved nothing the plan is a fixed point (every
// proposal was kept or ran out of experts), so this and every later round are skipped.
__global__ void begin_round(int* flags) {
  if (flags[CAPMOE_NB_DONE]) return;
  if (!flags[CAPMOE_NB_MOVED]) {
    flags[CAPMOE_NB_DONE] = 1;
  } else {
    flags[CAPMOE_NB_MOVED] = 0;
  }
}

__global__ void set_flags(int* flags, int moved, int converged) {
  flags[CAPMOE_NB_MOVED] = moved;
  flags[CAPMOE_NB_CONVERGED] = converged;
  flags[CAPMOE_NB_DONE] = 1;
}

// Held slots are the kept ones; anything still proposing after the last
// round counts as not converged.
__global__ void finish_slots(Problem pb, const uint8_t* kept, int* slot_expert, int* flags) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (i == 0) flags[CAPMOE_NB_CONVERGED] = flags[CAPMOE_NB_MOVED] == 0;
  if (i < n && !kept[i]) slot_expert[i] = -1;
}

// Bits that hold a bin in [0, bins] (bins itself marks an empty slot).
inline int bin_bits(int bins) {
  int b = 1;
  while ((1 << b) <= bins) ++b;
  return b;
}

}  // namespace capmoe

using capmoe::Problem;

static bool valid(const Problem& pb) {
  return pb.tokens >= 0 && pb.experts >= 1 && pb.experts <= 512 && pb.k >= 1 && pb.k <= pb.experts &&
         pb.experts_per_bin >= 1 && pb.experts % pb.experts_per_bin == 0 && pb.ranks >= 1 &&
         pb.experts % pb.ranks == 0 && pb.cap >= 0;
}

// Bytes of scratch capmoe_select / capmoe_next_best need for `slots`
// candidate slots (T * stride, or T * k).
extern "C" size_t capmoe_select_workspace(int64_t slots, int32_t experts) {
  return capmoe::workspace_bytes(slots, experts);
}

// drop:* (stride = k) or expand:local (stride = k + E/R).
extern "C" int capmoe_select(const capmoe_select_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_select_args& a = *args;
  const capmoe_shape sh = a.shape;
  const Problem pb{a.probs, a.topk, sh.tokens, sh.experts, sh.k, a.experts_per_bin, a.ranks, a.cap};
  const bool expand = a.mode == CAPMOE_SELECT_EXPAND_LOCAL;
  if (!valid(pb) || a.rank < CAPMOE_RANK_SCORE || a.rank > CAPMOE_RANK_RANDOM ||
      (a.mode != CAPMOE_SELECT_DROP && !expand) || (expand && a.rank != CAPMOE_RANK_SCORE))
    return kBadArgument;
  const int stride = expand ? sh.k + sh.experts / a.ranks : sh.k;
  const long long n = static_cast<long long>(sh.tokens) * stride;
  if (n == 0) return 0;
  if (n > INT32_MAX || a.workspace_bytes < capmoe::workspace_bytes(n, sh.experts)) return kBadArgument;
  Workspace w = carve(a.workspace, n, sh.experts);
  const int bins = sh.experts / a.experts_per_bin;
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, candidate_keys)(pb, stride, a.rank, a.seed, w.cand, w.keys_in,
                                                                    w.vals_in);
  int st = sort_and_keep(w, n, 64, 53, a.cap, bins, nullptr, stream);
  if (st != 0) return st;
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, apply_kept)(w.cand, w.kept, n, a.served);
  return last_status();
}

// reroute:next-best in at most `max_rounds` synchronous rounds. served[T * k]
// holds each slot's expert or -1; flags[CAPMOE_NB_CONVERGED] (device) is 1 when
// no slot was still proposing after the last round.
extern "C" int capmoe_next_best(const capmoe_next_best_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_next_best_args& a = *args;
  const capmoe_shape sh = a.shape;
  const Problem pb{a.probs, a.topk, sh.tokens, sh.experts, sh.k, a.experts_per_bin, 1, a.cap};
  if (!valid(pb) || a.max_rounds < 1 || !a.flags) return kBadArgument;
  const long long n = static_cast<long long>(sh.tokens) * sh.k;
  if (n == 0) {  // an empty batch is a converged, empty plan
    CAPMOE_LAUNCH(1, 1, 0, stream, set_flags)(a.flags, 0, 1);
    return last_status();
  }
  if (n > INT32_MAX || a.workspace_bytes < capmoe::workspace_bytes(n, sh.experts)) return kBadArgument;
  Workspace w = carve(a.workspace, n, sh.experts);
  const int bins = sh.experts / a.experts_per_bin;
  // (bin, p): 32 bits of p under bin_bits(bins) bits of bin, 42 at most (E = 512), not 64.
  const int end_bit = 32 + bin_bits(bins);
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, init_slots)(pb, a.served, a.last, a.flags);
  for (int round = 0; round < a.max_rounds; ++round) {
    CAPMOE_LAUNCH(1, 1, 0, stream, begin_round)(a.flags);
    CAPMOE_LAUNCH(blocks_for(sh.tokens), kThreads, 0, stream, order_slots)(pb, a.flags, a.served);
    CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, proposal_keys)(pb, a.flags, a.served, w.keys_in, w.vals_in);
    int st = sort_and_keep(w, n, end_bit, 32, a.cap, bins, a.flags + CAPMOE_NB_DONE, stream);
    if (st != 0) return st;
    CAPMOE_LAUNCH(blocks_for(sh.tokens), kThreads, 0, stream, advance)(pb, w.kept, a.served, a.last, a.flags);
  }
  // The advance of the last round proposed again if flags[MOVED]; those slots
  // were never judged, so drop them and report non-convergence.
  CAPMOE_LAUNCH(blocks_for(n), kThreads, 0, stream, finish_slots)(pb, w.kept, a.served, a.flags);
  return last_status();
}
