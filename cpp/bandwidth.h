// A memory read-bandwidth probe for the benchmarks: the roofline of a matrix-vector product,
// measured in the same run as the product itself.
#pragma once

#include <cstdint>

#include "threadpool.h"

namespace pe {

// Best of `repeats` passes over a buffer of `bytes`, each of the pool's threads summing a contiguous
// slice with the widest loads the CPU has. Returns GB/s.
double read_bandwidth(ThreadPool& pool, size_t bytes, int repeats);

}  // namespace pe
