#include "kv_cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/kernels.h"

namespace pe {

std::vector<KVCache::Layer> KVCache::plan(int n_layers, int64_t n_ctx, const std::vector<int>& windows,
                                          size_t& total_rows) {
    if (!windows.empty() && int(windows.size()) != n_layers)
        throw std::invalid_argument("one sliding window per layer is needed");
    std::vector<Layer> layers(static_cast<size_t>(n_layers));
    total_rows = 0;
    for (int l = 0; l < n_layers; l++) {
        Layer& L = layers[size_t(l)];
        L.window = windows.empty() ? 0 : windows[size_t(l)];
        if (L.window < 0) throw std::invalid_argument("a sliding window must not be negative");
        const int64_t ring = int64_t(L.window) + kMaxBatch;
        L.ring = L.window > 0 && n_ctx > ring ? ring : 0;
        L.rows = L.ring ? 2 * L.ring : n_ctx;
        L.offset = total_rows;
        if (uint64_t(L.rows) > SIZE_MAX / 8 - total_rows) throw std::invalid_argument("KV cache too large");
        total_rows += size_t(L.rows);
    }
    return layers;
}

namespace {
// One cache row of kv_dim values of the cache type, or std::invalid_argument.
size_t cache_row_bytes(int kv_dim, GGMLType type) {
    if (type != TYPE_F16 && type != TYPE_F32 && type != TYPE_Q8_0)
        throw std::invalid_argument("KV cache type must be f16, f32 or q8_0");
    if (kv_dim <= 0) throw std::invalid_argument("KV cache dimensions must be positive");
    if (kv_dim % type_traits(type)->block_size != 0)
        throw std::invalid_argument("a q8_0 KV cache needs rows of a multiple of 32 values, not " + std::to_string(kv_dim));
    return row_size(type, kv_dim);
}
}  // namespace

size_t KVCache::bytes_for(int n_layers, int64_t n_ctx, int kv_dim, GGMLType type, const std::vector<int>& windows) {
    size_t rows = 0;
    plan(n_layers, n_ctx, windows, rows);
    const size_t row = cache_row_bytes(kv_dim, type);
    if (rows > SIZE_MAX / 2 / row) throw std::invalid_argument("KV cache too large");
    return 2 * rows * row;
}

KVCache::KVCache(int n_layers, int64_t n_ctx, int kv_dim, int n_heads, GGMLType type, const std::vector<int>& windows)
    : n_layers_(n_layers), n_ctx_(n_ctx), kv_dim_(kv_dim), n_heads_(n_heads),
      head_dim_(n_heads > 0 && kv_dim % n_heads == 0 ? kv_dim / n_heads : 0), type_(type) {
    if (n_layers <= 0 || n_ctx <= 0 || head_dim_ <= 0)
        throw std::invalid_argument("KV cache dimensions must be positive (and kv_dim a multiple of the heads)");
    row_bytes_ = cache_row_bytes(head_dim_, type);
    size_t rows = 0;
    layers_ = plan(n_layers, n_ctx, windows, rows);
    const size_t all_heads = row_bytes_ * size_t(n_heads);
    if (rows > SIZE_MAX / all_heads)
        throw std::invalid_argument("a KV cache of " + std::to_string(n_ctx) + " positions does not fit in memory");
    k_ = HugeBuffer(rows * all_heads, PageSize::Small);
    v_ = HugeBuffer(rows * all_heads, PageSize::Small);
}

void KVCache::truncate(int64_t n) {
    if (n < 0 || n > n_past_)
        throw std::invalid_argument("cannot truncate to " + std::to_string(n) + ": the sequence has " +
                                    std::to_string(n_past_) + " positions");
    for (const Layer& L : layers_) {
        // The ring holds the positions before n_past from written - ring on (the slots of earlier ones
        // were taken by later positions, up to the highest written, even where a truncate forgot
        // those); going on from n needs the window before n among them.
        if (L.ring && n < n_past_ && n - L.window < written_ - L.ring && n > 0)
            throw std::invalid_argument("cannot truncate to " + std::to_string(n) + ": the sliding-window cache no "
                                        "longer holds the positions before it (evaluate the prefix again)");
    }
    n_past_ = n;
    if (n == 0) written_ = 0;  // nothing before position 0 is needed: every slot is free again
}

void KVCache::copy_from(const KVCache& other) {
    if (other.n_layers_ != n_layers_ || other.kv_dim_ != kv_dim_ || other.n_heads_ != n_heads_ ||
        other.type_ != type_ || other.n_past_ > n_ctx_)
        throw std::invalid_argument("KV caches differ in shape or type");
    for (int l = 0; l < n_layers_; l++) {
        const Layer& mine = layers_[size_t(l)];
        const Layer& theirs = other.layers_[size_t(l)];
        if (mine.window != theirs.window) throw std::invalid_argument("KV caches differ in their sliding windows");
        if (mine.ring != theirs.ring)  // their n_ctx differ and one keeps a ring
            throw std::invalid_argument("KV caches differ in shape (one holds a sliding-window ring)");
        const size_t used = size_t(mine.ring ? mine.rows : other.n_past_) * row_bytes_;
        for (int h = 0; h < n_heads_; h++) {
            const size_t to = head_offset(mine, h), from = other.head_offset(theirs, h);
            std::memcpy(k_.data() + to, other.k_.data() + from, used);
            std::memcpy(v_.data() + to, other.v_.data() + from, used);
        }
    }
    n_past_ = other.n_past_;
    written_ = other.written_;
}

void KVCache::store(int layer, int64_t pos, int64_t n_tokens, const float* k, const float* v, from_float_fn convert) {
    const Layer& L = layers_[size_t(layer)];
    auto put = [&](int64_t row, const float* kr, const float* vr) {
        for (int h = 0; h < n_heads_; h++) {
            const size_t off = head_offset(L, h) + size_t(row) * row_bytes_;
            convert(kr + size_t(h) * size_t(head_dim_), k_.data() + off, head_dim_);
            convert(vr + size_t(h) * size_t(head_dim_), v_.data() + off, head_dim_);
        }
    };
    for (int64_t t = 0; t < n_tokens; t++) {
        const float* kr = k + t * kv_dim_;
        const float* vr = v + t * kv_dim_;
        const int64_t p = pos + t;
        if (!L.ring) {
            put(p, kr, vr);
            continue;
        }
        put(p % L.ring, kr, vr);
        put(p % L.ring + L.ring, kr, vr);
    }
}

KVCache::Span KVCache::span(int layer, int64_t pos) const {
    const Layer& L = layers_[size_t(layer)];
    const int64_t n = L.window ? std::min<int64_t>(pos + 1, L.window) : pos + 1;
    const int64_t first = pos + 1 - n;
    const int64_t row = L.ring ? first % L.ring : first;
    const size_t off = head_offset(L, 0) + size_t(row) * row_bytes_;
    return Span{k_.data() + off, v_.data() + off, n, size_t(L.rows) * row_bytes_};
}

}  // namespace pe
