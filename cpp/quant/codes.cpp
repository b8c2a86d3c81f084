// Codes, scales and offsets of the block formats (codes.h). Each layout is written once, as the
// places of each weight's code bits (`Place`), read by unpack_codes and written by pack_codes.
#include "codes.h"

#include <cstring>
#include <type_traits>

#include "fp16.h"

namespace pe {

namespace {

// width bits of a code, from its bit `at`, held in bits shift.. of byte.
template <bool Write>
inline void bits(uint8_t& code, int at, uint8_t& byte, int shift, int width) {
    const int mask = (1 << width) - 1;
    if (Write)
        byte = uint8_t((byte & ~(mask << shift)) | (((code >> at) & mask) << shift));
    else
        code = uint8_t(code | (((byte >> shift) & mask) << at));
}

// The code bits of each weight of one block, read into c (zeroed first) or written from it.
template <bool W>
void place(block_q4_0& b, uint8_t* c) {
    for (int i = 0; i < QK; i++) bits<W>(c[i], 0, b.qs[i % 16], 4 * (i / 16), 4);
}
template <bool W>
void place(block_q4_1& b, uint8_t* c) {
    for (int i = 0; i < QK; i++) bits<W>(c[i], 0, b.qs[i % 16], 4 * (i / 16), 4);
}
template <bool W>
void place(block_iq4_nl& b, uint8_t* c) {
    for (int i = 0; i < QK; i++) bits<W>(c[i], 0, b.qs[i % 16], 4 * (i / 16), 4);
}
template <bool W, typename Q5>
void place_q5(Q5& b, uint8_t* c) {
    for (int i = 0; i < QK; i++) {
        bits<W>(c[i], 0, b.qs[i % 16], 4 * (i / 16), 4);
        bits<W>(c[i], 4, b.qh[i / 8], i % 8, 1);
    }
}
template <bool W>
void place(block_q5_0& b, uint8_t* c) { place_q5<W>(b, c); }
template <bool W>
void place(block_q5_1& b, uint8_t* c) { place_q5<W>(b, c); }
template <bool W>
void place(block_q8_0& b, uint8_t* c) {  // code = q + 128
    for (int i = 0; i < QK; i++) {
        if (W)
            b.qs[i] = int8_t(int(c[i]) - 128);
        else
            c[i] = uint8_t(int(b.qs[i]) + 128);
    }
}
template <bool W>
void place(block_q2_K& b, uint8_t* c) {  // weight 128h + 32k + l: bits 2k of qs[32h + l]
    for (int i = 0; i < QK_K; i++) bits<W>(c[i], 0, b.qs[32 * (i / 128) + i % 32], 2 * (i / 32 % 4), 2);
}
template <bool W>
void place(block_q3_K& b, uint8_t* c) {  // as Q2_K, the high bit in bit i / 32 of hmask[i % 32]
    for (int i = 0; i < QK_K; i++) {
        bits<W>(c[i], 0, b.qs[32 * (i / 128) + i % 32], 2 * (i / 32 % 4), 2);
        bits<W>(c[i], 2, b.hmask[i % 32], i / 32, 1);
    }
}
template <bool W>
void place(block_q4_K& b, uint8_t* c) {  // weight 64h + 32s + l: nibble s of qs[32h + l]
    for (int i = 0; i < QK_K; i++) bits<W>(c[i], 0, b.qs[32 * (i / 64) + i % 32], 4 * (i / 32 % 2), 4);
}
template <bool W>
void place(block_q5_K& b, uint8_t* c) {  // as Q4_K, bit 4 in bit i / 32 of qh[i % 32]
    for (int i = 0; i < QK_K; i++) {
        bits<W>(c[i], 0, b.qs[32 * (i / 64) + i % 32], 4 * (i / 32 % 2), 4);
        bits<W>(c[i], 4, b.qh[i % 32], i / 32, 1);
    }
}
template <bool W>
void place(block_q6_K& b, uint8_t* c) {  // 128h + 32k + l: nibble k/2 of ql[64h + l + 32(k%2)], bits 2k of qh[32h + l]
    for (int i = 0; i < QK_K; i++) {
        const int h = i / 128, k = i / 32 % 4, l = i % 32;
        bits<W>(c[i], 0, b.ql[64 * h + l + 32 * (k % 2)], 4 * (k / 2), 4);
        bits<W>(c[i], 4, b.qh[32 * h + l], 2 * k, 2);
    }
}
template <bool W>
void place(block_iq4_xs& b, uint8_t* c) {  // each 32-group as IQ4_NL's block
    for (int i = 0; i < QK_K; i++) bits<W>(c[i], 0, b.qs[16 * (i / 32) + i % 16], 4 * (i % 32 / 16), 4);
}

// The scale and offset of each weight of one block, as the reference dequantizers compute them.
void fill(float* s, float* o, int n, float scale, float offset) {
    for (int i = 0; i < n; i++) {
        s[i] = scale;
        o[i] = offset;
    }
}
void scales(const block_q4_0& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), 0.0f); }
void scales(const block_q4_1& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), fp16_to_fp32(b.m)); }
void scales(const block_q5_0& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), 0.0f); }
void scales(const block_q5_1& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), fp16_to_fp32(b.m)); }
void scales(const block_q8_0& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), 0.0f); }
void scales(const block_iq4_nl& b, float* s, float* o) { fill(s, o, QK, fp16_to_fp32(b.d), 0.0f); }
void scales(const block_q2_K& b, float* s, float* o) {
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 16; j++)
        fill(s + 16 * j, o + 16 * j, 16, d * float(b.scales[j] & 0x0f), -(dmin * float(b.scales[j] >> 4)));
}
void scales(const block_q3_K& b, float* s, float* o) {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < 16; j++) {
        const int low = (b.scales[j % 8] >> (4 * (j / 8))) & 0x0f;
        const int high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        fill(s + 16 * j, o + 16 * j, 16, d * float((low | (high << 4)) - 32), 0.0f);
    }
}
template <typename K45>
void scales_k45(const K45& b, float* s, float* o) {
    const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min_k4(j, b.scales, &sc, &m);
        fill(s + 32 * j, o + 32 * j, 32, d * float(sc), -(dmin * float(m)));
    }
}
void scales(const block_q4_K& b, float* s, float* o) { scales_k45(b, s, o); }
void scales(const block_q5_K& b, float* s, float* o) { scales_k45(b, s, o); }
void scales(const block_q6_K& b, float* s, float* o) {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < 16; j++) fill(s + 16 * j, o + 16 * j, 16, d * float(b.scales[j]), 0.0f);
}
void scales(const block_iq4_xs& b, float* s, float* o) {
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < 8; j++) {
        const int low = (b.scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
        const int high = (b.scales_h >> (2 * j)) & 3;
        fill(s + 32 * j, o + 32 * j, 32, d * float((low | (high << 4)) - 32), 0.0f);
    }
}

template <typename Block, int N>
void unpack_row(const void* row, int64_t n, uint8_t* codes, float* scale, float* offset) {
    for (int64_t ib = 0; ib < n / N; ib++) {
        Block b;
        std::memcpy(&b, static_cast<const uint8_t*>(row) + ib * sizeof(Block), sizeof(Block));
        std::memset(codes + ib * N, 0, N);
        place<false>(b, codes + ib * N);
        scales(b, scale + ib * N, offset + ib * N);
    }
}

template <typename Block, int N>
void pack_row(void* row, int64_t n, const uint8_t* codes) {
    for (int64_t ib = 0; ib < n / N; ib++) {
        Block b;
        uint8_t* at = static_cast<uint8_t*>(row) + ib * sizeof(Block);
        std::memcpy(&b, at, sizeof(Block));
        uint8_t c[QK_K];
        std::memcpy(c, codes + ib * N, N);
        place<true>(b, c);
        std::memcpy(at, &b, sizeof(Block));
    }
}

// The level tables: consecutive integers from a first level, or IQ4's.
struct Levels {
    int16_t values[256];
    int count;
    Levels(int first, int n) : count(n) {
        for (int c = 0; c < n; c++) values[c] = int16_t(first + c);
    }
    explicit Levels(const int8_t* table) : count(16) {
        for (int c = 0; c < 16; c++) values[c] = table[c];
    }
};

template <typename F>
bool dispatch(GGMLType type, F&& f) {
    switch (type) {
        case TYPE_Q4_0: f(block_q4_0{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_Q4_1: f(block_q4_1{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_Q5_0: f(block_q5_0{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_Q5_1: f(block_q5_1{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_Q8_0: f(block_q8_0{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_IQ4_NL: f(block_iq4_nl{}, std::integral_constant<int, QK>{}); return true;
        case TYPE_Q2_K: f(block_q2_K{}, std::integral_constant<int, QK_K>{}); return true;
        case TYPE_Q3_K: f(block_q3_K{}, std::integral_constant<int, QK_K>{}); return true;
        case TYPE_Q4_K: f(block_q4_K{}, std::integral_constant<int, QK_K>{}); return true;
        case TYPE_Q5_K: f(block_q5_K{}, std::integral_constant<int, QK_K>{}); return true;
        case TYPE_Q6_K: f(block_q6_K{}, std::integral_constant<int, QK_K>{}); return true;
        case TYPE_IQ4_XS: f(block_iq4_xs{}, std::integral_constant<int, QK_K>{}); return true;
        default: return false;
    }
}

}  // namespace

int code_levels(GGMLType type, const int16_t** levels) {
    static const Levels q4_0(-8, 16), q4_1(0, 16), q5_0(-16, 32), q5_1(0, 32), q8_0(-128, 256), q2_K(0, 4),
        q3_K(-4, 8), q6_K(-32, 64), iq4(kIQ4NLValues);
    const Levels* l = nullptr;
    switch (type) {
        case TYPE_Q4_0: l = &q4_0; break;
        case TYPE_Q4_1: case TYPE_Q4_K: l = &q4_1; break;
        case TYPE_Q5_0: l = &q5_0; break;
        case TYPE_Q5_1: case TYPE_Q5_K: l = &q5_1; break;
        case TYPE_Q8_0: l = &q8_0; break;
        case TYPE_Q2_K: l = &q2_K; break;
        case TYPE_Q3_K: l = &q3_K; break;
        case TYPE_Q6_K: l = &q6_K; break;
        case TYPE_IQ4_NL: case TYPE_IQ4_XS: l = &iq4; break;
        default: return 0;
    }
    *levels = l->values;
    return l->count;
}

void unpack_codes(GGMLType type, const void* row, int64_t n, uint8_t* codes, float* scale, float* offset) {
    dispatch(type, [&](auto block, auto size) {
        unpack_row<decltype(block), decltype(size)::value>(row, n, codes, scale, offset);
    });
}

void pack_codes(GGMLType type, void* row, int64_t n, const uint8_t* codes) {
    dispatch(type, [&](auto block, auto size) { pack_row<decltype(block), decltype(size)::value>(row, n, codes); });
}

}  // namespace pe
