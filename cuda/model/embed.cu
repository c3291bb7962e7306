// Embedding lookup: out[r] = table[ids[r]] (bf16 rows). CPU twin: CpuBackend::embed (the host
// checks ids < vocab before the launch; an id out of range still writes zeros, never reads past).
#include "../include/capmoe_abi.h"
#include "../common/status.cuh"
#include "common.cuh"

namespace capmoe {
namespace model {

__global__ void embed_kernel(const __nv_bfloat16* table, const unsigned* ids, int rows, int vocab, int hidden,
                             __nv_bfloat16* out) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(rows) * hidden) return;
  const int r = static_cast<int>(i / hidden), c = static_cast<int>(i % hidden);
  const unsigned id = ids[r];
  out[i] = id < static_cast<unsigned>(vocab) ? table[static_cast<size_t>(id) * hidden + c] : bf(0.0f);
}

}  // namespace model
}  // namespace capmoe

// table: [vocab, hidden] bf16; ids: rows u32; out: [rows, hidden] bf16.
extern "C" int capmoe_model_embed(const capmoe_embed_args* args, capmoe_stream_t stream) {
  using namespace capmoe;
  if (!args) return kBadArgument;
  const capmoe_embed_args& a = *args;
  if (a.rows < 0 || a.vocab < 1 || a.hidden < 1) return kBadArgument;
  const long long n = static_cast<long long>(a.rows) * a.hidden;
  if (n == 0) return 0;
  CAPMOE_LAUNCH(model::blocks_for(n, 256), 256, 0, stream, model::embed_kernel)(
      static_cast<const __nv_bfloat16*>(a.table), a.ids, a.rows, a.vocab, a.hidden, static_cast<__nv_bfloat16*>(a.out));
  return last_status();
}
