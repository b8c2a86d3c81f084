// Helpers shared by the NEON units (neon.cpp, neon_kquants.cpp). Include only from those units, inside
// their `#if defined(__aarch64__)`; like everything there, these live in an anonymous namespace.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace pe {
namespace {

// fcvt from half is exact (every fp16 value, subnormals included, is a float), as the reference is.
inline float half_to_float(uint16_t h) {
    __fp16 f;
    std::memcpy(&f, &h, sizeof f);
    return float(f);
}

// Sum of products of 16 signed bytes, four per int32 lane, added to acc. Exact: a lane gets at most
// 4 products of magnitude <= 128 * 128, and smull's int16 products cannot overflow either (-128 * -128
// = 16384), so weights holding -128 are fine.
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

// Integer dot of one 32-block: weights w0 (values 0..15) and w1 (16..31) with activation bytes qs, in lanes.
inline int32x4_t block_dot(int8x16_t w0, int8x16_t w1, const int8_t* qs) {
    return dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(qs)), w1, vld1q_s8(qs + 16));
}

}  // namespace
}  // namespace pe
