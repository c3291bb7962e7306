// Launcher return codes (capmoe_status in include/capmoe_abi.h): 0 is success, > 0 a
// cudaError_t, < 0 a capmoe check. Every .cu reaches the ABI header and the launch macro here.
#pragma once
#include <cuda_runtime.h>
#include "../include/capmoe_abi.h"
#include "launch.cuh"

namespace capmoe {
constexpr int kOk = CAPMOE_STATUS_OK;
constexpr int kBadArgument = CAPMOE_STATUS_BAD_ARGUMENT;
constexpr int kRejected = CAPMOE_STATUS_REJECTED;
inline int status(cudaError_t e) { return e == cudaSuccess ? static_cast<int>(cudaGetLastError()) : static_cast<int>(e); }
inline int last_status() { return static_cast<int>(cudaGetLastError()); }
}  // namespace capmoe
