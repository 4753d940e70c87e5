#include "bench/numa_probe.h"

#include <linux/perf_event.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "bench/kernel_features.h"
#include "topology/kernel_files.h"

// From include/uapi/linux/mempolicy.h; Debian 12's numaif.h (libnuma 2.0.16) and kernel headers
// (6.1) predate MPOL_WEIGHTED_INTERLEAVE (Linux 6.9).
namespace {
constexpr int kMpolDefault = 0;
constexpr int kMpolPreferred = 1;
constexpr int kMpolBind = 2;
constexpr int kMpolInterleave = 3;
constexpr int kMpolLocal = 4;
constexpr int kMpolWeightedInterleave = 6;
constexpr unsigned kMpolFNode = 1u << 0;
constexpr unsigned kMpolFAddr = 1u << 1;
constexpr unsigned kMpolMfStrict = 1u << 0;
constexpr unsigned kMpolMfMove = 1u << 1;
}  // namespace

namespace faultlab {
namespace {

// Node masks of 1024 bits. The kernel's get_nodes() reads maxnode-1 bits, so maxnode is one
// more than the bits passed (as libnuma does); bits above MAX_NUMNODES must be (and are) zero.
constexpr std::size_t kMaskBits = 1024;
constexpr unsigned long kMaxNode = kMaskBits + 1;
constexpr std::size_t kLongBits = 8 * sizeof(unsigned long);
using NodeMask = std::array<unsigned long, kMaskBits / kLongBits>;

NodeMask MaskOf(const std::vector<int>& nodes) {
  NodeMask mask{};
  for (int node : nodes) {
    if (node >= 0 && static_cast<std::size_t>(node) < kMaskBits) {
      mask[static_cast<std::size_t>(node) / kLongBits] |= 1ul << (static_cast<std::size_t>(node) % kLongBits);
    }
  }
  return mask;
}

std::vector<int> NodesOf(const NodeMask& mask) {
  std::vector<int> nodes;
  for (std::size_t i = 0; i < kMaskBits; ++i) {
    if (mask[i / kLongBits] & (1ul << (i % kLongBits))) nodes.push_back(static_cast<int>(i));
  }
  return nodes;
}

std::string ListText(const std::vector<int>& ids) {
  if (ids.empty()) return "none";
  std::string out;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? absl::StrCat(ids[i]) : absl::StrCat(ids[i], "-", ids[j]);
    i = j + 1;
  }
  return out;
}

std::vector<int> ReadIdList(const std::string& path) {
  std::optional<std::string> text = ReadKernelFile(path);
  if (!text) return {};
  return ParseIdList(*text).value_or(std::vector<int>{});
}

long Mbind(void* addr, std::size_t len, int mode, const NodeMask* mask, unsigned flags) {
  return syscall(SYS_mbind, addr, len, mode, mask ? mask->data() : nullptr,
                 mask ? kMaxNode : 0ul, flags);
}

std::string NodesPart(const std::vector<int>& nodes) {
  return nodes.empty() ? "" : " nodes " + ListText(nodes);
}

}  // namespace

std::optional<std::vector<int>> ParseIdList(const std::string& text) {
  std::vector<int> ids;
  std::stringstream ranges(text);
  std::string range;
  while (std::getline(ranges, range, ',')) {
    if (range.empty()) continue;
    const std::size_t dash = range.find('-');
    char* end = nullptr;
    const long first = std::strtol(range.c_str(), &end, 10);
    if (end == range.c_str() || first < 0) return std::nullopt;
    long last = first;
    if (dash != std::string::npos) {
      const char* second = range.c_str() + dash + 1;
      last = std::strtol(second, &end, 10);
      if (end == second || last < first) return std::nullopt;
    }
    if (*end != '\0' && *end != '\n') return std::nullopt;
    for (long id = first; id <= last; ++id) ids.push_back(static_cast<int>(id));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

std::vector<int> NodesWithMemory() { return ReadIdList("/sys/devices/system/node/has_memory"); }
std::vector<int> NodesWithCpus() { return ReadIdList("/sys/devices/system/node/has_cpu"); }

std::vector<int> AllowedCpusOfNode(int node) {
  const std::vector<int> cpus =
      ReadIdList(absl::StrCat("/sys/devices/system/node/node", node, "/cpulist"));
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return {};
  std::vector<int> out;
  for (int cpu : cpus) {
    if (cpu < CPU_SETSIZE && CPU_ISSET(cpu, &allowed)) out.push_back(cpu);
  }
  return out;
}

int NodeOfCpu(int cpu) {
  std::error_code ec;
  const std::filesystem::path dir = absl::StrCat("/sys/devices/system/cpu/cpu", cpu);
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.rfind("node", 0) == 0 &&
        std::all_of(name.begin() + 4, name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::stoi(name.substr(4));
    }
  }
  // A kernel without NUMA has no such link: every CPU is on node 0.
  return ec ? -1 : (NodesWithMemory().empty() ? 0 : -1);
}

int FirstNodeWithoutMemory() {
  const std::vector<int> memory = NodesWithMemory();
  int node = 0;
  while (std::find(memory.begin(), memory.end(), node) != memory.end()) ++node;
  return node;
}

std::string WhyNotTwoMemoryNodes() {
  const std::size_t have = std::max<std::size_t>(1, NodesWithMemory().size());
  return absl::StrCat("needs a second NUMA node with memory; this machine has ", have);
}

std::vector<int> QueryPageNodes(const void* addr, std::size_t len, std::size_t stride,
                                std::string* error) {
  if (stride == 0 || len == 0) {
    *error = "nothing to query";
    return {};
  }
  const std::size_t count = (len + stride - 1) / stride;
  std::vector<void*> pages(count);
  for (std::size_t i = 0; i < count; ++i) {
    pages[i] = const_cast<char*>(static_cast<const char*>(addr)) + i * stride;
  }
  std::vector<int> status(count, 0);
  if (syscall(SYS_move_pages, 0, count, pages.data(), nullptr, status.data(), 0) != 0) {
    *error = absl::StrCat("move_pages query of ", count, " pages: ", ErrnoName(errno));
    return {};
  }
  return status;
}

std::map<int, std::size_t> CountByNode(const std::vector<int>& status) {
  std::map<int, std::size_t> counts;
  for (int s : status) ++counts[s];
  return counts;
}

std::string CheckAllOnNode(const void* addr, std::size_t len, std::size_t stride, int node,
                           std::map<int, std::size_t>* counts_out) {
  std::string error;
  const std::vector<int> status = QueryPageNodes(addr, len, stride, &error);
  if (status.empty()) return "premise: cannot query placement: " + error;
  const std::map<int, std::size_t> counts = CountByNode(status);
  if (counts_out) *counts_out = counts;
  if (node < 0) return {};
  int worst = node;
  std::size_t worst_count = 0;
  for (const auto& [where, n] : counts) {
    if (where != node && n > worst_count) {
      worst = where;
      worst_count = n;
    }
  }
  if (worst_count == 0) return {};
  const std::string place = worst == -ENOENT ? std::string("not present")
                            : worst < 0      ? absl::StrCat("unqueryable (", ErrnoName(-worst), ")")
                                             : absl::StrCat("on node ", worst);
  return absl::StrCat("premise: ", worst_count, " of ", status.size(), " pages ", place,
                      ", not ", node);
}

int NodeOfAddress(const void* addr, std::string* error) {
  int node = -1;
  if (syscall(SYS_get_mempolicy, &node, nullptr, 0ul, addr, kMpolFNode | kMpolFAddr) != 0) {
    *error = absl::StrCat("get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR): ", ErrnoName(errno));
    return -1;
  }
  return node;
}

const char* PolicyName(NumaPolicy policy) {
  switch (policy) {
    case NumaPolicy::kDefault: return "default";
    case NumaPolicy::kLocal: return "local";
    case NumaPolicy::kBind: return "bind";
    case NumaPolicy::kPreferred: return "preferred";
    case NumaPolicy::kInterleave: return "interleave";
    case NumaPolicy::kWeightedInterleave: return "weighted_interleave";
  }
  return "?";
}

int PolicyMode(NumaPolicy policy) {
  switch (policy) {
    case NumaPolicy::kDefault: return kMpolDefault;
    case NumaPolicy::kLocal: return kMpolLocal;
    case NumaPolicy::kBind: return kMpolBind;
    case NumaPolicy::kPreferred: return kMpolPreferred;
    case NumaPolicy::kInterleave: return kMpolInterleave;
    case NumaPolicy::kWeightedInterleave: return kMpolWeightedInterleave;
  }
  return -1;
}

std::optional<std::string> WhyPolicyUnavailable(NumaPolicy policy) {
  static std::mutex mutex;
  static std::map<NumaPolicy, std::optional<std::string>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(policy); it != cache.end()) return it->second;
  std::optional<std::string> why;
  const long page = sysconf(_SC_PAGESIZE);
  void* p = mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    why = absl::StrCat("mmap for the policy probe: ", ErrnoName(errno));
  } else {
    std::vector<int> nodes = NodesWithMemory();
    if (nodes.empty()) nodes = {0};
    const bool takes_nodes = policy != NumaPolicy::kDefault && policy != NumaPolicy::kLocal;
    const std::string error = SetRangePolicy(p, static_cast<std::size_t>(page), policy,
                                             takes_nodes ? nodes : std::vector<int>{});
    if (!error.empty()) {
      why = policy == NumaPolicy::kWeightedInterleave
                ? "MPOL_WEIGHTED_INTERLEAVE refused (needs Linux 6.9+): " + error
                : "the kernel refuses " + std::string(PolicyName(policy)) + ": " + error;
    }
    munmap(p, static_cast<std::size_t>(page));
  }
  cache[policy] = why;
  return why;
}

std::string SetRangePolicy(void* addr, std::size_t len, NumaPolicy policy,
                           const std::vector<int>& nodes, unsigned flags) {
  const NodeMask mask = MaskOf(nodes);
  if (Mbind(addr, len, PolicyMode(policy), nodes.empty() ? nullptr : &mask, flags) != 0) {
    return absl::StrCat("mbind(", PolicyName(policy), NodesPart(nodes), "): ", ErrnoName(errno));
  }
  return {};
}

std::string SetThreadPolicy(NumaPolicy policy, const std::vector<int>& nodes) {
  const NodeMask mask = MaskOf(nodes);
  if (syscall(SYS_set_mempolicy, PolicyMode(policy), nodes.empty() ? nullptr : mask.data(),
              nodes.empty() ? 0ul : kMaxNode) != 0) {
    return absl::StrCat("set_mempolicy(", PolicyName(policy), NodesPart(nodes),
                        "): ", ErrnoName(errno));
  }
  return {};
}

ThreadPolicy GetThreadPolicy() {
  ThreadPolicy result;
  NodeMask mask{};
  int mode = -1;
  if (syscall(SYS_get_mempolicy, &mode, mask.data(), kMaxNode, nullptr, 0ul) != 0) {
    result.error = absl::StrCat("get_mempolicy: ", ErrnoName(errno));
    return result;
  }
  result.mode = mode;
  result.nodes = NodesOf(mask);
  return result;
}

ScopedThreadPolicy::ScopedThreadPolicy(NumaPolicy policy, const std::vector<int>& nodes) {
  saved_ = GetThreadPolicy();
  if (!saved_.error.empty()) {
    error_ = saved_.error;
    return;
  }
  error_ = SetThreadPolicy(policy, nodes);
}

ScopedThreadPolicy::~ScopedThreadPolicy() {
  if (!saved_.error.empty()) return;
  // The mode as get_mempolicy gave it, mode flags included; default and local take no nodes.
  const int base_mode = saved_.mode & 0xff;
  const bool no_nodes = base_mode == kMpolDefault || base_mode == kMpolLocal;
  const NodeMask mask = MaskOf(saved_.nodes);
  syscall(SYS_set_mempolicy, saved_.mode, no_nodes ? nullptr : mask.data(),
          no_nodes ? 0ul : kMaxNode);
}

std::vector<int> InterleaveWeights(const std::vector<int>& nodes) {
  std::vector<int> weights;
  for (int node : nodes) {
    const std::optional<long> w = ReadKernelLong(
        absl::StrCat("/sys/kernel/mm/mempolicy/weighted_interleave/node", node));
    weights.push_back(w && *w > 0 ? static_cast<int>(*w) : 1);
  }
  return weights;
}

std::vector<double> InterleaveShares(std::size_t pages, const std::vector<int>& weights) {
  double total = 0;
  for (int w : weights) total += w;
  std::vector<double> shares;
  for (int w : weights) shares.push_back(total > 0 ? static_cast<double>(pages) * w / total : 0);
  return shares;
}

std::string CheckInterleaved(const std::map<int, std::size_t>& counts, std::size_t pages,
                             const std::vector<int>& nodes, const std::vector<int>& weights) {
  const std::vector<double> shares = InterleaveShares(pages, weights);
  std::size_t accounted = 0;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const auto it = counts.find(nodes[i]);
    const std::size_t got = it == counts.end() ? 0 : it->second;
    accounted += got;
    if (std::abs(static_cast<double>(got) - shares[i]) > weights[i]) {
      return absl::StrCat("premise: node ", nodes[i], " got ", got, " of ", pages,
                          " pages, expected ", std::lround(shares[i]), " (interleave over ",
                          ListText(nodes), ")");
    }
  }
  if (accounted != pages) {
    return absl::StrCat("premise: ", pages - accounted, " of ", pages,
                        " pages not on the interleaved nodes ", ListText(nodes));
  }
  return {};
}

std::string MovePagesTo(void* const* pages, std::size_t count, int node, int* status) {
  std::vector<int> nodes(count, node);
  const long rc = syscall(SYS_move_pages, 0, count, pages, nodes.data(), status, kMpolMfMove);
  if (rc < 0) {
    const int error = errno;
    std::string why = absl::StrCat("move_pages to node ", node, ": ", ErrnoName(error));
    if (error == ENODEV) {
      absl::StrAppend(&why, " (no node ", node, " with memory; nodes with memory: ",
                      ListText(NodesWithMemory()), ")");
    }
    return why;
  }
  std::size_t wrong = 0, first = count;
  for (std::size_t i = 0; i < count; ++i) {
    if (status[i] != node) {
      if (first == count) first = i;
      ++wrong;
    }
  }
  if (wrong == 0) return {};
  const int s = status[first];
  return absl::StrCat("move_pages to node ", node, ": ", wrong, " of ", count,
                      " pages not moved (first: page ", first, ", ",
                      s < 0 ? ErrnoName(-s) : absl::StrCat("on node ", s), ")");
}

std::string MoveRangeTo(void* addr, std::size_t len, std::size_t stride, int node,
                        std::size_t batch) {
  if (stride == 0 || batch == 0) return "move: stride and batch must be positive";
  const std::size_t count = (len + stride - 1) / stride;
  std::vector<void*> pages(count);
  for (std::size_t i = 0; i < count; ++i) pages[i] = static_cast<char*>(addr) + i * stride;
  std::vector<int> status(count);
  for (std::size_t i = 0; i < count; i += batch) {
    const std::size_t n = std::min(batch, count - i);
    if (std::string error = MovePagesTo(pages.data() + i, n, node, status.data() + i);
        !error.empty()) {
      return error;
    }
  }
  return {};
}

std::string MbindMoveTo(void* addr, std::size_t len, int node) {
  const NodeMask mask = MaskOf({node});
  if (Mbind(addr, len, kMpolBind, &mask, kMpolMfMove | kMpolMfStrict) != 0) {
    return absl::StrCat("mbind(bind node ", node, ", MPOL_MF_MOVE|MPOL_MF_STRICT): ",
                        ErrnoName(errno));
  }
  return {};
}

std::string MigrateProcessPages(int from, int to, long* not_moved) {
  const NodeMask old_nodes = MaskOf({from});
  const NodeMask new_nodes = MaskOf({to});
  const long rc = syscall(SYS_migrate_pages, 0, kMaxNode, old_nodes.data(), new_nodes.data());
  if (rc < 0) {
    return absl::StrCat("migrate_pages from node ", from, " to ", to, ": ", ErrnoName(errno));
  }
  if (not_moved) *not_moved = rc;
  return {};
}

long ProcessPagesOnNode(int node) {
  std::ifstream in("/proc/self/numa_maps");
  if (!in) return -1;
  const std::string key = absl::StrCat("N", node, "=");
  long pages = 0;
  for (std::string line; std::getline(in, line);) {
    long count = 0, page_kb = 4;
    std::stringstream words(line);
    for (std::string word; words >> word;) {
      if (word.rfind(key, 0) == 0) count = std::atol(word.c_str() + key.size());
      if (word.rfind("kernelpagesize_kB=", 0) == 0) page_kb = std::atol(word.c_str() + 18);
    }
    pages += count * std::max(1l, page_kb / 4);
  }
  return pages;
}

std::optional<NumaVmstat> ReadNumaVmstat() {
  std::ifstream in("/proc/vmstat");
  if (!in) return std::nullopt;
  NumaVmstat v;
  bool found = false;
  std::string name;
  long value = 0;
  while (in >> name >> value) {
    if (name == "numa_hint_faults") {
      v.hint_faults = value;
      found = true;
    } else if (name == "numa_hint_faults_local") {
      v.hint_faults_local = value;
    } else if (name == "numa_pages_migrated") {
      v.pages_migrated = value;
    } else if (name == "numa_pte_updates") {
      v.pte_updates = value;
    }
  }
  if (!found) return std::nullopt;
  return v;
}

long ThreadNumaPagesMigrated() {
  std::ifstream in("/proc/thread-self/sched");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("numa_pages_migrated", 0) != 0) continue;
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) return -1;
    return std::atol(line.c_str() + colon + 1);
  }
  return -1;
}

std::string NumaScanKnobsText() {
  static const char* const kKnobs[] = {"scan_delay_ms", "scan_period_min_ms",
                                       "scan_period_max_ms", "scan_size_mb"};
  for (const std::string dir :
       {"/proc/sys/kernel/numa_balancing_", "/sys/kernel/debug/sched/numa_balancing/"}) {
    std::string text;
    for (const char* knob : kKnobs) {
      const std::optional<std::string> value = ReadKernelFile(dir + knob);
      if (!value) {
        text.clear();
        break;
      }
      absl::StrAppend(&text, text.empty() ? "" : ",", knob, ":", *value);
    }
    if (!text.empty()) return text;
  }
  return "unreadable";
}

MinorFaultSampler::MinorFaultSampler(std::size_t capacity) {
  perf_event_attr attr{};
  attr.size = sizeof(attr);
  attr.type = PERF_TYPE_SOFTWARE;
  attr.config = PERF_COUNT_SW_PAGE_FAULTS_MIN;
  attr.sample_period = 1;
  attr.sample_type = PERF_SAMPLE_ADDR;
  // User-mode faults only: the accesses measured are the loop's own. It also keeps the event
  // open to anyone at perf_event_paranoid=2.
  attr.exclude_kernel = 1;
  attr.exclude_hv = 1;
  fd_ = static_cast<int>(syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
  if (fd_ < 0) {
    error_ = absl::StrCat("perf_event_open of minor faults with their addresses: ",
                          ErrnoName(errno));
    return;
  }
  // A sample is its header and the address: 16 bytes. The data area is a power of two of pages,
  // with a quarter to spare.
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  std::size_t data = page;
  while (data < capacity * 20) data *= 2;
  ring_bytes_ = page + data;
  ring_ = mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (ring_ == MAP_FAILED) {
    ring_ = nullptr;
    error_ = absl::StrCat("mmap of the perf ring (", ring_bytes_ / 1024,
                          " KiB): ", ErrnoName(errno));
    close(fd_);
    fd_ = -1;
    return;
  }
  data_bytes_ = data;
}

MinorFaultSampler::~MinorFaultSampler() {
  if (ring_) munmap(ring_, ring_bytes_);
  if (fd_ >= 0) close(fd_);
}

void MinorFaultSampler::Drain(std::vector<uint64_t>* addresses) {
  if (fd_ < 0) return;
  auto* meta = static_cast<perf_event_mmap_page*>(ring_);
  const std::size_t page = ring_bytes_ - data_bytes_;
  const char* data =
      static_cast<const char*>(ring_) + (meta->data_offset ? meta->data_offset : page);
  const std::size_t size = meta->data_size ? meta->data_size : data_bytes_;
  // Records may wrap around the end of the data area.
  auto copy = [&](uint64_t at, void* out, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) static_cast<char*>(out)[i] = data[(at + i) % size];
  };
  const uint64_t head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
  uint64_t tail = meta->data_tail;
  while (tail + sizeof(perf_event_header) <= head) {
    perf_event_header header;
    copy(tail, &header, sizeof(header));
    if (header.size < sizeof(header) || tail + header.size > head) break;
    if (header.type == PERF_RECORD_SAMPLE) {
      uint64_t addr = 0;
      copy(tail + sizeof(header), &addr, sizeof(addr));
      addresses->push_back(addr);
    } else if (header.type == PERF_RECORD_LOST) {
      uint64_t id_and_lost[2] = {0, 0};
      copy(tail + sizeof(header), id_and_lost, sizeof(id_and_lost));
      lost_ += id_and_lost[1];
    }
    tail += header.size;
  }
  __atomic_store_n(&meta->data_tail, tail, __ATOMIC_RELEASE);
}

}  // namespace faultlab
