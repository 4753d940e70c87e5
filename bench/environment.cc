#include "bench/environment.h"
#include "topology/kernel_files.h"

#include <dirent.h>
#include <dlfcn.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/kernel_features.h"
#include "bench/suite.h"
#include "bench/uffd_uapi.h"
#include "build_info.h"

namespace faultlab {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Reading /proc and /sys.

// nlohmann::json throws when dumping invalid UTF-8, and a result file must always be writable:
// anything outside printable ASCII (a DMI string, a hostname) becomes '?'.
std::string Printable(std::string text) {
  for (char& c : text) {
    auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\n' && c != '\t') || byte >= 0x7f) c = '?';
  }
  return text;
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return Printable(buffer.str());
}

std::optional<std::string> ReadTrimmed(const std::string& path) {
  std::optional<std::string> text = ReadFile(path);
  if (!text) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(*text));
}

std::optional<long long> ParseLong(const std::string& text) {
  long long value = 0;
  if (!absl::SimpleAtoi(text, &value)) return std::nullopt;
  return value;
}

// The file's text, or null when it cannot be read.
json TextOrNull(const std::string& path) {
  std::optional<std::string> text = ReadTrimmed(path);
  return text ? json(*text) : json(nullptr);
}

// The file's integer, or null when it cannot be read or is not a number.
json LongOrNull(const std::string& path) {
  std::optional<std::string> text = ReadTrimmed(path);
  if (!text) return nullptr;
  std::optional<long long> value = ParseLong(*text);
  return value ? json(*value) : json(nullptr);
}

// "always [madvise] never" -> "madvise", or null when the file cannot be read.
json SelectedOrNull(const std::string& path) {
  std::optional<std::string> text = ReadTrimmed(path);
  return text ? json(SelectedChoice(*text)) : json(nullptr);
}

bool PathExists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) return names;
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

// Runs a shell command and returns its stdout, or nullopt if it failed.
std::optional<std::string> RunCommand(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return std::nullopt;
  std::string output;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  int status = pclose(pipe);
  if (status != 0) return std::nullopt;
  return Printable(output);
}

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

// "Key:   value kB" lines of /proc/meminfo, in kB.
std::map<std::string, long long> ReadMeminfo() {
  std::map<std::string, long long> values;
  std::optional<std::string> text = ReadFile("/proc/meminfo");
  if (!text) return values;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits(':', 1));
    std::vector<absl::string_view> words =
        absl::StrSplit(absl::StripAsciiWhitespace(kv.second), ' ', absl::SkipEmpty());
    long long value = 0;
    if (!words.empty() && absl::SimpleAtoi(words[0], &value)) values[std::string(kv.first)] = value;
  }
  return values;
}

json MeminfoOrNull(const std::map<std::string, long long>& meminfo, const std::string& key) {
  auto it = meminfo.find(key);
  return it == meminfo.end() ? json(nullptr) : json(it->second);
}

// Counts the entries of a list like "0", "0-1" or "0,2-3" (sysfs cpu and node lists).
int CountList(const std::string& list) {
  int count = 0;
  for (absl::string_view range : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> ends =
        absl::StrSplit(range, absl::MaxSplits('-', 1));
    int first = 0;
    int last = 0;
    if (!absl::SimpleAtoi(ends.first, &first)) continue;
    if (ends.second.empty() || !absl::SimpleAtoi(ends.second, &last)) last = first;
    count += last - first + 1;
  }
  return count;
}

// Runs one part of the capture; a part that throws is recorded, never propagated.
template <typename Fn>
json Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::StrCat("unavailable: ", e.what());
  } catch (...) {
    return "unavailable: unknown error";
  }
}

// ---------------------------------------------------------------------------------------------
// The parts of the record.

// Kernel command-line parameters that change fault cost or what a benchmark gets.
constexpr const char* kBootParams[] = {
    "init_on_alloc",
    "init_on_free",
    "transparent_hugepage",
    "transparent_hugepage_shmem",
    "thp_anon",
    "hugepages",
    "hugepagesz",
    "default_hugepagesz",
    "hugetlb_free_vmemmap",
    "mitigations",
    "pti",
    "nopti",
    "numa_balancing",
    "numa",
    "page_table_check",
    "debug_pagealloc",
    "page_owner",
    "page_poison",
    "slub_debug",
    "nohz_full",
    "isolcpus",
    "kasan",
    "damon_reclaim.enabled",
    "lru_gen.enabled",
    "zswap.enabled",
    "cgroup_no_v1",
};

json BootParams(const std::string& cmdline) {
  json params = json::object();
  for (absl::string_view word : absl::StrSplit(cmdline, ' ', absl::SkipEmpty())) {
    // Everything after "--" is for init, not the kernel.
    if (word == "--") break;
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(word, absl::MaxSplits('=', 1));
    for (const char* name : kBootParams) {
      if (kv.first == name) {
        params[std::string(kv.first)] =
            absl::StrContains(word, '=') ? json(std::string(kv.second)) : json(true);
      }
    }
  }
  return params;
}

json CaptureKernel() {
  json kernel = json::object();
  utsname names{};
  if (uname(&names) == 0) {
    kernel["release"] = Printable(names.release);
    kernel["version"] = Printable(names.version);
    kernel["machine"] = Printable(names.machine);
  } else {
    kernel["release"] = nullptr;
    kernel["version"] = nullptr;
    kernel["machine"] = nullptr;
  }
  json cmdline = TextOrNull("/proc/cmdline");
  kernel["cmdline"] = cmdline;
  kernel["boot_params"] =
      cmdline.is_string() ? BootParams(cmdline.get<std::string>()) : json::object();
  return kernel;
}

// Options that change what a fault costs, or whether a case can run at all.
constexpr const char* kConfigOptions[] = {
    "CONFIG_TRANSPARENT_HUGEPAGE",
    "CONFIG_HUGETLBFS",
    "CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP",
    "CONFIG_USERFAULTFD",
    "CONFIG_HAVE_ARCH_USERFAULTFD_WP",
    "CONFIG_HAVE_ARCH_USERFAULTFD_MINOR",
    "CONFIG_PTE_MARKER_UFFD_WP",
    "CONFIG_NUMA",
    "CONFIG_NUMA_BALANCING",
    "CONFIG_NUMA_BALANCING_DEFAULT_ENABLED",
    "CONFIG_MIGRATION",
    "CONFIG_COMPACTION",
    "CONFIG_PER_VMA_LOCK",
    "CONFIG_SPLIT_PTE_PTLOCKS",
    "CONFIG_PGTABLE_LEVELS",
    "CONFIG_X86_5LEVEL",
    "CONFIG_MEMCG",
    "CONFIG_LRU_GEN",
    "CONFIG_LRU_GEN_ENABLED",
    "CONFIG_ZSWAP",
    "CONFIG_KSM",
    "CONFIG_MEM_SOFT_DIRTY",
    "CONFIG_SHMEM",
    "CONFIG_HZ",
    // Entry/exit and TLB costs every fault pays.
    "CONFIG_MITIGATION_PAGE_TABLE_ISOLATION",
    "CONFIG_PAGE_TABLE_ISOLATION",
    "CONFIG_PARAVIRT",
    // Debugging that slows fault paths down.
    "CONFIG_DEBUG_VM",
    "CONFIG_LOCKDEP",
    "CONFIG_PROVE_LOCKING",
    "CONFIG_DEBUG_ATOMIC_SLEEP",
    "CONFIG_KASAN",
    "CONFIG_KMSAN",
    "CONFIG_KCSAN",
    "CONFIG_KFENCE",
    "CONFIG_DEBUG_PAGEALLOC",
    "CONFIG_DEBUG_PAGEALLOC_ENABLE_DEFAULT",
    "CONFIG_PAGE_TABLE_CHECK",
    "CONFIG_PAGE_TABLE_CHECK_ENFORCED",
    "CONFIG_PAGE_OWNER",
    "CONFIG_PAGE_POISONING",
    "CONFIG_SLUB_DEBUG_ON",
    "CONFIG_INIT_ON_ALLOC_DEFAULT_ON",
    "CONFIG_INIT_ON_FREE_DEFAULT_ON",
};
// Families recorded whole: the preemption model, the tick, DAMON.
constexpr const char* kConfigPrefixes[] = {"CONFIG_PREEMPT", "CONFIG_HZ_", "CONFIG_NO_HZ",
                                           "CONFIG_DAMON", "CONFIG_TRANSPARENT_HUGEPAGE_"};

// The kernel's config text: /proc/config.gz (CONFIG_IKCONFIG_PROC) through zcat, which saves
// linking zlib for one file, else the distribution's /boot/config-<release>.
std::pair<std::optional<std::string>, std::string> ReadKernelConfigText(
    const std::string& release) {
  if (PathExists("/proc/config.gz")) {
    std::optional<std::string> text = RunCommand("zcat /proc/config.gz 2>/dev/null");
    if (text) return {text, "/proc/config.gz"};
  }
  std::string boot = "/boot/config-" + release;
  std::optional<std::string> text = ReadFile(boot);
  if (text) return {text, boot};
  return {std::nullopt, "unavailable: neither /proc/config.gz (zcat) nor " + boot + " is readable"};
}

json CaptureKernelConfig(const std::string& release) {
  json config = json::object();
  auto [text, source] = ReadKernelConfigText(release);
  config["source"] = source;
  if (!text) return config;
  // An option missing from the config does not exist in this kernel (or its dependencies are
  // off): null, unlike "n", which the config states.
  for (const char* name : kConfigOptions) config[name] = nullptr;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::string name;
    std::string value;
    if (absl::ConsumePrefix(&line, "# ") && absl::ConsumeSuffix(&line, " is not set")) {
      name = std::string(line);
      value = "n";
    } else if (absl::StartsWith(line, "CONFIG_")) {
      std::pair<absl::string_view, absl::string_view> kv =
          absl::StrSplit(line, absl::MaxSplits('=', 1));
      name = std::string(kv.first);
      absl::string_view raw = kv.second;
      if (raw.size() >= 2 && raw.front() == '"' && raw.back() == '"')
        raw = raw.substr(1, raw.size() - 2);
      value = std::string(raw);
    } else {
      continue;
    }
    bool wanted = config.contains(name);
    for (const char* prefix : kConfigPrefixes) wanted = wanted || absl::StartsWith(name, prefix);
    if (wanted) config[name] = value;
  }
  return config;
}

// init_on_alloc/init_on_free: the boot parameter wins over the config default.
void AddMemoryInit(const json& config, json& kernel) {
  for (const char* what : {"init_on_alloc", "init_on_free"}) {
    std::string option = absl::StrCat("CONFIG_", absl::AsciiStrToUpper(what), "_DEFAULT_ON");
    json params = kernel.value("boot_params", json::object());
    if (params.contains(what) && params[what].is_string()) {
      std::string value = params[what].get<std::string>();
      kernel[what] = value == "1" || value == "on" || value == "y";
      kernel[absl::StrCat(what, "_source")] = absl::StrCat("cmdline ", what, "=", value);
    } else if (config.contains(option) && config[option].is_string()) {
      kernel[what] = config[option] == "y";
      kernel[absl::StrCat(what, "_source")] =
          absl::StrCat(option, "=", config[option].get<std::string>());
    } else {
      kernel[what] = nullptr;
      kernel[absl::StrCat(what, "_source")] = "unavailable: no boot parameter and no kernel config";
    }
  }
}

json CaptureThp() {
  const std::string base = "/sys/kernel/mm/transparent_hugepage";
  json thp = json::object();
  thp["enabled"] = SelectedOrNull(base + "/enabled");
  thp["defrag"] = SelectedOrNull(base + "/defrag");
  thp["use_zero_page"] = LongOrNull(base + "/use_zero_page");
  thp["shmem_enabled"] = SelectedOrNull(base + "/shmem_enabled");
  thp["khugepaged_defrag"] = LongOrNull(base + "/khugepaged/defrag");
  thp["hpage_pmd_size"] = LongOrNull(base + "/hpage_pmd_size");
  // mTHP (Linux 6.8+): one directory per anonymous folio size, each with its own policy.
  json sizes = json::object();
  for (const std::string& name : ListDir(base)) {
    std::string_view size = name;
    if (!size.starts_with("hugepages-")) continue;
    size.remove_prefix(std::string_view("hugepages-").size());
    sizes[std::string(size)] = {
        {"enabled", SelectedOrNull(absl::StrCat(base, "/", name, "/enabled"))},
        {"shmem_enabled", SelectedOrNull(absl::StrCat(base, "/", name, "/shmem_enabled"))},
    };
  }
  thp["mthp"] = sizes;
  return thp;
}

json CaptureHugetlb() {
  json hugetlb = json::object();
  const std::string base = "/sys/kernel/mm/hugepages";
  std::vector<std::string> nodes;
  for (const std::string& name : ListDir("/sys/devices/system/node")) {
    if (name.size() > 4 && name.starts_with("node")) nodes.push_back(name.substr(4));
  }
  for (const std::string& dir : ListDir(base)) {
    if (!dir.starts_with("hugepages-")) continue;
    std::string size = dir.substr(std::string_view("hugepages-").size());  // "2048kB"
    std::string path = base + "/" + dir;
    json entry = {
        {"nr", LongOrNull(path + "/nr_hugepages")},
        {"free", LongOrNull(path + "/free_hugepages")},
        {"surplus", LongOrNull(path + "/surplus_hugepages")},
        {"resv", LongOrNull(path + "/resv_hugepages")},
        {"overcommit", LongOrNull(path + "/nr_overcommit_hugepages")},
    };
    json per_node = json::object();
    for (const std::string& node : nodes) {
      std::string node_path =
          absl::StrCat("/sys/devices/system/node/node", node, "/hugepages/", dir);
      if (!PathExists(node_path)) continue;
      // Reservations are global only: the per-node directories have no resv_hugepages.
      per_node[node] = {
          {"nr", LongOrNull(node_path + "/nr_hugepages")},
          {"free", LongOrNull(node_path + "/free_hugepages")},
          {"surplus", LongOrNull(node_path + "/surplus_hugepages")},
      };
    }
    entry["nodes"] = per_node;
    hugetlb[size] = entry;
  }
  return hugetlb;
}

json CaptureNuma() {
  json numa = json::object();
  json online = TextOrNull("/sys/devices/system/node/online");
  json with_memory = TextOrNull("/sys/devices/system/node/has_memory");
  numa["online"] = online;
  numa["has_memory"] = with_memory;
  numa["nodes_with_memory"] =
      with_memory.is_string() ? json(CountList(with_memory.get<std::string>())) : json(nullptr);
  // The SLIT distances, node -> its row ("10 20 30"): on more than one node they say which
  // memory is far (a CXL-like memory-only node), which placement results depend on.
  json distances = json::object();
  for (const std::string& name : ListDir("/sys/devices/system/node")) {
    if (!absl::StartsWith(name, "node") || name.size() == 4 ||
        !std::all_of(name.begin() + 4, name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    json row = TextOrNull("/sys/devices/system/node/" + name + "/distance");
    if (row.is_string()) distances[name.substr(4)] = row;
  }
  numa["distances"] = distances;
  return numa;
}

json CaptureVm() {
  return {
      {"overcommit_memory", LongOrNull("/proc/sys/vm/overcommit_memory")},
      {"max_map_count", LongOrNull("/proc/sys/vm/max_map_count")},
      {"zone_reclaim_mode", LongOrNull("/proc/sys/vm/zone_reclaim_mode")},
      {"swappiness", LongOrNull("/proc/sys/vm/swappiness")},
      {"compaction_proactiveness", LongOrNull("/proc/sys/vm/compaction_proactiveness")},
  };
}

struct NamedBit {
  unsigned bit;
  const char* name;
};

constexpr NamedBit kUffdFeatures[] = {
    {__builtin_ctz(UFFD_FEATURE_PAGEFAULT_FLAG_WP), "PAGEFAULT_FLAG_WP"},
    {__builtin_ctz(UFFD_FEATURE_EVENT_FORK), "EVENT_FORK"},
    {__builtin_ctz(UFFD_FEATURE_EVENT_REMAP), "EVENT_REMAP"},
    {__builtin_ctz(UFFD_FEATURE_EVENT_REMOVE), "EVENT_REMOVE"},
    {__builtin_ctz(UFFD_FEATURE_MISSING_HUGETLBFS), "MISSING_HUGETLBFS"},
    {__builtin_ctz(UFFD_FEATURE_MISSING_SHMEM), "MISSING_SHMEM"},
    {__builtin_ctz(UFFD_FEATURE_EVENT_UNMAP), "EVENT_UNMAP"},
    {__builtin_ctz(UFFD_FEATURE_SIGBUS), "SIGBUS"},
    {__builtin_ctz(UFFD_FEATURE_THREAD_ID), "THREAD_ID"},
    {__builtin_ctz(UFFD_FEATURE_MINOR_HUGETLBFS), "MINOR_HUGETLBFS"},
    {__builtin_ctz(UFFD_FEATURE_MINOR_SHMEM), "MINOR_SHMEM"},
    {__builtin_ctz(UFFD_FEATURE_EXACT_ADDRESS), "EXACT_ADDRESS"},
    {__builtin_ctz(UFFD_FEATURE_WP_HUGETLBFS_SHMEM), "WP_HUGETLBFS_SHMEM"},
    {__builtin_ctz(UFFD_FEATURE_WP_UNPOPULATED), "WP_UNPOPULATED"},
    {__builtin_ctz(UFFD_FEATURE_POISON), "POISON"},
    {__builtin_ctz(UFFD_FEATURE_WP_ASYNC), "WP_ASYNC"},
    {__builtin_ctz(UFFD_FEATURE_MOVE), "MOVE"},
};

constexpr NamedBit kUffdIoctls[] = {
    {_UFFDIO_REGISTER, "REGISTER"},
    {_UFFDIO_UNREGISTER, "UNREGISTER"},
    {_UFFDIO_WAKE, "WAKE"},
    {_UFFDIO_COPY, "COPY"},
    {_UFFDIO_ZEROPAGE, "ZEROPAGE"},
    {_UFFDIO_MOVE, "MOVE"},
    {_UFFDIO_WRITEPROTECT, "WRITEPROTECT"},
    {_UFFDIO_CONTINUE, "CONTINUE"},
    {_UFFDIO_POISON, "POISON"},
    {_UFFDIO_API, "API"},
};

// Names the set bits; a bit this build does not know is kept as "bit N" so nothing is hidden.
template <std::size_t N>
json DecodeBits(unsigned long long bits, const NamedBit (&names)[N]) {
  json decoded = json::array();
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((bits >> bit & 1) == 0) continue;
    const char* name = nullptr;
    for (const NamedBit& named : names) {
      if (named.bit == bit) name = named.name;
    }
    decoded.push_back(name != nullptr ? std::string(name) : absl::StrCat("bit ", bit));
  }
  return decoded;
}

json CaptureUserfaultfd() {
  json uffd = json::object();
  uffd["unprivileged_userfaultfd"] = LongOrNull("/proc/sys/vm/unprivileged_userfaultfd");
  struct stat st {};
  if (stat("/dev/userfaultfd", &st) == 0) {
    uffd["dev_userfaultfd"] = {{"present", true},
                               {"mode", absl::StrFormat("%04o", st.st_mode & 07777)}};
  } else {
    uffd["dev_userfaultfd"] = {{"present", false}, {"mode", nullptr}};
  }
  UffdApi api = ProbeUffdApi();
  if (api.error.empty()) {
    uffd["api_features"] = absl::StrFormat("0x%llx", api.features);
    uffd["api_ioctls"] = absl::StrFormat("0x%llx", api.ioctls);
    uffd["features"] = DecodeBits(api.features, kUffdFeatures);
    uffd["ioctls"] = DecodeBits(api.ioctls, kUffdIoctls);
    uffd["api_error"] = nullptr;
  } else {
    uffd["api_features"] = nullptr;
    uffd["api_ioctls"] = nullptr;
    uffd["features"] = json::array();
    uffd["ioctls"] = json::array();
    uffd["api_error"] = api.error;
  }
  return uffd;
}

// Fields of the first processor in /proc/cpuinfo; every CPU of a machine this runs on is the same.
std::map<std::string, std::string> FirstCpuinfo() {
  std::map<std::string, std::string> fields;
  std::optional<std::string> text = ReadFile("/proc/cpuinfo");
  if (!text) return fields;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (line.empty()) break;
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits(':', 1));
    fields[std::string(absl::StripAsciiWhitespace(kv.first))] =
        std::string(absl::StripAsciiWhitespace(kv.second));
  }
  return fields;
}

// CPU flags that change fault or TLB cost: PCID/INVPCID and PTI decide what a kernel entry and a
// TLB flush cost, INVLPGB is AMD's broadcast flush, ERMS/FSRM the speed of clear_page and
// copy_page, pdpe1gb whether 1 GiB pages exist.
constexpr const char* kCpuFlags[] = {"pcid", "invpcid", "pti",       "invlpgb", "erms",
                                     "fsrm", "pdpe1gb", "pse",       "la57",    "smep",
                                     "smap", "pku",     "hypervisor"};

json OrNull(const std::map<std::string, std::string>& fields, const std::string& key) {
  auto it = fields.find(key);
  return it == fields.end() ? json(nullptr) : json(it->second);
}

json CaptureCpu(const std::map<std::string, std::string>& cpuinfo) {
  json cpu = json::object();
  cpu["model_name"] = OrNull(cpuinfo, "model name");
  cpu["vendor"] = OrNull(cpuinfo, "vendor_id");
  cpu["family"] = OrNull(cpuinfo, "cpu family");
  cpu["model"] = OrNull(cpuinfo, "model");
  cpu["stepping"] = OrNull(cpuinfo, "stepping");
  cpu["microcode"] = OrNull(cpuinfo, "microcode");
  std::set<std::string> flags;
  if (auto it = cpuinfo.find("flags"); it != cpuinfo.end()) {
    for (absl::string_view flag : absl::StrSplit(it->second, ' ', absl::SkipEmpty())) {
      flags.insert(std::string(flag));
    }
  }
  json selected = json::object();
  for (const char* flag : kCpuFlags) selected[flag] = flags.count(flag) > 0;
  cpu["flags"] = flags.empty() ? json(nullptr) : selected;
  cpu["meltdown"] = TextOrNull("/sys/devices/system/cpu/vulnerabilities/meltdown");
  json online = TextOrNull("/sys/devices/system/cpu/online");
  cpu["online_list"] = online;
  cpu["online"] = online.is_string() ? json(CountList(online.get<std::string>())) : json(nullptr);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    cpu["allowed"] = CPU_COUNT(&set);
  } else {
    cpu["allowed"] = nullptr;
  }
  return cpu;
}

// The hypervisor's own name for itself (CPUID leaf 0x40000000), which works where DMI and
// /sys/hypervisor are absent, as in Firecracker.
std::optional<std::string> CpuidHypervisorSignature() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid(1, eax, ebx, ecx, edx);
  if ((ecx & (1u << 31)) == 0) return std::nullopt;  // the "hypervisor present" bit
  __cpuid(0x40000000, eax, ebx, ecx, edx);
  char signature[13] = {};
  std::memcpy(signature + 0, &ebx, 4);
  std::memcpy(signature + 4, &ecx, 4);
  std::memcpy(signature + 8, &edx, 4);
  return Printable(signature);
#else
  return std::nullopt;
#endif
}

std::string HypervisorFromSignature(const std::string& signature) {
  static const std::pair<const char*, const char*> kKnown[] = {
      {"KVMKVMKVM", "KVM"},      {"Microsoft Hv", "Hyper-V"},    {"VMwareVMware", "VMware"},
      {"XenVMMXenVMM", "Xen"},   {"TCGTCGTCGTCG", "QEMU TCG"},   {"ACRNACRNACRN", "ACRN"},
      {"bhyve bhyve ", "bhyve"}, {"VBoxVBoxVBox", "VirtualBox"},
  };
  for (const auto& [prefix, name] : kKnown) {
    if (signature.starts_with(prefix)) return name;
  }
  return signature;
}

json CaptureHypervisor(const json& cpu) {
  json hypervisor = json::object();
  bool flag =
      cpu.contains("flags") && cpu["flags"].is_object() && cpu["flags"].value("hypervisor", false);
  std::optional<std::string> signature = CpuidHypervisorSignature();
  hypervisor["present"] = flag || signature.has_value();
  hypervisor["cpuid_signature"] = signature ? json(*signature) : json(nullptr);
  std::optional<std::string> sys_type = ReadTrimmed("/sys/hypervisor/type");
  std::optional<std::string> dmi_vendor = ReadTrimmed("/sys/class/dmi/id/sys_vendor");
  std::optional<std::string> dmi_product = ReadTrimmed("/sys/class/dmi/id/product_name");
  hypervisor["dmi"] = dmi_vendor || dmi_product
                          ? json{{"sys_vendor", dmi_vendor ? json(*dmi_vendor) : json(nullptr)},
                                 {"product_name", dmi_product ? json(*dmi_product) : json(nullptr)}}
                          : json(nullptr);
  if (sys_type && !sys_type->empty()) {
    hypervisor["vendor"] = *sys_type;
    hypervisor["vendor_source"] = "/sys/hypervisor/type";
  } else if (signature && !signature->empty()) {
    hypervisor["vendor"] = HypervisorFromSignature(*signature);
    hypervisor["vendor_source"] = "cpuid 0x40000000";
  } else if (dmi_vendor && !dmi_vendor->empty()) {
    hypervisor["vendor"] = dmi_product ? absl::StrCat(*dmi_vendor, " ", *dmi_product) : *dmi_vendor;
    hypervisor["vendor_source"] = "dmi";
  } else {
    hypervisor["vendor"] = nullptr;
    hypervisor["vendor_source"] = nullptr;
  }
  return hypervisor;
}

// Software emulation (QEMU TCG) runs every instruction through a translator: the kernel behaves
// as on hardware (placement, counts, skips), but its timings are not performance figures. Whoever
// starts faultlab in an emulator declares it in FAULTLAB_EMULATED (scripts/numa-vm's guest init
// does, from the kernel command line). Without it, QEMU's "TCGTCGTCGTCG" CPUID signature (QEMU
// 7.2 answers leaf 0x40000000 with it) counts too; other emulators, or a CPU model hiding the
// hypervisor leaf, would go unnoticed.
json CaptureEmulation(const json& hypervisor) {
  if (const char* declared = std::getenv("FAULTLAB_EMULATED");
      declared != nullptr && *declared != '\0') {
    // Bounded and printable: it is copied into every warning and results.json.
    return json{{"emulated", true},
                {"emulator", Printable(std::string(declared).substr(0, 64))},
                {"source", "FAULTLAB_EMULATED"}};
  }
  if (hypervisor.is_object() && hypervisor.value("vendor", json(nullptr)) == "QEMU TCG") {
    return json{{"emulated", true}, {"emulator", "qemu-tcg"}, {"source", "cpuid 0x40000000"}};
  }
  return json{{"emulated", false}, {"emulator", nullptr}, {"source", nullptr}};
}

// kdamond threads run under any DAMON frontend (sysfs, damon_reclaim, damon_lru_sort), so the
// thread list catches what the sysfs admin directory alone would miss.
std::vector<std::string> KdamondThreads() {
  std::vector<std::string> threads;
  for (const std::string& pid : ListDir("/proc")) {
    if (pid.empty() ||
        !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    std::optional<std::string> comm = ReadTrimmed("/proc/" + pid + "/comm");
    if (comm && comm->starts_with("kdamond")) threads.push_back(*comm);
  }
  return threads;
}

json CaptureDamon() {
  json damon = json::object();
  const std::string admin = "/sys/kernel/mm/damon/admin/kdamonds";
  damon["sysfs"] = PathExists(admin);
  json kdamonds = json::array();
  bool any_on = false;
  for (const std::string& id : ListDir(admin)) {
    if (id.empty() || id == "nr_kdamonds") continue;
    std::string dir = admin + "/" + id;
    json state = TextOrNull(dir + "/state");
    any_on = any_on || state == "on";
    json contexts = json::array();
    for (const std::string& ctx : ListDir(dir + "/contexts")) {
      if (ctx == "nr_contexts") continue;
      std::string ctx_dir = dir + "/contexts/" + ctx;
      json actions = json::array();
      for (const std::string& scheme : ListDir(ctx_dir + "/schemes")) {
        if (scheme == "nr_schemes") continue;
        actions.push_back(TextOrNull(ctx_dir + "/schemes/" + scheme + "/action"));
      }
      contexts.push_back(
          {{"operations", TextOrNull(ctx_dir + "/operations")}, {"schemes", actions}});
    }
    kdamonds.push_back(
        {{"id", id}, {"state", state}, {"pid", LongOrNull(dir + "/pid")}, {"contexts", contexts}});
  }
  damon["kdamonds"] = kdamonds;
  json modules = json::object();
  for (const char* module : {"damon_reclaim", "damon_lru_sort", "damon_stat"}) {
    json enabled = TextOrNull(absl::StrCat("/sys/module/", module, "/parameters/enabled"));
    if (!enabled.is_null()) modules[module] = enabled;
  }
  damon["modules"] = modules;
  std::vector<std::string> threads = KdamondThreads();
  damon["threads"] = threads;
  damon["active"] = any_on || !threads.empty();
  return damon;
}

json CaptureSwap(const std::map<std::string, long long>& meminfo) {
  json swap = json::object();
  swap["total_kb"] = MeminfoOrNull(meminfo, "SwapTotal");
  swap["free_kb"] = MeminfoOrNull(meminfo, "SwapFree");
  std::optional<std::string> text = ReadFile("/proc/swaps");
  if (!text) {
    swap["devices"] = nullptr;
    return swap;
  }
  json devices = json::array();
  bool header = true;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    if (header) {
      header = false;
      continue;
    }
    std::vector<std::string> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.size() < 5) continue;
    devices.push_back({{"filename", words[0]},
                       {"type", words[1]},
                       {"size_kb", ParseLong(words[2]).value_or(-1)},
                       {"used_kb", ParseLong(words[3]).value_or(-1)},
                       {"priority", ParseLong(words[4]).value_or(0)}});
  }
  swap["devices"] = devices;
  return swap;
}

struct CgroupMount {
  std::string root;  // the part of the hierarchy this mount shows
  std::string mount_point;
};

// cgroup2 under "" and each v1 controller under its name, from /proc/self/mountinfo.
std::map<std::string, CgroupMount> CgroupMounts() {
  std::map<std::string, CgroupMount> mounts;
  std::optional<std::string> text = ReadFile("/proc/self/mountinfo");
  if (!text) return mounts;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ');
    // Optional fields come before the "-" separator, so fstype and options are found from it.
    auto dash = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 5 || std::distance(dash, fields.end()) < 4) continue;
    const std::string& fstype = *(dash + 1);
    const std::string& super_options = *(dash + 3);
    CgroupMount mount{fields[3], fields[4]};
    if (fstype == "cgroup2") {
      mounts.emplace("", mount);
    } else if (fstype == "cgroup") {
      for (absl::string_view option : absl::StrSplit(super_options, ',')) {
        mounts.emplace(std::string(option), mount);
      }
    }
  }
  return mounts;
}

// The directory of `path` (from /proc/self/cgroup) under `mount`, or "" if the mount does not
// show it (a container sees only its own subtree).
std::string CgroupDir(const CgroupMount& mount, const std::string& path) {
  if (mount.root == "/") return mount.mount_point + path;
  if (path.starts_with(mount.root)) return mount.mount_point + path.substr(mount.root.size());
  return "";
}

json CaptureCgroup() {
  json cgroup = json::object();
  std::optional<std::string> text = ReadTrimmed("/proc/self/cgroup");
  if (!text) return {{"path", nullptr}, {"memory_max", nullptr}, {"cpu_max", nullptr}};
  std::map<std::string, std::string> paths;  // controller ("" for cgroup2) -> path
  json entries = json::array();
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    entries.push_back(std::string(line));
    std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[1].empty()) {
      paths[""] = fields[2];
    } else {
      for (absl::string_view controller : absl::StrSplit(fields[1], ','))
        paths[std::string(controller)] = fields[2];
    }
  }
  cgroup["entries"] = entries;
  std::map<std::string, CgroupMount> mounts = CgroupMounts();
  bool v1_memory = paths.count("memory") > 0 && mounts.count("memory") > 0;
  cgroup["version"] = v1_memory ? "v1" : (paths.count("") ? "v2" : "unknown");
  // Limits as cgroup v2 spells them, so readers need not know which version the host runs.
  json memory_max = nullptr;
  json cpu_max = nullptr;
  if (v1_memory) {
    cgroup["path"] = paths["memory"];
    std::string dir = CgroupDir(mounts["memory"], paths["memory"]);
    if (!dir.empty()) {
      json limit = LongOrNull(dir + "/memory.limit_in_bytes");
      // v1 spells "no limit" as the largest page-aligned long.
      if (limit.is_number() && limit.get<long long>() >= (LLONG_MAX & ~4095LL)) limit = "max";
      memory_max = limit;
    }
    if (paths.count("cpu") && mounts.count("cpu")) {
      std::string cpu_dir = CgroupDir(mounts["cpu"], paths["cpu"]);
      json quota = cpu_dir.empty() ? json(nullptr) : LongOrNull(cpu_dir + "/cpu.cfs_quota_us");
      json period = cpu_dir.empty() ? json(nullptr) : LongOrNull(cpu_dir + "/cpu.cfs_period_us");
      if (quota.is_number() && period.is_number()) {
        cpu_max =
            absl::StrCat(quota.get<long long>() < 0 ? "max" : absl::StrCat(quota.get<long long>()),
                         " ", period.get<long long>());
      }
    }
  } else if (paths.count("") && mounts.count("")) {
    cgroup["path"] = paths[""];
    std::string dir = CgroupDir(mounts[""], paths[""]);
    if (!dir.empty()) {
      memory_max = TextOrNull(dir + "/memory.max");
      cpu_max = TextOrNull(dir + "/cpu.max");
    }
  } else {
    cgroup["path"] = paths.count("") ? json(paths[""]) : json(nullptr);
  }
  cgroup["memory_max"] = memory_max;
  cgroup["cpu_max"] = cpu_max;
  return cgroup;
}

json CaptureBuild() {
  json build = json::object();
  build["compiler"] = build_info::kCompiler;
  build["cxx_flags"] = std::string(absl::StripAsciiWhitespace(build_info::kCxxFlags));
  build["build_type"] = build_info::kBuildType;
  build["sanitizer"] = build_info::kSanitizer;
  build["version"] = build_info::kVersion;
  // --broken rather than --dirty: --dirty refreshes the index under index.lock, which would make
  // a concurrent `git commit` in the same tree fail; --broken runs diff-index, which takes no lock.
  std::optional<std::string> described =
      RunCommand(absl::StrCat("git -C ", ShellQuote(build_info::kSourceDir),
                              " describe --always --broken --tags 2>/dev/null"));
  std::string version = described ? std::string(absl::StripAsciiWhitespace(*described)) : "";
  if (!version.empty()) {
    build["faultlab_version"] = version;
    build["faultlab_version_source"] = "git describe";
  } else {
    build["faultlab_version"] = build_info::kVersion;
    build["faultlab_version_source"] = "CMake project version (no git checkout at the source dir)";
  }
  return build;
}

// Debian's libbenchmark is built without NDEBUG. The library says so only in its console
// context (and in the JSON reporter's "library_build_type"), so ask it to print that context.
json CaptureGoogleBenchmark() {
  json gb = json::object();
  std::ostringstream context_text;
  benchmark::BenchmarkReporter::Context context;
  benchmark::BenchmarkReporter::PrintBasicContext(&context_text, context);
  gb["library_build_type"] =
      absl::StrContains(context_text.str(), "Library was built as DEBUG") ? "debug" : "release";
  gb["detected_by"] = "BenchmarkReporter::PrintBasicContext";
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&benchmark::BenchmarkReporter::PrintBasicContext), &info) !=
          0 &&
      info.dli_fname != nullptr) {
    char* resolved = realpath(info.dli_fname, nullptr);
    gb["library"] = Printable(resolved != nullptr ? resolved : info.dli_fname);
    std::free(resolved);
  } else {
    gb["library"] = nullptr;
  }
  gb["note"] = "the run's Google Benchmark JSON context carries library_build_type as well";
  return gb;
}

std::string IsoTimestampUtc() {
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::string Hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unavailable";
  return Printable(name);
}

// ---------------------------------------------------------------------------------------------
// Reading a record back. Records may come from other versions or be synthetic, so every field
// may be missing or of another type.

const json* Find(const json& root, std::string_view path) {
  const json* node = &root;
  for (absl::string_view key : absl::StrSplit(absl::string_view(path.data(), path.size()), '/')) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(std::string(key));
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node;
}

std::string StringAt(const json& root, std::string_view path, std::string fallback = "") {
  const json* node = Find(root, path);
  return node != nullptr && node->is_string() ? node->get<std::string>() : fallback;
}

bool TrueAt(const json& root, std::string_view path) {
  const json* node = Find(root, path);
  if (node == nullptr) return false;
  if (node->is_boolean()) return node->get<bool>();
  if (node->is_number()) return node->get<double>() != 0;
  if (node->is_string()) return *node == "y" || *node == "1" || *node == "on";
  return false;
}

// "kdamond 0: paddr pageout" for each running kdamond, or the thread names.
std::string DamonSummary(const json& env) {
  std::vector<std::string> parts;
  const json* kdamonds = Find(env, "damon/kdamonds");
  if (kdamonds != nullptr && kdamonds->is_array()) {
    for (const json& k : *kdamonds) {
      if (!k.is_object() || k.value("state", json()) != "on") continue;
      std::vector<std::string> contexts;
      if (k.contains("contexts") && k["contexts"].is_array()) {
        for (const json& ctx : k["contexts"]) {
          std::vector<std::string> actions;
          if (ctx.contains("schemes") && ctx["schemes"].is_array()) {
            for (const json& action : ctx["schemes"]) {
              if (action.is_string()) actions.push_back(action.get<std::string>());
            }
          }
          contexts.push_back(
              absl::StrCat(StringAt(ctx, "operations", "?"), " ",
                           actions.empty() ? "monitoring only" : absl::StrJoin(actions, "+")));
        }
      }
      parts.push_back(
          absl::StrCat("kdamond ", StringAt(k, "id", "?"), ": ", absl::StrJoin(contexts, ", ")));
    }
  }
  if (parts.empty()) {
    const json* threads = Find(env, "damon/threads");
    if (threads != nullptr && threads->is_array()) {
      for (const json& t : *threads) {
        if (t.is_string()) parts.push_back(t.get<std::string>());
      }
    }
  }
  return absl::StrJoin(parts, ", ");
}

// Kernel debugging that is on, not merely built: page_table_check, debug_pagealloc and page_owner
// cost nothing until switched on at boot (or by their *_ENFORCED/_ENABLE_DEFAULT options).
std::vector<std::string> EnabledDebugOptions(const json& env) {
  auto config_on = [&](const std::string& option) {
    return StringAt(env, "kernel_config/" + option) == "y";
  };
  auto boot_on = [&](const std::string& param) {
    std::string value = StringAt(env, "kernel/boot_params/" + param);
    return value == "on" || value == "1" || value == "y";
  };
  std::vector<std::string> on;
  for (const char* option :
       {"CONFIG_DEBUG_VM", "CONFIG_LOCKDEP", "CONFIG_PROVE_LOCKING", "CONFIG_KASAN", "CONFIG_KMSAN",
        "CONFIG_KCSAN", "CONFIG_SLUB_DEBUG_ON"}) {
    if (config_on(option)) on.push_back(option);
  }
  if (config_on("CONFIG_PAGE_TABLE_CHECK") &&
      (config_on("CONFIG_PAGE_TABLE_CHECK_ENFORCED") || boot_on("page_table_check"))) {
    on.push_back("CONFIG_PAGE_TABLE_CHECK");
  }
  if (config_on("CONFIG_DEBUG_PAGEALLOC") &&
      (config_on("CONFIG_DEBUG_PAGEALLOC_ENABLE_DEFAULT") || boot_on("debug_pagealloc"))) {
    on.push_back("CONFIG_DEBUG_PAGEALLOC");
  }
  if (config_on("CONFIG_PAGE_OWNER") && boot_on("page_owner")) on.push_back("CONFIG_PAGE_OWNER");
  return on;
}

}  // namespace

nlohmann::json CaptureEnvironment() {
  json env = json::object();
  env["schema_version"] = kSchemaVersion;
  env["timestamp"] = Guarded([] { return json(IsoTimestampUtc()); });
  env["hostname"] = Guarded([] { return json(Hostname()); });
  env["kernel"] = Guarded([] { return CaptureKernel(); });
  env["kernel_config"] =
      Guarded([&] { return CaptureKernelConfig(StringAt(env, "kernel/release")); });
  if (env["kernel"].is_object()) {
    try {
      AddMemoryInit(env["kernel_config"], env["kernel"]);
    } catch (const std::exception& e) {
      env["kernel"]["init_on_alloc"] = absl::StrCat("unavailable: ", e.what());
    }
  }
  env["thp"] = Guarded([] { return CaptureThp(); });
  env["hugetlb"] = Guarded([] { return CaptureHugetlb(); });
  env["numa_balancing"] = Guarded([] { return LongOrNull("/proc/sys/kernel/numa_balancing"); });
  env["numa"] = Guarded([] { return CaptureNuma(); });
  env["vm"] = Guarded([] { return CaptureVm(); });
  env["perf_event_paranoid"] =
      Guarded([] { return LongOrNull("/proc/sys/kernel/perf_event_paranoid"); });
  env["kptr_restrict"] = Guarded([] { return LongOrNull("/proc/sys/kernel/kptr_restrict"); });
  env["userfaultfd"] = Guarded([] { return CaptureUserfaultfd(); });
  std::map<std::string, std::string> cpuinfo = FirstCpuinfo();
  env["cpu"] = Guarded([&] { return CaptureCpu(cpuinfo); });
  env["hypervisor"] = Guarded([&] { return CaptureHypervisor(env["cpu"]); });
  env["emulation"] = Guarded([&] { return CaptureEmulation(env["hypervisor"]); });
  env["damon"] = Guarded([] { return CaptureDamon(); });
  std::map<std::string, long long> meminfo = ReadMeminfo();
  env["swap"] = Guarded([&] { return CaptureSwap(meminfo); });
  env["memory"] = Guarded([&] {
    return json{{"total_kb", MeminfoOrNull(meminfo, "MemTotal")},
                {"available_kb", MeminfoOrNull(meminfo, "MemAvailable")},
                {"hugepagesize_kb", MeminfoOrNull(meminfo, "Hugepagesize")}};
  });
  env["cgroup"] = Guarded([] { return CaptureCgroup(); });
  env["clocksource"] = Guarded([] {
    const std::string base = "/sys/devices/system/clocksource/clocksource0";
    return json{{"current", TextOrNull(base + "/current_clocksource")},
                {"available", TextOrNull(base + "/available_clocksource")}};
  });
  env["build"] = Guarded([] { return CaptureBuild(); });
  env["google_benchmark"] = Guarded([] { return CaptureGoogleBenchmark(); });
  return env;
}

std::vector<std::string> DistortionWarnings(const nlohmann::json& env) {
  std::vector<std::string> warnings;
  // First and in capitals: every other figure of the run is read in its light.
  if (TrueAt(env, "emulation/emulated")) {
    warnings.push_back(absl::StrCat(
        "SOFTWARE EMULATION (", StringAt(env, "emulation/emulator", "unknown emulator"), ", from ",
        StringAt(env, "emulation/source", "?"),
        "): every instruction is emulated; timings are NOT performance figures, only what the "
        "kernel did (placement, counts, skips) is"));
  }
  if (TrueAt(env, "hypervisor/present")) {
    warnings.push_back(
        absl::StrCat("running in a VM (", StringAt(env, "hypervisor/vendor", "unknown hypervisor"),
                     "): first touch of guest memory costs ~10x a fault; faultlab reports "
                     "steady-state figures after warm-up"));
  }
  if (StringAt(env, "thp/enabled") == "always") {
    warnings.push_back(
        "THP enabled=always: 4 KiB cases may get huge pages (faultlab madvises MADV_NOHUGEPAGE "
        "on them; other memory still gets THP)");
  }
  if (const json* mthp = Find(env, "thp/mthp"); mthp != nullptr && mthp->is_object()) {
    std::vector<std::string> always;
    for (const auto& [size, entry] : mthp->items()) {
      if (StringAt(entry, "enabled") == "always") always.push_back(size);
    }
    if (!always.empty()) {
      warnings.push_back(absl::StrCat(
          "mTHP enabled=always for ", absl::StrJoin(always, ", "),
          ": 4 KiB anonymous faults may allocate larger folios unless MADV_NOHUGEPAGE"));
    }
  }
  if (TrueAt(env, "damon/active")) {
    std::string summary = DamonSummary(env);
    warnings.push_back(
        absl::StrCat("DAMON is active", summary.empty() ? "" : absl::StrCat(" (", summary, ")"),
                     ": it samples access bits and may reclaim pages in the background, "
                     "adding noise"));
  }
  if (const json* type = Find(env, "build/build_type");
      type != nullptr && type->is_string() && *type != "Release") {
    std::string name = type->get<std::string>();
    warnings.push_back(absl::StrCat("faultlab built as ", name.empty() ? "(no build type)" : name,
                                    ", not Release: harness overhead is inflated"));
  }
  if (std::string sanitizer = StringAt(env, "build/sanitizer"); !sanitizer.empty()) {
    warnings.push_back(absl::StrCat("faultlab built with -fsanitize=", sanitizer,
                                    ": instrumented memory accesses inflate every figure"));
  }
  if (StringAt(env, "google_benchmark/library_build_type") == "debug") {
    warnings.push_back(
        "Google Benchmark library is a debug build (Debian's is): its own timing loop is slower; "
        "fault figures are taken by faultlab's own timer");
  }
  if (std::vector<std::string> debug = EnabledDebugOptions(env); !debug.empty()) {
    warnings.push_back(
        absl::StrCat("kernel debugging on (", absl::StrJoin(debug, ", "),
                     "): fault paths run extra checks; figures are not a production kernel's"));
  }
  if (TrueAt(env, "kernel/init_on_alloc")) {
    warnings.push_back(
        absl::StrCat("init_on_alloc is on (", StringAt(env, "kernel/init_on_alloc_source", "?"),
                     "): page and slab allocations are zeroed, adding to faults that allocate "
                     "page tables or page cache"));
  }
  if (TrueAt(env, "numa_balancing")) {
    warnings.push_back(
        "numa_balancing is on: the kernel unmaps pages to sample accesses, adding NUMA hinting "
        "faults and migrations to measured runs");
  }
  return warnings;
}

namespace {

std::string ValueText(const json* value) {
  if (value == nullptr) return "(not recorded)";
  if (value->is_null()) return "(unreadable)";
  if (value->is_string()) return value->get<std::string>();
  if (value->is_boolean()) return value->get<bool>() ? "yes" : "no";
  return value->dump();
}

std::string KbText(const json* value) {
  if (value == nullptr || !value->is_number()) return ValueText(value);
  long long kb = value->get<long long>();
  if (kb == 0) return "0";
  return absl::StrFormat("%.1f GiB (%d kB)", kb / 1048576.0, kb);
}

// Sorts "2048kB" after "16kB".
long long SizeKey(const std::string& size) {
  long long value = 0;
  return absl::SimpleAtoi(absl::StripSuffix(size, "kB"), &value) ? value : 0;
}

std::vector<std::pair<std::string, std::string>> TableRows(const json& env) {
  std::vector<std::pair<std::string, std::string>> rows;
  auto add = [&](const std::string& key, std::string value) {
    rows.emplace_back(key, std::move(value));
  };
  auto add_at = [&](const std::string& path) {
    add(absl::StrReplaceAll(path, {{"/", "."}}), ValueText(Find(env, path)));
  };

  add_at("schema_version");
  add_at("timestamp");
  add_at("hostname");
  add_at("kernel/release");
  add_at("kernel/version");
  add_at("kernel/machine");
  if (const json* params = Find(env, "kernel/boot_params");
      params != nullptr && params->is_object()) {
    std::vector<std::string> words;
    for (const auto& [key, value] : params->items()) {
      words.push_back(value.is_string() ? absl::StrCat(key, "=", value.get<std::string>()) : key);
    }
    add("kernel.boot_params", words.empty() ? "(none of note)" : absl::StrJoin(words, " "));
  }
  add("kernel.init_on_alloc",
      absl::StrCat(ValueText(Find(env, "kernel/init_on_alloc")), " (",
                   ValueText(Find(env, "kernel/init_on_alloc_source")), ")"));
  add_at("kernel_config/source");
  if (const json* config = Find(env, "kernel_config"); config != nullptr && config->is_object()) {
    std::vector<std::string> preempt;
    for (const auto& [key, value] : config->items()) {
      if (value == "y" && (key == "CONFIG_PREEMPT_NONE" || key == "CONFIG_PREEMPT_VOLUNTARY" ||
                           key == "CONFIG_PREEMPT" || key == "CONFIG_PREEMPT_RT" ||
                           key == "CONFIG_PREEMPT_LAZY" || key == "CONFIG_PREEMPT_DYNAMIC")) {
        preempt.push_back(key.substr(7));
      }
    }
    add("kernel_config.preempt", preempt.empty() ? "(unknown)" : absl::StrJoin(preempt, " "));
    add_at("kernel_config/CONFIG_HZ");
    add_at("kernel_config/CONFIG_PER_VMA_LOCK");
    add_at("kernel_config/CONFIG_NUMA_BALANCING");
    add_at("kernel_config/CONFIG_PTE_MARKER_UFFD_WP");
    std::vector<std::string> debug = EnabledDebugOptions(env);
    add("kernel_config.debug", debug.empty() ? "none" : absl::StrJoin(debug, " "));
  }
  add_at("cpu/model_name");
  add("cpu.family/model/stepping",
      absl::StrCat(ValueText(Find(env, "cpu/vendor")), " ", ValueText(Find(env, "cpu/family")), "/",
                   ValueText(Find(env, "cpu/model")), "/", ValueText(Find(env, "cpu/stepping"))));
  add("cpu.online/allowed",
      absl::StrCat(ValueText(Find(env, "cpu/online")), " / ", ValueText(Find(env, "cpu/allowed"))));
  if (const json* flags = Find(env, "cpu/flags"); flags != nullptr && flags->is_object()) {
    std::vector<std::string> on;
    std::vector<std::string> off;
    for (const auto& [flag, value] : flags->items()) (value == true ? on : off).push_back(flag);
    add("cpu.flags",
        absl::StrCat(absl::StrJoin(on, " "),
                     off.empty() ? "" : absl::StrCat("  (absent: ", absl::StrJoin(off, " "), ")")));
  }
  add_at("cpu/meltdown");
  add("hypervisor",
      TrueAt(env, "hypervisor/present")
          ? absl::StrCat("yes, ", ValueText(Find(env, "hypervisor/vendor")), " (from ",
                         ValueText(Find(env, "hypervisor/vendor_source")), ")")
          : "none detected");
  add("emulation",
      TrueAt(env, "emulation/emulated")
          ? absl::StrCat("yes, ", ValueText(Find(env, "emulation/emulator")), " (from ",
                         ValueText(Find(env, "emulation/source")), "): timings are not figures")
          : "no");
  add("memory.total", KbText(Find(env, "memory/total_kb")));
  add("memory.available", KbText(Find(env, "memory/available_kb")));
  add("swap.total", KbText(Find(env, "swap/total_kb")));
  add_at("thp/enabled");
  add_at("thp/defrag");
  add_at("thp/use_zero_page");
  add_at("thp/shmem_enabled");
  if (const json* mthp = Find(env, "thp/mthp"); mthp != nullptr && mthp->is_object()) {
    std::vector<std::pair<std::string, std::string>> sizes;
    // Sizes without an anonymous policy (8kB is shmem-only) have enabled=null; not worth a column.
    for (const auto& [size, entry] : mthp->items()) {
      if (std::string enabled = StringAt(entry, "enabled"); !enabled.empty())
        sizes.emplace_back(size, enabled);
    }
    std::sort(sizes.begin(), sizes.end(),
              [](const auto& a, const auto& b) { return SizeKey(a.first) < SizeKey(b.first); });
    std::vector<std::string> words;
    for (const auto& [size, enabled] : sizes) words.push_back(absl::StrCat(size, "=", enabled));
    add("thp.mthp.enabled", words.empty() ? "(no mTHP sizes)" : absl::StrJoin(words, " "));
  }
  if (const json* hugetlb = Find(env, "hugetlb"); hugetlb != nullptr && hugetlb->is_object()) {
    std::vector<std::string> sizes;
    for (const auto& [size, entry] : hugetlb->items()) sizes.push_back(size);
    std::sort(sizes.begin(), sizes.end(),
              [](const auto& a, const auto& b) { return SizeKey(a) < SizeKey(b); });
    for (const std::string& size : sizes) {
      const json& entry = (*hugetlb)[size];
      auto pool = [](const json& e) {
        return absl::StrCat("nr ", ValueText(Find(e, "nr")), ", free ", ValueText(Find(e, "free")),
                            ", surplus ", ValueText(Find(e, "surplus")));
      };
      add(absl::StrCat("hugetlb.", size),
          absl::StrCat(pool(entry), ", resv ", ValueText(Find(entry, "resv"))));
      if (const json* nodes = Find(entry, "nodes"); nodes != nullptr && nodes->is_object()) {
        for (const auto& [node, node_entry] : nodes->items()) {
          add(absl::StrCat("hugetlb.", size, ".node", node), pool(node_entry));
        }
      }
    }
  }
  add_at("numa_balancing");
  add_at("numa/has_memory");
  if (const json* distances = Find(env, "numa/distances");
      distances != nullptr && distances->is_object() && distances->size() > 1) {
    std::vector<std::string> lines;
    for (const auto& [node, row] : distances->items()) {
      lines.push_back(absl::StrCat(node, ": ", ValueText(&row)));
    }
    add("numa.distances", absl::StrJoin(lines, "; "));
  }
  add_at("vm/overcommit_memory");
  add_at("vm/max_map_count");
  add_at("vm/zone_reclaim_mode");
  add_at("perf_event_paranoid");
  add_at("kptr_restrict");
  add_at("userfaultfd/unprivileged_userfaultfd");
  add("userfaultfd.dev_userfaultfd",
      TrueAt(env, "userfaultfd/dev_userfaultfd/present")
          ? absl::StrCat("present, mode ", ValueText(Find(env, "userfaultfd/dev_userfaultfd/mode")))
          : "absent");
  if (std::string error = StringAt(env, "userfaultfd/api_error"); !error.empty()) {
    add("userfaultfd.api", error);
  } else {
    add_at("userfaultfd/api_features");
    std::vector<std::string> names;
    if (const json* features = Find(env, "userfaultfd/features");
        features != nullptr && features->is_array()) {
      for (const json& name : *features) names.push_back(ValueText(&name));
    }
    add("userfaultfd.features", absl::StrJoin(names, " "));
  }
  std::string damon = DamonSummary(env);
  add("damon.active", absl::StrCat(ValueText(Find(env, "damon/active")),
                                   damon.empty() ? "" : absl::StrCat(": ", damon)));
  add_at("cgroup/path");
  add_at("cgroup/memory_max");
  add_at("cgroup/cpu_max");
  add_at("clocksource/current");
  add_at("build/faultlab_version");
  add_at("build/build_type");
  add_at("build/compiler");
  add_at("build/cxx_flags");
  add("build.sanitizer",
      StringAt(env, "build/sanitizer").empty() ? "none" : StringAt(env, "build/sanitizer"));
  add_at("google_benchmark/library_build_type");
  return rows;
}

}  // namespace

void PrintEnvironmentTable(const nlohmann::json& env, std::ostream& out) {
  std::vector<std::pair<std::string, std::string>> rows = TableRows(env);
  std::size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  for (const auto& [key, value] : rows) {
    out << key << std::string(width - key.size() + 2, ' ') << value << '\n';
  }

  std::vector<std::string> warnings = DistortionWarnings(env);
  out << '\n' << (warnings.empty() ? "WARNINGS: none\n" : "WARNINGS\n");
  for (const std::string& warning : warnings) out << "***WARNING*** " << warning << '\n';

  out << "\nSuites here:\n";
  const std::vector<Suite>& suites = Suites();
  if (suites.empty()) out << "  (no suites linked into this binary)\n";
  for (const Suite& suite : suites) {
    out << "  " << suite.name << ": " << suite.description << '\n';
    std::size_t name_width = 0;
    for (const SuiteVariant& variant : suite.variants)
      name_width = std::max(name_width, variant.name.size());
    for (const SuiteVariant& variant : suite.variants) {
      const std::optional<std::string> why =
          WhyCannotRun(variant.needs, variant.hugetlb_page_size, variant.hugetlb_pages);
      out << "    " << variant.name << std::string(name_width - variant.name.size() + 2, ' ')
          << (why ? "skipped: " + *why : std::string("runs")) << '\n';
    }
  }
}

}  // namespace faultlab
