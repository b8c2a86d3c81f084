// Attention over an F32, F16 or Q8_0 KV cache for head dimensions that are a multiple of 32 (others
// take the reference), written once over a lane type L: avx2.cpp's L8 (__m256) and avx512.cpp's L16
// (__m512). Like avx2_common.h, everything here lives in an anonymous namespace: each unit's copy is
// built with its flags, and no other code can link to it.
//
// Each output depends on its own query and the cache alone, never on n_q or the other queries, and
// the arithmetic is the same on 8 and 16 lanes, so the two tables agree bit for bit:
// - scores: key rows converted to float kKeys at a time; each dot one 8-lane fused multiply-add
//   chain over the row (L16 runs two keys' chains in the halves of one register), summed across its
//   lanes in avx2_common.h's hsum order, times scale;
// - softmax: the maximum, exp_nonpositive(s - max) per position, the sum in one 8-lane double
//   accumulator over 8-position steps (lane l: positions l, l + 8, ...; the last step padded with
//   zeros, which add nothing), its lanes added in order; weights s * float(1 / sum);
// - values: out = fma(weight_p, V_p, out) for p = 0, 1, ... per value (2W values at a time, up to 4
//   heads' accumulators in registers).
// On SmolLM2's 64-value heads (3 queries a KV head, 256 positions, a Zen 5) the 16-lane build takes
// 2.5 us, the 8-lane one 3.6 (of which converting the keys ~1.1 and ~1.2: the larger part left).
//
// L gives: V (W float lanes), W; zero, set1, load / store (aligned), loadu / storeu, broadcast, add,
// sub, mul, max, fmadd, fnmadd, round, pow2, zero_below (lane_math.h's), hmax; from_f16 / from_i8 (W
// cache values as floats); kKeys, the keys' layout in its buffer (store_keys: keys 0 .. kKeys - 1
// from get(k, c0, v), 32 values from c0 as 32 / W vectors) and their scores (scores: the first np <= kKeys keys' dots with the first of n_q queries
// or more, times scale, query j's at s + j * s_stride; it returns how many queries it took); Sum
// (the 8-lane double accumulator) with sum_zero, add_sum and sum_lanes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "avx2_common.h"
#include "kernels.h"
#include "lane_math.h"

namespace pe {
namespace {

// The cache types' rows: convert(row, c0, n, v) gives values c0 .. c0 + nW - 1 of a row as n float
// vectors, for nW <= 32 and c0 a multiple of nW (within one Q8_0 block); bytes(hd): a head's bytes.
template <typename L>
struct F32Rows {
    static size_t bytes(int hd) { return 4 * size_t(hd); }
    void operator()(const uint8_t* row, int c0, int n, typename L::V* v) const {
        const auto* f = reinterpret_cast<const float*>(row) + c0;
        for (int k = 0; k < n; k++) v[k] = L::loadu(f + L::W * k);
    }
};

template <typename L>
struct F16Rows {
    static size_t bytes(int hd) { return 2 * size_t(hd); }
    void operator()(const uint8_t* row, int c0, int n, typename L::V* v) const {
        for (int k = 0; k < n; k++) v[k] = L::from_f16(row + 2 * size_t(c0 + L::W * k));
    }
};

template <typename L>  // d * float(q)
struct Q8_0Rows {
    static size_t bytes(int hd) { return size_t(hd / QK) * sizeof(block_q8_0); }
    void operator()(const uint8_t* row, int c0, int n, typename L::V* v) const {
        const auto& block = reinterpret_cast<const block_q8_0*>(row)[c0 / QK];
        const typename L::V d = L::set1(_cvtsh_ss(block.d));
        for (int k = 0; k < n; k++) v[k] = L::mul(d, L::from_i8(block.qs + c0 % QK + L::W * k));
    }
};

template <typename L, int NJ, typename Rows>
void accumulate_values(int64_t n_pos, const uint8_t* values, size_t kv_stride, int c0, const float* w,
                       size_t w_stride, float* out, int hd, Rows convert) {
    typename L::V o[NJ][2];
    for (int j = 0; j < NJ; j++) o[j][0] = o[j][1] = L::zero();
    for (int64_t p = 0; p < n_pos; p++) {
        typename L::V v[2];
        convert(values + size_t(p) * kv_stride, c0, 2, v);
        for (int j = 0; j < NJ; j++) {
            const typename L::V a = L::broadcast(w + size_t(j) * w_stride + size_t(p));
            o[j][0] = L::fmadd(a, v[0], o[j][0]);
            o[j][1] = L::fmadd(a, v[1], o[j][1]);
        }
    }
    for (int j = 0; j < NJ; j++)
        for (int k = 0; k < 2; k++) L::storeu(out + size_t(j) * size_t(hd) + c0 + L::W * k, o[j][k]);
}

// One head's rows are kv_stride apart (all KV heads of a position share a row), a stream the hardware
// prefetchers follow poorly: deep in a context the first load of every key row waited on memory
// (SmolLM2 at depth 4096 read its cache at ~2 GB/s on one thread). So the keys and values
// kPrefetchAhead positions ahead are requested while the scores are computed, and the values phase
// finds its rows in the cache too: SmolLM2 Q4_0 generating at depth 4096 went from 16 to 25 tokens/s
// on one thread, 31 to 43 on two (a tg loop, the two builds run back to back).
constexpr int64_t kPrefetchAhead = 16;  // a multiple of every L::kKeys

template <typename L, typename Rows>
void attend_rows(int hd, int n_q, const float* q, const uint8_t* keys, const uint8_t* values, size_t kv_stride,
                 int64_t n_pos, float scale, float* scores, float* out, float* max_out, double* sum_out) {
    using V = typename L::V;
    constexpr int W = L::W;
    const Rows convert{};
    const size_t head_bytes = Rows::bytes(hd);
    constexpr int G = L::kKeys;  // keys converted and scored at a time
    alignas(64) float kbuf[G * 512];  // G keys of up to 512 values, in L's layout
    auto prefetch_rows = [&](int64_t p) {  // positions p .. p + G - 1, those that exist
        for (int64_t k = p; k < std::min(p + G, n_pos); k++) {
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
    for (int64_t p = 0; p < std::min(kPrefetchAhead, n_pos); p += G) prefetch_rows(p);
    for (int64_t p0 = 0; p0 < n_pos; p0 += G) {
        const int np = int(std::min<int64_t>(G, n_pos - p0));
        if (p0 + kPrefetchAhead < n_pos) prefetch_rows(p0 + kPrefetchAhead);
        // keys p0 .. p0 + G - 1 as floats in L's layout (the last step's missing ones as zeros,
        // whose scores are not kept), 32 values at a time
        L::store_keys(kbuf, hd, [&](int k, int c0, V (&v)[32 / W]) {
            if (k < np) {
                convert(keys + size_t(p0 + k) * kv_stride, c0, 32 / W, v);
            } else {
                for (V& x : v) x = L::zero();
            }
        });
        for (int j = 0; j < n_q;)  // L takes one query or more at a time
            j += L::scores(kbuf, q + size_t(j) * size_t(hd), n_q - j, hd, scale,
                           scores + size_t(j) * size_t(n_pos) + size_t(p0), size_t(n_pos), np);
    }
    for (int j = 0; j < n_q; j++) {
        float* s = scores + size_t(j) * size_t(n_pos);
        V vmax = L::set1(-INFINITY);
        int64_t p = 0;
        for (; p + W <= n_pos; p += W) vmax = L::max(vmax, L::loadu(s + p));
        float max_score = L::hmax(vmax);
        for (; p < n_pos; p++) max_score = std::max(max_score, s[p]);
        const V vm = L::set1(max_score);
        typename L::Sum sum8 = L::sum_zero();
        for (p = 0; p + W <= n_pos; p += W) {
            const V e = exp_nonpositive<L>(L::sub(L::loadu(s + p), vm));
            L::storeu(s + p, e);
            L::add_sum(sum8, e);
        }
        if (p < n_pos) {  // the last positions, padded (exp(-inf) = 0); a buffer only here, where
                          // its scalar stores cannot be forwarded to the vector load
            const int n = int(n_pos - p);
            alignas(64) float buf[W];
            for (int l = 0; l < W; l++) buf[l] = l < n ? s[p + l] : -INFINITY;
            const V e = exp_nonpositive<L>(L::sub(L::load(buf), vm));
            L::store(buf, e);
            for (int l = 0; l < n; l++) s[p + l] = buf[l];
            L::add_sum(sum8, e);
        }
        alignas(64) double lanes[8];
        L::sum_lanes(sum8, lanes);
        double sum = 0.0;
        for (double lane : lanes) sum += lane;
        max_out[j] = max_score;
        sum_out[j] = sum;
        const V inv = L::set1(float(1.0 / sum));
        for (p = 0; p + W <= n_pos; p += W) L::storeu(s + p, L::mul(L::loadu(s + p), inv));
        for (; p < n_pos; p++) s[p] *= float(1.0 / sum);
    }
    for (int c0 = 0; c0 < hd; c0 += 2 * W) {
        for (int j = 0; j < n_q; j += 4) {
            const float* w = scores + size_t(j) * size_t(n_pos);
            float* o = out + size_t(j) * size_t(hd);
            switch (std::min(4, n_q - j)) {
                case 1: accumulate_values<L, 1>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert); break;
                case 2: accumulate_values<L, 2>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert); break;
                case 3: accumulate_values<L, 3>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert); break;
                default: accumulate_values<L, 4>(n_pos, values, kv_stride, c0, w, size_t(n_pos), o, hd, convert); break;
            }
        }
    }
}

// attend_rows over a cache of Rows, for head dimensions it takes; the reference for the others.
template <typename L, attend_fn Reference, typename Rows>
void attend_cache(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                  int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum) {
    if (hd % 32 != 0 || hd > 512)
        return Reference(hd, n_q, q, keys, values, kv_stride, n_pos, scale, scores, out, max, sum);
    attend_rows<L, Rows>(hd, n_q, q, static_cast<const uint8_t*>(keys), static_cast<const uint8_t*>(values),
                         kv_stride, n_pos, scale, scores, out, max, sum);
}

// The table's attention, one row per cache type.
template <typename L>
void add_attention_kernels(Kernels& k) {
    k.attend[TYPE_F32] = attend_cache<L, ref::attend_f32, F32Rows<L>>;
    k.attend[TYPE_F16] = attend_cache<L, ref::attend_f16, F16Rows<L>>;
    k.attend[TYPE_Q8_0] = attend_cache<L, ref::attend_q8_0, Q8_0Rows<L>>;
}

}  // namespace
}  // namespace pe
