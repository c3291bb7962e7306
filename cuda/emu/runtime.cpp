// The emulation runtime: grid launches over fibers, block barriers, warp collectives, the cub
// support and the cudart subset the launchers call. See emu.cuh and docs/EMULATION.md.
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "emu.cuh"
#include "emu_cub.h"
#include "emu_stream.h"

#if defined(__SANITIZE_ADDRESS__)
#define CAPMOE_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CAPMOE_EMU_ASAN 1
#endif
#endif
#ifdef CAPMOE_EMU_ASAN
extern "C" void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
extern "C" void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
#endif

#if !defined(__x86_64__)
#error "the emulation runtime's fiber switch is written for x86-64"
#endif

// Saves the callee-saved registers on the current stack, stores its pointer in *from, switches
// to `to` and restores that stack's registers (System V x86-64).
extern "C" void capmoe_emu_switch(void** from, void* to);
asm(R"(
  .text
  .globl capmoe_emu_switch
  .type capmoe_emu_switch, @function
capmoe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size capmoe_emu_switch, .-capmoe_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

extern "C" char __start_capmoe_emu_shared[] __attribute__((weak));
extern "C" char __stop_capmoe_emu_shared[] __attribute__((weak));

namespace capmoe_emu {

ThreadState* g_thread = nullptr;
BlockState g_block{};

namespace {

constexpr size_t kStack = 256 * 1024;

enum class State { Ready, Blocked, Done };

struct Fiber {
  ThreadState ts{};
  State state = State::Done;
  void* sp = nullptr;
  char* stack = nullptr;  // mapping base (guard page first)
  uint64_t result = 0;
  bool at_barrier = false;
};

struct Collective {
  Op op;
  unsigned mask, arrived;  // arrived == 0: a free slot
  int width;
  uint64_t value[32];
  int arg[32];
};
// At most 32 collectives can be pending in a warp (each lane waits at one at most).
struct Warp {
  Collective slot[32];
  int used = 0;  // slots [0, used) may be pending
};

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

std::recursive_mutex g_lock;  // one launch at a time: __shared__ storage is global
Rng g_rng{0};
bool g_seeded = false;
cudaError_t g_error = cudaSuccess;
const char* g_kernel = "";

std::vector<Fiber> g_fibers;
std::vector<unsigned> g_ready;
// Warp-greedy blocks (about half, seeded): the ready fiber of the warp ranked first runs, so one
// warp runs ahead to its next barrier while the others lag. Uniform picks almost never let a warp
// overtake its neighbours by a whole reduction; this order does, and it exposes the shared-memory
// reuse that a missing __syncthreads leaves racy.
bool g_greedy = false;
std::vector<unsigned> g_warp_order;               // warp ids, first-ranked first
std::vector<std::vector<unsigned>> g_ready_warp;  // greedy blocks: ready lanes per warp
std::vector<Warp> g_warps;
unsigned g_nthreads = 0, g_barrier_arrived = 0;
void* g_sched_sp = nullptr;
void (*g_body)(void*) = nullptr;
void* g_closure = nullptr;

void seed_once() {
  if (g_seeded) return;
  g_seeded = true;
  uint64_t seed = 0x5eed;
  if (const char* s = std::getenv("CAPMOE_EMU_SEED")) seed = std::strtoull(s, nullptr, 0);
  g_rng.s = seed;
}

Fiber& cur() { return g_fibers[g_thread->linear]; }

// The stack the scheduler runs on (the launching OS thread's), for ASan's fiber annotations.
void sched_stack(const void** bottom, size_t* size) {
  static thread_local const void* b = nullptr;
  static thread_local size_t n = 0;
  if (!b) {
    pthread_attr_t a;
    void* addr = nullptr;
    if (pthread_getattr_np(pthread_self(), &a) == 0) {
      pthread_attr_getstack(&a, &addr, &n);
      pthread_attr_destroy(&a);
    }
    b = addr;
  }
  *bottom = b;
  *size = n;
}

#define CAPMOE_EMU_NOASAN __attribute__((no_sanitize_address))
// Takes the next fiber to run off the ready set: a uniformly random one, or in a warp-greedy
// block a random ready lane of the first-ranked warp that has one (at most 32 warps to look at).
CAPMOE_EMU_NOASAN bool pop_ready(unsigned* out) {
  std::vector<unsigned>* from = &g_ready;
  if (g_greedy) {
    from = nullptr;
    for (unsigned w : g_warp_order)
      if (!g_ready_warp[w].empty()) {
        from = &g_ready_warp[w];
        break;
      }
    if (!from) return false;
  }
  std::vector<unsigned>& v = *from;
  if (v.empty()) return false;
  const size_t j = g_rng.below(v.size());
  *out = v[j];
  v[j] = v.back();
  v.pop_back();
  return true;
}

// Switches from the running fiber (or the scheduler) straight to a random ready fiber, or back
// to the scheduler when none is ready. `done`: the caller never resumes. The frames of a finished
// fiber never return, so these functions carry no ASan redzones: stale poison would otherwise
// stay on a stack that the next block reuses.
CAPMOE_EMU_NOASAN void switch_next(void** save_sp, bool done) {
  void* to = g_sched_sp;
  const void* bottom = nullptr;
  size_t size = 0;
  unsigned i = 0;
  if (pop_ready(&i)) {
    Fiber& f = g_fibers[i];
    g_thread = &f.ts;
    if (save_sp == &f.sp) return;  // the caller itself was picked: it just goes on
    to = f.sp;
    bottom = f.stack + 4096;
    size = kStack - 4096;
  } else {
    g_thread = nullptr;
    sched_stack(&bottom, &size);
  }
#ifdef CAPMOE_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(done ? nullptr : &fake, bottom, size);
  capmoe_emu_switch(save_sp, to);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)done;
  (void)bottom;
  (void)size;
  capmoe_emu_switch(save_sp, to);
#endif
}

CAPMOE_EMU_NOASAN void to_scheduler(bool done) { switch_next(&cur().sp, done); }

extern "C" CAPMOE_EMU_NOASAN void capmoe_emu_fiber_main() {
#ifdef CAPMOE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  g_body(g_closure);
  cur().state = State::Done;
  to_scheduler(true);
  std::abort();  // never resumed
}

void prepare(Fiber& f) {
  if (!f.stack) {
    void* m = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fatal("cannot map a fiber stack");
    mprotect(m, 4096, PROT_NONE);  // guard page: a stack overflow faults
    f.stack = static_cast<char*>(m);
  }
  // Stack tops staggered by 17 cache lines per fiber: tops 256 KiB apart would share cache sets.
  const uintptr_t color = (static_cast<uintptr_t>(&f - g_fibers.data()) * 1088) % 65536;
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStack - color) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                                // fake return address of fiber_main
  *--sp = reinterpret_cast<void*>(&capmoe_emu_fiber_main);        // popped by `ret`
  for (int i = 0; i < 6; ++i) *--sp = nullptr;                    // rbp rbx r12-r15
  f.sp = sp;
  f.state = State::Ready;
  f.at_barrier = false;
}

void make_ready(unsigned i) {
  g_fibers[i].state = State::Ready;
  (g_greedy ? g_ready_warp[i / 32] : g_ready).push_back(i);
}

[[noreturn]] void deadlock() {
  unsigned done = 0, barrier = 0, warp = 0;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    const Fiber& f = g_fibers[i];
    if (f.state == State::Done) ++done;
    else if (f.at_barrier) ++barrier;
    else ++warp;
  }
  fatal("deadlock in %s block (%u,%u,%u): %u threads exited, %u wait at __syncthreads, %u at a warp "
        "collective (a barrier or _sync mask that not every thread reaches)",
        g_kernel, g_block.block_idx.x, g_block.block_idx.y, g_block.block_idx.z, done, barrier, warp);
}

void run_block() {
  const unsigned warps = (g_nthreads + 31) / 32;
  g_warp_order.resize(warps);
  for (unsigned w = 0; w < warps; ++w) g_warp_order[w] = w;
  for (unsigned w = warps; w > 1; --w) std::swap(g_warp_order[w - 1], g_warp_order[g_rng.below(w)]);
  g_greedy = warps > 1 && (g_rng.next() & 1);
  g_ready.clear();
  if (g_ready_warp.size() < warps) g_ready_warp.resize(warps);
  for (auto& v : g_ready_warp) v.clear();
  for (unsigned i = 0; i < g_nthreads; ++i) {
    prepare(g_fibers[i]);
    make_ready(i);
  }
  for (auto& w : g_warps) {
    for (int i = 0; i < w.used; ++i) w.slot[i].arrived = 0;
    w.used = 0;
  }
  g_barrier_arrived = 0;
  // Every __shared__ variable starts as random bytes, as on a GPU it holds stale data.
  if (__start_capmoe_emu_shared && __stop_capmoe_emu_shared)
    fill_random(__start_capmoe_emu_shared, static_cast<size_t>(__stop_capmoe_emu_shared - __start_capmoe_emu_shared));
  switch_next(&g_sched_sp, false);  // back here once no fiber is ready
  for (unsigned i = 0; i < g_nthreads; ++i)
    if (g_fibers[i].state != State::Done) deadlock();
}

uint64_t collective_result(const Collective& c, unsigned lane) {
  const int w = c.width;
  const unsigned base = lane & ~static_cast<unsigned>(w - 1);
  long long src = lane;
  switch (c.op) {
    case Op::ShflIdx: src = base + (static_cast<unsigned>(c.arg[lane]) % static_cast<unsigned>(w)); break;
    case Op::ShflUp: src = (lane - base) < static_cast<unsigned>(c.arg[lane]) ? lane : lane - c.arg[lane]; break;
    case Op::ShflDown: src = (lane - base) + c.arg[lane] >= static_cast<unsigned>(w) ? lane : lane + c.arg[lane]; break;
    case Op::ShflXor: {
      const unsigned s = lane ^ static_cast<unsigned>(c.arg[lane]);
      src = s >= base + w ? lane : s;  // a later group: the caller's own value
      break;
    }
    case Op::Ballot: {
      uint64_t b = 0;
      for (unsigned l = 0; l < 32; ++l)
        if (c.mask >> l & 1u) b |= (c.value[l] != 0 ? 1ull : 0ull) << l;
      return b;
    }
    case Op::Any:
    case Op::All: {
      bool any = false, all = true;
      for (unsigned l = 0; l < 32; ++l)
        if (c.mask >> l & 1u) {
          any |= c.value[l] != 0;
          all &= c.value[l] != 0;
        }
      return c.op == Op::Any ? any : all;
    }
    case Op::SyncWarp: return 0;
  }
  if (src < 0 || src > 31 || !(c.mask >> src & 1u))
    fatal("%s: lane %u shuffles from lane %lld, which is not in the _sync mask 0x%08x", g_kernel, lane, src, c.mask);
  return c.value[src];
}

}  // namespace

void fatal(const char* fmt, ...) {
  std::fprintf(stderr, "capmoe emulator: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

__attribute__((no_sanitize_address)) void fill_random(void* p, size_t bytes) {
  seed_once();
  unsigned char* b = static_cast<unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t r = g_rng.next();
    for (int j = 0; j < 8; ++j) b[i + j] = static_cast<unsigned char>(r >> (8 * j));
  }
  const uint64_t r = g_rng.next();
  for (int j = 0; i < bytes; ++i, ++j) b[i] = static_cast<unsigned char>(r >> (8 * j));
}

void set_error(cudaError_t e) {
  if (g_error == cudaSuccess) g_error = e;
}

void sync_block() {
  if (!g_thread) fatal("__syncthreads outside a kernel");
  Fiber& f = cur();
  f.state = State::Blocked;
  f.at_barrier = true;
  if (++g_barrier_arrived == g_nthreads) {
    g_barrier_arrived = 0;
    for (unsigned i = 0; i < g_nthreads; ++i)
      if (g_fibers[i].at_barrier) {
        g_fibers[i].at_barrier = false;
        make_ready(i);
      }
  }
  to_scheduler(false);
}

unsigned active_mask() {
  const unsigned warp = cur().ts.linear / 32;
  unsigned m = 0;
  for (unsigned l = 0; l < 32; ++l) {
    const unsigned i = warp * 32 + l;
    if (i < g_nthreads && g_fibers[i].state != State::Done) m |= 1u << l;
  }
  return m;
}

uint64_t warp_op(Op op, unsigned mask, uint64_t value, int arg, int width) {
  if (!g_thread) fatal("warp intrinsic outside a kernel");
  Fiber& f = cur();
  const unsigned warp = f.ts.linear / 32, lane = f.ts.linear % 32;
  if (!(mask >> lane & 1u)) fatal("%s: lane %u calls a _sync intrinsic with mask 0x%08x that omits it", g_kernel, lane, mask);
  const unsigned lanes = std::min(32u, g_nthreads - warp * 32);
  if (lanes < 32 && (mask >> lanes) != 0)
    fatal("%s: _sync mask 0x%08x names lanes that do not exist (the warp has %u threads)", g_kernel, mask, lanes);
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fatal("%s: shuffle width %d", g_kernel, width);
  Warp& w = g_warps[warp];
  Collective* c = nullptr;
  Collective* free_slot = nullptr;
  for (int i = 0; i < w.used; ++i) {
    Collective& p = w.slot[i];
    if (p.arrived == 0) {
      if (!free_slot) free_slot = &p;
    } else if (p.mask == mask) {
      c = &p;
    }
  }
  if (!c) {
    c = free_slot ? free_slot : &w.slot[w.used++];
    c->op = op;
    c->mask = mask;
    c->width = width;
    c->arrived = 0;
  } else if (c->op != op || c->width != width) {
    fatal("%s: lanes of warp %u meet at different warp intrinsics (mask 0x%08x)", g_kernel, warp, mask);
  }
  c->value[lane] = value;
  c->arg[lane] = arg;
  c->arrived |= 1u << lane;
  f.state = State::Blocked;
  if (c->arrived == mask) {
    for (unsigned l = 0; l < 32; ++l)
      if (mask >> l & 1u) {
        g_fibers[warp * 32 + l].result = collective_result(*c, l);
        make_ready(warp * 32 + l);
      }
    c->arrived = 0;
    while (w.used > 0 && w.slot[w.used - 1].arrived == 0) --w.used;
  }
  to_scheduler(false);
  return f.result;
}

namespace {
// One launch, run now: the blocks in a seeded random order (no block may depend on another
// within a launch), each block's threads on fibers.
void execute_grid(const char* kernel, dim3 grid, dim3 block, void (*thread)(void*), void* closure) {
  std::lock_guard<std::recursive_mutex> lock(g_lock);
  if (g_thread) fatal("kernel launch from inside a kernel (%s)", kernel);
  g_kernel = kernel;
  g_nthreads = block.x * block.y * block.z;
  if (g_fibers.size() < g_nthreads) g_fibers.resize(g_nthreads);
  if (g_warps.size() < (g_nthreads + 31) / 32) g_warps.resize((g_nthreads + 31) / 32);
  for (unsigned i = 0; i < g_nthreads; ++i) {
    ThreadState& t = g_fibers[i].ts;
    t.linear = i;
    t.tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
  }
  g_body = thread;
  g_closure = closure;
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  std::vector<unsigned long long> order(nblocks);
  for (unsigned long long b = 0; b < nblocks; ++b) order[b] = b;
  for (unsigned long long b = nblocks; b > 1; --b) std::swap(order[b - 1], order[g_rng.below(b)]);
  g_block.block_dim = block;
  g_block.grid_dim = grid;
  for (unsigned long long b : order) {
    g_block.block_idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                              static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
    run_block();
  }
  g_kernel = "";
}
}  // namespace

// The configuration is checked at the call, as a GPU's launch does (also while capturing); the
// grid runs now or at each replay of the captured graph.
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*thread)(void*),
              std::shared_ptr<void> closure) {
  std::lock_guard<std::recursive_mutex> lock(g_lock);
  seed_once();
  if (g_thread) fatal("kernel launch from inside a kernel (%s)", kernel);
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 ||
      nthreads > 1024 || block.z > 64 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (smem > 0) fatal("%s: dynamic shared memory is not emulated", kernel);
  enqueue(stream, [=] { execute_grid(kernel, grid, block, thread, closure.get()); });
}

// ---- cub support -----------------------------------------------------------------------------

static size_t align256(size_t x) { return (x + 255) & ~size_t{255}; }

size_t sort_temp_bytes(long long n, size_t key_bytes, size_t val_bytes) {
  (void)key_bytes;
  (void)val_bytes;
  return align256(static_cast<size_t>(n < 1 ? 1 : n) * 16) + 256;
}

size_t scan_temp_bytes(long long n) { return align256(static_cast<size_t>((n + 1023) / 1024 + 1) * 8) + 256; }

static bool overlap(const void* a, size_t an, const void* b, size_t bn) {
  const char* x = static_cast<const char*>(a);
  const char* y = static_cast<const char*>(b);
  return an && bn && x < y + bn && y < x + an;
}

void check_sort(void* temp, size_t temp_bytes, size_t need, const void* keys_in, const void* keys_out,
                const void* vals_in, const void* vals_out, long long n, size_t key_bytes, size_t val_bytes,
                int begin_bit, int end_bit, cudaStream_t stream) {
  (void)stream;
  if (temp_bytes < need)
    fatal("cub::DeviceRadixSort::SortPairs: %zu bytes of temp storage for %lld items, %zu needed", temp_bytes, n, need);
  if (n < 0) fatal("cub::DeviceRadixSort::SortPairs: %lld items", n);
  if (begin_bit < 0 || end_bit > static_cast<int>(key_bytes * 8) || begin_bit >= end_bit)
    fatal("cub::DeviceRadixSort::SortPairs: bit range [%d, %d) of %zu-bit keys", begin_bit, end_bit, key_bytes * 8);
  const size_t kb = n * key_bytes, vb = n * val_bytes;
  const struct {
    const void* p;
    size_t n;
    const char* what;
  } r[] = {{temp, temp_bytes, "temp storage"}, {keys_in, kb, "keys_in"}, {keys_out, kb, "keys_out"},
           {vals_in, vb, "values_in"}, {vals_out, vb, "values_out"}};
  for (int i = 0; i < 5; ++i)
    for (int j = i + 1; j < 5; ++j)
      if (!(i == 1 && j == 3) && overlap(r[i].p, r[i].n, r[j].p, r[j].n))
        fatal("cub::DeviceRadixSort::SortPairs: %s overlaps %s", r[i].what, r[j].what);
}

void check_key(uint64_t key, long long i, int key_bits, int begin_bit, int end_bit) {
  const uint64_t high = end_bit >= 64 ? 0 : key >> end_bit;
  const uint64_t low = begin_bit == 0 ? 0 : key & ((1ull << begin_bit) - 1);
  if (high || low)
    fatal("cub::DeviceRadixSort::SortPairs: key %lld = 0x%016llx has bits outside the sorted range [%d, %d) of a "
          "%d-bit key (the sort would ignore them)",
          i, static_cast<unsigned long long>(key), begin_bit, end_bit, key_bits);
}

void check_scan(void* temp, size_t temp_bytes, size_t need, long long n, cudaStream_t stream) {
  (void)stream;
  if (temp_bytes < need)
    fatal("cub::DeviceScan::ExclusiveSum: %zu bytes of temp storage for %lld items, %zu needed", temp_bytes, n, need);
  fill_random(temp, need);  // the scan may use all it asked for
}

uint64_t* sort_scratch(void* temp, long long n) {
  fill_random(temp, sort_temp_bytes(n, 0, 0));
  return static_cast<uint64_t*>(temp);
}

void stable_order(const uint64_t* keys, uint64_t* idx, long long n) {
  for (long long i = 0; i < n; ++i) idx[i] = static_cast<uint64_t>(i);
  std::stable_sort(idx, idx + n, [keys](uint64_t a, uint64_t b) { return keys[a] < keys[b]; });
}

}  // namespace capmoe_emu

// ---- cudart subset ---------------------------------------------------------------------------
using namespace capmoe_emu;

extern "C" {
cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::recursive_mutex> lock(g_lock);
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_error; }
const char* cudaGetErrorName(int e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(int e) {
  switch (e) {
    case cudaSuccess: return "no error (emulated)";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulated)";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer (emulated)";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulated)";
    case cudaErrorNotSupported: return "operation not supported (emulated)";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing (emulated)";
    default: return "unknown error (emulated)";
  }
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (count && !ptr) return cudaErrorInvalidValue;
  if (count) enqueue(stream, [=] { std::memset(ptr, value, count); });
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, int, cudaStream_t stream) {
  if (count && (!dst || !src)) return cudaErrorInvalidValue;
  if (count) enqueue(stream, [=] { std::memmove(dst, src, count); });
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (Capture* c = capture_of(stream)) {
    invalidate(c, "cudaStreamSynchronize of the capturing stream (a host sync inside the graph)");
    return cudaErrorStreamCaptureUnsupported;
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
// Stream-ordered allocations start as random bytes, as recycled pool memory does.
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) { return cudaMalloc(ptr, size); }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }
cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (!ptr) return cudaErrorInvalidValue;
  *ptr = std::aligned_alloc(256, align256(size ? size : 1));
  if (!*ptr) return cudaErrorMemoryAllocation;
  std::lock_guard<std::recursive_mutex> lock(g_lock);
  fill_random(*ptr, size);
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (device) *device = 0;
  return cudaSuccess;
}
}
