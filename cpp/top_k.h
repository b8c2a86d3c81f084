// The sampler's one pass over the vocabulary (pyengine/sampling.py): after a forward pass the logits
// of a whole vocabulary are read once here, and only the few hundred candidates of a top-k draw go
// back to Python, where the rest of the chain runs on them.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kernels.h"

namespace pe {

struct TopCandidates {
    float max = 0;           // the largest value; NaN when any value is NaN (then nothing else is set)
    int64_t argmax = -1;     // the first index holding it
    std::vector<int64_t> ids;    // the candidates, ascending by scaled value, ties by id
    std::vector<float> values;   // their scaled values
};

// Over the values v[i] = logits[i] (+ bias[j] for i == bias_ids[j], a float add; bias_ids ascending,
// each < n): their maximum and its first index, and the candidates of top-k after a temperature t
// (> 0): every i whose v[i] / t (float division, as the sampler's Temperature) is >= the k-th largest
// of the v / t, ties included, with v[i] / t, sorted. k is clamped to 1..n. The scaled k-th largest is
// (the k-th largest v) / t, the division keeping the order, so the top k of the v are found first, and
// the scaled values only compared against it. The scans over the vocabulary take kernels.find_above.
TopCandidates top_candidates(const Kernels& kernels, const float* logits, int64_t n, int64_t k, float t,
                             const int64_t* bias_ids, const float* bias, int64_t n_bias);

}  // namespace pe
