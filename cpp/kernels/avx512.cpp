// AVX-512 kernels (F, BW, VL, VNNI). Compiled with those flags (and -ffp-contract=off) and called only
// when CPUID reports them all. The integer dots use VNNI's vpdpbusd (unsigned x signed bytes, summed
// into int32 lanes in one instruction) on 64 weights per 512-bit register. Here is a vec_dot for every
// weight type: Q4_0, Q4_1, Q8_0, NF4, NF4_DQ, F32, F16 and BF16 with their float steps in vector lanes
// (within a tolerance of the scalar reference), and Q5_0, Q5_1, IQ4_NL and the K-quants Q2_K .. Q6_K,
// IQ4_XS bit-identical to it (see their section below). The packed kernels (pack / packed_dot, what a
// Model's matrices run on) are avx2_packed.h's, built with VNNI in avx512_packed.cpp: bit-identical to
// the scalar reference, so they agree bit for bit with the bit-identical vec_dots here. Everything
// else is taken from the AVX2 table, which every AVX-512 CPU can run: the activation quantizers and
// axpy. Attention is attend_lanes.h's on 16 lanes, bit-identical to AVX2's (the same arithmetic).
//
// With PE_SIMDE defined, this file builds against SIMDe's portable versions of the intrinsics
// (tests/test_native_kernels.py: the kernel test checks this code on machines without AVX-512).
#include "kernels.h"

#if defined(PE_SIMDE) || defined(__x86_64__) || defined(_M_X64)
#if defined(PE_SIMDE)
#include "../tests/simde_avx512.h"
#else
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>

#include "../quant/fp16.h"
#include "avx2_common.h"

namespace pe {
namespace {

inline float hsum512(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}

inline __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Per-block scales: d0 in lanes 0..7 (the first block's int32 sums), d1 in lanes 8..15.
inline __m512 two_scales(float d0, float d1) {
    return _mm512_mask_blend_ps(__mmask16(0xff00), _mm512_set1_ps(d0), _mm512_set1_ps(d1));
}

// Signed x signed bytes via vpdpbusd: |x| as unsigned times y with x's sign. |x| may be 128
// (a -128 weight byte reads as unsigned 128, which is right); y is from our quantizer, |y| <= 127.
inline __m512i dot_i8(__m512i x, __m512i y) {
    const __m512i sy = _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(x), _mm512_setzero_si512(), y);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), sy);
}

inline __m256i dot_i8_256(__m256i x, __m256i y) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

float vec_dot_q4_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int nb = n / QK;
    const __m256i eight = _mm256_set1_epi8(8);
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join512(_mm256_sub_epi8(unpack_nibbles(w[i].qs), eight),
                               _mm256_sub_epi8(unpack_nibbles(w[i + 1].qs), eight));
        const __m512i y = join512(load32(x[i].qs), load32(x[i + 1].qs));
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(x[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8(q, y)), acc);
    }
    __m256 tail = _mm256_setzero_ps();
    if (i < nb) {
        const __m256i q = _mm256_sub_epi8(unpack_nibbles(w[i].qs), eight);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d));
        tail = _mm256_mul_ps(d, _mm256_cvtepi32_ps(dot_i8_256(q, load32(x[i].qs))));
    }
    return hsum512(acc) + hsum(tail);
}

float vec_dot_q4_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    const int nb = n / QK;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0.0f;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join512(unpack_nibbles(w[i].qs), unpack_nibbles(w[i + 1].qs));
        const __m512i y = join512(load32(x[i].qs), load32(x[i + 1].qs));
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(x[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y)), acc);
        mins += _cvtsh_ss(w[i].m) * _cvtsh_ss(x[i].s);
        mins += _cvtsh_ss(w[i + 1].m) * _cvtsh_ss(x[i + 1].s);
    }
    __m256 tail = _mm256_setzero_ps();
    if (i < nb) {
        const __m256i isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), unpack_nibbles(w[i].qs), load32(x[i].qs));
        tail = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(isum));
        mins += _cvtsh_ss(w[i].m) * _cvtsh_ss(x[i].s);
    }
    return hsum512(acc) + hsum(tail) + mins;
}

float vec_dot_q8_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int nb = n / QK;
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join512(load32(w[i].qs), load32(w[i + 1].qs));
        const __m512i y = join512(load32(x[i].qs), load32(x[i + 1].qs));
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(x[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8(q, y)), acc);
    }
    __m256 tail = _mm256_setzero_ps();
    if (i < nb) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d));
        tail = _mm256_mul_ps(d, _mm256_cvtepi32_ps(dot_i8_256(load32(w[i].qs), load32(x[i].qs))));
    }
    return hsum512(acc) + hsum(tail);
}

// NF4: one 64-block fills a 512-bit register, its low nibbles (weights 0..31, against activation
// block x[0]) in the lower half and its high nibbles (32..63, against x[1]) in the upper half, so the
// two halves' int32 sums land in lanes 0..7 and 8..15 as two_scales expects. vpshufb looks the int8
// levels up by nibble (the 16-byte table in every 128-bit lane).
inline void nf4_block_dot(const uint8_t* qs, float d, const block_q8_0* x, __m512* acc) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m512i nibbles = _mm512_and_si512(join512(packed, _mm256_srli_epi16(packed, 4)), _mm512_set1_epi8(0x0f));
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNF4Levels)));
    const __m512i q = _mm512_shuffle_epi8(table, nibbles);
    const __m512i y = join512(load32(x[0].qs), load32(x[1].qs));
    const __m512 scales = two_scales(d * _cvtsh_ss(x[0].d), d * _cvtsh_ss(x[1].d));
    *acc = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(dot_i8(q, y)), *acc);
}

float vec_dot_nf4_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_nf4*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n / QK_NF4; i++) nf4_block_dot(w[i].qs, _cvtsh_ss(w[i].d), x + 2 * i, &acc);
    return hsum512(acc);
}

float vec_dot_nf4_dq_q8_0(int n, const void* vw, const void* vx) {
    constexpr int kBlocks = QK_NF4_DQ / QK_NF4;
    const auto* w = static_cast<const block_nf4_dq*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n / QK_NF4_DQ; i++) {
        const float D = _cvtsh_ss(w[i].d);
        for (int b = 0; b < kBlocks; b++)
            nf4_block_dot(w[i].qs[b], nf4_dq_block_scale(D, w[i].scales[b]), x + 2 * (kBlocks * i + b), &acc);
    }
    return hsum512(acc);
}

// Float dots: two 16-lane accumulators over 32 values, then 16 at a time; the caller adds the last
// n % 16 in order.
template <typename Load>
inline float dot_f32_lanes(int n, const float* x, Load load_w) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(load_w(i), _mm512_loadu_ps(x + i), acc0);
        acc1 = _mm512_fmadd_ps(load_w(i + 16), _mm512_loadu_ps(x + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(load_w(i), _mm512_loadu_ps(x + i), acc0);
    return hsum512(_mm512_add_ps(acc0, acc1));
}

inline __m512 join_ps(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

float vec_dot_f32_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const float*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) { return _mm512_loadu_ps(w + i); });
    for (int i = n & ~15; i < n; i++) sum += w[i] * x[i];
    return sum;
}

float vec_dot_f16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) {
        const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
        const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 8)));
        return join_ps(lo, hi);
    });
    for (int i = n & ~15; i < n; i++) sum += _cvtsh_ss(w[i]) * x[i];
    return sum;
}

float vec_dot_bf16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
        const __m512i wide = join512(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)),
                                  _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    });
    for (int i = n & ~15; i < n; i++) sum += bf16_to_fp32(w[i]) * x[i];
    return sum;
}

// ===================================================================================================
// Q5_0, IQ4_NL (against Q8_0), Q5_1 (against Q8_1) and the K-quants Q2_K .. Q6_K, IQ4_XS (against
// Q8_K): BIT-IDENTICAL to the scalar reference (cpp/quant/reference.cpp), as the AVX2 and NEON
// kernels of these formats are. The integer part of each block's dot is computed exactly in int32
// lanes (any order gives the same integer), reduced to one int32 per block (or per super-block), and
// the reference's float operations follow in scalar code, in its order:
//   Q5_0, IQ4_NL:        sum += float(isum) * (dw * dx), blocks in order;
//   Q5_1:                sum += float(isum) * (dw * dx) + m * s, blocks in order;
//   K-quants and IQ4_XS: sum += ref::k_superblock_term(d, dmin, dx, isum, msum), super-blocks in order.
// This unit is built with -ffp-contract=off (CMakeLists.txt), so those steps are not fused either.
//
// The products: vpdpbusd multiplies 64 unsigned bytes u by 64 signed bytes y and adds each lane's
// four products into its int32 lane, without saturation. Activations come from our quantizers, so
// |y| <= 127. Levels that are unsigned go in as they are (Q2_K 0..3, Q4_K 0..15, Q5_1 and Q5_K
// 0..31); signed ones as level + offset (Q5_0 u = q + 16, Q3_K u = q + 4, Q6_K u = q + 32) with the
// offset's part subtracted afterwards from the activations' sums (Q8_K's bsums, or a vpdpbusd of the
// constant 16 for Q5_0); IQ4's table levels (-127..113) with dot_i8's sign trick. So every byte
// product is at most 127 * 127 in magnitude, a lane (four of them) under 2^16, a lane times a
// sub-block scale (|sc| <= 128: Q6_K's int8; IQ4_XS's are at most 32) under 2^22, and a super-block's
// sum of sc * q * y at most 256 * 63 * 127 * 128 (Q6_K's u) or 256 * 127 * 127 * 32 (IQ4_XS), under
// 2^28: int32 lanes never overflow.
//
// Q8_K's bsums (bsums[j] = the sum of qs[16j .. 16j+15], written by every Q8_K quantizer) stand for
// sums of activation values: the minimums' msum (Q2_K, Q4_K, Q5_K) and the level offsets' part
// (Q3_K, Q6_K).

inline __m512i load64(const void* p) { return _mm512_loadu_si512(p); }

// The sum of 8 or 16 int32 lanes (exact: integer).
inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtsi128_si32(s);
}

inline int32_t hsum_i32(__m512i v) {
    return hsum_i32(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

// ---- 32-blocks against Q8_0 / Q8_1. Two blocks per register: the first block's 32 weights in bytes
// 0..31, so its dot lands in int32 lanes 0..7, the second's in 8..15 (as the Q4_0 kernel above).

// The dots of four blocks from two such registers, ab = {a | b} and cd = {c | d}: {a, b, c, d}.
inline __m128i block_sums4(__m512i ab, __m512i cd) {
    // In each 128-bit lane, interleaved: {ab, cd, ab, cd} partial sums, then {AB, CD, AB, CD}, the
    // sums of ab's and of cd's four lanes there.
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi32(ab, cd), _mm512_unpackhi_epi32(ab, cd));
    const __m512i v = _mm512_add_epi32(_mm512_unpacklo_epi64(u, u), _mm512_unpackhi_epi64(u, u));
    // 128-bit lanes 0 and 1 hold a's and c's halves, lanes 2 and 3 b's and d's: adding each lane to its
    // neighbour leaves {a, c, a, c} in lane 0 and {b, d, b, d} in lane 2.
    const __m512i w = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(order, w));
}

// Blocks four at a time: pair_dot(w0, x0, w1, x1) gives two blocks' int32 lanes as above, step(w, x,
// isum) a block's float term; the terms are added in block order. Past the end of the row the last
// block stands in for the missing ones (read again, its extra sums unused).
template <typename Block, typename XBlock, typename PairDot, typename Step>
inline float dot_blocks32(int n, const void* vw, const void* vx, PairDot pair_dot, Step step) {
    const auto* w = static_cast<const Block*>(vw);
    const auto* x = static_cast<const XBlock*>(vx);
    const int nb = n / QK;
    float sum = 0.0f;
    for (int i = 0; i < nb; i += 4) {
        const int b1 = std::min(i + 1, nb - 1), b2 = std::min(i + 2, nb - 1), b3 = std::min(i + 3, nb - 1);
        alignas(16) int32_t isum[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(isum),
                        block_sums4(pair_dot(w[i], x[i], w[b1], x[b1]), pair_dot(w[b2], x[b2], w[b3], x[b3])));
        for (int k = 0; k < 4 && i + k < nb; k++) sum += step(w[i + k], x[i + k], isum[k]);
    }
    return sum;
}

// Two blocks' nibbles, each in weight order (low nibbles, then high ones).
inline __m512i nibbles2(const uint8_t* qs0, const uint8_t* qs1) {
    return join512(unpack_nibbles(qs0), unpack_nibbles(qs1));
}

// Two blocks' fifth bits (bit j of each little-endian qh: weight j) as one bit per byte of the pair.
inline __mmask64 fifth_bits2(const uint8_t* qh0, const uint8_t* qh1) {
    uint32_t a, b;
    std::memcpy(&a, qh0, 4);
    std::memcpy(&b, qh1, 4);
    return __mmask64(a) | (__mmask64(b) << 32);
}

// The 5-bit levels u = nibble + 16 * fifth bit (0..31) of two Q5_0 / Q5_1 blocks.
template <typename Block>
inline __m512i q5_levels2(const Block& w0, const Block& w1) {
    const __m512i nib = nibbles2(w0.qs, w1.qs);
    return _mm512_mask_add_epi8(nib, fifth_bits2(w0.qh, w1.qh), nib, _mm512_set1_epi8(16));
}

template <typename XBlock>
inline __m512i activations2(const XBlock& x0, const XBlock& x1) { return join512(load32(x0.qs), load32(x1.qs)); }

// ---- Q5_0 x Q8_0: levels u - 16, so the dot is u . y - 16 * (sum of y), lane by lane.
float vec_dot_q5_0_q8_0(int n, const void* vw, const void* vx) {
    return dot_blocks32<block_q5_0, block_q8_0>(
        n, vw, vx,
        [](const block_q5_0& w0, const block_q8_0& x0, const block_q5_0& w1, const block_q8_0& x1) {
            const __m512i y = activations2(x0, x1);
            const __m512i zero = _mm512_setzero_si512();
            return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, q5_levels2(w0, w1), y),
                                    _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(16), y));
        },
        [](const block_q5_0& w, const block_q8_0& x, int32_t isum) {
            return float(isum) * (_cvtsh_ss(w.d) * _cvtsh_ss(x.d));
        });
}

// ---- Q5_1 x Q8_1: unsigned levels u, the minimum's part from the activation's s.
float vec_dot_q5_1_q8_1(int n, const void* vw, const void* vx) {
    return dot_blocks32<block_q5_1, block_q8_1>(
        n, vw, vx,
        [](const block_q5_1& w0, const block_q8_1& x0, const block_q5_1& w1, const block_q8_1& x1) {
            return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q5_levels2(w0, w1), activations2(x0, x1));
        },
        [](const block_q5_1& w, const block_q8_1& x, int32_t isum) {
            return float(isum) * (_cvtsh_ss(w.d) * _cvtsh_ss(x.d)) + _cvtsh_ss(w.m) * _cvtsh_ss(x.s);
        });
}

// ---- IQ4_NL x Q8_0: the levels looked up by nibble (vpshufb, the 16 int8 levels in every 128-bit
// lane), signed: dot_i8.
inline __m512i iq4_table() {
    return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
}

float vec_dot_iq4_nl_q8_0(int n, const void* vw, const void* vx) {
    const __m512i table = iq4_table();
    return dot_blocks32<block_iq4_nl, block_q8_0>(
        n, vw, vx,
        [table](const block_iq4_nl& w0, const block_q8_0& x0, const block_iq4_nl& w1, const block_q8_0& x1) {
            return dot_i8(_mm512_shuffle_epi8(table, nibbles2(w0.qs, w1.qs)), activations2(x0, x1));
        },
        [](const block_iq4_nl& w, const block_q8_0& x, int32_t isum) {
            return float(isum) * (_cvtsh_ss(w.d) * _cvtsh_ss(x.d));
        });
}

// ---- K-quants against Q8_K. Each super-block is taken 64 weights at a time, register r holding
// weights 64r .. 64r+63 in order against x.qs[64r ..], so int32 lane l of its vpdpbusd holds weights
// 64r + 4l .. 64r + 4l + 3: lanes 4s .. 4s+3 are 16-weight sub-block 4r + s, lanes 8s .. 8s+7 are
// 32-weight sub-block 2r + s. Each lane is multiplied by its sub-block's scale (lane_scales) and the
// lanes added up: isum.

// Every int32 lane's sub-block scale for register r: lane l gets scale byte first + l / kLanesPerSub
// of `table` (the super-block's 16 scale bytes, int8, in every 128-bit lane), with first = 4r (16-weight
// sub-blocks, 4 lanes each) or 2r (32-weight ones, 8 lanes). vpshufb copies the byte into the top byte
// of the lane (index bytes 0x80 zero the three below it) and the arithmetic shift sign-extends it.
template <int kLanesPerSub>
inline __m512i lane_scales(__m512i table, int first) {
    static_assert(kLanesPerSub == 4 || kLanesPerSub == 8, "16- or 32-weight sub-blocks");
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i sub = _mm512_add_epi32(_mm512_set1_epi32(first), _mm512_srli_epi32(lane, kLanesPerSub == 4 ? 2 : 3));
    const __m512i index = _mm512_or_si512(_mm512_slli_epi32(sub, 24), _mm512_set1_epi32(0x00808080));
    return _mm512_srai_epi32(_mm512_shuffle_epi8(table, index), 24);
}

// One register's scaled lanes: sc * (u . y) per lane.
template <int kLanesPerSub>
inline __m512i scaled_dot(__m512i u, const int8_t* y, __m512i table, int first) {
    const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, load64(y));
    return _mm512_mullo_epi32(p, lane_scales<kLanesPerSub>(table, first));
}

// sum_j c_j * bsums[j], the 16 coefficients c_j as int16 (exact: |c| <= 128, |bsums| <= 2032).
inline int32_t dot_bsums(__m256i c, const int16_t* bsums) {
    return hsum_i32(_mm256_madd_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums))));
}

// Q2_K's and Q3_K's 2-bit fields: weight 128h + 32k + l (l < 32) in bits 2k..2k+1 of q[l], q = qs + 32h.
// Returns those of register r = 2h + p in weight order: k = 2p in bytes 0..31, k = 2p + 1 in 32..63.
template <int p>
inline __m512i crumbs(const uint8_t* q) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m512i both = join512(v, _mm256_srli_epi16(v, 2));  // the upper half's k one field further up
    return _mm512_and_si512(_mm512_srli_epi16(both, 4 * p), _mm512_set1_epi8(3));
}

// A 32-byte bit plane whose byte l holds in bit b the bit of weight 32b + l (Q5_K's qh, Q3_K's hmask),
// twice, the upper copy shifted down by one: then bit 2r of byte j is the bit of register r's weight
// 64r + j (bit 2r of the plane for j < 32, bit 2r + 1 for j >= 32; the 16-bit shift keeps each of
// these bits in its byte, as 2r + 1 <= 7).
inline __m512i bit_plane2(const uint8_t* plane) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(plane));
    return join512(v, _mm256_srli_epi16(v, 1));
}

// Register r's bits of such a plane: one mask bit per weight.
inline __mmask64 plane_bits(__m512i plane2, int r) {
    return _mm512_test_epi8_mask(plane2, _mm512_set1_epi8(char(1 << (2 * r))));
}

// ---- Q4_K. Eight 32-sub-blocks, 6-bit scales and minimums packed in 12 bytes (blocks.h's
// get_scale_min_k4), unpacked four at a time with 32-bit masks into {scales 0..7, minimums 0..7}.
// Levels 0..15: weight 64r + l (l < 32) is the low nibble of qs[32r + l], 64r + 32 + l its high one.
inline __m128i scales_mins_k4(const uint8_t* packed) {
    uint32_t w[3];
    std::memcpy(w, packed, 12);
    return _mm_setr_epi32(int32_t(w[0] & 0x3f3f3f3fu),                                               // scales 0..3
                          int32_t((w[2] & 0x0f0f0f0fu) | (((w[0] >> 6) & 0x03030303u) << 4)),        // scales 4..7
                          int32_t(w[1] & 0x3f3f3f3fu),                                               // minimums 0..3
                          int32_t(((w[2] >> 4) & 0x0f0f0f0fu) | (((w[1] >> 6) & 0x03030303u) << 4)));  // minimums 4..7
}

// msum of Q4_K and Q5_K: sum_j m_j * (bsums[2j] + bsums[2j + 1]), m_j in bytes 8..15 of sm.
inline int32_t msum_32(__m128i sm, const int16_t* bsums) {
    const __m128i m = _mm_srli_si128(sm, 8);
    return dot_bsums(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m)), bsums);  // m_j for bsums 2j and 2j+1
}

// Register r's 64 nibbles of a Q4_K / Q5_K super-block, in weight order.
inline __m512i k4_nibbles(const uint8_t* qs, int r) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * r));
    return _mm512_and_si512(join512(v, _mm256_srli_epi16(v, 4)), _mm512_set1_epi8(0x0f));
}

float vec_dot_q4_K_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sm = scales_mins_k4(w[i].scales);
        const __m512i table = _mm512_broadcast_i32x4(sm);
        __m512i acc = _mm512_setzero_si512();
        for (int r = 0; r < 4; r++)
            acc = _mm512_add_epi32(acc, scaled_dot<8>(k4_nibbles(w[i].qs, r), x[i].qs + 64 * r, table, 2 * r));
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), _cvtsh_ss(w[i].dmin), x[i].d, hsum_i32(acc),
                                      msum_32(sm, x[i].bsums));
    }
    return sum;
}

// ---- Q5_K. As Q4_K, with the fifth bit of weight 64r + l in bit 2r of qh[l] and of 64r + 32 + l in
// bit 2r + 1 (weight 32b + l in bit b: a bit plane as bit_plane2 reads it). Levels 0..31.
float vec_dot_q5_K_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q5_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m512i sixteen = _mm512_set1_epi8(16);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sm = scales_mins_k4(w[i].scales);
        const __m512i table = _mm512_broadcast_i32x4(sm);
        const __m512i qh2 = bit_plane2(w[i].qh);
        __m512i acc = _mm512_setzero_si512();
        for (int r = 0; r < 4; r++) {
            const __m512i nib = k4_nibbles(w[i].qs, r);
            const __m512i u = _mm512_mask_add_epi8(nib, plane_bits(qh2, r), nib, sixteen);
            acc = _mm512_add_epi32(acc, scaled_dot<8>(u, x[i].qs + 64 * r, table, 2 * r));
        }
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), _cvtsh_ss(w[i].dmin), x[i].d, hsum_i32(acc),
                                      msum_32(sm, x[i].bsums));
    }
    return sum;
}

// ---- Q6_K. Sixteen 16-sub-blocks with signed 8-bit scales; levels u - 32, u (0..63) from 4 low bits
// in ql and 2 high bits in qh. Weight 128h + 32k + l takes nibble k / 2 of ql[64h + 32 (k % 2) + l]
// and bits 2k..2k+1 of qh[32h + l]; register r = 2h + p holds k = 2p and 2p + 1. The offset's part,
// 32 * sum_j sc_j * bsums[j], is subtracted from the sum.
template <int p>
inline __m512i q6_K_levels(__m512i ql, __m512i qh2) {
    const __m512i low = _mm512_and_si512(p == 0 ? ql : _mm512_srli_epi16(ql, 4), _mm512_set1_epi8(0x0f));
    const __m512i high = _mm512_and_si512(p == 0 ? _mm512_slli_epi16(qh2, 4) : qh2, _mm512_set1_epi8(0x30));
    return _mm512_or_si512(low, high);
}

float vec_dot_q6_K_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i].scales));
        const __m512i table = _mm512_broadcast_i32x4(sc8);
        const int8_t* y = x[i].qs;
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const __m512i ql = load64(w[i].ql + 64 * h);
            // qh's bits for k = 2p in bytes 0..31, for k = 2p + 1 (two bits up) in 32..63
            const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i].qh + 32 * h));
            const __m512i qh2 = join512(qh, _mm256_srli_epi16(qh, 2));
            acc = _mm512_add_epi32(acc, scaled_dot<4>(q6_K_levels<0>(ql, qh2), y + 128 * h, table, 8 * h));
            acc = _mm512_add_epi32(acc, scaled_dot<4>(q6_K_levels<1>(ql, qh2), y + 128 * h + 64, table, 8 * h + 4));
        }
        const int32_t offset = dot_bsums(_mm256_cvtepi8_epi16(sc8), x[i].bsums);
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), 0.0f, x[i].d, hsum_i32(acc) - 32 * offset, 0);
    }
    return sum;
}

// ---- Q3_K. Sixteen 16-sub-blocks with 6-bit scales (offset 32) packed in 12 bytes; levels
// low - 4 * !hbit = u - 4 with u = low + 4 * hbit (0..7), low in qs as crumbs() reads it and hbit in
// hmask as bit_plane2 does. The offset's part, 4 * sum_j sc_j * bsums[j], is subtracted from the sum.
// The scales: scale j's low 4 bits are nibble j / 8 of byte j % 8, its high 2 bits bits 2 (j / 4) ..
// of byte 8 + j % 4; unpacked four at a time with 32-bit masks.
inline __m128i q3_K_scales(const uint8_t* packed) {
    uint32_t w[3];
    std::memcpy(w, packed, 12);
    auto four = [&](uint32_t low, int j4) {  // scales 4 j4 .. 4 j4 + 3, before the offset
        return int32_t((low & 0x0f0f0f0fu) | (((w[2] >> (2 * j4)) & 0x03030303u) << 4));
    };
    const __m128i sc = _mm_setr_epi32(four(w[0], 0), four(w[1], 1), four(w[0] >> 4, 2), four(w[1] >> 4, 3));
    return _mm_sub_epi8(sc, _mm_set1_epi8(32));
}

template <int p>
inline __m512i q3_K_scaled(const block_q3_K& w, __m512i hm2, int h, const int8_t* y, __m512i table) {
    const int r = 2 * h + p;
    const __m512i low = crumbs<p>(w.qs + 32 * h);
    const __m512i u = _mm512_mask_add_epi8(low, plane_bits(hm2, r), low, _mm512_set1_epi8(4));
    return scaled_dot<4>(u, y + 64 * r, table, 4 * r);
}

float vec_dot_q3_K_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = q3_K_scales(w[i].scales);
        const __m512i table = _mm512_broadcast_i32x4(sc8);
        const __m512i hm2 = bit_plane2(w[i].hmask);
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            acc = _mm512_add_epi32(acc, q3_K_scaled<0>(w[i], hm2, h, x[i].qs, table));
            acc = _mm512_add_epi32(acc, q3_K_scaled<1>(w[i], hm2, h, x[i].qs, table));
        }
        const int32_t offset = dot_bsums(_mm256_cvtepi8_epi16(sc8), x[i].bsums);
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), 0.0f, x[i].d, hsum_i32(acc) - 4 * offset, 0);
    }
    return sum;
}

// ---- Q2_K. Sixteen 16-sub-blocks, a 4-bit scale (low nibble) and a 4-bit minimum (high nibble) per
// scales byte; levels 0..3 as crumbs() reads them. msum = sum_j m_j * bsums[j].
float vec_dot_q2_K_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i].scales));
        const __m512i table = _mm512_broadcast_i32x4(_mm_and_si128(packed, m4));
        const __m128i mins = _mm_and_si128(_mm_srli_epi16(packed, 4), m4);
        const int8_t* y = x[i].qs;
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            const uint8_t* q = w[i].qs + 32 * h;
            acc = _mm512_add_epi32(acc, scaled_dot<4>(crumbs<0>(q), y + 128 * h, table, 8 * h));
            acc = _mm512_add_epi32(acc, scaled_dot<4>(crumbs<1>(q), y + 128 * h + 64, table, 8 * h + 4));
        }
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), _cvtsh_ss(w[i].dmin), x[i].d, hsum_i32(acc),
                                      dot_bsums(_mm256_cvtepu8_epi16(mins), x[i].bsums));
    }
    return sum;
}

// ---- IQ4_XS. Eight 32-sub-blocks of IQ4_NL levels (weight 32j + l in the low nibble of qs[16j + l]
// for l < 16, the high one for l >= 16: each 32 as an IQ4_NL block), with 6-bit scales (offset 32):
// the low 4 bits in nibble j % 2 of scales_l[j / 2], the high 2 in bits 2j.. of scales_h.
float vec_dot_iq4_xs_q8_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m512i levels = iq4_table();
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        uint64_t sc = 0;  // the eight scales, one per byte, before the offset
        for (int j = 0; j < 8; j++) {
            const uint64_t low = (w[i].scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
            const uint64_t high = (w[i].scales_h >> (2 * j)) & 3;
            sc |= (low | (high << 4)) << (8 * j);
        }
        const __m512i table =
            _mm512_broadcast_i32x4(_mm_sub_epi8(_mm_cvtsi64_si128(int64_t(sc)), _mm_set1_epi8(32)));
        __m512i acc = _mm512_setzero_si512();
        for (int r = 0; r < 4; r++) {
            const uint8_t* qs = w[i].qs + 32 * r;
            const __m512i q = _mm512_shuffle_epi8(levels, nibbles2(qs, qs + 16));
            const __m512i p = dot_i8(q, load64(x[i].qs + 64 * r));
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(p, lane_scales<8>(table, 2 * r)));
        }
        sum += ref::k_superblock_term(_cvtsh_ss(w[i].d), 0.0f, x[i].d, hsum_i32(acc), 0);
    }
    return sum;
}

// AVX-512's lanes for attend_lanes.h.
struct L16 {
    using V = __m512;
    static constexpr int W = 16;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float a) { return _mm512_set1_ps(a); }
    static V load(const float* p) { return _mm512_load_ps(p); }
    static V loadu(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V v) { _mm512_store_ps(p, v); }
    static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
    static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V max(V a, V b) { return _mm512_max_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
    static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static V pow2(V n) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
    }
    static V zero_below(V v, V x, float limit) {
        return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, set1(limit), _CMP_GE_OQ), v);
    }
    static V div(V a, V b) { return _mm512_div_ps(a, b); }
    static V loadu_first(const float* p, int m) { return _mm512_maskz_loadu_ps(__mmask16((1u << m) - 1), p); }
    static void storeu_first(float* p, V v, int m) { _mm512_mask_storeu_ps(p, __mmask16((1u << m) - 1), v); }
    static V neg_abs(V x) { return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)))); }
    static V select_nonneg(V x, V a, V b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero(), _CMP_GE_OQ), b, a); }
    template <bool OrEqual>
    static uint32_t past(V x, V f) { return _mm512_cmp_ps_mask(x, f, OrEqual ? _CMP_NLT_UQ : _CMP_NLE_UQ); }
    static float hmax(V v) { return _mm512_reduce_max_ps(v); }
    static V from_f16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static V from_i8(const int8_t* p) {
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    }
    // Eight keys in pairs (0, 1), (2, 3), ..., 1024 floats apart, interleaved by 8 values: a register
    // holds values i .. i + 7 of both keys of a pair, and each half runs L8's chain for its key. Two
    // queries at a time: eight chains in flight. The sums across lanes take hsum's tree, four keys at
    // once.
    static constexpr int kKeys = 8;
    // Each register of a pair written whole (halves of two keys' conversions joined first): a 512-bit
    // load of two 256-bit stores would wait for them to reach the cache, where a store of the same
    // size forwards its data.
    template <typename Get>
    static void store_keys(float* kbuf, int hd, Get get) {
        for (int pair = 0; pair < 4; pair++)
            for (int c0 = 0; c0 < hd; c0 += 32) {
                V a[2], b[2];  // values c0 .. c0 + 31 of keys 2 pair and 2 pair + 1
                get(2 * pair, c0, a);
                get(2 * pair + 1, c0, b);
                float* at = kbuf + 1024 * pair + 2 * c0;
                for (int m = 0; m < 2; m++) {
                    store(at + 32 * m, _mm512_shuffle_f32x4(a[m], b[m], _MM_SHUFFLE(1, 0, 1, 0)));       // values 16m .. +7
                    store(at + 32 * m + 16, _mm512_shuffle_f32x4(a[m], b[m], _MM_SHUFFLE(3, 2, 3, 2)));  // 16m + 8 .. +15
                }
            }
    }
    // Four keys' sums from the chains of pairs (0, 1) and (2, 3): 128-bit lanes key 0's halves | key
    // 1's | key 2's | key 3's; lo + hi, + movehl, + movehdup (hsum's steps); the sum in element 0
    // of each 128-bit lane, times scale.
    static V sums4(V acc01, V acc23, float scale) {
        V x = add(_mm512_shuffle_f32x4(acc01, acc23, _MM_SHUFFLE(2, 0, 2, 0)),
                  _mm512_shuffle_f32x4(acc01, acc23, _MM_SHUFFLE(3, 1, 3, 1)));
        x = add(x, _mm512_shuffle_ps(x, x, _MM_SHUFFLE(3, 2, 3, 2)));
        return mul(add(x, _mm512_shuffle_ps(x, x, _MM_SHUFFLE(3, 3, 1, 1))), set1(scale));
    }
    static void store_scores(const V (&acc)[4], float scale, float* s, int np) {
        const __m512i firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 28, 24, 20, 16, 12, 8, 4, 0);
        const __m256 eight = _mm512_castps512_ps256(
            _mm512_permutex2var_ps(sums4(acc[0], acc[1], scale), firsts, sums4(acc[2], acc[3], scale)));
        if (np == 8) {
            _mm256_storeu_ps(s, eight);
        } else {
            alignas(32) float kept[8];
            _mm256_store_ps(kept, eight);
            for (int k = 0; k < np; k++) s[k] = kept[k];
        }
    }
    template <int N>
    static void scores_of(const float* kbuf, const float* q, int hd, float scale, float* s, size_t s_stride, int np) {
        V acc[N][4];
        for (int j = 0; j < N; j++)
            for (V& a : acc[j]) a = zero();
        for (int i = 0; i < hd; i += 8) {
            V k[4];
            for (int pair = 0; pair < 4; pair++) k[pair] = load(kbuf + 1024 * pair + 2 * i);
            for (int j = 0; j < N; j++) {
                const V qv = _mm512_castpd_ps(
                    _mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(q + size_t(j) * size_t(hd) + i))));
                for (int pair = 0; pair < 4; pair++) acc[j][pair] = fmadd(k[pair], qv, acc[j][pair]);
            }
        }
        for (int j = 0; j < N; j++) store_scores(acc[j], scale, s + size_t(j) * s_stride, np);
    }
    static int scores(const float* kbuf, const float* q, int n_q, int hd, float scale, float* s, size_t s_stride,
                      int np) {
        if (n_q >= 2) {
            scores_of<2>(kbuf, q, hd, scale, s, s_stride, np);
            return 2;
        }
        scores_of<1>(kbuf, q, hd, scale, s, s_stride, np);
        return 1;
    }
    using Sum = __m512d;  // lanes 0-7
    static Sum sum_zero() { return _mm512_setzero_pd(); }
    static void add_sum(Sum& sum, V e) {  // positions 0-7 of the step, then 8-15
        sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    static void sum_lanes(const Sum& sum, double* lanes) { _mm512_storeu_pd(lanes, sum); }
};

}  // namespace
}  // namespace pe

#include "attend_lanes.h"

namespace pe {

#if defined(PE_SIMDE)
const Kernels* kernels_avx512_simde() {
#else
const Kernels* kernels_avx512() {
#endif
    static const Kernels table = [] {
        // Activation quantizers (and anything else not written here) come from the AVX2 table; the
        // SIMDe build, which has no AVX2 unit beside it, takes the scalar ones (the same bytes).
#if defined(PE_SIMDE)
        Kernels k = *kernels_scalar();
        k.isa = "avx512-simde";
        add_avx512_packed_kernels(k);  // avx512_packed.cpp, built with PE_SIMDE as well
#else
        Kernels k = *kernels_avx2();
        k.isa = "avx512";
        // AVX2's tiles repeat AVX2's vec_dot operations, not these: a tile must match its table's
        // vec_dot bit for bit, so none is inherited.
        for (auto& tile : k.vec_dot_tile) tile = nullptr;
        add_avx512_packed_kernels(k);
#endif
        k.vec_dot[TYPE_Q4_0] = vec_dot_q4_0_q8_0;
        k.vec_dot[TYPE_Q4_1] = vec_dot_q4_1_q8_1;
        k.vec_dot[TYPE_Q8_0] = vec_dot_q8_0_q8_0;
        k.vec_dot[TYPE_NF4] = vec_dot_nf4_q8_0;
        k.vec_dot[TYPE_NF4_DQ] = vec_dot_nf4_dq_q8_0;
        k.vec_dot[TYPE_F32] = vec_dot_f32_f32;
        k.vec_dot[TYPE_F16] = vec_dot_f16_f32;
        k.vec_dot[TYPE_BF16] = vec_dot_bf16_f32;
        // Bit-identical to the scalar reference (and so to the AVX2 packed kernels of these types,
        // which this table inherits in the real build).
        k.vec_dot[TYPE_Q5_0] = vec_dot_q5_0_q8_0;
        k.vec_dot[TYPE_Q5_1] = vec_dot_q5_1_q8_1;
        k.vec_dot[TYPE_IQ4_NL] = vec_dot_iq4_nl_q8_0;
        k.vec_dot[TYPE_Q2_K] = vec_dot_q2_K_q8_K;
        k.vec_dot[TYPE_Q3_K] = vec_dot_q3_K_q8_K;
        k.vec_dot[TYPE_Q4_K] = vec_dot_q4_K_q8_K;
        k.vec_dot[TYPE_Q5_K] = vec_dot_q5_K_q8_K;
        k.vec_dot[TYPE_Q6_K] = vec_dot_q6_K_q8_K;
        k.vec_dot[TYPE_IQ4_XS] = vec_dot_iq4_xs_q8_K;
        add_attention_kernels<L16>(k);
        k.silu_mul = silu_mul<L16>;
        k.find_above = find_above<L16>;
        return k;
    }();
    return &table;
}

}  // namespace pe

#else
namespace pe {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace pe
#endif
