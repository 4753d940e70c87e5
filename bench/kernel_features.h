// What this kernel and machine can run, probed in one place.
//
// Every suite asks here before it runs a case, and `faultlab env` lists the same answers, so the
// reason a row was skipped and the reason `env` gives are the same text.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace faultlab {

enum class Feature {
  kThp,            // transparent huge pages usable with MADV_HUGEPAGE (enabled is madvise or always)
  kHugetlb2M,      // a 2 MiB hugetlb page size exists
  kHugetlb1G,      // a 1 GiB hugetlb page size exists
  kMemfd,          // memfd_create works (shmem)
  kUserfaultfd,    // userfaultfd usable by this process (/dev/userfaultfd or the syscall)
  kHardwarePmu,    // perf can open a hardware cycles event
  kPerfKernel,     // perf may count kernel mode (root or perf_event_paranoid < 2)
  kNumaMulti,      // more than one NUMA node with memory
  kGuardRegions,   // MADV_GUARD_INSTALL (Linux 6.13+)
  kNumaBalancing,  // /proc/sys/kernel/numa_balancing exists (CONFIG_NUMA_BALANCING) and is writable
};

// nullopt when the feature is available; otherwise why not, in one line. Probed once per process
// (features and permissions do not change during a run); safe to call from any thread.
std::optional<std::string> WhyUnavailable(Feature feature);

// Free hugetlb pages of `page_size` bytes (on `node`, or in the global pool when node < 0);
// -1 when this kernel has no such pool (unsupported size or node). Read afresh on every call.
long FreeHugetlbPages(std::size_t page_size, int node = -1);

// nullopt when `count` hugetlb pages of `page_size` are free; otherwise why not (naming the
// --reserve-hugepages flag that fixes it). Never cached: pools change during a run.
std::optional<std::string> WhyNoHugetlbPages(std::size_t page_size, long count, int node = -1);

// What a benchmark variant needs, checked in one place for the suites and `faultlab env`: each
// feature, then (when hugetlb_page_size > 0) that many free hugetlb pages on `node`. nullopt when
// it can run; otherwise the first reason.
std::optional<std::string> WhyCannotRun(const std::vector<Feature>& needs,
                                        std::size_t hugetlb_page_size = 0, long hugetlb_pages = 0,
                                        int node = -1);

// "ENOENT" for ENOENT: the name people search for (strerrorname_np), or "errno N".
std::string ErrnoName(int error);

// A userfaultfd descriptor, non-blocking and close-on-exec, before UFFDIO_API; or why none could
// be opened (both ways named). The one place faultlab opens userfaultfd: the probes here and the
// uffd suite (bench/uffd_probe.h) both use it.
struct UffdOpen {
  int fd = -1;
  std::string error;
};
// The syscall with UFFD_USER_MODE_ONLY, else /dev/userfaultfd (USERFAULTFD_IOC_NEW). Only faults
// taken in user mode are reported: a kernel-mode access (a syscall copying into registered
// memory) gets EFAULT instead.
UffdOpen OpenUserfaultfd();

// Feature and ioctl bits UFFDIO_API reports when asked for no features (the kernel then answers
// with all it supports); 0 with a reason when userfaultfd cannot be opened.
struct UffdApi {
  unsigned long long features = 0;
  unsigned long long ioctls = 0;
  std::string error;  // empty on success
};
UffdApi ProbeUffdApi();

}  // namespace faultlab
