// y = W x for a quantized (or float) weight matrix and a batch of float activations.
//
// Determinism: every output y[t][r] takes the same operations in the same order whatever the batch
// size and the thread split: one vec_dot of weight row r and activation t (or a tile repeating it),
// or, for a packed matrix, the packed kernel, which repeats the scalar reference's vec_dot. A matrix
// is packed or not for its whole life, so one output never changes path.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "threadpool.h"

namespace pe {

struct Matrix {
    GGMLType type;
    const void* data;  // rows x row_bytes, row-major, used in place (memory-mapped)
    int64_t rows;      // output features
    int64_t cols;      // input features; a multiple of the type's block size
    const void* packed = nullptr;  // the same rows repacked for the ISA's packed_dot (pack_matrix), or none
};

// Packs w's rows for k.packed_dot into `storage` (same size as the weights) and points w.packed at
// it, when the ISA has packed kernels for w's type and w.rows is a multiple of kPackRows; returns
// whether it did. The original data stays valid (and is still what w.data points at).
bool pack_matrix(const Kernels& k, Matrix& w, std::vector<uint8_t>& storage);

// Converts n_tokens rows of cols floats into the weight type's vec_dot_type, into `out` (resized).
// Returns the bytes per converted row.
size_t quantize_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                            std::vector<uint8_t>& out, ThreadPool& pool);

// y[t * rows + r] = dot(W row r, x row t) for t < n_tokens. x: n_tokens x W.cols floats.
// `scratch` holds the converted activations between calls (no allocation once it is large enough).
void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            std::vector<uint8_t>& scratch);

// The same product on activations already converted by quantize_activations.
void matmul_prequantized(const Kernels& k, const Matrix& w, const uint8_t* xq, size_t xq_row_bytes, int64_t n_tokens,
                         float* y, ThreadPool& pool);

}  // namespace pe
