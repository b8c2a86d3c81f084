// The packed kernels of the x86 tables: the layouts (8 rows interleaved block by block), their pack
// functions, each format's load() and term() steps and the loops that drive them (packed_nt,
// packed_dot, packed_dot_pair). One source, built twice: by avx2.cpp with the AVX2 flags, and by
// avx512_packed.cpp with AVX-512 VL and VNNI as well, where the integer dots take vpdpbusd (one
// instruction for maddubs, the int16 pair sums and their widening) and the compiler has 32 vector
// registers. The integer sums are exact either way and the float steps are the same, so both builds
// give the scalar reference's bits. Include only from a unit built with (at least) -mavx2 -mfma
// -mf16c, or with PE_SIMDE (the kernel test's portable build of avx512_packed.cpp): like
// avx2_common.h, everything here is in an anonymous namespace.
#pragma once

#if defined(PE_SIMDE)
#include "../tests/simde_avx512.h"
#else
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../quant/blocks.h"
#include "avx2_common.h"
#include "kernels.h"

// PE_PACKED_VNNI: the unit's integer dots take VNNI (set by avx512_packed.cpp before it includes this).
#if !defined(PE_PACKED_VNNI)
#define PE_PACKED_VNNI 0
#endif

namespace pe {
namespace {

// ---- Packed weights: 8 rows interleaved, one row per vector lane ----
//
// A packed group holds block i of 8 rows together, in runs of 32 bytes: run k holds bytes 4k .. 4k+3
// of rows 0..7, row r in the 32-bit lane r. One 32-byte load thus holds 4 bytes of every row; against
// 4 activation bytes broadcast to the 8 lanes, maddubs leaves each row two int16 pair sums in its
// lane, and the madd that widens them one int32: the rows' exact integer dots come out in row order,
// with no horizontal step. Every output then takes the scalar reference's operations, in its order:
// exact integer block dots, the block's float(isum) * (d_w * d_x) (+ m * s for Q4_1, Q5_1) added to the
// sum block by block. So packed results are bit-identical to ref::vec_dot_* on the unpacked row.
//
// The super-block formats further down (Q4_K ...) keep runs of 8 bytes of 4 rows: two int32 per row,
// joined by one hadd per super-block, which leaves the lanes holding rows 0 1 4 5 2 3 6 7 (kLaneRow).
constexpr int kLaneRow[8] = {0, 1, 4, 5, 2, 3, 6, 7};

struct block_q4_0x8 {
    uint16_t d[8];  // scales, rows 0..7
    uint8_t qs[128];
};
static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0), "packing must not change the size");

struct block_q4_1x8 {
    uint16_t d[8];  // scales, rows 0..7
    uint16_t m[8];  // minimums, rows 0..7
    uint8_t qs[128];
};
static_assert(sizeof(block_q4_1x8) == 8 * sizeof(block_q4_1), "packing must not change the size");

template <typename Block>
inline const Block& row_block(const uint8_t* w, size_t stride, int row, int i) {
    return reinterpret_cast<const Block*>(w + size_t(row) * stride)[i];
}

template <typename T, typename = void>
struct HasMin : std::false_type {};
template <typename T>
struct HasMin<T, std::void_t<decltype(T::m)>> : std::true_type {};

// Block i of 8 rows into a packed block: the scales (and minimums) in row order, the quant bytes in
// runs of 32 (run k: bytes 4k .. 4k+3 of row r at 4r).
template <typename Block, typename Packed>
inline void pack_rows(const uint8_t* w, size_t stride, int i, Packed& o) {
    for (int r = 0; r < 8; r++) {
        const Block& b = row_block<Block>(w, stride, r, i);
        o.d[r] = b.d;
        if constexpr (HasMin<Packed>::value) o.m[r] = b.m;
        for (int k = 0; k < int(sizeof(b.qs)) / 4; k++) std::memcpy(o.qs + 32 * k + 4 * r, b.qs + 4 * k, 4);
    }
}

template <typename Block, typename Packed>
void pack_blocks(int n, const void* vw, size_t stride, void* out) {
    for (int i = 0; i < n / QK; i++)
        pack_rows<Block>(static_cast<const uint8_t*>(vw), stride, i, static_cast<Packed*>(out)[i]);
}

// The 8 nibble vectors of a packed group's block: u[2k] low nibbles (weights 4k + j of each row),
// u[2k+1] high nibbles (weights 16 + 4k + j) of run k.
inline void unpack_group(const uint8_t* qs, __m256i (&u)[8]) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    for (int k = 0; k < 4; k++) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * k));
        u[2 * k] = _mm256_and_si256(v, mask);
        u[2 * k + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
}

// The first of the 4 weights (and activation bytes) behind unpack_group's vector m in each row:
// 4k for the low nibbles of run k = m / 2, 16 + 4k for its high ones.
constexpr int nibble_weight(int m) { return 4 * (m / 2) + 16 * (m % 2); }

inline __m256i broadcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

inline __m256i broadcast8(const int8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
}

#if PE_PACKED_VNNI
// The 8 bytes at p in every 64-bit quarter of a 512-bit vector (broadcast8, twice as wide).
inline __m512i broadcast8_512(const int8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
}

// A 512-bit vector of int32 lanes, two per row (rows 0-3 | rows 4-7), joined by one hadd: each row's
// sum in kLaneRow order, as the 256-bit steps' hadd of acc03 and acc47 leaves it.
inline __m256i hadd_halves(__m512i acc) {
    return _mm256_hadd_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
}
#endif

// Unpacked vector m against its 4 activation bytes (those of unpack_group's weights), int16 pairs.
inline __m256i mul_nibbles(const __m256i (&u)[8], const int8_t* y, int m) {
    return _mm256_maddubs_epi16(u[m], broadcast4(y + nibble_weight(m)));
}

// int16 sum of the pair sums of unpacked vectors m0 .. m0+3 (levels 0..31: below 4 * 2 * 31 * 128).
inline __m256i sum4_nibbles(const __m256i (&u)[8], const int8_t* y, int m0) {
    return _mm256_add_epi16(_mm256_add_epi16(mul_nibbles(u, y, m0), mul_nibbles(u, y, m0 + 1)),
                            _mm256_add_epi16(mul_nibbles(u, y, m0 + 2), mul_nibbles(u, y, m0 + 3)));
}

// acc + the int32 lane sums of u's unsigned bytes times y's signed ones (4 products a lane). AVX2's
// maddubs saturates each pair of products to int16, so there the callers keep pairs below 2^15
// (sign-trick magnitudes <= 128 against |y| <= 127); VNNI's vpdpbusd never saturates.
inline __m256i dot_u8_acc(__m256i acc, __m256i u, __m256i y) {
#if PE_PACKED_VNNI
    return _mm256_dpbusd_epi32(acc, u, y);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1)));
#endif
}

// acc + madd(a, b): the int16 products summed in pairs into int32 lanes (VNNI: vpdpwssd).
inline __m256i madd_acc(__m256i acc, __m256i a, __m256i b) {
#if PE_PACKED_VNNI
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// Exact integer dots of the 8 rows' levels (0..15 for Q4_0, Q4_1; 0..31 for Q5_0, Q5_1) with 32 int8
// activations. AVX2: the 8 maddubs add up in int16 (levels 0..15: below 8 * 2 * 15 * 128 = 30720),
// widened once, or for levels 0..31 in two sums of 4 (below 4 * 2 * 31 * 128), each widened. VNNI:
// two chains of four vpdpbusd.
inline __m256i dot_group(const __m256i (&u)[8], const int8_t* y) {
#if PE_PACKED_VNNI
    __m256i a = _mm256_setzero_si256(), b = a;
    for (int m = 0; m < 8; m += 2) {
        a = _mm256_dpbusd_epi32(a, u[m], broadcast4(y + nibble_weight(m)));
        b = _mm256_dpbusd_epi32(b, u[m + 1], broadcast4(y + nibble_weight(m + 1)));
    }
    return _mm256_add_epi32(a, b);
#else
    return _mm256_madd_epi16(_mm256_add_epi16(sum4_nibbles(u, y, 0), sum4_nibbles(u, y, 4)), _mm256_set1_epi16(1));
#endif
}

inline __m256i dot_group5(const __m256i (&u)[8], const int8_t* y) {
#if PE_PACKED_VNNI
    return dot_group(u, y);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    return _mm256_add_epi32(_mm256_madd_epi16(sum4_nibbles(u, y, 0), ones), _mm256_madd_epi16(sum4_nibbles(u, y, 4), ones));
#endif
}

#if PE_PACKED_VNNI
// ---- Two groups a pass (VNNI build): the 32-block formats' blocks of two adjacent packed groups side
// by side in 512-bit vectors, group a's 8 rows in the lower half and b's in the upper. Each activation
// broadcast and each vpdpbusd then serves 16 rows, and the float step runs on 16 lanes, each lane
// taking the 8-lane step's operations: the same bits as two passes over one group. A format gives
// levels512(a, b, u), its 8 vectors of unsigned levels in unpack_group's order (vector m against the
// 4 activation bytes at nibble_weight(m)), and kLevelOffset, the offset subtracted as
// kLevelOffset * (sum of the activation block); a minimum (Q4_1, Q5_1) comes with its block's m.

inline __m512i join_runs(const void* a, const void* b) {
    return join512(_mm256_loadu_si256(static_cast<const __m256i*>(a)), _mm256_loadu_si256(static_cast<const __m256i*>(b)));
}

// unpack_group's vectors of two groups: group a's in the lower halves.
inline void unpack_two(const uint8_t* qa, const uint8_t* qb, __m512i (&u)[8]) {
    const __m512i mask = _mm512_set1_epi8(0x0f);
    for (int k = 0; k < 4; k++) {
        const __m512i v = join_runs(qa + 32 * k, qb + 32 * k);
        u[2 * k] = _mm512_and_si512(v, mask);
        u[2 * k + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    }
}

// The 16 rows' fp16 values (group a's 8, then b's) as floats.
inline __m512 cvt_two(const uint16_t* a, const uint16_t* b) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

inline __m512i broadcast4_512(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// dot_group on 16 rows: two chains of four vpdpbusd.
inline __m512i dot_group512(const __m512i (&u)[8], const int8_t* y) {
    __m512i a = _mm512_setzero_si512(), b = a;
    for (int m = 0; m < 8; m += 2) {
        a = _mm512_dpbusd_epi32(a, u[m], broadcast4_512(y + nibble_weight(m)));
        b = _mm512_dpbusd_epi32(b, u[m + 1], broadcast4_512(y + nibble_weight(m + 1)));
    }
    return _mm512_add_epi32(a, b);
}

// unpack_group5 on two groups: the fifth bits of vector m at bit m of the joined qh bytes.
template <size_t... m>
inline void or_fifth_bits(__m512i h, __m512i (&u)[8], std::index_sequence<m...>) {
    const __m512i b4 = _mm512_set1_epi8(0x10);
    ((u[m] = _mm512_or_si512(u[m], _mm512_and_si512(m <= 4 ? _mm512_slli_epi16(h, 4 - int(m)) : _mm512_srli_epi16(h, int(m) - 4), b4))), ...);
}

#endif

// acc + signed levels q (magnitudes aq) against 4 activation bytes: |q| times y with q's sign (the
// sign trick of dot_i8), each pair sum (up to 2 * 128 * 127) widened to int32 at once.
inline __m256i dot_signed(__m256i acc, __m256i q, __m256i aq, const int8_t* y) {
    return dot_u8_acc(acc, aq, _mm256_sign_epi8(broadcast4(y), q));
}

// Lanes in kLaneRow order -> rows 0..7 (the permutation is its own inverse).
inline void store_rows(float* y, __m256 acc) {
    _mm256_storeu_ps(y, _mm256_permutevar8x32_ps(acc, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)));
}

// A 32-block's float step on the 8 lanes, the reference's: float(isum) * (d_w * d_x), d_x at xs.
inline __m256 block_term(__m256i isum, __m256 d, const float* xs) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_broadcast_ss(xs)));
}

struct block_q8_0x8 {
    uint16_t d[8];  // scales, rows 0..7
    int8_t qs[256];  // runs of 32: bytes 4k .. 4k+3 of rows 0..7, for k = 0 .. 7
};
static_assert(sizeof(block_q8_0x8) == 8 * sizeof(block_q8_0), "packing must not change the size");

// The packed formats as steps of one loop: Unpacked is what load() makes of a packed block (shared
// by every token of a pass), term() the float vector that one activation block adds to the 8 lane
// accumulators: float(isum) * (d_w * d_x), plus m * s for Q4_1, exactly the reference's. kRowOrder:
// the lanes are rows 0..7 (else kLaneRow's order); kXSums: term() reads the activation block's sum.
struct PackedQ4_0 {
    static constexpr bool kRowOrder = true, kXSums = true;
    static constexpr int kLevelOffset = 8;  // the level is q - 8
    using Block = block_q4_0x8;
    using XBlock = block_q8_0;
    struct Unpacked {
        __m256i u[8];
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group(w.qs, p.u);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t xsum, const float* xs) {
        // sum (q - 8) y = sum q y - 8 sum y, exactly
        const __m256i isum = _mm256_sub_epi32(dot_group(w.u, x.qs), _mm256_set1_epi32(kLevelOffset * xsum));
        return block_term(isum, w.d, xs);
    }
#if PE_PACKED_VNNI
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) { unpack_two(a.qs, b.qs, u); }
#endif
};

struct PackedQ4_1 {
    static constexpr bool kRowOrder = true, kXSums = false;
    static constexpr int kLevelOffset = 0;
    using Block = block_q4_1x8;
    using XBlock = block_q8_1;
    struct Unpacked {
        __m256i u[8];
        __m256 d, m;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group(w.qs, p.u);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        p.m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.m)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float* xs) {
        return _mm256_add_ps(block_term(dot_group(w.u, x.qs), w.d, xs),
                             _mm256_mul_ps(w.m, _mm256_broadcast_ss(xs + 1)));
    }
#if PE_PACKED_VNNI
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) { unpack_two(a.qs, b.qs, u); }
#endif
};

// VNNI: the weights + 128 (q ^ 0x80: 0..255) as unsigned bytes, whose products with the activations
// vpdpbusd sums without saturation, and 128 * (sum of the activation block) subtracted from the exact
// integer sum, as Q4_0 does with its 8 (so the activation sums are read). AVX2's maddubs would
// saturate such pairs (2 * 255 * 127 > 32767): it keeps the sign trick.
struct PackedQ8_0 {
    static constexpr bool kRowOrder = true, kXSums = PE_PACKED_VNNI;
    using Block = block_q8_0x8;
    using XBlock = block_q8_0;
#if PE_PACKED_VNNI
    static constexpr int kLevelOffset = 128;
    struct Unpacked {
        __m256i u[8];  // run k: weights 4k .. 4k+3 of each row, + 128
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        for (int k = 0; k < 8; k++)
            p.u[k] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * k)),
                                      _mm256_set1_epi8(char(0x80)));
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t xsum, const float* xs) {
        __m256i a = _mm256_setzero_si256(), b = a;
        for (int k = 0; k < 8; k += 2) {
            a = _mm256_dpbusd_epi32(a, w.u[k], broadcast4(x.qs + 4 * k));
            b = _mm256_dpbusd_epi32(b, w.u[k + 1], broadcast4(x.qs + 4 * k + 4));
        }
        // sum (u - 128) y = sum u y - 128 sum y, exactly
        const __m256i isum = _mm256_sub_epi32(_mm256_add_epi32(a, b), _mm256_set1_epi32(kLevelOffset * xsum));
        return block_term(isum, w.d, xs);
    }
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) {
        for (int m = 0; m < 8; m++) {
            const int run = nibble_weight(m) / 4;
            u[m] = _mm512_xor_si512(join_runs(a.qs + 32 * run, b.qs + 32 * run), _mm512_set1_epi8(char(0x80)));
        }
    }
#else
    struct Unpacked {
        const int8_t* qs;  // 8 vectors: loaded again per token (L1), fewer registers held
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        return {w.qs, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)))};
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float* xs) {
        __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int k = 0; k < 8; k++) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * k));
            isum[k % 2] = dot_signed(isum[k % 2], q, _mm256_sign_epi8(q, q), x.qs + 4 * k);
        }
        return block_term(_mm256_add_epi32(isum[0], isum[1]), w.d, xs);
    }
#endif
};

// ---- Q5_0, Q5_1: the nibbles packed as Q4_0's, and the fifth bits as one 32-byte vector per block:
// bit m of its byte p is the fifth bit of the weight at byte p of unpack_group's vector u[m], so
// one shift and one mask per vector move it to bit 4 (levels 0..31; dot_group5). Q5_0's level is
// q - 16: as for Q4_0 the offset's part is subtracted from the exact integer sum, 16 * (sum of the
// activation block).
struct block_q5_0x8 {
    uint16_t d[8];    // scales, rows 0..7
    uint8_t qh[32];   // fifth bits, as above
    uint8_t qs[128];  // nibbles, as block_q4_0x8's
};
static_assert(sizeof(block_q5_0x8) == 8 * sizeof(block_q5_0), "packing must not change the size");

struct block_q5_1x8 {
    uint16_t d[8];  // scales, rows 0..7
    uint16_t m[8];  // minimums, rows 0..7
    uint8_t qh[32];
    uint8_t qs[128];
};
static_assert(sizeof(block_q5_1x8) == 8 * sizeof(block_q5_1), "packing must not change the size");

// Block i of 8 rows: pack_rows, and the fifth bits laid out for unpack_group's vectors: bit m of byte
// p belongs to row p / 4, weight nibble_weight(m) + p % 4.
template <typename Block, typename Packed>
void pack_blocks5(int n, const void* vw, size_t stride, void* out) {
    const auto* w = static_cast<const uint8_t*>(vw);
    for (int i = 0; i < n / QK; i++) {
        Packed& o = static_cast<Packed*>(out)[i];
        pack_rows<Block>(w, stride, i, o);
        std::memset(o.qh, 0, sizeof(o.qh));
        for (int p = 0; p < 32; p++) {
            uint32_t bits;
            std::memcpy(&bits, row_block<Block>(w, stride, p / 4, i).qh, 4);
            for (int m = 0; m < 8; m++) o.qh[p] = uint8_t(o.qh[p] | ((bits >> (nibble_weight(m) + p % 4)) & 1u) << m);
        }
    }
}

// Bit m of every byte of v, moved to bit 4, the others cleared (a 16-bit shift keeps each byte's
// bit 4 from the same byte, both positions being in 0..7).
template <int m>
inline __m256i bit_to_4(__m256i v) {
    const __m256i moved = m <= 4 ? _mm256_slli_epi16(v, 4 - m) : _mm256_srli_epi16(v, m - 4);
    return _mm256_and_si256(moved, _mm256_set1_epi8(0x10));
}

// unpack_group's 8 nibble vectors with their fifth bits: levels 0..31.
inline void unpack_group5(const uint8_t* qs, const uint8_t* qh, __m256i (&u)[8]) {
    unpack_group(qs, u);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
    u[0] = _mm256_or_si256(u[0], bit_to_4<0>(h));
    u[1] = _mm256_or_si256(u[1], bit_to_4<1>(h));
    u[2] = _mm256_or_si256(u[2], bit_to_4<2>(h));
    u[3] = _mm256_or_si256(u[3], bit_to_4<3>(h));
    u[4] = _mm256_or_si256(u[4], bit_to_4<4>(h));
    u[5] = _mm256_or_si256(u[5], bit_to_4<5>(h));
    u[6] = _mm256_or_si256(u[6], bit_to_4<6>(h));
    u[7] = _mm256_or_si256(u[7], bit_to_4<7>(h));
}

struct PackedQ5_0 {
    static constexpr bool kRowOrder = true, kXSums = true;
    static constexpr int kLevelOffset = 16;  // the level is q - 16
    using Block = block_q5_0x8;
    using XBlock = block_q8_0;
    struct Unpacked {
        __m256i u[8];
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group5(w.qs, w.qh, p.u);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t xsum, const float* xs) {
        // sum (q - 16) y = sum q y - 16 sum y, exactly
        const __m256i isum = _mm256_sub_epi32(dot_group5(w.u, x.qs), _mm256_set1_epi32(kLevelOffset * xsum));
        return block_term(isum, w.d, xs);
    }
#if PE_PACKED_VNNI
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) {
        unpack_two(a.qs, b.qs, u);
        or_fifth_bits(join_runs(a.qh, b.qh), u, std::make_index_sequence<8>());
    }
#endif
};

struct PackedQ5_1 {
    static constexpr bool kRowOrder = true, kXSums = false;
    static constexpr int kLevelOffset = 0;
    using Block = block_q5_1x8;
    using XBlock = block_q8_1;
    struct Unpacked {
        __m256i u[8];
        __m256 d, m;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group5(w.qs, w.qh, p.u);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        p.m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.m)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float* xs) {
        return _mm256_add_ps(block_term(dot_group5(w.u, x.qs), w.d, xs),
                             _mm256_mul_ps(w.m, _mm256_broadcast_ss(xs + 1)));
    }
#if PE_PACKED_VNNI
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) {
        unpack_two(a.qs, b.qs, u);
        or_fifth_bits(join_runs(a.qh, b.qh), u, std::make_index_sequence<8>());
    }
#endif
};

// ---- IQ4_NL: the nibbles packed as Q4_0's; load() looks the int8 levels up (pshufb on the 16 levels
// in both 128-bit lanes), and the levels (-127 .. 113) take the signed path of PackedQ8_0.
struct block_iq4_nlx8 {
    uint16_t d[8];  // scales, rows 0..7
    uint8_t qs[128];
};
static_assert(sizeof(block_iq4_nlx8) == 8 * sizeof(block_iq4_nl), "packing must not change the size");

struct PackedIQ4_NL {
    // VNNI: the levels + 128 (1..241) as unsigned bytes against the activations, minus 128 * (sum of the
    // activation block), as PackedQ8_0's; AVX2: the signed levels with the sign trick.
    static constexpr bool kRowOrder = true, kXSums = PE_PACKED_VNNI;
    using Block = block_iq4_nlx8;
    using XBlock = block_q8_0;
#if PE_PACKED_VNNI
    static constexpr int kLevelOffset = 128;
    struct Unpacked {
        __m256i u[8];  // unpack_group's vectors, as levels + 128
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group(w.qs, p.u);
        const __m256i table = _mm256_xor_si256(
            _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues))),
            _mm256_set1_epi8(char(0x80)));
        for (int m = 0; m < 8; m++) p.u[m] = _mm256_shuffle_epi8(table, p.u[m]);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t xsum, const float* xs) {
        const __m256i isum = _mm256_sub_epi32(dot_group(w.u, x.qs), _mm256_set1_epi32(kLevelOffset * xsum));
        return block_term(isum, w.d, xs);
    }
    static void levels512(const Block& a, const Block& b, __m512i (&u)[8]) {
        unpack_two(a.qs, b.qs, u);
        const __m512i table = _mm512_xor_si512(
            _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues))),
            _mm512_set1_epi8(char(0x80)));
        for (int m = 0; m < 8; m++) u[m] = _mm512_shuffle_epi8(table, u[m]);
    }
#else
    struct Unpacked {
        __m256i q[8];   // the signed levels of unpack_group's vectors
        __m256i aq[8];  // their magnitudes: the sign trick's weight half, once per block, not per token
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        unpack_group(w.qs, p.q);
        const __m256i table =
            _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
        for (int m = 0; m < 8; m++) {
            p.q[m] = _mm256_shuffle_epi8(table, p.q[m]);
            p.aq[m] = _mm256_sign_epi8(p.q[m], p.q[m]);
        }
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float* xs) {
        __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int m = 0; m < 8; m++)  // unpack_group's vector m against its activation bytes
            isum[m % 2] = dot_signed(isum[m % 2], w.q[m], w.aq[m], x.qs + nibble_weight(m));
        return block_term(_mm256_add_epi32(isum[0], isum[1]), w.d, xs);
    }
#endif
};

#if PE_PACKED_VNNI
// The 16-lane step of a 32-block format F (two groups a pass, above).
template <typename F>
struct PackedTwo {
    static constexpr int kGroups = 2;  // load(a, b): group a's block and group b's
    static constexpr bool kRowOrder = true, kXSums = F::kXSums;
    static_assert(F::kRowOrder, "the 16 lanes are the two groups' rows in order");
    using Block = typename F::Block;
    using XBlock = typename F::XBlock;
    static constexpr bool kMin = HasMin<Block>::value;
    struct Unpacked {
        __m512i u[8];
        __m512 d, m;
    };
    static Unpacked load(const Block& a, const Block& b) {
        Unpacked p;
        F::levels512(a, b, p.u);
        p.d = cvt_two(a.d, b.d);
        if constexpr (kMin) p.m = cvt_two(a.m, b.m);
        return p;
    }
    // F::term's operations on 16 lanes.
    static __m512 term(const Unpacked& w, const XBlock& x, int32_t xsum, const float* xs) {
        __m512i isum = dot_group512(w.u, x.qs);
        if constexpr (F::kLevelOffset != 0) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(F::kLevelOffset * xsum));
        const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(w.d, _mm512_set1_ps(xs[0])));
        if constexpr (kMin) return _mm512_add_ps(t, _mm512_mul_ps(w.m, _mm512_set1_ps(xs[1])));
        return t;
    }
};

#endif

// ---- Q4_K: 8 rows' super-blocks interleaved. Per lane (row) the exact integer sums of the reference,
// isum = sum_j sc_j * (sum of q * y over sub-block j) and msum = sum_j m_j * (sum of y over it), then
// its float step (d * dx) * float(isum) - (dmin * dx) * float(msum) on 8 lanes (ref::k_superblock_term's
// operations, no FMA), added to the lane's sum super-block by super-block: bit-identical to
// ref::vec_dot_q4_K_q8_K on the unpacked row.
//
// The nibbles: per 32-byte chunk h of every row (weights 64h + l in the low nibbles: sub-block 2h;
// 64h + 32 + l in the high ones: sub-block 2h + 1), runs of 32 bytes: bytes 8c .. 8c+7 of rows 0-3,
// then of rows 4-7, for c = 0 .. 3 (as block_q8_0x8's). AVX2: four maddubs of one sub-block add up in
// int16 below 4 * 2 * 15 * 127 = 15240; the madd that widens them multiplies by the sub-block's scale
// (the VNNI build sums in int32 lanes: isum512).
// The 6-bit scales and minimums (64 each) are stored as 64 bytes' low nibbles (32 bytes) and high
// two bits (16 bytes), in the order that one pshufb makes the madd multipliers of: byte b of the
// 32-byte vector of sub-blocks 4v .. 4v+3 (128-bit lane L = b / 16) is sub-block 4v + (b % 16) / 4
// of row kLaneRow[4 L + b % 4].
struct block_q4_Kx8 {
    uint16_t d[8];     // in kLaneRow order
    uint16_t dmin[8];  // in kLaneRow order
    uint8_t sc_lo[32], sc_hi[16];
    uint8_t m_lo[32], m_hi[16];
    uint8_t qs[1024];
};
static_assert(sizeof(block_q4_Kx8) == 8 * sizeof(block_q4_K), "packing must not change the size");

// 64 six-bit values v[0..63] -> lo (v[b] & 15 | (v[b + 32] & 15) << 4) and hi (bits 4-5 of v[b],
// v[b + 16], v[b + 32], v[b + 48] in bits 0-1, 2-3, 4-5, 6-7 of byte b).
inline void pack6(const uint8_t (&v)[64], uint8_t* lo, uint8_t* hi) {
    for (int b = 0; b < 32; b++) lo[b] = uint8_t((v[b] & 15) | (v[b + 32] & 15) << 4);
    for (int b = 0; b < 16; b++)
        hi[b] = uint8_t((v[b] >> 4) | (v[b + 16] >> 4) << 2 | (v[b + 32] >> 4) << 4 | (v[b + 48] >> 4) << 6);
}

// The inverse: the 64 bytes as two vectors (values 0..31, 32..63).
inline void unpack6(const uint8_t* lo, const uint8_t* hi, __m256i (&v)[2]) {
    const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
    const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)));
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    const __m256i h0 = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)), m2);
    const __m256i h1 = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)), m2);
    v[0] = _mm256_or_si256(_mm256_and_si256(l, m4), _mm256_slli_epi16(h0, 4));
    v[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l, 4), m4), _mm256_slli_epi16(h1, 4));
}

void pack_q4_K(int n, const void* vw, size_t stride, void* out) {
    const auto* w = static_cast<const uint8_t*>(vw);
    auto* o = static_cast<block_q4_Kx8*>(out);
    for (int i = 0; i < n / QK_K; i++) {
        uint8_t sc[64], mn[64];
        for (int b = 0; b < 64; b++) {
            const int v = b / 32, lane = (b % 32) / 16, j = 4 * v + (b % 16) / 4;
            const int row = kLaneRow[4 * lane + b % 4];
            get_scale_min_k4(j, row_block<block_q4_K>(w, stride, row, i).scales, &sc[b], &mn[b]);
        }
        pack6(sc, o[i].sc_lo, o[i].sc_hi);
        pack6(mn, o[i].m_lo, o[i].m_hi);
        for (int l = 0; l < 8; l++) {
            o[i].d[l] = row_block<block_q4_K>(w, stride, kLaneRow[l], i).d;
            o[i].dmin[l] = row_block<block_q4_K>(w, stride, kLaneRow[l], i).dmin;
        }
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 4; c++)
                for (int group = 0; group < 2; group++)
                    for (int j = 0; j < 4; j++)
                        std::memcpy(o[i].qs + 256 * h + (c * 2 + group) * 32 + j * 8,
                                    row_block<block_q4_K>(w, stride, group * 4 + j, i).qs + 32 * h + 8 * c, 8);
    }
}

// pshufb control picking, per 64-bit quarter Q of each 128-bit lane, byte `base + Q` as 4 int16.
inline __m256i quarter_pick16(int base) {
    const auto q = [](int b) { return int64_t(0x8000800080008000ull | (uint64_t(b) * 0x0001000100010001ull)); };
    return _mm256_setr_epi64x(q(base), q(base + 1), q(base), q(base + 1));
}

// The same, byte `base + Q` as 2 int32: an int16 multiplier with a zero int16 above it.
inline __m256i quarter_pick32(int base) {
    const auto q = [](int b) { return int64_t(0x8080800080808000ull | (uint64_t(b) * 0x0000000100000001ull)); };
    return _mm256_setr_epi64x(q(base), q(base + 1), q(base), q(base + 1));
}

// The int16 pairs of sub-blocks 2v and 2v + 1 of every row, from unpack6's vector of sub-blocks
// 4(v / 2) .. 4(v / 2) + 3: int32 lane l holds (value of 2v, value of 2v + 1) of row kLaneRow[l]
// (int32 element e of each 128-bit lane: bytes (2v % 4) * 4 + e and (2v % 4 + 1) * 4 + e).
inline __m256i sub_block_pairs(__m256i v6, int v) {
    const int a = (2 * v) % 4 * 4, b = a + 4;
    const __m128i ctl = _mm_setr_epi8(char(a), char(0x80), char(b), char(0x80), char(a + 1), char(0x80), char(b + 1),
                                      char(0x80), char(a + 2), char(0x80), char(b + 2), char(0x80), char(a + 3),
                                      char(0x80), char(b + 3), char(0x80));
    return _mm256_shuffle_epi8(v6, _mm256_broadcastsi128_si256(ctl));
}

// Per lane sum_j c_j * ys_j over the 8 sub-blocks of 32, ys_j = bsums[2j] + bsums[2j + 1] (|.| <=
// 4064: exact in int16), with c's pairs as sub_block_pairs leaves them (pair v in pairs[v]).
inline __m256i dot_sub_block_sums(const __m256i (&pairs)[4], const block_q8_K& x) {
    const __m128i ys = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums)),
                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums + 8)));
    const __m256i ys2 = _mm256_broadcastsi128_si256(ys);  // pair v in int32 element v
    __m256i sum = _mm256_madd_epi16(pairs[0], _mm256_shuffle_epi32(ys2, 0x00));
    sum = madd_acc(sum, pairs[1], _mm256_shuffle_epi32(ys2, 0x55));
    sum = madd_acc(sum, pairs[2], _mm256_shuffle_epi32(ys2, 0xaa));
    return madd_acc(sum, pairs[3], _mm256_shuffle_epi32(ys2, 0xff));
}

// ref::k_superblock_term's float step for the formats without minimums (Q6_K, IQ4_XS), as the
// reference calls it: (d * dx) * float(isum) - (0 * dx) * float(0), on 8 lanes.
inline __m256 k_term_no_min(__m256 d, const block_q8_K& x, __m256i isum) {
    const __m256 dx = _mm256_set1_ps(x.d), zero = _mm256_setzero_ps();
    return _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(isum)),
                         _mm256_mul_ps(_mm256_mul_ps(zero, dx), zero));
}

// Sub-block j's int16 madd multipliers for all 8 rows, in the form the unit's steps read them: two
// 256-bit vectors (rows 0-3 | rows 4-7, a row per 64-bit quarter) in the AVX2 build, one 512-bit
// vector holding both halves in the VNNI build. fill() picks them from the scale vectors sc (sub-
// blocks 4v .. 4v+3 in sc[v]) with the pshufb controls ctl(4 (j % 4)) and ctl(4 (j % 4) + 2), then op.
// The VNNI build picks both halves with one 512-bit pshufb: where the 512-bit steps joined two 256-bit
// halves per sub-block instead, the one-token Q4_K and Q6_K kernels ran ~10% slower (cache-resident).
template <int N>
struct SubBlockMultipliers {
#if PE_PACKED_VNNI
    __m512i v[N];
    __m512i both(int j) const { return v[j]; }
    __m256i rows03(int j) const { return _mm512_castsi512_si256(v[j]); }
    __m256i rows47(int j) const { return _mm512_extracti64x4_epi64(v[j], 1); }
    template <typename Ctl, typename Op>
    void fill(const __m256i* sc, Ctl ctl, Op op) {
#pragma GCC unroll 16  // the controls are then constants
        for (int j = 0; j < N; j++)
            v[j] = op(_mm512_shuffle_epi8(_mm512_broadcast_i64x4(sc[j / 4]),
                                          join512(ctl(4 * (j % 4)), ctl(4 * (j % 4) + 2))));
    }
#else
    __m256i v03[N], v47[N];
    __m256i rows03(int j) const { return v03[j]; }
    __m256i rows47(int j) const { return v47[j]; }
    template <typename Ctl, typename Op>
    void fill(const __m256i* sc, Ctl ctl, Op op) {
#pragma GCC unroll 16
        for (int j = 0; j < N; j++) {
            v03[j] = op(_mm256_shuffle_epi8(sc[j / 4], ctl(4 * (j % 4))));
            v47[j] = op(_mm256_shuffle_epi8(sc[j / 4], ctl(4 * (j % 4) + 2)));
        }
    }
#endif
};

#if PE_PACKED_VNNI
struct PackedQ4_KBatch;
#endif

struct PackedQ4_K {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
#if PE_PACKED_VNNI
    // Passes of several tokens take PackedQ4_KBatch in the VNNI build (~8% faster there). The AVX2
    // build keeps these steps, 4 tokens a pass: its PackedQ4_KBatch (the nibbles split once into 64
    // vectors in L1) ran 1.35x slower on a Zen 3 (2048x2048, 8 tokens, cache-resident: 47 against 63
    // G multiply-adds/s), and a 1.1B Q4_K_M prompt with it 1.2x slower.
    using Batch = PackedQ4_KBatch;
#endif
    using Block = block_q4_Kx8;
    using XBlock = block_q8_K;
    struct Unpacked {
        const uint8_t* qs;
        SubBlockMultipliers<8> sc;
        __m256i m[4];              // int32 lane l: the int16 pair (m_2v, m_2v+1) of row kLaneRow[l]
        __m256 d, dmin;
    };
    // Whether the scale multipliers of B's sub-blocks are int32 lanes (quarter_pick32), for isum512's
    // int32 sums: Q4_K's in the VNNI build. Elsewhere (AVX2, and Q5_K, whose steps sum in int16) each
    // int16 of a pair sum gets the scale (quarter_pick16).
    template <typename B>
    static constexpr bool kInt32Sums = PE_PACKED_VNNI && std::is_same_v<B, block_q4_Kx8>;
    // Any block with Q4_K's d, dmin, sc_lo/hi, m_lo/hi and qs (block_q4_Kx8, block_q5_Kx8).
    template <typename B = Block>
    static Unpacked load(const B& w) {
        Unpacked p;
        p.qs = w.qs;
        __m256i sc[2], mn[2];
        unpack6(w.sc_lo, w.sc_hi, sc);
        unpack6(w.m_lo, w.m_hi, mn);
        if constexpr (kInt32Sums<B>) p.sc.fill(sc, quarter_pick32, [](auto v) { return v; });
        else p.sc.fill(sc, quarter_pick16, [](auto v) { return v; });
        for (int v = 0; v < 4; v++) p.m[v] = sub_block_pairs(mn[v / 2], v);
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        p.dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.dmin)));
        return p;
    }
#if PE_PACKED_VNNI
    // VNNI build: isum512's steps, the nibbles split in registers (PackedQ4_KBatch's, without its copy
    // in L1): the same int32 lanes as the 256-bit steps below.
    static void nibbles512(const Unpacked& w, int hc, __m512i& lo, __m512i& hi) {
        const __m512i mask = _mm512_set1_epi8(0x0f);
        const __m512i r = _mm512_loadu_si512(w.qs + 64 * hc);
        lo = _mm512_and_si512(r, mask);
        hi = _mm512_and_si512(_mm512_srli_epi16(r, 4), mask);
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        __m256i isum[1];
        isum512(x, [&w](int, int hc, __m512i& lo, __m512i& hi) { nibbles512(w, hc, lo, hi); },
                [&w](int, int j) { return w.sc.both(j); }, isum);
        return finish(w, x, isum[0]);
    }
    // term() of two groups against one activation block, packed_dot_pair's two streams: each
    // broadcast of the activations serves both (one-token Q4_K 82 -> 91 G multiply-adds/s cache-
    // resident; Q6_K's kernel ran slower so, and keeps term()).
    static constexpr bool kTermPair = true;
    static void term_pair(const Unpacked& a, const Unpacked& b, const XBlock& x, __m256& ta, __m256& tb) {
        const Unpacked* w[2] = {&a, &b};
        __m256i isum[2];
        isum512(x, [&w](int g, int hc, __m512i& lo, __m512i& hi) { nibbles512(*w[g], hc, lo, hi); },
                [&w](int g, int j) { return w[g]->sc.both(j); }, isum);
        ta = finish(a, x, isum[0]);
        tb = finish(b, x, isum[1]);
    }
    // The exact int32 lanes (kLaneRow order) of G groups against one activation block, on 512-bit
    // vectors each holding a run pair whole (rows 0-3 in the lower half, rows 4-7 in the upper)
    // against the same 8 activation bytes in every 64-bit quarter: nibbles(g, hc, lo, hi) gives group
    // g's run pair hc's low and high nibbles (weights of sub-blocks 2h and 2h + 1, hc = 4h + c), sc(g,
    // j) its sub-block j's multipliers (quarter_pick32's). Each group's sums take the same steps
    // whatever G is. A sub-block's products go straight into int32 lanes (vpdpbusd: 4 products a
    // lane, 16 over its 4 runs, |sum| <= 16 * 15 * 128 < 2^15), and vpdpwssd multiplies each lane's
    // low int16, the whole sum, by the scale (the high int16, its sign, meets the multiplier's zero):
    // the same integers as maddubs' int16 pair sums widened by a madd, in fewer instructions (1.1B
    // Q4_K_M prompts ~9% faster at 1 and 2 threads; one-token products, memory-bound, alike).
    template <int G, typename Nibbles, typename Scales>
    static void isum512(const XBlock& x, Nibbles nibbles, Scales sc, __m256i (&out)[G]) {
        __m512i acc_lo[G], acc_hi[G];
        for (int g = 0; g < G; g++) acc_lo[g] = acc_hi[g] = _mm512_setzero_si512();
        for (int h = 0; h < 4; h++) {
            __m512i lo[G], hi[G];
            for (int g = 0; g < G; g++) lo[g] = hi[g] = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m512i ylo = broadcast8_512(x.qs + 64 * h + 8 * c);
                const __m512i yhi = broadcast8_512(x.qs + 64 * h + 32 + 8 * c);
                for (int g = 0; g < G; g++) {
                    __m512i u_lo, u_hi;
                    nibbles(g, 4 * h + c, u_lo, u_hi);
                    lo[g] = _mm512_dpbusd_epi32(lo[g], u_lo, ylo);
                    hi[g] = _mm512_dpbusd_epi32(hi[g], u_hi, yhi);
                }
            }
            for (int g = 0; g < G; g++) {
                acc_lo[g] = _mm512_dpwssd_epi32(acc_lo[g], lo[g], sc(g, 2 * h));
                acc_hi[g] = _mm512_dpwssd_epi32(acc_hi[g], hi[g], sc(g, 2 * h + 1));
            }
        }
        for (int g = 0; g < G; g++) out[g] = hadd_halves(_mm512_add_epi32(acc_lo[g], acc_hi[g]));
    }
#else
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        const __m256i mask = _mm256_set1_epi8(0x0f);
        __m256i acc03 = _mm256_setzero_si256(), acc47 = _mm256_setzero_si256();
        for (int h = 0; h < 4; h++) {
            __m256i lo03 = _mm256_setzero_si256(), lo47 = lo03, hi03 = lo03, hi47 = lo03;
            for (int c = 0; c < 4; c++) {
                const __m256i ylo = broadcast8(x.qs + 64 * h + 8 * c), yhi = broadcast8(x.qs + 64 * h + 32 + 8 * c);
                const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 256 * h + 64 * c));
                const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 256 * h + 64 * c + 32));
                lo03 = _mm256_add_epi16(lo03, _mm256_maddubs_epi16(_mm256_and_si256(r0, mask), ylo));
                lo47 = _mm256_add_epi16(lo47, _mm256_maddubs_epi16(_mm256_and_si256(r1, mask), ylo));
                hi03 = _mm256_add_epi16(hi03, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(r0, 4), mask), yhi));
                hi47 = _mm256_add_epi16(hi47, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(r1, 4), mask), yhi));
            }
            acc03 = madd_acc(madd_acc(acc03, lo03, w.sc.rows03(2 * h)), hi03, w.sc.rows03(2 * h + 1));
            acc47 = madd_acc(madd_acc(acc47, lo47, w.sc.rows47(2 * h)), hi47, w.sc.rows47(2 * h + 1));
        }
        return finish(w, x, _mm256_hadd_epi32(acc03, acc47));
    }
#endif
    // The minimums' msum and the float step, from the lanes' exact isum (kLaneRow order).
    static __m256 finish(const Unpacked& w, const XBlock& x, __m256i isum) {
        const __m256i msum = dot_sub_block_sums(w.m, x);
        const __m256 dx = _mm256_set1_ps(x.d);
        return _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(w.d, dx), _mm256_cvtepi32_ps(isum)),
                             _mm256_mul_ps(_mm256_mul_ps(w.dmin, dx), _mm256_cvtepi32_ps(msum)));
    }
};

#if PE_PACKED_VNNI
// Q4_K for a pass of several tokens (VNNI build): load() splits the super-block's nibbles once, into
// L1, and every token's term() reads them; the one-token term() splits them as it goes, in registers.
// The same integer sums and float step: the same bits.
struct PackedQ4_KBatch {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
    static constexpr int kMaxTokens = 8;
    using Block = block_q4_Kx8;
    using XBlock = block_q8_K;
    // 512-bit vectors, each holding a run pair whole, rows 0-3 in the lower half and rows 4-7 in the
    // upper one, against the same 8 activation bytes in every 64-bit quarter (PackedQ4_K::isum512):
    // fewer instructions than the 256-bit steps, the same int32 lanes.
    struct Unpacked {
        PackedQ4_K::Unpacked scales;
        __m512i u[16][2];  // the run pair at qs + 64 (4h + c): its low nibbles, its high nibbles
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        p.scales = PackedQ4_K::load(w);
        for (int hc = 0; hc < 16; hc++) PackedQ4_K::nibbles512(p.scales, hc, p.u[hc][0], p.u[hc][1]);
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        const auto nibbles = [&w](int, int hc, __m512i& lo, __m512i& hi) {
            lo = w.u[hc][0];
            hi = w.u[hc][1];
        };
        __m256i isum[1];
        PackedQ4_K::isum512(x, nibbles, [&w](int, int j) { return w.scales.sc.both(j); }, isum);
        return PackedQ4_K::finish(w.scales, x, isum[0]);
    }
};
#endif

// ---- Q6_K: 8 rows' super-blocks re-laid at load time. The 6-bit levels u (0..63; the weight is
// u - 32) are split as Q4_K's nibbles: chunk h of 64 weights, the low 4 bits of weights 64h + l in
// the low nibbles and of 64h + 32 + l in the high ones, runs of 32 bytes: bytes 8c .. 8c+7 of rows
// 0-3 (group 0) and of rows 4-7 (group 1); after each such pair of runs, 32 bytes of the top two bits:
// byte p holds those of group 0's low and high nibble weights in bits 0-1, 2-3 and group 1's in
// bits 4-5, 6-7. Sub-blocks are 16 weights, so two maddubs add up in int16 (below 2 * 2 * 63 * 127
// = 32004); the widening madd multiplies by the signed scale. Per lane isum = sum_j sc_j * (u . y)_j
// - 32 * sum_j sc_j * bsums_j, exact, then ref::k_superblock_term's (d * dx) * float(isum) -
// (0 * dx) * float(0), as the reference calls it: bit-identical to ref::vec_dot_q6_K_q8_K.
// The 16 scales per row are stored as Q4_K's scale bytes: vector v (sub-blocks 4v .. 4v+3) byte b is
// sub-block 4v + (b % 16) / 4 of row kLaneRow[4 (b / 16) + b % 4].
struct block_q6_Kx8 {
    uint16_t d[8];  // in kLaneRow order
    int8_t sc[128];
    uint8_t q[16][96];  // per (h, c): group 0's nibbles, group 1's, the top bits
};
static_assert(sizeof(block_q6_Kx8) == 8 * sizeof(block_q6_K), "packing must not change the size");

void pack_q6_K(int n, const void* vw, size_t stride, void* out) {
    const auto* w = static_cast<const uint8_t*>(vw);
    auto* o = static_cast<block_q6_Kx8*>(out);
    for (int i = 0; i < n / QK_K; i++) {
        uint8_t u[8][QK_K];
        for (int r = 0; r < 8; r++) {
            const block_q6_K& b = row_block<block_q6_K>(w, stride, r, i);
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 32; l++) {
                    const uint8_t* ql = b.ql + 64 * h;
                    const uint8_t qh = b.qh[32 * h + l];
                    u[r][128 * h + l] = uint8_t((ql[l] & 0x0f) | ((qh >> 0) & 3) << 4);
                    u[r][128 * h + l + 32] = uint8_t((ql[l + 32] & 0x0f) | ((qh >> 2) & 3) << 4);
                    u[r][128 * h + l + 64] = uint8_t((ql[l] >> 4) | ((qh >> 4) & 3) << 4);
                    u[r][128 * h + l + 96] = uint8_t((ql[l + 32] >> 4) | ((qh >> 6) & 3) << 4);
                }
        }
        for (int l = 0; l < 8; l++) o[i].d[l] = row_block<block_q6_K>(w, stride, kLaneRow[l], i).d;
        for (int b = 0; b < 128; b++) {
            const int v = b / 32, lane = (b % 32) / 16, j = 4 * v + (b % 16) / 4;
            o[i].sc[b] = row_block<block_q6_K>(w, stride, kLaneRow[4 * lane + b % 4], i).scales[j];
        }
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 4; c++) {
                uint8_t* dst = o[i].q[4 * h + c];
                for (int p = 0; p < 32; p++) {
                    uint8_t top = 0;
                    for (int group = 0; group < 2; group++) {
                        const int r = 4 * group + p / 8, l = 64 * h + 8 * c + p % 8;
                        dst[32 * group + p] = uint8_t((u[r][l] & 0x0f) | (u[r][l + 32] & 0x0f) << 4);
                        top = uint8_t(top | (u[r][l] >> 4) << (4 * group) | (u[r][l + 32] >> 4) << (4 * group + 2));
                    }
                    dst[64 + p] = top;
                }
            }
    }
}

// pshufb control putting, per 64-bit quarter Q of each 128-bit lane, byte `base + Q` in the high byte
// of 4 int16 (an arithmetic shift by 8 then sign-extends it).
inline __m256i quarter_pick16_high(int base) {
    const auto q = [](int b) { return int64_t(0x0080008000800080ull | (uint64_t(b) * 0x0100010001000100ull)); };
    return _mm256_setr_epi64x(q(base), q(base + 1), q(base), q(base + 1));
}

// The high byte of each int16, sign-extended (after quarter_pick16_high's pshufb).
inline __m256i sign_extend_high_bytes(__m256i v) { return _mm256_srai_epi16(v, 8); }
#if PE_PACKED_VNNI
inline __m512i sign_extend_high_bytes(__m512i v) { return _mm512_srai_epi16(v, 8); }
#endif

struct PackedQ6_KBatch;

struct PackedQ6_K {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
    using Batch = PackedQ6_KBatch;  // for passes of several tokens
    using Block = block_q6_Kx8;
    using XBlock = block_q8_K;
    struct Unpacked {
        const uint8_t (*q)[96];
        SubBlockMultipliers<16> sc;
        __m256i s[8];                // int32 lane l: the int16 pair (sc_2v, sc_2v+1) of row kLaneRow[l]
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        p.q = w.q;
        __m256i sc[4];
        for (int v = 0; v < 4; v++) sc[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.sc + 32 * v));
        p.sc.fill(sc, quarter_pick16_high, [](auto v) { return sign_extend_high_bytes(v); });
        for (int v = 0; v < 8; v++) {
            const int a = (2 * v) % 4 * 4, b = a + 4;
            const __m128i ctl = _mm_setr_epi8(char(0x80), char(a), char(0x80), char(b), char(0x80), char(a + 1),
                                              char(0x80), char(b + 1), char(0x80), char(a + 2), char(0x80), char(b + 2),
                                              char(0x80), char(a + 3), char(0x80), char(b + 3));
            p.s[v] = _mm256_srai_epi16(_mm256_shuffle_epi8(sc[v / 2], _mm256_broadcastsi128_si256(ctl)), 8);
        }
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    // The 6-bit levels of run pair (h, c) into u: rows 0-3 and 4-7, low and high nibble weights
    // (u0lo, u0hi, u1lo, u1hi).
    static void levels(const Unpacked& w, int h, int c, __m256i (&u)[4]) {
        const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
        const uint8_t* q = w.q[4 * h + c];
        const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
        const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64));
        u[0] = _mm256_or_si256(_mm256_and_si256(r0, m4), _mm256_and_si256(_mm256_slli_epi16(t, 4), m2));
        u[1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(r0, 4), m4), _mm256_and_si256(_mm256_slli_epi16(t, 2), m2));
        u[2] = _mm256_or_si256(_mm256_and_si256(r1, m4), _mm256_and_si256(t, m2));
        u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(r1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(t, 2), m2));
    }
    // term() is out of line: inlined into packed_dot_pair's two streams (GCC 12), it made a 1.1B
    // Q4_K_M generation (its output matrix Q6_K) ~20% slower.
#if PE_PACKED_VNNI
    // VNNI build: isum512's steps, the levels rebuilt in registers (PackedQ6_KBatch's, without its
    // copy in L1): the same int16 sums and int32 lanes as dot's.
    __attribute__((noinline)) static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        const auto levels = [&w](int hc, __m512i& lo, __m512i& hi) { levels512(w, hc, lo, hi); };
        return finish(w, x, isum512(x, levels, [&w](int j) { return w.sc.both(j); }));
    }
    // levels() on 512 bits: rows 0-3 from r0 with t's bits 0-1 (low weights) and 2-3 (high) | rows
    // 4-7 from r1 with t's bits 4-5 and 6-7. ts holds t << 4 in rows 0-3's half and t in rows 4-7's:
    // its bits 4-5 are the low weights' top two bits, those of ts >> 2 the high weights'.
    static void levels512(const Unpacked& w, int hc, __m512i& lo, __m512i& hi) {
        const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
        const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_setzero_si256(), 1);
        const uint8_t* q = w.q[hc];
        const __m512i r = _mm512_loadu_si512(q);  // r0 | r1
        const __m512i ts = _mm512_sllv_epi16(
            _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64))), shift);
        lo = _mm512_or_si512(_mm512_and_si512(r, m4), _mm512_and_si512(ts, m2));
        hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(r, 4), m4), _mm512_and_si512(_mm512_srli_epi16(ts, 2), m2));
    }
    // The exact int32 lanes (kLaneRow order) on 512-bit vectors holding a run pair's levels whole
    // (rows 0-3 | rows 4-7), four accumulators: levels(hc, lo, hi) gives run pair hc = 4h + c's levels
    // of the low and high nibble weights, sc(j) sub-block j's madd multipliers.
    template <typename Levels, typename Scales>
    static __m256i isum512(const XBlock& x, Levels levels, Scales sc) {
        __m512i acc[4];
        for (auto& a : acc) a = _mm512_setzero_si512();
        for (int h = 0; h < 4; h++)
            for (int cc = 0; cc < 2; cc++) {  // sub-blocks 4h + cc (low weights) and 4h + 2 + cc (high)
                __m512i lo = _mm512_setzero_si512(), hi = lo;
                for (int c = 2 * cc; c < 2 * cc + 2; c++) {
                    __m512i u_lo, u_hi;
                    levels(4 * h + c, u_lo, u_hi);
                    lo = _mm512_add_epi16(lo, _mm512_maddubs_epi16(u_lo, broadcast8_512(x.qs + 64 * h + 8 * c)));
                    hi = _mm512_add_epi16(hi, _mm512_maddubs_epi16(u_hi, broadcast8_512(x.qs + 64 * h + 32 + 8 * c)));
                }
                acc[2 * cc] = _mm512_dpwssd_epi32(acc[2 * cc], lo, sc(4 * h + cc));
                acc[2 * cc + 1] = _mm512_dpwssd_epi32(acc[2 * cc + 1], hi, sc(4 * h + 2 + cc));
            }
        return hadd_halves(_mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3])));
    }
#else
    __attribute__((noinline)) static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        return dot(w, x, [&w](int h, int c, __m256i (&u)[4]) { levels(w, h, c, u); });
    }
#endif
    // term() with the levels of (h, c) from level(h, c, u).
    template <typename LevelsOf>
    static __m256 dot(const Unpacked& w, const XBlock& x, LevelsOf level) {
        __m256i acc03 = _mm256_setzero_si256(), acc47 = _mm256_setzero_si256();
        for (int h = 0; h < 4; h++) {
            for (int cc = 0; cc < 2; cc++) {  // c = 2cc, 2cc + 1: sub-blocks 4h + cc (low) and 4h + 2 + cc (high)
                __m256i lo03 = _mm256_setzero_si256(), lo47 = lo03, hi03 = lo03, hi47 = lo03;
                for (int c = 2 * cc; c < 2 * cc + 2; c++) {
                    const __m256i ylo = broadcast8(x.qs + 64 * h + 8 * c), yhi = broadcast8(x.qs + 64 * h + 32 + 8 * c);
                    __m256i u[4];
                    level(h, c, u);
                    lo03 = _mm256_add_epi16(lo03, _mm256_maddubs_epi16(u[0], ylo));
                    hi03 = _mm256_add_epi16(hi03, _mm256_maddubs_epi16(u[1], yhi));
                    lo47 = _mm256_add_epi16(lo47, _mm256_maddubs_epi16(u[2], ylo));
                    hi47 = _mm256_add_epi16(hi47, _mm256_maddubs_epi16(u[3], yhi));
                }
                acc03 = madd_acc(madd_acc(acc03, lo03, w.sc.rows03(4 * h + cc)), hi03, w.sc.rows03(4 * h + 2 + cc));
                acc47 = madd_acc(madd_acc(acc47, lo47, w.sc.rows47(4 * h + cc)), hi47, w.sc.rows47(4 * h + 2 + cc));
            }
        }
        return finish(w, x, _mm256_hadd_epi32(acc03, acc47));
    }
    // The levels' offset and the float step, from the lanes' exact dot (kLaneRow order).
    static __m256 finish(const Unpacked& w, const XBlock& x, __m256i dot) {
        // offset_l = sum_j sc_j bsums_j: pair v of bsums (int32 element v) against s[v]
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
        __m256i off = _mm256_setzero_si256();
        for (int v = 0; v < 8; v++)
            off = madd_acc(off, w.s[v], _mm256_permutevar8x32_epi32(bs, _mm256_set1_epi32(v)));
        return k_term_no_min(w.d, x, _mm256_sub_epi32(dot, _mm256_slli_epi32(off, 5)));
    }
};

// Q6_K for a pass of several tokens: load() rebuilds the levels of the whole super-block once, into
// L1, and every token's term() reads them (the one-token kernels rebuild them as they go, in
// registers). The same integer sums and float step: the same bits. A prompt's kernel loop (passes
// over a cache-resident tile) ran ~1.8x faster: 8-token passes of this against 4-token ones of Q6_K.
struct PackedQ6_KBatch {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
    static constexpr int kMaxTokens = 8;
    using Block = block_q6_Kx8;
    using XBlock = block_q8_K;
#if PE_PACKED_VNNI
    // VNNI build (AVX-512): as PackedQ4_KBatch's, 512-bit vectors holding a run pair's levels whole
    // (rows 0-3 | rows 4-7), four accumulators: the same int16 sums and int32 lanes.
    struct Unpacked {
        PackedQ6_K::Unpacked scales;
        __m512i u[16][2];  // the levels of (h, c) at 4h + c: low nibble weights, high nibble weights
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        p.scales = PackedQ6_K::load(w);
        for (int hc = 0; hc < 16; hc++) PackedQ6_K::levels512(p.scales, hc, p.u[hc][0], p.u[hc][1]);
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        const auto levels = [&w](int hc, __m512i& lo, __m512i& hi) {
            lo = w.u[hc][0];
            hi = w.u[hc][1];
        };
        return PackedQ6_K::finish(w.scales, x, PackedQ6_K::isum512(x, levels, [&w](int j) { return w.scales.sc.both(j); }));
    }
#else
    struct Unpacked {
        PackedQ6_K::Unpacked scales;
        __m256i u[16][4];  // the levels of (h, c) at 4h + c
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        p.scales = PackedQ6_K::load(w);
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 4; c++) PackedQ6_K::levels(p.scales, h, c, p.u[4 * h + c]);
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        return PackedQ6_K::dot(w.scales, x, [&w](int h, int c, __m256i (&u)[4]) {
            for (int k = 0; k < 4; k++) u[k] = w.u[4 * h + c][k];
        });
    }
#endif
};

// ---- IQ4_XS: Q4_K's super-block layout (the index nibbles of chunk h in runs of 32 bytes: bytes
// 8c .. 8c+7 of rows 0-3, then of rows 4-7; weights 64h + l in the low nibbles, 64h + 32 + l in the
// high ones) and its 6-bit scale bytes (pack6, in the order quarter_pick16 reads them), ls (0..63)
// where the weight's scale is ls - 32. load() looks the levels (-127 .. 113) up once per super-block
// into L1, with their magnitudes, for every token of the pass; the signed path of IQ4_NL then gives
// int16 pairs below 2 * 127 * 127, each widened at once by the madd that multiplies it by its
// sub-block's scale ls - 32. isum per lane is exact (< 8 * 32 * 32 * 127 * 127 < 2^31), and the float
// step is ref::k_superblock_term's with dmin = 0 and msum = 0, as the reference calls it (Q6_K's).
struct block_iq4_xsx8 {
    uint16_t d[8];  // in kLaneRow order
    uint8_t sc_lo[32], sc_hi[16];
    uint8_t qs[1024];
};
static_assert(sizeof(block_iq4_xsx8) == 8 * sizeof(block_iq4_xs), "packing must not change the size");

// Super-block i's 256 weights of the 8 rows, in Q4_K's packed nibble order, from per-row 4-bit
// values u[row][weight].
inline void interleave_k_nibbles(const uint8_t (&u)[8][QK_K], uint8_t* qs) {
    for (int h = 0; h < 4; h++)
        for (int c = 0; c < 4; c++)
            for (int group = 0; group < 2; group++)
                for (int j = 0; j < 4; j++)
                    for (int b = 0; b < 8; b++) {
                        const uint8_t* r = u[4 * group + j];
                        qs[256 * h + (c * 2 + group) * 32 + j * 8 + b] =
                            uint8_t(r[64 * h + 8 * c + b] | r[64 * h + 32 + 8 * c + b] << 4);
                    }
}

void pack_iq4_xs(int n, const void* vw, size_t stride, void* out) {
    const auto* w = static_cast<const uint8_t*>(vw);
    auto* o = static_cast<block_iq4_xsx8*>(out);
    for (int i = 0; i < n / QK_K; i++) {
        uint8_t u[8][QK_K];
        for (int r = 0; r < 8; r++) {
            const block_iq4_xs& b = row_block<block_iq4_xs>(w, stride, r, i);
            for (int j = 0; j < 8; j++)
                for (int l = 0; l < 16; l++) {
                    u[r][32 * j + l] = b.qs[16 * j + l] & 0x0f;
                    u[r][32 * j + 16 + l] = b.qs[16 * j + l] >> 4;
                }
        }
        uint8_t sc[64];
        for (int b = 0; b < 64; b++) {
            const int v = b / 32, lane = (b % 32) / 16, j = 4 * v + (b % 16) / 4;
            const block_iq4_xs& blk = row_block<block_iq4_xs>(w, stride, kLaneRow[4 * lane + b % 4], i);
            sc[b] = uint8_t(((blk.scales_l[j / 2] >> (4 * (j % 2))) & 0x0f) | ((blk.scales_h >> (2 * j)) & 3) << 4);
        }
        pack6(sc, o[i].sc_lo, o[i].sc_hi);
        for (int l = 0; l < 8; l++) o[i].d[l] = row_block<block_iq4_xs>(w, stride, kLaneRow[l], i).d;
        interleave_k_nibbles(u, o[i].qs);
    }
}

struct PackedIQ4_XS {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
    static constexpr int kMaxTokens = 8;  // its unpacked block is in L1 (the levels of 8 rows)
    using Block = block_iq4_xsx8;
    using XBlock = block_q8_K;
    // The madd multipliers ls - 32 of sub-block j, from unpack6's scales: rows 0-3 (half 0) or 4-7
    // (half 1), a row per quarter, as PackedQ4_K's.
    static __m256i scales(const __m256i (&sc)[2], int j, int half) {
        return _mm256_sub_epi16(_mm256_shuffle_epi8(sc[j / 4], quarter_pick16(4 * (j % 4) + 2 * half)),
                                _mm256_set1_epi16(32));
    }
#if PE_PACKED_VNNI
    // VNNI build (AVX-512): the levels + 128 (1..241) as unsigned bytes, 512-bit vectors holding a
    // run pair whole (rows 0-3 | rows 4-7) against the same 8 activation bytes in every quarter;
    // vpdpbusd sums a sub-block's products in int32 (no saturation), one vpmulld applies its scale,
    // and the offset's part, 128 * sum_j sc_j * (sum of y over sub-block j), comes from Q8_K's bsums
    // (as PackedQ4_K's minimums): isum = sum_j sc_j * (sum of q * y), the same exact integer.
    struct Unpacked {
        __m512i u[32];   // per (h, c) at 2 (4h + c): the low nibbles' levels + 128, the high ones'
        __m512i sc[8];   // sub-block j's scale ls - 32 as int32, a row per quarter: rows 0-3 | rows 4-7
        __m256i s[4];    // int32 lane l: the int16 pair (ls - 32 of sub-blocks 2v, 2v + 1) of row kLaneRow[l]
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        __m256i sc[2];
        unpack6(w.sc_lo, w.sc_hi, sc);
        const __m256i one = _mm256_set1_epi32(1);
        for (int j = 0; j < 8; j++)  // the int16 pairs (s, s) times (1, 0): s in int32
            p.sc[j] = join512(_mm256_madd_epi16(scales(sc, j, 0), one), _mm256_madd_epi16(scales(sc, j, 1), one));
        for (int v = 0; v < 4; v++) p.s[v] = _mm256_sub_epi16(sub_block_pairs(sc[v / 2], v), _mm256_set1_epi16(32));
        const __m512i table = _mm512_xor_si512(
            _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues))),
            _mm512_set1_epi8(char(0x80)));
        const __m512i mask = _mm512_set1_epi8(0x0f);
        for (int k = 0; k < 16; k++) {
            const __m512i r = _mm512_loadu_si512(w.qs + 64 * k);
            p.u[2 * k] = _mm512_shuffle_epi8(table, _mm512_and_si512(r, mask));
            p.u[2 * k + 1] = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(r, 4), mask));
        }
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        __m512i acc = _mm512_setzero_si512();
        for (int h = 0; h < 4; h++) {
            __m512i lo = _mm512_setzero_si512(), hi = lo;  // sub-blocks 2h and 2h + 1, unscaled
            for (int c = 0; c < 4; c++) {
                const __m512i ylo = broadcast8_512(x.qs + 64 * h + 8 * c);
                const __m512i yhi = broadcast8_512(x.qs + 64 * h + 32 + 8 * c);
                lo = _mm512_dpbusd_epi32(lo, w.u[2 * (4 * h + c)], ylo);
                hi = _mm512_dpbusd_epi32(hi, w.u[2 * (4 * h + c) + 1], yhi);
            }
            acc = _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_mullo_epi32(lo, w.sc[2 * h]),
                                                         _mm512_mullo_epi32(hi, w.sc[2 * h + 1])));
        }
        const __m256i dot = hadd_halves(acc);
        // minus the offset's part, 128 * sum_j sc_j * ys_j
        const __m256i isum = _mm256_sub_epi32(dot, _mm256_slli_epi32(dot_sub_block_sums(w.s, x), 7));
        return k_term_no_min(w.d, x, isum);
    }
#else
    struct Unpacked {
        // per (h, c): the levels of lo03, lo47, hi03, hi47 (rows 0-3 / 4-7, low / high nibbles)
        __m256i q[64], aq[64];
        __m256i sc03[8], sc47[8];  // madd multipliers ls - 32 of sub-block j, as PackedQ4_K's
        __m256 d;
    };
    static Unpacked load(const Block& w) {
        Unpacked p;
        __m256i sc[2];
        unpack6(w.sc_lo, w.sc_hi, sc);
        for (int j = 0; j < 8; j++) {
            p.sc03[j] = scales(sc, j, 0);
            p.sc47[j] = scales(sc, j, 1);
        }
        const __m256i table =
            _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues)));
        const __m256i mask = _mm256_set1_epi8(0x0f);
        for (int k = 0; k < 16; k++) {
            const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 64 * k));
            const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 64 * k + 32));
            const __m256i nib[4] = {_mm256_and_si256(r0, mask), _mm256_and_si256(r1, mask),
                                    _mm256_and_si256(_mm256_srli_epi16(r0, 4), mask),
                                    _mm256_and_si256(_mm256_srli_epi16(r1, 4), mask)};
            for (int t = 0; t < 4; t++) {
                const __m256i q = _mm256_shuffle_epi8(table, nib[t]);
                p.q[4 * k + t] = q;
                p.aq[4 * k + t] = _mm256_sign_epi8(q, q);
            }
        }
        p.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.d)));
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        __m256i acc03 = _mm256_setzero_si256(), acc47 = _mm256_setzero_si256();
        const auto dot = [&w](int v, __m256i y, __m256i sc) {
            return _mm256_madd_epi16(_mm256_maddubs_epi16(w.aq[v], _mm256_sign_epi8(y, w.q[v])), sc);
        };
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 4; c++) {
                const int v = 4 * (4 * h + c);
                const __m256i ylo = broadcast8(x.qs + 64 * h + 8 * c), yhi = broadcast8(x.qs + 64 * h + 32 + 8 * c);
                acc03 = _mm256_add_epi32(acc03, _mm256_add_epi32(dot(v, ylo, w.sc03[2 * h]), dot(v + 2, yhi, w.sc03[2 * h + 1])));
                acc47 = _mm256_add_epi32(acc47, _mm256_add_epi32(dot(v + 1, ylo, w.sc47[2 * h]), dot(v + 3, yhi, w.sc47[2 * h + 1])));
            }
        return k_term_no_min(w.d, x, _mm256_hadd_epi32(acc03, acc47));
    }
#endif
};

// ---- Q5_K: Q4_K's packed layout (d, dmin, the 6-bit scales and minimums, the nibbles) plus the fifth
// bits: for the run pair (h, c) (rows 0-3, rows 4-7 of bytes 8c .. 8c+7 of chunk h), byte p of
// qh[2h + c / 2] holds in bits 4 (c % 2) + 0, 1, 2, 3 the fifth bits of the weights behind byte p's
// low nibble of rows 0-3, its high nibble, the low and the high nibble of rows 4-7. Levels 0..31:
// four maddubs of a sub-block add up in int16 below 4 * 2 * 31 * 127 = 31496; then Q4_K's term.
struct block_q5_Kx8 {
    uint16_t d[8];     // in kLaneRow order
    uint16_t dmin[8];  // in kLaneRow order
    uint8_t sc_lo[32], sc_hi[16];
    uint8_t m_lo[32], m_hi[16];
    uint8_t qh[8][32];
    uint8_t qs[1024];  // right after qh: term() reads both from Unpacked::qs
};
static_assert(offsetof(block_q5_Kx8, qs) == offsetof(block_q5_Kx8, qh) + 256, "qs follows qh");
static_assert(sizeof(block_q5_Kx8) == 8 * sizeof(block_q5_K), "packing must not change the size");

void pack_q5_K(int n, const void* vw, size_t stride, void* out) {
    const auto* w = static_cast<const uint8_t*>(vw);
    auto* o = static_cast<block_q5_Kx8*>(out);
    for (int i = 0; i < n / QK_K; i++) {
        uint8_t u[8][QK_K], lo[8][QK_K];
        for (int r = 0; r < 8; r++) {
            const block_q5_K& b = row_block<block_q5_K>(w, stride, r, i);
            for (int h = 0; h < 4; h++)
                for (int l = 0; l < 32; l++) {
                    u[r][64 * h + l] = uint8_t((b.qs[32 * h + l] & 0x0f) | ((b.qh[l] >> (2 * h)) & 1) << 4);
                    u[r][64 * h + 32 + l] = uint8_t((b.qs[32 * h + l] >> 4) | ((b.qh[l] >> (2 * h + 1)) & 1) << 4);
                }
            for (int l = 0; l < QK_K; l++) lo[r][l] = u[r][l] & 0x0f;
        }
        uint8_t sc[64], mn[64];
        for (int b = 0; b < 64; b++) {
            const int v = b / 32, lane = (b % 32) / 16, j = 4 * v + (b % 16) / 4;
            const int row = kLaneRow[4 * lane + b % 4];
            get_scale_min_k4(j, row_block<block_q5_K>(w, stride, row, i).scales, &sc[b], &mn[b]);
        }
        pack6(sc, o[i].sc_lo, o[i].sc_hi);
        pack6(mn, o[i].m_lo, o[i].m_hi);
        for (int l = 0; l < 8; l++) {
            o[i].d[l] = row_block<block_q5_K>(w, stride, kLaneRow[l], i).d;
            o[i].dmin[l] = row_block<block_q5_K>(w, stride, kLaneRow[l], i).dmin;
        }
        interleave_k_nibbles(lo, o[i].qs);
        std::memset(o[i].qh, 0, sizeof(o[i].qh));
        for (int h = 0; h < 4; h++)
            for (int c = 0; c < 4; c++)
                for (int p = 0; p < 32; p++) {
                    const int l = 64 * h + 8 * c + p % 8, base = 4 * (c % 2);
                    const uint8_t* r0 = u[p / 8];
                    const uint8_t* r1 = u[4 + p / 8];
                    o[i].qh[2 * h + c / 2][p] |= uint8_t((r0[l] >> 4) << base | (r0[l + 32] >> 4) << (base + 1) |
                                                         (r1[l] >> 4) << (base + 2) | (r1[l + 32] >> 4) << (base + 3));
                }
    }
}

struct PackedQ5_K {
    static constexpr int kBlock = QK_K;
    static constexpr bool kRowOrder = false, kXSums = false;
    using Block = block_q5_Kx8;
    using XBlock = block_q8_K;
    using Unpacked = PackedQ4_K::Unpacked;  // qs points at the block: the fifth bits at its qh
    static Unpacked load(const Block& w) {
        Unpacked p = PackedQ4_K::load(w);
        p.qs = w.qh[0];  // qh, then qs, 256 bytes on
        return p;
    }
    static __m256 term(const Unpacked& w, const XBlock& x, int32_t, const float*) {
        const __m256i mask = _mm256_set1_epi8(0x0f), b4 = _mm256_set1_epi8(0x10);
        const uint8_t* qh = w.qs;
        const uint8_t* qs = w.qs + 256;
        __m256i acc03 = _mm256_setzero_si256(), acc47 = _mm256_setzero_si256();
        for (int h = 0; h < 4; h++) {
            __m256i lo03 = _mm256_setzero_si256(), lo47 = lo03, hi03 = lo03, hi47 = lo03;
            for (int c = 0; c < 4; c++) {
                const __m256i ylo = broadcast8(x.qs + 64 * h + 8 * c), yhi = broadcast8(x.qs + 64 * h + 32 + 8 * c);
                const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 256 * h + 64 * c));
                const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 256 * h + 64 * c + 32));
                __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * (2 * h + c / 2)));
                if (c % 2) t = _mm256_srli_epi16(t, 4);  // bits 4..7 of each byte to 0..3 (only those are used)
                const __m256i u0lo = _mm256_or_si256(_mm256_and_si256(r0, mask), _mm256_and_si256(_mm256_slli_epi16(t, 4), b4));
                const __m256i u0hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(r0, 4), mask),
                                                     _mm256_and_si256(_mm256_slli_epi16(t, 3), b4));
                const __m256i u1lo = _mm256_or_si256(_mm256_and_si256(r1, mask), _mm256_and_si256(_mm256_slli_epi16(t, 2), b4));
                const __m256i u1hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(r1, 4), mask),
                                                     _mm256_and_si256(_mm256_slli_epi16(t, 1), b4));
                lo03 = _mm256_add_epi16(lo03, _mm256_maddubs_epi16(u0lo, ylo));
                lo47 = _mm256_add_epi16(lo47, _mm256_maddubs_epi16(u1lo, ylo));
                hi03 = _mm256_add_epi16(hi03, _mm256_maddubs_epi16(u0hi, yhi));
                hi47 = _mm256_add_epi16(hi47, _mm256_maddubs_epi16(u1hi, yhi));
            }
            acc03 = madd_acc(madd_acc(acc03, lo03, w.sc.rows03(2 * h)), hi03, w.sc.rows03(2 * h + 1));
            acc47 = madd_acc(madd_acc(acc47, lo47, w.sc.rows47(2 * h)), hi47, w.sc.rows47(2 * h + 1));
        }
        return PackedQ4_K::finish(w, x, _mm256_hadd_epi32(acc03, acc47));
    }
};

// Weights per block of a packed format: QK, or the format's kBlock (256 for the super-blocks).
template <typename F, typename = void>
struct BlockSize {
    static constexpr int value = QK;
};
template <typename F>
struct BlockSize<F, std::void_t<decltype(F::kBlock)>> {
    static constexpr int value = F::kBlock;
};
template <typename F>
constexpr int block_size() {
    return BlockSize<F>::value;
}

// The 8 lane accumulators of a packed format to rows 0..7 of y.
template <typename F>
inline void store_lanes(float* y, __m256 acc) {
    if constexpr (F::kRowOrder) _mm256_storeu_ps(y, acc);
    else store_rows(y, acc);
}
#if PE_PACKED_VNNI
template <typename F>
inline void store_lanes(float* y, __m512 acc) {  // PackedTwo's 16 lanes: two groups' rows in order
    static_assert(F::kRowOrder, "16 lanes are stored as rows");
    _mm512_storeu_ps(y, acc);
}
#endif

// Whether a packed format reads its activations' block scales as floats (Activations::block_scales):
// the formats paired with Q8_0 and Q8_1, whose fp16 scales prepare_activations converts once.
template <typename F>
constexpr bool reads_xscales() {
    return std::is_same_v<typename F::XBlock, block_q8_0> || std::is_same_v<typename F::XBlock, block_q8_1>;
}

// Activations one packed_nt pass takes at most: F::kMaxTokens where the format says, else 8 for the
// 32-blocks, whose unpacked block leaves registers for 8 accumulators, and 4 for the super-blocks.
// Where a super-block's unpacked state is in memory anyway, 8 tokens share each load(): a prompt's
// kernel loop (8-token passes over a cache-resident tile, against 4-token ones) ran ~10% faster for
// Q4_K and ~27% for IQ4_XS; Q5_K's gained nothing. (The VNNI build's Q4_K passes now take
// PackedQ4_KBatch, whose nibbles are split once per super-block: ~8% more. The AVX2 build keeps
// 4-token passes of PackedQ4_K's own steps: on a Zen 3 its PackedQ4_KBatch ran 1.35x slower, and
// 8-token passes of PackedQ4_K alike within noise; see PackedQ4_K.)
template <typename F, typename = void>
struct MaxTokens {
    static constexpr int value = block_size<F>() == QK ? 8 : 4;
};
template <typename F>
struct MaxTokens<F, std::void_t<decltype(F::kMaxTokens)>> {
    static constexpr int value = F::kMaxTokens;
};
template <typename F>
constexpr int max_tokens() {
    return MaxTokens<F>::value;
}

// The format of a pass of several tokens: F::Batch where F names one (the same bits, with more of a
// block's unpacking done once for all the tokens), else F.
template <typename F, typename = void>
struct BatchOf {
    using type = F;
};
template <typename F>
struct BatchOf<F, std::void_t<typename F::Batch>> {
    using type = typename F::Batch;
};
static_assert(kPackTokens == 8, "packed_dot splits kPackTokens activations into passes of max_tokens");

// Requests the lines of one block's worth of memory `ahead` bytes past block b (past a group's end
// they land in the next group, or nowhere: a prefetch does not fault).
template <typename Block>
inline void prefetch_block(const Block* b, size_t ahead) {
    const auto* p = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(b) + ahead);
    for (size_t o = 0; o < sizeof(Block); o += 64) prefetch_line(p + o);
}

// How far ahead of the block it works on packed_nt asks for the group's lines. A few tokens at once
// (sequences decoded together, bench/serve.py) still read every weight from memory, and the hardware
// prefetcher alone leaves the kernel waiting: 8 sequences of SmolLM2-135M Q4_1 spent ~9% less time per
// step with 1024 bytes (AVX2 table, Zen 3; one process, switched on and off, medians of 40 rounds); 768
// to 2048 bytes measured alike, 512 gained less. The AVX-512 table on a Zen 5 (~40 GB/s a core) wants
// 4096: against 1024, 8 sequences decoded together ran 1.15-1.16x faster on 1 thread and 1.10-1.14x
// on 2 (SmolLM2 Q4_1), 1.15x / 1.13x (1.1B Q4_K_M); prompts alike (0.997-1.012x); paired bursts of
// two builds in fresh processes. A prompt's later passes over a tile find the lines in cache already.
constexpr size_t kPrefetchBytesBatch = PE_PACKED_VNNI ? 4096 : 1024;

// Packed groups a pass takes: S::kGroups where S says (PackedTwo: 2 adjacent groups), else 1.
template <typename S, typename = void>
struct GroupsOf {
    static constexpr int value = 1;
};
template <typename S>
struct GroupsOf<S, std::void_t<decltype(S::kGroups)>> {
    static constexpr int value = S::kGroups;
};

inline __m256 add_lanes(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
#if PE_PACKED_VNNI
inline __m512 add_lanes(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
#endif

// NT activations (t0 .. t0 + NT - 1 of x) against one packed group, or against two adjacent ones
// (PackedTwo: group b's blocks right after group a's, its 8 outputs right after a's in each token's
// row of y): each block unpacked once for all the tokens.
template <typename F, int NT>
void packed_nt(int n, const void* vw, const Activations& x, int64_t t0, float* y, size_t y_stride) {
    constexpr int kGroups = GroupsOf<F>::value;
    const auto* w = static_cast<const typename F::Block*>(vw);
    const int nb = n / block_size<F>();
    const typename F::XBlock* xb[NT];
    for (int c = 0; c < NT; c++)
        xb[c] = reinterpret_cast<const typename F::XBlock*>(x.data + size_t(t0 + c) * x.row_bytes);
    // the pass's tokens side by side per block (packed_extra_index): token c at c, block i stride * i on
    const size_t extra = packed_extra_index(t0, 0, x.n_blocks, x.n_tokens);
    const int64_t stride = packed_extra_stride(x.n_tokens);
    const int32_t* sums = F::kXSums ? x.block_sums + extra : nullptr;
    const float* scales = reads_xscales<F>() ? x.block_scales + 2 * extra : nullptr;
    using Lanes = decltype(F::term(std::declval<const typename F::Unpacked&>(), xb[0][0], 0, scales));
    Lanes acc[NT];
    for (int c = 0; c < NT; c++) acc[c] = Lanes{};
    for (int i = 0; i < nb; i++) {
        if constexpr (kGroups == 2) {
            // Past its group's end, stream a runs on into the next pass's group a, not into b (which
            // the pass reads beside it), and b into the next pass's b. Q4_1, 1536 columns, 8 tokens,
            // the kernel alone on one thread: 202-210 G products/s at 1024 bytes, 248-269 at 4096
            // without this, 286-303 with it.
            constexpr int kAhead = int(kPrefetchBytesBatch / sizeof(typename F::Block));
            const size_t ahead = sizeof(typename F::Block) * (kAhead + (i + kAhead >= nb ? nb : 0));
            prefetch_block(w + i, ahead);
            prefetch_block(w + nb + i, ahead);
        } else {
            prefetch_block(w + i, kPrefetchBytesBatch);
        }
        const typename F::Unpacked u = [&] {
            if constexpr (kGroups == 2) return F::load(w[i], w[nb + i]);
            else return F::load(w[i]);
        }();
#pragma GCC unroll 8  // the tokens' pointers and accumulators then stay in registers
        for (int c = 0; c < NT; c++)
            acc[c] = add_lanes(acc[c], F::term(u, xb[c][i], F::kXSums ? sums[stride * i + c] : 0,
                                               reads_xscales<F>() ? scales + 2 * (stride * i + c) : nullptr));
    }
    for (int c = 0; c < NT; c++) store_lanes<F>(y + c * y_stride, acc[c]);
}

// packed_nt<F, NT> for the pass's token count nt, NT from kFirst up to kMax.
template <typename F, int kMax, int kFirst = 1>
void packed_pass(int nt, int n, const void* w, const Activations& x, int64_t t0, float* y, size_t y_stride) {
    if constexpr (kFirst < kMax) {
        if (nt > kFirst) return packed_pass<F, kMax, kFirst + 1>(nt, n, w, x, t0, y, y_stride);
    }
    packed_nt<F, kFirst>(n, w, x, t0, y, y_stride);
}

template <typename F>
void packed_dot(int n, const void* w, const Activations& x, int64_t t0, int n_tokens, float* y, size_t y_stride) {
    using B = typename BatchOf<F>::type;
    static_assert(std::is_same_v<typename B::Block, typename F::Block>, "a batch format reads the same blocks");
    for (int c = 0; c < n_tokens; c += max_tokens<B>()) {
        const int nt = std::min(n_tokens - c, max_tokens<B>());
        float* yc = y + size_t(c) * y_stride;
        if (nt == 1) packed_nt<F, 1>(n, w, x, t0 + c, yc, y_stride);
        else packed_pass<B, max_tokens<B>(), 2>(nt, n, w, x, t0 + c, yc, y_stride);
    }
}

#if PE_PACKED_VNNI
// packed_dot on two adjacent groups a pass (kernels.h's packed_dot_two).
template <typename F>
void packed_dot_two(int n, const void* w, const Activations& x, int64_t t0, int n_tokens, float* y, size_t y_stride) {
    for (int c = 0; c < n_tokens; c += kPackTokens)
        packed_pass<PackedTwo<F>, kPackTokens>(std::min(n_tokens - c, kPackTokens), n, w, x, t0 + c,
                                                y + size_t(c) * y_stride, y_stride);
}
#endif

// Whether a packed format has PackedTwo's 16-lane step (the VNNI build's 32-block formats).
template <typename F, typename = void>
struct HasTwo : std::false_type {};
#if PE_PACKED_VNNI
template <typename F>
struct HasTwo<F, std::void_t<decltype(F::kLevelOffset)>> : std::bool_constant<block_size<F>() == QK> {};
#endif

// How far ahead of the block it reads packed_dot_pair asks for each stream's lines. The hardware
// prefetchers alone fall behind two streams that the kernel's own work interleaves: requesting a
// block's worth of lines this far ahead made a 1.1B Q4_K_M generation ~10% faster at 1 thread and
// ~14% at 2 (one process, switched on and off, medians of 20 bursts; with the matrices in huge pages
// +16% / +23%). 256, 512 and 768 bytes measured alike; 1024 and 2048 gained less. (An earlier
// attempt, without huge pages, had lost 15%: bench/results/levers.md.) That was the AVX2 table on a
// Zen 3 reading ~13 GB/s a core. The AVX-512 table was measured on a Zen 5 reading ~40 GB/s a core,
// where lines must be asked for further ahead: 1.1B Q4_0 generation 37-40 -> 41-49 tok/s at 1 thread
// and 49-56 -> 60-75 at 2 with 2048 bytes (4096 alike), Q4_K_M 43-46 -> 43-48 and 50-53 -> 54-56
// (three fresh processes of each build, alternating). Measured again with paired bursts of two builds
// in fresh processes, the 32-block formats want 4096 there: 1.1B Q4_0 generation 1.13-1.14x faster on
// 1 thread and 1.13-1.16x on 2 than at 2048 (the kernel alone, one thread: 37-38 -> 41-43 GB/s, the
// probe's ~42); Q4_K_M's super-blocks did not gain from 4096 (0.97-1.01x), so they keep 2048.
constexpr size_t kPrefetchBytes = PE_PACKED_VNNI ? 2048 : 512;
template <typename F>
constexpr size_t prefetch_bytes() {
    return PE_PACKED_VNNI && block_size<F>() == QK ? 4096 : kPrefetchBytes;
}

template <typename F, typename = void>
struct HasTermPair : std::false_type {};
template <typename F>
struct HasTermPair<F, std::void_t<decltype(F::kTermPair)>> : std::true_type {};

// One token against two packed groups at once: two weight streams in flight, which is what lets one
// core's matrix-vector product approach the memory bandwidth (one stream leaves it at ~70%). Each
// group takes exactly packed_nt<F, 1>'s operations.
template <typename F>
void packed_dot_pair(int n, const void* vwa, const void* vwb, const Activations& x, int64_t t0, float* ya,
                     float* yb) {
    const auto* wa = static_cast<const typename F::Block*>(vwa);
    const auto* wb = static_cast<const typename F::Block*>(vwb);
    const auto* xb = reinterpret_cast<const typename F::XBlock*>(x.data + size_t(t0) * x.row_bytes);
    const size_t extra = packed_extra_index(t0, 0, x.n_blocks, x.n_tokens);
    const int64_t stride = packed_extra_stride(x.n_tokens);
    const int32_t* sums = F::kXSums ? x.block_sums + extra : nullptr;
    const float* scales = reads_xscales<F>() ? x.block_scales + 2 * extra : nullptr;
    __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps();
    for (int i = 0; i < n / block_size<F>(); i++) {
        const int32_t xsum = F::kXSums ? sums[stride * i] : 0;
        const float* xs = reads_xscales<F>() ? scales + 2 * stride * i : nullptr;
        prefetch_block(wa + i, prefetch_bytes<F>());  // one block's worth of lines ahead in each stream
        prefetch_block(wb + i, prefetch_bytes<F>());
        if constexpr (HasTermPair<F>::value) {
            __m256 ta, tb;
            F::term_pair(F::load(wa[i]), F::load(wb[i]), xb[i], ta, tb);
            acc_a = _mm256_add_ps(acc_a, ta);
            acc_b = _mm256_add_ps(acc_b, tb);
        } else {
            acc_a = _mm256_add_ps(acc_a, F::term(F::load(wa[i]), xb[i], xsum, xs));
            acc_b = _mm256_add_ps(acc_b, F::term(F::load(wb[i]), xb[i], xsum, xs));
        }
    }
    store_lanes<F>(ya, acc_a);
    store_lanes<F>(yb, acc_b);
}

// One row per packed format: its pack function, the packed kernels built from its steps, and whether
// they need the activations' block sums (formats with a zero point folded into them).
template <typename Format>
void add_packed(Kernels& k, GGMLType type, pack_fn pack) {
    k.pack[type] = pack;
    k.packed_dot[type] = packed_dot<Format>;
    k.packed_dot_pair[type] = packed_dot_pair<Format>;
#if PE_PACKED_VNNI
    if constexpr (HasTwo<Format>::value) k.packed_dot_two[type] = packed_dot_two<Format>;
#endif
    k.packed_xsums[type] = Format::kXSums;
    k.packed_xscales[type] = reads_xscales<Format>();
}

// Every packed format's row, for a table built from this unit's flags.
inline void add_packed_kernels(Kernels& k) {
    add_packed<PackedQ4_0>(k, TYPE_Q4_0, pack_blocks<block_q4_0, block_q4_0x8>);
    add_packed<PackedQ4_1>(k, TYPE_Q4_1, pack_blocks<block_q4_1, block_q4_1x8>);
    add_packed<PackedQ8_0>(k, TYPE_Q8_0, pack_blocks<block_q8_0, block_q8_0x8>);
    add_packed<PackedQ5_0>(k, TYPE_Q5_0, pack_blocks5<block_q5_0, block_q5_0x8>);
    add_packed<PackedQ5_1>(k, TYPE_Q5_1, pack_blocks5<block_q5_1, block_q5_1x8>);
    add_packed<PackedIQ4_NL>(k, TYPE_IQ4_NL, pack_blocks<block_iq4_nl, block_iq4_nlx8>);
    add_packed<PackedQ4_K>(k, TYPE_Q4_K, pack_q4_K);
    add_packed<PackedQ6_K>(k, TYPE_Q6_K, pack_q6_K);
    add_packed<PackedQ5_K>(k, TYPE_Q5_K, pack_q5_K);
    add_packed<PackedIQ4_XS>(k, TYPE_IQ4_XS, pack_iq4_xs);
}

}  // namespace
}  // namespace pe
