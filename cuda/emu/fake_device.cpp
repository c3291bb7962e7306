// The fake libcuda's device (part of libcuda.so with fake_driver.cpp): its queries, and its default
// memory pool. Allocations come from host memory either way; of the pool only the release
// threshold is kept, and a second set of it aborts: capmoe sets it once per device and process
// (src/cuda/pool.rs).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef struct CUmemPool_st* CUmemoryPool;
}

namespace {
constexpr CUresult OK = 0, INVALID_VALUE = 1, INVALID_DEVICE = 101;
constexpr int RELEASE_THRESHOLD = 4;
struct Pool {
  std::mutex lock;
  unsigned long long release_threshold = 0;
  int threshold_sets = 0;
} g_pool;
bool ours(CUmemoryPool p) { return p == reinterpret_cast<CUmemoryPool>(&g_pool); }
}  // namespace

extern "C" {
CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
  if (d != 0) return INVALID_DEVICE;
  if (!name || len < 1) return INVALID_VALUE;
  std::snprintf(name, static_cast<size_t>(len), "capmoe emulated device (CPU, not a GPU)");
  return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice d) {
  if (d != 0) return INVALID_DEVICE;
  if (!v) return INVALID_VALUE;
  switch (attr) {
    case 1: *v = 1024; break;       // max threads per block
    case 10: *v = 32; break;        // warp size
    case 16: *v = 132; break;       // SMs (an H200's count)
    case 75: *v = 9; break;         // compute capability 9.0
    case 76: *v = 0; break;
    case 97: *v = 232448; break;    // shared memory per block (opt-in)
    case 115: *v = 1; break;        // memory pools: cuMemAllocAsync
    default: *v = 0; break;
  }
  return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
  if (d != 0) return INVALID_DEVICE;
  if (!bytes) return INVALID_VALUE;
  *bytes = size_t{16} << 30;
  return OK;
}
CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice) {
  if (uuid) std::memset(uuid, 0xe, 16);
  return OK;
}
CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }
CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
  if (free_b) *free_b = size_t{15} << 30;
  if (total) *total = size_t{16} << 30;
  return OK;
}
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice d) {
  if (d != 0) return INVALID_DEVICE;
  if (!pool) return INVALID_VALUE;
  *pool = reinterpret_cast<CUmemoryPool>(&g_pool);
  return OK;
}
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, int attr, void* value) {
  if (!ours(pool) || !value || attr < 1 || attr > 8) return INVALID_VALUE;
  if (attr != RELEASE_THRESHOLD) return OK;
  std::lock_guard<std::mutex> l(g_pool.lock);
  if (++g_pool.threshold_sets > 1) {
    std::fprintf(stderr, "capmoe fake libcuda: the default pool's release threshold set %d times (capmoe sets it "
                 "once per device)\n", g_pool.threshold_sets);
    std::abort();
  }
  g_pool.release_threshold = *static_cast<unsigned long long*>(value);
  return OK;
}
CUresult cuMemPoolGetAttribute(CUmemoryPool pool, int attr, void* value) {
  if (!ours(pool) || !value || attr < 1 || attr > 8) return INVALID_VALUE;
  std::lock_guard<std::mutex> l(g_pool.lock);
  if (attr <= 3) *static_cast<int*>(value) = 1;  // the reuse flags: on, as by default
  else *static_cast<unsigned long long*>(value) = attr == RELEASE_THRESHOLD ? g_pool.release_threshold : 0;
  return OK;
}
// Graph memory is host memory freed with its graph: nothing to trim.
CUresult cuDeviceGraphMemTrim(CUdevice d) { return d == 0 ? OK : INVALID_DEVICE; }
}
