#include "bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "huge_buffer.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace pe {

namespace {

// Sums 64-bit words with four independent accumulators (SSE2/NEON width after vectorisation).
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < n; i++) a += p[i];
    return a ^ b ^ c ^ d;
}

#if defined(__x86_64__) || defined(_M_X64)
// 32-byte loads, four streams in flight: what the AVX2 kernels' loads look like.
__attribute__((target("avx2"))) uint64_t sum_words_avx2(const uint64_t* p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
    }
    a = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    uint64_t lanes[4];
    std::memcpy(lanes, &a, sizeof lanes);
    return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3] ^ sum_words(p + i, n - i);
}
#endif

}  // namespace

double read_bandwidth(ThreadPool& pool, size_t bytes, int repeats) {
    const size_t n = bytes / sizeof(uint64_t);
    // Memory of the kind the packed matrices live in (page-aligned, huge pages where offered), so each
    // thread's slice starts on a cache line (slices are multiples of 16 words).
    HugeBuffer owner(n * sizeof(uint64_t));
    auto* buffer = reinterpret_cast<uint64_t*>(owner.data());
    for (size_t i = 0; i < n; i++) buffer[i] = i * 0x9E3779B97F4A7C15ull;
    uint64_t (*sum)(const uint64_t*, size_t) = sum_words;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) sum = sum_words_avx2;
#endif
    std::vector<uint64_t> sink(size_t(pool.n_threads()) * 8);  // keeps the loads alive
    double best = 0.0;
    for (int r = 0; r < repeats; r++) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.run([&](int i, int n_threads) {
            const size_t per = n / size_t(n_threads) / 16 * 16;
            const size_t begin = per * size_t(i);
            const size_t end = i == n_threads - 1 ? n : begin + per;
            sink[size_t(i) * 8] = sum(buffer + begin, end - begin);
        });
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(n * sizeof(uint64_t)) / seconds / 1e9);
    }
    return best;
}

}  // namespace pe
