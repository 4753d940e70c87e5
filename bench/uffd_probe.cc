// userfaultfd for the benchmarks (uffd_probe.h). Each function's contract is in the header.

#include "bench/uffd_probe.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench/harness.h"
#include "bench/kernel_features.h"
#include "bench/perf_counters.h"
#include "bench/tsc_clock.h"
#include "topology/hugetlb.h"


// PAGEMAP_SCAN, newer than the headers too: include/uapi/linux/fs.h (6.7+).
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WRITTEN (1 << 1)
struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

namespace faultlab {
namespace {

// "call: ENOMEM" for the errno the call just left.
std::string Failed(const char* call) { return absl::StrCat(call, ": ", ErrnoName(errno)); }

uint64_t Address(const void* p) { return reinterpret_cast<uint64_t>(p); }

// Pins the calling thread to `cpu` (none when cpu < 0). The handler's CPU is a number its caller
// chose (the faulting thread's, or the run's next), so this binds by number rather than through
// PinWorker's worker index; tests use it without a topology.
std::string PinThreadTo(int cpu) {
  if (cpu < 0) return {};
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    return absl::StrCat("sched_setaffinity to CPU ", cpu, ": ", ErrnoName(errno));
  }
  // sched_setaffinity migrates the caller before it returns.
  if (sched_getcpu() != cpu) {
    return absl::StrCat("pinned to CPU ", cpu, " but runs on ", sched_getcpu());
  }
  return {};
}

struct FeatureName {
  uint64_t bit;
  const char* name;
};
#define FAULTLAB_FEATURE(name) {name, #name}
// Every feature bit of include/uapi/linux/userfaultfd.h in 6.18.
constexpr FeatureName kFeatureNames[] = {
    FAULTLAB_FEATURE(UFFD_FEATURE_PAGEFAULT_FLAG_WP), FAULTLAB_FEATURE(UFFD_FEATURE_EVENT_FORK),
    FAULTLAB_FEATURE(UFFD_FEATURE_EVENT_REMAP),       FAULTLAB_FEATURE(UFFD_FEATURE_EVENT_REMOVE),
    FAULTLAB_FEATURE(UFFD_FEATURE_MISSING_HUGETLBFS), FAULTLAB_FEATURE(UFFD_FEATURE_MISSING_SHMEM),
    FAULTLAB_FEATURE(UFFD_FEATURE_EVENT_UNMAP),       FAULTLAB_FEATURE(UFFD_FEATURE_SIGBUS),
    FAULTLAB_FEATURE(UFFD_FEATURE_THREAD_ID),         FAULTLAB_FEATURE(UFFD_FEATURE_MINOR_HUGETLBFS),
    FAULTLAB_FEATURE(UFFD_FEATURE_MINOR_SHMEM),       FAULTLAB_FEATURE(UFFD_FEATURE_EXACT_ADDRESS),
    FAULTLAB_FEATURE(UFFD_FEATURE_WP_HUGETLBFS_SHMEM), FAULTLAB_FEATURE(UFFD_FEATURE_WP_UNPOPULATED),
    FAULTLAB_FEATURE(UFFD_FEATURE_POISON),            FAULTLAB_FEATURE(UFFD_FEATURE_WP_ASYNC),
    FAULTLAB_FEATURE(UFFD_FEATURE_MOVE),
};
#undef FAULTLAB_FEATURE

// The ioctls that write a count back: `done` is what the kernel mapped, or -errno.
std::string CheckDone(const char* call, int rc, int64_t done, std::size_t len) {
  if (rc != 0) return Failed(call);
  if (done != static_cast<int64_t>(len)) {
    return absl::StrCat(call, ": mapped ", done, " of ", len, " bytes");
  }
  return {};
}

}  // namespace

const char* UffdMemoryName(UffdMemory memory) {
  switch (memory) {
    case UffdMemory::kAnon4K: return "anon4k";
    case UffdMemory::kShmem: return "shmem";
    case UffdMemory::kHugetlb2M: return "hugetlb2m";
  }
  return "?";
}

std::size_t UffdPageSize(UffdMemory memory) {
  return memory == UffdMemory::kHugetlb2M ? kPage2M : kPage4K;
}

const char* HandlerModeName(HandlerMode mode) {
  switch (mode) {
    case HandlerMode::kSameCpu: return "same_cpu";
    case HandlerMode::kOtherCpu: return "other_cpu";
    case HandlerMode::kSigbus: return "sigbus";
  }
  return "?";
}

// --- UffdRegion ---

UffdRegion::~UffdRegion() {
  if (base_) munmap(base_, bytes_);
  if (alias_) munmap(alias_, bytes_);
  if (fd_ >= 0) close(fd_);
}

std::string UffdRegion::Map(UffdMemory memory, std::size_t bytes) {
  if (base_) return "UffdRegion::Map: already mapped";
  memory_ = memory;
  if (bytes == 0 || bytes % page() != 0) {
    return absl::StrCat("UffdRegion::Map: ", bytes, " bytes is not a multiple of the ",
                        UffdMemoryName(memory), " page (", page(), ")");
  }
  // Anonymous memory has no file to alias; the file types map the memfd twice.
  auto map_file = [&](char** out) -> std::string {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) {
      const int error = errno;
      std::string why = Failed("mmap of the memfd");
      // An empty pool fails a shared hugetlb mapping at mmap time (the pages are reserved then).
      if (memory == UffdMemory::kHugetlb2M && error == ENOMEM) {
        if (auto pool = WhyNoHugetlbPages(kPage2M, static_cast<long>(bytes / kPage2M))) {
          why += " (" + *pool + ")";
        }
      }
      return why;
    }
    *out = static_cast<char*>(p);
    return {};
  };
  // shmem_enabled (or a shmem mTHP size) could map 2 MiB on one touch; EINVAL: a kernel without
  // THP has no huge pages to avoid.
  auto no_huge_pages = [&](char* p) -> std::string {
    if (madvise(p, bytes, MADV_NOHUGEPAGE) != 0 && errno != EINVAL) {
      return Failed("madvise(MADV_NOHUGEPAGE)");
    }
    return {};
  };
  switch (memory) {
    case UffdMemory::kAnon4K: {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return Failed("mmap");
      base_ = static_cast<char*>(p);
      bytes_ = bytes;
      return no_huge_pages(base_);
    }
    case UffdMemory::kShmem:
    case UffdMemory::kHugetlb2M: {
      const unsigned flags = memory == UffdMemory::kShmem
                                 ? MFD_CLOEXEC
                                 : MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB;
      fd_ = memfd_create("faultlab-uffd", flags);
      if (fd_ < 0) return Failed("memfd_create");
      if (ftruncate(fd_, static_cast<off_t>(bytes)) != 0) return Failed("ftruncate of the memfd");
      if (std::string e = map_file(&base_); !e.empty()) return e;
      bytes_ = bytes;
      if (std::string e = map_file(&alias_); !e.empty()) return e;
      if (memory == UffdMemory::kShmem) {
        if (std::string e = no_huge_pages(base_); !e.empty()) return e;
        return no_huge_pages(alias_);
      }
      return {};
    }
  }
  return "UffdRegion::Map: unknown memory type";
}

std::string UffdRegion::FillCache(char value) {
  if (!alias_) return absl::StrCat("FillCache: ", UffdMemoryName(memory_), " has no page cache");
  std::memset(alias_, value, bytes_);
  return {};
}

std::string UffdRegion::Zap() {
  if (!base_) return "Zap: nothing mapped";
  if (madvise(base_, bytes_, MADV_DONTNEED) != 0) return Failed("madvise(MADV_DONTNEED)");
  return {};
}

std::string UffdRegion::Empty() {
  if (std::string e = Zap(); !e.empty()) return e;
  if (fd_ >= 0 &&
      fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(bytes_)) != 0) {
    return Failed("fallocate(PUNCH_HOLE)");
  }
  return {};
}

// --- Userfaultfd ---

std::string UffdFeatureNames(uint64_t features) {
  std::string names;
  for (int bit = 0; bit < 64; ++bit) {
    const uint64_t mask = uint64_t{1} << bit;
    if (!(features & mask)) continue;
    const auto* known = std::find_if(std::begin(kFeatureNames), std::end(kFeatureNames),
                                     [&](const FeatureName& f) { return f.bit == mask; });
    absl::StrAppend(&names, names.empty() ? "" : ", ",
                    known != std::end(kFeatureNames) ? known->name
                                                     : absl::StrCat("feature bit ", bit));
  }
  return names;
}

Userfaultfd::~Userfaultfd() {
  if (fd_ >= 0) close(fd_);
}

std::string Userfaultfd::Open(uint64_t features) {
  if (fd_ >= 0) return "Userfaultfd::Open: already open";
  // UFFDIO_API refuses a feature it lacks with a bare EINVAL, and a descriptor takes one
  // handshake only: ask a probe descriptor what the kernel offers first, so the error can say
  // which feature is missing.
  const UffdApi api = ProbeUffdApi();
  if (!api.error.empty()) return api.error;
  if (const uint64_t missing = features & ~static_cast<uint64_t>(api.features)) {
    return absl::StrCat(UffdFeatureNames(missing), " not supported by this kernel (UFFDIO_API offers 0x",
                        absl::Hex(api.features), ")");
  }
  const UffdOpen opened = OpenUserfaultfd();
  if (opened.fd < 0) return opened.error;
  uffdio_api handshake{};
  handshake.api = UFFD_API;
  handshake.features = features;
  if (ioctl(opened.fd, UFFDIO_API, &handshake) != 0) {
    std::string why = Failed("UFFDIO_API");
    close(opened.fd);
    return why;
  }
  fd_ = opened.fd;
  // The answer lists every feature the kernel has; the context enables only those asked for.
  features_ = features;
  return {};
}

std::string Userfaultfd::SetBlocking(bool blocking) {
  const int flags = fcntl(fd_, F_GETFL);
  if (flags < 0) return Failed("fcntl(F_GETFL)");
  const int wanted = blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK;
  if (wanted != flags && fcntl(fd_, F_SETFL, wanted) != 0) return Failed("fcntl(F_SETFL)");
  return {};
}

bool Userfaultfd::blocking() const {
  const int flags = fcntl(fd_, F_GETFL);
  return flags >= 0 && !(flags & O_NONBLOCK);
}

std::string Userfaultfd::Register(void* addr, std::size_t len, uint64_t modes, uint64_t* ioctls) {
  uffdio_register reg{};
  reg.range.start = Address(addr);
  reg.range.len = len;
  reg.mode = modes;
  if (ioctl(fd_, UFFDIO_REGISTER, &reg) != 0) return Failed("UFFDIO_REGISTER");
  if (ioctls) *ioctls = reg.ioctls;
  return {};
}

std::string Userfaultfd::Unregister(void* addr, std::size_t len) {
  uffdio_range range{Address(addr), len};
  if (ioctl(fd_, UFFDIO_UNREGISTER, &range) != 0) return Failed("UFFDIO_UNREGISTER");
  return {};
}

std::string Userfaultfd::Copy(void* dst, const void* src, std::size_t len, bool wake) {
  uffdio_copy copy{};
  copy.dst = Address(dst);
  copy.src = Address(src);
  copy.len = len;
  copy.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE;
  const int rc = ioctl(fd_, UFFDIO_COPY, &copy);
  return CheckDone("UFFDIO_COPY", rc, copy.copy, len);
}

std::string Userfaultfd::Zeropage(void* dst, std::size_t len, bool wake) {
  uffdio_zeropage zero{};
  zero.range = {Address(dst), len};
  zero.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
  const int rc = ioctl(fd_, UFFDIO_ZEROPAGE, &zero);
  return CheckDone("UFFDIO_ZEROPAGE", rc, zero.zeropage, len);
}

std::string Userfaultfd::Continue(void* dst, std::size_t len, bool wake) {
  uffdio_continue cont{};
  cont.range = {Address(dst), len};
  cont.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE;
  const int rc = ioctl(fd_, UFFDIO_CONTINUE, &cont);
  return CheckDone("UFFDIO_CONTINUE", rc, cont.mapped, len);
}

std::string Userfaultfd::WriteProtect(void* addr, std::size_t len, bool protect, bool wake) {
  uffdio_writeprotect wp{};
  wp.range = {Address(addr), len};
  wp.mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) |
            (wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
  if (ioctl(fd_, UFFDIO_WRITEPROTECT, &wp) != 0) return Failed("UFFDIO_WRITEPROTECT");
  return {};
}

std::string Userfaultfd::Move(void* dst, void* src, std::size_t len, bool wake) {
  uffdio_move move{};
  move.dst = Address(dst);
  move.src = Address(src);
  move.len = len;
  move.mode = wake ? 0 : UFFDIO_MOVE_MODE_DONTWAKE;
  const int rc = ioctl(fd_, UFFDIO_MOVE, &move);
  return CheckDone("UFFDIO_MOVE", rc, move.move, len);
}

std::string Userfaultfd::Poison(void* dst, std::size_t len, bool wake) {
  uffdio_poison poison{};
  poison.range = {Address(dst), len};
  poison.mode = wake ? 0 : UFFDIO_POISON_MODE_DONTWAKE;
  const int rc = ioctl(fd_, UFFDIO_POISON, &poison);
  return CheckDone("UFFDIO_POISON", rc, poison.updated, len);
}

std::string Userfaultfd::Wake(void* addr, std::size_t len) {
  uffdio_range range{Address(addr), len};
  if (ioctl(fd_, UFFDIO_WAKE, &range) != 0) return Failed("UFFDIO_WAKE");
  return {};
}

// --- FaultHandler ---

struct FaultHandler::State {
  Userfaultfd* uffd = nullptr;
  UffdRange range;
  HandlerMode mode = HandlerMode::kSameCpu;
  Resolver resolve;
  // Sized once at Start: the handler writes entry i before publishing count i+1 (release), so a
  // reader that loaded count (acquire) may read entries below it while the handler goes on.
  std::vector<HandlerStamps> stamps;
  std::atomic<std::size_t> count{0};
  std::atomic<bool> failed{false};
  std::atomic<bool> stopped{false};
  // The first failure, written before `failed` is set and read once the handler is stopped. A
  // fixed buffer: in sigbus mode it is written inside the signal handler, which must not allocate.
  char error[256] = {};
  // Thread modes.
  HandlerLoop loop = HandlerLoop::kPoll;
  std::thread thread;
  int stop_fd = -1;                // kPoll: written by Stop()
  std::atomic<bool> stop{false};   // kBlockingRead: set by Stop(), checked before each read()
  // Sigbus mode: the action this handler replaced.
  struct sigaction previous {};

  bool InRange(const char* address) const {
    return address >= range.base && address < range.base + range.bytes;
  }

  // Resolves one fault at `address` seen at TSC `got`. On failure the range is unregistered, so
  // the faulting thread (blocked, or about to replay its access) takes an ordinary fault instead.
  void Handle(char* address, uint64_t flags, uint64_t got) {
    char* page = range.base + ((address - range.base) & ~(range.page - 1));
    std::string why = resolve(page, flags);
    const uint64_t resolved = TscNow();
    const std::size_t i = count.load(std::memory_order_relaxed);
    if (i < stamps.size()) stamps[i] = {got, resolved, page, flags};
    if (!why.empty()) Fail(why);
    count.store(i + 1, std::memory_order_release);
  }

  void Fail(const std::string& why) {
    if (failed.load(std::memory_order_relaxed)) return;
    const std::size_t n = std::min(why.size(), sizeof(error) - 1);
    std::memcpy(error, why.data(), n);
    error[n] = '\0';
    // Wakes every thread blocked on a fault in the range; their accesses then fault ordinarily.
    // The ioctl itself, not Userfaultfd::Unregister, whose error message would allocate.
    uffdio_range whole{Address(range.base), range.bytes};
    if (ioctl(uffd->fd(), UFFDIO_UNREGISTER, &whole) != 0) {
      const char* also = "; and UFFDIO_UNREGISTER of the range failed";
      std::strncat(error, also, sizeof(error) - std::strlen(error) - 1);
    }
    failed.store(true, std::memory_order_release);
  }

  // What both thread loops do with the answer of one read() of the descriptor: false when the
  // loop must end (the handler failed). Nothing to do after EAGAIN (a non-blocking read found the
  // queue empty) or EINTR (a signal: the loop checks whether it must stop).
  bool Take(ssize_t n, const uffd_msg& msg, uint64_t got) {
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    if (n != static_cast<ssize_t>(sizeof(msg))) {
      Fail(n < 0 ? Failed("read of the userfaultfd")
                 : absl::StrCat("read of the userfaultfd returned ", n, " bytes"));
      return false;
    }
    if (msg.event != UFFD_EVENT_PAGEFAULT) {
      Fail(absl::StrCat("unexpected uffd event 0x", absl::Hex(msg.event)));
      return false;
    }
    char* address = reinterpret_cast<char*>(msg.arg.pagefault.address);
    if (!InRange(address)) {
      Fail(absl::StrCat("a fault at 0x", absl::Hex(msg.arg.pagefault.address),
                        ", outside the handler's range"));
      return false;
    }
    Handle(address, msg.arg.pagefault.flags, got);
    return !failed.load(std::memory_order_relaxed);
  }

  // HandlerLoop::kPoll: poll the descriptor and the stop eventfd, read one message at a time.
  void RunPoll() {
    pollfd fds[2] = {{uffd->fd(), POLLIN, 0}, {stop_fd, POLLIN, 0}};
    while (!failed.load(std::memory_order_relaxed)) {
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        Fail(Failed("poll of the userfaultfd"));
        break;
      }
      if (fds[1].revents) break;
      if (fds[0].revents & (POLLERR | POLLHUP)) {
        Fail("the userfaultfd reported POLLERR/POLLHUP");
        break;
      }
      uffd_msg msg;
      const ssize_t n = read(uffd->fd(), &msg, sizeof(msg));
      if (!Take(n, msg, TscNow())) break;
    }
  }

  // HandlerLoop::kBlockingRead: read() on the blocking descriptor, nothing else. Stop() sets
  // `stop` and interrupts the read() with HandlerStopSignal() (EINTR).
  void RunBlockingRead() {
    while (!stop.load(std::memory_order_acquire)) {
      uffd_msg msg;
      const ssize_t n = read(uffd->fd(), &msg, sizeof(msg));
      if (!Take(n, msg, TscNow())) break;
    }
  }
};

namespace {

// The sigbus handler's state: SIGBUS is process-wide, so one handler at a time owns it.
std::atomic<FaultHandler::State*> g_sigbus_owner{nullptr};

// Hands a signal that is not ours to the action installed before: its handler, or the default
// action (reinstalled, so the access that faulted raises it again when this returns).
void ChainSigbus(const struct sigaction& previous, int sig, siginfo_t* info, void* context) {
  if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
    previous.sa_sigaction(sig, info, context);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);
}

// The SIGBUS action of a sigbus-mode handler. The fault it answers is synchronous, raised by the
// faulting thread's own access in code that holds no lock, so the resolver (an ioctl) may run
// here. One faulting thread at a time: the stamps are written without a lock.
void OnSigbus(int sig, siginfo_t* info, void* context) {
  const uint64_t got = TscNow();
  const int saved_errno = errno;
  FaultHandler::State* state = g_sigbus_owner.load(std::memory_order_acquire);
  char* address = static_cast<char*>(info->si_addr);
  if (state && info->si_code == BUS_ADRERR && state->InRange(address) &&
      !state->failed.load(std::memory_order_relaxed)) {
    state->Handle(address, 0, got);
  } else if (state) {
    ChainSigbus(state->previous, sig, info, context);
  } else {
    signal(SIGBUS, SIG_DFL);
  }
  errno = saved_errno;
}

// The action of HandlerStopSignal(): nothing. Being a handler (not SIG_IGN, not SIG_DFL, which
// would kill the process) is enough for the kernel to end a blocked read() with EINTR.
void OnHandlerStopSignal(int) {}

// Installs that action once per process: "" or why not. Without SA_RESTART, so the read() is
// ended rather than restarted. Never uninstalled: the signal is faultlab's alone, and removing
// the action while a Stop() might still send the signal would kill the process.
std::string InstallHandlerStopSignal() {
  static const std::string error = [] {
    const int sig = HandlerStopSignal();
    struct sigaction current {};
    if (sigaction(sig, nullptr, &current) != 0) return Failed("sigaction(SIGRTMIN+5)");
    if ((current.sa_flags & SA_SIGINFO) || current.sa_handler != SIG_DFL) {
      return std::string("SIGRTMIN+5, which stops a blocking-read handler, already has an action");
    }
    struct sigaction action {};
    action.sa_handler = OnHandlerStopSignal;
    action.sa_flags = 0;  // no SA_RESTART
    sigemptyset(&action.sa_mask);
    if (sigaction(sig, &action, nullptr) != 0) return Failed("sigaction(SIGRTMIN+5)");
    return std::string();
  }();
  return error;
}

}  // namespace

int HandlerStopSignal() { return SIGRTMIN + 5; }

FaultHandler::~FaultHandler() { Stop(); }

std::string FaultHandler::Start(Userfaultfd& uffd, UffdRange range, HandlerMode mode, int cpu,
                                Resolver resolve, std::size_t max_faults, HandlerLoop loop) {
  if (state_) return "FaultHandler::Start: already started";
  if (uffd.fd() < 0) return "FaultHandler::Start: the userfaultfd is not open";
  if (range.page == 0 || (range.page & (range.page - 1)) != 0) {
    return absl::StrCat("FaultHandler::Start: page size ", range.page, " is not a power of two");
  }
  if (!resolve) return "FaultHandler::Start: no resolver";
  auto* state = new State();
  state->uffd = &uffd;
  state->range = range;
  state->mode = mode;
  state->resolve = std::move(resolve);
  state->stamps.resize(max_faults);

  if (mode == HandlerMode::kSigbus) {
    if (!(uffd.features() & UFFD_FEATURE_SIGBUS)) {
      delete state;
      return "sigbus mode needs a userfaultfd opened with UFFD_FEATURE_SIGBUS";
    }
    FaultHandler::State* expected = nullptr;
    if (!g_sigbus_owner.compare_exchange_strong(expected, state)) {
      delete state;
      return "another sigbus handler is running in this process";
    }
    struct sigaction action {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &state->previous) != 0) {
      const std::string why = Failed("sigaction(SIGBUS)");
      g_sigbus_owner.store(nullptr);
      delete state;
      return why;
    }
    state_ = state;
    return {};
  }

  state->loop = loop;
  const bool blocking_read = loop == HandlerLoop::kBlockingRead;
  if (uffd.blocking() != blocking_read) {
    delete state;
    return blocking_read ? "the blocking-read handler needs a blocking userfaultfd"
                         : "the polling handler needs a non-blocking userfaultfd";
  }
  if (blocking_read) {
    if (std::string why = InstallHandlerStopSignal(); !why.empty()) {
      delete state;
      return why;
    }
  } else {
    state->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (state->stop_fd < 0) {
      const std::string why = Failed("eventfd");
      delete state;
      return why;
    }
  }
  // The thread says whether it could pin before it starts waiting for messages.
  std::mutex mutex;
  std::condition_variable ready;
  bool started = false;
  std::string pin_error;
  state->thread = std::thread([&mutex, &ready, &started, &pin_error, state, cpu] {
    const std::string why = PinThreadTo(cpu);
    {
      // Notified under the lock: Start's locals are gone once it sees `started`.
      std::lock_guard<std::mutex> lock(mutex);
      pin_error = why;
      started = true;
      ready.notify_one();
    }
    if (why.empty()) {
      if (state->loop == HandlerLoop::kBlockingRead) {
        state->RunBlockingRead();
      } else {
        state->RunPoll();
      }
    }
    state->stopped.store(true, std::memory_order_release);
  });
  {
    std::unique_lock<std::mutex> lock(mutex);
    ready.wait(lock, [&] { return started; });
  }
  state_ = state;
  if (!pin_error.empty()) {
    Stop();
    return pin_error;
  }
  return {};
}

std::string FaultHandler::Stop() {
  if (!state_) return {};
  State* state = state_;
  state_ = nullptr;
  if (state->mode == HandlerMode::kSigbus) {
    sigaction(SIGBUS, &state->previous, nullptr);
    g_sigbus_owner.store(nullptr, std::memory_order_release);
  } else if (state->loop == HandlerLoop::kBlockingRead) {
    state->stop.store(true, std::memory_order_release);
    // The thread checks `stop` before each read(), but a signal that comes between that check and
    // the read() is spent before the read() blocks: send it again until the thread is out of its
    // loop. Its thread still exists until joined, so the signal has a target until then.
    while (!state->stopped.load(std::memory_order_acquire)) {
      const int rc = pthread_kill(state->thread.native_handle(), HandlerStopSignal());
      if (rc != 0 && rc != ESRCH) std::abort();  // EINVAL: cannot happen with a valid signal
      for (int i = 0; i < 100 && !state->stopped.load(std::memory_order_acquire); ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(10));
      }
    }
    state->thread.join();
  } else {
    const uint64_t one = 1;
    if (write(state->stop_fd, &one, sizeof(one)) != sizeof(one)) {
      // Cannot happen with a fresh eventfd; the join below would then wait for the poll forever.
      std::abort();
    }
    state->thread.join();
    close(state->stop_fd);
  }
  std::string error = state->error;
  delete state;
  return error;
}

std::size_t FaultHandler::faults() const {
  return state_ ? state_->count.load(std::memory_order_acquire) : 0;
}

std::vector<HandlerStamps> FaultHandler::Stamps(std::size_t from) const {
  if (!state_) return {};
  const std::size_t end = std::min(faults(), state_->stamps.size());
  if (from >= end) return {};
  return std::vector<HandlerStamps>(state_->stamps.begin() + static_cast<std::ptrdiff_t>(from),
                                    state_->stamps.begin() + static_cast<std::ptrdiff_t>(end));
}

bool FaultHandler::WaitForFaults(std::size_t count, double timeout_s) const {
  if (!state_) return false;
  const double deadline = MonotonicNs() + timeout_s * 1e9;
  // Yielding, not spinning: on the same CPU the handler needs this CPU to finish its stamp.
  while (faults() < count) {
    if (state_->failed.load(std::memory_order_acquire) ||
        state_->stopped.load(std::memory_order_acquire) || MonotonicNs() > deadline) {
      return false;
    }
    sched_yield();
  }
  return true;
}

// --- PAGEMAP_SCAN ---

std::string PagemapScanWritten(void* addr, std::size_t len, bool reprotect,
                               std::vector<AddressRange>* written) {
  written->clear();
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Failed("open(/proc/self/pagemap)");
  // At most one run per two pages (written ones apart); one more so a full vector is never
  // ambiguous.
  std::vector<page_region> vec(len / kPage4K / 2 + 2);
  pm_scan_arg arg{};
  arg.size = sizeof(arg);
  arg.flags = PM_SCAN_CHECK_WPASYNC | (reprotect ? PM_SCAN_WP_MATCHING : 0);
  arg.start = Address(addr);
  arg.end = Address(addr) + len;
  arg.vec = Address(vec.data());
  arg.vec_len = vec.size();
  arg.category_mask = PAGE_IS_WRITTEN;
  arg.return_mask = PAGE_IS_WRITTEN;
  const int regions = ioctl(fd, PAGEMAP_SCAN, &arg);
  const int error = errno;
  close(fd);
  if (regions < 0) {
    errno = error;
    return Failed("PAGEMAP_SCAN");
  }
  if (arg.walk_end != arg.end) {
    return absl::StrCat("PAGEMAP_SCAN: stopped at 0x", absl::Hex(arg.walk_end), " of 0x",
                        absl::Hex(arg.end));
  }
  for (int i = 0; i < regions; ++i) {
    written->push_back(
        {reinterpret_cast<char*>(vec[i].start), reinterpret_cast<char*>(vec[i].end)});
  }
  return {};
}

// --- The floor ---

std::vector<double> EventfdPingPongNs(int cpu_a, int cpu_b, int rounds, std::string* error,
                                      const std::vector<std::string>& counter_names,
                                      CounterTotals* totals) {
  error->clear();
  // Blocking eventfds: each side sleeps in read() until the other writes. A count above 1 is the
  // stop signal for the echoing side.
  const int to_a = eventfd(0, EFD_CLOEXEC);
  const int to_b = eventfd(0, EFD_CLOEXEC);
  if (to_a < 0 || to_b < 0) {
    *error = Failed("eventfd");
    if (to_a >= 0) close(to_a);
    if (to_b >= 0) close(to_b);
    return {};
  }
  constexpr uint64_t kStop = 1ull << 32;
  constexpr int kWarmup = 100;
  std::atomic<int> b_state{0};  // 1: pinned and echoing; -1: could not pin
  std::string b_error;
  std::thread echo([&] {
    b_error = PinThreadTo(cpu_b);
    b_state.store(b_error.empty() ? 1 : -1, std::memory_order_release);
    if (!b_error.empty()) return;
    for (;;) {
      uint64_t value = 0;
      if (read(to_b, &value, sizeof(value)) != sizeof(value)) {
        if (errno == EINTR) continue;
        return;
      }
      if (value >= kStop) return;
      const uint64_t one = 1;
      if (write(to_a, &one, sizeof(one)) != sizeof(one)) return;
    }
  });
  std::vector<double> ns;
  std::string a_error;
  std::thread ping([&] {
    a_error = PinThreadTo(cpu_a);
    while (b_state.load(std::memory_order_acquire) == 0) sched_yield();
    if (!a_error.empty() || b_state.load(std::memory_order_acquire) < 0) return;
    const double ns_per_tick = TscNsPerTick();
    ns.reserve(static_cast<std::size_t>(rounds));
    std::optional<CounterGroup> group;
    std::vector<double> counts_before;
    if (totals) {
      group.emplace(counter_names, /*inherit=*/false);
      totals->names = group->names();
    }
    for (int i = 0; i < kWarmup + rounds; ++i) {
      if (group && i == kWarmup) counts_before = group->Read();
      const uint64_t one = 1;
      uint64_t value = 0;
      const uint64_t start = TscNow();
      if (write(to_b, &one, sizeof(one)) != sizeof(one) ||
          read(to_a, &value, sizeof(value)) != sizeof(value)) {
        a_error = Failed("eventfd ping-pong");
        return;
      }
      const uint64_t end = TscNow();
      if (i >= kWarmup) ns.push_back(static_cast<double>(end - start) * ns_per_tick);
    }
    if (group) totals->Add(counts_before, group->Read());
  });
  ping.join();
  const uint64_t stop = kStop;
  if (b_state.load() > 0 && write(to_b, &stop, sizeof(stop)) != sizeof(stop)) std::abort();
  echo.join();
  close(to_a);
  close(to_b);
  if (!a_error.empty() || !b_error.empty()) {
    *error = !a_error.empty() ? a_error : b_error;
    return {};
  }
  std::sort(ns.begin(), ns.end());
  return ns;
}

}  // namespace faultlab
