// NEON kernels of the K-quants (Q2_K .. Q6_K, IQ4_XS against Q8_K activations), of the other ggml
// 32-blocks (Q5_0, IQ4_NL against Q8_0, Q5_1 against Q8_1), and the Q8_K activation quantizer.
// Compiled like neon.cpp (for the build's arm64 target: the integer dots use sdot where the target
// has the dot-product extension, widening multiplies otherwise) plus -ffp-contract=off: GCC fuses
// a * b + c into one fmla on arm64 by default, and the float steps here must round as the
// reference's separate multiply and add do. Everything but add_neon_kquant_kernels() lives in an
// anonymous namespace, as in avx2_kquants.cpp.
//
// Every kernel here is BIT-IDENTICAL to the scalar reference (cpp/quant/reference.cpp), not merely
// close: the integer part of each block's dot is computed exactly with integer instructions (any
// order gives the same integer), reduced to one int32 per block, and then the reference's float
// operations are done in scalar code in the reference's order:
//   K-quants and IQ4_XS: sum += ref::k_superblock_term(d, dmin, dx, isum, msum), super-blocks in order;
//   Q5_0, IQ4_NL:        sum += float(isum) * (dw * dx), blocks in order;
//   Q5_1:                sum += float(isum) * (dw * dx) + m * s, blocks in order.
//
// Integer ranges (why nothing overflows): every weight level here fits a signed byte (IQ4 levels
// -127..113, Q5_0's -16..15, Q6_K's u - 32 in -32..31, Q3_K's -4..3, the unsigned levels 0..31), so
// each 16-byte dot is dot16 of neon.cpp: sdot, or smull (an int16 product of two int8 is at most
// 128 * 128 = 16384) with pairwise widening adds. Per sub-block |sum q * y| <= 32 * 127 * 128 < 2^20,
// times a sub-block scale of at most 128 in magnitude, and per super-block |isum| < 2^28 (see the
// reference): int32 lanes never wrap. Unlike AVX2 (whose maddubs wants one unsigned operand) the
// signed levels of Q3_K and Q6_K go straight into the signed dot, so no offset term is needed.
//
// Q8_K's bsums (bsums[j] = the sum of qs[16j .. 16j+15], written by every Q8_K quantizer) stand for
// the sums of activation values in the minimums' msum (Q2_K, Q4_K, Q5_K), as in avx2_kquants.cpp.
// Activation rows come only from those quantizers, so they always match qs.
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "neon_common.h"

namespace pe {
namespace {

// The lane sums of four vectors: {sum a, sum b, sum c, sum d} (exact: integer).
inline int32x4_t hsum4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

// 16 bytes of nibbles -> the low nibbles (levels 0..15 of a 32-group) and the high ones (16..31).
inline void split_nibbles(uint8x16_t packed, uint8x16_t* lo, uint8x16_t* hi) {
    *lo = vandq_u8(packed, vdupq_n_u8(0x0f));
    *hi = vshrq_n_u8(packed, 4);
}

inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

// The 32 bits of qh as 32 bytes: 0xff where bit j is set, 0 where not (byte j for bit j); *lo gets
// bytes 0..15, *hi 16..31. Each byte of qh is copied to the eight bytes it covers (tbl), then tested
// against its bit.
inline void bits_to_bytes(uint32_t qh, uint8x16_t* lo, uint8x16_t* hi) {
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(qh));
    static const uint8_t kSpread[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t kBit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bit = vld1q_u8(kBit);
    *lo = vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(kSpread)), bit);
    *hi = vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(kSpread + 16)), bit);
}

// int32 lanes from 4 unsigned / signed bytes.
inline int32x4_t widen_u8x4_lo(uint8x8_t v) { return vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(v)))); }
inline int32x4_t widen_u8x4_hi(uint8x8_t v) { return vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(vmovl_u8(v)))); }

// sum_j sums_j * scales_j over 16 sub-blocks: the per-sub-block dot lanes p[0..15] reduced to one
// int32 each, times the int8 scales (exact: integer).
inline int32_t scaled_sum16(const int32x4_t* p, int8x16_t scales) {
    const int16x8_t s_lo = vmovl_s8(vget_low_s8(scales)), s_hi = vmovl_high_s8(scales);
    int32x4_t acc = vmulq_s32(hsum4(p[0], p[1], p[2], p[3]), vmovl_s16(vget_low_s16(s_lo)));
    acc = vmlaq_s32(acc, hsum4(p[4], p[5], p[6], p[7]), vmovl_high_s16(s_lo));
    acc = vmlaq_s32(acc, hsum4(p[8], p[9], p[10], p[11]), vmovl_s16(vget_low_s16(s_hi)));
    acc = vmlaq_s32(acc, hsum4(p[12], p[13], p[14], p[15]), vmovl_high_s16(s_hi));
    return vaddvq_s32(acc);
}

// The same over 8 sub-blocks with the scales as two int32x4.
inline int32_t scaled_sum8(const int32x4_t* p, int32x4_t sc03, int32x4_t sc47) {
    const int32x4_t acc = vmulq_s32(hsum4(p[0], p[1], p[2], p[3]), sc03);
    return vaddvq_s32(vmlaq_s32(acc, hsum4(p[4], p[5], p[6], p[7]), sc47));
}

// ===================================================================================================
// Q8_K activations: ggml's quantize_row_q8_K_ref, exactly.
//
// Exact because: amax is a max by the reference's own test (a lane takes |x| only where |x| > its
// value so far, so a NaN never enters, and -0 never replaces +0), and a max is order-free; max is the
// first value of that magnitude, as the reference's strict > finds it; iscale and d are the same
// scalar divisions; each level is the same float product iscale * x[j] (vmulq, not fused with the
// add: -ffp-contract=off), rounded by the same 1.5 * 2^23 addition (nearest_int, ties to even) and
// decoded from the same bits, min(127, .) then truncated to int8 (vmovn keeps the low bits, as the
// reference's cast does); bsums are integer sums of the stored bytes.
void quantize_row_q8_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (int j = 0; j < QK_K; j += 16)
            for (int k = 0; k < 4; k++) {
                const float32x4_t a = vabsq_f32(vld1q_f32(x + j + 4 * k));
                acc[k] = vbslq_f32(vcgtq_f32(a, acc[k]), a, acc[k]);
            }
        // No NaN is left in the lanes: a plain max is exact now.
        const float amax = vmaxvq_f32(vmaxq_f32(vmaxq_f32(acc[0], acc[1]), vmaxq_f32(acc[2], acc[3])));
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // The first value whose magnitude is amax.
        const float32x4_t vamax = vdupq_n_f32(amax);
        int first = 0;
        for (int j = 0; j < QK_K; j += 4) {
            if (vmaxvq_u32(vceqq_f32(vabsq_f32(vld1q_f32(x + j)), vamax))) {
                first = j;
                while (std::fabs(x[first]) != amax) first++;
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const float32x4_t magic = vdupq_n_f32(12582912.0f);
        const int32x4_t mant = vdupq_n_s32(0x007fffff), half = vdupq_n_s32(0x00400000), i127 = vdupq_n_s32(127);
        for (int j = 0; j < QK_K; j += 16) {
            int16x4_t q16[4];
            for (int k = 0; k < 4; k++) {
                const float32x4_t v = vaddq_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * k), iscale), magic);
                const int32x4_t r = vsubq_s32(vandq_s32(vreinterpretq_s32_f32(v), mant), half);
                q16[k] = vmovn_s32(vminq_s32(r, i127));  // the low 16 bits
            }
            const int8x16_t q8 = vcombine_s8(vmovn_s16(vcombine_s16(q16[0], q16[1])),
                                              vmovn_s16(vcombine_s16(q16[2], q16[3])));  // the low 8 bits
            vst1q_s8(y[i].qs + j, q8);
            y[i].bsums[j / 16] = vaddlvq_s8(q8);  // |sum| <= 2048: exact in int16
        }
        y[i].d = 1 / iscale;
    }
}

// ===================================================================================================
// 32-blocks against Q8_0 / Q8_1: the exact int32 dot of each block, then the reference's scalar float
// step, blocks in order. Four blocks' lane sums are reduced together (hsum4).

template <typename Block, typename XBlock, typename Lanes, typename Step>
inline float dot_blocks32(int n, const void* vw, const void* vx, Lanes lanes, Step step) {
    const auto* w = static_cast<const Block*>(vw);
    const auto* x = static_cast<const XBlock*>(vx);
    const int nb = n / QK;
    float sum = 0.0f;
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        int32_t isum[4];
        vst1q_s32(isum, hsum4(lanes(w[i], x[i]), lanes(w[i + 1], x[i + 1]), lanes(w[i + 2], x[i + 2]),
                              lanes(w[i + 3], x[i + 3])));
        for (int k = 0; k < 4; k++) sum += step(w[i + k], x[i + k], isum[k]);
    }
    for (; i < nb; i++) sum += step(w[i], x[i], vaddvq_s32(lanes(w[i], x[i])));
    return sum;
}

// ---- Q5_0 x Q8_0. Level q - 16 of the 5-bit q: a nibble with 0xf0 or-ed in where the fifth bit is
// clear is that nibble - 16 as int8, and the nibble itself where it is set (16 + nibble - 16).
// Exact: integer dot, then sum += float(isum) * (dw * dx) as the reference.
float vec_dot_q5_0(int n, const void* vw, const void* vx) {
    return dot_blocks32<block_q5_0, block_q8_0>(
        n, vw, vx,
        [](const block_q5_0& w, const block_q8_0& x) {
            uint32_t qh;
            std::memcpy(&qh, w.qh, 4);
            uint8x16_t h0, h1, lo, hi;
            bits_to_bytes(qh, &h0, &h1);
            split_nibbles(vld1q_u8(w.qs), &lo, &hi);
            const uint8x16_t f0 = vdupq_n_u8(0xf0);
            return block_dot(s8(vorrq_u8(lo, vbicq_u8(f0, h0))), s8(vorrq_u8(hi, vbicq_u8(f0, h1))), x.qs);
        },
        [](const block_q5_0& w, const block_q8_0& x, int32_t isum) {
            return float(isum) * (half_to_float(w.d) * half_to_float(x.d));
        });
}

// ---- Q5_1 x Q8_1. Unsigned 5-bit levels (nibble | 0x10 where the fifth bit is set).
// Exact: integer dot, then sum += (float(isum) * (dw * dx) + m * s) as the reference.
float vec_dot_q5_1(int n, const void* vw, const void* vx) {
    return dot_blocks32<block_q5_1, block_q8_1>(
        n, vw, vx,
        [](const block_q5_1& w, const block_q8_1& x) {
            uint32_t qh;
            std::memcpy(&qh, w.qh, 4);
            uint8x16_t h0, h1, lo, hi;
            bits_to_bytes(qh, &h0, &h1);
            split_nibbles(vld1q_u8(w.qs), &lo, &hi);
            const uint8x16_t b4 = vdupq_n_u8(0x10);
            return block_dot(s8(vorrq_u8(lo, vandq_u8(h0, b4))), s8(vorrq_u8(hi, vandq_u8(h1, b4))), x.qs);
        },
        [](const block_q5_1& w, const block_q8_1& x, int32_t isum) {
            return float(isum) * (half_to_float(w.d) * half_to_float(x.d)) + half_to_float(w.m) * half_to_float(x.s);
        });
}

// ---- IQ4_NL x Q8_0. The levels are a table lookup of the nibbles (tbl on the 16 int8 levels).
// Exact: integer dot, then sum += float(isum) * (dw * dx).
float vec_dot_iq4_nl(int n, const void* vw, const void* vx) {
    const int8x16_t table = vld1q_s8(kIQ4NLValues);
    return dot_blocks32<block_iq4_nl, block_q8_0>(
        n, vw, vx,
        [table](const block_iq4_nl& w, const block_q8_0& x) {
            uint8x16_t lo, hi;
            split_nibbles(vld1q_u8(w.qs), &lo, &hi);
            return block_dot(vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi), x.qs);
        },
        [](const block_iq4_nl& w, const block_q8_0& x, int32_t isum) {
            return float(isum) * (half_to_float(w.d) * half_to_float(x.d));
        });
}

// ===================================================================================================
// K-quants against Q8_K: per super-block the exact isum = sum_sub sc * (sum q * y) (each sub-block's
// dot lanes reduced to one int32, then multiplied by its scale, four sub-blocks per vector) and
// msum = sum_sub m * (sum of y) (from bsums), then sum += ref::k_superblock_term(d, dmin, dx, isum,
// msum) with the same arguments as the reference (dmin = 0 and msum = 0 for the formats without
// minimums).

// ---- Q4_K. Eight 32-sub-blocks, 6-bit scales and minimums packed in 12 bytes (get_scale_min_k4),
// unpacked four at a time with 32-bit masks into {scales 0..7, minimums 0..7}. Levels 0..15.
inline uint8x16_t scales_mins_k4(const uint8_t* packed) {
    uint32_t w[3];
    std::memcpy(w, packed, 12);
    const uint32_t sm[4] = {w[0] & 0x3f3f3f3fu,                                               // scales 0..3
                            (w[2] & 0x0f0f0f0fu) | (((w[0] >> 6) & 0x03030303u) << 4),        // scales 4..7
                            w[1] & 0x3f3f3f3fu,                                               // minimums 0..3
                            ((w[2] >> 4) & 0x0f0f0f0fu) | (((w[1] >> 6) & 0x03030303u) << 4)};  // minimums 4..7
    return vreinterpretq_u8_u32(vld1q_u32(sm));
}

// The isum and msum of the 32-sub-block formats with minimums: p[j] the dot lanes of sub-block j,
// sm the scales (bytes 0..7) and minimums (8..15); msum = sum_j m_j * (bsums[2j] + bsums[2j + 1]).
inline void k4_sums(const int32x4_t* p, uint8x16_t sm, const int16_t* bsums, int32_t* isum, int32_t* msum) {
    const uint8x8_t sc = vget_low_u8(sm);
    *isum = scaled_sum8(p, widen_u8x4_lo(sc), widen_u8x4_hi(sc));
    const int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));  // |.| <= 4096: exact
    const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(sm)));
    *msum = vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(pairs), vget_low_s16(mins)), pairs, mins));
}

float vec_dot_q4_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t* y = x[i].qs;
        int32x4_t p[8];
        for (int h = 0; h < 4; h++) {  // weights 64h .. 64h+63: low nibbles then high nibbles
            uint8x16_t lo0, hi0, lo1, hi1;
            split_nibbles(vld1q_u8(w[i].qs + 32 * h), &lo0, &hi0);
            split_nibbles(vld1q_u8(w[i].qs + 32 * h + 16), &lo1, &hi1);
            p[2 * h] = block_dot(s8(lo0), s8(lo1), y + 64 * h);
            p[2 * h + 1] = block_dot(s8(hi0), s8(hi1), y + 64 * h + 32);
        }
        int32_t isum, msum;
        k4_sums(p, scales_mins_k4(w[i].scales), x[i].bsums, &isum, &msum);
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, isum, msum);
    }
    return sum;
}

// ---- Q5_K. As Q4_K, with the fifth bit of weight 64h + l (low nibble) in bit 2h of qh[l], of
// weight 64h + 32 + l (high nibble) in bit 2h + 1: qh is shifted down by 2 per h, and its bits 0 and 1
// are moved to bit 4. Levels 0..31.
float vec_dot_q5_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q5_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const uint8x16_t b4 = vdupq_n_u8(0x10);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t* y = x[i].qs;
        uint8x16_t qh0 = vld1q_u8(w[i].qh), qh1 = vld1q_u8(w[i].qh + 16);
        int32x4_t p[8];
        for (int h = 0; h < 4; h++) {
            uint8x16_t lo0, hi0, lo1, hi1;
            split_nibbles(vld1q_u8(w[i].qs + 32 * h), &lo0, &hi0);
            split_nibbles(vld1q_u8(w[i].qs + 32 * h + 16), &lo1, &hi1);
            lo0 = vorrq_u8(lo0, vandq_u8(vshlq_n_u8(qh0, 4), b4));
            lo1 = vorrq_u8(lo1, vandq_u8(vshlq_n_u8(qh1, 4), b4));
            hi0 = vorrq_u8(hi0, vandq_u8(vshlq_n_u8(qh0, 3), b4));
            hi1 = vorrq_u8(hi1, vandq_u8(vshlq_n_u8(qh1, 3), b4));
            qh0 = vshrq_n_u8(qh0, 2);
            qh1 = vshrq_n_u8(qh1, 2);
            p[2 * h] = block_dot(s8(lo0), s8(lo1), y + 64 * h);
            p[2 * h + 1] = block_dot(s8(hi0), s8(hi1), y + 64 * h + 32);
        }
        int32_t isum, msum;
        k4_sums(p, scales_mins_k4(w[i].scales), x[i].bsums, &isum, &msum);
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, isum, msum);
    }
    return sum;
}

// ---- Q6_K. Sixteen 16-sub-blocks, signed 8-bit scales; levels u - 32 with u = 4 low bits from ql
// and 2 high bits from qh (0..63). Weight 128h + 32k + l takes a nibble of ql[64h + l + 32 (k % 2)]
// (the low one for k < 2) and bits 2k..2k+1 of qh[32h + l]; each 16 weights are one sub-block.
float vec_dot_q6_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m2 = vdupq_n_u8(0x30);
    const int8x16_t off = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t* y = x[i].qs;
        int32x4_t p[16];
        for (int h = 0; h < 2; h++) {
            for (int c = 0; c < 2; c++) {  // weights 128h + 32k + 16c + l, l = 0..15
                const uint8x16_t ql0 = vld1q_u8(w[i].ql + 64 * h + 16 * c);
                const uint8x16_t ql1 = vld1q_u8(w[i].ql + 64 * h + 32 + 16 * c);
                const uint8x16_t qh = vld1q_u8(w[i].qh + 32 * h + 16 * c);
                const uint8x16_t u0 = vorrq_u8(vandq_u8(ql0, m4), vandq_u8(vshlq_n_u8(qh, 4), m2));
                const uint8x16_t u1 = vorrq_u8(vandq_u8(ql1, m4), vandq_u8(vshlq_n_u8(qh, 2), m2));
                const uint8x16_t u2 = vorrq_u8(vshrq_n_u8(ql0, 4), vandq_u8(qh, m2));
                const uint8x16_t u3 = vorrq_u8(vshrq_n_u8(ql1, 4), vandq_u8(vshrq_n_u8(qh, 2), m2));
                const int8_t* yc = y + 128 * h + 16 * c;
                p[8 * h + c] = dot16(vdupq_n_s32(0), vsubq_s8(s8(u0), off), vld1q_s8(yc));
                p[8 * h + 2 + c] = dot16(vdupq_n_s32(0), vsubq_s8(s8(u1), off), vld1q_s8(yc + 32));
                p[8 * h + 4 + c] = dot16(vdupq_n_s32(0), vsubq_s8(s8(u2), off), vld1q_s8(yc + 64));
                p[8 * h + 6 + c] = dot16(vdupq_n_s32(0), vsubq_s8(s8(u3), off), vld1q_s8(yc + 96));
            }
        }
        const int32_t isum = scaled_sum16(p, vld1q_s8(w[i].scales));
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, isum, 0);
    }
    return sum;
}

// ---- Q3_K. Sixteen 16-sub-blocks with 6-bit scales (offset 32) packed in 12 bytes; levels
// low - 4 * !hbit = u - 4 with u = low | hbit << 2 (0..7). Weight 128h + 32k + l: low bits
// 2k..2k+1 of qs[32h + l], high bit 4h + k of hmask[l] (hmask is shifted down by 1 per run).
// The scales: low 4 bits of scale j in nibble j / 8 of byte j % 8, high 2 bits in bits 2 (j / 4)..
// of byte 8 + j % 4; unpacked four at a time with 32-bit masks.
inline int8x16_t q3_K_scales(const uint8_t* packed) {
    uint32_t a[3];
    std::memcpy(a, packed, 12);
    const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    const uint32_t s[4] = {(a[0] & m4) | (((a[2] >> 0) & m2) << 4),          // scales 0..3
                           (a[1] & m4) | (((a[2] >> 2) & m2) << 4),          // scales 4..7
                           ((a[0] >> 4) & m4) | (((a[2] >> 4) & m2) << 4),   // scales 8..11
                           ((a[1] >> 4) & m4) | (((a[2] >> 6) & m2) << 4)};  // scales 12..15
    return vsubq_s8(vreinterpretq_s8_u32(vld1q_u32(s)), vdupq_n_s8(32));
}

float vec_dot_q3_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const uint8x16_t m3 = vdupq_n_u8(3), b2 = vdupq_n_u8(4);
    const int8x16_t four = vdupq_n_s8(4);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t* y = x[i].qs;
        uint8x16_t hm[2] = {vld1q_u8(w[i].hmask), vld1q_u8(w[i].hmask + 16)};
        int32x4_t p[16];
        for (int h = 0; h < 2; h++) {
            uint8x16_t q2[2] = {vld1q_u8(w[i].qs + 32 * h), vld1q_u8(w[i].qs + 32 * h + 16)};
            for (int k = 0; k < 4; k++) {
                for (int c = 0; c < 2; c++) {  // weights 128h + 32k + 16c + l: sub-block 8h + 2k + c
                    const uint8x16_t u = vorrq_u8(vandq_u8(q2[c], m3), vandq_u8(vshlq_n_u8(hm[c], 2), b2));
                    p[8 * h + 2 * k + c] =
                        dot16(vdupq_n_s32(0), vsubq_s8(s8(u), four), vld1q_s8(y + 128 * h + 32 * k + 16 * c));
                    q2[c] = vshrq_n_u8(q2[c], 2);
                    hm[c] = vshrq_n_u8(hm[c], 1);
                }
            }
        }
        const int32_t isum = scaled_sum16(p, q3_K_scales(w[i].scales));
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, isum, 0);
    }
    return sum;
}

// ---- Q2_K. Sixteen 16-sub-blocks, a 4-bit scale and a 4-bit minimum per byte of scales; levels
// 0..3, bits 2k of qs[32h + l] for weight 128h + 32k + l. msum = sum_j m_j * bsums[j].
float vec_dot_q2_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const uint8x16_t m3 = vdupq_n_u8(3);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const uint8x16_t packed = vld1q_u8(w[i].scales);
        const int8x16_t scales = s8(vandq_u8(packed, vdupq_n_u8(0x0f)));
        const uint8x16_t mins = vshrq_n_u8(packed, 4);
        const int16x8_t m_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
        const int16x8_t m_hi = vreinterpretq_s16_u16(vmovl_high_u8(mins));
        const int16x8_t b_lo = vld1q_s16(x[i].bsums), b_hi = vld1q_s16(x[i].bsums + 8);
        int32x4_t ms = vmull_s16(vget_low_s16(m_lo), vget_low_s16(b_lo));  // |.| <= 15 * 2048
        ms = vmlal_high_s16(ms, m_lo, b_lo);
        ms = vmlal_s16(ms, vget_low_s16(m_hi), vget_low_s16(b_hi));
        ms = vmlal_high_s16(ms, m_hi, b_hi);
        const int32_t msum = vaddvq_s32(ms);
        const int8_t* y = x[i].qs;
        int32x4_t p[16];
        for (int h = 0; h < 2; h++) {
            uint8x16_t q2[2] = {vld1q_u8(w[i].qs + 32 * h), vld1q_u8(w[i].qs + 32 * h + 16)};
            for (int k = 0; k < 4; k++) {
                for (int c = 0; c < 2; c++) {  // weights 128h + 32k + 16c + l: sub-block 8h + 2k + c
                    p[8 * h + 2 * k + c] =
                        dot16(vdupq_n_s32(0), s8(vandq_u8(q2[c], m3)), vld1q_s8(y + 128 * h + 32 * k + 16 * c));
                    q2[c] = vshrq_n_u8(q2[c], 2);
                }
            }
        }
        const int32_t isum = scaled_sum16(p, scales);
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, isum, msum);
    }
    return sum;
}

// ---- IQ4_XS. Eight 32-sub-blocks of IQ4_NL levels (table lookup) with 6-bit scales (offset 32):
// low 4 bits in the nibbles of scales_l, high 2 in scales_h.
float vec_dot_iq4_xs(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const int8x16_t table = vld1q_s8(kIQ4NLValues);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        uint32_t sl;
        std::memcpy(&sl, w[i].scales_l, 4);
        const uint32_t sh = w[i].scales_h;
        int32_t sc[8];
        for (int j = 0; j < 8; j++) sc[j] = int32_t(((sl >> (4 * j)) & 0x0f) | (((sh >> (2 * j)) & 3) << 4)) - 32;
        const int8_t* y = x[i].qs;
        int32x4_t p[8];
        for (int j = 0; j < 8; j++) {
            uint8x16_t lo, hi;
            split_nibbles(vld1q_u8(w[i].qs + 16 * j), &lo, &hi);
            p[j] = block_dot(vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi), y + 32 * j);
        }
        const int32_t isum = scaled_sum8(p, vld1q_s32(sc), vld1q_s32(sc + 4));
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, isum, 0);
    }
    return sum;
}

}  // namespace

void add_neon_kquant_kernels(Kernels& k) {
    k.vec_dot[TYPE_Q5_0] = vec_dot_q5_0;
    k.vec_dot[TYPE_Q5_1] = vec_dot_q5_1;
    k.vec_dot[TYPE_IQ4_NL] = vec_dot_iq4_nl;
    k.vec_dot[TYPE_Q2_K] = vec_dot_q2_K;
    k.vec_dot[TYPE_Q3_K] = vec_dot_q3_K;
    k.vec_dot[TYPE_Q4_K] = vec_dot_q4_K;
    k.vec_dot[TYPE_Q5_K] = vec_dot_q5_K;
    k.vec_dot[TYPE_Q6_K] = vec_dot_q6_K;
    k.vec_dot[TYPE_IQ4_XS] = vec_dot_iq4_xs;
    k.from_float[TYPE_Q8_K] = quantize_row_q8_K;
}

}  // namespace pe

#else
namespace pe {
void add_neon_kquant_kernels(Kernels&) {}
}  // namespace pe
#endif
