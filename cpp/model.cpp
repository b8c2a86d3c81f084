#include "model.h"

#include "quant/fp16.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
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
    // The squares (exact in double) summed in 8 interleaved partial sums, joined pairwise, then the
    // tail: one fixed order on every machine, without a chain of n dependent additions.
    double part[8] = {};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) part[j] += double(x[i + j]) * double(x[i + j]);
    double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < n; i++) sum += double(x[i]) * double(x[i]);
    const float scale = 1.0f / std::sqrt(float(sum / n) + eps);
    for (i = 0; i < n; i++) out[i] = (x[i] * scale) * weight[i];
}

// RoPE's cos and sin for one position, n_rot / 2 pairs, as ggml's rope builds them: the angle of pair
// i is (pos * scale) * theta_scale^i with theta_scale = base^(-2 / n_rot), made by repeated float
// multiplication, divided by the frequency factor where there are factors; cos and sin are multiplied
// by the attention factor. Computed once per token and shared by every layer and head of one base.
void rope_angles(int64_t pos, const ModelConfig& c, float theta_scale, float* cs) {
    float theta = float(pos);
    for (int i = 0; i < c.n_rot / 2; i++) {
        const float factor = c.rope_factors.empty() ? 1.0f : c.rope_factors[size_t(i)];
        const float angle = c.rope_scale * (theta / factor);
        cs[2 * i] = std::cos(angle) * c.rope_attn_factor;
        cs[2 * i + 1] = std::sin(angle) * c.rope_attn_factor;
        theta *= theta_scale;
    }
}

// Rotates the first n_rot dims of one head by the angles' cos/sin: adjacent pairs (x[2i], x[2i+1]),
// or halves (x[i], x[i + n_rot/2]).
void rope(float* head, int n_rot, const float* cs, RopeStyle style) {
    const int stride = style == RopeStyle::Adjacent ? 1 : n_rot / 2;
    for (int i = 0; i < n_rot / 2; i++) {
        const int a = style == RopeStyle::Adjacent ? 2 * i : i;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float x0 = head[a], x1 = head[a + stride];
        head[a] = x0 * c - x1 * s;
        head[a + stride] = x0 * s + x1 * c;
    }
}

// x[t][r] += bias[r] for every token of a (n_tokens, n) batch.
void add_bias(float* x, const float* bias, int64_t n_tokens, int n) {
    for (int64_t t = 0; t < n_tokens; t++)
        for (int i = 0; i < n; i++) x[t * n + i] += bias[i];
}

// The RMS norm of each head of each token, in place: (n_tokens, n_heads, head_dim).
void norm_heads(float* x, const float* weight, int64_t n_tokens, int n_heads, int head_dim, float eps) {
    for (int64_t h = 0; h < n_tokens * n_heads; h++) rms_norm(x + h * head_dim, weight, x + h * head_dim, head_dim, eps);
}

// GELU, tanh form, as llama.cpp's CPU backend computes it: from a table over float16 inputs of
// float16 results (x rounded to float16, its GELU rounded to float16), linear beyond +-10. On
// gemma-3-270m this brings the logits closer to llama.cpp's than the exact float GELU (mean KL over a
// WikiText-2 prompt 6.9e-3 against 7.3e-3, the largest 0.05 against 0.12; llama.cpp's own batch and
// token-by-token evaluations differ by 5.5e-3).
inline float gelu_tanh(float x) {
    constexpr float kSqrt2OverPi = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * x * (1.0f + 0.044715f * x * x)));
}

// The table: every float16 input's result, made once (256 KB).
const float* gelu_f16_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (uint32_t h = 0; h < 65536; h++) t[h] = fp16_to_fp32(fp32_to_fp16(gelu_tanh(fp16_to_fp32(uint16_t(h)))));
        return t;
    }();
    return table.data();
}

inline float gelu_f16(const float* table, float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return table[fp32_to_fp16(x)];
}

// One float input converted once for every matmul that reads it (q/k/v, gate/up): they share a
// vec_dot_type, so the first product converts and the others reuse it.
class SharedInput {
public:
    SharedInput(const Kernels& k, RunState& s, ThreadPool& pool) : k_(k), s_(s), pool_(pool) {}

    // x: n_tokens rows of cols floats. before(t), where given, makes row t (a residual add, a norm):
    // it runs in the pool run that converts the rows for the first product, each token's by the
    // thread that converts it, so that the per-token steps between two products cost no run of
    // their own.
    void set(const float* x, int64_t n_tokens, int64_t cols, std::function<void(int64_t)> before = {}) {
        x_ = x;
        n_tokens_ = n_tokens;
        cols_ = cols;
        type_ = TYPE_COUNT;
        before_ = std::move(before);
    }

    const Activations& prepare(const Matrix& w) {
        const GGMLType vdt = type_traits(w.type)->vec_dot_type;
        const PackedExtras extras = packed_extras(k_, w);
        if (vdt != type_ || (extras.sums && !a_.block_sums) || (extras.scales && !a_.block_scales)) {
            a_ = prepare_activations(k_, w.type, x_, n_tokens_, cols_, extras, s_.xq, pool_,
                                     before_ ? &before_ : nullptr);
            before_ = nullptr;
            type_ = vdt;
        }
        return a_;
    }

    // The rows as set, made (before) if they are not yet.
    const float* made_rows() {
        if (before_) {
            parallel_for(pool_, n_tokens_, before_);
            before_ = nullptr;
        }
        return x_;
    }

    // Every product y_j = W_j x in one pool run (one synchronisation for all), then after(r0, r1)
    // once rows [r0, r1) of every product are done, by the thread that did them (after: products of
    // one row count and packing). Short batches give each thread its half of each product's rows
    // (the two streams of a matrix-vector product), unit by unit, and a thread that has finished takes
    // units from the back of the others' (WorkShares); prompts (kChunkTokens or more tokens) cut the
    // rows into chunks of kChunkRows that the threads take in turn. Either way a thread slowed down
    // (by other load on the machine, by the memory it shares) holds the others up by a unit or a
    // chunk, not by half of every product. A row's outputs are the same bits whichever thread
    // computes them. Products whose weights want different activation formats (a file mixing types)
    // take a run each.
    template <typename After>
    void multiply(std::initializer_list<std::pair<const Matrix*, float*>> products, After after) {
        if (s_.observe)
            for (const auto& p : products) s_.observe(*p.first, made_rows(), n_tokens_, cols_, &p != products.begin());
        const GGMLType vdt = type_traits(products.begin()->first->type)->vec_dot_type;
        const int64_t rows = products.begin()->first->rows;
        for (const auto& p : products) {
            if (type_traits(p.first->type)->vec_dot_type != vdt) {
                for (const auto& [w, y] : products) matmul_prepared(k_, *w, prepare(*w), y, pool_);
                pool_.run([&](int i, int n_threads) {
                    int64_t r0, r1;
                    matmul_split(*products.begin()->first, i, n_threads, r0, r1);
                    after(r0, r1);
                });
                return;
            }
        }
        for (const auto& p : products) prepare(*p.first);
        const Activations& a = a_;
        if (n_tokens_ < kChunkTokens && pool_.n_threads() > 1) {
            const std::pair<const Matrix*, float*>* list = products.begin();
            constexpr bool kAfter = !std::is_same_v<After, NoAfter>;
            const bool cut_alike = s_.shares.reset(k_, list, int(products.size()), a, pool_.n_threads(), kAfter);
            if (cut_alike || !kAfter) {
                pool_.run([&](int i, int) { s_.shares.work(i, after); });
                return;
            }
        }
        if (n_tokens_ < kChunkTokens || pool_.n_threads() == 1) {
            pool_.run([&](int i, int n_threads) {
                for (const auto& [w, y] : products) {
                    int64_t r0, r1;
                    matmul_split(*w, i, n_threads, r0, r1);
                    matmul_rows(k_, *w, a, y, r0, r1);
                }
                int64_t r0, r1;
                matmul_split(*products.begin()->first, i, n_threads, r0, r1);
                after(r0, r1);
            });
            return;
        }
        int64_t max_rows = 0;
        for (const auto& p : products) max_rows = std::max(max_rows, p.first->rows);
        const int64_t n_chunks = (max_rows + kChunkRows - 1) / kChunkRows;
        std::atomic<int64_t> next{0};
        pool_.run([&](int, int) {
            for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < n_chunks;) {
                const int64_t r0 = c * kChunkRows;
                for (const auto& [w, y] : products)
                    if (r0 < w->rows) matmul_rows(k_, *w, a, y, r0, std::min(r0 + kChunkRows, w->rows));
                if (r0 < rows) after(r0, std::min(r0 + kChunkRows, rows));
            }
        });
    }
    void multiply(std::initializer_list<std::pair<const Matrix*, float*>> products) { multiply(products, NoAfter{}); }

    static constexpr int64_t kChunkTokens = 32;
    static constexpr int64_t kChunkRows = 8 * kPackRows;  // 64 rows of 512 tokens: ~1 ms of work

private:
    const Kernels& k_;
    RunState& s_;
    ThreadPool& pool_;
    const float* x_ = nullptr;
    int64_t n_tokens_ = 0, cols_ = 0;
    std::function<void(int64_t)> before_;  // makes a row; empty once every row is made
    GGMLType type_ = TYPE_COUNT;  // what a_ holds now
    Activations a_;
};

}  // namespace

void RunState::reserve(const ModelConfig& c, int64_t n_tokens, int64_t n_attended, int n_threads) {
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
    const size_t n_scores = size_t(n_threads) * size_t(n_attended) * size_t(c.n_heads / c.n_kv_heads);
    if (scores.size() < n_scores) scores.resize(n_scores);
}

Model::Model(const ModelConfig& c, ModelWeights weights)
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
    if (!c.rope_factors.empty() && int(c.rope_factors.size()) != c.n_rot / 2)
        throw std::invalid_argument("RoPE frequency factors: " + std::to_string(c.rope_factors.size()) +
                                    " values, the rope dimension needs " + std::to_string(c.n_rot / 2));
    for (float f : c.rope_factors)
        if (!(f > 0.0f) || !std::isfinite(f)) throw std::invalid_argument("RoPE frequency factors must be positive");
    if (!c.windows.empty() && int(c.windows.size()) != c.n_layers)
        throw std::invalid_argument("one sliding window per layer is needed");
    for (int wnd : c.windows)
        if (wnd < 0) throw std::invalid_argument("a sliding window must not be negative");
    for (float f : {c.rope_theta, c.rope_theta_local, c.rope_scale, c.rope_attn_factor, c.rms_eps, c.embd_scale})
        if (!(f > 0.0f) || !std::isfinite(f)) throw std::invalid_argument("RoPE bases, scales and eps must be positive");
    if (!(c.attn_scale >= 0.0f) || !std::isfinite(c.attn_scale))
        throw std::invalid_argument("the attention scale must not be negative");
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
        if ((L.q_norm == nullptr) != (L.k_norm == nullptr))
            throw std::invalid_argument("tensors " + p + "attn_q_norm and attn_k_norm come together");
    }
}

void Model::pack(ThreadPool& pool, const std::function<void(const void*, size_t)>& release) {
    const char* pack_env = std::getenv("PYENGINE_PACK");
    if (!packed_.empty() || (pack_env && std::string(pack_env) == "0")) return;
    auto pack_one = [&](Matrix& m) {
        HugeBuffer storage;
        if (!pack_matrix(kernels_, m, storage, pool)) return;
        packed_.push_back(std::move(storage));
        // The mapped pages go back to the page cache; a tied output matrix is also the token
        // embeddings, whose lookups then map in again only the rows of the tokens used.
        if (release) release(m.data, row_size(m.type, m.cols) * size_t(m.rows));
    };
    for (LayerWeights& L : w_.layers)
        for (Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) pack_one(*m);
    pack_one(w_.output);
}

size_t Model::packed_bytes() const {
    size_t total = 0;
    for (const auto& p : packed_) total += p.size();
    return total;
}

namespace {
// The positions a token attends to are cut into attention_runs(n) runs of nearly equal length (at
// least kMinRun positions each, at most kMaxRuns runs), so that threads share the positions of one
// head as well as the heads (one token deep in its context has only a few KV heads to share out).
// The cut depends on n alone, so a token's attention takes the same operations whatever the batch,
// the chunking or the thread count.
constexpr int64_t kMinRun = 256;
constexpr int64_t kMaxRuns = 8;
int64_t attention_runs(int64_t n) { return std::min(kMaxRuns, (n + kMinRun - 1) / kMinRun); }
// Where run r of `runs` over n positions starts (run r is [run_start(r), run_start(r + 1))).
int64_t run_start(int64_t r, int64_t runs, int64_t n) { return r * n / runs; }
constexpr int64_t kTaskCost = 16;  // a task's fixed work, in positions
}  // namespace

void Model::attention(int64_t n_tokens, KVCache* const* caches, const int64_t* positions, int layer, RunState& s,
                           ThreadPool& pool) const {
    const ModelConfig& c = config_;
    const int hd = c.head_dim;
    const int group = c.n_heads / c.n_kv_heads;  // query heads per KV head
    const float scale = c.attn_scale > 0.0f ? c.attn_scale : 1.0f / std::sqrt(float(hd));
    const int64_t n_ctx = int64_t(s.scores.size() / (size_t(pool.n_threads()) * size_t(group)));
    // Tasks (token, KV head, run), token by token: token t's are first[t] .. first[t + 1] - 1, its KV
    // heads' runs in order; task k writes its result (the group's heads, hd values and a max and a
    // sum each) to slot k of attn_runs, run_max and run_sum.
    // Each thread takes a contiguous run of tasks of about equal cost (positions attended, plus a
    // task's fixed share), not of equal count, so that a token deep in its context beside short ones
    // does not leave a thread waiting: 8 SmolLM2 sequences 10 .. 150 positions deep, 2 threads, ~2%
    // more tokens/s. Which thread does a task changes none of its bits. cost[k]: the tasks' before k.
    std::vector<int64_t> first(static_cast<size_t>(n_tokens) + 1, 0);
    std::vector<KVCache::Span> spans;  // what each token attends to: the window or every position
    spans.reserve(size_t(n_tokens));
    std::vector<int64_t> cost{0};
    for (int64_t t = 0; t < n_tokens; t++) {
        spans.push_back(caches[t]->span(layer, positions[t]));
        const int64_t n = spans.back().n, runs = attention_runs(n);
        first[size_t(t) + 1] = first[size_t(t)] + c.n_kv_heads * runs;
        for (int h = 0; h < c.n_kv_heads; h++)
            for (int64_t r = 0; r < runs; r++)
                cost.push_back(cost.back() + run_start(r + 1, runs, n) - run_start(r, runs, n) + kTaskCost);
    }
    const int64_t n_tasks = first[size_t(n_tokens)];
    const size_t slot = size_t(group) * size_t(hd);
    if (s.attn_runs.size() < size_t(n_tasks) * slot) s.attn_runs.resize(size_t(n_tasks) * slot);
    if (s.run_max.size() < size_t(n_tasks * group)) {
        s.run_max.resize(size_t(n_tasks * group));
        s.run_sum.resize(size_t(n_tasks * group));
    }
    // Query head `head` of token t: its runs' results joined in run order into attn (the same
    // operations for one run as for several, and whichever thread joins it).
    const auto join_head = [&](int64_t t, int head) {
        const int kv_head = head / group, j = head % group;
        const int64_t runs = attention_runs(spans[size_t(t)].n);
        const int64_t task0 = first[size_t(t)] + kv_head * runs;
        attention_join(hd, int(runs), s.attn_runs.data() + task0 * slot + size_t(j) * size_t(hd), slot,
                       s.run_max.data() + task0 * group + j, s.run_sum.data() + task0 * group + j, size_t(group),
                       s.attn.data() + size_t(t) * size_t(c.q_dim()) + size_t(head) * size_t(hd));
    };
    // Thread ti's tasks: from the first whose cost before it reaches ti / n_threads of the whole.
    const auto share_start = [&](int ti, int n_threads) {
        return int64_t(std::lower_bound(cost.begin(), cost.end(), cost.back() * ti / n_threads) - cost.begin());
    };
    pool.run([&](int ti, int n_threads) {
        const int64_t begin = share_start(ti, n_threads), end = share_start(ti + 1, n_threads);
        float* scores = s.scores.data() + size_t(ti) * size_t(n_ctx) * size_t(group);
        int64_t t = std::upper_bound(first.begin(), first.end(), begin) - first.begin() - 1;
        for (int64_t task = begin; task < end; task++) {
            while (task >= first[size_t(t) + 1]) t++;
            const KVCache::Span& span = spans[size_t(t)];
            const int64_t runs = attention_runs(span.n), n = span.n;
            const int kv_head = int((task - first[size_t(t)]) / runs);
            const int64_t r = (task - first[size_t(t)]) % runs;
            const int64_t p0 = run_start(r, runs, n), p1 = run_start(r + 1, runs, n);
            const KVCache& cache = *caches[t];
            const size_t kv_off = size_t(kv_head) * span.head_stride + size_t(p0) * cache.row_bytes();
            const size_t q_off = size_t(t) * size_t(c.q_dim()) + size_t(kv_head) * slot;
            kernels_.attend[cache.type()](hd, group, s.q.data() + q_off, span.keys + kv_off, span.values + kv_off,
                                          cache.row_bytes(), p1 - p0, scale, scores, s.attn_runs.data() + task * slot,
                                          s.run_max.data() + task * group, s.run_sum.data() + task * group);
            if (runs == 1)  // the heads' only run: joined at once, by this thread
                for (int j = 0; j < group; j++) join_head(t, kv_head * group + j);
        }
    });
    // The heads of several runs joined in run order (tasks of one head are consecutive runs), in a
    // run of their own: another thread may have done some of the runs. None in a short context.
    if (n_tasks == n_tokens * c.n_kv_heads) return;
    pool.run([&](int ti, int n_threads) {
        int64_t begin, end;
        split_range(n_tokens * c.n_heads, ti, n_threads, begin, end);
        for (int64_t i = begin; i < end; i++)
            if (attention_runs(spans[size_t(i / c.n_heads)].n) > 1) join_head(i / c.n_heads, int(i % c.n_heads));
    });
}

void Model::forward(const int32_t* tokens, int64_t n_tokens, KVCache& cache, float* logits, bool logits_all,
                         RunState& s, ThreadPool& pool) const {
    const int64_t pos0 = cache.n_past();
    if (n_tokens <= 0) throw std::invalid_argument("no tokens to evaluate");
    if (pos0 + n_tokens > cache.n_ctx())
        throw std::invalid_argument("the context holds " + std::to_string(cache.n_ctx()) + " tokens; " +
                                    std::to_string(pos0) + " + " + std::to_string(n_tokens) + " do not fit");
    std::vector<KVCache*> caches(size_t(n_tokens), &cache);
    std::vector<int64_t> positions(static_cast<size_t>(n_tokens));
    for (int64_t t = 0; t < n_tokens; t++) positions[size_t(t)] = pos0 + t;
    std::vector<int64_t> wanted;
    for (int64_t t = logits_all ? 0 : n_tokens - 1; t < n_tokens; t++) wanted.push_back(t);
    forward_tokens(tokens, caches.data(), positions.data(), n_tokens, logits, wanted, s, pool);
    cache.set_n_past(pos0 + n_tokens);
}

void Model::forward_sequences(const int32_t* tokens, KVCache* const* caches, const int64_t* counts, int64_t n,
                              float* logits, RunState& s, ThreadPool& pool, bool last_only) const {
    if (n <= 0) throw std::invalid_argument("no sequences to evaluate");
    std::vector<KVCache*> token_caches;
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < i; j++)
            if (caches[j] == caches[i]) throw std::invalid_argument("a sequence appears twice in one batch");
        const int64_t count = counts ? counts[i] : 1;
        if (count < 1) throw std::invalid_argument("sequence " + std::to_string(i) + " has no tokens to evaluate");
        if (count > caches[i]->n_ctx() - caches[i]->n_past())
            throw std::invalid_argument("sequence " + std::to_string(i) + ": " + std::to_string(count) +
                                        " tokens after " + std::to_string(caches[i]->n_past()) +
                                        " do not fit the context of " + std::to_string(caches[i]->n_ctx()) + " tokens");
        for (int64_t t = 0; t < count; t++) {
            token_caches.push_back(caches[i]);
            positions.push_back(caches[i]->n_past() + t);
        }
    }
    std::vector<int64_t> wanted;
    for (int64_t i = 0, t = 0; i < n; i++) {
        const int64_t count = counts ? counts[i] : 1;
        for (int64_t j = last_only ? count - 1 : 0; j < count; j++) wanted.push_back(t + j);
        t += count;
    }
    forward_tokens(tokens, token_caches.data(), positions.data(), int64_t(positions.size()), logits, wanted, s, pool);
    for (int64_t i = 0; i < n; i++) caches[i]->set_n_past(caches[i]->n_past() + (counts ? counts[i] : 1));
}

void Model::forward_tokens(const int32_t* tokens, KVCache* const* caches, const int64_t* positions,
                                int64_t n_tokens, float* logits, const std::vector<int64_t>& wanted, RunState& s,
                                ThreadPool& pool) const {
    const ModelConfig& c = config_;
    for (int64_t t = 0; t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (" +
                                        std::to_string(c.n_vocab) + " tokens)");
    // A long batch goes through the layers kMicroBatch tokens at a time: each micro-batch reads the
    // keys and values that the ones before it stored, so the logits are those of one batch bit for bit
    // (the determinism promise), while the activations stay small and the interrupt hook is asked
    // every few hundred milliseconds even on the scalar path.
    // wanted: ascending; each micro-batch takes its own, as indices of its tokens.
    size_t w = 0;
    std::vector<int64_t> local;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMicroBatch) {
        const int64_t n = std::min(kMicroBatch, n_tokens - t0);
        float* out = logits + int64_t(w) * c.n_vocab;
        local.clear();
        for (; w < wanted.size() && wanted[w] < t0 + n; w++) local.push_back(wanted[w] - t0);
        forward_micro_batch(tokens + t0, caches + t0, positions + t0, n, out, local, s, pool);
    }
}

void Model::forward_micro_batch(const int32_t* tokens, KVCache* const* caches, const int64_t* positions,
                                     int64_t n_tokens, float* logits, const std::vector<int64_t>& wanted,
                                     RunState& s, ThreadPool& pool) const {
    const ModelConfig& c = config_;
    auto check_interrupt = [&s] {
        if (s.interrupted && s.interrupted()) throw Interrupted();
    };
    // The scores' room: the positions these tokens attend to at most (not their caches' n_ctx: a
    // few tokens in a long context take little memory).
    int64_t n_attended = 0;
    for (int64_t t = 0; t < n_tokens; t++)
        n_attended = std::max(n_attended, std::min(positions[t] + 1, caches[t]->n_ctx()));
    s.reserve(c, n_tokens, n_attended, pool.n_threads());
    for (int64_t t = 0; t < n_tokens; t++) caches[t]->will_write(positions[t] + 1);  // (the rings' truncate)
    const int64_t E = c.n_embd;

    // Embeddings: one dequantized row of token_embd per token (times embd_scale).
    const TypeTraits* et = type_traits(w_.token_embd.type);
    const size_t embd_row = row_size(w_.token_embd.type, E);
    for (int64_t t = 0; t < n_tokens; t++) {
        float* x = s.x.data() + t * E;
        et->to_float(static_cast<const uint8_t*>(w_.token_embd.data) + size_t(tokens[t]) * embd_row, x, E);
        if (c.embd_scale != 1.0f)
            for (int64_t i = 0; i < E; i++) x[i] *= c.embd_scale;
    }

    // RoPE angles of each token: one table for the global base, one for the local layers' own base.
    const bool local_base = !c.windows.empty() && c.rope_theta_local != c.rope_theta;
    s.rope.resize(size_t(n_tokens * c.n_rot));
    s.rope_local.resize(local_base ? size_t(n_tokens * c.n_rot) : 0);
    const float theta_scale = std::pow(c.rope_theta, -2.0f / float(c.n_rot));
    const float theta_scale_local = std::pow(c.rope_theta_local, -2.0f / float(c.n_rot));
    for (int64_t t = 0; t < n_tokens; t++) {
        rope_angles(positions[t], c, theta_scale, s.rope.data() + t * c.n_rot);
        if (local_base) rope_angles(positions[t], c, theta_scale_local, s.rope_local.data() + t * c.n_rot);
    }

    // The per-token step that makes the next products' input, run in the pool run that converts it
    // (SharedInput::set's `before`): where a block's output y is in xn (`add`), x += y after y's
    // post-norm where the architecture has one; then xn = norm(x).
    auto add_and_norm = [&](bool add, const float* post_norm, const float* norm) {
        return [&, add, post_norm, norm](int64_t t) {
            float* yt = s.xn.data() + t * E;
            float* xt = s.x.data() + t * E;
            if (add) {
                if (post_norm) rms_norm(yt, post_norm, yt, int(E), c.rms_eps);
                for (int64_t i = 0; i < E; i++) xt[i] += yt[i];
            }
            rms_norm(xt, norm, yt, int(E), c.rms_eps);
        };
    };
    // The step before layer l's attention, or before the output at l = n_layers: it adds layer l - 1's
    // feed-forward output.
    auto layer_input = [&](int l, const float* norm) {
        return add_and_norm(l > 0, l > 0 ? w_.layers[size_t(l - 1)].ffn_post_norm : nullptr, norm);
    };

    SharedInput input(kernels_, s, pool);
    for (int l = 0; l < c.n_layers; l++) {
        check_interrupt();
        const LayerWeights& L = w_.layers[size_t(l)];

        // Attention block: x += post_norm(wo · attention(rope(norm(wq · xn + bq)), rope(norm(wk · xn + bk)),
        // wv · xn + bv)), the biases, head norms and post norm where the architecture has them.
        input.set(s.xn.data(), n_tokens, E, layer_input(l, L.attn_norm));
        input.multiply({{&L.wq, s.q.data()}, {&L.wk, s.k.data()}, {&L.wv, s.v.data()}});
        if (L.bq) add_bias(s.q.data(), L.bq, n_tokens, c.q_dim());
        if (L.bk) add_bias(s.k.data(), L.bk, n_tokens, c.kv_dim());
        if (L.bv) add_bias(s.v.data(), L.bv, n_tokens, c.kv_dim());
        if (L.q_norm) {
            norm_heads(s.q.data(), L.q_norm, n_tokens, c.n_heads, c.head_dim, c.rms_eps);
            norm_heads(s.k.data(), L.k_norm, n_tokens, c.n_kv_heads, c.head_dim, c.rms_eps);
        }
        const float* angles = local_base && c.window(l) ? s.rope_local.data() : s.rope.data();
        // Each token's keys and values go to rows of their own (a ring holds a micro-batch's positions
        // in distinct slots), so the tokens are independent.
        parallel_for(pool, n_tokens, [&](int64_t t) {
            const float* cs = angles + t * c.n_rot;
            for (int h = 0; h < c.n_heads; h++)
                rope(s.q.data() + t * c.q_dim() + h * c.head_dim, c.n_rot, cs, c.rope_style);
            for (int h = 0; h < c.n_kv_heads; h++)
                rope(s.k.data() + t * c.kv_dim() + h * c.head_dim, c.n_rot, cs, c.rope_style);
            caches[t]->store(l, positions[t], 1, s.k.data() + t * c.kv_dim(), s.v.data() + t * c.kv_dim(),
                             kernels_.from_float[caches[t]->type()]);
        });
        check_interrupt();
        attention(n_tokens, caches, positions, l, s, pool);
        input.set(s.attn.data(), n_tokens, c.q_dim());
        input.multiply({{&L.wo, s.xn.data()}});  // xn is free again: use it for wo's output

        // Feed-forward block: x += post_norm(w_down · (act(w_gate · xn) * (w_up · xn))), act SiLU or GELU.
        check_interrupt();
        input.set(s.xn.data(), n_tokens, E, add_and_norm(true, L.attn_post_norm, L.ffn_norm));
        // act(gate) * up over rows [r0, r1) of every token, in place in gate. Fused into the
        // products' run when each thread's gate rows are its up rows (the same split).
        const float* gelu_table = c.activation == Activation::GeluTanh ? gelu_f16_table() : nullptr;
        auto gated = [&](int64_t r0, int64_t r1) {
            for (int64_t t = 0; t < n_tokens; t++) {
                float* g = s.gate.data() + t * c.n_ff;
                const float* u = s.up.data() + t * c.n_ff;
                if (c.activation == Activation::SiLU) {
                    kernels_.silu_mul(g + r0, u + r0, r1 - r0);
                } else {
                    for (int64_t r = r0; r < r1; r++) g[r] = gelu_f16(gelu_table, g[r]) * u[r];
                }
            }
        };
        if ((L.w_gate.packed != nullptr) == (L.w_up.packed != nullptr)) {
            input.multiply({{&L.w_gate, s.gate.data()}, {&L.w_up, s.up.data()}}, gated);
        } else {
            input.multiply({{&L.w_gate, s.gate.data()}, {&L.w_up, s.up.data()}});
            pool.run([&](int i, int n_threads) {
                int64_t r0, r1;
                split_range(c.n_ff, i, n_threads, r0, r1);
                gated(r0, r1);
            });
        }
        input.set(s.gate.data(), n_tokens, c.n_ff);
        input.multiply({{&L.w_down, s.xn.data()}});  // added to x by the next layer's (or the output's) step
    }

    // Final norm and the output projection, for every token or the last only (none for a micro-batch
    // before the last when only the last token's logits are wanted).
    if (wanted.empty()) return;
    const int64_t first = wanted[0], n_wanted = int64_t(wanted.size());
    const auto final_norm = layer_input(c.n_layers, w_.output_norm);
    if (wanted.back() - first + 1 == n_wanted) {  // a run of tokens (all of them, the last): in place
        input.set(s.xn.data() + first * E, n_wanted, E, [&](int64_t t) { final_norm(first + t); });
    } else {
        // Scattered tokens (the last of each of several sequences): token wanted[j]'s norm goes to row
        // j of xn, in order (j <= wanted[j]: each row is read before a later token's norm writes it).
        for (int64_t j = 0; j < n_wanted; j++) {
            final_norm(wanted[size_t(j)]);
            if (j != wanted[size_t(j)])
                std::memcpy(s.xn.data() + j * E, s.xn.data() + wanted[size_t(j)] * E, size_t(E) * sizeof(float));
        }
        input.set(s.xn.data(), n_wanted, E);
    }
    input.multiply({{&w_.output, logits}});
}

}  // namespace pe
