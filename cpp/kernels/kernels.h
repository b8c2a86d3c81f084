// The kernel table: one per instruction set, the same entries in each. dispatch.cpp picks one at
// start-up from CPUID (PYENGINE_ISA overrides it); the scalar table is the reference the others are
// tested against.
#pragma once

#include "../quant/blocks.h"

namespace pe {

constexpr int kTileRows = 4;
constexpr int kTileTokens = 2;

// Packed weights: kPackRows rows interleaved block by block, so that one vector instruction works on
// the same block of every row of the group and each vector lane ends up holding one row's output.
constexpr int kPackRows = 8;
constexpr int kPackTokens = 8;  // activations one packed_dot call takes at most

// A batch of activations in a weight type's vec_dot_type, ready for the products (matmul.h's
// prepare_activations makes them).
struct Activations {
    const uint8_t* data = nullptr;  // n_tokens rows of row_bytes
    size_t row_bytes = 0;
    int64_t n_tokens = 0;
    int64_t n_blocks = 0;  // blocks per row
    // For the packed kernels, per token t and block b at packed_extra_index(t, b, n_blocks, n_tokens),
    // or none: the int8 sums of Q8_0 blocks (the formats whose packed_xsums is set), and the blocks'
    // fp16 scales as floats, d and s at twice that index (s: Q8_1's; 0 for Q8_0), converted once for
    // every row group.
    const int32_t* block_sums = nullptr;
    const float* block_scales = nullptr;
};

// Where token t's value for block b is in Activations::block_sums (twice that in block_scales), of
// n_tokens: the tokens of a pass (kPackTokens from a multiple of it, or all n_tokens if fewer) side
// by side for each block, so that a pass finds them at fixed offsets from one pointer instead of
// one pointer a token; block b + 1 is packed_extra_stride(n_tokens) on. `static`, as fp16.h's
// helpers: units built with ISA flags include this, and no copy of theirs may serve other code.
static inline int64_t packed_extra_stride(int64_t n_tokens) { return n_tokens < kPackTokens ? n_tokens : kPackTokens; }
static inline size_t packed_extra_index(int64_t t, int64_t b, int64_t n_blocks, int64_t n_tokens) {
    const int64_t g = packed_extra_stride(n_tokens);
    return size_t(((t / g) * n_blocks + b) * g + t % g);
}

// Packs rows 0 .. kPackRows-1 (row r at w + r * w_stride, n values each) into out: kPackRows rows'
// bytes, same size, a layout private to the ISA's packed_dot.
using pack_fn = void (*)(int n, const void* w, size_t w_stride, void* out);

// y[c * y_stride + r] = row r of the packed group . activation t0 + c of x, for r < kPackRows,
// c < n_tokens (1 .. kPackTokens, within one pass: t0 % kPackTokens + n_tokens <= kPackTokens),
// with x's block sums where packed_xsums is set and its block scales where packed_xscales is.
// Every output is bit-identical to the scalar reference's vec_dot on
// the unpacked row (same operations in the same order), whatever n_tokens is.
using packed_dot_fn = void (*)(int n, const void* packed, const Activations& x, int64_t t0, int n_tokens, float* y,
                               size_t y_stride);

// Activation t0 of x against two packed groups (two weight streams in flight, for matrix-vector
// products that read the weights from memory): ya, yb get kPackRows outputs each, every one
// bit-identical to packed_dot's.
using packed_dot_pair_fn = void (*)(int n, const void* packed_a, const void* packed_b, const Activations& x,
                                    int64_t t0, float* ya, float* yb);

// y[c * y_stride + r] = vec_dot(n, w + r * w_stride, x + c * x_stride) for r < kTileRows, c < kTileTokens.
using vec_dot_tile_fn = void (*)(int n, const void* w, size_t w_stride, const void* x, size_t x_stride, float* y,
                                 size_t y_stride);

// Attention of n_q query heads sharing one KV head (query j at q + j * hd), over positions
// 0 .. n_pos-1 of the keys and values (row p at keys + p * kv_stride, hd values of the KV type): with
// s_p = scale * q_j . K_p, max_j = max_p s_p, e_p = exp(s_p - max_j) in float and sum_j = sum_p e_p
// in double, out_j = sum_p (e_p * float(1 / sum_j)) V_p at out + j * hd, and max_j, sum_j for joining
// runs of positions (attention_join). scores: n_q * n_pos floats of scratch. Each output depends only
// on its own query and the cache, never on n_q.
using attend_fn = void (*)(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                           int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum);

// The softmax attention of one query head into dest (hd values), from the results of n_runs
// consecutive runs of its positions (attend_fn), joined in run order: run r's out at
// out + r * out_stride, its max and sum at max[r * stat_stride], sum[r * stat_stride]; with
// w_r = sum_r exp(max_r - M) (M the largest max_r, in double), dest = sum_r float(w_r / sum of w) out_r.
// One run's weight is exactly 1: dest is its out, bit for bit. In reference.cpp, one build for every
// ISA: the joined bits never depend on the kernel table.
void attention_join(int hd, int n_runs, const float* out, size_t out_stride, const float* max, const double* sum,
                    size_t stat_stride, float* dest);

struct Kernels {
    const char* isa;                    // "scalar", "avx2", "avx512", "neon"
    vec_dot_fn vec_dot[TYPE_COUNT];     // by weight type; the activation is in its vec_dot_type
    // Activation quantizers (q8_0, q8_1, q8_k, f32) and the KV cache's rows (f32, f16, q8_0): the same
    // bytes as the reference.
    from_float_fn from_float[TYPE_COUNT];
    axpy_fn axpy[TYPE_COUNT];           // by the type of x: f32, f16 and q8_0 (the KV cache types)
    attend_fn attend[TYPE_COUNT];       // by the KV cache type: f32, f16 and q8_0 (head dim a multiple of 32)
    // g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] for i < n: the gated feed-forward's SiLU.
    void (*silu_mul)(float* g, const float* u, int64_t n);
    // The first i < n with x[i] > floor (or_equal: x[i] >= floor) or x[i] NaN; n if there is none. The
    // sampler's scans for the largest logits (top_k.cpp): a comparison, the same answer on every ISA.
    int64_t (*find_above)(const float* x, int64_t n, float floor, bool or_equal);
    // Optional (nullptr: none): kTileRows weight rows x kTileTokens activations in one pass, each weight
    // block unpacked once for every token and each activation block loaded once for every row. Every
    // output must be bit-identical to vec_dot on the same row and activation (same operations in the
    // same order), so tiling never changes a result.
    vec_dot_tile_fn vec_dot_tile[TYPE_COUNT];
    // Optional (nullptr: none): weights packed at load time (pack), and their product (packed_dot).
    pack_fn pack[TYPE_COUNT];
    packed_dot_fn packed_dot[TYPE_COUNT];
    packed_dot_pair_fn packed_dot_pair[TYPE_COUNT];  // optional: one token, two groups
    // Optional: packed_dot over two adjacent packed groups in one pass (the second group's blocks
    // right after the first's; its 8 outputs right after the first's 8 in each token's row of y), the
    // same bits as two packed_dot calls.
    packed_dot_fn packed_dot_two[TYPE_COUNT];
    bool packed_xsums[TYPE_COUNT];    // packed_dot needs the activations' block sums
    bool packed_xscales[TYPE_COUNT];  // packed_dot needs the activations' block scales as floats
    // Optional: a probe of the ISA's int8 multiply-add peak for bench/ (the instruction the packed
    // kernels are built on, independent chains, no loads): int8 products per second on one thread.
    double (*int8_peak)(int64_t iterations);
};

// The scalar reference: never optimised, the oracle for every other path.
namespace ref {
void quantize_row_q4_0(const float* x, void* y, int64_t n);
void quantize_row_q4_1(const float* x, void* y, int64_t n);
void quantize_row_q8_0(const float* x, void* y, int64_t n);
void quantize_row_q8_1(const float* x, void* y, int64_t n);
void quantize_row_q8_K(const float* x, void* y, int64_t n);
void quantize_row_nf4(const float* x, void* y, int64_t n);
void quantize_row_nf4_dq(const float* x, void* y, int64_t n);
void quantize_row_f16(const float* x, void* y, int64_t n);
void quantize_row_bf16(const float* x, void* y, int64_t n);
void copy_row_f32(const float* x, void* y, int64_t n);

void dequantize_row_q4_0(const void* x, float* y, int64_t n);
void dequantize_row_q4_1(const void* x, float* y, int64_t n);
void dequantize_row_q8_0(const void* x, float* y, int64_t n);
void dequantize_row_q8_1(const void* x, float* y, int64_t n);
void dequantize_row_q5_0(const void* x, float* y, int64_t n);
void dequantize_row_q5_1(const void* x, float* y, int64_t n);
void dequantize_row_iq4_nl(const void* x, float* y, int64_t n);
void dequantize_row_q2_K(const void* x, float* y, int64_t n);
void dequantize_row_q3_K(const void* x, float* y, int64_t n);
void dequantize_row_q4_K(const void* x, float* y, int64_t n);
void dequantize_row_q5_K(const void* x, float* y, int64_t n);
void dequantize_row_q6_K(const void* x, float* y, int64_t n);
void dequantize_row_iq4_xs(const void* x, float* y, int64_t n);
void dequantize_row_q8_K(const void* x, float* y, int64_t n);
void dequantize_row_nf4(const void* x, float* y, int64_t n);
void dequantize_row_nf4_dq(const void* x, float* y, int64_t n);
void dequantize_row_f16(const void* x, float* y, int64_t n);
void dequantize_row_bf16(const void* x, float* y, int64_t n);
void dequantize_row_f32(const void* x, float* y, int64_t n);

float vec_dot_q4_0_q8_0(int n, const void* w, const void* x);
float vec_dot_q4_1_q8_1(int n, const void* w, const void* x);
float vec_dot_q8_0_q8_0(int n, const void* w, const void* x);
float vec_dot_q5_0_q8_0(int n, const void* w, const void* x);
float vec_dot_q5_1_q8_1(int n, const void* w, const void* x);
float vec_dot_iq4_nl_q8_0(int n, const void* w, const void* x);
float vec_dot_q2_K_q8_K(int n, const void* w, const void* x);
float vec_dot_q3_K_q8_K(int n, const void* w, const void* x);
float vec_dot_q4_K_q8_K(int n, const void* w, const void* x);
float vec_dot_q5_K_q8_K(int n, const void* w, const void* x);
float vec_dot_q6_K_q8_K(int n, const void* w, const void* x);
float vec_dot_iq4_xs_q8_K(int n, const void* w, const void* x);
// A K-quant super-block's contribution to a dot with Q8_K, from its exact integer sums:
// (d * dx) * isum - (dmin * dx) * msum. Every ISA calls this one function, so the bits agree.
float k_superblock_term(float d, float dmin, float dx, int32_t isum, int32_t msum);
float vec_dot_nf4_q8_0(int n, const void* w, const void* x);
float vec_dot_nf4_dq_q8_0(int n, const void* w, const void* x);
float vec_dot_f32_f32(int n, const void* w, const void* x);
float vec_dot_f16_f32(int n, const void* w, const void* x);
float vec_dot_bf16_f32(int n, const void* w, const void* x);
float vec_dot_q8_0_f32(int n, const void* w, const void* x);  // a Q8_0 KV cache row . float query

void axpy_f32(int n, float a, const void* x, float* y);
void axpy_f16(int n, float a, const void* x, float* y);
void axpy_q8_0(int n, float a, const void* x, float* y);

void attend_f32(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum);
void attend_f16(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum);
void attend_q8_0(int hd, int n_q, const float* q, const void* keys, const void* values, size_t kv_stride,
                 int64_t n_pos, float scale, float* scores, float* out, float* max, double* sum);
void silu_mul(float* g, const float* u, int64_t n);
int64_t find_above(const float* x, int64_t n, float floor, bool or_equal);
}  // namespace ref

const Kernels* kernels_scalar();
// Each returns nullptr when the ISA was not compiled into this build (another architecture). They do
// not check the CPU, and running them on one without the ISA is an illegal instruction: only
// dispatch.cpp calls them, after its CPUID check.
const Kernels* kernels_avx2();
const Kernels* kernels_avx512();
const Kernels* kernels_neon();
// Sets the AVX2 entries of the K-quant, Q5_0, Q5_1 and IQ4_NL dots and the Q8_K quantizer
// (avx2_kquants.cpp; a no-op off x86-64). Called by kernels_avx2() only.
void add_avx2_kquant_kernels(Kernels& k);
// The packed kernels (pack, packed_dot, packed_dot_pair) built with AVX-512 VL and VNNI
// (avx512_packed.cpp; a no-op off x86-64). Called by kernels_avx512() only.
void add_avx512_packed_kernels(Kernels& k);
// The same for the NEON table (neon_kquants.cpp; a no-op off arm64). Called by kernels_neon() only.
void add_neon_kquant_kernels(Kernels& k);

// The table in use: the best this CPU supports, or the one PYENGINE_ISA names.
const Kernels& active_kernels();
// The table for a named ISA, or nullptr if it is not compiled in or this CPU lacks it.
const Kernels* kernels_by_name(const char* isa);
// Names of the ISAs usable on this machine, best last, ending with nullptr.
const char* const* available_isas();

}  // namespace pe
