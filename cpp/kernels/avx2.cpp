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

// fp32_to_fp16 by F16C: rounds to nearest even, quiets a NaN keeping its top payload bits and
// overflows to infinity, as the reference does (the kernel test checks every encoding), in one
// instruction instead of its branches.
inline uint16_t to_fp16(float f) {
    return uint16_t(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
}

void quantize_row_q8_0(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_0*>(vy);
    for (int64_t i = 0; i < n / QK; i++) y[i].d = to_fp16(quantize_block_q8(x + i * QK, y[i].qs, nullptr));
}

void quantize_row_q8_1(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_1*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        int sum = 0;
        const float d = quantize_block_q8(x + i * QK, y[i].qs, &sum);
        y[i].d = to_fp16(d);
        y[i].s = to_fp16(float(sum) * d);
    }
}

// to_fp16's conversion, 8 at a time: the reference's bytes.
void quantize_row_f16(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<uint16_t*>(vy);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = to_fp16(x[i]);
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

// AVX2's lanes for attend_lanes.h and lane_math.h.
struct L8 {
    using V = __m256;
    static constexpr int W = 8;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float a) { return _mm256_set1_ps(a); }
    static V load(const float* p) { return _mm256_load_ps(p); }
    static V loadu(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, V v) { _mm256_store_ps(p, v); }
    static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
    static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
    static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static V pow2(V n) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    static V zero_below(V v, V x, float limit) { return _mm256_and_ps(v, _mm256_cmp_ps(x, set1(limit), _CMP_GE_OQ)); }
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static __m256i first(int m) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
    static V loadu_first(const float* p, int m) { return _mm256_maskload_ps(p, first(m)); }
    static void storeu_first(float* p, V v, int m) { _mm256_maskstore_ps(p, first(m), v); }
    static V neg_abs(V x) { return _mm256_or_ps(x, _mm256_set1_ps(-0.0f)); }
    static V select_nonneg(V x, V a, V b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ)); }
    template <bool OrEqual>
    static uint32_t past(V x, V f) {
        return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(x, f, OrEqual ? _CMP_NLT_UQ : _CMP_NLE_UQ)));
    }
    static float hmax(V v) {
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    }
    static V from_f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static V from_i8(const int8_t* p) {
        int64_t bytes;
        std::memcpy(&bytes, p, 8);
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes)));
    }
    // Eight keys one after the other, 512 floats apart; the scores one 8-lane chain per key, eight in
    // flight.
    static constexpr int kKeys = 8;
    template <typename Get>
    static void store_keys(float* kbuf, int hd, Get get) {
        for (int k = 0; k < kKeys; k++)
            for (int c0 = 0; c0 < hd; c0 += 32) {
                V v[4];
                get(k, c0, v);
                for (int m = 0; m < 4; m++) store(kbuf + 512 * k + c0 + 8 * m, v[m]);
            }
    }
    static int scores(const float* kbuf, const float* qj, int, int hd, float scale, float* s, size_t, int np) {
        V acc[kKeys];
        for (V& a : acc) a = zero();
        for (int i = 0; i < hd; i += 8) {
            const V qv = loadu(qj + i);
            for (int k = 0; k < kKeys; k++) acc[k] = fmadd(load(kbuf + 512 * k + i), qv, acc[k]);
        }
        for (int k = 0; k < np; k++) s[k] = hsum(acc[k]) * scale;
        return 1;
    }
    struct Sum {
        __m256d lo, hi;  // lanes 0-3 and 4-7
    };
    static Sum sum_zero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
    static void add_sum(Sum& sum, V e) {
        sum.lo = _mm256_add_pd(sum.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        sum.hi = _mm256_add_pd(sum.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    static void sum_lanes(const Sum& sum, double* lanes) {
        _mm256_storeu_pd(lanes, sum.lo);
        _mm256_storeu_pd(lanes + 4, sum.hi);
    }
};

}  // namespace
}  // namespace pe

#include "attend_lanes.h"

namespace pe {
namespace {

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
        k.from_float[TYPE_F16] = quantize_row_f16;
        k.axpy[TYPE_F32] = axpy_f32;
        k.axpy[TYPE_F16] = axpy_f16;
        add_attention_kernels<L8>(k);
        k.silu_mul = silu_mul<L8>;
        k.find_above = find_above<L8>;
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
