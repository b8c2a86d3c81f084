// The forward pass of a decoder-only transformer over weights used in place (memory-mapped by the
// Python loader): one block function, driven by a ModelConfig, runs every supported architecture.
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

// How RoPE pairs the dimensions of a head: llama's GGUF files rotate adjacent pairs (x0, x1), (x2, x3),
// ... (the converter permuted Q and K for it); the others (GPT-NeoX's style) rotate x_i with
// x_{i + n_rot/2}.
enum class RopeStyle : int { Adjacent = 0, Halves = 1 };

// The gate's activation in the gated feed-forward block: SiLU (SwiGLU) or GELU, tanh form (GeGLU).
enum class Activation : int { SiLU = 0, GeluTanh = 1 };

// Everything the block function needs to know about an architecture, as numbers: the Python loader
// reads it from the file through the architecture's description (pyengine/architectures.py) and
// validates it; the constructor checks it again against the weights.
struct ModelConfig {
    int n_layers = 0;
    int n_embd = 0;
    int n_ff = 0;
    int n_heads = 0;
    int n_kv_heads = 0;     // grouped-query attention
    int head_dim = 0;       // attention.key_length, or n_embd / n_heads
    int n_rot = 0;          // leading dims of each head that RoPE rotates
    int n_vocab = 0;
    float rope_theta = 10000.0f;       // RoPE base of the global layers
    float rope_theta_local = 10000.0f; // RoPE base of the sliding-window layers
    float rope_scale = 1.0f;           // positions multiplied by this (linear RoPE scaling)
    float rope_attn_factor = 1.0f;     // cos and sin multiplied by this (LongRoPE's attention factor)
    std::vector<float> rope_factors;   // n_rot / 2 divisors of the RoPE frequencies, or empty
    RopeStyle rope_style = RopeStyle::Adjacent;
    Activation activation = Activation::SiLU;
    float rms_eps = 1e-5f;
    float embd_scale = 1.0f;  // token embeddings multiplied by this (gemma3: sqrt(n_embd))
    float attn_scale = 0.0f;  // attention scores q.k times this; 0: 1 / sqrt(head_dim)
    std::vector<int> windows; // per layer: 0 (attends every position) or its sliding window; empty: none

    int q_dim() const { return n_heads * head_dim; }
    int kv_dim() const { return n_kv_heads * head_dim; }
    int window(int layer) const { return windows.empty() ? 0 : windows[size_t(layer)]; }
};

// One block's weights. Matrices are views of the file (a fused tensor, phi3's attn_qkv or its
// gate-and-up ffn_up, is seen as its row ranges); vectors are float32. Optional ones are null.
struct LayerWeights {
    const float* attn_norm = nullptr;  // (n_embd)
    Matrix wq;                         // (q_dim, n_embd)
    Matrix wk;                         // (kv_dim, n_embd)
    Matrix wv;                         // (kv_dim, n_embd)
    const float* bq = nullptr;         // optional biases of q, k, v (qwen2)
    const float* bk = nullptr;
    const float* bv = nullptr;
    const float* q_norm = nullptr;     // optional RMS norms of each head of q and k, (head_dim) (qwen3, gemma3)
    const float* k_norm = nullptr;
    Matrix wo;                         // (n_embd, q_dim)
    const float* attn_post_norm = nullptr;  // optional RMS norm of the attention output (gemma3)
    const float* ffn_norm = nullptr;   // (n_embd)
    Matrix w_gate;                     // (n_ff, n_embd)
    Matrix w_up;                       // (n_ff, n_embd)
    Matrix w_down;                     // (n_embd, n_ff)
    const float* ffn_post_norm = nullptr;   // optional RMS norm of the feed-forward output (gemma3)
};

struct ModelWeights {
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
    std::vector<float> attn_runs;  // unnormalised attention of each (token, KV head, run of positions)
    std::vector<float> run_max;    // and its maximum score and exp-sum, per query head
    std::vector<double> run_sum;
    std::vector<float> gate;    // (T, n_ff)
    std::vector<float> up;      // (T, n_ff)
    std::vector<float> scores;  // (n_threads, heads per KV head, positions) attention scores, per thread;
                                // room for the most positions a token has attended to yet
    ActivationBuffers xq;       // quantized activations shared by the matmuls that read one input
    WorkShares shares;          // the products of a short batch's pool run, balanced between the threads
    std::vector<float> rope;    // (T, n_rot / 2, 2) cos and sin of each token's RoPE angles
    std::vector<float> rope_local;  // the same for the sliding-window layers' base, where it differs
    // Optional: asked on the calling thread before each sub-layer (attention, feed-forward) of each
    // micro-batch; true stops the evaluation with Interrupted (the caches' n_past stay as they were:
    // the batch is not part of the sequence).
    std::function<bool()> interrupted;
    // Optional: told the input of every matrix product (before it runs, on the calling thread):
    // n_tokens rows of cols floats, row-major; `shared`: the same input as the previous call's (another
    // matrix of one product group, e.g. wk after wq). The importance matrix (imatrix) and the
    // calibration statistics are gathered this way.
    std::function<void(const Matrix& w, const float* x, int64_t n_tokens, int64_t cols, bool shared)> observe;
    void reserve(const ModelConfig& c, int64_t n_tokens, int64_t n_attended, int n_threads);
};

// Thrown by an evaluation that RunState::interrupted stopped.
struct Interrupted : std::exception {
    const char* what() const noexcept override { return "evaluation interrupted"; }
};

class Model {
public:
    // Checks every shape against the config; throws std::invalid_argument naming the tensor.
    Model(const ModelConfig& config, ModelWeights weights);

    // Packs the matrices the ISA has packed kernels for (threads split each matrix's row groups),
    // before any forward pass. The packed copy is as large as those weights; after each matrix,
    // release(data, bytes) is told that its original bytes will not be read again (the loader drops
    // those pages of the mapping, so the process does not hold both). The token embeddings stay
    // where they are and are read in place (a tied output matrix is packed, its source kept).
    // PYENGINE_PACK=0 turns packing off (to measure what it gains).
    void pack(ThreadPool& pool, const std::function<void(const void*, size_t)>& release);

    // Bytes of packed weight copies this model holds.
    size_t packed_bytes() const;

    const ModelConfig& config() const { return config_; }
    // The weights as the products read them (views into the file; fused tensors split into parts).
    const ModelWeights& weights() const { return w_; }

    // Evaluates `n_tokens` tokens at positions cache.n_past ... and appends their keys and values to
    // the cache. Writes the logits of every token (logits_all) or of the last one only to `logits`
    // ((n_tokens or 1) x n_vocab). Throws std::invalid_argument for an id outside the vocabulary or
    // a cache without room, before changing anything.
    void forward(const int32_t* tokens, int64_t n_tokens, KVCache& cache, float* logits, bool logits_all,
                 RunState& state, ThreadPool& pool) const;

    // Evaluates counts[i] tokens for each of n distinct sequences in one call (beam search: one token
    // for every live beam; speculative decoding: a draft for every sequence), the tokens of sequence i
    // following those of sequence i - 1 in `tokens`, at positions caches[i]->n_past ... of its own
    // cache. counts null: one token each. logits: (sum of counts) x n_vocab, or with last_only the
    // last token's of each sequence, n x n_vocab (a server's step: the prompt chunk of one sequence
    // beside the next token of the others). Each token's logits are bit-identical to evaluating its
    // sequence's tokens alone. Throws std::invalid_argument before changing anything for a sequence
    // given twice, a count below 1, or a cache without room.
    void forward_sequences(const int32_t* tokens, KVCache* const* caches, const int64_t* counts, int64_t n,
                           float* logits, RunState& state, ThreadPool& pool, bool last_only = false) const;

private:
    // Tokens per pass through the layers; longer batches are cut into micro-batches of this many.
    static constexpr int64_t kMicroBatch = KVCache::kMaxBatch;

    // The shared body: token t goes to caches[t] at positions[t]; logits row j for token wanted[j]
    // (ascending).
    void forward_tokens(const int32_t* tokens, KVCache* const* caches, const int64_t* positions, int64_t n_tokens,
                        float* logits, const std::vector<int64_t>& wanted, RunState& s, ThreadPool& pool) const;
    // One micro-batch through every layer; wanted (indices of its tokens, ascending) empty skips the
    // output projection.
    void forward_micro_batch(const int32_t* tokens, KVCache* const* caches, const int64_t* positions, int64_t n_tokens,
                             float* logits, const std::vector<int64_t>& wanted, RunState& s, ThreadPool& pool) const;
    void attention(int64_t n_tokens, KVCache* const* caches, const int64_t* positions, int layer, RunState& s,
                   ThreadPool& pool) const;

    ModelConfig config_;
    ModelWeights w_;
    std::vector<HugeBuffer> packed_;  // the matrices repacked for the ISA's packed kernels
    const Kernels& kernels_;
};

}  // namespace pe
