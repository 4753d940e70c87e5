// The guard suite's probes: guard pages made two ways, the VMAs they leave, the SIGSEGV an
// access to one raises, and the checks the suite makes before it trusts a figure.
//
// Two ways to make a guard page:
// - a guard region marker (madvise MADV_GUARD_INSTALL, Linux 6.13+): the kernel zaps the page and
//   writes a PTE marker in its page-table entry; the VMA is left alone. A fault on the marker
//   raises SIGSEGV. MADV_GUARD_REMOVE clears the marker: the page is empty again (it reads back
//   as zero) and the next access faults in a fresh one.
// - mprotect(PROT_NONE): the protection is the VMA's, so a guard page in the middle of a region
//   splits its VMA in three; N of them leave 2N+1 VMAs, each counted against vm.max_map_count.
//   The pages stay mapped (PROT_NONE), contents kept; mprotect back to read-write merges the VMAs.
//
// They live apart from the benchmarks (guard_suite.cc) so that tests can show each does what the
// suite relies on: the VMA counts, where the SIGSEGV lands, and that the previous SIGSEGV action
// is back once the catcher is gone.
#pragma once

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "topology/hugetlb.h"

// The uapi values (include/uapi/asm-generic/mman-common.h), for headers older than Linux 6.13.
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

namespace faultlab {

enum class GuardMethod { kMarker, kMprotect };

// "madvise(MADV_GUARD_INSTALL)", "mprotect(PROT_NONE)", ...: what a failure message names.
const char* InstallCallName(GuardMethod method);
const char* RemoveCallName(GuardMethod method);
// "madv_guard" or "mprotect": what a label names.
const char* MethodName(GuardMethod method);

// One system call each and nothing else, so the suite's stamps around them time the call alone.
// 0 on success; otherwise -1 with errno set.
inline int InstallGuard(GuardMethod method, void* addr, std::size_t len) {
  return method == GuardMethod::kMarker ? madvise(addr, len, MADV_GUARD_INSTALL)
                                        : mprotect(addr, len, PROT_NONE);
}
inline int RemoveGuard(GuardMethod method, void* addr, std::size_t len) {
  return method == GuardMethod::kMarker ? madvise(addr, len, MADV_GUARD_REMOVE)
                                        : mprotect(addr, len, PROT_READ | PROT_WRITE);
}

// Where a region's guard pages go: `pages` guard pages of 4 KiB, one in each `stride` pages of
// the region, in the middle of its stride. None is at an edge of the region, so mprotect splits
// the region's one VMA into exactly 2 * pages + 1 and never merges a guard page with a PROT_NONE
// neighbour (the fences around fork_probe.h's Region).
struct GuardLayout {
  std::size_t pages = 1;
  std::size_t stride = 16;

  std::size_t RegionBytes() const { return pages * stride * kPage4K; }
  char* Page(char* base, std::size_t i) const { return base + (i * stride + stride / 2) * kPage4K; }
  // The VMAs the region spans with every guard page made: markers leave its one VMA whole.
  int ExpectedVmas(GuardMethod method) const {
    return method == GuardMethod::kMarker ? 1 : static_cast<int>(2 * pages + 1);
  }
};

// VMAs of this process that overlap [addr, addr + len), from /proc/self/maps; -1 if unreadable.
int CountVmas(const void* addr, std::size_t len);
// Every VMA of this process; -1 if unreadable.
int CountAllVmas();
// /proc/sys/vm/max_map_count: how many VMAs a process may have; -1 if unreadable.
long MaxMapCount();

// Why mprotect of `pages` spread guard pages (2 * pages more VMAs) cannot be done under a
// vm.max_map_count of `limit` in a process that has `mapped` VMAs, keeping `headroom` of them
// for whatever else it maps; empty if it can. (A process over the limit gets ENOMEM from mprotect
// halfway through the pattern.)
std::string WhyTooManyVmas(std::size_t pages, long limit, long mapped, long headroom);

// "SEGV_MAPERR", "SEGV_ACCERR", ... or "si_code N".
std::string SegvCodeName(int code);
// "BUS_ADRERR", "BUS_MCEERR_AR", ... or "si_code N".
std::string BusCodeName(int code);

// A SIGSEGV (or SIGBUS) as the handler saw it.
struct SegvEvent {
  const void* addr = nullptr;  // si_addr
  int code = 0;                // si_code
};

// Turns the SIGSEGV of an access that is expected to fault into a return value. While it lives
// its handler is the process's SIGSEGV action; the previous action is put back when it goes. Only
// one may live at a time (the action is process-wide); it catches accesses made through
// ReadFaults on any thread, and passes every other SIGSEGV to the previous action.
// Made with SIGBUS it does the same for SIGBUS (the uffd suite's poison case: an access to a
// UFFDIO_POISON marker); one catcher per signal may live, and a SIGBUS catcher not while a
// sigbus-mode FaultHandler (uffd_probe.h) owns that action.
//
// The handler records si_addr and si_code and siglongjmps back into ReadFaults. It is installed
// with SA_NODEFER and the jump buffer saves no signal mask: without SA_NODEFER, SIGSEGV would
// stay blocked after the first jump out of the handler (and the next fault would kill the
// process); restoring the mask in the jump instead would add an rt_sigprocmask call to every
// round trip the suite times. (Under ThreadSanitizer the mask is restored: guard_probe.cc.)
class SegvCatcher {
 public:
  explicit SegvCatcher(int signal = SIGSEGV);  // SIGSEGV or SIGBUS
  ~SegvCatcher();
  SegvCatcher(const SegvCatcher&) = delete;
  SegvCatcher& operator=(const SegvCatcher&) = delete;

  // Empty when the handler is installed; otherwise why not.
  const std::string& error() const { return error_; }

  // Reads one byte at `addr`. True if the read raised SIGSEGV (*event says where and why); false
  // if it completed. With `ticks`, the TSC ticks from just before the read to the return here:
  // for a fault, the whole round trip (trap, fault handling, signal delivery, handler, jump back).
  bool ReadFaults(const void* addr, SegvEvent* event, uint64_t* ticks = nullptr);

 private:
  int signal_;
  std::string error_;
  bool installed_ = false;
};

// What a premise check found.
struct GuardCheck {
  std::string error;               // empty: the premise holds
  int vmas = -1;                   // VMAs the region spans
  SegvEvent fault;                 // CheckGuarded: the SIGSEGV of the first guard page
  std::size_t pagemap_guard = 0;   // CheckGuarded, markers: guard pages pagemap flags (6.15+)
};

// After every guard page of `layout` in the region at `base` was made with `method`, on a region
// that was populated before: each guard page is what the method leaves (markers: not present;
// mprotect: still present, PROT_NONE) and every other page still present; the region spans
// ExpectedVmas(method) VMAs; a read of the first guard page raises SIGSEGV at that page
// (mprotect: SEGV_ACCERR; a marker's si_code is recorded, not assumed) and the page after it
// reads without one.
GuardCheck CheckGuarded(GuardMethod method, const GuardLayout& layout, char* base,
                        SegvCatcher& catcher);

// After every guard page was removed again: the region is one VMA, the first guard page reads
// without a fault; markers: the guard pages are empty (install zapped them, remove left no
// marker) and the first reads back as zero; mprotect: the pages stayed present.
GuardCheck CheckUnguarded(GuardMethod method, const GuardLayout& layout, char* base,
                          SegvCatcher& catcher);

}  // namespace faultlab
