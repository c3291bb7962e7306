// CPU emulation of the CUDA subset capmoe's hand-written kernels use (see docs/EMULATION.md).
// Compiled with the host C++ compiler and -DCAPMOE_EMULATE: a kernel is a plain function, run
// once per thread on its own fiber; a block's fibers run in a seeded random order (in about half
// the blocks, warp by warp: one warp runs ahead to its next barrier) and switch only
// at __syncthreads and warp collectives, which are real rendezvous (a missing partner deadlocks,
// and the runtime aborts with a message). Results are *emulated*, never *verified*.
#pragma once
#ifndef CAPMOE_EMULATE
#error "cuda/emu/ is for -DCAPMOE_EMULATE builds only"
#endif
#if defined(__FAST_MATH__)
#error "emulated kernels need strict IEEE f32: no -ffast-math"
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
// Static shared memory: one copy for the block being run (blocks run one at a time). The
// section lets the runtime refill every __shared__ variable with random bytes at each block start.
#define __shared__ static __attribute__((section("capmoe_emu_shared"), aligned(16)))

// ---- runtime types ---------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNotSupported = 801,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorUnknown = 999,
};
typedef cudaError_t cudaError;
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

extern "C" {
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorString(int error);
const char* cudaGetErrorName(int error);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, int kind, cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMalloc(void** ptr, size_t size);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaGetDevice(int* device);
}
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };

namespace capmoe_emu {

// The thread being run and its block; set by the scheduler (runtime.cpp).
struct ThreadState {
  uint3 tid;
  unsigned linear;
};
struct BlockState {
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern ThreadState* g_thread;
extern BlockState g_block;

[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fill_random(void* p, size_t bytes);
void sync_block();
enum class Op : int { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp };
uint64_t warp_op(Op op, unsigned mask, uint64_t value, int arg, int width);
unsigned active_mask();
void set_error(cudaError_t e);

// Runs `thread(closure)` for every thread of every block (runtime.cpp): at the call, or at each
// replay of the graph that `stream`'s capture becomes (so the closure is shared, not borrowed).
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
              void (*thread)(void*), std::shared_ptr<void> closure);

template <class T>
T implicit(T v) { return v; }

template <class... P>
struct Launch {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  void (*kernel)(P...);
  const char* name;

  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Closure {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    };
    auto c = std::make_shared<Closure>(
        Closure{kernel, std::tuple<std::decay_t<P>...>(implicit<std::decay_t<P>>(std::forward<A>(a))...)});
    run_grid(name, grid, block, smem, stream,
             [](void* p) {
               auto* cl = static_cast<Closure*>(p);
               std::apply(cl->kernel, cl->params);  // by-value parameters: each thread gets copies
             },
             std::move(c));
  }
};

template <class... P>
Launch<P...> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*kernel)(P...),
                    const char* name = "kernel") {
  return Launch<P...>{grid, block, smem, stream, kernel, name};
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace capmoe_emu

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (::capmoe_emu::g_thread->tid)
#define blockIdx (::capmoe_emu::g_block.block_idx)
#define blockDim (::capmoe_emu::g_block.block_dim)
#define gridDim (::capmoe_emu::g_block.grid_dim)
constexpr int warpSize = 32;

// The launch chevrons, as the ABI's CAPMOE_LAUNCH macro expands them under emulation.
#ifndef CAPMOE_EMU_LAUNCH
#define CAPMOE_EMU_LAUNCH(grid, block, smem, stream, ...) \
  ::capmoe_emu::launch(grid, block, smem, stream, __VA_ARGS__, #__VA_ARGS__)
#endif

// ---- synchronisation -------------------------------------------------------------------------
inline void __syncthreads() { ::capmoe_emu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::capmoe_emu::warp_op(::capmoe_emu::Op::SyncWarp, mask, 0, 0, 32);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline unsigned __activemask() { return ::capmoe_emu::active_mask(); }

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  using namespace capmoe_emu;
  return from_bits<T>(warp_op(Op::ShflIdx, mask, to_bits(v), src, width));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace capmoe_emu;
  return from_bits<T>(warp_op(Op::ShflUp, mask, to_bits(v), static_cast<int>(delta), width));
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace capmoe_emu;
  return from_bits<T>(warp_op(Op::ShflDown, mask, to_bits(v), static_cast<int>(delta), width));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  using namespace capmoe_emu;
  return from_bits<T>(warp_op(Op::ShflXor, mask, to_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace capmoe_emu;
  return static_cast<unsigned>(warp_op(Op::Ballot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  using namespace capmoe_emu;
  return static_cast<int>(warp_op(Op::Any, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  using namespace capmoe_emu;
  return static_cast<int>(warp_op(Op::All, mask, pred != 0, 0, 32));
}

// ---- atomics (one OS thread runs a launch, so plain read-modify-write is atomic) -------------
template <class T>
T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T>
T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }
template <class T>
T atomicMax(T* p, T v) { T o = *p; *p = o < v ? v : o; return o; }
template <class T>
T atomicMin(T* p, T v) { T o = *p; *p = v < o ? v : o; return o; }
template <class T>
T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <class T>
T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }
template <class T>
T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }
template <class T>
T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
template <class T>
T atomicXor(T* p, T v) { T o = *p; *p = o ^ v; return o; }

// ---- f32 intrinsics: strict IEEE, round to nearest even (-ffp-contract=off) -------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline float __uint_as_float(unsigned u) { return ::capmoe_emu::from_bits<float>(u); }
inline float __int_as_float(int i) { return ::capmoe_emu::from_bits<float>(static_cast<unsigned>(i)); }
inline unsigned __float_as_uint(float f) { return static_cast<unsigned>(::capmoe_emu::to_bits(f)); }
inline int __float_as_int(float f) { return static_cast<int>(static_cast<unsigned>(::capmoe_emu::to_bits(f))); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

// CUDA's integer min/max overloads in the global namespace.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// CUDA's classification functions live in the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;
