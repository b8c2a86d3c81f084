// The key/value cache of one sequence: per layer and KV head, one row of head_dim keys (and one of
// values) per position, in F16, F32 or Q8_0 (blocks of 32 values with a scale each, llama.cpp's
// -ctk/-ctv q8_0: half F16's bytes). A head's rows are contiguous, position after position, so the
// attention of one head streams through memory instead of striding across the other heads' rows.
//
// A layer with a sliding window (it attends only to the last `window` positions) keeps, once the
// context is longer than window + kMaxBatch positions, a ring of window + kMaxBatch slots instead of
// one row per position: position p lives in slot p % ring. Each row is written twice, at its slot and
// at slot + ring, so the window ending at any position is one run of contiguous rows, in position
// order, whatever the wrap (the attention kernels read contiguous rows; the order of their sums is
// that of positions, so a ring and a full layer give the same bits). The kMaxBatch extra slots hold
// the rest of a batch stored before its first token attends.
#pragma once

#include <cstdint>
#include <vector>

#include "huge_buffer.h"
#include "kernels/kernels.h"
#include "quant/blocks.h"

namespace pe {

class KVCache {
public:
    // Tokens a batch may store before attending; the forward pass cuts longer batches to this.
    static constexpr int64_t kMaxBatch = 256;

    // kv_dim = n_heads * head_dim. type: TYPE_F16, TYPE_F32 or TYPE_Q8_0 (head_dim a multiple of 32).
    // windows: per layer, 0 (every position) or the sliding window; empty: no windows.
    KVCache(int n_layers, int64_t n_ctx, int kv_dim, int n_heads, GGMLType type, const std::vector<int>& windows = {});

    // Bytes a cache of this shape allocates (the same rule as the constructor), for up-front checks.
    static size_t bytes_for(int n_layers, int64_t n_ctx, int kv_dim, GGMLType type, const std::vector<int>& windows);

    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }
    GGMLType type() const { return type_; }
    size_t bytes() const { return k_.size() * 2; }

    // Forget every position from n on (n <= n_past). A ring layer must still hold the window before
    // n: throws std::invalid_argument when the positions it needs were overwritten (by positions up
    // to the highest ever written, which an earlier truncate does not unwrite).
    void truncate(int64_t n);
    // Become a copy of `other`'s first other.n_past positions (same shape required).
    void copy_from(const KVCache& other);
    void set_n_past(int64_t n) { n_past_ = n; }
    // Positions up to `end` are about to be stored (a forward pass, before its first store: one that
    // is interrupted has overwritten ring slots all the same).
    void will_write(int64_t end) {
        if (end > written_) written_ = end;
    }

    // Stores n_tokens rows of kv_dim floats (every head's head_dim values) at positions pos ... for
    // one layer, each head's values converted to the cache type by `convert` (a kernel table's
    // from_float for it: the reference's bytes).
    void store(int layer, int64_t pos, int64_t n_tokens, const float* k, const float* v, from_float_fn convert);

    // What a token at position pos attends to in `layer`: per head, n rows of keys and values, the
    // positions pos - n + 1 ... pos in order; head h's row i at keys + h * head_stride + i * row_stride.
    struct Span {
        const uint8_t* keys;
        const uint8_t* values;
        int64_t n;
        size_t head_stride;
    };
    Span span(int layer, int64_t pos) const;

    // Bytes of one head's row (head_dim values).
    size_t row_bytes() const { return row_bytes_; }

private:
    struct Layer {
        size_t offset = 0;   // of its first row in k_ and v_, in rows of every head (kv_dim values)
        int64_t rows = 0;    // rows allocated
        int window = 0;      // 0: every position
        int64_t ring = 0;    // slots of the ring (rows = 2 * ring), 0: one row per position
    };
    static std::vector<Layer> plan(int n_layers, int64_t n_ctx, const std::vector<int>& windows, size_t& total_rows);
    // Byte offset in k_ and v_ of head h's first row in layer L: the layer's heads one after another.
    size_t head_offset(const Layer& L, int h) const {
        return (L.offset * size_t(n_heads_) + size_t(h) * size_t(L.rows)) * row_bytes_;
    }

    int n_layers_;
    int64_t n_ctx_;
    int kv_dim_, n_heads_, head_dim_;
    GGMLType type_;
    size_t row_bytes_;  // of one head's row
    int64_t n_past_ = 0;
    int64_t written_ = 0;  // the end of the highest position stored since the cache was last emptied
    std::vector<Layer> layers_;
    HugeBuffer k_;  // zero pages until first written (PageSize::Small): memory as positions are used
    HugeBuffer v_;
};

}  // namespace pe
