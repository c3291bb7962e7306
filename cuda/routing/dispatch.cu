// Dispatch: expert-contiguous rows (tokens ascending within an expert), each
// expert's segment padded to a tile multiple, plus the bf16 gather of token
// activations into those rows. CPU twin: src/routing/dispatch.rs.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cub/device/device_radix_sort.cuh>
#include <cstdint>
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"

namespace capmoe {

constexpr int kDispatchThreads = 256;
constexpr uint32_t kPad = 0xffffffffu;

inline int dispatch_blocks(long long n) { return static_cast<int>((n + kDispatchThreads - 1) / kDispatchThreads); }

// Assignments past the plan's total sort last under key `experts`.
__global__ void expert_keys(const int* expert_ids, const int* offsets, int tokens, long long max_assign,
                            int experts, unsigned* keys, int* vals) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= max_assign) return;
  keys[i] = i < offsets[tokens] ? static_cast<unsigned>(expert_ids[i]) : static_cast<unsigned>(experts);
  vals[i] = static_cast<int>(i);
}

// One thread: E <= 512, so a serial scan beats a launch of cub.
__global__ void segment_offsets(const unsigned* load, int experts, int tile, int* starts, int* padded, int* total_rows) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int s = 0, p = 0;
  for (int e = 0; e < experts; ++e) {
    starts[e] = s;
    padded[e] = p;
    const int c = static_cast<int>(load[e]);
    s += c;
    p += (c + tile - 1) / tile * tile;
  }
  starts[experts] = s;
  padded[experts] = p;
  *total_rows = p;
}

__global__ void place_rows(const unsigned* keys, const int* vals, const int* offsets, int tokens, long long max_assign,
                           int experts, const int* starts, const int* padded, const int* token_ids,
                           const float* weights, uint32_t* row_token, float* row_weight, int* assignment_row) {
  const long long s = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= max_assign || s >= offsets[tokens]) return;
  const int e = static_cast<int>(keys[s]);
  const int a = vals[s];
  const int row = padded[e] + static_cast<int>(s - starts[e]);
  row_token[row] = static_cast<uint32_t>(token_ids[a]);
  row_weight[row] = weights[a];
  assignment_row[a] = row;
}

__global__ void clear_rows(long long max_rows, uint32_t* row_token, float* row_weight) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= max_rows) return;
  row_token[r] = kPad;
  row_weight[r] = 0.0f;
}

// 8 bf16 (16 bytes) per thread; hidden % 8 == 0 is checked by the launcher.
__global__ void gather_rows_bf16(const __nv_bfloat16* x, const uint32_t* row_token, const int* total_rows,
                                 long long max_rows, int hidden, __nv_bfloat16* out) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int vecs = hidden / 8;
  const long long r = i / vecs;
  if (r >= max_rows) return;
  const int v = static_cast<int>(i % vecs);
  uint4 val = make_uint4(0, 0, 0, 0);
  const uint32_t t = r < *total_rows ? row_token[r] : kPad;
  if (t != kPad) val = reinterpret_cast<const uint4*>(x + static_cast<size_t>(t) * hidden)[v];
  reinterpret_cast<uint4*>(out + static_cast<size_t>(r) * hidden)[v] = val;
}

inline size_t align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

inline size_t sort_bytes(long long n) {
  size_t b = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, b, static_cast<const unsigned*>(nullptr), static_cast<unsigned*>(nullptr),
                                  static_cast<const int*>(nullptr), static_cast<int*>(nullptr), static_cast<int>(n));
  return b;
}

inline size_t dispatch_workspace(long long max_assign, int experts) {
  return 2 * align256(max_assign * sizeof(unsigned)) + 2 * align256(max_assign * sizeof(int)) +
         align256((experts + 1) * sizeof(int)) + align256(sort_bytes(max_assign));
}

}  // namespace capmoe

extern "C" size_t capmoe_dispatch_workspace(int64_t max_assign, int32_t experts) {
  return capmoe::dispatch_workspace(max_assign, experts);
}

// Rows of expert e: padded[e] .. padded[e+1]; the first load[e] are its tokens
// in increasing order, the rest padding (row_token = 0xffffffff, weight 0).
extern "C" int capmoe_dispatch(const capmoe_dispatch_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_dispatch_args& a = *args;
  const int tokens = a.tokens, experts = a.experts, tile = a.tile;
  const long long max_assign = a.max_assign;
  if (tokens < 0 || experts < 1 || experts > 512 || tile < 1 || max_assign < 0 || max_assign > INT32_MAX)
    return kBadArgument;
  if (a.workspace_bytes < dispatch_workspace(max_assign, experts)) return kBadArgument;
  const long long max_rows = max_assign + static_cast<long long>(experts) * (tile - 1);
  char* w = static_cast<char*>(a.workspace);
  unsigned* keys_in = reinterpret_cast<unsigned*>(w);
  w += align256(max_assign * sizeof(unsigned));
  unsigned* keys_out = reinterpret_cast<unsigned*>(w);
  w += align256(max_assign * sizeof(unsigned));
  int* vals_in = reinterpret_cast<int*>(w);
  w += align256(max_assign * sizeof(int));
  int* vals_out = reinterpret_cast<int*>(w);
  w += align256(max_assign * sizeof(int));
  int* starts = reinterpret_cast<int*>(w);
  w += align256((experts + 1) * sizeof(int));
  size_t sb = sort_bytes(max_assign);

  if (max_rows > 0)
    CAPMOE_LAUNCH(dispatch_blocks(max_rows), kDispatchThreads, 0, stream, clear_rows)(max_rows, a.row_token,
                                                                                      a.row_weight);
  CAPMOE_LAUNCH(1, 1, 0, stream, segment_offsets)(a.load, experts, tile, starts, a.padded, a.total_rows);
  if (max_assign == 0) return last_status();
  CAPMOE_LAUNCH(dispatch_blocks(max_assign), kDispatchThreads, 0, stream, expert_keys)(
      a.expert_ids, a.offsets, tokens, max_assign, experts, keys_in, vals_in);
  int end_bit = 1;
  while ((1 << end_bit) <= experts) ++end_bit;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(w, sb, keys_in, keys_out, vals_in, vals_out,
                                                    static_cast<int>(max_assign), 0, end_bit, stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  CAPMOE_LAUNCH(dispatch_blocks(max_assign), kDispatchThreads, 0, stream, place_rows)(
      keys_out, vals_out, a.offsets, tokens, max_assign, experts, starts, a.padded, a.token_ids, a.weights,
      a.row_token, a.row_weight, a.assignment_row);
  return last_status();
}

// out[r] = x[row_token[r]] for served rows, zeros for padding; out holds max_rows rows.
extern "C" int capmoe_gather_bf16(const void* x, const uint32_t* row_token, const int32_t* total_rows,
                                  int64_t max_rows, int32_t hidden, void* out, capmoe_stream_t stream) {
  using namespace capmoe;
  if (hidden < 8 || hidden % 8 != 0 || max_rows < 0) return kBadArgument;
  const long long n = max_rows * (hidden / 8);
  if (n == 0) return 0;
  CAPMOE_LAUNCH(dispatch_blocks(n), kDispatchThreads, 0, stream, gather_rows_bf16)(
      static_cast<const __nv_bfloat16*>(x), row_token, total_rows, max_rows, hidden, static_cast<__nv_bfloat16*>(out));
  return last_status();
}

namespace capmoe {

// Thread per expert: problem {m = load[e], n, k} and byte addresses of A, B, C.
__global__ void gemm_args_kernel(const int* padded, const unsigned* load, int experts, int n, int k,
                                 uint64_t elem_bytes, uint64_t a, uint64_t b,
                                 uint64_t c, int* problems, uint64_t* a_ptrs,
                                 uint64_t* b_ptrs, uint64_t* c_ptrs) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= experts) return;
  const uint64_t row = static_cast<uint64_t>(padded[e]);
  problems[3 * e] = static_cast<int>(load[e]);
  problems[3 * e + 1] = n;
  problems[3 * e + 2] = k;
  a_ptrs[e] = a + row * k * elem_bytes;
  b_ptrs[e] = b + static_cast<uint64_t>(e) * n * k * elem_bytes;
  c_ptrs[e] = c + row * n * elem_bytes;
}

}  // namespace capmoe

// Grouped-GEMM arguments from a dispatch layout (CPU twin:
// DispatchLayout::gemm_args). problems: 3 ints per expert (GemmCoord layout).
extern "C" int capmoe_gemm_args(const capmoe_gemm_args_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_gemm_args_args& a = *args;
  if (a.experts < 1 || a.experts > 512 || a.n < 1 || a.k < 1 || a.elem_bytes == 0) return kBadArgument;
  CAPMOE_LAUNCH((a.experts + 127) / 128, 128, 0, stream, gemm_args_kernel)(
      a.padded, a.load, a.experts, a.n, a.k, a.elem_bytes, a.a, a.b, a.c, a.problems, a.a_ptrs, a.b_ptrs, a.c_ptrs);
  return last_status();
}
