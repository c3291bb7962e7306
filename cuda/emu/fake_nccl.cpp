// A fake libnccl.so for emulated runs: one rank (nranks = 1) on the fake driver's device. What
// capmoe's NcclComm calls through cudarc 0.19's `nccl` module is here: the unique id, comm init
// (one rank only), abort/destroy, group start/end, send/recv to self (matched in order inside a
// group, counts and types checked, each pair one cuMemcpyDtoDAsync of the fake driver, so bounds
// are checked and a capturing stream records it), all-gather and all-reduce with one rank (a
// copy, or nothing in place), error strings. Anything else fails loudly: a `capmoe fake
// libnccl:` message (tools/emulate.sh fails on it) and an error code, never a silent success.
// Multi-rank NCCL is not emulated. See docs/EMULATION.md.
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

extern "C" {
typedef unsigned long long CUdeviceptr;
typedef struct CUstream_st* CUstream;
int cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s);

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclTimeout = 8,
} ncclResult_t;
typedef struct {
  char internal[128];
} ncclUniqueId;
typedef struct ncclComm* ncclComm_t;
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
}

struct ncclComm {
  uint32_t magic;
  int nranks;
  int rank;
};

namespace {
constexpr uint32_t kMagic = 0x6e63636c;                 // "nccl"
constexpr char kIdTag[] = "capmoe fake nccl unique id";  // the id's first bytes
std::mutex g_lock;
std::string g_last;  // the last error message (ncclGetLastError)
uint64_t g_next_id = 1;

struct P2p {
  bool send;
  const void* sendbuf;
  void* recvbuf;
  size_t bytes;
  size_t count;
  ncclDataType_t type;
  int peer;
  ncclComm_t comm;
  CUstream stream;
};
thread_local int t_depth = 0;  // ncclGroupStart nesting on this thread
thread_local std::vector<P2p> t_ops;

ncclResult_t fail(ncclResult_t code, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "capmoe fake libnccl: %s\n", buf);
  std::lock_guard<std::mutex> g(g_lock);
  g_last = buf;
  return code;
}

size_t type_size(ncclDataType_t t) {
  switch (t) {
    case 0: case 1: case 10: case 11: return 1;  // int8, uint8, fp8 e4m3 / e5m2
    case 6: case 9: return 2;                    // float16, bfloat16
    case 2: case 3: case 7: return 4;            // int32, uint32, float32
    case 4: case 5: case 8: return 8;            // int64, uint64, float64
    default: return 0;
  }
}

ncclResult_t check_comm(ncclComm_t c, const char* op) {
  if (c == nullptr || c->magic != kMagic) {
    return fail(ncclInvalidArgument, "%s: not a live communicator (%p)", op, (void*)c);
  }
  return ncclSuccess;
}

ncclResult_t bytes_of(size_t count, ncclDataType_t t, const char* op, size_t* out) {
  size_t s = type_size(t);
  if (s == 0) return fail(ncclInvalidArgument, "%s: unknown data type %d", op, t);
  if (count != 0 && s > SIZE_MAX / count) return fail(ncclInvalidArgument, "%s: %zu elements overflow", op, count);
  *out = count * s;
  return ncclSuccess;
}

ncclResult_t copy(void* dst, const void* src, size_t n, CUstream s, const char* op) {
  if (n == 0 || dst == src) return ncclSuccess;
  int rc = cuMemcpyDtoDAsync_v2((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n, s);
  if (rc != 0) return fail(ncclUnhandledCudaError, "%s: cuMemcpyDtoDAsync failed (CUDA error %d)", op, rc);
  return ncclSuccess;
}

ncclResult_t p2p(bool send, const void* sendbuf, void* recvbuf, size_t count, ncclDataType_t t, int peer,
                 ncclComm_t comm, CUstream stream) {
  const char* op = send ? "ncclSend" : "ncclRecv";
  if (ncclResult_t r = check_comm(comm, op)) return r;
  size_t bytes = 0;
  if (ncclResult_t r = bytes_of(count, t, op, &bytes)) return r;
  if (peer < 0 || peer >= comm->nranks) {
    return fail(ncclInvalidArgument, "%s: peer %d of a %d-rank communicator", op, peer, comm->nranks);
  }
  if (t_depth == 0) {
    // A send to itself outside a group waits for a receive that can only come after it.
    return fail(ncclInvalidUsage, "%s to itself outside ncclGroupStart/End would never complete", op);
  }
  t_ops.push_back(P2p{send, sendbuf, recvbuf, bytes, count, t, peer, comm, stream});
  return ncclSuccess;
}

// The group's sends and receives, matched in call order per communicator (one rank: every peer
// is this rank), each pair one copy.
ncclResult_t run_group() {
  std::vector<P2p> ops;
  ops.swap(t_ops);
  std::vector<const P2p*> sends, recvs;
  for (const P2p& o : ops) (o.send ? sends : recvs).push_back(&o);
  if (sends.size() != recvs.size()) {
    return fail(ncclInvalidUsage, "ncclGroupEnd: %zu sends but %zu receives to self (they would hang)",
                sends.size(), recvs.size());
  }
  for (size_t i = 0; i < sends.size(); i++) {
    const P2p& s = *sends[i];
    const P2p& r = *recvs[i];
    if (s.comm != r.comm || s.count != r.count || s.type != r.type) {
      return fail(ncclInvalidUsage,
                  "ncclGroupEnd: send %zu (%zu elements of type %d) does not match receive %zu (%zu "
                  "elements of type %d)",
                  i, s.count, s.type, i, r.count, r.type);
    }
    if (s.stream != r.stream) {
      return fail(ncclInvalidUsage, "ncclGroupEnd: send and receive %zu on different streams (not emulated)", i);
    }
    if (ncclResult_t rc = copy(r.recvbuf, s.sendbuf, s.bytes, s.stream, "ncclGroupEnd")) return rc;
  }
  return ncclSuccess;
}

ncclResult_t unsupported(const char* op) {
  return fail(ncclInvalidUsage, "%s is not emulated (only one rank: send/recv to self, all-gather, all-reduce)", op);
}
}  // namespace

extern "C" {
ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return fail(ncclInvalidArgument, "ncclGetVersion: null pointer");
  *version = 23000;  // 2.30.0, the version of cudarc's bindings
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return fail(ncclInvalidArgument, "ncclGetUniqueId: null pointer");
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, kIdTag, sizeof kIdTag);
  std::lock_guard<std::mutex> g(g_lock);
  uint64_t n = g_next_id++;
  std::memcpy(id->internal + 64, &n, sizeof n);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (comm == nullptr) return fail(ncclInvalidArgument, "ncclCommInitRank: null pointer");
  if (std::memcmp(id.internal, kIdTag, sizeof kIdTag) != 0) {
    return fail(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
  }
  if (nranks != 1 || rank != 0) {
    return fail(ncclInvalidUsage, "ncclCommInitRank: rank %d of %d; only one rank is emulated", rank, nranks);
  }
  *comm = new ncclComm{kMagic, nranks, rank};
  return ncclSuccess;
}

static ncclResult_t end_comm(ncclComm_t comm, const char* op) {
  if (ncclResult_t r = check_comm(comm, op)) return r;
  comm->magic = 0;
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) { return end_comm(comm, "ncclCommAbort"); }
ncclResult_t ncclCommDestroy(ncclComm_t comm) { return end_comm(comm, "ncclCommDestroy"); }
ncclResult_t ncclCommFinalize(ncclComm_t comm) { return check_comm(comm, "ncclCommFinalize"); }

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (ncclResult_t r = check_comm(comm, "ncclCommCount")) return r;
  *count = comm->nranks;
  return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (ncclResult_t r = check_comm(comm, "ncclCommUserRank")) return r;
  *rank = comm->rank;
  return ncclSuccess;
}
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  if (ncclResult_t r = check_comm(comm, "ncclCommCuDevice")) return r;
  *device = 0;
  return ncclSuccess;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* err) {
  if (ncclResult_t r = check_comm(comm, "ncclCommGetAsyncError")) return r;
  *err = ncclSuccess;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (fake libnccl)";
    case ncclSystemError: return "unhandled system error (fake libnccl)";
    case ncclInternalError: return "internal error (fake libnccl)";
    case ncclInvalidArgument: return "invalid argument (fake libnccl)";
    case ncclInvalidUsage: return "invalid usage (fake libnccl)";
    case ncclRemoteError: return "remote process exited or there was a network error (fake libnccl)";
    case ncclInProgress: return "NCCL operation in progress (fake libnccl)";
    case ncclTimeout: return "timeout (fake libnccl)";
  }
  return "unknown result code (fake libnccl)";
}
const char* ncclGetLastError(ncclComm_t) {
  static thread_local std::string last;
  std::lock_guard<std::mutex> g(g_lock);
  last = g_last;
  return last.c_str();
}

ncclResult_t ncclGroupStart() {
  t_depth++;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (t_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  if (--t_depth > 0) return ncclSuccess;
  return run_group();
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      CUstream stream) {
  return p2p(true, sendbuff, nullptr, count, t, peer, comm, stream);
}
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      CUstream stream) {
  return p2p(false, nullptr, recvbuff, count, t, peer, comm, stream);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t t,
                           ncclComm_t comm, CUstream stream) {
  if (ncclResult_t r = check_comm(comm, "ncclAllGather")) return r;
  size_t bytes = 0;
  if (ncclResult_t r = bytes_of(sendcount, t, "ncclAllGather", &bytes)) return r;
  return copy(recvbuff, sendbuff, bytes, stream, "ncclAllGather");
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t comm, CUstream stream) {
  if (ncclResult_t r = check_comm(comm, "ncclAllReduce")) return r;
  if (op < 0 || op > 4) return unsupported("ncclAllReduce with a user-defined reduction");
  size_t bytes = 0;
  if (ncclResult_t r = bytes_of(count, t, "ncclAllReduce", &bytes)) return r;
  // One rank: sum, prod, max, min and avg of one value are that value.
  return copy(recvbuff, sendbuff, bytes, stream, "ncclAllReduce");
}

// Declared by NCCL, not emulated: each fails with a message.
ncclResult_t ncclCommInitAll(ncclComm_t*, int, const int*) { return unsupported("ncclCommInitAll"); }
ncclResult_t ncclCommInitRankConfig(ncclComm_t*, int, ncclUniqueId, int, void*) {
  return unsupported("ncclCommInitRankConfig");
}
ncclResult_t ncclCommSplit(ncclComm_t, int, int, ncclComm_t*, void*) { return unsupported("ncclCommSplit"); }
ncclResult_t ncclBroadcast(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, CUstream) {
  return unsupported("ncclBroadcast");
}
ncclResult_t ncclBcast(void*, size_t, ncclDataType_t, int, ncclComm_t, CUstream) { return unsupported("ncclBcast"); }
ncclResult_t ncclReduce(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, int, ncclComm_t, CUstream) {
  return unsupported("ncclReduce");
}
ncclResult_t ncclReduceScatter(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, CUstream) {
  return unsupported("ncclReduceScatter");
}
ncclResult_t ncclAllToAll(const void*, void*, size_t, ncclDataType_t, ncclComm_t, CUstream) {
  return unsupported("ncclAllToAll");
}
}
