// The integer codes of the block formats, apart from their scales: for error-compensated rounding
// (GPTQ), which keeps a block's scales and chooses each weight's code itself.
//
// Every format supported here dequantizes weight i of a block as
//     value_i = scale_i * level(code_i) + offset_i
// in float32, in that order (offset_i = 0 for the symmetric formats, -dmin * m for the K-quants with
// minimums, m for Q4_1 / Q5_1), with an integer level table per type (code_levels) and the scale
// products computed as the reference dequantizers compute them, so that the values are bit-identical
// to dequantize's.
#pragma once

#include <cstdint>

#include "blocks.h"

namespace pe {

// The levels of a type's codes (code c means level levels[c]), increasing; their count; 0 for a type
// without codes here (the float types, Q8_1, Q8_K, NF4, NF4_DQ).
int code_levels(GGMLType type, const int16_t** levels);

// One row of n weights (whole blocks): its codes and the scale and offset of each weight.
void unpack_codes(GGMLType type, const void* row, int64_t n, uint8_t* codes, float* scale, float* offset);

// Writes codes into a row of n weights, keeping its scales (every code must be below the level count).
void pack_codes(GGMLType type, void* row, int64_t n, const uint8_t* codes);

}  // namespace pe
