#include "reports/model_summary.h"

#include <cmath>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "reports/fault_summary.h"

namespace faultlab {
namespace {

// "model/fork/classic/rss_mib:64/iterations:32/repeats:3/manual_time" → "fork/classic/rss_mib:64":
// the case, variant and the arguments that say what was measured, not how often.
std::string ModelCase(const std::string& run_name) {
  std::vector<std::string> parts = absl::StrSplit(run_name, '/');
  if (parts.size() < 3 || parts[0] != "model") return {};
  std::string name;
  for (std::size_t i = 1; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    if (absl::StartsWith(part, "iterations:") || absl::StartsWith(part, "repeats:") ||
        part == "manual_time" || part == "real_time") {
      continue;
    }
    name += (name.empty() ? "" : "/") + part;
  }
  return name;
}

// The figure a suite reports for a run: its median aggregate when it repeated, else the run.
bool IsFigure(const nlohmann::json& run) {
  const std::string aggregate = run.value("aggregate_name", "");
  return aggregate == "median" ||
         (run.value("run_type", "") == "iteration" && run.value("repetitions", 1) <= 1);
}

double Number(const nlohmann::json& run, const std::string& field) {
  return run.contains(field) && run[field].is_number() ? run[field].get<double>() : NAN;
}

std::string FormatValue(const std::string& key, double value) {
  if (absl::EndsWith(key, "_ns") || key == "ns_per_entry" || key == "median_ns") {
    // Targets sit close to their figures: keep the digits that tell 10.4 from 10.
    if (value < 1) return absl::StrFormat("%.2f ns", value);
    return value < 100 ? absl::StrFormat("%.1f ns", value) : FormatNs(value);
  }
  return absl::StrFormat("%.2fx", value);
}

// The fault-suite case that takes the same path as a model case, for the side-by-side lines.
const std::map<std::string, std::string>& KernelCounterparts() {
  static const auto* pairs = new std::map<std::string, std::string>{
      {"zeropage_read/anon4k", "read_zeropage/anon4k"},
      {"anon_write/anon4k", "write/anon4k"},
      {"write_after_zeropage/anon4k", "write_after_zeropage/anon4k"},
  };
  return *pairs;
}

}  // namespace

std::string ModelSummary(const nlohmann::json& results) {
  std::ostringstream out;
  std::map<std::string, double> kernel_ns;   // fault suite, one worker
  std::map<std::string, double> model_ns;
  bool header = false;
  for (const auto& run : results.value("benchmarks", nlohmann::json::array())) {
    const std::string run_name = run.value("run_name", "");
    if (absl::StartsWith(run_name, "fault/")) {
      // One worker's steady-state mean per fault (the median over repetitions).
      std::vector<std::string> parts = absl::StrSplit(run_name, '/');
      if (parts.size() > 2 && IsFigure(run) && !run.value("error_occurred", false) &&
          absl::StrContains(run_name, "/procs:1/") && absl::EndsWith(run_name, "/threads:1")) {
        kernel_ns[parts[1] + "/" + parts[2]] = Number(run, "real_time");
      }
      continue;
    }
    const std::string name = ModelCase(run_name);
    if (name.empty()) continue;
    if (!header) {
      out << "model suite: median per operation, without a trap; targets as measured in this run\n";
      header = true;
    }
    if (run.value("error_occurred", false)) {
      if (run.value("repetition_index", 0) == 0) {
        out << absl::StrFormat("  %-40s %s\n", name, run.value("error_message", ""));
      }
      continue;
    }
    if (!IsFigure(run)) continue;
    const double median = Number(run, "median_ns");
    model_ns[name] = median;
    out << absl::StrFormat("  %-40s %10s", name, FormatNs(median));
    for (const auto& [key, value] : run.items()) {
      if (key.rfind("target_", 0) != 0 || key == "target_met" || !value.is_number()) continue;
      // target_<counter> is stated against <counter> of the same row.
      const std::string measured = key.substr(7);
      if (!run.contains(measured)) continue;
      const bool at_least = absl::StrContains(key, "speedup");
      out << absl::StrFormat("  %s %s (target %s %s): %s", measured,
                             FormatValue(measured, Number(run, measured)), at_least ? ">=" : "<=",
                             FormatValue(measured, value.get<double>()),
                             Number(run, "target_met") >= 1 ? "met" : "missed");
    }
    out << "\n";
  }
  bool beside = false;
  for (const auto& [model_case, kernel_case] : KernelCounterparts()) {
    auto m = model_ns.find(model_case);
    auto k = kernel_ns.find(kernel_case);
    if (m == model_ns.end() || k == kernel_ns.end() || !(k->second > 0) || !(m->second > 0)) continue;
    if (!beside) {
      out << "beside the kernel (fault suite, one worker, mean per fault): what the trap and the rest cost\n";
      beside = true;
    }
    out << absl::StrFormat("  %-28s kernel %8s  model %8s  trap and the rest %8s (%.0f%%)\n",
                           model_case, FormatNs(k->second), FormatNs(m->second),
                           FormatNs(k->second - m->second),
                           100 * (k->second - m->second) / k->second);
  }
  return out.str();
}

}  // namespace faultlab
