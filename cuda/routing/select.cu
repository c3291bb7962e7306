// Capacity selection: drop:* and expand:local, plus reroute:next-best as
// synchronous deferred-acceptance rounds. Every step is a stable cub radix
// sort by (bin, leading key) followed by "keep the first cap of each bin's
// segment", so no atomic ever decides an order.
// CPU twins: src/routing/drop.rs, expand.rs, reroute/next_best.rs.
#include <cuda_runtime.h>
#include <cub/device/device_radix_sort.cuh>
#include <cstdint>
#include "../common/canonical.cuh"
#include "../common/status.cuh"

namespace capmoe {

constexpr uint64_t kInvalid = ~0ull;
constexpr int kThreads = 256;
enum Rank : int { kScore = 0, kOrder = 1, kReverse = 2, kRandom = 3 };

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
    case kScore: lead = ~__float_as_uint(pb.probs[static_cast<size_t>(t) * pb.experts + e]); break;
    case kOrder: lead = 0; break;
    case kReverse: lead = static_cast<uint64_t>(pb.tokens - 1 - t); break;
    default: lead = random_key(seed, static_cast<uint32_t>(t), static_cast<uint32_t>(e)); break;
  }
  keys[i] = bin << 53 | lead;
}

// Bin of a sorted key; `shift` is where the bin field starts.
__device__ __forceinline__ int key_bin(uint64_t key, int shift) { return static_cast<int>(key >> shift); }

__global__ void segment_starts(const uint64_t* keys, long long n, int shift, int* starts) {
  const long long s = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= n || keys[s] == kInvalid) return;
  const int b = key_bin(keys[s], shift);
  if (s == 0 || key_bin(keys[s - 1], shift) != b) starts[b] = static_cast<int>(s);
}

// kept[val] = 1 for the first cap entries of each bin segment, 0 otherwise.
__global__ void mark_kept(const uint64_t* keys, const int* vals, long long n, int shift, const int* starts,
                          int cap, uint8_t* kept) {
  const long long s = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= n) return;
  const uint64_t key = keys[s];
  kept[vals[s]] = key != kInvalid && s - starts[key_bin(key, shift)] < cap;
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
inline int sort_and_keep(Workspace& w, long long n, int end_bit, int shift, int cap, cudaStream_t stream) {
  cudaError_t e = cub::DeviceRadixSort::SortPairs(w.temp, w.temp_bytes, w.keys_in, w.keys_out, w.vals_in, w.vals_out,
                                                  static_cast<int>(n), 0, end_bit, stream);
  if (e != cudaSuccess) return static_cast<int>(e);
  segment_starts<<<blocks_for(n), kThreads, 0, stream>>>(w.keys_out, n, shift, w.starts);
  mark_kept<<<blocks_for(n), kThreads, 0, stream>>>(w.keys_out, w.vals_out, n, shift, w.starts, cap, w.kept);
  return last_status();
}

// ---- reroute:next-best ----------------------------------------------------

// Puts each token's slots in its preference order (p descending, lower
// expert first, empty slots last), so that slot order is (token, p, expert)
// and a stable sort by (bin, p) ranks ties by token, then expert.
__global__ void order_slots(Problem pb, int* slot_expert) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= pb.tokens) return;
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

// Key (bin, p descending); ties keep slot order, which order_slots made
// (token, expert) for equal p.
__global__ void proposal_keys(Problem pb, const int* slot_expert, uint64_t* keys, int* vals) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (i >= n) return;
  vals[i] = static_cast<int>(i);
  const int e = slot_expert[i];
  if (e < 0) {
    keys[i] = kInvalid;
    return;
  }
  const int t = static_cast<int>(i / pb.k);
  const uint64_t bin = static_cast<uint64_t>(e / pb.experts_per_bin);
  const uint64_t p = ~__float_as_uint(pb.probs[static_cast<size_t>(t) * pb.experts + e]);
  keys[i] = bin << 32 | p;
}

// Each token moves its rejected slots, in slot order, to its next experts in
// preference order after the last one it proposed to. `last` holds that
// expert per token. Sets *moved when any slot proposes again.
__global__ void advance(Problem pb, const uint8_t* kept, int* slot_expert, int* last, int* moved) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= pb.tokens) return;
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
      *moved = 1;
    }
  }
  last[t] = le;
}

__global__ void init_slots(Problem pb, int* slot_expert, int* last) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (i < n) slot_expert[i] = pb.topk[i];
  if (i < pb.tokens) last[i] = pb.topk[i * pb.k + pb.k - 1];
}

__global__ void clear_flag(int* flag) { *flag = 0; }

__global__ void set_flags(int* flags, int moved, int converged) {
  flags[0] = moved;
  flags[1] = converged;
}

// Held slots are the kept ones; anything still proposing after the last
// round counts as not converged.
__global__ void finish_slots(Problem pb, const uint8_t* kept, int* slot_expert, const int* moved, int* converged) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long n = static_cast<long long>(pb.tokens) * pb.k;
  if (i == 0) *converged = *moved == 0;
  if (i < n && !kept[i]) slot_expert[i] = -1;
}

}  // namespace capmoe

using capmoe::Problem;

static bool valid(const Problem& pb) {
  return pb.tokens >= 0 && pb.experts >= 1 && pb.experts <= 512 && pb.k >= 1 && pb.k <= pb.experts &&
         pb.experts_per_bin >= 1 && pb.experts % pb.experts_per_bin == 0 && pb.ranks >= 1 &&
         pb.experts % pb.ranks == 0 && pb.cap >= 0;
}

static Problem problem(const float* probs, const int* topk, int tokens, int experts, int k, int experts_per_bin,
                       int ranks, int cap) {
  return Problem{probs, topk, tokens, experts, k, experts_per_bin, ranks, cap};
}

// Bytes of scratch capmoe_select / capmoe_next_best need for `slots`
// candidate slots (T * stride, or T * k).
extern "C" size_t capmoe_select_workspace(long long slots, int experts) {
  return capmoe::workspace_bytes(slots, experts);
}

// drop:* (expand = 0, stride = k) or expand:local (expand = 1, stride = k + E/R).
// served[T * stride]: the slot's expert if kept, else -1.
extern "C" int capmoe_select(const float* probs, const int* topk, int tokens, int experts, int k,
                             int experts_per_bin, int ranks, int cap, int rank, unsigned long long seed, int expand,
                             void* workspace, size_t workspace_bytes, int* served, cudaStream_t stream) {
  using namespace capmoe;
  const Problem pb = problem(probs, topk, tokens, experts, k, experts_per_bin, ranks, cap);
  if (!valid(pb) || rank < 0 || rank > 3 || (expand && rank != kScore)) return kBadArgument;
  const int stride = expand ? k + experts / ranks : k;
  const long long n = static_cast<long long>(tokens) * stride;
  if (n == 0) return 0;
  if (n > INT32_MAX || workspace_bytes < capmoe::workspace_bytes(n, experts)) return kBadArgument;
  Workspace w = carve(workspace, n, experts);
  candidate_keys<<<blocks_for(n), kThreads, 0, stream>>>(pb, stride, rank, seed, w.cand, w.keys_in, w.vals_in);
  int st = sort_and_keep(w, n, 64, 53, cap, stream);
  if (st != 0) return st;
  apply_kept<<<blocks_for(n), kThreads, 0, stream>>>(w.cand, w.kept, n, served);
  return last_status();
}

// reroute:next-best in at most `max_rounds` synchronous rounds. served[T * k]
// holds each slot's expert or -1; *converged (device) is 1 when no slot was
// still proposing after the last round.
extern "C" int capmoe_next_best(const float* probs, const int* topk, int tokens, int experts, int k,
                                int experts_per_bin, int cap, int max_rounds, void* workspace, size_t workspace_bytes,
                                int* served, int* last, int* flags, cudaStream_t stream) {
  using namespace capmoe;
  const Problem pb = problem(probs, topk, tokens, experts, k, experts_per_bin, 1, cap);
  if (!valid(pb) || max_rounds < 1) return kBadArgument;
  const long long n = static_cast<long long>(tokens) * k;
  if (n == 0) {  // an empty batch is a converged, empty plan
    set_flags<<<1, 1, 0, stream>>>(flags, 0, 1);
    return last_status();
  }
  if (n > INT32_MAX || workspace_bytes < capmoe::workspace_bytes(n, experts)) return kBadArgument;
  Workspace w = carve(workspace, n, experts);
  int* moved = flags;
  int* converged = flags + 1;
  init_slots<<<blocks_for(n), kThreads, 0, stream>>>(pb, served, last);
  for (int round = 0; round < max_rounds; ++round) {
    clear_flag<<<1, 1, 0, stream>>>(moved);
    order_slots<<<blocks_for(tokens), kThreads, 0, stream>>>(pb, served);
    proposal_keys<<<blocks_for(n), kThreads, 0, stream>>>(pb, served, w.keys_in, w.vals_in);
    int st = sort_and_keep(w, n, 64, 32, cap, stream);
    if (st != 0) return st;
    advance<<<blocks_for(tokens), kThreads, 0, stream>>>(pb, w.kept, served, last, moved);
  }
  // The advance of the last round proposed again if *moved; those slots
  // were never judged, so drop them and report non-convergence.
  finish_slots<<<blocks_for(n), kThreads, 0, stream>>>(pb, w.kept, served, moved, converged);
  return last_status();
}
