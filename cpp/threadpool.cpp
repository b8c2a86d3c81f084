#include "threadpool.h"

#include <exception>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PE_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define PE_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define PE_CPU_RELAX() ((void)0)
#endif

#if defined(__linux__)
#include <sched.h>
#endif

namespace pe {

namespace {
// How long a worker waits for the next task before it sleeps: long enough to cover the gap between
// the matmuls of one forward pass, short enough not to burn a core while the user reads. The first
// kSpinPauses checks only pause the core; after that each check also yields it, so that a machine
// with more runnable threads than cores (several sequences driven at once) still makes progress.
constexpr int kSpinPauses = 1 << 12;
constexpr int kSpinIterations = 1 << 16;

inline void backoff(int iteration) {
    if (iteration < kSpinPauses) {
        PE_CPU_RELAX();
    } else {
        std::this_thread::yield();
    }
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    workers_.reserve(size_t(n_threads_ - 1));
    for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(sleep_mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::run_impl(TaskFn fn, void* ctx) {
    if (n_threads_ == 1) {
        fn(ctx, 0, 1);
        return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    task_fn_ = fn;
    task_ctx_ = ctx;
    pending_.store(n_threads_ - 1);
    generation_.fetch_add(1);  // seq_cst: publishes the task before sleepers_ is read
    if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> lock(sleep_mutex_);
        wake_.notify_all();
    }
    fn(ctx, 0, n_threads_);
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; spin++) backoff(spin);
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = generation_.load(std::memory_order_acquire);
        for (int spin = 0; gen == seen && spin < kSpinIterations; spin++) {
            backoff(spin);
            gen = generation_.load(std::memory_order_acquire);
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(sleep_mutex_);
            sleepers_.fetch_add(1);  // seq_cst: pairs with run_impl's generation bump
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            sleepers_.fetch_sub(1);
            gen = generation_.load();
        }
        if (stop_.load()) return;
        seen = gen;
        task_fn_(task_ctx_, index, n_threads_);
        pending_.fetch_sub(1, std::memory_order_release);
    }
}

int default_n_threads() {
    int n = 0;
#if defined(__linux__)
    // Count distinct physical cores among the CPUs we may run on. On hybrid Intel parts, only the
    // performance cores (listed in /sys/devices/cpu_core/cpus) count.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        std::set<int> performance;
        std::ifstream core_list("/sys/devices/cpu_core/cpus");
        std::string ranges;
        if (core_list >> ranges) try {
            size_t pos = 0;
            while (pos < ranges.size()) {
                size_t end = ranges.find(',', pos);
                if (end == std::string::npos) end = ranges.size();
                const std::string part = ranges.substr(pos, end - pos);
                const size_t dash = part.find('-');
                const int lo = std::stoi(part.substr(0, dash));
                const int hi = dash == std::string::npos ? lo : std::stoi(part.substr(dash + 1));
                for (int c = lo; c <= hi; c++) performance.insert(c);
                pos = end + 1;
            }
        } catch (const std::exception&) {
            performance.clear();  // unreadable list: count every core
        }
        std::set<std::pair<int, int>> cores;  // (package, core id)
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
            if (!CPU_ISSET(cpu, &set)) continue;
            if (!performance.empty() && !performance.count(cpu)) continue;
            const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
            int package = 0, core = cpu;
            std::ifstream(base + "physical_package_id") >> package;
            std::ifstream(base + "core_id") >> core;
            cores.insert({package, core});
        }
        n = int(cores.size());
    }
#endif
    if (n <= 0) n = int(std::thread::hardware_concurrency());
    return n > 0 ? n : 1;
}

}  // namespace pe
