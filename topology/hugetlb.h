// Hugetlb pools and the arena that the model and the benchmarks take memory from.
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace faultlab {

class Topology;

inline constexpr std::size_t kPage4K = 4096;
inline constexpr std::size_t kPage2M = 2ul << 20;
inline constexpr std::size_t kPage1G = 1ul << 30;

// The THP mode for PMD-sized (2 MiB) anonymous pages: the per-size control
// (hugepages-2048kB/enabled) unless it says "inherit", else the global one; "always", "madvise"
// or "never", and empty when THP is not built in.
std::string ThpMode();

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

// Pages of `page_size` a new mapping can still take (on `node`, or from the global pool when
// node < 0): free pages less those already promised to mappings (resv_hugepages). nullopt when
// there is no such pool.
std::optional<long> AvailableHugetlbPages(std::size_t page_size, int node);

struct HugepageRequest {
  std::size_t page_size = kPage2M;
  long count = 0;
};
// Parses --reserve-hugepages: "N" (2 MiB pages) or a list of SIZE:N with SIZE such as 2M, 2m,
// 2048k, 1G or 1g ("2M:64,1G:1"); a count of 0 asks for nothing. nullopt with `error` set to one
// line naming the bad token on bad input, a size given twice, or a size this kernel lacks.
std::optional<std::vector<HugepageRequest>> ParseHugepageRequests(const std::string& text,
                                                                  std::string* error);

// Raises the pool of `page_size` (on `node`, or globally when node < 0) until at least `count`
// pages are free, through SystemSettings (journalled, restored on exit), and returns how many
// pages are then free: the kernel may grant fewer. A pool that already has `count` free pages is
// left alone. Globally, pages reserved by existing mappings (resv_hugepages) do not count as
// free. Throws std::runtime_error if there is no such pool or it cannot be written.
long ReserveHugepages(std::size_t page_size, long count, int node);

// Which memory an arena region ended up backed by.
enum class Backing { kHugetlb1G, kHugetlb2M, kThp, kBase4K };
const char* BackingName(Backing backing);  // "hugetlb1g", "hugetlb2m", "thp", "4k"

// A page-aligned region of memory for the model's page tables and frames.
struct ArenaRegion {
  void* addr = nullptr;
  std::size_t size = 0;
  Backing backing = Backing::kBase4K;
  // Why this backing, one line: each larger backing tried and why it was not used, then what
  // was got, e.g. "2 MiB hugetlb: 0 free pages on node 0 (pool empty); THP madvised: got 64 of
  // 64 MiB as huge pages".
  std::string why;
  int node = -1;     // node the region is bound to, -1 if unbound
};

// Hands out regions backed by the largest page that is free: 1 GiB hugetlb when a whole page
// fits and is free, else 2 MiB hugetlb, else anonymous memory madvised for THP, else 4 KiB
// pages; bound to a node when one is given, and prefaulted so timing never pays first touch.
//
// A page size is only used when rounding the request up to it at most doubles it (a 1 GiB page
// for requests over 512 MiB, 2 MiB pages for requests of 1 MiB or more): a benchmark that asks
// for 8 MiB should not pin a whole 1 GiB page. Hugetlb pages are never taken from the pool
// beyond what is free (checked on the node when one is given, then mmap without MAP_NORESERVE
// and MADV_POPULATE_WRITE, which fail with an error rather than a SIGBUS). A THP region counts
// as THP only if /proc/self/smaps shows huge pages in it after the prefault; if it got none it is
// recorded as 4 KiB with the reason. The 4 KiB fallback is madvised MADV_NOHUGEPAGE, so it stays
// 4 KiB even with THP=always.
class HugetlbArena {
 public:
  HugetlbArena(const Topology& topology, std::optional<int> node);
  ~HugetlbArena();  // unmaps every region
  HugetlbArena(const HugetlbArena&) = delete;
  HugetlbArena& operator=(const HugetlbArena&) = delete;

  // `size` is rounded up to the backing's page size. Throws std::bad_alloc when even 4 KiB
  // memory cannot be mapped. The returned reference stays valid for the arena's lifetime.
  const ArenaRegion& Allocate(std::size_t size);
  const std::vector<ArenaRegion>& regions() const { return regions_; }

 private:
  struct Mapping {
    void* addr;
    std::size_t len;
  };
  const Topology& topology_;
  std::optional<int> node_;
  std::vector<ArenaRegion> regions_;
  std::deque<ArenaRegion> stable_regions_;  // what Allocate returns references to
  std::vector<Mapping> mappings_;           // what the destructor unmaps (THP guard pages too)
};

namespace internal {
// Tests only: makes the arena see this THP mode ("always", "madvise", "never") instead of
// reading sysfs; an empty string goes back to sysfs. Lets the 4 KiB fallback be tested on a
// machine where THP works.
void OverrideThpModeForTesting(const std::string& mode);
}  // namespace internal

}  // namespace faultlab
