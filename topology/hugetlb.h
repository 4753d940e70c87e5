// Hugetlb pools and the arena that the model and the benchmarks take memory from.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace faultlab {

class Topology;

inline constexpr std::size_t kPage4K = 4096;
inline constexpr std::size_t kPage2M = 2ul << 20;
inline constexpr std::size_t kPage1G = 1ul << 30;

// The hugetlb page sizes this kernel supports (from /sys/kernel/mm/hugepages).
std::vector<std::size_t> HugetlbPageSizes();

struct HugetlbPool {
  std::size_t page_size = 0;
  int node = -1;          // -1: the global pool
  long total = 0;         // nr_hugepages
  long free = 0;          // free_hugepages
  long surplus = 0;
};
// Every pool per size, globally and per node.
std::vector<HugetlbPool> ReadHugetlbPools();

struct HugepageRequest {
  std::size_t page_size = kPage2M;
  long count = 0;
};
// Parses --reserve-hugepages: "N" (2 MiB pages) or a list of SIZE:N with SIZE 2M or 1G
// ("2M:64,1G:1"). nullopt with `error` set on bad input or an unsupported size.
std::optional<std::vector<HugepageRequest>> ParseHugepageRequests(const std::string& text,
                                                                  std::string* error);

// Raises the pool of `page_size` (on `node`, or globally when node < 0) to hold at least `count`
// pages through SystemSettings (journalled, restored on exit) and returns how many pages the
// pool then has: the kernel may grant fewer.
long ReserveHugepages(std::size_t page_size, long count, int node);

// Which memory an arena region ended up backed by.
enum class Backing { kHugetlb1G, kHugetlb2M, kThp, kBase4K };
const char* BackingName(Backing backing);  // "hugetlb1g", "hugetlb2m", "thp", "4k"

// A page-aligned region of memory for the model's page tables and frames.
struct ArenaRegion {
  void* addr = nullptr;
  std::size_t size = 0;
  Backing backing = Backing::kBase4K;
  std::string why;   // why this backing, e.g. "no free 2 MiB hugetlb pages on node 0; THP madvised"
  int node = -1;     // node the region is bound to, -1 if unbound
};

// Hands out regions backed by the largest page that is free: 1 GiB hugetlb when a whole page
// fits and is free, else 2 MiB hugetlb, else anonymous memory madvised for THP, else 4 KiB
// pages; bound to a node when one is given, and prefaulted so timing never pays first touch.
class HugetlbArena {
 public:
  HugetlbArena(const Topology& topology, std::optional<int> node);
  ~HugetlbArena();  // unmaps every region
  HugetlbArena(const HugetlbArena&) = delete;
  HugetlbArena& operator=(const HugetlbArena&) = delete;

  // `size` is rounded up to the backing's page size. Throws std::bad_alloc when even 4 KiB
  // memory cannot be mapped.
  const ArenaRegion& Allocate(std::size_t size);
  const std::vector<ArenaRegion>& regions() const { return regions_; }

 private:
  const Topology& topology_;
  std::optional<int> node_;
  std::vector<ArenaRegion> regions_;
};

}  // namespace faultlab
