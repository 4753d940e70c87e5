// Topology: discovery of the real machine, synthetic topologies for the CPU-selection logic
// (they hold more nodes and CPUs than this machine), CPU-list parsing, pinning and node binding.
#include "topology/topology.h"

#include <numa.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace faultlab {
namespace {

std::vector<int> Affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  std::vector<int> out;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) out.push_back(cpu);
  }
  return out;
}

std::vector<int> Range(int first, int last) {
  std::vector<int> out;
  for (int i = first; i <= last; ++i) out.push_back(i);
  return out;
}

// An anonymous mapping that unmaps itself, so a failed assertion does not leak it.
struct Mapping {
  explicit Mapping(std::size_t n) : len(n) {
    addr = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, len);
  }
  void* addr;
  std::size_t len;
};

// ---- The real machine ------------------------------------------------------------------------

TEST(RealTopology, CountsAreSane) {
  Topology topo;
  const TopologySummary& s = topo.summary();
  EXPECT_GE(s.packages, 1);
  EXPECT_GE(s.cores, s.packages);
  EXPECT_GE(s.pus, s.cores);
  ASSERT_GE(s.nodes.size(), 1u);
  int cpus_on_nodes = 0;
  for (const NodeInfo& n : s.nodes) {
    EXPECT_TRUE(topo.HasNode(n.os_index));
    cpus_on_nodes += static_cast<int>(n.cpus.size());
  }
  // Every PU sits under exactly one node.
  EXPECT_EQ(cpus_on_nodes, s.pus);
  EXPECT_GT(s.nodes.front().mem_available, 0u);
}

TEST(RealTopology, AllowedCpusAreTheInheritedMask) {
  Topology topo;
  EXPECT_EQ(topo.summary().allowed_cpus, Affinity());
}

// hwloc cannot see a taskset-style mask; a Topology built inside one must.
TEST(RealTopology, AllowedCpusFollowANarrowedMask) {
  const std::vector<int> inherited = Affinity();
  if (inherited.size() < 2) GTEST_SKIP() << "needs two allowed CPUs to narrow the mask";
  const int only = inherited.back();
  std::vector<int> allowed;
  std::string error;
  std::optional<std::vector<int>> resolved;
  std::thread worker([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(only, &set);
    ASSERT_EQ(sched_setaffinity(0, sizeof(set), &set), 0);
    Topology topo;
    allowed = topo.summary().allowed_cpus;
    resolved = ResolveRunCpus(topo, {inherited.front()}, std::nullopt, &error);
  });
  worker.join();
  EXPECT_EQ(allowed, std::vector<int>{only});
  EXPECT_FALSE(resolved.has_value());
  EXPECT_EQ(error, "CPU " + std::to_string(inherited.front()) +
                       " is not in this process's allowed CPUs (" + std::to_string(only) + ")");
}

TEST(RealTopology, SummaryJsonHasTheKeys) {
  Topology topo;
  const nlohmann::json j = topo.SummaryJson();
  for (const char* key : {"packages", "cores", "pus", "nodes", "allowed_cpus", "hwloc_version"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["pus"].get<int>(), topo.summary().pus);
  EXPECT_EQ(j["allowed_cpus"].get<std::vector<int>>(), topo.summary().allowed_cpus);
  ASSERT_TRUE(j["nodes"].is_array());
  ASSERT_EQ(j["nodes"].size(), topo.summary().nodes.size());
  for (const char* key : {"os_index", "cpus", "mem_available_bytes"}) {
    EXPECT_TRUE(j["nodes"][0].contains(key)) << key;
  }
  EXPECT_EQ(j["hwloc_version"].get<std::string>().rfind("2.", 0), 0u) << j["hwloc_version"];
}

TEST(RealTopology, ExportXmlWritesXml) {
  Topology topo;
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("topology_test." + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::filesystem::path file = dir / "topo.xml";
  ASSERT_TRUE(topo.ExportXml(file.string()));
  std::ifstream in(file);
  std::string head(5, '\0');
  in.read(head.data(), 5);
  EXPECT_EQ(head, "<?xml");
  std::filesystem::remove_all(dir);
}

TEST(RealTopology, ExportXmlFailsOnAnUnwritablePath) {
  Topology topo;
  errno = 0;
  EXPECT_FALSE(topo.ExportXml("/proc/nope/x.xml"));
  EXPECT_NE(errno, 0);
}

TEST(RealTopology, CpusOfNodeAreAllowedAndLocal) {
  Topology topo;
  const TopologySummary& s = topo.summary();
  for (const NodeInfo& n : s.nodes) {
    for (int cpu : topo.CpusOfNode(n.os_index)) {
      EXPECT_NE(std::find(n.cpus.begin(), n.cpus.end(), cpu), n.cpus.end());
      EXPECT_NE(std::find(s.allowed_cpus.begin(), s.allowed_cpus.end(), cpu),
                s.allowed_cpus.end());
    }
  }
  EXPECT_TRUE(topo.CpusOfNode(-1).empty());
  EXPECT_FALSE(topo.HasNode(-1));
}

TEST(RealTopology, ResolveDefaultsToTheAllowedMask) {
  Topology topo;
  std::string error;
  const auto cpus = ResolveRunCpus(topo, {}, std::nullopt, &error);
  ASSERT_TRUE(cpus.has_value()) << error;
  EXPECT_EQ(*cpus, Affinity());
}

// The real-machine twin of the synthetic node checks, for machines (or QEMU guests) with two
// nodes that both have CPUs.
TEST(RealTopology, ResolveChecksCpusAgainstTheNode) {
  Topology topo;
  const TopologySummary& s = topo.summary();
  if (s.nodes.size() < 2 || topo.CpusOfNode(s.nodes[0].os_index).empty() ||
      topo.CpusOfNode(s.nodes[1].os_index).empty()) {
    GTEST_SKIP() << "needs two NUMA nodes with allowed CPUs; this machine has " << s.nodes.size()
                 << " node(s)";
  }
  const int first = s.nodes[0].os_index;
  const int other_cpu = topo.CpusOfNode(s.nodes[1].os_index).front();
  std::string error;
  const auto local = ResolveRunCpus(topo, {}, first, &error);
  ASSERT_TRUE(local.has_value()) << error;
  EXPECT_EQ(*local, topo.CpusOfNode(first));
  EXPECT_FALSE(ResolveRunCpus(topo, {other_cpu}, first, &error).has_value());
  EXPECT_EQ(error.rfind("CPU " + std::to_string(other_cpu) + " is not on NUMA node " +
                            std::to_string(first),
                        0),
            0u)
      << error;
}

// ---- Synthetic topologies: the logic, with more nodes than this machine has --------------------

// In hwloc's synthetic syntax each level multiplies the one above: 2 packages, each with 2 NUMA
// nodes, each with 2 cores of 2 PUs. PU and node OS indexes are assigned in order.
constexpr const char* kTwoByTwo = "package:2 numa:2 core:2 pu:2";

TEST(SyntheticTopology, CountsFollowTheDescription) {
  Topology topo(kTwoByTwo);
  const TopologySummary& s = topo.summary();
  EXPECT_EQ(s.packages, 2);
  EXPECT_EQ(s.cores, 8);
  EXPECT_EQ(s.pus, 16);
  ASSERT_EQ(s.nodes.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(s.nodes[i].os_index, i);
    EXPECT_EQ(s.nodes[i].cpus, Range(4 * i, 4 * i + 3));
  }
  EXPECT_EQ(s.allowed_cpus, Range(0, 15));
  EXPECT_EQ(topo.CpusOfNode(2), Range(8, 11));
  EXPECT_TRUE(topo.HasNode(3));
  EXPECT_FALSE(topo.HasNode(4));
}

TEST(SyntheticTopology, BadDescriptionThrows) {
  EXPECT_THROW(Topology("package:2 banana:3"), std::runtime_error);
}

TEST(SyntheticTopology, ResolveNodeGivesItsCpus) {
  Topology topo(kTwoByTwo);
  std::string error;
  const auto cpus = ResolveRunCpus(topo, {}, 1, &error);
  ASSERT_TRUE(cpus.has_value()) << error;
  EXPECT_EQ(*cpus, Range(4, 7));
}

TEST(SyntheticTopology, ResolveNoRequestGivesEveryCpu) {
  Topology topo(kTwoByTwo);
  std::string error;
  const auto cpus = ResolveRunCpus(topo, {}, std::nullopt, &error);
  ASSERT_TRUE(cpus.has_value()) << error;
  EXPECT_EQ(*cpus, Range(0, 15));
}

TEST(SyntheticTopology, ResolveKeepsTheUsersOrder) {
  Topology topo(kTwoByTwo);
  std::string error;
  const auto cpus = ResolveRunCpus(topo, {9, 8, 11}, 2, &error);
  ASSERT_TRUE(cpus.has_value()) << error;
  EXPECT_EQ(*cpus, (std::vector<int>{9, 8, 11}));
}

TEST(SyntheticTopology, ResolveRejectsAMissingNode) {
  Topology topo(kTwoByTwo);
  std::string error;
  EXPECT_FALSE(ResolveRunCpus(topo, {}, 7, &error).has_value());
  EXPECT_EQ(error, "NUMA node 7 does not exist (nodes: 0-3)");
  EXPECT_FALSE(ResolveRunCpus(topo, {0}, -1, &error).has_value());
  EXPECT_EQ(error, "NUMA node -1 does not exist (nodes: 0-3)");
}

TEST(SyntheticTopology, ResolveRejectsACpuOutsideTheMask) {
  Topology topo(kTwoByTwo);
  std::string error;
  EXPECT_FALSE(ResolveRunCpus(topo, {3, 16}, std::nullopt, &error).has_value());
  EXPECT_EQ(error, "CPU 16 is not in this process's allowed CPUs (0-15)");
}

TEST(SyntheticTopology, ResolveRejectsACpuOffTheNode) {
  Topology topo(kTwoByTwo);
  std::string error;
  EXPECT_FALSE(ResolveRunCpus(topo, {0, 5}, 0, &error).has_value());
  EXPECT_EQ(error.rfind("CPU 5 is not on NUMA node 0", 0), 0u) << error;
}

TEST(SyntheticTopology, NodeMemoryComesFromHwloc) {
  // Not this machine's meminfo: the size the description gives (memory=0 would mean hwloc's
  // default of 1 GiB per node).
  Topology topo("package:1 numa:1(memory=12345) core:1 pu:1");
  EXPECT_EQ(topo.summary().nodes.at(0).mem_available, 12345u);
}

TEST(SyntheticTopology, PinningAndBindingAreRefused) {
  Topology topo(kTwoByTwo);
  errno = 0;
  EXPECT_EQ(PinThisThread(topo, 0), -1);
  EXPECT_EQ(errno, ENOSYS);
  Mapping m(4096);
  ASSERT_NE(m.addr, MAP_FAILED);
  std::string error;
  EXPECT_FALSE(BindArea(topo, m.addr, m.len, 0, &error));
  EXPECT_FALSE(error.empty());
}

// ---- ParseCpuList ----------------------------------------------------------------------------

TEST(ParseCpuList, GoodLists) {
  std::string error;
  EXPECT_EQ(ParseCpuList("0", &error), std::vector<int>{0});
  EXPECT_EQ(ParseCpuList("0,2-3", &error), (std::vector<int>{0, 2, 3}));
  EXPECT_EQ(ParseCpuList("5-7,1", &error), (std::vector<int>{5, 6, 7, 1}));
  EXPECT_EQ(ParseCpuList("4-4", &error), std::vector<int>{4});
  // Duplicates are dropped, first occurrence kept.
  EXPECT_EQ(ParseCpuList("1,0-2,1", &error), (std::vector<int>{1, 0, 2}));
}

TEST(ParseCpuList, BadListsNameTheToken) {
  struct Case {
    const char* text;
    const char* names;  // must appear in the error
  };
  for (const Case& c : {Case{"", "empty"}, Case{"a", "'a'"}, Case{"3-1", "'3-1'"},
                        Case{"-1", "'-1'"}, Case{"1,,2", "'1,,2'"}, Case{"1,", "'1,'"},
                        Case{"2x", "'2x'"}, Case{"0-3z", "'0-3z'"}, Case{"1-2-3", "'1-2-3'"},
                        Case{" 1", "' 1'"}, Case{"0-99999999", "'0-99999999'"}}) {
    std::string error;
    EXPECT_FALSE(ParseCpuList(c.text, &error).has_value()) << c.text;
    EXPECT_NE(error.find(c.names), std::string::npos) << c.text << " -> " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
}

// ---- Pinning and binding on the real machine ----------------------------------------------------

TEST(PinThisThread, PinsToEachAllowedCpu) {
  Topology topo;
  for (int cpu : topo.summary().allowed_cpus) {
    int got = -2;
    int err = 0;
    std::thread worker([&] {
      got = PinThisThread(topo, cpu);
      err = errno;
    });
    worker.join();
    EXPECT_EQ(got, cpu) << "errno " << err;
  }
}

TEST(PinThisThread, RefusesACpuOutsideTheMask) {
  Topology topo;
  int got = -2;
  int err = 0;
  std::thread worker([&] {
    got = PinThisThread(topo, 100000);
    err = errno;
  });
  worker.join();
  EXPECT_EQ(got, -1);
  EXPECT_EQ(err, EINVAL);
}

TEST(BindArea, PagesLandOnNodeZero) {
  Topology topo;
  if (!topo.HasNode(0)) GTEST_SKIP() << "this machine has no NUMA node 0";
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Mapping m(16 * page);
  ASSERT_NE(m.addr, MAP_FAILED);
  std::string error;
  ASSERT_TRUE(BindArea(topo, m.addr, m.len, 0, &error)) << error;
  for (std::size_t off = 0; off < m.len; off += page) static_cast<char*>(m.addr)[off] = 1;
  EXPECT_EQ(PageNodes(m.addr, m.len, page), std::vector<int>(16, 0));
}

TEST(BindArea, MovesPagesToTheSecondNode) {
  Topology topo;
  if (topo.summary().nodes.size() < 2) GTEST_SKIP() << "needs two NUMA nodes; this machine has one";
  const int node = topo.summary().nodes[1].os_index;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Mapping m(8 * page);
  ASSERT_NE(m.addr, MAP_FAILED);
  std::string error;
  ASSERT_TRUE(BindArea(topo, m.addr, m.len, node, &error)) << error;
  for (std::size_t off = 0; off < m.len; off += page) static_cast<char*>(m.addr)[off] = 1;
  EXPECT_EQ(PageNodes(m.addr, m.len, page), std::vector<int>(8, node));
}

TEST(BindArea, RejectsAMissingNode) {
  Topology topo;
  Mapping m(4096);
  ASSERT_NE(m.addr, MAP_FAILED);
  std::string error;
  EXPECT_FALSE(BindArea(topo, m.addr, m.len, 999, &error));
  EXPECT_EQ(error.rfind("NUMA node 999 does not exist", 0), 0u) << error;
}

TEST(PageNodes, UntouchedPageIsMinusOne) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Mapping m(2 * page);
  ASSERT_NE(m.addr, MAP_FAILED);
  static_cast<char*>(m.addr)[0] = 1;
  const std::vector<int> nodes = PageNodes(m.addr, m.len, page);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_GE(nodes[0], 0);
  EXPECT_EQ(nodes[1], -1);
}

TEST(PageNodes, StrideSamplesAndEdgeCases) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  Mapping m(8 * page);
  ASSERT_NE(m.addr, MAP_FAILED);
  // A partial last stride still samples its first page.
  EXPECT_EQ(PageNodes(m.addr, 8 * page, 3 * page).size(), 3u);
  EXPECT_TRUE(PageNodes(m.addr, m.len, 0).empty());
  EXPECT_TRUE(PageNodes(m.addr, 0, page).empty());
}

}  // namespace
}  // namespace faultlab
