// The llama model over memory-mapped weights, and its per-sequence contexts (KV cache + buffers).
#include <chrono>
#include <memory>
#include <pybind11/stl.h>
#include <stdexcept>
#include <string>
#include <vector>

#include "../llama_model.h"
#include "common.h"

namespace pe::bindings {

namespace {

// Keeps the Python objects that own the weight memory (numpy views of the mmap) alive as long as
// the model that points into them.
struct PyModel {
    std::unique_ptr<LlamaModel> model;
    std::vector<py::object> owners;
};

struct PyContext {
    std::shared_ptr<PyModel> model;
    KVCache cache;
    RunState state;
    PyContext(std::shared_ptr<PyModel> m, int64_t n_ctx, GGMLType kv_type)
        : model(std::move(m)),
          cache(model->model->config().n_layers, n_ctx, model->model->config().kv_dim(), kv_type) {}
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

std::shared_ptr<PyModel> build_model(const py::dict& cfg, const py::dict& tensors) {
    LlamaConfig c;
    c.n_layers = cfg["n_layers"].cast<int>();
    c.n_embd = cfg["n_embd"].cast<int>();
    c.n_ff = cfg["n_ff"].cast<int>();
    c.n_heads = cfg["n_heads"].cast<int>();
    c.n_kv_heads = cfg["n_kv_heads"].cast<int>();
    c.head_dim = cfg["head_dim"].cast<int>();
    c.n_rot = cfg["n_rot"].cast<int>();
    c.n_vocab = cfg["n_vocab"].cast<int>();
    c.rope_theta = cfg["rope_theta"].cast<float>();
    c.rms_eps = cfg["rms_eps"].cast<float>();
    if (c.n_layers <= 0 || c.n_layers > 4096) throw py::value_error("block_count out of range");
    if (c.n_heads <= 0 || c.head_dim <= 0 || c.n_embd <= 0) throw py::value_error("head counts must be positive");
    auto m = std::make_shared<PyModel>();
    LlamaWeights w;
    w.token_embd = matrix_from(tensors, "token_embd.weight", m->owners);
    w.output_norm = vector_from(tensors, "output_norm.weight", c.n_embd, m->owners);
    w.output = matrix_from(tensors, "output.weight", m->owners, false);
    if (!w.output.data) w.output = w.token_embd;  // tied embeddings
    for (int l = 0; l < c.n_layers; l++) {
        const std::string p = "blk." + std::to_string(l) + ".";
        LayerWeights L;
        L.attn_norm = vector_from(tensors, p + "attn_norm.weight", c.n_embd, m->owners);
        L.wq = matrix_from(tensors, p + "attn_q.weight", m->owners);
        L.wk = matrix_from(tensors, p + "attn_k.weight", m->owners);
        L.wv = matrix_from(tensors, p + "attn_v.weight", m->owners);
        L.wo = matrix_from(tensors, p + "attn_output.weight", m->owners);
        L.ffn_norm = vector_from(tensors, p + "ffn_norm.weight", c.n_embd, m->owners);
        L.w_gate = matrix_from(tensors, p + "ffn_gate.weight", m->owners);
        L.w_up = matrix_from(tensors, p + "ffn_up.weight", m->owners);
        L.w_down = matrix_from(tensors, p + "ffn_down.weight", m->owners);
        w.layers.push_back(L);
    }
    try {
        m->model = std::make_unique<LlamaModel>(c, std::move(w));
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    return m;
}

// The interrupt hook of an evaluation (RunState::interrupted), run on the evaluating thread between
// layers: at most every 20 ms it takes the GIL and runs Python's signal handlers, so that Ctrl-C
// stops a long prompt promptly. A handler that raises (KeyboardInterrupt) leaves its exception set;
// the hook then returns true, the forward pass throws Interrupted, and the caller re-raises the
// Python exception with the GIL held again. Only the main thread runs signal handlers, so other
// threads get no hook (and never wait for the GIL).
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

// Evaluates tokens; returns float32 logits (n_tokens, n_vocab) or (n_vocab,) for the last token.
py::array_t<float> eval(PyContext& ctx, ThreadPool& pool, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& ids,
                        bool logits_all) {
    const LlamaConfig& c = ctx.model->model->config();
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
    try {
        py::gil_scoped_release release;
        ctx.model->model->forward(p, n, ctx.cache, logits, logits_all, ctx.state, pool);
    } catch (const Interrupted&) {
        ctx.state.interrupted = nullptr;
        throw py::error_already_set();  // the exception the signal handler raised
    }
    ctx.state.interrupted = nullptr;
    return out;
}

// One token for each of several contexts of one model, in one forward call: logits (n, n_vocab).
py::array_t<float> eval_sequences(ThreadPool& pool, const std::vector<PyContext*>& contexts,
                                  const std::vector<int64_t>& ids) {
    if (contexts.empty() || contexts.size() != ids.size())
        throw py::value_error("eval_sequences needs one token per context, and at least one context");
    const auto& model = contexts[0]->model;
    const LlamaConfig& c = model->model->config();
    std::vector<KVCache*> caches;
    std::vector<int32_t> tokens;
    for (size_t i = 0; i < contexts.size(); i++) {
        if (!contexts[i]) throw py::value_error("context " + std::to_string(i) + " is None");
        if (contexts[i]->model != model) throw py::value_error("the contexts belong to different models");
        for (size_t j = 0; j < i; j++)
            if (contexts[j] == contexts[i]) throw py::value_error("a context appears twice");
        if (ids[i] < 0 || ids[i] >= c.n_vocab)
            throw py::value_error("token id " + std::to_string(ids[i]) + " is outside the vocabulary (" +
                                  std::to_string(c.n_vocab) + " tokens)");
        if (contexts[i]->cache.n_past() >= contexts[i]->cache.n_ctx())
            throw py::value_error("context " + std::to_string(i) + " is full (" +
                                  std::to_string(contexts[i]->cache.n_ctx()) + " tokens)");
        caches.push_back(&contexts[i]->cache);
        tokens.push_back(int32_t(ids[i]));
    }
    const int64_t n = int64_t(contexts.size());
    py::array_t<float> out({n, int64_t(c.n_vocab)});
    float* logits = out.mutable_data();
    RunState state;  // the batch's own buffers: the contexts' stay untouched
    state.interrupted = signal_check();
    try {
        py::gil_scoped_release release;
        model->model->forward_sequences(tokens.data(), caches.data(), n, logits, state, pool);
    } catch (const Interrupted&) {
        throw py::error_already_set();
    }
    return out;
}

}  // namespace

void register_model(py::module_& m) {
    main_thread_ident = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    py::class_<PyModel, std::shared_ptr<PyModel>>(m, "LlamaModel")
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

    py::class_<PyContext>(m, "Context")
        .def(py::init([](std::shared_ptr<PyModel> model, int64_t n_ctx, uint32_t kv_type) {
                 if (n_ctx <= 0 || n_ctx > (int64_t(1) << 31))
                     throw py::value_error("n_ctx must be between 1 and 2**31, got " + std::to_string(n_ctx));
                 if (kv_type != TYPE_F16 && kv_type != TYPE_F32) throw py::value_error("KV cache type must be f16 or f32");
                 return new PyContext(std::move(model), n_ctx, GGMLType(kv_type));
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("kv_type") = uint32_t(TYPE_F16))
        .def("eval", &eval, py::arg("pool"), py::arg("ids"), py::arg("logits_all") = false)
        .def_property_readonly("n_past", [](const PyContext& c) { return c.cache.n_past(); })
        .def_property_readonly("n_ctx", [](const PyContext& c) { return c.cache.n_ctx(); })
        .def_property_readonly("kv_bytes", [](const PyContext& c) { return c.cache.bytes(); })
        .def("truncate", [](PyContext& c, int64_t n) {
            try {
                c.cache.truncate(n);
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        }, py::arg("n"))
        .def_static("eval_sequences", &eval_sequences, py::arg("pool"), py::arg("contexts"), py::arg("ids"))
        .def("copy_from", [](PyContext& self, const PyContext& other) {
            if (self.model != other.model) throw py::value_error("contexts belong to different models");
            if (other.cache.n_past() > self.cache.n_ctx()) throw py::value_error("the source sequence does not fit");
            self.cache.copy_from(other.cache);
        }, py::arg("other"));
}

}  // namespace pe::bindings
