// The fork suite end to end, as a user runs it: each real-kernel fork case either verified what
// it measured (premise checked, the backing its name says, the child ran, page tables where they
// should be) or is a skip row naming its reason; hugetlb runs once the CLI reserves a pool and
// the pool is put back; --cow-pte-prctl is refused by a kernel without COW-PTE without harming
// the rest of the run; and the model's fork rows run beside the kernel's.
//
// Each run is kept small (the smallest size of each backing, one variant at 256 MiB): these
// tests check behaviour, never time. Benchmark names read
// fork/<case>/<backing>/rss_mib:N/iterations:I/repeats:R/manual_time.

#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/kernel_features.h"
#include "tests/cli_support.h"
#include "topology/hugetlb.h"

namespace {

using nlohmann::json;

using namespace faultlab::cli_test;

// `faultlab run --quick --suite fork --filter FILTER --out <scratch>/out` plus `extra`.
RunOutcome RunFork(const std::string& filter, const std::vector<std::string>& extra = {}) {
  return RunAndReadResults({"run", "--quick", "--suite", "fork", "--filter", filter}, extra);
}

// PTE tables of N MiB of 4 KiB pages, in kB: one 4 KiB table per 2 MiB, at least one.
long TablesKb(long mib) { return std::max(1l, mib / 2) * 4; }

// What every fork/ row that ran must show: it checked its premise on the backing its name says,
// and (latency rows) every timed fork ran a child.
void ExpectVerified(const json& row, bool page_faults_opened) {
  const std::string name = row["name"];
  SCOPED_TRACE(name);
  ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
  const std::vector<std::string> parts = Split(name);
  ASSERT_GE(parts.size(), 4u);
  const std::string& which = parts[1];
  // The floors name their spawn, not a backing: they fork from an anon4k parent.
  const std::string backing = which == "latency_floor" ? "anon4k" : parts[2];
  const std::string label = row.value("label", "");
  EXPECT_NE(label.find("premise=verified"), std::string::npos) << label;
  EXPECT_NE(label.find("backing=" + backing + " "), std::string::npos) << label;
  if (page_faults_opened) {
    ASSERT_TRUE(row.contains("page-faults")) << row.dump();
  }
  if (which.rfind("latency", 0) != 0) {
    // A write after fork: on anon4k each timed write is one fault (a copy, or a reuse).
    if (page_faults_opened && backing == "anon4k" && which != "child_write") {
      EXPECT_GT(row["page-faults"].get<double>(), 0.5);
    }
    return;
  }

  EXPECT_EQ(row.value("forks", -1.0), row["iterations"].get<double>());
  const bool posix_spawn = which == "latency_floor" && parts[2] == "posix_spawn";
  const bool vfork = which == "latency_floor" && parts[2] == "vfork";
  if (posix_spawn) {
    EXPECT_FALSE(row.contains("child_runs_ns")) << "posix_spawn has no stamp from the child";
  } else {
    EXPECT_GT(row.value("child_runs_ns", 0.0), 0) << "the child never ran";
  }
  // fork write-protects the parent's stack: its next write after fork() faults, every time
  // (vfork and posix_spawn share the parent's mm: no write-protect). The counters count the
  // parent; the child's own faults are its rusage: a forked child faults in at least the page it
  // stamps, an exec'd one its program.
  if (page_faults_opened && !vfork && !posix_spawn) {
    EXPECT_GT(row["page-faults"].get<double>(), 0.5);
  }
  if (!vfork) {
    EXPECT_GE(row.value("child_page_faults", 0.0), 1.0);
  }
  if (!vfork && !posix_spawn) {
    EXPECT_GT(row.value("parent_vmpte_kb", 0.0), 0);
    EXPECT_GT(row.value("child_vmpte_kb", 0.0), 0);
  }
}

// Each check below reads one run: the smallest case of each backing, the DONTFORK variant at
// 256 MiB, the floors, the parent's write after fork, the COW-PTE cases with prctl 65
// (PR_SET_MDWE on this kernel) and the model's fork rows. (One test drives them all: CTest runs
// every test in a process of its own, so a fixture shared by several would run faultlab again
// for each.)

// The run's cases. Under TSan vfork becomes fork, and a fork copies the page tables of the
// shadow memory too: the vfork floor at 256 MiB alone takes about 20 s there, so that build
// leaves it to the others.
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif
struct Plan {
  std::string filter;
  std::vector<std::string> must_run;  // name prefixes that must run and verify here
};
Plan RunPlan() {
  Plan plan{"fork/latency/(anon4k|shmem|file_ro)/rss_mib:1/|"
            "fork/latency/(thp|hugetlb2m)/rss_mib:2/|fork/latency_dontfork/|"
            "fork/latency_floor/posix_spawn/|fork/parent_write/anon4k/|"
            "fork/latency_cow_pte/anon4k/rss_mib:1/|model/fork/(classic|cow_pte_lazy)/rss_mib:4/",
            {"fork/latency/anon4k/rss_mib:1/", "fork/latency/shmem/rss_mib:1/",
             "fork/latency/file_ro/rss_mib:1/", "fork/latency_dontfork/anon4k/rss_mib:256/",
             "fork/latency_floor/posix_spawn/", "fork/parent_write/anon4k/"}};
  if (!kThreadSanitizer) {
    plan.filter += "|fork/latency_floor/vfork/";
    plan.must_run.push_back("fork/latency_floor/vfork/");
  }
  return plan;
}

// Every case that can run here ran and verified; anything else is a skip with its reason.
void CheckEveryCaseThatShouldRunVerified(const json& results, const Plan& plan) {
  const bool page_faults = CounterOpened(results, "page-faults");
  for (const std::string& prefix : plan.must_run) {
    const std::vector<json> rows = IterationRows(results, prefix);
    EXPECT_FALSE(rows.empty()) << prefix << " did not run";
    for (const json& row : rows) ExpectVerified(row, page_faults);
  }
  const std::vector<json> thp = IterationRows(results, "fork/latency/thp/rss_mib:2/");
  EXPECT_FALSE(thp.empty());
  for (const json& row : thp) {
    if (faultlab::WhyUnavailable(faultlab::Feature::kThp)) {
      ExpectSkipWithReason(row, "");
    } else {
      ExpectVerified(row, page_faults);
    }
  }
  for (const json& row : IterationRows(results, "fork/")) {
    if (Skipped(row)) ExpectSkipWithReason(row, "");
  }
}

// A plain anon4k child holds a copy of the region's tables; a DONTFORK child goes without them.
void CheckAnon4kTables(const json& results) {
  const std::vector<json> plain = IterationRows(results, "fork/latency/anon4k/");
  ASSERT_FALSE(plain.empty());
  for (const json& row : plain) {
    if (Skipped(row)) continue;  // reported by CheckEveryCaseThatShouldRunVerified
    const long tables = TablesKb(NamedArg(row["name"], "rss_mib"));
    EXPECT_GE(row["parent_vmpte_kb"].get<double>(), tables) << row.dump();
    EXPECT_GE(row["child_vmpte_kb"].get<double>(), tables) << row.dump();
  }
  const std::vector<json> dontfork = IterationRows(results, "fork/latency_dontfork/anon4k/");
  ASSERT_FALSE(dontfork.empty());
  for (const json& row : dontfork) {
    if (Skipped(row)) continue;
    const long tables = TablesKb(NamedArg(row["name"], "rss_mib"));
    const double parent = row["parent_vmpte_kb"].get<double>();
    EXPECT_GE(parent, tables) << row.dump();
    EXPECT_LE(row["child_vmpte_kb"].get<double>(), parent - static_cast<double>(tables) / 2)
        << row.dump();
  }
}

// hugetlb2m without free pages in the pool: skipped, naming hugetlb and the flag that fixes it.
void CheckHugetlbWithoutAPoolIsSkipped(const json& results, long free_before) {
  if (faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M) || free_before >= 1) {
    return;  // nothing to skip, or nothing to run
  }
  const std::vector<json> rows = IterationRows(results, "fork/latency/hugetlb2m/rss_mib:2/");
  ASSERT_FALSE(rows.empty());
  for (const json& row : rows) {
    ASSERT_TRUE(Skipped(row)) << row.dump();
    ExpectSkipWithReason(row, "hugetlb");
    ExpectSkipWithReason(row, "--reserve-hugepages");
  }
}

// 65 is PR_SET_MDWE in mainline: prctl(65, 0, ...) succeeds and sets nothing, and the host's
// probe finds fork still copying page tables. The prctl ran in the host process only: the run
// exits 0 and its other rows verified.
void CheckCowPte65IsSkipped(const json& results) {
  const std::vector<json> rows = IterationRows(results, "fork/latency_cow_pte/anon4k/");
  ASSERT_FALSE(rows.empty());
  for (const json& row : rows) {
    ASSERT_TRUE(Skipped(row)) << "a COW-PTE fork ran on a kernel without COW-PTE: " << row.dump();
    ExpectSkipWithReason(row, "succeeded but fork still copies page tables");
  }
}

// The fork suite runs the model's fork cases beside the kernel's when the model suite is not
// selected: lazy COW-PTE shares the child's PTE tables, classic fork shares none.
void CheckModelForkRowsRanBeside(const json& results) {
  const std::vector<json> lazy = IterationRows(results, "model/fork/cow_pte_lazy/rss_mib:4/");
  const std::vector<json> classic = IterationRows(results, "model/fork/classic/rss_mib:4/");
  ASSERT_FALSE(lazy.empty()) << "no model/fork rows in a fork suite run";
  ASSERT_FALSE(classic.empty());
  for (const json& row : lazy) {
    ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
    EXPECT_GT(row.value("child_shared_pte_tables", 0.0), 0) << row.dump();
  }
  for (const json& row : classic) {
    ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
    EXPECT_EQ(row.value("child_shared_pte_tables", -1.0), 0) << row.dump();
  }
}

TEST(CliFork, QuickRunVerifiesEachCaseOrSkipsItWithTheReason) {
  const long hugetlb_free_before = faultlab::FreeHugetlbPages(faultlab::kPage2M);
  const Plan plan = RunPlan();
  const RunOutcome outcome = RunFork(plan.filter, {"--cow-pte-prctl", "65"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  ASSERT_FALSE(outcome.results.is_discarded()) << outcome.err;
  {
    SCOPED_TRACE("every case verified or skipped with a reason");
    CheckEveryCaseThatShouldRunVerified(outcome.results, plan);
  }
  {
    SCOPED_TRACE("anon4k page tables in parent and child");
    CheckAnon4kTables(outcome.results);
  }
  {
    SCOPED_TRACE("hugetlb without a pool");
    CheckHugetlbWithoutAPoolIsSkipped(outcome.results, hugetlb_free_before);
  }
  {
    SCOPED_TRACE("--cow-pte-prctl 65");
    CheckCowPte65IsSkipped(outcome.results);
  }
  {
    SCOPED_TRACE("model fork rows");
    CheckModelForkRowsRanBeside(outcome.results);
  }
}

TEST(CliFork, CowPtePrctlThatDoesNotExistIsSkippedWithItsError) {
  const RunOutcome outcome =
      RunFork("fork/latency_cow_pte/anon4k/rss_mib:1/", {"--cow-pte-prctl", "1000"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<json> rows = IterationRows(outcome.results, "fork/latency_cow_pte/");
  ASSERT_FALSE(rows.empty()) << outcome.err;
  for (const json& row : rows) {
    ASSERT_TRUE(Skipped(row)) << row.dump();
    ExpectSkipWithReason(row, "prctl(1000, 0, 0, 0, 0): Invalid argument");
  }
}

// With a pool reserved through the CLI the hugetlb case runs and checks its premise, and the
// pool is as it was once the run is over.
TEST(CliFork, HugetlbRunsWithAReservedPoolAndThePoolIsRestored) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to write /proc/sys/vm/nr_hugepages";
  if (auto why = faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M)) GTEST_SKIP() << *why;
  const std::string pool = "/proc/sys/vm/nr_hugepages";
  const long before = ReadLong(pool);
  // rss_mib:2 is one 2 MiB page; the child only exits, so it needs no copy.
  const RunOutcome outcome =
      RunFork("fork/latency/hugetlb2m/rss_mib:2/", {"--reserve-hugepages", "2M:2"});
  EXPECT_EQ(ReadLong(pool), before) << "the run left the pool changed";
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<json> rows = IterationRows(outcome.results, "fork/latency/hugetlb2m/");
  ASSERT_FALSE(rows.empty()) << outcome.err;
  const bool page_faults = CounterOpened(outcome.results, "page-faults");
  for (const json& row : rows) ExpectVerified(row, page_faults);
}

}  // namespace
