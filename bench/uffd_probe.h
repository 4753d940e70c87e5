// userfaultfd for the benchmarks: a descriptor with the features a case needs, the memory it
// registers, the resolving ioctls, and the handler that answers faults in one of three modes.
//
// Everything here is RAII: a case that fails half-way (an ioctl error, a premise that does not
// hold, an exception) still leaves no handler thread and no descriptor behind, which the tests
// check through /proc/self/task and /proc/self/fd. Errors are returned as one-line strings
// ("" on success) naming the call and its errno, as the rest of bench/ does, so a case can turn
// them into a skip or a failure row.
//
// Destroy in reverse order of need: a FaultHandler before the Userfaultfd it reads, and both
// before the UffdRegion they serve (declare region, descriptor, handler in that order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/uffd_uapi.h"  // the uapi newer than the system headers

namespace faultlab {

struct CounterTotals;  // harness.h

// The memory a uffd case registers.
enum class UffdMemory { kAnon4K, kShmem, kHugetlb2M };
const char* UffdMemoryName(UffdMemory memory);  // "anon4k", "shmem", "hugetlb2m"
std::size_t UffdPageSize(UffdMemory memory);    // bytes one fault maps: 4096, or 2 MiB

// Bits of a pagemap entry the uffd cases read (Documentation/admin-guide/mm/pagemap.rst).
inline bool PagemapUffdWp(uint64_t entry) { return (entry >> 57) & 1; }

// An address range a handler serves, and the size of the page one fault in it maps.
struct UffdRange {
  char* base = nullptr;
  std::size_t bytes = 0;
  std::size_t page = 4096;
};

// `bytes` of one memory type, mapped for registering:
// - anon4k: MAP_PRIVATE|MAP_ANONYMOUS with MADV_NOHUGEPAGE;
// - shmem: a memfd, MAP_SHARED, with MADV_NOHUGEPAGE (one fault per 4 KiB page whatever
//   shmem_enabled says);
// - hugetlb2m: a memfd with MFD_HUGETLB|MFD_HUGE_2MB, MAP_SHARED (needs free pool pages).
// The file-backed types also get a second mapping of the same file, alias(), never registered:
// writing through it fills the page cache without faulting in the registered mapping, which is
// what a minor fault needs (the page is cached, the registered PTE is none).
class UffdRegion {
 public:
  UffdRegion() = default;
  UffdRegion(const UffdRegion&) = delete;
  UffdRegion& operator=(const UffdRegion&) = delete;
  ~UffdRegion();

  // "" or why the mapping could not be made (ENOMEM from an empty hugetlb pool names
  // --reserve-hugepages). `bytes` must be a positive multiple of the type's page size.
  std::string Map(UffdMemory memory, std::size_t bytes);

  UffdMemory memory() const { return memory_; }
  char* base() const { return base_; }
  char* alias() const { return alias_; }  // nullptr for anon4k
  std::size_t bytes() const { return bytes_; }
  std::size_t page() const { return UffdPageSize(memory_); }
  std::size_t pages() const { return bytes_ / page(); }
  UffdRange range() const { return {base_, bytes_, page()}; }

  // Fills every page of the page cache with `value` through alias() (file types only).
  std::string FillCache(char value);
  // Drops the registered mapping's entries (MADV_DONTNEED); file pages stay cached, and on
  // shmem and hugetlbfs a uffd-wp protection stays as a PTE marker.
  std::string Zap();
  // Drops the registered mapping's entries and the file's pages (fallocate PUNCH_HOLE), so the
  // next access is a missing fault again.
  std::string Empty();

 private:
  UffdMemory memory_ = UffdMemory::kAnon4K;
  int fd_ = -1;
  char* base_ = nullptr;
  char* alias_ = nullptr;
  std::size_t bytes_ = 0;
};

// Names of UFFD_FEATURE_* bits, joined by ", " ("UFFD_FEATURE_MINOR_SHMEM"); a bit faultlab
// does not know is "feature bit N".
std::string UffdFeatureNames(uint64_t features);

// One userfaultfd, opened with OpenUserfaultfd (kernel_features.h: the syscall with
// UFFD_USER_MODE_ONLY, else /dev/userfaultfd), non-blocking, close-on-exec, with UFFDIO_API done.
// SetBlocking makes it blocking (and back) for the minimal handler (HandlerLoop::kBlockingRead).
class Userfaultfd {
 public:
  Userfaultfd() = default;
  Userfaultfd(const Userfaultfd&) = delete;
  Userfaultfd& operator=(const Userfaultfd&) = delete;
  ~Userfaultfd();

  // Opens and handshakes asking for `features` (UFFD_FEATURE_* bits). "" or why not; a feature
  // the kernel lacks is named ("UFFD_FEATURE_MINOR_SHMEM not supported by this kernel"), as is
  // a bit no kernel defines.
  std::string Open(uint64_t features);
  int fd() const { return fd_; }
  // The features enabled: those asked for (UFFDIO_API answers with every feature the kernel has,
  // but enables only the ones asked for).
  uint64_t features() const { return features_; }

  // UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_* bits; *ioctls gets the ioctls the range allows
  // (bit _UFFDIO_X set for UFFDIO_X).
  std::string Register(void* addr, std::size_t len, uint64_t modes, uint64_t* ioctls = nullptr);
  std::string Unregister(void* addr, std::size_t len);
  // Clears (blocking) or sets O_NONBLOCK: "" or "fcntl(F_SETFL): <errno name>". The flag belongs
  // to the open file, which the kernel's read() consults each time: change it only while no
  // handler reads the descriptor.
  std::string SetBlocking(bool blocking);
  bool blocking() const;

  // The resolving ioctls, each "" or "UFFDIO_X: <errno name>"; `wake` false passes the
  // DONTWAKE mode (the caller wakes with Wake).
  std::string Copy(void* dst, const void* src, std::size_t len, bool wake = true);
  std::string Zeropage(void* dst, std::size_t len, bool wake = true);
  std::string Continue(void* dst, std::size_t len, bool wake = true);
  std::string WriteProtect(void* addr, std::size_t len, bool protect, bool wake = true);
  std::string Move(void* dst, void* src, std::size_t len, bool wake = true);
  std::string Poison(void* dst, std::size_t len, bool wake = true);
  std::string Wake(void* addr, std::size_t len);

 private:
  int fd_ = -1;
  uint64_t features_ = 0;
};

// How faults are answered.
// - kSameCpu, kOtherCpu: a handler thread, pinned to the faulting thread's CPU or to another of
//   the run's CPUs, polls the descriptor, reads one uffd_msg and resolves it;
// - kSigbus: UFFD_FEATURE_SIGBUS: the fault raises SIGBUS in the faulting thread, whose signal
//   handler resolves it and returns (no thread, no wake-up): the access is then replayed and
//   finds the page mapped. A signal carries no uffd_msg: the resolver gets flags 0, and the
//   kind of fault is the one the range was registered for.
enum class HandlerMode { kSameCpu, kOtherCpu, kSigbus };
const char* HandlerModeName(HandlerMode mode);  // "same_cpu", "other_cpu", "sigbus"

// How a thread-mode handler waits for its next message (ignored in sigbus mode).
// - kPoll: poll() on the non-blocking descriptor and a stop eventfd, then read() one message;
//   Stop() writes the eventfd. What the suite's rows measure.
// - kBlockingRead: the minimal handler: read() blocking on a blocking descriptor
//   (Userfaultfd::SetBlocking(true)), nothing else, as the kernel's selftests do: one syscall per
//   message instead of two. Stop() sets a stop flag the loop checks before each read() and sends
//   the thread kHandlerStopSignal until it has left the loop (a signal that comes before the
//   thread enters read() is lost there; the next one gets it out), then joins it.
// Both loops share the checks of each message, the resolving and the stamps.
enum class HandlerLoop { kPoll, kBlockingRead };

// The signal that ends a kBlockingRead handler's read(): SIGRTMIN + 5, which nothing else in
// faultlab uses. Its action, a handler that does nothing, installed without SA_RESTART (so the
// read() returns EINTR instead of being restarted), is installed once per process, by the first
// kBlockingRead Start(), and left installed (a later Start() would only install it again). Start()
// refuses to run if another action for it is found. A function: SIGRTMIN is not a constant.
int HandlerStopSignal();

// Per fault, what the handler saw, in TSC ticks (tsc_clock.h): when it had the message (thread
// modes: read() returned; sigbus: the signal handler was entered) and when the resolving ioctl
// returned. The faulting thread stamps before its access and after it, so a round trip splits
// into fault -> handler has it, the ioctl, and ioctl done -> faulting thread resumes.
// Also the fault itself, for premise checks: the page it was in and the message's
// UFFD_PAGEFAULT_FLAG_* bits (0 in sigbus mode).
struct HandlerStamps {
  uint64_t got = 0;
  uint64_t resolved = 0;
  char* address = nullptr;
  uint64_t flags = 0;
};

// What a handler does with one fault: resolve it at `address` (the faulting address, rounded down
// to the range's page) given the message flags (UFFD_PAGEFAULT_FLAG_*). "" or why it failed;
// a failure stops the handler and is reported by Stop() (its first 255 bytes).
// In sigbus mode the resolver runs inside the SIGBUS handler, on the faulting thread. That signal
// is synchronous (the thread's own access, in code that holds no lock), so an ioctl there is
// safe, and so is what the Userfaultfd calls do on success: nothing allocates. A message longer
// than std::string keeps inline (15 characters) is allocated: safe here for the same reason, but
// ThreadSanitizer reports any allocation inside a signal handler, so Userfaultfd's own error
// messages, which are longer, draw such a report when an ioctl fails in sigbus mode.
using Resolver = std::function<std::string(char* address, uint64_t flags)>;

// A running handler for one descriptor and one registered range. Start() returns once the
// handler is ready (thread started and pinned; or the SIGBUS action installed). Stamps are
// recorded per fault in order, up to `max_faults` (later faults are still resolved and counted).
// Stop() (and the destructor) end the thread or restore the previous SIGBUS action; Stop()
// returns the first error the handler met, or "".
//
// A failure never leaves the faulting thread hanging: when the resolver fails (or a message is
// not a page fault in the range), the handler unregisters its whole range before it stops.
// Unregistering wakes every thread blocked on a fault in the range (thread modes), and the
// access, replayed (sigbus mode) or retried, then takes an ordinary fault: the faulting code
// runs to its end on memory the kernel filled as if uffd had never been there, and the error
// waits in Stop().
//
// One sigbus handler at a time per process: SIGBUS is a process-wide action. A SIGBUS outside
// the range (or after a failure) goes to the action that was installed before. In sigbus mode
// one thread at a time may fault in the range: the signal handler stamps without a lock.
class FaultHandler {
 public:
  FaultHandler() = default;
  FaultHandler(const FaultHandler&) = delete;
  FaultHandler& operator=(const FaultHandler&) = delete;
  ~FaultHandler();

  // cpu: where the handler thread runs (thread modes; < 0: not pinned); ignored for kSigbus.
  // loop: how the thread waits (thread modes); the descriptor must be non-blocking for kPoll and
  // blocking for kBlockingRead, else Start() says so.
  std::string Start(Userfaultfd& uffd, UffdRange range, HandlerMode mode, int cpu,
                    Resolver resolve, std::size_t max_faults,
                    HandlerLoop loop = HandlerLoop::kPoll);
  std::string Stop();
  // Faults handled so far (resolved or failed).
  std::size_t faults() const;
  // Stamps of faults [from, min(faults(), max_faults)), in order.
  std::vector<HandlerStamps> Stamps(std::size_t from = 0) const;
  // Waits until `count` faults were handled: true; false if the handler failed or stopped
  // first, or `timeout_s` passed. The faulting thread calls it after its accesses: the handler
  // stamps `resolved` after the wake-up that let the faulting thread go on.
  bool WaitForFaults(std::size_t count, double timeout_s = 10) const;

  // Opaque; named here only so the SIGBUS action in uffd_probe.cc can reach the running handler.
  struct State;

 private:
  State* state_ = nullptr;
};

// PAGEMAP_SCAN (ioctl on /proc/self/pagemap, Linux 6.7+) of [addr, addr + len) for the pages
// written since they were write-protected under UFFD_FEATURE_WP_ASYNC: category PAGE_IS_WRITTEN,
// with PM_SCAN_CHECK_WPASYNC (the range must be registered WP with WP_ASYNC, else EINVAL) and,
// with `reprotect`, PM_SCAN_WP_MATCHING (the written pages found are write-protected again, in the
// same walk). *written gets one [start, end) per run of written pages, in address order. "" or
// "PAGEMAP_SCAN: <errno name>".
struct AddressRange {
  char* start = nullptr;
  char* end = nullptr;
};
std::string PagemapScanWritten(void* addr, std::size_t len, bool reprotect,
                               std::vector<AddressRange>* written);

// The floor a thread handler could reach: an eventfd ping-pong between two threads pinned to
// `cpu_a` and `cpu_b` (the same CPU for the same_cpu floor), `rounds` round trips after a warm-up;
// per round trip in ns, sorted. Each side blocks in read() as a faulting thread and a polling
// handler do. Empty with *error set if a thread could not be pinned. With `totals`, the perf
// events `counter_names` are counted on the side that starts each round trip (on cpu_a, as the
// faulting thread is), over the timed round trips.
std::vector<double> EventfdPingPongNs(int cpu_a, int cpu_b, int rounds, std::string* error,
                                      const std::vector<std::string>& counter_names = {},
                                      CounterTotals* totals = nullptr);

}  // namespace faultlab
