#include "matmul.h"

#include <algorithm>

namespace pe {

namespace {
// Weight rows per tile: a tile's rows stay in L1/L2 while every token of the batch passes over them.
constexpr int64_t kRowTile = 16;
// Below this many tokens per thread, converting the activations is cheaper on one thread.
constexpr int64_t kParallelQuantizeTokens = 8;

}  // namespace

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
