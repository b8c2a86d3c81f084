#include "top_k.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

namespace pe {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kHeapK = 256;  // the largest k the running heap finds the k-th largest for

// The values v[i] = logits[i] (+ bias[j] where i == bias_ids[j]). The scans below look for the few
// values past a floor: the kernel table's find_above runs over the logits between the biased
// positions (SIMD compares, 64 values a step on AVX-512), and only what it finds, and the biased
// positions, are looked at one by one.
struct Values {
    const Kernels& k;
    const float* logits;
    int64_t n;
    const int64_t* bias_ids;  // ascending
    const float* bias;
    int64_t n_bias;

    // Calls visit(i, v[i]) in ascending order of i >= from for every v[i] past floor() — above it,
    // or (or_equal) at least it — or NaN, floor() asked afresh after each visit; false as soon as
    // visit returns false.
    template <typename Floor, typename Visit>
    bool each_past(int64_t from, bool or_equal, Floor floor, Visit visit) const {
        int64_t b = std::lower_bound(bias_ids, bias_ids + n_bias, from) - bias_ids;
        for (int64_t pos = from;; b++) {
            const int64_t end = b < n_bias ? bias_ids[b] : n;  // the next biased position, or n
            while (pos < end) {
                const int64_t i = pos + k.find_above(logits + pos, end - pos, floor(), or_equal);
                if (i == end) break;
                if (!visit(i, logits[i])) return false;
                pos = i + 1;
            }
            if (end == n) return true;
            const float v = logits[end] + bias[b], f = floor();
            if ((or_equal ? !(v < f) : !(v <= f)) && !visit(end, v)) return false;
            pos = end + 1;
        }
    }

    // v[0 .. m) in order, into out.
    void first(int64_t m, std::vector<float>& out) const {
        out.assign(logits, logits + m);
        for (int64_t j = 0; j < n_bias && bias_ids[j] < m; j++) out[size_t(bias_ids[j])] += bias[j];
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
bool collect(const Values& values, float floor, Candidates& got) {
    return values.each_past(0, true, [floor] { return floor; }, [&got](int64_t i, float v) {
        if (v != v) return false;
        got.push_back({v, i});
        return true;
    });
}

// The k-th largest value by a running min-heap of the k largest so far (heap.front() the k-th): the
// first k values fill it, then only the values above its smallest are looked at (on a real model's
// logits, few). NaN where a value is NaN.
float kth_largest_by_heap(const Values& values, int64_t k) {
    std::vector<float> heap;
    values.first(k, heap);
    for (float v : heap)
        if (v != v) return v;
    std::make_heap(heap.begin(), heap.end(), std::greater<float>());
    const bool no_nan = values.each_past(k, false, [&heap] { return heap.front(); }, [&heap](int64_t, float v) {
        if (v != v) return false;
        std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
        heap.back() = v;
        std::push_heap(heap.begin(), heap.end(), std::greater<float>());
        return true;
    });
    return no_nan ? heap.front() : std::numeric_limits<float>::quiet_NaN();
}

// The k-th largest value, selected among all of them; NaN where a value is NaN.
float kth_largest(const Values& values, int64_t k) {
    std::vector<float> all;
    values.first(values.n, all);
    for (float v : all)
        if (v != v) return v;
    std::nth_element(all.begin(), all.begin() + (k - 1), all.end(), std::greater<float>());
    return all[size_t(k - 1)];
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

TopCandidates top_candidates(const Kernels& kernels, const float* logits, int64_t n, int64_t k, float t,
                             const int64_t* bias_ids, const float* bias, int64_t n_bias) {
    TopCandidates out;
    k = std::clamp<int64_t>(k, 1, n);
    const Values values{kernels, logits, n, bias_ids, bias, n_bias};
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
        kth = kth_largest_by_heap(values, k);
        if (kth != kth) return nan();
    } else {
        std::vector<float> sample = sample_of(logits, n);
        if (sample.empty()) return nan();  // a sampled value is NaN
        for (int64_t j = k / 8 + 4; kth != kth && j <= int64_t(sample.size()) / 2; j *= 4) {
            std::nth_element(sample.begin(), sample.begin() + (j - 1), sample.end(), std::greater<float>());
            const float guess = sample[size_t(j - 1)];
            got.clear();
            if (!collect(values, tie_floor(guess, t), got)) return nan();
            std::vector<float> reached;  // the values >= guess
            reached.reserve(got.size());
            for (const auto& c : got)
                if (c.first >= guess) reached.push_back(c.first);
            if (int64_t(reached.size()) >= k) {
                std::nth_element(reached.begin(), reached.begin() + (k - 1), reached.end(), std::greater<float>());
                kth = reached[size_t(k - 1)];
                collected = true;
            }
        }
        if (kth != kth) {
            kth = kth_largest(values, k);
            if (kth != kth) return nan();
        }
    }
    if (!collected) {
        got.clear();
        if (!collect(values, tie_floor(kth, t), got)) return nan();
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
