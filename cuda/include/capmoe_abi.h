/* capmoe's C ABI: the one door between Rust and the CUDA kernels (design.md §4).
 *
 * Every extern "C" launcher of cuda/ and of the generated CUTLASS variants is declared here,
 * with the status codes and the enum codes shared with Rust. Every .cu includes this file, so
 * nvcc rejects a definition that drifts from it; src/cuda/sys.rs is generated from it by
 * tools/gen-bindings.sh (bindgen) and committed. Plain C: no CUDA header is needed.
 *
 * Conventions: every pointer is device memory of the current context unless noted; bf16
 * buffers are `void*` of raw bf16 bits; launchers return an int that is a capmoe_status
 * (<= 0) or a cudaError_t (> 0), and enqueue work on `stream` without synchronising.
 * Launchers with several same-typed arguments take a parameter struct by const pointer
 * (read during the call only). */
#ifndef CAPMOE_ABI_H
#define CAPMOE_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cudaStream_t is exactly this type (driver_types.h), and so is cudarc's CUstream. */
typedef struct CUstream_st* capmoe_stream_t;

/* Launcher status codes; a positive return value is a cudaError_t. */
typedef enum capmoe_status {
  CAPMOE_STATUS_OK = 0,
  /* An argument failed the launcher's own checks; nothing was enqueued. */
  CAPMOE_STATUS_BAD_ARGUMENT = -1,
  /* CUTLASS refused the problem (can_implement or initialize failed). */
  CAPMOE_STATUS_REJECTED = -2
} capmoe_status;

/* Message for a launcher's return value (a capmoe_status or a cudaError_t); static storage. */
const char* capmoe_status_string(int32_t code);

/* ---- routing (cuda/routing/) ------------------------------------------------------------ */

/* drop:*'s leading sort key within a capacity bin (src/routing/drop.rs). */
typedef enum capmoe_rank {
  CAPMOE_RANK_SCORE = 0,
  CAPMOE_RANK_ORDER = 1,
  CAPMOE_RANK_REVERSE = 2,
  CAPMOE_RANK_RANDOM = 3
} capmoe_rank;

/* What capmoe_select decides: drop:* keeps the top-k slots that fit; expand:local also offers
 * each token its rank's local experts (stride k + E / R). */
typedef enum capmoe_select_mode {
  CAPMOE_SELECT_DROP = 0,
  CAPMOE_SELECT_EXPAND_LOCAL = 1
} capmoe_select_mode;

/* Device flags of capmoe_next_best: flags[CAPMOE_NB_CONVERGED] is 1 when no slot was still
 * proposing after the last round; the others are the launcher's round state. */
typedef enum capmoe_next_best_flag {
  CAPMOE_NB_MOVED = 0,
  CAPMOE_NB_CONVERGED = 1,
  CAPMOE_NB_DONE = 2,
  CAPMOE_NB_FLAGS = 3 /* the number of flags */
} capmoe_next_best_flag;

/* Batch shape shared by the routing launchers. */
typedef struct capmoe_shape {
  int32_t tokens;
  int32_t experts;
  int32_t k;
} capmoe_shape;

/* Fused gating. probs [T, E], topk [T, k] (decreasing p, ties to the lower index), topk_sum [T].
 * 1 <= E <= 512, 1 <= k <= E. bias [E] (NULL: none) is added to every token's logits first, in
 * f32 round-to-nearest (the router's synthetic skew). A token with a NaN or Inf logit (after the
 * bias) gets probs 0, top-k 0..k-1 and sum 0 (in range for every later kernel), and the first
 * such logit is recorded in *nonfinite (one uint64 the caller zeroes; never cleared here): it
 * ends as the max over bad logits of ~(flat index << 32 | f32 bits), so 0 means none and
 * ~*nonfinite names the lowest index. */
typedef struct capmoe_gate_args {
  const float* logits;
  const float* bias;
  capmoe_shape shape;
  float* probs;
  int32_t* topk;
  float* topk_sum;
  uint64_t* nonfinite;
} capmoe_gate_args;
int capmoe_gate(const capmoe_gate_args* args, capmoe_stream_t stream);

/* Bytes of scratch capmoe_select / capmoe_next_best need for `slots` candidate slots. */
size_t capmoe_select_workspace(int64_t slots, int32_t experts);

/* Capacity bins: experts_per_bin experts share a bin of `cap` slots (1: expert scope, E / R:
 * rank scope). served[T * stride]: the slot's expert if kept, else -1. */
typedef struct capmoe_select_args {
  const float* probs;
  const int32_t* topk;
  capmoe_shape shape;
  int32_t experts_per_bin;
  int32_t ranks;
  int32_t cap;
  capmoe_rank rank;
  uint64_t seed; /* CAPMOE_RANK_RANDOM's seed */
  capmoe_select_mode mode;
  void* workspace;
  size_t workspace_bytes;
  int32_t* served;
} capmoe_select_args;
int capmoe_select(const capmoe_select_args* args, capmoe_stream_t stream);

/* reroute:next-best in at most max_rounds synchronous rounds; rounds after convergence exit
 * early on a device flag. served[T * k]; last[T]; flags[CAPMOE_NB_FLAGS]. */
typedef struct capmoe_next_best_args {
  const float* probs;
  const int32_t* topk;
  capmoe_shape shape;
  int32_t experts_per_bin;
  int32_t cap;
  int32_t max_rounds;
  void* workspace;
  size_t workspace_bytes;
  int32_t* served;
  int32_t* last;
  int32_t* flags;
} capmoe_next_best_args;
int capmoe_next_best(const capmoe_next_best_args* args, capmoe_stream_t stream);

size_t capmoe_plan_workspace(int32_t tokens, int32_t top_k);

/* Served slots -> token-major CSR plan. offsets[T + 1]; expert_ids, token_ids, weights and
 * probs_out hold T * stride; load[E] (zeroed here); overflow[T * k] gets the flat top-k indices
 * its expert did not serve, in increasing order, and *overflow_count their number. */
typedef struct capmoe_plan_args {
  const float* probs;
  const int32_t* topk;
  const float* topk_sum;
  const int32_t* served;
  capmoe_shape shape;
  int32_t stride;
  int32_t renormalize; /* 0 or 1 */
  void* workspace;
  size_t workspace_bytes;
  int32_t* offsets;
  int32_t* expert_ids;
  int32_t* token_ids;
  float* weights;
  float* probs_out;
  uint32_t* load;
  int32_t* overflow;
  int32_t* overflow_count;
} capmoe_plan_args;
int capmoe_plan(const capmoe_plan_args* args, capmoe_stream_t stream);

/* Entries of capmoe_plan_stats's stats[]: slots dropped (sum over tokens of max(0, k - served)),
 * served assignments outside the token's top-k, and the served and top-k gate mass, each p
 * truncated to 2^-32 fixed point (integer sums: no order of the atomics changes them). */
typedef enum capmoe_plan_stat {
  CAPMOE_STAT_DROPPED = 0,
  CAPMOE_STAT_REROUTED = 1,
  CAPMOE_STAT_SERVED_MASS = 2,
  CAPMOE_STAT_TOPK_MASS = 3,
  CAPMOE_STATS = 4 /* the number of entries */
} capmoe_plan_stat;

/* A plan's record, what the host reads of it after the fact, in u32 words:
 *   [CAPMOE_REC_NONFINITE, +2)  capmoe_gate's non-finite record (a u64),
 *   [CAPMOE_REC_CONVERGED]      capmoe_next_best's flags[CAPMOE_NB_CONVERGED] (1 without flags),
 *   [CAPMOE_REC_STATS, +2 * CAPMOE_STATS)  the capmoe_plan_stat totals (u64 each),
 *   [CAPMOE_REC_HEAD, +E)       the per-expert load,
 * CAPMOE_REC_HEAD + E rounded up to even words in all (capmoe_plan_record_words), so that records
 * laid end to end keep their u64s 8-byte aligned. */
typedef enum capmoe_plan_record_word {
  CAPMOE_REC_NONFINITE = 0,
  CAPMOE_REC_CONVERGED = 2,
  CAPMOE_REC_STATS = 4,
  CAPMOE_REC_HEAD = 12
} capmoe_plan_record_word;

/* Writes a plan's record from capmoe_gate's probs[T * E], topk[T * k] and nonfinite, capmoe_plan's
 * offsets[T + 1], expert_ids, probs_out and load[E], and next_best_flags (CAPMOE_NB_FLAGS ints,
 * or NULL without reroute:next-best). record: capmoe_plan_record_words(E) words, 8-byte aligned,
 * entirely written here (its totals zeroed first). */
typedef struct capmoe_plan_stats_args {
  const float* probs;
  const int32_t* topk;
  const int32_t* offsets;
  const int32_t* expert_ids;
  const float* probs_out;
  const uint64_t* nonfinite;
  const uint32_t* load;
  const int32_t* next_best_flags;
  capmoe_shape shape;
  uint32_t* record;
} capmoe_plan_stats_args;
/* Words of one plan record of `experts` experts (0 for experts < 1). */
int32_t capmoe_plan_record_words(int32_t experts);
int capmoe_plan_stats(const capmoe_plan_stats_args* args, capmoe_stream_t stream);

size_t capmoe_dispatch_workspace(int64_t max_assign, int32_t experts);

/* Expert-contiguous rows, each expert's segment padded to `tile`. Row buffers hold
 * max_rows = max_assign + E * (tile - 1); padded[E + 1]; *total_rows = padded[E]. */
typedef struct capmoe_dispatch_args {
  const int32_t* offsets;
  const int32_t* expert_ids;
  const int32_t* token_ids;
  const float* weights;
  const uint32_t* load;
  int32_t tokens;
  int32_t experts;
  int64_t max_assign;
  int32_t tile;
  void* workspace;
  size_t workspace_bytes;
  int32_t* padded;
  uint32_t* row_token;
  float* row_weight;
  int32_t* assignment_row;
  int32_t* total_rows;
} capmoe_dispatch_args;
int capmoe_dispatch(const capmoe_dispatch_args* args, capmoe_stream_t stream);

/* out[r] = x[row_token[r]] (bf16) for served rows, zeros for padding; out holds max_rows rows. */
int capmoe_gather_bf16(const void* x, const uint32_t* row_token, const int32_t* total_rows,
                       int64_t max_rows, int32_t hidden, void* out, capmoe_stream_t stream);

/* out[t] = sum_i weights[i] * y[assignment_row[i]] over t's assignments; y and out are f32 for
 * capmoe_combine_f32, bf16 for capmoe_combine_bf16. */
typedef struct capmoe_combine_args {
  const int32_t* offsets;
  const float* weights;
  const int32_t* assignment_row;
  const void* y;
  int32_t tokens;
  int32_t hidden;
  void* out;
} capmoe_combine_args;
int capmoe_combine_f32(const capmoe_combine_args* args, capmoe_stream_t stream);
int capmoe_combine_bf16(const capmoe_combine_args* args, capmoe_stream_t stream);

/* Grouped-GEMM arguments of a dispatch layout: problems[3 E] {m = load[e], n, k} and the byte
 * addresses of A, B, C per expert (a, b, c are base addresses, only written, never read). */
typedef struct capmoe_gemm_args_args {
  const int32_t* padded;
  const uint32_t* load;
  int32_t experts;
  int32_t n;
  int32_t k;
  uint64_t elem_bytes;
  uint64_t a;
  uint64_t b;
  uint64_t c;
  int32_t* problems;
  uint64_t* a_ptrs;
  uint64_t* b_ptrs;
  uint64_t* c_ptrs;
} capmoe_gemm_args_args;
int capmoe_gemm_args(const capmoe_gemm_args_args* args, capmoe_stream_t stream);

/* ---- expert FFN (cuda/expert/) ---------------------------------------------------------- */

/* h[r, j] = bf16(silu(h13[r, 2j]) * h13[r, 2j+1]) for the real rows r < *total_rows. */
int capmoe_swiglu_bf16(const void* h13, const uint32_t* row_token, const int32_t* total_rows,
                       int64_t max_rows, int32_t inter, void* h, capmoe_stream_t stream);

/* out[i] = bf16((2 * (hash32(i ^ hash32(seed)) >> 8) * 2^-24 - 1) * scale), i < n < 2^32. */
int capmoe_fill_hash_bf16(void* out, uint64_t n, uint32_t seed, float scale,
                          capmoe_stream_t stream);

/* The CUTLASS grouped-GEMM variants (build/templates/, one per variant of
 * src/expert/variants.rs) export `capmoe_gg_<name>` of type capmoe_gg_fn and
 * `capmoe_gg_<name>_workspace` of type capmoe_gg_workspace_fn; each generated file checks its
 * definitions against these types. Per group g: D_g[m, n] = A_g[m, k] * B_g[n, k]^T, bf16. */
typedef struct capmoe_gg_args {
  int32_t groups;
  const int32_t* problems; /* [3 groups] {m, n, k} */
  int32_t max_n;           /* host bounds of every n and k: >= 8, multiples of 8 */
  int32_t max_k;
  const void* const* a; /* [groups] device pointers each */
  const void* const* b;
  void* const* d;
  const int64_t* lda; /* [groups] leading dimensions in elements each */
  const int64_t* ldb;
  const int64_t* ldd;
  void* workspace;
  size_t workspace_bytes;
  int32_t sm_count;
} capmoe_gg_args;
typedef int capmoe_gg_fn(const capmoe_gg_args* args, capmoe_stream_t stream);
/* Workspace bytes for `groups` groups on `sm_count` SMs (0 for arguments the launcher refuses). */
typedef size_t capmoe_gg_workspace_fn(int32_t groups, int32_t sm_count);

/* ---- model kernels (cuda/model/) -------------------------------------------------------- */

/* out[r] = table[ids[r]] (zeros for ids >= vocab); table [vocab, hidden], out [rows, hidden]. */
typedef struct capmoe_embed_args {
  const void* table;
  const uint32_t* ids;
  int32_t rows;
  int32_t vocab;
  int32_t hidden;
  void* out;
} capmoe_embed_args;
int capmoe_model_embed(const capmoe_embed_args* args, capmoe_stream_t stream);

/* x, out: [rows, cols] bf16; w: cols f32. */
int capmoe_model_rmsnorm(const void* x, const float* w, int32_t rows, int32_t cols, float eps,
                         void* out, capmoe_stream_t stream);

/* RoPE (rotate_half) in place: x [rows, heads * 2 * half]; positions [rows]; inv_freq [half]. */
typedef struct capmoe_rope_args {
  void* x;
  const int32_t* positions;
  const float* inv_freq;
  int32_t rows;
  int32_t heads;
  int32_t half;
} capmoe_rope_args;
int capmoe_model_rope(const capmoe_rope_args* args, capmoe_stream_t stream);

/* x += y over n bf16. */
int capmoe_model_add(void* x, const void* y, int64_t n, capmoe_stream_t stream);

/* out[r] = x[idx[r]] (zeros for idx >= src_rows); x [src_rows, cols], out [rows, cols]. */
typedef struct capmoe_gather_rows_args {
  const void* x;
  const uint32_t* idx;
  int32_t rows;
  int32_t src_rows;
  int32_t cols;
  void* out;
} capmoe_gather_rows_args;
int capmoe_model_gather_rows(const capmoe_gather_rows_args* args, capmoe_stream_t stream);

/* Shape of one sequence's attention: n new query rows at positions len - n .. len - 1. */
typedef struct capmoe_attn_shape {
  int32_t n;
  int32_t len;
  int32_t heads;
  int32_t kv_heads;
  int32_t head_dim; /* <= 256 */
  int32_t window;   /* 0: plain causal */
  float scale;
} capmoe_attn_shape;

/* q, out: [n, heads * head_dim] bf16; k_cache, v_cache: [>= len, kv_heads * head_dim] bf16. */
typedef struct capmoe_attn_args {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  capmoe_attn_shape shape;
} capmoe_attn_args;
int capmoe_model_attention(const capmoe_attn_args* args, capmoe_stream_t stream);

/* One decode step's attention over a static cache, positions on the device (a CUDA graph replays
 * it unchanged). Sequence b's new rows q [b] ([batch, heads * head_dim]), k, v [b] ([batch,
 * kv_heads * head_dim]) sit at position positions[b]: k and v are written to cache row
 * b * max_positions + positions[b], then q attends rows b * max_positions + 0 .. positions[b].
 * k_cache, v_cache: [batch * max_positions, kv_heads * head_dim] bf16; out like q. A position
 * outside [0, max_positions) writes nothing to the cache and zeros to out. */
typedef struct capmoe_decode_attn_args {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* positions;
  void* k_cache;
  void* v_cache;
  void* out;
  int32_t batch;
  int32_t max_positions;
  int32_t heads;
  int32_t kv_heads;
  int32_t head_dim; /* <= 256 */
  int32_t window;   /* 0: plain causal */
  float scale;
} capmoe_decode_attn_args;
int capmoe_model_decode_attention(const capmoe_decode_attn_args* args, capmoe_stream_t stream);

/* Greedy pick of a decode step: next[r] = the first largest of logits [r] ([rows, vocab] f32;
 * NaN never wins; 0 when every logit is NaN). nonfinite[r] is 0 when row r is finite, else
 * ~(column << 32 | f32 bits) of its first NaN or Inf (as capmoe_gate's record). When ids is not
 * NULL, ids[r] = next[r]; when positions is not NULL, positions[r] += 1 (the graph's own advance
 * to the next step). */
typedef struct capmoe_greedy_args {
  const float* logits;
  int32_t rows;
  int32_t vocab;
  uint64_t* nonfinite;
  uint32_t* next;
  uint32_t* ids;
  int32_t* positions;
} capmoe_greedy_args;
int capmoe_model_greedy(const capmoe_greedy_args* args, capmoe_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CAPMOE_ABI_H */
