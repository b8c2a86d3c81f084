// Attention built from a table's own row kernels: one vec_dot per key row, one axpy per value row.
// The reference table uses it with the scalar kernels, NEON with its own (the AVX2 and AVX-512 tables
// have attend_lanes.h, which converts each cache row once for all the heads that share it). Each unit
// instantiates it with its own functions, which have internal linkage in the SIMD units, so no
// instantiation compiled for one ISA can be picked by the linker for another.
#pragma once

#include <algorithm>
#include <cmath>

#include "kernels.h"

namespace pe {

template <vec_dot_fn Dot, axpy_fn Axpy>
void attend_by_rows(int hd, int n_q, const float* q, const void* vkeys, const void* vvalues, size_t kv_stride,
                    int64_t n_pos, float scale, float* scores, float* out, float* max_out, double* sum_out) {
    const auto* keys = static_cast<const uint8_t*>(vkeys);
    const auto* values = static_cast<const uint8_t*>(vvalues);
    for (int j = 0; j < n_q; j++) {
        float* s = scores + size_t(j) * size_t(n_pos);
        float max_score = -INFINITY;
        for (int64_t p = 0; p < n_pos; p++) {
            s[p] = Dot(hd, keys + size_t(p) * kv_stride, q + size_t(j) * size_t(hd)) * scale;
            max_score = std::max(max_score, s[p]);
        }
        double sum = 0.0;
        for (int64_t p = 0; p < n_pos; p++) {
            s[p] = std::exp(s[p] - max_score);
            sum += s[p];
        }
        max_out[j] = max_score;
        sum_out[j] = sum;
        const float inv_sum = float(1.0 / sum);
        float* o = out + size_t(j) * size_t(hd);
        std::fill(o, o + hd, 0.0f);
        for (int64_t p = 0; p < n_pos; p++) Axpy(hd, s[p] * inv_sum, values + size_t(p) * kv_stride, o);
    }
}

}  // namespace pe
