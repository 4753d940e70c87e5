// The model's machine: node memory from HugetlbArena, the memmap, lock-free frame pools and the
// per-Cpu frame caches in front of them.
//
// Every region is carved into 2 MiB chunks, so one table of chunk addresses turns any pfn into its
// memory and every 2 MiB frame is a 512-aligned pfn range. A node's pool is one Treiber stack per
// order whose head word packs the top frame (pfn + 1, 0 when empty) with a generation tag that
// every successful push and pop bumps: a pop that read a stale head fails its compare-and-swap
// even when the same frame is back on top (ABA). Links live in FrameMeta::next_free and are only
// written by the owner of a frame that is off the stack, so relaxed accesses suffice for them; the
// head's release (push) and acquire (pop) order the links and the frame's memory. Refills and
// drains move half a cache in one compare-and-swap each: a drain pushes a pre-linked chain, and a
// refill walks up to 32 links below the top and detaches them at once, which the generation tag
// makes safe (the walk is only trusted if the head did not move meanwhile).
#include "kernels/machine.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "topology/hugetlb.h"
#include "topology/topology.h"

namespace faultlab::model {
namespace {

constexpr std::size_t kFramesPerChunk = std::size_t{1} << kHugeOrder;
constexpr std::size_t kChunkBytes = kFramesPerChunk * kPageSize;
constexpr std::uint32_t kStructuralFlags = kFrameHead | kFrameTail;
constexpr int kOrderSlots = 2;   // order 0 and order kHugeOrder

int OrderSlot(int order) { return order == 0 ? 0 : 1; }

std::size_t RoundUpToChunk(std::size_t bytes) {
  return (bytes + kChunkBytes - 1) / kChunkBytes * kChunkBytes;
}

// A state a correct model never reaches: there is nothing to recover, and an exception would
// unwind through lock-free code that other threads depend on.
[[noreturn]] void ModelBug(const std::string& what) {
  std::fprintf(stderr, "faultlab model bug: %s\n", what.c_str());
  std::abort();
}
[[noreturn]] void ModelBug(const char* what, Pfn pfn) {
  ModelBug(std::string(what) + " (pfn " + std::to_string(pfn) + ")");
}

constexpr std::uint64_t HeadWord(std::uint64_t generation, std::uint32_t top) {
  return (generation << 32) | top;
}
constexpr std::uint32_t HeadTop(std::uint64_t head) { return static_cast<std::uint32_t>(head); }
constexpr std::uint64_t HeadGeneration(std::uint64_t head) { return head >> 32; }

}  // namespace

// One Treiber stack. Its own cache line: the order-0 and order-9 pools of a node, and the pools
// of different nodes, are contended independently.
struct alignas(64) Machine::FreeList {
  std::atomic<std::uint64_t> head{0};

  // Pushes frames[0..count), linked in that order, in one compare-and-swap; frames[0] ends on top.
  void PushBatch(std::vector<FrameMeta>& memmap, const Pfn* frames, int count) {
    if (count == 0) return;
    for (int i = 0; i + 1 < count; ++i) {
      memmap[frames[i]].next_free.store(static_cast<std::uint32_t>(frames[i + 1] + 1),
                                        std::memory_order_relaxed);
    }
    FrameMeta& last = memmap[frames[count - 1]];
    const auto top = static_cast<std::uint32_t>(frames[0] + 1);
    std::uint64_t old = head.load(std::memory_order_relaxed);
    for (;;) {
      last.next_free.store(HeadTop(old), std::memory_order_relaxed);
      if (head.compare_exchange_weak(old, HeadWord(HeadGeneration(old) + 1, top),
                                     std::memory_order_release, std::memory_order_relaxed)) {
        return;
      }
    }
  }

  // Pops up to `max` frames into `out` in one compare-and-swap; returns how many.
  int PopBatch(const std::vector<FrameMeta>& memmap, Pfn* out, int max) {
    std::uint64_t old = head.load(std::memory_order_acquire);
    for (;;) {
      std::uint32_t cursor = HeadTop(old);
      if (cursor == 0) return 0;
      int count = 0;
      // Links read here may be stale if the stack moved since `old` was read: the
      // compare-and-swap below then fails on the generation and the walk is discarded.
      while (cursor != 0 && count < max) {
        out[count++] = cursor - 1;
        cursor = memmap[cursor - 1].next_free.load(std::memory_order_relaxed);
      }
      // Release as well as acquire: a later popper that takes these frames' successors must not
      // see link values written after this pop by the frames' new owners.
      if (head.compare_exchange_weak(old, HeadWord(HeadGeneration(old) + 1, cursor),
                                     std::memory_order_acq_rel, std::memory_order_acquire)) {
        return count;
      }
    }
  }

  // Quiescent callers only: under concurrent pushes and pops the walk may be cut short.
  std::size_t Count(const std::vector<FrameMeta>& memmap) const {
    std::size_t count = 0;
    std::uint32_t cursor = HeadTop(head.load(std::memory_order_acquire));
    while (cursor != 0 && count < memmap.size()) {
      ++count;
      cursor = memmap[cursor - 1].next_free.load(std::memory_order_relaxed);
    }
    return count;
  }
};

struct Machine::Node {
  FreeList pools[kOrderSlots];
};

Machine::Machine(const Topology& topology, const std::vector<NodeSpec>& nodes) {
  if (nodes.empty()) throw std::invalid_argument("a machine needs at least one node");
  if (nodes.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw std::invalid_argument("too many simulated nodes: " + std::to_string(nodes.size()));
  }
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].frames_4k == 0) {
      throw std::invalid_argument("simulated node " + std::to_string(i) + " has no 4 KiB frames");
    }
  }

  // Where each node's frames sit in pfn space; regions are whole chunks, so every region starts
  // on a 512-aligned pfn.
  struct RegionPlan {
    const ArenaRegion* region;
    std::size_t chunks;
  };
  struct NodePlan {
    RegionPlan small;
    std::optional<RegionPlan> huge;
  };
  std::vector<NodePlan> plans;
  std::map<std::optional<int>, HugetlbArena*> arena_of_real_node;
  std::size_t total_chunks = 0;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NodeSpec& spec = nodes[i];
    HugetlbArena*& arena = arena_of_real_node[spec.real_node];
    if (arena == nullptr) {
      arenas_.push_back(std::make_unique<HugetlbArena>(topology, spec.real_node));
      arena = arenas_.back().get();
    }
    const std::size_t small_frames = spec.frames_4k + (i == 0 ? 1 : 0);   // + the zero frame
    const std::size_t small_bytes = RoundUpToChunk(small_frames * kPageSize);
    NodePlan plan{{&arena->Allocate(small_bytes), small_bytes / kChunkBytes}, std::nullopt};
    total_chunks += plan.small.chunks;
    if (spec.frames_2m > 0) {
      plan.huge = RegionPlan{&arena->Allocate(spec.frames_2m * kChunkBytes), spec.frames_2m};
      total_chunks += spec.frames_2m;
    }
    plans.push_back(plan);
  }
  // Stacks name a frame by pfn + 1 in 32 bits.
  if (total_chunks * kFramesPerChunk >= std::numeric_limits<std::uint32_t>::max()) {
    throw std::invalid_argument("too many frames for the model's 32-bit frame links");
  }

  memmap_ = std::vector<FrameMeta>(total_chunks * kFramesPerChunk);
  chunk_base_.reserve(total_chunks);
  auto add_chunks = [&](const RegionPlan& plan) {
    const Pfn first = chunk_base_.size() * kFramesPerChunk;
    auto* base = static_cast<std::byte*>(plan.region->addr);
    for (std::size_t c = 0; c < plan.chunks; ++c) chunk_base_.push_back(base + c * kChunkBytes);
    return first;
  };

  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NodeSpec& spec = nodes[i];
    const NodePlan& plan = plans[i];
    const auto node_id = static_cast<std::uint16_t>(i);
    auto state = std::make_unique<Node>();

    // The 4 KiB frames, stacked so that pops hand out ascending pfns; the chunk's padding past
    // them stays outside every pool.
    const Pfn small_first = add_chunks(plan.small);
    for (std::size_t f = 0; f < plan.small.chunks * kFramesPerChunk; ++f) {
      memmap_[small_first + f].node = node_id;
    }
    for (std::size_t f = 0; f < spec.frames_4k; ++f) {
      const bool last = f + 1 == spec.frames_4k;
      memmap_[small_first + f].next_free.store(
          last ? 0 : static_cast<std::uint32_t>(small_first + f + 2), std::memory_order_relaxed);
    }
    state->pools[OrderSlot(0)].head.store(HeadWord(0, static_cast<std::uint32_t>(small_first + 1)),
                                          std::memory_order_relaxed);
    if (i == 0) {
      zero_pfn_ = small_first + spec.frames_4k;
      std::memset(frame(zero_pfn_), 0, kPageSize);
      memmap_[zero_pfn_].flags.store(kFrameZero, std::memory_order_relaxed);
      memmap_[zero_pfn_].refcount.store(1, std::memory_order_relaxed);
    }

    NodeInfo info;
    info.node = static_cast<int>(i);
    info.real_node = spec.real_node;
    info.frames_4k = spec.frames_4k;
    info.frames_2m = spec.frames_2m;
    info.backing = BackingName(plan.small.region->backing);
    info.why = "4 KiB frames: " + plan.small.region->why;

    if (plan.huge) {
      const Pfn huge_first = add_chunks(*plan.huge);
      for (std::size_t h = 0; h < spec.frames_2m; ++h) {
        const Pfn head = huge_first + h * kFramesPerChunk;
        for (std::size_t f = 0; f < kFramesPerChunk; ++f) {
          FrameMeta& meta = memmap_[head + f];
          meta.node = node_id;
          meta.flags.store(f == 0 ? kFrameHead : kFrameTail, std::memory_order_relaxed);
        }
        memmap_[head].order = kHugeOrder;
        const bool last = h + 1 == spec.frames_2m;
        memmap_[head].next_free.store(
            last ? 0 : static_cast<std::uint32_t>(head + kFramesPerChunk + 1),
            std::memory_order_relaxed);
      }
      state->pools[OrderSlot(kHugeOrder)].head.store(
          HeadWord(0, static_cast<std::uint32_t>(huge_first + 1)), std::memory_order_relaxed);
      const std::string huge_backing = BackingName(plan.huge->region->backing);
      if (huge_backing != info.backing) info.backing += "+" + huge_backing;
      info.why += "\n2 MiB frames: " + plan.huge->region->why;
    }
    node_state_.push_back(std::move(state));
    node_info_.push_back(std::move(info));
  }
}

// Every Cpu must be gone first: a later ~Cpu would drain its caches into freed pools. Checked,
// because that mistake otherwise corrupts memory silently.
Machine::~Machine() {
  for (int i = 0; i < kMaxCpus; ++i) {
    if (slots_[i].cpu.load(std::memory_order_acquire) != nullptr) {
      ModelBug("machine destroyed while Cpu slot " + std::to_string(i) + " is registered");
    }
  }
}

int Machine::node_count() const { return static_cast<int>(node_state_.size()); }

Pfn Machine::AllocateFrame(Cpu& cpu, int node, std::uint32_t flags) {
  if (node < 0 || node >= node_count()) {
    throw std::invalid_argument("no simulated node " + std::to_string(node));
  }
  Cpu::Cache& cache = cpu.caches_[node];
  if (cache.count == 0) {
    ++cpu.stats_.frame_pool_refills;
    cache.count = node_state_[node]->pools[OrderSlot(0)].PopBatch(memmap_, cache.frames,
                                                                   Cpu::kCacheSize / 2);
    if (cache.count == 0) return kNoPfn;
  }
  const Pfn pfn = cache.frames[--cache.count];
  FrameMeta& meta = memmap_[pfn];
  meta.flags.store(flags & ~kStructuralFlags, std::memory_order_relaxed);
  meta.mapcount.store(0, std::memory_order_relaxed);
  // Release: a TryGetFrame that pins the frame through a racy read sees the flags above.
  meta.refcount.store(1, std::memory_order_release);
  return pfn;
}

Pfn Machine::AllocateHugeFrame(Cpu& cpu, int node, std::uint32_t flags) {
  if (node < 0 || node >= node_count()) {
    throw std::invalid_argument("no simulated node " + std::to_string(node));
  }
  (void)cpu;   // huge frames bypass the caches: there are few, and a cache would strand them
  Pfn pfn = kNoPfn;
  if (node_state_[node]->pools[OrderSlot(kHugeOrder)].PopBatch(memmap_, &pfn, 1) == 0) {
    return kNoPfn;
  }
  FrameMeta& meta = memmap_[pfn];
  meta.flags.store((flags & ~kStructuralFlags) | kFrameHead, std::memory_order_relaxed);
  meta.mapcount.store(0, std::memory_order_relaxed);
  meta.refcount.store(1, std::memory_order_release);
  return pfn;
}

void Machine::FreeFrame(Cpu& cpu, Pfn pfn) {
  if (pfn >= memmap_.size()) ModelBug("FreeFrame of a pfn outside the machine", pfn);
  if (pfn == zero_pfn_) ModelBug("FreeFrame of the zero frame", pfn);
  FrameMeta& meta = memmap_[pfn];
  const std::uint32_t structure = meta.flags.load(std::memory_order_relaxed) & kStructuralFlags;
  if (structure & kFrameTail) ModelBug("FreeFrame of a tail frame", pfn);
  if (meta.refcount.load(std::memory_order_relaxed) != 0) {
    ModelBug("FreeFrame of a frame that still has references", pfn);
  }
  if (meta.mapcount.load(std::memory_order_relaxed) != 0) {
    ModelBug("frame freed while still mapped", pfn);
  }
  meta.flags.store(structure, std::memory_order_relaxed);

  if (meta.order == kHugeOrder) {
    node_state_[meta.node]->pools[OrderSlot(kHugeOrder)].PushBatch(memmap_, &pfn, 1);
    return;
  }
  Cpu::Cache& cache = cpu.caches_[meta.node];
  if (cache.count == Cpu::kCacheSize) {
    // The bottom half is the coldest: it goes back, the recently freed (warm) frames stay.
    constexpr int kHalf = Cpu::kCacheSize / 2;
    node_state_[meta.node]->pools[OrderSlot(0)].PushBatch(memmap_, cache.frames, kHalf);
    std::memmove(cache.frames, cache.frames + kHalf, (Cpu::kCacheSize - kHalf) * sizeof(Pfn));
    cache.count -= kHalf;
  }
  cache.frames[cache.count++] = pfn;
}

void Machine::PutFrame(Cpu& cpu, Pfn pfn) {
  if (pfn == zero_pfn_) ModelBug("PutFrame of the zero frame", pfn);
  // Acquire-release: the last putter frees the frame only after every other holder's accesses
  // to its memory.
  const std::int32_t old = memmap_[pfn].refcount.fetch_sub(1, std::memory_order_acq_rel);
  if (old == 1) {
    FreeFrame(cpu, pfn);
  } else if (old <= 0) {
    ModelBug("refcount underflow in PutFrame", pfn);
  }
}

bool Machine::TryGetFrame(Pfn pfn) {
  // The zero frame is never refcounted (its entries are special), so it is always "pinned".
  if (pfn == zero_pfn_) return true;
  std::atomic<std::int32_t>& refcount = memmap_[pfn].refcount;
  std::int32_t count = refcount.load(std::memory_order_relaxed);
  while (count > 0) {
    // Acquire: the pinned frame's metadata and memory as its owner published them.
    if (refcount.compare_exchange_weak(count, count + 1, std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
      return true;
    }
  }
  return false;
}

std::size_t Machine::free_frames(int node, int order) const {
  if (node < 0 || node >= node_count()) {
    throw std::invalid_argument("no simulated node " + std::to_string(node));
  }
  if (order != 0 && order != kHugeOrder) {
    throw std::invalid_argument("no frames of order " + std::to_string(order));
  }
  std::size_t count = node_state_[node]->pools[OrderSlot(order)].Count(memmap_);
  // Other Cpus' cache counts are their threads' plain data: exact only when those threads are
  // quiescent (joined, or synchronized with the caller), which is how tests and reports call it.
  if (order == 0) {
    for (int i = 0; i < kMaxCpus; ++i) {
      const Cpu* cpu = slots_[i].cpu.load(std::memory_order_acquire);
      if (cpu) count += static_cast<std::size_t>(cpu->caches_[node].count);
    }
  }
  return count;
}

int Machine::RegisterCpu(Cpu* cpu) {
  for (int i = 0; i < kMaxCpus; ++i) {
    Cpu* expected = nullptr;
    // Release: an exclusive section that finds this Cpu sees it fully constructed.
    if (slots_[i].cpu.compare_exchange_strong(expected, cpu, std::memory_order_acq_rel,
                                              std::memory_order_relaxed)) {
      int used = slots_used_.load(std::memory_order_relaxed);
      while (used < i + 1 &&
             !slots_used_.compare_exchange_weak(used, i + 1, std::memory_order_seq_cst)) {
      }
      return i;
    }
  }
  throw std::runtime_error("a machine holds at most " + std::to_string(kMaxCpus) + " Cpus");
}

void Machine::UnregisterCpu(int index) {
  slots_[index].cpu.store(nullptr, std::memory_order_release);
}

void Machine::DrainCache(Cpu& cpu) {
  for (int node = 0; node < node_count(); ++node) {
    Cpu::Cache& cache = cpu.caches_[node];
    node_state_[node]->pools[OrderSlot(0)].PushBatch(memmap_, cache.frames, cache.count);
    cache.count = 0;
  }
}

// The caches exist before the Cpu is registered, so an exclusive section never finds a Cpu
// without them.
Cpu::Cpu(Machine& machine, int node) : machine_(machine), node_(node), slot_(-1) {
  if (node < 0 || node >= machine.node_count()) {
    throw std::invalid_argument("no simulated node " + std::to_string(node) + " for a Cpu");
  }
  caches_.resize(static_cast<std::size_t>(machine.node_count()));
  slot_ = machine.RegisterCpu(this);
}

Cpu::~Cpu() {
  machine_.DrainCache(*this);
  machine_.UnregisterCpu(slot_);
}

}  // namespace faultlab::model
