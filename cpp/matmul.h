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
// whether it did. The original data stays valid (and is still what w.data points at). Threads split
// the row groups.
bool pack_matrix(const Kernels& k, Matrix& w, std::vector<uint8_t>& storage, ThreadPool& pool);

// A batch of activations in a weight type's vec_dot_type, ready for matmul_rows.
struct Activations {
    const uint8_t* data = nullptr;  // n_tokens rows of row_bytes
    size_t row_bytes = 0;
    int64_t n_tokens = 0;
    const int32_t* block_sums = nullptr;  // n_tokens x n_blocks int8 sums of Q8_0 blocks, or none
    int64_t n_blocks = 0;
};

// Converts n_tokens rows of cols floats for multiplying weights of `weight_type`: into its
// vec_dot_type (in `buffer`, resized; float activations are used as they are), with the block
// sums packed kernels need when `with_sums` (in `sums`). Threaded over tokens for large batches.
Activations prepare_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                                bool with_sums, std::vector<uint8_t>& buffer, std::vector<int32_t>& sums,
                                ThreadPool& pool);

// Whether w's product needs block sums from prepare_activations.
bool needs_block_sums(const Kernels& k, const Matrix& w);

// The rows [r0, r1) of w that thread i of n_threads computes: contiguous, whole packed groups for a
// packed matrix, so that threads never share a group.
void matmul_split(const Matrix& w, int i, int n_threads, int64_t& r0, int64_t& r1);

// y[t * w.rows + r] for r in [r0, r1) and every token of x: one thread's share (no threading).
void matmul_rows(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t r0, int64_t r1);

// All of y = W x for prepared activations, the rows split between the pool's threads.
void matmul_prepared(const Kernels& k, const Matrix& w, const Activations& x, float* y, ThreadPool& pool);

// y[t * rows + r] = dot(W row r, x row t) for t < n_tokens. x: n_tokens x W.cols floats.
// `scratch` holds the converted activations between calls (no allocation once it is large enough).
void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            std::vector<uint8_t>& scratch);

}  // namespace pe
