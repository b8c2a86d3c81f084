// Picks the kernel table at start-up: the best ISA this CPU (and OS) supports, unless PYENGINE_ISA
// names another. One build runs on any x86-64 CPU: the SIMD units are only entered after this check.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace pe {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
    __builtin_cpu_init();
    // libgcc's check includes the OS's XSAVE support for the ZMM state.
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

// Usable tables, worst first.
struct Registry {
    const Kernels* tables[4] = {};
    const char* names[5] = {};
    int count = 0;

    void add(const Kernels* k) {
        if (!k) return;
        tables[count] = k;
        names[count] = k->isa;
        ++count;
    }

    Registry() {
        add(kernels_scalar());
#if defined(__x86_64__) || defined(_M_X64)
        if (cpu_has_avx2()) add(kernels_avx2());
        if (cpu_has_avx512()) add(kernels_avx512());
#elif defined(__aarch64__)
        add(kernels_neon());
#endif
    }
};

const Registry& registry() {
    static const Registry r;
    return r;
}

const Kernels& choose() {
    const Registry& r = registry();
    const char* forced = std::getenv("PYENGINE_ISA");
    if (forced && *forced) {
        if (const Kernels* k = kernels_by_name(forced)) return *k;
        std::string msg = std::string("PYENGINE_ISA=") + forced + " is not available on this CPU (available:";
        for (int i = 0; i < r.count; i++) msg += std::string(" ") + r.names[i];
        throw std::runtime_error(msg + ")");
    }
    return *r.tables[r.count - 1];
}

}  // namespace

const Kernels* kernels_by_name(const char* isa) {
    const Registry& r = registry();
    for (int i = 0; i < r.count; i++)
        if (std::strcmp(r.names[i], isa) == 0) return r.tables[i];
    return nullptr;
}

const char* const* available_isas() { return registry().names; }

const Kernels& active_kernels() {
    static const Kernels& k = choose();
    return k;
}

}  // namespace pe
