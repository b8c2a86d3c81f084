// AVX-512 kernels (F, BW, VL, VNNI). Compiled with those flags and called only when CPUID reports
// them all. The integer dots use VNNI's vpdpbusd (unsigned x signed bytes, summed into int32 lanes in
// one instruction) on two blocks per 512-bit register; anything not written here is taken from the
// AVX2 table, which every AVX-512 CPU can run.
//
// With PE_SIMDE defined, this file builds against SIMDe's portable versions of the intrinsics
// (tests/native: the kernel test checks this code on machines without AVX-512).
#include "kernels.h"

#if defined(PE_SIMDE) || defined(__x86_64__) || defined(_M_X64)
#if defined(PE_SIMDE)
#include "../tests/simde_avx512.h"
#else
#include <immintrin.h>
#endif

#include "../quant/fp16.h"

namespace pe {
namespace {

inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float hsum512(__m512 v) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return hsum256(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}

inline __m256i unpack_nibbles(const uint8_t* qs) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

inline __m512i join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

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
        const __m512i q = join(_mm256_sub_epi8(unpack_nibbles(w[i].qs), eight),
                               _mm256_sub_epi8(unpack_nibbles(w[i + 1].qs), eight));
        const __m512i y = join(load32(x[i].qs), load32(x[i + 1].qs));
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
    return hsum512(acc) + hsum256(tail);
}

float vec_dot_q4_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    const int nb = n / QK;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0.0f;
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join(unpack_nibbles(w[i].qs), unpack_nibbles(w[i + 1].qs));
        const __m512i y = join(load32(x[i].qs), load32(x[i + 1].qs));
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
    return hsum512(acc) + hsum256(tail) + mins;
}

float vec_dot_q8_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    const int nb = n / QK;
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m512i q = join(load32(w[i].qs), load32(w[i + 1].qs));
        const __m512i y = join(load32(x[i].qs), load32(x[i + 1].qs));
        const __m512 d = two_scales(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d),
                                    _cvtsh_ss(w[i + 1].d) * _cvtsh_ss(x[i + 1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8(q, y)), acc);
    }
    __m256 tail = _mm256_setzero_ps();
    if (i < nb) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d));
        tail = _mm256_mul_ps(d, _mm256_cvtepi32_ps(dot_i8_256(load32(w[i].qs), load32(x[i].qs))));
    }
    return hsum512(acc) + hsum256(tail);
}

// NF4: one 64-block fills a 512-bit register, its low nibbles (weights 0..31, against activation
// block x[0]) in the lower half and its high nibbles (32..63, against x[1]) in the upper half, so the
// two halves' int32 sums land in lanes 0..7 and 8..15 as two_scales expects. vpshufb looks the int8
// levels up by nibble (the 16-byte table in every 128-bit lane).
inline void nf4_block_dot(const uint8_t* qs, float d, const block_q8_0* x, __m512* acc) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m512i nibbles = _mm512_and_si512(join(packed, _mm256_srli_epi16(packed, 4)), _mm512_set1_epi8(0x0f));
    const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNF4Levels)));
    const __m512i q = _mm512_shuffle_epi8(table, nibbles);
    const __m512i y = join(load32(x[0].qs), load32(x[1].qs));
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
        const __m512i wide = join(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)),
                                  _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    });
    for (int i = n & ~15; i < n; i++) sum += bf16_to_fp32(w[i]) * x[i];
    return sum;
}

}  // namespace

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
#else
        Kernels k = *kernels_avx2();
        k.isa = "avx512";
        // AVX2's tiles repeat AVX2's vec_dot operations, not these: a tile must match its table's
        // vec_dot bit for bit, so none is inherited.
        for (auto& tile : k.vec_dot_tile) tile = nullptr;
#endif
        k.vec_dot[TYPE_Q4_0] = vec_dot_q4_0_q8_0;
        k.vec_dot[TYPE_Q4_1] = vec_dot_q4_1_q8_1;
        k.vec_dot[TYPE_Q8_0] = vec_dot_q8_0_q8_0;
        k.vec_dot[TYPE_NF4] = vec_dot_nf4_q8_0;
        k.vec_dot[TYPE_NF4_DQ] = vec_dot_nf4_dq_q8_0;
        k.vec_dot[TYPE_F32] = vec_dot_f32_f32;
        k.vec_dot[TYPE_F16] = vec_dot_f16_f32;
        k.vec_dot[TYPE_BF16] = vec_dot_bf16_f32;
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
