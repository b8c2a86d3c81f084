// Elementwise math written once over a lane type L (avx2.cpp's L8, avx512.cpp's L16; see
// attend_lanes.h): the softmax's exponential, the gated feed-forward's SiLU and the sampler's scan
// (find_above). The same operations on 8 and 16 lanes, so the two tables give the same bits. Like
// avx2_common.h, everything here lives in an anonymous namespace, built with each unit's flags.
//
// L gives: V, W; set1, loadu, storeu, loadu_first / storeu_first (the first m < W lanes, masked: the
// others read as 0, and neither read nor written past them), add, mul, div, fmadd, fnmadd, round (to
// nearest), pow2 (2^n of whole floats n), zero_below (v where x >= limit, else 0: NaN x too), neg_abs
// (-|x|, NaN kept), select_nonneg (a where x >= 0, else b: NaN x takes b) and past<OrEqual> (the
// lanes' bits where x is not below f, OrEqual, or not at most f: the unordered compares, NaN set).
#pragma once

#include <cstdint>

namespace pe {
namespace {

// exp(x) for x <= 0 (softmax after taking the maximum out): Cody-Waite reduction to r = x - n ln2
// with |r| <= ln2 / 2, Cephes' degree-6 polynomial for e^r (max error ~1 ulp), times 2^n built in the
// exponent bits. Below -87 (2^n would leave the normal range) the result is 0.
template <typename L>
inline typename L::V exp_nonpositive(typename L::V x) {
    using V = typename L::V;
    const V n = L::round(L::mul(x, L::set1(1.44269504088896341f)));
    V r = L::fnmadd(n, L::set1(0.693359375f), x);
    r = L::fnmadd(n, L::set1(-2.12194440e-4f), r);
    V p = L::set1(1.9875691500e-4f);
    p = L::fmadd(p, r, L::set1(1.3981999507e-3f));
    p = L::fmadd(p, r, L::set1(8.3334519073e-3f));
    p = L::fmadd(p, r, L::set1(4.1665795894e-2f));
    p = L::fmadd(p, r, L::set1(1.6666665459e-1f));
    p = L::fmadd(p, r, L::set1(5.0000001201e-1f));
    const V e = L::add(L::fmadd(L::mul(p, r), r, r), L::set1(1.0f));
    return L::zero_below(L::mul(e, L::pow2(n)), x, -87.0f);
}

// g[i] = silu(g[i]) * u[i] for i < n, silu(x) = x * sigmoid(x), with t = e^-|x| (exp_nonpositive, so
// nothing overflows): sigmoid(x) = 1 / (1 + t) for x >= 0 and t / (1 + t) below, x * (1 or t) / (1 + t).
// The reference computes x / (1 + e^-x) with the C library's exp: the results agree within a few ulp
// (kernel tests), and NaN stays NaN (x is a factor). The last n % W values take a masked vector, so
// each value takes the same operations wherever it sits.
template <typename L>
inline typename L::V silu(typename L::V x) {
    using V = typename L::V;
    const V one = L::set1(1.0f);
    const V t = exp_nonpositive<L>(L::neg_abs(x));
    return L::div(L::mul(x, L::select_nonneg(x, one, t)), L::add(one, t));
}

template <typename L>
void silu_mul(float* g, const float* u, int64_t n) {
    constexpr int W = L::W;
    int64_t i = 0;
    for (; i + W <= n; i += W) L::storeu(g + i, L::mul(silu<L>(L::loadu(g + i)), L::loadu(u + i)));
    if (i < n) {
        const int m = int(n - i);
        L::storeu_first(g + i, L::mul(silu<L>(L::loadu_first(g + i, m)), L::loadu_first(u + i, m)), m);
    }
}

// ref::find_above: 4W values a step, their lanes' bits joined (the first set bit is the index), then
// the rest W at a time, the last step masked (nothing read past n).
template <typename L, bool OrEqual>
int64_t find_above_lanes(const float* x, int64_t n, float floor) {
    constexpr int W = L::W;
    const typename L::V f = L::set1(floor);
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        uint64_t bits = 0;
        for (int j = 0; j < 4; j++) bits |= uint64_t(L::template past<OrEqual>(L::loadu(x + i + j * W), f)) << (j * W);
        if (bits) return i + __builtin_ctzll(bits);
    }
    for (; i < n; i += W) {
        const int m = int(n - i < W ? n - i : W);
        const uint32_t bits = L::template past<OrEqual>(m == W ? L::loadu(x + i) : L::loadu_first(x + i, m), f) &
                              ((uint32_t(1) << m) - 1);
        if (bits) return i + __builtin_ctz(bits);
    }
    return n;
}

template <typename L>
int64_t find_above(const float* x, int64_t n, float floor, bool or_equal) {
    return or_equal ? find_above_lanes<L, true>(x, n, floor) : find_above_lanes<L, false>(x, n, floor);
}

}  // namespace
}  // namespace pe
