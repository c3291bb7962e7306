// Emulation stand-in for cub's DeviceRadixSort::SortPairs: a stable sort on bits
// [begin_bit, end_bit) that aborts when the temp storage is too small, a key has bits outside
// that range, or the input and output ranges overlap. It runs in stream order (recorded while
// the stream captures a graph).
#pragma once
#include "../../../emu.cuh"
#include "../../../emu_cub.h"
#include "../../../emu_stream.h"

namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* vals_in,
                               V* vals_out, N num_items, int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t stream = 0) {
    static_assert(std::is_unsigned<K>::value, "emulated SortPairs: unsigned keys only");
    const long long n = static_cast<long long>(num_items);
    const size_t need = ::capmoe_emu::sort_temp_bytes(n, sizeof(K), sizeof(V));
    if (temp == nullptr) {
      temp_bytes = need;
      return cudaSuccess;
    }
    ::capmoe_emu::enqueue(stream, [=] {
      ::capmoe_emu::check_sort(temp, temp_bytes, need, keys_in, keys_out, vals_in, vals_out, n, sizeof(K),
                               sizeof(V), begin_bit, end_bit, stream);
      uint64_t* idx = ::capmoe_emu::sort_scratch(temp, n);
      uint64_t* k64 = idx + n;
      for (long long i = 0; i < n; ++i) {
        const uint64_t key = static_cast<uint64_t>(keys_in[i]);
        ::capmoe_emu::check_key(key, i, sizeof(K) * 8, begin_bit, end_bit);
        k64[i] = key;
      }
      ::capmoe_emu::stable_order(k64, idx, n);
      for (long long i = 0; i < n; ++i) {
        keys_out[i] = static_cast<K>(k64[idx[i]]);
        vals_out[i] = vals_in[idx[i]];
      }
    });
    return cudaSuccess;
  }
};
}  // namespace cub
