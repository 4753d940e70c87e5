// results.csv from a Google Benchmark JSON document.

#include "reports/results_csv.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(ResultsCsv, SplitsNamesAndSpreadsCountersIntoColumns) {
  const nlohmann::json results = nlohmann::json::parse(R"({
    "context": {"schema_version": 1},
    "benchmarks": [
      {"name": "fault/write/anon4k/region_mib:64/procs:1/iterations:8/manual_time/threads:2",
       "run_name": "fault/write/anon4k/region_mib:64/procs:1/iterations:8/manual_time/threads:2",
       "run_type": "iteration", "repetition_index": 0, "iterations": 16, "real_time": 1600.5,
       "cpu_time": 0.1, "time_unit": "ns", "label": "backing=anon4k cpus=0,1",
       "p99_ns": 5000, "page-faults": 1.0},
      {"name": "fault/write/hugetlb2m/region_mib:64/procs:1/iterations:8/manual_time/threads:1",
       "run_name": "fault/write/hugetlb2m/region_mib:64/procs:1/iterations:8/manual_time/threads:1",
       "run_type": "iteration", "repetition_index": 0, "iterations": 0, "real_time": 0,
       "cpu_time": 0, "time_unit": "ns", "error_occurred": true,
       "error_message": "skipped: needs 32 free 2 MiB hugetlb pages, 0 free"}
    ]})");
  const std::vector<std::string> lines = Lines(faultlab::ResultsCsv(results));
  ASSERT_EQ(lines.size(), 3u);
  const std::string& header = lines[0];
  EXPECT_EQ(header.rfind("name,suite,case,variant,", 0), 0u) << header;
  for (const char* column : {",procs,", ",region_mib,", ",threads,", ",skipped,", ",p99_ns",
                             ",page-faults"}) {
    EXPECT_NE(header.find(column), std::string::npos) << column << " in " << header;
  }
  // "iterations:8" in the name must not add a second iterations column.
  EXPECT_EQ(header.find("iterations"), header.rfind("iterations")) << header;
  // The label holds a comma, so it is quoted.
  EXPECT_NE(lines[1].find("\"backing=anon4k cpus=0,1\""), std::string::npos) << lines[1];
  // No detail: the pieces after the variant are arguments, and manual_time says how it was timed.
  EXPECT_NE(lines[1].find(",fault,write,anon4k,,"), std::string::npos) << lines[1];
  EXPECT_NE(lines[2].find("\"skipped: needs 32 free 2 MiB hugetlb pages, 0 free\""),
            std::string::npos)
      << lines[2];
}

TEST(ResultsCsv, PlainPiecesAfterTheVariantAreTheDetail) {
  // Two model rows that differ only after the variant must not collapse onto one.
  const nlohmann::json results = nlohmann::json::parse(R"({
    "benchmarks": [
      {"name": "model/uffd/missing_copy/anon4k/iterations:8/repeats:3/manual_time",
       "run_name": "model/uffd/missing_copy/anon4k/iterations:8/repeats:3/manual_time",
       "run_type": "iteration", "iterations": 8, "real_time": 139.0, "time_unit": "ns"},
      {"name": "model/uffd/missing_copy/shmem/iterations:8/repeats:3/manual_time",
       "run_name": "model/uffd/missing_copy/shmem/iterations:8/repeats:3/manual_time",
       "run_type": "iteration", "iterations": 8, "real_time": 163.0, "time_unit": "ns"}
    ]})");
  const std::vector<std::string> lines = Lines(faultlab::ResultsCsv(results));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].rfind("name,suite,case,variant,detail,", 0), 0u) << lines[0];
  EXPECT_NE(lines[1].find(",model,uffd,missing_copy,anon4k,"), std::string::npos) << lines[1];
  EXPECT_NE(lines[2].find(",model,uffd,missing_copy,shmem,"), std::string::npos) << lines[2];
}

TEST(ResultsCsv, EmptyDocumentGivesOnlyTheHeader) {
  const std::vector<std::string> lines = Lines(faultlab::ResultsCsv(nlohmann::json::object()));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].rfind("name,suite,case,variant", 0), 0u);
}

}  // namespace
