// The guard suite's probes (guard_probe.h). Each function's contract is in the header.

#include "bench/guard_probe.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench/fork_probe.h"
#include "bench/mm_probe.h"
#include "bench/tsc_clock.h"

namespace faultlab {
namespace {

// The access ReadFaults is making on this thread, for the length of that access; null otherwise.
struct CatchTarget {
  sigjmp_buf env;
  SegvEvent event;
};
thread_local CatchTarget* volatile t_target __attribute__((tls_model("initial-exec"))) = nullptr;

// Whether the jump back restores the signal mask. SA_NODEFER keeps SIGSEGV unblocked in the
// handler, so the jump need not (and the round trip has no rt_sigprocmask in it). ThreadSanitizer
// runs every handler from a wrapper of its own that blocks all signals, whatever SA_NODEFER says:
// there the mask must be restored, or the next SIGSEGV, blocked, kills the process. (Figures of a
// TSan build are not timings anyway.)
#if defined(__SANITIZE_THREAD__)
constexpr int kSaveMask = 1;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int kSaveMask = 1;
#else
constexpr int kSaveMask = 0;
#endif
#else
constexpr int kSaveMask = 0;
#endif

// One catcher per signal: SIGSEGV's and SIGBUS's each hold their action apart.
struct CatcherSlot {
  std::atomic<bool> alive{false};
  struct sigaction previous;  // the action before the live catcher's, put back when it goes
};
CatcherSlot g_slots[2];
CatcherSlot* SlotOf(int signal) {
  return signal == SIGSEGV ? &g_slots[0] : signal == SIGBUS ? &g_slots[1] : nullptr;
}

void OnSegv(int signal, siginfo_t* info, void*) {
  CatchTarget* target = t_target;
  if (target != nullptr) {
    t_target = nullptr;
    target->event.addr = info->si_addr;
    target->event.code = info->si_code;
    siglongjmp(target->env, 1);
  }
  // Not an access ReadFaults made: another thread's, or a bug. The previous action deals with it:
  // put it back and return, and the access faults again and goes there (a signal someone sent
  // would not come again: raise it).
  sigaction(signal, &SlotOf(signal)->previous, nullptr);
  if (info->si_code <= 0) raise(signal);
}

bool SamePage(const void* a, const void* b) {
  return reinterpret_cast<uintptr_t>(a) / kPage4K == reinterpret_cast<uintptr_t>(b) / kPage4K;
}

std::string PageName(const GuardLayout& layout, char* base, std::size_t i) {
  return "guard page " + std::to_string(i) + " (" +
         Hex(reinterpret_cast<uintptr_t>(layout.Page(base, i))) + ")";
}

// Counts /proc/self/maps lines whose range overlaps [start, end).
int CountMapsOverlapping(uintptr_t start, uintptr_t end) {
  std::ifstream maps("/proc/self/maps");
  if (!maps) return -1;
  int count = 0;
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long from = 0, to = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &from, &to) != 2) continue;
    if (from < end && to > start) ++count;
  }
  return count;
}

// The premise checks both after install and after remove: the pagemap of the region, its VMAs,
// and whether its first guard page faults.
struct RegionState {
  std::vector<uint64_t> pagemap;
  int vmas = -1;
};
std::string ReadState(const GuardLayout& layout, char* base, RegionState* state) {
  state->pagemap = ReadPagemap(base, layout.RegionBytes());
  if (state->pagemap.empty()) return "cannot read /proc/self/pagemap";
  state->vmas = CountVmas(base, layout.RegionBytes());
  if (state->vmas < 0) return "cannot read /proc/self/maps";
  return {};
}

}  // namespace

const char* InstallCallName(GuardMethod method) {
  return method == GuardMethod::kMarker ? "madvise(MADV_GUARD_INSTALL)" : "mprotect(PROT_NONE)";
}
const char* RemoveCallName(GuardMethod method) {
  return method == GuardMethod::kMarker ? "madvise(MADV_GUARD_REMOVE)"
                                        : "mprotect(PROT_READ|PROT_WRITE)";
}
const char* MethodName(GuardMethod method) {
  return method == GuardMethod::kMarker ? "madv_guard" : "mprotect";
}

int CountVmas(const void* addr, std::size_t len) {
  const auto start = reinterpret_cast<uintptr_t>(addr);
  return CountMapsOverlapping(start, start + len);
}

int CountAllVmas() { return CountMapsOverlapping(0, UINTPTR_MAX); }

long MaxMapCount() {
  std::ifstream in("/proc/sys/vm/max_map_count");
  long value = -1;
  if (!(in >> value)) return -1;
  return value;
}

std::string WhyTooManyVmas(std::size_t pages, long limit, long mapped, long headroom) {
  if (limit < 0 || mapped < 0) return "cannot read /proc/sys/vm/max_map_count or /proc/self/maps";
  const long more = 2 * static_cast<long>(pages);
  if (mapped + more + headroom <= limit) return {};
  return "vm.max_map_count is " + std::to_string(limit) + " and this process has " +
         std::to_string(mapped) + " VMAs: mprotect of " + std::to_string(pages) +
         " spread guard pages would add " + std::to_string(more) +
         " (faultlab does not raise the limit)";
}

std::string SegvCodeName(int code) {
  switch (code) {
    case SEGV_MAPERR: return "SEGV_MAPERR";
    case SEGV_ACCERR: return "SEGV_ACCERR";
#ifdef SEGV_PKUERR
    case SEGV_PKUERR: return "SEGV_PKUERR";
#endif
    default: return "si_code " + std::to_string(code);
  }
}

std::string BusCodeName(int code) {
  switch (code) {
    case BUS_ADRALN: return "BUS_ADRALN";
    case BUS_ADRERR: return "BUS_ADRERR";
    case BUS_OBJERR: return "BUS_OBJERR";
    case BUS_MCEERR_AR: return "BUS_MCEERR_AR";
    case BUS_MCEERR_AO: return "BUS_MCEERR_AO";
    default: return "si_code " + std::to_string(code);
  }
}

SegvCatcher::SegvCatcher(int signal) : signal_(signal) {
  const char* name = signal == SIGBUS ? "SIGBUS" : "SIGSEGV";
  CatcherSlot* slot = SlotOf(signal);
  if (slot == nullptr) {
    error_ = "SegvCatcher catches SIGSEGV or SIGBUS, not signal " + std::to_string(signal);
    return;
  }
  if (slot->alive.exchange(true)) {
    error_ = std::string("another SegvCatcher holds the ") + name + " action";
    return;
  }
  struct sigaction action = {};
  action.sa_sigaction = OnSegv;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  if (sigaction(signal, &action, &slot->previous) != 0) {
    error_ = Errno((std::string("sigaction(") + name + ")").c_str());
    slot->alive.store(false);
    return;
  }
  installed_ = true;
}

SegvCatcher::~SegvCatcher() {
  if (!installed_) return;
  CatcherSlot* slot = SlotOf(signal_);
  sigaction(signal_, &slot->previous, nullptr);
  slot->alive.store(false);
}

// Not instrumented by sanitizers: the read must be the one instruction that faults, and their
// checks around it would add to the stamps. noinline: sigsetjmp's frame must be this one.
__attribute__((noinline, no_sanitize("address", "thread", "undefined"))) bool
SegvCatcher::ReadFaults(const void* addr, SegvEvent* event, uint64_t* ticks) {
  CatchTarget target;
  volatile uint64_t start = 0;  // volatile: read again after the jump back
  if (sigsetjmp(target.env, kSaveMask) == 0) {
    t_target = &target;
    start = TscNow();
    (void)*static_cast<const volatile char*>(addr);
    asm volatile("" ::: "memory");
    const uint64_t end = TscNow();
    t_target = nullptr;
    if (ticks) *ticks = end - start;
    return false;
  }
  // Back from the handler; the trap and the jump serialise, so the stamp follows them.
  const uint64_t end = TscNow();
  if (ticks) *ticks = end - start;
  *event = target.event;
  return true;
}

GuardCheck CheckGuarded(GuardMethod method, const GuardLayout& layout, char* base,
                        SegvCatcher& catcher) {
  GuardCheck check;
  RegionState state;
  if (check.error = ReadState(layout, base, &state); !check.error.empty()) return check;
  check.vmas = state.vmas;
  std::size_t guards_present = 0;
  for (std::size_t i = 0; i < layout.pages; ++i) {
    const uint64_t entry = state.pagemap[(layout.Page(base, i) - base) / kPage4K];
    guards_present += PagemapPresent(entry);
    check.pagemap_guard += PagemapGuardRegion(entry);
  }
  const std::size_t others_present = CountPresent(state.pagemap) - guards_present;
  const std::size_t others = state.pagemap.size() - layout.pages;
  if (others_present != others) {
    check.error = "only " + std::to_string(others_present) + " of the " + std::to_string(others) +
                  " pages around the guard pages are present after " + InstallCallName(method);
    return check;
  }
  // A marker replaces the page; mprotect leaves it mapped, PROT_NONE.
  const std::size_t want_present = method == GuardMethod::kMarker ? 0 : layout.pages;
  if (guards_present != want_present) {
    check.error = std::string(InstallCallName(method)) + " left " +
                  std::to_string(guards_present) + " of " + std::to_string(layout.pages) +
                  " guard pages present in pagemap, expected " + std::to_string(want_present);
    return check;
  }
  if (state.vmas != layout.ExpectedVmas(method)) {
    check.error = "the region spans " + std::to_string(state.vmas) + " VMAs after " +
                  InstallCallName(method) + " of " + std::to_string(layout.pages) +
                  " guard pages, expected " + std::to_string(layout.ExpectedVmas(method));
    return check;
  }
  char* first = layout.Page(base, 0);
  if (!catcher.ReadFaults(first, &check.fault)) {
    check.error = "a read of " + PageName(layout, base, 0) + " did not fault after " +
                  InstallCallName(method);
    return check;
  }
  if (!SamePage(check.fault.addr, first)) {
    check.error = "a read of " + PageName(layout, base, 0) + " raised SIGSEGV at " +
                  Hex(reinterpret_cast<uintptr_t>(check.fault.addr)) +
                  ", not on the guard page";
    return check;
  }
  if (method == GuardMethod::kMprotect && check.fault.code != SEGV_ACCERR) {
    check.error = "a read of a PROT_NONE page raised SIGSEGV with " +
                  SegvCodeName(check.fault.code) + ", not SEGV_ACCERR";
    return check;
  }
  SegvEvent unexpected;
  if (catcher.ReadFaults(first + kPage4K, &unexpected)) {
    check.error = "the page after " + PageName(layout, base, 0) + " faults too (" +
                  SegvCodeName(unexpected.code) + ")";
  }
  return check;
}

GuardCheck CheckUnguarded(GuardMethod method, const GuardLayout& layout, char* base,
                          SegvCatcher& catcher) {
  GuardCheck check;
  RegionState state;
  if (check.error = ReadState(layout, base, &state); !check.error.empty()) return check;
  check.vmas = state.vmas;
  if (state.vmas != 1) {
    check.error = "the region spans " + std::to_string(state.vmas) + " VMAs after " +
                  RemoveCallName(method) + ", expected 1";
    return check;
  }
  for (std::size_t i = 0; i < layout.pages; ++i) {
    const uint64_t entry = state.pagemap[(layout.Page(base, i) - base) / kPage4K];
    const bool empty = !PagemapPresent(entry) && !PagemapGuardRegion(entry);
    if (method == GuardMethod::kMarker && !empty) {
      check.error = PageName(layout, base, i) + " is not empty after " + RemoveCallName(method) +
                    " (pagemap entry " + Hex(entry) + ")";
      return check;
    }
    if (method == GuardMethod::kMprotect && !PagemapPresent(entry)) {
      check.error = PageName(layout, base, i) + " is no longer present after " +
                    RemoveCallName(method);
      return check;
    }
  }
  char* first = layout.Page(base, 0);
  SegvEvent event;
  if (catcher.ReadFaults(first, &event)) {
    check.error = "a read of " + PageName(layout, base, 0) + " still faults after " +
                  RemoveCallName(method) + " (" + SegvCodeName(event.code) + ")";
    return check;
  }
  if (method == GuardMethod::kMarker) {
    for (std::size_t off = 0; off < kPage4K; ++off) {
      if (first[off] != 0) {
        check.error = PageName(layout, base, 0) + " reads back byte " + std::to_string(off) +
                      " as " + std::to_string(first[off]) + " after " + RemoveCallName(method) +
                      ", not zero: the install did not zap it";
        return check;
      }
    }
  }
  return check;
}

}  // namespace faultlab
