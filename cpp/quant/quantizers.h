// Scalar reference quantizers of Q5_0, Q5_1, the K-quants (Q2_K..Q6_K), IQ4_NL and IQ4_XS: llama.cpp's
// exact bytes (ggml-quants.c as llama-quantize runs it, through ggml_quantize_chunk).
//
// Each takes one row of n values (n a multiple of the type's block size: 32 for Q5_0, Q5_1 and
// IQ4_NL, QK_K = 256 for the others) and writes n / block_size blocks.
//
// The plain quantizers are what llama.cpp writes without an importance matrix; they have the
// from_float_fn signature. The _w variants are the imatrix-weighted quantizers: `weights` holds n
// importance values, one per column of the row (llama.cpp's quant_weights, the imatrix entry of the
// tensor: the same vector for every row), nonnegative, and must not be null. Those that search
// against a per-row statistic (Q5_0, Q5_1: the row's mean square) need the whole row in one call, so
// call them row by row, never on several rows at once.
#pragma once

#include <cstdint>

namespace pe {
namespace ref {

void quantize_row_q5_0(const float* x, void* y, int64_t n);
void quantize_row_q5_1(const float* x, void* y, int64_t n);
void quantize_row_q2_K(const float* x, void* y, int64_t n);
void quantize_row_q3_K(const float* x, void* y, int64_t n);
void quantize_row_q4_K(const float* x, void* y, int64_t n);
void quantize_row_q5_K(const float* x, void* y, int64_t n);
void quantize_row_q6_K(const float* x, void* y, int64_t n);
void quantize_row_iq4_nl(const float* x, void* y, int64_t n);
void quantize_row_iq4_xs(const float* x, void* y, int64_t n);

void quantize_row_q4_0_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q4_1_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q5_0_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q5_1_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q2_K_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q3_K_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q4_K_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q5_K_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_q6_K_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_iq4_nl_w(const float* x, void* y, int64_t n, const float* weights);
void quantize_row_iq4_xs_w(const float* x, void* y, int64_t n, const float* weights);

}  // namespace ref
}  // namespace pe
