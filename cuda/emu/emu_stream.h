// The fake driver's stream object and its graph capture, shared by the fake libcuda, the
// emulation runtime and the fake cuBLAS: each runs its work at the call, or records it while the
// stream is capturing, so that cuGraphLaunch replays it (docs/EMULATION.md). Header-only: the
// three libraries link nothing from each other.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <utility>
#include <vector>

namespace capmoe_emu {

using Work = std::function<void()>;

// A graph memory node: allocated once at capture (one address for the graph's lifetime, as on a
// GPU), live from its allocation to its free in every replay.
struct GraphAlloc {
  uintptr_t ptr;
  size_t bytes;
  bool freed;  // freed inside the capture (required: see cuStreamEndCapture)
};

struct Capture {
  std::vector<Work> ops;
  std::vector<GraphAlloc> allocs;
  const char* invalid = nullptr;  // why the capture was invalidated, or null
};

constexpr unsigned kStreamMagic = 0x57ea5ea7u;

struct StreamObj {
  unsigned magic = kStreamMagic;
  Capture* capture = nullptr;
};

// The capture `stream` records into, or null (not capturing, or the null stream).
inline Capture* capture_of(const void* stream) {
  const StreamObj* s = static_cast<const StreamObj*>(stream);
  return s && s->magic == kStreamMagic ? s->capture : nullptr;
}

// Invalidates `c` for an operation a capture cannot hold (a host sync inside it, say), as CUDA
// does, and says so: tools/emulate.sh fails on the message even when the caller handles the error.
inline void invalidate(Capture* c, const char* why) {
  if (!c->invalid) c->invalid = why;
  std::fprintf(stderr, "capmoe emulator: graph capture invalidated: %s\n", why);
  std::fflush(stderr);
}

// Runs `w` now, or appends it to the stream's capture. An invalidated capture records nothing
// more: cuStreamEndCapture will fail.
inline void enqueue(const void* stream, Work w) {
  if (Capture* c = capture_of(stream)) {
    if (!c->invalid) c->ops.push_back(std::move(w));
    return;
  }
  w();
}

}  // namespace capmoe_emu
