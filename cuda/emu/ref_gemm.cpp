// Emulated builds have no CUTLASS. This reference grouped GEMM stands in for the grouped-GEMM
// variants (the ABI of build/templates/gg_sm90.cu and gg_sm80.cu). It reads the problem-size,
// pointer and leading-dimension arrays the way those kernels do, and checks every entry against
// what they require: {m, n, k} as int[3] (GemmCoord, and the SM90 kernel's
// Shape<int, int, int>); A row-major [m, k] with stride {lda, 1}; B row-major [n, k] (ColumnMajor
// k x n) with {ldb, 1}; D row-major [m, n] with {ldd, 1}; n, k and every ld % 8 == 0 and
// 16-byte aligned pointers (kAlign = 8 bf16); n <= max_n, k <= max_k; m = 0 skips the group.
// D = A B^T with an f32 sum in k order, rounded to bf16 once. A CUTLASS kernel sums in another
// order, so its result may differ by a rounding. This checks the arrays that feed the kernel.
// It does not check the kernel.
#include <cstdint>
#include <cstdio>

#include "emu.cuh"
#include "emu_stream.h"
#include "../include/capmoe_abi.h"
#include "include/cuda_bf16.h"

#if defined(__SANITIZE_ADDRESS__)
extern "C" void* __asan_region_is_poisoned(void* beg, size_t size);
#endif

namespace {
// Every operand row is checked against ASan's shadow once, then the sums run uninstrumented: an
// instrumented GEMM at the FFN tests' wide shape would dominate the emulated suite's time.
void check_rows(const char* arch, int g, const char* what, const void* base, long long rows, long long ld,
                long long cols) {
#if defined(__SANITIZE_ADDRESS__)
  for (long long r = 0; r < rows; ++r) {
    char* p = static_cast<char*>(const_cast<void*>(base)) + 2 * r * ld;
    if (void* bad = __asan_region_is_poisoned(p, static_cast<size_t>(2 * cols)))
      capmoe_emu::fatal("grouped GEMM (%s): group %d reads/writes %s row %lld [%p, +%lld bytes) outside its "
                        "allocation (first bad byte %p)",
                        arch, g, what, r, static_cast<void*>(p), 2 * cols, bad);
  }
#else
  (void)arch, (void)g, (void)what, (void)base, (void)rows, (void)ld, (void)cols;
#endif
}

__attribute__((no_sanitize_address, no_sanitize("undefined"))) void gemm(const __nv_bfloat16* A, long long lda,
                                                                         const __nv_bfloat16* B, long long ldb,
                                                                         __nv_bfloat16* D, long long ldd, int m, int n,
                                                                         int k) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      const __nv_bfloat16* ar = A + i * lda;
      const __nv_bfloat16* br = B + j * ldb;
      for (int kk = 0; kk < k; ++kk) acc += __bfloat162float(ar[kk]) * __bfloat162float(br[kk]);
      D[i * ldd + j] = __float2bfloat16_rn(acc);
    }
}

constexpr int kBadArgument = -1;
constexpr int kMaxGroups = 1024;
// The SM90 kernel's workspace holds per-SM TMA descriptors; SM80's kDeviceOnly needs none.
constexpr size_t kSm90BytesPerSm = 512;

void run(int sm90, int groups, int max_n, int max_k, const int* problems, const void* const* a, const void* const* b,
         void* const* d, const int64_t* lda, const int64_t* ldb, const int64_t* ldd, void* workspace, size_t need) {
  using capmoe_emu::fatal;
  if (need) capmoe_emu::fill_random(workspace, need);
  const char* arch = sm90 ? "SM90 ptr-array" : "SM80 GemmGrouped";
  for (int g = 0; g < groups; ++g) {
    const int m = problems[3 * g], n = problems[3 * g + 1], k = problems[3 * g + 2];
    if (m < 0) fatal("grouped GEMM (%s): group %d has m = %d", arch, g, m);
    if (m == 0) continue;
    if (n < 1 || n > max_n || n % 8 || k < 1 || k > max_k || k % 8)
      fatal("grouped GEMM (%s): group %d {m %d, n %d, k %d}: n and k must be in [8, max_n = %d] and "
            "[8, max_k = %d] and multiples of 8",
            arch, g, m, n, k, max_n, max_k);
    if (lda[g] < k || ldb[g] < k || ldd[g] < n || lda[g] % 8 || ldb[g] % 8 || ldd[g] % 8)
      fatal("grouped GEMM (%s): group %d {m %d, n %d, k %d}: lda %lld, ldb %lld (each >= k) and ldd %lld "
            "(>= n) must be multiples of 8",
            arch, g, m, n, k, static_cast<long long>(lda[g]), static_cast<long long>(ldb[g]),
            static_cast<long long>(ldd[g]));
    for (const void* p : {a[g], b[g], static_cast<const void*>(d[g])})
      if (!p || reinterpret_cast<uintptr_t>(p) % 16)
        fatal("grouped GEMM (%s): group %d: operand pointer %p is not 16-byte aligned", arch, g, p);
    const __nv_bfloat16* A = static_cast<const __nv_bfloat16*>(a[g]);
    const __nv_bfloat16* B = static_cast<const __nv_bfloat16*>(b[g]);
    __nv_bfloat16* D = static_cast<__nv_bfloat16*>(d[g]);
    check_rows(arch, g, "A", A, m, lda[g], k);
    check_rows(arch, g, "B", B, n, ldb[g], k);
    check_rows(arch, g, "D", D, m, ldd[g], n);
    gemm(A, lda[g], B, ldb[g], D, ldd[g], m, n, k);
  }
}
}  // namespace

extern "C" size_t capmoe_emu_grouped_gemm_workspace(int sm90, int groups, int sm_count) {
  if (groups < 1 || groups > kMaxGroups || sm_count < 1) return 0;
  return sm90 ? static_cast<size_t>(sm_count) * kSm90BytesPerSm : 0;
}

extern "C" int capmoe_emu_grouped_gemm(int sm90, const capmoe_gg_args* args, capmoe_stream_t stream) {
  if (!args) return kBadArgument;
  const int groups = args->groups, max_n = args->max_n, max_k = args->max_k, sm_count = args->sm_count;
  const int* problems = args->problems;
  const void* const* a = args->a;
  const void* const* b = args->b;
  void* const* d = args->d;
  const int64_t *lda = args->lda, *ldb = args->ldb, *ldd = args->ldd;
  void* workspace = args->workspace;
  const size_t workspace_bytes = args->workspace_bytes;
  // The launcher's own checks (the same as the templates' host code).
  if (groups < 1 || groups > kMaxGroups || max_n < 8 || max_n % 8 != 0 || max_k < 8 || max_k % 8 != 0 ||
      sm_count < 1 || !problems || !a || !lda || !b || !ldb || !d || !ldd)
    return kBadArgument;
  const size_t need = capmoe_emu_grouped_gemm_workspace(sm90, groups, sm_count);
  if (workspace_bytes < need || (need > 0 && !workspace) || reinterpret_cast<uintptr_t>(workspace) % 64 != 0)
    return kBadArgument;
  // What the kernel reads on the device, checked when it runs (in stream order).
  capmoe_emu::enqueue(stream, [=] { run(sm90, groups, max_n, max_k, problems, a, b, d, lda, ldb, ldd, workspace, need); });
  return 0;
}
