// The uffd probes on hugetlb memory (bench/uffd_probe.h): a 2 MiB memfd region maps, Zap and
// Empty do what they say to its mapping and its file, missing faults are resolved a huge page at
// a time, UFFDIO_WRITEPROTECT shows in pagemap, and an empty pool is refused naming the flag
// that fixes it.
//
// These tests reserve 2 MiB pages as hugetlb_test does (a journal of their own, SystemSettings,
// RestoreAll, the pools checked back as found); the hugetlb_ prefix gives them CTest's
// hugetlb_pools lock. They need root and a 2 MiB hugetlb size, and skip saying so otherwise.

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bench/kernel_features.h"
#include "bench/mm_probe.h"
#include "bench/uffd_probe.h"
#include "topology/hugetlb.h"
#include "topology/system_settings.h"

namespace faultlab {
namespace {

constexpr long kPages = 4;
constexpr std::size_t kBytes = kPages * kPage2M;
constexpr std::size_t kEntries = kBytes / kPage4K;  // pagemap has one entry per 4 KiB

long ReadLong(const std::string& path) {
  std::ifstream in(path);
  long value = -1;
  in >> value;
  return value;
}

const std::string kPool2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

class HugetlbUffdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to write /proc/sys/vm/nr_hugepages";
    if (auto why = WhyUnavailable(Feature::kHugetlb2M)) GTEST_SKIP() << *why;
    if (auto why = WhyUnavailable(Feature::kUserfaultfd)) GTEST_SKIP() << *why;
    char pattern[] = "/tmp/faultlab-hugetlb-uffd-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    setenv("FAULTLAB_JOURNAL", (dir_ + "/restore-journal").c_str(), 1);
    nr_2m_ = ReadLong(kPool2M);
    reserved_ = true;
    if (ReserveHugepages(kPage2M, kPages, -1) < kPages) {
      GTEST_SKIP() << "the kernel granted fewer than " << kPages << " 2 MiB pages";
    }
  }
  void TearDown() override {
    if (!reserved_) return;
    SystemSettings::Get().RestoreAll();
    EXPECT_EQ(ReadLong(kPool2M), nr_2m_) << "the 2 MiB pool is not as it was found";
    unsetenv("FAULTLAB_JOURNAL");
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  long nr_2m_ = -1;
  bool reserved_ = false;
};

TEST_F(HugetlbUffdTest, RegionMapsHugePagesAndZapKeepsTheFileWhileEmptyDropsIt) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kHugetlb2M, kBytes), "");
  EXPECT_EQ(region.page(), kPage2M);
  EXPECT_EQ(region.pages(), static_cast<std::size_t>(kPages));
  ASSERT_NE(region.alias(), nullptr);
  EXPECT_EQ(SmapsField(SmapsOf(region.base()), "KernelPageSize"), 2048);
  EXPECT_EQ(CountPresent(ReadPagemap(region.base(), kBytes)), 0u);
  ASSERT_EQ(region.FillCache('h'), "");
  EXPECT_EQ(CountPresent(ReadPagemap(region.alias(), kBytes)), kEntries);
  EXPECT_EQ(CountPresent(ReadPagemap(region.base(), kBytes)), 0u)
      << "filling through the alias mapped the registered range";
  EXPECT_EQ(region.base()[kPage2M + 5], 'h');
  ASSERT_EQ(region.Zap(), "");
  EXPECT_EQ(CountPresent(ReadPagemap(region.base(), kBytes)), 0u);
  EXPECT_EQ(CountPresent(ReadPagemap(region.alias(), kBytes)), kEntries)
      << "Zap dropped the file's pages";
  ASSERT_EQ(region.Empty(), "");
  EXPECT_EQ(CountPresent(ReadPagemap(region.alias(), kBytes)), 0u) << "Empty left the file's pages";
}

TEST_F(HugetlbUffdTest, MissingFaultsAreResolvedAHugePageAtATime) {
  for (HandlerMode mode : {HandlerMode::kSameCpu, HandlerMode::kSigbus}) {
    SCOPED_TRACE(HandlerModeName(mode));
    UffdRegion region, source;
    ASSERT_EQ(region.Map(UffdMemory::kHugetlb2M, kBytes), "");
    ASSERT_EQ(source.Map(UffdMemory::kAnon4K, kPage2M), "");
    std::memset(source.base(), 's', kPage2M);
    Userfaultfd uffd;
    ASSERT_EQ(uffd.Open(UFFD_FEATURE_MISSING_HUGETLBFS |
                        (mode == HandlerMode::kSigbus ? UFFD_FEATURE_SIGBUS : 0)),
              "");
    ASSERT_EQ(uffd.Register(region.base(), kBytes, UFFDIO_REGISTER_MODE_MISSING), "");
    FaultHandler handler;
    ASSERT_EQ(handler.Start(uffd, region.range(), mode, sched_getcpu(),
                            [&](char* address, uint64_t) {
                              return uffd.Copy(address, source.base(), kPage2M);
                            },
                            kPages),
              "");
    // Touch the middle of each huge page: the handler gets the huge page's start.
    for (long i = 0; i < kPages; ++i) {
      static_cast<volatile char*>(region.base())[i * kPage2M + kPage2M / 2] = 'w';
    }
    ASSERT_TRUE(handler.WaitForFaults(kPages));
    const std::vector<HandlerStamps> stamps = handler.Stamps();
    ASSERT_EQ(stamps.size(), static_cast<std::size_t>(kPages));
    for (long i = 0; i < kPages; ++i) {
      EXPECT_EQ(stamps[i].address, region.base() + i * kPage2M);
      EXPECT_EQ(region.base()[i * kPage2M], 's');
      EXPECT_EQ(region.base()[i * kPage2M + kPage2M - 1], 's');
      EXPECT_EQ(region.base()[i * kPage2M + kPage2M / 2], 'w');
    }
    EXPECT_EQ(CountPresent(ReadPagemap(region.base(), kBytes)), kEntries);
    EXPECT_EQ(handler.Stop(), "");
  }
}

TEST_F(HugetlbUffdTest, WriteProtectShowsInPagemapsUffdWpBit) {
  UffdRegion region;
  ASSERT_EQ(region.Map(UffdMemory::kHugetlb2M, kBytes), "");
  std::memset(region.base(), 1, kBytes);
  Userfaultfd uffd;
  ASSERT_EQ(uffd.Open(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM), "");
  ASSERT_EQ(uffd.Register(region.base(), kBytes, UFFDIO_REGISTER_MODE_WP), "");
  ASSERT_EQ(uffd.WriteProtect(region.base(), kBytes, true), "");
  std::vector<uint64_t> pagemap = ReadPagemap(region.base(), kBytes);
  ASSERT_EQ(pagemap.size(), kEntries);
  for (uint64_t e : pagemap) ASSERT_TRUE(PagemapUffdWp(e));
  ASSERT_EQ(uffd.WriteProtect(region.base(), kPage2M, false), "");
  pagemap = ReadPagemap(region.base(), kBytes);
  EXPECT_FALSE(PagemapUffdWp(pagemap[0]));
  EXPECT_FALSE(PagemapUffdWp(pagemap[kPage2M / kPage4K - 1]));
  EXPECT_TRUE(PagemapUffdWp(pagemap[kPage2M / kPage4K])) << "un-protected past the first page";
}

TEST_F(HugetlbUffdTest, AMappingBeyondTheFreePagesNamesTheFlag) {
  UffdRegion region;
  const std::string why = region.Map(UffdMemory::kHugetlb2M, (kPages + 64) * kPage2M);
  if (FreeHugetlbPages(kPage2M) >= kPages + 64) GTEST_SKIP() << "the pool has room for it here";
  EXPECT_NE(why.find("ENOMEM"), std::string::npos) << why;
  EXPECT_NE(why.find("--reserve-hugepages 2M:" + std::to_string(kPages + 64)), std::string::npos)
      << why;
}

}  // namespace
}  // namespace faultlab
