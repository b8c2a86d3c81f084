// The key/value cache of one sequence: [layer][position][kv_dim], in F16 or F32.
#pragma once

#include <cstdint>
#include <vector>

#include "quant/blocks.h"

namespace pe {

class KVCache {
public:
    // type: TYPE_F16 or TYPE_F32.
    KVCache(int n_layers, int64_t n_ctx, int kv_dim, GGMLType type);

    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }
    GGMLType type() const { return type_; }
    size_t bytes() const { return k_.size() * 2; }

    // Forget every position from n on (n <= n_past).
    void truncate(int64_t n);
    // Become a copy of `other`'s first other.n_past positions (same shape required).
    void copy_from(const KVCache& other);
    void set_n_past(int64_t n) { n_past_ = n; }

    // Stores n_tokens rows of kv_dim floats at positions pos ... for one layer.
    void store(int layer, int64_t pos, int64_t n_tokens, const float* k, const float* v);
    // Rows of a layer's keys / values: element size is 2 (F16) or 4 (F32) bytes.
    const uint8_t* keys(int layer) const { return k_.data() + layer_offset(layer); }
    const uint8_t* values(int layer) const { return v_.data() + layer_offset(layer); }
    size_t row_bytes() const { return size_t(kv_dim_) * elem_size_; }

private:
    size_t layer_offset(int layer) const { return size_t(layer) * size_t(n_ctx_) * row_bytes(); }

    int n_layers_;
    int64_t n_ctx_;
    int kv_dim_;
    GGMLType type_;
    size_t elem_size_;
    int64_t n_past_ = 0;
    std::vector<uint8_t> k_;
    std::vector<uint8_t> v_;
};

}  // namespace pe
