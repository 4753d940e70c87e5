#include "bench/harness.h"

#include <emmintrin.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
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

namespace {

// After SIGKILL: a child stuck inside the kernel dies only when it leaves it.
constexpr int kChildReapTimeoutS = 10;

// Reaps `pid` into *status, waiting at most `seconds`; false if it is still running.
bool ReapWithin(pid_t pid, int seconds, int* status) {
  const double deadline = MonotonicNs() + seconds * 1e9;
  for (;;) {
    const pid_t reaped = waitpid(pid, status, WNOHANG);
    if (reaped == pid || (reaped < 0 && errno != EINTR)) return true;
    if (MonotonicNs() > deadline) return false;
    usleep(10'000);
  }
}

// Everything the child writes to `fd` until it closes it, or until `deadline_ns`; false if the
// deadline came first.
bool ReadUntilClosed(int fd, double deadline_ns, std::string* out) {
  char buffer[1 << 16];
  for (;;) {
    const double left_ms = (deadline_ns - MonotonicNs()) * 1e-6;
    if (left_ms <= 0) return false;
    pollfd ready{fd, POLLIN, 0};
    // poll's int milliseconds: wake at least once a minute, and re-check the deadline.
    const int polled = poll(&ready, 1, static_cast<int>(std::min(left_ms + 1, 60'000.0)));
    if (polled < 0 && errno != EINTR) return true;
    if (polled <= 0) continue;
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    out->append(buffer, static_cast<std::size_t>(n));
  }
}

}  // namespace

ChildOutcome RunInChild(const std::function<std::string()>& work, int timeout_s,
                        const std::string& task) {
  ChildOutcome outcome;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    outcome.error = std::string("pipe2: ") + std::strerror(errno);
    return outcome;
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    outcome.error = std::string("fork: ") + std::strerror(errno);
    close(fds[0]);
    close(fds[1]);
    return outcome;
  }
  if (pid == 0) {
    close(fds[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    const std::string bytes = work();
    for (std::size_t at = 0; at < bytes.size();) {
      const ssize_t n = write(fds[1], bytes.data() + at, bytes.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) _exit(1);
      at += static_cast<std::size_t>(n);
    }
    _exit(0);
  }
  close(fds[1]);
  const bool in_time = ReadUntilClosed(fds[0], MonotonicNs() + timeout_s * 1e9, &outcome.output);
  close(fds[0]);
  int status = 0;
  // The pipe closes before the child is gone: it still gets the reap's grace to exit.
  if (!in_time || !ReapWithin(pid, kChildReapTimeoutS, &status)) {
    kill(pid, SIGKILL);
    const bool reaped = ReapWithin(pid, kChildReapTimeoutS, &status);
    outcome.error = "the measuring child did not finish " + task + " within " +
                    std::to_string(timeout_s) + " s: killed" +
                    (reaped ? "" : ", and still not gone " + std::to_string(kChildReapTimeoutS) +
                                       " s later");
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    outcome.error = WIFSIGNALED(status)
                        ? "the measuring child was killed by signal " +
                              std::to_string(WTERMSIG(status))
                        : "the measuring child exited with status " +
                              std::to_string(WEXITSTATUS(status));
  }
  if (!outcome.error.empty()) outcome.output.clear();
  return outcome;
}

}  // namespace faultlab
