// The model over memory-mapped weights, its typed config, and its per-sequence contexts (KV cache +
// buffers).
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <pybind11/stl.h>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../model.h"
#include "common.h"

namespace pe::bindings {

// The interrupt hook of a long native call (an evaluation's RunState::interrupted, between layers;
// quantize's, between runs of rows), run on the calling thread: at most every 20 ms it takes the GIL
// and runs Python's signal handlers, so that Ctrl-C stops a long prompt promptly. A handler that
// raises (KeyboardInterrupt) leaves its exception set; the hook then returns true, the call stops
// (the forward pass throws Interrupted), and the caller re-raises the Python exception with the GIL
// held again. Only the main thread runs signal handlers, so other threads get no hook (and never wait
// for the GIL).
unsigned long main_thread_ident = 0;  // threading.main_thread().ident, read when the module loads

std::function<bool()> signal_check() {
    if (PyThread_get_thread_ident() != main_thread_ident) return nullptr;
    auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    return [last]() {
        const auto now = std::chrono::steady_clock::now();
        if (now - *last < std::chrono::milliseconds(20)) return false;
        *last = now;
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    };
}

namespace {

// Keeps the Python objects that own the weight memory (numpy views of the mmap) alive as long as
// the model that points into them.
struct PyModel {
    std::unique_ptr<Model> model;
    std::vector<py::object> owners;
    // The buffers of eval_sequences, kept between calls (a server's decoding steps would otherwise
    // allocate and fault in fresh pages every step); a call that finds them in use gets its own.
    RunState batch_state;
    std::mutex batch_mutex;
    // The GGUF name of each matrix the products read, as llama.cpp's imatrix names them: a fused
    // tensor (phi3's attn_qkv, a gate-up ffn_up) under its own name on its first part, its other
    // parts unnamed (their input is the same, counted once).
    std::unordered_map<const Matrix*, std::string> matrix_names;
};

struct PyContext {
    std::shared_ptr<PyModel> model;
    KVCache cache;
    RunState state;
    // Set while a call reads or changes the cache (Claim): a second call on the same context, from
    // another thread (the GIL is released while it evaluates) or from a signal handler run between
    // two layers, is refused instead of writing the same cache and buffers.
    std::atomic<bool> busy{false};
    PyContext(std::shared_ptr<PyModel> m, int64_t n_ctx, GGMLType kv_type)
        : model(std::move(m)),
          cache(model->model->config().n_layers, n_ctx, model->model->config().kv_dim(),
                model->model->config().n_kv_heads, checked(kv_type, *model), model->model->config().windows) {}
    // A quantized cache's blocks must not straddle two heads (the attention reads one head's slice).
    static GGMLType checked(GGMLType kv_type, const PyModel& m) {
        const TypeTraits* t = type_traits(kv_type);
        if (t && m.model->config().head_dim % t->block_size != 0)
            throw std::invalid_argument(std::string("a ") + t->name + " KV cache needs a head dimension that is a multiple of " +
                                        std::to_string(t->block_size) + "; this model's is " +
                                        std::to_string(m.model->config().head_dim));
        return kv_type;
    }
};

// (array, type id, rows, cols) -> a Matrix over the array's memory, checked for size.
Matrix matrix_from(const py::dict& tensors, const std::string& name, std::vector<py::object>& owners,
                   bool required = true) {
    if (!tensors.contains(name)) {
        if (required) throw py::value_error("tensor " + name + " is missing");
        return Matrix{TYPE_F32, nullptr, 0, 0};
    }
    const auto entry = tensors[name.c_str()].cast<py::tuple>();
    if (entry.size() != 4) throw py::value_error("tensor " + name + ": expected (data, type, rows, cols)");
    py::buffer buf = entry[0].cast<py::buffer>();
    const py::buffer_info info = buf.request();
    const uint32_t type = entry[1].cast<uint32_t>();
    const int64_t rows = entry[2].cast<int64_t>(), cols = entry[3].cast<int64_t>();
    const TypeTraits& t = traits_or_throw(type);
    if (rows <= 0 || cols <= 0 || cols % t.block_size != 0 || cols > kMaxRowLength)
        throw py::value_error("tensor " + name + ": bad shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                              ") for " + t.name);
    const size_t need = checked_bytes(rows, row_size(GGMLType(type), cols), "tensor " + name);
    const size_t have = size_t(info.size) * size_t(info.itemsize);
    if (have != need)
        throw py::value_error("tensor " + name + " holds " + std::to_string(have) + " bytes, its shape needs " +
                              std::to_string(need));
    if (!PyBuffer_IsContiguous(info.view(), 'C')) throw py::value_error("tensor " + name + " is not contiguous");
    // The weights are read in place as floats, or as blocks that start with an fp16 scale: a file whose
    // alignment (general.alignment 1 or 2) puts a tensor at an odd address cannot be used as it is.
    const size_t align = type == TYPE_F32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(info.ptr) % align != 0)
        throw py::value_error("tensor " + name + " is not aligned to " + std::to_string(align) +
                              " bytes in the file (general.alignment is too small)");
    owners.push_back(entry[0]);
    return Matrix{GGMLType(type), info.ptr, rows, cols};
}

const float* vector_from(const py::dict& tensors, const std::string& name, int64_t n, std::vector<py::object>& owners) {
    const Matrix m = matrix_from(tensors, name, owners);
    if (m.type != TYPE_F32 || m.rows * m.cols != n)
        throw py::value_error("tensor " + name + " must be " + std::to_string(n) + " float32 values");
    return static_cast<const float*>(m.data);
}

// An optional float32 vector: null where the table has no such tensor.
const float* optional_vector(const py::dict& tensors, const std::string& name, int64_t n,
                             std::vector<py::object>& owners) {
    return tensors.contains(name) ? vector_from(tensors, name, n, owners) : nullptr;
}

// Rows [r0, r0 + n) of m: a view of a fused tensor's part.
Matrix rows_of(const Matrix& m, int64_t r0, int64_t n) {
    return Matrix{m.type, static_cast<const uint8_t*>(m.data) + size_t(r0) * row_size(m.type, m.cols), n, m.cols};
}

// A fused tensor of parts stacked by rows (phi3's attn_qkv: q, k, v; its ffn_up: gate, up), as views.
std::vector<Matrix> split_rows(const Matrix& fused, const std::string& name, std::initializer_list<int64_t> parts) {
    int64_t total = 0;
    for (int64_t n : parts) total += n;
    if (fused.rows != total)
        throw py::value_error("tensor " + name + " has " + std::to_string(fused.rows) + " rows, the hyper-parameters need " +
                              std::to_string(total));
    std::vector<Matrix> views;
    int64_t r0 = 0;
    for (int64_t n : parts) {
        views.push_back(rows_of(fused, r0, n));
        r0 += n;
    }
    return views;
}

// The weights by their GGUF names. The architecture's description (Python) has already decided which
// tensors a file must and may hold; here each present tensor is taken and checked for size.
std::shared_ptr<PyModel> build_model(const ModelConfig& c, const py::dict& tensors) {
    if (c.n_layers <= 0 || c.n_layers > 4096) throw py::value_error("block_count out of range");
    if (c.n_heads <= 0 || c.head_dim <= 0 || c.n_embd <= 0 || c.n_ff <= 0 || c.n_kv_heads <= 0)
        throw py::value_error("head counts and dimensions must be positive");
    if (int64_t(c.n_heads) * c.head_dim > INT32_MAX || int64_t(c.n_kv_heads) * c.head_dim > INT32_MAX)
        throw py::value_error("head_count x head dimension overflows");  // before q_dim() and kv_dim() are asked
    auto m = std::make_shared<PyModel>();
    auto& owners = m->owners;
    ModelWeights w;
    w.token_embd = matrix_from(tensors, "token_embd.weight", owners);
    w.output_norm = vector_from(tensors, "output_norm.weight", c.n_embd, owners);
    w.output = matrix_from(tensors, "output.weight", owners, false);
    if (!w.output.data) w.output = w.token_embd;  // tied embeddings
    const int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim();
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = vector_from(tensors, p + "attn_norm.weight", c.n_embd, owners);
        if (tensors.contains(p + "attn_qkv.weight")) {
            const auto qkv = split_rows(matrix_from(tensors, p + "attn_qkv.weight", owners), p + "attn_qkv.weight",
                                        {q_dim, kv_dim, kv_dim});
            L.wq = qkv[0], L.wk = qkv[1], L.wv = qkv[2];
        } else {
            L.wq = matrix_from(tensors, p + "attn_q.weight", owners);
            L.wk = matrix_from(tensors, p + "attn_k.weight", owners);
            L.wv = matrix_from(tensors, p + "attn_v.weight", owners);
        }
        L.bq = optional_vector(tensors, p + "attn_q.bias", q_dim, owners);
        L.bk = optional_vector(tensors, p + "attn_k.bias", kv_dim, owners);
        L.bv = optional_vector(tensors, p + "attn_v.bias", kv_dim, owners);
        L.q_norm = optional_vector(tensors, p + "attn_q_norm.weight", c.head_dim, owners);
        L.k_norm = optional_vector(tensors, p + "attn_k_norm.weight", c.head_dim, owners);
        L.wo = matrix_from(tensors, p + "attn_output.weight", owners);
        L.attn_post_norm = optional_vector(tensors, p + "post_attention_norm.weight", c.n_embd, owners);
        L.ffn_norm = vector_from(tensors, p + "ffn_norm.weight", c.n_embd, owners);
        if (tensors.contains(p + "ffn_gate.weight")) {
            L.w_gate = matrix_from(tensors, p + "ffn_gate.weight", owners);
            L.w_up = matrix_from(tensors, p + "ffn_up.weight", owners);
        } else {  // gate and up in one tensor, the gate's rows first
            const auto gate_up = split_rows(matrix_from(tensors, p + "ffn_up.weight", owners), p + "ffn_up.weight",
                                            {c.n_ff, c.n_ff});
            L.w_gate = gate_up[0], L.w_up = gate_up[1];
        }
        L.w_down = matrix_from(tensors, p + "ffn_down.weight", owners);
        L.ffn_post_norm = optional_vector(tensors, p + "post_ffw_norm.weight", c.n_embd, owners);
        w.layers.push_back(L);
    }
    try {
        m->model = std::make_unique<Model>(c, std::move(w));
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    const ModelWeights& mw = m->model->weights();
    m->matrix_names[&mw.output] = "output.weight";
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        const LayerWeights& L = mw.layers[size_t(l)];
        if (tensors.contains(p + "attn_qkv.weight")) {
            m->matrix_names[&L.wq] = p + "attn_qkv.weight";
            m->matrix_names[&L.wk] = m->matrix_names[&L.wv] = "";
        } else {
            m->matrix_names[&L.wq] = p + "attn_q.weight";
            m->matrix_names[&L.wk] = p + "attn_k.weight";
            m->matrix_names[&L.wv] = p + "attn_v.weight";
        }
        m->matrix_names[&L.wo] = p + "attn_output.weight";
        if (tensors.contains(p + "ffn_gate.weight")) {
            m->matrix_names[&L.w_gate] = p + "ffn_gate.weight";
            m->matrix_names[&L.w_up] = p + "ffn_up.weight";
        } else {
            m->matrix_names[&L.w_gate] = p + "ffn_up.weight";
            m->matrix_names[&L.w_up] = "";
        }
        m->matrix_names[&L.w_down] = p + "ffn_down.weight";
    }
    return m;
}

// Something told the input of each named matrix product during an evaluation (RunState::observe):
// only the layers' matrices (names starting "blk."), only products of at least 16 tokens
// (llama-imatrix's rule: single-token decoding steps are not calibration text).
struct Observer {
    std::shared_ptr<PyModel> model;
    virtual ~Observer() = default;
    // name: the matrix's GGUF name; x: n_tokens rows of cols floats; shared: the previous call's input
    virtual void observe(const std::string& name, const float* x, int64_t n_tokens, int64_t cols, bool shared) = 0;
};

// What llama.cpp's llama-imatrix gathers: for each weight matrix, the sum over the tokens of the
// squares of its input, per column, and how many tokens (in float, in token order, as llama.cpp adds
// them).
struct ImatrixCollector : Observer {
    struct Entry {
        std::vector<float> sums;
        int64_t count = 0;
    };
    std::map<std::string, Entry> entries;

    void observe(const std::string& name, const float* x, int64_t n_tokens, int64_t cols, bool) override {
        Entry& e = entries[name];
        if (e.sums.empty()) e.sums.assign(size_t(cols), 0.0f);
        for (int64_t t = 0; t < n_tokens; t++) {
            const float* row = x + t * cols;
            for (int64_t j = 0; j < cols; j++) e.sums[size_t(j)] += row[j] * row[j];
        }
        e.count += n_tokens;
    }
};

// The inputs themselves, for the calibration statistics that need more than per-column sums (GPTQ's
// Hessian X^T X, AWQ's search), taken out after each evaluation. The matrices of one product group
// (wq, wk, wv) share one copy.
struct InputRecorder : Observer {
    struct Input {
        std::string name;  // the first matrix that read it
        int64_t cols = 0;
        std::vector<float> rows;
    };
    std::vector<Input> inputs;
    std::vector<std::pair<std::string, size_t>> readers;  // (matrix name, index into inputs)

    void observe(const std::string& name, const float* x, int64_t n_tokens, int64_t cols, bool shared) override {
        if (!shared || inputs.empty() || readers.empty() || readers.back().second != inputs.size() - 1)
            inputs.push_back(Input{name, cols, std::vector<float>(x, x + n_tokens * cols)});
        readers.emplace_back(name, inputs.size() - 1);
    }
};

// A context held for one call; RuntimeError where another call holds it.
class Claim {
public:
    explicit Claim(PyContext& ctx) : ctx_(&ctx) {
        if (ctx.busy.exchange(true, std::memory_order_acquire))
            throw std::runtime_error("this context is in use by another call (another thread, or a signal handler "
                                     "inside its evaluation): a context runs one call at a time");
    }
    Claim(Claim&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    Claim& operator=(Claim&&) = delete;
    ~Claim() {
        if (ctx_) ctx_->busy.store(false, std::memory_order_release);
    }

private:
    PyContext* ctx_;
};

// Evaluates tokens; returns float32 logits (n_tokens, n_vocab) or (n_vocab,) for the last token.
py::array_t<float> eval(PyContext& ctx, ThreadPool& pool, const Array<int32_t>& ids,
                        bool logits_all, const std::vector<Observer*>& observers) {
    for (const Observer* o : observers)
        if (!o || o->model != ctx.model) throw py::value_error("an observer belongs to another model");
    const Claim claim(ctx);
    const ModelConfig& c = ctx.model->model->config();
    const int64_t n = ids.size();
    if (n == 0) throw py::value_error("no tokens to evaluate");
    const int32_t* p = ids.data();
    for (int64_t i = 0; i < n; i++)
        if (p[i] < 0 || p[i] >= c.n_vocab)
            throw py::value_error("token id " + std::to_string(p[i]) + " is outside the vocabulary (" +
                                  std::to_string(c.n_vocab) + " tokens)");
    if (ctx.cache.n_past() + n > ctx.cache.n_ctx())
        throw py::value_error("prompt of " + std::to_string(n) + " tokens after " + std::to_string(ctx.cache.n_past()) +
                              " does not fit the context of " + std::to_string(ctx.cache.n_ctx()) + " tokens");
    py::array_t<float> out = logits_all ? py::array_t<float>({n, int64_t(c.n_vocab)})
                                        : py::array_t<float>({int64_t(c.n_vocab)});
    float* logits = out.mutable_data();
    ctx.state.interrupted = signal_check();
    if (!observers.empty())
        ctx.state.observe = [&observers](const Matrix& w, const float* x, int64_t n_tokens, int64_t cols, bool shared) {
            if (n_tokens < 16) return;
            const auto& names = observers[0]->model->matrix_names;
            const auto it = names.find(&w);
            if (it == names.end() || it->second.rfind("blk.", 0) != 0) return;
            for (Observer* o : observers) o->observe(it->second, x, n_tokens, cols, shared);
        };
    struct Reset {  // the hooks go with this call, however it ends
        RunState& s;
        ~Reset() {
            s.interrupted = nullptr;
            s.observe = nullptr;
        }
    } reset{ctx.state};
    try {
        py::gil_scoped_release release;
        ctx.model->model->forward(p, n, ctx.cache, logits, logits_all, ctx.state, pool);
    } catch (const Interrupted&) {
        throw py::error_already_set();  // the exception the signal handler raised
    }
    return out;
}

// counts[i] tokens for each of several contexts of one model, in one forward call (the tokens of
// context i after those of context i - 1 in `tokens`); logits of every token, (sum of counts, n_vocab),
// or with last_only of each context's last token, (contexts, n_vocab). Everything is checked before
// any evaluation: on an error no context changes.
py::array_t<float> eval_contexts(ThreadPool& pool, const std::vector<PyContext*>& contexts,
                                 const std::vector<int32_t>& tokens, const std::vector<int64_t>& counts,
                                 bool last_only = false) {
    const auto& model = contexts[0]->model;
    const ModelConfig& c = model->model->config();
    std::vector<KVCache*> caches;
    std::vector<Claim> claims;  // every context, for the whole call
    claims.reserve(contexts.size());
    size_t first = 0;
    for (size_t i = 0; i < contexts.size(); i++) {
        if (!contexts[i]) throw py::value_error("context " + std::to_string(i) + " is None");
        if (contexts[i]->model != model) throw py::value_error("the contexts belong to different models");
        for (size_t j = 0; j < i; j++)
            if (contexts[j] == contexts[i]) throw py::value_error("a context appears twice");
        if (counts[i] < 1) throw py::value_error("context " + std::to_string(i) + " has no tokens to evaluate");
        for (size_t t = first; t < first + size_t(counts[i]); t++)
            if (tokens[t] < 0 || tokens[t] >= c.n_vocab)
                throw py::value_error("token id " + std::to_string(tokens[t]) + " is outside the vocabulary (" +
                                      std::to_string(c.n_vocab) + " tokens)");
        first += size_t(counts[i]);
        claims.emplace_back(*contexts[i]);
        const KVCache& cache = contexts[i]->cache;
        if (cache.n_past() >= cache.n_ctx())
            throw py::value_error("context " + std::to_string(i) + " is full (" + std::to_string(cache.n_ctx()) +
                                  " tokens)");
        if (counts[i] > cache.n_ctx() - cache.n_past())
            throw py::value_error("context " + std::to_string(i) + ": " + std::to_string(counts[i]) + " tokens after " +
                                  std::to_string(cache.n_past()) + " do not fit the context of " +
                                  std::to_string(cache.n_ctx()) + " tokens");
        caches.push_back(&contexts[i]->cache);
    }
    py::array_t<float> out({last_only ? int64_t(contexts.size()) : int64_t(tokens.size()), int64_t(c.n_vocab)});
    float* logits = out.mutable_data();
    std::unique_lock<std::mutex> lock(model->batch_mutex, std::try_to_lock);
    RunState own;  // the contexts' buffers stay untouched
    RunState& state = lock.owns_lock() ? model->batch_state : own;
    state.interrupted = signal_check();
    try {
        py::gil_scoped_release release;
        model->model->forward_sequences(tokens.data(), caches.data(), counts.data(), int64_t(caches.size()), logits,
                                        state, pool, last_only);
    } catch (const Interrupted&) {
        state.interrupted = nullptr;
        throw py::error_already_set();
    }
    state.interrupted = nullptr;
    return out;
}

// One token for each of several contexts of one model, in one forward call: logits (n, n_vocab).
py::array_t<float> eval_sequences(ThreadPool& pool, const std::vector<PyContext*>& contexts,
                                  const std::vector<int64_t>& ids) {
    if (contexts.empty() || contexts.size() != ids.size())
        throw py::value_error("eval_sequences needs one token per context, and at least one context");
    std::vector<int32_t> tokens;
    for (int64_t id : ids) {
        if (id < INT32_MIN || id > INT32_MAX)
            throw py::value_error("token id " + std::to_string(id) + " is outside the vocabulary");
        tokens.push_back(int32_t(id));
    }
    return eval_contexts(pool, contexts, tokens, std::vector<int64_t>(contexts.size(), 1));
}

// Several tokens for each of several contexts of one model, in one forward call (speculative
// decoding's verification of every sequence's draft): for each context, the logits of each of its
// tokens, (len(ids[i]), n_vocab); with last_only, of its last token alone, (1, n_vocab) (a server's
// step: one sequence's prompt chunk beside the others' next tokens).
std::vector<py::array_t<float>> eval_batch(ThreadPool& pool, const std::vector<PyContext*>& contexts,
                                           const std::vector<std::vector<int64_t>>& ids, bool last_only) {
    if (contexts.empty() || contexts.size() != ids.size())
        throw py::value_error("eval_batch needs one list of token ids per context, and at least one context");
    std::vector<int32_t> tokens;
    std::vector<int64_t> counts;
    for (const auto& list : ids) {
        for (int64_t id : list) {
            if (id < INT32_MIN || id > INT32_MAX)
                throw py::value_error("token id " + std::to_string(id) + " is outside the vocabulary");
            tokens.push_back(int32_t(id));
        }
        counts.push_back(int64_t(list.size()));
    }
    py::array_t<float> all = eval_contexts(pool, contexts, tokens, counts, last_only);
    const int64_t n_vocab = all.shape(1);
    std::vector<py::array_t<float>> out;  // views of `all`, which they keep alive
    float* rows = all.mutable_data();
    for (int64_t count : counts) {
        const int64_t n_rows = last_only ? 1 : count;
        out.emplace_back(std::vector<int64_t>{n_rows, n_vocab}, rows, all);
        rows += n_rows * n_vocab;
    }
    return out;
}

}  // namespace

void register_model(py::module_& m) {
    main_thread_ident = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    py::enum_<RopeStyle>(m, "RopeStyle")
        .value("ADJACENT", RopeStyle::Adjacent)
        .value("HALVES", RopeStyle::Halves);
    py::enum_<Activation>(m, "Activation")
        .value("SILU", Activation::SiLU)
        .value("GELU_TANH", Activation::GeluTanh);
    py::class_<ModelConfig>(m, "ModelConfig", "the numbers the block function runs on (model.h: ModelConfig)")
        .def(py::init<>())
        .def_readwrite("n_layers", &ModelConfig::n_layers)
        .def_readwrite("n_embd", &ModelConfig::n_embd)
        .def_readwrite("n_ff", &ModelConfig::n_ff)
        .def_readwrite("n_heads", &ModelConfig::n_heads)
        .def_readwrite("n_kv_heads", &ModelConfig::n_kv_heads)
        .def_readwrite("head_dim", &ModelConfig::head_dim)
        .def_readwrite("n_rot", &ModelConfig::n_rot)
        .def_readwrite("n_vocab", &ModelConfig::n_vocab)
        .def_readwrite("rope_theta", &ModelConfig::rope_theta)
        .def_readwrite("rope_theta_local", &ModelConfig::rope_theta_local)
        .def_readwrite("rope_scale", &ModelConfig::rope_scale)
        .def_readwrite("rope_attn_factor", &ModelConfig::rope_attn_factor)
        .def_readwrite("rope_factors", &ModelConfig::rope_factors)
        .def_readwrite("rope_style", &ModelConfig::rope_style)
        .def_readwrite("activation", &ModelConfig::activation)
        .def_readwrite("rms_eps", &ModelConfig::rms_eps)
        .def_readwrite("embd_scale", &ModelConfig::embd_scale)
        .def_readwrite("attn_scale", &ModelConfig::attn_scale)
        .def_readwrite("windows", &ModelConfig::windows);
    m.def("kv_cache_bytes", [](int n_layers, int64_t n_ctx, int kv_dim, uint32_t type, const std::vector<int>& windows) {
        if (n_layers <= 0 || n_ctx <= 0 || kv_dim <= 0) throw py::value_error("KV cache dimensions must be positive");
        try {
            return KVCache::bytes_for(n_layers, n_ctx, kv_dim, GGMLType(type), windows);
        } catch (const std::invalid_argument& e) {
            throw py::value_error(e.what());
        }
    }, py::arg("n_layers"), py::arg("n_ctx"), py::arg("kv_dim"), py::arg("type"), py::arg("windows"),
       "bytes of one sequence's KV cache (sliding-window layers keep a ring)");
    py::class_<PyModel, std::shared_ptr<PyModel>>(m, "Model")
        .def(py::init(&build_model), py::arg("config"), py::arg("tensors"))
        .def_property_readonly("n_vocab", [](const PyModel& pm) { return pm.model->config().n_vocab; })
        .def_property_readonly("n_layers", [](const PyModel& pm) { return pm.model->config().n_layers; })
        .def_property_readonly("kv_dim", [](const PyModel& pm) { return pm.model->config().kv_dim(); })
        .def("pack", [](PyModel& pm, ThreadPool& pool, py::object release) {
            std::function<void(const void*, size_t)> cb;
            if (!release.is_none())
                cb = [&release](const void* data, size_t bytes) {
                    py::gil_scoped_acquire gil;
                    release(reinterpret_cast<uintptr_t>(data), bytes);
                };
            py::gil_scoped_release nogil;  // packing a large model takes a while: other threads run meanwhile
            pm.model->pack(pool, cb);
        }, py::arg("pool"), py::arg("release") = py::none(),
            "packs the matrices for the ISA's packed kernels; release(address, nbytes) is called for each "
            "source no longer read")
        .def_property_readonly("packed_bytes", [](const PyModel& pm) { return pm.model->packed_bytes(); });

    py::class_<Observer>(m, "Observer", "told the input of each layer matrix during Context.eval");
    py::class_<ImatrixCollector, Observer>(m, "ImatrixCollector",
                                           "sums of squared inputs per column of each layer matrix (llama-imatrix's)")
        .def(py::init([](std::shared_ptr<PyModel> model) {
                 auto c = new ImatrixCollector();
                 c->model = std::move(model);
                 return c;
             }),
             py::arg("model"))
        .def("entries", [](const ImatrixCollector& c) {
            py::dict out;
            for (const auto& [name, e] : c.entries) {
                py::array_t<float> sums(py::ssize_t(e.sums.size()));
                std::copy(e.sums.begin(), e.sums.end(), sums.mutable_data());
                out[py::str(name)] = py::make_tuple(sums, e.count);
            }
            return out;
        }, "{tensor name: (float32 sums [cols], token count)}");
    py::class_<InputRecorder, Observer>(m, "InputRecorder", "the inputs of each layer matrix, as they were")
        .def(py::init([](std::shared_ptr<PyModel> model) {
                 auto r = new InputRecorder();
                 r->model = std::move(model);
                 return r;
             }),
             py::arg("model"))
        .def("take", [](InputRecorder& r) {
            std::vector<py::object> arrays;
            for (auto& in : r.inputs) {
                const int64_t n = int64_t(in.rows.size()) / in.cols;
                py::array_t<float> a({n, in.cols});
                std::copy(in.rows.begin(), in.rows.end(), a.mutable_data());
                arrays.push_back(std::move(a));
            }
            py::list out;
            for (const auto& [name, i] : r.readers) out.append(py::make_tuple(name, arrays[i]));
            r.inputs.clear();
            r.readers.clear();
            return out;
        }, "[(tensor name, float32 input (n_tokens, cols))] since the last take, in evaluation order; "
           "the matrices of one product group share one array object");
    py::class_<PyContext>(m, "Context")
        .def(py::init([](std::shared_ptr<PyModel> model, int64_t n_ctx, uint32_t kv_type) {
                 if (n_ctx <= 0 || n_ctx > (int64_t(1) << 31))
                     throw py::value_error("n_ctx must be between 1 and 2**31, got " + std::to_string(n_ctx));
                 if (kv_type != TYPE_F16 && kv_type != TYPE_F32 && kv_type != TYPE_Q8_0)
                     throw py::value_error("KV cache type must be f16, f32 or q8_0");
                 return new PyContext(std::move(model), n_ctx, GGMLType(kv_type));
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("kv_type") = uint32_t(TYPE_F16))
        .def("eval", &eval, py::arg("pool"), py::arg("ids"), py::arg("logits_all") = false,
             py::arg("observers") = std::vector<Observer*>{})
        .def_property_readonly("n_past", [](const PyContext& c) { return c.cache.n_past(); })
        .def_property_readonly("n_ctx", [](const PyContext& c) { return c.cache.n_ctx(); })
        .def_property_readonly("kv_bytes", [](const PyContext& c) { return c.cache.bytes(); })
        .def("truncate", [](PyContext& c, int64_t n) {
            const Claim claim(c);
            try {
                c.cache.truncate(n);
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        }, py::arg("n"))
        .def_static("eval_sequences", &eval_sequences, py::arg("pool"), py::arg("contexts"), py::arg("ids"))
        .def_static("eval_batch", &eval_batch, py::arg("pool"), py::arg("contexts"), py::arg("ids"),
                    py::arg("last_only") = false)
        .def("copy_from", [](PyContext& self, const PyContext& other) {
            if (self.model != other.model) throw py::value_error("contexts belong to different models");
            if (other.cache.n_past() > self.cache.n_ctx()) throw py::value_error("the source sequence does not fit");
            if (&self == &other) return;
            const Claim mine(self), theirs(const_cast<PyContext&>(other));
            self.cache.copy_from(other.cache);
        }, py::arg("other"));
}

}  // namespace pe::bindings
