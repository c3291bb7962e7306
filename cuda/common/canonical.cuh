// Canonical f32 arithmetic for gating: the CUDA twin of src/routing/numerics.rs.
// Every op is an explicit round-to-nearest intrinsic so nvcc cannot contract
// into FMAs: p must be bit-identical to the CPU oracle.
#pragma once
#include <cstdint>

namespace capmoe {

constexpr float kExpUnderflow = -86.0f;
constexpr unsigned kFullMask = 0xffffffffu;

// Constants by bit pattern, equal to the f32 constants in numerics.rs.
__device__ __forceinline__ float exp_canonical(float x) {
  if (x < kExpUnderflow) return 0.0f;
  const float n = rintf(__fmul_rn(x, __uint_as_float(0x3fb8aa3bu)));  // log2(e)
  float r = __fsub_rn(x, __fmul_rn(n, __uint_as_float(0x3f318000u)));  // ln2 hi
  r = __fsub_rn(r, __fmul_rn(n, __uint_as_float(0xb95e8083u)));        // ln2 lo
  float p = __uint_as_float(0x39506967u);
  p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3ab743ceu));
  p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3c088908u));
  p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3d2aa9c1u));
  p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3e2aaaaau));
  p = __fadd_rn(__fmul_rn(p, r), __uint_as_float(0x3f000000u));
  const float y = __fadd_rn(__fadd_rn(__fmul_rn(p, __fmul_rn(r, r)), r), 1.0f);
  const float scale = __int_as_float((static_cast<int>(n) + 127) << 23);
  return __fmul_rn(y, scale);
}

// Lane 0 (every lane, in fact) ends with the butterfly sum of the 32 lane values.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Token preference: larger p first, then the lower expert index.
__device__ __forceinline__ bool prefers(float pa, int a, float pb, int b) {
  return pa > pb || (pa == pb && a < b);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// drop:random's 52-bit key (src/routing/drop.rs: random_key).
__device__ __forceinline__ uint64_t random_key(uint64_t seed, uint32_t t, uint32_t e) {
  return splitmix64(splitmix64(seed) ^ ((static_cast<uint64_t>(t) << 32) | e)) >> 12;
}

}  // namespace capmoe
