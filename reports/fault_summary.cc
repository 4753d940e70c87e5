#include "reports/fault_summary.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace faultlab {
namespace {

// One benchmark of the fault suite: the mean of its repetitions and their spread.
struct Figure {
  double mean_ns = 0;       // time column: steady-state mean per fault
  double cv = NAN;          // coefficient of variation of the mean across repetitions
  double first_round_ns = 0;
  double harness_ratio = 0;
  double ns_per_4k = 0;
  double faults_per_sec = 0;
  std::string skipped;
};

// "fault/write/anon4k/region_mib:64/procs:1/.../threads:2" → ("write/anon4k", procs, threads).
struct Key {
  std::string case_variant;
  int procs = 1;
  int threads = 1;
  bool operator<(const Key& o) const {
    return std::tie(case_variant, procs, threads) < std::tie(o.case_variant, o.procs, o.threads);
  }
};

std::optional<Key> ParseKey(const std::string& run_name) {
  std::vector<std::string> parts = absl::StrSplit(run_name, '/');
  if (parts.size() < 3 || parts[0] != "fault") return std::nullopt;
  Key key;
  key.case_variant = parts[1] + "/" + parts[2];
  for (const std::string& part : parts) {
    if (part.rfind("procs:", 0) == 0) key.procs = std::stoi(part.substr(6));
    if (part.rfind("threads:", 0) == 0) key.threads = std::stoi(part.substr(8));
  }
  return key;
}

double Number(const nlohmann::json& run, const char* field) {
  return run.contains(field) && run[field].is_number() ? run[field].get<double>() : NAN;
}

}  // namespace

std::string FormatNs(double ns) {
  if (std::isnan(ns)) return "-";
  if (ns >= 1e6) return absl::StrFormat("%.2f ms", ns / 1e6);
  if (ns >= 1e4) return absl::StrFormat("%.1f us", ns / 1e3);
  return absl::StrFormat("%.0f ns", ns);
}

std::string FaultSummary(const nlohmann::json& results) {
  std::map<Key, Figure> figures;
  std::vector<Key> order;  // as the suite ran them: the base case first
  for (const auto& run : results.value("benchmarks", nlohmann::json::array())) {
    auto key = ParseKey(run.value("run_name", ""));
    if (!key) continue;
    if (!figures.count(*key)) order.push_back(*key);
    Figure& figure = figures[*key];
    if (run.value("error_occurred", false)) {
      figure.skipped = run.value("error_message", "");
      continue;
    }
    const std::string aggregate = run.value("aggregate_name", "");
    const bool single = run.value("run_type", "") == "iteration" && run.value("repetitions", 1) <= 1;
    if (aggregate == "mean" || single) {
      figure.mean_ns = Number(run, "real_time");
      figure.first_round_ns = Number(run, "first_round_ns");
      figure.harness_ratio = Number(run, "harness_ratio");
      figure.ns_per_4k = Number(run, "ns_per_4k");
      figure.faults_per_sec = Number(run, "faults_per_sec");
    } else if (aggregate == "cv") {
      figure.cv = Number(run, "real_time");
    }
  }
  if (figures.empty()) return {};

  auto find = [&](const std::string& case_variant, int procs, int threads) -> const Figure* {
    auto it = figures.find(Key{case_variant, procs, threads});
    return it == figures.end() || it->second.mean_ns <= 0 ? nullptr : &it->second;
  };
  const Figure* base = find("write/anon4k", 1, 1);

  std::ostringstream out;
  out << "fault suite: steady-state mean per fault, one worker (cv across repetitions)\n";
  for (const Key& key : order) {
    const Figure& figure = figures[key];
    if (key.procs != 1 || key.threads != 1) continue;
    out << absl::StrFormat("  %-28s", key.case_variant);
    if (!figure.skipped.empty()) {
      out << figure.skipped << "\n";
      continue;
    }
    out << absl::StrFormat("%10s  cv %4.1f%%  first round %9s  harness %.1f%%",
                           FormatNs(figure.mean_ns), figure.cv * 100, FormatNs(figure.first_round_ns),
                           figure.harness_ratio * 100);
    if (base && &figure != base) {
      out << absl::StrFormat("  %.2fx write/anon4k", figure.mean_ns / base->mean_ns);
      if (figure.ns_per_4k < figure.mean_ns / 2) {  // a huge page: compare per 4 KiB
        out << absl::StrFormat(" (%s per 4 KiB: %.2fx)", FormatNs(figure.ns_per_4k),
                               figure.ns_per_4k / base->mean_ns);
      }
    }
    out << "\n";
  }
  bool scaling_header = false;
  for (const Key& key : order) {
    const Figure& figure = figures[key];
    if ((key.procs == 1 && key.threads == 1) || figure.mean_ns <= 0) continue;
    const Figure* one = find(key.case_variant, 1, 1);
    if (!one) continue;
    if (!scaling_header) {
      out << "scaling against one worker: latency per fault, throughput of all workers\n";
      scaling_header = true;
    }
    const std::string shape = key.procs > 1 ? absl::StrFormat("procs:%d", key.procs)
                                            : absl::StrFormat("threads:%d", key.threads);
    out << absl::StrFormat("  %-28s %-10s %10s (%.2fx)  %.0fk faults/s (%.2fx)\n",
                           key.case_variant, shape, FormatNs(figure.mean_ns),
                           figure.mean_ns / one->mean_ns, figure.faults_per_sec / 1e3,
                           figure.faults_per_sec / one->faults_per_sec);
  }
  return out.str();
}

}  // namespace faultlab
