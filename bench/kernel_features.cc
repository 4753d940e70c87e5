#include "bench/kernel_features.h"
#include "topology/hugetlb.h"
#include "topology/kernel_files.h"

#include <fcntl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"

// Newer than the kernel headers Debian Bookworm ships (6.1); values from include/uapi.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

namespace faultlab {
namespace {

bool PathExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// "2 MiB", "1 GiB", "64 KiB": how people name hugetlb sizes.
std::string SizeName(std::size_t bytes) {
  if (bytes >= (1ul << 30) && bytes % (1ul << 30) == 0) return absl::StrCat(bytes >> 30, " GiB");
  if (bytes >= (1ul << 20) && bytes % (1ul << 20) == 0) return absl::StrCat(bytes >> 20, " MiB");
  return absl::StrCat(bytes >> 10, " KiB");
}

// The SIZE of --reserve-hugepages SIZE:N.
std::string FlagSizeName(std::size_t bytes) {
  if (bytes % (1ul << 30) == 0) return absl::StrCat(bytes >> 30, "G");
  if (bytes % (1ul << 20) == 0) return absl::StrCat(bytes >> 20, "M");
  return absl::StrCat(bytes >> 10, "K");
}

std::string HugetlbDir(std::size_t page_size, int node) {
  std::string leaf = absl::StrCat("hugepages-", page_size >> 10, "kB");
  if (node < 0) return absl::StrCat("/sys/kernel/mm/hugepages/", leaf);
  return absl::StrCat("/sys/devices/system/node/node", node, "/hugepages/", leaf);
}

std::optional<std::string> ProbeThp() {
  const std::string mode = ThpMode();
  if (mode.empty()) return "THP not built in (no /sys/kernel/mm/transparent_hugepage/enabled)";
  if (mode == "never") return "THP disabled for 2 MiB pages (transparent_hugepage enabled=never)";
  return std::nullopt;
}

std::optional<std::string> ProbeHugetlbSize(std::size_t page_size) {
  if (PathExists(HugetlbDir(page_size, -1))) return std::nullopt;
  if (!PathExists("/sys/kernel/mm/hugepages")) {
    return "hugetlb not built in (no /sys/kernel/mm/hugepages)";
  }
  return absl::StrCat("no ", SizeName(page_size), " hugetlb page size (no ",
                      HugetlbDir(page_size, -1), ")");
}

std::optional<std::string> ProbeMemfd() {
  int fd = memfd_create("faultlab-probe", MFD_CLOEXEC);
  if (fd < 0) return absl::StrCat("memfd_create failed: ", ErrnoName(errno));
  close(fd);
  return std::nullopt;
}

std::optional<std::string> ProbeUserfaultfd() {
  UffdOpen uffd = OpenUserfaultfd();
  if (uffd.fd < 0) return uffd.error;
  close(uffd.fd);
  return std::nullopt;
}

std::optional<std::string> ProbeHardwarePmu() {
  perf_event_attr attr{};
  attr.size = sizeof(attr);
  attr.type = PERF_TYPE_HARDWARE;
  attr.config = PERF_COUNT_HW_CPU_CYCLES;
  attr.disabled = 1;
  // User mode only, so perf_event_paranoid cannot be the reason it fails.
  attr.exclude_kernel = 1;
  attr.exclude_hv = 1;
  int fd = static_cast<int>(syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
  if (fd >= 0) {
    close(fd);
    return std::nullopt;
  }
  int error = errno;
  if (error == ENOENT || error == EOPNOTSUPP) {
    return absl::StrCat("no hardware PMU (perf_event_open cycles: ", ErrnoName(error), ")");
  }
  return absl::StrCat("perf_event_open cycles failed: ", ErrnoName(error));
}

std::optional<std::string> ProbePerfKernel() {
  if (geteuid() == 0) return std::nullopt;
  std::optional<long> paranoid = ReadKernelLong("/proc/sys/kernel/perf_event_paranoid");
  if (paranoid && *paranoid < 2) return std::nullopt;
  return absl::StrCat("perf_event_paranoid=", paranoid ? absl::StrCat(*paranoid) : "?",
                      " and not root: kernel-mode counts need root or "
                      "sysctl kernel.perf_event_paranoid=1");
}

// Counts the nodes in a list like "0", "0-1" or "0,2-3".
int CountNodeList(const std::string& list) {
  int count = 0;
  std::stringstream ranges(list);
  std::string range;
  while (std::getline(ranges, range, ',')) {
    if (range.empty()) continue;
    std::size_t dash = range.find('-');
    if (dash == std::string::npos) {
      ++count;
    } else {
      count += std::atoi(range.c_str() + dash + 1) - std::atoi(range.c_str()) + 1;
    }
  }
  return count;
}

std::optional<std::string> ProbeNumaMulti() {
  std::optional<std::string> nodes = ReadKernelFile("/sys/devices/system/node/has_memory");
  if (!nodes) return "no NUMA support (no /sys/devices/system/node/has_memory)";
  int count = CountNodeList(*nodes);
  if (count > 1) return std::nullopt;
  // The numa suite's skip rows give the same words (numa_probe.h WhyNotTwoMemoryNodes).
  return absl::StrCat("needs a second NUMA node with memory; this machine has ", count,
                      " (nodes with memory: ", *nodes, ")");
}

std::optional<std::string> ProbeGuardRegions() {
  long page = sysconf(_SC_PAGESIZE);
  void* addr = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED)
    return absl::StrCat("mmap for the guard probe failed: ", ErrnoName(errno));
  int rc = madvise(addr, page, MADV_GUARD_INSTALL);
  int error = errno;
  munmap(addr, 2 * page);
  if (rc == 0) return std::nullopt;
  return absl::StrCat("MADV_GUARD_INSTALL unsupported (needs Linux 6.13+): ", ErrnoName(error));
}

// Whether NUMA balancing can be turned on for a run (numa suite, --numa-balancing): the switch
// exists only in kernels built with CONFIG_NUMA_BALANCING, and only root may write it.
std::optional<std::string> ProbeNumaBalancing() {
  const char* path = "/proc/sys/kernel/numa_balancing";
  if (access(path, F_OK) != 0) {
    return "no /proc/sys/kernel/numa_balancing (a kernel without CONFIG_NUMA_BALANCING)";
  }
  if (access(path, W_OK) != 0) return "/proc/sys/kernel/numa_balancing is not writable: needs root";
  return std::nullopt;
}

std::optional<std::string> Probe(Feature feature) {
  switch (feature) {
    case Feature::kThp: return ProbeThp();
    case Feature::kHugetlb2M: return ProbeHugetlbSize(2ul << 20);
    case Feature::kHugetlb1G: return ProbeHugetlbSize(1ul << 30);
    case Feature::kMemfd: return ProbeMemfd();
    case Feature::kUserfaultfd: return ProbeUserfaultfd();
    case Feature::kHardwarePmu: return ProbeHardwarePmu();
    case Feature::kPerfKernel: return ProbePerfKernel();
    case Feature::kNumaMulti: return ProbeNumaMulti();
    case Feature::kGuardRegions: return ProbeGuardRegions();
    case Feature::kNumaBalancing: return ProbeNumaBalancing();
  }
  return "unknown feature";
}

constexpr std::size_t kFeatureCount = static_cast<std::size_t>(Feature::kNumaBalancing) + 1;

}  // namespace

std::string ErrnoName(int error) {
  // strerrorname_np gives "ENOENT", which is what people search for; glibc 2.32+.
  const char* name = strerrorname_np(error);
  return name != nullptr ? name : absl::StrCat("errno ", error);
}

// The syscall with UFFD_USER_MODE_ONLY works for anyone even when vm.unprivileged_userfaultfd=0
// (faults from kernel mode are then not reported, which no benchmark needs); /dev/userfaultfd
// is the other door, governed by the device node's permissions.
UffdOpen OpenUserfaultfd() {
  UffdOpen result;
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (fd >= 0) {
    result.fd = fd;
    return result;
  }
  std::string syscall_error = ErrnoName(errno);
  std::string dev_error;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    dev_error = absl::StrCat("open /dev/userfaultfd: ", ErrnoName(errno));
  } else {
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
      close(dev);
      result.fd = fd;
      return result;
    }
    dev_error = absl::StrCat("USERFAULTFD_IOC_NEW: ", ErrnoName(errno));
    close(dev);
  }
  std::optional<long> unprivileged = ReadKernelLong("/proc/sys/vm/unprivileged_userfaultfd");
  result.error = absl::StrCat(
      "userfaultfd unavailable (syscall: ", syscall_error, "; ", dev_error,
      "; vm.unprivileged_userfaultfd=", unprivileged ? absl::StrCat(*unprivileged) : "?", ")");
  return result;
}

std::optional<std::string> WhyUnavailable(Feature feature) {
  // Kernel features and permissions do not change during a run; each probe runs once, and
  // suites may ask from any benchmark thread.
  static std::array<std::once_flag, kFeatureCount> once;
  static std::array<std::optional<std::string>, kFeatureCount> answers;
  auto index = static_cast<std::size_t>(feature);
  if (index >= kFeatureCount) return "unknown feature";
  std::call_once(once[index], [&] { answers[index] = Probe(feature); });
  return answers[index];
}

long FreeHugetlbPages(std::size_t page_size, int node) {
  return AvailableHugetlbPages(page_size, node).value_or(-1);
}

std::optional<std::string> WhyNoHugetlbPages(std::size_t page_size, long count, int node) {
  // Never cached: pools are resized by --reserve-hugepages and by other processes mid-run.
  std::string where = node < 0 ? "" : absl::StrCat(" on node ", node);
  std::optional<long> available = AvailableHugetlbPages(page_size, node);
  if (!available) {
    return absl::StrCat("no ", SizeName(page_size), " hugetlb pool", where, " (no ",
                        HugetlbDir(page_size, node), ")");
  }
  if (*available >= count) return std::nullopt;
  // --reserve-hugepages grows the pool until that many pages are free, so it asks for `count`.
  return absl::StrCat("needs ", count, " free ", SizeName(page_size), " hugetlb pages", where,
                      ", ", std::max(0l, *available), " free",
                      *available <= 0 ? " (pool empty or taken)" : "",
                      ": rerun with --reserve-hugepages ", FlagSizeName(page_size), ":", count);
}

std::optional<std::string> WhyCannotRun(const std::vector<Feature>& needs,
                                        std::size_t hugetlb_page_size, long hugetlb_pages,
                                        int node) {
  for (Feature feature : needs) {
    if (auto why = WhyUnavailable(feature)) return why;
  }
  if (hugetlb_page_size == 0) return std::nullopt;
  return WhyNoHugetlbPages(hugetlb_page_size, hugetlb_pages, node);
}

UffdApi ProbeUffdApi() {
  UffdApi result;
  UffdOpen uffd = OpenUserfaultfd();
  if (uffd.fd < 0) {
    result.error = uffd.error;
    return result;
  }
  // features=0 asks for nothing, and the kernel answers with everything it supports.
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;
  if (ioctl(uffd.fd, UFFDIO_API, &api) != 0) {
    result.error = absl::StrCat("UFFDIO_API failed: ", ErrnoName(errno));
  } else {
    result.features = api.features;
    result.ioctls = api.ioctls;
  }
  close(uffd.fd);
  return result;
}

}  // namespace faultlab
