// Driver faults a test asks the fake libcuda for, through CAPMOE_FAKE_FAULT (a comma-separated
// list, read at each call it concerns, so a test sets it around the calls that should fail):
//   capture-free      a stream-ordered free inside a capture frees, then returns
//                     CUDA_ERROR_UNKNOWN (cudarc records it on the context, as a real failure)
//   no-stream-memops  cuStreamWriteValue32 / cuStreamWaitValue32 return CUDA_ERROR_NOT_SUPPORTED
#pragma once
#include <cstdlib>
#include <cstring>

namespace capmoe_emu {

inline bool fault(const char* name) {
  const char* v = std::getenv("CAPMOE_FAKE_FAULT");
  if (!v) return false;
  const size_t n = std::strlen(name);
  for (const char* p = v; (p = std::strstr(p, name)); p += n)
    if ((p == v || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return true;
  return false;
}

}  // namespace capmoe_emu
