// Shared helpers for the binding files: argument checks that turn into Python ValueErrors.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <string>

#include "../kernels/kernels.h"

namespace pe::bindings {

namespace py = pybind11;

// An argument numpy converts to a C-contiguous array of T, as py::array_t<T, c_style | forcecast>,
// except that only an ordinary failure to convert (an Exception: a string, a ragged list) makes the
// call's "incompatible function arguments" TypeError. pybind11's own caster clears whatever the
// conversion raised, and numpy's runs Python's signal handlers (PyErr_CheckSignals, as it walks a
// sequence): a Ctrl-C or SIGTERM landing there, KeyboardInterrupt or SystemExit, became that
// TypeError. Here it propagates.
template <class T>
class Array : public py::array_t<T, py::array::c_style | py::array::forcecast> {
public:
    using Base = py::array_t<T, py::array::c_style | py::array::forcecast>;
    using Base::Base;
    Array() = default;
    explicit Array(Base&& a) : Base(std::move(a)) {}
};

using FloatArray = Array<float>;
using ByteArray = Array<uint8_t>;

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

// The interrupt hook of a long native call, run on the calling thread with the GIL released: at
// most every 20 ms it takes the GIL and runs Python's signal handlers; true when one raised (its
// exception is set: throw py::error_already_set once the GIL is held again). nullptr off the main
// thread, where no handler runs. (register_model.cpp)
std::function<bool()> signal_check();

void register_quants(py::module_& m);
void register_matmul(py::module_& m);
void register_model(py::module_& m);
void register_sampling(py::module_& m);

}  // namespace pe::bindings

namespace pybind11::detail {

// (a pyobject_caster, as pybind11's own for array_t: type_caster<Array<T>> comes from it)
template <class T>
struct pyobject_caster<pe::bindings::Array<T>> {
    using Base = typename pe::bindings::Array<T>::Base;
    PYBIND11_TYPE_CASTER(pe::bindings::Array<T>, make_caster<Base>::name);

    bool load(handle src, bool convert) {
        if (!convert && !Base::check_(src)) return false;
        try {
            value = pe::bindings::Array<T>(Base(reinterpret_borrow<object>(src)));
            return true;
        } catch (error_already_set& e) {
            if (e.matches(PyExc_Exception)) return false;  // not an array of T: pybind11's TypeError
            throw;  // KeyboardInterrupt, SystemExit: a signal's
        }
    }

    static handle cast(const pe::bindings::Array<T>& src, return_value_policy, handle) { return src.inc_ref(); }
};

}  // namespace pybind11::detail
