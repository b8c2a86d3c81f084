#include "kv_cache.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "quant/fp16.h"

namespace pe {

KVCache::KVCache(int n_layers, int64_t n_ctx, int kv_dim, GGMLType type)
    : n_layers_(n_layers), n_ctx_(n_ctx), kv_dim_(kv_dim), type_(type) {
    if (type != TYPE_F16 && type != TYPE_F32) throw std::invalid_argument("KV cache type must be f16 or f32");
    if (n_layers <= 0 || n_ctx <= 0 || kv_dim <= 0) throw std::invalid_argument("KV cache dimensions must be positive");
    elem_size_ = type == TYPE_F16 ? 2 : 4;
    if (uint64_t(n_ctx) > SIZE_MAX / size_t(n_layers) / row_bytes())
        throw std::invalid_argument("a KV cache of " + std::to_string(n_ctx) + " positions does not fit in memory");
    const size_t bytes = size_t(n_layers) * size_t(n_ctx) * row_bytes();
    k_.assign(bytes, 0);
    v_.assign(bytes, 0);
}

void KVCache::truncate(int64_t n) {
    if (n < 0 || n > n_past_)
        throw std::invalid_argument("cannot truncate to " + std::to_string(n) + ": the sequence has " +
                                    std::to_string(n_past_) + " positions");
    n_past_ = n;
}

void KVCache::copy_from(const KVCache& other) {
    if (other.n_layers_ != n_layers_ || other.kv_dim_ != kv_dim_ || other.type_ != type_ || other.n_past_ > n_ctx_)
        throw std::invalid_argument("KV caches differ in shape or type");
    const size_t used = size_t(other.n_past_) * row_bytes();
    for (int l = 0; l < n_layers_; l++) {
        std::memcpy(k_.data() + layer_offset(l), other.keys(l), used);
        std::memcpy(v_.data() + layer_offset(l), other.values(l), used);
    }
    n_past_ = other.n_past_;
}

void KVCache::store(int layer, int64_t pos, int64_t n_tokens, const float* k, const float* v) {
    uint8_t* kd = k_.data() + layer_offset(layer) + size_t(pos) * row_bytes();
    uint8_t* vd = v_.data() + layer_offset(layer) + size_t(pos) * row_bytes();
    const int64_t n = n_tokens * kv_dim_;
    if (type_ == TYPE_F32) {
        std::memcpy(kd, k, size_t(n) * 4);
        std::memcpy(vd, v, size_t(n) * 4);
        return;
    }
    auto* kh = reinterpret_cast<uint16_t*>(kd);
    auto* vh = reinterpret_cast<uint16_t*>(vd);
    for (int64_t i = 0; i < n; i++) {
        kh[i] = fp32_to_fp16(k[i]);
        vh[i] = fp32_to_fp16(v[i]);
    }
}

}  // namespace pe
