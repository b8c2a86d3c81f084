// Helpers shared by the AVX2 units (avx2.cpp, avx2_kquants.cpp). Include only from units built with
// -mavx2 -mfma -mf16c, inside their `#if defined(__x86_64__)`: like everything in those units, these
// live in an anonymous namespace, so no copy built with AVX2 flags can be picked for other code.
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

// 16 bytes of nibbles -> 32 bytes: the low nibbles in bytes 0..15, the high ones in 16..31 (the
// weight order of every 32-block format).
inline __m256i unpack_nibbles(const uint8_t* qs) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

}  // namespace
}  // namespace pe
