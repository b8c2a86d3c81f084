// Standalone check of one SIMD kernel table against the scalar reference, pe::kernels_scalar().
// No Python: tests/test_native_kernels.py builds it once per table (natively, through SIMDe, or
// cross-compiled for arm64 and run under qemu) and reads its last line.
//
//   g++ -std=c++17 -O2 -c -ffp-contract=off cpp/quant/reference.cpp cpp/quant/quantize_kquants.cpp
//   g++ -std=c++17 -O2 -c -mavx2 -mfma -mf16c -ffp-contract=off cpp/kernels/avx2.cpp cpp/kernels/avx2_kquants.cpp
//   g++ -std=c++17 -O2 -DPE_TEST_TABLE=kernels_avx2 cpp/tests/kernel_test.cpp reference.o
//       quantize_kquants.o avx2.o avx2_kquants.o
//   ./a.out [--seed S] [--trials T]
//
// The NEON table (cross-compiled, -march=armv8.2-a+dotprod or armv8-a for every unit, as the test does):
//   aarch64-linux-gnu-g++ -std=c++17 -O2 -c -ffp-contract=off cpp/quant/reference.cpp
//       cpp/quant/quantize_kquants.cpp cpp/kernels/neon_kquants.cpp
//   aarch64-linux-gnu-g++ -std=c++17 -O2 -c cpp/kernels/neon.cpp
//   aarch64-linux-gnu-g++ -std=c++17 -O2 -static -DPE_TEST_TABLE=kernels_neon cpp/tests/kernel_test.cpp
//       reference.o quantize_kquants.o neon.o neon_kquants.o
//   qemu-aarch64 ./a.out
//
// As in the CMake build, only the ISA's own unit gets the ISA flags: reference.cpp compiled with
// -mfma would have its a * b + c contracted into fused multiply-adds and stop being the same oracle.
//
// PE_TEST_TABLE names the table function: kernels_avx2, kernels_avx512 (avx2.cpp, avx2_kquants.cpp,
// avx512.cpp and avx512_packed.cpp, each with its CMake flags), kernels_avx512_simde (avx512.cpp and
// avx512_packed.cpp built with -DPE_SIMDE), kernels_neon, or kernels_scalar (the reference against
// itself: a check of this test).
//
// What is checked:
// - the table has every entry, and (unless it is the scalar table) its own vec_dot functions for
//   every weight type (AVX-512's K-quant-era dots included) and, AVX2 and NEON, its own Q8_K quantizer
//   (AVX2: and F16 converter);
// - from_float for Q8_0, Q8_1 and F32 gives the same bytes as the scalar quantizer, on random,
//   all-zero, all-equal, one-outlier, huge (fp16 scale at or past 65504), tiny (fp16 scale subnormal
//   or zero) and exact-tie (x / d = k + 0.5) blocks; from_float for F16 (the KV cache's rows) gives
//   the reference's bytes on random values, every encoding (NaNs too), ties, subnormals, 65504 and
//   the overflow threshold;
// - vec_dot for Q4_0, Q4_1, Q8_0 (activations quantized by the table's own from_float, which must
//   match the scalar bytes) and for F32, F16, BF16 (f32 activations) agrees with the scalar result
//   within the bound below, on random and adversarial blocks (zero bytes and scales, all equal, one
//   outlier, +-65504 scales with -128 / 127 bytes and 0 / 15 nibbles, subnormal scales), over lengths
//   with odd block counts and odd float counts, so every unrolled loop's tail runs;
// - vec_dot for NF4 and NF4_DQ (pyengine's own formats, Q8_0 activations) likewise, on random and
//   reference-quantized blocks, zero scales and scale codes, all-zero levels, one outlier, +-127
//   levels under the largest fp16 scale (and scale code 255), subnormal scales;
// - from_float for Q8_K gives the scalar quantizer's exact bytes (d, qs and bsums), on the same kinds
//   of rows (mixed per 32-values inside each 256-block) and on rows whose largest value is 127 * 2^e
//   for the whole 256-block, so that x * iscale lands on exact ties (ggml's rounding: to even);
// - vec_dot for the K-quants (Q2_K .. Q6_K, IQ4_XS against Q8_K) and for Q5_0, IQ4_NL (Q8_0) and
//   Q5_1 (Q8_1) is BIT-IDENTICAL to the scalar one (these kernels compute each block's integer sums
//   exactly and then do the reference's float operations in its order: no tolerance), on random
//   bytes and adversarial blocks: zero, largest (+-65504) and subnormal fp16 scales, dmin = 0,
//   sub-block scales at their largest and smallest (6-bit 63, Q6_K's int8 127 and -128), levels all
//   at one extreme or mixed extremes (nibbles 0 / 15, Q3_K's hmask 0 / 0xff), one outlier block;
// - the packed kernels (pack, then packed_dot for passes of 1 .. kPackTokens tokens, and
//   packed_dot_pair), of every type the table packs, are BIT-IDENTICAL to the scalar vec_dot of each
//   row and token, on the weight kinds above (the mixed kind drawing a kind per block), rows of 1 to
//   9 blocks, and activations of mixed kinds with the block sums and scales matmul.cpp makes;
// - axpy (y += a * x) for F32 and F16 x agrees with the scalar one element by element.
// - attend (the query heads of one KV head over an F32 / F16 / Q8_0 cache) agrees with the scalar one
//   (its inputs are plain vectors, not placed before the unmapped page below);
// - silu_mul (the gated feed-forward's SiLU) agrees with the scalar one within a few ulp.
// - find_above (the sampler's scan for values past a floor, NaN included) gives the scalar index.
// Every row sits at the very end of a buffer followed by an unmapped page, so a kernel reading or
// writing past the end of its row crashes instead of passing.
//
// The tolerance. Both results are float sums of the same terms in a different order. For the
// quantized dots the terms are t = D_b * L, with D_b = fl(d_w * d_x) computed identically by both
// (one rounding of a product of two exact fp16 values) and L an exact integer: a block's whole int sum
// (scalar) or a lane's share of it (SIMD); for Q4_1 also fl(m_b * s_b). NF4 is the same with one
// term per 32-half of a 64-block (d_w being the block's scale: fp16, or for NF4_DQ the float
// nf4_dq_block_scale, computed identically by both). Summing terms in any tree of
// depth h, with each product rounded once (or fused), errs by at most gamma(h + 1) * sum|t|, where
// gamma(k) = k u / (1 - k u), u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms,
// chapters 3 and 4). And
// sum|t| <= S = sum_b |D_b| * sum_j |q_j y_j| (+ sum_b |m_b s_b|), since a lane's share is at most
// the sum of its products' magnitudes. Neither path has a tree deeper than nb + 8 (nb blocks
// accumulated in one chain at most, plus lane and accumulator reductions and the mins add), so
//     |simd - scalar| <= 2 * gamma(nb + 8) * S + 2 * (nb + 8) * 2^-149
// the last term covering products that underflow into float subnormals (each such rounding errs by
// at most 2^-150). For the float dots the same argument gives gamma(n + 8) with S = sum|w_i x_i|.
// For 64 blocks this is 8.6e-6 * S: integer sums are exact, so only accumulation order is left.
// An axpy element is y + a * x with one rounding (fused) or two, on either side, so the two differ by
// at most 4 u (|y| + |a x|) + 2^-148.
// Inputs whose dot overflows, and NaN or infinite inputs, have no order-independent answer and are
// not used for the dot checks (an fp16 scale that overflows is checked in the quantizer only).
#include <sys/mman.h>
#include <unistd.h>

#include <cinttypes>
#include <csignal>
#include <cstdarg>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <string>
#include <vector>

#include "../kernels/kernels.h"
#include "../quant/fp16.h"

namespace pe {
const Kernels* kernels_avx512_simde();  // avx512.cpp built with -DPE_SIMDE
}  // namespace pe

#ifndef PE_TEST_TABLE
#error "define PE_TEST_TABLE: kernels_avx2, kernels_avx512, kernels_avx512_simde, kernels_neon or kernels_scalar"
#endif
#define PE_STRINGIFY2(x) #x
#define PE_STRINGIFY(x) PE_STRINGIFY2(x)

namespace {

using namespace pe;

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64, so that a seed gives the same cases whatever the standard library.

struct Rng {
    uint64_t state;

    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    int below(int n) { return int(next() % uint64_t(n)); }
    int between(int lo, int hi) { return lo + below(hi - lo + 1); }  // inclusive
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
    float sign() { return (next() & 1) ? 1.0f : -1.0f; }
    float normal() {
        const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
        const double u2 = uniform();
        return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
};

// ---------------------------------------------------------------------------------------------
// Buffers that end at an unmapped page.

class GuardedBuffer {
  public:
    explicit GuardedBuffer(size_t capacity) {
        page_ = size_t(sysconf(_SC_PAGESIZE));
        capacity_ = (capacity + page_ - 1) / page_ * page_;
        map_size_ = capacity_ + page_;
        void* p = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            std::perror("mmap");
            std::exit(2);
        }
        base_ = static_cast<uint8_t*>(p);
        if (mprotect(base_ + capacity_, page_, PROT_NONE) != 0) {
            std::perror("mprotect");
            std::exit(2);
        }
    }
    ~GuardedBuffer() { munmap(base_, map_size_); }
    GuardedBuffer(const GuardedBuffer&) = delete;
    GuardedBuffer& operator=(const GuardedBuffer&) = delete;

    // size bytes ending at the guard page, filled with fill. The start is as aligned as size is
    // (rows of 18-byte blocks land on 2-byte boundaries, float rows on 4-byte ones).
    uint8_t* place(size_t size, uint8_t fill) {
        if (size > capacity_) {
            std::fprintf(stderr, "GuardedBuffer: %zu bytes asked, capacity %zu\n", size, capacity_);
            std::exit(2);
        }
        uint8_t* p = base_ + capacity_ - size;
        std::memset(p, fill, size);
        return p;
    }
    // Copies data to the end of the buffer.
    const void* put(const std::vector<uint8_t>& data) {
        uint8_t* p = place(data.size(), 0);
        if (!data.empty()) std::memcpy(p, data.data(), data.size());
        return p;
    }

  private:
    uint8_t* base_ = nullptr;
    size_t page_ = 0, capacity_ = 0, map_size_ = 0;
};

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// ---------------------------------------------------------------------------------------------
// Results: one group per kind of check, one summary line per group.

struct Group {
    std::string name;
    long passed = 0;
    long failed = 0;
    double worst_ratio = 0.0;  // largest |simd - scalar| / tolerance seen (float results only)
    double worst_rel = 0.0;    // largest |simd - scalar| / S seen (float results only)
    bool has_tolerance = false;  // float results compared within a tolerance, not bytes
};

std::deque<Group> g_groups;  // a deque: references to a group stay valid as groups are added
int g_failures_printed = 0;
constexpr int kMaxFailuresPrinted = 12;

Group& group(const std::string& name, bool has_tolerance = false) {
    for (Group& g : g_groups)
        if (g.name == name) return g;
    g_groups.push_back(Group{name, 0, 0, 0.0, 0.0, has_tolerance});
    return g_groups.back();
}

void record(Group& g, bool ok, const std::string& what) {
    if (ok) {
        ++g.passed;
        return;
    }
    ++g.failed;
    if (g_failures_printed++ < kMaxFailuresPrinted) std::printf("  FAIL %s: %s\n", g.name.c_str(), what.c_str());
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// The case being run, named if a kernel crashes (a read or write past the end of a row hits the
// guard page): the signal handler writes it out, so the failing input is known without a debugger.
char g_case[512] = "setup";

void set_case(const Group& g, const std::string& what) {
    std::snprintf(g_case, sizeof g_case, "%s: %s", g.name.c_str(), what.c_str());
}

extern "C" void on_crash(int sig) {
    const char head[] = "\nCRASH (signal) in ";
    ssize_t r = write(2, head, sizeof head - 1);
    r = write(2, g_case, std::strlen(g_case));
    r = write(2, "\n", 1);
    (void)r;
    _exit(128 + sig);
}

// ---------------------------------------------------------------------------------------------
// Activation rows (floats), one kind per 32-block.

enum class Act { random, zeros, equal, outlier, huge, tiny, ties, mixed, overflow };
constexpr Act kDotActs[] = {Act::random, Act::zeros, Act::equal, Act::outlier,
                            Act::huge,   Act::tiny,  Act::ties,  Act::mixed};
constexpr Act kQuantizerActs[] = {Act::random, Act::zeros, Act::equal, Act::outlier, Act::huge,
                                  Act::tiny,   Act::ties,  Act::mixed, Act::overflow};

const char* act_name(Act a) {
    switch (a) {
        case Act::random: return "random";
        case Act::zeros: return "zeros";
        case Act::equal: return "equal";
        case Act::outlier: return "outlier";
        case Act::huge: return "huge";
        case Act::tiny: return "tiny";
        case Act::ties: return "ties";
        case Act::mixed: return "mixed";
        case Act::overflow: return "overflow";
    }
    return "?";
}

// An amax whose scale amax / 127 is exactly the largest finite fp16, 65504 (the product is exact).
constexpr float kMaxActAmax = 65504.0f * 127.0f;

void fill_act_block(Act kind, float* x, Rng& rng) {
    if (kind == Act::mixed) kind = kDotActs[rng.below(7)];  // any kind but mixed itself
    switch (kind) {
        case Act::random: {
            const float scale = std::ldexp(1.0f, rng.between(-12, 12));
            for (int j = 0; j < QK; j++) x[j] = rng.normal() * scale;
            break;
        }
        case Act::zeros:
            for (int j = 0; j < QK; j++) x[j] = rng.below(4) == 0 ? -0.0f : 0.0f;
            break;
        case Act::equal: {
            const float c = rng.sign() * std::ldexp(1.0f + float(rng.uniform()), rng.between(-20, 20));
            for (int j = 0; j < QK; j++) x[j] = c;
            break;
        }
        case Act::outlier: {
            for (int j = 0; j < QK; j++) x[j] = rng.normal() * 0.01f;
            x[rng.below(QK)] = rng.sign() * float(100.0 + 900.0 * rng.uniform());
            break;
        }
        case Act::huge: {
            // The scale lands at or just under the largest finite fp16 (65504).
            const float amax = rng.below(3) == 0 ? kMaxActAmax : kMaxActAmax * float(0.99 + 0.01 * rng.uniform());
            for (int j = 0; j < QK; j++) x[j] = float(2.0 * rng.uniform() - 1.0) * amax;
            x[rng.below(QK)] = rng.sign() * amax;
            break;
        }
        case Act::tiny: {
            // Scales amax / 127 from fp16-subnormal down to below half its smallest value (stored as
            // 0 while id = 1 / d stays finite in float).
            const float amax = std::ldexp(1.0f + float(rng.uniform()), rng.between(-40, -14));
            for (int j = 0; j < QK; j++) x[j] = float(2.0 * rng.uniform() - 1.0) * amax;
            x[rng.below(QK)] = rng.sign() * amax;
            break;
        }
        case Act::ties: {
            // d = amax / 127 = 2^e exactly and id = 2^-e, so x * id = k + 0.5 exactly: roundf's
            // half-away-from-zero (not the even neighbour) must be used.
            const int e = rng.between(-12, 12);
            for (int j = 0; j < QK; j++) {
                const float k = float(rng.between(-127, 126)) + (rng.below(4) == 0 ? 0.0f : 0.5f);
                x[j] = std::ldexp(k, e);
            }
            x[rng.below(QK)] = rng.sign() * std::ldexp(127.0f, e);
            break;
        }
        case Act::overflow: {
            // amax / 127 is past the fp16 range: the stored scale is infinity (quantizer check only).
            const float amax = kMaxActAmax * float(1.01 + 100.0 * rng.uniform());
            for (int j = 0; j < QK; j++) x[j] = float(2.0 * rng.uniform() - 1.0) * amax;
            x[rng.below(QK)] = rng.sign() * amax;
            break;
        }
        case Act::mixed:
            break;
    }
}

std::vector<float> make_act_row(Act kind, int nb, Rng& rng) {
    std::vector<float> x(size_t(nb) * QK);
    for (int b = 0; b < nb; b++) fill_act_block(kind, x.data() + size_t(b) * QK, rng);
    return x;
}

// ---------------------------------------------------------------------------------------------
// Quantized weight rows, one kind per block, written straight as bytes.

enum class Wt {
    random, quantized, zero_bytes, zero_scale, equal, outlier, max_pos, max_neg, extremes, tiny_scale, mixed
};
constexpr Wt kWts[] = {Wt::random,  Wt::quantized, Wt::zero_bytes, Wt::zero_scale, Wt::equal,     Wt::outlier,
                       Wt::max_pos, Wt::max_neg,   Wt::extremes,   Wt::tiny_scale, Wt::mixed};

const char* wt_name(Wt w) {
    switch (w) {
        case Wt::random: return "random";
        case Wt::quantized: return "quantized";
        case Wt::zero_bytes: return "zero_bytes";
        case Wt::zero_scale: return "zero_scale";
        case Wt::equal: return "equal";
        case Wt::outlier: return "outlier";
        case Wt::max_pos: return "max_pos";
        case Wt::max_neg: return "max_neg";
        case Wt::extremes: return "extremes";
        case Wt::tiny_scale: return "tiny_scale";
        case Wt::mixed: return "mixed";
    }
    return "?";
}

uint16_t random_fp16_scale(Rng& rng) { return fp32_to_fp16(rng.normal() * std::ldexp(1.0f, rng.between(-10, 2))); }

uint16_t tiny_fp16(Rng& rng) {
    static const uint16_t picks[] = {0x0001, 0x0002, 0x0155, 0x03ff, 0x0400, 0x8001, 0x83ff, 0x8400};
    if (rng.below(3) == 0) return uint16_t(rng.between(1, 0x3ff) | (rng.below(2) << 15));  // any subnormal
    return picks[rng.below(8)];
}

// The signed integer value of weight j (0..31) of a Q4_0, Q4_1 or Q8_0 block.
int weight_q(GGMLType type, const uint8_t* blk, int j) {
    if (type == TYPE_Q8_0) return reinterpret_cast<const block_q8_0*>(blk)->qs[j];
    const uint8_t* qs = type == TYPE_Q4_0 ? reinterpret_cast<const block_q4_0*>(blk)->qs
                                          : reinterpret_cast<const block_q4_1*>(blk)->qs;
    const int nibble = j < QK / 2 ? (qs[j] & 0x0f) : (qs[j - QK / 2] >> 4);
    return type == TYPE_Q4_0 ? nibble - 8 : nibble;
}

// Fills the 32 weights of a block from per-weight integer values (-128..127 for Q8_0, nibbles 0..15
// for the Q4 types).
void set_weights(GGMLType type, uint8_t* blk, const int* q) {
    if (type == TYPE_Q8_0) {
        for (int j = 0; j < QK; j++) reinterpret_cast<block_q8_0*>(blk)->qs[j] = int8_t(q[j]);
        return;
    }
    uint8_t* qs = type == TYPE_Q4_0 ? reinterpret_cast<block_q4_0*>(blk)->qs : reinterpret_cast<block_q4_1*>(blk)->qs;
    for (int j = 0; j < QK / 2; j++) qs[j] = uint8_t((q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4));
}

void fill_weight_block(GGMLType type, Wt kind, uint8_t* blk, Rng& rng) {
    if (kind == Wt::mixed) kind = kWts[rng.below(10)];  // any kind but mixed itself
    const bool q8 = type == TYPE_Q8_0;
    const int lo = q8 ? -128 : 0, hi = q8 ? 127 : 15;
    const int zero = type == TYPE_Q4_0 ? 8 : 0;  // the stored value of a zero weight
    if (kind == Wt::quantized) {
        // Bytes from the reference quantizer, as a model file holds them.
        float x[QK];
        fill_act_block(Act::random, x, rng);
        type_traits(type)->from_float(x, blk, QK);
        return;
    }
    int q[QK];
    uint16_t d = random_fp16_scale(rng);
    uint16_t m = fp32_to_fp16(rng.normal());
    switch (kind) {
        case Wt::random:
            for (int& v : q) v = rng.between(lo, hi);
            break;
        case Wt::zero_bytes:
            for (int& v : q) v = rng.below(2) ? 0 : zero;  // raw zero bytes, or zero weights
            break;
        case Wt::zero_scale:
            for (int& v : q) v = rng.between(lo, hi);
            d = rng.below(2) ? 0x0000 : 0x8000;
            m = rng.below(2) ? 0x0000 : 0x8000;
            break;
        case Wt::equal: {
            const int c = rng.between(lo, hi);
            for (int& v : q) v = c;
            break;
        }
        case Wt::outlier:
            for (int& v : q) v = zero + (q8 ? rng.between(-2, 2) : 0);
            q[rng.below(QK)] = rng.below(2) ? lo : hi;
            break;
        case Wt::max_pos:
            for (int& v : q) v = hi;
            d = 0x7bff;  // 65504
            m = rng.below(2) ? 0x7bff : 0xfbff;
            break;
        case Wt::max_neg:
            for (int& v : q) v = lo;
            d = rng.below(2) ? 0x7bff : 0xfbff;
            m = 0xfbff;
            break;
        case Wt::extremes:
            for (int& v : q) v = rng.below(2) ? lo : hi;
            d = rng.below(2) ? 0x7bff : 0xfbff;
            m = rng.below(2) ? 0x7bff : tiny_fp16(rng);
            break;
        case Wt::tiny_scale:
            for (int& v : q) v = rng.between(lo, hi);
            d = tiny_fp16(rng);
            m = tiny_fp16(rng);
            break;
        case Wt::quantized:
        case Wt::mixed:
            break;
    }
    set_weights(type, blk, q);
    // d is the first field of every block; Q4_1 has m right after it.
    std::memcpy(blk, &d, sizeof d);
    if (type == TYPE_Q4_1) std::memcpy(blk + 2, &m, sizeof m);
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

double gamma_n(double k) {
    const double u = 0x1.0p-24;
    return k * u / (1.0 - k * u);
}

// The dot tolerance of the header comment, for a tree depth of `terms` + 8.
double dot_tolerance(double S, double terms) { return 2.0 * gamma_n(terms + 8) * S + 2.0 * (terms + 8) * 0x1.0p-149; }

void check_dot(Group& g, float simd, float scalar, double S, double terms, const std::string& what) {
    bool ok;
    double diff = 0.0;
    const double tol = dot_tolerance(S, terms);
    if (!std::isfinite(scalar) || !std::isfinite(simd)) {
        // Not expected from our inputs; the same non-finite value on both sides is all we can ask.
        ok = (std::isnan(scalar) && std::isnan(simd)) || scalar == simd;
    } else {
        diff = std::fabs(double(simd) - double(scalar));
        ok = diff <= tol;
        if (tol > 0 && diff / tol > g.worst_ratio) g.worst_ratio = diff / tol;
        if (S > 0 && diff / S > g.worst_rel) g.worst_rel = diff / S;
    }
    record(g, ok,
           format("%s: simd %.9g, scalar %.9g, |diff| %.3g, tolerance %.3g (S = %.6g)", what.c_str(), double(simd),
                  double(scalar), diff, tol, S));
}

// Compares the bytes of two activation rows and names the first difference.
bool same_act_bytes(GGMLType type, const uint8_t* a, const uint8_t* b, int nb, std::string* where) {
    const size_t bs = type_traits(type)->type_size;
    for (int i = 0; i < nb; i++) {
        const uint8_t* x = a + size_t(i) * bs;
        const uint8_t* y = b + size_t(i) * bs;
        if (std::memcmp(x, y, bs) == 0) continue;
        if (type == TYPE_Q8_K) {
            const auto* p = reinterpret_cast<const block_q8_K*>(x);
            const auto* q = reinterpret_cast<const block_q8_K*>(y);
            int j = 0;
            if (std::memcmp(&p->d, &q->d, 4) != 0) {
                *where = format("block %d: d %.9g (table) vs %.9g (scalar)", i, double(p->d), double(q->d));
            } else if (std::memcmp(p->qs, q->qs, QK_K) != 0) {
                while (p->qs[j] == q->qs[j]) j++;
                *where = format("block %d: qs[%d] %d (table) vs %d (scalar)", i, j, p->qs[j], q->qs[j]);
            } else {
                while (p->bsums[j] == q->bsums[j]) j++;
                *where = format("block %d: bsums[%d] %d (table) vs %d (scalar)", i, j, p->bsums[j], q->bsums[j]);
            }
            return false;
        }
        uint16_t dx, dy;
        std::memcpy(&dx, x, 2);
        std::memcpy(&dy, y, 2);
        const size_t qs_at = type == TYPE_Q8_1 ? 4 : 2;
        if (dx != dy) {
            *where = format("block %d: d 0x%04x (table) vs 0x%04x (scalar)", i, dx, dy);
        } else if (type == TYPE_Q8_1 && std::memcmp(x + 2, y + 2, 2) != 0) {
            uint16_t sx, sy;
            std::memcpy(&sx, x + 2, 2);
            std::memcpy(&sy, y + 2, 2);
            *where = format("block %d: s 0x%04x (table) vs 0x%04x (scalar)", i, sx, sy);
        } else {
            int j = 0;
            while (x[qs_at + j] == y[qs_at + j]) j++;
            *where = format("block %d: qs[%d] %d (table) vs %d (scalar)", i, j, int(int8_t(x[qs_at + j])),
                            int(int8_t(y[qs_at + j])));
        }
        return false;
    }
    return true;
}

struct Buffers {
    GuardedBuffer weights{1 << 20};
    GuardedBuffer act_in{1 << 20};
    GuardedBuffer act_simd{1 << 20};
    GuardedBuffer act_scalar{1 << 20};
};

// Quantizes x with both tables' from_float[type] into guarded rows. The two outputs start from
// different junk, so a byte the quantizer forgets to write shows up as a difference.
bool quantize_both(const Kernels& k, const Kernels& s, GGMLType type, const std::vector<float>& x, Buffers& buf,
                   const uint8_t** out_simd, const uint8_t** out_scalar, std::string* where) {
    const int64_t n = int64_t(x.size());
    const size_t bytes = row_size(type, n);
    const auto* in = static_cast<const float*>(buf.act_in.put(as_bytes(x)));
    uint8_t* a = buf.act_simd.place(bytes, 0x5a);
    uint8_t* b = buf.act_scalar.place(bytes, 0xa5);
    k.from_float[type](in, a, n);
    s.from_float[type](in, b, n);
    *out_simd = a;
    *out_scalar = b;
    if (type == TYPE_F32 || type == TYPE_F16) {
        for (size_t i = 0; i < bytes; i++)
            if (a[i] != b[i]) {
                *where = format("byte %zu: %02x, the reference %02x", i, a[i], b[i]);
                return false;
            }
        return true;
    }
    return same_act_bytes(type, a, b, int(n / type_traits(type)->block_size), where);
}

// ---------------------------------------------------------------------------------------------
// The checks.

// Weight formats whose SIMD dots must equal the scalar ones bit for bit.
constexpr GGMLType kExactDotTypes[] = {TYPE_Q5_0, TYPE_Q5_1, TYPE_IQ4_NL, TYPE_Q2_K, TYPE_Q3_K,
                                       TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K, TYPE_IQ4_XS};

void check_table_entries(const Kernels& k, const Kernels& s) {
    Group& g = group("table entries");
    const GGMLType dots[] = {TYPE_Q4_0, TYPE_Q4_1, TYPE_Q8_0, TYPE_NF4, TYPE_NF4_DQ, TYPE_F32, TYPE_F16, TYPE_BF16};
    const bool is_scalar = &k == &s;
    for (GGMLType t : dots) {
        record(g, k.vec_dot[t] != nullptr, format("vec_dot[%s] missing", type_traits(t)->name));
        // A SIMD table that silently fell back to the scalar dot would make this test vacuous.
        if (!is_scalar)
            record(g, k.vec_dot[t] != s.vec_dot[t], format("vec_dot[%s] is the scalar one", type_traits(t)->name));
    }
    for (GGMLType t : {TYPE_Q8_0, TYPE_Q8_1, TYPE_Q8_K, TYPE_F32, TYPE_F16})
        record(g, k.from_float[t] != nullptr, format("from_float[%s] missing", type_traits(t)->name));
    // The K-quant-era formats: present in every table, and every SIMD table has its own dots. The Q8_K
    // quantizer is the AVX2 and NEON tables' own; the AVX-512 table takes AVX2's (or, through SIMDe,
    // the scalar one).
    for (GGMLType t : kExactDotTypes) {
        record(g, k.vec_dot[t] != nullptr, format("vec_dot[%s] missing", type_traits(t)->name));
        if (!is_scalar)
            record(g, k.vec_dot[t] != s.vec_dot[t], format("vec_dot[%s] is the scalar one", type_traits(t)->name));
    }
    if (std::strcmp(k.isa, "avx2") == 0 || std::strcmp(k.isa, "neon") == 0)
        record(g, k.from_float[TYPE_Q8_K] != s.from_float[TYPE_Q8_K], "from_float[q8_k] is the scalar one");
    if (std::strcmp(k.isa, "avx2") == 0)
        record(g, k.from_float[TYPE_F16] != s.from_float[TYPE_F16], "from_float[f16] is the scalar one");
    for (GGMLType t : {TYPE_F32, TYPE_F16, TYPE_Q8_0}) {
        record(g, k.axpy[t] != nullptr, format("axpy[%s] missing", type_traits(t)->name));
        record(g, k.attend[t] != nullptr, format("attend[%s] missing", type_traits(t)->name));
    }
}

void check_quantizers(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths[] = {1, 2, 3, 4, 7, 8, 9, 16, 17, 33};
    for (GGMLType type : {TYPE_Q8_0, TYPE_Q8_1}) {
        Group& g = group(format("from_float %s", type_traits(type)->name));
        for (Act kind : kQuantizerActs)
            for (int nb : lengths)
                for (int t = 0; t < trials; t++) {
                    const std::vector<float> x = make_act_row(kind, nb, rng);
                    const std::string what = format("%s x %d blocks", act_name(kind), nb);
                    set_case(g, what);
                    const uint8_t *a, *b;
                    std::string where;
                    const bool ok = quantize_both(k, s, type, x, buf, &a, &b, &where);
                    record(g, ok, what + ": " + where);
                }
    }
    {
        Group& g = group("from_float q8_k");
        const int lengths256[] = {1, 2, 3, 5};
        for (Act kind : kQuantizerActs)
            for (int nb : lengths256)
                for (int t = 0; t < trials; t++) {
                    const std::vector<float> x = make_act_row(kind, nb * QK_K / QK, rng);
                    const std::string what = format("%s x %d blocks", act_name(kind), nb);
                    set_case(g, what);
                    const uint8_t *a, *b;
                    std::string where;
                    const bool ok = quantize_both(k, s, TYPE_Q8_K, x, buf, &a, &b, &where);
                    record(g, ok, what + ": " + where);
                }
        // Exact ties for the whole 256-block: its largest magnitude 127 * 2^e gives iscale = -2^-e,
        // and every (k + 0.5) * 2^e lands on a tie, which goes to the even neighbour.
        for (int nb : lengths256)
            for (int t = 0; t < trials; t++) {
                std::vector<float> x(size_t(nb) * QK_K);
                for (int b = 0; b < nb; b++) {
                    const int e = rng.between(-20, 20);
                    float* xb = x.data() + size_t(b) * QK_K;
                    for (int j = 0; j < QK_K; j++)
                        xb[j] = std::ldexp(float(rng.between(-127, 126)) + (rng.below(4) ? 0.5f : 0.0f), e);
                    xb[rng.below(QK_K)] = rng.sign() * std::ldexp(127.0f, e);
                }
                const std::string what = format("256-block ties x %d blocks", nb);
                set_case(g, what);
                const uint8_t *a, *b;
                std::string where;
                const bool ok = quantize_both(k, s, TYPE_Q8_K, x, buf, &a, &b, &where);
                record(g, ok, what + ": " + where);
            }
    }
    {
        // F16 (the KV cache's rows): random values over the whole range and the edges of the
        // conversion: signed zeros, infinities, NaNs with payloads, the largest half 65504 and the
        // overflow threshold 65520 (and the floats beside them), half subnormals and the floats that
        // round to them or to 0, exact ties between neighbouring halves.
        Group& g = group("from_float f16");
        auto bits = [](uint32_t u) {
            float f;
            std::memcpy(&f, &u, 4);
            return f;
        };
        for (int n : {1, 7, 8, 9, 64, 100})
            for (int t = 0; t < 16 * trials; t++) {
                std::vector<float> x(static_cast<size_t>(n));
                for (float& v : x) {
                    switch (rng.below(6)) {
                        case 0: v = rng.normal() * std::ldexp(1.0f, rng.between(-30, 17)); break;
                        case 1: v = bits(uint32_t(rng.next())); break;  // any encoding, NaNs included
                        case 2: {  // a tie: a half with one more mantissa bit set halfway
                            const uint32_t h = uint32_t(rng.between(0x0400, 0x7bff));
                            v = rng.sign() * bits(((h >> 10) + 112) << 23 | (h & 0x3ff) << 13 | 0x1000);
                            break;
                        }
                        case 3: v = rng.sign() * std::ldexp(float(rng.between(1, 0x7fffff)), -149 + rng.between(0, 36)); break;
                        case 4: {
                            const float edges[] = {0.0f, INFINITY, 65504.0f, 65519.0f, 65520.0f, 65536.0f,
                                                   std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -26),
                                                   std::ldexp(1.0f, -14), bits(0x7fc00000u), bits(0x7f800001u)};
                            v = rng.sign() * edges[rng.below(sizeof(edges) / sizeof(edges[0]))];
                            v = std::nextafter(v, rng.below(3) == 0 ? INFINITY : rng.below(2) ? -INFINITY : v);
                            break;
                        }
                        default: v = rng.normal(); break;
                    }
                }
                set_case(g, format("n = %d", n));
                const uint8_t *a, *b;
                std::string where;
                const bool ok = quantize_both(k, s, TYPE_F16, x, buf, &a, &b, &where);
                record(g, ok, format("n = %d: %s", n, where.c_str()));
            }
    }
    Group& g = group("from_float f32");
    for (int n : {1, 7, 32, 100}) {
        std::vector<float> x(static_cast<size_t>(n));
        for (float& v : x) v = rng.normal();
        set_case(g, format("n = %d", n));
        const uint8_t *a, *b;
        std::string where;
        const bool ok = quantize_both(k, s, TYPE_F32, x, buf, &a, &b, &where);
        record(g, ok, format("n = %d: %s", n, where.c_str()));
    }
}

// S of the header comment for a quantized dot: sum_b |fl(d_w d_x)| sum_j |q_j y_j| (+ |m_b s_b|).
double quant_dot_magnitude(GGMLType type, GGMLType act, const uint8_t* w, const uint8_t* x, int nb) {
    const size_t wbs = type_traits(type)->type_size, xbs = type_traits(act)->type_size;
    const size_t qs_at = act == TYPE_Q8_1 ? 4 : 2;
    double S = 0.0;
    for (int b = 0; b < nb; b++) {
        const uint8_t* wb = w + size_t(b) * wbs;
        const uint8_t* xb = x + size_t(b) * xbs;
        uint16_t dw, dx;
        std::memcpy(&dw, wb, 2);
        std::memcpy(&dx, xb, 2);
        long isum = 0;
        for (int j = 0; j < QK; j++) isum += std::labs(long(weight_q(type, wb, j)) * int8_t(xb[qs_at + j]));
        S += std::fabs(double(fp16_to_fp32(dw) * fp16_to_fp32(dx))) * double(isum);
        if (type == TYPE_Q4_1) {
            uint16_t m, s;
            std::memcpy(&m, wb + 2, 2);
            std::memcpy(&s, xb + 2, 2);
            S += std::fabs(double(fp16_to_fp32(m)) * double(fp16_to_fp32(s)));
        }
    }
    return S;
}

void check_quant_dots(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64};
    const int long_lengths[] = {100, 257};
    for (GGMLType type : {TYPE_Q4_0, TYPE_Q4_1, TYPE_Q8_0}) {
        const TypeTraits* tt = type_traits(type);
        const GGMLType act = tt->vec_dot_type;
        Group& g = group(format("vec_dot %s x %s", tt->name, type_traits(act)->name), true);
        auto one = [&](Wt wk, Act ak, int nb) {
            std::vector<uint8_t> w(size_t(nb) * tt->type_size);
            for (int b = 0; b < nb; b++) fill_weight_block(type, wk, w.data() + size_t(b) * tt->type_size, rng);
            const std::vector<float> x = make_act_row(ak, nb, rng);
            const std::string what = format("weights %s, activations %s, %d blocks", wt_name(wk), act_name(ak), nb);
            set_case(g, what);
            const uint8_t *xa, *xs;
            std::string where;
            if (!quantize_both(k, s, act, x, buf, &xa, &xs, &where)) {
                record(g, false, what + ": activation bytes differ from the scalar quantizer, " + where);
                return;
            }
            const void* wp = buf.weights.put(w);
            const int n = nb * QK;
            const float got = k.vec_dot[type](n, wp, xa);
            const float want = s.vec_dot[type](n, wp, xs);
            check_dot(g, got, want, quant_dot_magnitude(type, act, w.data(), xs, nb), nb, what);
        };
        for (int t = 0; t < trials; t++) {
            for (Wt wk : kWts)
                for (Act ak : kDotActs)
                    for (int nb : lengths) one(wk, ak, nb);
            for (int nb : long_lengths) one(Wt::mixed, Act::mixed, nb);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q5_0, Q5_1, IQ4_NL and the K-quants: weight blocks written as bytes from a layout of each format
// (where its fp16 factors, sub-block scales and levels are), and dots that must be bit-identical.

struct ExactLayout {
    GGMLType type;
    int fp16[2];        // byte offsets of the fp16 fields: the scale, then the minimum's scale (or -1)
    int scales[2];      // [start, end) of the sub-block scale bytes, or {0, 0}
    int levels[2][2];   // up to two [start, end) byte ranges of levels ({0, 0}: none)
    uint8_t scale_hi, scale_lo;  // sub-block scale bytes giving the largest / the most negative scales
};

constexpr ExactLayout kExactLayouts[] = {
    {TYPE_Q5_0, {0, -1}, {0, 0}, {{2, 6}, {6, 22}}, 0, 0},
    {TYPE_Q5_1, {0, 2}, {0, 0}, {{4, 8}, {8, 24}}, 0, 0},
    {TYPE_IQ4_NL, {0, -1}, {0, 0}, {{2, 18}, {0, 0}}, 0, 0},
    {TYPE_Q2_K, {80, 82}, {0, 16}, {{16, 80}, {0, 0}}, 0xff, 0x00},
    {TYPE_Q3_K, {108, -1}, {96, 108}, {{0, 32}, {32, 96}}, 0xff, 0x00},
    {TYPE_Q4_K, {0, 2}, {4, 16}, {{16, 144}, {0, 0}}, 0xff, 0x00},
    {TYPE_Q5_K, {0, 2}, {4, 16}, {{16, 48}, {48, 176}}, 0xff, 0x00},
    {TYPE_Q6_K, {208, -1}, {192, 208}, {{0, 128}, {128, 192}}, 0x7f, 0x80},
    {TYPE_IQ4_XS, {0, -1}, {2, 8}, {{8, 136}, {0, 0}}, 0xff, 0x00},
};

enum class Xw { random, zero_scale, max_scale, dmin_zero, sub_max, sub_min, levels_lo, levels_hi, tiny_scale, mixed };
constexpr Xw kXws[] = {Xw::random,  Xw::zero_scale, Xw::max_scale, Xw::dmin_zero,  Xw::sub_max,
                       Xw::sub_min, Xw::levels_lo,  Xw::levels_hi, Xw::tiny_scale, Xw::mixed};

const char* xw_name(Xw w) {
    switch (w) {
        case Xw::random: return "random";
        case Xw::zero_scale: return "zero_scale";
        case Xw::max_scale: return "max_scale";
        case Xw::dmin_zero: return "dmin_zero";
        case Xw::sub_max: return "sub_max";
        case Xw::sub_min: return "sub_min";
        case Xw::levels_lo: return "levels_lo";
        case Xw::levels_hi: return "levels_hi";
        case Xw::tiny_scale: return "tiny_scale";
        case Xw::mixed: return "mixed (one outlier block among them)";
    }
    return "?";
}

// One block of the layout's format: random bytes, then the kind's fields.
void fill_exact_block(const ExactLayout& L, Xw kind, uint8_t* blk, Rng& rng) {
    if (kind == Xw::mixed) kind = kXws[rng.below(9)];  // any kind but mixed itself
    const size_t size = type_traits(L.type)->type_size;
    for (size_t i = 0; i < size; i++) blk[i] = uint8_t(rng.next());
    auto set16 = [&](int at, uint16_t v) {
        if (at >= 0) std::memcpy(blk + at, &v, 2);
    };
    auto fill = [&](const int* range, uint8_t v) { std::memset(blk + range[0], v, size_t(range[1] - range[0])); };
    for (int f : L.fp16) set16(f, random_fp16_scale(rng));
    switch (kind) {
        case Xw::zero_scale:
            for (int f : L.fp16) set16(f, rng.below(2) ? 0x0000 : 0x8000);
            break;
        case Xw::max_scale:  // the largest fp16 factors, largest sub-block scales, levels at extremes
            for (int f : L.fp16) set16(f, rng.below(2) ? 0x7bff : 0xfbff);
            if (L.scales[1]) fill(L.scales, L.scale_hi);
            for (const auto& r : L.levels)
                if (r[1]) fill(r, rng.below(2) ? 0x00 : 0xff);
            break;
        case Xw::dmin_zero:
            set16(L.fp16[1], 0x0000);
            break;
        case Xw::sub_max:
            if (L.scales[1]) fill(L.scales, L.scale_hi);
            break;
        case Xw::sub_min:
            if (L.scales[1]) fill(L.scales, L.scale_lo);
            break;
        case Xw::levels_lo:
        case Xw::levels_hi:
            for (const auto& r : L.levels)
                if (r[1]) fill(r, kind == Xw::levels_lo ? 0x00 : 0xff);
            break;
        case Xw::tiny_scale:
            for (int f : L.fp16) set16(f, tiny_fp16(rng));
            break;
        case Xw::random:
        case Xw::mixed:
            break;
    }
}

bool same_float_bits(float a, float b) {
    if (std::isnan(a) && std::isnan(b)) return true;
    return std::memcmp(&a, &b, 4) == 0;
}

void check_exact_dots(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths32[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64};
    const int lengths256[] = {1, 2, 3, 4, 5, 8, 9};
    for (const ExactLayout& L : kExactLayouts) {
        const TypeTraits* tt = type_traits(L.type);
        const GGMLType act = tt->vec_dot_type;
        Group& g = group(format("exact %s x %s", tt->name, type_traits(act)->name));
        auto one = [&](Xw wk, Act ak, int nb) {
            std::vector<uint8_t> w(size_t(nb) * tt->type_size);
            for (int b = 0; b < nb; b++) fill_exact_block(L, wk, w.data() + size_t(b) * tt->type_size, rng);
            if (wk == Xw::mixed) {  // and one outlier block: the largest scales and extreme levels
                std::vector<uint8_t> big(tt->type_size);
                fill_exact_block(L, Xw::max_scale, big.data(), rng);
                std::memcpy(w.data() + size_t(rng.below(nb)) * tt->type_size, big.data(), big.size());
            }
            const int n = nb * tt->block_size;
            const std::vector<float> x = make_act_row(ak, n / QK, rng);
            const std::string what = format("weights %s, activations %s, %d blocks", xw_name(wk), act_name(ak), nb);
            set_case(g, what);
            const uint8_t *xa, *xs;
            std::string where;
            if (!quantize_both(k, s, act, x, buf, &xa, &xs, &where)) {
                record(g, false, what + ": activation bytes differ from the scalar quantizer, " + where);
                return;
            }
            const void* wp = buf.weights.put(w);
            const float got = k.vec_dot[L.type](n, wp, xa);
            const float want = s.vec_dot[L.type](n, wp, xs);
            record(g, same_float_bits(got, want),
                   format("%s: table %.9g (0x%08x), scalar %.9g (0x%08x)", what.c_str(), double(got),
                          f32_bits(got), double(want), f32_bits(want)));
        };
        const bool k256 = tt->block_size == QK_K;
        for (int t = 0; t < trials; t++)
            for (Xw wk : kXws)
                for (Act ak : kDotActs) {
                    if (k256) {
                        for (int nb : lengths256) one(wk, ak, nb);
                    } else {
                        for (int nb : lengths32) one(wk, ak, nb);
                    }
                }
    }
}

// ---------------------------------------------------------------------------------------------
// Packed weights (pack, then packed_dot and packed_dot_pair: what a Model's matrices run on): every
// output bit-identical to the scalar vec_dot of its row and token, for passes of 1 .. kPackTokens
// tokens (one group, and two groups a pass where the table has packed_dot_two) and for the two-group
// one-token kernel (packed_dot_pair), on the weight kinds above (fill_weight_block's for Q4_0, Q4_1
// and Q8_0, the exact layouts' for the others; their "mixed" kind draws a kind per block) and
// activations of mixed kinds, whose block sums and float scales are laid out as matmul.cpp's
// prepare_activations lays them out.

// The exact layout of a type, or nullptr (Q4_0, Q4_1, Q8_0: fill_weight_block's types).
const ExactLayout* exact_layout(GGMLType type) {
    for (const ExactLayout& e : kExactLayouts)
        if (e.type == type) return &e;
    return nullptr;
}

// The weight kinds of a packed type: the exact layouts' (Xw) or fill_weight_block's (Wt), by index.
int packed_weight_kinds(GGMLType type) { return exact_layout(type) ? int(std::size(kXws)) : int(std::size(kWts)); }

const char* packed_kind_name(GGMLType type, int kind) {
    return exact_layout(type) ? xw_name(kXws[kind]) : wt_name(kWts[kind]);
}

// The nb blocks of a row, of weight kind `kind`.
void fill_packed_weights(GGMLType type, int kind, uint8_t* row, int nb, Rng& rng) {
    const size_t size = type_traits(type)->type_size;
    const ExactLayout* L = exact_layout(type);
    for (int b = 0; b < nb; b++) {
        if (L) fill_exact_block(*L, kXws[kind], row + size_t(b) * size, rng);
        else fill_weight_block(type, kWts[kind], row + size_t(b) * size, rng);
    }
}

// kPackTokens activation rows of n values, of mixed kinds, quantized to `act` by the scalar table,
// with their Q8_0 block sums and Q8_0 / Q8_1 scales at packed_extra_index (one pass of kPackTokens).
struct PackedActivations {
    size_t row_bytes = 0;
    int n_blocks = 0;
    std::vector<uint8_t> rows;
    std::vector<int32_t> sums;
    std::vector<float> scales;

    PackedActivations(const Kernels& s, GGMLType act, int n, Rng& rng) {
        const TypeTraits* at = type_traits(act);
        row_bytes = row_size(act, n);
        n_blocks = n / at->block_size;
        rows.resize(kPackTokens * row_bytes);
        sums.resize(size_t(kPackTokens) * n_blocks);
        scales.resize(2 * sums.size());
        for (int c = 0; c < kPackTokens; c++) {
            const std::vector<float> x = make_act_row(kDotActs[rng.below(int(std::size(kDotActs)))], n / QK, rng);
            s.from_float[act](x.data(), rows.data() + c * row_bytes, n);
            for (int b = 0; b < n_blocks; b++) {
                const uint8_t* blk = rows.data() + c * row_bytes + size_t(b) * at->type_size;
                const size_t i = packed_extra_index(c, b, n_blocks, kPackTokens);
                if (act == TYPE_Q8_0) {
                    const auto* q = reinterpret_cast<const block_q8_0*>(blk);
                    sums[i] = 0;
                    for (int j = 0; j < QK; j++) sums[i] += q->qs[j];
                    scales[2 * i] = fp16_to_fp32(q->d);
                    scales[2 * i + 1] = 0.0f;
                } else if (act == TYPE_Q8_1) {
                    const auto* q = reinterpret_cast<const block_q8_1*>(blk);
                    scales[2 * i] = fp16_to_fp32(q->d);
                    scales[2 * i + 1] = fp16_to_fp32(q->s);
                }
            }
        }
    }
    const uint8_t* row(int c) const { return rows.data() + c * row_bytes; }
    // What packed kernels of `type` in table k are given.
    Activations view(const Kernels& k, GGMLType type) const {
        Activations a;
        a.data = rows.data();
        a.row_bytes = row_bytes;
        a.n_tokens = kPackTokens;
        a.n_blocks = n_blocks;
        a.block_sums = k.packed_xsums[type] ? sums.data() : nullptr;
        a.block_scales = k.packed_xscales[type] ? scales.data() : nullptr;
        return a;
    }
};

void check_packed(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int block_counts[] = {1, 2, 3, 9};  // of 32 or 256 weights
    for (int t = 0; t < int(TYPE_COUNT); t++) {
        if (!k.pack[t]) continue;
        const auto type = GGMLType(t);
        const TypeTraits* tt = type_traits(type);
        Group& g = group(format("packed %s x %s", tt->name, type_traits(tt->vec_dot_type)->name));
        record(g, k.packed_dot[t] != nullptr, format("packed_dot[%s] missing", tt->name));
        if (!k.packed_dot[t]) continue;
        // The AVX-512 tables (native and SIMDe) take two groups a pass for every 32-block format.
        if (std::strncmp(k.isa, "avx512", 6) == 0 && tt->block_size == QK)
            record(g, k.packed_dot_two[t] != nullptr, format("packed_dot_two[%s] missing", tt->name));
        // Two groups of kPackRows rows of nb blocks, of weight kind `kind`, against one pass.
        auto one = [&](int kind, int nb) {
            const int n = nb * tt->block_size;
            const size_t row_bytes = size_t(nb) * tt->type_size;
            std::vector<uint8_t> w(2 * kPackRows * row_bytes), packed(w.size());
            for (int r = 0; r < 2 * kPackRows; r++)
                fill_packed_weights(type, kind, w.data() + r * row_bytes, nb, rng);
            for (int gi = 0; gi < 2; gi++)
                k.pack[t](n, w.data() + gi * kPackRows * row_bytes, row_bytes,
                          packed.data() + gi * kPackRows * row_bytes);
            const PackedActivations acts(s, tt->vec_dot_type, n, rng);
            const Activations xa = acts.view(k, type);
            const std::string what = format("weights %s, %d blocks", packed_kind_name(type, kind), nb);
            set_case(g, what);
            const auto* pw = static_cast<const uint8_t*>(buf.weights.put(packed));  // ends at the guard page
            auto check = [&](float got, int row, int c, const std::string& where) {
                const float want = s.vec_dot[t](n, w.data() + row * row_bytes, acts.row(c));
                record(g, same_float_bits(got, want),
                       format("%s: %s: %.9g (0x%08x), scalar %.9g (0x%08x)", what.c_str(), where.c_str(), double(got),
                              f32_bits(got), double(want), f32_bits(want)));
            };
            float y[kPackTokens * kPackRows];
            for (int nt = 1; nt <= kPackTokens; nt++) {
                const int t0 = kPackTokens - nt;  // the last nt tokens
                k.packed_dot[t](n, pw + kPackRows * row_bytes, xa, t0, nt, y, kPackRows);
                for (int c = 0; c < nt; c++)
                    for (int r = 0; r < kPackRows; r++)
                        check(y[c * kPackRows + r], kPackRows + r, t0 + c,
                              format("packed_dot of %d tokens, token %d row %d", nt, c, r));
            }
            if (k.packed_dot_two[t]) {  // both groups in one pass: rows 0 .. 15 of each token
                float y2[kPackTokens * 2 * kPackRows];
                for (int nt = 1; nt <= kPackTokens; nt++) {
                    const int t0 = kPackTokens - nt;
                    k.packed_dot_two[t](n, pw, xa, t0, nt, y2, 2 * kPackRows);
                    for (int c = 0; c < nt; c++)
                        for (int r = 0; r < 2 * kPackRows; r++)
                            check(y2[c * 2 * kPackRows + r], r, t0 + c,
                                  format("packed_dot_two of %d tokens, token %d row %d", nt, c, r));
                }
            }
            if (!k.packed_dot_pair[t]) return;
            const int c = rng.below(kPackTokens);
            float ya[kPackRows], yb[kPackRows];
            k.packed_dot_pair[t](n, pw, pw + kPackRows * row_bytes, xa, c, ya, yb);
            for (int r = 0; r < kPackRows; r++) {
                check(ya[r], r, c, format("packed_dot_pair, group 0 row %d", r));
                check(yb[r], kPackRows + r, c, format("packed_dot_pair, group 1 row %d", r));
            }
        };
        for (int trial = 0; trial < trials; trial++)
            for (int kind = 0; kind < packed_weight_kinds(type); kind++)
                for (int nb : block_counts) one(kind, nb);
    }
}

// ---------------------------------------------------------------------------------------------
// NF4 and NF4_DQ weights (64-weight blocks; 256-weight super-blocks of four with 8-bit scale codes)
// against Q8_0 activations, two activation blocks per 64-block.

enum class Nw { random, quantized, zero_scale, zero_level, outlier, max_scale, extremes, tiny_scale, mixed };
constexpr Nw kNws[] = {Nw::random,    Nw::quantized, Nw::zero_scale, Nw::zero_level, Nw::outlier,
                       Nw::max_scale, Nw::extremes,  Nw::tiny_scale, Nw::mixed};

const char* nw_name(Nw w) {
    switch (w) {
        case Nw::random: return "random";
        case Nw::quantized: return "quantized";
        case Nw::zero_scale: return "zero_scale";
        case Nw::zero_level: return "zero_level";
        case Nw::outlier: return "outlier";
        case Nw::max_scale: return "max_scale";
        case Nw::extremes: return "extremes";
        case Nw::tiny_scale: return "tiny_scale";
        case Nw::mixed: return "mixed";
    }
    return "?";
}

// The 32 nibble bytes of one 64-block. Indices 0 and 15 are the levels -127 and 127.
void fill_nf4_nibbles(Nw kind, uint8_t* qs, Rng& rng) {
    int q[QK_NF4];
    switch (kind) {
        case Nw::zero_level:
            for (int& v : q) v = kNF4ZeroIndex;
            break;
        case Nw::outlier:
            for (int& v : q) v = kNF4ZeroIndex;
            q[rng.below(QK_NF4)] = rng.below(2) ? 0 : 15;
            break;
        case Nw::max_scale: {
            const int c = rng.below(2) ? 0 : 15;
            for (int& v : q) v = c;
            break;
        }
        case Nw::extremes:
            for (int& v : q) v = rng.below(2) ? 0 : 15;
            break;
        default:
            for (int& v : q) v = rng.below(16);
            break;
    }
    for (int j = 0; j < QK_NF4 / 2; j++) qs[j] = uint8_t(q[j] | (q[j + QK_NF4 / 2] << 4));
}

// The fp16 d of an NF4 block, or D of an NF4_DQ super-block. A file may hold a negative one.
uint16_t nf4_scale_bits(Nw kind, Rng& rng) {
    switch (kind) {
        case Nw::zero_scale: return rng.below(2) ? 0x0000 : 0x8000;
        case Nw::max_scale: return 0x7bff;  // 65504
        case Nw::extremes: return rng.below(2) ? 0x7bff : 0xfbff;
        case Nw::tiny_scale: return tiny_fp16(rng);
        default: return random_fp16_scale(rng);
    }
}

// One NF4 block or NF4_DQ super-block of the given kind at blk.
void fill_nf4_weights(GGMLType type, Nw kind, uint8_t* blk, Rng& rng) {
    if (kind == Nw::mixed) kind = kNws[rng.below(8)];  // any kind but mixed itself
    const int block_size = type_traits(type)->block_size;
    if (kind == Nw::quantized) {
        // Bytes from the reference quantizer, as a model file holds them.
        std::vector<float> x(static_cast<size_t>(block_size));
        for (int b = 0; b < block_size / QK; b++) fill_act_block(Act::random, x.data() + b * QK, rng);
        type_traits(type)->from_float(x.data(), blk, block_size);
        return;
    }
    const uint16_t d = nf4_scale_bits(kind, rng);
    if (type == TYPE_NF4) {
        auto* b = reinterpret_cast<block_nf4*>(blk);
        b->d = d;
        fill_nf4_nibbles(kind, b->qs, rng);
        return;
    }
    auto* b = reinterpret_cast<block_nf4_dq*>(blk);
    b->d = d;
    for (int i = 0; i < QK_NF4_DQ / QK_NF4; i++) {
        const int code = kind == Nw::zero_scale ? rng.below(2) * rng.between(0, 255)  // a zero D or code
                         : kind == Nw::max_scale || kind == Nw::extremes ? 255
                         : kind == Nw::tiny_scale ? rng.between(0, 3)
                                                  : rng.between(0, 255);
        b->scales[i] = uint8_t(code);
        fill_nf4_nibbles(kind, b->qs[i], rng);
    }
}

// Weight k of an NF4 or NF4_DQ row: its level, and in *scale its block's scale as the kernels use it.
int nf4_level(GGMLType type, const uint8_t* row, int k, float* scale) {
    const uint8_t* qs;
    if (type == TYPE_NF4) {
        const auto* b = reinterpret_cast<const block_nf4*>(row) + k / QK_NF4;
        *scale = fp16_to_fp32(b->d);
        qs = b->qs;
    } else {
        const auto* b = reinterpret_cast<const block_nf4_dq*>(row) + k / QK_NF4_DQ;
        const int sub = (k % QK_NF4_DQ) / QK_NF4;
        *scale = nf4_dq_block_scale(fp16_to_fp32(b->d), b->scales[sub]);
        qs = b->qs[sub];
    }
    const int j = k % QK_NF4;
    return kNF4Levels[j < QK_NF4 / 2 ? (qs[j] & 0x0f) : (qs[j - QK_NF4 / 2] >> 4)];
}

void check_nf4_dots(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33};  // in blocks (64 or 256 weights)
    for (GGMLType type : {TYPE_NF4, TYPE_NF4_DQ}) {
        const TypeTraits* tt = type_traits(type);
        Group& g = group(format("vec_dot %s x q8_0", tt->name), true);
        auto one = [&](Nw wk, Act ak, int nb) {
            std::vector<uint8_t> w(size_t(nb) * tt->type_size);
            for (int b = 0; b < nb; b++) fill_nf4_weights(type, wk, w.data() + size_t(b) * tt->type_size, rng);
            const int n = nb * tt->block_size;
            const std::vector<float> x = make_act_row(ak, n / QK, rng);
            const std::string what = format("weights %s, activations %s, %d blocks", nw_name(wk), act_name(ak), nb);
            set_case(g, what);
            const uint8_t *xa, *xs;
            std::string where;
            if (!quantize_both(k, s, TYPE_Q8_0, x, buf, &xa, &xs, &where)) {
                record(g, false, what + ": activation bytes differ from the scalar quantizer, " + where);
                return;
            }
            const void* wp = buf.weights.put(w);
            const float got = k.vec_dot[type](n, wp, xa);
            const float want = s.vec_dot[type](n, wp, xs);
            // S: one term per 32-half, |fl(d_w d_x)| * sum |level * y|.
            const auto* xb = reinterpret_cast<const block_q8_0*>(xs);
            double S = 0.0;
            for (int h = 0; h < n / QK; h++) {
                float scale = 0.0f;
                long isum = 0;
                for (int j = 0; j < QK; j++)
                    isum += std::labs(long(nf4_level(type, w.data(), h * QK + j, &scale)) * xb[h].qs[j]);
                S += std::fabs(double(scale * fp16_to_fp32(xb[h].d))) * double(isum);
            }
            check_dot(g, got, want, S, n / QK, what);
        };
        for (int t = 0; t < trials; t++)
            for (Nw wk : kNws)
                for (Act ak : kDotActs)
                    for (int nb : lengths) one(wk, ak, nb);
    }
}

// ---------------------------------------------------------------------------------------------
// Float dots: F32, F16 and BF16 weights with f32 activations.

enum class Fw { random, zeros, equal, outlier, max, tiny, bits, cancel };
constexpr Fw kFws[] = {Fw::random, Fw::zeros, Fw::equal, Fw::outlier, Fw::max, Fw::tiny, Fw::bits, Fw::cancel};

const char* fw_name(Fw f) {
    switch (f) {
        case Fw::random: return "random";
        case Fw::zeros: return "zeros";
        case Fw::equal: return "equal";
        case Fw::outlier: return "outlier";
        case Fw::max: return "max";
        case Fw::tiny: return "tiny";
        case Fw::bits: return "random_bits";
        case Fw::cancel: return "cancel";
    }
    return "?";
}

enum class Fx { random, zeros, equal, outlier, tiny, large };
constexpr Fx kFxs[] = {Fx::random, Fx::zeros, Fx::equal, Fx::outlier, Fx::tiny, Fx::large};

const char* fx_name(Fx f) {
    switch (f) {
        case Fx::random: return "random";
        case Fx::zeros: return "zeros";
        case Fx::equal: return "equal";
        case Fx::outlier: return "outlier";
        case Fx::tiny: return "tiny";
        case Fx::large: return "large";
    }
    return "?";
}

float weight_value(GGMLType type, const uint8_t* w, int i) {
    if (type == TYPE_F32) {
        float f;
        std::memcpy(&f, w + 4 * i, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    return type == TYPE_F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
}

// Weight rows as float values first (then stored in the type), kept where no product can overflow
// (|w| <= 1e15 against |x| <= 1e12, 1000 terms at most).
std::vector<uint8_t> make_float_weights(GGMLType type, Fw kind, int n, Rng& rng) {
    const size_t es = type == TYPE_F32 ? 4 : 2;
    std::vector<uint8_t> w(size_t(n) * es);
    auto store = [&](int i, float v) {
        if (type == TYPE_F32) {
            std::memcpy(&w[size_t(i) * 4], &v, 4);
        } else {
            const uint16_t h = type == TYPE_F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
            std::memcpy(&w[size_t(i) * 2], &h, 2);
        }
    };
    auto store_bits = [&](int i, uint16_t h) { std::memcpy(&w[size_t(i) * 2], &h, 2); };
    const float big = type == TYPE_F16 ? 65504.0f : 1e15f;  // the largest weight we use
    switch (kind) {
        case Fw::random: {
            const float scale = std::ldexp(1.0f, rng.between(-6, 6));
            for (int i = 0; i < n; i++) store(i, rng.normal() * scale);
            break;
        }
        case Fw::zeros:
            for (int i = 0; i < n; i++) store(i, rng.below(4) == 0 ? -0.0f : 0.0f);
            break;
        case Fw::equal: {
            const float c = rng.sign() * float(0.5 + rng.uniform());
            for (int i = 0; i < n; i++) store(i, c);
            break;
        }
        case Fw::outlier:
            for (int i = 0; i < n; i++) store(i, rng.normal() * 0.01f);
            store(rng.below(n), rng.sign() * big);
            break;
        case Fw::max:
            for (int i = 0; i < n; i++) store(i, rng.sign() * big);
            break;
        case Fw::tiny:
            // Subnormal weights: fp16 2^-24..2^-14, bf16 and f32 float subnormals.
            for (int i = 0; i < n; i++) {
                const uint16_t mant = uint16_t(rng.between(1, type == TYPE_F16 ? 0x3ff : 0x7f));
                const uint16_t h = uint16_t(mant | (rng.below(2) << 15));
                if (type == TYPE_F32)
                    store(i, rng.sign() * std::ldexp(float(rng.between(1, 0x7fffff)), -149));
                else
                    store_bits(i, h);
            }
            break;
        case Fw::bits:
            // Random finite encodings. fp16: every finite value; bf16 and f32: exponents limited to
            // about 2^+-50 so that no product with |x| <= 1e12 overflows.
            for (int i = 0; i < n; i++) {
                if (type == TYPE_F16) {
                    uint16_t h;
                    do h = uint16_t(rng.next()); while ((h & 0x7c00) == 0x7c00);
                    store_bits(i, h);
                } else {
                    store(i, rng.sign() * std::ldexp(1.0f + float(rng.uniform()), rng.between(-50, 50)));
                }
            }
            break;
        case Fw::cancel:
            // Filled by the caller to mirror x; here a random base row.
            for (int i = 0; i < n; i++) store(i, rng.normal());
            break;
    }
    return w;
}

std::vector<float> make_float_act(Fx kind, int n, Rng& rng) {
    std::vector<float> x(static_cast<size_t>(n));
    switch (kind) {
        case Fx::random: {
            const float scale = std::ldexp(1.0f, rng.between(-8, 8));
            for (float& v : x) v = rng.normal() * scale;
            break;
        }
        case Fx::zeros:
            for (float& v : x) v = 0.0f;
            break;
        case Fx::equal: {
            const float c = rng.sign() * float(0.5 + rng.uniform());
            for (float& v : x) v = c;
            break;
        }
        case Fx::outlier:
            for (float& v : x) v = rng.normal();
            x[size_t(rng.below(n))] = rng.sign() * 1e4f;
            break;
        case Fx::tiny:
            for (float& v : x) v = rng.normal() * 1e-25f;
            break;
        case Fx::large:
            for (float& v : x) v = rng.sign() * float(1e11 + 9e11 * rng.uniform());
            break;
    }
    return x;
}

void check_float_dots(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 255, 256, 1000};
    for (GGMLType type : {TYPE_F32, TYPE_F16, TYPE_BF16}) {
        Group& g = group(format("vec_dot %s x f32", type_traits(type)->name), true);
        for (int t = 0; t < trials; t++)
            for (Fw wk : kFws)
                for (Fx xk : kFxs)
                    for (int n : lengths) {
                        std::vector<uint8_t> w = make_float_weights(type, wk, n, rng);
                        std::vector<float> x = make_float_act(xk, n, rng);
                        if (wk == Fw::cancel) {
                            // Pairs of equal and opposite products: the exact dot is near zero, far
                            // below S, so only the S-relative bound can hold.
                            for (int i = 0; i + 1 < n; i += 2) x[size_t(i) + 1] = x[size_t(i)];
                            for (int i = 0; i + 1 < n; i += 2) {
                                const size_t es = type == TYPE_F32 ? 4 : 2;
                                uint8_t* a = &w[size_t(i) * es];
                                std::memcpy(a + es, a, es);
                                a[2 * es - 1] ^= 0x80;  // the sign bit of element i + 1
                            }
                        }
                        const std::string what = format("weights %s, x %s, n = %d", fw_name(wk), fx_name(xk), n);
                        set_case(g, what);
                        const uint8_t *xa, *xs;
                        std::string where;
                        if (!quantize_both(k, s, TYPE_F32, x, buf, &xa, &xs, &where)) {
                            record(g, false, what + ": " + where);
                            continue;
                        }
                        const void* wp = buf.weights.put(w);
                        const float got = k.vec_dot[type](n, wp, xa);
                        const float want = s.vec_dot[type](n, wp, xs);
                        double S = 0.0;
                        for (int i = 0; i < n; i++)
                            S += std::fabs(double(weight_value(type, w.data(), i)) * double(x[size_t(i)]));
                        check_dot(g, got, want, S, n, what);
                    }
    }
}

// ---------------------------------------------------------------------------------------------
// axpy: y += a * x, x in F32 or F16 (the KV cache types).

void check_axpy(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    const int lengths[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 100, 255};
    for (GGMLType type : {TYPE_F32, TYPE_F16}) {
        Group& g = group(format("axpy %s", type_traits(type)->name), true);
        for (int t = 0; t < trials; t++)
            for (Fw xk : kFws)
                for (Fx yk : kFxs)
                    for (int n : lengths) {
                        const std::vector<uint8_t> x = make_float_weights(type, xk, n, rng);
                        const std::vector<float> y0 = make_float_act(yk, n, rng);
                        const float picks[] = {0.0f, 1.0f, -1.0f, 1e3f, 1e-30f};
                        const float a = rng.below(2) ? rng.normal() : picks[rng.below(5)];
                        set_case(g, format("x %s, y %s, a = %g, n = %d", fw_name(xk), fx_name(yk), double(a), n));
                        const void* xp = buf.weights.put(x);
                        auto* ya = reinterpret_cast<float*>(buf.act_simd.place(y0.size() * 4, 0));
                        auto* ys = reinterpret_cast<float*>(buf.act_scalar.place(y0.size() * 4, 0));
                        std::memcpy(ya, y0.data(), y0.size() * 4);
                        std::memcpy(ys, y0.data(), y0.size() * 4);
                        k.axpy[type](n, a, xp, ya);
                        s.axpy[type](n, a, xp, ys);
                        int bad = -1;
                        double worst = 0.0;
                        for (int i = 0; i < n; i++) {
                            const double mag = std::fabs(double(y0[size_t(i)])) +
                                               std::fabs(double(a) * double(weight_value(type, x.data(), i)));
                            const double tol = 4.0 * 0x1.0p-24 * mag + 0x1.0p-148;
                            const double diff = std::fabs(double(ya[i]) - double(ys[i]));
                            if (!(diff <= tol) && bad < 0) bad = i;
                            if (diff / tol > worst) worst = diff / tol;
                            if (mag > 0 && diff / mag > g.worst_rel) g.worst_rel = diff / mag;
                        }
                        if (worst > g.worst_ratio) g.worst_ratio = worst;
                        record(g, bad < 0,
                               format("x %s, y %s, a = %g, n = %d: y[%d] simd %.9g, scalar %.9g", fw_name(xk),
                                      fx_name(yk), double(a), n, bad, bad >= 0 ? double(ya[bad]) : 0.0,
                                      bad >= 0 ? double(ys[bad]) : 0.0));
                    }
    }
}

// attend: the query heads that share one KV head, over n_pos cached rows in up to 3 runs joined by
// attention_join, against the scalar kernel over all of them in one.
// Outputs are softmax-weighted sums of the value rows, so they differ from the scalar ones only by
// the rounding of the scores and the sums: within 2e-5 of max |v| (the values are N(0, 1) here).

void check_attend(const Kernels& k, const Kernels& s, Rng& rng, int trials) {
    for (GGMLType type : {TYPE_F32, TYPE_F16, TYPE_Q8_0}) {
        Group& g = group(format("attend %s", type_traits(type)->name), true);
        const TypeTraits& tt = *type_traits(type);
        for (int t = 0; t < trials; t++)
            for (int hd : {6, 32, 64, 128})
                for (int n_q : {1, 3, 8})
                    for (int n_pos : {1, 5, 37}) {
                        if (hd % tt.block_size != 0) continue;  // a Q8_0 row is whole blocks
                        std::vector<float> q(size_t(n_q * hd));
                        for (float& v : q) v = rng.normal();
                        // rows of floats, stored in the cache type (the type's own quantizer)
                        const size_t row = row_size(type, hd);
                        std::vector<uint8_t> keys(size_t(n_pos) * row), values(keys.size());
                        std::vector<float> kf(static_cast<size_t>(hd)), vf(kf.size()), held(kf.size());
                        double vmax = 0.0;
                        for (int p = 0; p < n_pos; p++) {
                            for (int i = 0; i < hd; i++) {
                                kf[size_t(i)] = 2.0f * rng.normal();
                                vf[size_t(i)] = rng.normal();
                            }
                            tt.from_float(kf.data(), keys.data() + size_t(p) * row, hd);
                            tt.from_float(vf.data(), values.data() + size_t(p) * row, hd);
                            tt.to_float(values.data() + size_t(p) * row, held.data(), hd);
                            for (float v : held) vmax = std::max(vmax, std::fabs(double(v)));
                        }
                        const std::string what = format("head dim %d, %d heads, %d positions", hd, n_q, n_pos);
                        set_case(g, what);
                        const float scale = 1.0f / std::sqrt(float(hd));
                        // The kernel over `runs` runs of the positions, joined (attention_join).
                        auto attend = [&](const Kernels& table, int runs) {
                            std::vector<float> scores(size_t(n_q * n_pos)), parts(size_t(runs) * q.size()),
                                max(size_t(runs * n_q)), joined(q.size());
                            std::vector<double> sum(max.size());
                            for (int r = 0; r < runs; r++) {
                                const int p0 = r * n_pos / runs, p1 = (r + 1) * n_pos / runs;
                                table.attend[type](hd, n_q, q.data(), keys.data() + size_t(p0) * row,
                                                   values.data() + size_t(p0) * row, row, p1 - p0, scale,
                                                   scores.data(), parts.data() + size_t(r) * q.size(),
                                                   max.data() + r * n_q, sum.data() + r * n_q);
                            }
                            for (int j = 0; j < n_q; j++)
                                attention_join(hd, runs, parts.data() + size_t(j * hd), q.size(), max.data() + j,
                                               sum.data() + j, size_t(n_q), joined.data() + size_t(j * hd));
                            return joined;
                        };
                        const std::vector<float> want = attend(s, 1);
                        const std::vector<float> got = attend(k, std::min(n_pos, 3));
                        double worst = 0.0;
                        for (size_t i = 0; i < got.size(); i++)
                            worst = std::max(worst, std::fabs(double(got[i]) - double(want[i])) / (2e-5 * vmax));
                        if (worst > g.worst_ratio) g.worst_ratio = worst;
                        record(g, worst <= 1.0, format("%s: off by %.3g x the tolerance", what.c_str(), worst));
                    }
    }
}

// find_above against the scalar one: the same index, for both comparisons, on rows of 0 .. 150 values
// (every step and tail) of random values around the floor with edge values mixed in (NaN, +-inf,
// +-0, the floor itself: a tie), and on rows all below the floor but for one value at each position.
void check_find_above(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    Group& g = group("find_above", false);
    record(g, k.find_above != nullptr, "find_above missing");
    if (!k.find_above) return;
    const float floors[] = {0.0f, -0.0f, 1.5f, -3.25f, 1e30f, -INFINITY, INFINITY};
    auto check = [&](const std::vector<float>& x, float floor, const std::string& what) {
        const auto* row = static_cast<const float*>(buf.act_in.put(as_bytes(x)));  // ends at a guard page
        const int64_t n = int64_t(x.size());
        for (const bool or_equal : {false, true}) {
            const int64_t got = k.find_above(row, n, floor, or_equal);
            const int64_t want = s.find_above(x.data(), n, floor, or_equal);
            set_case(g, what);
            record(g, got == want, format("%s, floor %g, %s: %lld, scalar %lld", what.c_str(), double(floor),
                                          or_equal ? ">=" : ">", (long long)got, (long long)want));
        }
    };
    for (int t = 0; t < trials; t++)
        for (int n = 0; n <= 150; n++) {
            const float floor = floors[rng.below(int(std::size(floors)))];
            const float edges[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, floor};
            std::vector<float> x(static_cast<size_t>(n));
            for (float& v : x)  // mostly below the floor, some past it
                v = rng.below(16) == 0 ? edges[rng.below(int(std::size(edges)))]
                                       : floor - 1.0f - rng.normal() * rng.normal();
            check(x, floor, format("%d random values", n));
            if (n > 0 && t == 0)
                for (int p = 0; p < n; p++) {
                    std::vector<float> one(static_cast<size_t>(n), -1e30f);
                    one[size_t(p)] = p % 3 == 0 ? NAN : p % 3 == 1 ? 1.5f : 2.0f;
                    check(one, 1.5f, format("%d values, one past at %d", n, p));
                }
        }
}

// silu_mul (the gated feed-forward's silu(g) * u) against the scalar one: the SIMD tables take e^-|g|
// from the softmax's polynomial, the reference the C library's exp, so within a few ulp (2e-6
// relative, or 1e-30 near zero: below g ~ -87 the polynomial's e^-|g| is 0 where the library's is
// ~1e-38, results of ~1e-36); NaN where the scalar gives NaN, +inf where it gives +inf. Lengths
// 1 .. 40 cover every tail; the values run from tiny to past exp's range.
void check_silu_mul(const Kernels& k, const Kernels& s, Buffers& buf, Rng& rng, int trials) {
    Group& g = group("silu_mul", true);
    record(g, k.silu_mul != nullptr, "silu_mul missing");
    if (!k.silu_mul) return;
    const float edges[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 86.9f, -86.9f, 87.1f, -87.1f, 88.0f, -88.0f, 104.0f,
                           -104.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN};
    for (int t = 0; t < trials; t++)
        for (int n = 1; n <= 40; n++) {
            std::vector<float> gv(static_cast<size_t>(n)), uv(gv.size());
            const float scale = std::pow(10.0f, float(rng.below(5)) - 2.0f);  // 0.01 .. 100
            for (int i = 0; i < n; i++) {
                gv[size_t(i)] = rng.below(8) == 0 ? edges[rng.below(int(std::size(edges)))] : scale * rng.normal();
                uv[size_t(i)] = rng.normal();
            }
            std::vector<float> want = gv;
            s.silu_mul(want.data(), uv.data(), n);
            // both rows end at a guard page: reading or writing past n crashes
            auto* got = reinterpret_cast<float*>(buf.act_simd.place(size_t(n) * sizeof(float), 0));
            std::memcpy(got, gv.data(), size_t(n) * sizeof(float));
            k.silu_mul(got, static_cast<const float*>(buf.act_in.put(as_bytes(uv))), n);
            const std::string what = format("%d values of scale %g", n, double(scale));
            set_case(g, what);
            for (int i = 0; i < n; i++) {
                const float a = got[i], b = want[size_t(i)];
                const double err = std::fabs(double(a) - double(b)), bound = 2e-6 * std::fabs(double(b)) + 1e-30;
                const bool ok = std::isnan(b)   ? std::isnan(a)
                                : std::isinf(b) ? a == b
                                                : std::isfinite(a) && err <= bound;
                const double ratio = std::isfinite(b) && std::isfinite(a) ? err / bound : 0.0;
                if (ratio > g.worst_ratio) g.worst_ratio = ratio;
                record(g, ok, format("%s: silu(%.9g) * %.9g = %.9g, scalar %.9g", what.c_str(), double(gv[size_t(i)]),
                                     double(uv[size_t(i)]), double(a), double(b)));
            }
        }
}

// What this binary was compiled for: the arm64 build has two kernel paths (sdot or smull), and the
// runner checks that each build took the one it meant to test.
const char* build_target() {
#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
    return "aarch64+dotprod";
#elif defined(__aarch64__)
    return "aarch64 (no dotprod)";
#elif defined(__x86_64__) || defined(_M_X64)
    return "x86-64";
#else
    return "another architecture";
#endif
}

}  // namespace

int main(int argc, char** argv) {
    uint64_t seed = 1;
    int trials = 1;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            seed = std::strtoull(argv[++i], nullptr, 10);
        } else if (std::strcmp(argv[i], "--trials") == 0 && i + 1 < argc) {
            trials = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--seed S] [--trials T]\n", argv[0]);
            return 2;
        }
    }

    // Line-buffered, so what was printed survives a crash; the handler names the case that crashed.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::signal(SIGSEGV, on_crash);
    std::signal(SIGBUS, on_crash);
    std::signal(SIGILL, on_crash);

    const Kernels* table = pe::PE_TEST_TABLE();
    const Kernels* scalar = kernels_scalar();
    if (!table) {
        std::printf("%s() returned nullptr: that ISA is not compiled into this build\n", PE_STRINGIFY(PE_TEST_TABLE));
        std::printf("0 passed, 1 failed\n");
        return 1;
    }
    std::printf("kernel table %s (isa \"%s\") against scalar, built for %s, seed %" PRIu64 ", trials %d\n",
                PE_STRINGIFY(PE_TEST_TABLE), table->isa, build_target(), seed, trials);

    Rng rng{seed};
    Buffers buf;
    check_table_entries(*table, *scalar);
    check_quantizers(*table, *scalar, buf, rng, trials);
    check_quant_dots(*table, *scalar, buf, rng, trials);
    check_exact_dots(*table, *scalar, buf, rng, trials);
    check_nf4_dots(*table, *scalar, buf, rng, trials);
    check_packed(*table, *scalar, buf, rng, trials);
    check_float_dots(*table, *scalar, buf, rng, trials);
    check_axpy(*table, *scalar, buf, rng, trials);
    check_attend(*table, *scalar, rng, trials);
    check_silu_mul(*table, *scalar, buf, rng, trials);
    check_find_above(*table, *scalar, buf, rng, trials);

    long passed = 0, failed = 0;
    for (const Group& g : g_groups) {
        std::printf("%s %-22s %6ld checks, %ld failed", g.failed ? "FAIL" : "ok  ", g.name.c_str(), g.passed + g.failed,
                    g.failed);
        if (g.has_tolerance) std::printf("; worst |diff| = %.3g of tolerance, %.2e of S", g.worst_ratio, g.worst_rel);
        std::printf("\n");
        passed += g.passed;
        failed += g.failed;
    }
    std::printf("%ld passed, %ld failed\n", passed, failed);
    return failed ? 1 : 0;
}
