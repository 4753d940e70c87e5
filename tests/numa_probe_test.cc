// The numa suite's probes on this machine: node lists, placement queries, policies and moves.
// Each check is also shown failing where it should (a wrong node, untouched pages, a node that
// does not exist). What needs two nodes with memory is skipped here with the reason, and runs on
// a machine (or guest) that has them.

#include "bench/numa_probe.h"

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace faultlab {
namespace {

constexpr std::size_t kPage = 4096;

// Anonymous 4 KiB pages (MADV_NOHUGEPAGE), unmapped at the end of the test.
class Pages {
 public:
  explicit Pages(std::size_t count) : bytes_(count * kPage) {
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base_ = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    if (base_) madvise(base_, bytes_, MADV_NOHUGEPAGE);
  }
  ~Pages() {
    if (base_) munmap(base_, bytes_);
  }
  char* base() const { return base_; }
  std::size_t bytes() const { return bytes_; }
  std::size_t count() const { return bytes_ / kPage; }
  void Touch() const {
    for (std::size_t i = 0; i < bytes_; i += kPage) base_[i] = static_cast<char>(i / kPage + 1);
  }
  std::vector<void*> Addresses() const {
    std::vector<void*> out;
    for (std::size_t i = 0; i < bytes_; i += kPage) out.push_back(base_ + i);
    return out;
  }

 private:
  char* base_ = nullptr;
  std::size_t bytes_ = 0;
};

bool Contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

TEST(NumaProbe, ParsesNodeLists) {
  EXPECT_EQ(ParseIdList("0"), (std::vector<int>{0}));
  EXPECT_EQ(ParseIdList("0-2,5\n"), (std::vector<int>{0, 1, 2, 5}));
  EXPECT_EQ(ParseIdList("3,1,1"), (std::vector<int>{1, 3}));
  EXPECT_EQ(ParseIdList(""), (std::vector<int>{}));
  EXPECT_FALSE(ParseIdList("a"));
  EXPECT_FALSE(ParseIdList("3-1"));
  EXPECT_FALSE(ParseIdList("1-"));
}

TEST(NumaProbe, ListsNodesWithMemoryAndCpus) {
  const std::vector<int> memory = NodesWithMemory();
  const std::vector<int> cpus = NodesWithCpus();
  ASSERT_FALSE(memory.empty()) << "no /sys/devices/system/node/has_memory";
  ASSERT_FALSE(cpus.empty());
  // The CPU this test runs on is on a node with CPUs, and among that node's allowed CPUs.
  const int cpu = sched_getcpu();
  const int node = NodeOfCpu(cpu);
  ASSERT_GE(node, 0);
  EXPECT_TRUE(Contains(cpus, node));
  EXPECT_TRUE(Contains(AllowedCpusOfNode(node), cpu));
  EXPECT_FALSE(Contains(memory, FirstNodeWithoutMemory()));
  EXPECT_TRUE(AllowedCpusOfNode(FirstNodeWithoutMemory() + 1000).empty());
  EXPECT_EQ(WhyNotTwoMemoryNodes(), "needs a second NUMA node with memory; this machine has " +
                                        std::to_string(memory.size()));
}

TEST(NumaProbe, UntouchedPagesAreNotPresent) {
  Pages pages(4);
  ASSERT_TRUE(pages.base());
  std::string error;
  const std::vector<int> status = QueryPageNodes(pages.base(), pages.bytes(), kPage, &error);
  ASSERT_EQ(status.size(), 4u) << error;
  // -ENOENT; kernels before the query learnt to tell untouched pages apart (6.1 does) say -EFAULT.
  const int want = status[0] == -EFAULT ? -EFAULT : -ENOENT;
  for (int s : status) EXPECT_EQ(s, want);
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, 0),
            want == -ENOENT ? "premise: 4 of 4 pages not present, not 0"
                            : "premise: 4 of 4 pages unqueryable (EFAULT), not 0");
}

TEST(NumaProbe, PageBoundToNodeZeroIsReportedThere) {
  Pages pages(16);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kBind, {0}), "");
  pages.Touch();
  std::string error;
  const std::vector<int> status = QueryPageNodes(pages.base(), pages.bytes(), kPage, &error);
  ASSERT_EQ(status.size(), 16u) << error;
  for (int s : status) EXPECT_EQ(s, 0);
  std::map<int, std::size_t> counts;
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, 0, &counts), "");
  EXPECT_EQ(counts, (std::map<int, std::size_t>{{0, 16}}));
  EXPECT_EQ(NodeOfAddress(pages.base() + 5 * kPage, &error), 0) << error;
  // The check fails when the node is not the one asked for, naming both.
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, 1),
            "premise: 16 of 16 pages on node 0, not 1");
  // A stride of 2 pages queries every other page.
  EXPECT_EQ(QueryPageNodes(pages.base(), pages.bytes(), 2 * kPage, &error).size(), 8u);
}

TEST(NumaProbe, BindToANodeWithoutMemoryIsRefused) {
  Pages pages(1);
  ASSERT_TRUE(pages.base());
  const int missing = FirstNodeWithoutMemory();
  const std::string error = SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kBind, {missing});
  EXPECT_NE(error.find("mbind(bind nodes " + std::to_string(missing) + "): EINVAL"),
            std::string::npos)
      << error;
}

TEST(NumaProbe, MoveToANodeThatDoesNotExistFailsWithEnodev) {
  Pages pages(4);
  ASSERT_TRUE(pages.base());
  pages.Touch();
  const int missing = FirstNodeWithoutMemory();
  std::vector<void*> addresses = pages.Addresses();
  std::vector<int> status(addresses.size());
  const std::string error = MovePagesTo(addresses.data(), addresses.size(), missing, status.data());
  const std::string node = std::to_string(missing);
  EXPECT_EQ(error.rfind("move_pages to node " + node + ": ENODEV (no node " + node +
                            " with memory; nodes with memory: ",
                        0),
            0u)
      << error;
  EXPECT_NE(MoveRangeTo(pages.base(), pages.bytes(), kPage, missing, 2).find("ENODEV"),
            std::string::npos);
  // Nothing moved, nothing lost.
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, NodeOfCpu(sched_getcpu())), "");
  for (std::size_t i = 0; i < pages.count(); ++i) EXPECT_EQ(pages.base()[i * kPage], char(i + 1));
}

TEST(NumaProbe, MovesToTheNodeThePagesAreOnSucceed) {
  Pages pages(8);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kBind, {0}), "");
  pages.Touch();
  EXPECT_EQ(MoveRangeTo(pages.base(), pages.bytes(), kPage, 0, 3), "");
  EXPECT_EQ(MbindMoveTo(pages.base(), pages.bytes(), 0), "");
  long not_moved = -1;
  EXPECT_EQ(MigrateProcessPages(0, 0, &not_moved), "");
  EXPECT_EQ(not_moved, 0);
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, 0), "");
  EXPECT_GT(ProcessPagesOnNode(0), static_cast<long>(pages.count()) - 1);
}

TEST(NumaProbe, InterleaveOverOneNode) {
  ASSERT_FALSE(WhyPolicyUnavailable(NumaPolicy::kInterleave));
  const std::vector<int> nodes = {NodesWithMemory().front()};
  Pages pages(64);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kInterleave, nodes), "");
  pages.Touch();
  std::map<int, std::size_t> counts;
  ASSERT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, -1, &counts), "");
  EXPECT_EQ(CheckInterleaved(counts, 64, nodes, {1}), "");
}

TEST(NumaProbe, WeightedInterleaveWhereTheKernelHasIt) {
  if (auto why = WhyPolicyUnavailable(NumaPolicy::kWeightedInterleave)) GTEST_SKIP() << *why;
  const std::vector<int> nodes = NodesWithMemory();
  Pages pages(64);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kWeightedInterleave, nodes), "");
  pages.Touch();
  std::map<int, std::size_t> counts;
  ASSERT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, -1, &counts), "");
  EXPECT_EQ(CheckInterleaved(counts, 64, nodes, InterleaveWeights(nodes)), "");
}

TEST(NumaProbe, InterleaveCheckCatchesAnUnevenSpread) {
  EXPECT_EQ(CheckInterleaved({{0, 512}, {1, 512}}, 1024, {0, 1}, {1, 1}), "");
  EXPECT_EQ(CheckInterleaved({{0, 513}, {1, 511}}, 1024, {0, 1}, {1, 1}), "");
  EXPECT_EQ(CheckInterleaved({{0, 300}, {1, 724}}, 1024, {0, 1}, {1, 1}),
            "premise: node 0 got 300 of 1024 pages, expected 512 (interleave over 0-1)");
  EXPECT_EQ(CheckInterleaved({{0, 512}, {1, 511}, {2, 1}}, 1024, {0, 1}, {1, 1}),
            "premise: 1 of 1024 pages not on the interleaved nodes 0-1");
  // Weights 3:1: 768 and 256, each within its weight.
  EXPECT_EQ(InterleaveShares(1024, {3, 1}), (std::vector<double>{768, 256}));
  EXPECT_EQ(CheckInterleaved({{0, 769}, {1, 255}}, 1024, {0, 1}, {3, 1}), "");
  EXPECT_NE(CheckInterleaved({{0, 512}, {1, 512}}, 1024, {0, 1}, {3, 1}), "");
}

TEST(NumaProbe, ThreadPolicyIsSetAndRestored) {
  const ThreadPolicy before = GetThreadPolicy();
  ASSERT_EQ(before.error, "");
  {
    ScopedThreadPolicy bind(NumaPolicy::kBind, {0});
    ASSERT_EQ(bind.error(), "");
    const ThreadPolicy inside = GetThreadPolicy();
    EXPECT_EQ(inside.mode, PolicyMode(NumaPolicy::kBind));
    EXPECT_EQ(inside.nodes, (std::vector<int>{0}));
    Pages pages(4);
    ASSERT_TRUE(pages.base());
    pages.Touch();
    EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, 0), "");
  }
  const ThreadPolicy after = GetThreadPolicy();
  EXPECT_EQ(after.mode, before.mode);
  EXPECT_EQ(after.nodes, before.nodes);
  {
    ScopedThreadPolicy local(NumaPolicy::kLocal, {});
    ASSERT_EQ(local.error(), "");
    EXPECT_EQ(GetThreadPolicy().mode, PolicyMode(NumaPolicy::kLocal));
  }
  EXPECT_EQ(GetThreadPolicy().mode, before.mode);
}

// --- Two nodes with memory -------------------------------------------------------------------

TEST(NumaProbe, MovePagesBetweenTwoNodesKeepsTheData) {
  const std::vector<int> memory = NodesWithMemory();
  if (memory.size() < 2) GTEST_SKIP() << WhyNotTwoMemoryNodes();
  const int a = memory[0], b = memory[1];
  Pages pages(32);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kBind, {a}), "");
  pages.Touch();
  ASSERT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, a), "");
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kDefault, {}), "");
  ASSERT_EQ(MoveRangeTo(pages.base(), pages.bytes(), kPage, b, 16), "");
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, b), "");
  ASSERT_EQ(MbindMoveTo(pages.base(), pages.bytes(), a), "");
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, a), "");
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kDefault, {}), "");
  long not_moved = -1;
  ASSERT_EQ(MigrateProcessPages(a, b, &not_moved), "");
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, b), "");
  for (std::size_t i = 0; i < pages.count(); ++i) EXPECT_EQ(pages.base()[i * kPage], char(i + 1));
  // The check names where the pages are.
  EXPECT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, a),
            "premise: 32 of 32 pages on node " + std::to_string(b) + ", not " + std::to_string(a));
}

TEST(NumaProbe, InterleaveOverTwoNodesSplitsEvenly) {
  const std::vector<int> memory = NodesWithMemory();
  if (memory.size() < 2) GTEST_SKIP() << WhyNotTwoMemoryNodes();
  const std::vector<int> nodes = {memory[0], memory[1]};
  Pages pages(64);
  ASSERT_TRUE(pages.base());
  ASSERT_EQ(SetRangePolicy(pages.base(), pages.bytes(), NumaPolicy::kInterleave, nodes), "");
  pages.Touch();
  std::map<int, std::size_t> counts;
  ASSERT_EQ(CheckAllOnNode(pages.base(), pages.bytes(), kPage, -1, &counts), "");
  EXPECT_EQ(CheckInterleaved(counts, 64, nodes, {1, 1}), "");
  EXPECT_EQ(counts[nodes[0]], 32u);
}

}  // namespace
}  // namespace faultlab
