// Suite `fork`: what fork() costs a process against the memory it has mapped, per backing, and
// what the copy-on-write faults after it cost.
//
// This is the question users bring to faultlab first: how long does my process stall in fork(),
// how soon does the child run, how long until it is gone again, and what does each write after
// the fork cost? The kernel copies page tables at fork only where it must (private memory with an
// anon_vma: anonymous 4 KiB, THP, private hugetlb); shared and read-only file mappings are left to
// fault in lazily in the child. So the sweep over RSS and backings shows fork as page-table copy
// work, and the write cases show where the copy is paid later instead.
//
// Timing: every span is a pair of TSC stamps (tsc_clock.h), wall time: CPU time would miss the
// child and the time blocked in waitpid (platform.md). A benchmark maps and populates its region
// once per repetition (Setup-like work stays outside every stamp), checks its premise through
// pagemap and smaps (mm_probe.h), forks once untimed as warm-up, then measures a fixed number of
// forks (Iterations), and reports the per-fork figures as counters. The perf counters count the
// parent (read before the fork and after the child is reaped); the child's faults, context
// switches and CPU time are its rusage (child_page_faults, child_context_switches, child_cpu_ns).
// Between forks, untimed, a fixed CPU loop gives the machine's speed at the time (reference_ns,
// harness.h ReferenceWorkNs): where a row's repetitions differ and it differs as much, the host
// moved, not fork.
// faultlab keeps its own process small for these forks: hwloc's I/O plugins are not loaded
// (main.cc) and the binary is linked with -z now, so a child does not resolve _exit lazily
// (about 19 faults of its own). What remains of faultlab's own fork cost (its ~100 mappings) is
// the same at every size: fork/latency_floor/fork_rss0 measures it.
//
// The region, the premise checks and the timed fork itself are in fork_probe.h, where tests
// drive them; this file holds the benchmarks, their measuring and reporting, and the COW-PTE host.

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "bench/fork_probe.h"
#include "bench/harness.h"
#include "bench/kernel_features.h"
#include "bench/mm_probe.h"
#include "bench/model_suite.h"
#include "bench/perf_counters.h"
#include "bench/profile_control.h"
#include "bench/suite.h"
#include "bench/tsc_clock.h"
#include "topology/hugetlb.h"

namespace faultlab {
namespace {

// What a latency benchmark does to the parent besides its region.
enum class Variant { kPlain, kDontFork, kWipeOnFork, kThreads, kCowPte };
// Whose write a write_after_fork benchmark times.
enum class Writer { kParentWhileChild, kChild, kParentAfterExit };

constexpr int kExtraThreads = 3;
// The prctl number the COW-PTE series used, which mainline kernels (6.3+) gave to PR_SET_MDWE.
constexpr int kPrSetMdwe = 65;


// The parent may run its child on another of the run's CPUs: a parent pinned to one CPU would
// make the child wait for the parent to block, which is not what a user's fork does. The main
// thread may still be pinned by an earlier suite, so the run's CPU set (or every online CPU) is
// set here and the old mask put back at the end.
class ForkAffinity {
 public:
  ForkAffinity() {
    CPU_ZERO(&old_);
    saved_ = sched_getaffinity(0, sizeof(old_), &old_) == 0;
    cpu_set_t want;
    CPU_ZERO(&want);
    const auto& cpus = CurrentRunOptions().cpus;
    if (cpus.empty()) {
      const long n = sysconf(_SC_NPROCESSORS_ONLN);
      for (long i = 0; i < n && i < CPU_SETSIZE; ++i) CPU_SET(static_cast<int>(i), &want);
    } else {
      for (int c : cpus) CPU_SET(c, &want);
    }
    sched_setaffinity(0, sizeof(want), &want);
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &want)) description_ += (description_.empty() ? "" : ",") + std::to_string(c);
    }
  }
  ~ForkAffinity() {
    if (saved_) sched_setaffinity(0, sizeof(old_), &old_);
  }
  ForkAffinity(const ForkAffinity&) = delete;
  ForkAffinity& operator=(const ForkAffinity&) = delete;
  const std::string& description() const { return description_; }

 private:
  cpu_set_t old_;
  bool saved_ = false;
  std::string description_;
};

// Idle threads for the `threads` variant: blocked on a condition variable, so they cost no CPU
// but make the mm multi-threaded (fork then has more CPUs to consider when it flushes the TLB
// after write-protecting the parent's PTEs, and more per-thread state around it).
class IdleThreads {
 public:
  explicit IdleThreads(int count) {
    for (int i = 0; i < count; ++i) {
      threads_.emplace_back([this] {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] { return stop_; });
      });
    }
  }
  ~IdleThreads() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  IdleThreads(const IdleThreads&) = delete;
  IdleThreads& operator=(const IdleThreads&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Why this backing cannot run here (hugetlb_pages: the 2 MiB pages it needs); empty if it can.
std::string WhyBackingCannotRun(const BackingKind& kind, long hugetlb_pages) {
  return WhyCannotRun(kind.needs, kind.backing == ForkBacking::kHugetlb2M ? kPage2M : 0,
                      hugetlb_pages, CurrentRunOptions().node.value_or(-1))
      .value_or("");
}

// What one benchmark measured, or why it could not: the measuring may run in another process
// (the COW-PTE host), so it is kept apart from the reporting.
struct Measurement {
  std::string error;
  std::vector<double> samples_ns;         // the time column: one per fork, or per page written
  std::map<std::string, double> figures;  // counters reported as they are
  CounterTotals totals;                   // perf counts, reported per sample
};

// Reports a measurement as the benchmark's figures (the time column is the mean sample), or
// the skip with its reason.
void Report(benchmark::State& state, const BackingKind& kind, const std::string& cpus,
            Measurement m) {
  if (SkippedOrFailed(state, m.error, "")) return;
  const double samples = static_cast<double>(m.samples_ns.size());
  ReportPerEvent(state, m.totals, samples);
  for (const auto& [name, value] : m.figures) state.counters[name] = value;
  ReportSamples(state, m.samples_ns,
                "backing=" + std::string(kind.name) + " cpus=" + cpus + " premise=verified");
}

// The COW-PTE series (never merged) turns page-table sharing on for a process with a prctl whose
// number the user gives: the series used 65, which mainline kernels assign to PR_SET_MDWE, so it
// is never called by default. It is called here with every argument 0 (PR_SET_MDWE(0) would set
// nothing), in a host process forked for the benchmark: whatever the prctl turns on stays with
// the host's mm and dies with it, and faultlab's own process is left as it was. Before measuring,
// the host checks that the prctl did what COW-PTE does: a child forked after it must go without
// the tables of a probe region that a child forked before it got. Then the host runs `measure`
// and hands the measurement back as JSON (RunInChild).
// A host runs one row: at most this long (a 4 GiB row's forks and checks take well under it).
constexpr int kCowPteHostTimeoutS = 600;

Measurement InCowPteHost(int prctl_number, const std::function<Measurement()>& measure) {
  const ChildOutcome host = RunInChild(
      [&] {
        Measurement m;
        long withheld_before = 0, withheld_after = 0;
        m.error = TablesWithheldFromChildKb(&withheld_before);
        if (m.error.empty() && prctl(prctl_number, 0, 0, 0, 0) != 0) {
          m.error = Errno(("prctl(" + std::to_string(prctl_number) + ", 0, 0, 0, 0)").c_str()) +
                    ": this kernel has no COW-PTE prctl of that number";
        }
        if (m.error.empty()) m.error = TablesWithheldFromChildKb(&withheld_after);
        const long probe_tables_kb = static_cast<long>(kCowPteProbeBytes / kPage2M * 4);
        if (m.error.empty() && withheld_after - withheld_before < probe_tables_kb / 2) {
          m.error = "prctl(" + std::to_string(prctl_number) +
                    ") succeeded but fork still copies page tables: a child's VmPTE was " +
                    std::to_string(withheld_after) + " kB below its parent's after it and " +
                    std::to_string(withheld_before) + " kB before it, where sharing the tables of a " +
                    std::to_string(kCowPteProbeBytes >> 20) + " MiB region would take " +
                    std::to_string(probe_tables_kb) + " kB off" +
                    (prctl_number == kPrSetMdwe
                         ? " (65 is PR_SET_MDWE in mainline kernels: with 0 it sets nothing)"
                         : "");
        }
        if (m.error.empty()) m = measure();
        return nlohmann::json{{"error", m.error},
                              {"samples_ns", m.samples_ns},
                              {"figures", m.figures},
                              {"names", m.totals.names},
                              {"sums", m.totals.sums}}
            .dump();
      },
      kCowPteHostTimeoutS, "its COW-PTE host's row");
  if (!host.error.empty()) return {host.error + " (the COW-PTE host process)", {}, {}, {}};
  const nlohmann::json j = nlohmann::json::parse(host.output, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return {"the COW-PTE host's report is not JSON", {}, {}, {}};
  Measurement m;
  m.error = j.at("error").get<std::string>();
  m.samples_ns = j.at("samples_ns").get<std::vector<double>>();
  m.figures = j.at("figures").get<std::map<std::string, double>>();
  m.totals.names = j.at("names").get<std::vector<std::string>>();
  m.totals.sums = j.at("sums").get<std::vector<double>>();
  return m;
}

// Case `latency` (and its variants and floors): fork() of a parent with `bytes` populated, the
// child exiting at once. The samples (the time column) are fork_ns + exit_wait_ns per fork: what
// a user of fork+exit+wait feels in the parent. child_runs_ns is beside it; the parent's spin
// between fork returning and seeing the stamp is in neither.
Measurement MeasureLatency(ForkBacking backing, Variant variant, Spawn spawn, int forks,
                           std::size_t bytes) {
  Measurement m;
  std::string& error = m.error;
  Region region;
  SharedArea shared(0);
  if (!shared.page()) error = Errno("mmap of the shared page");
  // bytes 0: the floor of a fork of faultlab's own process, with no region.
  const bool has_region = bytes > 0;
  if (error.empty() && has_region) error = region.Map(backing, bytes);
  if (error.empty() && has_region) error = CheckPremise(backing, region);
  if (error.empty() && variant == Variant::kDontFork &&
      madvise(region.base(), bytes, MADV_DONTFORK) != 0) {
    error = Errno("madvise(MADV_DONTFORK)");
  }
  if (error.empty() && variant == Variant::kWipeOnFork &&
      madvise(region.base(), bytes, MADV_WIPEONFORK) != 0) {
    error = Errno("madvise(MADV_WIPEONFORK)");
  }
  std::optional<IdleThreads> threads;
  if (variant == Variant::kThreads) threads.emplace(kExtraThreads);

  long parent_pte = 0, child_pte = 0;
  if (error.empty() && spawn == Spawn::kFork) error = MeasureVmPte(shared.page(), &parent_pte, &child_pte);
  // The region's own page tables: one 4 KiB table per 2 MiB of 4 KiB pages. A child with
  // MADV_DONTFORK or MADV_WIPEONFORK must not have got them: the premise of those variants.
  const long region_pte_kb =
      backing == ForkBacking::kAnon4K ? static_cast<long>(bytes / kPage2M * 4) : 0;
  if (error.empty() && (variant == Variant::kDontFork || variant == Variant::kWipeOnFork) &&
      parent_pte - child_pte < region_pte_kb / 2) {
    error = "the child still got the region's page tables (VmPTE parent " +
            std::to_string(parent_pte) + " kB, child " + std::to_string(child_pte) + " kB)";
  }

  // The counters count the parent only. Inherited counters would be copied into every child at
  // fork and torn down at its exit: 50-140 us of the fork being measured here (each inherited
  // tracepoint scans the list of trace events). The child's faults, context switches and CPU
  // time come from wait4 instead.
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  // Reserved: a vector growing after a fork would take COW faults on the heap the fork
  // write-protected, counted as the parent's.
  std::vector<double> fork_ns, runs_ns, exit_ns, child_faults, child_switches, child_cpu_ns,
      reference_ns;
  for (auto* v : {&fork_ns, &runs_ns, &exit_ns, &child_faults, &child_switches, &child_cpu_ns,
                  &reference_ns, &m.samples_ns}) {
    v->reserve(static_cast<std::size_t>(forks));
  }
  ForkSample warm;
  // One untimed fork first: the first fork after populating write-protects every PTE of the
  // parent, later ones find them write-protected; the steady state is what repeats.
  if (error.empty()) error = TimedFork(spawn, shared.page(), &warm);
  for (int i = 0; error.empty() && i < forks; ++i) {
    ForkSample s;
    const std::vector<double> before = group.Read();
    error = TimedFork(spawn, shared.page(), &s);
    m.totals.Add(before, group.Read());
    fork_ns.push_back(s.fork_ns);
    runs_ns.push_back(s.child_runs_ns);
    exit_ns.push_back(s.exit_wait_ns);
    child_faults.push_back(s.child_faults);
    child_switches.push_back(s.child_context_switches);
    child_cpu_ns.push_back(s.child_cpu_ns);
    m.samples_ns.push_back(s.fork_ns + s.exit_wait_ns);
    reference_ns.push_back(ReferenceWorkNs());
  }
  // DAMON's pageout may drop file pages during the run: the figures hold only if they stayed.
  if (error.empty() && has_region) error = CheckPremise(backing, region);
  if (!error.empty()) return m;
  auto mean = [&](const std::vector<double>& v) {
    double sum = 0;
    for (double x : v) sum += x;
    return sum / static_cast<double>(v.size());
  };
  m.figures["fork_ns"] = mean(fork_ns);
  if (spawn != Spawn::kPosixSpawn) m.figures["child_runs_ns"] = mean(runs_ns);
  m.figures["exit_wait_ns"] = mean(exit_ns);
  m.figures["fork_p50_ns"] = Summarize(fork_ns).p50;
  m.figures["child_page_faults"] = mean(child_faults);
  m.figures["child_context_switches"] = mean(child_switches);
  m.figures["child_cpu_ns"] = mean(child_cpu_ns);
  m.figures["first_round_ns"] = warm.fork_ns + warm.exit_wait_ns;
  m.figures["reference_ns"] = Summarize(reference_ns).p50;
  // VmPTE counts every page table of the process (faultlab's own are the ~80 kB baseline a
  // DONTFORK child shows). THP regions count too: the kernel deposits one PTE table per huge PMD
  // for a later split, and fork deposits one for the child. hugetlb maps at PMD level: no PTE
  // tables. shmem and file_ro children get none of the region's (not copied at fork).
  if (spawn == Spawn::kFork) {
    m.figures["parent_vmpte_kb"] = static_cast<double>(parent_pte);
    m.figures["child_vmpte_kb"] = static_cast<double>(child_pte);
  }
  m.figures["forks"] = static_cast<double>(forks);
  return m;
}

// Runs one benchmark: skips it if the backing cannot run here (hugetlb_pages: the 2 MiB pages it
// needs), else measures it, in the COW-PTE host if asked, with the run's CPUs allowed.
void RunMeasured(benchmark::State& state, const BackingKind& kind, long hugetlb_pages,
                 bool cow_pte, const std::function<Measurement()>& measure) {
  ForkAffinity affinity;
  Measurement m;
  m.error = WhyBackingCannotRun(kind, hugetlb_pages);
  if (m.error.empty()) {
    m = cow_pte ? InCowPteHost(*CurrentRunOptions().cow_pte_prctl, measure) : measure();
  }
  Report(state, kind, affinity.description(), std::move(m));
}

void RunLatency(benchmark::State& state, ForkBacking backing, Variant variant, Spawn spawn,
                int forks) {
  const std::size_t bytes = static_cast<std::size_t>(state.range(0)) << 20;
  RunMeasured(state, KindOf(backing), static_cast<long>(bytes / kPage2M),
              variant == Variant::kCowPte,
              [&] { return MeasureLatency(backing, variant, spawn, forks, bytes); });
}

// Case `write_after_fork`, as three benchmarks per backing:
//   parent_write:            the parent writes each page while the child is alive: the COW
//                            copy (4 KiB; hugetlb copies 2 MiB; shmem is shared: no fault, no
//                            copy). THP: the kernel does not copy a huge page on a write fault
//                            (since 5.8 do_huge_pmd_wp_page splits the PMD and the fault copies
//                            one 4 KiB page), so the thp figure is the first write per 2 MiB
//                            and thp_kb_after shows how much stayed huge.
//   child_write:             the child writes each page of its copy; it times its own writes and
//                            hands them back through shared memory.
//   parent_write_after_exit: the parent writes after the child was reaped: the pages are still
//                            write-protected but mapped once, so the fault reuses them (no copy).
// With COW-PTE (the *_cow_pte cases) the first write in each 2 MiB breaks the shared table: by
// copy while the child lives, by reuse after it exited.
// Each round maps and populates a fresh region, checks its premise, forks once, and times the
// writes: a region written in an earlier round would no longer be what it claims (a split THP,
// pages the parent already owns). The samples are the writes of the measured rounds; round 0 is
// first_round_ns (fresh frames in this VM).
Measurement MeasureWrites(ForkBacking backing, Writer writer, int rounds, std::size_t bytes) {
  const BackingKind& kind = KindOf(backing);
  const std::size_t pages = bytes / kind.page;
  Measurement m;
  std::string& error = m.error;
  SharedArea shared(pages * sizeof(uint64_t));
  if (!shared.page()) error = Errno("mmap of the shared page");

  const double ns_per_tick = TscNsPerTick();
  const std::vector<std::string>& names = CurrentRunOptions().counters;
  CounterGroup group(names, /*inherit=*/false);
  CounterTotals& totals = m.totals;
  totals.names = group.names();
  std::vector<uint64_t> ticks(pages);
  std::vector<double>& ns = m.samples_ns;
  double first_ns = 0;
  long thp_kb_after = -1;
  for (int r = 0; error.empty() && r <= rounds; ++r) {
    Region region;
    if (error = region.Map(backing, bytes); !error.empty()) break;
    if (error = CheckPremise(backing, region); !error.empty()) break;
    SharedPage* page = shared.page();
    page->child_stamp.store(0);
    page->go.store(0);
    page->child_done.store(0);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      error = Errno("pipe");
      break;
    }
    const pid_t pid = fork();
    if (pid == 0) {
      close(fds[1]);
      if (writer == Writer::kChild) {
        uint64_t* out = shared.ticks();
        std::fill(out, out + pages, 0);  // fault the result buffer in outside the stamps
        CounterGroup mine(totals.names, /*inherit=*/false);
        const std::vector<double> before = mine.Read();
        StampedTouch<true>(region.base(), kind.page, pages, out);
        const std::vector<double> after = mine.Read();
        page->child_counter_count = std::min<std::size_t>(after.size(), 64);
        for (std::size_t i = 0; i < page->child_counter_count && i < before.size(); ++i) {
          page->child_counters[i] = after[i] - before[i];
        }
        if (backing == ForkBacking::kThp) {
          page->child_thp_kb = SmapsField(SmapsOf(region.base()), "AnonHugePages");
        }
        page->child_done.store(1, std::memory_order_release);
      }
      page->child_stamp.store(TscNow(), std::memory_order_release);
      if (writer == Writer::kParentWhileChild) {
        WaitForEof(fds[0]);  // stay alive (sharing the pages) until the parent has written
      }
      _exit(0);
    }
    close(fds[0]);
    if (pid < 0) {
      close(fds[1]);
      error = Errno("fork");
      break;
    }
    int status = 0;
    if (writer == Writer::kParentWhileChild) {
      if (!WaitForStamp(page, pid, &status)) {
        close(fds[1]);
        error = "the child died before it stamped (status " + std::to_string(status) + ")";
        break;
      }
      const std::vector<double> before = group.Read();
      StampedTouch<true>(region.base(), kind.page, pages, ticks.data());
      if (r > 0) totals.Add(before, group.Read());
    }
    close(fds[1]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      error = "the child did not exit 0 (status " + std::to_string(status) +
              (backing == ForkBacking::kHugetlb2M ? "; SIGBUS: no free hugetlb page for its copy?)"
                                              : ")");
      break;
    }
    if (page->child_stamp.load() == 0) {
      error = "the child never stamped: it did not run";
      break;
    }
    if (writer == Writer::kChild) {
      if (!page->child_done.load(std::memory_order_acquire)) {
        error = "the child did not report its writes";
        break;
      }
      std::copy_n(shared.ticks(), pages, ticks.begin());
      thp_kb_after = page->child_thp_kb;
      if (r > 0) {
        std::vector<double> zero(page->child_counter_count, 0.0);
        totals.Add(zero, std::vector<double>(page->child_counters,
                                             page->child_counters + page->child_counter_count));
      }
    }
    if (writer == Writer::kParentAfterExit) {
      const std::vector<double> before = group.Read();
      StampedTouch<true>(region.base(), kind.page, pages, ticks.data());
      if (r > 0) totals.Add(before, group.Read());
    }
    if (backing == ForkBacking::kThp && writer != Writer::kChild) {
      thp_kb_after = SmapsField(SmapsOf(region.base()), "AnonHugePages");
    }
    const double round_mean = AddRound(ticks, ns_per_tick, r > 0, &ns);
    if (r == 0) first_ns = round_mean;
  }
  if (!error.empty()) return m;
  double sum = 0;
  for (double x : ns) sum += x;
  m.figures["first_round_ns"] = first_ns;
  m.figures["ns_per_4k"] = sum / static_cast<double>(ns.size()) /
                           static_cast<double>(kind.page / kPage4K);
  m.figures["pages"] = static_cast<double>(pages);
  // The writer's AnonHugePages after the last round's writes, of rss_mib * 1024 kB.
  if (backing == ForkBacking::kThp) m.figures["thp_kb_after"] = static_cast<double>(thp_kb_after);
  return m;
}

void RunWriteAfterFork(benchmark::State& state, ForkBacking backing, Writer writer, int rounds,
                       bool cow_pte) {
  const std::size_t bytes = static_cast<std::size_t>(state.range(0)) << 20;
  // hugetlb: the parent's region and, in the write rounds, one copy of it (a private hugetlb
  // child without a free page for its copy gets SIGBUS).
  RunMeasured(state, KindOf(backing), 2 * static_cast<long>(bytes / kPage2M), cow_pte,
              [&] { return MeasureWrites(backing, writer, rounds, bytes); });
}

// Sizes of the latency sweep, log scale. --quick stops at 256 MiB; otherwise 1 GiB, and 2 and
// 4 GiB where MemAvailable leaves room for the region twice over (file_ro holds it in the page
// cache and in the file) plus 1 GiB for everything else. Huge backings start at one 2 MiB page.
std::vector<long> SweepMib(bool quick, const BackingKind& kind) {
  std::vector<long> sizes = {kind.page == kPage2M ? 2l : 1l, 4, 16, 64, 256};
  if (quick) return sizes;
  sizes.push_back(1024);
  long available_kb = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long value = 0;
  std::string unit;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemAvailable:") available_kb = value;
  }
  for (long mib : {2048l, 4096l}) {
    if (available_kb / 1024 >= 2 * mib + 1024) sizes.push_back(mib);
  }
  return sizes;
}

// Forks per repetition: many where a fork is cheap (a stable mean), fewer where one costs
// milliseconds, so the quick suite stays near a minute. Only a 4 KiB anonymous region makes fork
// copy an entry per page; THP and hugetlb copy one per 2 MiB, and shmem and a read-only file
// none (their VMAs have no anon_vma), so those forks stay under ~3 ms up to 4 GiB and get 128 at
// every size: a repetition of 16 forks of 0.3 ms lasts 5 ms, short enough for one stall of the
// shared host to move its mean by 10-30%.
int ForksFor(long mib) { return static_cast<int>(std::clamp(2048l / mib, 16l, 128l)); }
int ForksFor(const BackingKind& kind, long mib) {
  return kind.backing == ForkBacking::kAnon4K ? ForksFor(mib) : ForksFor(1);
}

constexpr long kVariantMib = 256;  // the variants and floors run at the largest quick size

void RegisterForkSuite(const RunOptions& options) {
  const int repetitions = Repetitions(options);
  auto add = [&](const std::string& name, std::vector<int64_t> args,
                 std::vector<std::string> arg_names, int64_t iterations, auto body) {
    Configure(benchmark::RegisterBenchmark(name.c_str(), body), iterations, repetitions)
        ->Args(args)
        ->ArgNames(arg_names);
  };
  // The floor of the sweep, first: a fork of faultlab's own process with no region, measured
  // before anything else has run in it. main.cc keeps the process from growing with the regions
  // (glibc's mmap threshold); glibc's cache of the threads variant's stacks still gives a child
  // 23 faults instead of 10 after that variant.
  const int floor_forks = 128;
  add("fork/latency_floor/fork", {0}, {"rss_mib"}, floor_forks, [](benchmark::State& st) {
    RunLatency(st, ForkBacking::kAnon4K, Variant::kPlain, Spawn::kFork, floor_forks);
  });
  for (const BackingKind& kind : BackingKinds()) {
    for (long mib : SweepMib(options.quick, kind)) {
      const int forks = ForksFor(kind, mib);
      const ForkBacking b = kind.backing;
      add(std::string("fork/latency/") + kind.name, {mib}, {"rss_mib"}, forks,
          [b, forks](benchmark::State& st) { RunLatency(st, b, Variant::kPlain, Spawn::kFork, forks); });
    }
  }
  const int vforks = ForksFor(kVariantMib);
  const struct {
    const char* name;
    Variant variant;
  } variants[] = {{"latency_dontfork", Variant::kDontFork},
                  {"latency_wipeonfork", Variant::kWipeOnFork},
                  {"latency_threads", Variant::kThreads}};
  for (const auto& v : variants) {
    const Variant variant = v.variant;
    std::vector<int64_t> args = {kVariantMib};
    std::vector<std::string> names = {"rss_mib"};
    if (variant == Variant::kThreads) {
      args.push_back(kExtraThreads);
      names.push_back("extra_threads");
    }
    add(std::string("fork/") + v.name + "/anon4k", args, names, vforks,
        [variant, vforks](benchmark::State& st) {
          RunLatency(st, ForkBacking::kAnon4K, variant, Spawn::kFork, vforks);
        });
  }
  // Floors. vfork and posix_spawn do not copy the parent's mm, so their cost should not depend
  // on rss_mib.
  add("fork/latency_floor/vfork", {kVariantMib}, {"rss_mib"}, floor_forks,
      [](benchmark::State& st) {
        RunLatency(st, ForkBacking::kAnon4K, Variant::kPlain, Spawn::kVfork, floor_forks);
      });
  add("fork/latency_floor/posix_spawn", {kVariantMib}, {"rss_mib"}, floor_forks,
      [](benchmark::State& st) {
        RunLatency(st, ForkBacking::kAnon4K, Variant::kPlain, Spawn::kPosixSpawn, floor_forks);
      });

  const struct {
    const char* name;
    Writer writer;
  } writers[] = {{"parent_write", Writer::kParentWhileChild},
                 {"child_write", Writer::kChild},
                 {"parent_write_after_exit", Writer::kParentAfterExit}};
  const int rounds = options.quick ? 4 : 8;
  for (const auto& w : writers) {
    for (ForkBacking b : {ForkBacking::kAnon4K, ForkBacking::kThp, ForkBacking::kHugetlb2M,
                          ForkBacking::kShmem}) {
      const BackingKind& kind = KindOf(b);
      // 4 KiB: 4096 pages a round; 2 MiB: 32 pages a round (a copy is ~100x the work).
      const long mib = (kind.page == kPage2M ? 64 : 16) * (options.quick ? 1 : 4);
      const int64_t writes = mib * (1l << 20) / static_cast<long>(kind.page) * rounds;
      const Writer writer = w.writer;
      add(std::string("fork/") + w.name + "/" + kind.name, {mib}, {"rss_mib"}, writes,
          [b, writer, rounds](benchmark::State& st) {
            RunWriteAfterFork(st, b, writer, rounds, /*cow_pte=*/false);
          });
    }
  }

  // The third real variant, only when the user names the COW-PTE prctl (see InCowPteHost):
  // the 4 KiB sweep and the parent's writes after fork, in a host process with the prctl set.
  if (options.cow_pte_prctl) {
    const BackingKind& anon = KindOf(ForkBacking::kAnon4K);
    for (long mib : SweepMib(options.quick, anon)) {
      const int forks = ForksFor(mib);
      add("fork/latency_cow_pte/anon4k", {mib}, {"rss_mib"}, forks, [forks](benchmark::State& st) {
        RunLatency(st, ForkBacking::kAnon4K, Variant::kCowPte, Spawn::kFork, forks);
      });
    }
    const long mib = 16 * (options.quick ? 1 : 4);  // as the 4 KiB write cases above
    const int64_t writes = mib * (1l << 20) / static_cast<long>(kPage4K) * rounds;
    for (const auto& w : writers) {
      if (w.writer == Writer::kChild) continue;  // the child's breaks mirror the parent's
      const Writer writer = w.writer;
      add(std::string("fork/") + w.name + "_cow_pte/anon4k", {mib}, {"rss_mib"}, writes,
          [writer, rounds](benchmark::State& st) {
            RunWriteAfterFork(st, ForkBacking::kAnon4K, writer, rounds, /*cow_pte=*/true);
          });
    }
  }

  // The model's half of the comparison runs in the same invocation (same machine state and
  // pinning), unless the model suite runs anyway.
  if (!RunsSuite(options, "model")) RegisterModelForkCases(options);
}

std::vector<SuiteVariant> ForkVariants() {
  std::vector<SuiteVariant> variants;
  for (const BackingKind& kind : BackingKinds()) {
    const bool hugetlb = kind.backing == ForkBacking::kHugetlb2M;
    // --quick's largest hugetlb need: the 256 MiB latency region (the write cases need 2 x 64).
    variants.push_back({kind.name, kind.needs, hugetlb ? kPage2M : 0,
                        hugetlb ? static_cast<long>((256ul << 20) / kPage2M) : 0});
  }
  return variants;
}

FAULTLAB_SUITE(Suite{"fork", "fork latency against RSS per backing, and the write faults after fork",
                     ForkVariants(), RegisterForkSuite});

}  // namespace
}  // namespace faultlab
