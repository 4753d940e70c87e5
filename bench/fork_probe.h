// The real-kernel fork suite's probes: the backings it forks, the region it maps, the checks it
// makes before trusting a figure, and the fork it times.
//
// They live apart from the benchmarks (fork_suite.cc) so that tests can show each check catches
// what it claims to: a region whose pages are not all present, a THP claim on 4 KiB pages, a
// child that died before it ran, a child that did (or did not) get the parent's page tables.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/kernel_features.h"
#include "topology/hugetlb.h"

namespace faultlab {

// The memory a forking parent holds. (Not `Backing`: that name is the hugetlb arena's, in
// topology/hugetlb.h.)
enum class ForkBacking { kAnon4K, kThp, kHugetlb2M, kShmem, kFileRo };

// A backing as the suite names, sizes and gates it: one place, so the sweep, the premise check
// and `faultlab env` agree on it.
struct BackingKind {
  ForkBacking backing;
  const char* name;     // the benchmark name's backing component
  std::size_t page;     // the page size the kernel should map it with
  std::vector<Feature> needs;
};

// Every backing the suite sweeps, in the order it registers them.
const std::vector<BackingKind>& BackingKinds();
// The entry of BackingKinds() for `backing`.
const BackingKind& KindOf(ForkBacking backing);

// The region of the COW-PTE probe (TablesWithheldFromChildKb): 16 MiB of 4 KiB pages, whose
// 32 kB of PTE tables a page-table-sharing fork would withhold from the child.
constexpr std::size_t kCowPteProbeBytes = 16ul << 20;

// The parent's region: mapped, populated by writes (file_ro: by reads of a file it wrote), and
// unmapped at the end of the repetition.
class Region {
 public:
  Region() = default;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();

  // Empty on success, else why the region could not be had.
  std::string Map(ForkBacking backing, std::size_t bytes);

  char* base() const { return static_cast<char*>(base_); }
  std::size_t bytes() const { return bytes_; }

 private:
  std::string MapFenced(std::size_t align);
  std::string MapFile();

  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  void* reservation_ = nullptr;
  std::size_t reservation_bytes_ = 0;
  int fd_ = -1;
};

// Every page present, and mapped with the page size the backing claims; empty if so. A figure
// taken on a region that is not what its name says (pages missing, THP not granted, huge pages
// where 4 KiB were asked for) would be a figure of something else.
std::string CheckPremise(ForkBacking backing, const Region& region);

// VmPTE of /proc/<pid>/status in kB (pid 0: this process); -1 if unreadable. Page tables are
// what fork copies, so their size in parent and child says what a fork did.
long VmPteKb(pid_t pid);

// What the child writes for the parent: its first TSC stamp, and for child_write its samples.
// It lives in MAP_SHARED memory (SharedArea), the one thing parent and child both see.
struct alignas(64) SharedPage {
  std::atomic<uint64_t> child_stamp{0};
  std::atomic<int> go{0};          // child_write: the parent's signal that it is done forking
  std::atomic<int> child_done{0};
  double child_counters[64];
  std::size_t child_counter_count = 0;
  long child_thp_kb = -1;          // child_write, thp: the child's AnonHugePages after its writes
  char child_error[200] = {};
  // followed by per-page ticks (child_write)
};

// A SharedPage followed by `extra` bytes, shared with every child forked while it lives.
// page() is null if the mapping failed.
class SharedArea {
 public:
  explicit SharedArea(std::size_t extra);
  ~SharedArea();
  SharedArea(const SharedArea&) = delete;
  SharedArea& operator=(const SharedArea&) = delete;
  SharedPage* page() const { return page_; }
  uint64_t* ticks() const { return reinterpret_cast<uint64_t*>(page_ + 1); }

 private:
  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  SharedPage* page_ = nullptr;
};

// Waits for the child's stamp, spinning (a futex wake-up would add scheduler latency to
// child_runs_ns and to the start of exit_wait_ns) and yielding now and then in case the child
// shares this CPU. A spinning parent is a parent that goes on working after fork, so the child
// runs when the scheduler finds it a CPU: on an idle machine the other one (fork balancing),
// on a loaded one after a wait that child_runs_ns shows. Returns false, with the child reaped and
// *status set, if the child died first (or had not stamped after 30 s: it is killed). On true
// the child is not reaped: the caller times its waitpid.
bool WaitForStamp(const SharedPage* page, pid_t pid, int* status);

// "what: strerror(errno)".
std::string Errno(const char* what);

// Blocks until the other end of a pipe is closed: how a forked child waits for its parent.
void WaitForEof(int fd);

// How the child is made: fork(), or a floor that does not copy the parent's mm.
enum class Spawn { kFork, kVfork, kPosixSpawn };

// The figures of one timed fork: times in ns, and what the child itself did (its rusage from
// wait4: faults it took, context switches, CPU time including its exit's teardown).
struct ForkSample {
  double fork_ns = 0, child_runs_ns = 0, exit_wait_ns = 0;
  double child_faults = 0, child_context_switches = 0, child_cpu_ns = 0;
};

// One fork (or floor) with the child stamping and exiting at once. Empty on success.
//   fork_ns:       just before fork() .. fork() returning in the parent
//   child_runs_ns: just before fork() .. the child's first instruction after fork (its stamp)
//   exit_wait_ns:  the parent seeing the stamp .. wait4 returning (the child's _exit(0), which
//                  tears down its copy of the page tables, and the reaping)
// vfork: the parent resumes only once the child has released the mm (its _exit), so fork_ns
// holds the child's whole life. posix_spawn of /bin/true: the exec of the program and its run
// are included (glibc's posix_spawn returns once the exec succeeded, and waitpid waits for
// /bin/true to finish); there is no stamp from the child, so child_runs_ns is not measured.
std::string TimedFork(Spawn spawn, SharedPage* page, ForkSample* sample);

// One untimed fork whose child stamps and then blocks on a pipe until the parent has read both
// VmPTE values: the child's page tables exist only while it lives, and a child that waits would
// spoil exit_wait_ns, so this fork is kept apart from the timed ones. Empty on success.
std::string MeasureVmPte(SharedPage* page, long* parent_kb, long* child_kb);

// How many kB of page tables a child forked now goes without: the parent's VmPTE less the
// child's, with a populated 16 MiB region of 4 KiB pages (32 kB of PTE tables) mapped for it.
// The COW-PTE host compares it before and after the prctl: only a kernel that shares page tables
// at fork makes it grow. Empty on success.
std::string TablesWithheldFromChildKb(long* kb);

}  // namespace faultlab
