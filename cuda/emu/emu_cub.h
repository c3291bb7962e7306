// Non-template support of the emulated cub primitives (runtime.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

namespace capmoe_emu {
size_t sort_temp_bytes(long long n, size_t key_bytes, size_t val_bytes);
size_t scan_temp_bytes(long long n);
void check_sort(void* temp, size_t temp_bytes, size_t need, const void* keys_in, const void* keys_out,
                const void* vals_in, const void* vals_out, long long n, size_t key_bytes, size_t val_bytes,
                int begin_bit, int end_bit, cudaStream_t stream);
void check_key(uint64_t key, long long i, int key_bits, int begin_bit, int end_bit);
void check_scan(void* temp, size_t temp_bytes, size_t need, long long n, cudaStream_t stream);
// 2n u64 of the temp storage (after refilling all of it with random bytes).
uint64_t* sort_scratch(void* temp, long long n);
// idx[0..n) = the stable order of keys[0..n).
void stable_order(const uint64_t* keys, uint64_t* idx, long long n);
}  // namespace capmoe_emu
