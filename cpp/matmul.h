// y = W x for a quantized (or float) weight matrix and a batch of float activations.
//
// Determinism: every output y[t][r] takes the same operations in the same order whatever the batch
// size and the thread split: one vec_dot of weight row r and activation t (or a tile repeating it),
// or, for a packed matrix, the packed kernel, which repeats the scalar reference's vec_dot. A matrix
// is packed or not for its whole life, so one output never changes path.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "huge_buffer.h"
#include "kernels/kernels.h"
#include "threadpool.h"

namespace pe {

struct Matrix {
    GGMLType type;
    const void* data;  // rows x row_bytes, row-major, used in place (memory-mapped)
    int64_t rows;      // output features
    int64_t cols;      // input features; a multiple of the type's block size
    const void* packed = nullptr;  // the same rows repacked for the ISA's packed_dot (pack_matrix), or none
};

// Packs w's rows for k.packed_dot into `storage` (same size as the weights) and points w.packed at
// it, when the ISA has packed kernels for w's type and w.rows is a multiple of kPackRows; returns
// whether it did. The original data stays valid (and is still what w.data points at). Threads split
// the row groups.
bool pack_matrix(const Kernels& k, Matrix& w, HugeBuffer& storage, ThreadPool& pool);

// What a product's packed kernel reads beside the activations' blocks.
struct PackedExtras {
    bool sums = false;    // Activations::block_sums
    bool scales = false;  // Activations::block_scales
};
PackedExtras packed_extras(const Kernels& k, const Matrix& w);

// Where prepare_activations puts what it makes, kept between calls (no allocation once large enough).
struct ActivationBuffers {
    std::vector<uint8_t> blocks;
    std::vector<int32_t> sums;
    std::vector<float> scales;
};

// Converts n_tokens rows of cols floats for multiplying weights of `weight_type`: into its
// vec_dot_type (float activations are used as they are), with the block sums and scales that
// `extras` asks for. Threaded over tokens (parallel_for). before, where given, is called for each
// token just before its row is read, by the thread that converts it (the per-token step that makes
// the row, e.g. a norm, in the same pool run).
Activations prepare_activations(const Kernels& k, GGMLType weight_type, const float* x, int64_t n_tokens, int64_t cols,
                                PackedExtras extras, ActivationBuffers& buffers, ThreadPool& pool,
                                const std::function<void(int64_t)>* before = nullptr);

// The rows [r0, r1) of w that thread i of n_threads computes: contiguous, whole packed groups for a
// packed matrix, so that threads never share a group.
void matmul_split(const Matrix& w, int i, int n_threads, int64_t& r0, int64_t& r1);

// y[t * w.rows + r] for r in [r0, r1) and every token of x: one thread's share (no threading).
void matmul_rows(const Kernels& k, const Matrix& w, const Activations& x, float* y, int64_t r0, int64_t r1);

// Thread i's share of w's rows (matmul_split) cut into units of work, in the order the thread
// computes them, so that a thread that has finished its own shares can take units from the back of
// another's (WorkShares). A packed matrix-vector product's unit is a run of the share's stream pairs
// (its rows in two runs, one in each half of the share: matmul_rows' two streams); otherwise a unit
// is a run of whole row tiles. A unit holds about kUnitBytes of weights over the batch's tokens (up to
// 8), and at least one pair or tile.
struct ShareUnits {
    int64_t r0 = 0, r1 = 0;  // the share's rows
    int64_t count = 0;       // its units
    int64_t step = 0;        // stream pairs a unit (paired), or rows a unit
    int64_t half = 0;        // paired: groups in the share's first stream; 0: units are runs of rows
    bool same_cut(const ShareUnits& o) const { return r0 == o.r0 && r1 == o.r1 && step == o.step && half == o.half; }
};
// 64 KB units measured 1.047x (against 1.087x at 256 KB) on the 1.1B's generation below; 1 MB ones
// alike within the noise.
constexpr size_t kUnitBytes = size_t(256) << 10;
ShareUnits share_units(const Kernels& k, const Matrix& w, const Activations& x, int i, int n_threads);

// The rows of unit u of a share: one run, or two (the second empty, r0 == r1, where it has one).
struct RowRun {
    int64_t r0, r1;
};
void unit_rows(const ShareUnits& s, int64_t u, RowRun (&runs)[2]);

// Unit u of a share of y = W x: the same operations for each output as matmul_rows over the share.
void matmul_unit(const Kernels& k, const Matrix& w, const Activations& x, float* y, const ShareUnits& s, int64_t u);

struct NoAfter {  // WorkShares::work's `after` where there is nothing to do after a unit
    void operator()(int64_t, int64_t) const {}
};

// Several products y_j = W_j x in one pool run, balanced between the threads (a short batch's, in
// the forward pass): each thread computes its own shares (matmul_split's) unit by unit from their
// fronts, product by product; a thread that has finished takes units from the backs of the others'
// shares. So a thread slowed down (by the memory it shares, by other load on the machine) holds the
// others up by about a unit, not by whatever part of its half it has left. Which thread computes a
// row changes none of its bits (the same kernel calls on the same rows). A 1.1B Q4_K_M generation on
// 2 threads, against the fixed halves: 1.04-1.09x in all, 1.09-1.11x in the machine's fast-memory
// state, where each core reads at its own limit and one that falls behind is not made up for by the
// other; alike (0.99x) in its slow state, where the two share one limit; 1.04x beside a process
// busy half of the time on one core (1.25x beside two). 8 SmolLM2 sequences decoded together
// (compute-bound): alike (1.006x). Paired bursts of the two in one process.
class WorkShares {
public:
    // For one pool run of n_products products (weights, outputs) on x over n_threads threads.
    // Returns whether every product is cut into the same units (the same rows, the same cut), which
    // work() needs to run an `after` step per unit (`after`: whether it will; its counters are reset).
    bool reset(const Kernels& k, const std::pair<const Matrix*, float*>* products, int n_products,
               const Activations& x, int n_threads, bool after);

    // Thread i's part of the run. after(r0, r1), unless NoAfter, runs once rows [r0, r1) of every product
    // are done, by the thread that finished them (reset must have returned true).
    template <typename After>
    void work(int i, After&& after) {
        const int n_threads = n_threads_;
        auto unit = [&](int p, int owner, int64_t u) {
            const ShareUnits& s = shares_[size_t(p * n_threads + owner)];
            matmul_unit(*k_, *products_[p].first, *x_, products_[p].second, s, u);
            if constexpr (!std::is_same_v<std::decay_t<After>, NoAfter>) {
                // the last product done on this unit: its rows are complete (acq_rel: the others'
                // outputs are seen)
                std::atomic<int32_t>& done = done_[size_t(owner) * lines_ + size_t(u) / kPerLine].v[u % kPerLine];
                if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n_products_) {
                    RowRun runs[2];
                    unit_rows(s, u, runs);
                    for (const RowRun& r : runs)
                        if (r.r0 < r.r1) after(r.r0, r.r1);
                }
            }
        };
        for (int p = 0; p < n_products_; p++)
            for (int64_t u; (u = claim_front(p * n_threads + i)) >= 0;) unit(p, i, u);
        for (int p = 0; p < n_products_; p++)
            for (int d = 1; d < n_threads; d++) {
                const int owner = (i + d) % n_threads;
                for (int64_t u; (u = claim_back(p * n_threads + owner)) >= 0;) unit(p, owner, u);
            }
    }

private:
    // A share's units not yet taken: [front, back), both in one word (front in the low 32 bits).
    int64_t claim_front(int share) {
        const uint64_t s = claims_[size_t(share)].v.fetch_add(1, std::memory_order_relaxed);
        const int64_t front = int64_t(s & 0xffffffffu), back = int64_t(s >> 32);
        return front < back ? front : -1;
    }
    int64_t claim_back(int share) {
        std::atomic<uint64_t>& c = claims_[size_t(share)].v;
        uint64_t s = c.load(std::memory_order_relaxed);
        for (;;) {
            const int64_t front = int64_t(s & 0xffffffffu), back = int64_t(s >> 32);
            if (front >= back) return -1;
            if (c.compare_exchange_weak(s, (s & 0xffffffffu) | uint64_t(back - 1) << 32, std::memory_order_relaxed))
                return back - 1;
        }
    }

    const Kernels* k_ = nullptr;
    const Activations* x_ = nullptr;
    const std::pair<const Matrix*, float*>* products_ = nullptr;
    int n_products_ = 0, n_threads_ = 1;
    std::vector<ShareUnits> shares_;  // product-major: product p, thread i at p * n_threads + i
    struct alignas(64) Claims {  // a line each: the owners' claims do not take the others' lines away
        std::atomic<uint64_t> v;
    };
    std::unique_ptr<Claims[]> claims_;
    size_t claims_size_ = 0;
    // Per (owner, unit): the products done on it; each owner's counters on lines of their own.
    static constexpr int kPerLine = 16;
    struct alignas(64) DoneLine {
        std::atomic<int32_t> v[kPerLine];
    };
    std::unique_ptr<DoneLine[]> done_;
    size_t done_size_ = 0, lines_ = 0;  // lines_: an owner's lines
};

// All of y = W x for prepared activations, the rows split between the pool's threads.
void matmul_prepared(const Kernels& k, const Matrix& w, const Activations& x, float* y, ThreadPool& pool);

// y[t * rows + r] = dot(W row r, x row t) for t < n_tokens. x: n_tokens x W.cols floats.
void matmul(const Kernels& k, const Matrix& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool,
            ActivationBuffers& buffers);

}  // namespace pe
