// Suite `numa`: where memory should live and what placement costs, on the real kernel.
//
// Benchmark names read numa/<case>/<backing>/<named arguments>:
//
//   matrix, for each CPU node of the run's CPUs and each node with memory, and each backing
//   (anon4k: MADV_NOHUGEPAGE; thp: MADV_HUGEPAGE, AnonHugePages checked; hugetlb2m: MAP_HUGETLB
//   from the memory node's own pool):
//     first_touch/<backing>/cpu_node:N/mem_node:M  the per-fault cost of first touch of memory
//         strictly bound to M (mbind MPOL_BIND before the touch), from a CPU of N. As in the
//         fault suite: a TSC stamp per fault, round 0 reported apart (first_round_ns), warm-up
//         rounds until two round medians agree within 5%, then the measured rounds.
//     latency/...     a dependent-load pointer chase over a region 4x the LLC (and more): the 4 KiB
//         blocks in a random order, and inside each block its 64 cache lines in a random order,
//         the whole a single cycle; ns_per_load. One TLB miss per 64 loads at most; a cache miss
//         (nearly) every load.
//     bandwidth/...   a streaming read (a sum of 64-bit words) over the region, several passes;
//         gb_per_s (10^9 bytes per second).
//   policies, first touch of 4 KiB pages under a VMA policy (mbind before the touch):
//     policy/{local,bind,preferred,interleave,weighted_interleave}/anon4k/cpu_node:N[/target:M]
//     [/nodes:K]; the placement each policy promises is checked on every page, and the pages per
//     node are counters (pages_node<N>). Preferred and the interleaves, placements the matrix
//     does not have, add /chase_mib:S: the latency chase and the bandwidth read above, over a
//     region of S MiB placed by the same policy and checked the same way, as the counters
//     ns_per_load and gb_per_s (bind to M, and local, are the matrix's cells).
//   migration, a region filled with a pattern on `from`, moved to `to` (timed) and back
//   (untimed) every round; after every move each page's node and every word are checked:
//     move_pages/<backing>/batch:{1,16,512}/from:N/to:M  move_pages(2) with B pages per call;
//         pages_per_s and the per-page distribution (each call's time over its pages).
//     mbind_move/<backing>/from:N/to:M   mbind(MPOL_BIND {to}, MPOL_MF_MOVE|MPOL_MF_STRICT).
//     migrate_pages/anon4k/from:N/to:M   migrate_pages(2) of a whole process: measured in a
//         forked child holding the region, so it moves the child's other private pages on
//         `from` too (process_pages_on_from, from numa_maps), never faultlab's own.
//   hinting faults (NUMA balancing), 4 KiB pages, each in a forked child whose address space
//   alone the scanner walks (faultlab sleeps meanwhile, and the scanner runs from a task's
//   ticks; pages the child shares with faultlab are never marked), so faultlab's own memory
//   takes no hinting fault in later rows:
//     hinting/anon4k/cpu_node:N/mem_node:M/region_mib:R/seconds:S  kernel.numa_balancing set to
//         1 for this row only, and only in a run given --numa-balancing (else a skip row saying
//         so); through SystemSettings, so SIGINT/SIGTERM or a crash put the machine's value
//         back. The region is filled on M (mbind MPOL_BIND), its policy reset to the default
//         (a bound VMA is never migrated by balancing), then read one byte a page, a TSC stamp
//         each, pass after pass from a CPU of N. A perf software event samples the address of
//         every minor fault the worker takes, so the stamp of exactly each access that took a
//         hinting fault is a sample (the slowest stamps would not do: a preemption, a tick, or
//         the scanner's own work, which runs on this thread, makes long stamps that are no
//         fault): the time column and mean_ns, p50_ns... are the kernel's hinting-fault round
//         trip (ns_per_fault; the migration's copy included on a remote row). The child keeps a second, idle
//         thread: the kernel does not mark pages already on the node of a single-threaded
//         process, so a local cell would take no hinting fault at all (label
//         companion_thread=idle). M == N (the one cell on a one-node machine) touches for S
//         seconds; M != N stops when kConvergedShare (90%) of the pages are on N (placement
//         queried every 100 ms), at S seconds at most: converged 1 and converge_ms, or
//         converged 0 and no converge_ms, label not_converged_in=Ss.
//         Counters: hint_faults (on the region), hint_faults_per_page, hint_faults_per_s,
//         pages_hinted (pages that took at least one), faults_elsewhere (the worker's other
//         minor faults: its stamp buffer and stack, which the scanner marks too), access_ns
//         (the median stamp of a pass: an access without a fault), cpu_node_share and
//         pages_node<N> at the end, migrated_per_page (pages no longer on M), task_pages_migrated
//         (the worker's numa_pages_migrated, /proc/thread-self/sched), passes, touch_s, and the
//         deltas of /proc/vmstat's vmstat_numa_hint_faults, _hint_faults_local, _pages_migrated,
//         _pte_updates: machine-wide, every process's hinting faults count while the row runs
//         (label vmstat=machine_wide). Checked: every region fault is among the machine's
//         hinting faults, every word as written, still 4 KiB pages, all present; no fault at all
//         in S seconds fails the row. The label says who set numa_balancing (set_by=faultlab
//         machine_value=0, or set_by=machine) and the scanner's pace (scan=scan_delay_ms:...,
//         or scan=unreadable: since 5.13 the knobs are in debugfs, which this machine's kernel
//         lockdown closes even to reads; faultlab leaves them at the kernel's defaults).
//     protnone_analogue/anon4k/cpu_node:N/mem_node:N/region_mib:R/rounds:K  the same round
//         trip made in user space, no numa_balancing needed: the region mprotect'ed PROT_NONE
//         (untimed), then one read a page, a TSC stamp each; a SIGSEGV handler mprotects the
//         faulting page read/write and returns, and the read runs again. Every read must raise
//         exactly one SIGSEGV; after the rounds the region is one VMA again (each page merged
//         back), every word as written, every page on N. ns_per_fault, first_round_ns (round 0,
//         apart), harness_ns and harness_ratio as first_touch. Beside the hinting row of the
//         same run (with --numa-balancing) it shows what the kernel saves by keeping the VMA
//         and the signal out of it: a hinting fault only restores the PTE.
//
// Premises, before any figure is kept: the worker is pinned to a CPU of the CPU node
// (sched_getcpu and its node checked); every page (every 2 MiB for huge backings) is queried
// with move_pages(nodes=NULL) and must be on the node the row names, else the row fails with
// "premise: N of M pages on node X, not Y"; every page present and the page size the backing
// names (smaps). Rows that cannot run here are skip rows ("skipped: <reason>"), registered all
// the same: on a one-node machine, every row that needs a second node with memory names the
// first node number without memory (from:0/to:1) and says "needs a second NUMA node with memory;
// this machine has 1".
//
// Options: --quick gives small regions and 3 repetitions (else 5; hinting rows 1, else 3, each
// S = 6 s, else 20 s). The CPU nodes are the nodes of the run's CPUs (--cpu restricts them; the
// first run CPU of each node is the one used). --node N restricts the rows to those whose memory
// side is N: matrix cells, hinting and protnone_analogue rows with mem_node N, bind and preferred
// with target N, migration from or to N (interleave and local keep their nodes); as in every
// suite, --node also restricts the run's CPUs to N's. --numa-balancing lets the hinting rows run.

#include <fcntl.h>
#include <linux/mman.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <new>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/guard_probe.h"
#include "bench/harness.h"
#include "bench/kernel_features.h"
#include "bench/mm_probe.h"
#include "bench/model_suite.h"
#include "bench/numa_probe.h"
#include "bench/perf_counters.h"
#include "bench/profile_control.h"
#include "bench/suite.h"
#include "bench/tsc_clock.h"
#include "topology/hugetlb.h"
#include "topology/kernel_files.h"
#include "topology/system_settings.h"
#include "topology/topology.h"

namespace faultlab {
namespace {

enum class NumaBacking { kAnon4K, kThp, kHugetlb2M };

struct BackingKind {
  NumaBacking backing;
  const char* name;
  std::size_t page;  // what one fault maps, and the stride of placement queries
  std::vector<Feature> needs;
};
const std::vector<BackingKind>& BackingKinds() {
  static const std::vector<BackingKind> kinds = {
      {NumaBacking::kAnon4K, "anon4k", kPage4K, {}},
      {NumaBacking::kThp, "thp", kPage2M, {Feature::kThp}},
      {NumaBacking::kHugetlb2M, "hugetlb2m", kPage2M, {Feature::kHugetlb2M}},
  };
  return kinds;
}
const BackingKind& KindOf(NumaBacking backing) {
  for (const BackingKind& kind : BackingKinds()) {
    if (kind.backing == backing) return kind;
  }
  std::abort();
}

std::string ErrnoText(const char* what) { return absl::StrCat(what, ": ", ErrnoName(errno)); }

// One region: anonymous between PROT_NONE guards (so it stays one VMA whatever its neighbours'
// policies), or a hugetlb mapping. Nothing is touched by Map.
class NumaRegion {
 public:
  NumaRegion() = default;
  NumaRegion(const NumaRegion&) = delete;
  NumaRegion& operator=(const NumaRegion&) = delete;
  ~NumaRegion() {
    if (reservation_) munmap(reservation_, reservation_bytes_);
  }

  std::string Map(NumaBacking backing, std::size_t bytes) {
    bytes_ = bytes;
    if (backing == NumaBacking::kHugetlb2M) {
      // No MAP_NORESERVE: a pool too small fails here with ENOMEM, not with SIGBUS later.
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
      if (p == MAP_FAILED) return ErrnoText("mmap(MAP_HUGETLB|MAP_HUGE_2MB)");
      reservation_ = base_ = static_cast<char*>(p);
      reservation_bytes_ = bytes;
      return {};
    }
    const std::size_t align = backing == NumaBacking::kThp ? kPage2M : kPage4K;
    reservation_bytes_ = bytes + 2 * align + kPage4K;
    void* p = mmap(nullptr, reservation_bytes_, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return ErrnoText("mmap");
    reservation_ = static_cast<char*>(p);
    const auto after_guard = reinterpret_cast<uintptr_t>(p) + kPage4K;
    base_ = reinterpret_cast<char*>((after_guard + align - 1) & ~(align - 1));
    if (mprotect(base_, bytes, PROT_READ | PROT_WRITE) != 0) return ErrnoText("mprotect");
    const int advice = backing == NumaBacking::kThp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE;
    if (madvise(base_, bytes, advice) != 0 && !(advice == MADV_NOHUGEPAGE && errno == EINVAL)) {
      return ErrnoText(backing == NumaBacking::kThp ? "madvise(MADV_HUGEPAGE)"
                                                    : "madvise(MADV_NOHUGEPAGE)");
    }
    return {};
  }

  char* base() const { return base_; }
  std::size_t bytes() const { return bytes_; }

 private:
  char* base_ = nullptr;
  std::size_t bytes_ = 0;
  char* reservation_ = nullptr;
  std::size_t reservation_bytes_ = 0;
};

// Every page present and mapped with the page size the backing names; empty if so.
std::string CheckBacking(const BackingKind& kind, const NumaRegion& region, const char* when) {
  const std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
  if (pagemap.empty()) return "premise: cannot read /proc/self/pagemap";
  if (CountPresent(pagemap) != pagemap.size()) {
    return absl::StrCat("premise: only ", CountPresent(pagemap), " of ", pagemap.size(),
                        " pages present ", when);
  }
  const std::map<std::string, long> smaps = SmapsOf(region.base());
  const long kb = static_cast<long>(region.bytes() / 1024);
  switch (kind.backing) {
    case NumaBacking::kAnon4K:
      if (SmapsField(smaps, "AnonHugePages") != 0) {
        return absl::StrCat("premise: 4 KiB region got huge pages (AnonHugePages ",
                            SmapsField(smaps, "AnonHugePages"), " kB) ", when);
      }
      break;
    case NumaBacking::kThp:
      if (SmapsField(smaps, "AnonHugePages") != kb) {
        return absl::StrCat("premise: THP region has AnonHugePages ",
                            SmapsField(smaps, "AnonHugePages"), " of ", kb, " kB ", when,
                            " (memory fragmented on the node, or THP defrag off?)");
      }
      break;
    case NumaBacking::kHugetlb2M:
      if (SmapsField(smaps, "KernelPageSize") != 2048 || SmapsField(smaps, "Private_Hugetlb") != kb) {
        return absl::StrCat("premise: hugetlb mapping is not what was asked: KernelPageSize ",
                            SmapsField(smaps, "KernelPageSize"), " kB, Private_Hugetlb ",
                            SmapsField(smaps, "Private_Hugetlb"), " kB ", when);
      }
      break;
  }
  return {};
}

// --- Nodes and pinning -----------------------------------------------------------------------

// The nodes with memory this run uses (--node restricts them); node 0 alone on a kernel without
// NUMA.
std::vector<int> MemoryNodes() {
  std::vector<int> nodes = NodesWithMemory();
  if (nodes.empty()) nodes = {0};
  return nodes;
}

// The CPU nodes of the run's CPUs, each with the first run CPU on it.
std::map<int, int> CpuNodes(const RunOptions& options) {
  std::map<int, int> nodes;
  std::vector<int> cpus = options.cpus;
  if (cpus.empty()) cpus = {sched_getcpu()};
  for (int cpu : cpus) {
    const int node = NodeOfCpu(cpu);
    if (node >= 0 && !nodes.count(node)) nodes[node] = cpu;
  }
  return nodes;
}

// Pins the calling thread to `cpu` and checks it runs there, on `node`. Empty on success.
std::string PinTo(int cpu, int node) {
  const RunOptions& options = CurrentRunOptions();
  int got = -1;
  if (options.topology) {
    got = PinThisThread(*options.topology, cpu);
  } else {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) == 0) got = sched_getcpu();
  }
  if (got != cpu) {
    return absl::StrCat("could not pin the worker to CPU ", cpu, " (runs on ", sched_getcpu(), ")");
  }
  unsigned c = 0, n = 0;
  if (getcpu(&c, &n) != 0 || static_cast<int>(n) != node) {
    return absl::StrCat("premise: CPU ", cpu, " is on node ", n, ", not ", node);
  }
  return {};
}

// Why `count` 2 MiB hugetlb pages cannot be had on `node`; empty if they can.
std::string WhyNoHugePagesOn(const BackingKind& kind, std::size_t bytes, int node) {
  if (auto why = WhyCannotRun(kind.needs)) return *why;
  if (kind.backing != NumaBacking::kHugetlb2M) return {};
  const long pages = static_cast<long>(bytes / kPage2M);
  // The node's own pool (/sys/devices/system/node/nodeN/hugepages/hugepages-2048kB): a strict
  // bind takes pages from it alone. On a one-node machine it is the global pool.
  return WhyNoHugetlbPages(kPage2M, pages, node).value_or("");
}

// --- Stamped first touch ---------------------------------------------------------------------

constexpr int kMaxWarmupRounds = 10;
constexpr double kStableWithin = 0.05;

struct Measurement {
  std::string skip;   // why the row cannot run here
  std::string error;  // a premise or data check that failed
  std::vector<double> samples_ns;        // the distribution reported as mean_ns, p50_ns, ...
  double seconds = 0;                    // the time column's total (manual time)
  double events = 0;                     // what perf counters are reported per
  std::map<std::string, double> figures;
  CounterTotals totals;
  std::string label;

  // A row of one sample per fault: the time column totals the samples, counters are per fault,
  // ns_per_fault is their mean (returned).
  double PerFault() {
    double sum = 0;
    for (double ns : samples_ns) sum += ns;
    const double mean = sum / static_cast<double>(samples_ns.size());
    seconds = sum * 1e-9;
    events = static_cast<double>(samples_ns.size());
    figures["ns_per_fault"] = mean;
    return mean;
  }
};

// What a first-touch row does around the stamps: the policy before the touch, the check after.
struct TouchPlan {
  NumaBacking backing;
  std::size_t bytes;
  int rounds;
  std::function<std::string(NumaRegion&)> before_touch;
  // Checks placement after the touch; fills counts with pages per node.
  std::function<std::string(NumaRegion&, std::map<int, std::size_t>*)> check;
};

Measurement MeasureFirstTouch(const TouchPlan& plan) {
  Measurement m;
  const BackingKind& kind = KindOf(plan.backing);
  const std::size_t count = plan.bytes / kind.page;
  const double ns_per_tick = TscNsPerTick();
  std::vector<uint64_t> ticks(count), sorted(count);
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  std::map<int, std::size_t> counts;
  double harness_ns = 0;
  struct Figures {
    double mean = 0, median = 0;
  };
  auto round = [&](bool verify, bool measured, bool last) -> std::optional<Figures> {
    NumaRegion region;
    if (std::string error = region.Map(plan.backing, plan.bytes); !error.empty()) {
      m.error = error;
      return std::nullopt;
    }
    if (std::string error = plan.before_touch(region); !error.empty()) {
      m.error = error;
      return std::nullopt;
    }
    const std::vector<double> before = measured ? group.Read() : std::vector<double>{};
    StampedTouch<true>(region.base(), kind.page, count, ticks.data());
    if (measured) m.totals.Add(before, group.Read());
    Figures f;
    for (uint64_t t : ticks) f.mean += static_cast<double>(t) * ns_per_tick;
    f.mean /= static_cast<double>(count);
    sorted = ticks;
    std::nth_element(sorted.begin(), sorted.begin() + count / 2, sorted.end());
    f.median = static_cast<double>(sorted[count / 2]) * ns_per_tick;
    if (measured) {
      for (uint64_t t : ticks) m.samples_ns.push_back(static_cast<double>(t) * ns_per_tick);
    }
    if (verify || last) {
      std::string error = CheckBacking(kind, region, "after the first touch");
      if (error.empty()) error = plan.check(region, &counts);
      if (!error.empty()) {
        m.error = error;
        return std::nullopt;
      }
    }
    if (last) {
      // The same stamped loop over mapped pages: the harness without a fault.
      StampedTouch<true>(region.base(), kind.page, count, ticks.data());
      std::nth_element(ticks.begin(), ticks.begin() + count / 2, ticks.end());
      harness_ns = static_cast<double>(ticks[count / 2]) * ns_per_tick;
    }
    return f;
  };
  const std::optional<Figures> first = round(true, false, false);
  if (!first) return m;
  int warmup = 0;
  bool stable = false;
  double previous = first->median;
  for (int r = 0; r < kMaxWarmupRounds; ++r) {
    const std::optional<Figures> warm = round(false, false, false);
    if (!warm) return m;
    ++warmup;
    if (std::abs(warm->median - previous) <= kStableWithin * previous) {
      stable = true;
      break;
    }
    previous = warm->median;
  }
  m.samples_ns.reserve(count * static_cast<std::size_t>(plan.rounds));
  for (int r = 0; r < plan.rounds; ++r) {
    if (!round(false, true, r == plan.rounds - 1)) return m;
  }
  const double mean = m.PerFault();
  m.figures["ns_per_4k"] = mean / static_cast<double>(kind.page / kPage4K);
  m.figures["first_round_ns"] = first->mean;
  m.figures["warmup_rounds"] = warmup;
  m.figures["warmup_stable"] = stable ? 1 : 0;
  m.figures["harness_ns"] = harness_ns;
  m.figures["harness_ratio"] = mean > 0 ? harness_ns / mean : 0;
  m.figures["pages"] = static_cast<double>(count);
  for (const auto& [node, n] : counts) {
    if (node >= 0) m.figures[absl::StrCat("pages_node", node)] = static_cast<double>(n);
  }
  return m;
}

// --- Matrix --------------------------------------------------------------------------------

enum class MatrixCase { kFirstTouch, kLatency, kBandwidth };
const char* MatrixCaseName(MatrixCase c) {
  switch (c) {
    case MatrixCase::kFirstTouch: return "first_touch";
    case MatrixCase::kLatency: return "latency";
    case MatrixCase::kBandwidth: return "bandwidth";
  }
  return "?";
}

// Where a measured region's pages go: the VMA policy set before they are populated, and the
// check that they went where it promises (empty if so), run after populating and again after
// measuring. The matrix binds to one node; the policy rows place by their policy.
struct Placement {
  NumaPolicy policy;
  std::vector<int> nodes;
  std::function<std::string(const NumaRegion&)> check;
};

// Every page (every 2 MiB for huge backings) strictly on `node`.
Placement BoundTo(const BackingKind& kind, int node) {
  const std::size_t page = kind.page;
  return {NumaPolicy::kBind, {node}, [page, node](const NumaRegion& region) {
            return CheckAllOnNode(region.base(), region.bytes(), page, node);
          }};
}

// Maps the region under `placement`'s policy and touches it through `populate`; then checks the
// backing and the placement.
std::string MapPlacedPopulated(const BackingKind& kind, std::size_t bytes,
                               const Placement& placement, NumaRegion* region,
                               const std::function<void(char*)>& populate) {
  if (std::string error = region->Map(kind.backing, bytes); !error.empty()) return error;
  if (std::string error = SetRangePolicy(region->base(), bytes, placement.policy, placement.nodes);
      !error.empty()) {
    return error;
  }
  populate(region->base());
  if (std::string error = CheckBacking(kind, *region, "after populating"); !error.empty()) {
    return error;
  }
  return placement.check(*region);
}

// Maps the region bound strictly to `node` and touches it through `populate`; then checks the
// backing and that every page (every 2 MiB for huge backings) is on `node`.
std::string MapBoundPopulated(const BackingKind& kind, std::size_t bytes, int node,
                              NumaRegion* region, const std::function<void(char*)>& populate) {
  return MapPlacedPopulated(kind, bytes, BoundTo(kind, node), region, populate);
}

// Writes the pointer chase into the region: a single cycle through every cache line, 4 KiB
// blocks in a random order and the lines of each block in a random order. Returns the start.
void* BuildChase(char* base, std::size_t bytes) {
  constexpr std::size_t kLine = 64;
  constexpr std::size_t kLines = kPage4K / kLine;
  const std::size_t blocks = bytes / kPage4K;
  std::mt19937_64 random(0x5eed);  // the same chase every run
  std::vector<std::uint32_t> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), 0u);
  std::shuffle(block_order.begin(), block_order.end(), random);
  std::array<std::uint32_t, kLines> lines;
  std::iota(lines.begin(), lines.end(), 0u);
  void** first = nullptr;
  void** prev = nullptr;
  for (std::uint32_t block : block_order) {
    std::shuffle(lines.begin(), lines.end(), random);
    for (std::uint32_t line : lines) {
      auto** here = reinterpret_cast<void**>(base + block * kPage4K + line * kLine);
      if (prev) {
        *prev = here;
      } else {
        first = here;
      }
      prev = here;
    }
  }
  *prev = first;
  return first;
}

__attribute__((noinline)) void* Chase(void* start, std::size_t loads) {
  void* p = start;
  for (std::size_t i = 0; i < loads; ++i) p = *static_cast<void**>(p);
  return p;
}

__attribute__((noinline)) std::uint64_t StreamSum(const std::uint64_t* words, std::size_t n) {
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  for (std::size_t i = 0; i + 4 <= n; i += 4) {
    a += words[i];
    b += words[i + 1];
    c += words[i + 2];
    d += words[i + 3];
  }
  return a + b + c + d;
}

// The dependent-load chase over a region placed by `placement` (the matrix: bound to one node;
// the policy rows: their policy's placement).
Measurement MeasureLatency(const BackingKind& kind, std::size_t bytes, const Placement& placement,
                           int passes, std::size_t loads_per_pass) {
  Measurement m;
  NumaRegion region;
  void* start = nullptr;
  if (m.error = MapPlacedPopulated(kind, bytes, placement, &region,
                                   [&](char* base) { start = BuildChase(base, bytes); });
      !m.error.empty()) {
    return m;
  }
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  void* p = start;
  // Pass 0 is warm-up (reported apart): the chase's first walk also pays the TLB and page-walk
  // caches' cold start.
  for (int pass = 0; pass <= passes; ++pass) {
    const std::vector<double> before = group.Read();
    const double t0 = MonotonicNs();
    p = Chase(p, loads_per_pass);
    const double t1 = MonotonicNs();
    if (pass > 0) m.totals.Add(before, group.Read());
    const double per_load = (t1 - t0) / static_cast<double>(loads_per_pass);
    if (pass == 0) {
      m.figures["first_pass_ns_per_load"] = per_load;
    } else {
      m.samples_ns.push_back(per_load);
    }
  }
  benchmark::DoNotOptimize(p);
  // Placement unchanged by the measurement.
  if (m.error = placement.check(region); !m.error.empty()) return m;
  std::vector<double> sorted = m.samples_ns;
  std::sort(sorted.begin(), sorted.end());
  double total = 0;
  for (double ns : m.samples_ns) total += ns * static_cast<double>(loads_per_pass);
  m.seconds = total * 1e-9;
  m.events = static_cast<double>(loads_per_pass) * passes;
  m.figures["ns_per_load"] = sorted[sorted.size() / 2];
  m.figures["ns_per_load_min"] = sorted.front();
  m.figures["loads_per_pass"] = static_cast<double>(loads_per_pass);
  m.figures["passes"] = passes;
  return m;
}

// The streaming read over a region placed by `placement`, as MeasureLatency.
Measurement MeasureBandwidth(const BackingKind& kind, std::size_t bytes,
                             const Placement& placement, int passes) {
  Measurement m;
  NumaRegion region;
  if (m.error = MapPlacedPopulated(kind, bytes, placement, &region,
                                   [&](char* base) { std::memset(base, 0x5a, bytes); });
      !m.error.empty()) {
    return m;
  }
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  const auto* words = reinterpret_cast<const std::uint64_t*>(region.base());
  const std::size_t n = bytes / sizeof(std::uint64_t);
  std::uint64_t sum = 0;
  double total_ns = 0, best = 0;
  for (int pass = 0; pass <= passes; ++pass) {
    const std::vector<double> before = group.Read();
    const double t0 = MonotonicNs();
    sum += StreamSum(words, n);
    const double t1 = MonotonicNs();
    const double gbps = static_cast<double>(bytes) / (t1 - t0);  // bytes per ns = GB/s
    if (pass == 0) {
      m.figures["first_pass_gb_per_s"] = gbps;
      continue;
    }
    m.totals.Add(before, group.Read());
    total_ns += t1 - t0;
    best = std::max(best, gbps);
    m.samples_ns.push_back(t1 - t0);
  }
  // 0x5a in every byte: the sum says every word was read as written.
  const std::uint64_t expect = 0x5a5a5a5a5a5a5a5aull * static_cast<std::uint64_t>(n) *
                               static_cast<std::uint64_t>(passes + 1);
  if (sum != expect) {
    m.error = "data: the streaming sum does not match what was written";
    return m;
  }
  if (m.error = placement.check(region); !m.error.empty()) return m;
  m.seconds = total_ns * 1e-9;
  m.events = passes;
  m.figures["gb_per_s"] = static_cast<double>(bytes) * passes / total_ns;
  m.figures["gb_per_s_best"] = best;
  m.figures["passes"] = passes;
  return m;
}

// --- Policies ------------------------------------------------------------------------------

// The counters every row reports, then the label, or the skip or failure.
void Finish(benchmark::State& state, Measurement& m, const std::string& label) {
  if (SkippedOrFailed(state, m.skip, m.error)) return;
  ReportPerEvent(state, m.totals, m.events);
  for (const auto& [name, value] : m.figures) state.counters[name] = value;
  ReportSamples(state, m.samples_ns, "placement=verified " + label, m.seconds);
}

std::string NodesText(const std::vector<int>& nodes) { return absl::StrJoin(nodes, ","); }

// --- Migration -----------------------------------------------------------------------------

enum class MoveCase { kMovePages, kMbindMove, kMigratePages };
const char* MoveCaseName(MoveCase c) {
  switch (c) {
    case MoveCase::kMovePages: return "move_pages";
    case MoveCase::kMbindMove: return "mbind_move";
    case MoveCase::kMigratePages: return "migrate_pages";
  }
  return "?";
}

std::uint64_t Pattern(std::size_t word) {
  return (word * 0x9E3779B97F4A7C15ull) ^ 0xfa17ab5eedull;
}

void Fill(char* base, std::size_t bytes) {
  auto* words = reinterpret_cast<std::uint64_t*>(base);
  for (std::size_t i = 0; i < bytes / 8; ++i) words[i] = Pattern(i);
}

// Every word as Fill wrote it, and every page (every 2 MiB for huge backings) on `node`.
std::string CheckMoved(const BackingKind& kind, const NumaRegion& region, int node,
                       const char* after) {
  const auto* words = reinterpret_cast<const std::uint64_t*>(region.base());
  for (std::size_t i = 0; i < region.bytes() / 8; ++i) {
    if (words[i] != Pattern(i)) {
      return absl::StrCat("data: page ", i * 8 / kPage4K, " word ", i % (kPage4K / 8),
                          " changed ", after);
    }
  }
  if (std::string error = CheckAllOnNode(region.base(), region.bytes(), kind.page, node);
      !error.empty()) {
    return error + " " + after;
  }
  return CheckBacking(kind, region, after);
}

Measurement MeasureMove(MoveCase c, const BackingKind& kind, std::size_t bytes, std::size_t batch,
                        int from, int to, int rounds) {
  Measurement m;
  NumaRegion region;
  if (m.error = MapBoundPopulated(kind, bytes, from, &region,
                                  [&](char* base) { Fill(base, bytes); });
      !m.error.empty()) {
    return m;
  }
  // The bind served the first touch; the moves then meet no policy of the VMA's own
  // (mbind_move sets one each move).
  if (m.error = SetRangePolicy(region.base(), bytes, NumaPolicy::kDefault, {}); !m.error.empty()) {
    return m;
  }
  const std::size_t count = bytes / kind.page;
  std::vector<void*> pages(count);
  for (std::size_t i = 0; i < count; ++i) pages[i] = region.base() + i * kind.page;
  std::vector<int> status(count);
  batch = std::min(batch, count);
  const double ns_per_tick = TscNsPerTick();
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  if (c == MoveCase::kMigratePages) {
    m.figures["process_pages_on_from"] = static_cast<double>(ProcessPagesOnNode(from));
  }
  long not_moved = 0;
  double measured_ns = 0, first_round_ns = 0;
  // One direction: timed samples, one per call, as ns per page.
  auto move = [&](int dst, int src, bool measured, double* round_ns) -> std::string {
    const std::vector<double> before = group.Read();
    *round_ns = 0;
    if (c == MoveCase::kMovePages) {
      for (std::size_t i = 0; i < count; i += batch) {
        const std::size_t n = std::min(batch, count - i);
        const uint64_t t0 = TscNow();
        std::string error = MovePagesTo(pages.data() + i, n, dst, status.data() + i);
        const uint64_t t1 = TscNow();
        if (!error.empty()) return error;
        const double ns = static_cast<double>(t1 - t0) * ns_per_tick;
        *round_ns += ns;
        if (measured) m.samples_ns.push_back(ns / static_cast<double>(n));
      }
    } else {
      long left = 0;
      const uint64_t t0 = TscNow();
      std::string error = c == MoveCase::kMbindMove ? MbindMoveTo(region.base(), bytes, dst)
                                                    : MigrateProcessPages(src, dst, &left);
      const uint64_t t1 = TscNow();
      if (!error.empty()) return error;
      not_moved += left;
      *round_ns = static_cast<double>(t1 - t0) * ns_per_tick;
      if (measured) m.samples_ns.push_back(*round_ns / static_cast<double>(count));
    }
    if (measured) m.totals.Add(before, group.Read());
    return {};
  };
  for (int r = 0; r <= rounds; ++r) {
    const bool measured = r > 0;
    double there_ns = 0, back_ns = 0;
    if (m.error = move(to, from, measured, &there_ns); !m.error.empty()) return m;
    if (m.error = CheckMoved(kind, region, to, absl::StrCat("after the move to node ", to).c_str());
        !m.error.empty()) {
      return m;
    }
    if (measured) {
      measured_ns += there_ns;
    } else {
      first_round_ns = there_ns / static_cast<double>(count);
    }
    if (m.error = move(from, to, false, &back_ns); !m.error.empty()) return m;
    if (m.error =
            CheckMoved(kind, region, from, absl::StrCat("after the move back to node ", from).c_str());
        !m.error.empty()) {
      return m;
    }
  }
  const double moved = static_cast<double>(count) * rounds;
  m.figures["pages_per_s"] = moved / (measured_ns * 1e-9);
  m.figures["ns_per_page"] = measured_ns / moved;
  m.figures["mib_per_s"] = moved * static_cast<double>(kind.page) / (1 << 20) / (measured_ns * 1e-9);
  m.figures["first_round_ns"] = first_round_ns;
  m.figures["pages"] = static_cast<double>(count);
  m.figures["pages_per_call"] = c == MoveCase::kMovePages ? static_cast<double>(batch)
                                                          : static_cast<double>(count);
  m.figures["rounds"] = rounds;
  if (c == MoveCase::kMigratePages) m.figures["not_moved"] = static_cast<double>(not_moved);
  m.seconds = measured_ns * 1e-9;
  m.events = moved;
  return m;
}

// --- Measuring in a forked child -------------------------------------------------------------

// A Measurement sent through a pipe: every field in order, strings and vectors after their
// length. Nothing is sent until the measurement is over.
void PutRaw(std::string* out, const void* p, std::size_t n) {
  out->append(static_cast<const char*>(p), n);
}
void PutSize(std::string* out, std::size_t n) { PutRaw(out, &n, sizeof(n)); }
void PutDouble(std::string* out, double v) { PutRaw(out, &v, sizeof(v)); }
void PutString(std::string* out, const std::string& s) {
  PutSize(out, s.size());
  out->append(s);
}

std::string Serialize(const Measurement& m) {
  std::string out;
  PutString(&out, m.skip);
  PutString(&out, m.error);
  PutString(&out, m.label);
  PutDouble(&out, m.seconds);
  PutDouble(&out, m.events);
  PutSize(&out, m.samples_ns.size());
  PutRaw(&out, m.samples_ns.data(), m.samples_ns.size() * sizeof(double));
  PutSize(&out, m.figures.size());
  for (const auto& [name, value] : m.figures) {
    PutString(&out, name);
    PutDouble(&out, value);
  }
  PutSize(&out, std::min(m.totals.names.size(), m.totals.sums.size()));
  for (std::size_t i = 0; i < m.totals.names.size() && i < m.totals.sums.size(); ++i) {
    PutString(&out, m.totals.names[i]);
    PutDouble(&out, m.totals.sums[i]);
  }
  return out;
}

class WireReader {
 public:
  explicit WireReader(const std::string& in) : in_(in) {}
  bool ok() const { return ok_; }
  void Raw(void* p, std::size_t n) {
    if (!ok_ || in_.size() - at_ < n) {
      ok_ = false;
      return;
    }
    // An empty vector's data() may be null, which memcpy must not get even for 0 bytes.
    if (n > 0) std::memcpy(p, in_.data() + at_, n);
    at_ += n;
  }
  std::size_t Size() {
    std::size_t n = 0;
    Raw(&n, sizeof(n));
    // No count can exceed the bytes left: a damaged length stops here, not in a huge resize.
    if (n > in_.size()) ok_ = false;
    return ok_ ? n : 0;
  }
  double Double() {
    double v = 0;
    Raw(&v, sizeof(v));
    return v;
  }
  std::string String() {
    std::string s(Size(), '\0');
    Raw(s.data(), s.size());
    return s;
  }
  bool AtEnd() const { return at_ == in_.size(); }

 private:
  const std::string& in_;
  std::size_t at_ = 0;
  bool ok_ = true;
};

bool Deserialize(const std::string& bytes, Measurement* m) {
  WireReader in(bytes);
  m->skip = in.String();
  m->error = in.String();
  m->label = in.String();
  m->seconds = in.Double();
  m->events = in.Double();
  m->samples_ns.resize(in.Size());
  in.Raw(m->samples_ns.data(), m->samples_ns.size() * sizeof(double));
  for (std::size_t i = 0, n = in.Size(); i < n && in.ok(); ++i) {
    std::string name = in.String();
    m->figures[name] = in.Double();
  }
  for (std::size_t i = 0, n = in.Size(); i < n && in.ok(); ++i) {
    m->totals.names.push_back(in.String());
    m->totals.sums.push_back(in.Double());
  }
  return in.ok() && in.AtEnd();
}

// Runs `measure` in a forked child (RunInChild) and returns what it measured; `row` names the
// row in the message of a child killed at `timeout_s`.
Measurement MeasureInChild(const std::function<Measurement()>& measure, int timeout_s,
                           const std::string& row) {
  const ChildOutcome child = RunInChild(
      [&] {
        Measurement r;
        try {
          r = measure();
        } catch (const std::exception& e) {
          r.error = std::string("the measuring child: ") + e.what();
        }
        return Serialize(r);
      },
      timeout_s, absl::StrCat("its ", row, " row"));
  Measurement m;
  if (!child.error.empty()) {
    m.error = child.error;
  } else if (!Deserialize(child.output, &m)) {
    m = Measurement();
    m.error = "the measuring child's result is incomplete";
  }
  return m;
}

// migrate_pages moves every page of a process on `from`: measured in a forked child, so it
// moves the child's region and the few pages the child wrote, and faultlab's own process (the
// benchmark library, its results) is never migrated under it. The child may take this long for
// its whole row (map, fill, every move and check): a few seconds in an emulated guest, under one
// here.
constexpr int kMoveChildTimeoutS = 60;

// --- Registration --------------------------------------------------------------------------

struct Sizes {
  long first_touch_mib(NumaBacking b) const {
    if (b == NumaBacking::kThp) return quick ? 256 : 1024;
    return quick ? 64 : 256;
  }
  long chase_mib() const { return quick ? 128 : 512; }  // 4x and 16x a 32 MiB LLC
  long move_mib(NumaBacking b) const {
    if (b == NumaBacking::kThp) return quick ? 64 : 256;
    return quick ? 16 : 64;
  }
  int first_touch_rounds(NumaBacking b) const {
    return (quick ? 4 : 8) * (b == NumaBacking::kAnon4K ? 1 : 2);
  }
  int move_rounds() const { return quick ? 4 : 8; }
  int latency_passes() const { return quick ? 2 : 4; }
  std::size_t loads_per_pass() const { return quick ? (1u << 20) : (1u << 22); }
  int bandwidth_passes() const { return quick ? 8 : 20; }
  int repetitions() const { return Repetitions(CurrentRunOptions()); }
  bool quick;
};

// A row's run function: pins, checks, measures; the name's arguments in state.range().
using RowFn = std::function<void(benchmark::State&)>;

void Register(const std::string& name, const std::vector<int64_t>& args,
              const std::vector<std::string>& arg_names, int64_t iterations, int repetitions,
              RowFn fn) {
  Configure(benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& st) { fn(st); }),
            std::max<int64_t>(1, iterations), repetitions)
      ->Args(args)
      ->ArgNames(arg_names);
}

void RegisterMatrix(const RunOptions& options, const Sizes& sizes,
                    const std::map<int, int>& cpu_nodes, const std::vector<int>& mem_nodes) {
  for (MatrixCase mc : {MatrixCase::kFirstTouch, MatrixCase::kLatency, MatrixCase::kBandwidth}) {
    for (const BackingKind& kind : BackingKinds()) {
      for (const auto& [cpu_node, cpu] : cpu_nodes) {
        for (int mem_node : mem_nodes) {
          if (options.node && *options.node != mem_node) continue;
          const std::string name =
              absl::StrCat("numa/", MatrixCaseName(mc), "/", kind.name);
          const NumaBacking backing = kind.backing;
          const int pin_cpu = cpu;
          const int cn = cpu_node;
          if (mc == MatrixCase::kFirstTouch) {
            const long mib = sizes.first_touch_mib(backing);
            const int rounds = sizes.first_touch_rounds(backing);
            const int64_t faults = mib * (1l << 20) / static_cast<long>(kind.page) * rounds;
            Register(name, {cpu_node, mem_node, mib, rounds},
                     {"cpu_node", "mem_node", "region_mib", "rounds"}, faults,
                     sizes.repetitions(), [=](benchmark::State& st) {
                       const BackingKind& k = KindOf(backing);
                       const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
                       Measurement m;
                       m.skip = WhyNoHugePagesOn(k, bytes, mem_node);
                       if (m.skip.empty()) m.error = PinTo(pin_cpu, cn);
                       if (m.skip.empty() && m.error.empty()) {
                         TouchPlan plan{backing, bytes, rounds,
                                        [&](NumaRegion& r) {
                                          return SetRangePolicy(r.base(), bytes, NumaPolicy::kBind,
                                                                {mem_node});
                                        },
                                        [&](NumaRegion& r, std::map<int, std::size_t>* counts) {
                                          return CheckAllOnNode(r.base(), bytes, k.page, mem_node,
                                                                counts);
                                        }};
                         m = MeasureFirstTouch(plan);
                       }
                       Finish(st, m,
                              absl::StrCat("cpu=", pin_cpu, " node=", mem_node, " cpu_node=", cn,
                                           " backing=", k.name));
                     });
          } else if (mc == MatrixCase::kLatency) {
            const long mib = sizes.chase_mib();
            const int passes = sizes.latency_passes();
            const std::size_t loads = sizes.loads_per_pass();
            Register(name, {cpu_node, mem_node, mib}, {"cpu_node", "mem_node", "region_mib"},
                     static_cast<int64_t>(loads) * passes, sizes.repetitions(),
                     [=](benchmark::State& st) {
                       const BackingKind& k = KindOf(backing);
                       const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
                       Measurement m;
                       m.skip = WhyNoHugePagesOn(k, bytes, mem_node);
                       if (m.skip.empty()) m.error = PinTo(pin_cpu, cn);
                       if (m.skip.empty() && m.error.empty()) {
                         // The time column: ns per load (iterations are the loads).
                         m = MeasureLatency(k, bytes, BoundTo(k, mem_node), passes, loads);
                       }
                       Finish(st, m,
                              absl::StrCat("cpu=", pin_cpu, " node=", mem_node, " cpu_node=", cn,
                                           " backing=", k.name));
                     });
          } else {
            const long mib = sizes.chase_mib();
            const int passes = sizes.bandwidth_passes();
            Register(name, {cpu_node, mem_node, mib}, {"cpu_node", "mem_node", "region_mib"},
                     passes, sizes.repetitions(), [=](benchmark::State& st) {
                       const BackingKind& k = KindOf(backing);
                       const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
                       Measurement m;
                       m.skip = WhyNoHugePagesOn(k, bytes, mem_node);
                       if (m.skip.empty()) m.error = PinTo(pin_cpu, cn);
                       if (m.skip.empty() && m.error.empty()) {
                         m = MeasureBandwidth(k, bytes, BoundTo(k, mem_node), passes);
                       }
                       // The time column: one pass over the region.
                       Finish(st, m,
                              absl::StrCat("cpu=", pin_cpu, " node=", mem_node, " cpu_node=", cn,
                                           " backing=", k.name));
                     });
          }
        }
      }
    }
  }
}

void RegisterPolicies(const RunOptions& options, const Sizes& sizes,
                      const std::map<int, int>& cpu_nodes, const std::vector<int>& mem_nodes) {
  const long mib = sizes.first_touch_mib(NumaBacking::kAnon4K);
  const int rounds = sizes.first_touch_rounds(NumaBacking::kAnon4K);
  const int64_t faults = mib * (1l << 20) / static_cast<long>(kPage4K) * rounds;
  const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
  const long chase_mib = sizes.chase_mib();
  const std::size_t chase_bytes = static_cast<std::size_t>(chase_mib) << 20;
  const int latency_passes = sizes.latency_passes();
  const std::size_t loads = sizes.loads_per_pass();
  const int bandwidth_passes = sizes.bandwidth_passes();

  // One row: `target` (-1: none) for bind and preferred, `nodes` for the interleaves.
  auto add = [&](NumaPolicy policy, int cpu_node, int cpu, int target,
                 const std::vector<int>& nodes, const std::string& skip) {
    const std::string name = absl::StrCat("numa/policy/", PolicyName(policy), "/anon4k");
    // Placements the matrix does not have also get the matrix's chase and streaming read, so
    // that policies compare for latency- and bandwidth-bound work too; bind to a node (and
    // local, the CPU node's own) is the matrix's own cell.
    const bool loads_too = policy == NumaPolicy::kPreferred || policy == NumaPolicy::kInterleave ||
                           policy == NumaPolicy::kWeightedInterleave;
    std::vector<int64_t> args = {cpu_node};
    std::vector<std::string> arg_names = {"cpu_node"};
    if (target >= 0) {
      args.push_back(target);
      arg_names.push_back("target");
    }
    if (!nodes.empty()) {
      args.push_back(static_cast<int64_t>(nodes.size()));
      arg_names.push_back("nodes");
    }
    args.insert(args.end(), {mib, rounds});
    arg_names.insert(arg_names.end(), {"region_mib", "rounds"});
    if (loads_too) {
      args.push_back(chase_mib);
      arg_names.push_back("chase_mib");
    }
    Register(name, args, arg_names, faults, sizes.repetitions(), [=](benchmark::State& st) {
      Measurement m;
      m.skip = skip;
      if (m.skip.empty()) m.skip = WhyPolicyUnavailable(policy).value_or("");
      if (m.skip.empty()) m.error = PinTo(cpu, cpu_node);
      const bool interleave =
          policy == NumaPolicy::kInterleave || policy == NumaPolicy::kWeightedInterleave;
      const std::vector<int> weights = policy == NumaPolicy::kWeightedInterleave
                                           ? InterleaveWeights(nodes)
                                           : std::vector<int>(nodes.size(), 1);
      const std::vector<int> set_nodes = target >= 0 ? std::vector<int>{target} : nodes;
      // What the policy promises, checked on every page of every region it placed.
      auto check = [&](const NumaRegion& r, std::map<int, std::size_t>* counts) -> std::string {
        const int want = policy == NumaPolicy::kLocal ? cpu_node : target;
        std::string error = CheckAllOnNode(r.base(), r.bytes(), kPage4K, interleave ? -1 : want,
                                           counts);
        if (!interleave || error.rfind("premise: cannot", 0) == 0) return error;
        return CheckInterleaved(*counts, r.bytes() / kPage4K, nodes, weights);
      };
      if (m.skip.empty() && m.error.empty()) {
        TouchPlan plan{NumaBacking::kAnon4K, bytes, rounds,
                       [&](NumaRegion& r) {
                         return SetRangePolicy(r.base(), bytes, policy, set_nodes);
                       },
                       check};
        m = MeasureFirstTouch(plan);
      }
      if (loads_too && m.skip.empty() && m.error.empty()) {
        const Placement placed{policy, set_nodes, [&](const NumaRegion& r) {
                                 std::map<int, std::size_t> counts;
                                 return check(r, &counts);
                               }};
        const BackingKind& k = KindOf(NumaBacking::kAnon4K);
        const Measurement latency = MeasureLatency(k, chase_bytes, placed, latency_passes, loads);
        const Measurement bandwidth =
            latency.error.empty() ? MeasureBandwidth(k, chase_bytes, placed, bandwidth_passes)
                                  : Measurement{};
        m.error = latency.error.empty() ? bandwidth.error : latency.error;
        // The row's time column stays the first touch; these are its counters.
        if (m.error.empty()) {
          m.figures["ns_per_load"] = latency.figures.at("ns_per_load");
          m.figures["gb_per_s"] = bandwidth.figures.at("gb_per_s");
        }
      }
      std::string label = absl::StrCat("cpu=", cpu, " policy=", PolicyName(policy));
      if (policy == NumaPolicy::kLocal) absl::StrAppend(&label, " node=", cpu_node);
      if (target >= 0) absl::StrAppend(&label, " node=", target);
      if (interleave) {
        absl::StrAppend(&label, " nodes=", NodesText(nodes));
        if (policy == NumaPolicy::kWeightedInterleave) {
          absl::StrAppend(&label, " weights=", NodesText(weights));
        }
        if (nodes.size() == 1) absl::StrAppend(&label, " interleave_over_one_node");
      }
      Finish(st, m, label);
    });
  };
  const bool multi = mem_nodes.size() > 1;
  const int missing = FirstNodeWithoutMemory();
  for (const auto& [cpu_node, cpu] : cpu_nodes) {
    add(NumaPolicy::kLocal, cpu_node, cpu, -1, {}, "");
    for (int target : mem_nodes) {
      if (options.node && *options.node != target) continue;
      add(NumaPolicy::kBind, cpu_node, cpu, target, {}, "");
    }
    // Preferring the local node is the default policy; preferred is measured toward the others.
    bool preferred = false;
    for (int target : mem_nodes) {
      if (target == cpu_node || (options.node && *options.node != target)) continue;
      add(NumaPolicy::kPreferred, cpu_node, cpu, target, {}, "");
      preferred = true;
    }
    if (!preferred && !multi) {
      add(NumaPolicy::kPreferred, cpu_node, cpu, missing, {},
          WhyUnavailable(Feature::kNumaMulti).value_or(WhyNotTwoMemoryNodes()));
    }
    add(NumaPolicy::kInterleave, cpu_node, cpu, -1, mem_nodes, "");
    add(NumaPolicy::kWeightedInterleave, cpu_node, cpu, -1, mem_nodes, "");
  }
}

void RegisterMigration(const RunOptions& options, const Sizes& sizes,
                       const std::vector<int>& mem_nodes) {
  std::vector<std::pair<int, int>> pairs;
  std::string skip;
  if (mem_nodes.size() > 1) {
    for (int from : mem_nodes) {
      for (int to : mem_nodes) {
        if (from == to) continue;
        if (options.node && *options.node != from && *options.node != to) continue;
        pairs.push_back({from, to});
      }
    }
  } else {
    pairs.push_back({mem_nodes.front(), FirstNodeWithoutMemory()});
    skip = WhyUnavailable(Feature::kNumaMulti).value_or(WhyNotTwoMemoryNodes());
  }
  const int rounds = sizes.move_rounds();
  for (MoveCase c : {MoveCase::kMovePages, MoveCase::kMbindMove, MoveCase::kMigratePages}) {
    for (const BackingKind& kind : BackingKinds()) {
      if (c == MoveCase::kMigratePages && kind.backing != NumaBacking::kAnon4K) continue;
      const std::vector<long> batches =
          c == MoveCase::kMovePages ? std::vector<long>{1, 16, 512} : std::vector<long>{0};
      for (long batch : batches) {
        for (const auto& [from, to] : pairs) {
          const long mib = sizes.move_mib(kind.backing);
          const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
          const int64_t pages = static_cast<int64_t>(bytes / kind.page) * rounds;
          std::vector<int64_t> args;
          std::vector<std::string> names;
          if (batch > 0) {
            args.push_back(batch);
            names.push_back("batch");
          }
          args.insert(args.end(), {from, to, mib, rounds});
          names.insert(names.end(), {"from", "to", "region_mib", "rounds"});
          const NumaBacking backing = kind.backing;
          const int f = from, t = to;
          Register(absl::StrCat("numa/", MoveCaseName(c), "/", kind.name), args, names, pages,
                   sizes.repetitions(), [=](benchmark::State& st) {
                     const BackingKind& k = KindOf(backing);
                     Measurement m;
                     m.skip = skip;
                     if (m.skip.empty()) m.skip = WhyNoHugePagesOn(k, bytes, f);
                     if (m.skip.empty()) m.skip = WhyNoHugePagesOn(k, bytes, t);
                     if (m.skip.empty()) {
                       const std::size_t b = static_cast<std::size_t>(std::max(1l, batch));
                       m = c == MoveCase::kMigratePages
                               ? MeasureInChild(
                                     [&] { return MeasureMove(c, k, bytes, b, f, t, rounds); },
                                     kMoveChildTimeoutS, MoveCaseName(c))
                               : MeasureMove(c, k, bytes, b, f, t, rounds);
                     }
                     std::string label = absl::StrCat("from=", f, " to=", t, " backing=", k.name,
                                                      " data=verified");
                     if (c == MoveCase::kMigratePages) {
                       absl::StrAppend(&label, " moves=whole_child_process");
                     }
                     Finish(st, m, label);
                   });
        }
      }
    }
  }
}

// --- NUMA hinting faults -------------------------------------------------------------------

struct HintingSizes {
  long region_mib() const { return quick ? 64 : 256; }
  // The local row touches for this long; a remote row stops when placement converged, or here.
  int seconds() const { return quick ? 6 : 20; }
  int repetitions() const { return quick ? 1 : 3; }
  long analogue_mib() const { return quick ? 16 : 64; }
  int analogue_rounds() const { return quick ? 4 : 8; }
  bool quick;
};

// A remote row has converged when this share of its pages is on the CPU's node.
constexpr double kConvergedShare = 0.9;
// How often a remote row queries placement while it touches (every page, with move_pages).
constexpr double kPlacementEveryNs = 100e6;

// kernel.numa_balancing=1 for a scope, through SystemSettings: journalled before the write, so
// SIGINT/SIGTERM (the handler) or a crash (`faultlab restore`, or the next run) put the
// machine's value back; the end of the scope writes it back itself, so no other row runs with
// balancing on. A machine that has it at 1 already is left alone.
class NumaBalancingOn {
 public:
  NumaBalancingOn() {
    const std::optional<std::string> old = ReadKernelFile(kNumaBalancingPath);
    if (!old) {
      error_ = absl::StrCat("cannot read ", kNumaBalancingPath);
      return;
    }
    old_ = *old;
    if (old_ == "1") return;
    try {
      const std::string got = SystemSettings::Get().Set(kNumaBalancingPath, "1");
      changed_ = true;
      if (got != "1") {
        error_ = absl::StrCat("premise: ", kNumaBalancingPath, " reads ", got, " after writing 1");
      }
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }
  ~NumaBalancingOn() {
    if (!changed_) return;
    try {
      SystemSettings::Get().Set(kNumaBalancingPath, old_);
    } catch (const std::exception& e) {
      // Still journalled: RestoreAll at exit, or `faultlab restore`, tries again.
      std::cerr << "faultlab: " << e.what() << "\n";
    }
  }
  NumaBalancingOn(const NumaBalancingOn&) = delete;
  NumaBalancingOn& operator=(const NumaBalancingOn&) = delete;

  const std::string& error() const { return error_; }
  // For the label: who turned it on, and what the machine had.
  std::string LabelText() const {
    return changed_ ? absl::StrCat("numa_balancing=1 set_by=faultlab machine_value=", old_)
                    : "numa_balancing=1 set_by=machine";
  }

 private:
  std::string old_;
  std::string error_;
  bool changed_ = false;
};

// A second thread in the measuring child, idle until the measurement ends. The kernel does not
// mark pages that are already on the node of a single-threaded process (change_pte_range skips
// them when mm_users is 1), so without it a local row never takes a hinting fault (measured
// here: 4 minor faults in 8 s of touching 64 MiB alone; with it, every page faulted at each
// scan). Both rows have it, so they differ in placement alone.
class IdleCompanion {
 public:
  IdleCompanion() {
    if (pipe2(fds_, O_CLOEXEC) != 0) {
      error_ = ErrnoText("pipe2");
      return;
    }
    thread_ = std::thread([fd = fds_[0]] {
      char c;
      while (read(fd, &c, 1) < 0 && errno == EINTR) {
      }
    });
  }
  ~IdleCompanion() {
    if (!thread_.joinable()) return;
    close(fds_[1]);  // its read returns 0: the thread ends
    thread_.join();
    close(fds_[0]);
  }
  IdleCompanion(const IdleCompanion&) = delete;
  IdleCompanion& operator=(const IdleCompanion&) = delete;
  const std::string& error() const { return error_; }

 private:
  int fds_[2] = {-1, -1};
  std::thread thread_;
  std::string error_;
};

struct HintingPlan {
  int cpu = 0, cpu_node = 0, mem_node = 0;
  std::size_t bytes = 0;
  int seconds = 0;
};

// How long a hinting row's child may take: its window stretches to 4x its seconds while no
// hinting fault came, plus the fill and the checks (a minute, for an emulated guest's 256 MiB).
int HintingChildTimeoutS(const HintingPlan& plan) { return 4 * plan.seconds + 60; }

// Every word as Fill wrote it; empty if so.
std::string CheckPattern(const NumaRegion& region, const char* after) {
  const auto* words = reinterpret_cast<const std::uint64_t*>(region.base());
  for (std::size_t i = 0; i < region.bytes() / 8; ++i) {
    if (words[i] != Pattern(i)) {
      return absl::StrCat("data: page ", i * 8 / kPage4K, " word ", i % (kPage4K / 8),
                          " changed ", after);
    }
  }
  return {};
}

// In the measuring child, with numa_balancing on: the region placed on mem_node, then touched
// (one read per page, a TSC stamp each) pass after pass from a CPU of cpu_node; the sampler
// names the pages whose access took a hinting fault, and each such access's stamp is a sample.
Measurement MeasureHinting(const HintingPlan& plan) {
  Measurement m;
  const bool local = plan.cpu_node == plan.mem_node;
  const BackingKind& kind = KindOf(NumaBacking::kAnon4K);
  // A VMA without a policy of its own follows the task's, which must be the default: the
  // scanner passes by VMAs whose policy does not allow migrate-on-fault.
  if (m.error = SetThreadPolicy(NumaPolicy::kDefault, {}); !m.error.empty()) return m;
  if (m.error = PinTo(plan.cpu, plan.cpu_node); !m.error.empty()) return m;
  IdleCompanion companion;
  if (m.error = companion.error(); !m.error.empty()) return m;
  NumaRegion region;
  if (m.error = MapBoundPopulated(kind, plan.bytes, plan.mem_node, &region,
                                  [&](char* base) { Fill(base, plan.bytes); });
      !m.error.empty()) {
    return m;
  }
  // The bind placed the pages. NUMA balancing never moves pages a VMA policy binds (without
  // MPOL_F_NUMA_BALANCING), so the region goes back to the default policy before the touches.
  if (m.error = SetRangePolicy(region.base(), plan.bytes, NumaPolicy::kDefault, {});
      !m.error.empty()) {
    return m;
  }
  const std::size_t count = plan.bytes / kPage4K;
  const auto begin = reinterpret_cast<uintptr_t>(region.base());
  // Room for every page to fault in one pass, and then some elsewhere.
  MinorFaultSampler sampler(count + 4096);
  if (!sampler.error().empty()) {
    m.skip = "cannot tell which accesses took hinting faults: " + sampler.error();
    return m;
  }
  const std::optional<NumaVmstat> vmstat_before = ReadNumaVmstat();
  if (!vmstat_before) {
    m.error = "premise: /proc/vmstat has no numa_hint_faults line";
    return m;
  }
  const long migrated_before = ThreadNumaPagesMigrated();
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  const double ns_per_tick = TscNsPerTick();
  std::vector<uint64_t> ticks(count), sorted(count), addresses;
  addresses.reserve(count + 4096);
  std::vector<std::uint8_t> faulted(count, 0);
  std::vector<double> pass_medians;
  std::size_t elsewhere = 0, passes = 0;
  double converge_ns = -1, next_placement = 0;
  const double start = MonotonicNs();
  const double deadline = start + plan.seconds * 1e9;
  // The scanner's first pass comes after about a second of the task's CPU time, which on a loaded
  // machine takes longer in wall time: until a first hinting fault is seen, the window stretches
  // up to 4x (the rates below are over the time actually spent).
  const double last_chance = start + 4 * plan.seconds * 1e9;
  for (double now = start; now < deadline || (m.samples_ns.empty() && now < last_chance);
       now = MonotonicNs()) {
    const std::vector<double> before = group.Read();
    StampedTouch<false>(region.base(), kPage4K, count, ticks.data());
    m.totals.Add(before, group.Read());
    ++passes;
    addresses.clear();
    sampler.Drain(&addresses);
    for (uint64_t a : addresses) {
      if (a < begin || a >= begin + plan.bytes) {
        ++elsewhere;  // the stamp buffer, the stack: the scanner marks every VMA
        continue;
      }
      const std::size_t page = (a - begin) / kPage4K;
      m.samples_ns.push_back(static_cast<double>(ticks[page]) * ns_per_tick);
      faulted[page] = 1;
    }
    sorted = ticks;
    std::nth_element(sorted.begin(), sorted.begin() + count / 2, sorted.end());
    pass_medians.push_back(static_cast<double>(sorted[count / 2]) * ns_per_tick);
    if (!local && now >= next_placement) {
      next_placement = now + kPlacementEveryNs;
      std::map<int, std::size_t> counts;
      if (m.error = CheckAllOnNode(region.base(), plan.bytes, kPage4K, -1, &counts);
          !m.error.empty()) {
        return m;
      }
      if (counts[plan.cpu_node] >= kConvergedShare * static_cast<double>(count)) {
        converge_ns = MonotonicNs() - start;
        break;
      }
    }
  }
  const double elapsed_ns = MonotonicNs() - start;
  const std::optional<NumaVmstat> vmstat_after = ReadNumaVmstat();
  const long migrated_after = ThreadNumaPagesMigrated();
  if (sampler.lost() > 0) {
    m.error = absl::StrCat("perf dropped ", sampler.lost(), " fault samples: faults unattributed");
    return m;
  }
  if (!vmstat_after) {
    m.error = "premise: /proc/vmstat became unreadable";
    return m;
  }
  const long machine_hints = vmstat_after->hint_faults - vmstat_before->hint_faults;
  // Every minor fault on the populated region is a hinting fault; the machine's count holds
  // them all (and every other process's).
  if (static_cast<long>(m.samples_ns.size()) > machine_hints) {
    m.error = absl::StrCat("premise: ", m.samples_ns.size(),
                           " minor faults on the region, but /proc/vmstat counted ",
                           machine_hints, " NUMA hinting faults");
    return m;
  }
  if (m.samples_ns.empty()) {
    // Not a failed premise: the scanner walks the whole address space a slice per period, and a
    // process with huge mappings (a sanitizer's shadow) can use up the window elsewhere.
    m.skip = absl::StrCat("the NUMA scanner did not reach the region: no hinting fault on it in ",
                          4 * plan.seconds, " s of touching (the machine's numa_pte_updates grew by ",
                          vmstat_after->pte_updates - vmstat_before->pte_updates, ")");
    return m;
  }
  // Nothing lost or changed by faults and migrations; still 4 KiB pages, all present.
  if (m.error = CheckPattern(region, "after the hinting faults"); !m.error.empty()) return m;
  if (m.error = CheckBacking(kind, region, "after the hinting faults"); !m.error.empty()) return m;
  std::map<int, std::size_t> counts;
  if (m.error = CheckAllOnNode(region.base(), plan.bytes, kPage4K, -1, &counts); !m.error.empty()) {
    return m;
  }
  for (const auto& [node, n] : counts) {
    if (node >= 0) m.figures[absl::StrCat("pages_node", node)] = static_cast<double>(n);
  }
  const double pages = static_cast<double>(count);
  const double hints = static_cast<double>(m.samples_ns.size());
  double mean = 0;
  for (double ns : m.samples_ns) mean += ns;
  mean /= hints;
  std::nth_element(pass_medians.begin(), pass_medians.begin() + pass_medians.size() / 2,
                   pass_medians.end());
  m.seconds = mean * 1e-9;  // the time column: one hinting fault (the row is one iteration)
  m.events = hints;
  m.figures["ns_per_fault"] = mean;
  m.figures["access_ns"] = pass_medians[pass_medians.size() / 2];
  m.figures["hint_faults"] = hints;
  m.figures["hint_faults_per_page"] = hints / pages;
  m.figures["hint_faults_per_s"] = hints / (elapsed_ns * 1e-9);
  m.figures["pages_hinted"] =
      static_cast<double>(std::count(faulted.begin(), faulted.end(), std::uint8_t{1}));
  m.figures["faults_elsewhere"] = static_cast<double>(elsewhere);
  m.figures["pages"] = pages;
  m.figures["passes"] = static_cast<double>(passes);
  m.figures["touch_s"] = elapsed_ns * 1e-9;
  const double on_cpu_node = static_cast<double>(counts[plan.cpu_node]);
  m.figures["cpu_node_share"] = on_cpu_node / pages;
  m.figures["migrated_per_page"] = static_cast<double>(count - counts[plan.mem_node]) / pages;
  if (migrated_before >= 0 && migrated_after >= 0) {
    m.figures["task_pages_migrated"] = static_cast<double>(migrated_after - migrated_before);
  }
  if (!local) {
    m.figures["converged"] = converge_ns >= 0 ? 1 : 0;
    if (converge_ns >= 0) m.figures["converge_ms"] = converge_ns * 1e-6;
  }
  m.figures["vmstat_numa_hint_faults"] = static_cast<double>(machine_hints);
  m.figures["vmstat_numa_hint_faults_local"] =
      static_cast<double>(vmstat_after->hint_faults_local - vmstat_before->hint_faults_local);
  m.figures["vmstat_numa_pages_migrated"] =
      static_cast<double>(vmstat_after->pages_migrated - vmstat_before->pages_migrated);
  m.figures["vmstat_numa_pte_updates"] =
      static_cast<double>(vmstat_after->pte_updates - vmstat_before->pte_updates);
  if (!local && converge_ns < 0) {
    m.label = absl::StrCat("not_converged_in=", plan.seconds, "s");
  }
  return m;
}

// --- The protnone analogue in user space ----------------------------------------------------

// What a user-space runtime does to learn of an access: mprotect(PROT_NONE), and a SIGSEGV
// handler that makes the faulting page accessible again and returns, so the access runs again.
// While an UnprotectOnSegv lives, that is the process's SIGSEGV action for [base, base+bytes);
// any other SIGSEGV goes to the action there was before. (guard_probe.h's SegvCatcher jumps out
// of the access instead: it reports a fault, it does not repair one.)
std::atomic<uintptr_t> g_unprotect_begin{0}, g_unprotect_end{0};
std::atomic<std::size_t> g_unprotected{0}, g_unprotect_failed{0};
struct sigaction g_before_unprotect;

void OnProtnoneSegv(int signal, siginfo_t* info, void*) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (info->si_code == SEGV_ACCERR && addr >= g_unprotect_begin.load() &&
      addr < g_unprotect_end.load()) {
    void* page = reinterpret_cast<void*>(addr & ~(uintptr_t{kPage4K} - 1));
    if (mprotect(page, kPage4K, PROT_READ | PROT_WRITE) == 0) {
      g_unprotected.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // Out of VMAs (vm.max_map_count) or memory: the whole region, so the access completes; the
    // measurement sees the count and fails.
    g_unprotect_failed.fetch_add(1, std::memory_order_relaxed);
    mprotect(reinterpret_cast<void*>(g_unprotect_begin.load()),
             g_unprotect_end.load() - g_unprotect_begin.load(), PROT_READ | PROT_WRITE);
    return;
  }
  sigaction(signal, &g_before_unprotect, nullptr);
  if (info->si_code <= 0) raise(signal);
}

class UnprotectOnSegv {
 public:
  UnprotectOnSegv(char* base, std::size_t bytes) {
    g_unprotect_begin = reinterpret_cast<uintptr_t>(base);
    g_unprotect_end = reinterpret_cast<uintptr_t>(base) + bytes;
    struct sigaction action = {};
    action.sa_sigaction = OnProtnoneSegv;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &g_before_unprotect) != 0) {
      error_ = ErrnoText("sigaction(SIGSEGV)");
      return;
    }
    installed_ = true;
  }
  ~UnprotectOnSegv() {
    if (installed_) sigaction(SIGSEGV, &g_before_unprotect, nullptr);
    g_unprotect_begin = 0;
    g_unprotect_end = 0;
  }
  UnprotectOnSegv(const UnprotectOnSegv&) = delete;
  UnprotectOnSegv& operator=(const UnprotectOnSegv&) = delete;
  const std::string& error() const { return error_; }
  std::size_t unprotected() const { return g_unprotected.load(); }
  std::size_t failed() const { return g_unprotect_failed.load(); }

 private:
  std::string error_;
  bool installed_ = false;
};

// Round 0 is reported apart (first_round_ns); every round mprotects the whole region PROT_NONE
// (untimed) and reads one byte of each page, a TSC stamp each: trap, SIGSEGV delivery, the
// handler's mprotect of one page (a VMA split, then a merge with the page before), sigreturn,
// and the read again.
Measurement MeasureProtnoneAnalogue(std::size_t bytes, int mem_node, int rounds) {
  Measurement m;
  const BackingKind& kind = KindOf(NumaBacking::kAnon4K);
  NumaRegion region;
  if (m.error = MapBoundPopulated(kind, bytes, mem_node, &region,
                                  [&](char* base) { Fill(base, bytes); });
      !m.error.empty()) {
    return m;
  }
  UnprotectOnSegv handler(region.base(), bytes);
  if (!handler.error().empty()) {
    m.error = handler.error();
    return m;
  }
  const std::size_t count = bytes / kPage4K;
  const double ns_per_tick = TscNsPerTick();
  std::vector<uint64_t> ticks(count);
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  // The same stamped loop over accessible pages: the harness without a fault.
  StampedTouch<false>(region.base(), kPage4K, count, ticks.data());
  std::nth_element(ticks.begin(), ticks.begin() + count / 2, ticks.end());
  const double harness_ns = static_cast<double>(ticks[count / 2]) * ns_per_tick;
  m.samples_ns.reserve(count * static_cast<std::size_t>(rounds));
  double first_round_ns = 0;
  for (int r = 0; r <= rounds; ++r) {
    if (mprotect(region.base(), bytes, PROT_NONE) != 0) {
      m.error = ErrnoText("mprotect(PROT_NONE)");
      return m;
    }
    const std::size_t unprotected = handler.unprotected();
    const std::vector<double> before = group.Read();
    StampedTouch<false>(region.base(), kPage4K, count, ticks.data());
    if (r > 0) m.totals.Add(before, group.Read());
    if (handler.failed() > 0) {
      m.error = absl::StrCat("the handler's mprotect of one page failed ", handler.failed(),
                             " times (vm.max_map_count?)");
      return m;
    }
    if (handler.unprotected() - unprotected != count) {
      m.error = absl::StrCat("premise: ", handler.unprotected() - unprotected, " of ", count,
                             " reads of PROT_NONE pages raised SIGSEGV");
      return m;
    }
    const double round_mean = AddRound(ticks, ns_per_tick, r > 0, &m.samples_ns);
    if (r == 0) first_round_ns = round_mean;
  }
  // Each page's mprotect merged it back into the one VMA; data, pages and node as they were.
  if (const int vmas = CountVmas(region.base(), bytes); vmas != 1) {
    m.error = absl::StrCat("premise: the region spans ", vmas, " VMAs after the rounds, not 1");
    return m;
  }
  if (m.error = CheckMoved(kind, region, mem_node, "after the protnone rounds"); !m.error.empty()) {
    return m;
  }
  const double mean = m.PerFault();
  m.figures["first_round_ns"] = first_round_ns;
  m.figures["harness_ns"] = harness_ns;
  m.figures["harness_ratio"] = mean > 0 ? harness_ns / mean : 0;
  m.figures["pages"] = static_cast<double>(count);
  m.figures["rounds"] = rounds;
  return m;
}

void RegisterHinting(const RunOptions& options, const std::map<int, int>& cpu_nodes,
                     const std::vector<int>& mem_nodes) {
  const HintingSizes sizes{options.quick};
  const long mib = sizes.region_mib();
  const int seconds = sizes.seconds();
  const std::string scan = NumaScanKnobsText();
  for (const auto& [cpu_node, cpu] : cpu_nodes) {
    // Each memory node, and on a one-node machine the first node without memory as a skip row.
    std::vector<std::pair<int, std::string>> targets;
    for (int mem_node : mem_nodes) {
      if (!options.node || *options.node == mem_node) targets.push_back({mem_node, ""});
    }
    if (mem_nodes.size() == 1) {
      targets.push_back({FirstNodeWithoutMemory(),
                         WhyUnavailable(Feature::kNumaMulti).value_or(WhyNotTwoMemoryNodes())});
    }
    for (const auto& [mem_node, skip] : targets) {
      HintingPlan plan{cpu, cpu_node, mem_node, static_cast<std::size_t>(mib) << 20, seconds};
      const std::string why = skip;
      Register("numa/hinting/anon4k", {cpu_node, mem_node, mib, seconds},
               {"cpu_node", "mem_node", "region_mib", "seconds"}, 1, sizes.repetitions(),
               [=](benchmark::State& st) {
                 Measurement m;
                 m.skip = why;
                 if (m.skip.empty()) m.skip = WhyUnavailable(Feature::kNumaBalancing).value_or("");
                 if (m.skip.empty() && !CurrentRunOptions().numa_balancing) {
                   m.skip =
                       "needs run --numa-balancing (faultlab turns kernel.numa_balancing on "
                       "only when asked)";
                 }
                 std::string balancing;
                 if (m.skip.empty()) {
                   // On for this row only; the child's mm alone is scanned while it touches
                   // (faultlab's own process sleeps in read(), and ticks drive the scanner).
                   NumaBalancingOn on;
                   balancing = on.LabelText();
                   m.error = on.error();
                   if (m.error.empty()) {
                     m = MeasureInChild([&] { return MeasureHinting(plan); },
                                        HintingChildTimeoutS(plan), "hinting");
                   }
                 }
                 std::string label = absl::StrCat("cpu=", cpu, " cpu_node=", cpu_node,
                                                  " node=", mem_node, " backing=anon4k ",
                                                  balancing, " scan=", scan,
                                                  " companion_thread=idle",
                                                  " vmstat=machine_wide");
                 if (!m.label.empty()) absl::StrAppend(&label, " ", m.label);
                 Finish(st, m, label);
               });
    }
  }
  // The analogue, where the memory is local to the CPU (one row per CPU node).
  const long analogue_mib = sizes.analogue_mib();
  const int rounds = sizes.analogue_rounds();
  const std::size_t bytes = static_cast<std::size_t>(analogue_mib) << 20;
  for (const auto& [cpu_node, cpu] : cpu_nodes) {
    const int mem_node =
        std::find(mem_nodes.begin(), mem_nodes.end(), cpu_node) != mem_nodes.end()
            ? cpu_node
            : mem_nodes.front();
    if (options.node && *options.node != mem_node) continue;
    const int64_t faults = static_cast<int64_t>(bytes / kPage4K) * rounds;
    const int pin_cpu = cpu, cn = cpu_node;
    Register("numa/protnone_analogue/anon4k", {cpu_node, mem_node, analogue_mib, rounds},
             {"cpu_node", "mem_node", "region_mib", "rounds"}, faults,
             Sizes{options.quick}.repetitions(),
             [=](benchmark::State& st) {
               Measurement m;
               m.error = PinTo(pin_cpu, cn);
               if (m.error.empty()) m = MeasureProtnoneAnalogue(bytes, mem_node, rounds);
               Finish(st, m,
                      absl::StrCat("cpu=", pin_cpu, " cpu_node=", cn, " node=", mem_node,
                                   " backing=anon4k handler=mprotect_page_rw"));
             });
  }
}

void RegisterNumaSuite(const RunOptions& options) {
  const Sizes sizes{options.quick};
  const std::map<int, int> cpu_nodes = CpuNodes(options);
  const std::vector<int> mem_nodes = MemoryNodes();
  RegisterMatrix(options, sizes, cpu_nodes, mem_nodes);
  RegisterPolicies(options, sizes, cpu_nodes, mem_nodes);
  RegisterMigration(options, sizes, mem_nodes);
  RegisterHinting(options, cpu_nodes, mem_nodes);
  if (!RunsSuite(options, "model")) RegisterModelNumaCases(options);
}

std::vector<SuiteVariant> NumaVariants() {
  const Sizes quick{true};
  const long matrix_pages = quick.chase_mib() / 2;  // latency and bandwidth, per memory node
  return {
      {"anon4k", {}},
      {"thp", {Feature::kThp}},
      {"hugetlb2m (per memory node)", {Feature::kHugetlb2M}, kPage2M, matrix_pages},
      {"remote cells, preferred, migration", {Feature::kNumaMulti}},
      {"hugetlb2m migration", {Feature::kNumaMulti, Feature::kHugetlb2M}, kPage2M,
       2 * quick.move_mib(NumaBacking::kHugetlb2M) / 2},
      {"hinting (with run --numa-balancing)", {Feature::kNumaBalancing}},
      {"hinting, remote cells", {Feature::kNumaBalancing, Feature::kNumaMulti}},
  };
}

FAULTLAB_SUITE(Suite{"numa",
                     "NUMA placement: first touch, load latency and read bandwidth per CPU node and "
                     "memory node; memory policies; move_pages, mbind and migrate_pages; NUMA "
                     "hinting faults (run --numa-balancing) beside a user-space protnone analogue",
                     NumaVariants(), RegisterNumaSuite});

}  // namespace
}  // namespace faultlab
