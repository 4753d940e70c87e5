// The machine's topology through hwloc: discovery, pinning and node-bound memory.
//
// Benchmarks pin early, inside the mask the process inherited (taskset, cgroup cpusets), and
// check the kernel did it (sched_getcpu) before timing. Memory bound to a node is checked after
// it is touched (move_pages query), because a bind on a one-node machine or an empty node
// silently does nothing.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace faultlab {

struct NodeInfo {
  int os_index = 0;
  std::vector<int> cpus;                 // OS indexes of the PUs local to this node
  // Bytes. Not hwloc's node size (wrong in VMs): /proc/meminfo MemAvailable on a one-node
  // machine, else estimated from the node's meminfo; hwloc's size for synthetic topologies.
  unsigned long long mem_available = 0;
};

struct TopologySummary {
  int packages = 0;
  int cores = 0;
  int pus = 0;
  std::vector<NodeInfo> nodes;
  std::vector<int> allowed_cpus;         // the inherited affinity mask, ascending
};

class Topology {
 public:
  // Loads the running machine's topology. Throws std::runtime_error if hwloc cannot.
  Topology();
  // Loads a synthetic topology (hwloc's syntax, e.g. "package:2 numa:1 core:2 pu:2"): for tests
  // of logic only; binding through it does nothing.
  explicit Topology(const std::string& synthetic);
  ~Topology();
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;

  const TopologySummary& summary() const { return summary_; }
  nlohmann::json SummaryJson() const;
  // Writes hwloc's XML export to `path`; false with errno set on failure.
  bool ExportXml(const std::string& path) const;

  // The CPUs local to `node` that the process may run on; empty for an unknown node.
  std::vector<int> CpusOfNode(int node) const;
  bool HasNode(int node) const;

  void* handle() const { return topology_; }  // hwloc_topology_t

 private:
  void* topology_ = nullptr;
  TopologySummary summary_;
};

// Parses a CPU list ("0", "0-3", "0,2,5-7") in the order given, dropping repeats. nullopt with
// `error` set on bad syntax (no spaces allowed).
std::optional<std::vector<int>> ParseCpuList(const std::string& text, std::string* error);

// Chooses the CPUs a run pins to: `cpus` if given (each must be in the allowed mask), else the
// node's allowed CPUs if `node` is given, else the whole allowed mask. nullopt with `error` set
// (one line naming the bad CPU or node) when the request cannot be met.
std::optional<std::vector<int>> ResolveRunCpus(const Topology& topology,
                                               const std::vector<int>& cpus,
                                               std::optional<int> node, std::string* error);

// Pins the calling thread to one CPU and returns the CPU it then runs on (sched_getcpu), or -1
// with errno set if the pin failed: EINVAL for a CPU outside allowed_cpus, ENOSYS for a synthetic
// topology, EAGAIN if the thread still runs elsewhere after the bind.
int PinThisThread(const Topology& topology, int cpu);

// Binds [addr, addr+len) to `node` (hwloc membind, strict). Call before the memory is touched.
bool BindArea(const Topology& topology, void* addr, std::size_t len, int node, std::string* error);

// The node of each touched page sampled every `stride` bytes in [addr, addr+len) (move_pages
// query). -1 for a page that is not present; empty if the query failed.
std::vector<int> PageNodes(void* addr, std::size_t len, std::size_t stride);

}  // namespace faultlab
