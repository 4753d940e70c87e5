// The guard suite's probes (bench/guard_probe.h) do what the suite relies on: guard pages leave
// the VMA counts the suite states (1 with markers, 2N+1 with mprotect, 1 again after removal),
// a read of a guard page faults and the catcher reports that page, a removed guard page reads
// again (a former marker as zero), the premise checks reject a region that is not what they
// claim, and the SIGSEGV action before a catcher is back once it is gone.
//
// Nothing here is timed. Marker tests skip where the kernel has no guard regions (before 6.13).

#include <sys/mman.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "bench/fork_probe.h"
#include "bench/guard_probe.h"
#include "bench/kernel_features.h"
#include "bench/mm_probe.h"

namespace faultlab {
namespace {

#define SKIP_WITHOUT_GUARD_REGIONS()                                                     \
  do {                                                                                   \
    if (auto why = WhyUnavailable(Feature::kGuardRegions)) GTEST_SKIP() << *why;         \
  } while (0)

// A populated, fenced region of 4 KiB pages (fork_probe.h), sized for the layout.
void MapRegion(Region& region, const GuardLayout& layout) {
  ASSERT_EQ(region.Map(ForkBacking::kAnon4K, layout.RegionBytes()), "");
  ASSERT_EQ(CountVmas(region.base(), region.bytes()), 1);
}

void InstallAll(GuardMethod method, const GuardLayout& layout, char* base) {
  for (std::size_t i = 0; i < layout.pages; ++i) {
    ASSERT_EQ(InstallGuard(method, layout.Page(base, i), kPage4K), 0)
        << InstallCallName(method) << ": " << std::strerror(errno);
  }
}

void RemoveAll(GuardMethod method, const GuardLayout& layout, char* base) {
  for (std::size_t i = 0; i < layout.pages; ++i) {
    ASSERT_EQ(RemoveGuard(method, layout.Page(base, i), kPage4K), 0)
        << RemoveCallName(method) << ": " << std::strerror(errno);
  }
}

TEST(GuardLayout, PutsEachGuardPageInTheMiddleOfItsStride) {
  GuardLayout layout{4, 16};
  char* base = reinterpret_cast<char*>(0x100000);
  EXPECT_EQ(layout.RegionBytes(), 64 * kPage4K);
  EXPECT_EQ(layout.Page(base, 0), base + 8 * kPage4K);
  EXPECT_EQ(layout.Page(base, 3), base + 56 * kPage4K);
  EXPECT_EQ(layout.ExpectedVmas(GuardMethod::kMarker), 1);
  EXPECT_EQ(layout.ExpectedVmas(GuardMethod::kMprotect), 9);
}

TEST(CountVmas, CountsTheMappingsOfARangeAndOfTheProcess) {
  GuardLayout layout{1, 16};
  Region region;
  MapRegion(region, layout);
  // The range of the region and one page of the PROT_NONE fence on either side: three VMAs.
  EXPECT_EQ(CountVmas(region.base() - kPage4K, region.bytes() + 2 * kPage4K), 3);
  // Splitting the region around one page adds exactly two VMAs to the process, however the
  // region's mapping merged with its neighbours.
  const int before = CountAllVmas();
  ASSERT_GT(before, 0);
  ASSERT_EQ(mprotect(region.base() + 4 * kPage4K, kPage4K, PROT_READ), 0);
  EXPECT_EQ(CountAllVmas(), before + 2);
  EXPECT_GT(MaxMapCount(), 0);
}

TEST(WhyTooManyVmas, NamesTheLimitWhenThePatternWouldNotFit) {
  EXPECT_EQ(WhyTooManyVmas(512, 65530, 200, 64), "");
  // 100 mapped + 2 * 450 more + 64 headroom = 1064 > 1000.
  const std::string why = WhyTooManyVmas(450, 1000, 100, 64);
  EXPECT_NE(why.find("vm.max_map_count is 1000"), std::string::npos) << why;
  EXPECT_NE(why.find("would add 900"), std::string::npos) << why;
  EXPECT_NE(WhyTooManyVmas(1, -1, 100, 64), "");
}

TEST(GuardPages, MprotectSplitsTheRegionInto2NPlus1VmasAndRemovalMergesThem) {
  GuardLayout layout{8, 16};
  Region region;
  MapRegion(region, layout);
  InstallAll(GuardMethod::kMprotect, layout, region.base());
  EXPECT_EQ(CountVmas(region.base(), region.bytes()), 17);
  RemoveAll(GuardMethod::kMprotect, layout, region.base());
  EXPECT_EQ(CountVmas(region.base(), region.bytes()), 1);
}

TEST(GuardPages, MarkersLeaveTheRegionOneVma) {
  SKIP_WITHOUT_GUARD_REGIONS();
  GuardLayout layout{8, 16};
  Region region;
  MapRegion(region, layout);
  InstallAll(GuardMethod::kMarker, layout, region.base());
  EXPECT_EQ(CountVmas(region.base(), region.bytes()), 1);
  // The marker replaced the page: pagemap shows it not present.
  const std::vector<uint64_t> pagemap = ReadPagemap(layout.Page(region.base(), 0), kPage4K);
  ASSERT_EQ(pagemap.size(), 1u);
  EXPECT_FALSE(PagemapPresent(pagemap[0]));
  RemoveAll(GuardMethod::kMarker, layout, region.base());
  EXPECT_EQ(CountVmas(region.base(), region.bytes()), 1);
}

TEST(SegvCatcher, ReportsTheGuardPageAnAccessFaultedOnAndLetsOtherReadsThrough) {
  GuardLayout layout{4, 16};
  Region region;
  MapRegion(region, layout);
  SegvCatcher catcher;
  ASSERT_EQ(catcher.error(), "");
  InstallAll(GuardMethod::kMprotect, layout, region.base());
  for (std::size_t i = 0; i < layout.pages; ++i) {
    const char* page = layout.Page(region.base(), i);
    SegvEvent event;
    uint64_t ticks = 0;
    ASSERT_TRUE(catcher.ReadFaults(page + 100, &event, &ticks)) << "guard page " << i;
    EXPECT_EQ(event.addr, page + 100);
    EXPECT_EQ(event.code, SEGV_ACCERR);
    EXPECT_GT(ticks, 0u);
    EXPECT_FALSE(catcher.ReadFaults(page + kPage4K, &event)) << "the page after guard page " << i;
  }
  RemoveAll(GuardMethod::kMprotect, layout, region.base());
  SegvEvent event;
  EXPECT_FALSE(catcher.ReadFaults(layout.Page(region.base(), 0), &event));
  // mprotect kept the page: it still holds what the region wrote.
  EXPECT_EQ(*layout.Page(region.base(), 0), 1);
}

TEST(SegvCatcher, RecordsTheSiCodeTheKernelGives) {
  // An unmapped page is SEGV_MAPERR: the catcher records the code, whatever it is.
  void* p = mmap(nullptr, kPage4K, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(munmap(p, kPage4K), 0);
  SegvCatcher catcher;
  ASSERT_EQ(catcher.error(), "");
  SegvEvent event;
  ASSERT_TRUE(catcher.ReadFaults(p, &event));
  EXPECT_EQ(event.addr, p);
  EXPECT_EQ(event.code, SEGV_MAPERR);
  EXPECT_EQ(SegvCodeName(event.code), "SEGV_MAPERR");
}

// Made for SIGBUS (the uffd suite's poison case), beside a SIGSEGV catcher: a read of a file
// mapping past the end of its file is SIGBUS BUS_ADRERR; each catcher keeps to its own signal.
TEST(SegvCatcher, CatchesSigbusBesideASigsegvCatcher) {
  const int fd = memfd_create("faultlab-sigbus", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, kPage4K, PROT_READ, MAP_SHARED, fd, 0);  // the file is empty
  close(fd);
  ASSERT_NE(p, MAP_FAILED);
  SegvCatcher segv;
  ASSERT_EQ(segv.error(), "");
  SegvCatcher bus(SIGBUS);
  ASSERT_EQ(bus.error(), "");
  SegvCatcher again(SIGBUS);
  EXPECT_NE(again.error().find("SIGBUS"), std::string::npos) << again.error();
  SegvEvent event;
  ASSERT_TRUE(bus.ReadFaults(p, &event));
  EXPECT_EQ(event.addr, p);
  EXPECT_EQ(BusCodeName(event.code), "BUS_ADRERR");
  EXPECT_NE(SegvCatcher(SIGUSR1).error(), "") << "only SIGSEGV and SIGBUS";
  munmap(p, kPage4K);
}

TEST(SegvCatcher, MarkerGuardPagesFaultAndReadBackAsZeroOnceRemoved) {
  SKIP_WITHOUT_GUARD_REGIONS();
  GuardLayout layout{4, 16};
  Region region;
  MapRegion(region, layout);
  SegvCatcher catcher;
  ASSERT_EQ(catcher.error(), "");
  InstallAll(GuardMethod::kMarker, layout, region.base());
  for (std::size_t i = 0; i < layout.pages; ++i) {
    const char* page = layout.Page(region.base(), i);
    SegvEvent event;
    ASSERT_TRUE(catcher.ReadFaults(page, &event)) << "guard page " << i;
    EXPECT_EQ(event.addr, page);
    EXPECT_GT(event.code, 0) << "a fault's si_code, not one of a signal someone sent";
  }
  RemoveAll(GuardMethod::kMarker, layout, region.base());
  char* first = layout.Page(region.base(), 0);
  SegvEvent event;
  EXPECT_FALSE(catcher.ReadFaults(first, &event));
  // The region wrote 1 there before the install; the install zapped the page.
  EXPECT_EQ(first[0], 0);
}

TEST(SegvCatcher, PutsThePreviousActionBack) {
  struct sigaction mine = {};
  mine.sa_handler = [](int) {};
  mine.sa_flags = SA_RESTART;
  sigemptyset(&mine.sa_mask);
  struct sigaction saved;
  ASSERT_EQ(sigaction(SIGSEGV, &mine, &saved), 0);
  {
    SegvCatcher catcher;
    ASSERT_EQ(catcher.error(), "");
    struct sigaction during;
    ASSERT_EQ(sigaction(SIGSEGV, nullptr, &during), 0);
    EXPECT_NE(during.sa_handler, mine.sa_handler) << "the catcher did not install its handler";
  }
  struct sigaction after;
  ASSERT_EQ(sigaction(SIGSEGV, nullptr, &after), 0);
  EXPECT_EQ(after.sa_handler, mine.sa_handler);
  EXPECT_EQ(after.sa_flags & (SA_SIGINFO | SA_NODEFER | SA_RESTART), SA_RESTART);
  ASSERT_EQ(sigaction(SIGSEGV, &saved, nullptr), 0);
}

TEST(SegvCatcher, OnlyOneLivesAtATime) {
  SegvCatcher first;
  ASSERT_EQ(first.error(), "");
  SegvCatcher second;
  EXPECT_NE(second.error(), "");
  // The second one's failure did not take the action away from the first.
  SegvEvent event;
  void* p = mmap(nullptr, kPage4K, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_TRUE(first.ReadFaults(p, &event));
  munmap(p, kPage4K);
}

// A fault the catcher did not expect (not made through ReadFaults) goes to the previous action:
// here the default one, which kills the process with SIGSEGV.
TEST(SegvCatcher, PassesOtherFaultsToThePreviousAction) {
  void* p = mmap(nullptr, kPage4K, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);
    SegvCatcher catcher;
    if (!catcher.error().empty()) _exit(2);
    SegvEvent event;
    if (!catcher.ReadFaults(p, &event)) _exit(3);  // the catcher works in the child too
    (void)*static_cast<volatile char*>(p);
    _exit(0);  // the stray fault was swallowed
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  munmap(p, kPage4K);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
}

TEST(CheckGuarded, AcceptsBothMethodsAndRejectsAPatternLeftHalfDone) {
  for (GuardMethod method : {GuardMethod::kMprotect, GuardMethod::kMarker}) {
    SCOPED_TRACE(MethodName(method));
    if (method == GuardMethod::kMarker && WhyUnavailable(Feature::kGuardRegions)) continue;
    GuardLayout layout{8, 16};
    Region region;
    MapRegion(region, layout);
    SegvCatcher catcher;
    ASSERT_EQ(catcher.error(), "");
    // All but the last guard page: the check must notice the missing one.
    GuardLayout all_but_last{7, 16};
    InstallAll(method, all_but_last, region.base());
    GuardCheck check = CheckGuarded(method, layout, region.base(), catcher);
    EXPECT_NE(check.error, "");
    ASSERT_EQ(InstallGuard(method, layout.Page(region.base(), 7), kPage4K), 0);
    check = CheckGuarded(method, layout, region.base(), catcher);
    EXPECT_EQ(check.error, "");
    EXPECT_EQ(check.vmas, layout.ExpectedVmas(method));
    EXPECT_EQ(check.fault.addr, layout.Page(region.base(), 0));
    if (method == GuardMethod::kMprotect) {
      EXPECT_EQ(check.fault.code, SEGV_ACCERR);
    }
    // Removed: the unguarded check passes (first: its reads map the pages again), the guarded
    // one fails.
    RemoveAll(method, layout, region.base());
    check = CheckUnguarded(method, layout, region.base(), catcher);
    EXPECT_EQ(check.error, "");
    EXPECT_EQ(check.vmas, 1);
    EXPECT_NE(CheckGuarded(method, layout, region.base(), catcher).error, "");
  }
}

TEST(CheckUnguarded, RejectsAGuardPageLeftBehind) {
  GuardLayout layout{4, 16};
  Region region;
  MapRegion(region, layout);
  SegvCatcher catcher;
  ASSERT_EQ(catcher.error(), "");
  InstallAll(GuardMethod::kMprotect, layout, region.base());
  GuardLayout all_but_last{3, 16};
  RemoveAll(GuardMethod::kMprotect, all_but_last, region.base());
  const GuardCheck check = CheckUnguarded(GuardMethod::kMprotect, layout, region.base(), catcher);
  EXPECT_NE(check.error.find("VMAs"), std::string::npos) << check.error;
  EXPECT_EQ(check.vmas, 3);
}

TEST(CheckUnguarded, RejectsAMarkerPageThatStillHoldsItsContents) {
  SKIP_WITHOUT_GUARD_REGIONS();
  GuardLayout layout{2, 16};
  Region region;
  MapRegion(region, layout);
  SegvCatcher catcher;
  ASSERT_EQ(catcher.error(), "");
  // Never guarded: the page still holds what the region wrote, which a removed marker cannot.
  const GuardCheck check = CheckUnguarded(GuardMethod::kMarker, layout, region.base(), catcher);
  EXPECT_NE(check.error.find("not empty"), std::string::npos) << check.error;
}

}  // namespace
}  // namespace faultlab
