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
constexpr int64_t kHeapK = 256;  // the largest k the running heap finds the k-th largest for

// Four lanes in the compiler's portable vectors (SSE2 on x86-64, NEON on arm64: the baseline of both).
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));

inline F4 load4(const float* p) {
    F4 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline bool any(I4 m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }

// Whether any of the kChunk values at p is NaN or > x (OrEqual: or >= x).
template <bool OrEqual>
inline bool nan_or_past(const float* p, float x) {
    const F4 xs = {x, x, x, x};
    I4 m = {0, 0, 0, 0};
    for (int64_t q = 0; q < kChunk; q += 4) m |= OrEqual ? ~(load4(p + q) < xs) : ~(load4(p + q) <= xs);
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

using Candidates = std::vector<std::pair<float, int64_t>>;  // (value, id), ids ascending

// Below this no value's quotient by t can round to kth / t (nor reach it): a quotient within a few
// units in the last place of kth / t needs a value within a few of kth's, with room for a quotient
// in the subnormal range. Non-decreasing in kth.
float tie_floor(float kth, float t) {
    if (!std::isfinite(kth)) return -kInf;
    const double below = double(kth) - std::fabs(double(kth)) * 0x1p-20 - double(t) * 0x1p-120;
    return std::nextafter(float(below), -kInf);
}

// Every value >= floor, in one pass; false where a value is NaN.
bool collect(Chunks chunks, float floor, Candidates& got) {
    float buf[kChunk];
    for (int64_t i0 = 0; i0 < chunks.n; i0 += kChunk) {
        int64_t len;
        const float* v = chunks.load(i0, buf, len);
        if (!nan_or_past<true>(v, floor)) continue;
        for (int64_t j = 0; j < len; j++) {
            if (v[j] != v[j]) return false;
            if (v[j] >= floor) got.push_back({v[j], i0 + j});
        }
    }
    return true;
}

// The k-th largest value by a running min-heap of the k largest so far (heap.front() the k-th): a
// chunk is looked at value by value only while the heap is not full or when one of its values beats
// it. NaN where a value is NaN. For a small k: on a real model's logits few chunks get past the test.
float kth_largest_by_heap(Chunks chunks, int64_t k) {
    float buf[kChunk];
    std::vector<float> heap;
    heap.reserve(size_t(k));
    for (int64_t i0 = 0; i0 < chunks.n; i0 += kChunk) {
        int64_t len;
        const float* v = chunks.load(i0, buf, len);
        if (int64_t(heap.size()) == k && !nan_or_past<false>(v, heap.front())) continue;
        for (int64_t j = 0; j < len; j++) {
            if (v[j] != v[j]) return v[j];
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
    return heap.front();
}

// The k-th largest value, selected among all of them; NaN where a value is NaN.
float kth_largest(Chunks chunks, int64_t k) {
    float buf[kChunk];
    std::vector<float> values(size_t(chunks.n));
    for (int64_t i0 = 0; i0 < chunks.n; i0 += kChunk) {
        int64_t len;
        const float* v = chunks.load(i0, buf, len);
        for (int64_t j = 0; j < len; j++) {
            if (v[j] != v[j]) return v[j];
            values[size_t(i0 + j)] = v[j];
        }
    }
    std::nth_element(values.begin(), values.begin() + (k - 1), values.end(), std::greater<float>());
    return values[size_t(k - 1)];
}

// Every 16th logit (the bias left out): its j-th largest is about the (16 j)-th largest of all, a
// guess at a value below the k-th largest. Empty where a sample value is NaN.
std::vector<float> sample_of(const float* logits, int64_t n) {
    constexpr int64_t kStride = 16;
    std::vector<float> sample;
    sample.reserve(size_t(n / kStride + 1));
    for (int64_t i = 0; i < n; i += kStride) {
        if (logits[i] != logits[i]) return {};
        sample.push_back(logits[i]);
    }
    return sample;
}

}  // namespace

TopCandidates top_candidates(const float* logits, int64_t n, int64_t k, float t, const int64_t* bias_ids,
                             const float* bias, int64_t n_bias) {
    TopCandidates out;
    k = std::clamp<int64_t>(k, 1, n);
    const Chunks chunks{logits, n, bias_ids, bias, n_bias};
    const auto nan = [&] {
        out.max = std::numeric_limits<float>::quiet_NaN();
        return out;
    };

    // The candidates: every value >= tie_floor(kth), kth the k-th largest, in a pass after kth is
    // known. For a small k a running heap finds kth in one pass. For a larger one the heap costs more
    // than a guess: a pass keeps the values >= tie_floor(guess), and when k of them reach the guess,
    // kth >= guess, so they hold all the candidates (tie_floor does not decrease) and kth is the k-th
    // largest among them, a selection over a few times k values. The guess starts at about the
    // (2k + 64)-th largest (the sample's j-th) and goes 4 times lower while it is too high. Past the
    // sample (k near n), a selection over all the values finds kth.
    Candidates got;  // once kth is known: every value >= tie_floor(kth), or more
    bool collected = false;
    float kth = std::numeric_limits<float>::quiet_NaN();
    if (k <= kHeapK) {
        kth = kth_largest_by_heap(chunks, k);
        if (kth != kth) return nan();
    } else {
        std::vector<float> sample = sample_of(logits, n);
        if (sample.empty()) return nan();  // a sampled value is NaN
        for (int64_t j = k / 8 + 4; kth != kth && j <= int64_t(sample.size()) / 2; j *= 4) {
            std::nth_element(sample.begin(), sample.begin() + (j - 1), sample.end(), std::greater<float>());
            const float guess = sample[size_t(j - 1)];
            got.clear();
            if (!collect(chunks, tie_floor(guess, t), got)) return nan();
            std::vector<float> values;
            values.reserve(got.size());
            for (const auto& c : got)
                if (c.first >= guess) values.push_back(c.first);
            if (int64_t(values.size()) >= k) {
                std::nth_element(values.begin(), values.begin() + (k - 1), values.end(), std::greater<float>());
                kth = values[size_t(k - 1)];
                collected = true;
            }
        }
        if (kth != kth) {
            kth = kth_largest(chunks, k);
            if (kth != kth) return nan();
        }
    }
    if (!collected) {
        got.clear();
        if (!collect(chunks, tie_floor(kth, t), got)) return nan();
    }

    // The maximum (>= kth, so among them) at its first index; the candidates whose quotient reaches
    // s = kth / t: those >= kth (the division keeps the order) and those whose quotient rounds to s.
    const float s = kth / t;
    Candidates kept;  // (scaled value, id)
    for (const auto& [v, i] : got) {
        if (out.argmax < 0 || v > out.max) out.max = v, out.argmax = i;
        const float q = v / t;
        if (v >= kth || q >= s) kept.push_back({q, i});
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
