// The uffd suite end to end, as a user runs it: every case writes its rows, and each row either
// verified what it measured (premise=verified in its label, the figures the suite promises beside
// it) or is a skip row naming its reason: a feature the kernel lacks, a second CPU for other_cpu,
// or free hugetlb pages (naming the --reserve-hugepages that fixes it). With a pool reserved
// through the CLI the hugetlb rows run, and the pool is put back.
//
// These tests check behaviour, never time. Benchmark names read
// uffd/<case>/<memory>/handler:<mode>/pages:N/iterations:I/repeats:R/manual_time.

#include <linux/userfaultfd.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/kernel_features.h"
#include "bench/uffd_uapi.h"
#include "tests/cli_support.h"
#include "topology/hugetlb.h"

namespace {

using nlohmann::json;

using namespace faultlab::cli_test;

constexpr int kRounds = 8;  // the suite's measured rounds per repetition

// `faultlab run --quick --suite uffd --out <scratch>/out` plus `extra`.
RunOutcome RunUffd(const std::vector<std::string>& extra) {
  return RunAndReadResults({"run", "--quick", "--suite", "uffd"}, extra);
}

// --cpu with two CPUs where there are two, so other_cpu runs; else one.
std::string CpuFlag() {
  const std::vector<int> cpus = AllowedCpus();
  return cpus.size() >= 2 ? std::to_string(cpus[0]) + "," + std::to_string(cpus[1])
                          : std::to_string(cpus.at(0));
}

// One benchmark of the suite, as the test expects it.
struct Row {
  std::string c, memory, mode;
  long pages;
  std::string Prefix() const {
    return "uffd/" + c + "/" + memory + "/handler:" + mode + "/pages:" + std::to_string(pages) + "/";
  }
};

std::vector<Row> Rows() {
  std::vector<Row> rows;
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"missing_copy", {"anon4k", "shmem", "hugetlb2m"}},
      {"missing_zeropage", {"anon4k", "shmem", "hugetlb2m"}},
      {"minor_continue", {"shmem", "hugetlb2m"}},
      {"wp", {"anon4k", "shmem", "hugetlb2m"}},
      {"wp_marker", {"shmem", "hugetlb2m"}},
      {"wp_unpopulated", {"anon4k", "shmem", "hugetlb2m"}},
      {"move", {"anon4k"}}};
  for (const auto& [c, memories] : cases) {
    for (const std::string& memory : memories) {
      for (const char* mode : {"same_cpu", "other_cpu", "sigbus"}) {
        rows.push_back({c, memory, mode, memory == "hugetlb2m" ? 8 : 64});
      }
    }
  }
  return rows;
}

// The UFFDIO_API features a row needs, from the kernel's uapi (not from the suite's own table).
unsigned long long FeaturesNeeded(const Row& row) {
  unsigned long long needed = row.mode == "sigbus" ? UFFD_FEATURE_SIGBUS : 0;
  const bool shmem = row.memory == "shmem", hugetlb = row.memory == "hugetlb2m";
  if (row.c.rfind("wp", 0) == 0) {
    needed |= UFFD_FEATURE_PAGEFAULT_FLAG_WP | (shmem || hugetlb ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0);
    // Anonymous none entries take markers only when asked.
    if (row.c == "wp_unpopulated" && !shmem && !hugetlb) needed |= UFFD_FEATURE_WP_UNPOPULATED;
  } else {
    needed |= shmem ? UFFD_FEATURE_MISSING_SHMEM : hugetlb ? UFFD_FEATURE_MISSING_HUGETLBFS : 0;
  }
  if (row.c == "minor_continue") {
    needed |= shmem ? UFFD_FEATURE_MINOR_SHMEM : UFFD_FEATURE_MINOR_HUGETLBFS;
  }
  if (row.c == "move") needed |= UFFD_FEATURE_MOVE;
  return needed;
}

// What a row that ran must show: its premise verified on the memory and mode its name says, and
// the figures the suite promises. The faulting thread sleeps on every fault when its handler
// shares its CPU (a context switch each), and never in sigbus mode, where it answers its own
// fault.
void ExpectVerified(const json& results, const json& row, const Row& expected) {
  SCOPED_TRACE(row["name"].get<std::string>());
  ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
  const std::string label = row.value("label", "");
  EXPECT_NE(label.find("premise=verified"), std::string::npos) << label;
  EXPECT_NE(label.find("memory=" + expected.memory + " handler=" + expected.mode + " "),
            std::string::npos)
      << label;
  EXPECT_EQ(row["iterations"].get<long>(), expected.pages * kRounds);
  for (const char* positive : {"p50_ns", "mean_ns", "max_ns", "to_handler_ns", "ioctl_alone_ns",
                               "first_round_ns", "faults_per_s", "reference_ns", "counted_p50_ns"}) {
    EXPECT_GT(row.value(positive, 0.0), 0) << positive;
  }
  for (const char* present : {"ioctl_ns", "to_resume_ns", "resumed_first", "p99_ns"}) {
    EXPECT_TRUE(row.contains(present)) << present;
  }
  const bool thread = expected.mode != "sigbus";
  EXPECT_EQ(row.contains("floor_ns"), thread);
  const bool on_markers = expected.c == "wp_marker" || expected.c == "wp_unpopulated";
  EXPECT_EQ(row.contains("handler_vs_floor"), thread && !on_markers);
  // Thread modes: the same rounds answered by the minimal handler (a blocking read()), every
  // case alike, those with rounds beside them included.
  EXPECT_EQ(row.contains("minimal_p50_ns"), thread);
  EXPECT_EQ(row.contains("handler_vs_minimal"), thread);
  if (thread) {
    EXPECT_GT(row.value("floor_ns", 0.0), 0);
    EXPECT_GT(row.value("trap_ns", 0.0), 0);
    EXPECT_GT(row.value("minimal_p50_ns", 0.0), 0);
    // The ratio of the two medians the row reports, not a bound on it.
    EXPECT_NEAR(row.value("handler_vs_minimal", 0.0),
                row.value("p50_ns", 0.0) / row.value("minimal_p50_ns", 1.0),
                1e-6 * row.value("handler_vs_minimal", 0.0));
  } else {
    EXPECT_EQ(row.value("resumed_first", -1.0), 0) << "no handler thread to resume before";
  }
  if (expected.c == "minor_continue") {
    EXPECT_GT(row.value("continue_vs_copy", 0.0), 0);
    EXPECT_GT(row.value("copy_p50_ns", 0.0), 0);
  } else {
    EXPECT_FALSE(row.contains("continue_vs_copy"));
  }
  // A write after UFFDIO_ZEROPAGE: a fault copying the zero page on anon4k, none on shmem.
  EXPECT_EQ(row.contains("write_after_ns"), expected.c == "missing_zeropage");
  if (expected.c == "missing_zeropage") {
    EXPECT_GT(row.value("write_after_ns", 0.0), 0);
  }
  EXPECT_EQ(row.contains("move_vs_copy"), expected.c == "move");
  if (expected.c == "move") {
    EXPECT_GT(row.value("move_vs_copy", 0.0), 0);
    EXPECT_GT(row.value("copy_p50_ns", 0.0), 0);
  }
  // wp_marker: a fault on a marker against the same write on a none entry, in the same run.
  EXPECT_EQ(row.contains("marker_vs_none"), expected.c == "wp_marker");
  if (expected.c == "wp_marker") {
    EXPECT_GT(row.value("marker_vs_none", 0.0), 0);
    EXPECT_GT(row.value("none_fault_ns", 0.0), 0);
  }
  EXPECT_EQ(row.contains("protect_ns_per_page"), expected.c == "wp_unpopulated");
  if (expected.c == "wp_unpopulated") {
    EXPECT_GT(row.value("protect_ns_per_page", 0.0), 0);
    EXPECT_EQ(label.find("markers=UFFD_FEATURE_WP_UNPOPULATED") != std::string::npos,
              expected.memory == "anon4k")
        << label;
  }
  if (CounterOpened(results, "page-faults")) {
    EXPECT_GE(row.value("page-faults", 0.0), 0.99);
  }
  // The faulting thread's sleeps per fault (getrusage's voluntary switches: a loaded machine's
  // preemptions, which perf's context-switches also counts, are not in them).
  ASSERT_TRUE(row.contains("voluntary_switches")) << row.dump();
  if (expected.mode == "same_cpu") {
    EXPECT_GE(row.value("voluntary_switches", 0.0), 0.99);
  } else if (thread) {
    // A handler on another CPU may answer before the faulting thread sleeps (handle_userfault
    // checks again before it schedules), but mostly it does not.
    EXPECT_GE(row.value("voluntary_switches", 0.0), 0.5);
  } else {
    EXPECT_LT(row.value("voluntary_switches", 1.0), 0.5);
  }
  if (CounterOpened(results, "context-switches") && expected.mode == "same_cpu") {
    EXPECT_GE(row.value("context-switches", 0.0), 0.99);
  }
}

// Every row of the quick suite, run as a user would without a pool: each verified, or skipped
// with the reason this machine gives.
TEST(CliUffd, QuickRunVerifiesEachCaseOrSkipsItWithTheReason) {
  const long hugetlb_free_before = faultlab::FreeHugetlbPages(faultlab::kPage2M);
  const bool two_cpus = AllowedCpus().size() >= 2;
  const RunOutcome outcome = RunUffd({"--cpu", CpuFlag()});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  ASSERT_FALSE(outcome.results.is_discarded()) << outcome.err;
  const faultlab::UffdApi api = faultlab::ProbeUffdApi();
  std::size_t verified = 0;
  for (const Row& expected : Rows()) {
    const std::vector<json> rows = IterationRows(outcome.results, expected.Prefix());
    ASSERT_EQ(rows.size(), 3u) << expected.Prefix() << " did not write its 3 repetitions";
    for (const json& row : rows) {
      SCOPED_TRACE(row["name"].get<std::string>());
      const bool hugetlb = expected.memory == "hugetlb2m";
      if (!api.error.empty()) {
        ExpectSkipWithReason(row, "userfaultfd");
      } else if (expected.mode == "other_cpu" && !two_cpus) {
        ExpectSkipWithReason(row, "needs 2 CPUs");
      } else if (hugetlb && faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M)) {
        ExpectSkipWithReason(row, "hugetlb");
      } else if (hugetlb && hugetlb_free_before < 8) {
        ExpectSkipWithReason(row, "--reserve-hugepages 2M:8");
      } else if (FeaturesNeeded(expected) & ~api.features) {
        ExpectSkipWithReason(row, "not supported by this kernel");
      } else if (expected.c == "missing_zeropage" && Skipped(row)) {
        // The kernel decides where a zero page may answer a missing fault (not on hugetlb).
        ExpectSkipWithReason(row, "UFFDIO_ZEROPAGE");
      } else {
        ExpectVerified(outcome.results, row, expected);
        ++verified;
      }
    }
  }
  if (api.error.empty()) {
    EXPECT_GE(verified, 3u * 8) << "fewer anon4k/shmem rows ran than this kernel allows";
  }
  for (const char* mode : {"same_cpu", "other_cpu"}) {
    const std::vector<json> rows =
        IterationRows(outcome.results, std::string("uffd/floor/eventfd/handler:") + mode + "/");
    ASSERT_EQ(rows.size(), 3u) << mode;
    for (const json& row : rows) {
      SCOPED_TRACE(row["name"].get<std::string>());
      if (std::string(mode) == "other_cpu" && !two_cpus) {
        ExpectSkipWithReason(row, "needs 2 CPUs");
        continue;
      }
      ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
      EXPECT_NE(row.value("label", "").find("handler=" + std::string(mode) + " "),
                std::string::npos);
      EXPECT_NE(row.value("label", "").find("premise=verified"), std::string::npos);
      EXPECT_GT(row.value("p50_ns", 0.0), 0);
      EXPECT_GT(row.value("counted_p50_ns", 0.0), 0);
    }
  }
  // uffd/poison/anon4k: no handler; each read of a poisoned page a SIGBUS, its si_code named.
  const std::vector<json> poison = IterationRows(outcome.results, "uffd/poison/anon4k/pages:64/");
  ASSERT_EQ(poison.size(), 3u);
  for (const json& row : poison) {
    SCOPED_TRACE(row["name"].get<std::string>());
    if (!api.error.empty()) {
      ExpectSkipWithReason(row, "userfaultfd");
    } else if (!(api.features & UFFD_FEATURE_POISON)) {
      ExpectSkipWithReason(row, "UFFD_FEATURE_POISON");
    } else {
      ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
      const std::string label = row.value("label", "");
      EXPECT_NE(label.find("premise=verified"), std::string::npos) << label;
      EXPECT_NE(label.find("si_code=BUS_"), std::string::npos) << label;
      EXPECT_EQ(row["iterations"].get<long>(), 64 * kRounds);
      for (const char* positive :
           {"p50_ns", "first_round_ns", "reference_ns", "poison_ns_per_page"}) {
        EXPECT_GT(row.value(positive, 0.0), 0) << positive;
      }
    }
  }
  // uffd/wp_async/<memory>: no handler; the kernel resolves the writes, the scan finds them.
  for (const char* memory : {"anon4k", "shmem"}) {
    const std::vector<json> async =
        IterationRows(outcome.results, std::string("uffd/wp_async/") + memory + "/pages:64/");
    ASSERT_EQ(async.size(), 3u) << memory;
    for (const json& row : async) {
      SCOPED_TRACE(row["name"].get<std::string>());
      if (!api.error.empty()) {
        ExpectSkipWithReason(row, "userfaultfd");
      } else if (!(api.features & UFFD_FEATURE_WP_ASYNC)) {
        ExpectSkipWithReason(row, "UFFD_FEATURE_WP_ASYNC");
      } else {
        ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
        const std::string label = row.value("label", "");
        EXPECT_NE(label.find("memory=" + std::string(memory) + " "), std::string::npos) << label;
        EXPECT_NE(label.find("premise=verified"), std::string::npos) << label;
        EXPECT_EQ(row["iterations"].get<long>(), 32 * kRounds) << "every other page of 64";
        for (const char* positive :
             {"p50_ns", "first_round_ns", "reference_ns", "scan_ns_per_page"}) {
          EXPECT_GT(row.value(positive, 0.0), 0) << positive;
        }
      }
    }
  }
}

TEST(CliUffd, OtherCpuWithOneCpuIsASkipSayingSo) {
  const RunOutcome outcome =
      RunUffd({"--cpu", std::to_string(AllowedCpus().at(0)), "--filter", "handler:other_cpu"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  const std::vector<json> rows = IterationRows(outcome.results, "uffd/");
  ASSERT_EQ(rows.size(), 3u * (17 + 1)) << "17 cases and the floor, 3 repetitions each";
  for (const json& row : rows) {
    SCOPED_TRACE(row["name"].get<std::string>());
    const std::string message = ErrorMessage(row);
    // A hugetlb row without a pool may say that first; every other row names the CPUs.
    if (message.find("hugetlb") != std::string::npos) continue;
    ExpectSkipWithReason(row, "handler:other_cpu needs 2 CPUs in the run, --cpu gave 1");
  }
}

// With a pool reserved through the CLI the hugetlb rows run and check their premise, and the pool
// is as it was once the run is over.
TEST(CliUffd, HugetlbRowsRunWithAReservedPoolAndThePoolIsRestored) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to write /proc/sys/vm/nr_hugepages";
  if (auto why = faultlab::WhyUnavailable(faultlab::Feature::kHugetlb2M)) GTEST_SKIP() << *why;
  const faultlab::UffdApi api = faultlab::ProbeUffdApi();
  if (!api.error.empty()) GTEST_SKIP() << api.error;
  const std::string pool = "/proc/sys/vm/nr_hugepages";
  const long before = ReadLong(pool);
  const bool two_cpus = AllowedCpus().size() >= 2;
  const RunOutcome outcome =
      RunUffd({"--cpu", CpuFlag(), "--filter", "/hugetlb2m/", "--reserve-hugepages", "2M:8"});
  EXPECT_EQ(ReadLong(pool), before) << "the run left the pool changed";
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  std::size_t verified = 0;
  for (const Row& expected : Rows()) {
    if (expected.memory != "hugetlb2m") continue;
    const std::vector<json> rows = IterationRows(outcome.results, expected.Prefix());
    ASSERT_EQ(rows.size(), 3u) << expected.Prefix();
    for (const json& row : rows) {
      SCOPED_TRACE(row["name"].get<std::string>());
      if (expected.mode == "other_cpu" && !two_cpus) {
        ExpectSkipWithReason(row, "needs 2 CPUs");
      } else if (FeaturesNeeded(expected) & ~api.features) {
        ExpectSkipWithReason(row, "not supported by this kernel");
      } else if (expected.c == "missing_zeropage") {
        // Linux answers UFFDIO_ZEROPAGE on hugetlbfs with EINVAL; the row says so, or runs on a
        // kernel that learnt it.
        if (Skipped(row)) {
          ExpectSkipWithReason(row, "UFFDIO_ZEROPAGE: EINVAL");
        } else {
          ExpectVerified(outcome.results, row, expected);
        }
      } else {
        ExpectVerified(outcome.results, row, expected);
        ++verified;
      }
    }
  }
  EXPECT_GE(verified, 3u * 2 * 5)
      << "missing_copy, minor_continue, wp, wp_marker and wp_unpopulated, same_cpu and sigbus";
}

}  // namespace
