// Shared helpers for the binding files: argument checks that turn into Python ValueErrors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../kernels/kernels.h"

namespace pe::bindings {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

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

}  // namespace pe::bindings
