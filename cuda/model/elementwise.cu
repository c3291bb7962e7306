// Elementwise and row kernels of the model on bf16 activations (f32 arithmetic, one rounding):
// x += y (CpuBackend::add_assign), and the row gather out[r] = x[idx[r]] with idx = PAD (u32 max)
// giving a zero row (CpuBackend::select_rows; the MoE dispatch of DispatchLayout::scatter).
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

__global__ void add_kernel(__nv_bfloat16* x, const __nv_bfloat16* y, long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  x[i] = bf(__fadd_rn(ld(x + i), ld(y + i)));
}

__global__ void gather_rows_kernel(const __nv_bfloat16* x, const unsigned* idx, int rows, int src_rows, int cols,
                                   __nv_bfloat16* out) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(rows) * cols) return;
  const int r = static_cast<int>(i / cols), c = static_cast<int>(i % cols);
  const unsigned s = idx[r];
  out[i] = s < static_cast<unsigned>(src_rows) ? x[static_cast<size_t>(s) * cols + c] : bf(0.0f);
}

}  // namespace model
}  // namespace capmoe

// x, y: n bf16; x += y.
extern "C" int capmoe_model_add(void* x, const void* y, int64_t n, capmoe_stream_t stream) {
  using namespace capmoe;
  if (n < 0) return kBadArgument;
  if (n == 0) return 0;
  CAPMOE_LAUNCH(model::blocks_for(n, 256), 256, 0, stream, model::add_kernel)(static_cast<__nv_bfloat16*>(x),
                                                                             static_cast<const __nv_bfloat16*>(y), n);
  return last_status();
}

// x: [src_rows, cols] bf16; idx: rows u32 (an index >= src_rows, e.g. PAD, gives zeros); out: [rows, cols].
extern "C" int capmoe_model_gather_rows(const capmoe_gather_rows_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_gather_rows_args& a = *args;
  if (a.rows < 0 || a.src_rows < 0 || a.cols < 1) return kBadArgument;
  const long long n = static_cast<long long>(a.rows) * a.cols;
  if (n == 0) return 0;
  CAPMOE_LAUNCH(model::blocks_for(n, 256), 256, 0, stream, model::gather_rows_kernel)(
      static_cast<const __nv_bfloat16*>(a.x), a.idx, a.rows, a.src_rows, a.cols, static_cast<__nv_bfloat16*>(a.out));
  return last_status();
}
