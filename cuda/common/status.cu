// capmoe_status_string: the message of any launcher return value, so that Rust needs no
// declaration of the CUDA runtime besides include/capmoe_abi.h.
#include <cuda_runtime.h>
#include "../include/capmoe_abi.h"
#include "status.cuh"

extern "C" const char* capmoe_status_string(int32_t code) {
  switch (code) {
    case CAPMOE_STATUS_OK: return "success";
    case CAPMOE_STATUS_BAD_ARGUMENT: return "an argument was rejected by the launcher's own checks";
    case CAPMOE_STATUS_REJECTED: return "CUTLASS rejected the problem (can_implement or initialize failed)";
    default:
      if (code < 0) return "unknown capmoe status";
      return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}
