// The model's physical machine: frames on simulated NUMA nodes, their metadata, and the CPUs
// that fault.
//
// Memory comes from the node-bound HugetlbArena (topology/hugetlb.h), so page-table pages and data
// frames are real memory on a real node, backed by the largest page that was free. Each simulated
// node is mapped onto a real node (or onto unbound memory); the mapping and the backing are
// recorded in NodeInfo so a report can say what the model ran on.
//
// Frames are 4 KiB (order 0) or 2 MiB (order 9, for hugetlb mappings), numbered by Pfn. Their
// metadata lives apart from them, like the kernel's memmap: refcount, mapcount, node, flags.
// Allocation is lock-free: each node keeps one Treiber stack per order (ABA-safe through a
// generation tag in the head word), and each Cpu keeps a small cache of 4 KiB frames per node in
// front of it, refilled and drained in batches, as the kernel's per-CPU page lists are.
//
// A Cpu is the per-thread context of the model: one per thread that faults, never shared between
// threads (the kernel's per-CPU data). Exclusive sections (AddressSpace's fork, map and unmap)
// find every Cpu through the machine's registry, so a Cpu must be constructed before and
// destroyed after the faults it runs, and a machine holds at most kMaxCpus of them at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/pte.h"

namespace faultlab {
class Topology;
class HugetlbArena;
}  // namespace faultlab

namespace faultlab::model {

inline constexpr int kHugeOrder = 9;                       // a 2 MiB frame is 512 4 KiB frames
inline constexpr Pfn kNoPfn = ~0ull;

// FrameMeta::flags
inline constexpr std::uint32_t kFrameZero = 1u << 0;       // the shared zero frame
inline constexpr std::uint32_t kFramePageTable = 1u << 1;  // holds a page table
inline constexpr std::uint32_t kFrameAnon = 1u << 2;       // anonymous data
inline constexpr std::uint32_t kFrameCache = 1u << 3;      // in a ShmemFile's page cache
inline constexpr std::uint32_t kFrameHead = 1u << 4;       // first frame of a 2 MiB frame
inline constexpr std::uint32_t kFrameTail = 1u << 5;       // frames 1..511 of a 2 MiB frame
// A shared PTE table's accounting (COW-PTE): see address_space.h.
inline constexpr std::uint32_t kFrameCowPteEager = 1u << 6;
inline constexpr std::uint32_t kFrameCowPteLazy = 1u << 7;

// Per-frame metadata (struct page). One cache line each, as struct page is 64 bytes: two threads
// faulting neighbouring frames must not bounce a shared line between them.
struct alignas(64) FrameMeta {
  std::atomic<std::int32_t> refcount{0};   // 0: free
  std::atomic<std::int32_t> mapcount{0};   // page-table entries mapping it
  std::atomic<std::uint32_t> flags{0};
  std::atomic<std::uint32_t> next_free{0}; // free-list link (index of next free frame + 1)
  std::uint16_t node = 0;                  // simulated node
  std::uint16_t order = 0;
};
static_assert(sizeof(FrameMeta) == 64);

// One simulated node.
struct NodeSpec {
  std::optional<int> real_node;   // the real node its memory is bound to; nullopt: unbound
  std::size_t frames_4k = 0;      // 4 KiB frames (data and page tables)
  std::size_t frames_2m = 0;      // 2 MiB frames (hugetlb mappings)
};

// What a simulated node got.
struct NodeInfo {
  int node = 0;
  std::optional<int> real_node;
  std::size_t frames_4k = 0;
  std::size_t frames_2m = 0;
  std::string backing;            // BackingName() of its regions, e.g. "hugetlb2m" or "thp+4k"
  std::string why;                // HugetlbArena's reasons, one line per region
};

class Cpu;

class Machine {
 public:
  // Takes each node's memory from a HugetlbArena bound to its real node. Throws
  // std::invalid_argument on an empty spec or a node without 4 KiB frames, std::bad_alloc when
  // memory cannot be had. One extra 4 KiB frame on node 0 becomes the zero frame.
  Machine(const Topology& topology, const std::vector<NodeSpec>& nodes);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  int node_count() const;
  const std::vector<NodeInfo>& nodes() const { return node_info_; }

  // --- Frames ---
  // A zeroed or unzeroed frame with refcount 1, mapcount 0 and `flags`; kNoPfn when the node's
  // pool (and cache) is empty. Order-0 frames go through the Cpu's cache for `node`.
  Pfn AllocateFrame(Cpu& cpu, int node, std::uint32_t flags);
  Pfn AllocateHugeFrame(Cpu& cpu, int node, std::uint32_t flags);   // order 9, head pfn
  // Returns a frame (refcount must be 0) to the Cpu's cache or its node's pool.
  void FreeFrame(Cpu& cpu, Pfn pfn);
  // Drops one reference; frees the frame when it was the last. Never call it on the zero frame.
  void PutFrame(Cpu& cpu, Pfn pfn);
  // Takes a reference unless the refcount is 0 (get_page_unless_zero()): a frame found through a
  // racy read is pinned only if it was not freed meanwhile; the caller then re-checks the entry.
  bool TryGetFrame(Pfn pfn);

  FrameMeta& meta(Pfn pfn) { return memmap_[pfn]; }
  const FrameMeta& meta(Pfn pfn) const { return memmap_[pfn]; }
  // The frame's memory: 4 KiB, or 2 MiB for a huge frame's head.
  std::byte* frame(Pfn pfn) const {
    return chunk_base_[pfn >> kHugeOrder] + ((pfn & ((1u << kHugeOrder) - 1)) << kPageShift);
  }
  Pfn zero_pfn() const { return zero_pfn_; }
  bool is_zero_pfn(Pfn pfn) const { return pfn == zero_pfn_; }
  Pfn frame_count() const { return memmap_.size(); }
  // Frames free in the node's pool plus every Cpu's cache: for tests and for reports.
  std::size_t free_frames(int node, int order) const;

  // --- CPUs ---
  // One slot per registered Cpu, owned by the machine so that an exclusive section or a TLB flush
  // may look at a slot while its Cpu is being destroyed. Cache-line sized: the read side of an
  // operation writes only its own slot.
  static constexpr int kMaxCpus = 256;
  struct alignas(64) CpuSlot {
    std::atomic<Cpu*> cpu{nullptr};                 // nullptr: free
    std::atomic<const void*> active_mm{nullptr};   // the address space of the current operation
    std::atomic<const void*> accessing{nullptr};   // ... while it holds a user translation
    std::atomic<std::uint64_t> generation{0};      // translations made, for TLB-flush waits
  };
  CpuSlot& cpu_slot(int index) { return slots_[index]; }
  const CpuSlot& cpu_slot(int index) const { return slots_[index]; }
  // Slots ever used: exclusive sections scan only these.
  int cpu_slots_used() const { return slots_used_.load(std::memory_order_seq_cst); }

 private:
  friend class Cpu;
  struct Node;
  struct FreeList;
  int RegisterCpu(Cpu* cpu);
  void UnregisterCpu(int index);
  void DrainCache(Cpu& cpu);

  std::vector<std::unique_ptr<HugetlbArena>> arenas_;
  std::vector<std::unique_ptr<Node>> node_state_;
  std::vector<NodeInfo> node_info_;
  std::vector<FrameMeta> memmap_;
  std::vector<std::byte*> chunk_base_;    // per 512 pfns: the address of pfn & ~511
  Pfn zero_pfn_ = kNoPfn;
  CpuSlot slots_[kMaxCpus];
  std::atomic<int> slots_used_{0};
};

// Counters one Cpu keeps (never shared, so they cost nothing to update).
struct CpuStats {
  std::uint64_t faults = 0;              // Fault() calls
  std::uint64_t fault_retries = 0;       // lost a pte_same race (or waited for migration)
  std::uint64_t zeropage_maps = 0;
  std::uint64_t pages_zeroed = 0;
  std::uint64_t pages_copied = 0;        // COW copies, uffd copies, migrations (4 KiB each)
  std::uint64_t pages_reused = 0;        // write faults that reused an exclusive page
  std::uint64_t tables_allocated = 0;
  std::uint64_t tables_freed = 0;
  std::uint64_t cow_pte_reused = 0;      // breaks that reused the shared table
  std::uint64_t cow_pte_copied = 0;      // breaks that copied it
  std::uint64_t uffd_events = 0;
  std::uint64_t numa_hint_faults = 0;    // hinting faults that took the entry (not lost races)
  std::uint64_t pages_migrated = 0;
  std::uint64_t migration_waits = 0;
  std::uint64_t frame_pool_refills = 0;  // cache misses that went to a node's pool
};

// Every CpuStats counter with its name: one list for sums and reports.
inline constexpr std::pair<const char*, std::uint64_t CpuStats::*> kCpuStatsFields[] = {
    {"faults", &CpuStats::faults},
    {"fault_retries", &CpuStats::fault_retries},
    {"zeropage_maps", &CpuStats::zeropage_maps},
    {"pages_zeroed", &CpuStats::pages_zeroed},
    {"pages_copied", &CpuStats::pages_copied},
    {"pages_reused", &CpuStats::pages_reused},
    {"tables_allocated", &CpuStats::tables_allocated},
    {"tables_freed", &CpuStats::tables_freed},
    {"cow_pte_reused", &CpuStats::cow_pte_reused},
    {"cow_pte_copied", &CpuStats::cow_pte_copied},
    {"uffd_events", &CpuStats::uffd_events},
    {"numa_hint_faults", &CpuStats::numa_hint_faults},
    {"pages_migrated", &CpuStats::pages_migrated},
    {"migration_waits", &CpuStats::migration_waits},
    {"frame_pool_refills", &CpuStats::frame_pool_refills},
};

inline CpuStats& operator+=(CpuStats& sum, const CpuStats& more) {
  for (const auto& [name, field] : kCpuStatsFields) sum.*field += more.*field;
  return sum;
}

// Aligned to cache lines so that two Cpus never share one, wherever the caller puts them.
class alignas(64) Cpu {
 public:
  // `node` is the simulated node this CPU sits on: where its faults allocate and where the NUMA
  // hinting fault wants pages to be. Throws std::runtime_error when kMaxCpus are registered.
  Cpu(Machine& machine, int node);
  ~Cpu();   // returns its cached frames to their pools
  Cpu(const Cpu&) = delete;
  Cpu& operator=(const Cpu&) = delete;

  Machine& machine() const { return machine_; }
  int node() const { return node_; }
  CpuStats& stats() { return stats_; }

  // Its slot in the machine's registry: the read side of address spaces' exclusive sections.
  Machine::CpuSlot& slot() const { return machine_.cpu_slot(slot_); }
  // Operations of address spaces this Cpu is inside (never more than one: they do not nest).
  int active_depth = 0;

 private:
  friend class Machine;
  static constexpr int kCacheSize = 64;   // frames per node cache; refills and drains half
  struct Cache {
    Pfn frames[kCacheSize];
    int count = 0;
  };
  Machine& machine_;
  int node_;
  int slot_;
  std::vector<Cache> caches_;             // one per node
  CpuStats stats_;
};

}  // namespace faultlab::model
