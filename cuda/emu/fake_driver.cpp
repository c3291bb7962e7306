// A fake libcuda.so for emulated runs: the subset of the driver API cudarc calls, backed by host
// memory. Every operation runs eagerly at the call (a valid order for one stream, and for several
// when each waits on the others through events). Device memory is 256-byte aligned host memory;
// new allocations hold random bytes; a copy or memset outside a live allocation aborts. A
// capturing stream records its work instead (emu_stream.h) and cuGraphLaunch replays it; what a
// capture cannot hold (a host sync, a host transfer, a wait on an outside event) invalidates it
// with a message. Faults a test asks for through CAPMOE_FAKE_FAULT (read at each call it concerns):
// `capture-free` (a stream-ordered free inside a capture frees, then fails, as a driver error
// would) and `no-stream-memops` (cuStreamWriteValue32/WaitValue32 unsupported). See
// docs/EMULATION.md.
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "emu_stream.h"
#include "fake_fault.h"

extern "C" {
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st* CUcontext;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef void (*CUhostFn)(void*);
typedef struct CUgraph_st* CUgraph;
typedef struct CUgraphExec_st* CUgraphExec;
}

namespace {
constexpr CUresult OK = 0, INVALID_VALUE = 1, NOT_INITIALIZED = 3, INVALID_DEVICE = 101, INVALID_HANDLE = 400,
                   ILLEGAL_STATE = 401, NOT_SUPPORTED = 801, CAPTURE_UNSUPPORTED = 900, CAPTURE_INVALIDATED = 901,
                   UNKNOWN = 999;
using capmoe_emu::Capture;
using capmoe_emu::capture_of;
using capmoe_emu::enqueue;
using capmoe_emu::invalidate;

struct Ctx {
  int dev;
} g_ctx{0};
using Stream = capmoe_emu::StreamObj;
struct Event {
  int magic = 0xe7e7;
  unsigned long long stamp = 0;
  const Capture* recorded_in = nullptr;  // the capture that recorded it last, or null
};
// A captured graph: its work in stream order and its memory nodes (freed with the last owner).
struct GraphBody {
  std::vector<capmoe_emu::Work> ops;
  std::vector<capmoe_emu::GraphAlloc> allocs;
  ~GraphBody();
};
struct Graph {
  std::shared_ptr<GraphBody> body;
};
struct Exec {
  std::shared_ptr<GraphBody> body;
};

std::mutex g_lock;
std::map<uintptr_t, size_t> g_allocs;
std::atomic<uint64_t> g_alloc_calls{0};  // every successful allocation (capmoe_fake_alloc_calls)
bool g_init = false;
int g_capturing = 0;  // streams capturing now (a context sync is illegal while any is)
thread_local CUcontext g_current = nullptr;
uint64_t g_rng = 0xfa4ed41e;
unsigned long long g_clock = 0;

[[noreturn]] void fatal(const char* fmt, ...) {
  std::fprintf(stderr, "capmoe fake libcuda: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

uint64_t next_random() {
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Aborts unless [p, p + n) lies inside one live allocation.
void check_range(const char* op, CUdeviceptr p, size_t n) {
  std::lock_guard<std::mutex> l(g_lock);
  auto it = g_allocs.upper_bound(static_cast<uintptr_t>(p));
  if (it == g_allocs.begin()) fatal("%s: 0x%llx is not device memory", op, p);
  --it;
  if (p < it->first || p + n > it->first + it->second)
    fatal("%s: [0x%llx, +%zu) leaves the allocation [0x%llx, +%zu)", op, p, n,
          static_cast<unsigned long long>(it->first), it->second);
}

CUresult alloc(CUdeviceptr* out, size_t n) {
  if (!out || n == 0) return INVALID_VALUE;  // as the driver: no zero-byte allocations
  void* p = std::aligned_alloc(256, (n + 255) & ~size_t{255});
  if (!p) return 2;
  std::lock_guard<std::mutex> l(g_lock);
  unsigned char* b = static_cast<unsigned char*>(p);
  uint64_t r = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) r = next_random();
    b[i] = static_cast<unsigned char>(r >> (8 * (i % 8)));
  }
  g_allocs[reinterpret_cast<uintptr_t>(p)] = n;
  *out = reinterpret_cast<CUdeviceptr>(p);
  g_alloc_calls.fetch_add(1, std::memory_order_relaxed);
  return OK;
}

CUresult release(CUdeviceptr p) {
  if (p == 0) return OK;
  std::lock_guard<std::mutex> l(g_lock);
  auto it = g_allocs.find(static_cast<uintptr_t>(p));
  if (it == g_allocs.end()) fatal("cuMemFree of 0x%llx, which is not a live allocation", p);
  g_allocs.erase(it);
  std::free(reinterpret_cast<void*>(p));
  return OK;
}

// A graph memory node's lifetime in a replay: live (random bytes, as pool memory is) from its
// allocation to its free, so a driver copy or memset outside that span aborts.
void arm(uintptr_t p, size_t n) {
  std::lock_guard<std::mutex> l(g_lock);
  g_allocs[p] = n;
  unsigned char* b = reinterpret_cast<unsigned char*>(p);
  uint64_t r = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i % 8 == 0) r = next_random();
    b[i] = static_cast<unsigned char>(r >> (8 * (i % 8)));
  }
}
void retire(uintptr_t p) {
  std::lock_guard<std::mutex> l(g_lock);
  g_allocs.erase(p);
}

GraphBody::~GraphBody() {
  for (const auto& a : allocs) {
    retire(a.ptr);
    std::free(reinterpret_cast<void*>(a.ptr));
  }
}

// cuMemAllocAsync on a capturing stream: one address for the graph's lifetime, armed at each
// replay's allocation point (and live from here to its free inside the capture).
CUresult graph_alloc(Capture* c, CUdeviceptr* out, size_t n) {
  const CUresult r = alloc(out, n);
  if (r != OK) return r;
  const uintptr_t p = static_cast<uintptr_t>(*out);
  c->allocs.push_back({p, n, false});
  c->ops.push_back([p, n] { arm(p, n); });
  return OK;
}

// cuMemFreeAsync on a capturing stream. Freeing memory from outside the graph would free it again
// at every replay: capmoe never does, so it is not emulated.
CUresult graph_free(Capture* c, CUdeviceptr p) {
  for (auto& a : c->allocs)
    if (a.ptr == p && !a.freed) {
      a.freed = true;
      retire(a.ptr);
      c->ops.push_back([q = a.ptr] { retire(q); });
      return capmoe_emu::fault("capture-free") ? UNKNOWN : OK;
    }
  fatal("cuMemFreeAsync of 0x%llx inside a capture, which the capture did not allocate (not emulated: each replay "
        "would free it again)",
        p);
}

// Refuses what a capture cannot hold: invalidates it, reports, and returns the driver's error.
CUresult refuse(CUstream s, const char* why) {
  invalidate(capture_of(s), why);
  return CAPTURE_UNSUPPORTED;
}
}  // namespace

extern "C" {
// Not a driver call: allocations so far (sync and stream-ordered, graph memory nodes included),
// for tests that count what a layer allocates (tests/gpu_driver.rs).
uint64_t capmoe_fake_alloc_calls() { return g_alloc_calls.load(std::memory_order_relaxed); }
CUresult cuInit(unsigned) {
  g_init = true;
  return OK;
}
CUresult cuDriverGetVersion(int* v) {
  if (!v) return INVALID_VALUE;
  *v = 13000;
  return OK;
}
CUresult cuDeviceGetCount(int* n) {
  if (!n) return INVALID_VALUE;
  *n = 1;
  return OK;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (!g_init) return NOT_INITIALIZED;
  if (!d) return INVALID_VALUE;
  if (ordinal != 0) return INVALID_DEVICE;
  *d = 0;
  return OK;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) {
  if (d != 0) return INVALID_DEVICE;
  if (!c) return INVALID_VALUE;
  *c = reinterpret_cast<CUcontext>(&g_ctx);
  return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return d == 0 ? OK : INVALID_DEVICE; }
CUresult cuCtxSetCurrent(CUcontext c) {
  g_current = c;
  return OK;
}
CUresult cuCtxGetCurrent(CUcontext* c) {
  if (!c) return INVALID_VALUE;
  *c = g_current;
  return OK;
}
CUresult cuCtxPushCurrent_v2(CUcontext c) { return cuCtxSetCurrent(c); }
CUresult cuCtxPopCurrent_v2(CUcontext* c) {
  if (c) *c = g_current;
  return OK;
}
CUresult cuCtxGetDevice(CUdevice* d) {
  if (!d) return INVALID_VALUE;
  *d = 0;
  return OK;
}
CUresult cuCtxSynchronize() {
  if (g_capturing > 0) fatal("cuCtxSynchronize while a stream captures a graph (a host sync inside the graph)");
  return OK;
}
CUresult cuCtxSetFlags(unsigned) { return OK; }
CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
  if (lo) *lo = 0;
  if (hi) *hi = 0;
  return OK;
}

CUresult cuStreamCreate(CUstream* s, unsigned) {
  if (!s) return INVALID_VALUE;
  *s = reinterpret_cast<CUstream>(new Stream);
  return OK;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned f, int) { return cuStreamCreate(s, f); }
CUresult cuStreamDestroy_v2(CUstream s) {
  if (capture_of(s)) fatal("cuStreamDestroy of a stream that is capturing a graph");
  delete reinterpret_cast<Stream*>(s);
  return OK;
}
CUresult cuStreamSynchronize(CUstream s) {
  if (capture_of(s)) return refuse(s, "cuStreamSynchronize of the capturing stream (a host sync inside the graph)");
  return OK;
}
CUresult cuStreamQuery(CUstream s) {
  if (capture_of(s)) return refuse(s, "cuStreamQuery of the capturing stream");
  return OK;
}
// Inside a capture only events recorded by the same capture can be waited on (cudarc's event
// tracking must be off while capturing, as MoeLayerGraph does).
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned) {
  if (!e) return INVALID_HANDLE;
  Capture* c = capture_of(s);
  const Capture* from = reinterpret_cast<Event*>(e)->recorded_in;
  if (c && from != c) return refuse(s, "cuStreamWaitEvent on an event recorded outside this capture");
  if (!c && from) fatal("cuStreamWaitEvent on an event recorded inside a capture (forked capture: not emulated)");
  return OK;
}
CUresult cuStreamIsCapturing(CUstream s, int* status) {
  if (!status) return INVALID_VALUE;
  const Capture* c = capture_of(s);
  *status = !c ? 0 : c->invalid ? 2 : 1;  // NONE, INVALIDATED, ACTIVE
  return OK;
}
CUresult cuStreamBeginCapture_v2(CUstream s, int mode) {
  if (!s) return CAPTURE_UNSUPPORTED;  // the legacy null stream cannot capture
  if (mode < 0 || mode > 2) return INVALID_VALUE;
  Stream* st = reinterpret_cast<Stream*>(s);
  if (st->magic != capmoe_emu::kStreamMagic) return INVALID_HANDLE;
  if (st->capture) return ILLEGAL_STATE;
  st->capture = new Capture;
  std::lock_guard<std::mutex> l(g_lock);
  ++g_capturing;
  return OK;
}
// Ends the capture: the graph, or CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph. A memory
// node still live at the end is refused: real graphs may leave one for the caller to free before
// the next launch, which capmoe's graphs never do.
CUresult cuStreamEndCapture(CUstream s, CUgraph* out) {
  if (!out) return INVALID_VALUE;
  Stream* st = reinterpret_cast<Stream*>(s);
  if (!s || st->magic != capmoe_emu::kStreamMagic || !st->capture) return ILLEGAL_STATE;
  std::unique_ptr<Capture> c(st->capture);
  st->capture = nullptr;
  {
    std::lock_guard<std::mutex> l(g_lock);
    --g_capturing;
  }
  auto body = std::make_shared<GraphBody>();
  body->ops = std::move(c->ops);
  body->allocs = std::move(c->allocs);
  *out = nullptr;
  if (c->invalid) return CAPTURE_INVALIDATED;
  for (const auto& a : body->allocs)
    if (!a.freed)
      fatal("a graph allocation of %zu bytes is still live at the end of the capture (not emulated: free every "
            "temporary inside the graph)",
            a.bytes);
  *out = reinterpret_cast<CUgraph>(new Graph{std::move(body)});
  return OK;
}
CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph g, unsigned long long flags) {
  if (!exec || !g || flags > 0xf) return INVALID_VALUE;
  *exec = reinterpret_cast<CUgraphExec>(new Exec{reinterpret_cast<Graph*>(g)->body});
  return OK;
}
CUresult cuGraphUpload(CUgraphExec exec, CUstream) { return exec ? OK : INVALID_VALUE; }
// Replays the captured work in order, on `s` (recorded into its capture if it is capturing).
CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
  if (!exec) return INVALID_VALUE;
  std::shared_ptr<GraphBody> body = reinterpret_cast<Exec*>(exec)->body;
  enqueue(s, [body] {
    for (const auto& op : body->ops) op();
  });
  return OK;
}
CUresult cuGraphExecDestroy(CUgraphExec exec) {
  delete reinterpret_cast<Exec*>(exec);
  return OK;
}
CUresult cuGraphDestroy(CUgraph g) {
  delete reinterpret_cast<Graph*>(g);
  return OK;
}
CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void* data) {
  if (!fn) return INVALID_VALUE;
  enqueue(s, [fn, data] { fn(data); });
  return OK;
}
// Eager execution cannot wait for a later write: a wait whose condition does not hold yet aborts.
CUresult cuStreamWriteValue32_v2(CUstream s, CUdeviceptr addr, unsigned value, unsigned) {
  if (capmoe_emu::fault("no-stream-memops")) return NOT_SUPPORTED;
  enqueue(s, [=] {
    check_range("cuStreamWriteValue32", addr, 4);
    *reinterpret_cast<volatile unsigned*>(addr) = value;
  });
  return OK;
}
CUresult cuStreamWaitValue32_v2(CUstream s, CUdeviceptr addr, unsigned value, unsigned flags) {
  if (capmoe_emu::fault("no-stream-memops")) return NOT_SUPPORTED;
  if (capture_of(s)) fatal("cuStreamWaitValue32 inside a capture (not emulated)");
  check_range("cuStreamWaitValue32", addr, 4);
  const unsigned v = *reinterpret_cast<volatile unsigned*>(addr);
  const unsigned op = flags & 0xf;
  const bool ok = op == 0 ? static_cast<int>(v - value) >= 0 : op == 1 ? v == value : op == 2 ? (v & value) != 0
                                                                                       : ~(v | ~value) != 0;
  if (!ok) fatal("cuStreamWaitValue32 would wait for a value no queued operation writes (emulated streams run eagerly)");
  return OK;
}

CUresult cuEventCreate(CUevent* e, unsigned) {
  if (!e) return INVALID_VALUE;
  *e = reinterpret_cast<CUevent>(new Event);
  return OK;
}
CUresult cuEventDestroy_v2(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return OK;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
  if (!e) return INVALID_HANDLE;
  Event* ev = reinterpret_cast<Event*>(e);
  ev->recorded_in = capture_of(s);
  std::lock_guard<std::mutex> l(g_lock);
  ev->stamp = ++g_clock;
  return OK;
}
CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned) { return cuEventRecord(e, s); }
CUresult cuEventSynchronize(CUevent e) {
  if (e && reinterpret_cast<Event*>(e)->recorded_in)
    fatal("cuEventSynchronize on an event recorded inside a capture (a host sync inside the graph)");
  return OK;
}
CUresult cuEventQuery(CUevent e) {
  if (e && reinterpret_cast<Event*>(e)->recorded_in)
    fatal("cuEventQuery on an event recorded inside a capture");
  return OK;
}
// Times are not emulated: one microsecond per recorded event in between.
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
  if (!ms || !a || !b) return INVALID_VALUE;
  *ms = static_cast<float>(reinterpret_cast<Event*>(b)->stamp - reinterpret_cast<Event*>(a)->stamp) * 1e-3f;
  return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, CUstream s) {
  if (Capture* c = capture_of(s)) return graph_alloc(c, p, n);
  return alloc(p, n);
}
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
  if (Capture* c = capture_of(s)) return graph_free(c, p);
  return release(p);
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  if (n == 0) return OK;
  check_range("cuMemcpyHtoD", dst, n);
  std::memcpy(reinterpret_cast<void*>(dst), src, n);
  return OK;
}
// Host transfers inside a capture are refused (stricter than CUDA, which records pinned-memory
// copies): capmoe's graphs take their inputs from device buffers written before the launch.
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
  if (capture_of(s)) return refuse(s, "cuMemcpyHtoDAsync on the capturing stream (a host transfer inside the graph)");
  return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  if (n == 0) return OK;
  check_range("cuMemcpyDtoH", src, n);
  std::memcpy(dst, reinterpret_cast<const void*>(src), n);
  return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
  if (capture_of(s)) return refuse(s, "cuMemcpyDtoHAsync on the capturing stream (a host transfer inside the graph)");
  return cuMemcpyDtoH_v2(dst, src, n);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  if (n == 0) return OK;
  check_range("cuMemcpyDtoD (destination)", dst, n);
  check_range("cuMemcpyDtoD (source)", src, n);
  std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
  return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  enqueue(s, [=] { cuMemcpyDtoD_v2(dst, src, n); });
  return OK;
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
  if (n == 0) return OK;
  check_range("cuMemsetD8", dst, n);
  std::memset(reinterpret_cast<void*>(dst), v, n);
  return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
  enqueue(s, [=] { cuMemsetD8_v2(dst, v, n); });
  return OK;
}
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
  if (n == 0) return OK;
  check_range("cuMemsetD32", dst, 4 * n);
  for (size_t i = 0; i < n; ++i) reinterpret_cast<unsigned*>(dst)[i] = v;
  return OK;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream s) {
  if (n == 0) return OK;
  enqueue(s, [=] {
    check_range("cuMemsetD32", dst, 4 * n);
    for (size_t i = 0; i < n; ++i) reinterpret_cast<unsigned*>(dst)[i] = v;
  });
  return OK;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
  if (!s) return INVALID_VALUE;
  *s = e == OK ? "no error (fake libcuda)" : e == NOT_SUPPORTED ? "operation not supported (fake libcuda)"
                                         : "error (fake libcuda)";
  return OK;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
  if (!s) return INVALID_VALUE;
  *s = e == OK ? "CUDA_SUCCESS" : e == NOT_SUPPORTED ? "CUDA_ERROR_NOT_SUPPORTED" : "CUDA_ERROR_EMULATED";
  return OK;
}
}
