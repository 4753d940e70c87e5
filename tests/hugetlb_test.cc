// Hugetlb pools, --reserve-hugepages parsing and the arena's choice of backing.
//
// Tests that reserve pages change the machine: each points FAULTLAB_JOURNAL at a temporary file,
// restores through SystemSettings::RestoreAll and asserts the 2 MiB and 1 GiB pools are back to
// what they were. They need root; they also need the pools to hold no free pages of their own
// where they check for an empty pool, and skip (saying so) otherwise.
#include "topology/hugetlb.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "topology/system_settings.h"
#include "topology/topology.h"

namespace faultlab {
namespace {

const std::string kPool2M = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const std::string kPool1G = "/sys/kernel/mm/hugepages/hugepages-1048576kB";

long ReadLong(const std::string& path) {
  std::ifstream in(path);
  long value = -1;
  in >> value;
  return value;
}

bool Has1G() {
  std::vector<std::size_t> sizes = HugetlbPageSizes();
  return std::find(sizes.begin(), sizes.end(), kPage1G) != sizes.end();
}

#define SKIP_UNLESS_ROOT()                                                \
  do {                                                                    \
    if (geteuid() != 0) {                                                 \
      GTEST_SKIP() << "needs root to write /proc/sys/vm/nr_hugepages";    \
    }                                                                     \
  } while (0)

class HugetlbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // ctest -j runs each case as its own process; one case's reservation would break another's
    // "as found" check. tests/CMakeLists.txt gives every test that resizes pools the CTest
    // RESOURCE_LOCK hugetlb_pools, so they run one at a time.
    char pattern[] = "/tmp/faultlab-hugetlb-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    journal_ = dir_ + "/restore-journal";
    setenv("FAULTLAB_JOURNAL", journal_.c_str(), 1);
    nr_2m_ = ReadLong(kPool2M + "/nr_hugepages");
    nr_1g_ = Has1G() ? ReadLong(kPool1G + "/nr_hugepages") : -1;
    proc_nr_ = ReadLong("/proc/sys/vm/nr_hugepages");
  }
  void TearDown() override {
    SystemSettings::Get().RestoreAll();
    // The machine as we found it.
    EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_);
    if (nr_1g_ >= 0) {
      EXPECT_EQ(ReadLong(kPool1G + "/nr_hugepages"), nr_1g_);
    }
    EXPECT_EQ(ReadLong("/proc/sys/vm/nr_hugepages"), proc_nr_);
    EXPECT_FALSE(std::filesystem::exists(journal_));
    unsetenv("FAULTLAB_JOURNAL");
    std::filesystem::remove_all(dir_);
  }

  std::string dir_, journal_;
  long nr_2m_ = -1, nr_1g_ = -1, proc_nr_ = -1;
};

TEST(HugetlbPoolsTest, SizesAndPoolsMatchSysfs) {
  std::vector<std::size_t> sizes = HugetlbPageSizes();
  ASSERT_FALSE(sizes.empty()) << "no hugetlb support in this kernel";
  EXPECT_TRUE(std::is_sorted(sizes.begin(), sizes.end()));
  EXPECT_NE(std::find(sizes.begin(), sizes.end(), kPage2M), sizes.end());
  std::vector<HugetlbPool> pools = ReadHugetlbPools();
  bool global_2m = false, node0_2m = false;
  for (const HugetlbPool& pool : pools) {
    EXPECT_GE(pool.total, 0);
    EXPECT_LE(pool.free, pool.total);
    if (pool.page_size == kPage2M && pool.node == -1) {
      global_2m = true;
      EXPECT_EQ(pool.total, ReadLong(kPool2M + "/nr_hugepages"));
    }
    if (pool.page_size == kPage2M && pool.node == 0) node0_2m = true;
  }
  EXPECT_TRUE(global_2m);
  EXPECT_TRUE(node0_2m);
}

TEST(ParseHugepageRequestsTest, AcceptsCountsAndSizeLists) {
  std::string error;
  auto bare = ParseHugepageRequests("64", &error);
  ASSERT_TRUE(bare) << error;
  ASSERT_EQ(bare->size(), 1u);
  EXPECT_EQ((*bare)[0].page_size, kPage2M);
  EXPECT_EQ((*bare)[0].count, 64);

  for (const char* spelling : {"2M:3", "2m:3", "2048k:3", "2048K:3", " 2M : 3 "}) {
    auto parsed = ParseHugepageRequests(spelling, &error);
    ASSERT_TRUE(parsed) << spelling << ": " << error;
    ASSERT_EQ(parsed->size(), 1u);
    EXPECT_EQ((*parsed)[0].page_size, kPage2M) << spelling;
    EXPECT_EQ((*parsed)[0].count, 3) << spelling;
  }
  auto zero = ParseHugepageRequests("0", &error);
  ASSERT_TRUE(zero) << error;
  EXPECT_EQ((*zero)[0].count, 0);

  if (!Has1G()) return;
  for (const char* text : {"2M:64,1G:1", "2M:64,1g:1"}) {
    auto both = ParseHugepageRequests(text, &error);
    ASSERT_TRUE(both) << error;
    ASSERT_EQ(both->size(), 2u);
    EXPECT_EQ((*both)[0].page_size, kPage2M);
    EXPECT_EQ((*both)[0].count, 64);
    EXPECT_EQ((*both)[1].page_size, kPage1G);
    EXPECT_EQ((*both)[1].count, 1);
  }
}

TEST(ParseHugepageRequestsTest, RejectsBadInputNamingTheToken) {
  struct Case {
    const char* text;
    const char* in_error;
  };
  for (const Case& c : std::vector<Case>{{"", "empty"},
                                         {"  ", "empty"},
                                         {"-4", "\"-4\""},
                                         {"2M:-1", "\"-1\""},
                                         {"abc", "\"abc\""},
                                         {"2M:", "\"\""},
                                         {"2M:64,", "empty entry"},
                                         {"3X:4", "\"3X\""},
                                         {"M:4", "\"M\""},
                                         {"2M:4x", "\"4x\""},
                                         {"4M:1", "hugetlb page size 4M is not supported"},
                                         {"2M:1,2048k:2", "2M given twice"},
                                         {"99999999999999999999", "\"99999999999999999999\""}}) {
    std::string error;
    EXPECT_FALSE(ParseHugepageRequests(c.text, &error)) << c.text;
    EXPECT_NE(error.find(c.in_error), std::string::npos) << c.text << " gave: " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  std::string error;
  EXPECT_FALSE(ParseHugepageRequests("16G:1", &error));
  EXPECT_NE(error.find("hugetlb page size 16G is not supported by this kernel (sizes: 2M"),
            std::string::npos)
      << error;
}

TEST(BackingNameTest, Names) {
  EXPECT_STREQ(BackingName(Backing::kHugetlb1G), "hugetlb1g");
  EXPECT_STREQ(BackingName(Backing::kHugetlb2M), "hugetlb2m");
  EXPECT_STREQ(BackingName(Backing::kThp), "thp");
  EXPECT_STREQ(BackingName(Backing::kBase4K), "4k");
}

TEST_F(HugetlbTest, ReserveGrantsPagesAndRestoreAllGivesThemBack) {
  SKIP_UNLESS_ROOT();
  const long free_before = ReadLong(kPool2M + "/free_hugepages");
  long granted = ReserveHugepages(kPage2M, free_before + 8, -1);
  if (granted < free_before + 8) {
    GTEST_SKIP() << "the kernel granted " << granted << " of " << free_before + 8
                 << " free 2 MiB pages (not enough unfragmented memory)";
  }
  EXPECT_EQ(ReadLong(kPool2M + "/free_hugepages"), granted);
  EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_ + 8);
  bool found = false;
  for (const HugetlbPool& pool : ReadHugetlbPools()) {
    if (pool.page_size == kPage2M && pool.node == -1) {
      found = true;
      EXPECT_EQ(pool.total, nr_2m_ + 8);
      EXPECT_EQ(pool.free, granted);
    }
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(std::filesystem::exists(journal_));
  // Enough is already free: nothing more is asked of the kernel.
  EXPECT_EQ(ReserveHugepages(kPage2M, 4, -1), granted);
  EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_ + 8);

  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_);
  EXPECT_FALSE(std::filesystem::exists(journal_));
}

TEST_F(HugetlbTest, ReservePerNodeGoesThroughTheNodesPool) {
  SKIP_UNLESS_ROOT();
  const std::string node_pool = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB";
  const long node_nr = ReadLong(node_pool + "/nr_hugepages");
  const long node_free = ReadLong(node_pool + "/free_hugepages");
  long granted = ReserveHugepages(kPage2M, node_free + 2, 0);
  if (granted < node_free + 2) GTEST_SKIP() << "the kernel granted " << granted << " pages on node 0";
  EXPECT_EQ(ReadLong(node_pool + "/nr_hugepages"), node_nr + 2);
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadLong(node_pool + "/nr_hugepages"), node_nr);
}

TEST_F(HugetlbTest, ReserveInAChildKilledBySigtermIsRestored) {
  SKIP_UNLESS_ROOT();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const long want = ReadLong(kPool2M + "/free_hugepages") + 8;
  pid_t child = fork();
  if (child == 0) {
    close(ready[0]);
    long granted = ReserveHugepages(kPage2M, want, -1);
    ssize_t n = write(ready[1], &granted, sizeof granted);
    (void)n;
    while (true) pause();
  }
  close(ready[1]);
  long granted = -1;
  ASSERT_EQ(read(ready[0], &granted, sizeof granted), static_cast<ssize_t>(sizeof granted));
  close(ready[0]);
  EXPECT_GT(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_) << "child was granted " << granted;
  EXPECT_TRUE(std::filesystem::exists(journal_));
  kill(child, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_);
  EXPECT_FALSE(std::filesystem::exists(journal_));
}

TEST_F(HugetlbTest, ArenaWithEmptyPoolFallsBackToThp) {
  if (ReadLong(kPool2M + "/free_hugepages") != 0) {
    GTEST_SKIP() << "the 2 MiB pool has free pages already; this case needs it empty";
  }
  Topology topology;
  {
    HugetlbArena arena(topology, 0);
    const ArenaRegion& region = arena.Allocate(8 << 20);
    EXPECT_EQ(region.size, 8u << 20);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(region.addr) % kPage2M, 0u);
    EXPECT_EQ(region.node, 0);
    EXPECT_NE(region.why.find("2 MiB hugetlb: 0 free pages on node 0 (pool empty)"),
              std::string::npos)
        << region.why;
    if (region.backing == Backing::kBase4K) {
      GTEST_SKIP() << "THP gave no huge pages here: " << region.why;
    }
    EXPECT_EQ(region.backing, Backing::kThp) << region.why;
    EXPECT_NE(region.why.find("THP madvised: got 8 of 8 MiB as huge pages"), std::string::npos)
        << region.why;
    for (int node : PageNodes(region.addr, region.size, kPage4K)) EXPECT_EQ(node, 0);
    // The memory is ours to write.
    static_cast<volatile char*>(region.addr)[region.size - 1] = 1;
  }
}

TEST_F(HugetlbTest, ArenaUsesReservedHugetlbPages) {
  SKIP_UNLESS_ROOT();
  if (ReadLong(kPool2M + "/free_hugepages") != 0) {
    GTEST_SKIP() << "the 2 MiB pool has free pages already; this case needs it to hold only ours";
  }
  long granted = ReserveHugepages(kPage2M, 4, -1);
  if (granted < 4) GTEST_SKIP() << "the kernel granted " << granted << " of 4 2 MiB pages";
  Topology topology;
  {
    HugetlbArena arena(topology, 0);
    const ArenaRegion& region = arena.Allocate(8 << 20);
    EXPECT_EQ(region.backing, Backing::kHugetlb2M) << region.why;
    EXPECT_EQ(region.size, 8u << 20);
    EXPECT_EQ(region.node, 0);
    EXPECT_EQ(region.why, "2 MiB hugetlb: 4 pages on node 0");
    std::vector<int> nodes = PageNodes(region.addr, region.size, kPage2M);
    ASSERT_EQ(nodes.size(), 4u);
    for (int node : nodes) EXPECT_EQ(node, 0);  // present (not -1) and on node 0
    EXPECT_EQ(ReadLong(kPool2M + "/free_hugepages"), 0);

    // The pool is used up: the next request falls through, saying why.
    const ArenaRegion& next = arena.Allocate(4 << 20);
    EXPECT_NE(next.backing, Backing::kHugetlb2M);
    EXPECT_NE(next.why.find("2 MiB hugetlb: 0 free pages on node 0 (pool empty)"),
              std::string::npos)
        << next.why;
    EXPECT_EQ(arena.regions().size(), 2u);
    EXPECT_EQ(region.backing, Backing::kHugetlb2M);  // the first reference is still valid
  }
  EXPECT_EQ(ReadLong(kPool2M + "/free_hugepages"), 4);  // unmapped by the destructor
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadLong(kPool2M + "/nr_hugepages"), nr_2m_);
}

TEST_F(HugetlbTest, ArenaUsesA1GiBPageForLargeRequests) {
  SKIP_UNLESS_ROOT();
  if (!Has1G()) GTEST_SKIP() << "this kernel has no 1 GiB hugetlb pages";
  if (ReadLong(kPool1G + "/free_hugepages") != 0) {
    GTEST_SKIP() << "the 1 GiB pool has free pages already; this case needs it to hold only ours";
  }
  long granted = ReserveHugepages(kPage1G, 1, -1);
  if (granted < 1) GTEST_SKIP() << "the kernel granted no 1 GiB page (memory fragmented)";
  Topology topology;
  {
    HugetlbArena arena(topology, std::nullopt);
    // 600 MiB rounds to one 1 GiB page: less than double, so worth it.
    const ArenaRegion& region = arena.Allocate(600u << 20);
    EXPECT_EQ(region.backing, Backing::kHugetlb1G) << region.why;
    EXPECT_EQ(region.size, kPage1G);
    EXPECT_EQ(region.node, -1);
    EXPECT_EQ(region.why, "1 GiB hugetlb: 1 page");
    EXPECT_EQ(PageNodes(region.addr, region.size, kPage1G).at(0), 0);
    // A 1 GiB page is not spent on an 8 MiB request (none is left anyway), and that is not
    // worth mentioning.
    const ArenaRegion& small = arena.Allocate(8 << 20);
    EXPECT_EQ(small.why.find("1 GiB"), std::string::npos) << small.why;
  }
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadLong(kPool1G + "/nr_hugepages"), nr_1g_);
}

// The 4 KiB fallback, reached two ways: a request too small to be worth a 2 MiB page, and (via
// the test seam, since this machine's THP works) THP switched off.
TEST_F(HugetlbTest, ArenaFallsBackTo4KiB) {
  if (ReadLong(kPool2M + "/free_hugepages") != 0) {
    GTEST_SKIP() << "the 2 MiB pool has free pages already; this case needs it empty";
  }
  Topology topology;
  HugetlbArena arena(topology, std::nullopt);
  const ArenaRegion& small = arena.Allocate(512 << 10);
  EXPECT_EQ(small.backing, Backing::kBase4K) << small.why;
  EXPECT_EQ(small.size, 512u << 10);
  EXPECT_EQ(small.why,
            "2 MiB hugetlb: 512 KiB is under half a page; THP: 512 KiB is under half a 2 MiB "
            "page; 4 KiB pages");
  std::vector<int> nodes = PageNodes(small.addr, small.size, kPage4K);
  ASSERT_EQ(nodes.size(), 128u);
  for (int node : nodes) EXPECT_GE(node, 0);  // prefaulted: every page present

  internal::OverrideThpModeForTesting("never");
  const ArenaRegion& no_thp = arena.Allocate(8 << 20);
  internal::OverrideThpModeForTesting("");
  EXPECT_EQ(no_thp.backing, Backing::kBase4K) << no_thp.why;
  EXPECT_EQ(no_thp.why,
            "2 MiB hugetlb: 0 free pages (pool empty); THP: disabled (enabled=never); 4 KiB "
            "pages");
  nodes = PageNodes(no_thp.addr, no_thp.size, kPage4K);
  ASSERT_EQ(nodes.size(), 2048u);
  for (int node : nodes) EXPECT_GE(node, 0);

  EXPECT_EQ(arena.regions().size(), 2u);
}

TEST(HugetlbArenaTest, RejectsAnUnknownNode) {
  Topology topology;
  EXPECT_THROW({ HugetlbArena arena(topology, 64); }, std::invalid_argument);
}

}  // namespace
}  // namespace faultlab
