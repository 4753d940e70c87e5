// Pieces every suite uses around its timed code: pinning a worker, a barrier that works across
// threads and forked processes, counter deltas, and the latency distribution of single events.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/perf_counters.h"
#include "bench/tsc_clock.h"

namespace faultlab {

// Pins the calling thread to the run's CPU for worker `index` (round-robin over --cpu) and
// checks sched_getcpu agrees. nullopt on success with *cpu set; otherwise why it failed.
std::optional<std::string> PinWorker(int index, int* cpu);

// A generation-counting barrier that lives in ordinary or MAP_SHARED memory, so forked workers
// can meet at it too. It spins (a futex wake-up would add scheduler latency to the start of the
// measured rounds) and yields now and then in case it shares a CPU.
//
// A party that never arrives (it failed without arriving, or died) must not hang the run: after
// kTimeoutSeconds a waiter breaks the barrier, and every waiter, then and later, returns false.
struct SpinBarrier {
  static constexpr double kTimeoutSeconds = 120;
  std::atomic<int> arrived{0};
  std::atomic<int> generation{0};
  std::atomic<bool> broken{false};
  // True when all `parties` arrived; false when the barrier was broken.
  bool Wait(int parties);
};

// Arrives at a barrier exactly once: at Arrive(), or on leaving scope, so a worker that fails
// before the barrier never leaves the others spinning. A barrier of one party is no barrier.
class BarrierArrival {
 public:
  BarrierArrival(SpinBarrier* barrier, int parties) : barrier_(barrier), parties_(parties) {}
  ~BarrierArrival() { Arrive(); }
  BarrierArrival(const BarrierArrival&) = delete;
  BarrierArrival& operator=(const BarrierArrival&) = delete;
  // False if the barrier was broken: a worker never came.
  bool Arrive() {
    const bool opened = !barrier_ || parties_ <= 1 || barrier_->Wait(parties_);
    barrier_ = nullptr;
    return opened;
  }

 private:
  SpinBarrier* barrier_;
  int parties_;
};

// A fixed amount of CPU work timed in wall time: a chain of dependent multiply-adds, about 1.5 us
// here. It is the same work every call, so when its time moves during a run the CPU's speed
// moved (in a VM, the host's load on the core or its clock), not the code measured beside it:
// a plain C loop here steps between ~8 and ~11 ms for tens of milliseconds at a time, and forks
// step with it. Benchmarks time it between their samples (untimed) and report its median as
// reference_ns, so a report can tell a noisy machine from a noisy code path.
double ReferenceWorkNs();

// Touches one byte of each of `count` pages `stride` apart (a write of 1, or a read); ticks[i]
// is the TSC time from the previous stamp to the stamp after touch i, so each sample holds one
// fault (if the touch took one), one stamp and the loop.
// Not instrumented by sanitizers: their shadow-memory accesses would add faults (TSan maps
// shadow pages on first touch: 3 page faults per touch instead of 1) and time to the stamps.
template <bool kWrite>
__attribute__((no_sanitize("address", "thread", "undefined"))) void StampedTouch(
    char* base, std::size_t stride, std::size_t count, uint64_t* ticks) {
  uint64_t prev = TscNow();
  for (std::size_t i = 0; i < count; ++i) {
    volatile char* p = base + i * stride;
    if constexpr (kWrite) {
      *p = 1;
    } else {
      (void)*p;
    }
    // Keep the compiler from moving the stamp across the touch; the fault itself serialises.
    asm volatile("" ::: "memory");
    const uint64_t now = TscNow();
    ticks[i] = now - prev;
    prev = now;
  }
}

// One round of TSC stamps (ticks, one per page): its mean in ns, returned; its samples appended
// to `samples_ns` when `keep` (a round reported apart, such as the first, is not kept).
double AddRound(const std::vector<uint64_t>& ticks, double ns_per_tick, bool keep,
                std::vector<double>* samples_ns);

// Sums of counter deltas over the timed parts of a measurement.
struct CounterTotals {
  std::vector<std::string> names;
  std::vector<double> sums;

  void Add(const std::vector<double>& before, const std::vector<double>& after);
  void Merge(const CounterTotals& other);
};

// Single-event latencies in nanoseconds and the figures reported from them.
struct LatencySummary {
  std::size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
};
// Sorts `ns` in place.
LatencySummary Summarize(std::vector<double>& ns);

// Writes the summary as counters "mean_ns", "p50_ns", ... and each counter total divided by
// `events` (so "page-faults" reads as page faults per measured fault). Counters are plain values:
// only one thread of a benchmark reports them.
void ReportLatency(benchmark::State& state, const LatencySummary& summary);
void ReportPerEvent(benchmark::State& state, const CounterTotals& totals, double events);

// The message a skipped row carries, prefixed so the CSV's `skipped` column and a reader can tell
// a skip (a missing feature, page size, node or privilege) from a failure.
void Skip(benchmark::State& state, const std::string& reason);

// The end of a row that did not run: `skip` reported through Skip, else `error` as a failure (a
// premise or data check that failed), and the benchmark's loop drained. Returns false, doing
// nothing, when both are empty: the row goes on to report.
bool SkippedOrFailed(benchmark::State& state, const std::string& skip, const std::string& error);

// The end of a row that ran (rows measured in one go, Iterations(1)): p50_ns..max_ns of
// `samples_ns` (sorted in place), the label, the loop, and the manual time: `seconds`, or else the
// samples' sum, so that the time column reads as the mean sample. Counters set before or after
// this still reach the row.
LatencySummary ReportSamples(benchmark::State& state, std::vector<double>& samples_ns,
                             const std::string& label,
                             std::optional<double> seconds = std::nullopt);

// What a forked child sent back: `output`, or why there is none (`error`: it was killed by a
// signal, exited non-zero, or ran past its time).
struct ChildOutcome {
  std::string output;
  std::string error;
};

// Runs `work` in a forked child and returns the bytes it returned, sent back through a pipe. The
// child dies with faultlab (PR_SET_PDEATHSIG), so a run killed mid-row leaves no worker behind.
// A child that has not finished within `timeout_s` is killed (SIGKILL) and reaped, so a kernel
// call that never returns (a migration the guest's kernel soft-locked in under emulation) fails
// a row instead of hanging the run: "the measuring child did not finish <task> within N s:
// killed". The child leaves with _exit: no atexit handler or parent's buffer runs twice.
ChildOutcome RunInChild(const std::function<std::string()>& work, int timeout_s,
                        const std::string& task);

}  // namespace faultlab
