// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c and called only when CPUID reports
// them. Everything lives in an anonymous namespace: no function of this unit, compiled with these
// flags, can be picked by the linker for code that runs on a CPU without them.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <type_traits>

#include "../quant/fp16.h"
#include "avx2_common.h"
#include "avx2_packed.h"  // the packed kernels: pack, packed_dot, packed_dot_pair

namespace pe {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Sum of products of signed bytes, as 8 int32 lanes. x may hold -128 (weights from a file); y comes
// from our own activation quantizer, so |y| <= 127 and the sign trick cannot overflow.
inline __m256i dot_i8(__m256i x, __m256i y) {
    const __m256i ax = _mm256_sign_epi8(x, x);
    const __m256i sy = _mm256_sign_epi8(y, x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

// Unsigned bytes (0..15) times signed bytes, as 8 int32 lanes.
inline __m256i dot_u8_i8(__m256i u, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
}

float vec_dot_q4_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        const __m256i q = _mm256_sub_epi8(unpack_nibbles(w[i].qs), _mm256_set1_epi8(8));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs));
        const __m256 d = _mm256_set1_ps(half_to_float(w[i].d) * half_to_float(x[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(q, y)), acc);
    }
    return hsum(acc);
}

float vec_dot_q4_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        const __m256i q = unpack_nibbles(w[i].qs);
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs));
        const __m256 d = _mm256_set1_ps(half_to_float(w[i].d) * half_to_float(x[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_u8_i8(q, y)), acc);
        mins += half_to_float(w[i].m) * half_to_float(x[i].s);
    }
    return hsum(acc) + mins;
}

// kTileRows x kTileTokens outputs of a signed-byte weight format (Q4_0, Q8_0): per output exactly the
// operations of vec_dot_*_q8_0 above, in the same order, so the results are bit-identical to it.
template <typename Block, typename Unpack>
inline void tile_i8(int n, const void* vw, size_t w_stride, const void* vx, size_t x_stride, float* y,
                    size_t y_stride, Unpack unpack) {
    const auto* wb = static_cast<const uint8_t*>(vw);
    const auto* xb = static_cast<const uint8_t*>(vx);
    __m256 acc[kTileRows][kTileTokens];
    for (int r = 0; r < kTileRows; r++)
        for (int c = 0; c < kTileTokens; c++) acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        __m256i yv[kTileTokens];
        float dx[kTileTokens];
        for (int c = 0; c < kTileTokens; c++) {
            const auto* x = reinterpret_cast<const block_q8_0*>(xb + c * x_stride) + i;
            yv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs));
            dx[c] = half_to_float(x->d);
        }
        for (int r = 0; r < kTileRows; r++) {
            const Block* w = reinterpret_cast<const Block*>(wb + r * w_stride) + i;
            const __m256i q = unpack(*w);
            const __m256i aq = _mm256_sign_epi8(q, q);
            const float dw = half_to_float(w->d);
            for (int c = 0; c < kTileTokens; c++) {
                const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(yv[c], q)),
                                                      _mm256_set1_epi16(1));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[c]), _mm256_cvtepi32_ps(dot), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < kTileRows; r++)
        for (int c = 0; c < kTileTokens; c++) y[c * y_stride + r] = hsum(acc[r][c]);
}

void tile_q4_0_q8_0(int n, const void* w, size_t w_stride, const void* x, size_t x_stride, float* y, size_t y_stride) {
    tile_i8<block_q4_0>(n, w, w_stride, x, x_stride, y, y_stride, [](const block_q4_0& b) {
        return _mm256_sub_epi8(unpack_nibbles(b.qs), _mm256_set1_epi8(8));
    });
}

void tile_q8_0_q8_0(int n, const void* w, size_t w_stride, const void* x, size_t x_stride, float* y, size_t y_stride) {
    tile_i8<block_q8_0>(n, w, w_stride, x, x_stride, y, y_stride, [](const block_q8_0& b) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
    });
}

// The Q4_1 tile: vec_dot_q4_1_q8_1's operations per output, in its order (integer dot of unsigned
// nibbles, the scale's multiply-add into 8 lanes, the minimum's term summed apart and added last).
void tile_q4_1_q8_1(int n, const void* vw, size_t w_stride, const void* vx, size_t x_stride, float* y,
                    size_t y_stride) {
    const auto* wb = static_cast<const uint8_t*>(vw);
    const auto* xb = static_cast<const uint8_t*>(vx);
    __m256 acc[kTileRows][kTileTokens];
    float mins[kTileRows][kTileTokens];
    for (int r = 0; r < kTileRows; r++)
        for (int c = 0; c < kTileTokens; c++) {
            acc[r][c] = _mm256_setzero_ps();
            mins[r][c] = 0.0f;
        }
    for (int i = 0; i < n / QK; i++) {
        __m256i yv[kTileTokens];
        float dx[kTileTokens], sx[kTileTokens];
        for (int c = 0; c < kTileTokens; c++) {
            const auto* x = reinterpret_cast<const block_q8_1*>(xb + c * x_stride) + i;
            yv[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x->qs));
            dx[c] = half_to_float(x->d);
            sx[c] = half_to_float(x->s);
        }
        for (int r = 0; r < kTileRows; r++) {
            const auto* w = reinterpret_cast<const block_q4_1*>(wb + r * w_stride) + i;
            const __m256i q = unpack_nibbles(w->qs);
            const float dw = half_to_float(w->d), mw = half_to_float(w->m);
            for (int c = 0; c < kTileTokens; c++) {
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx[c]), _mm256_cvtepi32_ps(dot_u8_i8(q, yv[c])),
                                            acc[r][c]);
                mins[r][c] += mw * sx[c];
            }
        }
    }
    for (int r = 0; r < kTileRows; r++)
        for (int c = 0; c < kTileTokens; c++) y[c * y_stride + r] = hsum(acc[r][c]) + mins[r][c];
}


float vec_dot_q8_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i].qs));
        const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i].qs));
        const __m256 d = _mm256_set1_ps(half_to_float(w[i].d) * half_to_float(x[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8(q, y)), acc);
    }
    return hsum(acc);
}

// NF4: pshufb looks the 16 int8 levels up by nibble (the table in both 128-bit lanes), then the
// levels (|level| <= 127) and the activations take the signed int8 dot above. One 64-block is two
// 32-halves, the low nibbles against activation block x[0] and the high ones against x[1], each
// scaled by fl(d * d_x) as the reference does; the halves go to separate accumulators.
inline __m256i nf4_levels(__m256i nibbles) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNF4Levels)));
    return _mm256_shuffle_epi8(table, nibbles);
}

inline void nf4_block_dot(const uint8_t* qs, float d, const block_q8_0* x, __m256* acc0, __m256* acc1) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m256i mask = _mm256_set1_epi8(0x0f);
    const __m256i w0 = nf4_levels(_mm256_and_si256(packed, mask));
    const __m256i w1 = nf4_levels(_mm256_and_si256(_mm256_srli_epi16(packed, 4), mask));
    const __m256i y0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[0].qs));
    const __m256i y1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[1].qs));
    *acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * half_to_float(x[0].d)), _mm256_cvtepi32_ps(dot_i8(w0, y0)), *acc0);
    *acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * half_to_float(x[1].d)), _mm256_cvtepi32_ps(dot_i8(w1, y1)), *acc1);
}

float vec_dot_nf4_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_nf4*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int i = 0; i < n / QK_NF4; i++) nf4_block_dot(w[i].qs, half_to_float(w[i].d), x + 2 * i, &acc0, &acc1);
    return hsum(_mm256_add_ps(acc0, acc1));
}

float vec_dot_nf4_dq_q8_0(int n, const void* vw, const void* vx) {
    constexpr int kBlocks = QK_NF4_DQ / QK_NF4;
    const auto* w = static_cast<const block_nf4_dq*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int i = 0; i < n / QK_NF4_DQ; i++) {
        const float D = half_to_float(w[i].d);
        for (int b = 0; b < kBlocks; b++)
            nf4_block_dot(w[i].qs[b], nf4_dq_block_scale(D, w[i].scales[b]), x + 2 * (kBlocks * i + b), &acc0, &acc1);
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

// Float dots: four independent 8-lane accumulators over 32 values, 8 at a time after that; the
// caller adds the last n % 8 in order.
template <typename Load>
inline float dot_f32_lanes(int n, const float* x, Load load_w) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(load_w(i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(load_w(i + 8), _mm256_loadu_ps(x + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(load_w(i + 16), _mm256_loadu_ps(x + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(load_w(i + 24), _mm256_loadu_ps(x + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(load_w(i), _mm256_loadu_ps(x + i), acc0);
    return hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
}

float vec_dot_f32_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const float*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(n, x, [w](int i) { return _mm256_loadu_ps(w + i); });
    for (int i = n & ~7; i < n; i++) sum += w[i] * x[i];
    return sum;
}

float vec_dot_f16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(
        n, x, [w](int i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))); });
    for (int i = n & ~7; i < n; i++) sum += half_to_float(w[i]) * x[i];
    return sum;
}

float vec_dot_bf16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = dot_f32_lanes(
        n, x,
        [w](int i) {
            const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        });
    for (int i = n & ~7; i < n; i++) sum += bf16_to_fp32(w[i]) * x[i];
    return sum;
}

// roundf on 8 lanes: half away from zero, exactly as the reference (trunc, then +-1 when the dropped
// fraction is at least one half; v - trunc(v) is exact in float).
inline __m256 round_half_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(v, t));
    const __m256 away = _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                      _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign_mask)));
    return _mm256_add_ps(t, away);
}

// Quantizes one 32-block to int8 (32 bytes at qs); returns the scale d; *isum gets sum(qs).
inline float quantize_block_q8(const float* x, int8_t* qs, int* isum) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v[k], vid)));
    // Pack 32 int32 -> 32 int8; packs works per 128-bit lane, so restore the order afterwards.
    const __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i q8 = _mm256_packs_epi16(q01, q23);
    q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), q8);
    if (isum) {
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        *isum = _mm_cvtsi128_si32(s4);
    }
    return d;
}

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

// y += a * x: 8 lanes at a time, then the tail in order. Each y[i] gets one rounding of a * x[i]
// (fused into the add), whatever n is.
void axpy_f32(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const float*>(vx);
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = std::fma(a, x[i], y[i]);
}

void axpy_f16(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const uint16_t*>(vx);
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xf, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] = std::fma(a, half_to_float(x[i]), y[i]);
}

// exp(x) for x <= 0 on 8 lanes (softmax after taking the maximum out): Cody-Waite reduction to
// r = x - n ln2 with |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r (max error ~1 ulp), times
// 2^n built in the exponent bits. Below -87 (2^n would leave the normal range) the result is 0.
inline __m256 exp_nonpositive(__m256 x) {
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 result = _mm256_mul_ps(e, _mm256_castsi256_ps(pow2n));
    return _mm256_and_ps(result, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
}

// Attention for head dimensions that are a multiple of 32 (others take the reference), with the
// same structure and the same operations per output whatever n_q is:
// - scores: key rows converted to float 4 at a time; each dot one 8-lane fused multiply-add chain
//   over the row, then hsum, times scale;
// - softmax: the maximum, exp_nonpositive(s - max), the sum in two 4-lane double accumulators over
//   8-position steps (padded with zeros at the end), weights s * float(1 / sum);
// - values: per 16-value chunk of the head, out = fma(weight_p, V_p, out) for p = 0, 1, ... with up to 4 heads'
//   accumulators in registers.
template <int NJ, typename Convert>
void accumulate_values(int64_t n_pos, const uint8_t* values, size_t kv_stride, int c0, const float* w, size_t w_stride,
                       float* out, int hd, Convert convert16) {
    __m256 o[NJ][2];
    for (int j = 0; j < NJ; j++) o[j][0] = o[j][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < n_pos; p++) {
        __m256 v[2];
        convert16(values + size_t(p) * kv_stride, c0, v);
        for (int j = 0; j < NJ; j++) {
            const __m256 a = _mm256_broadcast_ss(w + size_t(j) * w_stride + size_t(p));
            o[j][0] = _mm256_fmadd_ps(a, v[0], o[j][0]);
            o[j][1] = _mm256_fmadd_ps(a, v[1], o[j][1]);
        }
    }
    for (int j = 0; j < NJ; j++)
        for (int k = 0; k < 2; k++) _mm256_storeu_ps(out + size_t(j) * size_t(hd) + c0 + 8 * k, o[j][k]);
}

// convert(row, c0, n, v): values c0 .. c0 + 8n - 1 of a cache row as n float vectors; head_bytes: the
// bytes of the head in a row.
//
// One head's rows are kv_stride apart (all KV heads of a position share a row), a stream the hardware
// prefetchers follow poorly: deep in a context the first load of every key row waited on memory
// (SmolLM2 at depth 4096 read its cache at ~2 GB/s on one thread). So the keys and values
// kPrefetchAhead positions ahead are requested while the scores are computed, and the values phase
// finds its rows in the cache too: SmolLM2 Q4_0 generating at depth 4096 went from 16 to 25 tokens/s
// on one thread, 31 to 43 on two (a tg loop, the two builds run back to back).
constexpr int64_t kPrefetchAhead = 16;

template <typename Convert>
void attend_rows(int hd, int n_q, const float* q, const uint8_t* keys, const uint8_t* values, size_t kv_stride,
                 int64_t n_pos, float scale, float* scores, float* out, float* max_out, double* sum_out,
                 Convert convert, size_t head_bytes) {
    alignas(32) float kbuf[4][512];
    auto prefetch_rows = [&](int64_t p) {  // positions p .. p + 3, those that exist
        for (int64_t k = p; k < std::min(p + 4, n_pos); k++) {
            const char* key = reinterpret_cast<const char*>(keys + size_t(k) * kv_stride);
            const char* value = reinterpret_cast<const char*>(values + size_t(k) * kv_stride);
            for (size_t b = 0; b < head_bytes; b += 64) {
                prefetch_line(key + b);
                prefetch_line(value + b);
            }
            prefetch_line(key + head_bytes - 1);  // the last line, where the head does not start on one
            prefetch_line(value + head_bytes - 1);
        }
    };
    for (int64_t p = 0; p < std::min(kPrefetchAhead, n_pos); p += 4) prefetch_rows(p);
    auto dot = [hd](const float* k, const float* qj) {
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < hd; i += 8) acc = _mm256_fmadd_ps(_mm256_load_ps(k + i), _mm256_loadu_ps(qj + i), acc);
        return acc;
    };
    for (int64_t p0 = 0; p0 < n_pos; p0 += 4) {
        const int np = int(std::min<int64_t>(4, n_pos - p0));
        if (p0 + kPrefetchAhead < n_pos) prefetch_rows(p0 + kPrefetchAhead);
        for (int k = 0; k < np; k++)
            for (int c0 = 0; c0 < hd; c0 += 32) {
                __m256 v[4];
                convert(keys + size_t(p0 + k) * kv_stride, c0, 4, v);
                for (int m = 0; m < 4; m++) _mm256_store_ps(kbuf[k] + c0 + 8 * m, v[m]);
            }
        for (int j = 0; j < n_q; j++) {
            const float* qj = q + size_t(j) * size_t(hd);
            float* s = scores + size_t(j) * size_t(n_pos) + size_t(p0);
            if (np == 4) {  // four independent chains in flight
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int i = 0; i < hd; i += 8) {
                    const __m256 qv = _mm256_loadu_ps(qj + i);
                    for (int k = 0; k < 4; k++) acc[k] = _mm256_fmadd_ps(_mm256_load_ps(kbuf[k] + i), qv, acc[k]);
                }
                for (int k = 0; k < 4; k++) s[k] = hsum(acc[k]) * scale;
            } else {
                for (int k = 0; k < np; k++) s[k] = hsum(dot(kbuf[k], qj)) * scale;
            }
        }
    }
    for (int j = 0; j < n_q; j++) {
        float* s = scores + size_t(j) * size_t(n_pos);
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        int64_t p = 0;
        for (; p + 8 <= n_pos; p += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + p));
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, vmax);
        float max_score = lanes[0];
        for (int l = 1; l < 8; l++) max_score = std::max(max_score, lanes[l]);
        for (; p < n_pos; p++) max_score = std::max(max_score, s[p]);
        const __m256 vm = _mm256_set1_ps(max_score);
        __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
        for (p = 0; p < n_pos; p += 8) {
            const int n = int(std::min<int64_t>(8, n_pos - p));
            alignas(32) float buf[8];
            for (int l = 0; l < 8; l++) buf[l] = l < n ? s[p + l] : -INFINITY;  // exp(-inf) = 0
            const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(buf), vm));
            _mm256_store_ps(buf, e);
            for (int l = 0; l < n; l++) s[p + l] = buf[l];
            sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        alignas(32) double parts[8];
        _mm256_store_pd(parts, sum_lo);
        _mm256_store_pd(parts + 4, sum_hi);
        double sum = 0.0;
        for (double part : parts) sum += part;
        max_out[j] = max_score;
        sum_out[j] = sum;
        const __m256 inv = _mm256_set1_ps(float(1.0 / sum));
        for (p = 0; p + 8 <= n_pos; p += 8) _mm256_storeu_ps(s + p, _mm256_mul_ps(_mm256_loadu_ps(s + p), inv));
        for (; p < n_pos; p++) s[p] *= float(1.0 / sum);
    }
    for (int c0 = 0; c0 < hd; c0 += 16) {
        const auto convert16 = [&](const uint8_t* row, int c, __m256* v) { convert(row, c, 2, v); };
        for (int j = 0; j < n_q; j += 4) {
            const float* w = scores + size_t(j) * size_t(n_pos);
            float* o = out + size_t(j) * size_t(hd);
            switch (std::min(4, n_q - j)) {
                case 1: accumulate_values<1>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert16); break;
                case 2: accumulate_values<2>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert16); break;
                case 3: accumulate_values<3>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert16); break;
                default: accumulate_values<4>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert16); break;
            }
        }
    }
}

// The cache types' rows for attend_rows: values c0 .. c0 + 8n - 1 of a row as n float vectors.
struct F32Rows {
    static size_t bytes(int hd) { return 4 * size_t(hd); }
    void operator()(const uint8_t* row, int c0, int n, __m256* v) const {
        const auto* f = reinterpret_cast<const float*>(row) + c0;
        for (int k = 0; k < n; k++) v[k] = _mm256_loadu_ps(f + 8 * k);
    }
};

struct F16Rows {
    static size_t bytes(int hd) { return 2 * size_t(hd); }
    void operator()(const uint8_t* row, int c0, int n, __m256* v) const {
        const auto* h = reinterpret_cast<const __m128i*>(row + 2 * size_t(c0));
        for (int k = 0; k < n; k++) v[k] = _mm256_cvtph_ps(_mm_loadu_si128(h + k));
    }
};

// d * float(q), within one block: attend_rows asks for 32 values from a multiple of 32, or 16 from a
// multiple of 16.
struct Q8_0Rows {
    static size_t bytes(int hd) { return size_t(hd / QK) * sizeof(block_q8_0); }
    void operator()(const uint8_t* row, int c0, int n, __m256* v) const {
        const auto& block = reinterpret_cast<const block_q8_0*>(row)[c0 / QK];
        const __m256 d = _mm256_set1_ps(half_to_float(block.d));
        for (int k = 0; k < n; k++) {
            int64_t bytes;
            std::memcpy(&bytes, block.qs + c0 % QK + 8 * k, 8);
            v[k] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes))));
        }
    }
};

// attend_rows over a cache of Rows, for head dimensions it takes; the reference for the others.
template <attend_fn Reference, typename Rows>
void attend_cache(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                  int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum) {
    if (hd % 32 != 0 || hd > 512)
        return Reference(hd, n_q, q, keys, values, kv_stride, n_pos, scale, scores, out, max, sum);
    attend_rows(hd, n_q, q, static_cast<const uint8_t*>(keys), static_cast<const uint8_t*>(values), kv_stride, n_pos,
                scale, scores, out, max, sum, Rows{}, Rows::bytes(hd));
}

// maddubs (32 u8 x s8 products, summed in pairs) on 10 independent chains: the packed kernels'
// multiply-add at its peak rate, no loads. Products per second of the CPU time the loop took (so
// that other load on the machine does not count).
double int8_peak(int64_t iterations) {
    const __m256i b = _mm256_set1_epi8(1);
    __m256i a0 = _mm256_set1_epi8(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
    const std::clock_t t0 = std::clock();
    for (int64_t n = 0; n < iterations; n++) {
        a0 = _mm256_maddubs_epi16(a0, b);
        a1 = _mm256_maddubs_epi16(a1, b);
        a2 = _mm256_maddubs_epi16(a2, b);
        a3 = _mm256_maddubs_epi16(a3, b);
        a4 = _mm256_maddubs_epi16(a4, b);
        a5 = _mm256_maddubs_epi16(a5, b);
        a6 = _mm256_maddubs_epi16(a6, b);
        a7 = _mm256_maddubs_epi16(a7, b);
        a8 = _mm256_maddubs_epi16(a8, b);
        a9 = _mm256_maddubs_epi16(a9, b);
        // the chains stay in registers, and the loop is not folded away
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6), "+x"(a7), "+x"(a8),
                         "+x"(a9));
    }
    const double seconds = double(std::clock() - t0) / CLOCKS_PER_SEC;
    return 10.0 * 32.0 * double(iterations) / seconds;
}

}  // namespace

const Kernels* kernels_avx2() {
    static const Kernels table = [] {
        Kernels k = *kernels_scalar();
        k.isa = "avx2";
        k.vec_dot[TYPE_Q4_0] = vec_dot_q4_0_q8_0;
        k.vec_dot[TYPE_Q4_1] = vec_dot_q4_1_q8_1;
        k.vec_dot[TYPE_Q8_0] = vec_dot_q8_0_q8_0;
        k.vec_dot_tile[TYPE_Q4_0] = tile_q4_0_q8_0;
        k.vec_dot_tile[TYPE_Q8_0] = tile_q8_0_q8_0;
        k.vec_dot_tile[TYPE_Q4_1] = tile_q4_1_q8_1;
        add_packed_kernels(k);
        k.vec_dot[TYPE_NF4] = vec_dot_nf4_q8_0;
        k.vec_dot[TYPE_NF4_DQ] = vec_dot_nf4_dq_q8_0;
        k.vec_dot[TYPE_F32] = vec_dot_f32_f32;
        k.vec_dot[TYPE_F16] = vec_dot_f16_f32;
        k.vec_dot[TYPE_BF16] = vec_dot_bf16_f32;
        k.from_float[TYPE_Q8_0] = quantize_row_q8_0;
        k.from_float[TYPE_Q8_1] = quantize_row_q8_1;
        k.axpy[TYPE_F32] = axpy_f32;
        k.axpy[TYPE_F16] = axpy_f16;
        k.attend[TYPE_F32] = attend_cache<ref::attend_f32, F32Rows>;
        k.attend[TYPE_F16] = attend_cache<ref::attend_f16, F16Rows>;
        k.attend[TYPE_Q8_0] = attend_cache<ref::attend_q8_0, Q8_0Rows>;
        k.int8_peak = int8_peak;
        add_avx2_kquant_kernels(k);
        return k;
    }();
    return &table;
}

}  // namespace pe

#else
namespace pe {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace pe
#endif
