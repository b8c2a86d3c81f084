#include "top_k.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>

namespace pe {

namespace {

constexpr int64_t kChunk = 16;  // values tested together (a vector compare) before any is looked at alone
constexpr float kInf = std::numeric_limits<float>::infinity();

// Four lanes in the compiler's portable vectors (SSE2 on x86-64, NEON on arm64: the baseline of both).
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));

inline F4 load4(const float* p) {
    F4 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline bool any(I4 m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }

// Whether any of the kChunk values at p is NaN or > x (pass 1's test), or >= x (pass 2's).
inline bool nan_or_above(const float* p, float x) {
    const F4 xs = {x, x, x, x};
    I4 m = {0, 0, 0, 0};
    for (int64_t q = 0; q < kChunk; q += 4) m |= ~(load4(p + q) <= xs);
    return any(m);
}

inline bool reaches(const float* p, float x) {
    const F4 xs = {x, x, x, x};
    I4 m = {0, 0, 0, 0};
    for (int64_t q = 0; q < kChunk; q += 4) m |= load4(p + q) >= xs;
    return any(m);
}

// The values of the run of kChunk positions from i0: the logits in place, or, where a bias goes or
// the run passes n, a copy in buf with the bias added (-inf past n). next: the first bias entry not
// yet passed.
struct Chunks {
    const float* logits;
    int64_t n;
    const int64_t* bias_ids;
    const float* bias;
    int64_t n_bias;
    int64_t next = 0;

    const float* load(int64_t i0, float (&buf)[kChunk], int64_t& len) {
        len = std::min(kChunk, n - i0);
        if (len == kChunk && (next == n_bias || bias_ids[next] >= i0 + kChunk)) return logits + i0;
        for (int64_t j = 0; j < kChunk; j++) buf[j] = j < len ? logits[i0 + j] : -kInf;
        for (; next < n_bias && bias_ids[next] < i0 + len; next++) buf[bias_ids[next] - i0] += bias[next];
        return buf;
    }
};

}  // namespace

TopCandidates top_candidates(const float* logits, int64_t n, int64_t k, float t, const int64_t* bias_ids,
                             const float* bias, int64_t n_bias) {
    TopCandidates out;
    k = std::clamp<int64_t>(k, 1, n);
    float buf[kChunk];

    // Pass 1: the k largest values (a min-heap: heap.front() is the k-th largest so far), the maximum
    // and its first index. A chunk is looked at value by value only while the heap is not full or when
    // one of its values beats the k-th largest so far; the first index of the maximum is always such a
    // value (before it, fewer than k values can equal the maximum).
    std::vector<float> heap;
    heap.reserve(size_t(k));
    Chunks chunks{logits, n, bias_ids, bias, n_bias};
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        int64_t len;
        const float* v = chunks.load(i0, buf, len);
        const bool full = int64_t(heap.size()) == k;
        const float kth = full ? heap.front() : -kInf;
        if (full && !nan_or_above(v, kth)) continue;
        for (int64_t j = 0; j < len; j++) {
            if (v[j] != v[j]) {
                out.max = std::numeric_limits<float>::quiet_NaN();
                return out;
            }
            if (out.argmax < 0 || v[j] > out.max) out.max = v[j], out.argmax = i0 + j;
            if (int64_t(heap.size()) < k) {
                heap.push_back(v[j]);
                std::push_heap(heap.begin(), heap.end(), std::greater<float>());
            } else if (v[j] > heap.front()) {
                std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
                heap.back() = v[j];
                std::push_heap(heap.begin(), heap.end(), std::greater<float>());
            }
        }
    }

    // Pass 2: every value whose scaled value reaches the scaled k-th largest s. A value >= the k-th
    // largest does (the division keeps the order); one below it only when its quotient rounds to s,
    // which needs it within a few units in the last place of it: lo bounds those from below (with room
    // for a quotient in the subnormal range).
    const float kth = heap.front();
    const float s = kth / t;
    float lo = -kInf;
    if (std::isfinite(kth)) {
        const double below = double(kth) - std::fabs(double(kth)) * 0x1p-20 - double(t) * 0x1p-120;
        lo = std::nextafter(float(below), -kInf);
    }
    std::vector<std::pair<float, int64_t>> kept;  // (scaled value, id), ids ascending
    chunks.next = 0;
    for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
        int64_t len;
        const float* v = chunks.load(i0, buf, len);
        if (!reaches(v, lo)) continue;
        for (int64_t j = 0; j < len; j++) {
            const float q = v[j] / t;
            if (v[j] >= kth || (v[j] >= lo && q >= s)) kept.push_back({q, i0 + j});
        }
    }
    // Ascending by scaled value, ties in vocabulary order (numpy's stable argsort of the candidates).
    std::stable_sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    out.ids.reserve(kept.size());
    out.values.reserve(kept.size());
    for (const auto& [q, i] : kept) {
        out.values.push_back(q);
        out.ids.push_back(i);
    }
    return out;
}

}  // namespace pe
