// Scalar reference quantizers of Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL and IQ4_XS: llama.cpp's exact bytes.
//
// What llama-quantize writes is what ggml_quantize_chunk runs: without an importance matrix the K-quants
// and Q5_0 / Q5_1 take the quantize_row_*_ref path of ggml-quants.c, and IQ4_NL / IQ4_XS take the
// scale search of quantize_iq4_nl / quantize_iq4_xs (ntry = 7, not quantize_row_iq4_nl_ref's -1); with
// one, every type takes its quantize_row_*_impl path. Each search below is the same float32 arithmetic
// as ggml's, operation for operation and in the same order (this file is built without contraction
// into fused multiply-adds), because its comparisons of errors pick the levels, and a difference in
// the last bit of a sum can pick another scale. The names of ggml's helpers are given where each
// search is defined, to read them side by side.
//
// The bytes are checked against llama.cpp's own library on adversarial rows (tests/test_quants_k.py).
#include "quantizers.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "blocks.h"
#include "fp16.h"

namespace pe {
namespace ref {

namespace {

// A group whose largest magnitude is below this is all zero (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round half to even through the float adder: adding 1.5 * 2^23 leaves the integer in the low
// mantissa bits (ggml's nearest_int). Exact for |v| < 2^22; above that, and for inf and NaN, it gives
// ggml's meaningless but deterministic integer, which a few searches on extreme rows do reach.
inline int nearest_int(float v) {
    const float shifted = v + 12582912.0f;
    int32_t bits;
    std::memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

// C's (int8_t) / (uint8_t) cast of a float as llama.cpp's x86-64 build performs it: cvttss2si to 32
// bits, then the low byte. NaN and values out of the int32 range give INT32_MIN; C++ leaves them
// undefined (and arm64 saturates instead), while Q5_0 and Q5_1 meet them when 1 / d overflows.
inline int32_t trunc_to_int32_x86(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) return INT32_MIN;
    return int32_t(v);
}

inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// Four floats and four int32s (GCC's and Clang's vector extensions: each operation lane by lane).
using F32x4 = float __attribute__((vector_size(16)));
using I32x4 = int32_t __attribute__((vector_size(16)));

// clamp_int(nearest_int(v), lo, hi) of each lane, as a float.
inline F32x4 clamped_levels(F32x4 v, int lo, int hi) {
    const F32x4 shifted = v + 12582912.0f;
    I32x4 l;
    std::memcpy(&l, &shifted, sizeof l);
    l = (l & 0x007fffff) - 0x00400000;
    const I32x4 below = l < lo, above = l > hi;
    l = (below & lo) | (~below & ((above & hi) | (~above & l)));
    return __builtin_convertvector(l, F32x4);
}

// |v| of each lane (the sign bit cleared, as std::fabs).
inline F32x4 abs_lanes(F32x4 v) {
    I32x4 bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0x7fffffff;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// ggml's MAX(a, b) for floats: b when a > b fails, so a NaN in b wins, unlike std::max.
inline float max_like_ggml(float a, float b) { return a > b ? a : b; }

// The index of the level of the ascending table nearest to v; a tie goes to the upper level (ggml's
// best_index_int8, a bisection). Inside the table's range that bisection ends at the first level above
// v, which is the count of levels at or below v: counted here without branches (IQ4_NL and IQ4_XS
// search 15 scales a block, and the bisection's unpredictable branches took most of the time). NaN is
// outside every comparison, and the bisection's answer for it is the last level.
template <int N>
int nearest_level(const int8_t* levels, float v) {
    if (v <= levels[0]) return 0;
    if (v >= levels[N - 1] || v != v) return N - 1;
    int hi = 0;
    for (int k = 0; k < N; k++) hi += float(levels[k]) <= v;
    return v - levels[hi - 1] < levels[hi] - v ? hi - 1 : hi;
}

// float(levels[nearest_level<16>(levels, v)]) of each lane: the same count and comparison, lane by lane.
inline F32x4 nearest_levels(const int8_t* levels, F32x4 v) {
    I32x4 hi{};
    for (int k = 0; k < 16; k++) hi -= float(levels[k]) <= v;  // a true comparison is -1
    F32x4 lower, upper;
    for (int lane = 0; lane < 4; lane++) {
        const int h = std::min(std::max(int(hi[lane]), 1), 15);  // lanes outside the table: any pair
        lower[lane] = levels[h - 1];
        upper[lane] = levels[h];
    }
    const I32x4 below = v <= float(levels[0]), above = ~(v < float(levels[15]));  // NaN: above
    const I32x4 pick_lower = (v - lower) < (upper - v);
    F32x4 q;
    for (int lane = 0; lane < 4; lane++)
        q[lane] = below[lane] ? levels[0] : above[lane] ? levels[15] : pick_lower[lane] ? lower[lane] : upper[lane];
    return q;
}

// The value of largest magnitude, the first such with its sign (ties between +a and -a go to the
// earlier one), and that magnitude.
inline float signed_absmax(int n, const float* x, float* amax_out) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = std::fabs(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

// Symmetric grid -nmax..nmax-1 (ggml's make_qx_quants with rmse_type 1). The first scale maps the
// value of largest magnitude to -nmax, using the grid's one extra negative level; 18 scales around it
// (nmax +- 0.1 k, k = 1..9) are tried and the one whose least-squares fit has the least weighted error
// kept: maximising sumlx^2 / suml2 is minimising that error. Weights: w, or x^2 when w is null.
// L gets the levels plus nmax; returns the least-squares scale of the levels kept.
float fit_symmetric(int n, int nmax, const float* x, int8_t* L, const float* w) {
    float amax;
    const float max = signed_absmax(n, x, &amax);
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    // The 19 scales' sums are independent until they are compared: each sum runs over i in ggml's
    // order, the scales side by side in vectors of 4 (GCC's and Clang's vector extensions: the same
    // IEEE operations lane by lane; the compiler did not vectorise the loop by itself), 2.5x faster
    // than one scale at a time, whose chains of dependent additions set the pace. Then the
    // comparisons, in ggml's order. Slot 19 only pads the vectors.
    constexpr int kScales = 20, kVectors = kScales / 4;
    float iscale[kScales], sumlx[kScales], suml2[kScales];
    iscale[0] = float(-nmax) / max;
    for (int k = 1; k < kScales; k++) {
        const int is = k <= 9 ? k - 10 : k - 9;  // -9 .. -1, 1 .. 10
        iscale[k] = -(float(nmax) + 0.1f * float(is)) / max;
    }
    F32x4 vscale[kVectors], vlx[kVectors], vl2[kVectors];
    for (int v = 0; v < kVectors; v++) {
        std::memcpy(&vscale[v], iscale + 4 * v, sizeof(F32x4));
        vlx[v] = vl2[v] = F32x4{};
    }
    for (int i = 0; i < n; i++) {
        const float wi = w ? w[i] : x[i] * x[i];
        const float xi = x[i], wx = wi * xi;
        for (int v = 0; v < kVectors; v++) {
            const F32x4 l = clamped_levels(vscale[v] * xi, -nmax, nmax - 1);
            vlx[v] += wx * l;
            vl2[v] += wi * l * l;
        }
    }
    std::memcpy(sumlx, vlx, sizeof sumlx);
    std::memcpy(suml2, vl2, sizeof suml2);
    float scale = suml2[0] != 0.0f ? sumlx[0] / suml2[0] : 0.0f;
    float best = scale * sumlx[0];
    int chosen = 0;
    for (int k = 1; k < kScales - 1; k++) {
        if (suml2[k] > 0.0f && sumlx[k] * sumlx[k] > best * suml2[k]) {
            scale = sumlx[k] / suml2[k];
            best = scale * sumlx[k];
            chosen = k;
        }
    }
    for (int i = 0; i < n; i++) L[i] = int8_t(nmax + clamp_int(nearest_int(iscale[chosen] * x[i]), -nmax, nmax - 1));
    return scale;
}

// Q3_K's sub-block search without an imatrix (ggml's make_q3_quants with do_rmse): levels from the
// absmax scale, then up to 5 passes of coordinate descent, each level moved to the one that the
// least-squares scale of the others asks for when that raises sumlx^2 / suml2 (weights x^2).
float fit_q3(int n, int nmax, const float* x, int8_t* L) {
    float amax;
    const float max = signed_absmax(n, x, &amax);
    if (amax < kGroupMaxEps) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    const float iscale = float(-nmax) / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = int8_t(l);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * float(l);
        suml2 += w * float(l) * float(l);
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * float(L[i]);
            if (slx > 0.0f) {
                float sl2 = suml2 - w * float(L[i]) * float(L[i]);
                const int l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (l != L[i]) {
                    slx += w * x[i] * float(l);
                    sl2 += w * float(l) * float(l);
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = int8_t(l);
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = int8_t(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Scale and minimum of a group on the grid 0..nmax, value ~ scale * l - the_min (ggml's
// make_qkx2_quants, and make_qkx3_quants, which is the same search when weights are given). The
// minimum is never above 0, so that zero stays near a level. First the min-max fit; then for
// nstep + 1 grid stretches (nmax + rmin + rdelta * k) the levels are re-chosen and scale and minimum
// refitted by weighted least squares (the minimum clamped to <= 0), and the fit with the least
// weighted error (absolute if use_mad, else squared) kept. n <= 32.
float fit_affine(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min, float rmin,
                 float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    auto error_of = [&](float diff, float w) { return w * (use_mad ? std::fabs(diff) : diff * diff); };
    float iscale = float(nmax) / (max - min);
    float scale = 1.0f / iscale;
    float best_error = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = uint8_t(clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax));
        best_error += error_of(scale * float(L[i]) + min - x[i], weights[i]);
    }
    // The stretches are tried in order, and a better fit moves `min`, on which the later stretches'
    // levels depend. Four stretches are fitted at once (vector lanes, each with the sequential search's
    // operations in its order) with the min in effect; after the first of them that improves the fit,
    // the rest are fitted again with the new min. So every stretch is fitted exactly as one at a time
    // would fit it, ~2x faster (the searches were chains of dependent additions).
    F32x4 levels[32];  // n <= 32
    for (int is = 0; is <= nstep;) {
        const int lanes = std::min(4, nstep + 1 - is);
        F32x4 stretch;
        for (int k = 0; k < 4; k++) stretch[k] = (rmin + rdelta * float(is + k) + float(nmax)) / (max - min);
        F32x4 sum_l{}, sum_l2{}, sum_xl{};
        for (int i = 0; i < n; i++) {
            const F32x4 l = clamped_levels(stretch * (x[i] - min), 0, nmax), wl = weights[i] * l;
            levels[i] = l;
            sum_l += wl;
            sum_l2 += wl * l;
            sum_xl += wl * x[i];
        }
        F32x4 this_scale{}, this_min{};
        bool fitted[4] = {};
        for (int k = 0; k < lanes; k++) {
            const float D = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
            fitted[k] = D > 0.0f;
            if (!fitted[k]) continue;
            this_scale[k] = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / D;
            this_min[k] = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / D;
            if (this_min[k] > 0.0f) {
                this_min[k] = 0.0f;
                this_scale[k] = sum_xl[k] / sum_l2[k];
            }
        }
        F32x4 error{};
        for (int i = 0; i < n; i++) {
            const F32x4 diff = this_scale * levels[i] + this_min - x[i];
            error += weights[i] * (use_mad ? abs_lanes(diff) : diff * diff);
        }
        int next = is + lanes;
        for (int k = 0; k < lanes; k++) {
            if (fitted[k] && error[k] < best_error) {
                for (int i = 0; i < n; i++) L[i] = uint8_t(levels[i][k]);
                best_error = error[k];
                scale = this_scale[k];
                min = this_min[k];
                next = is + k + 1;  // the later stretches were fitted with the old min
                break;
            }
        }
        is = next;
    }
    *the_min = -min;
    return scale;
}

// The super-block scale of nonnegative sub-block scales (or minimums) coded on 0..nmax, with the
// sub-blocks' summed importances as weights (ggml's make_qp_quants, the imatrix paths): the best of 9
// grid stretches by weighted squared error, then up to 5 passes of coordinate descent as in fit_q3.
// The codes are uint8 as in ggml: a negative level (possible only for a negative input) wraps.
float fit_scale_codes(int n, int nmax, const float* x, uint8_t* L, const float* w) {
    float max = 0.0f;
    for (int i = 0; i < n; i++) max = max_like_ggml(max, x[i]);
    if (max < kGroupMaxEps) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = float(nmax) / max;
    for (int i = 0; i < n; i++) L[i] = uint8_t(nearest_int(iscale * x[i]));
    const float scale = 1.0f / iscale;
    float best_mse = 0.0f;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * float(L[i]);
        best_mse += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
        const float scale_is = 1.0f / iscale_is;
        float mse = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale_is * x[i]);
            if (l > nmax) l = nmax;
            const float diff = x[i] - scale_is * float(l);
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        if (l > nmax) l = nmax;
        L[i] = uint8_t(l);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * float(L[i]);
            float sl2 = suml2 - w[i] * float(L[i]) * float(L[i]);
            if (slx > 0.0f && sl2 > 0.0f) {
                int l = nearest_int(x[i] * sl2 / slx);
                if (l > nmax) l = nmax;
                if (l != L[i]) {
                    slx += w[i] * x[i] * float(l);
                    sl2 += w[i] * float(l) * float(l);
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = uint8_t(l);
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Sum of x^2, in order: the imatrix paths derive sigma2 from it and scale each importance by
// sqrt(sigma2 + x^2).
float sum_of_squares(int64_t n, const float* x) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; j++) s += x[j] * x[j];
    return s;
}

// ----- Q5_0, Q5_1 -----------------------------------------------------------------------------------

// 32 five-bit levels: low nibbles as in Q4_0, fifth bits in a little-endian u32.
void pack_q5(const uint8_t* L, uint8_t* qs, uint8_t* qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; j++) {
        const uint8_t l0 = L[j], l1 = L[QK / 2 + j];
        qs[j] = uint8_t((l0 & 0x0F) | ((l1 & 0x0F) << 4));
        qh |= ((l0 & 0x10u) >> 4) << j;
        qh |= ((l1 & 0x10u) >> 4) << (j + QK / 2);
    }
    std::memcpy(qh_bytes, &qh, sizeof qh);
}

// ----- Q2_K .. Q6_K ---------------------------------------------------------------------------------

// 2-bit levels of a super-block (Q2_K's quants, Q3_K's low bits): weight 128h + 32s + j in bits
// 2s..2s+1 of qs[32h + j].
void pack_2bit(const uint8_t* L, uint8_t* qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// Q2_K's levels from the stored scales (fp16 d, dmin and 4-bit codes): the levels that the search
// chose for its unrounded scale are replaced by the nearest ones for the scale that will be read.
// A sub-block whose stored scale is 0 keeps the search's levels (they multiply 0).
void q2_K_requantize(const float* x, const block_q2_K& y, uint8_t* L) {
    const float d_all = fp16_to_fp32(y.d), m_all = fp16_to_fp32(y.dmin);
    for (int j = 0; j < QK_K / 16; j++) {
        const float d = d_all * float(y.scales[j] & 0xF);
        if (d == 0.0f) continue;
        const float m = m_all * float(y.scales[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = uint8_t(clamp_int(nearest_int((x[16 * j + i] + m) / d), 0, 3));
    }
}

void quantize_block_q2_K(const float* x, block_q2_K& y) {
    constexpr float kCodeMax = 15.0f;
    uint8_t L[QK_K];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    float max_scale = 0.0f, max_min = 0.0f;  // scales are positive (the minimum is taken out)
    for (int j = 0; j < QK_K / 16; j++) {
        for (int l = 0; l < 16; l++) weights[l] = std::fabs(x[16 * j + l]);
        scales[j] = fit_affine(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0.0f) {
        const float iscale = kCodeMax / max_scale;
        for (int j = 0; j < QK_K / 16; j++) y.scales[j] = uint8_t(nearest_int(iscale * scales[j]));
        y.d = fp32_to_fp16(max_scale / kCodeMax);
    } else {
        for (int j = 0; j < QK_K / 16; j++) y.scales[j] = 0;
        y.d = fp32_to_fp16(0.0f);
    }
    if (max_min > 0.0f) {
        const float iscale = kCodeMax / max_min;
        for (int j = 0; j < QK_K / 16; j++) y.scales[j] = uint8_t(y.scales[j] | (nearest_int(iscale * mins[j]) << 4));
        y.dmin = fp32_to_fp16(max_min / kCodeMax);
    } else {
        y.dmin = fp32_to_fp16(0.0f);
    }
    q2_K_requantize(x, y, L);
    pack_2bit(L, y.qs);
}

void quantize_block_q2_K_w(const float* x, block_q2_K& y, const float* qw) {
    uint8_t L[QK_K], Ls[QK_K / 16], Lm[QK_K / 16];
    float weight[16], sw[QK_K / 16], mins[QK_K / 16], scales[QK_K / 16];
    const float sigma2 = sum_of_squares(QK_K, x) / float(QK_K);
    for (int j = 0; j < QK_K / 16; j++) {
        for (int l = 0; l < 16; l++) weight[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
        sw[j] = 0.0f;
        for (int l = 0; l < 16; l++) sw[j] += weight[l];
        scales[j] = fit_affine(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], -0.9f, 0.05f, 36, false);
    }
    const float dm = fit_scale_codes(QK_K / 16, 15, scales, Ls, sw);
    const float mm = fit_scale_codes(QK_K / 16, 15, mins, Lm, sw);
    y.d = fp32_to_fp16(dm);
    y.dmin = fp32_to_fp16(mm);
    for (int j = 0; j < QK_K / 16; j++) y.scales[j] = uint8_t(Ls[j] | (Lm[j] << 4));
    q2_K_requantize(x, y, L);
    pack_2bit(L, y.qs);
}

// Q3_K's 16 six-bit scale codes (0..63, the scale plus 32): low nibbles in bytes 0..7 (codes 0..7 in
// the low halves, 8..15 in the high ones), the top two bits in bytes 8..11.
void q3_K_set_scale(uint8_t* scales, int j, int code) {
    if (j < 8) scales[j] = uint8_t(code & 0xF);
    else scales[j - 8] = uint8_t(scales[j - 8] | ((code & 0xF) << 4));
    scales[j % 4 + 8] = uint8_t(scales[j % 4 + 8] | ((code >> 4) << (2 * (j / 4))));
}

// Q3_K's levels from the stored scales (as q2_K_requantize), then the high bits into hmask and the
// low two into qs. L holds levels 0..7 (the signed level plus 4).
void q3_K_finish(const float* x, block_q3_K& y, int8_t* L) {
    const float d_all = fp16_to_fp32(y.d);
    for (int j = 0; j < QK_K / 16; j++) {
        int sc = j < 8 ? y.scales[j] & 0xF : y.scales[j - 8] >> 4;
        sc = (sc | (((y.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float d = d_all * float(sc);
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clamp_int(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
    }
    uint8_t low[QK_K];
    std::memset(y.hmask, 0, sizeof y.hmask);
    for (int j = 0; j < QK_K; j++) {
        low[j] = uint8_t(L[j]);
        if (L[j] > 3) {
            y.hmask[j % (QK_K / 8)] = uint8_t(y.hmask[j % (QK_K / 8)] | (1 << (j / (QK_K / 8))));
            low[j] = uint8_t(L[j] - 4);
        }
    }
    pack_2bit(low, y.qs);
}

void quantize_block_q3_K(const float* x, block_q3_K& y) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0.0f, amax = 0.0f;  // the scale of largest magnitude, with its sign
    for (int j = 0; j < QK_K / 16; j++) {
        scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
        const float a = std::fabs(scales[j]);
        if (a > amax) {
            amax = a;
            max_scale = scales[j];
        }
    }
    std::memset(y.scales, 0, sizeof y.scales);
    if (max_scale != 0.0f) {
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < QK_K / 16; j++) {
            const int8_t l = int8_t(nearest_int(iscale * scales[j]));  // wraps to int8 first, as in ggml
            q3_K_set_scale(y.scales, j, clamp_int(l, -32, 31) + 32);
        }
        y.d = fp32_to_fp16(1.0f / iscale);
    } else {
        y.d = fp32_to_fp16(0.0f);
    }
    q3_K_finish(x, y, L);
}

void quantize_block_q3_K_w(const float* x, block_q3_K& y, const float* qw) {
    int8_t L[QK_K], Ls[QK_K / 16];
    float scales[QK_K / 16], weight[16], sw[QK_K / 16];
    const float sigma2 = 2.0f * sum_of_squares(QK_K, x) / float(QK_K);
    for (int j = 0; j < QK_K / 16; j++) {
        for (int l = 0; l < 16; l++) weight[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
        float sumw = 0.0f;
        for (int l = 0; l < 16; l++) sumw += weight[l];
        sw[j] = sumw;
        scales[j] = fit_symmetric(16, 4, x + 16 * j, L + 16 * j, weight);
    }
    std::memset(y.scales, 0, sizeof y.scales);
    const float d_block = fit_symmetric(QK_K / 16, 32, scales, Ls, sw);
    for (int j = 0; j < QK_K / 16; j++) q3_K_set_scale(y.scales, j, Ls[j]);
    y.d = fp32_to_fp16(d_block);
    q3_K_finish(x, y, L);
}

// Q4_K / Q5_K's eight 6-bit scale and minimum codes in 12 bytes (the inverse of get_scale_min_k4).
void set_scale_min_k4(uint8_t* q, int j, uint8_t sc, uint8_t m) {
    if (j < 4) {
        q[j] = sc;
        q[j + 4] = m;
    } else {
        q[j + 4] = uint8_t((sc & 0xF) | ((m & 0xF) << 4));
        q[j - 4] = uint8_t(q[j - 4] | ((sc >> 4) << 6));
        q[j] = uint8_t(q[j] | ((m >> 4) << 6));
    }
}

// Levels 0..nmax of the eight 32-blocks from the stored scales (as q2_K_requantize).
void q45_K_requantize(const float* x, uint16_t d16, uint16_t dmin16, const uint8_t* scales, int nmax, uint8_t* L) {
    const float d_all = fp16_to_fp32(d16), m_all = fp16_to_fp32(dmin16);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales, &sc, &m);
        const float d = d_all * float(sc);
        if (d == 0.0f) continue;
        const float dm = m_all * float(m);
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = uint8_t(clamp_int(nearest_int((x[32 * j + i] + dm) / d), 0, nmax));
    }
}

// The unweighted Q4_K / Q5_K super-block: each 32-block fitted with weights av_x + |x| (av_x its
// RMS), then the block scales and minimums coded on 0..63 against the largest of each.
template <int kNmax>
void fit_q45_K(const float* x, uint16_t* d, uint16_t* dmin, uint8_t* scale_codes, uint8_t* L) {
    constexpr bool kQ5 = kNmax == 31;
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < QK_K / 32; j++) {
        const float* xb = x + 32 * j;
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++) sum_x2 += xb[l] * xb[l];
        const float av_x = std::sqrt(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++) weights[l] = av_x + std::fabs(xb[l]);
        scales[j] = kQ5 ? fit_affine(32, kNmax, xb, weights, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, false)
                        : fit_affine(32, kNmax, xb, weights, L + 32 * j, &mins[j], -1.0f, 0.1f, 20, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = uint8_t(nearest_int(inv_scale * scales[j]));  // wraps to uint8 first, as in ggml
        uint8_t lm = uint8_t(nearest_int(inv_min * mins[j]));
        if (ls > 63) ls = 63;
        if (lm > 63) lm = 63;
        set_scale_min_k4(scale_codes, j, ls, lm);
    }
    *d = fp32_to_fp16(max_scale / 63.0f);
    *dmin = fp32_to_fp16(max_min / 63.0f);
    q45_K_requantize(x, *d, *dmin, scale_codes, kNmax, L);
}

// The imatrix Q4_K / Q5_K super-block: weights qw * sqrt(sigma2 + x^2), a finer stretch search, and
// the block scales and minimums coded by fit_scale_codes. Only Q5_K clamps the codes to 63 (they can
// exceed it only when a code wrapped from a negative level).
template <int kNmax>
void fit_q45_K_w(const float* x, const float* qw, uint16_t* d, uint16_t* dmin, uint8_t* scale_codes, uint8_t* L) {
    constexpr bool kQ5 = kNmax == 31;
    uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
    float weights[32], sw[QK_K / 32], mins[QK_K / 32], scales[QK_K / 32];
    const float sigma2 = 2.0f * sum_of_squares(QK_K, x) / float(QK_K);
    for (int j = 0; j < QK_K / 32; j++) {
        for (int l = 0; l < 32; l++) weights[l] = qw[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
        float sumw = 0.0f;
        for (int l = 0; l < 32; l++) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = fit_affine(32, kNmax, x + 32 * j, weights, L + 32 * j, &mins[j], -0.9f, 0.05f, 36, false);
    }
    const float d_block = fit_scale_codes(QK_K / 32, 63, scales, Ls, sw);
    const float m_block = fit_scale_codes(QK_K / 32, 63, mins, Lm, sw);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (kQ5 && ls > 63) ls = 63;
        if (kQ5 && lm > 63) lm = 63;
        set_scale_min_k4(scale_codes, j, ls, lm);
    }
    *d = fp32_to_fp16(d_block);
    *dmin = fp32_to_fp16(m_block);
    q45_K_requantize(x, *d, *dmin, scale_codes, kNmax, L);
}

void pack_q4_K(const uint8_t* L, block_q4_K& y) {
    for (int j = 0; j < QK_K; j += 64)
        for (int l = 0; l < 32; l++) y.qs[j / 2 + l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
}

void pack_q5_K(const uint8_t* L, block_q5_K& y) {
    std::memset(y.qh, 0, sizeof y.qh);
    for (int n = 0, k = 0; n < QK_K; n += 64, k += 2) {  // k: the qh bit of the first 32 of these 64
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) {
                l1 -= 16;
                y.qh[j] = uint8_t(y.qh[j] | (1 << k));
            }
            if (l2 > 15) {
                l2 -= 16;
                y.qh[j] = uint8_t(y.qh[j] | (1 << (k + 1)));
            }
            y.qs[n / 2 + j] = uint8_t(l1 | (l2 << 4));
        }
    }
}

// Q6_K from the sixteen 16-block scales (fit_symmetric on -32..31): their codes are int8 against the
// scale of largest magnitude mapped to -128, then the levels re-chosen for the stored scales.
void finish_q6_K(const float* x, block_q6_K& y, const float* scales, int8_t* L) {
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int ib = 0; ib < QK_K / 16; ib++) {
        const float a = std::fabs(scales[ib]);
        if (a > max_abs_scale) {
            max_abs_scale = a;
            max_scale = scales[ib];
        }
    }
    if (max_abs_scale < kGroupMaxEps) {
        std::memset(&y, 0, sizeof y);
        return;
    }
    const float iscale = -128.0f / max_scale;
    y.d = fp32_to_fp16(1.0f / iscale);
    for (int ib = 0; ib < QK_K / 16; ib++) {
        const int code = nearest_int(iscale * scales[ib]);
        y.scales[ib] = int8_t(code < 127 ? code : 127);
    }
    const float d_all = fp16_to_fp32(y.d);
    for (int j = 0; j < QK_K / 16; j++) {
        const float d = d_all * float(y.scales[j]);
        if (d == 0.0f) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clamp_int(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
    }
    // Low nibbles: weights 128h + j and 128h + 64 + j share ql[64h + j], 128h + 32 + j and 128h + 96 + j
    // share ql[64h + 32 + j]; the top two bits of all four go into qh[32h + j].
    for (int h = 0; h < QK_K / 128; h++) {
        const int8_t* Lh = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            y.ql[64 * h + l] = uint8_t((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
            y.ql[64 * h + l + 32] = uint8_t((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
            y.qh[32 * h + l] = uint8_t((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                       ((Lh[l + 96] >> 4) << 6));
        }
    }
}

// ----- IQ4_NL, IQ4_XS -------------------------------------------------------------------------------

// One IQ4_NL block (n_blocks = 1) or IQ4_XS super-block (n_blocks = 8) of 32-blocks on the levels
// kIQ4NLValues (ggml's quantize_row_iq4_nl_impl with ntry = 7, as quantize_iq4_nl and quantize_iq4_xs
// call it). Each 32-block's scale: the one mapping its value of largest magnitude to -127, refitted by
// least squares, then 15 stretches (-127 + k, |k| <= 7) tried, keeping the best weighted fit (weights
// x^2, or qw * sqrt(sigma2 + x^2)). IQ4_NL stores the scale in fp16 but picks its levels against the
// unrounded one; IQ4_XS codes the eight scales as signed 6-bit multiples of d = -max / 32 and picks
// the levels against d * code (unrounded d, as ggml).
void quantize_iq4_block(int n_blocks, const float* x, const float* qw, uint16_t* dh, uint8_t* qs,
                        uint16_t* scales_h, uint8_t* scales_l) {
    constexpr int kTry = 7;
    const int8_t* values = kIQ4NLValues;
    const int n = 32 * n_blocks;
    uint8_t L[QK_K];
    float scales[QK_K / 32], weight[32];

    float sigma2 = 0.0f;
    for (int j = 0; j < n; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / float(n);

    std::memset(qs, 0, size_t(n / 2));
    *dh = fp32_to_fp16(0.0f);

    float max_scale = 0.0f, amax_scale = 0.0f;
    for (int ib = 0; ib < n_blocks; ib++) {
        const float* xb = x + 32 * ib;
        if (qw) {
            for (int j = 0; j < 32; j++) weight[j] = qw[32 * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
        } else {
            for (int j = 0; j < 32; j++) weight[j] = xb[j] * xb[j];
        }
        float amax;
        const float max = signed_absmax(32, xb, &amax);
        if (amax < kGroupMaxEps) {
            scales[ib] = 0.0f;  // its levels are chosen below (IQ4_XS) or against the zero scale (IQ4_NL)
            continue;
        }
        // Scale 0 maps the largest value to the lowest level, scales 1..15 are the tries: their sums are
        // independent until compared, and run side by side in vectors of 4, each in ggml's order.
        F32x4 inverse[4], sumqx[4] = {}, sumq2[4] = {};
        inverse[0][0] = 1.0f / (-max / float(values[0]));
        for (int k = 1; k < 16; k++) inverse[k / 4][k % 4] = float(k - 1 - kTry + values[0]) / max;
        for (int j = 0; j < 32; j++) {
            for (int v = 0; v < 4; v++) {
                const F32x4 q = nearest_levels(values, inverse[v] * xb[j]), wq = weight[j] * q;
                sumqx[v] += wq * xb[j];
                sumq2[v] += wq * q;
            }
        }
        float d = sumq2[0][0] > 0.0f ? sumqx[0][0] / sumq2[0][0] : 0.0f;
        float best = d * sumqx[0][0];
        for (int k = 1; k < 16; k++) {
            const float sx = sumqx[k / 4][k % 4], s2 = sumq2[k / 4][k % 4];
            if (s2 > 0.0f && sx * sx > best * s2) {
                d = sx / s2;
                best = d * sx;
            }
        }
        scales[ib] = d;
        const float abs_d = std::fabs(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if (n_blocks > 1) {
        *scales_h = 0;
        const float d = -max_scale / 32.0f;  // -0.0 for an all-zero super-block: its fp16 is 0x8000
        *dh = fp32_to_fp16(d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int ib = 0; ib < n_blocks; ib++) {
            int l = clamp_int(nearest_int(id * scales[ib]), -32, 31);
            const float dl = d * float(l);
            const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
            for (int j = 0; j < 32; j++) L[32 * ib + j] = uint8_t(nearest_level<16>(values, idl * x[32 * ib + j]));
            l += 32;
            if (ib % 2 == 0) scales_l[ib / 2] = uint8_t(l & 0xF);
            else scales_l[ib / 2] = uint8_t(scales_l[ib / 2] | ((l & 0xF) << 4));
            *scales_h = uint16_t(*scales_h | ((l >> 4) << (2 * ib)));
        }
    } else {
        *dh = fp32_to_fp16(scales[0]);
        const float id = scales[0] != 0.0f ? 1.0f / scales[0] : 0.0f;
        for (int j = 0; j < 32; j++) L[j] = uint8_t(nearest_level<16>(values, id * x[j]));
    }
    for (int i = 0; i < n_blocks; i++)
        for (int j = 0; j < 16; j++) qs[16 * i + j] = uint8_t(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

}  // namespace

// ----- the row quantizers -----------------------------------------------------------------------------

void quantize_row_q5_0(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q5_0*>(vy);
    for (int64_t ib = 0; ib < n / QK; ib++) {
        const float* xb = x + ib * QK;
        float amax = 0.0f, max = 0.0f;  // the first value of largest magnitude, with its sign
        for (int j = 0; j < QK; j++) {
            if (amax < std::fabs(xb[j])) {
                amax = std::fabs(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[ib].d = fp32_to_fp16(d);
        uint8_t L[QK];
        for (int j = 0; j < QK; j++) {
            const int q = int8_t(trunc_to_int32_x86(xb[j] * id + 16.5f));  // ggml: MIN(31, (int8_t)(x + 16.5f))
            L[j] = uint8_t(q < 31 ? q : 31);
        }
        pack_q5(L, y[ib].qs, y[ib].qh);
    }
}

void quantize_row_q5_1(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q5_1*>(vy);
    for (int64_t ib = 0; ib < n / QK; ib++) {
        const float* xb = x + ib * QK;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[ib].d = fp32_to_fp16(d);
        y[ib].m = fp32_to_fp16(min);
        uint8_t L[QK];
        for (int j = 0; j < QK; j++) L[j] = uint8_t(trunc_to_int32_x86((xb[j] - min) * id + 0.5f));  // ggml: (uint8_t)
        pack_q5(L, y[ib].qs, y[ib].qh);
    }
}

// The 32-value formats with an importance matrix (ggml's quantize_row_q{4,5}_{0,1}_impl): in each
// block, weight j is qw_j * sqrt(sigma2 + x_j^2), sigma2 the row's mean square; then the symmetric
// search on levels -nmax .. nmax - 1 (Q4_0, Q5_0) or the affine one on 0 .. nmax (Q4_1, Q5_1), and
// pack(block, L) stores the levels. Without an importance matrix these types round plainly.
namespace {

const float* block_weights(const float* x, int64_t ib, const float* qw, float sigma2, float (&weight)[QK]) {
    const float* xb = x + ib * QK;
    for (int j = 0; j < QK; j++) weight[j] = qw[ib * QK + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    return weight;
}

template <typename Block, typename Pack>
void weighted_symmetric_row(const float* x, void* vy, int64_t n, const float* qw, int nmax, Pack pack) {
    auto* y = static_cast<Block*>(vy);
    const float sigma2 = sum_of_squares(n, x) / float(n);
    for (int64_t ib = 0; ib < n / QK; ib++) {
        float weight[QK];
        int8_t L[QK];
        y[ib].d = fp32_to_fp16(fit_symmetric(QK, nmax, x + ib * QK, L, block_weights(x, ib, qw, sigma2, weight)));
        pack(y[ib], reinterpret_cast<const uint8_t*>(L));
    }
}

template <typename Block, typename Pack>
void weighted_affine_row(const float* x, void* vy, int64_t n, const float* qw, int nmax, Pack pack) {
    auto* y = static_cast<Block*>(vy);
    const float sigma2 = sum_of_squares(n, x) / float(n);
    for (int64_t ib = 0; ib < n / QK; ib++) {
        float weight[QK];
        uint8_t L[QK];
        float min;
        const float d = fit_affine(QK, nmax, x + ib * QK, block_weights(x, ib, qw, sigma2, weight), L, &min, -0.9f,
                                   0.05f, 36, false);
        y[ib].d = fp32_to_fp16(d);
        y[ib].m = fp32_to_fp16(-min);
        pack(y[ib], L);
    }
}

// Levels 0..15: weight j in the low nibble of qs[j], weight j + 16 in the high one.
template <typename Block>
void pack_q4(Block& b, const uint8_t* L) {
    for (int j = 0; j < QK / 2; j++) b.qs[j] = uint8_t(L[j] | (L[j + QK / 2] << 4));
}

template <typename Block>
void pack_q5_block(Block& b, const uint8_t* L) {
    pack_q5(L, b.qs, b.qh);
}

}  // namespace

void quantize_row_q4_0_w(const float* x, void* vy, int64_t n, const float* qw) {
    weighted_symmetric_row<block_q4_0>(x, vy, n, qw, 8, pack_q4<block_q4_0>);
}

void quantize_row_q4_1_w(const float* x, void* vy, int64_t n, const float* qw) {
    weighted_affine_row<block_q4_1>(x, vy, n, qw, 15, pack_q4<block_q4_1>);
}

void quantize_row_q5_0_w(const float* x, void* vy, int64_t n, const float* qw) {
    weighted_symmetric_row<block_q5_0>(x, vy, n, qw, 16, pack_q5_block<block_q5_0>);
}

void quantize_row_q5_1_w(const float* x, void* vy, int64_t n, const float* qw) {
    weighted_affine_row<block_q5_1>(x, vy, n, qw, 31, pack_q5_block<block_q5_1>);
}

void quantize_row_q2_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q2_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++) quantize_block_q2_K(x + i * QK_K, y[i]);
}

void quantize_row_q2_K_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_q2_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++) quantize_block_q2_K_w(x + i * QK_K, y[i], qw + i * QK_K);
}

void quantize_row_q3_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q3_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++) quantize_block_q3_K(x + i * QK_K, y[i]);
}

void quantize_row_q3_K_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_q3_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++) quantize_block_q3_K_w(x + i * QK_K, y[i], qw + i * QK_K);
}

void quantize_row_q4_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q4_K*>(vy);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        fit_q45_K<15>(x + i * QK_K, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q4_K(L, y[i]);
    }
}

void quantize_row_q4_K_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_q4_K*>(vy);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        fit_q45_K_w<15>(x + i * QK_K, qw + i * QK_K, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q4_K(L, y[i]);
    }
}

void quantize_row_q5_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q5_K*>(vy);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        fit_q45_K<31>(x + i * QK_K, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q5_K(L, y[i]);
    }
}

void quantize_row_q5_K_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_q5_K*>(vy);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; i++) {
        fit_q45_K_w<31>(x + i * QK_K, qw + i * QK_K, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q5_K(L, y[i]);
    }
}

void quantize_row_q6_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q6_K*>(vy);
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float* xs = x + i * QK_K;
        for (int ib = 0; ib < QK_K / 16; ib++) scales[ib] = fit_symmetric(16, 32, xs + 16 * ib, L + 16 * ib, nullptr);
        finish_q6_K(xs, y[i], scales, L);
    }
}

void quantize_row_q6_K_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_q6_K*>(vy);
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float* xs = x + i * QK_K;
        // The importances as they are, not scaled by sqrt(sigma2 + x^2) as in the other K-quants.
        for (int ib = 0; ib < QK_K / 16; ib++)
            scales[ib] = fit_symmetric(16, 32, xs + 16 * ib, L + 16 * ib, qw + i * QK_K + 16 * ib);
        finish_q6_K(xs, y[i], scales, L);
    }
}

void quantize_row_iq4_nl(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_iq4_nl*>(vy);
    uint16_t unused_h;
    for (int64_t ib = 0; ib < n / QK; ib++) quantize_iq4_block(1, x + ib * QK, nullptr, &y[ib].d, y[ib].qs, &unused_h, nullptr);
}

void quantize_row_iq4_nl_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_iq4_nl*>(vy);
    uint16_t unused_h;
    for (int64_t ib = 0; ib < n / QK; ib++)
        quantize_iq4_block(1, x + ib * QK, qw + ib * QK, &y[ib].d, y[ib].qs, &unused_h, nullptr);
}

void quantize_row_iq4_xs(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_iq4_xs*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++)
        quantize_iq4_block(QK_K / 32, x + i * QK_K, nullptr, &y[i].d, y[i].qs, &y[i].scales_h, y[i].scales_l);
}

void quantize_row_iq4_xs_w(const float* x, void* vy, int64_t n, const float* qw) {
    auto* y = static_cast<block_iq4_xs*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++)
        quantize_iq4_block(QK_K / 32, x + i * QK_K, qw + i * QK_K, &y[i].d, y[i].qs, &y[i].scales_h, y[i].scales_l);
}

}  // namespace ref
}  // namespace pe
