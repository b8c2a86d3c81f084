// The packed kernels (avx2_packed.h) built with AVX-512 VL and VNNI as well as AVX2: their integer
// dots take vpdpbusd / vpdpwssd on 256-bit vectors (the same 8-row layouts, one instruction where AVX2
// takes maddubs, an int16 add and madd), and the compiler has 32 vector registers. Bit-identical to
// the AVX2 build and the scalar reference: the integer sums are exact in both and the float steps are
// the same. Called only by kernels_avx512(), after dispatch.cpp's CPUID check.
//
// With PE_SIMDE defined (the kernel test, as for avx512.cpp), it builds against SIMDe's portable
// intrinsics, and kernels_avx512_simde() takes these kernels: checked on CPUs without AVX-512.
#include "kernels.h"

#if defined(PE_SIMDE) || defined(__x86_64__) || defined(_M_X64)
#if !defined(PE_SIMDE) && !(defined(__AVX512VNNI__) && defined(__AVX512VL__))
#error "avx512_packed.cpp must be built with -mavx512vl -mavx512vnni (CMakeLists.txt)"
#endif
#define PE_PACKED_VNNI 1
#include "avx2_packed.h"

namespace pe {
void add_avx512_packed_kernels(Kernels& k) { add_packed_kernels(k); }
}  // namespace pe

#else
namespace pe {
void add_avx512_packed_kernels(Kernels&) {}
}  // namespace pe
#endif
