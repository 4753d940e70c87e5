// The numa suite's probes: which nodes have CPUs and which have memory, where pages are, memory
// policies, and moving pages between nodes.
//
// Everything here is a thin layer over the raw syscalls (move_pages, mbind, set_mempolicy,
// get_mempolicy, migrate_pages) rather than libnuma's allocation helpers: numa_alloc_onnode on a
// one-node machine returns unbound memory and only prints a warning (platform.md), and the
// suite needs each call's errno to say why a row could not run. Node lists come from sysfs
// (/sys/devices/system/node/has_cpu, has_memory), where memory-only nodes (CXL, a QEMU
// memory-only node) show up as nodes with memory and no CPUs.
//
// Tests (tests/numa_probe_test.cc) show each piece does what it claims on this machine: a page
// bound to node 0 is reported there, untouched pages are -ENOENT, a move to a node that does not
// exist fails with ENODEV and a message naming the node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace faultlab {

// --- Nodes ---------------------------------------------------------------------------------

// Parses a sysfs node or CPU list ("0", "0-1,3"); empty for an empty string, nullopt on bad
// syntax.
std::optional<std::vector<int>> ParseIdList(const std::string& text);

// Nodes with memory (/sys/devices/system/node/has_memory) and with CPUs (has_cpu), ascending.
// Empty when the kernel has no NUMA support (no such files): callers treat that as node 0 only.
std::vector<int> NodesWithMemory();
std::vector<int> NodesWithCpus();
// The node's CPUs (nodeN/cpulist) that this thread may run on (sched_getaffinity); empty for a
// memory-only or unknown node.
std::vector<int> AllowedCpusOfNode(int node);
// The node of a CPU (the nodeM link under /sys/devices/system/cpu/cpuN); -1 if unknown.
int NodeOfCpu(int cpu);
// The smallest node number that has no memory: how rows that need another node name it on a
// machine that lacks it (a one-node machine: 1).
int FirstNodeWithoutMemory();
// "needs a second NUMA node with memory; this machine has 1": the one reason every row that
// needs two memory nodes gives.
std::string WhyNotTwoMemoryNodes();

// --- Where pages are -----------------------------------------------------------------------

// move_pages(nodes=NULL) over [addr, addr+len), one address every `stride` bytes: each entry the
// page's node, or a negative errno (-ENOENT: never touched; -EFAULT: the shared zero page or an
// unmapped address). Empty with *error set if the call failed.
std::vector<int> QueryPageNodes(const void* addr, std::size_t len, std::size_t stride,
                                std::string* error);

// Pages per node of a query's result; negative statuses count under their (negative) value.
std::map<int, std::size_t> CountByNode(const std::vector<int>& status);

// Empty when every page sampled every `stride` bytes is on `node`; otherwise
// "premise: N of M pages on node X, not Y" (X the commonest wrong place; "not present" for
// pages never touched), or "premise: cannot query placement: ..." when the query failed.
// `counts`, if given, gets the pages per node; node < 0 only counts.
std::string CheckAllOnNode(const void* addr, std::size_t len, std::size_t stride, int node,
                           std::map<int, std::size_t>* counts = nullptr);

// The node of the page at `addr` (get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)); it faults the
// page in if it is not present. -1 with *error set on failure.
int NodeOfAddress(const void* addr, std::string* error);

// --- Memory policies -----------------------------------------------------------------------

enum class NumaPolicy { kDefault, kLocal, kBind, kPreferred, kInterleave, kWeightedInterleave };
const char* PolicyName(NumaPolicy policy);  // "default", "local", "bind", ...
int PolicyMode(NumaPolicy policy);          // the MPOL_* value (weighted interleave: 6)

// Why this kernel refuses the policy (probed once with mbind on a scratch page); nullopt when it
// takes it. MPOL_WEIGHTED_INTERLEAVE needs Linux 6.9; the others have existed for long.
std::optional<std::string> WhyPolicyUnavailable(NumaPolicy policy);

// mbind(addr, len, policy, nodes, flags): a VMA policy for the range. `nodes` empty for default
// and local. Empty on success, else "mbind(<policy> nodes 0-1): EINVAL".
std::string SetRangePolicy(void* addr, std::size_t len, NumaPolicy policy,
                           const std::vector<int>& nodes, unsigned flags = 0);

// set_mempolicy for the calling thread. Empty on success, else the error.
std::string SetThreadPolicy(NumaPolicy policy, const std::vector<int>& nodes);

// The calling thread's policy (get_mempolicy with no flags): its MPOL_* mode and nodes.
struct ThreadPolicy {
  int mode = -1;
  std::vector<int> nodes;
  std::string error;  // empty on success
};
ThreadPolicy GetThreadPolicy();

// Sets the calling thread's policy for a scope and puts the one it had back after.
class ScopedThreadPolicy {
 public:
  ScopedThreadPolicy(NumaPolicy policy, const std::vector<int>& nodes);
  ~ScopedThreadPolicy();
  ScopedThreadPolicy(const ScopedThreadPolicy&) = delete;
  ScopedThreadPolicy& operator=(const ScopedThreadPolicy&) = delete;
  const std::string& error() const { return error_; }

 private:
  ThreadPolicy saved_;
  std::string error_;
};

// The weights MPOL_WEIGHTED_INTERLEAVE gives each node
// (/sys/kernel/mm/mempolicy/weighted_interleave/nodeN); 1 where a node has no file.
std::vector<int> InterleaveWeights(const std::vector<int>& nodes);

// Pages each node should get when `pages` pages are interleaved over `nodes` with `weights`
// (all 1: plain interleave), and how far a node's count may be from it: the kernel walks the
// nodes in turn taking `weight` pages from each, starting where the VMA offset says, so a node
// is off by at most its weight.
std::vector<double> InterleaveShares(std::size_t pages, const std::vector<int>& weights);

// Empty when per-node counts `counts` (from CountByNode) match an interleave of `pages` pages
// over `nodes` with `weights`: each node within its weight of its share, nothing elsewhere;
// otherwise "premise: node 1 got 300 of 1024 pages, expected 512 (interleave over 0-1)".
std::string CheckInterleaved(const std::map<int, std::size_t>& counts, std::size_t pages,
                             const std::vector<int>& nodes, const std::vector<int>& weights);

// --- Moving pages --------------------------------------------------------------------------

// move_pages of `count` pages to `node` in one call; status[i] gets each page's node after (or a
// negative errno). Empty when every page is on `node` after; otherwise why not:
// "move_pages to node 7: ENODEV (no node 7 with memory; nodes with memory: 0)" or
// "move_pages to node 1: 3 of 16 pages not moved (first: page 2, EBUSY)".
std::string MovePagesTo(void* const* pages, std::size_t count, int node, int* status);

// Every page of [addr, addr+len) (one address every `stride` bytes) to `node`, `batch` pages a
// call. Empty on success, else the first call's error.
std::string MoveRangeTo(void* addr, std::size_t len, std::size_t stride, int node,
                        std::size_t batch);

// mbind(MPOL_BIND {node}, MPOL_MF_MOVE | MPOL_MF_STRICT): bind the range to `node` and move its
// pages there. Empty on success, else the error (EIO: some pages could not be moved).
std::string MbindMoveTo(void* addr, std::size_t len, int node);

// migrate_pages(0, {from}, {to}): every page of this process on `from` that only it maps.
// Empty on success (*not_moved: pages the kernel could not move), else the error.
std::string MigrateProcessPages(int from, int to, long* not_moved);

// Pages of this process on `node` by /proc/self/numa_maps (all mappings, shared file pages
// included); -1 if unreadable.
long ProcessPagesOnNode(int node);

// --- NUMA balancing: hinting faults ---------------------------------------------------------
//
// With kernel.numa_balancing on, the scheduler's scanner (task_numa_work, run from a task's own
// ticks) turns the PTEs of a part of the task's address space PROT_NONE every scan period; the
// next access takes a NUMA hinting fault, which restores the PTE, records where the access came
// from, and may migrate the page toward the accessing CPU's node.

// The switch. faultlab turns it on only for a run given --numa-balancing, and only around the
// rows that measure hinting faults (numa_suite.cc), through SystemSettings.
inline constexpr const char* kNumaBalancingPath = "/proc/sys/kernel/numa_balancing";

// The NUMA-balancing lines of /proc/vmstat. Machine-wide: every process's hinting faults and
// migrations count, not only the measured one's.
struct NumaVmstat {
  long hint_faults = 0;        // numa_hint_faults
  long hint_faults_local = 0;  // numa_hint_faults_local: the page was on the faulting CPU's node
  long pages_migrated = 0;     // numa_pages_migrated
  long pte_updates = 0;        // numa_pte_updates: PTEs the scanner made PROT_NONE
};
// nullopt when /proc/vmstat cannot be read or has no numa_hint_faults line (a kernel without
// CONFIG_NUMA_BALANCING).
std::optional<NumaVmstat> ReadNumaVmstat();

// The calling thread's numa_pages_migrated from /proc/thread-self/sched (pages NUMA balancing
// migrated on this task's hinting faults; needs CONFIG_SCHED_DEBUG); -1 if unreadable.
long ThreadNumaPagesMigrated();

// The scanner's pace as this machine sets it, "scan_delay_ms:1000,scan_period_min_ms:1000,..."
// from /proc/sys/kernel/numa_balancing_scan_* (kernels before 5.13) or
// /sys/kernel/debug/sched/numa_balancing/ (later ones); "unreadable" when neither can be read
// (debugfs unmounted, or closed by kernel lockdown: this machine's lockdown=integrity refuses
// even a read of them).
std::string NumaScanKnobsText();

// The addresses of the minor faults the calling thread takes in user mode, from a perf software
// event (PERF_COUNT_SW_PAGE_FAULTS_MIN) that samples every fault with its address. A NUMA
// hinting fault on a present page is a minor fault, so a loop that stamps each access can tell
// exactly which accesses took one (rather than guess from the slowest stamps: the scanner's own
// work runs on the same thread, from a tick, and makes long stamps that are not faults).
class MinorFaultSampler {
 public:
  // Opens the event for the calling thread, with a ring buffer for at least `capacity` samples
  // between two Drain calls.
  explicit MinorFaultSampler(std::size_t capacity);
  ~MinorFaultSampler();
  MinorFaultSampler(const MinorFaultSampler&) = delete;
  MinorFaultSampler& operator=(const MinorFaultSampler&) = delete;

  // Empty when the event is open; otherwise why not ("perf_event_open page-faults-min: EACCES").
  const std::string& error() const { return error_; }
  // Appends the fault addresses sampled since the last call, oldest first.
  void Drain(std::vector<uint64_t>* addresses);
  // Samples the kernel dropped because the ring was full (PERF_RECORD_LOST), in all.
  uint64_t lost() const { return lost_; }

 private:
  int fd_ = -1;
  void* ring_ = nullptr;
  std::size_t ring_bytes_ = 0;
  std::size_t data_bytes_ = 0;
  uint64_t lost_ = 0;
  std::string error_;
};

}  // namespace faultlab
