// Name resolution and group handling for perf counters (see perf_counters.h).
//
// What this machine taught us, and the code below relies on:
// - libpfm4 resolves perf's generic names ("page-faults", "cycles:u", "dTLB-load-misses") and honours
//   ":u"/":k" on software events too (it sets exclude_kernel/exclude_user). It does not know tracepoints
//   unless debugfs was mounted when it initialised, so "subsystem:event" falls back to tracefs.
// - Software events, tracepoints and (where a PMU exists) hardware events share one group; every event of
//   a group must agree on inherit, which they do here because the whole group takes the caller's flag.
// - Under perf_event_paranoid=2 an unprivileged open is refused (EACCES) unless exclude_kernel is set.
//   Kernel-only events (context switches, migrations, tracepoints) then count 0, so retrying them
//   user-only would report a silent zero; clock events ignore exclude_kernel altogether.

// libpfm4's header redefines what <linux/perf_event.h> defines unless the kernel's comes first.
#include <linux/perf_event.h>
#include <perfmon/pfmlib_perf_event.h>

#include "bench/perf_counters.h"

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

namespace faultlab {
namespace {

// A group read returns 3 + 2 * members words; a fixed bound keeps Read() free of allocation on the
// way to the syscall, which sits inside the caller's measurement window.
constexpr size_t kMaxGroupMembers = 64;
constexpr uint64_t kReadFormat = PERF_FORMAT_GROUP | PERF_FORMAT_ID |
                                 PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING;

// tracefs is mounted at the first on current kernels; the second exists when only debugfs is mounted.
constexpr std::array<const char*, 2> kTracefsEventRoots = {"/sys/kernel/tracing/events",
                                                           "/sys/kernel/debug/tracing/events"};

std::string ErrnoText(int err) { return std::strerror(err); }

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// pfm_initialize must run once per process; libpfm4 keeps global tables, so encoding is serialised too
// (it runs only when a group is built, never while measuring).
std::mutex& PfmMutex() {
  static std::mutex mutex;
  return mutex;
}

int PfmInitStatus() {
  static const int status = pfm_initialize();
  return status;
}

// What a name resolves to. `known` is false only when nothing knows the name (bad input); a known
// name can still be unusable here (`problem` set, e.g. an id file only root may read).
struct Resolution {
  bool known = false;
  perf_event_attr attr{};
  std::string problem;
};

bool ResolveWithPfm(const std::string& name, perf_event_attr* attr, std::string* why) {
  std::lock_guard<std::mutex> lock(PfmMutex());
  const int init = PfmInitStatus();
  if (init != PFM_SUCCESS) {
    *why = std::string("libpfm4 could not initialise (") + pfm_strerror(init) + ")";
    return false;
  }
  perf_event_attr encoded{};
  pfm_perf_encode_arg_t arg{};
  arg.attr = &encoded;
  arg.size = sizeof(arg);
  // Both privilege levels unless the name says ":u" or ":k"; the kernel refusing kernel mode is
  // handled at open time, where we know the errno.
  const int rc = pfm_get_os_event_encoding(name.c_str(), PFM_PLM0 | PFM_PLM3,
                                           PFM_OS_PERF_EVENT_EXT, &arg);
  if (rc != PFM_SUCCESS) {
    *why = std::string("libpfm4 does not know it (") + pfm_strerror(rc) + ")";
    return false;
  }
  *attr = encoded;
  return true;
}

// "subsystem:event" as a tracefs path component pair; anything that could walk out of events/ is no
// tracepoint name.
bool SplitTracepointName(const std::string& name, std::string* subsystem, std::string* event) {
  const size_t colon = name.find(':');
  if (colon == std::string::npos || name.find(':', colon + 1) != std::string::npos) return false;
  *subsystem = name.substr(0, colon);
  *event = name.substr(colon + 1);
  for (const std::string* part : {subsystem, event}) {
    if (part->empty() || *part == "." || *part == ".." ||
        part->find('/') != std::string::npos) {
      return false;
    }
  }
  return true;
}

// Fills `resolution` from tracefs when `name` is a tracepoint there; returns false otherwise, with
// `why` saying where it looked (or that nothing is mounted to look in).
bool ResolveTracepoint(const std::string& name, Resolution* resolution, std::string* why) {
  std::string subsystem, event;
  bool any_root = false;
  const bool well_formed = SplitTracepointName(name, &subsystem, &event);
  for (const char* root : kTracefsEventRoots) {
    if (!IsDirectory(root)) continue;
    any_root = true;
    if (!well_formed) break;
    const std::string dir = std::string(root) + "/" + subsystem + "/" + event;
    if (!IsDirectory(dir)) continue;
    resolution->known = true;
    const std::string id_path = dir + "/id";
    const int fd = ::open(id_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      resolution->problem = "cannot read " + id_path + ": " + ErrnoText(err) +
                            (err == EACCES ? " (tracefs ids are readable by root only)" : "");
      return true;
    }
    char text[32] = {};
    const ssize_t n = ::read(fd, text, sizeof(text) - 1);
    ::close(fd);
    char* end = nullptr;
    const unsigned long long id = n > 0 ? std::strtoull(text, &end, 10) : 0;
    if (n <= 0 || end == text) {
      resolution->problem = "cannot parse the tracepoint id in " + id_path;
      return true;
    }
    perf_event_attr& attr = resolution->attr;
    attr = perf_event_attr{};
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.config = id;
    // Tracepoints fire in kernel mode: excluding it would count nothing.
    attr.exclude_kernel = 0;
    attr.exclude_user = 0;
    return true;
  }
  if (!any_root) {
    *why = "it cannot be looked up as a tracepoint because tracefs is not mounted "
           "(mount -t tracefs nodev /sys/kernel/tracing)";
  } else {
    *why = std::string("it is no tracepoint under ") + kTracefsEventRoots[0];
  }
  return false;
}

Resolution Resolve(const std::string& name) {
  Resolution resolution;
  std::string pfm_why, tracepoint_why;
  if (ResolveWithPfm(name, &resolution.attr, &pfm_why)) {
    resolution.known = true;
    return resolution;
  }
  if (ResolveTracepoint(name, &resolution, &tracepoint_why)) return resolution;
  resolution.problem = "unknown perf event '" + name + "': " + pfm_why + " and " + tracepoint_why;
  return resolution;
}

std::string ParanoidLevel() {
  const int fd = ::open("/proc/sys/kernel/perf_event_paranoid", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "unknown";
  char text[16] = {};
  const ssize_t n = ::read(fd, text, sizeof(text) - 1);
  ::close(fd);
  std::string level(text, n > 0 ? static_cast<size_t>(n) : 0);
  while (!level.empty() && (level.back() == '\n' || level.back() == ' ')) level.pop_back();
  return level.empty() ? "unknown" : level;
}

std::string ParanoidAdvice() {
  return "perf_event_paranoid is " + ParanoidLevel() +
         ": counting kernel mode needs root (or CAP_PERFMON) or perf_event_paranoid<2";
}

bool IsPermissionError(int err) { return err == EACCES || err == EPERM; }

// The reason an open failed, in words a reader of the results understands.
std::string OpenFailure(int err) {
  std::string text = "perf_event_open: " + ErrnoText(err);
  switch (err) {
    case ENOENT:
      return text + " (no such event on this machine; no hardware PMU?)";
    case EACCES:
    case EPERM:
      return text + " (" + ParanoidAdvice() + ")";
    case EOPNOTSUPP:
      return text + " (this PMU cannot count the event as asked, e.g. it cannot exclude a mode)";
    case ENODEV:
      return text + " (the event's PMU cannot count a single thread)";
    case EINVAL:
      return text + " (the kernel rejected the event's attributes)";
    case EBUSY:
      return text + " (the PMU is in exclusive use by someone else)";
    case EMFILE:
    case ENFILE:
      return text + " (out of file descriptors)";
    default:
      return text;
  }
}

// Events the kernel only raises from kernel context: with exclude_kernel they read 0.
bool CountsOnlyInKernel(const perf_event_attr& attr) {
  if (attr.type == PERF_TYPE_TRACEPOINT) return true;
  return attr.type == PERF_TYPE_SOFTWARE &&
         (attr.config == PERF_COUNT_SW_CONTEXT_SWITCHES ||
          attr.config == PERF_COUNT_SW_CPU_MIGRATIONS ||
          attr.config == PERF_COUNT_SW_CGROUP_SWITCHES);
}

// Clock events measure time and ignore the exclusion bits, so a user-only retry changes nothing.
bool IsClock(const perf_event_attr& attr) {
  return attr.type == PERF_TYPE_SOFTWARE &&
         (attr.config == PERF_COUNT_SW_CPU_CLOCK || attr.config == PERF_COUNT_SW_TASK_CLOCK);
}

bool IsFaultEvent(const perf_event_attr& attr) {
  return attr.type == PERF_TYPE_SOFTWARE &&
         (attr.config == PERF_COUNT_SW_PAGE_FAULTS || attr.config == PERF_COUNT_SW_PAGE_FAULTS_MIN ||
          attr.config == PERF_COUNT_SW_PAGE_FAULTS_MAJ);
}

// Returns the fd, or -errno.
int PerfEventOpen(perf_event_attr* attr, int group_fd) {
  const long fd = ::syscall(SYS_perf_event_open, attr, /*pid=*/0, /*cpu=*/-1, group_fd,
                            PERF_FLAG_FD_CLOEXEC);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

}  // namespace

const std::vector<std::string>& DefaultCounterNames() {
  static const std::vector<std::string> names = {
      "page-faults",    "minor-faults",   "major-faults",     "context-switches",
      "cpu-migrations", "task-clock",     "cycles:u",         "cycles:k",
      "instructions:u", "instructions:k", "dTLB-load-misses", "tlb:tlb_flush",
      "migrate:mm_migrate_pages",
  };
  return names;
}

std::string CheckCounterNames(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    Resolution resolution = Resolve(name);
    if (!resolution.known) return resolution.problem;
  }
  return {};
}

CounterGroup::CounterGroup(const std::vector<std::string>& names, bool inherit) {
  // Parallel to leaders_: how many events each group holds, so none outgrows Read()'s buffer.
  std::vector<size_t> members_per_group;
  // Parallel to names_: the index in leaders_ of each event's group.
  std::vector<size_t> group_of;

  // Opens `attr` in the first existing group that accepts it, else as the leader of a new group.
  // Returns the fd or -errno of the last attempt; sets *group to the group's index (leaders_.size()
  // for a new group) and *alone when an existing group refused it.
  //
  // Leaders open disabled and are enabled once every event is in, below. With the leader enabled
  // from open, a member from another PMU than its leader (a tracepoint under page-faults,
  // page-faults under task-clock) did not count until the thread next scheduled in: on Linux 6.18
  // here, 500-3900 of 4096 first-touch faults in the first ~10 ms; a usleep after open hid it. The
  // likely cause: attaching the member reschedules only its own PMU's groups, which do not hold it.
  // The ENABLE reschedules the leader's PMU, which takes the whole group in.
  // PerfCounters.MemberOfAnotherPmuCountsFromTheStart guards this.
  auto open_somewhere = [&](perf_event_attr* attr, size_t* group, bool* alone) -> int {
    attr->disabled = 0;
    for (size_t g = 0; g < leaders_.size(); ++g) {
      if (members_per_group[g] >= kMaxGroupMembers) continue;
      const int result = PerfEventOpen(attr, leaders_[g]);
      if (result >= 0) {
        *group = g;
        *alone = false;
        return result;
      }
    }
    attr->disabled = 1;
    const int result = PerfEventOpen(attr, -1);
    if (result >= 0) {
      *group = leaders_.size();
      *alone = !leaders_.empty();
    }
    return result;
  };

  for (const std::string& name : names) {
    Resolution resolution = Resolve(name);
    if (!resolution.problem.empty()) {
      dropped_.push_back({name, resolution.problem});
      continue;
    }
    perf_event_attr attr = resolution.attr;
    // libpfm4 leaves size 0, which the kernel reads as the oldest ABI.
    attr.size = sizeof(attr);
    attr.read_format = kReadFormat;
    attr.inherit = inherit ? 1 : 0;

    size_t group = 0;
    bool alone = false;
    int fd = open_somewhere(&attr, &group, &alone);
    std::string degradation;
    if (fd < 0 && IsPermissionError(-fd)) {
      const bool wants_kernel = !attr.exclude_kernel;
      if (!wants_kernel || attr.exclude_user) {
        // Asked for kernel mode only (":k"), or refused even in user mode: nothing to fall back to.
      } else if (CountsOnlyInKernel(attr)) {
        dropped_.push_back({name, OpenFailure(-fd) +
                                      "; the event only happens in kernel mode, so counting "
                                      "user mode alone would read 0"});
        continue;
      } else {
        // uarch-bench's fallback: a user-mode count beats no count, provided the report says so.
        attr.exclude_kernel = 1;
        fd = open_somewhere(&attr, &group, &alone);
        if (fd >= 0) {
          if (IsClock(attr)) {
            degradation = "opened with exclude_kernel=1 (" + ParanoidAdvice() +
                          "); clock events ignore it, so the value is unchanged";
          } else {
            degradation = "counts user mode only (" + ParanoidAdvice() + ")";
            if (IsFaultEvent(attr)) {
              degradation += "; faults taken inside syscalls (copy_to_user) are missed";
            }
          }
        }
      }
    }
    if (fd < 0) {
      dropped_.push_back({name, OpenFailure(-fd)});
      continue;
    }
    uint64_t id = 0;
    if (::ioctl(fd, PERF_EVENT_IOC_ID, &id) != 0) {
      const int err = errno;
      ::close(fd);
      dropped_.push_back({name, "ioctl(PERF_EVENT_IOC_ID): " + ErrnoText(err) +
                                    " (the group read could not be matched to it)"});
      continue;
    }
    if (group == leaders_.size()) {
      leaders_.push_back(fd);
      members_per_group.push_back(0);
    }
    ++members_per_group[group];
    if (alone) {
      if (!degradation.empty()) degradation += "; ";
      degradation += "could not join the first group, so it is counted in a group of its own "
                     "(not read atomically with the others)";
    }
    if (!degradation.empty()) degraded_.push_back({name, degradation});
    names_.push_back(name);
    fds_.push_back(fd);
    ids_.push_back(id);
    group_of.push_back(group);
  }

  // One ENABLE per group, here and never again: an ENABLE+DISABLE pair costs ~7 us in this VM, so
  // measurements difference two reads of a group that stays enabled.
  std::vector<bool> enabled(leaders_.size(), true);
  std::string enable_error;
  for (size_t g = 0; g < leaders_.size(); ++g) {
    if (::ioctl(leaders_[g], PERF_EVENT_IOC_ENABLE, 0) != 0) {
      enabled[g] = false;
      enable_error = "ioctl(PERF_EVENT_IOC_ENABLE): " + ErrnoText(errno);
    }
  }
  if (enable_error.empty()) return;
  // A group that never started would read 0 for ever: drop its events rather than report zeros.
  std::vector<std::string> kept_names;
  std::vector<int> kept_fds;
  std::vector<uint64_t> kept_ids;
  std::vector<int> kept_leaders;
  for (size_t g = 0; g < leaders_.size(); ++g) {
    if (enabled[g]) kept_leaders.push_back(leaders_[g]);
  }
  for (size_t i = 0; i < names_.size(); ++i) {
    if (enabled[group_of[i]]) {
      kept_names.push_back(names_[i]);
      kept_fds.push_back(fds_[i]);
      kept_ids.push_back(ids_[i]);
    } else {
      dropped_.push_back({names_[i], enable_error});
      std::erase_if(degraded_, [&](const DroppedCounter& d) { return d.name == names_[i]; });
    }
  }
  for (size_t i = fds_.size(); i-- > 0;) {
    if (!enabled[group_of[i]]) ::close(fds_[i]);
  }
  names_ = std::move(kept_names);
  fds_ = std::move(kept_fds);
  ids_ = std::move(kept_ids);
  leaders_ = std::move(kept_leaders);
}

CounterGroup::~CounterGroup() { CloseAll(); }

void CounterGroup::CloseAll() {
  // Members before leaders, so no member is ever left as a detached singleton event.
  for (size_t i = fds_.size(); i-- > 0;) ::close(fds_[i]);
  names_.clear();
  dropped_.clear();
  degraded_.clear();
  fds_.clear();
  ids_.clear();
  leaders_.clear();
}

CounterGroup::CounterGroup(CounterGroup&& other) noexcept
    : names_(std::exchange(other.names_, {})),
      dropped_(std::exchange(other.dropped_, {})),
      degraded_(std::exchange(other.degraded_, {})),
      fds_(std::exchange(other.fds_, {})),
      ids_(std::exchange(other.ids_, {})),
      leaders_(std::exchange(other.leaders_, {})) {}

CounterGroup& CounterGroup::operator=(CounterGroup&& other) noexcept {
  if (this != &other) {
    CloseAll();
    names_ = std::exchange(other.names_, {});
    dropped_ = std::exchange(other.dropped_, {});
    degraded_ = std::exchange(other.degraded_, {});
    fds_ = std::exchange(other.fds_, {});
    ids_ = std::exchange(other.ids_, {});
    leaders_ = std::exchange(other.leaders_, {});
  }
  return *this;
}

std::vector<double> CounterGroup::Read() const {
  std::vector<double> values(names_.size(), 0.0);
  std::array<uint64_t, 3 + 2 * kMaxGroupMembers> buffer;
  // Groups are read one after the other; only events within one group share a single snapshot.
  for (const int leader : leaders_) {
    const ssize_t n = ::read(leader, buffer.data(), sizeof(buffer));
    // A failed or short read leaves the group's values at 0: Read() must not throw or abort.
    if (n < static_cast<ssize_t>(3 * sizeof(uint64_t))) continue;
    const uint64_t count = buffer[0];
    const uint64_t enabled = buffer[1];
    const uint64_t running = buffer[2];
    if (static_cast<size_t>(n) < (3 + 2 * count) * sizeof(uint64_t)) continue;
    for (uint64_t k = 0; k < count; ++k) {
      const uint64_t value = buffer[3 + 2 * k];
      const uint64_t id = buffer[4 + 2 * k];
      for (size_t i = 0; i < ids_.size(); ++i) {
        if (ids_[i] != id) continue;
        // Multiplexed groups ran part of the time; extrapolate. Never scheduled means no estimate.
        if (running == 0) {
          values[i] = 0.0;
        } else if (running == enabled) {
          values[i] = static_cast<double>(value);
        } else {
          values[i] = static_cast<double>(value) * static_cast<double>(enabled) /
                      static_cast<double>(running);
        }
        break;
      }
    }
  }
  return values;
}

}  // namespace faultlab

namespace faultlab {

std::string MountTracefsPrivately() {
  for (const char* root : kTracefsEventRoots) {
    if (access(root, F_OK) == 0) return std::string("tracefs already mounted (") + root + ")";
  }
  if (geteuid() != 0) return "tracefs not mounted and not root: tracepoint counters unavailable";
  if (unshare(CLONE_NEWNS) != 0) {
    return std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
  }
  // Without MS_PRIVATE the new mount would propagate back to the machine's namespace.
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0) {
    return std::string("mounting tracefs privately: ") + std::strerror(errno);
  }
  return "tracefs mounted in faultlab's own mount namespace (the machine's mounts are unchanged)";
}

}  // namespace faultlab
