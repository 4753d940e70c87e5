#include "bench/harness.h"

#include <emmintrin.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "bench/suite.h"
#include "bench/tsc_clock.h"
#include "topology/topology.h"

namespace faultlab {

std::optional<std::string> PinWorker(int index, int* cpu) {
  const RunOptions& options = CurrentRunOptions();
  if (options.cpus.empty() || options.topology == nullptr) {
    *cpu = sched_getcpu();
    return std::nullopt;
  }
  const int want = options.cpus[static_cast<std::size_t>(index) % options.cpus.size()];
  const int got = PinThisThread(*options.topology, want);
  if (got != want) {
    return "could not pin worker " + std::to_string(index) + " to CPU " + std::to_string(want) +
           " (runs on " + std::to_string(sched_getcpu()) + ")";
  }
  *cpu = got;
  return std::nullopt;
}

bool SpinBarrier::Wait(int parties) {
  const int gen = generation.load(std::memory_order_acquire);
  if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == parties) {
    arrived.store(0, std::memory_order_relaxed);
    generation.fetch_add(1, std::memory_order_release);
    return !broken.load(std::memory_order_acquire);
  }
  const double deadline = MonotonicNs() + kTimeoutSeconds * 1e9;
  // Yield now and then: workers are pinned one per CPU, but a test or a sanitizer run may put
  // more threads than CPUs here, and a pure spin would then wait out whole time slices.
  for (unsigned spins = 1; generation.load(std::memory_order_acquire) == gen; ++spins) {
    if (broken.load(std::memory_order_acquire)) return false;
    if (spins % 1024 == 0) {
      if (MonotonicNs() > deadline) {
        broken.store(true, std::memory_order_release);
        return false;
      }
      sched_yield();
    } else {
      _mm_pause();
    }
  }
  return !broken.load(std::memory_order_acquire);
}

void CounterTotals::Add(const std::vector<double>& before, const std::vector<double>& after) {
  if (sums.size() < after.size()) sums.resize(after.size(), 0.0);
  for (std::size_t i = 0; i < after.size() && i < before.size(); ++i) {
    sums[i] += after[i] - before[i];
  }
}

void CounterTotals::Merge(const CounterTotals& other) {
  if (names.empty()) names = other.names;
  if (sums.size() < other.sums.size()) sums.resize(other.sums.size(), 0.0);
  for (std::size_t i = 0; i < other.sums.size(); ++i) sums[i] += other.sums[i];
}

double ReferenceWorkNs() {
  constexpr int kSteps = 1024;  // ~4 cycles each (multiply and add, dependent)
  std::uint64_t x = 1;
  asm volatile("" : "+r"(x));  // the start value is opaque: the chain cannot be folded
  const double start = MonotonicNs();
  for (int i = 0; i < kSteps; ++i) {
    x = x * 6364136223846793005u + 1442695040888963407u;
    asm volatile("" : "+r"(x));  // one step at a time: no unrolling into a closed form
  }
  return MonotonicNs() - start;
}

double AddRound(const std::vector<uint64_t>& ticks, double ns_per_tick, bool keep,
                std::vector<double>* samples_ns) {
  double sum = 0;
  for (uint64_t t : ticks) {
    const double ns = static_cast<double>(t) * ns_per_tick;
    sum += ns;
    if (keep) samples_ns->push_back(ns);
  }
  return ticks.empty() ? 0 : sum / static_cast<double>(ticks.size());
}

LatencySummary Summarize(std::vector<double>& ns) {
  LatencySummary s;
  s.count = ns.size();
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  // Nearest-rank percentiles: a reported p99 is a latency some fault really had.
  auto rank = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(ns.size())));
    return ns[std::min(ns.size() - 1, i == 0 ? 0 : i - 1)];
  };
  s.mean = std::accumulate(ns.begin(), ns.end(), 0.0) / static_cast<double>(ns.size());
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  s.p999 = rank(0.999);
  s.max = ns.back();
  return s;
}

void ReportLatency(benchmark::State& state, const LatencySummary& summary) {
  state.counters["mean_ns"] = summary.mean;
  state.counters["p50_ns"] = summary.p50;
  state.counters["p90_ns"] = summary.p90;
  state.counters["p99_ns"] = summary.p99;
  state.counters["p999_ns"] = summary.p999;
  state.counters["max_ns"] = summary.max;
}

void ReportPerEvent(benchmark::State& state, const CounterTotals& totals, double events) {
  if (events <= 0) return;
  for (std::size_t i = 0; i < totals.names.size() && i < totals.sums.size(); ++i) {
    state.counters[totals.names[i]] = totals.sums[i] / events;
  }
}

void Skip(benchmark::State& state, const std::string& reason) {
  state.SkipWithError(("skipped: " + reason).c_str());
}

bool SkippedOrFailed(benchmark::State& state, const std::string& skip, const std::string& error) {
  if (skip.empty() && error.empty()) return false;
  if (!skip.empty()) {
    Skip(state, skip);
  } else {
    state.SkipWithError(error.c_str());
  }
  for (auto _ : state) {
  }
  return true;
}

LatencySummary ReportSamples(benchmark::State& state, std::vector<double>& samples_ns,
                             const std::string& label, std::optional<double> seconds) {
  if (!seconds) seconds = std::accumulate(samples_ns.begin(), samples_ns.end(), 0.0) * 1e-9;
  const LatencySummary summary = Summarize(samples_ns);
  ReportLatency(state, summary);
  state.SetLabel(label);
  for (auto _ : state) {
  }
  state.SetIterationTime(*seconds);
  return summary;
}

}  // namespace faultlab
