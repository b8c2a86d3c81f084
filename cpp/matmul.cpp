#include "matmul.h"

#include <algorithm>

namespace pe {

namespace {
// Weight rows per tile: a tile's rows stay in L1/L2 while every token of the batch passes over them.
constexpr int64_t kRowTile = 16;
// Below this many tokens per thread, converting the activations is cheaper on one thread.
constexpr int64_t kParallelQuantizeTokens = 8;
// Packed groups of kPackRows rows per tile: 4 groups of a 2048-wide Q4_0 matrix are 37 KB, in L2
// while every token of the batch passes over them.
constexpr int64_t kGroupTile = 4;

// Sums of the int8 values of every Q8_0 block of n_tokens activations (what packed Q4_0 needs).
const int32_t* q8_0_block_sums(const uint8_t* xq, size_t row_bytes, int64_t n_tokens, int64_t n_blocks) {
    thread_local std::vector<int32_t> sums;
    sums.resize(size_t(n_tokens * n_blocks));
    for (int64_t t = 0; t < n_tokens; t++) {
        const auto* x = reinterpret_cast<const block_q8_0*>(xq + size_t(t) * row_bytes);
        for (int64_t b = 0; b < n_blocks; b++) {
            int32_t s = 0;
            for (int j = 0; j < QK; j++) s += x[b].qs[j];
            sums[size_t(t * n_blocks + b)] = s;
        }
    }
    return sums.data();
}

void matmul_packed(const Kernels& k, const Matrix& w, const uint8_t* xq, size_t xq_row_bytes, int64_t n_tokens,
                   float* y, ThreadPool& pool) {
    const packed_dot_fn dot = k.packed_dot[w.type];
    const size_t group_bytes = row_size(w.type, w.cols) * kPackRows;
    const auto* packed = static_cast<const uint8_t*>(w.packed);
    const int64_t n_blocks = w.cols / type_traits(w.type)->block_size;
    const int32_t* sums = k.packed_xsums[w.type] ? q8_0_block_sums(xq, xq_row_bytes, n_tokens, n_blocks) : nullptr;
    const int n = int(w.cols);
    pool.run([&](int i, int n_threads) {
        int64_t g0, g1;
        split_range(w.rows / kPackRows, i, n_threads, g0, g1);
        for (int64_t gt = g0; gt < g1; gt += kGroupTile) {
            const int64_t gt_end = std::min(gt + kGroupTile, g1);
            for (int64_t t = 0; t < n_tokens; t += kPackTokens) {
                const int nt = int(std::min<int64_t>(kPackTokens, n_tokens - t));
                for (int64_t g = gt; g < gt_end; g++)
                    dot(n, packed + size_t(g) * group_bytes, xq + size_t(t) * xq_row_bytes, xq_row_bytes,
                        sums ? sums + t * n_blocks : nullptr, size_t(n_blocks), nt, y + t * w.rows + g * kPackRows,
                        size_t(w.rows));
            }
        }
    });
}

}  // namespace

bool pack_matrix(const Kernels& k, Matrix& w, std::vector<uint8_t>& storage) {
    if (!k.pack[w.type] || !k.packed_dot[w.type] || w.rows % kPackRows != 0) return false;
    const size_t row_bytes = row_size(w.type, w.cols);
    storage.resize(row_bytes * size_t(w.rows));
    const auto* src = static_cast<const uint8_t*>(w.data);
    for (int64_t g = 0; g < w.rows / kPackRows; g++)
        k.pack[w.type](int(w.cols), src + size_t(g) * kPackRows * row_bytes, row_bytes,
                       storage.data() + size_t(g) * kPackRows * row_bytes);
    w.packed = storage.data();
    return true;
}

size_t quantize_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                            std::vector<uint8_t>& out, ThreadPool& pool) {
    const GGMLType xtype = type_traits(weight_type)->vec_dot_type;
    const size_t row_bytes = row_size(xtype, cols);
    if (out.size() < row_bytes * size_t(n_tokens)) out.resize(row_bytes * size_t(n_tokens));
    const from_float_fn convert = k.from_float[xtype];
    uint8_t* dst = out.data();
    auto task = [&](int i, int n_threads) {
        int64_t t0, t1;
        split_range(n_tokens, i, n_threads, t0, t1);
        for (int64_t t = t0; t < t1; t++) convert(x + t * cols, dst + size_t(t) * row_bytes, cols);
    };
    if (n_tokens >= kParallelQuantizeTokens * pool.n_threads()) {
        pool.run(task);
    } else {
        task(0, 1);
    }
    return row_bytes;
}

void matmul_prequantized(const Kernels& k, const Matrix& w, const uint8_t* xq, size_t xq_row_bytes, int64_t n_tokens,
                         float* y, ThreadPool& pool) {
    if (w.packed) return matmul_packed(k, w, xq, xq_row_bytes, n_tokens, y, pool);
    const vec_dot_fn dot = k.vec_dot[w.type];
    const size_t w_row_bytes = row_size(w.type, w.cols);
    const auto* wbytes = static_cast<const uint8_t*>(w.data);
    const int n = int(w.cols);
    const vec_dot_tile_fn tile = n_tokens >= kTileTokens ? k.vec_dot_tile[w.type] : nullptr;
    pool.run([&](int i, int n_threads) {
        int64_t r0, r1;
        split_range(w.rows, i, n_threads, r0, r1);
        for (int64_t rt = r0; rt < r1; rt += kRowTile) {
            const int64_t rt_end = std::min(rt + kRowTile, r1);
            int64_t t = 0;
            if (tile) {
                // kTileRows x kTileTokens at a time; every output equals the vec_dot below bit for bit.
                for (; t + kTileTokens <= n_tokens; t += kTileTokens) {
                    int64_t r = rt;
                    for (; r + kTileRows <= rt_end; r += kTileRows)
                        tile(n, wbytes + size_t(r) * w_row_bytes, w_row_bytes, xq + size_t(t) * xq_row_bytes,
                             xq_row_bytes, y + t * w.rows + r, size_t(w.rows));
                    for (; r < rt_end; r++)
                        for (int64_t c = t; c < t + kTileTokens; c++)
                            y[c * w.rows + r] = dot(n, wbytes + size_t(r) * w_row_bytes, xq + size_t(c) * xq_row_bytes);
                }
            }
            for (; t < n_tokens; t++) {
                const uint8_t* xt = xq + size_t(t) * xq_row_bytes;
                float* yt = y + t * w.rows;
                for (int64_t r = rt; r < rt_end; r++) yt[r] = dot(n, wbytes + size_t(r) * w_row_bytes, xt);
            }
        }
    });
}

void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            std::vector<uint8_t>& scratch) {
    if (type_traits(w.type)->vec_dot_type == TYPE_F32) {
        // Float weights take the float activations as they are.
        matmul_prequantized(k, w, reinterpret_cast<const uint8_t*>(x), size_t(w.cols) * sizeof(float), n_tokens, y,
                            pool);
        return;
    }
    const size_t row_bytes = quantize_activations(k, w.type, x, n_tokens, w.cols, scratch, pool);
    matmul_prequantized(k, w, scratch.data(), row_bytes, n_tokens, y, pool);
}

}  // namespace pe
