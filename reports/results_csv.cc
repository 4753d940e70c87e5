#include "reports/results_csv.h"

#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "absl/strings/str_split.h"

namespace faultlab {
namespace {

// Fields of a Google Benchmark run that are not counters.
const std::set<std::string>& RunFields() {
  static const std::set<std::string> fields = {
      "name", "family_index", "per_family_instance_index", "run_name", "run_type",
      "repetitions", "repetition_index", "threads", "iterations", "real_time", "cpu_time",
      "time_unit", "label", "error_occurred", "error_message", "aggregate_name",
      "aggregate_unit", "big_o", "rms"};
  return fields;
}

std::string Quote(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char ch : text) {
    if (ch == '"') quoted += '"';
    quoted += ch;
  }
  return quoted + "\"";
}

std::string Cell(const nlohmann::json& value) {
  if (value.is_null()) return "";
  if (value.is_string()) return Quote(value.get<std::string>());
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  std::ostringstream out;
  out.precision(10);
  if (value.is_number_integer()) {
    out << value.get<long long>();
  } else if (value.is_number()) {
    out << value.get<double>();
  } else {
    out << value.dump();
  }
  return Quote(out.str());
}

// "fault/write/anon4k/region_mib:64/threads:2" → suite, case, variant, {region_mib: 64, ...};
// plain pieces after the variant are its detail ("shmem" in model/uffd/missing_copy/shmem), as
// reports/faultlab_report/results.py splits names.
struct NameParts {
  std::string suite, case_name, variant, detail;
  std::map<std::string, std::string> args;
};

// Pieces Google Benchmark appends that say how a row was timed, not what it measured.
bool IsTimingSuffix(const std::string& piece) {
  return piece == "manual_time" || piece == "real_time" || piece == "process_time";
}
NameParts SplitName(const std::string& run_name) {
  NameParts parts;
  std::vector<std::string> pieces = absl::StrSplit(run_name, '/');
  std::vector<std::string> plain;
  for (const std::string& piece : pieces) {
    const auto colon = piece.find(':');
    if (colon == std::string::npos) {
      if (!IsTimingSuffix(piece)) plain.push_back(piece);
    } else {
      parts.args[piece.substr(0, colon)] = piece.substr(colon + 1);
    }
  }
  if (plain.size() > 0) parts.suite = plain[0];
  if (plain.size() > 1) parts.case_name = plain[1];
  if (plain.size() > 2) parts.variant = plain[2];
  for (std::size_t i = 3; i < plain.size(); ++i) {
    parts.detail += (parts.detail.empty() ? "" : "/") + plain[i];
  }
  return parts;
}

}  // namespace

std::string ResultsCsv(const nlohmann::json& results) {
  const nlohmann::json& runs = results.contains("benchmarks") ? results["benchmarks"]
                                                              : nlohmann::json::array();
  std::set<std::string> arg_names;
  std::set<std::string> counter_names;
  for (const auto& run : runs) {
    for (const auto& [key, value] : SplitName(run.value("run_name", "")).args) {
      // "iterations:N" in a name repeats the iterations field, which has its own column.
      if (key != "iterations") arg_names.insert(key);
    }
    for (const auto& [key, value] : run.items()) {
      if (!RunFields().count(key) && value.is_number()) counter_names.insert(key);
    }
  }
  std::ostringstream csv;
  csv << "name,suite,case,variant,detail";
  for (const auto& arg : arg_names) csv << ',' << Quote(arg);
  csv << ",run_type,aggregate_name,repetition_index,iterations,real_time,cpu_time,time_unit,"
         "label,skipped";
  for (const auto& counter : counter_names) csv << ',' << Quote(counter);
  csv << '\n';
  for (const auto& run : runs) {
    const NameParts parts = SplitName(run.value("run_name", ""));
    csv << Cell(run.value("name", "")) << ',' << Quote(parts.suite) << ','
        << Quote(parts.case_name) << ',' << Quote(parts.variant) << ',' << Quote(parts.detail);
    for (const auto& arg : arg_names) {
      auto it = parts.args.find(arg);
      csv << ',' << (it == parts.args.end() ? "" : Quote(it->second));
    }
    auto field = [&](const char* key) {
      return run.contains(key) ? Cell(run[key]) : std::string();
    };
    csv << ',' << field("run_type") << ',' << field("aggregate_name") << ','
        << field("repetition_index") << ',' << field("iterations") << ',' << field("real_time")
        << ',' << field("cpu_time") << ',' << field("time_unit") << ',' << field("label") << ','
        << (run.value("error_occurred", false) ? field("error_message") : "");
    for (const auto& counter : counter_names) csv << ',' << field(counter.c_str());
    csv << '\n';
  }
  return csv.str();
}

}  // namespace faultlab
