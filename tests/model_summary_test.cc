// The model suite's text summary: targets paired with their measured counters, skip rows, and
// the model set beside the kernel's fault where both suites ran the same path.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "reports/model_summary.h"

namespace faultlab {
namespace {

nlohmann::json Result(const std::string& name, const std::string& aggregate, nlohmann::json fields) {
  fields["run_name"] = name;
  fields["name"] = name + (aggregate.empty() ? "" : "_" + aggregate);
  fields["run_type"] = aggregate.empty() ? "iteration" : "aggregate";
  fields["repetitions"] = 3;
  if (!aggregate.empty()) fields["aggregate_name"] = aggregate;
  return fields;
}

TEST(ModelSummary, PairsEachTargetWithItsCounterAndSetsTheModelBesideTheKernel) {
  const std::string fault = "fault/write/anon4k/region_mib:64/procs:1/rounds:4/iterations:65536/"
                            "repeats:3/manual_time/threads:1";
  const std::string write = "model/anon_write/anon4k/iterations:4096/repeats:3/manual_time";
  const std::string fork = "model/fork/classic/rss_mib:64/iterations:32/repeats:3/manual_time";
  nlohmann::json results;
  results["benchmarks"] = {
      Result(fault, "median", {{"real_time", 1600.0}}),
      Result(fault, "mean", {{"real_time", 1700.0}}),
      Result(write, "", {{"median_ns", 999.0}}),   // one repetition: not the figure
      Result(write, "median", {{"median_ns", 100.0}, {"excess_ns", 40.0},
                            {"target_excess_ns", 60.0}, {"target_met", 1.0}}),
      Result(fork, "median", {{"median_ns", 400000.0}, {"ns_per_entry", 12.5},
                           {"target_ns_per_entry", 10.0}, {"target_met", 0.0}}),
      Result("model/uffd/minor_continue/anon4k/iterations:1/repeats:3/manual_time", "",
          {{"error_occurred", true}, {"error_message", "skipped: minor mode needs shmem"},
           {"repetition_index", 0}}),
  };
  const std::string text = ModelSummary(results);
  EXPECT_NE(text.find("anon_write/anon4k"), std::string::npos) << text;
  EXPECT_NE(text.find("excess_ns 40.0 ns (target <= 60.0 ns): met"), std::string::npos) << text;
  EXPECT_NE(text.find("fork/classic/rss_mib:64"), std::string::npos) << text;
  EXPECT_NE(text.find("ns_per_entry 12.5 ns (target <= 10.0 ns): missed"), std::string::npos)
      << text;
  EXPECT_NE(text.find("skipped: minor mode needs shmem"), std::string::npos) << text;
  EXPECT_EQ(text.find("999"), std::string::npos) << "a single repetition is not the figure";
  // Kernel 1600 ns (the median of the fault suite's means), model 100 ns: 1500 ns is the rest.
  EXPECT_NE(text.find("kernel  1600 ns  model   100 ns  trap and the rest  1500 ns (94%)"),
            std::string::npos)
      << text;
}

TEST(ModelSummary, IsEmptyWithoutModelResults) {
  nlohmann::json results;
  results["benchmarks"] = nlohmann::json::array();
  EXPECT_EQ(ModelSummary(results), "");
}

}  // namespace
}  // namespace faultlab
