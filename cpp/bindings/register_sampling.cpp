// The sampler's pass over the vocabulary (cpp/top_k.h).
#include <cmath>
#include <string>

#include "../top_k.h"
#include "common.h"

namespace pe::bindings {

namespace {

using IdArray = Array<int64_t>;

// (max, argmax, ids, values): see top_candidates. logits: 1-D float32; bias_ids ascending, each a
// position of logits.
py::tuple top_candidates_py(const FloatArray& logits, int64_t k, double temperature, const IdArray& bias_ids,
                            const FloatArray& bias) {
    if (logits.ndim() != 1 || logits.shape(0) < 1) throw py::value_error("logits must be a non-empty 1-D float32 array");
    if (!(temperature > 0) || !std::isfinite(temperature))
        throw py::value_error("temperature must be a finite number > 0, got " + std::to_string(temperature));
    const int64_t n = logits.shape(0), n_bias = bias_ids.size();
    if (bias_ids.ndim() != 1 || bias.ndim() != 1 || bias.size() != n_bias)
        throw py::value_error("bias_ids and bias must be 1-D arrays of the same length");
    const int64_t* ids = bias_ids.data();
    for (int64_t j = 0; j < n_bias; j++)
        if (ids[j] < 0 || ids[j] >= n || (j && ids[j] <= ids[j - 1]))
            throw py::value_error("bias_ids must be ascending positions of logits");
    const TopCandidates c =
        top_candidates(active_kernels(), logits.data(), n, k, float(temperature), ids, bias.data(), n_bias);
    IdArray out_ids(py::ssize_t(c.ids.size()));
    FloatArray out_values(py::ssize_t(c.values.size()));
    std::copy(c.ids.begin(), c.ids.end(), out_ids.mutable_data());
    std::copy(c.values.begin(), c.values.end(), out_values.mutable_data());
    return py::make_tuple(c.max, c.argmax, out_ids, out_values);
}

}  // namespace

void register_sampling(py::module_& m) {
    m.def("top_candidates", &top_candidates_py, py::arg("logits"), py::arg("k"), py::arg("temperature"),
          py::arg("bias_ids"), py::arg("bias"),
          "(max, argmax, ids, values) of logits + a sparse bias: the largest value (NaN if any is NaN) and its "
          "first index, and the top k after dividing by the temperature, ties included: their ids and scaled "
          "values, ascending by value (ties by id)");
}

}  // namespace pe::bindings
