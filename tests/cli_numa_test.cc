// The numa suite end to end, as a user runs it: `faultlab run --quick --suite numa`. Every row
// either ran with its placement verified and plausible positive figures, or is a skip row whose
// reason names what is missing (a second node with memory, free hugetlb pages, a policy the
// kernel lacks). A failed premise (a row whose message is not "skipped: ...") fails the test.
// The rows expected follow from the machine's node counts.
//
// The hinting rows turn kernel.numa_balancing on only in a run given --numa-balancing: without
// it they are skip rows naming the flag; with it they run, and the machine's value is back after
// the run, and after a run killed with SIGTERM while a row had it on. Those tests point
// FAULTLAB_JOURNAL at a scratch file and hold the cli_ tests' resource lock (tests/CMakeLists.txt).
//
// These tests check behaviour, never time.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/kernel_features.h"
#include "bench/numa_probe.h"
#include "tests/cli_support.h"

namespace {

using nlohmann::json;
using namespace faultlab::cli_test;

// `faultlab run --quick --suite numa --out <scratch>/out` plus `args`.
RunOutcome RunQuick(const std::vector<std::string>& args) {
  return RunAndReadResults({"run", "--quick", "--suite", "numa"}, args);
}

// The nodes of the CPUs the run uses (no --cpu: every allowed CPU).
std::set<int> CpuNodesOfThisProcess() {
  std::set<int> nodes;
  for (int node : faultlab::NodesWithCpus()) {
    if (!faultlab::AllowedCpusOfNode(node).empty()) nodes.insert(node);
  }
  return nodes;
}

bool HasMemory(long node) {
  const std::vector<int> memory = faultlab::NodesWithMemory();
  return std::find(memory.begin(), memory.end(), node) != memory.end() ||
         (memory.empty() && node == 0);
}

// The reason a skip row must name, by what it is.
void ExpectSkipNamesWhatIsMissing(const json& row, std::size_t memory_nodes) {
  const std::string name = row["name"];
  const std::string message = ErrorMessage(row);
  SCOPED_TRACE(name + ": " + message);
  ASSERT_EQ(message.rfind("skipped: ", 0), 0u) << "a failed row, not a skip";
  const std::vector<std::string> parts = Split(name);
  const bool two_nodes = parts[1] == "move_pages" || parts[1] == "mbind_move" ||
                         parts[1] == "migrate_pages" || parts[2] == "preferred" ||
                         (parts[1] == "hinting" && !HasMemory(NamedArg(name, "mem_node")));
  if (two_nodes && memory_nodes < 2) {
    EXPECT_NE(message.find("needs a second NUMA node with memory; this machine has 1"),
              std::string::npos);
    return;
  }
  if (parts[1] == "hinting") {
    // The flag, or what the kernel lacks for it (/proc/sys/kernel/numa_balancing).
    EXPECT_NE(message.find("numa_balancing"), std::string::npos);
    return;
  }
  if (parts[2] == "weighted_interleave") {
    EXPECT_NE(message.find("MPOL_WEIGHTED_INTERLEAVE"), std::string::npos);
    return;
  }
  if (name.find("/hugetlb2m/") != std::string::npos) {
    EXPECT_NE(message.find("hugetlb"), std::string::npos);
    return;
  }
  if (name.find("/thp/") != std::string::npos) {
    EXPECT_NE(message.find("THP"), std::string::npos);
    return;
  }
  ADD_FAILURE() << "a row that should run here was skipped";
}

void ExpectRanVerified(const json& row, std::size_t memory_nodes) {
  const std::string name = row["name"];
  SCOPED_TRACE(name);
  const std::vector<std::string> parts = Split(name);
  const std::string label = row.value("label", "");
  ASSERT_EQ(label.rfind("placement=verified ", 0), 0u) << label;
  const std::string& what = parts[1];
  if (what == "first_touch" || what == "latency" || what == "bandwidth") {
    const long mem = NamedArg(name, "mem_node");
    ASSERT_GE(mem, 0);
    EXPECT_NE(label.find(" node=" + std::to_string(mem) + " "), std::string::npos) << label;
    EXPECT_NE(label.find(" backing=" + parts[2]), std::string::npos) << label;
    if (what == "first_touch") {
      const double per_fault = Counter(row, "ns_per_fault");
      EXPECT_GT(per_fault, 50);
      EXPECT_LT(per_fault, 10e6);
      EXPECT_GT(Counter(row, "first_round_ns"), 0);
      const double pages = Counter(row, "pages");
      EXPECT_EQ(pages, NamedArg(name, "region_mib") * 1048576.0 /
                           (parts[2] == "anon4k" ? 4096 : 2097152));
      EXPECT_EQ(Counter(row, "pages_node" + std::to_string(mem)), pages);
      EXPECT_NEAR(row["real_time"].get<double>(), per_fault, per_fault * 0.01);
    } else if (what == "latency") {
      const double ns = Counter(row, "ns_per_load");
      EXPECT_GT(ns, 1);
      EXPECT_LT(ns, 10000);
      EXPECT_LE(Counter(row, "ns_per_load_min"), ns);
    } else {
      const double gbps = Counter(row, "gb_per_s");
      EXPECT_GT(gbps, 0.1);
      EXPECT_LT(gbps, 2000);
      EXPECT_GE(Counter(row, "gb_per_s_best"), gbps);
    }
    return;
  }
  if (what == "policy") {
    const std::string& policy = parts[2];
    EXPECT_NE(label.find(" policy=" + policy), std::string::npos) << label;
    const double pages = Counter(row, "pages");
    EXPECT_GT(Counter(row, "ns_per_fault"), 50);
    double counted = 0;
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key().rfind("pages_node", 0) == 0) counted += it.value().get<double>();
    }
    EXPECT_EQ(counted, pages);
    // Preferred and the interleaves also chase and stream over a region their policy placed.
    const bool loads_too = policy == "preferred" || policy == "interleave" ||
                           policy == "weighted_interleave";
    EXPECT_EQ(NamedArg(name, "chase_mib") > 0, loads_too);
    if (loads_too) {
      EXPECT_GT(Counter(row, "ns_per_load"), 1);
      EXPECT_LT(Counter(row, "ns_per_load"), 10000);
      EXPECT_GT(Counter(row, "gb_per_s"), 0.1);
    } else {
      EXPECT_FALSE(row.contains("ns_per_load"));
    }
    if (policy == "local") {
      const long cpu_node = NamedArg(name, "cpu_node");
      EXPECT_EQ(Counter(row, "pages_node" + std::to_string(cpu_node)), pages);
    } else if (policy == "bind" || policy == "preferred") {
      EXPECT_EQ(Counter(row, "pages_node" + std::to_string(NamedArg(name, "target"))), pages);
    } else {
      EXPECT_EQ(NamedArg(name, "nodes"), static_cast<long>(memory_nodes));
      if (memory_nodes == 1) {
        EXPECT_NE(label.find("interleave_over_one_node"), std::string::npos) << label;
      }
    }
    return;
  }
  if (what == "protnone_analogue") {
    const long mem = NamedArg(name, "mem_node");
    EXPECT_NE(label.find(" node=" + std::to_string(mem) + " "), std::string::npos) << label;
    EXPECT_NE(label.find(" handler=mprotect_page_rw"), std::string::npos) << label;
    const double per_fault = Counter(row, "ns_per_fault");
    EXPECT_GT(per_fault, 50);
    EXPECT_LT(per_fault, 10e6);
    EXPECT_EQ(Counter(row, "pages"), NamedArg(name, "region_mib") * 256.0);
    EXPECT_GT(Counter(row, "first_round_ns"), 0);
    EXPECT_GT(Counter(row, "harness_ns"), 0);
    EXPECT_NEAR(row["real_time"].get<double>(), per_fault, per_fault * 0.01);
    return;
  }
  if (what == "hinting") {
    const long cpu_node = NamedArg(name, "cpu_node");
    const long mem = NamedArg(name, "mem_node");
    EXPECT_NE(label.find(" node=" + std::to_string(mem) + " "), std::string::npos) << label;
    EXPECT_NE(label.find(" numa_balancing=1 set_by="), std::string::npos) << label;
    EXPECT_NE(label.find(" vmstat=machine_wide"), std::string::npos) << label;
    const double pages = Counter(row, "pages");
    EXPECT_EQ(pages, NamedArg(name, "region_mib") * 256.0);
    // The region's faults, each one a hinting fault the machine counted too.
    const double hints = Counter(row, "hint_faults");
    EXPECT_GT(hints, 0);
    EXPECT_LE(hints, Counter(row, "vmstat_numa_hint_faults"));
    EXPECT_GT(Counter(row, "pages_hinted"), 0);
    EXPECT_LE(Counter(row, "pages_hinted"), pages);
    EXPECT_DOUBLE_EQ(Counter(row, "hint_faults_per_page"), hints / pages);
    EXPECT_GT(Counter(row, "p50_ns"), 50);
    EXPECT_NEAR(row["real_time"].get<double>(), Counter(row, "ns_per_fault"),
                Counter(row, "ns_per_fault") * 0.01);
    double counted = 0;
    for (auto it = row.begin(); it != row.end(); ++it) {
      if (it.key().rfind("pages_node", 0) == 0) counted += it.value().get<double>();
    }
    EXPECT_EQ(counted, pages);
    if (cpu_node == mem) {
      // Nowhere to migrate to: every page stays where it was placed.
      EXPECT_EQ(Counter(row, "pages_node" + std::to_string(mem)), pages);
      EXPECT_EQ(Counter(row, "migrated_per_page"), 0);
      EXPECT_FALSE(row.contains("converged"));
    } else if (Counter(row, "converged") == 1) {
      EXPECT_GT(Counter(row, "converge_ms"), 0);
      EXPECT_GE(Counter(row, "cpu_node_share"), 0.9);
    } else {
      EXPECT_FALSE(row.contains("converge_ms"));
      EXPECT_NE(label.find(" not_converged_in="), std::string::npos) << label;
    }
    return;
  }
  // Migration rows.
  EXPECT_NE(label.find(" data=verified"), std::string::npos) << label;
  EXPECT_GT(Counter(row, "pages_per_s"), 0);
  EXPECT_GT(Counter(row, "ns_per_page"), 0);
}

TEST(CliNuma, QuickRunVerifiesEveryRowOrSkipsItWithTheReason) {
  const RunOutcome outcome = RunQuick({});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  ASSERT_FALSE(outcome.results.is_discarded()) << outcome.err;
  const std::size_t memory_nodes = faultlab::NodesWithMemory().size();
  const std::set<int> cpu_nodes = CpuNodesOfThisProcess();
  ASSERT_GE(memory_nodes, 1u);
  ASSERT_GE(cpu_nodes.size(), 1u);
  const std::size_t m = memory_nodes, c = cpu_nodes.size();

  std::map<std::string, std::size_t> per_case;
  std::size_t ran = 0;
  // The model's NUMA rows run beside the suite's (the model suite is not in this run).
  const std::vector<json> model_rows = IterationRows(outcome.results, "model/");
  EXPECT_FALSE(model_rows.empty());
  for (const json& row : model_rows) {
    const std::string name = row["name"];
    EXPECT_TRUE(name.rfind("model/migrate/", 0) == 0 || name.rfind("model/numa_", 0) == 0)
        << name;
    EXPECT_FALSE(Skipped(row)) << name << ": " << ErrorMessage(row);
  }
  const std::vector<json> rows = IterationRows(outcome.results, "numa/");
  ASSERT_EQ(rows.size() + model_rows.size(), IterationRows(outcome.results).size());
  for (const json& row : rows) {
    const std::string name = row["name"];
    const std::vector<std::string> parts = Split(name);
    ASSERT_GE(parts.size(), 4u) << name;
    per_case[parts[1] == "policy" ? "policy/" + parts[2] : parts[1]]++;
    if (Skipped(row)) {
      ExpectSkipNamesWhatIsMissing(row, m);
    } else {
      ExpectRanVerified(row, m);
      ++ran;
    }
  }
  // Three repetitions of each row.
  const std::size_t pairs = m > 1 ? m * (m - 1) : 1;
  std::size_t preferred = 0;
  if (m > 1) {
    for (int node : cpu_nodes) {
      const std::vector<int> memory = faultlab::NodesWithMemory();
      preferred += m - (std::find(memory.begin(), memory.end(), node) != memory.end() ? 1 : 0);
    }
  } else {
    preferred = c;
  }
  EXPECT_EQ(per_case["first_touch"], 3 * 3 * c * m);
  EXPECT_EQ(per_case["latency"], 3 * 3 * c * m);
  EXPECT_EQ(per_case["bandwidth"], 3 * 3 * c * m);
  EXPECT_EQ(per_case["policy/local"], 3 * c);
  EXPECT_EQ(per_case["policy/bind"], 3 * c * m);
  EXPECT_EQ(per_case["policy/preferred"], 3 * preferred);
  EXPECT_EQ(per_case["policy/interleave"], 3 * c);
  EXPECT_EQ(per_case["policy/weighted_interleave"], 3 * c);
  EXPECT_EQ(per_case["move_pages"], 3 * 3 * 3 * pairs);
  EXPECT_EQ(per_case["mbind_move"], 3 * 3 * pairs);
  EXPECT_EQ(per_case["migrate_pages"], 3 * pairs);
  // One repetition of each hinting cell in --quick; a skip row naming node 1 on one node.
  EXPECT_EQ(per_case["hinting"], c * (m > 1 ? m : 2));
  EXPECT_EQ(per_case["protnone_analogue"], 3 * c);
  // At least the 4 KiB matrix cells and local and bind policies run anywhere.
  EXPECT_GE(ran, 3 * (3 * c * m + c + c * m));
}

// The hugetlb2m rows run when the pool has pages: reserved for the run, restored after.
TEST(CliNuma, HugetlbRowsRunWithReservedPages) {
  const std::vector<int> memory = faultlab::NodesWithMemory();
  if (memory.size() > 1) GTEST_SKIP() << "reserves the global pool: one node with memory only";
  const std::string pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
  const long before = ReadLong(pool);
  if (before < 0) GTEST_SKIP() << "no 2 MiB hugetlb pool";
  const RunOutcome outcome =
      RunQuick({"--filter", "numa/(first_touch|latency|bandwidth)/hugetlb2m/",
                "--reserve-hugepages", "2M:64"});
  // Pools are machine-wide: another faultlab holding the restore journal keeps this one out.
  if (outcome.exit_code == 1 && outcome.err.find("running faultlab") != std::string::npos) {
    GTEST_SKIP() << "another faultlab is changing settings: " << outcome.err;
  }
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_EQ(ReadLong(pool), before) << "the pool was not restored";
  const std::vector<json> rows = IterationRows(outcome.results);
  EXPECT_EQ(rows.size(), 3u * 3 * CpuNodesOfThisProcess().size());
  for (const json& row : rows) {
    ASSERT_FALSE(Skipped(row)) << row["name"] << ": " << ErrorMessage(row);
    ExpectRanVerified(row, memory.size());
  }
}

// Rows of the hinting case that have a memory node here (a skip row names the one it lacks).
std::vector<json> HintingRowsWithMemory(const json& results) {
  std::vector<json> rows;
  for (const json& row : IterationRows(results, "numa/hinting/")) {
    if (HasMemory(NamedArg(row["name"], "mem_node"))) rows.push_back(row);
  }
  return rows;
}

TEST(CliNuma, NumaBalancingWithoutTheNumaSuiteIsBadInput) {
  ScratchDir scratch;
  const fs::path out = scratch.path() / "never-created";
  const Outcome outcome =
      Faultlab({"run", "--suite", "fork", "--numa-balancing", "--out", out.string()}, scratch);
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
  EXPECT_NE(outcome.err.find("--numa-balancing"), std::string::npos) << outcome.err;
  EXPECT_FALSE(fs::exists(out));
}

// Without --numa-balancing the hinting rows skip, naming the flag, and numa_balancing is not
// touched; the protnone analogue needs nothing and runs.
TEST(CliNuma, HintingRowsSkipWithoutTheFlag) {
  const long before = ReadLong(faultlab::kNumaBalancingPath);
  const RunOutcome outcome = RunQuick({"--filter", "numa/(hinting|protnone_analogue)/"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_EQ(ReadLong(faultlab::kNumaBalancingPath), before);
  const std::vector<json> hinting = IterationRows(outcome.results, "numa/hinting/");
  ASSERT_FALSE(hinting.empty());
  for (const json& row : hinting) {
    ASSERT_TRUE(Skipped(row)) << row["name"];
    if (HasMemory(NamedArg(row["name"], "mem_node"))) {
      ExpectSkipWithReason(row, faultlab::WhyUnavailable(faultlab::Feature::kNumaBalancing)
                                    ? "numa_balancing"
                                    : "--numa-balancing");
    } else {
      ExpectSkipWithReason(row, "needs a second NUMA node with memory");
    }
  }
  const std::vector<json> analogue = IterationRows(outcome.results, "numa/protnone_analogue/");
  ASSERT_FALSE(analogue.empty());
  for (const json& row : analogue) {
    ASSERT_FALSE(Skipped(row)) << row["name"] << ": " << ErrorMessage(row);
    ExpectRanVerified(row, faultlab::NodesWithMemory().size());
  }
  EXPECT_EQ(outcome.results["context"]["faultlab"]["options"]["numa_balancing_opt_in"], false);
}

// Points FAULTLAB_JOURNAL at a scratch file for the test's runs (they inherit the environment).
class ScratchJournal {
 public:
  explicit ScratchJournal(const ScratchDir& scratch) : path_(scratch.path() / "journal") {
    setenv("FAULTLAB_JOURNAL", path_.c_str(), 1);
  }
  ~ScratchJournal() { unsetenv("FAULTLAB_JOURNAL"); }
  ScratchJournal(const ScratchJournal&) = delete;
  ScratchJournal& operator=(const ScratchJournal&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A sanitizer's shadow mappings are terabytes of VMAs: the NUMA scanner, a slice of the address
// space per period, may spend a short window there and never reach the region. Such a build
// may skip a hinting row for that reason; others must run it.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitizerShadow = true;
#else
constexpr bool kSanitizerShadow = false;
#endif

// With the flag the hinting rows run with numa_balancing on, and the machine's value is back
// after the run; the environment records the machine's value, the options the opt-in.
TEST(CliNuma, HintingRowsRunWithTheFlagAndPutNumaBalancingBack) {
  if (auto why = faultlab::WhyUnavailable(faultlab::Feature::kNumaBalancing)) GTEST_SKIP() << *why;
  const long before = ReadLong(faultlab::kNumaBalancingPath);
  ScratchDir scratch;
  ScratchJournal journal(scratch);
  const RunOutcome outcome = RunQuick({"--numa-balancing", "--filter", "numa/hinting/"});
  EXPECT_EQ(ReadLong(faultlab::kNumaBalancingPath), before) << "numa_balancing not put back";
  EXPECT_FALSE(fs::exists(journal.path()));
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<json> rows = HintingRowsWithMemory(outcome.results);
  ASSERT_FALSE(rows.empty());
  const std::string set_by = before == 1 ? " set_by=machine"
                                         : " set_by=faultlab machine_value=" +
                                               std::to_string(before);
  for (const json& row : rows) {
    if (kSanitizerShadow && Skipped(row) &&
        ErrorMessage(row).find("the NUMA scanner did not reach the region") != std::string::npos) {
      continue;
    }
    ASSERT_FALSE(Skipped(row)) << row["name"] << ": " << ErrorMessage(row);
    ExpectRanVerified(row, faultlab::NodesWithMemory().size());
    EXPECT_NE(row.value("label", "").find(set_by), std::string::npos) << row["label"];
  }
  const json& context = outcome.results["context"]["faultlab"];
  EXPECT_EQ(context["options"]["numa_balancing_opt_in"], true);
  EXPECT_EQ(context["environment"]["numa_balancing"], before);
}

// A run killed with SIGTERM while a hinting row has numa_balancing on puts the machine's value
// back and removes its journal; its measuring child dies with it.
TEST(CliNuma, NumaBalancingIsRestoredWhenTheRunIsKilled) {
  if (auto why = faultlab::WhyUnavailable(faultlab::Feature::kNumaBalancing)) GTEST_SKIP() << *why;
  const long before = ReadLong(faultlab::kNumaBalancingPath);
  if (before == 1) GTEST_SKIP() << "numa_balancing is 1 on this machine: a run changes nothing";
  const std::vector<int> memory = faultlab::NodesWithMemory();
  const int node = memory.empty() ? 0 : memory.front();
  ScratchDir scratch;
  const fs::path journal = scratch.path() / "journal";
  const fs::path out = scratch.path() / "out";
  const std::string filter =
      "numa/hinting/anon4k/cpu_node:[0-9]+/mem_node:" + std::to_string(node) + "/";
  const pid_t pid = StartFaultlab({"run", "--quick", "--suite", "numa", "--numa-balancing",
                                   "--filter", filter, "--out", out.string()},
                                  journal, scratch);
  ASSERT_GE(pid, 0);
  // Wait until the row has numa_balancing on and its measuring child runs (the child is a fork
  // of the run: its command line names --out too).
  bool on = false;
  for (int i = 0; i < 1200 && !on; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    on = ReadLong(faultlab::kNumaBalancingPath) == 1 && fs::exists(journal) &&
         ProcessesWith(out.string()).size() >= 2;
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const long after = ReadLong(faultlab::kNumaBalancingPath);
  if (after != before) {
    // The test failed; the journal still puts the machine back.
    ScratchDir restore_scratch;
    ScratchJournal restore_journal(scratch);
    Faultlab({"restore"}, restore_scratch);
  }
  ASSERT_TRUE(on) << Slurp(scratch.path() / "stderr");
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status;
  EXPECT_EQ(after, before);
  EXPECT_FALSE(fs::exists(journal));
  EXPECT_FALSE(fs::exists(out)) << "a killed run left its output directory behind";
  const std::vector<int> survivors = SurvivorsWith(out.string());
  EXPECT_TRUE(survivors.empty()) << survivors.size() << " processes of the killed run survive";
}

}  // namespace
