// The fork suite's probes (bench/fork_probe.h) catch what they claim to: a region whose pages are
// not all present, a THP claim on 4 KiB pages and huge pages where 4 KiB were asked for, a child
// that died before it ran, and a child that did or did not get the parent's page tables.
//
// Nothing here is timed: each test checks a behaviour, and each fails if the check it guards
// were broken. Hugetlb regions are left to cli_fork_test (the pool is reserved through the CLI).

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "bench/fork_probe.h"
#include "bench/mm_probe.h"

namespace faultlab {
namespace {

constexpr std::size_t kMiB = 1ul << 20;

// PTE tables of `bytes` of 4 KiB pages, in kB: one 4 KiB table per 2 MiB.
long TablesKb(std::size_t bytes) { return static_cast<long>(bytes / kPage2M * 4); }

long SmapsField(const void* addr, const std::string& name) {
  std::map<std::string, long> smaps = SmapsOf(addr);
  return smaps.count(name) ? smaps[name] : -1;
}

// Why a THP region cannot be had here, or empty. THP must be built in and not "never"; a region
// that asked for it must then really be huge (memory may be too fragmented).
std::string WhyNoThp() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  if (!std::getline(in, modes)) return "no /sys/kernel/mm/transparent_hugepage/enabled (no THP)";
  if (modes.find("[never]") != std::string::npos) return "THP is disabled here: " + modes;
  return {};
}

// Maps a THP region and skips the calling test when the kernel did not make it huge.
#define MAP_THP_OR_SKIP(region, bytes)                                                         \
  do {                                                                                         \
    if (std::string why = WhyNoThp(); !why.empty()) GTEST_SKIP() << why;                       \
    ASSERT_EQ((region).Map(ForkBacking::kThp, (bytes)), "");                                   \
    if (std::string why = CheckPremise(ForkBacking::kThp, (region)); !why.empty()) {           \
      GTEST_SKIP() << "the kernel did not grant THP for the test's region: " << why;           \
    }                                                                                          \
  } while (0)

TEST(ForkBackings, EachHasOneNameAndKindOfFindsIt) {
  std::set<std::string> names;
  for (const BackingKind& kind : BackingKinds()) {
    EXPECT_TRUE(names.insert(kind.name).second) << kind.name << " named twice";
    EXPECT_EQ(&KindOf(kind.backing), &kind) << kind.name;
  }
  EXPECT_EQ(KindOf(ForkBacking::kThp).page, kPage2M);
  EXPECT_EQ(KindOf(ForkBacking::kHugetlb2M).page, kPage2M);
  EXPECT_EQ(KindOf(ForkBacking::kAnon4K).page, kPage4K);
  EXPECT_EQ(std::string(KindOf(ForkBacking::kShmem).name), "shmem");
}

TEST(CheckPremise, AcceptsAPopulatedAnon4kRegion) {
  Region region;
  ASSERT_EQ(region.Map(ForkBacking::kAnon4K, 4 * kMiB), "");
  EXPECT_EQ(CountPresent(ReadPagemap(region.base(), region.bytes())), 4 * kMiB / kPage4K);
  EXPECT_EQ(CheckPremise(ForkBacking::kAnon4K, region), "");
}

TEST(CheckPremise, RejectsARegionWhosePagesAreNotAllPresent) {
  Region region;
  ASSERT_EQ(region.Map(ForkBacking::kAnon4K, 4 * kMiB), "");
  // 1 MiB of the 4 MiB dropped: 256 of the 1024 pages are gone.
  ASSERT_EQ(madvise(region.base() + kMiB, kMiB, MADV_DONTNEED), 0);
  const std::string why = CheckPremise(ForkBacking::kAnon4K, region);
  EXPECT_NE(why.find("only 768 of 1024 pages present"), std::string::npos) << why;
}

TEST(CheckPremise, RejectsTheThpClaimOnA4KiBMappedRegion) {
  Region region;
  MAP_THP_OR_SKIP(region, 4 * kMiB);
  // Dropping one 4 KiB page of a PMD-mapped THP splits the PMD: the rest stays mapped by 4 KiB
  // PTEs. MADV_NOHUGEPAGE keeps khugepaged from collapsing it back; re-touching the dropped pages
  // maps them as 4 KiB pages into the tables the split left.
  ASSERT_EQ(madvise(region.base(), region.bytes(), MADV_NOHUGEPAGE), 0);
  for (std::size_t off = 0; off < region.bytes(); off += kPage2M) {
    ASSERT_EQ(madvise(region.base() + off, kPage4K, MADV_DONTNEED), 0);
    static_cast<volatile char*>(region.base())[off] = 3;
  }
  ASSERT_EQ(SmapsField(region.base(), "AnonHugePages"), 0) << "the kernel kept the region huge";
  const std::string why = CheckPremise(ForkBacking::kThp, region);
  EXPECT_NE(why.find("THP not granted: AnonHugePages 0 of 4096 kB"), std::string::npos) << why;
  // Now truly 4 KiB pages, every one present: the anon4k claim holds.
  EXPECT_EQ(CheckPremise(ForkBacking::kAnon4K, region), "");
}

TEST(CheckPremise, RejectsTheAnon4kClaimOnHugePages) {
  Region region;
  MAP_THP_OR_SKIP(region, 4 * kMiB);
  const std::string why = CheckPremise(ForkBacking::kAnon4K, region);
  EXPECT_NE(why.find("4 KiB case got huge pages (AnonHugePages 4096 kB)"), std::string::npos)
      << why;
}

// shmem (a memfd mapped shared) and file_ro (a private read-only file mapping) are populated by
// Map: their whole size is resident in this process. Zapping part of the mapping must show.
TEST(CheckPremise, SharedAndFileRegionsAreResidentAfterMapAndCheckedForIt) {
  for (ForkBacking backing : {ForkBacking::kShmem, ForkBacking::kFileRo}) {
    SCOPED_TRACE(KindOf(backing).name);
    Region region;
    ASSERT_EQ(region.Map(backing, 4 * kMiB), "");
    EXPECT_EQ(SmapsField(region.base(), "Rss"), 4096);
    EXPECT_EQ(CheckPremise(backing, region), "");
    ASSERT_EQ(madvise(region.base(), kMiB, MADV_DONTNEED), 0);
    const std::string why = CheckPremise(backing, region);
    EXPECT_NE(why.find("only 768 of 1024 pages present"), std::string::npos) << why;
  }
}

TEST(WaitForStamp, ReturnsFalseAndReapsAChildThatExitsWithoutStamping) {
  SharedArea shared(0);
  ASSERT_NE(shared.page(), nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(7);
  int status = 0;
  EXPECT_FALSE(WaitForStamp(shared.page(), pid, &status));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7) << "status " << status;
  // Reaped: there is no child left to wait for.
  errno = 0;
  EXPECT_EQ(waitpid(pid, &status, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(WaitForStamp, ReturnsTrueForAChildThatStampedAndLeavesItUnreaped) {
  SharedArea shared(0);
  ASSERT_NE(shared.page(), nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    shared.page()->child_stamp.store(1, std::memory_order_release);
    _exit(0);
  }
  int status = -1;
  EXPECT_TRUE(WaitForStamp(shared.page(), pid, &status));
  // The caller times the waitpid: the child must still be there to reap.
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST(TimedFork, TheForkedChildRanAndEveryFloorSucceeds) {
  SharedArea shared(0);
  ASSERT_NE(shared.page(), nullptr);
  for (Spawn spawn : {Spawn::kFork, Spawn::kVfork}) {
    SCOPED_TRACE(spawn == Spawn::kFork ? "fork" : "vfork");
    shared.page()->child_stamp.store(0);
    ForkSample sample;
    ASSERT_EQ(TimedFork(spawn, shared.page(), &sample), "");
    EXPECT_NE(shared.page()->child_stamp.load(), 0u) << "the child never stamped";
    EXPECT_GT(sample.child_runs_ns, 0);
    EXPECT_GT(sample.fork_ns, 0);
    EXPECT_GE(sample.exit_wait_ns, 0);
  }
  // posix_spawn of /bin/true: no stamp from the child, so no child_runs_ns.
  ForkSample sample;
  ASSERT_EQ(TimedFork(Spawn::kPosixSpawn, shared.page(), &sample), "");
  EXPECT_GT(sample.fork_ns, 0);
  EXPECT_EQ(sample.child_runs_ns, 0);
}

TEST(VmPteKb, ReadsThisProcessAndNotAMissingOne) {
  EXPECT_GT(VmPteKb(0), 0);
  EXPECT_EQ(VmPteKb(0x7ffffff0), -1);  // above any pid_max: no such process
}

// One MeasureVmPte whose figures are dropped. The parent reads its VmPTE after the fork, and the
// first reads allocate (the ifstream's buffers): under ASan from a fresh allocator region, whose
// page tables the parent has and the child never had (32 kB more "withheld" on the first fork).
void WarmUpVmPteReads() {
  SharedArea shared(0);
  ASSERT_NE(shared.page(), nullptr);
  long parent_kb = 0, child_kb = 0;
  ASSERT_EQ(MeasureVmPte(shared.page(), &parent_kb, &child_kb), "");
}

// A child gets a copy of the tables of private anonymous memory; MADV_DONTFORK withholds the
// region, tables and all. 64 MiB of 4 KiB pages have 128 kB of PTE tables.
TEST(MeasureVmPte, TheChildCopiesTheRegionsTablesUnlessDontFork) {
  ASSERT_NO_FATAL_FAILURE(WarmUpVmPteReads());
  SharedArea shared(0);
  ASSERT_NE(shared.page(), nullptr);
  Region region;
  const std::size_t bytes = 64 * kMiB;
  ASSERT_EQ(region.Map(ForkBacking::kAnon4K, bytes), "");
  long parent_kb = 0, child_kb = 0;
  ASSERT_EQ(MeasureVmPte(shared.page(), &parent_kb, &child_kb), "");
  EXPECT_GE(parent_kb, TablesKb(bytes));
  EXPECT_LT(parent_kb - child_kb, TablesKb(bytes) / 2)
      << "parent " << parent_kb << " kB, child " << child_kb << " kB";

  ASSERT_EQ(madvise(region.base(), bytes, MADV_DONTFORK), 0);
  ASSERT_EQ(MeasureVmPte(shared.page(), &parent_kb, &child_kb), "");
  EXPECT_GE(parent_kb - child_kb, TablesKb(bytes) / 2)
      << "parent " << parent_kb << " kB, child " << child_kb << " kB";
}

// No COW-PTE in this kernel: a child forked now gets the probe region's 32 kB of tables, so it
// goes without far less than that (the COW-PTE host's test of a prctl reads the same figure).
// It may be below 0: under TSan the child maps shadow memory of its own.
TEST(TablesWithheldFromChildKb, StaysSmallWithoutCowPte) {
  ASSERT_NO_FATAL_FAILURE(WarmUpVmPteReads());
  long kb = 1l << 30;  // fails the check below unless the probe sets it
  ASSERT_EQ(TablesWithheldFromChildKb(&kb), "");
  EXPECT_LT(kb, TablesKb(kCowPteProbeBytes) / 2);
}

}  // namespace
}  // namespace faultlab
