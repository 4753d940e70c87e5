// Hugetlb pools (read from sysfs, raised through the restore journal) and the arena.
#include "topology/hugetlb.h"
#include "absl/strings/ascii.h"
#include "topology/kernel_files.h"

#include <dirent.h>
#include <linux/mman.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "topology/system_settings.h"
#include "topology/topology.h"

// Older userspace headers lack it; the kernel (5.14+) is what matters.
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace faultlab {
namespace {

constexpr const char* kHugepagesDir = "/sys/kernel/mm/hugepages";
constexpr const char* kThpDir = "/sys/kernel/mm/transparent_hugepage";

std::string PoolDir(std::size_t page_size, int node) {
  std::string leaf = "hugepages-" + std::to_string(page_size / 1024) + "kB";
  if (node < 0) return std::string(kHugepagesDir) + "/" + leaf;
  return "/sys/devices/system/node/node" + std::to_string(node) + "/hugepages/" + leaf;
}

// "2M", "1G", "64K": the spelling --reserve-hugepages takes and error messages use.
std::string SizeName(std::size_t bytes) {
  if (bytes >= kPage1G && bytes % kPage1G == 0) return std::to_string(bytes / kPage1G) + "G";
  if (bytes >= (1ul << 20) && bytes % (1ul << 20) == 0) return std::to_string(bytes >> 20) + "M";
  return std::to_string(bytes / 1024) + "K";
}

// "8 MiB", "1 GiB", "512 KiB": for the one-line reasons.
std::string Human(std::size_t bytes) {
  if (bytes >= kPage1G && bytes % kPage1G == 0) return std::to_string(bytes / kPage1G) + " GiB";
  if (bytes >= (1ul << 20) && bytes % (1ul << 20) == 0) {
    return std::to_string(bytes >> 20) + " MiB";
  }
  if (bytes % 1024 == 0) return std::to_string(bytes / 1024) + " KiB";
  return std::to_string(bytes) + " bytes";
}

std::string PageName(std::size_t page_size) {
  return page_size == kPage1G ? "1 GiB hugetlb" : page_size == kPage2M ? "2 MiB hugetlb"
                                                                       : Human(page_size) + " hugetlb";
}

std::size_t RoundUp(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Rounding a request up to a page of this size must not more than double it.
bool WorthPageSize(std::size_t size, std::size_t page_size) {
  return RoundUp(size, page_size) <= 2 * size;
}

bool ParseWholeNumber(const std::string& text, unsigned long long limit, unsigned long long* out) {
  if (text.empty() || text.size() > 19) return false;
  unsigned long long value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > limit) return false;
  *out = value;
  return true;
}

// "2M", "2m", "2048k", "1G", "1g" (a number and one unit letter) → bytes.
bool ParsePageSize(const std::string& text, std::size_t* bytes) {
  if (text.size() < 2) return false;
  std::size_t unit;
  switch (text.back()) {
    case 'k': case 'K': unit = 1ul << 10; break;
    case 'm': case 'M': unit = 1ul << 20; break;
    case 'g': case 'G': unit = 1ul << 30; break;
    default: return false;
  }
  unsigned long long number = 0;
  if (!ParseWholeNumber(text.substr(0, text.size() - 1), 1ull << 30, &number) || number == 0) {
    return false;
  }
  *bytes = static_cast<std::size_t>(number) * unit;
  return true;
}


std::mutex g_thp_override_mutex;
std::string g_thp_override;

std::string CurrentThpMode() {
  {
    std::lock_guard<std::mutex> lock(g_thp_override_mutex);
    if (!g_thp_override.empty()) return g_thp_override;
  }
  std::string per_size =
      ReadKernelChoice(std::string(kThpDir) + "/hugepages-2048kB/enabled").value_or("");
  if (!per_size.empty() && per_size != "inherit") return per_size;
  return ReadKernelChoice(std::string(kThpDir) + "/enabled").value_or("");
}

// AnonHugePages of the VMA that starts at `addr`, in bytes; -1 if smaps has no such VMA.
long AnonHugeBytes(void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  const unsigned long want = reinterpret_cast<unsigned long>(addr);
  std::string line;
  bool in_vma = false;
  while (std::getline(smaps, line)) {
    std::size_t dash = line.find('-');
    std::size_t colon = line.find(':');
    bool header = dash != std::string::npos && (colon == std::string::npos || dash < colon) &&
                  line.find(' ') != std::string::npos && dash < line.find(' ');
    if (header) {
      if (in_vma) return 0;  // our VMA had no AnonHugePages line
      in_vma = std::strtoul(line.substr(0, dash).c_str(), nullptr, 16) == want;
      continue;
    }
    if (in_vma && line.rfind("AnonHugePages:", 0) == 0) {
      return std::strtol(line.c_str() + std::strlen("AnonHugePages:"), nullptr, 10) * 1024;
    }
  }
  return in_vma ? 0 : -1;
}

struct Mapped {
  ArenaRegion region;
  void* map_addr = nullptr;  // the whole mapping, which for THP includes guard pages
  std::size_t map_len = 0;
};

// Binds (when a node is asked for) and prefaults. MADV_POPULATE_WRITE faults every page in
// writable, as a first write would, but reports failure (a hugetlb pool taken by someone else,
// a node without memory) as an error instead of a SIGBUS. Returns "" or why it failed; notes a
// failed bind or pages found elsewhere in `placement`.
std::string BindAndPrefault(const Topology& topology, int node, void* addr, std::size_t len,
                            std::size_t page_size, ArenaRegion* region, std::string* placement) {
  region->node = -1;
  if (node >= 0) {
    std::string error;
    if (BindArea(topology, addr, len, node, &error)) {
      region->node = node;
    } else {
      *placement = "bind to node " + std::to_string(node) + " failed: " + error;
    }
  }
  if (madvise(addr, len, MADV_POPULATE_WRITE) != 0) {
    if (errno != EINVAL) return std::string("prefault failed: ") + std::strerror(errno);
    // A kernel older than 5.14: touch each page (may SIGBUS on a raced-away hugetlb pool).
    for (std::size_t offset = 0; offset < len; offset += page_size) {
      static_cast<volatile char*>(addr)[offset] = 0;
    }
  }
  if (region->node >= 0) {
    // A bind on a one-node machine or an empty node silently does nothing: check a sample.
    std::size_t stride = std::max(page_size, RoundUp(len / 16, page_size));
    std::vector<int> nodes = PageNodes(addr, len, stride);
    long elsewhere = std::count_if(nodes.begin(), nodes.end(), [&](int n) { return n != node; });
    if (elsewhere > 0) {
      *placement = std::to_string(elsewhere) + " of " + std::to_string(nodes.size()) +
                   " sampled pages not on node " + std::to_string(node);
    }
  }
  return "";
}

std::string OnNode(int node) { return node >= 0 ? " on node " + std::to_string(node) : ""; }

std::optional<Mapped> TryHugetlb(const Topology& topology, int node, std::size_t page_size,
                                 std::size_t size, std::vector<std::string>* notes) {
  const std::string name = PageName(page_size);
  std::vector<std::size_t> sizes = HugetlbPageSizes();
  if (std::find(sizes.begin(), sizes.end(), page_size) == sizes.end()) {
    notes->push_back(name + ": not supported by this kernel");
    return std::nullopt;
  }
  if (!WorthPageSize(size, page_size)) {
    // Not worth a note for 1 GiB: nobody expects an 8 MiB request to get a 1 GiB page.
    if (page_size != kPage1G) {
      notes->push_back(name + ": " + Human(size) + " is under half a page");
    }
    return std::nullopt;
  }
  const long pages = static_cast<long>(RoundUp(size, page_size) / page_size);
  std::optional<long> available = AvailableHugetlbPages(page_size, node);
  if (!available || *available < pages) {
    long have = available.value_or(0);
    notes->push_back(name + ": " + std::to_string(have) + " free pages" + OnNode(node) +
                     (have == 0 ? " (pool empty)" : ", need " + std::to_string(pages)));
    return std::nullopt;
  }
  const std::size_t len = static_cast<std::size_t>(pages) * page_size;
  // No MAP_NORESERVE: the pages are reserved at mmap, so a pool someone emptied meanwhile fails
  // here with ENOMEM rather than with a SIGBUS at first touch.
  int huge_flag = page_size == kPage1G ? MAP_HUGE_1GB : MAP_HUGE_2MB;
  void* addr = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | huge_flag, -1, 0);
  if (addr == MAP_FAILED) {
    notes->push_back(name + ": mmap failed: " + std::strerror(errno));
    return std::nullopt;
  }
  Mapped mapped;
  mapped.region = {addr, len, page_size == kPage1G ? Backing::kHugetlb1G : Backing::kHugetlb2M,
                   "", -1};
  std::string placement;
  std::string failure = BindAndPrefault(topology, node, addr, len, page_size, &mapped.region,
                                        &placement);
  if (!failure.empty()) {
    munmap(addr, len);
    notes->push_back(name + ": " + failure);
    return std::nullopt;
  }
  notes->push_back(name + ": " + std::to_string(pages) + (pages == 1 ? " page" : " pages") +
                   OnNode(mapped.region.node));
  if (!placement.empty()) notes->push_back(placement);
  mapped.map_addr = addr;
  mapped.map_len = len;
  return mapped;
}

std::optional<Mapped> TryThp(const Topology& topology, int node, std::size_t size,
                             std::vector<std::string>* notes) {
  const std::string mode = CurrentThpMode();
  if (mode.empty()) {
    notes->push_back("THP: not available (no " + std::string(kThpDir) + ")");
    return std::nullopt;
  }
  if (mode == "never") {
    notes->push_back("THP: disabled (enabled=never)");
    return std::nullopt;
  }
  if (!WorthPageSize(size, kPage2M)) {
    notes->push_back("THP: " + Human(size) + " is under half a 2 MiB page");
    return std::nullopt;
  }
  const std::size_t len = RoundUp(size, kPage2M);
  // A 2 MiB-aligned region between two PROT_NONE guard areas: huge pages need the alignment,
  // and the guards keep the kernel from merging the VMA with a neighbour, so smaps reports on
  // exactly this region. The guards are never touched and cost only address space.
  const std::size_t reserve_len = len + 2 * kPage2M;
  void* reserve = mmap(nullptr, reserve_len, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserve == MAP_FAILED) {
    notes->push_back(std::string("THP: mmap failed: ") + std::strerror(errno));
    return std::nullopt;
  }
  const std::size_t base = reinterpret_cast<std::size_t>(reserve);
  void* addr = reinterpret_cast<void*>(RoundUp(base + kPage4K, kPage2M));
  if (mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
          MAP_FAILED ||
      madvise(addr, len, MADV_HUGEPAGE) != 0) {
    notes->push_back(std::string("THP: madvise failed: ") + std::strerror(errno));
    munmap(reserve, reserve_len);
    return std::nullopt;
  }
  Mapped mapped;
  mapped.region = {addr, len, Backing::kThp, "", -1};
  std::string placement;
  std::string failure = BindAndPrefault(topology, node, addr, len, kPage4K, &mapped.region,
                                        &placement);
  if (!failure.empty()) {
    munmap(reserve, reserve_len);
    notes->push_back("THP: " + failure);
    return std::nullopt;
  }
  const std::string label = mode == "madvise" ? "THP madvised" : "THP (enabled=" + mode + ")";
  long huge = AnonHugeBytes(addr);
  if (huge <= 0) {
    // Kept: the memory is mapped and prefaulted, it is just 4 KiB pages (fragmentation, or
    // defrag settings that do not let the fault compact).
    mapped.region.backing = Backing::kBase4K;
    notes->push_back(label + ": got no huge pages in " + Human(len) +
                     (huge < 0 ? " (region not found in smaps)" : "") + "; 4 KiB pages");
  } else {
    // "got 64 of 64 MiB": both sizes are multiples of 2 MiB.
    notes->push_back(label + ": got " + std::to_string(static_cast<std::size_t>(huge) >> 20) +
                     " of " + Human(len) + " as huge pages" +
                     (static_cast<std::size_t>(huge) < len ? " (partial)" : ""));
  }
  if (!placement.empty()) notes->push_back(placement);
  mapped.map_addr = reserve;
  mapped.map_len = reserve_len;
  return mapped;
}

Mapped Map4K(const Topology& topology, int node, std::size_t size,
             std::vector<std::string>* notes) {
  const std::size_t len = RoundUp(size, kPage4K);
  void* addr = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (addr == MAP_FAILED) throw std::bad_alloc();
  // So that THP=always does not quietly make the "4 KiB" case huge. EINVAL without THP support.
  madvise(addr, len, MADV_NOHUGEPAGE);
  Mapped mapped;
  mapped.region = {addr, len, Backing::kBase4K, "", -1};
  std::string placement;
  if (!BindAndPrefault(topology, node, addr, len, kPage4K, &mapped.region, &placement).empty()) {
    munmap(addr, len);
    throw std::bad_alloc();
  }
  notes->push_back("4 KiB pages" + OnNode(mapped.region.node));
  if (!placement.empty()) notes->push_back(placement);
  mapped.map_addr = addr;
  mapped.map_len = len;
  return mapped;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& part : parts) out += (out.empty() ? "" : "; ") + part;
  return out;
}

}  // namespace

std::vector<std::size_t> HugetlbPageSizes() {
  std::vector<std::size_t> sizes;
  DIR* dir = opendir(kHugepagesDir);
  if (dir == nullptr) return sizes;
  while (dirent* entry = readdir(dir)) {
    unsigned long kb = 0;
    char suffix[4] = {};
    if (std::sscanf(entry->d_name, "hugepages-%lu%3s", &kb, suffix) == 2 &&
        std::string(suffix) == "kB") {
      sizes.push_back(static_cast<std::size_t>(kb) * 1024);
    }
  }
  closedir(dir);
  std::sort(sizes.begin(), sizes.end());
  return sizes;
}

std::vector<HugetlbPool> ReadHugetlbPools() {
  std::vector<int> nodes;
  if (DIR* dir = opendir("/sys/devices/system/node")) {
    while (dirent* entry = readdir(dir)) {
      int node = -1;
      char rest = 0;
      if (std::sscanf(entry->d_name, "node%d%c", &node, &rest) == 1 && node >= 0) {
        nodes.push_back(node);
      }
    }
    closedir(dir);
  }
  std::sort(nodes.begin(), nodes.end());
  nodes.insert(nodes.begin(), -1);

  std::vector<HugetlbPool> pools;
  for (std::size_t page_size : HugetlbPageSizes()) {
    for (int node : nodes) {
      std::string dir = PoolDir(page_size, node);
      std::optional<long> total = ReadKernelLong(dir + "/nr_hugepages");
      if (!total) continue;  // a node without this pool (memoryless node)
      HugetlbPool pool;
      pool.page_size = page_size;
      pool.node = node;
      pool.total = *total;
      pool.free = ReadKernelLong(dir + "/free_hugepages").value_or(0);
      pool.surplus = ReadKernelLong(dir + "/surplus_hugepages").value_or(0);
      pools.push_back(pool);
    }
  }
  return pools;
}

std::string ThpMode() { return CurrentThpMode(); }

std::optional<long> AvailableHugetlbPages(std::size_t page_size, int node) {
  std::string dir = PoolDir(page_size, node);
  std::optional<long> free = ReadKernelLong(dir + "/free_hugepages");
  if (!free) return std::nullopt;
  // Per-node pools have no resv_hugepages: reservations are only accounted globally.
  if (node >= 0) return *free;
  return *free - ReadKernelLong(dir + "/resv_hugepages").value_or(0);
}

std::optional<std::vector<HugepageRequest>> ParseHugepageRequests(const std::string& text,
                                                                  std::string* error) {
  std::string ignored;
  if (error == nullptr) error = &ignored;
  if (absl::StripAsciiWhitespace(text).empty()) {
    *error = "empty hugepage request: expected N or SIZE:N, e.g. 64 or 2M:64,1G:1";
    return std::nullopt;
  }
  const std::vector<std::size_t> supported = HugetlbPageSizes();
  std::vector<HugepageRequest> requests;
  std::size_t begin = 0;
  while (true) {
    std::size_t comma = text.find(',', begin);
    const std::string token =
        std::string(absl::StripAsciiWhitespace(text.substr(
            begin, comma == std::string::npos ? std::string::npos : comma - begin)));
    if (token.empty()) {
      *error = "empty entry in hugepage request \"" + text + "\"";
      return std::nullopt;
    }
    HugepageRequest request;
    std::string count_text = token;
    std::size_t colon = token.find(':');
    if (colon != std::string::npos) {
      const std::string size_text(absl::StripAsciiWhitespace(token.substr(0, colon)));
      count_text = std::string(absl::StripAsciiWhitespace(token.substr(colon + 1)));
      if (!ParsePageSize(size_text, &request.page_size)) {
        *error = "bad hugepage size \"" + size_text + "\" in \"" + token +
                 "\": expected e.g. 2M, 2048k or 1G";
        return std::nullopt;
      }
    }
    unsigned long long count = 0;
    // The limit only catches typos: no machine has 2^31 huge pages to give.
    if (!ParseWholeNumber(count_text, 1ull << 31, &count)) {
      *error = "bad hugepage count \"" + count_text + "\" in \"" + token +
               "\": expected a whole number of pages, 0 or more";
      return std::nullopt;
    }
    request.count = static_cast<long>(count);
    if (std::find(supported.begin(), supported.end(), request.page_size) == supported.end()) {
      std::string names;
      for (std::size_t size : supported) names += (names.empty() ? "" : ", ") + SizeName(size);
      *error = "hugetlb page size " + SizeName(request.page_size) +
               " is not supported by this kernel (sizes: " + (names.empty() ? "none" : names) +
               ")";
      return std::nullopt;
    }
    for (const HugepageRequest& earlier : requests) {
      if (earlier.page_size == request.page_size) {
        *error = "hugetlb page size " + SizeName(request.page_size) + " given twice in \"" +
                 text + "\"";
        return std::nullopt;
      }
    }
    requests.push_back(request);
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return requests;
}

long ReserveHugepages(std::size_t page_size, long count, int node) {
  const std::string dir = PoolDir(page_size, node);
  std::optional<long> total = ReadKernelLong(dir + "/nr_hugepages");
  std::optional<long> available = AvailableHugetlbPages(page_size, node);
  if (!total || !available) {
    throw std::runtime_error("no " + SizeName(page_size) + " hugetlb pool" + OnNode(node) +
                             " (" + dir + " is missing)");
  }
  if (count <= *available) return *available;
  // nr_hugepages reads persistent + surplus pages but sets the persistent count.
  long persistent = *total - ReadKernelLong(dir + "/surplus_hugepages").value_or(0);
  SystemSettings::Get().Set(dir + "/nr_hugepages",
                            std::to_string(persistent + (count - *available)));
  return AvailableHugetlbPages(page_size, node).value_or(0);
}

const char* BackingName(Backing backing) {
  switch (backing) {
    case Backing::kHugetlb1G: return "hugetlb1g";
    case Backing::kHugetlb2M: return "hugetlb2m";
    case Backing::kThp: return "thp";
    case Backing::kBase4K: return "4k";
  }
  return "unknown";
}

HugetlbArena::HugetlbArena(const Topology& topology, std::optional<int> node)
    : topology_(topology), node_(node) {
  if (node_ && !topology_.HasNode(*node_)) {
    throw std::invalid_argument("no NUMA node " + std::to_string(*node_) + " to bind memory to");
  }
}

HugetlbArena::~HugetlbArena() {
  for (const Mapping& mapping : mappings_) munmap(mapping.addr, mapping.len);
}

const ArenaRegion& HugetlbArena::Allocate(std::size_t size) {
  if (size == 0) size = kPage4K;
  const int node = node_.value_or(-1);
  std::vector<std::string> notes;
  std::optional<Mapped> mapped = TryHugetlb(topology_, node, kPage1G, size, &notes);
  if (!mapped) mapped = TryHugetlb(topology_, node, kPage2M, size, &notes);
  if (!mapped) mapped = TryThp(topology_, node, size, &notes);
  if (!mapped) mapped = Map4K(topology_, node, size, &notes);
  mappings_.push_back({mapped->map_addr, mapped->map_len});
  mapped->region.why = Join(notes);
  regions_.push_back(mapped->region);
  stable_regions_.push_back(mapped->region);
  return stable_regions_.back();
}

namespace internal {
void OverrideThpModeForTesting(const std::string& mode) {
  std::lock_guard<std::mutex> lock(g_thp_override_mutex);
  g_thp_override = mode;
}
}  // namespace internal

}  // namespace faultlab
