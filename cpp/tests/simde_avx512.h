// The intrinsics header cpp/kernels/avx512.cpp includes when built with -DPE_SIMDE: SIMDe's portable
// AVX-512 (and AVX2 / F16C / FMA) under the native names, so the kernel test can run the AVX-512 code
// on a CPU without AVX-512.
//
// SIMDe 0.7.4 (Debian's libsimde-dev) lacks a few names avx512.cpp uses; they are defined below from
// SIMDe's 256-bit operations or from the scalar reference conversion. Each alias is only defined when
// SIMDe did not already define it, so a newer SIMDe takes over without a clash (the helpers are
// prefixed pe_shim_ for the same reason).
#pragma once

// Build with -Wno-psabi: SIMDe's 512-bit types are 64-byte GCC vectors, and GCC warns that passing
// them by value without -mavx512f has another ABI than an AVX-512 build. Nothing here crosses that
// boundary (the test links no AVX-512 code). A pragma cannot silence it: GCC reports some of these
// (avx512.cpp's lambdas) with no source location, after the unit is parsed.
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

#include <cstdint>

#include "../quant/fp16.h"

// The mask types: SIMDe names them simde__mmask16 and simde__mmask64 and aliases neither.
#if !defined(SIMDE_X86_AVX512F_NATIVE)
typedef simde__mmask16 __mmask16;
#endif
#if !defined(SIMDE_X86_AVX512BW_NATIVE)
typedef simde__mmask64 __mmask64;
#endif

// int32 -> float, 16 lanes, rounded to nearest even like vcvtdq2ps: two 8-lane conversions.
static inline simde__m512 pe_shim_mm512_cvtepi32_ps(simde__m512i a) {
    const simde__m256i lo = simde_mm512_castsi512_si256(a);
    const simde__m256i hi = simde_mm512_extracti64x4_epi64(a, 1);
    const simde__m512 lo_ps = simde_mm512_castps256_ps512(simde_mm256_cvtepi32_ps(lo));
    return simde_mm512_insertf32x8(lo_ps, simde_mm256_cvtepi32_ps(hi), 1);
}
#if !defined(_mm512_cvtepi32_ps)
#define _mm512_cvtepi32_ps(a) pe_shim_mm512_cvtepi32_ps(a)
#endif

// One fp16 -> float (F16C's scalar form): the reference conversion is exact, as vcvtph2ps is.
static inline float pe_shim_cvtsh_ss(uint16_t h) { return pe::fp16_to_fp32(h); }
#if !defined(_cvtsh_ss)
#define _cvtsh_ss(h) pe_shim_cvtsh_ss(h)
#endif

// int32 shift right arithmetic, 16 lanes: two 8-lane shifts.
static inline simde__m512i pe_shim_mm512_srai_epi32(simde__m512i a, int imm8) {
    const simde__m256i lo = simde_mm256_srai_epi32(simde_mm512_castsi512_si256(a), imm8);
    const simde__m256i hi = simde_mm256_srai_epi32(simde_mm512_extracti64x4_epi64(a, 1), imm8);
    return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
#if !defined(_mm512_srai_epi32)
#define _mm512_srai_epi32(a, imm8) pe_shim_mm512_srai_epi32(a, imm8)
#endif

// attend_lanes.h's 16-lane conversions, each as two 8-lane ones.
static inline simde__m512 pe_shim_join_ps(simde__m256 lo, simde__m256 hi) {
    return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}
static inline simde__m256 pe_shim_high_ps(simde__m512 a) {
    return simde_mm256_castpd_ps(simde_mm512_extractf64x4_pd(simde_mm512_castps_pd(a), 1));
}
static inline simde__m512i pe_shim_mm512_cvtps_epi32(simde__m512 a) {
    const simde__m256i lo = simde_mm256_cvtps_epi32(simde_mm512_castps512_ps256(a));
    const simde__m256i hi = simde_mm256_cvtps_epi32(pe_shim_high_ps(a));
    return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
#if !defined(_mm512_cvtps_epi32)
#define _mm512_cvtps_epi32(a) pe_shim_mm512_cvtps_epi32(a)
#endif
static inline simde__m512 pe_shim_mm512_cvtph_ps(simde__m256i a) {
    return pe_shim_join_ps(simde_mm256_cvtph_ps(simde_mm256_castsi256_si128(a)),
                           simde_mm256_cvtph_ps(simde_mm256_extracti128_si256(a, 1)));
}
#if !defined(_mm512_cvtph_ps)
#define _mm512_cvtph_ps(a) pe_shim_mm512_cvtph_ps(a)
#endif
static inline simde__m512i pe_shim_mm512_cvtepi8_epi32(simde__m128i a) {
    const simde__m256i lo = simde_mm256_cvtepi8_epi32(a);
    const simde__m256i hi = simde_mm256_cvtepi8_epi32(simde_mm_srli_si128(a, 8));
    return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
#if !defined(_mm512_cvtepi8_epi32)
#define _mm512_cvtepi8_epi32(a) pe_shim_mm512_cvtepi8_epi32(a)
#endif
static inline simde__m512d pe_shim_mm512_cvtps_pd(simde__m256 a) {
    return simde_mm512_insertf64x4(simde_mm512_castpd256_pd512(simde_mm256_cvtps_pd(simde_mm256_castps256_ps128(a))),
                                   simde_mm256_cvtps_pd(simde_mm256_extractf128_ps(a, 1)), 1);
}
#if !defined(_mm512_cvtps_pd)
#define _mm512_cvtps_pd(a) pe_shim_mm512_cvtps_pd(a)
#endif
static inline float pe_shim_mm512_reduce_max_ps(simde__m512 a) {
    const simde__m256 m8 = simde_mm256_max_ps(simde_mm512_castps512_ps256(a), pe_shim_high_ps(a));
    simde__m128 m = simde_mm_max_ps(simde_mm256_castps256_ps128(m8), simde_mm256_extractf128_ps(m8, 1));
    m = simde_mm_max_ps(m, simde_mm_movehl_ps(m, m));
    return simde_mm_cvtss_f32(simde_mm_max_ss(m, simde_mm_movehdup_ps(m)));
}
#if !defined(_mm512_reduce_max_ps)
#define _mm512_reduce_max_ps(a) pe_shim_mm512_reduce_max_ps(a)
#endif
#if !defined(_MM_FROUND_NO_EXC)
#define _MM_FROUND_NO_EXC SIMDE_MM_FROUND_NO_EXC
#endif
#if !defined(_mm512_shuffle_f32x4)
#define _mm512_shuffle_f32x4(a, b, imm8) simde_mm512_shuffle_f32x4(a, b, imm8)
#endif
// Masked 512-bit float loads and stores (lane_math.h's last partial vector): lane i where bit i of k
// is set, the others 0 (loads) or left alone (stores); nothing touched past the set lanes.
static inline simde__m512 pe_shim_mm512_maskz_loadu_ps(uint16_t k, const float* p) {
    float v[16] = {};
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) v[i] = p[i];
    return simde_mm512_loadu_ps(v);
}
static inline void pe_shim_mm512_mask_storeu_ps(float* p, uint16_t k, simde__m512 a) {
    float v[16];
    simde_mm512_storeu_ps(v, a);
    for (int i = 0; i < 16; i++)
        if (k >> i & 1) p[i] = v[i];
}
#if !defined(_mm512_maskz_loadu_ps)
#define _mm512_maskz_loadu_ps(k, p) pe_shim_mm512_maskz_loadu_ps(k, p)
#endif
#if !defined(_mm512_mask_storeu_ps)
#define _mm512_mask_storeu_ps(p, k, a) pe_shim_mm512_mask_storeu_ps(p, k, a)
#endif
