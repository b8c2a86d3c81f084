// Block formats: the byte layout of each ggml type is the contract with the GGUF file, so each struct
// is followed by a static_assert on its size. 32 weights per block for ggml's types, fp16 scales stored
// as raw bits. NF4 and NF4_DQ (type ids 100, 101) are pyengine's own formats, not ggml's: see below.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pe {

constexpr int QK = 32;  // weights per block of ggml's formats; also the activation (Q8_0) block

// ggml's type ids, as stored in GGUF tensor infos, and pyengine's own (100 and up, outside ggml's range).
enum GGMLType : uint32_t {
    TYPE_F32 = 0,
    TYPE_F16 = 1,
    TYPE_Q4_0 = 2,
    TYPE_Q4_1 = 3,
    TYPE_Q5_0 = 6,
    TYPE_Q5_1 = 7,
    TYPE_Q8_0 = 8,
    TYPE_Q8_1 = 9,
    TYPE_Q2_K = 10,
    TYPE_Q3_K = 11,
    TYPE_Q4_K = 12,
    TYPE_Q5_K = 13,
    TYPE_Q6_K = 14,
    TYPE_Q8_K = 15,
    TYPE_IQ4_NL = 20,
    TYPE_IQ4_XS = 23,
    TYPE_BF16 = 30,
    TYPE_NF4 = 100,     // pyengine's 4-bit NormalFloat, 64-weight blocks
    TYPE_NF4_DQ = 101,  // NF4 with double-quantized block scales, 256-weight super-blocks
    TYPE_COUNT = 102,   // size of per-type tables; ids at or above it are never valid here
};

struct block_q4_0 {
    uint16_t d;            // scale (fp16); value = d * (q - 8)
    uint8_t qs[QK / 2];    // weight j in the low nibble of qs[j], weight j+16 in the high nibble
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes");

struct block_q4_1 {
    uint16_t d;            // scale (fp16)
    uint16_t m;            // minimum (fp16); value = d * q + m
    uint8_t qs[QK / 2];    // nibbles, laid out as in block_q4_0
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes");

struct block_q8_0 {
    uint16_t d;            // scale (fp16); value = d * q
    int8_t qs[QK];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes");

struct block_q8_1 {
    uint16_t d;            // scale (fp16)
    uint16_t s;            // d * sum(qs) (fp16): lets a Q4_1 dot add its minimum in one multiply
    int8_t qs[QK];
};
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 must be 36 bytes");

struct block_q5_0 {
    uint16_t d;            // scale (fp16); value = d * (q - 16)
    uint8_t qh[4];         // bit 4 of weight j in bit j (little-endian u32)
    uint8_t qs[QK / 2];    // low 4 bits, laid out as in block_q4_0
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 must be 22 bytes");

struct block_q5_1 {
    uint16_t d;            // scale (fp16)
    uint16_t m;            // minimum (fp16); value = d * q + m
    uint8_t qh[4];         // bit 4 of weight j in bit j
    uint8_t qs[QK / 2];    // low 4 bits, laid out as in block_q4_0
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 must be 24 bytes");

// IQ4_NL: 4-bit indices into a fixed non-linear table of int8 levels (denser near zero), one fp16
// scale per 32 weights; value = d * kIQ4NLValues[q]. IQ4_XS uses the same levels.
alignas(16) constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                 1,    13,   25,  38,  53,  69,  89,  113};

struct block_iq4_nl {
    uint16_t d;            // scale (fp16)
    uint8_t qs[QK / 2];    // indices, laid out as in block_q4_0
};
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl must be 18 bytes");

// ---------------------------------------------------------------------------------------------------
// K-quants: 256-weight super-blocks of 8 or 16 sub-blocks, each sub-block with its own small integer
// scale (and minimum) relative to the super-block's fp16 scales. Their activations are Q8_K.
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;  // 8 six-bit scales and 8 six-bit minimums (Q4_K, Q5_K), or 16 six-bit scales (Q3_K)

struct block_q2_K {
    uint8_t scales[QK_K / 16];  // per 16 weights: scale in the low nibble, minimum in the high one
    uint8_t qs[QK_K / 4];       // 2-bit quants: weight 128h + 32s + j in bits 2s..2s+1 of qs[32h + j]
    uint16_t d;                 // super-block scale of the scales (fp16)
    uint16_t dmin;              // super-block scale of the minimums (fp16)
};  // value = d * sc * q - dmin * m
static_assert(sizeof(block_q2_K) == 84, "block_q2_K must be 84 bytes");

struct block_q3_K {
    uint8_t hmask[QK_K / 8];      // high bit: weight 32k + j has it in bit k of hmask[j] (set: no -4)
    uint8_t qs[QK_K / 4];         // low 2 bits, laid out as in block_q2_K
    uint8_t scales[K_SCALE_SIZE]; // 16 six-bit scales, stored with an offset of 32 (see ref's q3_K_scales)
    uint16_t d;                   // super-block scale (fp16)
};  // value = d * (sc - 32) * (q - 4 * !hbit)
static_assert(sizeof(block_q3_K) == 110, "block_q3_K must be 110 bytes");

struct block_q4_K {
    uint16_t d;                    // super-block scale of the scales (fp16)
    uint16_t dmin;                 // super-block scale of the minimums (fp16)
    uint8_t scales[K_SCALE_SIZE];  // 8 six-bit scales and 8 six-bit minimums, per 32 weights
    uint8_t qs[QK_K / 2];          // weight 64h + j in the low nibble of qs[32h + j], 64h + 32 + j in the high one
};  // value = d * sc * q - dmin * m
static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes");

struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];  // as in block_q4_K
    uint8_t qh[QK_K / 8];          // bit 4: weight 32k + j has it in bit k of qh[j]
    uint8_t qs[QK_K / 2];          // low 4 bits, laid out as in block_q4_K
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes");

struct block_q6_K {
    uint8_t ql[QK_K / 2];     // low 4 bits
    uint8_t qh[QK_K / 4];     // high 2 bits
    int8_t scales[QK_K / 16]; // signed 8-bit scale per 16 weights
    uint16_t d;               // super-block scale (fp16)
};  // value = d * sc * (q - 32); the bit layout: ref's dequantize_row_q6_K
static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes");

// The activation format of the K-quants: int8 with a float32 scale, and the sums of each 16 values
// (for the minimums' term of Q2_K, Q4_K and Q5_K).
struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};
static_assert(sizeof(block_q8_K) == 292, "block_q8_K must be 292 bytes");

struct block_iq4_xs {
    uint16_t d;                 // super-block scale (fp16)
    uint16_t scales_h;          // bits 4-5 of the 8 six-bit scales, 2 bits each
    uint8_t scales_l[QK_K / 64];  // bits 0-3 of the scales, a nibble each (scale 2k low, 2k+1 high)
    uint8_t qs[QK_K / 2];       // indices into kIQ4NLValues, each 32-group laid out as in block_q4_0
};  // value = d * (scale - 32) * kIQ4NLValues[q]
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs must be 136 bytes");

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K super-block: 8 scales and 8
// minimums in 12 bytes, the low 6 bits of the first four of each in bytes 0..7, the rest split.
static inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

// ---------------------------------------------------------------------------------------------------
// NF4: 4-bit NormalFloat (QLoRA, Dettmers et al. 2023), pyengine's own format.
//
// Pre-trained weights are close to normally distributed, so the 16 levels are quantiles of the
// standard normal N rather than evenly spaced: QLoRA's construction (bitsandbytes' create_normal_map)
// takes 8 levels from the upper half, N^-1(p) for p = offset .. 0.5 in 9 even steps less the last,
// 7 from the lower half, -N^-1(p) for p = offset .. 0.5 in 8 steps less the last, and an exact 0,
// then divides by the largest, N^-1(offset), so the levels span [-1, 1] with 1 and -1 exact.
// offset = 0.9677083 = (1 - 1/(2*15) + 1 - 1/(2*16)) / 2 keeps N^-1 finite. The float levels are
//   -1, -0.6961929, -0.5250730, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0,
//   0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229567, 1.
// The format is defined by those levels times 127 rounded to integers, kNF4Levels below (the largest
// rounding, 0.47 at -23.47, is under a twentieth of the smallest gap between levels, 10): value =
// d * kNF4Levels[q]. Integer levels make the dot with Q8_0 activations an exact int8 product, as for
// Q4_0 (tests/test_nf4.py recomputes the table from the formula).
constexpr int QK_NF4 = 64;       // weights per NF4 block (QLoRA's block size)
constexpr int QK_NF4_DQ = 256;   // weights per NF4_DQ super-block: 4 NF4 blocks
constexpr int kNF4ZeroIndex = 7;  // the index of the level 0
alignas(16) constexpr int8_t kNF4Levels[16] = {-127, -88, -67, -50, -36, -23, -12, 0,
                                               10,   20,  31,  43,  56,  71,  92,  127};

struct block_nf4 {
    uint16_t d;                 // scale (fp16) = absmax / 127; value = d * kNF4Levels[q]
    uint8_t qs[QK_NF4 / 2];     // weight j in the low nibble of qs[j], weight j+32 in the high nibble
};
static_assert(sizeof(block_nf4) == 34, "block_nf4 must be 34 bytes (4.25 bits per weight)");

// Double quantization (QLoRA): the four block scales of a super-block are stored as 8-bit codes of a
// shared fp16 step D = max(block absmax) / 255, so block i's absmax is D * c_i and its scale
// d_i = D * c_i / 127 (nf4_dq_block_scale: every path computes it so). A block that is not all zero
// has c_i >= 1, so it never gets a zero scale.
struct block_nf4_dq {
    uint16_t d;                               // D, the step of the scale codes (fp16)
    uint8_t scales[QK_NF4_DQ / QK_NF4];       // c_i, 0..255
    uint8_t qs[QK_NF4_DQ / QK_NF4][QK_NF4 / 2];  // each 64-block's nibbles, laid out as in block_nf4
};
static_assert(sizeof(block_nf4_dq) == 134, "block_nf4_dq must be 134 bytes (4.1875 bits per weight)");

// Static (one copy per translation unit, as in fp16.h): the per-ISA units include this header with
// their own flags, and the float operations are the same IEEE ones in each.
static inline float nf4_dq_block_scale(float D, uint8_t c) { return D * float(c) / 127.0f; }

// Row conversions. n is the number of values and a multiple of the type's block size.
using to_float_fn = void (*)(const void* src, float* dst, int64_t n);
using from_float_fn = void (*)(const float* src, void* dst, int64_t n);
// Dot product of one weight row (n values of the weight type) with one activation row already
// converted to the weight type's vec_dot_type.
using vec_dot_fn = float (*)(int n, const void* w, const void* x);
// y[i] += a * x[i] for n values of x in a float type (attention's weighted sum of values).
using axpy_fn = void (*)(int n, float a, const void* x, float* y);

// One row quantized with importance weights (an imatrix: one nonnegative value per column).
using from_float_weighted_fn = void (*)(const float* src, void* dst, int64_t n, const float* weights);

struct TypeTraits {
    const char* name;       // "q4_0", as GGUF tools name it; nullptr for ids we do not support
    int block_size;         // values per block
    size_t type_size;       // bytes per block
    GGMLType vec_dot_type;  // what the activation is converted to before a dot with this weight type
    to_float_fn to_float;   // scalar reference dequantizer
    from_float_fn from_float;  // scalar reference quantizer: llama.cpp's exact bytes (nullptr: none)
    from_float_weighted_fn from_float_weighted = nullptr;  // the imatrix-weighted one, one row per call
};

// nullptr when the id is not one we support.
const TypeTraits* type_traits(uint32_t type);

// Bytes of a row of n values, or 0 when n is not a multiple of the block size.
size_t row_size(GGMLType type, int64_t n);

}  // namespace pe
