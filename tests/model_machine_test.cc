// The model's machine and shmem page cache: frame allocation and refcounting, the zero frame,
// simulated nodes, the per-Cpu caches, and lock-free races (several Cpus allocating and freeing,
// several faults creating the same file pages), checked by behaviour only, never by timing. The
// races are meant to be run under ThreadSanitizer too (faultlab test --sanitize thread).
#include "kernels/machine.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <latch>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/shmem_file.h"
#include "topology/topology.h"

namespace faultlab::model {
namespace {

constexpr std::size_t kFrames4K = 4096;
constexpr std::size_t kFrames2M = 2;

std::uint64_t ReadStamp(const Machine& machine, Pfn pfn) {
  std::uint64_t stamp;
  std::memcpy(&stamp, machine.frame(pfn), sizeof(stamp));
  return stamp;
}
void WriteStamp(const Machine& machine, Pfn pfn, std::uint64_t stamp) {
  std::memcpy(machine.frame(pfn), &stamp, sizeof(stamp));
}

bool AllBytesAre(const std::byte* memory, std::size_t size, std::byte value) {
  return std::all_of(memory, memory + size, [value](std::byte b) { return b == value; });
}

// Whether [addr, addr + size) is mapped and resident: mincore fails with ENOMEM on unmapped
// memory, and the arena prefaults, so every page must be in core.
bool MappedAndResident(const void* addr, std::size_t size) {
  const long page = sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> in_core((size + page - 1) / page);
  if (mincore(const_cast<void*>(addr), size, in_core.data()) != 0) return false;
  return std::all_of(in_core.begin(), in_core.end(), [](unsigned char c) { return (c & 1) != 0; });
}

class MachineTest : public ::testing::Test {
 protected:
  // One node on unbound memory: 4096 frames of 4 KiB and two of 2 MiB.
  std::unique_ptr<Machine> MakeMachine() {
    return std::make_unique<Machine>(topology_,
                                     std::vector<NodeSpec>{{std::nullopt, kFrames4K, kFrames2M}});
  }

  Topology topology_;
};

TEST_F(MachineTest, DescribesItsNodes) {
  auto machine = MakeMachine();
  ASSERT_EQ(machine->node_count(), 1);
  const NodeInfo& info = machine->nodes().at(0);
  EXPECT_EQ(info.node, 0);
  EXPECT_EQ(info.real_node, std::nullopt);
  EXPECT_EQ(info.frames_4k, kFrames4K);
  EXPECT_EQ(info.frames_2m, kFrames2M);
  EXPECT_FALSE(info.backing.empty());
  RecordProperty("backing", info.backing);
  EXPECT_NE(info.why.find("4 KiB frames: "), std::string::npos) << info.why;
  EXPECT_NE(info.why.find("\n2 MiB frames: "), std::string::npos) << info.why;
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
  EXPECT_EQ(machine->free_frames(0, kHugeOrder), kFrames2M);
  // Every frame plus the zero frame, in whole 2 MiB chunks.
  EXPECT_GE(machine->frame_count(), kFrames4K + 1 + kFrames2M * 512);
  EXPECT_EQ(machine->frame_count() % 512, 0u);
}

TEST_F(MachineTest, RejectsBadSpecsAndNodes) {
  EXPECT_THROW(Machine(topology_, {}), std::invalid_argument);
  EXPECT_THROW(Machine(topology_, {{std::nullopt, 0, 1}}), std::invalid_argument);
  auto machine = MakeMachine();
  EXPECT_THROW(Cpu(*machine, 1), std::invalid_argument);
  EXPECT_THROW(Cpu(*machine, -1), std::invalid_argument);
  Cpu cpu(*machine, 0);
  EXPECT_THROW(machine->AllocateFrame(cpu, 1, kFrameAnon), std::invalid_argument);
  EXPECT_THROW(machine->AllocateHugeFrame(cpu, -1, kFrameAnon), std::invalid_argument);
  EXPECT_THROW(machine->free_frames(3, 0), std::invalid_argument);
}

TEST_F(MachineTest, AllocateAndPutRestoreTheFreeCount) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  std::vector<Pfn> frames;
  for (int i = 0; i < 100; ++i) {
    const Pfn pfn = machine->AllocateFrame(cpu, 0, kFrameAnon);
    ASSERT_NE(pfn, kNoPfn);
    const FrameMeta& meta = machine->meta(pfn);
    EXPECT_EQ(meta.refcount.load(), 1);
    EXPECT_EQ(meta.mapcount.load(), 0);
    EXPECT_EQ(meta.flags.load(), kFrameAnon);
    EXPECT_EQ(meta.node, 0);
    EXPECT_EQ(meta.order, 0);
    EXPECT_FALSE(machine->is_zero_pfn(pfn));
    frames.push_back(pfn);
  }
  EXPECT_EQ(std::set<Pfn>(frames.begin(), frames.end()).size(), frames.size());
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - frames.size());
  EXPECT_GT(cpu.stats().frame_pool_refills, 0u);
  for (Pfn pfn : frames) machine->PutFrame(cpu, pfn);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
  for (Pfn pfn : frames) {
    EXPECT_EQ(machine->meta(pfn).refcount.load(), 0);
    EXPECT_EQ(machine->meta(pfn).flags.load(), 0u);
  }
}

TEST_F(MachineTest, FramesAreDistinctMappedAndWritable) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  std::vector<Pfn> frames;
  for (std::size_t i = 0; i < kFrames4K; ++i) {
    const Pfn pfn = machine->AllocateFrame(cpu, 0, kFrameAnon);
    ASSERT_NE(pfn, kNoPfn);
    frames.push_back(pfn);
  }
  // Each frame gets its own byte pattern; any overlap between two frames would spoil one.
  for (std::size_t i = 0; i < frames.size(); ++i) {
    ASSERT_TRUE(MappedAndResident(machine->frame(frames[i]), kPageSize)) << "pfn " << frames[i];
    std::memset(machine->frame(frames[i]), static_cast<int>(i % 251 + 1), kPageSize);
  }
  for (std::size_t i = 0; i < frames.size(); ++i) {
    EXPECT_TRUE(AllBytesAre(machine->frame(frames[i]), kPageSize,
                            static_cast<std::byte>(i % 251 + 1)))
        << "pfn " << frames[i];
  }
  // Pfns within a chunk are 4 KiB apart in memory.
  for (Pfn pfn = 0; pfn + 1 < 512; ++pfn) {
    EXPECT_EQ(machine->frame(pfn + 1) - machine->frame(pfn),
              static_cast<std::ptrdiff_t>(kPageSize));
  }
  for (Pfn pfn : frames) machine->PutFrame(cpu, pfn);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
}

TEST_F(MachineTest, ExhaustionGivesNoPfnUntilAFrameComesBack) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  std::vector<Pfn> frames;
  for (std::size_t i = 0; i < kFrames4K; ++i) frames.push_back(machine->AllocateFrame(cpu, 0, 0));
  EXPECT_EQ(std::count(frames.begin(), frames.end(), kNoPfn), 0);
  EXPECT_EQ(std::count(frames.begin(), frames.end(), machine->zero_pfn()), 0);
  EXPECT_EQ(machine->AllocateFrame(cpu, 0, 0), kNoPfn);
  EXPECT_EQ(machine->free_frames(0, 0), 0u);

  machine->PutFrame(cpu, frames.back());
  EXPECT_EQ(machine->AllocateFrame(cpu, 0, 0), frames.back());
  for (Pfn pfn : frames) machine->PutFrame(cpu, pfn);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
}

TEST_F(MachineTest, HugeFramesAre2MiBAlignedPfnRanges) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  std::vector<Pfn> heads;
  for (std::size_t i = 0; i < kFrames2M; ++i) {
    const Pfn head = machine->AllocateHugeFrame(cpu, 0, kFrameCache);
    ASSERT_NE(head, kNoPfn);
    EXPECT_EQ(head % 512, 0u);
    const FrameMeta& meta = machine->meta(head);
    EXPECT_EQ(meta.flags.load(), kFrameHead | kFrameCache);
    EXPECT_EQ(meta.order, kHugeOrder);
    EXPECT_EQ(meta.refcount.load(), 1);
    for (Pfn tail = head + 1; tail < head + 512; ++tail) {
      ASSERT_EQ(machine->meta(tail).flags.load(), kFrameTail) << "pfn " << tail;
    }
    EXPECT_EQ(machine->frame(head + 511), machine->frame(head) + 511 * kPageSize);
    ASSERT_TRUE(MappedAndResident(machine->frame(head), kPmdSize));
    std::memset(machine->frame(head), static_cast<int>(i + 1), kPmdSize);
    heads.push_back(head);
  }
  EXPECT_NE(heads[0], heads[1]);
  for (std::size_t i = 0; i < heads.size(); ++i) {
    EXPECT_TRUE(AllBytesAre(machine->frame(heads[i]), kPmdSize, static_cast<std::byte>(i + 1)));
  }
  EXPECT_EQ(machine->AllocateHugeFrame(cpu, 0, 0), kNoPfn);
  EXPECT_EQ(machine->free_frames(0, kHugeOrder), 0u);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);   // huge frames are a pool of their own

  for (Pfn head : heads) machine->PutFrame(cpu, head);
  EXPECT_EQ(machine->free_frames(0, kHugeOrder), kFrames2M);
  for (Pfn head : heads) EXPECT_EQ(machine->meta(head).flags.load(), kFrameHead);
}

TEST_F(MachineTest, ZeroFrameIsZeroFlaggedAndPinned) {
  auto machine = MakeMachine();
  const Pfn zero = machine->zero_pfn();
  ASSERT_NE(zero, kNoPfn);
  EXPECT_TRUE(machine->is_zero_pfn(zero));
  EXPECT_TRUE(AllBytesAre(machine->frame(zero), kPageSize, std::byte{0}));
  EXPECT_EQ(machine->meta(zero).flags.load(), kFrameZero);
  EXPECT_EQ(machine->meta(zero).refcount.load(), 1);
  EXPECT_EQ(machine->meta(zero).node, 0);
  // Pinning it always succeeds and never counts: it can never be freed.
  EXPECT_TRUE(machine->TryGetFrame(zero));
  EXPECT_EQ(machine->meta(zero).refcount.load(), 1);
}

TEST_F(MachineTest, PutFrameFreesAtTheLastReference) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  const Pfn pfn = machine->AllocateFrame(cpu, 0, kFrameAnon);
  ASSERT_NE(pfn, kNoPfn);
  EXPECT_TRUE(machine->TryGetFrame(pfn));
  EXPECT_EQ(machine->meta(pfn).refcount.load(), 2);
  machine->PutFrame(cpu, pfn);
  EXPECT_EQ(machine->meta(pfn).refcount.load(), 1);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - 1);
  machine->PutFrame(cpu, pfn);
  EXPECT_EQ(machine->meta(pfn).refcount.load(), 0);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
  // get_page_unless_zero(): a freed frame cannot be pinned.
  EXPECT_FALSE(machine->TryGetFrame(pfn));
  EXPECT_EQ(machine->meta(pfn).refcount.load(), 0);
}

TEST_F(MachineTest, ModelBugsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  const Pfn pfn = machine->AllocateFrame(cpu, 0, 0);
  machine->PutFrame(cpu, pfn);
  EXPECT_DEATH(machine->PutFrame(cpu, pfn), "refcount underflow");
  EXPECT_DEATH(machine->PutFrame(cpu, machine->zero_pfn()), "zero frame");
}

TEST_F(MachineTest, SimulatedNodesOnOneRealNodeKeepTheirOwnPools) {
  if (!topology_.HasNode(0)) GTEST_SKIP() << "no real node 0";
  Machine machine(topology_, {{0, 1024, 1}, {0, 512, 1}});
  ASSERT_EQ(machine.node_count(), 2);
  EXPECT_EQ(machine.nodes()[1].real_node, 0);
  EXPECT_EQ(machine.nodes()[1].frames_4k, 512u);
  Cpu cpu(machine, 0);   // a Cpu on node 0 allocating remotely too

  std::vector<Pfn> far;
  for (int i = 0; i < 100; ++i) {
    const Pfn pfn = machine.AllocateFrame(cpu, 1, kFrameAnon);
    ASSERT_NE(pfn, kNoPfn);
    EXPECT_EQ(machine.meta(pfn).node, 1);
    far.push_back(pfn);
  }
  const Pfn near = machine.AllocateFrame(cpu, 0, kFrameAnon);
  EXPECT_EQ(machine.meta(near).node, 0);
  EXPECT_EQ(machine.free_frames(0, 0), 1023u);
  EXPECT_EQ(machine.free_frames(1, 0), 412u);

  const Pfn huge = machine.AllocateHugeFrame(cpu, 1, 0);
  ASSERT_NE(huge, kNoPfn);
  EXPECT_EQ(machine.meta(huge).node, 1);
  EXPECT_EQ(machine.free_frames(0, kHugeOrder), 1u);
  EXPECT_EQ(machine.free_frames(1, kHugeOrder), 0u);

  // Frees go back to the frame's own node, whichever node the Cpu sits on.
  for (Pfn pfn : far) machine.PutFrame(cpu, pfn);
  machine.PutFrame(cpu, near);
  machine.PutFrame(cpu, huge);
  EXPECT_EQ(machine.free_frames(0, 0), 1024u);
  EXPECT_EQ(machine.free_frames(1, 0), 512u);
  EXPECT_EQ(machine.free_frames(1, kHugeOrder), 1u);

  // Node 1 runs dry on its own, however much node 0 has left.
  std::vector<Pfn> all;
  for (int i = 0; i < 512; ++i) all.push_back(machine.AllocateFrame(cpu, 1, 0));
  EXPECT_EQ(std::count(all.begin(), all.end(), kNoPfn), 0);
  for (Pfn pfn : all) EXPECT_EQ(machine.meta(pfn).node, 1);
  EXPECT_EQ(machine.AllocateFrame(cpu, 1, 0), kNoPfn);
  EXPECT_EQ(machine.free_frames(0, 0), 1024u);
  for (Pfn pfn : all) machine.PutFrame(cpu, pfn);
}

TEST_F(MachineTest, CpuDestructorReturnsItsCachedFrames) {
  auto machine = MakeMachine();
  Cpu taker(*machine, 0);
  std::size_t cached = 0;
  {
    Cpu holder(*machine, 0);
    // One allocation refills the holder's cache; putting the frame back leaves it all cached.
    machine->PutFrame(holder, machine->AllocateFrame(holder, 0, 0));
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);   // caches count as free
    // Another Cpu can only reach what is in the pool.
    std::vector<Pfn> frames;
    for (Pfn pfn; (pfn = machine->AllocateFrame(taker, 0, 0)) != kNoPfn;) frames.push_back(pfn);
    cached = kFrames4K - frames.size();
    EXPECT_GT(cached, 0u);
    EXPECT_LE(cached, 64u);
    for (Pfn pfn : frames) machine->PutFrame(taker, pfn);
  }
  // Destroying the holder drained its cache into the pool: now every frame is reachable.
  std::vector<Pfn> frames;
  for (Pfn pfn; (pfn = machine->AllocateFrame(taker, 0, 0)) != kNoPfn;) frames.push_back(pfn);
  EXPECT_EQ(frames.size(), kFrames4K);
  for (Pfn pfn : frames) machine->PutFrame(taker, pfn);
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
}

TEST_F(MachineTest, CpusRegisterUpToTheLimit) {
  auto machine = MakeMachine();
  std::vector<std::unique_ptr<Cpu>> cpus;
  for (int i = 0; i < Machine::kMaxCpus; ++i) cpus.push_back(std::make_unique<Cpu>(*machine, 0));
  EXPECT_THROW(Cpu(*machine, 0), std::runtime_error);
  std::set<const Cpu*> registered;
  for (int i = 0; i < Machine::kMaxCpus; ++i) registered.insert(machine->cpu_slot(i).cpu.load());
  EXPECT_EQ(registered.size(), static_cast<std::size_t>(Machine::kMaxCpus));
  EXPECT_EQ(registered.count(nullptr), 0u);
  // A destroyed Cpu's slot empties and can be taken again.
  const Cpu* gone = cpus[7].get();
  cpus[7].reset();
  EXPECT_EQ(machine->cpu_slot(7).cpu.load(), nullptr) << "slot of " << gone;
  cpus[7] = std::make_unique<Cpu>(*machine, 0);
  EXPECT_EQ(machine->cpu_slot(7).cpu.load(), cpus[7].get());
  EXPECT_EQ(&cpus[7]->slot(), &machine->cpu_slot(7));
  EXPECT_EQ(machine->cpu_slots_used(), Machine::kMaxCpus);
}

// Four Cpus allocate, hold, pass around and free frames at random. Every frame held carries its
// holder's stamp in its memory, and a free frame carries 0: a frame handed out twice, or freed
// while held, shows up as a stamp that is not the one expected (and as a data race under TSan).
TEST_F(MachineTest, ConcurrentAllocationNeverHandsOutAFrameTwice) {
  constexpr int kThreads = 4;
  constexpr int kCycles = 20000;
  constexpr std::size_t kMaxHeld = 100;
  constexpr std::uint64_t kInTransit = ~0ull;
  auto machine = MakeMachine();
  std::atomic<Pfn> mailbox{kNoPfn};
  std::atomic<int> bad_stamps{0}, exhausted{0}, bad_refcounts{0};
  std::latch start(kThreads);

  auto worker = [&](int id) {
    Cpu cpu(*machine, 0);
    std::mt19937 rng(1234 + id);
    struct Held {
      Pfn pfn;
      std::uint64_t stamp;
    };
    std::vector<Held> held;
    std::uint64_t next_stamp = (static_cast<std::uint64_t>(id) + 1) << 32;
    auto take = [&](Pfn pfn, std::uint64_t expected_stamp) {
      if (ReadStamp(*machine, pfn) != expected_stamp) ++bad_stamps;
      if (machine->meta(pfn).refcount.load(std::memory_order_relaxed) != 1) ++bad_refcounts;
      held.push_back({pfn, ++next_stamp});
      WriteStamp(*machine, pfn, held.back().stamp);
    };
    auto release = [&](std::size_t index) {
      const Held h = held[index];
      held[index] = held.back();
      held.pop_back();
      if (ReadStamp(*machine, h.pfn) != h.stamp) ++bad_stamps;
      WriteStamp(*machine, h.pfn, 0);
      machine->PutFrame(cpu, h.pfn);
    };

    start.arrive_and_wait();
    for (int cycle = 0; cycle < kCycles; ++cycle) {
      const unsigned dice = rng() % 64;
      if (dice == 0) {
        // The order-9 pool is contended too; a miss just means another Cpu holds both.
        const Pfn head = machine->AllocateHugeFrame(cpu, 0, kFrameAnon);
        if (head == kNoPfn) continue;
        if (ReadStamp(*machine, head) != 0) ++bad_stamps;
        WriteStamp(*machine, head, next_stamp);
        if (ReadStamp(*machine, head) != next_stamp) ++bad_stamps;
        WriteStamp(*machine, head, 0);
        machine->PutFrame(cpu, head);
      } else if (held.empty() || (held.size() < kMaxHeld && dice % 2 == 0)) {
        const Pfn pfn = machine->AllocateFrame(cpu, 0, kFrameAnon);
        if (pfn == kNoPfn) {
          ++exhausted;
          continue;
        }
        take(pfn, 0);
      } else if (dice % 8 == 1) {
        // Hand a frame to whichever Cpu comes next, and take the one waiting: frames then get
        // freed into caches of Cpus that did not allocate them.
        const std::size_t index = rng() % held.size();
        const Held h = held[index];
        held[index] = held.back();
        held.pop_back();
        if (ReadStamp(*machine, h.pfn) != h.stamp) ++bad_stamps;
        WriteStamp(*machine, h.pfn, kInTransit);
        const Pfn got = mailbox.exchange(h.pfn, std::memory_order_acq_rel);
        if (got != kNoPfn) take(got, kInTransit);
      } else {
        const std::size_t index = rng() % held.size();
        if (dice % 8 == 3) {
          // A speculative pin of a frame someone holds must succeed and leave the count as it was.
          if (!machine->TryGetFrame(held[index].pfn)) ++bad_refcounts;
          machine->PutFrame(cpu, held[index].pfn);
        }
        release(index);
      }
    }
    while (!held.empty()) release(held.size() - 1);
  };

  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) threads.emplace_back(worker, id);
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(bad_stamps.load(), 0);
  EXPECT_EQ(bad_refcounts.load(), 0);
  EXPECT_EQ(exhausted.load(), 0);
  const Pfn left = mailbox.load();
  if (left != kNoPfn) {
    EXPECT_EQ(ReadStamp(*machine, left), kInTransit);
    WriteStamp(*machine, left, 0);
    Cpu cpu(*machine, 0);
    machine->PutFrame(cpu, left);
  }
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
  EXPECT_EQ(machine->free_frames(0, kHugeOrder), kFrames2M);
  for (int i = 0; i < Machine::kMaxCpus; ++i) EXPECT_EQ(machine->cpu_slot(i).cpu.load(), nullptr);
}

// ---- ShmemFile -----------------------------------------------------------------------------

TEST_F(MachineTest, ShmemFileRejectsBadSizesAndIndexes) {
  auto machine = MakeMachine();
  EXPECT_THROW(ShmemFile(*machine, 0, false, 0), std::invalid_argument);
  EXPECT_THROW(ShmemFile(*machine, 4095, false, 0), std::invalid_argument);
  EXPECT_THROW(ShmemFile(*machine, kPageSize * 3, true, 0), std::invalid_argument);
  EXPECT_THROW(ShmemFile(*machine, kPageSize, false, 1), std::invalid_argument);
  ShmemFile file(*machine, 4 * kPageSize, false, 0);
  EXPECT_EQ(file.pages(), 4u);
  EXPECT_EQ(file.page_size(), kPageSize);
  EXPECT_THROW(file.Lookup(4), std::out_of_range);
  Cpu cpu(*machine, 0);
  EXPECT_THROW(file.GetOrCreate(cpu, 4), std::out_of_range);
}

TEST_F(MachineTest, ShmemFileCachesCreatesInsertsAndRemoves) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  {
    ShmemFile file(*machine, 8 * kPageSize, false, 0);
    EXPECT_EQ(file.Lookup(0), kNoPfn);

    // A recycled frame is dirty: GetOrCreate must zero it.
    const Pfn dirty = machine->AllocateFrame(cpu, 0, 0);
    std::memset(machine->frame(dirty), 0xa5, kPageSize);
    machine->PutFrame(cpu, dirty);

    bool created = false;
    const Pfn pfn = file.GetOrCreate(cpu, 0, &created);
    ASSERT_NE(pfn, kNoPfn);
    EXPECT_TRUE(created);
    EXPECT_EQ(pfn, dirty);   // the cache hands back the frame just freed
    EXPECT_TRUE(AllBytesAre(machine->frame(pfn), kPageSize, std::byte{0}));
    EXPECT_EQ(machine->meta(pfn).flags.load(), kFrameCache);
    EXPECT_EQ(machine->meta(pfn).refcount.load(), 1);
    EXPECT_EQ(file.Lookup(0), pfn);
    EXPECT_EQ(file.GetOrCreate(cpu, 0, &created), pfn);
    EXPECT_FALSE(created);

    std::vector<std::byte> data(kPageSize, std::byte{0x3c});
    bool inserted = false;
    const Pfn copy = file.Insert(cpu, 5, data.data(), &inserted);
    ASSERT_NE(copy, kNoPfn);
    EXPECT_TRUE(inserted);
    EXPECT_TRUE(AllBytesAre(machine->frame(copy), kPageSize, std::byte{0x3c}));
    EXPECT_EQ(file.Insert(cpu, 0, data.data(), &inserted), pfn);   // cached already: untouched
    EXPECT_FALSE(inserted);
    EXPECT_TRUE(AllBytesAre(machine->frame(pfn), kPageSize, std::byte{0}));
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - 2);

    // A mapping's reference keeps a removed page alive until the mapping lets go.
    ASSERT_TRUE(machine->TryGetFrame(copy));
    file.Remove(cpu, 5);
    EXPECT_EQ(file.Lookup(5), kNoPfn);
    EXPECT_EQ(machine->meta(copy).refcount.load(), 1);
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - 2);
    machine->PutFrame(cpu, copy);
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - 1);
    file.Remove(cpu, 5);   // removing an absent page does nothing
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - 1);
  }
  // The destructor put the cache's references.
  EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
}

TEST_F(MachineTest, HugeShmemFileUses2MiBFrames) {
  auto machine = MakeMachine();
  Cpu cpu(*machine, 0);
  {
    ShmemFile file(*machine, 3 * kPmdSize, true, 0);
    EXPECT_TRUE(file.huge());
    EXPECT_EQ(file.pages(), 3u);
    const Pfn first = file.GetOrCreate(cpu, 0);
    const Pfn second = file.GetOrCreate(cpu, 2);
    ASSERT_NE(first, kNoPfn);
    ASSERT_NE(second, kNoPfn);
    for (Pfn head : {first, second}) {
      EXPECT_EQ(head % 512, 0u);
      EXPECT_EQ(machine->meta(head).flags.load(), kFrameHead | kFrameCache);
      EXPECT_TRUE(AllBytesAre(machine->frame(head), kPmdSize, std::byte{0}));
    }
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K);
    bool created = true;
    EXPECT_EQ(file.GetOrCreate(cpu, 1, &created), kNoPfn);   // out of 2 MiB frames
    EXPECT_FALSE(created);
    file.Remove(cpu, 0);
    EXPECT_EQ(machine->free_frames(0, kHugeOrder), 1u);
    EXPECT_NE(file.GetOrCreate(cpu, 1), kNoPfn);
  }
  EXPECT_EQ(machine->free_frames(0, kHugeOrder), kFrames2M);
}

// Several faults race to create the same pages: each page ends with exactly one frame that every
// racer agrees on, and the losers' frames all come back.
TEST_F(MachineTest, ShmemFileRacesEndWithOneFramePerPage) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 20;
  constexpr std::uint64_t kPages = 64;
  auto machine = MakeMachine();
  for (int round = 0; round < kRounds; ++round) {
    auto file = std::make_unique<ShmemFile>(*machine, kPages * kPageSize, false, 0);
    std::vector<std::vector<Pfn>> seen(kThreads, std::vector<Pfn>(kPages, kNoPfn));
    std::atomic<int> created_count{0};
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    for (int id = 0; id < kThreads; ++id) {
      threads.emplace_back([&, id] {
        Cpu cpu(*machine, 0);
        start.arrive_and_wait();
        // Half the racers walk the file backwards, so races happen at both ends and the middle.
        for (std::uint64_t step = 0; step < kPages; ++step) {
          const std::uint64_t index = id % 2 == 0 ? step : kPages - 1 - step;
          bool created = false;
          seen[id][index] = file->GetOrCreate(cpu, index, &created);
          if (created) ++created_count;
          // Whoever gets the page sees it zeroed, winner or loser.
          if (!AllBytesAre(machine->frame(seen[id][index]), kPageSize, std::byte{0})) {
            seen[id][index] = kNoPfn;
          }
        }
      });
    }
    for (std::thread& thread : threads) thread.join();

    ASSERT_EQ(created_count.load(), static_cast<int>(kPages)) << "round " << round;
    std::set<Pfn> distinct;
    for (std::uint64_t index = 0; index < kPages; ++index) {
      const Pfn pfn = file->Lookup(index);
      ASSERT_NE(pfn, kNoPfn);
      for (int id = 0; id < kThreads; ++id) {
        ASSERT_EQ(seen[id][index], pfn) << "round " << round << " page " << index;
      }
      EXPECT_EQ(machine->meta(pfn).refcount.load(), 1);
      EXPECT_EQ(machine->meta(pfn).flags.load(), kFrameCache);
      distinct.insert(pfn);
    }
    EXPECT_EQ(distinct.size(), kPages);
    EXPECT_EQ(machine->free_frames(0, 0), kFrames4K - kPages);
    file.reset();
    ASSERT_EQ(machine->free_frames(0, 0), kFrames4K);
  }
}

}  // namespace
}  // namespace faultlab::model
