// Block formats and single kernels: quantize / dequantize rows, and the per-ISA kernels exposed so
// that tests can hold every SIMD path against the scalar reference.
#include <algorithm>
#include <optional>
#include <stdexcept>
#include <vector>

#include <pybind11/stl.h>

#include "../quant/codes.h"
#include "../threadpool.h"
#include "common.h"

namespace pe::bindings {

namespace {

// imatrix: None, or cols float32 importance weights (the same for every row), for the weighted search.
// pool: None (this thread), or a pool whose threads take contiguous runs of rows (each row's bytes
// are its own, whichever thread made them).
py::array_t<uint8_t> quantize(const FloatArray& x, uint32_t type, const std::optional<FloatArray>& imatrix,
                              ThreadPool* pool) {
    const TypeTraits& t = traits_or_throw(type);
    if (x.ndim() != 2) throw py::value_error("quantize expects a 2-D float32 array (rows, cols)");
    if (!t.from_float) throw py::value_error(std::string("pyengine has no quantizer for ") + t.name);
    const int64_t rows = x.shape(0), cols = x.shape(1);
    if (cols % t.block_size != 0)
        throw py::value_error(std::string(t.name) + " needs a row length that is a multiple of " +
                              std::to_string(t.block_size) + ", got " + std::to_string(cols));
    const float* weights = nullptr;
    if (imatrix) {
        if (!t.from_float_weighted)
            throw py::value_error(std::string("pyengine has no importance-weighted quantizer for ") + t.name);
        if (imatrix->ndim() != 1 || imatrix->shape(0) != cols)
            throw py::value_error("imatrix must hold one float32 weight per column (" + std::to_string(cols) + ")");
        weights = imatrix->data();
    }
    const size_t row_bytes = row_size(GGMLType(type), cols);
    py::array_t<uint8_t> out({rows, int64_t(row_bytes)});
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    auto rows_in = [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; r++) {
            if (weights) {
                t.from_float_weighted(src + r * cols, dst + size_t(r) * row_bytes, cols, weights);
            } else {
                t.from_float(src + r * cols, dst + size_t(r) * row_bytes, cols);
            }
        }
    };
    // ~1M values at a time, Python's signal handlers run between (a K-quant search takes ~1 us a
    // value: a 7B model's output matrix, seconds): Ctrl-C stops a long matrix within a run.
    const int64_t run_rows = std::max<int64_t>(1, (int64_t(1) << 20) / cols);
    const auto interrupted = signal_check();
    bool stopped = false;
    {
        py::gil_scoped_release release;
        for (int64_t r0 = 0; r0 < rows && !stopped; r0 += run_rows) {
            const int64_t n = std::min(run_rows, rows - r0);
            if (pool) {
                parallel_for(*pool, n, [&](int64_t r) { rows_in(r0 + r, r0 + r + 1); });
            } else {
                rows_in(r0, r0 + n);
            }
            stopped = interrupted && r0 + n < rows && interrupted();
        }
    }
    if (stopped) throw py::error_already_set();  // the exception the signal handler raised
    return out;
}

FloatArray dequantize(const ByteArray& raw, uint32_t type, int64_t rows, int64_t cols) {
    const TypeTraits& t = traits_or_throw(type);
    if (rows < 0 || cols < 0 || cols % t.block_size != 0)
        throw py::value_error("bad shape for " + std::string(t.name) + ": (" + std::to_string(rows) + ", " +
                              std::to_string(cols) + ")");
    const size_t row_bytes = row_size(GGMLType(type), cols);
    const std::string shape = "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
    const size_t need = checked_bytes(rows, row_bytes, std::string(t.name) + " data of shape " + shape);
    // rows * cols floats come out: at most 32 times the bytes that go in
    if (size_t(raw.size()) != need)
        throw py::value_error(std::string(t.name) + " data of shape " + shape + " needs " + std::to_string(need) +
                              " bytes, got " + std::to_string(raw.size()));
    FloatArray out({rows, cols});
    const uint8_t* src = raw.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; r++) t.to_float(src + size_t(r) * row_bytes, dst + r * cols, cols);
    }
    return out;
}

// The codes of a quantized matrix (rows, cols) with each weight's scale and offset (codes.h), checked
// like dequantize's input; `what` names the call in errors.
const TypeTraits& coded_type(uint32_t type, const ByteArray& raw, int64_t rows, int64_t cols, const char* what) {
    const TypeTraits& t = traits_or_throw(type);
    const int16_t* levels;
    if (!code_levels(GGMLType(type), &levels)) throw py::value_error(std::string(what) + ": no codes for " + t.name);
    if (rows < 0 || cols <= 0 || cols % t.block_size != 0)
        throw py::value_error(std::string(what) + ": bad shape for " + t.name);
    if (size_t(raw.size()) != checked_bytes(rows, row_size(GGMLType(type), cols), what))
        throw py::value_error(std::string(what) + ": the bytes do not hold a " + t.name + " matrix of that shape");
    return t;
}

py::tuple unpack_codes_of(const ByteArray& raw, uint32_t type, int64_t rows, int64_t cols) {
    coded_type(type, raw, rows, cols, "unpack_codes");
    const size_t row_bytes = row_size(GGMLType(type), cols);
    py::array_t<uint8_t> codes({rows, cols});
    FloatArray scale({rows, cols}), offset({rows, cols});
    for (int64_t r = 0; r < rows; r++)
        unpack_codes(GGMLType(type), raw.data() + size_t(r) * row_bytes, cols, codes.mutable_data() + r * cols,
                     scale.mutable_data() + r * cols, offset.mutable_data() + r * cols);
    return py::make_tuple(codes, scale, offset);
}

ByteArray pack_codes_into(const ByteArray& raw, uint32_t type, int64_t rows, int64_t cols, const ByteArray& codes) {
    coded_type(type, raw, rows, cols, "pack_codes");
    const int16_t* levels;
    const int n_levels = code_levels(GGMLType(type), &levels);
    if (codes.ndim() != 2 || codes.shape(0) != rows || codes.shape(1) != cols)
        throw py::value_error("pack_codes: codes must be (rows, cols)");
    const uint8_t* c = codes.data();
    for (int64_t i = 0; i < rows * cols; i++)
        if (c[i] >= n_levels) throw py::value_error("pack_codes: a code is not below " + std::to_string(n_levels));
    const size_t row_bytes = row_size(GGMLType(type), cols);
    ByteArray out({rows, int64_t(row_bytes)});
    std::copy(raw.data(), raw.data() + raw.size(), out.mutable_data());
    for (int64_t r = 0; r < rows; r++) pack_codes(GGMLType(type), out.mutable_data() + size_t(r) * row_bytes, cols, c + r * cols);
    return out;
}

// Activation conversion of one row by a given ISA (the bytes must equal the scalar ones).
py::array_t<uint8_t> quantize_activation(const std::string& isa, const FloatArray& x, uint32_t type) {
    const Kernels& k = kernels_or_throw(isa);
    traits_or_throw(type);
    if (!k.from_float[type]) throw py::value_error("no activation conversion to type " + std::to_string(type));
    const int64_t n = x.size();
    const size_t bytes = row_size(GGMLType(type), n);
    if (bytes == 0 && n != 0) throw py::value_error("row length is not a multiple of the block size");
    py::array_t<uint8_t> out{py::ssize_t(bytes)};
    k.from_float[type](x.data(), out.mutable_data(), n);
    return out;
}

// dot(weight row, x) by a given ISA: x is converted with that ISA's activation quantizer first.
float vec_dot(const std::string& isa, uint32_t wtype, const ByteArray& w, const FloatArray& x) {
    const Kernels& k = kernels_or_throw(isa);
    const TypeTraits& t = traits_or_throw(wtype);
    if (!k.vec_dot[wtype]) throw py::value_error(std::string("no dot kernel for weight type ") + t.name);
    const int64_t n = x.size();
    if (n > kMaxRowLength) throw py::value_error("a row of " + std::to_string(n) + " values is too long");
    if (n % t.block_size != 0 || size_t(w.size()) != row_size(GGMLType(wtype), n))
        throw py::value_error("weight row of " + std::to_string(w.size()) + " bytes does not hold " +
                              std::to_string(n) + " " + t.name + " values");
    std::vector<uint8_t> xq(row_size(t.vec_dot_type, n) + 1);
    k.from_float[t.vec_dot_type](x.data(), xq.data(), n);
    return k.vec_dot[wtype](int(n), w.data(), xq.data());
}

// The attention kernel of an ISA on one KV head: q (n_q, hd) float32; keys and values (n_pos, hd) as
// raw rows of kv_type (f16 or f32). Returns (n_q, hd).
FloatArray attend(const std::string& isa, uint32_t kv_type, const FloatArray& q, const ByteArray& keys,
                  const ByteArray& values, int64_t n_pos, float scale) {
    const Kernels& k = kernels_or_throw(isa);
    if (kv_type >= TYPE_COUNT || !k.attend[kv_type]) throw py::value_error("no attention kernel for that KV type");
    if (q.ndim() != 2 || q.shape(1) <= 0 || q.shape(0) <= 0 || n_pos <= 0)
        throw py::value_error("q must be (n_q, head_dim) and n_pos positive");
    const int64_t n_q = q.shape(0), hd = q.shape(1);
    if (hd % type_traits(GGMLType(kv_type))->block_size != 0)
        throw py::value_error("head_dim must be a whole number of the KV type's blocks");
    const size_t row_bytes = row_size(GGMLType(kv_type), hd);
    if (size_t(keys.size()) != row_bytes * size_t(n_pos) || size_t(values.size()) != row_bytes * size_t(n_pos))
        throw py::value_error("keys and values must hold n_pos rows of head_dim values");
    FloatArray out({n_q, hd});
    std::vector<float> scores(static_cast<size_t>(n_q * n_pos)), unnormalised(static_cast<size_t>(n_q * hd));
    std::vector<float> max(static_cast<size_t>(n_q));
    std::vector<double> sum(max.size());
    k.attend[kv_type](int(hd), int(n_q), q.data(), keys.data(), values.data(), row_bytes, n_pos, scale,
                      scores.data(), unnormalised.data(), max.data(), sum.data());
    for (int64_t j = 0; j < n_q; j++)  // one run of positions
        attention_join(int(hd), 1, unnormalised.data() + j * hd, 0, max.data() + j, sum.data() + j, 0,
                       out.mutable_data() + j * hd);
    return out;
}

// The gated feed-forward's SiLU of an ISA: silu(g) * u elementwise, g and u of one length.
FloatArray silu_mul(const std::string& isa, const FloatArray& g, const FloatArray& u) {
    const Kernels& k = kernels_or_throw(isa);
    if (g.ndim() != 1 || u.ndim() != 1 || g.size() != u.size())
        throw py::value_error("g and u must be 1-D arrays of one length");
    FloatArray out(g.size());
    std::copy(g.data(), g.data() + g.size(), out.mutable_data());
    k.silu_mul(out.mutable_data(), u.data(), g.size());
    return out;
}

}  // namespace

void register_quants(py::module_& m) {
    m.def("type_info", [](uint32_t type) -> py::object {
        const TypeTraits* t = type_traits(type);
        if (!t) return py::none();
        return py::make_tuple(t->name, t->block_size, t->type_size, uint32_t(t->vec_dot_type));
    }, "(name, block_size, type_size, vec_dot_type) of a ggml type id, or None if unsupported");
    m.def("is_weight_type", [](uint32_t type) {
        return type_traits(type) != nullptr && active_kernels().vec_dot[type] != nullptr;
    }, "whether the engine multiplies weights of this type (not an activation-only one: Q8_1, Q8_K)");
    m.def("has_weighted_quantizer", [](uint32_t type) {
        const TypeTraits* t = type_traits(type);
        return t != nullptr && t->from_float_weighted != nullptr;
    }, "whether quantize takes an importance matrix for this type (llama.cpp's weighted search)");
    m.def("quantize", &quantize, py::arg("x"), py::arg("type"), py::arg("imatrix") = py::none(),
          py::arg("pool") = py::none());
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"));
    m.def("code_levels", [](uint32_t type) -> py::object {
        const int16_t* levels;
        traits_or_throw(type);
        const int n = code_levels(GGMLType(type), &levels);
        if (!n) return py::none();
        py::array_t<int16_t> out(n);
        std::copy(levels, levels + n, out.mutable_data());
        return out;
    }, "the level of each code of a block format (value = scale * level + offset), or None");
    m.def("unpack_codes", &unpack_codes_of, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"),
          "(codes uint8, scale float32, offset float32), each (rows, cols), of a quantized matrix");
    m.def("pack_codes", &pack_codes_into, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("cols"),
          py::arg("codes"), "the matrix's bytes with its codes replaced, its scales kept");
    m.def("quantize_activation", &quantize_activation, py::arg("isa"), py::arg("x"), py::arg("type"));
    m.def("vec_dot", &vec_dot, py::arg("isa"), py::arg("wtype"), py::arg("w"), py::arg("x"));
    m.def("attend", &attend, py::arg("isa"), py::arg("kv_type"), py::arg("q"), py::arg("keys"), py::arg("values"),
          py::arg("n_pos"), py::arg("scale"));
    m.def("silu_mul", &silu_mul, py::arg("isa"), py::arg("g"), py::arg("u"));
    m.def("isa", [] { return std::string(active_kernels().isa); }, "the ISA whose kernels run");
    m.def("available_isas", [] {
        py::list names;
        for (const char* const* p = available_isas(); *p; ++p) names.append(*p);
        return names;
    }, "ISAs usable on this CPU, best last");
}

}  // namespace pe::bindings
