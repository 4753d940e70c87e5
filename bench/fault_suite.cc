// Suite `fault`: what one page fault costs when memory is first touched, per kind of memory and
// kind of access, for 1..N threads in one mm and 1..N processes.
//
// A round maps a fresh region, touches one byte per fault-sized page with a TSC stamp after each
// touch (mapping, binding and unmapping stay outside the stamps), checks on the first round that
// the kernel mapped what the case claims, and unmaps. Every sample is one fault, so the
// distribution (p50..max) is of single faults, beside the mean.
//
// Steady state: in this VM the first touch of guest memory the host has not backed costs ~10x a
// fault (platform.md). Round 0 is reported as first_round_ns; further rounds recycle the frames
// the previous round freed until two consecutive round means agree within 5% (warmup_rounds,
// warmup_stable), and only then are rounds measured. The time column is the steady-state mean
// per fault (manual time; see RunFaultCase for how iterations are counted).
//
// The harness cost is measured, not assumed: the same stamped loop run over the last round's
// already-populated pages gives the cost of a stamp and a touch without a fault (harness_ns,
// harness_ratio = harness_ns / mean fault).
//
// The zero page cases, 4 KiB and THP: a read fault maps a zero page (the shared 4 KiB one, or
// with MADV_HUGEPAGE and /sys/kernel/mm/transparent_hugepage/use_zero_page=1 the huge zero page,
// one PMD per 2 MiB), and the write after it replaces it. The premise after the reads (before
// the writes, for write_after_zeropage): every page present, Rss and AnonHugePages 0, and as root
// pagemap's frames the same in every fault-sized page. Zero page mappings do not count in Rss:
// rss_kb_after_read and rss_kb_after_write (smaps, last round) show the effect, and on THP
// thp_kb_after_write (AnonHugePages) says whether the write got a THP (kernels with
// do_huge_zero_wp_pmd allocate one in its place; 6.18 here does) or the PMD was split and only the
// written 4 KiB page allocated (older kernels, or no THP to be had).
// The THP rows are skipped when use_zero_page is 0; faultlab never changes the setting.

#include <fcntl.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/harness.h"
#include "bench/kernel_features.h"
#include "bench/mm_probe.h"
#include "bench/profile_control.h"
#include "bench/suite.h"
#include "bench/tsc_clock.h"
#include "topology/hugetlb.h"
#include "topology/topology.h"

namespace faultlab {
namespace {

enum class Memory { kAnon4K, kThp, kHugetlb2M, kHugetlb1G, kShmem };
enum class Access { kWrite, kReadZeropage, kWriteAfterZeropage };

struct MemoryKind {
  Memory memory;
  const char* name;         // the benchmark name's variant component
  std::size_t page;         // bytes one fault maps
  std::vector<Feature> needs;
};

const std::vector<MemoryKind>& MemoryKinds() {
  static const std::vector<MemoryKind> kinds = {
      {Memory::kAnon4K, "anon4k", kPage4K, {}},
      {Memory::kThp, "thp", kPage2M, {Feature::kThp}},
      {Memory::kHugetlb2M, "hugetlb2m", kPage2M, {Feature::kHugetlb2M}},
      {Memory::kHugetlb1G, "hugetlb1g", kPage1G, {Feature::kHugetlb1G}},
      {Memory::kShmem, "shmem", kPage4K, {Feature::kMemfd}},
  };
  return kinds;
}

const MemoryKind& KindOf(Memory memory) {
  for (const MemoryKind& kind : MemoryKinds()) {
    if (kind.memory == memory) return kind;
  }
  std::abort();
}

// The cases, each once, with the kernel path it exercises.
struct Case {
  const char* name;
  Access access;
  Memory memory;
};
const Case kCases[] = {
    // do_anonymous_page: allocate a zeroed 4 KiB page and map it writable.
    {"write", Access::kWrite, Memory::kAnon4K},
    // do_anonymous_page, read: map the shared zero page; no allocation, not counted in Rss.
    {"read_zeropage", Access::kReadZeropage, Memory::kAnon4K},
    // do_wp_page on the zero page: allocate a zeroed page and replace the mapping; no copy.
    {"write_after_zeropage", Access::kWriteAfterZeropage, Memory::kAnon4K},
    // do_huge_pmd_anonymous_page: one fault allocates and zeroes a 2 MiB page.
    {"write", Access::kWrite, Memory::kThp},
    // do_huge_pmd_anonymous_page, read: map the huge zero page, one PMD per 2 MiB; no
    // allocation, not counted in Rss or AnonHugePages.
    {"read_zeropage", Access::kReadZeropage, Memory::kThp},
    // do_huge_pmd_wp_page on the huge zero page: a THP allocated and zeroed in its place, or the
    // PMD split and one 4 KiB page allocated (thp_kb_after_write says which the kernel did).
    {"write_after_zeropage", Access::kWriteAfterZeropage, Memory::kThp},
    // hugetlb_no_page from the reserved pool, 2 MiB and 1 GiB.
    {"write", Access::kWrite, Memory::kHugetlb2M},
    {"write", Access::kWrite, Memory::kHugetlb1G},
    // shmem_fault: allocate a page into the memfd's page cache and map it shared.
    {"write", Access::kWrite, Memory::kShmem},
};

// One round's memory: mapped fresh, bound to the run's node, unmapped after.
class Region {
 public:
  Region() = default;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region() { Unmap(); }

  // Empty on success, else why the region could not be had.
  std::string Map(Memory memory, std::size_t bytes) {
    bytes_ = bytes;
    switch (memory) {
      case Memory::kAnon4K:
        if (std::string error = MapFenced(bytes, kPage4K); !error.empty()) return error;
        if (std::string error = NoHugePages(); !error.empty()) return error;
        break;
      case Memory::kThp:
        // Aligned to 2 MiB so every fault can map a huge page.
        if (std::string error = MapFenced(bytes, kPage2M); !error.empty()) return error;
        if (madvise(base_, bytes, MADV_HUGEPAGE) != 0) return Errno("madvise(MADV_HUGEPAGE)");
        break;
      case Memory::kHugetlb2M:
        base_ = MapAnonymous(bytes, MAP_HUGETLB | MAP_HUGE_2MB);
        break;
      case Memory::kHugetlb1G:
        base_ = MapAnonymous(bytes, MAP_HUGETLB | MAP_HUGE_1GB);
        break;
      case Memory::kShmem: {
        memfd_ = memfd_create("faultlab-shmem", MFD_CLOEXEC);
        if (memfd_ < 0) return Errno("memfd_create");
        if (ftruncate(memfd_, static_cast<off_t>(bytes)) != 0) return Errno("ftruncate");
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
        if (p == MAP_FAILED) return Errno("mmap");
        base_ = p;
        // shmem_enabled=always (or a shmem mTHP size) would map 2 MiB on one touch and leave
        // the other samples without a fault.
        if (std::string error = NoHugePages(); !error.empty()) return error;
        break;
      }
    }
    if (!base_) return Errno("mmap");
    const RunOptions& options = CurrentRunOptions();
    if (options.node && options.topology) {
      std::string error;
      if (!BindArea(*options.topology, base_, bytes, *options.node, &error)) return error;
    }
    return {};
  }

  void Unmap() {
    if (reservation_) {
      munmap(reservation_, reservation_bytes_);
    } else if (base_) {
      munmap(base_, bytes_);
    }
    reservation_ = nullptr;
    if (memfd_ >= 0) close(memfd_);
    base_ = nullptr;
    memfd_ = -1;
  }

  char* base() const { return static_cast<char*>(base_); }
  std::size_t bytes() const { return bytes_; }

 private:
  // MADV_NOHUGEPAGE; a kernel without THP refuses it with EINVAL and has no huge pages anyway.
  std::string NoHugePages() {
    if (madvise(base_, bytes_, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
      return Errno("madvise(MADV_NOHUGEPAGE)");
    }
    return {};
  }

  // Anonymous memory between PROT_NONE guards, starting on an `align` boundary. Without the
  // guards the kernel merges the regions of workers mapped side by side into one VMA, and smaps
  // (the premise check) would describe several workers' memory at once.
  std::string MapFenced(std::size_t bytes, std::size_t align) {
    reservation_bytes_ = bytes + 2 * align + kPage4K;
    void* p = mmap(nullptr, reservation_bytes_, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return Errno("mmap");
    reservation_ = p;
    const auto after_guard = reinterpret_cast<uintptr_t>(p) + kPage4K;
    base_ = reinterpret_cast<void*>((after_guard + align - 1) & ~(align - 1));
    if (mprotect(base_, bytes, PROT_READ | PROT_WRITE) != 0) return Errno("mprotect");
    return {};
  }

  static void* MapAnonymous(std::size_t bytes, int extra_flags) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  static std::string Errno(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
  }

  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  void* reservation_ = nullptr;  // base_ plus its guards, when fenced
  std::size_t reservation_bytes_ = 0;
  int memfd_ = -1;
};

// StampedTouch (harness.h): the harness part of each sample is measured on populated pages.
void Touch(Access access, char* base, std::size_t stride, std::size_t count, uint64_t* ticks) {
  if (access == Access::kReadZeropage) {
    StampedTouch<false>(base, stride, count, ticks);
  } else {
    StampedTouch<true>(base, stride, count, ticks);
  }
}

// The huge zero page cases need use_zero_page=1 (without it a THP read fault allocates a huge
// page). Read afresh for each case: faultlab never changes it, but someone else may.
std::string WhyNoHugeZeroPage() {
  const std::string path = "/sys/kernel/mm/transparent_hugepage/use_zero_page";
  std::ifstream in(path);
  long value = -1;
  if (!(in >> value)) return "cannot read " + path;
  if (value != 1) {
    return path + " is " + std::to_string(value) +
           ": THP read faults allocate huge pages instead of mapping the huge zero page";
  }
  return {};
}

// The zero page over the whole region, as read faults leave it: every page present, nothing
// counted in Rss or AnonHugePages (zero page mappings are not), and, where pagemap shows frames
// (as root), the same frames in every fault-sized page: the one shared zero page for 4 KiB, the
// huge zero page's 512 for THP (one PMD per 2 MiB). *zero_pfn: its first frame (0 when frames are
// hidden); *rss_kb: the region's Rss.
std::string CheckZeroPageMapped(const MemoryKind& kind, const Region& region, uint64_t* zero_pfn,
                                long* rss_kb) {
  const std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
  if (pagemap.empty()) return "cannot read /proc/self/pagemap";
  if (CountPresent(pagemap) != pagemap.size()) {
    return "only " + std::to_string(CountPresent(pagemap)) + " of " +
           std::to_string(pagemap.size()) + " pages present after the reads";
  }
  const std::map<std::string, long> smaps = SmapsOf(region.base());
  const char* zero_page = kind.page == kPage4K ? "zero page" : "huge zero page";
  *rss_kb = SmapsField(smaps, "Rss");
  if (*rss_kb != 0 || SmapsField(smaps, "AnonHugePages") != 0) {
    return std::string("read faults did not map the ") + zero_page + " (Rss " +
           std::to_string(*rss_kb) + " kB, AnonHugePages " +
           std::to_string(SmapsField(smaps, "AnonHugePages")) +
           " kB; is /sys/kernel/mm/transparent_hugepage/use_zero_page relevant?)";
  }
  *zero_pfn = PagemapPfn(pagemap[0]);
  if (*zero_pfn == 0) return {};  // frames hidden: not root
  const std::size_t frames = kind.page / kPage4K;
  for (std::size_t i = 0; i < pagemap.size(); ++i) {
    if (PagemapPfn(pagemap[i]) != *zero_pfn + i % frames) {
      return "page " + std::to_string(i) + " maps frame " + Hex(PagemapPfn(pagemap[i])) +
             ", not frame " + Hex(*zero_pfn + i % frames) + " of the " + zero_page +
             " the first page maps";
    }
  }
  return {};
}

// The premise of each case, checked on the first round before any figure is trusted. zero_pfn:
// write_after_zeropage's zero page frame before the writes (0: unknown).
std::string CheckPremise(const Case& c, const Region& region, uint64_t zero_pfn) {
  const MemoryKind& kind = KindOf(c.memory);
  if (c.access == Access::kReadZeropage) {
    uint64_t pfn = 0;
    long rss_kb = -1;
    return CheckZeroPageMapped(kind, region, &pfn, &rss_kb);
  }
  const long kb = static_cast<long>(region.bytes() / 1024);
  const std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
  if (pagemap.empty()) return "cannot read /proc/self/pagemap";
  if (CountPresent(pagemap) != pagemap.size()) {
    return "only " + std::to_string(CountPresent(pagemap)) + " of " +
           std::to_string(pagemap.size()) + " pages present after the touch";
  }
  const std::map<std::string, long> smaps = SmapsOf(region.base());
  auto field = [&](const char* name) { return SmapsField(smaps, name); };
  switch (c.memory) {
    case Memory::kAnon4K:
      if (field("AnonHugePages") != 0) {
        return "4 KiB case got huge pages (AnonHugePages " + std::to_string(field("AnonHugePages")) +
               " kB) despite MADV_NOHUGEPAGE";
      }
      if (field("Rss") != kb) {
        return "Rss " + std::to_string(field("Rss")) + " kB, expected " + std::to_string(kb);
      }
      break;
    case Memory::kThp:
      if (c.access == Access::kWriteAfterZeropage) {
        // A THP in place of the huge zero page, or a split PMD with one new 4 KiB page: either is
        // the kernel's answer (thp_kb_after_write). Each write must have replaced the zero page.
        const std::size_t frames = kind.page / kPage4K;
        const long faults = static_cast<long>(region.bytes() / kind.page);
        if (field("Rss") < faults * static_cast<long>(kPage4K / 1024)) {
          return "Rss " + std::to_string(field("Rss")) + " kB after " + std::to_string(faults) +
                 " writes: they did not all allocate";
        }
        for (std::size_t i = 0; zero_pfn != 0 && i < pagemap.size(); i += frames) {
          if (PagemapPfn(pagemap[i]) - zero_pfn < frames) {
            return "the write at page " + std::to_string(i) + " left the huge zero page mapped";
          }
        }
      } else if (field("AnonHugePages") != kb) {
        return "THP not granted: AnonHugePages " + std::to_string(field("AnonHugePages")) +
               " of " + std::to_string(kb) + " kB (memory fragmented, or THP defrag off?)";
      }
      break;
    case Memory::kHugetlb2M:
    case Memory::kHugetlb1G:
      if (field("KernelPageSize") != static_cast<long>(kind.page / 1024) ||
          field("Private_Hugetlb") != kb) {
        return "hugetlb mapping is not what was asked: KernelPageSize " +
               std::to_string(field("KernelPageSize")) + " kB, Private_Hugetlb " +
               std::to_string(field("Private_Hugetlb")) + " kB";
      }
      break;
    case Memory::kShmem:
      if (field("Rss") != kb) {
        return "shmem Rss " + std::to_string(field("Rss")) + " kB, expected " + std::to_string(kb);
      }
      if (field("ShmemPmdMapped") > 0) {
        return "shmem mapped huge pages (ShmemPmdMapped " + std::to_string(field("ShmemPmdMapped")) +
               " kB): not one fault per 4 KiB page";
      }
      break;
  }
  // The shared zero page belongs to no node (move_pages answers -EFAULT for it).
  const RunOptions& options = CurrentRunOptions();
  if (options.node && c.access != Access::kReadZeropage) {
    const std::vector<int> nodes = PageNodes(region.base(), region.bytes(), kind.page);
    if (nodes.empty()) return "cannot query the pages' node (move_pages failed)";
    for (int node : nodes) {
      if (node != *options.node) {
        return "a page landed on node " + std::to_string(node) + ", not the bound node " +
               std::to_string(*options.node);
      }
    }
  }
  return {};
}

constexpr int kMaxWarmupRounds = 10;
constexpr double kStableWithin = 0.05;

// The zero page cases' smaps figures, from the last measured round; -1 where not taken.
struct ZeroPageRss {
  long rss_kb_after_read = -1;
  long rss_kb_after_write = -1;
  long thp_kb_after_write = -1;  // AnonHugePages: did the write get a THP?
};

struct WorkerResult {
  std::vector<double> ns;  // steady-state samples, one per fault
  double first_round_ns = 0;
  int warmup_rounds = 0;
  bool stable = false;
  double harness_ns = 0;
  CounterTotals counters;
  double start_ns = 0, end_ns = 0;  // wall clock of the measured rounds, for throughput
  ZeroPageRss zero_page;
  std::string error;
};

// One worker's whole measurement: first round, warm-up, barrier, measured rounds, harness cost.
WorkerResult MeasureWorker(const Case& c, std::size_t bytes, int rounds, int workers,
                           SpinBarrier* barrier) {
  WorkerResult result;
  BarrierArrival measured_start(barrier, workers);
  const MemoryKind& kind = KindOf(c.memory);
  const std::size_t count = bytes / kind.page;
  const double ns_per_tick = TscNsPerTick();
  std::vector<uint64_t> ticks(count);  // zero-filled, so already faulted before any timing
  std::vector<uint64_t> sorted(count);
  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  result.counters.names = group.names();

  struct RoundFigures {
    double mean_ns = 0;
    double median_ns = 0;
  };
  // One round. The premise is checked on the first round and again on the last measured one
  // (THP, say, can fall back to small pages later); nullopt with result.error set on failure.
  auto round = [&](bool verify, bool measured, bool last) -> std::optional<RoundFigures> {
    Region region;
    if (std::string error = region.Map(c.memory, bytes); !error.empty()) {
      result.error = error;
      return std::nullopt;
    }
    uint64_t zero_pfn = 0;
    if (c.access == Access::kWriteAfterZeropage) {
      // Populate with the zero page first (the stamps are not used); only the writes that
      // replace it are timed.
      StampedTouch<false>(region.base(), kind.page, count, ticks.data());
      if (verify || last) {
        long rss_kb = -1;
        if (std::string error = CheckZeroPageMapped(kind, region, &zero_pfn, &rss_kb);
            !error.empty()) {
          result.error = "before the writes: " + error;
          return std::nullopt;
        }
        result.zero_page.rss_kb_after_read = rss_kb;
      }
    }
    const std::vector<double> before = measured ? group.Read() : std::vector<double>{};
    Touch(c.access, region.base(), kind.page, count, ticks.data());
    if (measured) result.counters.Add(before, group.Read());
    RoundFigures figures;
    for (uint64_t t : ticks) figures.mean_ns += static_cast<double>(t) * ns_per_tick;
    figures.mean_ns /= static_cast<double>(count);
    sorted = ticks;
    std::nth_element(sorted.begin(), sorted.begin() + count / 2, sorted.end());
    figures.median_ns = static_cast<double>(sorted[count / 2]) * ns_per_tick;
    if (measured) {
      for (uint64_t t : ticks) result.ns.push_back(static_cast<double>(t) * ns_per_tick);
    }
    if (verify || last) {
      if (std::string error = CheckPremise(c, region, zero_pfn); !error.empty()) {
        result.error = error;
        return std::nullopt;
      }
    }
    if (last && c.access != Access::kWrite) {
      const std::map<std::string, long> smaps = SmapsOf(region.base());
      if (c.access == Access::kReadZeropage) {
        result.zero_page.rss_kb_after_read = SmapsField(smaps, "Rss");
      } else {
        result.zero_page.rss_kb_after_write = SmapsField(smaps, "Rss");
        result.zero_page.thp_kb_after_write = SmapsField(smaps, "AnonHugePages");
      }
    }
    if (last) {
      // The same loop over pages that are now mapped: the stamp and loop cost without a fault.
      // The median: an interrupt landing in this loop is noise the fault samples carry too,
      // not a cost of the harness.
      Touch(c.access, region.base(), kind.page, count, ticks.data());
      std::nth_element(ticks.begin(), ticks.begin() + count / 2, ticks.end());
      result.harness_ns = static_cast<double>(ticks[count / 2]) * ns_per_tick;
    }
    return figures;
  };

  std::optional<RoundFigures> first = round(/*verify=*/true, false, false);
  if (!first) return result;
  result.first_round_ns = first->mean_ns;
  // Stable when two consecutive round medians agree: a median is not moved by the odd
  // preemption that would move a round's mean by more than the 5% asked for.
  double previous = first->median_ns;
  for (int r = 0; r < kMaxWarmupRounds; ++r) {
    std::optional<RoundFigures> warm = round(false, false, false);
    if (!warm) return result;
    ++result.warmup_rounds;
    if (std::abs(warm->median_ns - previous) <= kStableWithin * previous) {
      result.stable = true;
      break;
    }
    previous = warm->median_ns;
  }
  // Measured rounds of all workers overlap: that is what the scaling cases measure.
  if (!measured_start.Arrive()) {
    result.error = "another worker never reached the start of the measured rounds";
    return result;
  }
  result.ns.reserve(static_cast<std::size_t>(rounds) * count);
  result.start_ns = MonotonicNs();
  for (int r = 0; r < rounds; ++r) {
    if (!round(false, true, r == rounds - 1)) return result;
  }
  result.end_ns = MonotonicNs();
  return result;
}

// Results of forked workers travel back through shared memory: fixed-size slots.
constexpr std::size_t kMaxCounters = 64;  // the CLI refuses more
struct ChildSlot {
  double first_round_ns, harness_ns, start_ns, end_ns;
  int warmup_rounds, stable, done;
  std::size_t counter_count;
  double counters[kMaxCounters];
  ZeroPageRss zero_page;
  char error[256];
  std::size_t samples;  // followed by `samples` doubles
};

struct SharedArea {
  void* base = nullptr;
  std::size_t bytes = 0;
  ~SharedArea() {
    if (base) munmap(base, bytes);
  }
};

// Forks procs-1 workers, measures as worker 0 itself, and gathers every worker's result.
std::vector<WorkerResult> MeasureProcesses(const Case& c, std::size_t bytes, int rounds,
                                           int procs, std::string* error) {
  const std::size_t count = bytes / KindOf(c.memory).page;
  const std::size_t slot_bytes =
      sizeof(ChildSlot) + static_cast<std::size_t>(rounds) * count * sizeof(double);
  SharedArea shared;
  shared.bytes = 64 + slot_bytes * static_cast<std::size_t>(procs);
  shared.base = mmap(nullptr, shared.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
  if (shared.base == MAP_FAILED) {
    shared.base = nullptr;
    *error = std::string("mmap of the results area: ") + std::strerror(errno);
    return {};
  }
  auto* barrier = new (shared.base) SpinBarrier();
  auto slot = [&](int i) {
    return reinterpret_cast<ChildSlot*>(static_cast<char*>(shared.base) + 64 +
                                        slot_bytes * static_cast<std::size_t>(i));
  };
  std::vector<pid_t> children;
  const pid_t parent = getpid();
  for (int i = 1; i < procs; ++i) {
    const pid_t pid = fork();
    if (pid < 0) {
      *error = std::string("fork: ") + std::strerror(errno);
      break;
    }
    if (pid == 0) {
      // A worker must not outlive the run: if the parent dies (killed mid-run), so does it.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      WorkerResult r;
      try {
        int cpu = -1;
        if (auto why = PinWorker(i, &cpu)) {
          r.error = *why;
          barrier->Wait(procs);
        } else {
          r = MeasureWorker(c, bytes, rounds, procs, barrier);
        }
      } catch (const std::exception& e) {
        // Never unwind into Google Benchmark's loop in a forked copy of the process.
        r.error = std::string("worker ") + std::to_string(i) + ": " + e.what();
      }
      ChildSlot* out = slot(i);
      out->first_round_ns = r.first_round_ns;
      out->harness_ns = r.harness_ns;
      out->start_ns = r.start_ns;
      out->end_ns = r.end_ns;
      out->warmup_rounds = r.warmup_rounds;
      out->stable = r.stable;
      out->zero_page = r.zero_page;
      out->counter_count = std::min(r.counters.sums.size(), kMaxCounters);
      std::copy_n(r.counters.sums.begin(), out->counter_count, out->counters);
      std::snprintf(out->error, sizeof(out->error), "%s", r.error.c_str());
      out->samples = r.ns.size();
      std::copy(r.ns.begin(), r.ns.end(), reinterpret_cast<double*>(out + 1));
      out->done = 1;
      _exit(0);
    }
    children.push_back(pid);
  }
  std::vector<WorkerResult> results;
  if (error->empty()) {
    results.push_back(MeasureWorker(c, bytes, rounds, procs, barrier));
  } else {
    // Without every worker the barrier never opens: stop the ones already waiting at it.
    for (pid_t pid : children) kill(pid, SIGKILL);
  }
  for (std::size_t i = 0; i < children.size(); ++i) {
    int status = 0;
    waitpid(children[i], &status, 0);
    const ChildSlot* in = slot(static_cast<int>(i) + 1);
    WorkerResult r;
    if (!WIFEXITED(status) || !in->done) {
      r.error = "worker process " + std::to_string(i + 1) + " died (status " +
                std::to_string(status) + ")";
    } else {
      r.first_round_ns = in->first_round_ns;
      r.harness_ns = in->harness_ns;
      r.start_ns = in->start_ns;
      r.end_ns = in->end_ns;
      r.warmup_rounds = in->warmup_rounds;
      r.stable = in->stable != 0;
      r.zero_page = in->zero_page;
      r.counters.sums.assign(in->counters, in->counters + in->counter_count);
      r.error = in->error;
      const auto* samples = reinterpret_cast<const double*>(in + 1);
      r.ns.assign(samples, samples + in->samples);
    }
    results.push_back(std::move(r));
  }
  return results;
}

// The thread workers of one benchmark run meet here. Thread 0 decides once whether the case can
// run, before any worker maps memory (a worker already faulting its hugetlb region would make a
// later worker's pool check fail), and collects every worker's result.
struct ThreadCollector {
  std::mutex mutex;
  std::condition_variable changed;
  bool decided = false;
  std::string skip;
  std::vector<WorkerResult> results;
  SpinBarrier measured;  // all measured rounds start together
};
ThreadCollector& Collector() {
  static ThreadCollector collector;
  return collector;
}

// Why the case cannot run here with `workers` workers; empty if it can.
std::string WhyCaseCannotRun(const Case& c, std::size_t bytes, int workers) {
  const MemoryKind& kind = KindOf(c.memory);
  const bool hugetlb = kind.memory == Memory::kHugetlb2M || kind.memory == Memory::kHugetlb1G;
  std::string why = WhyCannotRun(kind.needs, hugetlb ? kind.page : 0,
                                 static_cast<long>(bytes / kind.page) * workers,
                                 CurrentRunOptions().node.value_or(-1))
                        .value_or("");
  if (why.empty() && c.memory == Memory::kThp && c.access != Access::kWrite) {
    why = WhyNoHugeZeroPage();
  }
  return why;
}

void Report(benchmark::State& state, const Case& c, std::vector<WorkerResult>& results,
            int workers) {
  for (const WorkerResult& r : results) {
    if (!r.error.empty()) {
      Skip(state, r.error);
      return;
    }
  }
  std::vector<double> all;
  CounterTotals totals;
  double first = 0, harness = 0, start = 1e300, end = 0;
  int warmup = 0;
  bool stable = true;
  // The zero page figures per worker's region, as the workers' mean (every worker takes them,
  // or none does).
  double rss_after_read = 0, rss_after_write = 0, thp_after_write = 0;
  for (WorkerResult& r : results) {
    rss_after_read += static_cast<double>(r.zero_page.rss_kb_after_read);
    rss_after_write += static_cast<double>(r.zero_page.rss_kb_after_write);
    thp_after_write += static_cast<double>(r.zero_page.thp_kb_after_write);
    all.insert(all.end(), r.ns.begin(), r.ns.end());
    totals.Merge(r.counters);
    first += r.first_round_ns;
    harness += r.harness_ns;
    start = std::min(start, r.start_ns);
    end = std::max(end, r.end_ns);
    warmup = std::max(warmup, r.warmup_rounds);
    stable = stable && r.stable;
  }
  const double n = static_cast<double>(results.size());
  const double faults = static_cast<double>(all.size());
  LatencySummary summary = Summarize(all);
  ReportLatency(state, summary);
  ReportPerEvent(state, totals, faults);
  const MemoryKind& kind = KindOf(c.memory);
  state.counters["first_round_ns"] = first / n;
  state.counters["warmup_rounds"] = warmup;
  state.counters["warmup_stable"] = stable ? 1 : 0;
  state.counters["harness_ns"] = harness / n;
  state.counters["harness_ratio"] = summary.mean > 0 ? harness / n / summary.mean : 0;
  state.counters["ns_per_4k"] = summary.mean / static_cast<double>(kind.page / kPage4K);
  state.counters["faults_per_sec"] = end > start ? faults / ((end - start) * 1e-9) : 0;
  state.counters["workers"] = workers;
  const ZeroPageRss& taken = results.front().zero_page;
  if (taken.rss_kb_after_read >= 0) state.counters["rss_kb_after_read"] = rss_after_read / n;
  if (taken.rss_kb_after_write >= 0) state.counters["rss_kb_after_write"] = rss_after_write / n;
  std::string after_write;
  if (taken.thp_kb_after_write >= 0 && c.memory == Memory::kThp) {
    const double thp_kb = thp_after_write / n;
    state.counters["thp_kb_after_write"] = thp_kb;
    const double region_kb = static_cast<double>(state.range(0)) * 1024;
    after_write = thp_kb == region_kb ? " write_got=thp"
                  : thp_kb == 0       ? " write_got=4k_after_split"
                                      : " write_got=some_thp";
  }
  std::string cpus;
  for (std::size_t i = 0; i < static_cast<std::size_t>(workers); ++i) {
    const auto& list = CurrentRunOptions().cpus;
    if (list.empty()) break;
    cpus += (i ? "," : "") + std::to_string(list[i % list.size()]);
  }
  const auto& node = CurrentRunOptions().node;
  state.SetLabel("backing=" + std::string(kind.name) + " cpus=" + (cpus.empty() ? "any" : cpus) +
                 " node=" + (node ? std::to_string(*node) : "any") + after_write +
                 " premise=verified");
}

void RunFaultCase(benchmark::State& state, const Case& c) {
  const std::size_t bytes = static_cast<std::size_t>(state.range(0)) << 20;
  const int procs = static_cast<int>(state.range(1));
  const int rounds = static_cast<int>(state.range(2));
  const int threads = state.threads();
  const int workers = std::max(procs, threads);
  const bool reporter = state.thread_index() == 0;
  ThreadCollector& collector = Collector();

  std::string skip;
  if (reporter) {
    skip = WhyCaseCannotRun(c, bytes, workers);
    std::lock_guard<std::mutex> lock(collector.mutex);
    collector.skip = skip;
    collector.decided = true;
    collector.changed.notify_all();
  } else {
    std::unique_lock<std::mutex> lock(collector.mutex);
    collector.changed.wait(lock, [&] { return collector.decided; });
    skip = collector.skip;
  }
  int cpu = -1;
  if (skip.empty()) {
    if (auto why = PinWorker(state.thread_index(), &cpu)) skip = *why;
  }

  // Manual time is the steady-state fault time of the faults this benchmark counts as its
  // iterations: for processes, all workers' (registered as faults x procs); for threads, this
  // thread's, scaled by the thread count because Google Benchmark divides the threads' mean
  // manual time by the iterations of all threads. Either way the time column is the mean
  // latency of one fault; throughput is faults_per_sec.
  double seconds = 0;
  if (procs > 1) {
    std::string error = skip;
    std::vector<WorkerResult> results;
    if (error.empty()) results = MeasureProcesses(c, bytes, rounds, procs, &error);
    if (!error.empty()) {
      Skip(state, error);
    } else {
      Report(state, c, results, workers);
      for (const WorkerResult& r : results) {
        for (double ns : r.ns) seconds += ns * 1e-9;
      }
    }
    std::lock_guard<std::mutex> lock(collector.mutex);
    collector.decided = false;
  } else {
    WorkerResult mine;
    if (skip.empty()) {
      mine = MeasureWorker(c, bytes, rounds, threads, &collector.measured);
    } else {
      mine.error = skip;
      // The others may be waiting for this worker to start measuring: arrive, then leave.
      if (threads > 1) collector.measured.Wait(threads);
    }
    for (double ns : mine.ns) seconds += ns * 1e-9 * threads;
    std::unique_lock<std::mutex> lock(collector.mutex);
    collector.results.push_back(std::move(mine));
    collector.changed.notify_all();
    if (reporter) {
      // Blocking, not spinning: the other workers may still be measuring on their CPUs.
      collector.changed.wait(lock, [&] {
        return collector.results.size() == static_cast<std::size_t>(threads);
      });
      Report(state, c, collector.results, workers);
      collector.results.clear();
      collector.decided = false;
    }
  }
  for (auto _ : state) {
  }
  if (seconds > 0) state.SetIterationTime(seconds);
}

// Region per round: enough faults for a p99.9 where the page is small, a bounded footprint where
// it is huge.
long QuickRegionMib(Memory memory) {
  switch (memory) {
    case Memory::kThp: return 256;
    case Memory::kHugetlb1G: return 1024;
    default: return 64;
  }
}
long FullRegionMib(Memory memory) {
  switch (memory) {
    case Memory::kThp:
    case Memory::kHugetlb1G: return 1024;
    default: return 256;
  }
}

void RegisterFaultSuite(const RunOptions& options) {
  const int cpus = std::max<int>(1, static_cast<int>(options.cpus.size()));
  for (const Case& c : kCases) {
    const MemoryKind& kind = KindOf(c.memory);
    const long mib = options.quick ? QuickRegionMib(c.memory) : FullRegionMib(c.memory);
    const bool few = c.memory == Memory::kHugetlb2M || c.memory == Memory::kHugetlb1G;
    const int rounds = (options.quick ? 4 : 8) * (few ? 2 : 1);
    const long faults = mib * (1l << 20) / static_cast<long>(kind.page) * rounds;
    // The scaling shape will-it-scale users know: 1..N threads in one mm, 1..N processes.
    // --quick scales only the base case.
    const bool scale = !options.quick || (c.memory == Memory::kAnon4K && c.access == Access::kWrite);
    const int max_workers = scale ? cpus : 1;
    auto add = [&](int procs, int threads) {
      const std::string name =
          std::string("fault/") + c.name + "/" + kind.name;
      // Iterations per thread; for processes, all workers' faults.
      Configure(benchmark::RegisterBenchmark(name.c_str(),
                                             [c](benchmark::State& st) { RunFaultCase(st, c); }),
                faults * procs, Repetitions(options))
          ->Args({mib, procs, rounds})
          ->ArgNames({"region_mib", "procs", "rounds"})
          ->Threads(threads);
    };
    for (int t = 1; t <= max_workers; ++t) add(1, t);
    for (int p = 2; p <= max_workers; ++p) add(p, 1);
  }
}

std::vector<SuiteVariant> FaultVariants() {
  std::vector<SuiteVariant> variants;
  for (const MemoryKind& kind : MemoryKinds()) {
    const bool hugetlb = kind.memory == Memory::kHugetlb2M || kind.memory == Memory::kHugetlb1G;
    const long quick_pages = static_cast<long>(QuickRegionMib(kind.memory) * (1ul << 20) / kind.page);
    variants.push_back({kind.name, kind.needs, hugetlb ? kind.page : 0, hugetlb ? quick_pages : 0});
  }
  return variants;
}

FAULTLAB_SUITE(Suite{"fault", "first-touch, zeropage and write-after-zeropage faults per memory kind",
                     FaultVariants(), RegisterFaultSuite});

}  // namespace
}  // namespace faultlab
