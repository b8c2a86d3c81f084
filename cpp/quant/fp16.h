// Half-precision (IEEE binary16) and bfloat16 conversions, in portable C++.
//
// These are the scalar reference conversions: bit-exact round-to-nearest-even, subnormals, infinities
// and NaN handled, so that they agree with numpy's float16 and with F16C's vcvtps2ph. Everything here
// is `static inline` on purpose: the per-ISA translation units include this header with different
// compiler flags, and internal linkage keeps each copy inside its own unit (no ODR mixing of an
// AVX-512 copy into scalar code).
#pragma once

#include <cstdint>
#include <cstring>

namespace pe {

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

static inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));  // inf / NaN
    if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return f32_from_bits(sign);  // signed zero
    // Subnormal half: normalise it into a float.
    int e = 113;
    while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
    }
    return f32_from_bits(sign | (uint32_t(e) << 23) | ((mant & 0x3ffu) << 13));
}

static inline uint16_t fp32_to_fp16(float f) {
    const uint32_t u = f32_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN stays NaN
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: infinity
    if (abs < 0x38800000u) {
        // Result is a half subnormal (or zero): value = mant * 2^-24, rounded to nearest even.
        if (abs < 0x33000000u) return sign;  // below half of the smallest subnormal
        const uint32_t e = abs >> 23;
        const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;  // 14..24
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return uint16_t(sign | q);
    }
    // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
    uint32_t h = ((abs >> 13) - (112u << 10));
    const uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return uint16_t(sign | h);
}

static inline float bf16_to_fp32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }

// As ggml_compute_fp32_to_bf16: NaN forced quiet, otherwise round to nearest even.
static inline uint16_t fp32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 64);
    u = uint32_t((uint64_t(u) + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return uint16_t(u);
}

}  // namespace pe
