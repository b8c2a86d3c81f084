// pyengine._core: the private native module. The public API is the Python package around it.
#include "common.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "pyengine native core (private: use the pyengine package)";
    pe::bindings::register_quants(m);
    pe::bindings::register_matmul(m);
    pe::bindings::register_model(m);
    pe::bindings::register_sampling(m);
}
