// Helpers shared by the AVX2 and AVX-512 units (avx2.cpp, avx2_kquants.cpp, avx512.cpp and, through
// avx2_packed.h, avx512_packed.cpp). Include only from units built with at least -mavx2 -mfma -mf16c
// (or PE_SIMDE), inside their `#if defined(__x86_64__)`: like everything in those units, these live
// in an anonymous namespace, so no copy built with those flags can be picked for other code.
#pragma once

#if defined(PE_SIMDE)  // avx2_packed.h in the kernel test's portable build
#include "../tests/simde_avx512.h"
#else
#include <immintrin.h>
#endif

#include <cstdint>

namespace pe {
namespace {

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// A prefetch the compiler keeps: GCC deletes loops whose only statements are _mm_prefetch calls.
inline void prefetch_line(const void* p) {
#if defined(__x86_64__) || defined(_M_X64)
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else  // the SIMDe build of the kernel test on another CPU
    __builtin_prefetch(p);
#endif
}

// 16 bytes of nibbles -> 32 bytes: the low nibbles in bytes 0..15, the high ones in 16..31 (the
// weight order of every 32-block format).
inline __m256i unpack_nibbles(const uint8_t* qs) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

#if defined(__AVX512F__) || defined(PE_SIMDE)
// Two 256-bit vectors as one 512-bit vector, lo in the lower half (in the packed kernels: rows 0-3's
// lanes, then rows 4-7's).
inline __m512i join512(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
#endif

}  // namespace
}  // namespace pe
