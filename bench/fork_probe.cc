// The fork suite's probes (fork_probe.h), kept apart from the benchmarks so that tests can drive
// them. Each function's contract is in the header.

#include "bench/fork_probe.h"

#include <fcntl.h>
#include <linux/mman.h>
#include <sched.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <emmintrin.h>
#include <fstream>
#include <map>
#include <new>

#include <benchmark/benchmark.h>

#include "bench/mm_probe.h"
#include "bench/tsc_clock.h"

extern char** environ;

namespace faultlab {

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void WaitForEof(int fd) {
  char c;
  while (read(fd, &c, 1) < 0 && errno == EINTR) {
  }
}

const std::vector<BackingKind>& BackingKinds() {
  static const std::vector<BackingKind> kinds = {
      {ForkBacking::kAnon4K, "anon4k", kPage4K, {}},
      {ForkBacking::kThp, "thp", kPage2M, {Feature::kThp}},
      {ForkBacking::kHugetlb2M, "hugetlb2m", kPage2M, {Feature::kHugetlb2M}},
      {ForkBacking::kShmem, "shmem", kPage4K, {Feature::kMemfd}},
      {ForkBacking::kFileRo, "file_ro", kPage4K, {}},
  };
  return kinds;
}

const BackingKind& KindOf(ForkBacking backing) {
  for (const BackingKind& kind : BackingKinds()) {
    if (kind.backing == backing) return kind;
  }
  std::abort();
}

Region::~Region() {
  if (reservation_) munmap(reservation_, reservation_bytes_);
  else if (base_) munmap(base_, bytes_);
  if (fd_ >= 0) close(fd_);
}

std::string Region::Map(ForkBacking backing, std::size_t bytes) {
  bytes_ = bytes;
  switch (backing) {
    case ForkBacking::kAnon4K:
      if (std::string e = MapFenced(kPage4K); !e.empty()) return e;
      // EINVAL: a kernel without THP, which has no huge pages to avoid anyway.
      if (madvise(base_, bytes, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
        return Errno("madvise(MADV_NOHUGEPAGE)");
      }
      break;
    case ForkBacking::kThp:
      // 2 MiB aligned so every 2 MiB of the region can be one huge page.
      if (std::string e = MapFenced(kPage2M); !e.empty()) return e;
      if (madvise(base_, bytes, MADV_HUGEPAGE) != 0) return Errno("madvise(MADV_HUGEPAGE)");
      break;
    case ForkBacking::kHugetlb2M: {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
      if (p == MAP_FAILED) return Errno("mmap(MAP_HUGETLB)");
      base_ = p;
      break;
    }
    case ForkBacking::kShmem: {
      fd_ = memfd_create("faultlab-fork", MFD_CLOEXEC);
      if (fd_ < 0) return Errno("memfd_create");
      if (ftruncate(fd_, static_cast<off_t>(bytes)) != 0) return Errno("ftruncate");
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
      if (p == MAP_FAILED) return Errno("mmap(memfd)");
      base_ = p;
      // Keep shmem at 4 KiB pages (shmem_enabled may allow huge ones): the sweep is per page.
      if (madvise(base_, bytes, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
        return Errno("madvise(MADV_NOHUGEPAGE)");
      }
      break;
    }
    case ForkBacking::kFileRo:
      return MapFile();
  }
  // Written, so every page is present and private pages are the parent's own before fork.
  for (std::size_t off = 0; off < bytes; off += kPage4K) {
    static_cast<volatile char*>(base_)[off] = 1;
  }
  return {};
}

// Anonymous memory between PROT_NONE guards so the kernel cannot merge it with a neighbour
// and smaps describes this region alone.
std::string Region::MapFenced(std::size_t align) {
  reservation_bytes_ = bytes_ + 2 * align + kPage4K;
  void* p = mmap(nullptr, reservation_bytes_, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return Errno("mmap");
  reservation_ = p;
  const auto after_guard = reinterpret_cast<uintptr_t>(p) + kPage4K;
  base_ = reinterpret_cast<void*>((after_guard + align - 1) & ~(align - 1));
  if (mprotect(base_, bytes_, PROT_READ | PROT_WRITE) != 0) return Errno("mprotect");
  return {};
}

// A file of the region's size in a fresh temp dir, unlinked at once (nothing is left behind if
// the run dies), mapped private and read-only, and read-faulted page by page: page cache pages
// mapped into the parent, with no anon_vma, so fork copies no page tables for it.
std::string Region::MapFile() {
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/faultlab-fork-XXXXXX";
  if (!mkdtemp(dir.data())) return Errno("mkdtemp");
  const std::string path = dir + "/region";
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  const int open_errno = errno;
  unlink(path.c_str());
  rmdir(dir.c_str());
  if (fd_ < 0) {
    errno = open_errno;
    return Errno("open of the temp file");
  }
  std::vector<char> chunk(1 << 20, 'f');
  for (std::size_t done = 0; done < bytes_;) {
    const ssize_t n = write(fd_, chunk.data(), std::min(chunk.size(), bytes_ - done));
    if (n <= 0) return Errno("write of the temp file");
    done += static_cast<std::size_t>(n);
  }
  void* p = mmap(nullptr, bytes_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (p == MAP_FAILED) return Errno("mmap(file)");
  base_ = p;
  unsigned sum = 0;
  for (std::size_t off = 0; off < bytes_; off += kPage4K) {
    sum += static_cast<volatile char*>(base_)[off];
  }
  benchmark::DoNotOptimize(sum);
  return {};
}

std::string CheckPremise(ForkBacking backing, const Region& region) {
  const long kb = static_cast<long>(region.bytes() / 1024);
  const std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
  if (pagemap.empty()) return "cannot read /proc/self/pagemap";
  if (CountPresent(pagemap) != pagemap.size()) {
    return "only " + std::to_string(CountPresent(pagemap)) + " of " +
           std::to_string(pagemap.size()) + " pages present before fork";
  }
  const std::map<std::string, long> smaps = SmapsOf(region.base());
  auto field = [&](const char* name) { return SmapsField(smaps, name); };
  switch (backing) {
    case ForkBacking::kAnon4K:
      if (field("AnonHugePages") != 0) {
        return "4 KiB case got huge pages (AnonHugePages " +
               std::to_string(field("AnonHugePages")) + " kB) despite MADV_NOHUGEPAGE";
      }
      break;
    case ForkBacking::kThp:
      if (field("AnonHugePages") != kb) {
        return "THP not granted: AnonHugePages " + std::to_string(field("AnonHugePages")) +
               " of " + std::to_string(kb) + " kB (memory fragmented, or THP defrag off?)";
      }
      break;
    case ForkBacking::kHugetlb2M:
      if (field("KernelPageSize") != 2048 || field("Private_Hugetlb") != kb) {
        return "hugetlb mapping is not what was asked: KernelPageSize " +
               std::to_string(field("KernelPageSize")) + " kB, Private_Hugetlb " +
               std::to_string(field("Private_Hugetlb")) + " kB";
      }
      break;
    case ForkBacking::kShmem:
      if (field("ShmemPmdMapped") > 0) {
        return "shmem mapped huge pages (ShmemPmdMapped " +
               std::to_string(field("ShmemPmdMapped")) + " kB)";
      }
      [[fallthrough]];
    case ForkBacking::kFileRo:
      if (field("Rss") != kb) {
        return "Rss " + std::to_string(field("Rss")) + " kB, expected " + std::to_string(kb);
      }
      break;
  }
  return {};
}

long VmPteKb(pid_t pid) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/status")
                            : "/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmPTE:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

SharedArea::SharedArea(std::size_t extra) {
  bytes_ = sizeof(SharedPage) + extra;
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) {
    base_ = p;
    page_ = new (p) SharedPage();
  }
}

SharedArea::~SharedArea() {
  if (base_) munmap(base_, bytes_);
}

bool WaitForStamp(const SharedPage* page, pid_t pid, int* status) {
  const double deadline = MonotonicNs() + 30e9;
  for (unsigned spins = 1; page->child_stamp.load(std::memory_order_acquire) == 0; ++spins) {
    if (spins % 256 != 0) {
      _mm_pause();
      continue;
    }
    sched_yield();
    if (spins % 4096 == 0) {
      // WNOWAIT: a child that stamped and exited between the load above and this check must
      // stay unreaped, so the caller can still time its waitpid.
      siginfo_t info{};
      if (waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == pid) {
        if (page->child_stamp.load(std::memory_order_acquire) != 0) return true;
        waitpid(pid, status, 0);
        return false;
      }
      if (MonotonicNs() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, status, 0);
        return false;
      }
    }
  }
  return true;
}

std::string TimedFork(Spawn spawn, SharedPage* page, ForkSample* sample) {
  const double ns_per_tick = TscNsPerTick();
  page->child_stamp.store(0, std::memory_order_relaxed);
  int status = 0;
  pid_t pid = -1;
  uint64_t t_after = 0, t_seen = 0;
  const uint64_t t_before = TscNow();
  switch (spawn) {
    case Spawn::kFork:
      pid = fork();
      if (pid == 0) {
        page->child_stamp.store(TscNow(), std::memory_order_release);
        _exit(0);
      }
      t_after = TscNow();
      if (pid < 0) return Errno("fork");
      if (!WaitForStamp(page, pid, &status)) {
        return "the child died before it stamped (status " + std::to_string(status) + ")";
      }
      t_seen = TscNow();
      break;
    case Spawn::kVfork:
      pid = vfork();
      if (pid == 0) {
        page->child_stamp.store(TscNow(), std::memory_order_release);
        _exit(0);
      }
      t_after = TscNow();
      if (pid < 0) return Errno("vfork");
      t_seen = t_after;
      break;
    case Spawn::kPosixSpawn: {
      char arg0[] = "/bin/true";
      char* argv[] = {arg0, nullptr};
      const int rc = posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ);
      t_after = TscNow();
      if (rc != 0) {
        errno = rc;
        return Errno("posix_spawn(/bin/true)");
      }
      t_seen = t_after;
      break;
    }
  }
  struct rusage child{};
  if (wait4(pid, &status, 0, &child) != pid) return Errno("wait4");
  const uint64_t t_reaped = TscNow();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "the child did not exit 0 (status " + std::to_string(status) + ")";
  }
  const uint64_t stamp = page->child_stamp.load(std::memory_order_acquire);
  if (spawn != Spawn::kPosixSpawn && stamp == 0) return "the child never stamped: it did not run";
  sample->fork_ns = static_cast<double>(t_after - t_before) * ns_per_tick;
  sample->child_runs_ns =
      spawn == Spawn::kPosixSpawn ? 0 : static_cast<double>(stamp - t_before) * ns_per_tick;
  sample->exit_wait_ns = static_cast<double>(t_reaped - t_seen) * ns_per_tick;
  sample->child_faults = static_cast<double>(child.ru_minflt + child.ru_majflt);
  sample->child_context_switches = static_cast<double>(child.ru_nvcsw + child.ru_nivcsw);
  auto ns = [](const timeval& t) { return static_cast<double>(t.tv_sec) * 1e9 + t.tv_usec * 1e3; };
  sample->child_cpu_ns = ns(child.ru_utime) + ns(child.ru_stime);
  return {};
}

std::string MeasureVmPte(SharedPage* page, long* parent_kb, long* child_kb) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Errno("pipe");
  page->child_stamp.store(0, std::memory_order_relaxed);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[1]);
    page->child_stamp.store(TscNow(), std::memory_order_release);
    WaitForEof(fds[0]);
    _exit(0);
  }
  close(fds[0]);
  if (pid < 0) {
    close(fds[1]);
    return Errno("fork");
  }
  int status = 0;
  if (!WaitForStamp(page, pid, &status)) {
    close(fds[1]);
    return "the VmPTE child died before it stamped";
  }
  *parent_kb = VmPteKb(0);
  *child_kb = VmPteKb(pid);
  close(fds[1]);  // EOF: the child's read returns and it exits
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return "the VmPTE child did not exit 0";
  if (*parent_kb < 0 || *child_kb < 0) return "cannot read VmPTE from /proc/<pid>/status";
  return {};
}

std::string TablesWithheldFromChildKb(long* kb) {
  SharedArea shared(0);
  if (!shared.page()) return Errno("mmap of the shared page");
  Region probe;
  if (std::string e = probe.Map(ForkBacking::kAnon4K, kCowPteProbeBytes); !e.empty()) return e;
  long parent_kb = 0, child_kb = 0;
  if (std::string e = MeasureVmPte(shared.page(), &parent_kb, &child_kb); !e.empty()) return e;
  *kb = parent_kb - child_kb;
  return {};
}

}  // namespace faultlab
