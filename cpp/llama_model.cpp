#include "llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pe {

namespace {

void check_matrix(const Matrix& m, int64_t rows, int64_t cols, const std::string& name) {
    if (!m.data) throw std::invalid_argument("tensor " + name + " is missing");
    if (m.rows != rows || m.cols != cols)
        throw std::invalid_argument("tensor " + name + " has shape (" + std::to_string(m.rows) + ", " +
                                    std::to_string(m.cols) + "), the hyper-parameters need (" + std::to_string(rows) +
                                    ", " + std::to_string(cols) + ")");
    const TypeTraits* t = type_traits(m.type);
    if (!t || !active_kernels().vec_dot[m.type] || cols % t->block_size != 0)
        throw std::invalid_argument("tensor " + name + " has a type pyengine cannot multiply");
}

// llama.cpp's RMSNorm: the mean square summed in double, then x * (1 / sqrt(mean + eps)) * weight.
void rms_norm(const float* x, const float* weight, float* out, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += double(x[i]) * double(x[i]);
    const float scale = 1.0f / std::sqrt(float(sum / n) + eps);
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * weight[i];
}

// Rotates adjacent pairs (x[2i], x[2i+1]) of the first n_rot dims of one head by pos * freqs[i].
// llama.cpp builds each angle as pos * theta_scale^i by repeated float multiplication; so do we.
void rope(float* head, int n_rot, int64_t pos, float theta_scale) {
    float theta = float(pos);
    for (int i = 0; i < n_rot; i += 2) {
        const float c = std::cos(theta), s = std::sin(theta);
        const float x0 = head[i], x1 = head[i + 1];
        head[i] = x0 * c - x1 * s;
        head[i + 1] = x0 * s + x1 * c;
        theta *= theta_scale;
    }
}

// Quantized copies of one float input, shared by the matmuls that read it (q/k/v, gate/up).
class SharedInput {
public:
    SharedInput(const Kernels& k, std::vector<uint8_t>& buffer, ThreadPool& pool)
        : k_(k), buffer_(buffer), pool_(pool) {}

    void set(const float* x, int64_t n_tokens, int64_t cols) {
        x_ = x;
        n_tokens_ = n_tokens;
        cols_ = cols;
        type_ = TYPE_COUNT;
    }

    void multiply(const Matrix& w, float* y) {
        const GGMLType vdt = type_traits(w.type)->vec_dot_type;
        if (vdt == TYPE_F32) {
            matmul_prequantized(k_, w, reinterpret_cast<const uint8_t*>(x_), size_t(cols_) * 4, n_tokens_, y, pool_);
            return;
        }
        if (vdt != type_) {
            row_bytes_ = quantize_activations(k_, w.type, x_, n_tokens_, cols_, buffer_, pool_);
            type_ = vdt;
        }
        matmul_prequantized(k_, w, buffer_.data(), row_bytes_, n_tokens_, y, pool_);
    }

private:
    const Kernels& k_;
    std::vector<uint8_t>& buffer_;
    ThreadPool& pool_;
    const float* x_ = nullptr;
    int64_t n_tokens_ = 0, cols_ = 0;
    GGMLType type_ = TYPE_COUNT;  // what buffer_ holds now
    size_t row_bytes_ = 0;
};

}  // namespace

void RunState::reserve(const LlamaConfig& c, int64_t n_tokens, int64_t n_ctx, int n_threads) {
    if (n_tokens > capacity) {
        x.resize(size_t(n_tokens * c.n_embd));
        xn.resize(size_t(n_tokens * c.n_embd));
        q.resize(size_t(n_tokens * c.q_dim()));
        k.resize(size_t(n_tokens * c.kv_dim()));
        v.resize(size_t(n_tokens * c.kv_dim()));
        attn.resize(size_t(n_tokens * c.q_dim()));
        gate.resize(size_t(n_tokens * c.n_ff));
        up.resize(size_t(n_tokens * c.n_ff));
        capacity = n_tokens;
    }
    if (scores.size() < size_t(n_threads) * size_t(n_ctx)) scores.resize(size_t(n_threads) * size_t(n_ctx));
}

LlamaModel::LlamaModel(const LlamaConfig& c, LlamaWeights weights)
    : config_(c), w_(std::move(weights)), kernels_(active_kernels()) {
    if (c.n_layers <= 0 || c.n_embd <= 0 || c.n_ff <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_vocab <= 0)
        throw std::invalid_argument("hyper-parameters must be positive");
    if (int64_t(c.n_heads) * c.head_dim > INT32_MAX || int64_t(c.n_kv_heads) * c.head_dim > INT32_MAX)
        throw std::invalid_argument("head_count x head dimension overflows");
    if (c.n_heads % c.n_kv_heads != 0)
        throw std::invalid_argument("head_count " + std::to_string(c.n_heads) + " is not a multiple of head_count_kv " +
                                    std::to_string(c.n_kv_heads));
    if (c.head_dim <= 0 || c.head_dim % 2 != 0 || c.n_rot <= 0 || c.n_rot > c.head_dim || c.n_rot % 2 != 0)
        throw std::invalid_argument("head dimension " + std::to_string(c.head_dim) + " and rope dimension " +
                                    std::to_string(c.n_rot) + " do not fit together");
    if (int(w_.layers.size()) != c.n_layers)
        throw std::invalid_argument("block_count is " + std::to_string(c.n_layers) + " but " +
                                    std::to_string(w_.layers.size()) + " blocks were given");
    check_matrix(w_.token_embd, c.n_vocab, c.n_embd, "token_embd.weight");
    if (!type_traits(w_.token_embd.type)) throw std::invalid_argument("token_embd.weight has an unsupported type");
    check_matrix(w_.output, c.n_vocab, c.n_embd, "output.weight");
    if (!w_.output_norm) throw std::invalid_argument("tensor output_norm.weight is missing");
    for (int l = 0; l < c.n_layers; l++) {
        const LayerWeights& L = w_.layers[size_t(l)];
        const std::string p = "blk." + std::to_string(l) + ".";
        if (!L.attn_norm) throw std::invalid_argument("tensor " + p + "attn_norm.weight is missing");
        if (!L.ffn_norm) throw std::invalid_argument("tensor " + p + "ffn_norm.weight is missing");
        check_matrix(L.wq, c.q_dim(), c.n_embd, p + "attn_q.weight");
        check_matrix(L.wk, c.kv_dim(), c.n_embd, p + "attn_k.weight");
        check_matrix(L.wv, c.kv_dim(), c.n_embd, p + "attn_v.weight");
        check_matrix(L.wo, c.n_embd, c.q_dim(), p + "attn_output.weight");
        check_matrix(L.w_gate, c.n_ff, c.n_embd, p + "ffn_gate.weight");
        check_matrix(L.w_up, c.n_ff, c.n_embd, p + "ffn_up.weight");
        check_matrix(L.w_down, c.n_embd, c.n_ff, p + "ffn_down.weight");
    }
}

void LlamaModel::attention(int64_t n_tokens, KVCache* const* caches, const int64_t* positions, int layer, RunState& s,
                           ThreadPool& pool) const {
    const LlamaConfig& c = config_;
    const int hd = c.head_dim;
    const int group = c.n_heads / c.n_kv_heads;  // query heads per KV head
    const float scale = 1.0f / std::sqrt(float(hd));
    const int64_t n_ctx = s.scores.size() / size_t(pool.n_threads());
    // One task per (token, head): each output depends only on its own inputs, whoever computes it.
    pool.run([&](int ti, int n_threads) {
        int64_t begin, end;
        split_range(n_tokens * c.n_heads, ti, n_threads, begin, end);
        float* scores = s.scores.data() + size_t(ti) * size_t(n_ctx);
        for (int64_t task = begin; task < end; task++) {
            const int64_t t = task / c.n_heads;
            const int h = int(task % c.n_heads);
            const KVCache& cache = *caches[t];
            const uint8_t* keys = cache.keys(layer);
            const uint8_t* values = cache.values(layer);
            const size_t row_bytes = cache.row_bytes();
            const size_t elem = row_bytes / size_t(c.kv_dim());
            const vec_dot_fn dot = kernels_.vec_dot[cache.type()];
            const axpy_fn axpy = kernels_.axpy[cache.type()];
            const int64_t n_pos = positions[t] + 1;  // causal: positions 0 .. positions[t]
            const float* q = s.q.data() + size_t(t) * size_t(c.q_dim()) + size_t(h) * size_t(hd);
            const size_t kv_off = size_t(h / group) * size_t(hd) * elem;
            float max_score = -INFINITY;
            for (int64_t p = 0; p < n_pos; p++) {
                scores[p] = dot(hd, keys + size_t(p) * row_bytes + kv_off, q) * scale;
                max_score = std::max(max_score, scores[p]);
            }
            double sum = 0.0;
            for (int64_t p = 0; p < n_pos; p++) {
                scores[p] = std::exp(scores[p] - max_score);
                sum += scores[p];
            }
            const float inv_sum = float(1.0 / sum);
            float* out = s.attn.data() + size_t(t) * size_t(c.q_dim()) + size_t(h) * size_t(hd);
            std::fill(out, out + hd, 0.0f);
            for (int64_t p = 0; p < n_pos; p++) axpy(hd, scores[p] * inv_sum, values + size_t(p) * row_bytes + kv_off, out);
        }
    });
}

void LlamaModel::forward(const int32_t* tokens, int64_t n_tokens, KVCache& cache, float* logits, bool logits_all,
                         RunState& s, ThreadPool& pool) const {
    const int64_t pos0 = cache.n_past();
    if (n_tokens <= 0) throw std::invalid_argument("no tokens to evaluate");
    if (pos0 + n_tokens > cache.n_ctx())
        throw std::invalid_argument("the context holds " + std::to_string(cache.n_ctx()) + " tokens; " +
                                    std::to_string(pos0) + " + " + std::to_string(n_tokens) + " do not fit");
    std::vector<KVCache*> caches(size_t(n_tokens), &cache);
    std::vector<int64_t> positions(static_cast<size_t>(n_tokens));
    for (int64_t t = 0; t < n_tokens; t++) positions[size_t(t)] = pos0 + t;
    forward_tokens(tokens, caches.data(), positions.data(), n_tokens, logits, logits_all, s, pool);
    cache.set_n_past(pos0 + n_tokens);
}

void LlamaModel::forward_sequences(const int32_t* tokens, KVCache* const* caches, int64_t n, float* logits,
                                   RunState& s, ThreadPool& pool) const {
    if (n <= 0) throw std::invalid_argument("no sequences to evaluate");
    std::vector<int64_t> positions(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < i; j++)
            if (caches[j] == caches[i]) throw std::invalid_argument("a sequence appears twice in one batch");
        if (caches[i]->n_past() >= caches[i]->n_ctx())
            throw std::invalid_argument("sequence " + std::to_string(i) + " is full (" +
                                        std::to_string(caches[i]->n_ctx()) + " tokens)");
        positions[size_t(i)] = caches[i]->n_past();
    }
    forward_tokens(tokens, caches, positions.data(), n, logits, true, s, pool);
    for (int64_t i = 0; i < n; i++) caches[i]->set_n_past(positions[size_t(i)] + 1);
}

void LlamaModel::forward_tokens(const int32_t* tokens, KVCache* const* caches, const int64_t* positions,
                                int64_t n_tokens, float* logits, bool logits_all, RunState& s,
                                ThreadPool& pool) const {
    const LlamaConfig& c = config_;
    for (int64_t t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (" +
                                        std::to_string(c.n_vocab) + " tokens)");
    int64_t n_ctx = 0;
    for (int64_t t = 0; t < n_tokens; t++) n_ctx = std::max(n_ctx, caches[t]->n_ctx());
    s.reserve(c, n_tokens, n_ctx, pool.n_threads());
    const int64_t E = c.n_embd;
    const float theta_scale = std::pow(c.rope_theta, -2.0f / float(c.n_rot));

    // Embeddings: one dequantized row of token_embd per token.
    const TypeTraits* et = type_traits(w_.token_embd.type);
    const size_t embd_row = row_size(w_.token_embd.type, E);
    for (int64_t t = 0; t < n_tokens; t++)
        et->to_float(static_cast<const uint8_t*>(w_.token_embd.data) + size_t(tokens[t]) * embd_row,
                     s.x.data() + t * E, E);

    SharedInput input(kernels_, s.xq, pool);
    for (int l = 0; l < c.n_layers; l++) {
        if (s.interrupted && s.interrupted()) throw Interrupted();
        const LayerWeights& L = w_.layers[size_t(l)];

        // Attention block: x += wo · attention(rope(wq · xn), rope(wk · xn), wv · xn).
        for (int64_t t = 0; t < n_tokens; t++)
            rms_norm(s.x.data() + t * E, L.attn_norm, s.xn.data() + t * E, int(E), c.rms_eps);
        input.set(s.xn.data(), n_tokens, E);
        input.multiply(L.wq, s.q.data());
        input.multiply(L.wk, s.k.data());
        input.multiply(L.wv, s.v.data());
        for (int64_t t = 0; t < n_tokens; t++) {
            for (int h = 0; h < c.n_heads; h++)
                rope(s.q.data() + t * c.q_dim() + h * c.head_dim, c.n_rot, positions[t], theta_scale);
            for (int h = 0; h < c.n_kv_heads; h++)
                rope(s.k.data() + t * c.kv_dim() + h * c.head_dim, c.n_rot, positions[t], theta_scale);
            caches[t]->store(l, positions[t], 1, s.k.data() + t * c.kv_dim(), s.v.data() + t * c.kv_dim());
        }
        attention(n_tokens, caches, positions, l, s, pool);
        input.set(s.attn.data(), n_tokens, c.q_dim());
        input.multiply(L.wo, s.xn.data());  // xn is free again: use it for wo's output
        for (int64_t i = 0; i < n_tokens * E; i++) s.x[size_t(i)] += s.xn[size_t(i)];

        // Feed-forward block (SwiGLU): x += w_down · (silu(w_gate · xn) * (w_up · xn)).
        for (int64_t t = 0; t < n_tokens; t++)
            rms_norm(s.x.data() + t * E, L.ffn_norm, s.xn.data() + t * E, int(E), c.rms_eps);
        input.set(s.xn.data(), n_tokens, E);
        input.multiply(L.w_gate, s.gate.data());
        input.multiply(L.w_up, s.up.data());
        const int64_t n_ff_total = n_tokens * c.n_ff;
        pool.run([&](int ti, int n_threads) {
            int64_t begin, end;
            split_range(n_ff_total, ti, n_threads, begin, end);
            for (int64_t i = begin; i < end; i++) {
                const float g = s.gate[size_t(i)];
                s.gate[size_t(i)] = g / (1.0f + std::exp(-g)) * s.up[size_t(i)];
            }
        });
        input.set(s.gate.data(), n_tokens, c.n_ff);
        input.multiply(L.w_down, s.xn.data());
        for (int64_t i = 0; i < n_tokens * E; i++) s.x[size_t(i)] += s.xn[size_t(i)];
    }

    // Final norm and the output projection, for every token or the last only.
    const int64_t first = logits_all ? 0 : n_tokens - 1;
    for (int64_t t = first; t < n_tokens; t++)
        rms_norm(s.x.data() + t * E, w_.output_norm, s.xn.data() + t * E, int(E), c.rms_eps);
    input.set(s.xn.data() + first * E, n_tokens - first, E);
    input.multiply(w_.output, logits);
}

}  // namespace pe
