// Suite `guard`: guard pages made with guard region markers (madvise MADV_GUARD_INSTALL, Linux
// 6.13+) against guard pages made the classic way, mprotect(PROT_NONE): what making and removing
// them costs, the VMAs each leaves, and what the SIGSEGV an access to one costs.
//
// Thread stacks, allocators and language runtimes put guard pages between regions. With mprotect
// the protection belongs to the VMA, so each guard page inside a region splits its VMA in three:
// N guard pages spread over a region leave 2N+1 VMAs, each a vm_area_struct and a maple-tree
// entry that the fault path and every later mmap/munmap walk past and that counts against
// vm.max_map_count; mprotect back to read-write merges them again. A guard region marker lives in
// the page-table entry instead (a PTE marker: a non-present entry the fault path recognises and
// answers with SIGSEGV), and the VMA stays whole. Installing a marker zaps the page it covers (its
// contents are gone and the frame freed); mprotect keeps the page mapped, PROT_NONE.
//
// Cases (benchmark names guard/<case>/anon4k/pages:N/stride:S/rounds:R/...):
//   install, install_mprotect: make N guard pages, one call per page, in a populated 4 KiB
//     anonymous region of N * S pages: one guard page in the middle of every S pages (pages:1 is
//     a thread stack's one guard page; larger N the allocator case where mprotect splits the
//     region into 2N+1 VMAs). One call makes one page, so ns_per_call and ns_per_page agree;
//     ns_per_round is the whole pattern, the figure that grows with N.
//   remove, remove_mprotect: undo them (MADV_GUARD_REMOVE; mprotect back to read-write).
//   fault, fault_mprotect: one read of a guard page raising SIGSEGV, measured as the round trip
//     trap -> fault path -> signal delivery -> handler -> siglongjmp back (guard_probe.h's
//     SegvCatcher). Each event checks si_addr is the guard page read and si_code is the one the
//     premise check found (SEGV_ACCERR for mprotect; a marker's is reported, not assumed).
//
// The premise, checked on the first and the last round before a figure is trusted
// (guard_probe.h CheckGuarded and CheckUnguarded): after install, pagemap shows the guard pages
// as the method leaves them (a marker: not present; mprotect: present, PROT_NONE), every other
// page present, the region spans 1 VMA (markers) or 2N+1 (mprotect), and a read of the first
// guard page faults at that page while the page after it does not; after remove, one VMA again
// and the first guard page reads without a fault (a former marker: as zero). Rows the kernel
// cannot run (no guard regions; an mprotect pattern vm.max_map_count would not allow) are skip
// rows with the reason; the setting is never changed.
//
// Timing: each call (or access) is a pair of TSC stamps around it (tsc_clock.h); perf counters
// (non-inherited) are read around each round's calls and reported per call. The worker is pinned
// (PinWorker). The region is populated before round 0, and round 0 is untimed warm-up
// (first_round_ns): in this VM the first touch of guest memory costs ~10x (platform.md). After
// each round the guard pages are written again, untimed, so every install meets populated pages
// as the first did (a marker install zapped them). Between rounds, untimed, a fixed CPU loop
// gives the machine's speed (reference_ns, harness.h ReferenceWorkNs). The time column is the
// mean per call (or per SIGSEGV round trip), manual time.
//
// The model beside it: model/marker_fault/guard (model_suite.cc) times the model's fault on a
// guard marker, which ends in kSegv without delivering a signal: it is the fault-path half of
// guard/fault/anon4k, whose remainder is the trap and the signal round trip the model leaves out.

#include <sys/mman.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench/fork_probe.h"
#include "bench/guard_probe.h"
#include "bench/harness.h"
#include "bench/kernel_features.h"
#include "bench/mm_probe.h"
#include "bench/model_suite.h"
#include "bench/perf_counters.h"
#include "bench/profile_control.h"
#include "bench/suite.h"
#include "bench/tsc_clock.h"

namespace faultlab {
namespace {

enum class What { kInstall, kRemove, kFault };

struct GuardCase {
  const char* name;
  What what;
  GuardMethod method;
};
const GuardCase kCases[] = {
    // madvise_guard_install: a PTE marker per page, the page zapped; the VMA stays whole.
    {"install", What::kInstall, GuardMethod::kMarker},
    // mprotect_fixup: split the VMA around the page, change the PTE to PROT_NONE, flush.
    {"install_mprotect", What::kInstall, GuardMethod::kMprotect},
    // madvise_guard_remove: clear the marker; the page is empty until touched.
    {"remove", What::kRemove, GuardMethod::kMarker},
    // mprotect_fixup back to read-write: the VMAs merge, the page (kept) writable again.
    {"remove_mprotect", What::kRemove, GuardMethod::kMprotect},
    // do_swap_page -> handle_pte_marker -> VM_FAULT_SIGSEGV, then the signal round trip.
    {"fault", What::kFault, GuardMethod::kMarker},
    // access_error on the PROT_NONE VMA before any page-table walk, then the round trip.
    {"fault_mprotect", What::kFault, GuardMethod::kMprotect},
};

constexpr std::size_t kStride = 16;  // one guard page in every 16 pages
// VMAs kept free under vm.max_map_count for what the run maps besides the pattern.
constexpr long kVmaHeadroom = 64;

// What one benchmark measured, or why it could not.
struct Measurement {
  std::string error;
  std::vector<double> samples_ns;         // the time column: one per call, or per SIGSEGV
  std::map<std::string, double> figures;  // counters reported as they are
  CounterTotals totals;                   // perf counts, reported per sample
  std::string label;                      // what the label adds, e.g. "si_code=SEGV_MAPERR"
};

// Why this case cannot run here; empty if it can.
std::string WhyCaseCannotRun(GuardMethod method, const GuardLayout& layout) {
  if (method == GuardMethod::kMarker) {
    return WhyCannotRun({Feature::kGuardRegions}).value_or("");
  }
  return WhyTooManyVmas(layout.pages, MaxMapCount(), CountAllVmas(), kVmaHeadroom);
}

// Makes (or removes) every guard page of the layout, one call each, each call between two TSC
// stamps: ticks[i] is call i alone. False, with errno set, if a call failed.
bool StampedCalls(GuardMethod method, What what, const GuardLayout& layout, char* base,
                  uint64_t* ticks) {
  for (std::size_t i = 0; i < layout.pages; ++i) {
    char* page = layout.Page(base, i);
    const uint64_t start = TscNow();
    const int rc = what == What::kInstall ? InstallGuard(method, page, kPage4K)
                                          : RemoveGuard(method, page, kPage4K);
    const uint64_t end = TscNow();
    if (rc != 0) return false;
    ticks[i] = end - start;
  }
  return true;
}

// Writes every guard page, untimed, so the next install meets populated pages.
void Repopulate(const GuardLayout& layout, char* base) {
  for (std::size_t i = 0; i < layout.pages; ++i) {
    *static_cast<volatile char*>(layout.Page(base, i)) = 1;
  }
}

double Mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// The figures every case reports beside its samples.
void AddCommonFigures(Measurement& m, const GuardLayout& layout, double first_round_ns,
                      std::vector<double>& reference_ns) {
  m.figures["first_round_ns"] = first_round_ns;
  m.figures["reference_ns"] = Summarize(reference_ns).p50;
  m.figures["pages"] = static_cast<double>(layout.pages);
  m.figures["region_kb"] = static_cast<double>(layout.RegionBytes() / 1024);
}

// Cases install and remove. Every round makes the pattern and removes it again, both timed; the
// case reports the half it names. Round 0 is warm-up.
Measurement MeasureInstallRemove(GuardMethod method, What what, const GuardLayout& layout,
                                 int rounds) {
  Measurement m;
  Region region;  // fork_probe.h: fenced, MADV_NOHUGEPAGE, every page written
  if (m.error = region.Map(ForkBacking::kAnon4K, layout.RegionBytes()); !m.error.empty()) return m;
  if (m.error = CheckPremise(ForkBacking::kAnon4K, region); !m.error.empty()) return m;
  SegvCatcher catcher;
  if (m.error = catcher.error(); !m.error.empty()) return m;
  const int vmas_before_install = CountVmas(region.base(), region.bytes());

  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  const double ns_per_tick = TscNsPerTick();
  std::vector<uint64_t> install(layout.pages), remove(layout.pages);
  const std::vector<uint64_t>& timed = what == What::kInstall ? install : remove;
  std::vector<double> reference_ns;
  reference_ns.reserve(static_cast<std::size_t>(rounds) + 1);
  m.samples_ns.reserve(layout.pages * static_cast<std::size_t>(rounds));
  GuardCheck guarded, unguarded;
  double first_round_ns = 0;
  for (int r = 0; r <= rounds; ++r) {
    const bool measured = r > 0;
    const bool check = r == 0 || r == rounds;
    std::vector<double> before = group.Read();
    if (!StampedCalls(method, What::kInstall, layout, region.base(), install.data())) {
      m.error = Errno(InstallCallName(method));
      return m;
    }
    if (measured && what == What::kInstall) m.totals.Add(before, group.Read());
    if (check) {
      guarded = CheckGuarded(method, layout, region.base(), catcher);
      if (m.error = guarded.error; !m.error.empty()) return m;
    }
    before = group.Read();
    if (!StampedCalls(method, What::kRemove, layout, region.base(), remove.data())) {
      m.error = Errno(RemoveCallName(method));
      return m;
    }
    if (measured && what == What::kRemove) m.totals.Add(before, group.Read());
    if (check) {
      unguarded = CheckUnguarded(method, layout, region.base(), catcher);
      if (m.error = unguarded.error; !m.error.empty()) return m;
    }
    Repopulate(layout, region.base());
    const double round_mean = AddRound(timed, ns_per_tick, measured, &m.samples_ns);
    if (!measured) first_round_ns = round_mean;
    reference_ns.push_back(ReferenceWorkNs());
  }
  // Pages are present again and nothing else moved: the region is as the premise had it.
  if (m.error = CheckPremise(ForkBacking::kAnon4K, region); !m.error.empty()) return m;

  const double per_call = Mean(m.samples_ns);
  m.figures["ns_per_call"] = per_call;
  m.figures["ns_per_page"] = per_call;  // one page per call: see the file comment
  m.figures["ns_per_round"] = per_call * static_cast<double>(layout.pages);
  m.figures["calls_per_round"] = static_cast<double>(layout.pages);
  m.figures["rounds"] = rounds;
  m.figures["vmas_before"] = what == What::kInstall ? vmas_before_install : guarded.vmas;
  m.figures["vmas_after"] = what == What::kInstall ? guarded.vmas : unguarded.vmas;
  if (method == GuardMethod::kMarker) {
    // pagemap reports guard markers since Linux 6.15 (PM_GUARD_REGION); 0 on older kernels.
    m.figures["pagemap_guard_pages"] = static_cast<double>(guarded.pagemap_guard);
  }
  m.figures["si_code"] = guarded.fault.code;
  m.label = "si_code=" + SegvCodeName(guarded.fault.code);
  AddCommonFigures(m, layout, first_round_ns, reference_ns);
  return m;
}

// Cases fault: every guard page of the pattern read once per round through the catcher; each
// read one sample. Round 0 is warm-up.
Measurement MeasureFault(GuardMethod method, const GuardLayout& layout, int rounds) {
  Measurement m;
  Region region;
  if (m.error = region.Map(ForkBacking::kAnon4K, layout.RegionBytes()); !m.error.empty()) return m;
  if (m.error = CheckPremise(ForkBacking::kAnon4K, region); !m.error.empty()) return m;
  SegvCatcher catcher;
  if (m.error = catcher.error(); !m.error.empty()) return m;
  std::vector<uint64_t> ticks(layout.pages);
  if (!StampedCalls(method, What::kInstall, layout, region.base(), ticks.data())) {
    m.error = Errno(InstallCallName(method));
    return m;
  }
  const GuardCheck guarded = CheckGuarded(method, layout, region.base(), catcher);
  if (m.error = guarded.error; !m.error.empty()) return m;

  CounterGroup group(CurrentRunOptions().counters, /*inherit=*/false);
  m.totals.names = group.names();
  const double ns_per_tick = TscNsPerTick();
  std::vector<SegvEvent> events(layout.pages);
  std::vector<double> reference_ns;
  reference_ns.reserve(static_cast<std::size_t>(rounds) + 1);
  m.samples_ns.reserve(layout.pages * static_cast<std::size_t>(rounds));
  double first_round_ns = 0;
  for (int r = 0; r <= rounds; ++r) {
    const std::vector<double> before = group.Read();
    std::size_t completed = layout.pages;
    for (std::size_t i = 0; i < layout.pages; ++i) {
      if (!catcher.ReadFaults(layout.Page(region.base(), i), &events[i], &ticks[i])) {
        completed = i;
        break;
      }
    }
    if (r > 0) m.totals.Add(before, group.Read());
    if (completed != layout.pages) {
      m.error = "a read of guard page " + std::to_string(completed) + " in round " +
                std::to_string(r) + " did not fault";
      return m;
    }
    // Every SIGSEGV where and what the premise said, checked outside the stamps.
    for (std::size_t i = 0; i < layout.pages; ++i) {
      const char* page = layout.Page(region.base(), i);
      const auto addr = static_cast<const char*>(events[i].addr);
      if (addr < page || addr >= page + kPage4K || events[i].code != guarded.fault.code) {
        m.error = "the SIGSEGV of guard page " + std::to_string(i) + " in round " +
                  std::to_string(r) + " came with " + SegvCodeName(events[i].code) +
                  (addr < page || addr >= page + kPage4K ? " at another address" : "") +
                  ", the premise check's with " + SegvCodeName(guarded.fault.code);
        return m;
      }
    }
    const double round_mean = AddRound(ticks, ns_per_tick, r > 0, &m.samples_ns);
    if (r == 0) first_round_ns = round_mean;
    reference_ns.push_back(ReferenceWorkNs());
  }
  // The guard pages still guard, as many as before.
  if (m.error = CheckGuarded(method, layout, region.base(), catcher).error; !m.error.empty()) {
    return m;
  }
  m.figures["si_code"] = guarded.fault.code;
  m.figures["vmas_after"] = guarded.vmas;
  m.figures["events_per_round"] = static_cast<double>(layout.pages);
  m.figures["rounds"] = rounds;
  m.label = "si_code=" + SegvCodeName(guarded.fault.code);
  AddCommonFigures(m, layout, first_round_ns, reference_ns);
  return m;
}

void RunGuardCase(benchmark::State& state, const GuardCase& c) {
  GuardLayout layout;
  layout.pages = static_cast<std::size_t>(state.range(0));
  layout.stride = static_cast<std::size_t>(state.range(1));
  const int rounds = static_cast<int>(state.range(2));
  Measurement m;
  m.error = WhyCaseCannotRun(c.method, layout);
  int cpu = -1;
  if (m.error.empty()) {
    if (auto why = PinWorker(0, &cpu)) m.error = *why;
  }
  if (m.error.empty()) {
    m = c.what == What::kFault ? MeasureFault(c.method, layout, rounds)
                               : MeasureInstallRemove(c.method, c.what, layout, rounds);
  }
  if (SkippedOrFailed(state, m.error, "")) return;
  ReportPerEvent(state, m.totals, static_cast<double>(m.samples_ns.size()));
  for (const auto& [name, value] : m.figures) state.counters[name] = value;
  ReportSamples(state, m.samples_ns,
                "backing=anon4k method=" + std::string(MethodName(c.method)) +
                    " cpus=" + std::to_string(cpu) + " " + m.label + " premise=verified");
}

// Guard pages per pattern: one (a thread stack's), then spread patterns. Full runs go to 4096
// (a 256 MiB region; mprotect leaves 8193 VMAs, well under the default max_map_count of 65530).
std::vector<long> PagesSweep(bool quick) {
  if (quick) return {1, 64, 512};
  return {1, 64, 1024, 4096};
}

// Rounds per repetition: enough calls for a distribution where a pattern is small, a few rounds
// where it is large.
int RoundsFor(long pages, bool quick) {
  return static_cast<int>(std::clamp((quick ? 4096l : 16384l) / pages, 8l, quick ? 256l : 1024l));
}

void RegisterGuardSuite(const RunOptions& options) {
  const int repetitions = Repetitions(options);
  auto add = [&](const GuardCase& c, long pages, int rounds) {
    const std::string name = std::string("guard/") + c.name + "/anon4k";
    Configure(benchmark::RegisterBenchmark(name.c_str(),
                                           [c](benchmark::State& st) { RunGuardCase(st, c); }),
              pages * rounds, repetitions)
        ->Args({pages, static_cast<long>(kStride), rounds})
        ->ArgNames({"pages", "stride", "rounds"});
  };
  // Each size's four rows one after another, so the two methods are compared at one moment of
  // the machine.
  for (long pages : PagesSweep(options.quick)) {
    for (const GuardCase& c : kCases) {
      if (c.what != What::kFault) add(c, pages, RoundsFor(pages, options.quick));
    }
  }
  const long fault_pages = options.quick ? 64 : 256;
  for (const GuardCase& c : kCases) {
    if (c.what == What::kFault) add(c, fault_pages, options.quick ? 32 : 64);
  }
  // The model's guard fault, install and remove, in the same invocation (same machine state and
  // pinning), unless the model suite runs anyway.
  if (!RunsSuite(options, "model")) RegisterModelGuardCases(options);
}

FAULTLAB_SUITE(Suite{"guard",
                     "guard pages: MADV_GUARD_INSTALL markers against mprotect(PROT_NONE): "
                     "install, remove, VMAs left, SIGSEGV round trip",
                     {{"anon4k (madv_guard)", {Feature::kGuardRegions}},
                      {"anon4k (mprotect)", {}}},
                     RegisterGuardSuite});

}  // namespace
}  // namespace faultlab
