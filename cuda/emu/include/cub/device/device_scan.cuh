// Emulation stand-in for cub's DeviceScan::ExclusiveSum (checks the temp-storage size),
// in stream order like the sort.
#pragma once
#include <iterator>
#include "../../../emu.cuh"
#include "../../../emu_cub.h"
#include "../../../emu_stream.h"

namespace cub {
struct DeviceScan {
  template <class In, class Out, class N>
  static cudaError_t ExclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, N num_items,
                                  cudaStream_t stream = 0) {
    const long long n = static_cast<long long>(num_items);
    const size_t need = ::capmoe_emu::scan_temp_bytes(n);
    if (temp == nullptr) {
      temp_bytes = need;
      return cudaSuccess;
    }
    ::capmoe_emu::enqueue(stream, [=] {
      ::capmoe_emu::check_scan(temp, temp_bytes, need, n, stream);
      using T = typename std::iterator_traits<In>::value_type;
      T acc{};
      for (long long i = 0; i < n; ++i) {
        const T v = in[i];  // read before the write: in == out is allowed
        out[i] = acc;
        acc = static_cast<T>(acc + v);
      }
    });
    return cudaSuccess;
  }
};
}  // namespace cub
