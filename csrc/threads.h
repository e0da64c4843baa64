// The core's one way of running work on threads: how many cores this process may use (its CPU
// affinity, so a job pinned to 4 cores of 64 starts 4 threads), and run_workers, which every
// parallel loop of the core (run_chunks in formats.cpp, parallel_for here) goes through. Callers
// release the GIL around it; the work itself never touches Python.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace arcfast {

// Cores this process may run on: its affinity mask (taskset, cgroups' cpusets, Kaggle's limits),
// else what the hardware reports.
inline int available_cores() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1, int(std::thread::hardware_concurrency()));
}

// Runs body(k) for k in [0, t): k = 0 on the calling thread, each other on a thread of its own (one
// that cannot be started runs here instead). After all have finished, the first exception any of
// them raised is rethrown, its type kept.
template <class F>
void run_workers(int t, F&& body) {
    t = std::max(t, 1);
    std::vector<std::exception_ptr> errors(static_cast<size_t>(t));
    auto guarded = [&](int k) {
        try {
            body(k);
        } catch (...) {
            errors[size_t(k)] = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(size_t(t) - 1);
    for (int k = 1; k < t; ++k) {
        try {
            pool.emplace_back(guarded, k);
        } catch (const std::system_error&) {  // no thread to be had: do that share here
            guarded(k);
        }
    }
    guarded(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// Runs fn(i, worker) for i in [0, n) on `threads` workers (0: every available core) taking items in
// turn, so uneven items balance themselves.
template <class F>
void parallel_for(int64_t n, int32_t threads, F&& fn) {
    if (threads <= 0) threads = int32_t(available_cores());
    const int t = int(std::min<int64_t>(threads, std::max<int64_t>(1, n)));
    if (t <= 1) {
        for (int64_t i = 0; i < n; ++i) fn(i, 0);
        return;
    }
    std::atomic<int64_t> next{0};
    run_workers(t, [&](int w) {
        for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i, int32_t(w));
    });
}

}  // namespace arcfast
