// A fake libcublas.so for emulated runs: cublasGemmEx for bf16 inputs with f32 compute (bf16 or
// f32 output), the one GEMM the CUDA model backend calls, as a plain f32 sum in k order
// (cuBLAS's own order differs, so results may differ by a rounding). Anything else returns
// CUBLAS_STATUS_NOT_SUPPORTED. See docs/EMULATION.md.
#include <cstdint>
#include <cstring>

#include "emu.cuh"
#include "emu_stream.h"
#include "include/cuda_bf16.h"

namespace {
constexpr int kOk = 0, kInvalid = 7, kNotSupported = 15;
constexpr int kR32F = 0, kR16BF = 14, kCompute32F = 68, kCompute32FFastTF32 = 77;
struct Handle {
  void* stream = nullptr;
};
float load(const void* p, int type, long long i) {
  return type == kR16BF ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}
}  // namespace

extern "C" {
int cublasCreate_v2(void** h) {
  if (!h) return kInvalid;
  *h = new Handle;
  return kOk;
}
int cublasDestroy_v2(void* h) {
  delete static_cast<Handle*>(h);
  return kOk;
}
int cublasSetStream_v2(void* h, void* s) {
  if (!h) return kInvalid;
  static_cast<Handle*>(h)->stream = s;
  return kOk;
}
int cublasSetMathMode(void*, int) { return kOk; }
int cublasSetWorkspace_v2(void*, void*, size_t) { return kOk; }

// Column-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C (host alpha and beta).
int cublasGemmEx(void* h, int transa, int transb, int m, int n, int k, const void* alpha, const void* A, int atype,
                 int lda, const void* B, int btype, int ldb, const void* beta, void* C, int ctype, int ldc,
                 int compute, int algo) {
  (void)algo;
  if (!h || m < 0 || n < 0 || k < 0 || !alpha || !beta) return kInvalid;
  if (transa < 0 || transa > 1 || transb < 0 || transb > 1) return kNotSupported;
  if ((atype != kR16BF && atype != kR32F) || btype != atype || (ctype != kR16BF && ctype != kR32F) ||
      (compute != kCompute32F && compute != kCompute32FFastTF32))
    return kNotSupported;
  if (lda < (transa ? k : m) || ldb < (transb ? n : k) || ldc < m) return kInvalid;
  if (lda < 1 || ldb < 1 || ldc < 1) return kInvalid;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  // Host alpha and beta are read at the call; the product runs in stream order.
  capmoe_emu::enqueue(static_cast<Handle*>(h)->stream, [=] {
    for (long long j = 0; j < n; ++j)
      for (long long i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (long long l = 0; l < k; ++l) {
          const float a = load(A, atype, transa ? l + i * lda : i + l * lda);
          const float b = load(B, btype, transb ? j + l * ldb : l + j * ldb);
          acc += a * b;
        }
        float v = al * acc;
        if (be != 0.0f) v += be * load(C, ctype, i + j * ldc);
        if (ctype == kR16BF)
          static_cast<__nv_bfloat16*>(C)[i + j * ldc] = __float2bfloat16_rn(v);
        else
          static_cast<float*>(C)[i + j * ldc] = v;
      }
  });
  return kOk;
}
}
