// The guard suite and the fault suite's huge zero page rows end to end, as a user runs them:
// every row either verified its premise and reports the figures the suites promise, or is a skip
// row naming its reason.
//
// guard: markers leave the region one VMA and mprotect 2N+1, both 1 again after removal; each
// SIGSEGV is a page fault to the kernel, mprotect's with SEGV_ACCERR and the markers' with the
// code the label names. fault/{read_zeropage,write_after_zeropage}/thp: the huge zero page is
// not counted in Rss, and the write after it says in its label whether it got a THP.
//
// These tests check behaviour, never time. Benchmark names read
// guard/<case>/anon4k/pages:N/stride:S/rounds:R/iterations:I/repeats:3/manual_time.

#include <signal.h>

#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/kernel_features.h"
#include "tests/cli_support.h"

namespace {

using nlohmann::json;

using namespace faultlab::cli_test;

// `faultlab run --quick --cpu 0 --out <scratch>/out` plus `args`.
RunOutcome RunQuick(const std::vector<std::string>& args) {
  return RunAndReadResults({"run", "--quick", "--cpu", "0"}, args);
}

void ExpectVerifiedLabel(const json& row, const std::string& must_contain) {
  const std::string label = row.value("label", "");
  EXPECT_GE(label.size(), std::string("premise=verified").size()) << label;
  EXPECT_EQ(label.rfind("premise=verified"), label.size() - std::string("premise=verified").size())
      << "the label must end premise=verified: " << label;
  EXPECT_NE(label.find(must_contain), std::string::npos) << label;
}

// The label's si_code=<name> and the si_code counter agree.
void ExpectSiCodeNamed(const json& row, int code) {
  const std::string label = row.value("label", "");
  const std::string name = code == SEGV_MAPERR   ? "si_code=SEGV_MAPERR"
                           : code == SEGV_ACCERR ? "si_code=SEGV_ACCERR"
                                                 : "si_code=si_code " + std::to_string(code);
  EXPECT_NE(label.find(name), std::string::npos) << label;
}

// One guard/ row that ran: its premise held and its counters say what the suite states.
void ExpectGuardRowVerified(const json& row, bool page_faults, std::set<int>* marker_codes) {
  const std::string name = row["name"];
  SCOPED_TRACE(name);
  const std::vector<std::string> parts = Split(name);
  ASSERT_GE(parts.size(), 4u);
  const std::string& which = parts[1];
  const bool mprotect = which.find("_mprotect") != std::string::npos;
  const bool fault = which.rfind("fault", 0) == 0;
  const long pages = NamedArg(name, "pages");
  ASSERT_GT(pages, 0);
  ExpectVerifiedLabel(row, std::string("backing=anon4k method=") +
                               (mprotect ? "mprotect" : "madv_guard"));
  EXPECT_GT(Counter(row, "reference_ns"), 0);
  EXPECT_GT(Counter(row, "first_round_ns"), 0);
  EXPECT_EQ(Counter(row, "pages"), pages);
  for (const char* key : {"mean_ns", "p50_ns", "p99_ns", "max_ns"}) EXPECT_GT(Counter(row, key), 0);

  const int code = static_cast<int>(Counter(row, "si_code"));
  ExpectSiCodeNamed(row, code);
  if (mprotect) {
    EXPECT_EQ(code, SEGV_ACCERR);
  } else {
    marker_codes->insert(code);
  }
  const double spread_vmas = 2.0 * static_cast<double>(pages) + 1;
  if (fault) {
    EXPECT_EQ(Counter(row, "vmas_after"), mprotect ? spread_vmas : 1.0);
    // Every timed read of a guard page is one page fault to the kernel (perf counts it before
    // the fault path decides on SIGSEGV).
    if (page_faults) {
      EXPECT_GE(Counter(row, "page-faults"), 0.99);
    }
    return;
  }
  const bool install = which.rfind("install", 0) == 0;
  const double guarded = mprotect ? spread_vmas : 1.0;
  EXPECT_EQ(Counter(row, "vmas_before"), install ? 1.0 : guarded);
  EXPECT_EQ(Counter(row, "vmas_after"), install ? guarded : 1.0);
  // One page per call: the figures per call and per page are the same, and the time column is
  // the mean per call.
  const double per_call = Counter(row, "ns_per_call");
  EXPECT_GT(per_call, 0);
  EXPECT_DOUBLE_EQ(Counter(row, "ns_per_page"), per_call);
  EXPECT_NEAR(row["real_time"].get<double>(), per_call, per_call * 0.01);
  EXPECT_NEAR(Counter(row, "ns_per_round"), per_call * static_cast<double>(pages),
              per_call * static_cast<double>(pages) * 1e-9);
  if (!mprotect) {
    // pagemap flags guard regions since Linux 6.15: all of them, or (older kernels) none.
    const double flagged = Counter(row, "pagemap_guard_pages");
    EXPECT_TRUE(flagged == 0 || flagged == static_cast<double>(pages)) << flagged;
  }
}

TEST(CliGuard, QuickRunVerifiesEveryRowOrSkipsItWithTheReason) {
  const RunOutcome outcome = RunQuick({"--suite", "guard"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  ASSERT_FALSE(outcome.results.is_discarded()) << outcome.err;
  const bool page_faults = CounterOpened(outcome.results, "page-faults");
  const std::optional<std::string> no_markers =
      faultlab::WhyUnavailable(faultlab::Feature::kGuardRegions);

  const std::vector<json> rows = IterationRows(outcome.results, "guard/");
  // Four cases at each of the three quick sizes, and the two fault cases; three repetitions.
  EXPECT_EQ(rows.size(), (4u * 3 + 2) * 3);
  std::set<std::string> cases;
  std::set<int> marker_codes;
  for (const json& row : rows) {
    const std::string name = row["name"];
    const std::vector<std::string> parts = Split(name);
    ASSERT_GE(parts.size(), 3u) << name;
    EXPECT_EQ(parts[2], "anon4k") << name;
    cases.insert(parts[1]);
    const bool mprotect = parts[1].find("_mprotect") != std::string::npos;
    if (Skipped(row)) {
      // Markers skip only on a kernel without them, with the probe's reason; the quick sizes
      // stay far under any default vm.max_map_count.
      EXPECT_FALSE(mprotect) << name << ": " << ErrorMessage(row);
      ASSERT_TRUE(no_markers.has_value()) << name << ": " << ErrorMessage(row);
      ExpectSkipWithReason(row, *no_markers);
      continue;
    }
    ExpectGuardRowVerified(row, page_faults, &marker_codes);
  }
  EXPECT_EQ(cases, (std::set<std::string>{"install", "install_mprotect", "remove",
                                          "remove_mprotect", "fault", "fault_mprotect"}));
  // A marker's fault has one si_code, whatever it is, in every row that ran.
  EXPECT_LE(marker_codes.size(), 1u);
  if (!no_markers) {
    EXPECT_EQ(marker_codes.size(), 1u);
  }
}

// use_zero_page as the machine has it (never changed by faultlab or this test).
long UseZeroPage() { return ReadLong("/sys/kernel/mm/transparent_hugepage/use_zero_page"); }

TEST(CliGuard, HugeZeroPageRowsReportRssOrSkipWithTheReason) {
  const RunOutcome outcome = RunQuick(
      {"--suite", "fault", "--filter", "fault/(read_zeropage|write_after_zeropage)/thp/"});
  ASSERT_EQ(outcome.exit_code, 0) << outcome.err;
  ASSERT_FALSE(outcome.results.is_discarded()) << outcome.err;
  const bool page_faults = CounterOpened(outcome.results, "page-faults");
  const std::optional<std::string> no_thp = faultlab::WhyUnavailable(faultlab::Feature::kThp);
  const bool runs = !no_thp && UseZeroPage() == 1;

  for (const std::string which : {"read_zeropage", "write_after_zeropage"}) {
    const std::vector<json> rows = IterationRows(outcome.results, "fault/" + which + "/thp/");
    ASSERT_EQ(rows.size(), 3u) << which;
    for (const json& row : rows) {
      const std::string name = row["name"];
      SCOPED_TRACE(name);
      if (!runs) {
        ASSERT_TRUE(Skipped(row)) << "ran without THP or use_zero_page=1";
        ExpectSkipWithReason(row, no_thp ? *no_thp : std::string("use_zero_page"));
        continue;
      }
      ASSERT_FALSE(Skipped(row)) << ErrorMessage(row);
      ExpectVerifiedLabel(row, "backing=thp ");
      // The huge zero page is mapped, not counted.
      EXPECT_EQ(Counter(row, "rss_kb_after_read"), 0);
      if (page_faults) {
        // One fault per 2 MiB.
        EXPECT_GT(Counter(row, "page-faults"), 0.95);
        EXPECT_LT(Counter(row, "page-faults"), 1.05);
      }
      if (which == "read_zeropage") {
        EXPECT_FALSE(row.contains("rss_kb_after_write"));
        continue;
      }
      const double region_kb = static_cast<double>(NamedArg(name, "region_mib")) * 1024;
      const double rss = Counter(row, "rss_kb_after_write");
      const double thp = Counter(row, "thp_kb_after_write");
      // Each write allocated at least its 4 KiB page; a THP where AnonHugePages says so.
      EXPECT_GE(rss, region_kb / 512 * 4);
      EXPECT_LE(thp, rss);
      const std::string label = row.value("label", "");
      if (thp == region_kb) {
        EXPECT_EQ(rss, region_kb);
        EXPECT_NE(label.find("write_got=thp "), std::string::npos) << label;
      } else if (thp == 0) {
        EXPECT_NE(label.find("write_got=4k_after_split "), std::string::npos) << label;
      } else {
        EXPECT_NE(label.find("write_got=some_thp "), std::string::npos) << label;
      }
    }
  }
}

}  // namespace
