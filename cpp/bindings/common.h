// Shared helpers for the binding files: argument checks that turn into Python ValueErrors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "../kernels/kernels.h"

namespace pe::bindings {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// The longest row a kernel takes: vec_dot counts values in an int.
constexpr int64_t kMaxRowLength = int64_t(1) << 30;

// rows * row_bytes, or ValueError naming `what` when the product does not fit in a size_t (a shape
// from outside may be anything).
inline size_t checked_bytes(int64_t rows, size_t row_bytes, const std::string& what) {
    if (rows < 0 || (row_bytes != 0 && uint64_t(rows) > SIZE_MAX / row_bytes))
        throw py::value_error(what + ": " + std::to_string(rows) + " rows of " + std::to_string(row_bytes) +
                              " bytes do not fit in memory");
    return size_t(rows) * row_bytes;
}

// The traits of a type id we support, or ValueError.
inline const TypeTraits& traits_or_throw(uint32_t type) {
    const TypeTraits* t = type_traits(type);
    if (!t) throw py::value_error("unsupported ggml type id " + std::to_string(type));
    return *t;
}

// The kernel table of a named ISA ("" for the active one), or ValueError.
inline const Kernels& kernels_or_throw(const std::string& isa) {
    if (isa.empty()) return active_kernels();
    const Kernels* k = kernels_by_name(isa.c_str());
    if (!k) throw py::value_error("ISA '" + isa + "' is not available on this CPU");
    return *k;
}

void register_quants(py::module_& m);
void register_matmul(py::module_& m);
void register_model(py::module_& m);
void register_sampling(py::module_& m);

}  // namespace pe::bindings
