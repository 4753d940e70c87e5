// The environment a result depends on, recorded in every run's context.
//
// Kernel release and config, THP and hugetlb settings, numa_balancing, perf and userfaultfd
// permissions, CPU model and hypervisor, DAMON, swap, cgroup, the compiler and flags this binary
// was built with, faultlab's version. Conditions known to distort fault timings come back as
// warnings, which the run prints loudly and stores beside the figures.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace faultlab {

inline constexpr int kSchemaVersion = 1;

// Reads /proc, /sys and the build info; never fails (an unreadable source is recorded as null or
// as "unavailable: <reason>"). Top-level keys: schema_version, timestamp, hostname, kernel,
// kernel_config (CONFIG_* -> "y"/"n"/value, null when absent), thp (with mthp per size), hugetlb
// (per size "2048kB", with per-node pools), numa_balancing, numa, vm, perf_event_paranoid,
// kptr_restrict, userfaultfd, cpu, hypervisor, emulation (FAULTLAB_EMULATED, or QEMU TCG's CPUID
// signature), damon, swap, memory, cgroup, clocksource, build,
// google_benchmark. Takes a few tens of milliseconds (it runs zcat and git once).
nlohmann::json CaptureEnvironment();

// Conditions that distort results, one line each: software emulation (first), running in a VM, THP=always (4 KiB cases get
// huge pages), DAMON active, a debug build of Google Benchmark or of faultlab, a sanitizer build,
// kernel debug options, init_on_alloc, numa_balancing. Works on any JSON (missing or mistyped
// fields count as "not distorting"), so records from other versions can be re-checked.
std::vector<std::string> DistortionWarnings(const nlohmann::json& environment);

// `faultlab env`: the environment as a two-column table, then the warnings, then which suites and
// variants would be skipped here and why.
void PrintEnvironmentTable(const nlohmann::json& environment, std::ostream& out);

}  // namespace faultlab
