// The suites registry and the options of a run.
//
// A suite is one *_suite.cc file. It adds itself at static initialisation with
// FAULTLAB_SUITE(...), declares which variants need which kernel features (so `faultlab env` can
// say what would be skipped), and registers its Google Benchmark cases once the run's options are
// known: sizes depend on --quick, thread counts on the CPUs the run may use.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "bench/kernel_features.h"

namespace faultlab {

class Topology;

// What `faultlab run` was asked for, after validation.
struct RunOptions {
  bool quick = false;
  std::vector<std::string> suites;       // the suites this run registers, in order
  const Topology* topology = nullptr;    // the machine's, loaded once by the CLI
  std::vector<int> cpus;                 // CPUs benchmark threads are pinned to, in order
  std::optional<int> node;               // NUMA node memory is bound to (nullopt: no binding)
  std::vector<std::string> counters;     // perf event names
  std::optional<int> cow_pte_prctl;      // the COW-PTE series' prctl number, if the user gave it
  std::optional<int> repetitions;        // --repetitions: overrides every suite's count
  bool numa_balancing = false;           // --numa-balancing: the numa suite's hinting rows may
                                         //   turn kernel.numa_balancing on around themselves
};

// Repetitions of every benchmark: --repetitions if given, else 3 with --quick and 5 without
// (enough for a spread; a comparison's U test wants 9 or more: `faultlab compare` says so).
int Repetitions(const RunOptions& options);

// The options of the current run; suites and the harness read them.
const RunOptions& CurrentRunOptions();
// Whether the run registers the suite `name` (a kernel suite registers the model's cases beside
// its own only when the model suite does not run anyway).
bool RunsSuite(const RunOptions& options, const std::string& name);
void SetCurrentRunOptions(RunOptions options);

struct SuiteVariant {
  std::string name;                      // e.g. "hugetlb2m"
  std::vector<Feature> needs;            // features it cannot run without
  std::size_t hugetlb_page_size = 0;     // > 0: it also needs free hugetlb pages of this size,
  long hugetlb_pages = 0;                //   this many for `run --quick`
};

struct Suite {
  std::string name;                      // first component of every benchmark name
  std::string description;
  std::vector<SuiteVariant> variants;
  void (*register_benchmarks)(const RunOptions& options);
};

// Adds a suite; returns true so it can initialise a static.
bool AddSuite(Suite suite);
const std::vector<Suite>& Suites();
const Suite* FindSuite(const std::string& name);

#define FAULTLAB_CONCAT_INNER(a, b) a##b
#define FAULTLAB_CONCAT(a, b) FAULTLAB_CONCAT_INNER(a, b)
#define FAULTLAB_SUITE(...) \
  static const bool FAULTLAB_CONCAT(faultlab_suite_, __LINE__) = ::faultlab::AddSuite(__VA_ARGS__)

}  // namespace faultlab
