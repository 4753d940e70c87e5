// Concurrency tests of the model's lock-free fault paths (kernels/address_space.h): several
// threads, each with its own Cpu, fault, store, fork, zap, break COW-PTE tables, scan for NUMA
// hinting, migrate and resolve uffd-wp events on the same address spaces at once. Each test checks
// invariants that a race would break (every store lands or is visibly zapped, each page ends with
// exactly one frame, refcounts and mapcounts balance, every frame comes back after Exit) rather
// than only that nothing crashed; they are meant to run clean under ThreadSanitizer too. Iteration
// counts shrink under the sanitizers, and a watchdog turns a hang (a wait cycle in the model) into
// a failure that names the test instead of a CTest timeout.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/address_space.h"
#include "kernels/machine.h"
#include "topology/topology.h"

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define FAULTLAB_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define FAULTLAB_SANITIZED 1
#endif
#endif

namespace faultlab::model {
namespace {

constexpr std::uint64_t kBase = 0x7f0000000000ull;   // 2 MiB aligned
constexpr std::uint64_t kMiB = 1ull << 20;

#ifdef FAULTLAB_SANITIZED
constexpr int kScale = 4;   // iteration counts are divided by this under a sanitizer
constexpr auto kWatchdogLimit = std::chrono::seconds(240);
#else
constexpr int kScale = 1;
constexpr auto kWatchdogLimit = std::chrono::seconds(90);
#endif

int Scaled(int iterations) { return std::max(1, iterations / kScale); }

// How long the zap tests zap: a fixed time rather than a count, because on two CPUs the zapping
// and the faulting threads take turns at the scheduler's pace.
constexpr auto kZapFor = std::chrono::milliseconds(300);

// Aborts the process with the test's name if the test outlives the limit: a hang in the model
// (a wait cycle) is reported as itself rather than as a timeout of the whole binary.
class Watchdog {
 public:
  Watchdog() : thread_([this] { Watch(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  void Watch() {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "?";
    std::unique_lock<std::mutex> lock(mutex_);
    if (!wake_.wait_for(lock, kWatchdogLimit, [this] { return done_; })) {
      std::fprintf(stderr,
                   "model_concurrency_test: %s still running after %lld s: the model hangs\n",
                   name.c_str(), static_cast<long long>(kWatchdogLimit.count()));
      std::abort();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread thread_;
};

// Failures seen by worker threads: the first few become test failures, the rest are counted, so
// a broken invariant does not print once per page and iteration.
class Failures {
 public:
  void Add(const std::string& what) {
    if (count_.fetch_add(1, std::memory_order_relaxed) < 8) ADD_FAILURE() << what;
  }
  int count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int> count_{0};
};

std::string Hex(std::uint64_t value) {
  char text[32];
  std::snprintf(text, sizeof text, "%#llx", static_cast<unsigned long long>(value));
  return text;
}

// The worker Cpus' counters, summed: they show how often the races under test really happened.
class StatsTotal {
 public:
  void Add(const CpuStats& s) {
    std::lock_guard<std::mutex> lock(mutex_);
    total_ += s;
  }
  // One line on stdout, and the same as test properties in XML output.
  void Report() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string line = "worker stats:";
    for (const auto& [name, field] : kCpuStatsFields) {
      const std::uint64_t count = total_.*field;
      if (count == 0) continue;
      line += std::string(" ") + name + "=" + std::to_string(count);
      ::testing::Test::RecordProperty(name, std::to_string(count));
    }
    std::printf("%s\n", line.c_str());
  }
  CpuStats Total() {
    std::lock_guard<std::mutex> lock(mutex_);
    return total_;
  }

 private:
  std::mutex mutex_;
  CpuStats total_;
};

// A barrier whose waiters spin (yielding after a while) instead of sleeping: on a machine with
// two CPUs, threads released from a sleeping barrier wake tens of microseconds apart and a short
// round would run one thread at a time; spinning threads start together and race.
class SpinBarrier {
 public:
  explicit SpinBarrier(int count) : count_(count) {}
  void ArriveAndWait() {
    const std::uint64_t phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; phase_.load(std::memory_order_acquire) == phase; ++spins) {
      if (spins < 2000) {
        __builtin_ia32_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<std::uint64_t> phase_{0};
};

// Runs fn(index, cpu) on one thread per entry of `nodes`, each with its own Cpu on that node,
// all released together once their Cpus exist; each Cpu's counters go to `stats`.
void RunThreads(Machine& machine, StatsTotal& stats, const std::vector<int>& nodes,
                const std::function<void(int, Cpu&)>& fn) {
  SpinBarrier start(static_cast<int>(nodes.size()));
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    threads.emplace_back([&, i] {
      Cpu cpu(machine, nodes[i]);
      start.ArriveAndWait();
      fn(static_cast<int>(i), cpu);
      stats.Add(cpu.stats());
    });
  }
  for (std::thread& thread : threads) thread.join();
}

class ModelConcurrencyTest : public ::testing::Test {
 protected:
  ModelConcurrencyTest()
      : machine_(topology_, {{std::nullopt, 16384, 0}, {std::nullopt, 8192, 0}}),
        cpu_(machine_, 0),
        free_at_start_{machine_.free_frames(0, 0), machine_.free_frames(1, 0)},
        zero_refcount_(machine_.meta(machine_.zero_pfn()).refcount.load()) {}

  // Every frame back in a pool or a cache, no frame but the zero frame holding a reference or a
  // mapping, and the zero frame's refcount where it was. Only when every thread has finished.
  void ExpectAllFramesFree() {
    EXPECT_EQ(machine_.free_frames(0, 0), free_at_start_[0]);
    EXPECT_EQ(machine_.free_frames(1, 0), free_at_start_[1]);
    EXPECT_EQ(machine_.meta(machine_.zero_pfn()).refcount.load(), zero_refcount_);
    int reported = 0;
    for (Pfn pfn = 0; pfn < machine_.frame_count(); ++pfn) {
      if (machine_.is_zero_pfn(pfn)) continue;
      const FrameMeta& meta = machine_.meta(pfn);
      const int refcount = meta.refcount.load();
      const int mapcount = meta.mapcount.load();
      if ((refcount != 0 || mapcount != 0) && reported++ < 8) {
        ADD_FAILURE() << "pfn " << pfn << " still has refcount " << refcount << ", mapcount "
                      << mapcount << ", flags " << Hex(meta.flags.load());
      }
    }
    EXPECT_EQ(reported, 0) << "frames leaked";
  }

  std::unique_ptr<AddressSpace> NewMm(AddressSpace::Options options = {}) {
    return std::make_unique<AddressSpace>(machine_, cpu_, options);
  }

  static Vma Anon(std::uint64_t start, std::uint64_t length) {
    Vma vma;
    vma.start = start;
    vma.end = start + length;
    return vma;
  }

  std::uint64_t Read(AddressSpace& mm, std::uint64_t address) {
    std::uint64_t value = ~0ull;
    EXPECT_EQ(mm.Load(cpu_, address, &value), FaultResult::kOk) << Hex(address);
    return value;
  }

  // Each page of [start, start + length) in `mm` maps a frame of its own: present, writable, not
  // the zero frame, refcount and mapcount 1, and no two pages share a frame.
  void ExpectExclusiveFrames(const AddressSpace& mm, std::uint64_t start, std::uint64_t length,
                             int node = -1) {
    std::set<Pfn> pfns;
    std::uint64_t address = start;
    int reported = 0;
    for (const PagemapEntry& entry : mm.Pagemap(start, length)) {
      const bool ok = entry.present && entry.writable && !entry.zero_page && !entry.migration &&
                      machine_.meta(entry.pfn).refcount.load() == 1 &&
                      machine_.meta(entry.pfn).mapcount.load() == 1 &&
                      pfns.insert(entry.pfn).second && (node < 0 || entry.node == node);
      if (!ok && reported++ < 8) {
        ADD_FAILURE() << "page " << Hex(address) << ": present " << entry.present << " writable "
                      << entry.writable << " zero " << entry.zero_page << " node " << entry.node
                      << " pfn " << entry.pfn << " refcount "
                      << (entry.present ? machine_.meta(entry.pfn).refcount.load() : -1)
                      << " mapcount "
                      << (entry.present ? machine_.meta(entry.pfn).mapcount.load() : -1);
      }
      address += kPageSize;
    }
  }

  // Each page of the range is unmapped, the zero page, or a frame of its own (refcount and
  // mapcount 1); no marker or migration entry is left.
  void ExpectExclusiveFramesOrNone(const AddressSpace& mm, std::uint64_t start,
                                   std::uint64_t length) {
    std::uint64_t address = start;
    int reported = 0;
    for (const PagemapEntry& entry : mm.Pagemap(start, length)) {
      const bool ok = entry.present
                          ? entry.zero_page || (machine_.meta(entry.pfn).refcount.load() == 1 &&
                                                machine_.meta(entry.pfn).mapcount.load() == 1)
                          : entry.marker == 0 && !entry.migration;
      if (!ok && reported++ < 8) {
        ADD_FAILURE() << "page " << Hex(address) << ": present " << entry.present << " marker "
                      << entry.marker << " migration " << entry.migration << " refcount "
                      << (entry.present ? machine_.meta(entry.pfn).refcount.load() : -1);
      }
      address += kPageSize;
    }
  }

  void TearDown() override { stats_.Report(); }

  Watchdog watchdog_;
  StatsTotal stats_;
  Topology topology_;
  Machine machine_;
  Cpu cpu_;
  std::size_t free_at_start_[2];
  std::int32_t zero_refcount_;
};

// --- 1. Disjoint faults --------------------------------------------------------------------------

// Four threads fault disjoint pages of one anonymous VMA: the first 64 pages of each of 16 page
// tables, interleaved in blocks of 4 pages and walked in the same order, so that all of them
// populate each table at the same moment (the upper-level and PMD installation races, whose
// losers free their table). Each thread reads back exactly what it wrote; each touched page ends
// with one exclusive frame and no other page is mapped; each table exists exactly once; Exit
// returns every frame.
TEST_F(ModelConcurrencyTest, DisjointFaultsKeepEachThreadsData) {
  constexpr int kThreads = 4;
  constexpr std::uint64_t kTables = 16;
  constexpr std::uint64_t kTouched = 64;   // pages touched at the start of each table
  constexpr std::uint64_t kLength = kTables * kPmdSize;
  auto value = [](std::uint64_t page, int round) {
    return (page << 20) | (std::uint64_t(round) << 4) | 1;
  };
  auto owner = [](std::uint64_t index_in_table) { return int((index_in_table / 4) % kThreads); };
  Failures failures;
  for (int round = 0; round < Scaled(40) && !HasFailure(); ++round) {
    {
      auto mm = NewMm();
      mm->Map(cpu_, Anon(kBase, kLength));
      RunThreads(machine_, stats_, std::vector<int>(kThreads, 0), [&](int t, Cpu& cpu) {
        for (int pass = 0; pass < 2; ++pass) {
          for (std::uint64_t table = 0; table < kTables; ++table) {
            for (std::uint64_t i = 0; i < kTouched; ++i) {
              if (owner(i) != t) continue;
              const std::uint64_t p = table * kPagesPerPmd + i;
              const std::uint64_t address = kBase + p * kPageSize;
              if (pass == 0) {
                std::uint64_t seen = ~0ull;
                // Half the pages take a zero-page read fault first, then the write fault over it.
                if (i % 2 == 0 &&
                    (mm->Load(cpu, address + 8, &seen) != FaultResult::kOk || seen != 0)) {
                  failures.Add("read fault of a fresh page gave " + Hex(seen));
                }
                if (mm->Store(cpu, address, value(p, round)) != FaultResult::kOk ||
                    mm->Store(cpu, address + kPageSize - 8, ~value(p, round)) != FaultResult::kOk) {
                  failures.Add("store failed at " + Hex(address));
                }
                continue;
              }
              std::uint64_t first = 0, last = 0, middle = 1;
              if (mm->Load(cpu, address, &first) != FaultResult::kOk ||
                  mm->Load(cpu, address + kPageSize - 8, &last) != FaultResult::kOk ||
                  mm->Load(cpu, address + 8, &middle) != FaultResult::kOk) {
                failures.Add("load failed at " + Hex(address));
              } else if (first != value(p, round) || last != ~value(p, round) || middle != 0) {
                failures.Add("page " + Hex(address) + " holds " + Hex(first) + ", " + Hex(middle) +
                             ", " + Hex(last));
              }
            }
          }
        }
      });
      ASSERT_EQ(failures.count(), 0);
      EXPECT_EQ(mm->ResidentPages(), kTables * kTouched);
      EXPECT_EQ(mm->PageTables().pte_tables, kTables);
      EXPECT_EQ(mm->PageTables().tables, 3 + kTables)
          << "pgd, pud, pmd and the PTE tables, once each";
      for (std::uint64_t table = 0; table < kTables; ++table) {
        const std::uint64_t start = kBase + table * kPmdSize;
        ExpectExclusiveFrames(*mm, start, kTouched * kPageSize, 0);
        for (const PagemapEntry& entry :
             mm->Pagemap(start + kTouched * kPageSize, kPmdSize - kTouched * kPageSize)) {
          EXPECT_FALSE(entry.present) << "table " << table;
        }
      }
      mm->Exit(cpu_);
    }
    ExpectAllFramesFree();
  }
}

// --- 2. The same pages ---------------------------------------------------------------------------

// Four threads fault the same 256 pages (across a table boundary) in the same order at once,
// mixing zero-page read faults and write faults, each storing to its own word of every page and
// to one word all share; the range is zapped between rounds so every round races the first faults
// again. After each round: each page maps exactly one exclusive frame; every thread's own word
// holds its store (no store landed in a frame that lost its installation race); the shared word
// holds one of this round's stores; a read before the stores saw zero or one of them. The zero
// frame's refcount never moves and every frame comes back.
TEST_F(ModelConcurrencyTest, RacingFaultsOnTheSamePagesMapOneFrameEach) {
  constexpr int kThreads = 4;
  constexpr std::uint64_t kPages = 256;
  constexpr std::uint64_t kStart = kBase + 2 * kMiB - 128 * kPageSize;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  auto value = [](int round, int t, std::uint64_t page) {
    return (std::uint64_t(round + 1) << 32) | (std::uint64_t(t + 1) << 16) | page;
  };
  const int rounds = Scaled(100);
  Failures failures;
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 4 * kMiB));
    SpinBarrier sync(kThreads + 1);
    std::vector<std::thread> workers;
    std::latch ready(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      workers.emplace_back([&, t] {
        Cpu cpu(machine_, 0);
        ready.count_down();
        for (int round = 0; round < rounds; ++round) {
          sync.ArriveAndWait();   // round starts
          for (std::uint64_t p = 0; p < kPages; ++p) {
            const std::uint64_t page = kStart + p * kPageSize;
            if ((p + std::uint64_t(t) + std::uint64_t(round)) % 3 == 0) {
              std::uint64_t seen = ~0ull;
              if (mm->Load(cpu, page, &seen) != FaultResult::kOk ||
                  (seen != 0 && (seen >> 32) != std::uint64_t(round + 1))) {
                failures.Add("read of " + Hex(page) + " saw " + Hex(seen));
              }
            }
            if (mm->Store(cpu, page + 8 * (t + 1), value(round, t, p)) != FaultResult::kOk ||
                mm->Store(cpu, page, value(round, t, p)) != FaultResult::kOk) {
              failures.Add("store to " + Hex(page) + " failed");
            }
            std::uint64_t own = 0;
            if (mm->Load(cpu, page + 8 * (t + 1), &own) != FaultResult::kOk ||
                own != value(round, t, p)) {
              failures.Add("own word of " + Hex(page) + " reads " + Hex(own));
            }
          }
          sync.ArriveAndWait();   // round done
          sync.ArriveAndWait();   // checked and zapped
        }
        stats_.Add(cpu.stats());
      });
    }
    ready.wait();
    for (int round = 0; round < rounds; ++round) {
      sync.ArriveAndWait();   // round starts
      sync.ArriveAndWait();   // round done: the workers wait while this thread checks
      if (!HasFailure()) {
        ExpectExclusiveFrames(*mm, kStart, kLength, 0);
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const std::uint64_t page = kStart + p * kPageSize;
          const std::uint64_t shared = Read(*mm, page);
          bool shared_ok = false;
          for (int t = 0; t < kThreads; ++t) {
            EXPECT_EQ(Read(*mm, page + 8 * (t + 1)), value(round, t, p)) << "page " << p;
            shared_ok |= shared == value(round, t, p);
          }
          EXPECT_TRUE(shared_ok) << "shared word of page " << p << " holds " << Hex(shared);
        }
        EXPECT_EQ(machine_.meta(machine_.zero_pfn()).refcount.load(), zero_refcount_);
        EXPECT_EQ(mm->Zap(cpu_, kStart, kLength), kPages);
        EXPECT_EQ(mm->ResidentPages(), 0u);
      } else {
        mm->Zap(cpu_, kStart, kLength);
      }
      sync.ArriveAndWait();   // checked and zapped
    }
    for (std::thread& worker : workers) worker.join();
    mm->Exit(cpu_);
  }
  EXPECT_EQ(failures.count(), 0);
  ExpectAllFramesFree();
}

// --- 3. Fork against faults ----------------------------------------------------------------------

class ModelForkRaceTest : public ModelConcurrencyTest {};

// Two threads keep storing a per-page counter in the parent (each page has one writer, which
// publishes the counter before and after each store) while a third forks repeatedly, cycling
// through the three modes, and exits each child after the next fork (so exits race the parent's
// faults on tables the child shared). Each child sees, for every page, a counter between the one
// published as stored before the fork began and the one begun before it returned, and zero on
// pages only ever read; the child's own stores stay private and the parent always reads back its
// last store. At the end the parent holds every last counter, its frames have refcount and
// mapcount 1, and after Exit every frame comes back.
TEST_F(ModelForkRaceTest, ChildrenSeeAConsistentSnapshotWhileTheParentFaults) {
  constexpr std::uint64_t kStart = kBase + kMiB;   // a partial table, a whole one, a partial one
  constexpr std::uint64_t kLength = 4 * kMiB;
  constexpr std::uint64_t kPages = kLength / kPageSize;
  constexpr int kWriters = 2;
  auto read_only = [](std::uint64_t p) { return p % 8 == 7; };
  const int forks = Scaled(45);
  Failures failures;
  std::vector<std::atomic<std::uint64_t>> begun(kPages), stored(kPages);
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kStart, kLength));
    for (std::uint64_t p = 0; p < kPages; p += 3) {   // some pages start populated
      if (!read_only(p)) {
        ASSERT_EQ(parent->Store(cpu_, kStart + p * kPageSize, 0), FaultResult::kOk);
      }
    }
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> stores{0};
    std::vector<int> nodes(kWriters + 1, 0);
    RunThreads(machine_, stats_, nodes, [&](int t, Cpu& cpu) {
      if (t < kWriters) {
        std::vector<std::uint64_t> counter(kPages, 0);
        while (!stop.load(std::memory_order_acquire)) {
          for (std::uint64_t p = std::uint64_t(t); p < kPages; p += kWriters) {
            const std::uint64_t address = kStart + p * kPageSize;
            std::uint64_t seen = ~0ull;
            if (read_only(p)) {
              if (parent->Load(cpu, address, &seen) != FaultResult::kOk || seen != 0) {
                failures.Add("parent read-only page " + Hex(address) + " reads " + Hex(seen));
              }
              continue;
            }
            const std::uint64_t c = ++counter[p];
            begun[p].store(c, std::memory_order_seq_cst);
            if (parent->Store(cpu, address, c) != FaultResult::kOk) {
              failures.Add("parent store to " + Hex(address) + " failed");
            }
            stored[p].store(c, std::memory_order_seq_cst);
            stores.fetch_add(1, std::memory_order_release);
            if (c % 4 == 0 &&
                (parent->Load(cpu, address, &seen) != FaultResult::kOk || seen != c)) {
              failures.Add("parent page " + Hex(address) + " reads " + Hex(seen) + ", stored " +
                           Hex(c));
            }
          }
        }
        return;
      }
      // The forker.
      const ForkMode modes[] = {ForkMode::kClassic, ForkMode::kCowPteEager, ForkMode::kCowPteLazy};
      std::unique_ptr<AddressSpace> previous;
      std::vector<std::uint64_t> low(kPages), high(kPages);
      for (int i = 0; i < forks && failures.count() == 0; ++i) {
        const ForkMode mode = modes[i % 3];
        // Each fork waits for the writers to have faulted since the last one.
        const std::uint64_t target = stores.load(std::memory_order_acquire) + kPages / 2;
        while (stores.load(std::memory_order_acquire) < target && failures.count() == 0) {
          std::this_thread::yield();
        }
        for (std::uint64_t p = 0; p < kPages; ++p) low[p] = stored[p].load();
        auto child = parent->Fork(cpu, mode);
        for (std::uint64_t p = 0; p < kPages; ++p) high[p] = begun[p].load();
        if (previous) previous->Exit(cpu);   // races the parent's faults on what it shared
        previous.reset();
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const std::uint64_t address = kStart + p * kPageSize;
          std::uint64_t seen = ~0ull;
          if (child->Load(cpu, address, &seen) != FaultResult::kOk) {
            failures.Add(std::string("child load failed, ") + ForkModeName(mode));
          } else if (read_only(p) ? seen != 0 : (seen < low[p] || seen > high[p])) {
            failures.Add(std::string(ForkModeName(mode)) + " child page " + Hex(address) +
                         " reads " + Hex(seen) + ", expected between " + Hex(low[p]) + " and " +
                         Hex(high[p]));
          }
        }
        // The child writes some pages (breaking what it shares with the parent), reads them back.
        const std::uint64_t mark = 0xc0de000000000000ull | std::uint64_t(i);
        for (std::uint64_t p = std::uint64_t(i) % 16; p < kPages; p += 16) {
          const std::uint64_t address = kStart + p * kPageSize;
          std::uint64_t seen = 0;
          if (child->Store(cpu, address + 8, mark) != FaultResult::kOk ||
              child->Load(cpu, address + 8, &seen) != FaultResult::kOk || seen != mark) {
            failures.Add("child store/load at " + Hex(address) + " gave " + Hex(seen));
          }
        }
        previous = std::move(child);
      }
      if (previous) previous->Exit(cpu);
      stop.store(true, std::memory_order_release);
    });
    EXPECT_EQ(failures.count(), 0);
    // Quiescent now: the parent holds every last counter, in frames nobody else references.
    std::uint64_t address = kStart;
    int reported = 0;
    for (const PagemapEntry& entry : parent->Pagemap(kStart, kLength)) {
      const std::uint64_t p = (address - kStart) / kPageSize;
      const std::uint64_t expected = read_only(p) ? 0 : stored[p].load();
      const std::uint64_t seen = Read(*parent, address);
      const std::uint64_t child_word = Read(*parent, address + 8);
      const bool frame_ok = !entry.present || entry.zero_page ||
                            (machine_.meta(entry.pfn).refcount.load() == 1 &&
                             machine_.meta(entry.pfn).mapcount.load() == 1);
      if ((seen != expected || child_word != 0 || !frame_ok) && reported++ < 8) {
        ADD_FAILURE() << "parent page " << Hex(address) << " holds " << Hex(seen) << " (expected "
                      << Hex(expected) << "), word 1 " << Hex(child_word) << ", refcount "
                      << (entry.present ? machine_.meta(entry.pfn).refcount.load() : -1)
                      << ", mapcount "
                      << (entry.present ? machine_.meta(entry.pfn).mapcount.load() : -1);
      }
      address += kPageSize;
    }
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// --- 4. Zap against faults -----------------------------------------------------------------------

// Two threads walk the pages in the same order storing an increasing counter to their own word
// of each page (so their faults race on each page) and reading it back, while a third zaps
// ranges of every shape (a page, a span, a whole table, the whole VMA) as MADV_DONTNEED for a
// fixed time: a read-back is either the counter just stored or zero
// (the page was zapped in between), never an older counter nor another thread's value; after the
// race each page is unmapped, the zero page, or an exclusive frame; Exit returns every frame.
TEST_F(ModelConcurrencyTest, ZapRacingFaultsLosesOnlyWholePages) {
  constexpr std::uint64_t kLength = 3 * kMiB;   // a whole table and a half one
  constexpr std::uint64_t kPages = kLength / kPageSize;
  constexpr int kWriters = 2;
  Failures failures;
  std::atomic<std::uint64_t> zapped_pages{0}, zero_reads{0};
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, kLength));
    std::atomic<bool> stop{false};
    RunThreads(machine_, stats_, std::vector<int>(kWriters + 1, 0), [&](int t, Cpu& cpu) {
      if (t == kWriters) {
        std::uint64_t seed = 12345;
        auto next = [&seed](std::uint64_t bound) {
          seed = seed * 6364136223846793005ull + 1442695040888963407ull;
          return (seed >> 33) % bound;
        };
        const auto deadline = std::chrono::steady_clock::now() + kZapFor;
        for (int i = 0; std::chrono::steady_clock::now() < deadline || i < 16; ++i) {
          std::uint64_t start = kBase + next(kPages) * kPageSize;
          std::uint64_t length = kPageSize;
          switch (i % 4) {
            case 0: break;
            case 1: length = (1 + next(64)) * kPageSize; break;
            case 2:
              start = kBase;
              length = 2 * kMiB;
              break;
            default:
              start = kBase;
              length = kLength;
              break;
          }
          length = std::min(length, kBase + kLength - start);
          zapped_pages.fetch_add(mm->Zap(cpu, start, length), std::memory_order_relaxed);
        }
        stop.store(true, std::memory_order_release);
        return;
      }
      std::uint64_t counter = 0;
      std::uint64_t zeros = 0;
      while (!stop.load(std::memory_order_acquire)) {
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const std::uint64_t word = kBase + p * kPageSize + 8 * std::uint64_t(t);
          const std::uint64_t c = (std::uint64_t(t + 1) << 56) | ++counter;
          std::uint64_t seen = ~0ull;
          if (mm->Store(cpu, word, c) != FaultResult::kOk ||
              mm->Load(cpu, word, &seen) != FaultResult::kOk) {
            failures.Add("access to " + Hex(word) + " failed");
          } else if (seen == 0) {
            ++zeros;
          } else if (seen != c) {
            failures.Add("word " + Hex(word) + " reads " + Hex(seen) + " after storing " + Hex(c));
          }
        }
      }
      zero_reads.fetch_add(zeros, std::memory_order_relaxed);
    });
    EXPECT_EQ(failures.count(), 0);
    ExpectExclusiveFramesOrNone(*mm, kBase, kLength);
    EXPECT_GT(zapped_pages.load(), 0u);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
  RecordProperty("zero_reads", std::to_string(zero_reads.load()));
}

// Two threads zap the same ranges at once, for a fixed time, while two others store to the pages
// and read them back: concurrent MADV_DONTNEED calls on one address space, each waiting for the
// other Cpus' translations before freeing, must not wait for each other (the watchdog catches a
// wait cycle), each mapped frame is dropped exactly once (a second drop would underflow its
// refcount: the model aborts), and a read-back sees the store or zero.
TEST_F(ModelConcurrencyTest, ConcurrentZapsDoNotWaitForEachOther) {
  constexpr std::uint64_t kLength = 2 * kMiB;
  constexpr std::uint64_t kPages = kLength / kPageSize;
  constexpr std::uint64_t kZapPages = 32;
  Failures failures;
  std::atomic<std::uint64_t> zapped{0};
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, kLength));
    std::atomic<int> zappers_left{2};
    RunThreads(machine_, stats_, {0, 0, 0, 0}, [&](int t, Cpu& cpu) {
      if (t >= 2) {   // zappers: both walk the same sequence of ranges
        const auto deadline = std::chrono::steady_clock::now() + kZapFor;
        for (int i = 0; std::chrono::steady_clock::now() < deadline || i < 16; ++i) {
          const std::uint64_t first = (std::uint64_t(i) * 97) % (kPages - kZapPages);
          zapped.fetch_add(mm->Zap(cpu, kBase + first * kPageSize, kZapPages * kPageSize),
                           std::memory_order_relaxed);
        }
        zappers_left.fetch_sub(1, std::memory_order_release);
        return;
      }
      std::uint64_t counter = 0;
      while (zappers_left.load(std::memory_order_acquire) > 0) {
        for (std::uint64_t p = std::uint64_t(t); p < kPages; p += 2) {
          const std::uint64_t word = kBase + p * kPageSize;
          std::uint64_t seen = ~0ull;
          const std::uint64_t c = ++counter;
          if (mm->Store(cpu, word, c) != FaultResult::kOk ||
              mm->Load(cpu, word, &seen) != FaultResult::kOk || (seen != c && seen != 0)) {
            failures.Add("word " + Hex(word) + " reads " + Hex(seen) + " after storing " + Hex(c));
          }
        }
      }
    });
    EXPECT_EQ(failures.count(), 0);
    EXPECT_GT(zapped.load(), 0u);
    ExpectExclusiveFramesOrNone(*mm, kBase, kLength);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
  RecordProperty("pages_zapped", std::to_string(zapped.load()));
}

// --- 5. COW-PTE break races ----------------------------------------------------------------------

struct BreakRace {
  ForkMode mode;
  bool child_exits;   // the child exits while the parent breaks, instead of writing
};

class ModelCowPteRaceTest : public ModelConcurrencyTest,
                            public ::testing::WithParamInterface<BreakRace> {};

// A whole table shared by a COW-PTE fork is written at once by two threads of the parent and by
// the child (each address space breaking the same shared table; the parent's two threads racing
// each other's break), or by the parent while the child exits. Afterwards neither address space
// shares a table; each reads its own stores where it wrote and the fork-time data elsewhere
// (zero where the page was the zero page); a page neither wrote is one frame mapped by both
// (refcount and mapcount 2), a written page a frame of its own; after both exit, every frame is
// back. The pages' other words are bait: each looks like a writable entry mapping a free frame
// of node 1, so a thread still reading a shared table after it was freed and reused for a copy
// of such a page takes references on a free frame (the frame accounting catches it) or
// write-protects the "entry" (the check of the bait words catches it).
TEST_P(ModelCowPteRaceTest, BothSidesBreakTheSharedTable) {
  const BreakRace race = GetParam();
  constexpr std::uint64_t kPages = kPagesPerPmd;
  auto zero_page = [](std::uint64_t p) { return p % 16 == 15; };
  auto parent_writes = [](std::uint64_t p) { return p % 4 == 0 || p % 4 == 1; };
  auto child_writes = [](std::uint64_t p) { return p % 4 == 0 || p % 4 == 2; };
  auto original = [](std::uint64_t p) { return 0x1000 + p; };
  auto parent_value = [](std::uint64_t p) { return 0x2000000 + p; };
  auto child_value = [](std::uint64_t p) { return 0x3000000 + p; };
  Pfn bait_frame = 0;
  while (machine_.meta(bait_frame).node != 1) ++bait_frame;   // node 1 is never used here
  const Pte bait = PfnPte(bait_frame, kPtePresent | kPteWrite | kPteUser | kPteAccessed);
  // Words 1.. of each page (word 0 holds the page's value): bait when `expect_bait`, and set to
  // bait first when `fill`. Quiescent callers only: the frames are written directly.
  auto bait_words = [&](const PagemapEntry& entry, bool fill) {
    if (!entry.present || entry.zero_page) return true;
    auto* words = reinterpret_cast<std::uint64_t*>(machine_.frame(entry.pfn));
    bool intact = true;
    for (std::uint64_t w = 1; w < kPageSize / 8; ++w) {
      if (fill) words[w] = bait;
      intact &= words[w] == bait;
    }
    return intact;
  };
  Failures failures;
  for (int round = 0; round < Scaled(40) && !HasFailure(); ++round) {
    {
      auto parent = NewMm();
      parent->Map(cpu_, Anon(kBase, kPmdSize));
      for (std::uint64_t p = 0; p < kPages; ++p) {
        const std::uint64_t address = kBase + p * kPageSize;
        if (zero_page(p)) {
          ASSERT_EQ(Read(*parent, address), 0u);
        } else {
          ASSERT_EQ(parent->Store(cpu_, address, original(p)), FaultResult::kOk);
        }
      }
      for (const PagemapEntry& entry : parent->Pagemap(kBase, kPmdSize)) bait_words(entry, true);
      auto child = parent->Fork(cpu_, race.mode);
      ASSERT_EQ(child->PageTables().shared_pte_tables, 1u);
      // Threads 0 and 1 write the parent's pages (alternately, from opposite ends); thread 2 is
      // the child.
      RunThreads(machine_, stats_, {0, 0, 0}, [&](int t, Cpu& cpu) {
        if (t == 2) {
          if (race.child_exits) {
            child->Exit(cpu);
            return;
          }
          for (std::uint64_t i = 0; i < kPages; ++i) {
            const std::uint64_t p = (i + std::uint64_t(round) * 7) % kPages;
            if (!child_writes(p)) continue;
            if (child->Store(cpu, kBase + p * kPageSize, child_value(p)) != FaultResult::kOk) {
              failures.Add("child store failed");
            }
          }
          return;
        }
        for (std::uint64_t i = 0; i < kPages; ++i) {
          const std::uint64_t p = t == 0 ? i : kPages - 1 - i;
          if (!parent_writes(p) || p % 2 != std::uint64_t(t)) continue;
          if (parent->Store(cpu, kBase + p * kPageSize, parent_value(p)) != FaultResult::kOk) {
            failures.Add("parent store failed");
          }
        }
      });
      ASSERT_EQ(failures.count(), 0);
      EXPECT_EQ(parent->PageTables().shared_pte_tables, 0u);
      const std::vector<PagemapEntry> parent_map = parent->Pagemap(kBase, kPmdSize);
      std::vector<PagemapEntry> child_map;
      if (!race.child_exits) {
        EXPECT_EQ(child->PageTables().shared_pte_tables, 0u);
        child_map = child->Pagemap(kBase, kPmdSize);
      }
      for (std::uint64_t p = 0; p < kPages && !HasFailure(); ++p) {
        const std::uint64_t address = kBase + p * kPageSize;
        const std::uint64_t before = zero_page(p) ? 0 : original(p);
        EXPECT_EQ(Read(*parent, address), parent_writes(p) ? parent_value(p) : before) << p;
        const PagemapEntry& mine = parent_map[p];
        ASSERT_TRUE(mine.present) << p;
        EXPECT_TRUE(bait_words(mine, false)) << "the parent's page " << p << " was written to";
        if (race.child_exits) {
          EXPECT_EQ(mine.zero_page, zero_page(p) && !parent_writes(p)) << p;
          if (!mine.zero_page) {
            EXPECT_EQ(machine_.meta(mine.pfn).refcount.load(), 1) << p;
            EXPECT_EQ(machine_.meta(mine.pfn).mapcount.load(), 1) << p;
          }
          continue;
        }
        EXPECT_EQ(Read(*child, address), child_writes(p) ? child_value(p) : before) << p;
        const PagemapEntry& theirs = child_map[p];
        ASSERT_TRUE(theirs.present) << p;
        EXPECT_TRUE(bait_words(theirs, false)) << "the child's page " << p << " was written to";
        if (parent_writes(p) || child_writes(p)) {
          EXPECT_NE(mine.pfn, theirs.pfn) << p;
          for (const PagemapEntry* entry : {&mine, &theirs}) {
            if (entry->zero_page) continue;
            EXPECT_EQ(machine_.meta(entry->pfn).refcount.load(), 1) << p;
            EXPECT_EQ(machine_.meta(entry->pfn).mapcount.load(), 1) << p;
          }
        } else if (!zero_page(p)) {
          EXPECT_EQ(mine.pfn, theirs.pfn) << p;
          EXPECT_EQ(machine_.meta(mine.pfn).refcount.load(), 2) << p;
          EXPECT_EQ(machine_.meta(mine.pfn).mapcount.load(), 2) << p;
        } else {
          EXPECT_TRUE(mine.zero_page && theirs.zero_page) << p;
        }
      }
      // Alternate which side exits last.
      if (round % 2 == 0) {
        child->Exit(cpu_);
        parent->Exit(cpu_);
      } else {
        parent->Exit(cpu_);
        child->Exit(cpu_);
      }
    }
    ExpectAllFramesFree();
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, ModelCowPteRaceTest,
                         ::testing::Values(BreakRace{ForkMode::kCowPteEager, false},
                                           BreakRace{ForkMode::kCowPteLazy, false},
                                           BreakRace{ForkMode::kCowPteEager, true},
                                           BreakRace{ForkMode::kCowPteLazy, true}),
                         [](const auto& race) {
                           return std::string(ForkModeName(race.param.mode)) +
                                  (race.param.child_exits ? "_child_exits" : "_both_write");
                         });

// The parent forks again and again (every mode; each grandchild checked, written a little and
// exited at once) while two earlier children, one from a lazy and one from an eager COW-PTE fork,
// write their pages: the parent's exclusive fork runs against operations of other address spaces
// on the tables it shares with them (adding sharers, or copying instead of sharing a table
// accounted the other way, while the children break them). Every address space reads the parent's
// data where it did not write and its own where it did; after all exit every frame is back.
TEST_F(ModelConcurrencyTest, ForksRaceTheChildrensBreaksOfSharedTables) {
  constexpr std::uint64_t kLength = 4 * kMiB;   // two whole tables
  constexpr std::uint64_t kPages = kLength / kPageSize;
  auto original = [](std::uint64_t p) { return 0x5000000 + p; };
  auto child_value = [](int child, std::uint64_t p) {
    return (std::uint64_t(child + 1) << 40) | p;
  };
  auto child_writes = [](int child, std::uint64_t p) { return p % 3 == std::uint64_t(child); };
  Failures failures;
  for (int round = 0; round < Scaled(12) && !HasFailure(); ++round) {
    {
      auto parent = NewMm();
      parent->Map(cpu_, Anon(kBase, kLength));
      for (std::uint64_t p = 0; p < kPages; ++p) {
        ASSERT_EQ(parent->Store(cpu_, kBase + p * kPageSize, original(p)), FaultResult::kOk);
      }
      std::unique_ptr<AddressSpace> children[2] = {parent->Fork(cpu_, ForkMode::kCowPteLazy),
                                                   parent->Fork(cpu_, ForkMode::kCowPteEager)};
      RunThreads(machine_, stats_, {0, 0, 0}, [&](int t, Cpu& cpu) {
        if (t < 2) {   // a child writes its pages, then checks all of them
          AddressSpace& child = *children[t];
          for (std::uint64_t p = 0; p < kPages; ++p) {
            if (child_writes(t, p) &&
                child.Store(cpu, kBase + p * kPageSize, child_value(t, p)) != FaultResult::kOk) {
              failures.Add("child store failed");
            }
          }
          for (std::uint64_t p = 0; p < kPages; ++p) {
            std::uint64_t seen = 0;
            const std::uint64_t expected = child_writes(t, p) ? child_value(t, p) : original(p);
            if (child.Load(cpu, kBase + p * kPageSize, &seen) != FaultResult::kOk ||
                seen != expected) {
              failures.Add("child " + std::to_string(t) + " page " + std::to_string(p) + " reads " +
                           Hex(seen) + ", expected " + Hex(expected));
            }
          }
          return;
        }
        const ForkMode modes[] = {ForkMode::kCowPteLazy, ForkMode::kCowPteEager,
                                  ForkMode::kClassic};
        for (int i = 0; i < 6; ++i) {
          auto grandchild = parent->Fork(cpu, modes[i % 3]);
          for (std::uint64_t p = std::uint64_t(i); p < kPages; p += 37) {
            std::uint64_t seen = 0;
            if (grandchild->Load(cpu, kBase + p * kPageSize, &seen) != FaultResult::kOk ||
                seen != original(p)) {
              failures.Add("grandchild page " + std::to_string(p) + " reads " + Hex(seen));
            }
          }
          if (grandchild->Store(cpu, kBase + std::uint64_t(i) * kPageSize, 1) != FaultResult::kOk) {
            failures.Add("grandchild store failed");
          }
          grandchild->Exit(cpu);
        }
      });
      ASSERT_EQ(failures.count(), 0);
      for (std::uint64_t p = 0; p < kPages; p += 7) {
        EXPECT_EQ(Read(*parent, kBase + p * kPageSize), original(p)) << p;
        EXPECT_EQ(Read(*children[0], kBase + p * kPageSize),
                  child_writes(0, p) ? child_value(0, p) : original(p));
        EXPECT_EQ(Read(*children[1], kBase + p * kPageSize),
                  child_writes(1, p) ? child_value(1, p) : original(p));
      }
      children[round % 2]->Exit(cpu_);
      parent->Exit(cpu_);
      children[1 - round % 2]->Exit(cpu_);
    }
    ExpectAllFramesFree();
  }
}

// --- 6. Migration against accesses ---------------------------------------------------------------

class ModelMigrationRaceTest : public ModelConcurrencyTest,
                               public ::testing::WithParamInterface<ProtnoneEncoding> {};

// Pages on node 0 are migrated to node 1 by move_pages (MigratePage) from one thread and by NUMA
// hinting faults (ChangeProtNuma, then loads) from another, while a third stores an increasing
// counter to every page and reads it back and a fourth reads every page; all four Cpus sit on
// node 1. Readers never see a page's counter go backwards; the storer always reads back its store;
// move_pages succeeds on every page (or says -EBUSY when a hinting fault was migrating it at the
// same moment); after each round every page is on node 1 in an exclusive
// frame holding the last counter. The test moves them back to node 0 between rounds. No frame
// leaks on either node.
TEST_P(ModelMigrationRaceTest, DataSurvivesMigrationUnderLoadsAndStores) {
  constexpr std::uint64_t kPages = 64;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  const int rounds = Scaled(30);
  Failures failures;
  std::vector<std::uint64_t> last(kPages, 0);
  std::uint64_t migrated = 0;
  {
    auto mm = NewMm(AddressSpace::Options{GetParam()});
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    for (std::uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(mm->Store(cpu_, kBase + p * kPageSize, 0), FaultResult::kOk);
    }
    std::atomic<std::uint64_t> total_migrated{0};
    std::atomic<int> busy{0};
    for (int round = 0; round < rounds && !HasFailure(); ++round) {
      for (const PagemapEntry& entry : mm->Pagemap(kBase, kLength)) ASSERT_EQ(entry.node, 0);
      std::atomic<bool> stop{false};
      RunThreads(machine_, stats_, {1, 1, 1, 1}, [&](int t, Cpu& cpu) {
        switch (t) {
          case 0:   // move_pages
            for (std::uint64_t i = 0; i < kPages; ++i) {
              const std::uint64_t p = (i * 13) % kPages;
              // -EBUSY: a hinting fault was migrating the page at the same moment.
              const int error = mm->MigratePage(cpu, kBase + p * kPageSize, 1);
              if (error == -EBUSY) {
                busy.fetch_add(1, std::memory_order_relaxed);
              } else if (error != 0) {
                failures.Add("MigratePage gave " + std::to_string(error));
              }
            }
            stop.store(true, std::memory_order_release);
            break;
          case 1:   // NUMA hinting scan and faults
            while (!stop.load(std::memory_order_acquire)) {
              mm->ChangeProtNuma(cpu, kBase, kLength);
              for (std::uint64_t p = kPages; p-- > 0;) {
                std::uint64_t seen = 0;
                if (mm->Load(cpu, kBase + p * kPageSize + 8, &seen) != FaultResult::kOk ||
                    seen != 0) {
                  failures.Add("hint-faulting read of word 1 gave " + Hex(seen));
                }
              }
            }
            break;
          case 2: {   // the storer: the only writer of word 0
            std::uint64_t counter = last[0];
            for (std::uint64_t& l : last) counter = std::max(counter, l);
            do {
              for (std::uint64_t p = 0; p < kPages; ++p) {
                const std::uint64_t address = kBase + p * kPageSize;
                std::uint64_t seen = 0;
                const std::uint64_t c = ++counter;
                if (mm->Store(cpu, address, c) != FaultResult::kOk ||
                    mm->Load(cpu, address, &seen) != FaultResult::kOk || seen != c) {
                  failures.Add("page " + Hex(address) + " reads " + Hex(seen) + " after storing " +
                               Hex(c));
                }
                last[p] = c;
              }
            } while (!stop.load(std::memory_order_acquire));
            break;
          }
          default: {   // a reader: counters only grow
            std::vector<std::uint64_t> seen_before(kPages, 0);
            do {
              for (std::uint64_t p = 0; p < kPages; ++p) {
                std::uint64_t seen = 0;
                if (mm->Load(cpu, kBase + p * kPageSize, &seen) != FaultResult::kOk ||
                    seen < seen_before[p]) {
                  failures.Add("page " + std::to_string(p) + " went back from " +
                               Hex(seen_before[p]) + " to " + Hex(seen));
                }
                seen_before[p] = seen;
              }
            } while (!stop.load(std::memory_order_acquire));
            break;
          }
        }
        total_migrated.fetch_add(cpu.stats().pages_migrated, std::memory_order_relaxed);
      });
      ASSERT_EQ(failures.count(), 0);
      std::uint64_t address = kBase;
      int reported = 0;
      std::set<Pfn> pfns;
      for (const PagemapEntry& entry : mm->Pagemap(kBase, kLength)) {
        const std::uint64_t p = (address - kBase) / kPageSize;
        const bool ok = entry.present && !entry.zero_page && !entry.migration && entry.node == 1 &&
                        machine_.meta(entry.pfn).refcount.load() == 1 &&
                        machine_.meta(entry.pfn).mapcount.load() == 1 &&
                        pfns.insert(entry.pfn).second;
        if (!ok && reported++ < 8) {
          ADD_FAILURE() << "page " << p << ": present " << entry.present << " node " << entry.node
                        << " migration " << entry.migration << " refcount "
                        << machine_.meta(entry.pfn).refcount.load();
        }
        EXPECT_EQ(Read(*mm, address), last[p]) << "page " << p;
        address += kPageSize;
      }
      for (std::uint64_t p = 0; p < kPages; ++p) {
        ASSERT_EQ(mm->MigratePage(cpu_, kBase + p * kPageSize, 0), 0);
      }
    }
    migrated = total_migrated.load();
    EXPECT_GE(migrated, kPages);
    RecordProperty("move_pages_busy", busy.load());
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

INSTANTIATE_TEST_SUITE_P(BothEncodings, ModelMigrationRaceTest,
                         ::testing::Values(ProtnoneEncoding::kProtnone,
                                           ProtnoneEncoding::kFaultOnAccess),
                         [](const auto& encoding) {
                           return std::string(ProtnoneEncodingName(encoding.param));
                         });

// Pages are zapped (MADV_DONTNEED) while they are being migrated, by move_pages between the nodes
// and by NUMA hinting faults, and stored to: a zap may clear a migration entry under the migrating
// thread, which must then drop its copy rather than install it. A read-back sees the store or
// zero; afterwards every page is unmapped, the zero page or an exclusive frame; no frame leaks on
// either node.
TEST_F(ModelConcurrencyTest, ZapRacingMigrationLosesNothingElse) {
  constexpr std::uint64_t kPages = 64;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  Failures failures;
  std::atomic<int> migrations_done{0};
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    std::atomic<bool> stop{false};
    RunThreads(machine_, stats_, {1, 1, 0, 0}, [&](int t, Cpu& cpu) {
      switch (t) {
        case 0:   // the storer, on node 1
        {
          std::uint64_t counter = 0;
          while (!stop.load(std::memory_order_acquire)) {
            for (std::uint64_t p = 0; p < kPages; ++p) {
              const std::uint64_t address = kBase + p * kPageSize;
              std::uint64_t seen = ~0ull;
              const std::uint64_t c = ++counter;
              if (mm->Store(cpu, address, c) != FaultResult::kOk ||
                  mm->Load(cpu, address, &seen) != FaultResult::kOk || (seen != c && seen != 0)) {
                failures.Add("page " + Hex(address) + " reads " + Hex(seen) + " after " + Hex(c));
              }
            }
          }
          break;
        }
        case 1:   // NUMA hinting scans and faults from node 1
          while (!stop.load(std::memory_order_acquire)) {
            mm->ChangeProtNuma(cpu, kBase, kLength);
            for (std::uint64_t p = 0; p < kPages; ++p) {
              std::uint64_t seen = 0;
              if (mm->Load(cpu, kBase + p * kPageSize + 8, &seen) != FaultResult::kOk ||
                  seen != 0) {
                failures.Add("word 1 reads " + Hex(seen));
              }
            }
          }
          break;
        case 2:   // move_pages back to node 0
          while (!stop.load(std::memory_order_acquire)) {
            for (std::uint64_t p = 0; p < kPages; ++p) {
              const int error = mm->MigratePage(cpu, kBase + p * kPageSize, 0);
              if (error == 0) {
                migrations_done.fetch_add(1, std::memory_order_relaxed);
              } else if (error != -EBUSY && error != -ENOENT) {
                failures.Add("MigratePage gave " + std::to_string(error));
              }
            }
          }
          break;
        default: {   // the zapper, for a fixed time
          const auto deadline = std::chrono::steady_clock::now() + kZapFor;
          for (std::uint64_t i = 0; std::chrono::steady_clock::now() < deadline || i < 16; ++i) {
            const std::uint64_t first = (i * 13) % kPages;
            mm->Zap(cpu, kBase + first * kPageSize,
                    std::min<std::uint64_t>(8, kPages - first) * kPageSize);
          }
          stop.store(true, std::memory_order_release);
          break;
        }
      }
    });
    EXPECT_EQ(failures.count(), 0);
    ExpectExclusiveFramesOrNone(*mm, kBase, kLength);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
  RecordProperty("move_pages_done", std::to_string(migrations_done.load()));
}

// --- 7. uffd-wp round trips ----------------------------------------------------------------------

class ModelUffdWpRaceTest : public ModelConcurrencyTest,
                            public ::testing::WithParamInterface<VmaKind> {};

// A range registered for uffd-wp is write-protected; three threads then store to their own word of
// every page (so their wp events and the handlers' un-protects race on each page) while a fourth
// keeps re-protecting pieces of the range. Every store lands: each thread reads back its own store
// at once, and after each round every thread's word holds its value and the word written before
// the protection is intact. Events were delivered, and every frame comes back.
TEST_P(ModelUffdWpRaceTest, EveryWriteLandsThroughWpEvents) {
  const VmaKind kind = GetParam();
  constexpr std::uint64_t kPages = 64;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  constexpr int kWriters = 3;
  const int rounds = Scaled(60);
  auto value = [](int round, int t, std::uint64_t p) {
    return (std::uint64_t(round + 1) << 32) | (std::uint64_t(t + 1) << 16) | p;
  };
  Failures failures;
  std::atomic<std::uint64_t> events{0};
  {
    std::shared_ptr<ShmemFile> file;
    Vma vma = Anon(kBase, 2 * kMiB);
    if (kind == VmaKind::kShmem) {
      file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, false, 0);
      vma.kind = VmaKind::kShmem;
      vma.file = file;
    }
    auto mm = NewMm();
    mm->Map(cpu_, vma);
    mm->RegisterUffd(cpu_, kBase, kUffdWp, [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
      events.fetch_add(1, std::memory_order_relaxed);
      if (e.kind != UffdEvent::Kind::kWp || e.access != Access::kWrite) {
        failures.Add("unexpected uffd event at " + Hex(e.address));
      }
      const int error = space.UffdWriteProtect(cpu, e.address, kPageSize, false);
      if (error != 0) failures.Add("un-protect gave " + std::to_string(error));
    });
    for (std::uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(mm->Store(cpu_, kBase + p * kPageSize, ~p), FaultResult::kOk);
    }
    for (int round = 0; round < rounds && !HasFailure(); ++round) {
      ASSERT_EQ(mm->UffdWriteProtect(cpu_, kBase, kLength, true), 0);
      for (const PagemapEntry& entry : mm->Pagemap(kBase, kLength)) {
        ASSERT_TRUE(entry.uffd_wp && !entry.writable);
      }
      RunThreads(machine_, stats_, std::vector<int>(kWriters + 1, 0), [&](int t, Cpu& cpu) {
        if (t == kWriters) {   // re-protects pieces while the writers write
          for (int i = 0; i < 16; ++i) {
            const std::uint64_t first =
                (std::uint64_t(i) * 11 + std::uint64_t(round)) % (kPages - 8);
            if (mm->UffdWriteProtect(cpu, kBase + first * kPageSize, 8 * kPageSize, true) != 0) {
              failures.Add("re-protect failed");
            }
            std::this_thread::yield();
          }
          return;
        }
        for (std::uint64_t i = 0; i < kPages; ++i) {
          const std::uint64_t p = (i + std::uint64_t(t) * 21) % kPages;
          const std::uint64_t word = kBase + p * kPageSize + 8 * std::uint64_t(t + 1);
          std::uint64_t seen = 0;
          const FaultResult stored = mm->Store(cpu, word, value(round, t, p));
          if (stored != FaultResult::kOk || mm->Load(cpu, word, &seen) != FaultResult::kOk ||
              seen != value(round, t, p)) {
            failures.Add(std::string("store to ") + Hex(word) + ": " + FaultResultName(stored) +
                         ", reads " + Hex(seen));
          }
        }
      });
      ASSERT_EQ(failures.count(), 0);
      for (std::uint64_t p = 0; p < kPages; ++p) {
        const std::uint64_t page = kBase + p * kPageSize;
        EXPECT_EQ(Read(*mm, page), ~p) << p;
        for (int t = 0; t < kWriters; ++t) {
          EXPECT_EQ(Read(*mm, page + 8 * std::uint64_t(t + 1)), value(round, t, p)) << p;
        }
      }
    }
    EXPECT_GE(events.load(), kPages);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

INSTANTIATE_TEST_SUITE_P(AnonAndShmem, ModelUffdWpRaceTest,
                         ::testing::Values(VmaKind::kAnon, VmaKind::kShmem),
                         [](const auto& kind) { return std::string(VmaKindName(kind.param)); });

// --- 8. UFFDIO_ZEROPAGE on shmem ----------------------------------------------------------------

// Four threads read and write the same pages of a shmem VMA registered for missing faults, whose
// handler answers every event with UffdZeropage (a zeroed page added to the file and mapped, as
// Linux 6.18 does): the handlers race to fill each page, and the faults that lose find it in the
// cache. Each round (with the cache emptied before it) every page is filled exactly once, ends
// mapping the file's frame (refcount 2: the cache's and the mapping's), holds every thread's store
// and zeros elsewhere; a read never sees an earlier round's data. Every frame comes back.
TEST_F(ModelConcurrencyTest, RacingZeropageFillsOfShmemCacheOnePageEach) {
  constexpr int kThreads = 4;
  constexpr std::uint64_t kPages = 128;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  const int rounds = Scaled(60);
  auto value = [](int round, int t, std::uint64_t p) {
    return (std::uint64_t(round + 1) << 32) | (std::uint64_t(t + 1) << 16) | p;
  };
  Failures failures;
  std::atomic<std::uint64_t> fills{0};
  std::atomic<std::uint64_t> lost{0};
  {
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, false, 0);
    Vma vma = Anon(kBase, 2 * kMiB);
    vma.kind = VmaKind::kShmem;
    vma.file = file;
    auto mm = NewMm();
    mm->Map(cpu_, vma);
    mm->RegisterUffd(cpu_, kBase, kUffdMissing,
                     [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
                       if (e.kind != UffdEvent::Kind::kMissing) {
                         failures.Add("unexpected uffd event at " + Hex(e.address));
                       }
                       // -EEXIST: another handler's page is in the cache (or mapped). The
                       // retried fault maps it.
                       const int error = space.UffdZeropage(cpu, e.address);
                       if (error == 0) {
                         fills.fetch_add(1, std::memory_order_relaxed);
                       } else if (error == -EEXIST) {
                         lost.fetch_add(1, std::memory_order_relaxed);
                       } else {
                         failures.Add("UffdZeropage gave " + std::to_string(error));
                       }
                     });
    for (int round = 0; round < rounds && !HasFailure(); ++round) {
      fills.store(0, std::memory_order_relaxed);
      RunThreads(machine_, stats_, std::vector<int>(kThreads, 0), [&](int t, Cpu& cpu) {
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const std::uint64_t page = kBase + p * kPageSize;
          if ((p + std::uint64_t(t) + std::uint64_t(round)) % 3 == 0) {
            std::uint64_t seen = ~0ull;
            if (mm->Load(cpu, page + 8, &seen) != FaultResult::kOk ||
                (seen != 0 && (seen >> 32) != std::uint64_t(round + 1))) {
              failures.Add("read of " + Hex(page) + " saw " + Hex(seen));
            }
          }
          const std::uint64_t word = page + 8 * std::uint64_t(t + 1);
          std::uint64_t own = 0;
          if (mm->Store(cpu, word, value(round, t, p)) != FaultResult::kOk ||
              mm->Load(cpu, word, &own) != FaultResult::kOk || own != value(round, t, p)) {
            failures.Add("own word of " + Hex(page) + " reads " + Hex(own));
          }
        }
      });
      ASSERT_EQ(failures.count(), 0);
      EXPECT_EQ(fills.load(), kPages);
      std::uint64_t p = 0;
      for (const PagemapEntry& entry : mm->Pagemap(kBase, kLength)) {
        const std::uint64_t page = kBase + p * kPageSize;
        ASSERT_TRUE(entry.present && !entry.zero_page) << Hex(page);
        EXPECT_EQ(entry.pfn, file->Lookup(p)) << Hex(page);
        EXPECT_EQ(machine_.meta(entry.pfn).refcount.load(), 2) << Hex(page);
        EXPECT_EQ(machine_.meta(entry.pfn).mapcount.load(), 1) << Hex(page);
        for (int t = 0; t < kThreads; ++t) {
          EXPECT_EQ(Read(*mm, page + 8 * std::uint64_t(t + 1)), value(round, t, p)) << Hex(page);
        }
        EXPECT_EQ(Read(*mm, page), 0u) << Hex(page);
        EXPECT_EQ(Read(*mm, page + 2048), 0u) << Hex(page);
        ++p;
      }
      EXPECT_EQ(mm->Zap(cpu_, kBase, kLength), kPages);
      for (std::uint64_t i = 0; i < kPages; ++i) file->Remove(cpu_, i);
    }
    mm->Exit(cpu_);
  }
  EXPECT_EQ(failures.count(), 0);
  ExpectAllFramesFree();
  RecordProperty("zeropage_fills_found_filled", std::to_string(lost.load()));
  std::printf("zeropage fills that found the page filled already: %llu\n",
              static_cast<unsigned long long>(lost.load()));
}

// --- 8. NUMA scan, hinting faults and move_pages on the same pages -------------------------------

class ModelNumaRaceTest : public ModelConcurrencyTest,
                          public ::testing::WithParamInterface<ProtnoneEncoding> {};

// 128 pages across two page tables, every one touched by every thread at once: a scanner marks
// them all for NUMA hinting again and again (ChangeProtNuma); two storers, one on each node, store
// an increasing counter to a word of their own in every page and read it back, so their hinting
// faults pull each page to their node, often both on the same page at the same moment; a mover
// moves every page to alternating nodes (MigratePage); a reader on node 0 checks each page's
// signature word and that the storers' counters never go back. Afterwards, with nothing running:
// each page maps a frame of its own (refcount and mapcount 1) on node 0 or 1, no migration entry
// is left; each node's pool lacks exactly the frames mapped there (node 0 the page tables too);
// every entry the scanner marked was taken by exactly one hinting fault or is still marked (a
// fault that loses the entry to another thread's must not count it); every copy was a migration;
// every word holds its last store. After Exit every frame is back.
TEST_P(ModelNumaRaceTest, ScanHintFaultsAndMovePagesOnTheSamePages) {
  constexpr std::uint64_t kPages = 128;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  const std::uint64_t start = kBase + 2 * kMiB - 64 * kPageSize;   // 64 pages in each of 2 tables
  const int passes = Scaled(80);
  auto signature = [](std::uint64_t p) { return 0x5157000000000000ull | p; };
  Failures failures;
  std::vector<std::uint64_t> last[2] = {std::vector<std::uint64_t>(kPages, 0),
                                        std::vector<std::uint64_t>(kPages, 0)};
  std::atomic<std::uint64_t> marked{0};
  std::atomic<std::uint64_t> scans{0};
  std::atomic<std::uint64_t> moved{0};
  std::atomic<std::uint64_t> busy{0};
  SpinBarrier pass_start(2);
  {
    auto mm = NewMm(AddressSpace::Options{GetParam()});
    mm->Map(cpu_, Anon(kBase, 4 * kMiB));
    for (std::uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(mm->Store(cpu_, start + p * kPageSize, signature(p)), FaultResult::kOk);
    }
    std::atomic<int> storing{2};
    RunThreads(machine_, stats_, {0, 0, 1, 1, 0}, [&](int t, Cpu& cpu) {
      switch (t) {
        case 0: {   // the scanner
          std::uint64_t mine = 0;
          do {
            mine += mm->ChangeProtNuma(cpu, start, kLength);
            scans.fetch_add(1, std::memory_order_release);
          } while (storing.load(std::memory_order_acquire) > 0);
          marked.fetch_add(mine, std::memory_order_relaxed);
          break;
        }
        case 1:
        case 2: {   // the storers, on node 0 and node 1: word t of every page is theirs alone
          std::vector<std::uint64_t>& mine = last[t - 1];
          std::uint64_t counter = 0;
          for (int pass = 0; pass < passes; ++pass) {
            // Each pass starts after a scan pass that began after the last one, and both storers
            // start it together: they meet on every freshly marked page at about the same moment.
            if (t == 1) {
              const std::uint64_t seen = scans.load(std::memory_order_acquire);
              while (scans.load(std::memory_order_acquire) < seen + 2) std::this_thread::yield();
            }
            pass_start.ArriveAndWait();
            for (std::uint64_t p = 0; p < kPages; ++p) {
              const std::uint64_t word = start + p * kPageSize + 8 * std::uint64_t(t);
              const std::uint64_t c = ++counter;
              std::uint64_t seen = 0;
              if (mm->Store(cpu, word, c) != FaultResult::kOk ||
                  mm->Load(cpu, word, &seen) != FaultResult::kOk || seen != c) {
                failures.Add("word " + Hex(word) + " reads " + Hex(seen) + " after storing " +
                             Hex(c));
              }
              mine[p] = c;
            }
          }
          storing.fetch_sub(1, std::memory_order_release);
          break;
        }
        case 3: {   // the mover, on node 1
          std::uint64_t pass = 0;
          do {
            for (std::uint64_t p = 0; p < kPages; ++p) {
              // -EBUSY: a hinting fault was migrating the page.
              const int error = mm->MigratePage(cpu, start + p * kPageSize, int((p + pass) % 2));
              if (error == 0) {
                moved.fetch_add(1, std::memory_order_relaxed);
              } else if (error == -EBUSY) {
                busy.fetch_add(1, std::memory_order_relaxed);
              } else {
                failures.Add("MigratePage gave " + std::to_string(error));
              }
            }
            ++pass;
          } while (storing.load(std::memory_order_acquire) > 0);
          break;
        }
        default: {   // the reader, on node 0
          std::vector<std::uint64_t> before(2 * kPages, 0);
          do {
            for (std::uint64_t p = 0; p < kPages; ++p) {
              const std::uint64_t page = start + p * kPageSize;
              std::uint64_t seen = 0;
              if (mm->Load(cpu, page, &seen) != FaultResult::kOk || seen != signature(p)) {
                failures.Add("signature of " + Hex(page) + " reads " + Hex(seen));
              }
              for (std::uint64_t w = 0; w < 2; ++w) {
                if (mm->Load(cpu, page + 8 * (w + 1), &seen) != FaultResult::kOk ||
                    seen < before[2 * p + w]) {
                  failures.Add("word " + std::to_string(w + 1) + " of " + Hex(page) +
                               " went back from " + Hex(before[2 * p + w]) + " to " + Hex(seen));
                }
                before[2 * p + w] = seen;
              }
            }
          } while (storing.load(std::memory_order_acquire) > 0);
          break;
        }
      }
    });
    ASSERT_EQ(failures.count(), 0);

    std::set<Pfn> pfns;
    std::uint64_t on_node[2] = {0, 0};
    std::uint64_t still_marked = 0;
    std::uint64_t address = start;
    int reported = 0;
    for (const PagemapEntry& entry : mm->Pagemap(start, kLength)) {
      const bool ok = entry.present && !entry.zero_page && !entry.migration &&
                      (entry.node == 0 || entry.node == 1) &&
                      machine_.meta(entry.pfn).refcount.load() == 1 &&
                      machine_.meta(entry.pfn).mapcount.load() == 1 &&
                      pfns.insert(entry.pfn).second;
      if (ok) {
        ++on_node[entry.node];
        still_marked += entry.numa_hint;
      } else if (reported++ < 8) {
        ADD_FAILURE() << "page " << Hex(address) << ": present " << entry.present << " migration "
                      << entry.migration << " node " << entry.node << " pfn " << entry.pfn;
      }
      address += kPageSize;
    }
    // Every worker Cpu is gone, its caches drained: the pools lack the mapped frames, no more.
    const std::uint64_t tables = mm->PageTables().tables;
    EXPECT_EQ(machine_.free_frames(1, 0), free_at_start_[1] - on_node[1]);
    EXPECT_EQ(machine_.free_frames(0, 0), free_at_start_[0] - on_node[0] - tables);

    const CpuStats total = stats_.Total();
    EXPECT_EQ(marked.load(), total.numa_hint_faults + still_marked)
        << "entries marked against hinting faults counted plus entries still marked ("
        << still_marked << ")";
    EXPECT_EQ(total.pages_copied, total.pages_migrated);
    EXPECT_GT(total.numa_hint_faults, 0u);
    EXPECT_GT(total.pages_migrated, 0u);
    EXPECT_GT(moved.load(), 0u);

    for (std::uint64_t p = 0; p < kPages; ++p) {
      const std::uint64_t page = start + p * kPageSize;
      EXPECT_EQ(Read(*mm, page), signature(p)) << Hex(page);
      EXPECT_EQ(Read(*mm, page + 8), last[0][p]) << Hex(page);
      EXPECT_EQ(Read(*mm, page + 16), last[1][p]) << Hex(page);
    }
    RecordProperty("move_pages_done", std::to_string(moved.load()));
    RecordProperty("move_pages_busy", std::to_string(busy.load()));
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

INSTANTIATE_TEST_SUITE_P(BothEncodings, ModelNumaRaceTest,
                         ::testing::Values(ProtnoneEncoding::kProtnone,
                                           ProtnoneEncoding::kFaultOnAccess),
                         [](const auto& encoding) {
                           return std::string(ProtnoneEncodingName(encoding.param));
                         });

// A range registered for uffd-wp (with no handler, so a wp fault is kSigbus) is write-protected and
// un-protected again and again while another thread moves its pages between the nodes
// (MigratePage). A migration that copies a page while its protection changes must install the
// protection as it is when the copy ends, not as it was when the copy began: after an un-protect
// every store lands (kOk) and reads back; after a protect every store is refused (kSigbus). A
// lost change shows as the other result. Afterwards each page holds its last store in a frame of
// its own, unprotected, and every frame comes back.
TEST_F(ModelConcurrencyTest, WriteProtectChangesDuringMigrationAreKept) {
  constexpr std::uint64_t kPages = 32;
  constexpr std::uint64_t kLength = kPages * kPageSize;
  const int rounds = Scaled(4000);
  auto value = [](int round, std::uint64_t p) { return (std::uint64_t(round + 1) << 16) | p; };
  Failures failures;
  std::atomic<std::uint64_t> moved{0};
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    mm->RegisterUffd(cpu_, kBase, kUffdWp, UffdHandler());
    for (std::uint64_t p = 0; p < kPages; ++p) {
      ASSERT_EQ(mm->Store(cpu_, kBase + p * kPageSize, 0), FaultResult::kOk);
    }
    std::atomic<bool> stop{false};
    RunThreads(machine_, stats_, {1, 0}, [&](int t, Cpu& cpu) {
      if (t == 0) {   // the mover
        for (std::uint64_t pass = 0; !stop.load(std::memory_order_acquire); ++pass) {
          for (std::uint64_t p = 0; p < kPages; ++p) {
            const int error = mm->MigratePage(cpu, kBase + p * kPageSize, int((p + pass) % 2));
            if (error == 0) {
              moved.fetch_add(1, std::memory_order_relaxed);
            } else if (error != -EBUSY) {
              failures.Add("MigratePage gave " + std::to_string(error));
            }
          }
        }
        return;
      }
      for (int round = 0; round < rounds; ++round) {
        if (mm->UffdWriteProtect(cpu, kBase, kLength, true) != 0) failures.Add("protect failed");
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const FaultResult result = mm->Store(cpu, kBase + p * kPageSize, ~0ull);
          if (result != FaultResult::kSigbus) {
            failures.Add("store to protected page " + std::to_string(p) + " gave " +
                         FaultResultName(result));
          }
        }
        if (mm->UffdWriteProtect(cpu, kBase, kLength, false) != 0) {
          failures.Add("un-protect failed");
        }
        for (std::uint64_t p = 0; p < kPages; ++p) {
          const std::uint64_t address = kBase + p * kPageSize;
          std::uint64_t seen = 0;
          const FaultResult result = mm->Store(cpu, address, value(round, p));
          if (result != FaultResult::kOk || mm->Load(cpu, address, &seen) != FaultResult::kOk ||
              seen != value(round, p)) {
            failures.Add("store to un-protected page " + std::to_string(p) + " gave " +
                         FaultResultName(result) + ", reads " + Hex(seen));
          }
        }
      }
      stop.store(true, std::memory_order_release);
    });
    EXPECT_EQ(failures.count(), 0);
    EXPECT_GT(moved.load(), 0u);
    std::set<Pfn> pfns;
    std::uint64_t p = 0;
    for (const PagemapEntry& entry : mm->Pagemap(kBase, kLength)) {
      EXPECT_TRUE(entry.present && !entry.uffd_wp && !entry.migration &&
                  machine_.meta(entry.pfn).refcount.load() == 1 &&
                  machine_.meta(entry.pfn).mapcount.load() == 1 && pfns.insert(entry.pfn).second)
          << "page " << p << ": present " << entry.present << " uffd_wp " << entry.uffd_wp;
      EXPECT_EQ(Read(*mm, kBase + p * kPageSize), value(rounds - 1, p)) << "page " << p;
      ++p;
    }
    RecordProperty("move_pages_done", std::to_string(moved.load()));
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

}   // namespace
}   // namespace faultlab::model
