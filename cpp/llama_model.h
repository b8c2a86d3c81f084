// The llama forward pass over weights used in place (memory-mapped by the Python loader).
//
// Shapes follow GGUF: a weight of `out x in` is stored with dims [in, out], i.e. `out` rows of `in`
// values, which is exactly a Matrix{rows = out, cols = in}.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "kv_cache.h"
#include "matmul.h"

namespace pe {

struct LlamaConfig {
    int n_layers = 0;     // llama.block_count
    int n_embd = 0;       // llama.embedding_length
    int n_ff = 0;         // llama.feed_forward_length
    int n_heads = 0;      // llama.attention.head_count
    int n_kv_heads = 0;   // llama.attention.head_count_kv (grouped-query attention)
    int head_dim = 0;     // n_embd / n_heads
    int n_rot = 0;        // llama.rope.dimension_count: leading dims of each head that RoPE rotates
    int n_vocab = 0;
    float rope_theta = 10000.0f;  // llama.rope.freq_base
    float rms_eps = 1e-5f;        // llama.attention.layer_norm_rms_epsilon

    int q_dim() const { return n_heads * head_dim; }
    int kv_dim() const { return n_kv_heads * head_dim; }
};

struct LayerWeights {
    const float* attn_norm = nullptr;  // (n_embd)
    Matrix wq;                         // (q_dim, n_embd)
    Matrix wk;                         // (kv_dim, n_embd)
    Matrix wv;                         // (kv_dim, n_embd)
    Matrix wo;                         // (n_embd, q_dim)
    const float* ffn_norm = nullptr;   // (n_embd)
    Matrix w_gate;                     // (n_ff, n_embd)
    Matrix w_up;                       // (n_ff, n_embd)
    Matrix w_down;                     // (n_embd, n_ff)
};

struct LlamaWeights {
    Matrix token_embd;                  // (n_vocab, n_embd): one row per token
    const float* output_norm = nullptr; // (n_embd)
    Matrix output;                      // (n_vocab, n_embd); token_embd when the file ties them
    std::vector<LayerWeights> layers;
};

// Activations for a batch of up to `capacity` tokens, allocated once and grown on demand.
struct RunState {
    int64_t capacity = 0;
    std::vector<float> x;       // (T, n_embd) the residual stream
    std::vector<float> xn;      // (T, n_embd) normalised input of the current sub-layer
    std::vector<float> q;       // (T, q_dim)
    std::vector<float> k;       // (T, kv_dim)
    std::vector<float> v;       // (T, kv_dim)
    std::vector<float> attn;    // (T, q_dim) attention output, before wo
    std::vector<float> gate;    // (T, n_ff)
    std::vector<float> up;      // (T, n_ff)
    std::vector<float> scores;  // (n_threads, heads per KV head, n_ctx) attention scores, per thread
    std::vector<uint8_t> xq;    // quantized activations shared by the matmuls that read one input
    std::vector<int32_t> xq_sums;  // their Q8_0 block sums, for packed kernels that need them
    std::vector<float> rope;    // (T, n_rot / 2, 2) cos and sin of each token's RoPE angles
    // Optional: asked on the calling thread before each sub-layer (attention, feed-forward) of each
    // micro-batch; true stops the evaluation with Interrupted (the caches' n_past stay as they were:
    // the batch is not part of the sequence).
    std::function<bool()> interrupted;
    void reserve(const LlamaConfig& c, int64_t n_tokens, int64_t n_ctx, int n_threads);
};

// Thrown by an evaluation that RunState::interrupted stopped.
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "evaluation interrupted"; }
};

class LlamaModel {
public:
    // Checks every shape against the config; throws std::invalid_argument naming the tensor.
    LlamaModel(const LlamaConfig& config, LlamaWeights weights);

    // Packs the matrices the ISA has packed kernels for (threads split each matrix's row groups),
    // before any forward pass. The packed copy is as large as those weights; after each matrix,
    // release(data, bytes) is told that its original bytes will not be read again (the loader drops
    // those pages of the mapping, so the process does not hold both). The token embeddings stay
    // where they are and are read in place (a tied output matrix is packed, its source kept).
    // PYENGINE_PACK=0 turns packing off (to measure what it gains).
    void pack(ThreadPool& pool, const std::function<void(const void*, size_t)>& release);

    // Bytes of packed weight copies this model holds.
    size_t packed_bytes() const;

    const LlamaConfig& config() const { return config_; }

    // Evaluates `n_tokens` tokens at positions cache.n_past ... and appends their keys and values to
    // the cache. Writes the logits of every token (logits_all) or of the last one only to `logits`
    // ((n_tokens or 1) x n_vocab). Throws std::invalid_argument for an id outside the vocabulary or
    // a cache without room, before changing anything.
    void forward(const int32_t* tokens, int64_t n_tokens, KVCache& cache, float* logits, bool logits_all,
                 RunState& state, ThreadPool& pool) const;

    // Evaluates one token for each of n distinct sequences (beam search: every live beam in one
    // call), token i at position caches[i]->n_past of its own cache. logits: n x n_vocab. Each
    // sequence's logits are bit-identical to evaluating its token alone.
    void forward_sequences(const int32_t* tokens, KVCache* const* caches, int64_t n, float* logits, RunState& state,
                           ThreadPool& pool) const;

private:
    // Tokens per pass through the layers; longer batches are cut into micro-batches of this many.
    static constexpr int64_t kMicroBatch = 256;

    // The shared body: token t goes to caches[t] at positions[t].
    void forward_tokens(const int32_t* tokens, KVCache* const* caches, const int64_t* positions, int64_t n_tokens,
                        float* logits, bool logits_all, RunState& s, ThreadPool& pool) const;
    // One micro-batch through every layer; logits null skips the output projection.
    void forward_micro_batch(const int32_t* tokens, KVCache* const* caches, const int64_t* positions, int64_t n_tokens,
                             float* logits, bool logits_all, RunState& s, ThreadPool& pool) const;
    void attention(int64_t n_tokens, KVCache* const* caches, const int64_t* positions, int layer, RunState& s,
                   ThreadPool& pool) const;

    LlamaConfig config_;
    LlamaWeights w_;
    std::vector<std::vector<uint8_t>> packed_;  // the matrices repacked for the ISA's packed kernels
    std::vector<float> rope_freqs_;  // (n_rot / 2) theta^(-2i / n_rot)
    const Kernels& kernels_;
};

}  // namespace pe
