// y = W x for a quantized (or float) weight matrix and a batch of float activations.
//
// Determinism: every output y[t][r] takes the same operations in the same order whatever the batch
// size and the thread split: one vec_dot of weight row r and activation t (or a tile repeating it),
// or, for a packed matrix, the packed kernel, which repeats the scalar reference's vec_dot. A matrix
// is packed or not for its whole life, so one output never changes path.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "huge_buffer.h"
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
bool pack_matrix(const Kernels& k, Matrix& w, HugeBuffer& storage, ThreadPool& pool);

// What a product's packed kernel reads beside the activations' blocks.
struct PackedExtras {
    bool sums = false;    // Activations::block_sums
    bool scales = false;  // Activations::block_scales
};
PackedExtras packed_extras(const Kernels& k, const Matrix& w);

// Where prepare_activations puts what it makes, kept between calls (no allocation once large enough).
struct ActivationBuffers {
    std::vector<uint8_t> blocks;
    std::vector<int32_t> sums;
    std::vector<float> scales;
};

// Converts n_tokens rows of cols floats for multiplying weights of `weight_type`: into its
// vec_dot_type (float activations are used as they are), with the block sums and scales that
// `extras` asks for. Threaded over tokens (parallel_for). before, where given, is called for each
// token just before its row is read, by the thread that converts it (the per-token step that makes
// the row, e.g. a norm, in the same pool run).
Activations prepare_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                                PackedExtras extras, ActivationBuffers& buffers, ThreadPool& pool,
                                const std::function<void(int64_t)>* before = nullptr);

// The rows [r0, r1) of w that thread i of n_threads computes: contiguous, whole packed groups for a
// packed matrix, so that threads never share a group.
void matmul_split(const Matrix& w, int i, int n_threads, int64_t& r0, int64_t& r1);

// y[t * w.rows + r] for r in [r0, r1) and every token of x: one thread's share (no threading).
void matmul_rows(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t r0, int64_t r1);

// All of y = W x for prepared activations, the rows split between the pool's threads.
void matmul_prepared(const Kernels& k, const Matrix& w, const Activations& x, float* y, ThreadPool& pool);

// y[t * rows + r] = dot(W row r, x row t) for t < n_tokens. x: n_tokens x W.cols floats.
void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            ActivationBuffers& buffers);

}  // namespace pe
