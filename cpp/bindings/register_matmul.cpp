// The thread pool and the threaded matrix product.
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../bandwidth.h"
#include "../matmul.h"
#include "common.h"

namespace pe::bindings {

namespace {

// The weight checks of a product from Python: the kernels of `isa`, and w holding rows x cols of wtype.
const Kernels& checked_product(const ByteArray& w, uint32_t wtype, int64_t rows, int64_t cols, const FloatArray& x,
                               const std::string& isa) {
    const Kernels& k = kernels_or_throw(isa);
    const TypeTraits& t = traits_or_throw(wtype);
    if (!k.vec_dot[wtype]) throw py::value_error(std::string("no dot kernel for weight type ") + t.name);
    if (rows <= 0 || cols <= 0 || cols % t.block_size != 0 || cols > kMaxRowLength)
        throw py::value_error("bad weight shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ") for " +
                              t.name);
    const size_t need = checked_bytes(rows, row_size(GGMLType(wtype), cols), std::string("weight of ") + t.name);
    if (size_t(w.size()) != need)
        throw py::value_error("weight data has " + std::to_string(w.size()) + " bytes, shape needs " +
                              std::to_string(need));
    if (x.ndim() != 2 || x.shape(1) != cols)
        throw py::value_error("activations must be (n_tokens, " + std::to_string(cols) + ") float32");
    return k;
}

// y = x W^T: w holds `rows` rows of `cols` values of type wtype; x is (n_tokens, cols) float32.
FloatArray matmul_py(ThreadPool& pool, const ByteArray& w, uint32_t wtype, int64_t rows, int64_t cols,
                     const FloatArray& x, const std::string& isa, bool packed) {
    const Kernels& k = checked_product(w, wtype, rows, cols, x, isa);
    const TypeTraits& t = *type_traits(wtype);
    const int64_t n_tokens = x.shape(0);
    FloatArray y({n_tokens, rows});
    Matrix m{GGMLType(wtype), w.data(), rows, cols};
    HugeBuffer storage;
    if (packed && !pack_matrix(k, m, storage, pool))
        throw py::value_error(std::string("the ") + k.isa + " kernels cannot pack " + t.name + " rows in groups of " +
                              std::to_string(kPackRows) + " (rows: " + std::to_string(rows) + ")");
    const float* xp = x.data();
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        ActivationBuffers buffers;
        matmul(k, m, xp, n_tokens, yp, pool, buffers);
    }
    return y;
}

// For the tests of WorkShares: y = x W^T as a short batch's balanced pool run computes it, the threads'
// parts (of n_shares) run one after another on this thread in `order`. The first to run takes its own
// share's units from the front and then every other share's from the back; the later ones find theirs
// taken. W goes in twice, as two products cut alike (gate and up), with an `after` step that counts per
// row the calls that found both products' rows complete (equal), and the calls that did not. Returns
// (y, complete, incomplete).
py::tuple matmul_in_shares(const ByteArray& w, uint32_t wtype, int64_t rows, int64_t cols, const FloatArray& x,
                           const std::string& isa, bool packed, int n_shares, const std::vector<int>& order) {
    const Kernels& k = checked_product(w, wtype, rows, cols, x, isa);
    if (n_shares < 1 || n_shares > 64) throw py::value_error("n_shares must be between 1 and 64");
    for (int i : order)
        if (i < 0 || i >= n_shares) throw py::value_error("order holds thread indices below n_shares");
    const int64_t n_tokens = x.shape(0);
    ThreadPool pool(1);
    Matrix m{GGMLType(wtype), w.data(), rows, cols};
    HugeBuffer storage;
    if (packed && !pack_matrix(k, m, storage, pool)) throw py::value_error("these rows cannot be packed");
    FloatArray y({n_tokens, rows});
    std::vector<float> y2(size_t(n_tokens * rows), NAN);
    std::fill(y.mutable_data(), y.mutable_data() + n_tokens * rows, NAN);
    py::array_t<int32_t> complete(rows), incomplete(rows);
    std::fill(complete.mutable_data(), complete.mutable_data() + rows, 0);
    std::fill(incomplete.mutable_data(), incomplete.mutable_data() + rows, 0);
    ActivationBuffers buffers;
    const Activations a = prepare_activations(k, m.type, x.data(), n_tokens, cols, packed_extras(k, m), buffers, pool);
    const std::pair<const Matrix*, float*> products[2] = {{&m, y.mutable_data()}, {&m, y2.data()}};
    WorkShares shares;
    if (!shares.reset(k, products, 2, a, n_shares, true)) throw std::logic_error("one matrix twice is cut alike");
    float* yp = y.mutable_data();
    int32_t* done = complete.mutable_data();
    int32_t* early = incomplete.mutable_data();
    const auto after = [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            bool equal = true;
            for (int64_t t = 0; t < n_tokens; t++)
                equal = equal && std::memcmp(&yp[t * rows + r], &y2[size_t(t * rows + r)], sizeof(float)) == 0;
            (equal ? done : early)[r]++;
        }
    };
    for (int i : order) shares.work(i, after);
    return py::make_tuple(y, complete, incomplete);
}

}  // namespace

void register_matmul(py::module_& m) {
    py::class_<ThreadPool>(m, "ThreadPool")
        .def(py::init([](int n_threads) {
                 if (n_threads < 1 || n_threads > 1024)
                     throw py::value_error("n_threads must be between 1 and 1024, got " + std::to_string(n_threads));
                 return new ThreadPool(n_threads);
             }),
             py::arg("n_threads"))
        .def_property_readonly("n_threads", &ThreadPool::n_threads);
    m.def("default_n_threads", &default_n_threads, "physical performance cores available to this process");
    m.def("matmul", &matmul_py, py::arg("pool"), py::arg("w"), py::arg("wtype"), py::arg("rows"), py::arg("cols"),
          py::arg("x"), py::arg("isa") = "", py::arg("packed") = false,
          "packed=True: the rows packed for the ISA's packed kernels first, as the model does at load time");
    m.def("matmul_in_shares", &matmul_in_shares, py::arg("w"), py::arg("wtype"), py::arg("rows"), py::arg("cols"),
          py::arg("x"), py::arg("isa"), py::arg("packed"), py::arg("n_shares"), py::arg("order"),
          "for tests: the balanced short-batch product with its threads' parts run in turn; (y, complete, "
          "incomplete): per row, the `after` calls that found both products' rows done, and those that did not");
    m.def("can_pack", [](uint32_t wtype, const std::string& isa) {
        const Kernels& k = kernels_or_throw(isa);
        traits_or_throw(wtype);
        return k.pack[wtype] != nullptr && k.packed_dot[wtype] != nullptr;
    }, py::arg("wtype"), py::arg("isa") = "", "whether the ISA packs weights of this type at load time");
    m.def("pack_rows", []() { return kPackRows; });
    m.def("int8_peak", [](const std::string& isa, int64_t iterations) -> py::object {
        const Kernels& k = kernels_or_throw(isa);
        if (!k.int8_peak) return py::none();
        if (iterations <= 0) throw py::value_error("iterations must be positive");
        double rate;
        {
            py::gil_scoped_release release;
            rate = k.int8_peak(iterations);
        }
        return py::float_(rate);
    }, py::arg("isa") = "", py::arg("iterations") = 100000000,
       "int8 products per second of one thread at the ISA's multiply-add peak (None: no probe)");
    m.def("memory_read_bandwidth", [](ThreadPool& pool, int64_t megabytes, int repeats) {
        if (megabytes < 1 || megabytes > 65536 || repeats < 1) throw py::value_error("bad bandwidth probe size");
        py::gil_scoped_release release;
        return read_bandwidth(pool, size_t(megabytes) << 20, repeats);
    }, py::arg("pool"), py::arg("megabytes") = 512, py::arg("repeats") = 5,
          "best read bandwidth in GB/s over a buffer of that size (for benchmarks)");
}

}  // namespace pe::bindings
