#include "matmul.h"

#include <algorithm>
#include <stdexcept>

#include "quant/fp16.h"

namespace pe {

namespace {
// Weight rows per tile: a tile's rows stay in L1/L2 while every token of the batch passes over them.
constexpr int64_t kRowTile = 16;
// Packed groups of kPackRows rows per tile: 4 groups of a 2048-wide Q4_0 matrix are 37 KB, in L2
// while every token of the batch passes over them.
constexpr int64_t kGroupTile = 4;

// Stream pairs [j0, j1) of a matrix-vector product over groups [g0, g1), the first stream's `half`
// groups beside the rest: pair j is groups g0 + j and g0 + half + j (alone where the second is past g1).
void packed_pairs(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t g0, int64_t g1,
                  int64_t half, int64_t j0, int64_t j1) {
    const size_t group_bytes = row_size(w.type, w.cols) * kPackRows;
    const auto* packed = static_cast<const uint8_t*>(w.packed);
    const int n = int(w.cols);
    for (int64_t j = j0; j < j1; j++) {
        const int64_t ga = g0 + j, gb = g0 + half + j;
        if (gb < g1) {
            k.packed_dot_pair[w.type](n, packed + size_t(ga) * group_bytes, packed + size_t(gb) * group_bytes, x, 0,
                                      y + ga * kPackRows, y + gb * kPackRows);
        } else {
            k.packed_dot[w.type](n, packed + size_t(ga) * group_bytes, x, 0, 1, y + ga * kPackRows, size_t(w.rows));
        }
    }
}

// Whether a product of w and x runs as packed_pairs' two streams.
bool paired(const Kernels& k, const Matrix& w, const Activations& x) {
    return w.packed && x.n_tokens == 1 && k.packed_dot_pair[w.type];
}

// The groups of the first of the two streams over `groups` groups: the first half, rounded up.
int64_t first_stream(int64_t groups) { return (groups + 1) / 2; }

void packed_rows(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t r0, int64_t r1) {
    const int64_t g0 = r0 / kPackRows, g1 = r1 / kPackRows;
    if (paired(k, w, x)) {
        // A matrix-vector product: the first and the second half of the groups side by side, two
        // streams from memory at once.
        const int64_t half = first_stream(g1 - g0);
        return packed_pairs(k, w, x, y, g0, g1, half, 0, half);
    }
    const packed_dot_fn dot = k.packed_dot[w.type], two = k.packed_dot_two[w.type];
    const size_t group_bytes = row_size(w.type, w.cols) * kPackRows;
    const auto* packed = static_cast<const uint8_t*>(w.packed);
    const int n = int(w.cols);
    for (int64_t gt = g0; gt < g1; gt += kGroupTile) {
        const int64_t gt_end = std::min(gt + kGroupTile, g1);
        for (int64_t t = 0; t < x.n_tokens; t += kPackTokens) {
            const int nt = int(std::min<int64_t>(kPackTokens, x.n_tokens - t));
            for (int64_t g = gt; g < gt_end;) {
                if (two && g + 1 < gt_end) {  // two groups a pass where the table has it
                    two(n, packed + size_t(g) * group_bytes, x, t, nt, y + t * w.rows + g * kPackRows, size_t(w.rows));
                    g += 2;
                } else {
                    dot(n, packed + size_t(g) * group_bytes, x, t, nt, y + t * w.rows + g * kPackRows, size_t(w.rows));
                    g++;
                }
            }
        }
    }
}

}  // namespace

bool pack_matrix(const Kernels& k, Matrix& w, HugeBuffer& storage, ThreadPool& pool) {
    if (!k.pack[w.type] || !k.packed_dot[w.type] || w.rows % kPackRows != 0) return false;
    const size_t row_bytes = row_size(w.type, w.cols);
    storage = HugeBuffer(row_bytes * size_t(w.rows));
    const auto* src = static_cast<const uint8_t*>(w.data);
    uint8_t* dst = storage.data();
    pool.run([&](int i, int n_threads) {
        int64_t g0, g1;
        split_range(w.rows / kPackRows, i, n_threads, g0, g1);
        for (int64_t g = g0; g < g1; g++)
            k.pack[w.type](int(w.cols), src + size_t(g) * kPackRows * row_bytes, row_bytes,
                           dst + size_t(g) * kPackRows * row_bytes);
    });
    w.packed = storage.data();
    return true;
}

PackedExtras packed_extras(const Kernels& k, const Matrix& w) {
    PackedExtras e;
    e.sums = w.packed && k.packed_xsums[w.type];
    e.scales = w.packed && k.packed_xscales[w.type];
    return e;
}

Activations prepare_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                                PackedExtras extras, ActivationBuffers& buffers, ThreadPool& pool,
                                const std::function<void(int64_t)>* before) {
    const GGMLType xtype = type_traits(weight_type)->vec_dot_type;
    Activations a;
    a.n_tokens = n_tokens;
    if (xtype == TYPE_F32) {  // float weights take the float activations as they are
        if (before) parallel_for(pool, n_tokens, *before);
        a.data = reinterpret_cast<const uint8_t*>(x);
        a.row_bytes = size_t(cols) * sizeof(float);
        return a;
    }
    a.row_bytes = row_size(xtype, cols);
    a.n_blocks = cols / type_traits(xtype)->block_size;
    // Only Q8_0 activations carry sums, and Q8_0 and Q8_1 ones scales: packed_xsums and
    // packed_xscales are set for the types paired with them alone.
    if ((extras.sums && xtype != TYPE_Q8_0) || (extras.scales && xtype != TYPE_Q8_0 && xtype != TYPE_Q8_1))
        throw std::logic_error("packed kernels asked for block sums or scales that their activations lack");
    // block_sums and block_scales: whole passes of kPackTokens (packed_extra_index)
    const size_t n_values = size_t((n_tokens + kPackTokens - 1) / kPackTokens * kPackTokens * a.n_blocks);
    if (buffers.blocks.size() < a.row_bytes * size_t(n_tokens)) buffers.blocks.resize(a.row_bytes * size_t(n_tokens));
    if (extras.sums && buffers.sums.size() < n_values) buffers.sums.resize(n_values);
    if (extras.scales && buffers.scales.size() < 2 * n_values) buffers.scales.resize(2 * n_values);
    const from_float_fn convert = k.from_float[xtype];
    uint8_t* dst = buffers.blocks.data();
    int32_t* sums_out = extras.sums ? buffers.sums.data() : nullptr;
    float* scales_out = extras.scales ? buffers.scales.data() : nullptr;
    const int64_t n_blocks = a.n_blocks;
    const size_t row_bytes = a.row_bytes;
    parallel_for(pool, n_tokens, [&](int64_t t) {
        if (before) (*before)(t);
        const uint8_t* row = dst + size_t(t) * row_bytes;
        convert(x + t * cols, dst + size_t(t) * row_bytes, cols);
        if (sums_out) {  // the int8 sums, for packed kernels that subtract a zero point
            const auto* blocks = reinterpret_cast<const block_q8_0*>(row);
            for (int64_t b = 0; b < n_blocks; b++) {
                int32_t s = 0;
                for (int j = 0; j < QK; j++) s += blocks[b].qs[j];
                sums_out[packed_extra_index(t, b, n_blocks, n_tokens)] = s;
            }
        }
        if (scales_out) {  // the fp16 scales as floats, converted here once for every row group
            for (int64_t b = 0; b < n_blocks; b++) {
                float* out = scales_out + 2 * packed_extra_index(t, b, n_blocks, n_tokens);
                if (xtype == TYPE_Q8_1) {
                    const auto& block = reinterpret_cast<const block_q8_1*>(row)[b];
                    out[0] = fp16_to_fp32(block.d);
                    out[1] = fp16_to_fp32(block.s);
                } else {
                    out[0] = fp16_to_fp32(reinterpret_cast<const block_q8_0*>(row)[b].d);
                    out[1] = 0.0f;
                }
            }
        }
    });
    a.data = buffers.blocks.data();
    a.block_sums = sums_out;
    a.block_scales = scales_out;
    return a;
}

void matmul_split(const Matrix& w, int i, int n_threads, int64_t& r0, int64_t& r1) {
    if (!w.packed) return split_range(w.rows, i, n_threads, r0, r1);
    split_range(w.rows / kPackRows, i, n_threads, r0, r1);
    r0 *= kPackRows;
    r1 *= kPackRows;
}

void matmul_rows(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t r0, int64_t r1) {
    if (w.packed) return packed_rows(k, w, x, y, r0, r1);
    const vec_dot_fn dot = k.vec_dot[w.type];
    const size_t w_row_bytes = row_size(w.type, w.cols);
    const auto* wbytes = static_cast<const uint8_t*>(w.data);
    const int n = int(w.cols);
    const int64_t n_tokens = x.n_tokens;
    const uint8_t* xq = x.data;
    const size_t xq_row_bytes = x.row_bytes;
    const vec_dot_tile_fn tile = n_tokens >= kTileTokens ? k.vec_dot_tile[w.type] : nullptr;
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
}

ShareUnits share_units(const Kernels& k, const Matrix& w, const Activations& x, int i, int n_threads) {
    ShareUnits s;
    matmul_split(w, i, n_threads, s.r0, s.r1);
    const size_t row_bytes = row_size(w.type, w.cols);
    const size_t target = kUnitBytes / size_t(std::min<int64_t>(x.n_tokens, kPackTokens));
    if (paired(k, w, x)) {
        s.half = first_stream((s.r1 - s.r0) / kPackRows);
        s.step = std::max<int64_t>(1, int64_t(target / (2 * kPackRows * row_bytes)));
        s.count = (s.half + s.step - 1) / s.step;
        return s;
    }
    // whole row tiles (packed: whole group tiles)
    const int64_t tile = w.packed ? kGroupTile * kPackRows : kRowTile;
    s.step = std::max<int64_t>(1, int64_t(target / (size_t(tile) * row_bytes))) * tile;
    s.count = (s.r1 - s.r0 + s.step - 1) / s.step;
    return s;
}

namespace {
// Unit u of a share: its stream pairs [begin, end) (paired) or its rows, for unit_rows and matmul_unit alike.
struct Span {
    int64_t begin, end;
};
Span unit_span(const ShareUnits& s, int64_t u) {
    if (s.half) return {u * s.step, std::min((u + 1) * s.step, s.half)};
    return {s.r0 + u * s.step, std::min(s.r0 + (u + 1) * s.step, s.r1)};
}
}  // namespace

void unit_rows(const ShareUnits& s, int64_t u, RowRun (&runs)[2]) {
    const Span span = unit_span(s, u);
    if (!s.half) {
        runs[0] = {span.begin, span.end};
        runs[1] = {0, 0};
        return;
    }
    const int64_t g0 = s.r0 / kPackRows, g1 = s.r1 / kPackRows;
    runs[0] = {(g0 + span.begin) * kPackRows, (g0 + span.end) * kPackRows};
    const int64_t b0 = std::min(g0 + s.half + span.begin, g1), b1 = std::min(g0 + s.half + span.end, g1);
    runs[1] = {b0 * kPackRows, b1 * kPackRows};
}

void matmul_unit(const Kernels& k, const Matrix& w, const Activations& x, float* y, const ShareUnits& s, int64_t u) {
    const Span span = unit_span(s, u);
    if (s.half) return packed_pairs(k, w, x, y, s.r0 / kPackRows, s.r1 / kPackRows, s.half, span.begin, span.end);
    matmul_rows(k, w, x, y, span.begin, span.end);
}

bool WorkShares::reset(const Kernels& k, const std::pair<const Matrix*, float*>* products, int n_products,
                       const Activations& x, int n_threads, bool after) {
    k_ = &k;
    x_ = &x;
    products_ = products;
    n_products_ = n_products;
    n_threads_ = n_threads;
    const size_t n_shares = size_t(n_products) * size_t(n_threads);
    shares_.resize(n_shares);
    if (claims_size_ < n_shares) {
        claims_ = std::make_unique<Claims[]>(n_shares);
        claims_size_ = n_shares;
    }
    bool same = true;
    size_t max_units = 0;
    for (int p = 0; p < n_products; p++)
        for (int i = 0; i < n_threads; i++) {
            ShareUnits& s = shares_[size_t(p * n_threads + i)];
            s = share_units(k, *products[p].first, x, i, n_threads);
            same = same && s.same_cut(shares_[size_t(i)]);
            claims_[size_t(p * n_threads + i)].v.store(uint64_t(s.count) << 32, std::memory_order_relaxed);
            max_units = std::max(max_units, size_t(s.count));
        }
    if (!after || !same) return same;
    lines_ = (max_units + kPerLine - 1) / kPerLine;
    if (done_size_ < size_t(n_threads) * lines_) {
        done_size_ = size_t(n_threads) * lines_;
        done_ = std::make_unique<DoneLine[]>(done_size_);
    }
    for (size_t j = 0; j < size_t(n_threads) * lines_; j++)
        for (auto& d : done_[j].v) d.store(0, std::memory_order_relaxed);
    return same;
}

void matmul_prepared(const Kernels& k, const Matrix& w, const Activations& x, float* y, ThreadPool& pool) {
    pool.run([&](int i, int n_threads) {
        int64_t r0, r1;
        matmul_split(w, i, n_threads, r0, r1);
        matmul_rows(k, w, x, y, r0, r1);
    });
}

void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            ActivationBuffers& buffers) {
    const Activations a = prepare_activations(k, w.type, x, n_tokens, w.cols, packed_extras(k, w), buffers, pool);
    matmul_prepared(k, w, a, y, pool);
}

}  // namespace pe
