// Semantic tests of the model's fault paths, one property each, as kernels/README.md states them:
// zero page, anonymous and shared faults, the three forks and the breaking of shared tables,
// markers across zap, uffd missing/minor/wp, guard and poison, NUMA hinting and migration. Every
// test ends by tearing the address spaces down and checking that each frame came back.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/address_space.h"
#include "kernels/machine.h"
#include "topology/topology.h"

namespace faultlab::model {
namespace {

constexpr std::uint64_t kBase = 0x7f0000000000ull;   // 2 MiB aligned
constexpr std::uint64_t kMiB = 1ull << 20;

class ModelSemanticsTest : public ::testing::Test {
 protected:
  ModelSemanticsTest()
      : machine_(topology_, {{std::nullopt, 8192, 2}, {std::nullopt, 4096, 0}}),
        cpu_(machine_, 0),
        free_at_start_{machine_.free_frames(0, 0), machine_.free_frames(1, 0),
                       machine_.free_frames(0, kHugeOrder)},
        zero_refcount_(machine_.meta(machine_.zero_pfn()).refcount.load()) {}

  // Every frame back, and the zero frame's refcount where it was.
  void ExpectAllFramesFree() {
    EXPECT_EQ(machine_.free_frames(0, 0), free_at_start_[0]);
    EXPECT_EQ(machine_.free_frames(1, 0), free_at_start_[1]);
    EXPECT_EQ(machine_.free_frames(0, kHugeOrder), free_at_start_[2]);
    EXPECT_EQ(machine_.meta(machine_.zero_pfn()).refcount.load(), zero_refcount_);
  }

  std::unique_ptr<AddressSpace> NewMm() { return std::make_unique<AddressSpace>(machine_, cpu_); }

  static Vma Anon(std::uint64_t start, std::uint64_t length) {
    Vma vma;
    vma.start = start;
    vma.end = start + length;
    return vma;
  }
  static Vma Shared(std::uint64_t start, std::uint64_t length, std::shared_ptr<ShmemFile> file) {
    Vma vma = Anon(start, length);
    vma.kind = file->huge() ? VmaKind::kHugetlb : VmaKind::kShmem;
    vma.file = std::move(file);
    return vma;
  }

  PagemapEntry Page(const AddressSpace& mm, std::uint64_t address) {
    return mm.Pagemap(address, kPageSize).at(0);
  }
  std::uint64_t Read(AddressSpace& mm, std::uint64_t address) {
    std::uint64_t value = ~0ull;
    EXPECT_EQ(mm.Load(cpu_, address, &value), FaultResult::kOk);
    return value;
  }

  Topology topology_;
  Machine machine_;
  Cpu cpu_;
  std::size_t free_at_start_[3];
  std::int32_t zero_refcount_;
};

TEST_F(ModelSemanticsTest, ReadFaultMapsTheZeroFrameWithoutTouchingItsRefcount) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, kMiB));
    for (std::uint64_t a = kBase; a < kBase + kMiB; a += kPageSize) EXPECT_EQ(Read(*mm, a), 0u);
    const PagemapEntry entry = Page(*mm, kBase);
    EXPECT_TRUE(entry.present && entry.zero_page && !entry.writable);
    EXPECT_EQ(mm->ResidentPages(), 0u);
    EXPECT_EQ(cpu_.stats().zeropage_maps, kMiB / kPageSize);
    EXPECT_EQ(machine_.meta(machine_.zero_pfn()).refcount.load(), zero_refcount_);

    // A write after the zero-page read gets a zeroed frame of its own, without a copy.
    const std::uint64_t copied = cpu_.stats().pages_copied;
    EXPECT_EQ(mm->Store(cpu_, kBase + 8, 42), FaultResult::kOk);
    EXPECT_EQ(Read(*mm, kBase), 0u);
    EXPECT_EQ(Read(*mm, kBase + 8), 42u);
    EXPECT_EQ(cpu_.stats().pages_copied, copied);
    const PagemapEntry written = Page(*mm, kBase);
    EXPECT_TRUE(written.present && written.writable && !written.zero_page);
    EXPECT_EQ(machine_.meta(written.pfn).refcount.load(), 1);
    EXPECT_EQ(machine_.meta(written.pfn).mapcount.load(), 1);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, FaultsOutsideVmasOrWritingReadOnlyVmasSegv) {
  {
    auto mm = NewMm();
    Vma read_only = Anon(kBase, kMiB);
    read_only.writable = false;
    mm->Map(cpu_, read_only);
    EXPECT_EQ(mm->Fault(cpu_, kBase + kMiB, Access::kRead), FaultResult::kSegv);
    EXPECT_EQ(mm->Store(cpu_, kBase, 1), FaultResult::kSegv);
    EXPECT_EQ(Read(*mm, kBase), 0u);
    EXPECT_THROW(mm->Map(cpu_, Anon(kBase + kPageSize, kPageSize)), std::invalid_argument);
    EXPECT_THROW(mm->Map(cpu_, Anon(kBase + 1, kPageSize)), std::invalid_argument);
  }
  ExpectAllFramesFree();
}

class ModelForkTest : public ModelSemanticsTest, public ::testing::WithParamInterface<ForkMode> {};

// After any fork, parent and child see the parent's data, and each one's later writes stay its own.
TEST_P(ModelForkTest, ChildSeesParentDataAndWritesStayPrivate) {
  // 3 MiB starting 1 MiB into a table: one partial table, one whole, one partial.
  const std::uint64_t start = kBase + kMiB;
  const std::uint64_t length = 3 * kMiB;
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(start, length));
    for (std::uint64_t a = start; a < start + length; a += kPageSize) {
      ASSERT_EQ(parent->Store(cpu_, a, a), FaultResult::kOk);
    }
    auto child = parent->Fork(cpu_, GetParam());
    for (const PagemapEntry& entry : parent->Pagemap(start, length)) EXPECT_FALSE(entry.writable);
    for (const PagemapEntry& entry : child->Pagemap(start, length)) EXPECT_FALSE(entry.writable);
    for (std::uint64_t a = start; a < start + length; a += 64 * kPageSize) {
      EXPECT_EQ(Read(*child, a), a);
    }
    for (std::uint64_t a = start; a < start + length; a += kPageSize) {
      ASSERT_EQ(child->Store(cpu_, a, a + 1), FaultResult::kOk);
    }
    for (std::uint64_t a = start; a < start + length; a += kPageSize) {
      ASSERT_EQ(Read(*parent, a), a);
    }
    ASSERT_EQ(parent->Store(cpu_, start, 7), FaultResult::kOk);
    EXPECT_EQ(Read(*child, start), start + 1);
    // Every writable entry maps a frame nobody else maps.
    for (const AddressSpace* mm : {parent.get(), child.get()}) {
      for (const PagemapEntry& entry : mm->Pagemap(start, length)) {
        if (!entry.writable) continue;
        EXPECT_EQ(machine_.meta(entry.pfn).refcount.load(), 1);
        EXPECT_EQ(machine_.meta(entry.pfn).mapcount.load(), 1);
      }
    }
    child->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// The child exits first: the parent's next write reuses its frame instead of copying it.
TEST_P(ModelForkTest, WriteAfterTheChildExitedReusesTheFrame) {
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(parent->Store(cpu_, kBase, 1), FaultResult::kOk);
    const Pfn before = Page(*parent, kBase).pfn;
    auto child = parent->Fork(cpu_, GetParam());
    child->Exit(cpu_);
    const std::uint64_t copied = cpu_.stats().pages_copied;
    ASSERT_EQ(parent->Store(cpu_, kBase, 2), FaultResult::kOk);
    EXPECT_EQ(Page(*parent, kBase).pfn, before);
    EXPECT_EQ(cpu_.stats().pages_copied, copied);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// Zero-frame mappings survive every fork as zero-frame mappings and never gain references.
TEST_P(ModelForkTest, ZeroPageMappingsStayZeroPage) {
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kBase, 2 * kMiB));
    EXPECT_EQ(Read(*parent, kBase), 0u);
    auto child = parent->Fork(cpu_, GetParam());
    EXPECT_TRUE(Page(*child, kBase).zero_page);
    EXPECT_EQ(Read(*child, kBase), 0u);
    ASSERT_EQ(child->Store(cpu_, kBase, 5), FaultResult::kOk);
    EXPECT_TRUE(Page(*parent, kBase).zero_page);
    EXPECT_EQ(machine_.meta(machine_.zero_pfn()).refcount.load(), zero_refcount_);
    child->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

INSTANTIATE_TEST_SUITE_P(EachForkMode, ModelForkTest,
                         ::testing::Values(ForkMode::kClassic, ForkMode::kCowPteEager,
                                           ForkMode::kCowPteLazy),
                         [](const auto& mode) { return std::string(ForkModeName(mode.param)); });

TEST_F(ModelSemanticsTest, CowPteSharesWholeTablesAndAccountsEagerlyOrLazily) {
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(parent->Store(cpu_, kBase, 1), FaultResult::kOk);
    const Pfn pfn = Page(*parent, kBase).pfn;

    auto eager = parent->Fork(cpu_, ForkMode::kCowPteEager);
    EXPECT_TRUE(Page(*parent, kBase).table_shared);
    EXPECT_TRUE(Page(*eager, kBase).table_shared);
    EXPECT_EQ(Page(*eager, kBase).pfn, pfn);
    EXPECT_EQ(machine_.meta(pfn).refcount.load(), 2) << "eager: references taken at fork";
    EXPECT_EQ(eager->PageTables().shared_pte_tables, 1u);
    eager->Exit(cpu_);
    EXPECT_EQ(machine_.meta(pfn).refcount.load(), 1);

    auto lazy = parent->Fork(cpu_, ForkMode::kCowPteLazy);
    EXPECT_EQ(machine_.meta(pfn).refcount.load(), 1) << "lazy: references deferred";
    // The child's write breaks the table by copying it (the parent still uses it), taking the
    // deferred references; then the parent, now the only owner, reuses it.
    const CpuStats before = cpu_.stats();
    ASSERT_EQ(lazy->Store(cpu_, kBase, 2), FaultResult::kOk);
    EXPECT_EQ(cpu_.stats().cow_pte_copied, before.cow_pte_copied + 1);
    EXPECT_FALSE(Page(*lazy, kBase).table_shared);
    ASSERT_EQ(parent->Store(cpu_, kBase + kPageSize, 3), FaultResult::kOk);
    EXPECT_EQ(cpu_.stats().cow_pte_reused, before.cow_pte_reused + 1);
    EXPECT_EQ(Read(*parent, kBase), 1u);
    EXPECT_EQ(Read(*lazy, kBase), 2u);
    lazy->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, LazyCowPteForkOwnsFarLessPageTableMemory) {
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kBase, 16 * kMiB));
    for (std::uint64_t a = kBase; a < kBase + 16 * kMiB; a += 4 * kPageSize) {
      ASSERT_EQ(parent->Store(cpu_, a, 1), FaultResult::kOk);
    }
    auto classic = parent->Fork(cpu_, ForkMode::kClassic);
    auto lazy = parent->Fork(cpu_, ForkMode::kCowPteLazy);
    EXPECT_EQ(classic->PageTables().pte_tables, 8u);
    EXPECT_EQ(lazy->PageTables().shared_pte_tables, 8u);
    EXPECT_LT(lazy->PageTables().owned_bytes, classic->PageTables().owned_bytes);
    classic->Exit(cpu_);
    lazy->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, ZapOfAWholeSharedTableOnlyLetsGoOfIt) {
  {
    auto parent = NewMm();
    parent->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(parent->Store(cpu_, kBase, 1), FaultResult::kOk);
    auto child = parent->Fork(cpu_, ForkMode::kCowPteLazy);
    const std::uint64_t copied = cpu_.stats().cow_pte_copied;
    EXPECT_EQ(child->Zap(cpu_, kBase, 2 * kMiB), 1u);
    EXPECT_EQ(cpu_.stats().cow_pte_copied, copied);
    EXPECT_EQ(Read(*child, kBase), 0u);
    EXPECT_EQ(Read(*parent, kBase), 1u);
    child->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// uffd-wp on shmem: the protection outlives a zap as a marker, and the next write delivers a wp
// event, which the handler resolves by un-protecting.
TEST_F(ModelSemanticsTest, UffdWpMarkerSurvivesZapOnShmemAndDeliversTheEvent) {
  {
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, false, 0);
    auto mm = NewMm();
    mm->Map(cpu_, Shared(kBase, 2 * kMiB, file));
    std::vector<UffdEvent> events;
    mm->RegisterUffd(cpu_, kBase, kUffdWp, [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
      events.push_back(e);
      EXPECT_EQ(space.UffdWriteProtect(cpu, e.address, kPageSize, false), 0);
    });
    ASSERT_EQ(mm->Store(cpu_, kBase, 9), FaultResult::kOk);
    ASSERT_EQ(mm->UffdWriteProtect(cpu_, kBase, 2 * kMiB, true), 0);
    EXPECT_TRUE(Page(*mm, kBase).uffd_wp);
    EXPECT_FALSE(Page(*mm, kBase).writable);
    EXPECT_EQ(Page(*mm, kBase + kPageSize).marker, kPteMarkerUffdWp) << "wp of a none entry";

    EXPECT_EQ(mm->Zap(cpu_, kBase, 2 * kMiB), 1u);
    const PagemapEntry zapped = Page(*mm, kBase);
    EXPECT_FALSE(zapped.present);
    EXPECT_EQ(zapped.marker, kPteMarkerUffdWp);
    EXPECT_TRUE(zapped.uffd_wp);

    // A read maps the page again, still protected; the write then delivers the event.
    EXPECT_EQ(Read(*mm, kBase), 9u);
    EXPECT_TRUE(Page(*mm, kBase).uffd_wp);
    EXPECT_TRUE(events.empty());
    ASSERT_EQ(mm->Store(cpu_, kBase, 10), FaultResult::kOk);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, UffdEvent::Kind::kWp);
    EXPECT_EQ(events[0].address, kBase);
    // A write to a marker (never mapped since) delivers one too.
    ASSERT_EQ(mm->Store(cpu_, kBase + kPageSize, 11), FaultResult::kOk);
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(Read(*mm, kBase + kPageSize), 11u);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, ZapLeavesNoMarkerOnAnonymousMemory) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    mm->RegisterUffd(cpu_, kBase, kUffdWp, nullptr);
    ASSERT_EQ(mm->Store(cpu_, kBase, 1), FaultResult::kOk);
    ASSERT_EQ(mm->UffdWriteProtect(cpu_, kBase, kPageSize, true), 0);
    EXPECT_TRUE(Page(*mm, kBase).uffd_wp);
    EXPECT_EQ(mm->Store(cpu_, kBase, 2), FaultResult::kSigbus) << "no handler: UFFD_FEATURE_SIGBUS";
    EXPECT_EQ(mm->Zap(cpu_, kBase, kPageSize), 1u);
    EXPECT_EQ(mm->EntryOf(kBase), 0u);
    EXPECT_EQ(Page(*mm, kBase + kPageSize).marker, 0u) << "no markers without wp_unpopulated";
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, GuardMarkersSegvSurviveZapAndGoOnRemove) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(mm->Store(cpu_, kBase, 1), FaultResult::kOk);
    EXPECT_EQ(mm->InstallGuard(cpu_, kBase, 4 * kPageSize), 4u);
    std::uint64_t value = 0;
    EXPECT_EQ(mm->Load(cpu_, kBase, &value), FaultResult::kSegv);
    EXPECT_EQ(mm->Store(cpu_, kBase + kPageSize, 1), FaultResult::kSegv);
    mm->Zap(cpu_, kBase, 2 * kMiB);
    EXPECT_EQ(mm->CountMarkers(kBase, 2 * kMiB, kPteMarkerGuard), 4u);
    EXPECT_EQ(mm->RemoveGuard(cpu_, kBase, 4 * kPageSize), 4u);
    EXPECT_EQ(Read(*mm, kBase), 0u) << "the guarded page's contents are gone";
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, PoisonMarkersSigbusUntilZapped) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(mm->Store(cpu_, kBase, 1), FaultResult::kOk);
    EXPECT_EQ(mm->UffdPoison(cpu_, kBase, kPageSize), -EEXIST);
    EXPECT_EQ(mm->UffdPoison(cpu_, kBase + kPageSize, kPageSize), 0);
    std::uint64_t value = 0;
    EXPECT_EQ(mm->Load(cpu_, kBase + kPageSize, &value), FaultResult::kSigbus);
    mm->Zap(cpu_, kBase, 2 * kMiB);
    EXPECT_EQ(Read(*mm, kBase + kPageSize), 0u);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, UffdMissingFaultsResolveByCopyOrZeropage) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    std::vector<std::uint64_t> page(kPageSize / 8, 0x5a5a);
    mm->RegisterUffd(cpu_, kBase, kUffdMissing, [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
      EXPECT_EQ(e.kind, UffdEvent::Kind::kMissing);
      if (e.access == Access::kWrite) {
        EXPECT_EQ(space.UffdCopy(cpu, e.address, page.data()), 0);
      } else {
        EXPECT_EQ(space.UffdZeropage(cpu, e.address), 0);
      }
    });
    EXPECT_EQ(Read(*mm, kBase), 0u);
    EXPECT_TRUE(Page(*mm, kBase).zero_page);
    ASSERT_EQ(mm->Store(cpu_, kBase + kPageSize + 8, 1), FaultResult::kOk);
    EXPECT_EQ(Read(*mm, kBase + kPageSize), 0x5a5au);
    EXPECT_EQ(Read(*mm, kBase + kPageSize + 8), 1u);
    EXPECT_EQ(cpu_.stats().uffd_events, 2u);
    EXPECT_EQ(mm->UffdCopy(cpu_, kBase, page.data()), -EEXIST);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// UFFDIO_ZEROPAGE on shmem, as Linux 6.18's shmem_mfill_atomic_pte() does it: a zeroed page enters
// the file's cache and is mapped (not the zero frame); the file then has the page for every
// mapping, and a second call is -EEXIST, mapped or not. Anonymous memory gets the zero frame;
// hugetlb refuses the ioctl.
TEST_F(ModelSemanticsTest, UffdZeropageOnShmemMapsAZeroedPageOfTheFile) {
  {
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, false, 0);
    auto mm = NewMm();
    mm->Map(cpu_, Shared(kBase, 2 * kMiB, file));
    mm->Map(cpu_, Shared(kBase + 2 * kMiB, 2 * kMiB, file));   // a second, unregistered mapping
    mm->Map(cpu_, Anon(kBase + 4 * kMiB, 2 * kMiB));
    std::vector<UffdEvent> events;
    auto handler = [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
      events.push_back(e);
      EXPECT_EQ(space.UffdZeropage(cpu, e.address), 0);
    };
    mm->RegisterUffd(cpu_, kBase, kUffdMissing | kUffdWp, handler);
    mm->RegisterUffd(cpu_, kBase + 4 * kMiB, kUffdMissing, handler);

    const std::uint64_t page = kBase + 5 * kPageSize;
    const CpuStats before = cpu_.stats();
    EXPECT_EQ(Read(*mm, page + 8), 0u);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, UffdEvent::Kind::kMissing);
    EXPECT_EQ(cpu_.stats().pages_zeroed - before.pages_zeroed, 1u);
    EXPECT_EQ(cpu_.stats().zeropage_maps, before.zeropage_maps);
    EXPECT_EQ(cpu_.stats().pages_copied, before.pages_copied);
    const PagemapEntry mapped = Page(*mm, page);
    EXPECT_TRUE(mapped.present);
    EXPECT_FALSE(mapped.zero_page);
    EXPECT_NE(mapped.pfn, machine_.zero_pfn());
    EXPECT_EQ(mapped.pfn, file->Lookup(5));   // the file's page
    EXPECT_TRUE(mapped.writable);             // dirty and writable as the VMA is
    const auto* words = reinterpret_cast<const std::uint64_t*>(machine_.frame(mapped.pfn));
    for (std::uint64_t i = 0; i < kPageSize / 8; ++i) ASSERT_EQ(words[i], 0u) << "word " << i;

    // Mapped: -EEXIST; and a write goes straight in (no fault, no event), seen by the file's other
    // mapping, which maps the same frame.
    EXPECT_EQ(mm->UffdZeropage(cpu_, page), -EEXIST);
    EXPECT_TRUE(mm->Accessible(page, Access::kWrite));
    ASSERT_EQ(mm->Store(cpu_, page + 8, 9), FaultResult::kOk);
    EXPECT_EQ(Read(*mm, kBase + 2 * kMiB + 5 * kPageSize + 8), 9u);
    EXPECT_EQ(Page(*mm, kBase + 2 * kMiB + 5 * kPageSize).pfn, mapped.pfn);
    // Zapped: the entry is none but the cache has the page: -EEXIST still, and a fault maps the
    // cached page without an event.
    mm->Zap(cpu_, page, kPageSize);
    EXPECT_FALSE(Page(*mm, page).present);
    EXPECT_EQ(mm->UffdZeropage(cpu_, page), -EEXIST);
    EXPECT_EQ(Read(*mm, page + 8), 9u);
    EXPECT_EQ(events.size(), 1u);

    // Over a uffd-wp marker: filled, and the protection goes with it (no UFFDIO_COPY_MODE_WP
    // for UFFDIO_ZEROPAGE), as mfill_atomic_install_pte() does.
    const std::uint64_t marked = kBase + 6 * kPageSize;
    ASSERT_EQ(mm->UffdWriteProtect(cpu_, marked, kPageSize, true), 0);
    ASSERT_EQ(Page(*mm, marked).marker, kPteMarkerUffdWp);
    EXPECT_EQ(mm->UffdZeropage(cpu_, marked), 0);
    EXPECT_TRUE(Page(*mm, marked).present);
    EXPECT_FALSE(Page(*mm, marked).uffd_wp);
    EXPECT_EQ(Page(*mm, marked).pfn, file->Lookup(6));

    // Anonymous memory: the zero frame, no page allocated; a second call is -EEXIST.
    const std::uint64_t anon = kBase + 4 * kMiB;
    const std::uint64_t zeroed = cpu_.stats().pages_zeroed;
    EXPECT_EQ(Read(*mm, anon), 0u);
    EXPECT_TRUE(Page(*mm, anon).zero_page);
    EXPECT_EQ(Page(*mm, anon).pfn, machine_.zero_pfn());
    EXPECT_EQ(cpu_.stats().pages_zeroed, zeroed);
    EXPECT_EQ(mm->UffdZeropage(cpu_, anon), -EEXIST);
    mm->Exit(cpu_);
  }
  {
    // hugetlb: EINVAL, nothing cached or mapped.
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, true, 0);
    auto mm = NewMm();
    mm->Map(cpu_, Shared(kBase, 2 * kMiB, file));
    mm->RegisterUffd(cpu_, kBase, kUffdMissing, nullptr);
    EXPECT_EQ(mm->UffdZeropage(cpu_, kBase), -EINVAL);
    EXPECT_EQ(file->Lookup(0), kNoPfn);
    EXPECT_FALSE(Page(*mm, kBase).present);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

// A minor fault maps the page already in the shmem page cache: no copy, the cache's own frame.
TEST_F(ModelSemanticsTest, UffdMinorFaultIsResolvedByContinueWithoutACopy) {
  {
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, false, 0);
    std::vector<std::uint64_t> page(kPageSize / 8, 77);
    const Pfn cached = file->Insert(cpu_, 3, page.data());
    ASSERT_NE(cached, kNoPfn);
    auto mm = NewMm();
    mm->Map(cpu_, Shared(kBase, 2 * kMiB, file));
    std::vector<UffdEvent> events;
    mm->RegisterUffd(cpu_, kBase, kUffdMinor | kUffdMissing,
                     [&](AddressSpace& space, Cpu& cpu, const UffdEvent& e) {
                       events.push_back(e);
                       if (e.kind == UffdEvent::Kind::kMinor) {
                         EXPECT_EQ(space.UffdContinue(cpu, e.address), 0);
                       } else {
                         EXPECT_EQ(space.UffdCopy(cpu, e.address, page.data()), 0);
                       }
                     });
    const std::uint64_t copied = cpu_.stats().pages_copied;
    EXPECT_EQ(Read(*mm, kBase + 3 * kPageSize), 77u);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, UffdEvent::Kind::kMinor);
    EXPECT_EQ(Page(*mm, kBase + 3 * kPageSize).pfn, cached);
    EXPECT_EQ(cpu_.stats().pages_copied, copied);
    // A page not in the cache is a missing fault; continue there fails with EFAULT.
    EXPECT_EQ(mm->UffdContinue(cpu_, kBase, false), -EFAULT);
    EXPECT_EQ(Read(*mm, kBase), 77u);
    EXPECT_EQ(events.back().kind, UffdEvent::Kind::kMissing);
    EXPECT_EQ(file->Lookup(0), Page(*mm, kBase).pfn);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, SharedMappingsShareDataAcrossForkAndAreNotCopied) {
  {
    auto file = std::make_shared<ShmemFile>(machine_, kMiB, false, 0);
    auto parent = NewMm();
    parent->Map(cpu_, Shared(kBase, kMiB, file));
    ASSERT_EQ(parent->Store(cpu_, kBase, 1), FaultResult::kOk);
    auto child = parent->Fork(cpu_, ForkMode::kClassic);
    EXPECT_EQ(child->EntryOf(kBase), 0u) << "shared VMAs fault in again in the child";
    EXPECT_EQ(Read(*child, kBase), 1u);
    ASSERT_EQ(child->Store(cpu_, kBase, 2), FaultResult::kOk);
    EXPECT_EQ(Read(*parent, kBase), 2u);
    EXPECT_EQ(Page(*child, kBase).pfn, Page(*parent, kBase).pfn);
    child->Exit(cpu_);
    parent->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, HugetlbMapsPmdLeavesAndKeepsWpMarkersAcrossZap) {
  {
    auto file = std::make_shared<ShmemFile>(machine_, 2 * kMiB, true, 0);
    auto mm = NewMm();
    mm->Map(cpu_, Shared(kBase, 2 * kMiB, file));
    mm->RegisterUffd(cpu_, kBase, kUffdWp, nullptr);
    ASSERT_EQ(mm->Store(cpu_, kBase + kMiB, 3), FaultResult::kOk);
    const PagemapEntry entry = Page(*mm, kBase + kMiB);
    EXPECT_TRUE(entry.huge && entry.present && entry.writable);
    EXPECT_EQ(entry.pfn, file->Lookup(0) + kMiB / kPageSize);
    ASSERT_EQ(mm->UffdWriteProtect(cpu_, kBase, 2 * kMiB, true), 0);
    EXPECT_EQ(mm->Zap(cpu_, kBase, 2 * kMiB), static_cast<std::uint64_t>(kPagesPerPmd));
    EXPECT_EQ(Page(*mm, kBase).marker, kPteMarkerUffdWp);
    EXPECT_EQ(mm->Store(cpu_, kBase, 1), FaultResult::kSigbus) << "wp event, no handler";
    EXPECT_EQ(Read(*mm, kBase + kMiB), 3u);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

class ModelNumaTest : public ModelSemanticsTest,
                      public ::testing::WithParamInterface<ProtnoneEncoding> {};

// A hinting fault from a Cpu on another node migrates the page there; from the page's own node it
// only restores the entry. Data and write permission survive either way.
TEST_P(ModelNumaTest, HintingFaultRestoresOrMigrates) {
  {
    AddressSpace mm(machine_, cpu_, AddressSpace::Options{GetParam()});
    mm.Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(mm.Store(cpu_, kBase, 1), FaultResult::kOk);
    ASSERT_EQ(mm.Store(cpu_, kBase + kPageSize, 2), FaultResult::kOk);
    EXPECT_EQ(Read(mm, kBase + 2 * kPageSize), 0u);   // zero page: never marked
    EXPECT_EQ(mm.ChangeProtNuma(cpu_, kBase, 2 * kMiB), 2u);
    EXPECT_TRUE(Page(mm, kBase).numa_hint);
    EXPECT_FALSE(mm.Accessible(kBase, Access::kRead));

    EXPECT_EQ(Read(mm, kBase), 1u);   // cpu_ is on node 0, the page too: restored in place
    EXPECT_FALSE(Page(mm, kBase).numa_hint);
    EXPECT_EQ(Page(mm, kBase).node, 0);
    EXPECT_TRUE(Page(mm, kBase).writable);

    Cpu remote(machine_, 1);
    const Pfn old_pfn = Page(mm, kBase + kPageSize).pfn;
    std::uint64_t value = 0;
    ASSERT_EQ(mm.Load(remote, kBase + kPageSize, &value), FaultResult::kOk);
    EXPECT_EQ(value, 2u);
    const PagemapEntry moved = Page(mm, kBase + kPageSize);
    EXPECT_EQ(moved.node, 1);
    EXPECT_NE(moved.pfn, old_pfn);
    EXPECT_TRUE(moved.writable);
    EXPECT_EQ(remote.stats().pages_migrated, 1u);
    EXPECT_EQ(machine_.meta(old_pfn).refcount.load(), 0) << "the old frame was freed";
    mm.Exit(cpu_);
  }
  ExpectAllFramesFree();
}

INSTANTIATE_TEST_SUITE_P(BothEncodings, ModelNumaTest,
                         ::testing::Values(ProtnoneEncoding::kProtnone,
                                           ProtnoneEncoding::kFaultOnAccess),
                         [](const auto& encoding) {
                           return std::string(ProtnoneEncodingName(encoding.param));
                         });

TEST_F(ModelSemanticsTest, MigratePageMovesDataToTheTargetNode) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 2 * kMiB));
    ASSERT_EQ(mm->Store(cpu_, kBase + 16, 0xabc), FaultResult::kOk);
    EXPECT_EQ(mm->MigratePage(cpu_, kBase, 1), 0);
    EXPECT_EQ(Page(*mm, kBase).node, 1);
    EXPECT_EQ(Read(*mm, kBase + 16), 0xabcu);
    EXPECT_EQ(mm->MigratePage(cpu_, kBase, 5), -ENODEV);
    EXPECT_EQ(mm->MigratePage(cpu_, kBase + kPageSize, 1), -ENOENT);
    auto child = mm->Fork(cpu_, ForkMode::kClassic);
    EXPECT_EQ(mm->MigratePage(cpu_, kBase, 0), -EBUSY) << "mapped twice";
    child->Exit(cpu_);
    EXPECT_EQ(mm->MigratePage(cpu_, kBase, 0), 0);
    EXPECT_EQ(Read(*mm, kBase + 16), 0xabcu);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

TEST_F(ModelSemanticsTest, UnmapReturnsEverythingAndFreesTables) {
  {
    auto mm = NewMm();
    mm->Map(cpu_, Anon(kBase, 4 * kMiB));
    for (std::uint64_t a = kBase; a < kBase + 4 * kMiB; a += kPageSize) {
      ASSERT_EQ(mm->Store(cpu_, a, 1), FaultResult::kOk);
    }
    EXPECT_EQ(mm->InstallGuard(cpu_, kBase, kPageSize), 1u);
    EXPECT_EQ(mm->PageTables().pte_tables, 2u);
    mm->Unmap(cpu_, kBase);
    EXPECT_EQ(mm->PageTables().pte_tables, 0u);
    EXPECT_EQ(mm->ResidentPages(), 0u);
    EXPECT_EQ(mm->Fault(cpu_, kBase, Access::kRead), FaultResult::kSegv);
    EXPECT_THROW(mm->Unmap(cpu_, kBase), std::invalid_argument);
    mm->Exit(cpu_);
  }
  ExpectAllFramesFree();
}

}  // namespace
}  // namespace faultlab::model
