// NEON kernels for arm64 (AArch64 Advanced SIMD is part of the base ISA, so this table needs no CPU
// check). The integer dots use the ARMv8.2 dot-product instruction (sdot: four byte products summed
// into each int32 lane) when the compiler targets it (-march=armv8.2-a+dotprod or later), and widening
// multiplies (smull + sadalp) otherwise. Everything lives in an anonymous namespace, as in avx2.cpp.
#include "attend_by_rows.h"
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "../quant/fp16.h"
#include "neon_common.h"

namespace pe {
namespace {

// 16 bytes of nibbles -> the low nibbles (weights 0..15) and the high ones (16..31), as bytes 0..15.
inline void unpack_nibbles(const uint8_t* qs, int8x16_t* lo, int8x16_t* hi) {
    const uint8x16_t packed = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
}

// The per-block integer sums are exact; each block's four int32 lanes are scaled by the block's
// d_w * d_x and accumulated in float. Two blocks per iteration into two accumulators; an odd last
// block goes into the first.
float vec_dot_q4_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int nb = n / QK;
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        int8x16_t a0, a1, b0, b1;
        unpack_nibbles(w[i].qs, &a0, &a1);
        unpack_nibbles(w[i + 1].qs, &b0, &b1);
        const int32x4_t sa = block_dot(vsubq_s8(a0, eight), vsubq_s8(a1, eight), x[i].qs);
        const int32x4_t sb = block_dot(vsubq_s8(b0, eight), vsubq_s8(b1, eight), x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(sb), half_to_float(w[i + 1].d) * half_to_float(x[i + 1].d));
    }
    if (i < nb) {
        int8x16_t a0, a1;
        unpack_nibbles(w[i].qs, &a0, &a1);
        const int32x4_t sa = block_dot(vsubq_s8(a0, eight), vsubq_s8(a1, eight), x[i].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

float vec_dot_q4_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    const int nb = n / QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float mins = 0.0f;  // sum of m_w * s_x: the weights' minimum times d_x * sum(y)
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        int8x16_t a0, a1, b0, b1;
        unpack_nibbles(w[i].qs, &a0, &a1);
        unpack_nibbles(w[i + 1].qs, &b0, &b1);
        const int32x4_t sa = block_dot(a0, a1, x[i].qs);
        const int32x4_t sb = block_dot(b0, b1, x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(sb), half_to_float(w[i + 1].d) * half_to_float(x[i + 1].d));
        mins += half_to_float(w[i].m) * half_to_float(x[i].s);
        mins += half_to_float(w[i + 1].m) * half_to_float(x[i + 1].s);
    }
    if (i < nb) {
        int8x16_t a0, a1;
        unpack_nibbles(w[i].qs, &a0, &a1);
        const int32x4_t sa = block_dot(a0, a1, x[i].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
        mins += half_to_float(w[i].m) * half_to_float(x[i].s);
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1)) + mins;
}

float vec_dot_q8_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int nb = n / QK;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const int32x4_t sa = block_dot(vld1q_s8(w[i].qs), vld1q_s8(w[i].qs + 16), x[i].qs);
        const int32x4_t sb = block_dot(vld1q_s8(w[i + 1].qs), vld1q_s8(w[i + 1].qs + 16), x[i + 1].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(sb), half_to_float(w[i + 1].d) * half_to_float(x[i + 1].d));
    }
    if (i < nb) {
        const int32x4_t sa = block_dot(vld1q_s8(w[i].qs), vld1q_s8(w[i].qs + 16), x[i].qs);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(sa), half_to_float(w[i].d) * half_to_float(x[i].d));
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

// NF4: tbl looks the 16 int8 levels up by nibble, then the levels take the signed byte dot. One
// 64-block is two 32-halves: the low nibbles of qs[0..31] (weights 0..31) against activation block
// x[0], the high ones (32..63) against x[1], each scaled by fl(d * d_x) as the reference does; the
// halves go to separate accumulators.
inline void nf4_block_dot(int8x16_t table, const uint8_t* qs, float d, const block_q8_0* x, float32x4_t* acc0,
                          float32x4_t* acc1) {
    const uint8x16_t p0 = vld1q_u8(qs), p1 = vld1q_u8(qs + 16);
    const uint8x16_t mask = vdupq_n_u8(0x0f);
    const int8x16_t w00 = vqtbl1q_s8(table, vandq_u8(p0, mask)), w01 = vqtbl1q_s8(table, vandq_u8(p1, mask));
    const int8x16_t w10 = vqtbl1q_s8(table, vshrq_n_u8(p0, 4)), w11 = vqtbl1q_s8(table, vshrq_n_u8(p1, 4));
    const int32x4_t s0 = block_dot(w00, w01, x[0].qs);  // weights 0..31
    const int32x4_t s1 = block_dot(w10, w11, x[1].qs);  // weights 32..63
    *acc0 = vfmaq_n_f32(*acc0, vcvtq_f32_s32(s0), d * half_to_float(x[0].d));
    *acc1 = vfmaq_n_f32(*acc1, vcvtq_f32_s32(s1), d * half_to_float(x[1].d));
}

float vec_dot_nf4_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_nf4*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int8x16_t table = vld1q_s8(kNF4Levels);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int i = 0; i < n / QK_NF4; i++) nf4_block_dot(table, w[i].qs, half_to_float(w[i].d), x + 2 * i, &acc0, &acc1);
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

float vec_dot_nf4_dq_q8_0(int n, const void* vw, const void* vx) {
    constexpr int kBlocks = QK_NF4_DQ / QK_NF4;
    const auto* w = static_cast<const block_nf4_dq*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int8x16_t table = vld1q_s8(kNF4Levels);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (int i = 0; i < n / QK_NF4_DQ; i++) {
        const float D = half_to_float(w[i].d);
        for (int b = 0; b < kBlocks; b++)
            nf4_block_dot(table, w[i].qs[b], nf4_dq_block_scale(D, w[i].scales[b]), x + 2 * (kBlocks * i + b), &acc0,
                          &acc1);
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

// Float dots: four independent 4-lane accumulators over 16 values, 4 at a time after that; the caller
// adds the last n % 4 in order. load_w(i) gives weights i..i+3 as floats.
template <typename Load>
inline float dot_f32_lanes(int n, const float* x, Load load_w) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = vfmaq_f32(acc0, load_w(i), vld1q_f32(x + i));
        acc1 = vfmaq_f32(acc1, load_w(i + 4), vld1q_f32(x + i + 4));
        acc2 = vfmaq_f32(acc2, load_w(i + 8), vld1q_f32(x + i + 8));
        acc3 = vfmaq_f32(acc3, load_w(i + 12), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= n; i += 4) acc0 = vfmaq_f32(acc0, load_w(i), vld1q_f32(x + i));
    return vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
}

float vec_dot_f32_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const float*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) { return vld1q_f32(w + i); });
    for (int i = n & ~3; i < n; i++) sum += w[i] * x[i];
    return sum;
}

float vec_dot_f16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w + i))); });
    for (int i = n & ~3; i < n; i++) sum += half_to_float(w[i]) * x[i];
    return sum;
}

float vec_dot_bf16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    // A bf16 is the top half of a float: widen each to 32 bits shifted left by 16.
    float sum = dot_f32_lanes(n, x, [w](int i) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w + i), 16)); });
    for (int i = n & ~3; i < n; i++) sum += bf16_to_fp32(w[i]) * x[i];
    return sum;
}

// Quantizes one 32-block to int8 (32 bytes at qs); returns the scale d; *isum gets sum(qs). The same
// float operations as the reference: amax with fmax semantics (fmaxnm: a NaN input is ignored, as
// fmax ignores it), d = amax / 127, id = 1 / d, q = round(x * id) with fcvtas, which rounds half away
// from zero exactly as roundf does.
inline float quantize_block_q8(const float* x, int8_t* qs, int* isum) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int k = 0; k < 8; k++) {
        v[k] = vld1q_f32(x + 4 * k);
        amax = vmaxnmq_f32(amax, vabsq_f32(v[k]));
    }
    const float d = vmaxnmvq_f32(amax) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int32x4_t q[8];
    for (int k = 0; k < 8; k++) q[k] = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
    // |q| <= 127 here (|x * id| <= amax * id, which rounds to at most 127), so narrowing is exact.
    for (int k = 0; k < 8; k += 4) {
        const int16x8_t q01 = vcombine_s16(vqmovn_s32(q[k]), vqmovn_s32(q[k + 1]));
        const int16x8_t q23 = vcombine_s16(vqmovn_s32(q[k + 2]), vqmovn_s32(q[k + 3]));
        vst1q_s8(qs + 4 * k, vcombine_s8(vqmovn_s16(q01), vqmovn_s16(q23)));
    }
    if (isum) {
        const int32x4_t s = vaddq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])),
                                      vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
        *isum = vaddvq_s32(s);
    }
    return d;
}

// The scales go through the reference fp32 -> fp16 conversion (round to nearest even), once per block.
void quantize_row_q8_0(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_0*>(vy);
    for (int64_t i = 0; i < n / QK; i++) y[i].d = fp32_to_fp16(quantize_block_q8(x + i * QK, y[i].qs, nullptr));
}

void quantize_row_q8_1(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_1*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        int sum = 0;
        const float d = quantize_block_q8(x + i * QK, y[i].qs, &sum);
        y[i].d = fp32_to_fp16(d);
        y[i].s = fp32_to_fp16(float(sum) * d);
    }
}

// y += a * x: 4 lanes at a time, then the tail in order. Each y[i] gets one rounding of a * x[i]
// (fused into the add), whatever n is.
void axpy_f32(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const float*>(vx);
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
}

void axpy_f16(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const uint16_t*>(vx);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t xf = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i)));
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), xf, a));
    }
    for (; i < n; i++) y[i] = std::fma(a, half_to_float(x[i]), y[i]);
}

// ref::find_above on 4 lanes, 16 values a step: found where a value is not below (not at most) the
// floor, NaN included (its compares are false), the rest one by one.
template <bool OrEqual>
int64_t find_above_lanes(const float* x, int64_t n, float floor) {
    const float32x4_t f = vdupq_n_f32(floor);
    const auto within = [&f](const float* p) {
        return OrEqual ? vcltq_f32(vld1q_f32(p), f) : vcleq_f32(vld1q_f32(p), f);
    };
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint32x4_t all = vandq_u32(vandq_u32(within(x + i), within(x + i + 4)),
                                         vandq_u32(within(x + i + 8), within(x + i + 12)));
        if (vminvq_u32(all) == 0) break;  // one of these 16 is found: the loop below finds which
    }
    for (; i < n; i++)
        if (OrEqual ? !(x[i] < floor) : !(x[i] <= floor)) return i;
    return n;
}

int64_t find_above(const float* x, int64_t n, float floor, bool or_equal) {
    return or_equal ? find_above_lanes<true>(x, n, floor) : find_above_lanes<false>(x, n, floor);
}

}  // namespace

const Kernels* kernels_neon() {
    static const Kernels table = [] {
        Kernels k = *kernels_scalar();
        k.isa = "neon";
        k.vec_dot[TYPE_Q4_0] = vec_dot_q4_0_q8_0;
        k.vec_dot[TYPE_Q4_1] = vec_dot_q4_1_q8_1;
        k.vec_dot[TYPE_Q8_0] = vec_dot_q8_0_q8_0;
        k.vec_dot[TYPE_NF4] = vec_dot_nf4_q8_0;
        k.vec_dot[TYPE_NF4_DQ] = vec_dot_nf4_dq_q8_0;
        k.vec_dot[TYPE_F32] = vec_dot_f32_f32;
        k.vec_dot[TYPE_F16] = vec_dot_f16_f32;
        k.vec_dot[TYPE_BF16] = vec_dot_bf16_f32;
        k.from_float[TYPE_Q8_0] = quantize_row_q8_0;
        k.from_float[TYPE_Q8_1] = quantize_row_q8_1;
        k.axpy[TYPE_F32] = axpy_f32;
        k.axpy[TYPE_F16] = axpy_f16;
        k.attend[TYPE_F32] = attend_by_rows<vec_dot_f32_f32, axpy_f32>;
        k.attend[TYPE_F16] = attend_by_rows<vec_dot_f16_f32, axpy_f16>;
        k.find_above = find_above;
        add_neon_kquant_kernels(k);  // Q5_0, Q5_1, IQ4_NL, the K-quants and the Q8_K quantizer
        return k;
    }();
    return &table;
}

}  // namespace pe

#else
namespace pe {
const Kernels* kernels_neon() { return nullptr; }
}  // namespace pe
#endif
