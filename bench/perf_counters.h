// Perf counters for the thread being measured.
//
// A group of events, named the way perf and libpfm4 name them ("page-faults", "cycles:u",
// "dTLB-load-misses"), opened with perf_event_open for the calling thread and, with inherit,
// for the children it forks. The group is enabled once, when built, and then stays enabled: an
// ENABLE+DISABLE ioctl pair costs ~7 us in this VM and a group read ~0.7 us, so a measurement
// differences two reads. Values are matched by
// id and scaled for multiplexing (value * time_enabled / time_running).
//
// Counters degrade, never abort: an event that cannot be opened here (no PMU: ENOENT; EACCES under
// perf_event_paranoid) is dropped and listed with the reason. Only a name that nothing resolves
// (neither libpfm4 nor a tracefs tracepoint) is an error, which the CLI reports as bad input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace faultlab {

// The events a run opens when --counters is not given.
const std::vector<std::string>& DefaultCounterNames();

// Empty when every name resolves (libpfm4's pfm_get_os_event_encoding, or a tracepoint
// "subsystem:event" that exists under tracefs); otherwise one message naming the first bad event.
// Tracepoints are looked up only where tracefs is mounted; nothing here mounts it (it would change
// the machine), so with tracefs unmounted a tracepoint name fails with a message saying so.
std::string CheckCounterNames(const std::vector<std::string>& names);

// An event left out of a group (dropped()) or opened with less than was asked (degraded()).
// Tracepoints need tracefs, which a machine may not mount. As root this mounts it in a mount
// namespace of this process alone (unshare + a private tracefs mount), so tracepoint counters work
// and the machine's mounts stay as they were. Call while the process is single-threaded (before
// any thread starts). Returns one line saying what it found or did, for the run's context.
std::string MountTracefsPrivately();

struct DroppedCounter {
  std::string name;
  std::string reason;  // e.g. "perf_event_open: No such file or directory (no such event on this
                       // machine; no hardware PMU?)"
};

class CounterGroup {
 public:
  // Opens every event it can for the calling thread; never fails. `inherit` also counts
  // children forked after this call (their counts arrive once they are reaped).
  explicit CounterGroup(const std::vector<std::string>& names, bool inherit = true);
  ~CounterGroup();
  CounterGroup(CounterGroup&& other) noexcept;
  CounterGroup& operator=(CounterGroup&& other) noexcept;
  CounterGroup(const CounterGroup&) = delete;
  CounterGroup& operator=(const CounterGroup&) = delete;

  // The events that opened, in the order Read() returns them.
  const std::vector<std::string>& names() const { return names_; }
  // Every requested name is in exactly one of names() and dropped().
  const std::vector<DroppedCounter>& dropped() const { return dropped_; }
  // Events in names() that count less than was asked, and how: user mode only because
  // perf_event_paranoid refused kernel counting (uarch-bench's fallback), or in a group of their
  // own because the first group would not take them. Worth recording next to the values.
  const std::vector<DroppedCounter>& degraded() const { return degraded_; }

  // Current values, scaled for multiplexing, in names() order. Empty if nothing opened.
  std::vector<double> Read() const;

 private:
  void CloseAll();

  std::vector<std::string> names_;
  std::vector<DroppedCounter> dropped_;
  std::vector<DroppedCounter> degraded_;
  std::vector<int> fds_;        // fds_[i] counts names_[i]
  std::vector<uint64_t> ids_;   // PERF_EVENT_IOC_ID of each fd, to match group-read values
  // The fds read by Read(): usually one, more when an event could not join the first group.
  std::vector<int> leaders_;
};

}  // namespace faultlab
