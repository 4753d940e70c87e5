#include "topology/topology.h"

#include <hwloc.h>
#include <numaif.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace faultlab {
namespace {

// Far above any kernel's NR_CPUS (8192 today): a typo like "0-4000000000" must fail in the
// parser, not allocate gigabytes of CPU numbers.
constexpr int kMaxCpu = 65535;

hwloc_topology_t Hw(void* handle) { return static_cast<hwloc_topology_t>(handle); }

struct BitmapDeleter {
  void operator()(hwloc_bitmap_s* b) const { hwloc_bitmap_free(b); }
};
using Bitmap = std::unique_ptr<hwloc_bitmap_s, BitmapDeleter>;

std::vector<int> BitmapToVector(hwloc_const_bitmap_t set) {
  std::vector<int> out;
  if (set == nullptr) return out;
  for (int i = hwloc_bitmap_first(set); i != -1; i = hwloc_bitmap_next(set, i)) out.push_back(i);
  return out;
}

// "0-3,6": the compact form the kernel and taskset use, so messages read like /proc output.
std::string FormatCpuList(std::vector<int> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string out;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(ids[i]);
    if (j > i) absl::StrAppend(&out, "-", ids[j]);
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}

// The calling thread's affinity, grown past CPU_SETSIZE on machines with more CPUs than
// glibc's fixed cpu_set_t holds (the kernel answers EINVAL while the buffer is too small).
std::vector<int> InheritedAffinity() {
  for (int ncpus = CPU_SETSIZE; ncpus <= (kMaxCpu + 1) * 2; ncpus *= 2) {
    cpu_set_t* set = CPU_ALLOC(ncpus);
    if (set == nullptr) break;
    const std::size_t size = CPU_ALLOC_SIZE(ncpus);
    CPU_ZERO_S(size, set);
    if (sched_getaffinity(0, size, set) == 0) {
      std::vector<int> out;
      for (int cpu = 0; cpu < ncpus; ++cpu) {
        if (CPU_ISSET_S(cpu, size, set)) out.push_back(cpu);
      }
      CPU_FREE(set);
      return out;
    }
    const int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) break;
  }
  return {};
}

// Returns the value in bytes of a "<key>: <n> kB" line, or nullopt when the file or key is
// missing. Per-node meminfo prefixes each line with "Node <N> ".
std::optional<unsigned long long> MeminfoKb(const std::string& path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::string_view rest(line);
    if (rest.rfind("Node ", 0) == 0) {
      const std::size_t space = rest.find(' ', 5);
      if (space == std::string_view::npos) continue;
      rest.remove_prefix(space + 1);
    }
    if (rest.size() <= key.size() || rest.substr(0, key.size()) != key ||
        rest[key.size()] != ':') {
      continue;
    }
    rest.remove_prefix(key.size() + 1);
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    unsigned long long kb = 0;
    if (std::from_chars(rest.data(), rest.data() + rest.size(), kb).ec != std::errc()) {
      return std::nullopt;
    }
    return kb * 1024;
  }
  return std::nullopt;
}

// Linux computes MemAvailable only system-wide: node meminfo has no such line. And in this
// Firecracker VM the per-node counters (which hwloc's node size also comes from) miss most of
// the memory: node0 shows ~4 GiB of 24 GiB, and touching 8 GiB moves its MemFree by a few
// hundred MiB while /proc/meminfo's drops by 8 GiB. So with a single node the system-wide
// figure is the node's, exactly. With several, take the node's own MemAvailable if a future
// kernel adds one, else estimate it the kernel's way without watermarks: free memory plus half
// of the file LRU and half of reclaimable slab, which the kernel counts as reclaimable at a cost.
unsigned long long NodeMemAvailable(int node, int memory_nodes) {
  if (memory_nodes == 1) {
    return MeminfoKb("/proc/meminfo", "MemAvailable").value_or(0);
  }
  const std::string path = absl::StrCat("/sys/devices/system/node/node", node, "/meminfo");
  if (auto direct = MeminfoKb(path, "MemAvailable")) return *direct;
  const unsigned long long free_bytes = MeminfoKb(path, "MemFree").value_or(0);
  const unsigned long long file = MeminfoKb(path, "Active(file)").value_or(0) +
                                  MeminfoKb(path, "Inactive(file)").value_or(0);
  const unsigned long long slab = MeminfoKb(path, "SReclaimable").value_or(0);
  return free_bytes + file / 2 + slab / 2;
}

TopologySummary Summarize(hwloc_topology_t topo) {
  TopologySummary s;
  s.packages = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE);
  s.cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  s.pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
  const bool real = hwloc_topology_is_thissystem(topo) != 0;

  const int memory_nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (hwloc_obj_t n = nullptr; (n = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, n));) {
    NodeInfo info;
    info.os_index = static_cast<int>(n->os_index);
    info.cpus = BitmapToVector(n->cpuset);
    info.mem_available = real ? NodeMemAvailable(info.os_index, memory_nodes)
                              : static_cast<unsigned long long>(n->attr->numanode.local_memory);
    s.nodes.push_back(std::move(info));
  }
  std::sort(s.nodes.begin(), s.nodes.end(),
            [](const NodeInfo& a, const NodeInfo& b) { return a.os_index < b.os_index; });

  // hwloc's allowed cpuset knows cgroup cpusets but not taskset/sched_setaffinity masks, so
  // for the running machine the kernel's answer is the authority.
  s.allowed_cpus = real ? InheritedAffinity()
                        : BitmapToVector(hwloc_topology_get_allowed_cpuset(topo));
  return s;
}

std::string NodeListText(const TopologySummary& s) {
  std::vector<int> ids;
  for (const NodeInfo& n : s.nodes) ids.push_back(n.os_index);
  return FormatCpuList(std::move(ids));
}

const NodeInfo* FindNode(const TopologySummary& s, int node) {
  for (const NodeInfo& n : s.nodes) {
    if (n.os_index == node) return &n;
  }
  return nullptr;
}

bool Contains(const std::vector<int>& v, int x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

// Default flags on purpose: hwloc then drops what the cgroup cpuset disallows, so counts and
// node CPU lists never include CPUs the process could not be given; the narrower taskset mask
// is layered on top from sched_getaffinity in Summarize().
Topology::Topology() {
  hwloc_topology_t topo = nullptr;
  if (hwloc_topology_init(&topo) != 0) {
    throw std::runtime_error(absl::StrCat("hwloc_topology_init failed: ", std::strerror(errno)));
  }
  if (hwloc_topology_load(topo) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topo);
    throw std::runtime_error(absl::StrCat("hwloc_topology_load failed: ", std::strerror(err)));
  }
  topology_ = topo;
  summary_ = Summarize(topo);
}

Topology::Topology(const std::string& synthetic) {
  hwloc_topology_t topo = nullptr;
  if (hwloc_topology_init(&topo) != 0) {
    throw std::runtime_error(absl::StrCat("hwloc_topology_init failed: ", std::strerror(errno)));
  }
  if (hwloc_topology_set_synthetic(topo, synthetic.c_str()) != 0) {
    hwloc_topology_destroy(topo);
    throw std::runtime_error(absl::StrCat("invalid synthetic topology '", synthetic, "'"));
  }
  if (hwloc_topology_load(topo) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topo);
    throw std::runtime_error(absl::StrCat("hwloc_topology_load of synthetic '", synthetic,
                                          "' failed: ", std::strerror(err)));
  }
  topology_ = topo;
  summary_ = Summarize(topo);
}

Topology::~Topology() {
  if (topology_ != nullptr) hwloc_topology_destroy(Hw(topology_));
}

nlohmann::json Topology::SummaryJson() const {
  nlohmann::json nodes = nlohmann::json::array();
  for (const NodeInfo& n : summary_.nodes) {
    nodes.push_back({{"os_index", n.os_index},
                     {"cpus", n.cpus},
                     {"mem_available_bytes", n.mem_available}});
  }
  // The library that ran, not the headers compiled against: hwloc records it on the root.
  const char* version =
      hwloc_obj_get_info_by_name(hwloc_get_root_obj(Hw(topology_)), "hwlocVersion");
  return {{"packages", summary_.packages},
          {"cores", summary_.cores},
          {"pus", summary_.pus},
          {"nodes", std::move(nodes)},
          {"allowed_cpus", summary_.allowed_cpus},
          {"hwloc_version", version != nullptr ? version : HWLOC_VERSION}};
}

bool Topology::ExportXml(const std::string& path) const {
  errno = 0;
  if (hwloc_topology_export_xml(Hw(topology_), path.c_str(), 0) == 0) return true;
  // The libxml2 backend does not always leave errno set; the contract promises it is.
  if (errno == 0) errno = EIO;
  return false;
}

std::vector<int> Topology::CpusOfNode(int node) const {
  const NodeInfo* n = FindNode(summary_, node);
  if (n == nullptr) return {};
  std::vector<int> out;
  for (int cpu : n->cpus) {
    if (Contains(summary_.allowed_cpus, cpu)) out.push_back(cpu);
  }
  return out;
}

bool Topology::HasNode(int node) const { return FindNode(summary_, node) != nullptr; }

// Duplicates are dropped, keeping the first occurrence: ResolveRunCpus keeps the user's order
// (thread i runs on cpus[i % n]), and a repeated CPU would silently oversubscribe it.
std::optional<std::vector<int>> ParseCpuList(const std::string& text, std::string* error) {
  auto fail = [&](std::string message) -> std::optional<std::vector<int>> {
    if (error != nullptr) *error = std::move(message);
    return std::nullopt;
  };
  if (text.empty()) return fail("empty CPU list");

  // A whole token must be digits only: from_chars would accept a leading '-' and stop at junk.
  auto parse_number = [](std::string_view s, int* out) {
    if (s.empty() || s.size() > 9) return false;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
    }
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && ptr == s.data() + s.size();
  };

  std::vector<int> out;
  std::unordered_set<int> seen;
  std::string_view rest(text);
  while (true) {
    const std::size_t comma = rest.find(',');
    // std::string, not std::string_view: this abseil build's StrCat takes only absl::string_view.
    const std::string token(rest.substr(0, comma));
    if (token.empty()) return fail(absl::StrCat("empty item in CPU list '", text, "'"));

    int first = 0;
    int last = 0;
    const std::size_t dash = token.find('-');
    if (dash == std::string::npos) {
      if (!parse_number(token, &first)) return fail(absl::StrCat("bad CPU '", token, "'"));
      last = first;
    } else if (!parse_number(std::string_view(token).substr(0, dash), &first) ||
               !parse_number(std::string_view(token).substr(dash + 1), &last)) {
      return fail(absl::StrCat("bad CPU range '", token, "'"));
    } else if (last < first) {
      return fail(absl::StrCat("bad CPU range '", token, "' (end before start)"));
    }
    if (last > kMaxCpu) {
      return fail(absl::StrCat("CPU number out of range in '", token, "' (max ", kMaxCpu, ")"));
    }
    for (int cpu = first; cpu <= last; ++cpu) {
      if (seen.insert(cpu).second) out.push_back(cpu);
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

std::optional<std::vector<int>> ResolveRunCpus(const Topology& topology,
                                               const std::vector<int>& cpus,
                                               std::optional<int> node, std::string* error) {
  const TopologySummary& s = topology.summary();
  auto fail = [&](std::string message) -> std::optional<std::vector<int>> {
    if (error != nullptr) *error = std::move(message);
    return std::nullopt;
  };
  const NodeInfo* node_info = nullptr;
  if (node.has_value()) {
    node_info = FindNode(s, *node);
    if (node_info == nullptr) {
      return fail(absl::StrCat("NUMA node ", *node, " does not exist (nodes: ", NodeListText(s),
                               ")"));
    }
  }

  if (!cpus.empty()) {
    for (int cpu : cpus) {
      if (!Contains(s.allowed_cpus, cpu)) {
        return fail(absl::StrCat("CPU ", cpu, " is not in this process's allowed CPUs (",
                                 FormatCpuList(s.allowed_cpus), ")"));
      }
      if (node_info != nullptr && !Contains(node_info->cpus, cpu)) {
        return fail(absl::StrCat("CPU ", cpu, " is not on NUMA node ", *node, " (its CPUs: ",
                                 FormatCpuList(node_info->cpus), ")"));
      }
    }
    return cpus;
  }

  if (node_info != nullptr) {
    std::vector<int> local = topology.CpusOfNode(*node);
    if (local.empty()) {
      return fail(absl::StrCat("NUMA node ", *node,
                               " has no CPUs this process may run on (allowed: ",
                               FormatCpuList(s.allowed_cpus), ")"));
    }
    return local;
  }

  if (s.allowed_cpus.empty()) {
    return fail("this process has no allowed CPUs (sched_getaffinity failed)");
  }
  return s.allowed_cpus;
}

// Errors (return -1): EINVAL for a CPU outside the inherited mask (the kernel would let
// sched_setaffinity widen a taskset mask; pinning must not), ENOSYS for a topology that is not
// this machine (hwloc would report success and do nothing), hwloc's errno if the bind fails,
// and EAGAIN if the bind succeeded but the thread still runs elsewhere (a CPU went offline or
// another thread rebound this one in between).
int PinThisThread(const Topology& topology, int cpu) {
  hwloc_topology_t topo = Hw(topology.handle());
  if (!hwloc_topology_is_thissystem(topo)) {
    errno = ENOSYS;
    return -1;
  }
  if (cpu < 0 || !Contains(topology.summary().allowed_cpus, cpu)) {
    errno = EINVAL;
    return -1;
  }
  Bitmap set(hwloc_bitmap_alloc());
  if (!set) {
    errno = ENOMEM;
    return -1;
  }
  hwloc_bitmap_only(set.get(), static_cast<unsigned>(cpu));
  if (hwloc_set_cpubind(topo, set.get(), HWLOC_CPUBIND_THREAD | HWLOC_CPUBIND_STRICT) != 0) {
    return -1;
  }
  // sched_setaffinity on the calling thread migrates it before returning, so a mismatch here
  // is a real failure, not a race to wait out.
  const int now = sched_getcpu();
  if (now != cpu) {
    errno = EAGAIN;
    return -1;
  }
  return now;
}

bool BindArea(const Topology& topology, void* addr, std::size_t len, int node,
              std::string* error) {
  auto fail = [&](std::string message) {
    if (error != nullptr) *error = std::move(message);
    return false;
  };
  hwloc_topology_t topo = Hw(topology.handle());
  if (!hwloc_topology_is_thissystem(topo)) {
    return fail("cannot bind memory through a topology that is not this machine (synthetic?)");
  }
  if (!topology.HasNode(node)) {
    return fail(absl::StrCat("NUMA node ", node, " does not exist (nodes: ",
                             NodeListText(topology.summary()), ")"));
  }
  Bitmap nodeset(hwloc_bitmap_alloc());
  if (!nodeset) return fail("out of memory allocating a nodeset");
  hwloc_bitmap_only(nodeset.get(), static_cast<unsigned>(node));
  // On a one-node machine hwloc still issues mbind(MPOL_BIND, {0}) (checked with
  // get_mempolicy), so the bind is real there too, merely without effect on placement.
  if (hwloc_set_area_membind(topo, addr, len, nodeset.get(), HWLOC_MEMBIND_BIND,
                             HWLOC_MEMBIND_STRICT | HWLOC_MEMBIND_BYNODESET) != 0) {
    return fail(absl::StrCat("binding ", len, " bytes to NUMA node ", node,
                             " failed: ", std::strerror(errno)));
  }
  return true;
}

std::vector<int> PageNodes(void* addr, std::size_t len, std::size_t stride) {
  if (stride == 0 || len == 0) return {};
  const std::size_t count = (len + stride - 1) / stride;
  std::vector<void*> pages(count);
  for (std::size_t i = 0; i < count; ++i) pages[i] = static_cast<char*>(addr) + i * stride;
  std::vector<int> status(count, 0);
  // nodes == nullptr makes move_pages a query: nothing moves, status gets each page's node or
  // a negative errno (-ENOENT untouched, -EFAULT for the shared zero page or an unmapped address).
  if (move_pages(0, static_cast<unsigned long>(count), pages.data(), nullptr, status.data(), 0) !=
      0) {
    return {};
  }
  for (int& s : status) {
    if (s < 0) s = -1;
  }
  return status;
}

}  // namespace faultlab
