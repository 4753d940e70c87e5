// The uffd suite's probes (bench/uffd_probe.h) do what they claim: each memory type maps, and Zap
// and Empty leave the pages (and the page cache) as they say; a descriptor opens with the
// features asked and refuses one no kernel has, by name; a handler in each mode resolves faults
// with the content the ioctl gave and one stamp per fault; nothing (thread, descriptor, SIGBUS
// action) outlives a handler, also when its resolver fails half-way, which must not leave the
// faulting thread hanging; the minimal handler (a blocking read() on a blocking descriptor,
// stopped by a signal) does the same, and its Stop() returns however soon it follows Start();
// UFFDIO_WRITEPROTECT shows in pagemap's uffd-wp bit, and stays as a marker where the suite's
// marker cases say it does.
//
// Nothing here is timed. Hugetlb regions are in hugetlb_uffd_probe_test.cc, which reserves pool
// pages (and so takes the hugetlb lock); nothing here needs them.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "bench/mm_probe.h"
#include "bench/uffd_probe.h"

namespace faultlab {
namespace {

constexpr std::size_t kPage = 4096;

std::size_t CountEntries(const char* dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}
std::size_t Threads() { return CountEntries("/proc/self/task"); }
// /proc/self/task still lists a joined thread for a moment: pthread_join returns once the kernel
// cleared the thread's tid, which do_exit does before the task is reaped. So counts are read
// until they settle.
// The thread count once it is at most `at_most`, or after 2 s the count it is then.
std::size_t ThreadsOnceAtMost(std::size_t at_most) {
  for (int i = 0; i < 2000; ++i) {
    if (const std::size_t n = Threads(); n <= at_most) return n;
    usleep(1000);
  }
  return Threads();
}
// The thread count to come back to: the fewest seen over 20 ms after making (and joining) a
// thread, since ThreadSanitizer starts a thread of its own the first time the process makes
// one and keeps it, and the joined thread may still be listed.
std::size_t ThreadBaseline() {
  std::thread([] {}).join();
  std::size_t fewest = Threads();
  for (int i = 0; i < 20; ++i) {
    usleep(1000);
    fewest = std::min(fewest, Threads());
  }
  return fewest;
}
std::size_t OpenFds() { return CountEntries("/proc/self/fd"); }

std::size_t Present(const void* addr, std::size_t bytes) {
  return CountPresent(ReadPagemap(addr, bytes));
}

// The CPUs this process may run on, in order.
std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// Skips the calling test where userfaultfd cannot be opened (not root with
// vm.unprivileged_userfaultfd=0 and no access to /dev/userfaultfd).
#define OPEN_OR_SKIP(uffd, features)                                                   \
  do {                                                                                 \
    const std::string why = (uffd).Open(features);                                     \
    if (why.find("userfaultfd unavailable") != std::string::npos) GTEST_SKIP() << why; \
    ASSERT_EQ(why, "");                                                                \
  } while (0)

// Writes byte 0 of each page (a fault per page when the range is registered and empty).
__attribute__((no_sanitize("address", "thread", "undefined"))) void WriteEachPage(
    char* base, std::size_t pages, std::size_t page, char value) {
  for (std::size_t i = 0; i < pages; ++i) static_cast<volatile char*>(base)[i * page] = value;
}

// --- UffdRegion ---

TEST(UffdRegion, Anon4kMapsNoneAndZapAndEmptyDropThePages) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, 8 * kPage), "");
  EXPECT_EQ(region.page(), kPage);
  EXPECT_EQ(region.pages(), 8u);
  EXPECT_EQ(region.alias(), nullptr);
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u) << "a fresh mapping has no pages";
  WriteEachPage(region.base(), 8, kPage, 1);
  EXPECT_EQ(Present(region.base(), region.bytes()), 8u);
  ASSERT_EQ(region.Zap(), "");
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u);
  WriteEachPage(region.base(), 8, kPage, 1);
  ASSERT_EQ(region.Empty(), "");
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u);
  EXPECT_EQ(region.base()[0], 0) << "anonymous memory comes back zeroed";
  const std::string why = region.FillCache(1);
  EXPECT_NE(why.find("no page cache"), std::string::npos) << why;
}

TEST(UffdRegion, ShmemZapKeepsTheCacheAndEmptyDropsIt) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kShmem, 8 * kPage), "");
  ASSERT_NE(region.alias(), nullptr);
  ASSERT_NE(region.alias(), region.base());
  ASSERT_EQ(region.FillCache('x'), "");
  EXPECT_EQ(Present(region.alias(), region.bytes()), 8u);
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u)
      << "filling the cache through the alias must not map the registered range";
  EXPECT_EQ(region.base()[5 * kPage + 7], 'x') << "both mappings show one file";
  ASSERT_EQ(region.Zap(), "");
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u);
  EXPECT_EQ(Present(region.alias(), region.bytes()), 8u) << "Zap dropped the cached pages";
  EXPECT_EQ(region.alias()[3 * kPage], 'x');
  ASSERT_EQ(region.Empty(), "");
  EXPECT_EQ(Present(region.base(), region.bytes()), 0u);
  EXPECT_EQ(Present(region.alias(), region.bytes()), 0u) << "Empty left pages in the file";
  EXPECT_EQ(region.alias()[3 * kPage], 0) << "a punched hole reads as zeros";
}

TEST(UffdRegion, RefusesASizeThatIsNotWholePages) {
  UffdRegion region;
  const std::string why = region.Map(UffdMemory::kAnon4K, 100);
  EXPECT_NE(why.find("not a multiple"), std::string::npos) << why;
  EXPECT_EQ(region.base(), nullptr);
}

// --- Userfaultfd ---

TEST(Userfaultfd, OpensWithTheFeaturesAskedNonBlockingAndCloseOnExec) {
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_SIGBUS);
  ASSERT_GE(uffd.fd(), 0);
  EXPECT_NE(uffd.features() & UFFD_FEATURE_MISSING_SHMEM, 0u);
  EXPECT_NE(uffd.features() & UFFD_FEATURE_SIGBUS, 0u);
  EXPECT_NE(fcntl(uffd.fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(fcntl(uffd.fd(), F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_FALSE(uffd.blocking());
  EXPECT_NE(uffd.Open(0).find("already open"), std::string::npos);
}

TEST(Userfaultfd, SetBlockingTurnsONonblockOffAndOn) {
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, 0);
  ASSERT_EQ(uffd.SetBlocking(true), "");
  EXPECT_EQ(fcntl(uffd.fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_TRUE(uffd.blocking());
  ASSERT_EQ(uffd.SetBlocking(true), "") << "setting it twice is no error";
  ASSERT_EQ(uffd.SetBlocking(false), "");
  EXPECT_NE(fcntl(uffd.fd(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_FALSE(uffd.blocking());
}

TEST(Userfaultfd, RefusesAnUnknownFeatureBitByName) {
  const std::size_t fds = OpenFds();
  {
    Userfaultfd uffd;
    const std::string why = uffd.Open(uint64_t{1} << 50);
    if (why.find("userfaultfd unavailable") != std::string::npos) GTEST_SKIP() << why;
    EXPECT_NE(why.find("feature bit 50 not supported by this kernel"), std::string::npos) << why;
    EXPECT_EQ(uffd.fd(), -1);
  }
  EXPECT_EQ(OpenFds(), fds) << "a refused Open left a descriptor open";
}

TEST(Userfaultfd, FeatureNamesNameKnownBitsAndNumberOthers) {
  EXPECT_EQ(UffdFeatureNames(UFFD_FEATURE_MINOR_SHMEM), "UFFD_FEATURE_MINOR_SHMEM");
  EXPECT_EQ(UffdFeatureNames(UFFD_FEATURE_SIGBUS | (uint64_t{1} << 40)),
            "UFFD_FEATURE_SIGBUS, feature bit 40");
  EXPECT_EQ(UffdFeatureNames(uint64_t{1} << 16), "UFFD_FEATURE_MOVE");
}

TEST(Userfaultfd, WriteProtectShowsInPagemapsUffdWpBit) {
  for (UffdMemory memory : {UffdMemory::kAnon4K, UffdMemory::kShmem}) {
    SCOPED_TRACE(UffdMemoryName(memory));
    UffdRegion region;
    ASSERT_EQ(region.Map(memory, 4 * kPage), "");
    std::memset(region.base(), 1, region.bytes());
    Userfaultfd uffd;
    OPEN_OR_SKIP(uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP |
                           (memory == UffdMemory::kShmem ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0));
    ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_WP), "");
    std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
    ASSERT_EQ(pagemap.size(), 4u);
    for (uint64_t e : pagemap) EXPECT_FALSE(PagemapUffdWp(e)) << "protected before asked";
    ASSERT_EQ(uffd.WriteProtect(region.base(), region.bytes(), true), "");
    pagemap = ReadPagemap(region.base(), region.bytes());
    for (uint64_t e : pagemap) EXPECT_TRUE(PagemapUffdWp(e));
    ASSERT_EQ(uffd.WriteProtect(region.base() + kPage, kPage, false), "");
    pagemap = ReadPagemap(region.base(), region.bytes());
    EXPECT_TRUE(PagemapUffdWp(pagemap[0]));
    EXPECT_FALSE(PagemapUffdWp(pagemap[1])) << "un-protecting one page left its bit";
    EXPECT_TRUE(PagemapUffdWp(pagemap[2]));
  }
}

// What the wp_marker and wp_unpopulated cases stand on (uffd_suite.cc): a protection survives
// Zap as a PTE marker on shmem (not present, uffd-wp bit) and a write to it is a WP fault that
// finds the page cache's content; on anonymous memory a zap drops the protection, even with
// UFFD_FEATURE_WP_UNPOPULATED, which only lets UFFDIO_WRITEPROTECT put markers on none entries.
TEST(Userfaultfd, ZapKeepsTheProtectionAsAMarkerOnShmemNotOnAnon) {
  for (UffdMemory memory : {UffdMemory::kAnon4K, UffdMemory::kShmem}) {
    SCOPED_TRACE(UffdMemoryName(memory));
    const bool shmem = memory == UffdMemory::kShmem;
    UffdRegion region;
    ASSERT_EQ(region.Map(memory, 2 * kPage), "");
    std::memset(region.base(), 'c', region.bytes());
    Userfaultfd uffd;
    OPEN_OR_SKIP(uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP |
                           (shmem ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : UFFD_FEATURE_WP_UNPOPULATED));
    ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_WP), "");
    ASSERT_EQ(uffd.WriteProtect(region.base(), region.bytes(), true), "");
    ASSERT_EQ(region.Zap(), "");
    for (uint64_t e : ReadPagemap(region.base(), region.bytes())) {
      EXPECT_FALSE(PagemapPresent(e));
      EXPECT_EQ(PagemapUffdWp(e), shmem) << "entry 0x" << std::hex << e;
    }
    if (!shmem) continue;
    FaultHandler handler;
    ASSERT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu, AllowedCpus().at(0),
                            [&](char* address, uint64_t) {
                              return uffd.WriteProtect(address, kPage, false);
                            },
                            2),
              "");
    WriteEachPage(region.base(), 2, kPage, 'w');
    ASSERT_TRUE(handler.WaitForFaults(2));
    for (const HandlerStamps& s : handler.Stamps()) {
      EXPECT_EQ(s.flags, uint64_t{UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE});
    }
    EXPECT_EQ(handler.Stop(), "");
    EXPECT_EQ(region.base()[1], 'c') << "the page cache's content";
    for (uint64_t e : ReadPagemap(region.base(), region.bytes())) {
      EXPECT_TRUE(PagemapPresent(e));
      EXPECT_FALSE(PagemapUffdWp(e));
    }
  }
}

TEST(Userfaultfd, WriteProtectOfNoneAnonEntriesMarksThemOnlyWithWpUnpopulated) {
  for (bool unpopulated : {false, true}) {
    SCOPED_TRACE(unpopulated ? "UFFD_FEATURE_WP_UNPOPULATED" : "without");
    UffdRegion region;
    ASSERT_EQ(region.Map(UffdMemory::kAnon4K, 2 * kPage), "");
    Userfaultfd uffd;
    OPEN_OR_SKIP(uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP |
                           (unpopulated ? UFFD_FEATURE_WP_UNPOPULATED : 0));
    ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_WP), "");
    ASSERT_EQ(uffd.WriteProtect(region.base(), region.bytes(), true), "");
    for (uint64_t e : ReadPagemap(region.base(), region.bytes())) {
      EXPECT_FALSE(PagemapPresent(e));
      EXPECT_EQ(PagemapUffdWp(e), unpopulated) << "entry 0x" << std::hex << e;
    }
  }
}

// PAGEMAP_SCAN's structs are declared in uffd_probe.cc (newer than the headers): a wrong layout
// would make the kernel refuse them or answer nonsense. Under UFFD_FEATURE_WP_ASYNC the kernel
// resolves each write itself (no handler runs here: a write it did not resolve would hang the
// test, which ctest's timeout turns into a failure); the scan finds exactly the pages written,
// and with reprotect protects them again, so a second scan finds none.
TEST(PagemapScan, FindsExactlyThePagesWrittenUnderWpAsyncAndProtectsThemAgain) {
  constexpr std::size_t kPages = 8;
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPages * kPage), "");
  std::memset(region.base(), 1, region.bytes());
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC);
  ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_WP), "");
  ASSERT_EQ(uffd.WriteProtect(region.base(), region.bytes(), true), "");
  std::vector<AddressRange> written;
  ASSERT_EQ(PagemapScanWritten(region.base(), region.bytes(), false, &written), "");
  EXPECT_TRUE(written.empty()) << written.size() << " runs written before any write";
  for (std::size_t i : {1, 2, 5}) static_cast<volatile char*>(region.base())[i * kPage] = 'w';
  std::vector<uint64_t> pagemap = ReadPagemap(region.base(), region.bytes());
  EXPECT_FALSE(PagemapUffdWp(pagemap[1])) << "the kernel un-protected the page written";
  EXPECT_TRUE(PagemapUffdWp(pagemap[0]));
  ASSERT_EQ(PagemapScanWritten(region.base(), region.bytes(), true, &written), "");
  ASSERT_EQ(written.size(), 2u) << "pages 1-2 and 5";
  EXPECT_EQ(written[0].start, region.base() + kPage);
  EXPECT_EQ(written[0].end, region.base() + 3 * kPage);
  EXPECT_EQ(written[1].start, region.base() + 5 * kPage);
  EXPECT_EQ(written[1].end, region.base() + 6 * kPage);
  pagemap = ReadPagemap(region.base(), region.bytes());
  for (uint64_t e : pagemap) EXPECT_TRUE(PagemapUffdWp(e)) << "PM_SCAN_WP_MATCHING protects again";
  ASSERT_EQ(PagemapScanWritten(region.base(), region.bytes(), false, &written), "");
  EXPECT_TRUE(written.empty());
}

// Without WP_ASYNC the scan refuses, as PM_SCAN_CHECK_WPASYNC asks: EPERM.
TEST(PagemapScan, RefusesARangeWithoutWpAsync) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, 2 * kPage), "");
  std::vector<AddressRange> written;
  EXPECT_EQ(PagemapScanWritten(region.base(), region.bytes(), false, &written),
            "PAGEMAP_SCAN: EPERM");
}

// UFFDIO_MOVE and UFFDIO_POISON are newer than the uapi headers faultlab builds with: their
// structs are declared in uffd_probe.cc, and a wrong layout would make the kernel refuse them.
TEST(Userfaultfd, MoveTakesThePageAcrossAndPoisonFillsAHole) {
  UffdRegion dst, src;
  ASSERT_EQ(dst.Map(UffdMemory::kAnon4K, 2 * kPage), "");
  ASSERT_EQ(src.Map(UffdMemory::kAnon4K, kPage), "");
  std::memset(src.base(), 'm', kPage);
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON);
  uint64_t ioctls = 0;
  ASSERT_EQ(uffd.Register(dst.base(), dst.bytes(), UFFDIO_REGISTER_MODE_MISSING, &ioctls), "");
  ASSERT_EQ(uffd.Move(dst.base(), src.base(), kPage), "");
  EXPECT_EQ(Present(src.base(), kPage), 0u) << "the source still has its page after a move";
  EXPECT_EQ(dst.base()[kPage - 1], 'm');
  ASSERT_EQ(uffd.Poison(dst.base() + kPage, kPage), "");
  EXPECT_EQ(Present(dst.base() + kPage, kPage), 0u) << "a poison marker is not a page";
  EXPECT_NE(uffd.Poison(dst.base(), kPage).find("UFFDIO_POISON: EEXIST"), std::string::npos)
      << "poisoning a mapped page must be refused";
}

// --- FaultHandler ---

struct ModeCase {
  HandlerMode mode;
  int cpu;
  HandlerLoop loop = HandlerLoop::kPoll;

  bool blocking() const { return loop == HandlerLoop::kBlockingRead; }
  std::string Name() const {
    return std::string(HandlerModeName(mode)) + (blocking() ? " blocking-read" : "");
  }
};

// The modes this machine can run, each thread mode with both loops: other_cpu needs a second CPU
// to run the handler on.
std::vector<ModeCase> Modes() {
  const std::vector<int> cpus = AllowedCpus();
  std::vector<ModeCase> modes = {{HandlerMode::kSameCpu, cpus.at(0)},
                                 {HandlerMode::kSameCpu, cpus.at(0), HandlerLoop::kBlockingRead},
                                 {HandlerMode::kSigbus, -1}};
  if (cpus.size() >= 2) {
    modes.push_back({HandlerMode::kOtherCpu, cpus[1]});
    modes.push_back({HandlerMode::kOtherCpu, cpus[1], HandlerLoop::kBlockingRead});
  }
  return modes;
}

uint64_t SigbusFeature(HandlerMode mode) {
  return mode == HandlerMode::kSigbus ? UFFD_FEATURE_SIGBUS : 0;
}

TEST(FaultHandler, ResolvesMissingFaultsOnAnon4kInEachModeWithOneStampPerFault) {
  constexpr std::size_t kPages = 16;
  for (const ModeCase& mc : Modes()) {
    SCOPED_TRACE(mc.Name());
    UffdRegion region, source;
    ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPages * kPage), "");
    ASSERT_EQ(source.Map(UffdMemory::kAnon4K, kPage), "");
    std::memset(source.base(), 's', kPage);
    Userfaultfd uffd;
    OPEN_OR_SKIP(uffd, SigbusFeature(mc.mode));
    uint64_t ioctls = 0;
    ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_MISSING, &ioctls),
              "");
    EXPECT_NE(ioctls & (uint64_t{1} << _UFFDIO_COPY), 0u);
    ASSERT_EQ(uffd.SetBlocking(mc.blocking()), "");
    FaultHandler handler;
    ASSERT_EQ(handler.Start(uffd, region.range(), mc.mode, mc.cpu,
                            [&](char* address, uint64_t) {
                              return uffd.Copy(address, source.base(), kPage);
                            },
                            kPages, mc.loop),
              "");
    WriteEachPage(region.base(), kPages, kPage, 'w');
    ASSERT_TRUE(handler.WaitForFaults(kPages));
    EXPECT_EQ(handler.faults(), kPages);
    const std::vector<HandlerStamps> stamps = handler.Stamps();
    ASSERT_EQ(stamps.size(), kPages);
    for (std::size_t i = 0; i < kPages; ++i) {
      EXPECT_EQ(stamps[i].address, region.base() + i * kPage) << "fault " << i;
      EXPECT_LE(stamps[i].got, stamps[i].resolved) << "fault " << i;
      // A message says what the fault was; a signal carries none.
      EXPECT_EQ(stamps[i].flags,
                mc.mode == HandlerMode::kSigbus ? 0u : uint64_t{UFFD_PAGEFAULT_FLAG_WRITE})
          << "fault " << i;
      const char* page = region.base() + i * kPage;
      EXPECT_EQ(page[0], 'w');
      EXPECT_EQ(page[1], 's') << "page " << i << " does not hold the copied source";
      EXPECT_EQ(page[kPage - 1], 's');
    }
    EXPECT_EQ(handler.Stamps(kPages - 2).size(), 2u);
    EXPECT_EQ(Present(region.base(), region.bytes()), kPages);
    EXPECT_EQ(handler.Stop(), "");
  }
}

TEST(FaultHandler, MinorFaultsOnShmemAreResolvedFromThePageCache) {
  constexpr std::size_t kPages = 8;
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kShmem, kPages * kPage), "");
  ASSERT_EQ(region.FillCache('c'), "");
  ASSERT_EQ(region.Zap(), "");
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, UFFD_FEATURE_MINOR_SHMEM);
  ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_MINOR), "");
  FaultHandler handler;
  ASSERT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu, AllowedCpus().at(0),
                          [&](char* address, uint64_t) { return uffd.Continue(address, kPage); },
                          kPages),
            "");
  WriteEachPage(region.base(), kPages, kPage, 'w');
  ASSERT_TRUE(handler.WaitForFaults(kPages));
  for (const HandlerStamps& s : handler.Stamps()) {
    EXPECT_EQ(s.flags, uint64_t{UFFD_PAGEFAULT_FLAG_MINOR | UFFD_PAGEFAULT_FLAG_WRITE});
  }
  for (std::size_t i = 0; i < kPages; ++i) {
    EXPECT_EQ(region.base()[i * kPage + 1], 'c') << "page " << i << " is not the cached page";
    EXPECT_EQ(region.alias()[i * kPage], 'w') << "the write did not land in the shared page";
  }
  EXPECT_EQ(handler.Stop(), "");
}

TEST(FaultHandler, WpFaultsCarryTheWpFlagAndUnprotectingClearsTheBit) {
  constexpr std::size_t kPages = 4;
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPages * kPage), "");
  std::memset(region.base(), 1, region.bytes());
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP);
  ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_WP), "");
  ASSERT_EQ(uffd.WriteProtect(region.base(), region.bytes(), true), "");
  FaultHandler handler;
  ASSERT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu, AllowedCpus().at(0),
                          [&](char* address, uint64_t) {
                            return uffd.WriteProtect(address, kPage, false);
                          },
                          kPages),
            "");
  WriteEachPage(region.base(), kPages, kPage, 'w');
  ASSERT_TRUE(handler.WaitForFaults(kPages));
  for (const HandlerStamps& s : handler.Stamps()) {
    EXPECT_EQ(s.flags, uint64_t{UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE});
  }
  for (uint64_t e : ReadPagemap(region.base(), region.bytes())) EXPECT_FALSE(PagemapUffdWp(e));
  EXPECT_EQ(handler.Stop(), "");
}

// Runs a handler whose resolver fails on fault `fail_at` (or never, with fail_at = -1) over
// kPages pages, and returns Stop()'s answer. The writes must all complete either way.
std::string RunHandlerThatMayFail(const ModeCase& mc, int fail_at, std::size_t* faults) {
  constexpr std::size_t kPages = 8;
  UffdRegion region, source;
  EXPECT_EQ(region.Map(UffdMemory::kAnon4K, kPages * kPage), "");
  EXPECT_EQ(source.Map(UffdMemory::kAnon4K, kPage), "");
  std::memset(source.base(), 's', kPage);
  Userfaultfd uffd;
  EXPECT_EQ(uffd.Open(SigbusFeature(mc.mode)), "");
  EXPECT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_MISSING), "");
  EXPECT_EQ(uffd.SetBlocking(mc.blocking()), "");
  FaultHandler handler;
  int seen = 0;
  EXPECT_EQ(handler.Start(uffd, region.range(), mc.mode, mc.cpu,
                          [&](char* address, uint64_t) -> std::string {
                            // Short enough for std::string to keep inline: in sigbus mode this
                            // runs in the signal handler, where nothing should allocate.
                            if (seen++ == fail_at) return "gave up at 3";
                            return uffd.Copy(address, source.base(), kPage);
                          },
                          kPages, mc.loop),
            "");
  // Returns only if no access is left hanging on a fault nobody answers.
  WriteEachPage(region.base(), kPages, kPage, 'w');
  EXPECT_EQ(handler.WaitForFaults(kPages, 2), fail_at < 0);
  *faults = handler.faults();
  for (std::size_t i = 0; i < kPages; ++i) {
    const char* page = region.base() + i * kPage;
    EXPECT_EQ(page[0], 'w') << "page " << i;
    // Before the failure: the copy. From the failing fault on: an ordinary anonymous fault on the
    // unregistered range, a zeroed page.
    const char expected = fail_at < 0 || static_cast<int>(i) < fail_at ? 's' : 0;
    EXPECT_EQ(page[1], expected) << "page " << i;
  }
  return handler.Stop();
}

TEST(FaultHandler, LeavesNoThreadDescriptorOrSignalActionBehind) {
  struct sigaction before {};
  ASSERT_EQ(sigaction(SIGBUS, nullptr, &before), 0);
  for (const ModeCase& mc : Modes()) {
    SCOPED_TRACE(mc.Name());
    {
      Userfaultfd probe;
      OPEN_OR_SKIP(probe, 0);
    }
    const std::size_t threads = ThreadBaseline(), fds = OpenFds();
    std::size_t faults = 0;
    EXPECT_EQ(RunHandlerThatMayFail(mc, -1, &faults), "");
    EXPECT_EQ(faults, 8u);
    EXPECT_EQ(ThreadsOnceAtMost(threads), threads) << "a handler thread outlived its handler";
    EXPECT_EQ(OpenFds(), fds) << "a descriptor outlived its owner";
    struct sigaction after {};
    ASSERT_EQ(sigaction(SIGBUS, nullptr, &after), 0);
    EXPECT_EQ(after.sa_handler, before.sa_handler) << "the SIGBUS action was not restored";
  }
}

// The resolver fails on the 3rd fault: the handler unregisters the range (waking the faulting
// thread, whose access then takes an ordinary fault), Stop() reports the resolver's error, and
// the faulting thread ran to its end; afterwards nothing is left behind.
TEST(FaultHandler, AResolverFailingHalfWayIsReportedAndLeavesNothingHanging) {
  for (const ModeCase& mc : Modes()) {
    SCOPED_TRACE(mc.Name());
    {
      Userfaultfd probe;
      OPEN_OR_SKIP(probe, 0);
    }
    const std::size_t threads = ThreadBaseline(), fds = OpenFds();
    std::size_t faults = 0;
    const std::string error = RunHandlerThatMayFail(mc, 2, &faults);
    EXPECT_EQ(error, "gave up at 3");
    EXPECT_EQ(faults, 3u) << "the handler went on after its resolver failed";
    EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
    EXPECT_EQ(OpenFds(), fds);
  }
}

// The minimal handler's Stop() may come at any point of its thread's start: before the thread
// checked its stop flag, between that check and read(), or in read(). Each must end with the thread
// joined (a lost signal is sent again), whatever the CPUs; and the stop signal's action stays a
// handler without SA_RESTART, so a blocked read() returns EINTR instead of being restarted.
TEST(FaultHandler, TheBlockingReadHandlerStopsHoweverSoonStopFollowsStart) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPage), "");
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, 0);
  ASSERT_EQ(uffd.Register(region.base(), region.bytes(), UFFDIO_REGISTER_MODE_MISSING), "");
  ASSERT_EQ(uffd.SetBlocking(true), "");
  const std::size_t threads = ThreadBaseline(), fds = OpenFds();
  const std::vector<int> cpus = AllowedCpus();
  for (int i = 0; i < 200; ++i) {
    FaultHandler handler;
    ASSERT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu,
                            cpus[static_cast<std::size_t>(i) % cpus.size()],
                            [](char*, uint64_t) { return std::string("no fault expected"); }, 1,
                            HandlerLoop::kBlockingRead),
              "");
    if (i % 2) std::this_thread::yield();  // some Stops after the thread is in read()
    EXPECT_EQ(handler.Stop(), "");
    EXPECT_EQ(handler.faults(), 0u);
  }
  EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
  EXPECT_EQ(OpenFds(), fds) << "the blocking-read handler opens no descriptor";
  struct sigaction action {};
  ASSERT_EQ(sigaction(HandlerStopSignal(), nullptr, &action), 0);
  EXPECT_EQ(action.sa_flags & SA_RESTART, 0);
  EXPECT_NE(action.sa_handler, SIG_DFL);
  EXPECT_NE(action.sa_handler, SIG_IGN);
  EXPECT_GE(HandlerStopSignal(), SIGRTMIN);
  EXPECT_LE(HandlerStopSignal(), SIGRTMAX);
}

// Each loop on the descriptor it needs: a polling handler on a blocking descriptor could block in
// read() where Stop() cannot reach it, a blocking-read one on a non-blocking descriptor would spin.
TEST(FaultHandler, EachLoopRefusesADescriptorOfTheOtherKind) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPage), "");
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, 0);
  const std::size_t threads = ThreadBaseline(), fds = OpenFds();
  auto none = [](char*, uint64_t) { return std::string(); };
  FaultHandler handler;
  EXPECT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu, -1, none, 1,
                          HandlerLoop::kBlockingRead),
            "the blocking-read handler needs a blocking userfaultfd");
  ASSERT_EQ(uffd.SetBlocking(true), "");
  EXPECT_EQ(handler.Start(uffd, region.range(), HandlerMode::kSameCpu, -1, none, 1),
            "the polling handler needs a non-blocking userfaultfd");
  EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
  EXPECT_EQ(OpenFds(), fds);
}

TEST(FaultHandler, OneSigbusHandlerAtATime) {
  UffdRegion a, b;
  ASSERT_EQ(a.Map(UffdMemory::kAnon4K, kPage), "");
  ASSERT_EQ(b.Map(UffdMemory::kAnon4K, kPage), "");
  Userfaultfd first, second;
  OPEN_OR_SKIP(first, UFFD_FEATURE_SIGBUS);
  ASSERT_EQ(second.Open(UFFD_FEATURE_SIGBUS), "");
  auto none = [](char*, uint64_t) { return std::string(); };
  FaultHandler one, two;
  ASSERT_EQ(one.Start(first, a.range(), HandlerMode::kSigbus, -1, none, 1), "");
  EXPECT_NE(two.Start(second, b.range(), HandlerMode::kSigbus, -1, none, 1).find("another sigbus"),
            std::string::npos);
  EXPECT_EQ(one.Stop(), "");
  EXPECT_EQ(two.Start(second, b.range(), HandlerMode::kSigbus, -1, none, 1), "")
      << "the first handler's Stop did not release SIGBUS";
}

TEST(FaultHandler, SigbusModeNeedsTheSigbusFeature) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPage), "");
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, 0);
  FaultHandler handler;
  const std::string why = handler.Start(uffd, region.range(), HandlerMode::kSigbus, -1,
                                        [](char*, uint64_t) { return std::string(); }, 1);
  EXPECT_NE(why.find("UFFD_FEATURE_SIGBUS"), std::string::npos) << why;
}

TEST(FaultHandler, ACpuItCannotRunOnIsAnErrorAndLeavesNoThread) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kAnon4K, kPage), "");
  Userfaultfd uffd;
  OPEN_OR_SKIP(uffd, 0);
  const std::size_t threads = ThreadBaseline();
  const int absent = static_cast<int>(sysconf(_SC_NPROCESSORS_CONF));  // one past the last CPU
  for (HandlerLoop loop : {HandlerLoop::kPoll, HandlerLoop::kBlockingRead}) {
    ASSERT_EQ(uffd.SetBlocking(loop == HandlerLoop::kBlockingRead), "");
    FaultHandler handler;
    const std::string why = handler.Start(uffd, region.range(), HandlerMode::kSameCpu, absent,
                                          [](char*, uint64_t) { return std::string(); }, 1, loop);
    EXPECT_NE(why.find("CPU " + std::to_string(absent)), std::string::npos) << why;
    EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
  }
}

// --- The floor ---

TEST(EventfdPingPong, GivesOneSortedSamplePerRoundTripAndLeavesNoThread) {
  const std::vector<int> cpus = AllowedCpus();
  const std::size_t threads = ThreadBaseline(), fds = OpenFds();
  for (int other : {cpus.at(0), cpus.back()}) {
    std::string error;
    const std::vector<double> ns = EventfdPingPongNs(cpus[0], other, 50, &error);
    EXPECT_EQ(error, "");
    ASSERT_EQ(ns.size(), 50u);
    EXPECT_TRUE(std::is_sorted(ns.begin(), ns.end()));
    EXPECT_GT(ns.front(), 0);
  }
  EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
  EXPECT_EQ(OpenFds(), fds);
}

TEST(EventfdPingPong, ACpuItCannotRunOnIsAnError) {
  const int absent = static_cast<int>(sysconf(_SC_NPROCESSORS_CONF));
  const std::size_t threads = ThreadBaseline();
  std::string error;
  EXPECT_TRUE(EventfdPingPongNs(AllowedCpus().at(0), absent, 10, &error).empty());
  EXPECT_NE(error.find("CPU " + std::to_string(absent)), std::string::npos) << error;
  error.clear();
  EXPECT_TRUE(EventfdPingPongNs(absent, AllowedCpus().at(0), 10, &error).empty());
  EXPECT_NE(error.find("CPU " + std::to_string(absent)), std::string::npos) << error;
  EXPECT_EQ(ThreadsOnceAtMost(threads), threads);
}

}  // namespace
}  // namespace faultlab
