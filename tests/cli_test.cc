// The faultlab program as a user drives it: bad input, the files a run writes and what they
// hold, pinning, skipped rows, hugetlb pools restored and nothing left when a run is killed, and
// the restore command.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/kernel_features.h"
#include "tests/cli_support.h"
#include "topology/hugetlb.h"

namespace fs = std::filesystem;

namespace {

using namespace faultlab::cli_test;

// A filter for one fast single-worker case.
constexpr const char* kWriteCase = "fault/write/anon4k/.*procs:1/.*threads:1$";

TEST(Cli, BadInputGetsOneLineAndExitCodeTwoAndWritesNothing) {
  ScratchDir scratch;
  const std::string out = (scratch.path() / "never-created").string();
  const std::vector<std::vector<std::string>> bad = {
      {"run", "--no-such-flag"},
      {"run", "--suite", "nosuchsuite"},
      {"run", "--cpu", "4096"},
      {"run", "--cpu", "0-x"},
      {"run", "--node", "999"},
      {"run", "--node", "-1"},
      {"run", "--counters", "page-faults,no-such-event-xyz"},
      {"run", "--reserve-hugepages", "3T:1"},
      {"run", "--filter", "("},
      {"run", "--filter", "matches-no-benchmark"},
      {"run", "--benchmark_no_such_flag=1"},
      // Google Benchmark would print its usage and exit 0 for this one.
      {"run", "--benchmark_format=xml"},
      {"run", "--benchmark_repetitions=abc"},
      {"run", "--benchmark_min_time=1"},
      {"run", "--benchmark_enable_random_interleaving=maybe"},
      {"run", "--benchmark_context=no-equals-sign"},
      {"run", "--suite", "fork", "--cow-pte-prctl", "sixty-five"},
      {"run", "--suite", "fork", "--cow-pte-prctl", "-65"},
      {"run", "--suite", "model", "--cow-pte-prctl", "65"},
      {"run", "--repetitions", "0"},
      {"run", "--repetitions", "many"},
      {"run", "--repetitions", "101"},
      {"frobnicate"},
  };
  for (std::vector<std::string> args : bad) {
    args.push_back("--out");
    args.push_back(out);
    const Outcome outcome = Faultlab(args, scratch);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(outcome.exit_code, 2) << joined << "\n" << outcome.err;
    EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1)
        << joined << ": expected one line, got:\n" << outcome.err;
    EXPECT_FALSE(fs::exists(out)) << joined << " created the output directory";
  }
}

TEST(Cli, RepetitionsSetHowOftenEveryBenchmarkRuns) {
  const RunOutcome run =
      RunAndReadResults({"run", "--quick", "--filter", kWriteCase, "--repetitions", "4"}, {});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const std::vector<nlohmann::json> rows = IterationRows(run.results);
  ASSERT_FALSE(rows.empty());
  std::map<std::string, int> per_benchmark;
  for (const nlohmann::json& row : rows) ++per_benchmark[row["run_name"].get<std::string>()];
  for (const auto& [name, count] : per_benchmark) EXPECT_EQ(count, 4) << name;
}

TEST(Cli, UnwritableOutputDirectoryIsBadInput) {
  ScratchDir scratch;
  const Outcome outcome = Faultlab({"run", "--filter", kWriteCase, "--out", "/proc/faultlab/x"},
                                   scratch);
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_NE(outcome.err.find("/proc/faultlab"), std::string::npos) << outcome.err;
}

TEST(Cli, OutputPathUnderAFileIsBadInput) {
  ScratchDir scratch;
  std::ofstream(scratch.path() / "file") << "x";
  const Outcome outcome = Faultlab(
      {"run", "--filter", kWriteCase, "--out", (scratch.path() / "file" / "out").string()},
      scratch);
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
  EXPECT_NE(outcome.err.find("is not a directory"), std::string::npos) << outcome.err;
}

TEST(Cli, TooManyCountersIsBadInput) {
  ScratchDir scratch;
  std::string counters = "page-faults";
  for (int i = 1; i < 65; ++i) counters += ",page-faults";
  const Outcome outcome = Faultlab({"run", "--counters", counters, "--filter", kWriteCase,
                                    "--out", (scratch.path() / "out").string()},
                                   scratch);
  EXPECT_EQ(outcome.exit_code, 2) << outcome.err;
  EXPECT_EQ(std::count(outcome.err.begin(), outcome.err.end(), '\n'), 1) << outcome.err;
  EXPECT_FALSE(fs::exists(scratch.path() / "out"));
}

// One real run, shared by the tests that read what it wrote. It names its suite twice, which
// must run each benchmark once. Pinned to the first CPU this process may use.
class RunOutput : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir();
    cpu_ = AllowedCpus().empty() ? 0 : AllowedCpus().front();
    const std::string filter = std::string("fault/(write|read_zeropage)/anon4k/.*procs:1/.*threads:1$");
    outcome_ = new Outcome(Faultlab({"run", "--quick", "--suite", "fault,fault", "--filter",
                                     filter, "--cpu", std::to_string(cpu_), "--out",
                                     (scratch_->path() / "out").string()},
                                    *scratch_));
    results_ = new nlohmann::json(ReadResults(scratch_->path() / "out"));
  }
  static void TearDownTestSuite() {
    delete results_;
    delete outcome_;
    delete scratch_;
  }
  static const nlohmann::json* Row(const std::string& name_prefix) {
    for (const auto& run : (*results_)["benchmarks"]) {
      if (run["run_type"] == "iteration" && run["name"].get<std::string>().rfind(name_prefix, 0) == 0) {
        return &run;
      }
    }
    return nullptr;
  }

  static ScratchDir* scratch_;
  static int cpu_;
  static Outcome* outcome_;
  static nlohmann::json* results_;
};
ScratchDir* RunOutput::scratch_ = nullptr;
int RunOutput::cpu_ = 0;
Outcome* RunOutput::outcome_ = nullptr;
nlohmann::json* RunOutput::results_ = nullptr;

TEST_F(RunOutput, WritesJsonCsvAndTopology) {
  ASSERT_EQ(outcome_->exit_code, 0) << outcome_->err;
  const fs::path out = scratch_->path() / "out";
  EXPECT_TRUE(fs::exists(out / "results.json"));
  EXPECT_TRUE(fs::exists(out / "results.csv"));
  EXPECT_EQ(Slurp(out / "topology.xml").rfind("<?xml", 0), 0u);
  for (const auto& entry : fs::directory_iterator(out)) {
    EXPECT_EQ(entry.path().string().find("partial"), std::string::npos) << entry.path();
  }
}

TEST_F(RunOutput, ContextHoldsSchemaEnvironmentTopologyAndCounters) {
  ASSERT_FALSE(results_->is_discarded());
  const nlohmann::json& context = (*results_)["context"];
  EXPECT_EQ(context["schema_version"], 1);
  const nlohmann::json& faultlab = context["faultlab"];
  EXPECT_TRUE(faultlab["environment"]["kernel"].contains("release"));
  EXPECT_TRUE(faultlab["environment"].contains("thp"));
  EXPECT_GE(faultlab["topology"]["pus"].get<int>(), 1);
  EXPECT_EQ(faultlab["options"]["cpus"], nlohmann::json::array({cpu_}));
  EXPECT_EQ(faultlab["options"]["suites"], nlohmann::json::array({"fault"}));
  // Every requested counter either opened or was dropped with a reason.
  for (const auto& name : faultlab["counters"]["requested"]) {
    bool opened = false;
    for (const auto& o : faultlab["counters"]["opened"]) opened = opened || o == name;
    bool dropped = false;
    for (const auto& d : faultlab["counters"]["dropped"]) {
      if (d["name"] == name) {
        dropped = true;
        EXPECT_FALSE(d["reason"].get<std::string>().empty());
      }
    }
    EXPECT_TRUE(opened != dropped) << name;
  }
}

// When each benchmark ran, what `faultlab run --flamegraph` cuts its profile by: one span per
// benchmark, in run order, each ending before the next begins.
TEST_F(RunOutput, BenchmarkSpansCoverEachBenchmarkInRunOrder) {
  ASSERT_FALSE(results_->is_discarded());
  std::vector<std::string> names;
  for (const auto& row : (*results_)["benchmarks"]) {
    const std::string name = row["run_name"].get<std::string>();
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  const nlohmann::json& spans = (*results_)["context"]["faultlab"]["benchmark_spans"];
  ASSERT_EQ(spans.size(), names.size());
  double previous_end = 0;
  for (std::size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(spans[i]["name"], names[i]);
    const double start = spans[i]["start"].get<double>();
    const double end = spans[i]["end"].get<double>();
    EXPECT_LT(start, end) << names[i];
    EXPECT_GE(start, previous_end) << names[i];
    previous_end = end;
  }
}

TEST_F(RunOutput, NamesAndFiguresFollowTheContract) {
  const nlohmann::json* write = Row("fault/write/anon4k/region_mib:64/procs:1/");
  const nlohmann::json* read = Row("fault/read_zeropage/anon4k/region_mib:64/procs:1/");
  ASSERT_NE(write, nullptr);
  ASSERT_NE(read, nullptr);
  for (const nlohmann::json* row : {write, read}) {
    ASSERT_FALSE(row->value("error_occurred", false)) << row->dump();
    EXPECT_LE((*row)["p50_ns"].get<double>(), (*row)["p99_ns"].get<double>());
    EXPECT_LE((*row)["p99_ns"].get<double>(), (*row)["max_ns"].get<double>());
    EXPECT_GT((*row)["first_round_ns"].get<double>(), 0);
    EXPECT_GT((*row)["harness_ns"].get<double>(), 0);
    // Pinned where asked, premise checked.
    EXPECT_NE((*row)["label"].get<std::string>().find("cpus=" + std::to_string(cpu_) + " "),
              std::string::npos)
        << (*row)["label"];
    EXPECT_NE((*row)["label"].get<std::string>().find("premise=verified"), std::string::npos);
  }
}

TEST_F(RunOutput, CountersCrossCheckOnePageFaultPerFault) {
  const nlohmann::json* write = Row("fault/write/anon4k/");
  ASSERT_NE(write, nullptr);
  if (!write->contains("page-faults")) GTEST_SKIP() << "page-faults could not be opened here";
  // N faults touched, about N page-faults counted.
  EXPECT_GT((*write)["page-faults"].get<double>(), 0.95);
  EXPECT_LT((*write)["page-faults"].get<double>(), 1.05);
  EXPECT_LT((*write)["major-faults"].get<double>(), 0.01);
}

// `--suite fault,fault` ran each benchmark once: each repetition of each is one iteration row.
TEST_F(RunOutput, ASuiteNamedTwiceRunsOnce) {
  ASSERT_FALSE(results_->is_discarded());
  std::map<std::pair<std::string, int>, int> seen;
  for (const auto& run : IterationRows(*results_)) {
    ++seen[{run["name"].get<std::string>(), run.value("repetition_index", 0)}];
  }
  EXPECT_FALSE(seen.empty());
  for (const auto& [key, count] : seen) EXPECT_EQ(count, 1) << key.first << " #" << key.second;
}

TEST_F(RunOutput, CsvHasARowPerRunAndTheSchemaColumns) {
  const std::string csv = Slurp(scratch_->path() / "out" / "results.csv");
  std::istringstream lines(csv);
  std::string header;
  std::getline(lines, header);
  for (const char* column : {"name", "suite", "case", "variant", "region_mib", "procs", "threads",
                             "run_type", "real_time", "label", "skipped", "p99_ns",
                             "first_round_ns"}) {
    EXPECT_NE(("," + header + ",").find(std::string(",") + column + ","), std::string::npos)
        << column << " missing from " << header;
  }
  std::size_t rows = 0;
  for (std::string line; std::getline(lines, line);) {
    ++rows;
    EXPECT_EQ(line.rfind("fault/", 0), 0u) << line;
  }
  EXPECT_EQ(rows, (*results_)["benchmarks"].size());
}

// Workers in one mm map their regions side by side; each must still be checked on its own
// (adjacent anonymous mappings merge into one VMA unless kept apart).
TEST(Cli, TwoWorkersEachPassTheirPremise) {
  const std::vector<int> allowed = AllowedCpus();
  if (allowed.size() < 2) {
    GTEST_SKIP() << "needs two CPUs in this process's affinity mask, has " << allowed.size();
  }
  const std::string cpus = std::to_string(allowed[0]) + "," + std::to_string(allowed[1]);
  ScratchDir scratch;
  const fs::path out = scratch.path() / "out";
  const Outcome outcome = Faultlab({"run", "--quick", "--cpu", cpus, "--filter",
                                    "fault/write/anon4k/.*(procs:1/.*threads:2|procs:2/.*threads:1)$",
                                    "--out", out.string()},
                                   scratch);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const nlohmann::json results = ReadResults(out);
  ASSERT_FALSE(results.is_discarded());
  int rows = 0;
  for (const auto& run : IterationRows(results)) {
    ++rows;
    EXPECT_FALSE(Skipped(run)) << run["name"] << ": " << ErrorMessage(run);
    EXPECT_EQ(run.value("workers", 0.0), 2.0) << run["name"];
    EXPECT_NE(run.value("label", "").find("cpus=" + cpus + " "), std::string::npos)
        << run["label"];
  }
  EXPECT_GT(rows, 0);
}

TEST(Cli, MissingHugetlbPagesGiveASkippedRowWithTheReason) {
  if (faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M)) {
    GTEST_SKIP() << *faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M);
  }
  if (faultlab::FreeHugetlbPages(faultlab::kPage2M) >= 32) {
    GTEST_SKIP() << "the 2 MiB pool has free pages here, so nothing is skipped";
  }
  ScratchDir scratch;
  const fs::path out = scratch.path() / "out";
  const Outcome outcome = Faultlab(
      {"run", "--quick", "--filter", "fault/write/hugetlb2m/.*threads:1$", "--out", out.string()},
      scratch);
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::string csv = Slurp(out / "results.csv");
  EXPECT_NE(csv.find("skipped: needs 32 free 2 MiB hugetlb pages"), std::string::npos) << csv;
  EXPECT_NE(csv.find("--reserve-hugepages"), std::string::npos) << csv;
}

// A killed run restores the pools, and leaves no output directory and no worker behind.
TEST(Cli, HugetlbReservationIsRestoredWhenTheRunIsKilled) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to write /proc/sys/vm/nr_hugepages";
  if (faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M)) {
    GTEST_SKIP() << *faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M);
  }
  const std::string pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
  const long before = ReadLong(pool);
  ScratchDir scratch;
  const fs::path journal = scratch.path() / "journal";
  const fs::path out = scratch.path() / "out";
  // The full (not quick) sweep runs long enough to be killed mid-run. With two CPUs each of its
  // benchmarks forks a worker, which must die with the run.
  const bool forks = AllowedCpus().size() >= 2;
  const char* filter = forks ? "fault/write/anon4k/.*procs:2/" : "fault/write/anon4k";
  const pid_t pid = StartFaultlab(
      {"run", "--reserve-hugepages", "2M:8", "--filter", filter, "--out", out.string()}, journal,
      scratch);
  ASSERT_GE(pid, 0);
  // Wait until the pool has grown and the benchmarks run (a forked worker names --out in its
  // command line, as the run does), then kill the run.
  bool reserved = false;
  for (int i = 0; i < 600 && !reserved; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    reserved = ReadLong(pool) >= before + 8 && fs::exists(journal) &&
               Slurp(scratch.path() / "stderr").find("reserved") != std::string::npos &&
               (!forks || ProcessesWith(out.string()).size() >= 2);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(reserved) << Slurp(scratch.path() / "stderr");
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status;
  EXPECT_EQ(ReadLong(pool), before);
  EXPECT_FALSE(fs::exists(journal));
  EXPECT_FALSE(fs::exists(out)) << "a killed run left its output directory behind";
  // Forked workers die with the run: after a grace period no process names the run's --out.
  const std::vector<int> survivors = SurvivorsWith(out.string());
  std::string pids;
  for (int survivor : survivors) pids += " " + std::to_string(survivor);
  EXPECT_TRUE(survivors.empty()) << "processes of the killed run survive:" << pids;
}

TEST(Cli, EnvPrintsTheTableAndJson) {
  ScratchDir scratch;
  Outcome table = Faultlab({"env"}, scratch);
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("kernel.release"), std::string::npos);
  EXPECT_NE(table.out.find("Suites here"), std::string::npos);
  EXPECT_NE(table.out.find("anon4k"), std::string::npos);
  Outcome json = Faultlab({"env", "--json"}, scratch);
  EXPECT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json env = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_FALSE(env.is_discarded());
  EXPECT_EQ(env["schema_version"], 1);
  EXPECT_TRUE(env["warnings"].is_array()) << env["warnings"];
  EXPECT_TRUE(env["emulation"].is_object()) << env["emulation"];
}

TEST(Cli, RestoreFailsAndKeepsADamagedJournal) {
  ScratchDir scratch;
  const fs::path journal = scratch.path() / "journal";
  std::ofstream(journal) << "not a faultlab journal\n";
  setenv("FAULTLAB_JOURNAL", journal.c_str(), 1);
  Outcome outcome = Faultlab({"restore"}, scratch);
  unsetenv("FAULTLAB_JOURNAL");
  EXPECT_EQ(outcome.exit_code, 1) << outcome.out << outcome.err;
  EXPECT_NE(outcome.err.find("damaged"), std::string::npos) << outcome.err;
  EXPECT_TRUE(fs::exists(journal));
}

TEST(Cli, RestoreWithoutJournalSaysSo) {
  ScratchDir scratch;
  setenv("FAULTLAB_JOURNAL", (scratch.path() / "none").c_str(), 1);
  Outcome outcome = Faultlab({"restore"}, scratch);
  unsetenv("FAULTLAB_JOURNAL");
  EXPECT_EQ(outcome.exit_code, 0) << outcome.err;
  EXPECT_NE(outcome.out.find("no restore journal"), std::string::npos) << outcome.out;
}

}  // namespace
