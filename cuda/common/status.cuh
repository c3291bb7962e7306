// Launcher return codes: 0 is success, >0 is a cudaError_t, <0 a capmoe check.
#pragma once
#include <cuda_runtime.h>

namespace capmoe {
constexpr int kBadArgument = -1;
inline int status(cudaError_t e) { return e == cudaSuccess ? static_cast<int>(cudaGetLastError()) : static_cast<int>(e); }
inline int last_status() { return static_cast<int>(cudaGetLastError()); }
}  // namespace capmoe
