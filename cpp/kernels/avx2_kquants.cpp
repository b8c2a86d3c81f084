// AVX2 kernels of the K-quants (Q2_K .. Q6_K, IQ4_XS against Q8_K activations), of the other ggml
// 32-blocks (Q5_0, IQ4_NL against Q8_0, Q5_1 against Q8_1), and the Q8_K activation quantizer.
// Compiled like avx2.cpp (-mavx2 -mfma -mf16c -ffp-contract=off) and reached only through
// kernels_avx2(), after dispatch.cpp's CPUID check. Everything but add_avx2_kquant_kernels() lives in
// an anonymous namespace, so no function built with these flags can be picked for other code.
//
// Every kernel here is BIT-IDENTICAL to the scalar reference (cpp/quant/reference.cpp), not merely
// close: the integer part of each block's dot is computed exactly with integer instructions (any
// order gives the same integer), reduced to one int32 per block, and then the reference's float
// operations are done in scalar code in the reference's order:
//   K-quants and IQ4_XS: sum += ref::k_superblock_term(d, dmin, dx, isum, msum), super-blocks in order;
//   Q5_0, IQ4_NL:        sum += float(isum) * (dw * dx), blocks in order;
//   Q5_1:                sum += float(isum) * (dw * dx) + m * s, blocks in order.
//
// Integer ranges (why nothing saturates or overflows): Q8_K and Q8_0 activations come from our own
// quantizers, so |y| <= 127. _mm256_maddubs_epi16 adds two products u * y of an unsigned byte u and a
// signed byte y into int16 with saturation; with u <= 127 a pair is at most 2 * 127 * 127 = 32258 <
// 32767. Signed weight levels w are made unsigned with the sign trick (|w| times y with w's sign,
// |w| <= 127: IQ4 levels reach -127, Q5_0's -16), or as level + offset (Q3_K's u = q + 4, Q6_K's
// u = q + 32) with the offset's part subtracted from the sum afterwards. The int16 pair sums are
// multiplied by the (sub-block scale) and widened to int32 with _mm256_madd_epi16; per super-block
// |isum| < 2^28 (see the reference), far from int32's range.
//
// Q8_K's bsums (bsums[j] = the sum of qs[16j .. 16j+15], written by every Q8_K quantizer) stand for
// sums of activation values: the minimums' msum (Q2_K, Q4_K, Q5_K) and the level offsets' part
// (Q3_K, Q6_K). Activation rows come only from those quantizers, so they always match qs.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstring>

#include "../quant/fp16.h"
#include "avx2_common.h"

namespace pe {
namespace {


inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// The sum of 8 int32 lanes (exact: integer).
inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

inline int32_t hsum_i32(__m128i s) {
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// The lane sums of four vectors at once: {sum a, sum b, sum c, sum d}.
inline __m128i hsum4_i32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

// 32 bytes of nibbles -> the low nibbles, and the high ones.
inline void split_nibbles(const uint8_t* qs, __m256i* lo, __m256i* hi) {
    const __m256i v = load256(qs);
    const __m256i m = _mm256_set1_epi8(0x0f);
    *lo = _mm256_and_si256(v, m);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
}

// Products of unsigned bytes u (0..127) and signed bytes y, summed in adjacent pairs: 16 int16.
inline __m256i pairs_u8_i8(__m256i u, __m256i y) { return _mm256_maddubs_epi16(u, y); }

// Products of signed bytes w (-127..127) and y, summed in adjacent pairs (the sign trick): 16 int16.
inline __m256i pairs_i8_i8(__m256i w, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
}

// 16 int16 pair sums -> 8 int32 lanes.
inline __m256i widen(__m256i pairs) { return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)); }

// The 32 bits of a u32 as 32 bytes: 0xff where bit j is set, 0 where not (byte j for bit j).
inline __m256i bits_to_bytes(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(int32_t(bits)),
        _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

// Bit `from` of every byte of v, moved to bit `to` (all other bits cleared): after the 16-bit shift by
// |from - to|, each byte's bit `to` comes from the same byte, since both positions are in 0..7.
template <int from, int to>
inline __m256i bit_move(__m256i v) {
    const __m256i moved = from <= to ? _mm256_slli_epi16(v, to - from) : _mm256_srli_epi16(v, from - to);
    return _mm256_and_si256(moved, _mm256_set1_epi8(char(1 << to)));
}

// From 16 signed scale bytes held in both 128-bit lanes: int16 scale j in the low lane's 8 int16
// and scale j + 1 in the high lane's (each byte copied into both halves of an int16, then shifted
// down arithmetically: sign-extended). The multiplier of a 32-weight run of two 16-sub-blocks.
inline __m256i scale_pair(__m256i scales2, int j) {
    const __m256i pick = _mm256_set_m128i(_mm_set1_epi8(char(j + 1)), _mm_set1_epi8(char(j)));
    return _mm256_srai_epi16(_mm256_shuffle_epi8(scales2, pick), 8);
}

// ===================================================================================================
// Q8_K activations: ggml's quantize_row_q8_K_ref, exactly.
//
// Exact because: amax is a max (order-free; _mm256_max_ps(v, acc) keeps acc when v is NaN, as the
// reference's `fabs(x) > amax` skips NaN); max is the first value of that magnitude, as in the
// reference's strict >; iscale and d are the same scalar divisions; each level is the same float
// product iscale * x[j], rounded by the same 1.5 * 2^23 addition (nearest_int, ties to even) and
// decoded from the same bits, min(127, .) then truncated to int8 (packs of values masked to 8 bits,
// so even out-of-range values truncate as the reference's cast does); bsums are integer sums.
void quantize_row_q8_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_K*>(vy);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 16) {
            acc0 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), acc0);
            acc1 = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j + 8), abs_mask), acc1);
        }
        const __m256 acc = _mm256_max_ps(acc0, acc1);  // no NaN left in either
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // The first value whose magnitude is amax.
        const __m256 vamax = _mm256_set1_ps(amax);
        int first = 0;
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), vamax,
                                                             _CMP_EQ_OQ));
            if (hit) {
                first = j + __builtin_ctz(unsigned(hit));
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vis = _mm256_set1_ps(iscale);
        const __m256 magic = _mm256_set1_ps(12582912.0f);
        const __m256i mant = _mm256_set1_epi32(0x007fffff), half = _mm256_set1_epi32(0x00400000);
        const __m256i i127 = _mm256_set1_epi32(127), low8 = _mm256_set1_epi32(0xff);
        __m256i sums4[8];  // per 32 values: 8 int32 sums of 4 levels
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                const __m256 v = _mm256_add_ps(_mm256_mul_ps(vis, _mm256_loadu_ps(x + j + 8 * k)), magic);
                const __m256i r = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), half);
                q[k] = _mm256_and_si256(_mm256_min_epi32(r, i127), low8);
            }
            // 32 values 0..255 -> 32 bytes; packs work per 128-bit lane, so restore the order.
            __m256i q8 = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
            q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + j), q8);
            sums4[j / 32] = widen(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q8));
        }
        // sums4[v] lane l is the sum of bytes 4l .. 4l+3 of run v; two hadds give per 128-bit lane
        // the 16-sums {run a low, run b low, c low, d low | a high, b high, c high, d high}.
        for (int h = 0; h < 2; h++) {
            const __m256i* s = sums4 + 4 * h;
            __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
            b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // |sum of 16 int8| <= 2048: the saturating pack is exact.
            const __m128i b16 = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].bsums + 8 * h), b16);
        }
        y[i].d = 1 / iscale;
    }
}

// ===================================================================================================
// 32-blocks against Q8_0 / Q8_1: the exact int32 dot of each block, then the reference's scalar float
// step, blocks in order. Four blocks' lane sums are reduced together (hsum4_i32).

template <typename Block, typename XBlock, typename Lanes, typename Step>
inline float dot_blocks32(int n, const void* vw, const void* vx, Lanes lanes, Step step) {
    const auto* w = static_cast<const Block*>(vw);
    const auto* x = static_cast<const XBlock*>(vx);
    const int nb = n / QK;
    float sum = 0.0f;
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        alignas(16) int32_t isum[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(isum), hsum4_i32(lanes(w[i], x[i]), lanes(w[i + 1], x[i + 1]),
                                                                   lanes(w[i + 2], x[i + 2]), lanes(w[i + 3], x[i + 3])));
        for (int k = 0; k < 4; k++) sum += step(w[i + k], x[i + k], isum[k]);
    }
    for (; i < nb; i++) sum += step(w[i], x[i], hsum_i32(lanes(w[i], x[i])));
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
            const __m256i q = _mm256_or_si256(unpack_nibbles(w.qs),
                                              _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(char(0xf0))));
            return widen(pairs_i8_i8(q, load256(x.qs)));
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
            const __m256i q =
                _mm256_or_si256(unpack_nibbles(w.qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
            return widen(pairs_u8_i8(q, load256(x.qs)));
        },
        [](const block_q5_1& w, const block_q8_1& x, int32_t isum) {
            return float(isum) * (half_to_float(w.d) * half_to_float(x.d)) + half_to_float(w.m) * half_to_float(x.s);
        });
}

// ---- IQ4_NL x Q8_0. The levels are a table lookup of the nibbles (_mm256_shuffle_epi8 on the 16
// int8 levels, in both 128-bit lanes). Exact: integer dot, then sum += float(isum) * (dw * dx).
inline __m256i iq4_table() {
    return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
}

float vec_dot_iq4_nl(int n, const void* vw, const void* vx) {
    const __m256i table = iq4_table();
    return dot_blocks32<block_iq4_nl, block_q8_0>(
        n, vw, vx,
        [table](const block_iq4_nl& w, const block_q8_0& x) {
            return widen(pairs_i8_i8(_mm256_shuffle_epi8(table, unpack_nibbles(w.qs)), load256(x.qs)));
        },
        [](const block_iq4_nl& w, const block_q8_0& x, int32_t isum) {
            return float(isum) * (half_to_float(w.d) * half_to_float(x.d));
        });
}

// ===================================================================================================
// K-quants against Q8_K: per super-block the exact isum = sum_sub sc * (sum q * y) (int32 lanes,
// each sub-block's pair sums multiplied by its scale in _mm256_madd_epi16) and msum = sum_sub m *
// (sum of y) (from bsums), then sum += ref::k_superblock_term(d, dmin, dx, isum, msum) with the same
// arguments as the reference (dmin = 0 and msum = 0 for the formats without minimums).

// ---- Q4_K. Eight 32-sub-blocks, 6-bit scales and minimums packed in 12 bytes (get_scale_min_k4):
// unpacked four at a time with 32-bit masks into {scales 0..7, minimums 0..7} (built in registers:
// going through memory would stall on store forwarding). Levels 0..15.
inline __m128i scales_mins_k4(const uint8_t* packed) {
    uint32_t w[3];
    std::memcpy(w, packed, 12);
    return _mm_setr_epi32(int32_t(w[0] & 0x3f3f3f3fu),                                               // scales 0..3
                          int32_t((w[2] & 0x0f0f0f0fu) | (((w[0] >> 6) & 0x03030303u) << 4)),        // scales 4..7
                          int32_t(w[1] & 0x3f3f3f3fu),                                               // minimums 0..3
                          int32_t(((w[2] >> 4) & 0x0f0f0f0fu) | (((w[1] >> 6) & 0x03030303u) << 4)));  // minimums 4..7
}

// Scale j (byte j of both lanes of sm2, 0..63) in every int16 lane.
inline __m256i scale_all(__m256i sm2, int j) {
    return _mm256_shuffle_epi8(sm2, _mm256_set1_epi16(int16_t(0x8000 | j)));  // 0x80: a zero high byte
}

// msum of the 32-sub-block formats: sum_j m_j * (bsums[2j] + bsums[2j + 1]), m_j in bytes 8..15 of sm.
inline int32_t msum_32(__m128i sm, const int16_t* bsums) {
    const __m128i pairs = _mm_hadd_epi16(load128(bsums), load128(bsums + 8));  // |.| <= 4096: exact
    return hsum_i32(_mm_madd_epi16(pairs, _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8))));
}

float vec_dot_q4_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sm = scales_mins_k4(w[i].scales);
        const __m256i sm2 = _mm256_broadcastsi128_si256(sm);
        const int8_t* y = x[i].qs;
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 4; h++) {  // weights 64h .. 64h+63: low nibbles then high nibbles
            __m256i lo, hi;
            split_nibbles(w[i].qs + 32 * h, &lo, &hi);
            const __m256i plo = pairs_u8_i8(lo, load256(y + 64 * h));
            const __m256i phi = pairs_u8_i8(hi, load256(y + 64 * h + 32));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, scale_all(sm2, 2 * h)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, scale_all(sm2, 2 * h + 1)));
        }
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, hsum_i32(acc),
                                      msum_32(sm, x[i].bsums));
    }
    return sum;
}

// ---- Q5_K. As Q4_K, with the fifth bit of weight 64h + j (low nibble) in bit 2h of qh[j], of
// weight 64h + 32 + j (high nibble) in bit 2h + 1. Levels 0..31.
template <int h>
inline __m256i q5_K_half(const block_q5_K& w, const __m256i qh, const int8_t* y, __m256i sm2) {
    __m256i lo, hi;
    split_nibbles(w.qs + 32 * h, &lo, &hi);
    lo = _mm256_or_si256(lo, bit_move<2 * h, 4>(qh));
    hi = _mm256_or_si256(hi, bit_move<2 * h + 1, 4>(qh));
    const __m256i plo = pairs_u8_i8(lo, load256(y + 64 * h));
    const __m256i phi = pairs_u8_i8(hi, load256(y + 64 * h + 32));
    return _mm256_add_epi32(_mm256_madd_epi16(plo, scale_all(sm2, 2 * h)),
                            _mm256_madd_epi16(phi, scale_all(sm2, 2 * h + 1)));
}

float vec_dot_q5_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q5_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sm = scales_mins_k4(w[i].scales);
        const __m256i sm2 = _mm256_broadcastsi128_si256(sm);
        const int8_t* y = x[i].qs;
        const __m256i qh = load256(w[i].qh);
        __m256i acc = _mm256_add_epi32(q5_K_half<0>(w[i], qh, y, sm2), q5_K_half<1>(w[i], qh, y, sm2));
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(q5_K_half<2>(w[i], qh, y, sm2), q5_K_half<3>(w[i], qh, y, sm2)));
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, hsum_i32(acc),
                                      msum_32(sm, x[i].bsums));
    }
    return sum;
}

// ---- Q6_K. Sixteen 16-sub-blocks, signed 8-bit scales; levels u - 32 with u = 4 low bits from ql
// and 2 high bits from qh (0..63). sum sc * (u - 32) * y = sc * (u . y) - 32 * sc * bsum: the dot runs
// on the unsigned u and the offset's part is one multiply-add of the scales with bsums.
float vec_dot_q6_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = load128(w[i].scales);
        const __m256i scales2 = _mm256_broadcastsi128_si256(sc8);
        const int8_t* y = x[i].qs;
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {  // weights 128h + 32k + l, k = 0..3
            const __m256i ql0 = load256(w[i].ql + 64 * h);
            const __m256i ql1 = load256(w[i].ql + 64 * h + 32);
            const __m256i qh = load256(w[i].qh + 32 * h);
            const __m256i u0 = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2));
            const __m256i u1 = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2));
            const __m256i u2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2));
            const __m256i u3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2));
            const __m256i p0 = _mm256_madd_epi16(pairs_u8_i8(u0, load256(y + 128 * h)), scale_pair(scales2, 8 * h));
            const __m256i p1 = _mm256_madd_epi16(pairs_u8_i8(u1, load256(y + 128 * h + 32)), scale_pair(scales2, 8 * h + 2));
            const __m256i p2 = _mm256_madd_epi16(pairs_u8_i8(u2, load256(y + 128 * h + 64)), scale_pair(scales2, 8 * h + 4));
            const __m256i p3 = _mm256_madd_epi16(pairs_u8_i8(u3, load256(y + 128 * h + 96)), scale_pair(scales2, 8 * h + 6));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
        }
        const int32_t offset = hsum_i32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(x[i].bsums)));
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, hsum_i32(acc) - 32 * offset, 0);
    }
    return sum;
}

// ---- Q3_K. Sixteen 16-sub-blocks with 6-bit scales (offset 32) packed in 12 bytes; levels
// low - 4 * !hbit = u - 4 with u = low | hbit << 2 (0..7): the dot runs on the unsigned u and the
// offset's part is sum sc * 4 * bsum, as for Q6_K.
// The scales unpacked in vector registers: scale j's low 4 bits are nibble j / 8 of byte j % 8, its
// high 2 bits are bits 2 (j / 4) .. of byte 8 + j % 4 (dword j / 4 of four copies of bytes 8..11,
// shifted right by 2 (j / 4); the bits a 32-bit shift brings in from the next byte are masked off).
inline __m128i q3_K_scales(const uint8_t* packed) {
    const __m128i lo8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed));
    uint32_t hi;
    std::memcpy(&hi, packed + 8, 4);
    const __m128i low = _mm_and_si128(_mm_unpacklo_epi64(lo8, _mm_srli_epi16(lo8, 4)), _mm_set1_epi8(0x0f));
    const __m128i high = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(int32_t(hi)), _mm_setr_epi32(0, 2, 4, 6)),
                                       _mm_set1_epi8(0x03));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(high, 4)), _mm_set1_epi8(32));
}

// Weights 128h + 32k + l (sub-blocks 8h + 2k, 8h + 2k + 1), their scale-weighted pair sums.
template <int h, int k>
inline __m256i q3_K_run(__m256i q2, __m256i hm, const int8_t* y, __m256i scales2) {
    const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * k), _mm256_set1_epi8(3));
    const __m256i u = _mm256_or_si256(low, bit_move<4 * h + k, 2>(hm));
    return _mm256_madd_epi16(pairs_u8_i8(u, load256(y + 128 * h + 32 * k)), scale_pair(scales2, 8 * h + 2 * k));
}

float vec_dot_q3_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i sc8 = q3_K_scales(w[i].scales);
        const __m256i scales2 = _mm256_broadcastsi128_si256(sc8);
        const __m256i hm = load256(w[i].hmask);
        const __m256i q0 = load256(w[i].qs), q1 = load256(w[i].qs + 32);
        const int8_t* y = x[i].qs;
        __m256i a = _mm256_add_epi32(q3_K_run<0, 0>(q0, hm, y, scales2), q3_K_run<0, 1>(q0, hm, y, scales2));
        __m256i b = _mm256_add_epi32(q3_K_run<0, 2>(q0, hm, y, scales2), q3_K_run<0, 3>(q0, hm, y, scales2));
        a = _mm256_add_epi32(a, _mm256_add_epi32(q3_K_run<1, 0>(q1, hm, y, scales2), q3_K_run<1, 1>(q1, hm, y, scales2)));
        b = _mm256_add_epi32(b, _mm256_add_epi32(q3_K_run<1, 2>(q1, hm, y, scales2), q3_K_run<1, 3>(q1, hm, y, scales2)));
        const int32_t offset = hsum_i32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(x[i].bsums)));
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, hsum_i32(_mm256_add_epi32(a, b)) - 4 * offset, 0);
    }
    return sum;
}

// ---- Q2_K. Sixteen 16-sub-blocks, a 4-bit scale and a 4-bit minimum per byte of scales; levels
// 0..3, bits 2k of qs[32h + l] for weight 128h + 32k + l. msum = sum_j m_j * bsums[j].
float vec_dot_q2_K(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const __m128i packed = load128(w[i].scales);
        const __m256i scales2 = _mm256_broadcastsi128_si256(_mm_and_si128(packed, m4));
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
        const int32_t msum = hsum_i32(_mm256_madd_epi16(mins, load256(x[i].bsums)));
        const int8_t* y = x[i].qs;
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q2 = load256(w[i].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * k), m3);
                const __m256i p = pairs_u8_i8(q, load256(y + 128 * h + 32 * k));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scale_pair(scales2, 8 * h + 2 * k)));
            }
        }
        sum += ref::k_superblock_term(half_to_float(w[i].d), half_to_float(w[i].dmin), x[i].d, hsum_i32(acc), msum);
    }
    return sum;
}

// ---- IQ4_XS. Eight 32-sub-blocks of IQ4_NL levels (table lookup) with 6-bit scales (offset 32):
// low 4 bits in the nibbles of scales_l, high 2 in scales_h.
float vec_dot_iq4_xs(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    const __m256i table = iq4_table();
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        uint32_t sl;
        std::memcpy(&sl, w[i].scales_l, 4);
        const uint32_t sh = w[i].scales_h;
        const int8_t* y = x[i].qs;
        __m256i acc = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            const int sc = int(((sl >> (4 * j)) & 0x0f) | (((sh >> (2 * j)) & 3) << 4)) - 32;
            const __m256i q = _mm256_shuffle_epi8(table, unpack_nibbles(w[i].qs + 16 * j));
            const __m256i p = pairs_i8_i8(q, load256(y + 32 * j));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(int16_t(sc))));
        }
        sum += ref::k_superblock_term(half_to_float(w[i].d), 0.0f, x[i].d, hsum_i32(acc), 0);
    }
    return sum;
}

}  // namespace

void add_avx2_kquant_kernels(Kernels& k) {
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
void add_avx2_kquant_kernels(Kernels&) {}
}  // namespace pe
#endif
