// Block formats: the byte layout of each ggml type is the contract with the GGUF file, so each struct
// is followed by a static_assert on its size. 32 weights per block, fp16 scales stored as raw bits.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pe {

constexpr int QK = 32;  // weights per block, for every block format here

// ggml's type ids, as stored in GGUF tensor infos.
enum GGMLType : uint32_t {
    TYPE_F32 = 0,
    TYPE_F16 = 1,
    TYPE_Q4_0 = 2,
    TYPE_Q4_1 = 3,
    TYPE_Q8_0 = 8,
    TYPE_Q8_1 = 9,
    TYPE_BF16 = 30,
    TYPE_COUNT = 40,  // size of per-type tables; ids at or above it are never valid here
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

// Row conversions. n is the number of values and a multiple of the type's block size.
using to_float_fn = void (*)(const void* src, float* dst, int64_t n);
using from_float_fn = void (*)(const float* src, void* dst, int64_t n);
// Dot product of one weight row (n values of the weight type) with one activation row already
// converted to the weight type's vec_dot_type.
using vec_dot_fn = float (*)(int n, const void* w, const void* x);
// y[i] += a * x[i] for n values of x in a float type (attention's weighted sum of values).
using axpy_fn = void (*)(int n, float a, const void* x, float* y);

struct TypeTraits {
    const char* name;       // "q4_0", as GGUF tools name it; nullptr for ids we do not support
    int block_size;         // values per block
    size_t type_size;       // bytes per block
    GGMLType vec_dot_type;  // what the activation is converted to before a dot with this weight type
    to_float_fn to_float;   // scalar reference dequantizer
    from_float_fn from_float;  // scalar reference quantizer: llama.cpp's exact bytes
};

// nullptr when the id is not one we support.
const TypeTraits* type_traits(uint32_t type);

// Bytes of a row of n values, or 0 when n is not a multiple of the block size.
size_t row_size(GGMLType type, int64_t n);

}  // namespace pe
