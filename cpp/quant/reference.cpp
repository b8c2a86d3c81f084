// Scalar reference for every block format: quantize, dequantize and dot products.
//
// The quantizers give llama.cpp's exact bytes (ggml-quants.c *_ref, ported to numpy in gguf.quants):
// the same float32 arithmetic in the same order, roundf (half away from zero) for Q8, truncation of
// x + 8.5 for Q4_0, and the sign convention that Q4_0's scale is max / -8 with max the value of
// largest magnitude. The dot products accumulate block by block, in order; the SIMD paths are
// tested against them. NF4 and NF4_DQ are pyengine's own formats (blocks.h): their quantizers here
// define their bytes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../kernels/attend_by_rows.h"
#include "../kernels/kernels.h"
#include "fp16.h"
#include "quantizers.h"

namespace pe {
namespace ref {

void quantize_row_q4_0(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q4_0*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        const float* xb = x + i * QK;
        float amax = 0.0f;  // magnitude of the largest value
        float max = 0.0f;   // that value, with its sign
        for (int j = 0; j < QK; j++) {
            if (amax < std::fabs(xb[j])) {
                amax = std::fabs(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = xb[j] * id;
            const float x1 = xb[QK / 2 + j] * id;
            int q0 = int(x0 + 8.5f);  // the conversion truncates (ggml's (int8_t)(x0 + 8.5f)); a call to
            int q1 = int(x1 + 8.5f);  // trunc kept GCC from vectorizing the loop
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void quantize_row_q4_1(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q4_1*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        const float* xb = x + i * QK;
        float min = xb[0];
        float max = xb[0];
        for (int j = 1; j < QK; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = int((xb[j] - min) * id + 0.5f);  // truncated by the conversion, as in q4_0
            int q1 = int((xb[QK / 2 + j] - min) * id + 0.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

// Absmax scale of one 32-block and its reciprocal, as ggml computes them. amax is never NaN, so the
// comparison is std::fmax (a NaN value leaves it), without libm's call.
static inline float absmax_scale(const float* xb, float* id) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) {
        const float a = std::fabs(xb[j]);
        amax = a > amax ? a : amax;
    }
    const float d = amax / 127;
    *id = d != 0.0f ? 1.0f / d : 0.0f;
    return d;
}

// roundf(v) (half away from zero) as an int, for |v| < 2^31 (a scaled value here is at most 127 and
// change): the truncation t, one up or down where the fraction v - t (exact) reaches a half. The same
// integer as libm's call, in operations the compiler vectorizes (roundf itself stays a call: inline,
// it could raise an inexact exception the call does not).
static inline int round_half_away(float v) {
    const int t = int(v);
    const float fraction = v - float(t);
    return t + (fraction >= 0.5f) - (fraction <= -0.5f);
}

void quantize_row_q8_0(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_0*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        float id;
        const float d = absmax_scale(x + i * QK, &id);
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = int8_t(round_half_away(x[i * QK + j] * id));
    }
}

void quantize_row_q8_1(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_1*>(vy);
    for (int64_t i = 0; i < n / QK; i++) {
        float id;
        const float d = absmax_scale(x + i * QK, &id);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = int8_t(round_half_away(x[i * QK + j] * id));
            sum += y[i].qs[j];
        }
        y[i].d = fp32_to_fp16(d);
        y[i].s = fp32_to_fp16(float(sum) * d);
    }
}

// ggml's nearest_int: float rounding to the nearest integer, ties to even, by adding 1.5 * 2^23
// (exact for |x| < 2^22, which a scaled activation always is).
static inline int nearest_int(float x) {
    const float v = x + 12582912.0f;
    int32_t i;
    std::memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

// Q8_K, the K-quants' activation format (ggml's quantize_row_q8_K_ref): the scale -max / 127 of the
// value of largest magnitude max (so that value becomes exactly -127), ties to even, and the sums
// of each 16 values.
void quantize_row_q8_K(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_q8_K*>(vy);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (std::fabs(x[j]) > amax) {
                amax = std::fabs(x[j]);
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = int16_t(sum);
        }
        y[i].d = 1 / iscale;
    }
}

// NF4: the level nearest to x on a block of scale d, argmin_i |x - d * kNF4Levels[i]| in float, the
// lower index on a tie. A zero scale (an all-zero block, or one too small for fp16) maps everything
// to the zero level, where any level would be as near.
static inline int nf4_nearest(float x, float d) {
    if (d == 0.0f) return kNF4ZeroIndex;
    int best = 0;
    float best_err = std::fabs(x - d * float(kNF4Levels[0]));
    for (int i = 1; i < 16; i++) {
        const float err = std::fabs(x - d * float(kNF4Levels[i]));
        if (err < best_err) {
            best = i;
            best_err = err;
        }
    }
    return best;
}

static inline float nf4_absmax(const float* xb) {
    float amax = 0.0f;
    for (int j = 0; j < QK_NF4; j++) amax = std::fmax(amax, std::fabs(xb[j]));
    return amax;
}

// The nibbles of one 64-block against its scale d as stored (its fp16 or double-quantized value, so
// that the rounding of the scale is part of what the nearest level is chosen against).
static void quantize_block_nf4(const float* xb, float d, uint8_t* qs) {
    for (int j = 0; j < QK_NF4 / 2; j++)
        qs[j] = uint8_t(nf4_nearest(xb[j], d) | (nf4_nearest(xb[j + QK_NF4 / 2], d) << 4));
}

void quantize_row_nf4(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<block_nf4*>(vy);
    for (int64_t i = 0; i < n / QK_NF4; i++) {
        const float* xb = x + i * QK_NF4;
        y[i].d = fp32_to_fp16(nf4_absmax(xb) / 127);
        quantize_block_nf4(xb, fp16_to_fp32(y[i].d), y[i].qs);
    }
}

void quantize_row_nf4_dq(const float* x, void* vy, int64_t n) {
    constexpr int kBlocks = QK_NF4_DQ / QK_NF4;
    auto* y = static_cast<block_nf4_dq*>(vy);
    for (int64_t i = 0; i < n / QK_NF4_DQ; i++) {
        const float* xs = x + i * QK_NF4_DQ;
        float amax[kBlocks];
        float max = 0.0f;
        for (int b = 0; b < kBlocks; b++) {
            amax[b] = nf4_absmax(xs + b * QK_NF4);
            max = std::fmax(max, amax[b]);
        }
        y[i].d = fp32_to_fp16(max / 255);
        const float D = fp16_to_fp32(y[i].d);
        for (int b = 0; b < kBlocks; b++) {
            // c = round(absmax / D), at least 1 for a block that is not all zero. When D itself
            // rounded to zero in fp16 every scale is zero whatever c is.
            int c = 0;
            if (amax[b] > 0.0f && D > 0.0f) c = int(std::fmin(std::fmax(std::round(amax[b] / D), 1.0f), 255.0f));
            y[i].scales[b] = uint8_t(c);
            quantize_block_nf4(xs + b * QK_NF4, nf4_dq_block_scale(D, y[i].scales[b]), y[i].qs[b]);
        }
    }
}

void quantize_row_f16(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<uint16_t*>(vy);
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

void quantize_row_bf16(const float* x, void* vy, int64_t n) {
    auto* y = static_cast<uint16_t*>(vy);
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_bf16(x[i]);
}

void copy_row_f32(const float* x, void* y, int64_t n) { std::memcpy(y, x, size_t(n) * sizeof(float)); }

void dequantize_row_q4_0(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q4_0*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * float((x[i].qs[j] & 0x0f) - 8);
            y[i * QK + QK / 2 + j] = d * float((x[i].qs[j] >> 4) - 8);
        }
    }
}

void dequantize_row_q4_1(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q4_1*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = fp16_to_fp32(x[i].d);
        const float m = fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[i * QK + j] = d * float(x[i].qs[j] & 0x0f) + m;
            y[i * QK + QK / 2 + j] = d * float(x[i].qs[j] >> 4) + m;
        }
    }
}

void dequantize_row_q8_0(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q8_0*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = float(x[i].qs[j]) * d;
    }
}

void dequantize_row_q8_1(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q8_1*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = float(x[i].qs[j]) * d;
    }
}

static void dequantize_block_nf4(const uint8_t* qs, float d, float* y) {
    for (int j = 0; j < QK_NF4 / 2; j++) {
        y[j] = d * float(kNF4Levels[qs[j] & 0x0f]);
        y[j + QK_NF4 / 2] = d * float(kNF4Levels[qs[j] >> 4]);
    }
}

void dequantize_row_nf4(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_nf4*>(vx);
    for (int64_t i = 0; i < n / QK_NF4; i++) dequantize_block_nf4(x[i].qs, fp16_to_fp32(x[i].d), y + i * QK_NF4);
}

void dequantize_row_nf4_dq(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_nf4_dq*>(vx);
    for (int64_t i = 0; i < n / QK_NF4_DQ; i++) {
        const float D = fp16_to_fp32(x[i].d);
        for (int b = 0; b < QK_NF4_DQ / QK_NF4; b++)
            dequantize_block_nf4(x[i].qs[b], nf4_dq_block_scale(D, x[i].scales[b]), y + i * QK_NF4_DQ + b * QK_NF4);
    }
}

void dequantize_row_f16(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const uint16_t*>(vx);
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_row_bf16(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const uint16_t*>(vx);
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_fp32(x[i]);
}

void dequantize_row_f32(const void* x, float* y, int64_t n) { std::memcpy(y, x, size_t(n) * sizeof(float)); }

// Dot products: an exact integer sum inside each block, then one float multiply-add per block, blocks
// accumulated in order.
float vec_dot_q4_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int isum = 0;
        for (int j = 0; j < QK / 2; j++) {
            isum += ((w[i].qs[j] & 0x0f) - 8) * x[i].qs[j];
            isum += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + QK / 2];
        }
        sum += float(isum) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d));
    }
    return sum;
}

float vec_dot_q4_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q4_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int isum = 0;
        for (int j = 0; j < QK / 2; j++) {
            isum += (w[i].qs[j] & 0x0f) * x[i].qs[j];
            isum += (w[i].qs[j] >> 4) * x[i].qs[j + QK / 2];
        }
        // sum_j (d_w q_j + m)(d_x y_j) = d_w d_x sum(q y) + m * (d_x sum(y)), the last factor being s.
        sum += float(isum) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d)) +
               fp16_to_fp32(w[i].m) * fp16_to_fp32(x[i].s);
    }
    return sum;
}

float vec_dot_q8_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += w[i].qs[j] * x[i].qs[j];
        sum += float(isum) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d));
    }
    return sum;
}

// NF4 weights against Q8_0 activations, two activation blocks per 64-block: the low nibbles (weights
// 0..31) pair with the first, the high ones (32..63) with the second. Each 32-half is a term
// float(isum) * fl(d_w * d_x), exactly as a Q4_0 block is, the terms added in order; d_w is the
// block's fp16 scale, or for NF4_DQ its nf4_dq_block_scale.
static float nf4_block_dot(const uint8_t* qs, float d, const block_q8_0* x, float sum) {
    int isum0 = 0, isum1 = 0;
    for (int j = 0; j < QK_NF4 / 2; j++) {
        isum0 += kNF4Levels[qs[j] & 0x0f] * x[0].qs[j];
        isum1 += kNF4Levels[qs[j] >> 4] * x[1].qs[j];
    }
    sum += float(isum0) * (d * fp16_to_fp32(x[0].d));
    sum += float(isum1) * (d * fp16_to_fp32(x[1].d));
    return sum;
}

float vec_dot_nf4_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_nf4*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_NF4; i++) sum = nf4_block_dot(w[i].qs, fp16_to_fp32(w[i].d), x + 2 * i, sum);
    return sum;
}

float vec_dot_nf4_dq_q8_0(int n, const void* vw, const void* vx) {
    constexpr int kBlocks = QK_NF4_DQ / QK_NF4;
    const auto* w = static_cast<const block_nf4_dq*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK_NF4_DQ; i++) {
        const float D = fp16_to_fp32(w[i].d);
        for (int b = 0; b < kBlocks; b++)
            sum = nf4_block_dot(w[i].qs[b], nf4_dq_block_scale(D, w[i].scales[b]), x + 2 * (kBlocks * i + b), sum);
    }
    return sum;
}

// ---- 5-bit and non-linear 32-blocks (Q5_0, Q5_1, IQ4_NL) ----
//
// Each block is unpacked to its 32 integer levels first; dequantizing multiplies them by the scale
// (and adds the minimum), as ggml does, and the dot with a Q8_0 / Q8_1 block takes the same form as
// Q4_0's / Q4_1's above: an exact integer sum, then float(isum) * (d_w * d_x) (+ m * s).

// Weight j's 5th bit is bit j of qh (little-endian); the low 4 bits sit as in Q4_0.
static void q5_levels(const uint8_t* qs, const uint8_t* qh_bytes, int offset, int* q) {
    uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < QK / 2; j++) {
        q[j] = int((qs[j] & 0x0f) | (((qh >> j) & 1) << 4)) - offset;
        q[j + QK / 2] = int((qs[j] >> 4) | (((qh >> (j + QK / 2)) & 1) << 4)) - offset;
    }
}

static void iq4_levels(const uint8_t* qs, int* q) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = kIQ4NLValues[qs[j] & 0x0f];
        q[j + QK / 2] = kIQ4NLValues[qs[j] >> 4];
    }
}

void dequantize_row_q5_0(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q5_0*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        int q[QK];
        q5_levels(x[i].qs, x[i].qh, 16, q);
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = float(q[j]) * d;
    }
}

void dequantize_row_q5_1(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q5_1*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        int q[QK];
        q5_levels(x[i].qs, x[i].qh, 0, q);
        const float d = fp16_to_fp32(x[i].d);
        const float m = fp16_to_fp32(x[i].m);
        for (int j = 0; j < QK; j++) y[i * QK + j] = float(q[j]) * d + m;
    }
}

void dequantize_row_iq4_nl(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq4_nl*>(vx);
    for (int64_t i = 0; i < n / QK; i++) {
        int q[QK];
        iq4_levels(x[i].qs, q);
        const float d = fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK; j++) y[i * QK + j] = d * float(q[j]);
    }
}

static int int_dot32(const int* q, const int8_t* y) {
    int isum = 0;
    for (int j = 0; j < QK; j++) isum += q[j] * y[j];
    return isum;
}

float vec_dot_q5_0_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q5_0*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int q[QK];
        q5_levels(w[i].qs, w[i].qh, 16, q);
        sum += float(int_dot32(q, x[i].qs)) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d));
    }
    return sum;
}

float vec_dot_q5_1_q8_1(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q5_1*>(vw);
    const auto* x = static_cast<const block_q8_1*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int q[QK];
        q5_levels(w[i].qs, w[i].qh, 0, q);
        sum += float(int_dot32(q, x[i].qs)) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d)) +
               fp16_to_fp32(w[i].m) * fp16_to_fp32(x[i].s);
    }
    return sum;
}

float vec_dot_iq4_nl_q8_0(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_iq4_nl*>(vw);
    const auto* x = static_cast<const block_q8_0*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n / QK; i++) {
        int q[QK];
        iq4_levels(w[i].qs, q);
        sum += float(int_dot32(q, x[i].qs)) * (fp16_to_fp32(w[i].d) * fp16_to_fp32(x[i].d));
    }
    return sum;
}

// ---- K-quants and IQ4_XS: 256-weight super-blocks ----
//
// Every super-block is unpacked to one form: 256 integer levels q, an integer scale per sub-block
// (16 sub-blocks of 16 weights, or 8 of 32), an integer minimum per sub-block for the types that
// have one, and the fp16 super-block factors d (and dmin). Then
//   value             = (d * sc) * q - (dmin * m)        (ggml's dequantizers, in this order)
//   dot with Q8_K     = (d * d_x) * float(isum) - (dmin * d_x) * float(msum)
//     isum = sum over sub-blocks of sc * (sum of q * y), msum = sum over sub-blocks of m * (sum of y)
// The integer sums are exact (|isum| < 2^28 for every type), so a SIMD kernel that computes them
// in any order and then does these float operations gets the same bits; the super-blocks'
// contributions are added in order.
struct SuperBlock {
    int8_t q[QK_K];
    int sc[16];
    int m[16];
    int n_sub;        // 16 or 8 sub-blocks
    bool has_min;
    float d, dmin;
};

static void unpack(const block_q2_K& b, SuperBlock& s) {
    s.n_sub = 16;
    s.has_min = true;
    s.d = fp16_to_fp32(b.d);
    s.dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 16; j++) {
        s.sc[j] = b.scales[j] & 0x0f;
        s.m[j] = b.scales[j] >> 4;
    }
    // weight 128h + 32k + l: bits 2k..2k+1 of qs[32h + l]
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) s.q[128 * h + 32 * k + l] = int8_t((b.qs[32 * h + l] >> (2 * k)) & 3);
}

// Q3_K's 16 six-bit scales: the low 4 bits of scale j in nibble j of bytes 0..7 (scales 0..7 in the
// low nibbles, 8..15 in the high ones), the high 2 bits of scale j in bits 2(j/4).. of byte 8 + j%4.
static int q3_K_scale(const uint8_t* scales, int j) {
    const int low = (scales[j % 8] >> (4 * (j / 8))) & 0x0f;
    const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | (high << 4)) - 32;
}

static void unpack(const block_q3_K& b, SuperBlock& s) {
    s.n_sub = 16;
    s.has_min = false;
    s.d = fp16_to_fp32(b.d);
    s.dmin = 0.0f;  // no minimums: msum stays 0
    std::fill(s.m, s.m + 16, 0);
    for (int j = 0; j < 16; j++) s.sc[j] = q3_K_scale(b.scales, j);
    // weight 128h + 32k + l: low bits as in Q2_K, high bit in bit 4h + k of hmask[l]
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                const int low = (b.qs[32 * h + l] >> (2 * k)) & 3;
                const bool high = (b.hmask[l] >> (4 * h + k)) & 1;
                s.q[128 * h + 32 * k + l] = int8_t(low - (high ? 0 : 4));
            }
}

static void unpack_scales_k4(const uint8_t* scales, SuperBlock& s) {
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales, &sc, &m);
        s.sc[j] = sc;
        s.m[j] = m;
    }
}

static void unpack(const block_q4_K& b, SuperBlock& s) {
    s.n_sub = 8;
    s.has_min = true;
    s.d = fp16_to_fp32(b.d);
    s.dmin = fp16_to_fp32(b.dmin);
    unpack_scales_k4(b.scales, s);
    for (int h = 0; h < 4; h++)
        for (int l = 0; l < 32; l++) {
            s.q[64 * h + l] = int8_t(b.qs[32 * h + l] & 0x0f);
            s.q[64 * h + 32 + l] = int8_t(b.qs[32 * h + l] >> 4);
        }
}

static void unpack(const block_q5_K& b, SuperBlock& s) {
    s.n_sub = 8;
    s.has_min = true;
    s.d = fp16_to_fp32(b.d);
    s.dmin = fp16_to_fp32(b.dmin);
    unpack_scales_k4(b.scales, s);
    for (int h = 0; h < 4; h++)
        for (int l = 0; l < 32; l++) {
            s.q[64 * h + l] = int8_t((b.qs[32 * h + l] & 0x0f) | (((b.qh[l] >> (2 * h)) & 1) << 4));
            s.q[64 * h + 32 + l] = int8_t((b.qs[32 * h + l] >> 4) | (((b.qh[l] >> (2 * h + 1)) & 1) << 4));
        }
}

static void unpack(const block_q6_K& b, SuperBlock& s) {
    s.n_sub = 16;
    s.has_min = false;
    s.d = fp16_to_fp32(b.d);
    s.dmin = 0.0f;  // no minimums: msum stays 0
    std::fill(s.m, s.m + 16, 0);
    for (int j = 0; j < 16; j++) s.sc[j] = b.scales[j];
    // each half of 128 weights: 64 bytes of ql, 32 of qh; weight 128h + 32k + l takes a nibble of
    // ql[64h + l + 32(k%2)] (low for k < 2) and bits 2k..2k+1 of qh[32h + l]
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 32; l++) {
                const int low = (b.ql[64 * h + l + 32 * (k % 2)] >> (4 * (k / 2))) & 0x0f;
                const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
                s.q[128 * h + 32 * k + l] = int8_t((low | (high << 4)) - 32);
            }
}

static void unpack(const block_iq4_xs& b, SuperBlock& s) {
    s.n_sub = 8;
    s.has_min = false;
    s.d = fp16_to_fp32(b.d);
    s.dmin = 0.0f;  // no minimums: msum stays 0
    std::fill(s.m, s.m + 16, 0);
    for (int j = 0; j < 8; j++) {
        const int low = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
        const int high = (b.scales_h >> (2 * j)) & 3;
        s.sc[j] = (low | (high << 4)) - 32;
        for (int l = 0; l < 16; l++) {
            s.q[32 * j + l] = kIQ4NLValues[b.qs[16 * j + l] & 0x0f];
            s.q[32 * j + 16 + l] = kIQ4NLValues[b.qs[16 * j + l] >> 4];
        }
    }
}

template <typename Block>
static void dequantize_row_k(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const Block*>(vx);
    SuperBlock s;
    for (int64_t i = 0; i < n / QK_K; i++, y += QK_K) {
        unpack(x[i], s);
        const int len = QK_K / s.n_sub;
        for (int j = 0; j < s.n_sub; j++) {
            const float dl = s.d * float(s.sc[j]);
            if (s.has_min) {
                const float ml = s.dmin * float(s.m[j]);
                for (int l = 0; l < len; l++) y[j * len + l] = dl * float(s.q[j * len + l]) - ml;
            } else {
                for (int l = 0; l < len; l++) y[j * len + l] = dl * float(s.q[j * len + l]);
            }
        }
    }
}

void dequantize_row_q2_K(const void* x, float* y, int64_t n) { dequantize_row_k<block_q2_K>(x, y, n); }
void dequantize_row_q3_K(const void* x, float* y, int64_t n) { dequantize_row_k<block_q3_K>(x, y, n); }
void dequantize_row_q4_K(const void* x, float* y, int64_t n) { dequantize_row_k<block_q4_K>(x, y, n); }
void dequantize_row_q5_K(const void* x, float* y, int64_t n) { dequantize_row_k<block_q5_K>(x, y, n); }
void dequantize_row_q6_K(const void* x, float* y, int64_t n) { dequantize_row_k<block_q6_K>(x, y, n); }
void dequantize_row_iq4_xs(const void* x, float* y, int64_t n) { dequantize_row_k<block_iq4_xs>(x, y, n); }

void dequantize_row_q8_K(const void* vx, float* y, int64_t n) {
    const auto* x = static_cast<const block_q8_K*>(vx);
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int j = 0; j < QK_K; j++) y[i * QK_K + j] = x[i].d * float(x[i].qs[j]);
}

// The float step of a super-block's dot, shared by every kernel that computes the integer sums
// (any order gives the same integers): see SuperBlock above.
float k_superblock_term(float d, float dmin, float dx, int32_t isum, int32_t msum) {
    return (d * dx) * float(isum) - (dmin * dx) * float(msum);
}

template <typename Block>
static float vec_dot_k(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const Block*>(vw);
    const auto* x = static_cast<const block_q8_K*>(vx);
    float sum = 0.0f;
    SuperBlock s;
    for (int i = 0; i < n / QK_K; i++) {
        unpack(w[i], s);
        const int len = QK_K / s.n_sub;
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < s.n_sub; j++) {
            int32_t sub = 0, ysum = 0;
            for (int l = 0; l < len; l++) {
                sub += s.q[j * len + l] * x[i].qs[j * len + l];
                ysum += x[i].qs[j * len + l];
            }
            isum += s.sc[j] * sub;
            if (s.has_min) msum += s.m[j] * ysum;
        }
        sum += k_superblock_term(s.d, s.dmin, x[i].d, isum, msum);
    }
    return sum;
}

float vec_dot_q2_K_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_q2_K>(n, w, x); }
float vec_dot_q3_K_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_q3_K>(n, w, x); }
float vec_dot_q4_K_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_q4_K>(n, w, x); }
float vec_dot_q5_K_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_q5_K>(n, w, x); }
float vec_dot_q6_K_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_q6_K>(n, w, x); }
float vec_dot_iq4_xs_q8_K(int n, const void* w, const void* x) { return vec_dot_k<block_iq4_xs>(n, w, x); }

float vec_dot_f32_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const float*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

float vec_dot_f16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += fp16_to_fp32(w[i]) * x[i];
    return sum;
}

float vec_dot_bf16_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += bf16_to_fp32(w[i]) * x[i];
    return sum;
}

void axpy_f32(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const float*>(vx);
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void axpy_f16(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const uint16_t*>(vx);
    for (int i = 0; i < n; i++) y[i] += a * fp16_to_fp32(x[i]);
}

// A Q8_0 cache row: block by block, d times the float sum of its int8 values times x.
float vec_dot_q8_0_f32(int n, const void* vw, const void* vx) {
    const auto* w = static_cast<const block_q8_0*>(vw);
    const auto* x = static_cast<const float*>(vx);
    float sum = 0.0f;
    for (int b = 0; b < n / QK; b++) {
        float block_sum = 0.0f;
        for (int i = 0; i < QK; i++) block_sum += float(w[b].qs[i]) * x[b * QK + i];
        sum += fp16_to_fp32(w[b].d) * block_sum;
    }
    return sum;
}

void axpy_q8_0(int n, float a, const void* vx, float* y) {
    const auto* x = static_cast<const block_q8_0*>(vx);
    for (int i = 0; i < n; i++) y[i] += a * (fp16_to_fp32(x[i / QK].d) * float(x[i / QK].qs[i % QK]));
}

void attend_f32(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum) {
    attend_by_rows<vec_dot_f32_f32, axpy_f32>(hd, n_q, q, keys, values, kv_stride, n_pos, scale, scores, out, max, sum);
}

void attend_f16(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum) {
    attend_by_rows<vec_dot_f16_f32, axpy_f16>(hd, n_q, q, keys, values, kv_stride, n_pos, scale, scores, out, max, sum);
}

void attend_q8_0(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                 int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum) {
    attend_by_rows<vec_dot_q8_0_f32, axpy_q8_0>(hd, n_q, q, keys, values, kv_stride, n_pos, scale, scores, out, max,
                                                sum);
}

void silu_mul(float* g, const float* u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

int64_t find_above(const float* x, int64_t n, float floor, bool or_equal) {
    for (int64_t i = 0; i < n; i++)
        if (or_equal ? !(x[i] < floor) : !(x[i] <= floor)) return i;  // NaN compares false: found
    return n;
}

}  // namespace ref

void attention_join(int hd, int n_runs, const float* out, size_t out_stride, const float* max, const double* sum,
                    size_t stat_stride, float* dest) {
    float m = max[0];
    for (int r = 1; r < n_runs; r++) m = std::max(m, max[size_t(r) * stat_stride]);
    auto weight = [&](int r) {  // sum_r exp(max_r - M)
        const size_t i = size_t(r) * stat_stride;
        return sum[i] * double(std::exp(max[i] - m));
    };
    double total = 0.0;
    for (int r = 0; r < n_runs; r++) total += weight(r);
    std::fill(dest, dest + hd, 0.0f);
    for (int r = 0; r < n_runs; r++) {
        const float w = float(weight(r) / total);
        const float* o = out + size_t(r) * out_stride;
        for (int i = 0; i < hd; i++) dest[i] += o[i] * w;
    }
}

namespace {

TypeTraits make_traits(const char* name, int block_size, size_t type_size, GGMLType vec_dot_type,
                       to_float_fn to_float, from_float_fn from_float,
                       from_float_weighted_fn from_float_weighted = nullptr) {
    return TypeTraits{name, block_size, type_size, vec_dot_type, to_float, from_float, from_float_weighted};
}

struct TraitsTable {
    TypeTraits rows[TYPE_COUNT] = {};
    TraitsTable() {
        rows[TYPE_F32] = make_traits("f32", 1, 4, TYPE_F32, ref::dequantize_row_f32, ref::copy_row_f32);
        rows[TYPE_F16] = make_traits("f16", 1, 2, TYPE_F32, ref::dequantize_row_f16, ref::quantize_row_f16);
        rows[TYPE_BF16] = make_traits("bf16", 1, 2, TYPE_F32, ref::dequantize_row_bf16, ref::quantize_row_bf16);
        rows[TYPE_Q4_0] = make_traits("q4_0", QK, sizeof(block_q4_0), TYPE_Q8_0, ref::dequantize_row_q4_0,
                                      ref::quantize_row_q4_0, ref::quantize_row_q4_0_w);
        rows[TYPE_Q4_1] = make_traits("q4_1", QK, sizeof(block_q4_1), TYPE_Q8_1, ref::dequantize_row_q4_1,
                                      ref::quantize_row_q4_1, ref::quantize_row_q4_1_w);
        rows[TYPE_Q8_0] = make_traits("q8_0", QK, sizeof(block_q8_0), TYPE_Q8_0, ref::dequantize_row_q8_0,
                                      ref::quantize_row_q8_0);
        rows[TYPE_Q8_1] = make_traits("q8_1", QK, sizeof(block_q8_1), TYPE_Q8_1, ref::dequantize_row_q8_1,
                                      ref::quantize_row_q8_1);
        rows[TYPE_Q5_0] = make_traits("q5_0", QK, sizeof(block_q5_0), TYPE_Q8_0, ref::dequantize_row_q5_0,
                                      ref::quantize_row_q5_0, ref::quantize_row_q5_0_w);
        rows[TYPE_Q5_1] = make_traits("q5_1", QK, sizeof(block_q5_1), TYPE_Q8_1, ref::dequantize_row_q5_1,
                                      ref::quantize_row_q5_1, ref::quantize_row_q5_1_w);
        rows[TYPE_IQ4_NL] = make_traits("iq4_nl", QK, sizeof(block_iq4_nl), TYPE_Q8_0, ref::dequantize_row_iq4_nl,
                                        ref::quantize_row_iq4_nl, ref::quantize_row_iq4_nl_w);
        rows[TYPE_Q2_K] = make_traits("q2_k", QK_K, sizeof(block_q2_K), TYPE_Q8_K, ref::dequantize_row_q2_K,
                                      ref::quantize_row_q2_K, ref::quantize_row_q2_K_w);
        rows[TYPE_Q3_K] = make_traits("q3_k", QK_K, sizeof(block_q3_K), TYPE_Q8_K, ref::dequantize_row_q3_K,
                                      ref::quantize_row_q3_K, ref::quantize_row_q3_K_w);
        rows[TYPE_Q4_K] = make_traits("q4_k", QK_K, sizeof(block_q4_K), TYPE_Q8_K, ref::dequantize_row_q4_K,
                                      ref::quantize_row_q4_K, ref::quantize_row_q4_K_w);
        rows[TYPE_Q5_K] = make_traits("q5_k", QK_K, sizeof(block_q5_K), TYPE_Q8_K, ref::dequantize_row_q5_K,
                                      ref::quantize_row_q5_K, ref::quantize_row_q5_K_w);
        rows[TYPE_Q6_K] = make_traits("q6_k", QK_K, sizeof(block_q6_K), TYPE_Q8_K, ref::dequantize_row_q6_K,
                                      ref::quantize_row_q6_K, ref::quantize_row_q6_K_w);
        rows[TYPE_IQ4_XS] = make_traits("iq4_xs", QK_K, sizeof(block_iq4_xs), TYPE_Q8_K, ref::dequantize_row_iq4_xs,
                                        ref::quantize_row_iq4_xs, ref::quantize_row_iq4_xs_w);
        rows[TYPE_Q8_K] = make_traits("q8_k", QK_K, sizeof(block_q8_K), TYPE_Q8_K, ref::dequantize_row_q8_K,
                                      ref::quantize_row_q8_K);
        rows[TYPE_NF4] = make_traits("nf4", QK_NF4, sizeof(block_nf4), TYPE_Q8_0, ref::dequantize_row_nf4,
                                     ref::quantize_row_nf4);
        rows[TYPE_NF4_DQ] = make_traits("nf4_dq", QK_NF4_DQ, sizeof(block_nf4_dq), TYPE_Q8_0,
                                        ref::dequantize_row_nf4_dq, ref::quantize_row_nf4_dq);
    }
};

const TraitsTable& traits_table() {
    static const TraitsTable table;
    return table;
}

}  // namespace

const TypeTraits* type_traits(uint32_t type) {
    if (type >= TYPE_COUNT) return nullptr;
    const TypeTraits& t = traits_table().rows[type];
    return t.name ? &t : nullptr;
}

size_t row_size(GGMLType type, int64_t n) {
    const TypeTraits* t = type_traits(type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    return size_t(n / t->block_size) * t->type_size;
}

const Kernels* kernels_scalar() {
    static const Kernels table = [] {
        Kernels k{};
        k.isa = "scalar";
        k.vec_dot[TYPE_Q4_0] = ref::vec_dot_q4_0_q8_0;
        k.vec_dot[TYPE_Q4_1] = ref::vec_dot_q4_1_q8_1;
        k.vec_dot[TYPE_Q8_0] = ref::vec_dot_q8_0_q8_0;
        k.vec_dot[TYPE_NF4] = ref::vec_dot_nf4_q8_0;
        k.vec_dot[TYPE_NF4_DQ] = ref::vec_dot_nf4_dq_q8_0;
        k.vec_dot[TYPE_Q5_0] = ref::vec_dot_q5_0_q8_0;
        k.vec_dot[TYPE_Q5_1] = ref::vec_dot_q5_1_q8_1;
        k.vec_dot[TYPE_IQ4_NL] = ref::vec_dot_iq4_nl_q8_0;
        k.vec_dot[TYPE_Q2_K] = ref::vec_dot_q2_K_q8_K;
        k.vec_dot[TYPE_Q3_K] = ref::vec_dot_q3_K_q8_K;
        k.vec_dot[TYPE_Q4_K] = ref::vec_dot_q4_K_q8_K;
        k.vec_dot[TYPE_Q5_K] = ref::vec_dot_q5_K_q8_K;
        k.vec_dot[TYPE_Q6_K] = ref::vec_dot_q6_K_q8_K;
        k.vec_dot[TYPE_IQ4_XS] = ref::vec_dot_iq4_xs_q8_K;
        k.vec_dot[TYPE_F32] = ref::vec_dot_f32_f32;
        k.vec_dot[TYPE_F16] = ref::vec_dot_f16_f32;
        k.vec_dot[TYPE_BF16] = ref::vec_dot_bf16_f32;
        k.from_float[TYPE_Q8_0] = ref::quantize_row_q8_0;
        k.from_float[TYPE_Q8_1] = ref::quantize_row_q8_1;
        k.from_float[TYPE_Q8_K] = ref::quantize_row_q8_K;
        k.from_float[TYPE_F32] = ref::copy_row_f32;
        k.from_float[TYPE_F16] = ref::quantize_row_f16;
        k.axpy[TYPE_F32] = ref::axpy_f32;
        k.axpy[TYPE_F16] = ref::axpy_f16;
        k.axpy[TYPE_Q8_0] = ref::axpy_q8_0;
        k.attend[TYPE_F32] = ref::attend_f32;
        k.attend[TYPE_F16] = ref::attend_f16;
        k.attend[TYPE_Q8_0] = ref::attend_q8_0;
        k.silu_mul = ref::silu_mul;
        k.find_above = ref::find_above;
        return k;
    }();
    return &table;
}

}  // namespace pe
