// faultlab: the program behind scripts/faultlab.
//
//   faultlab run [--quick] [--suite LIST] [--filter REGEX] [--cpu LIST] [--node N]
//                [--counters LIST] [--out DIR] [--reserve-hugepages SPEC] [--benchmark_*...]
//   faultlab env [--json]
//   faultlab restore
//
// `run` validates every input before it writes or changes anything; bad input gets one line on
// stderr and exit code 2. It then runs the selected suites through Google Benchmark, pinned and
// counted, and writes DIR/results.json (Google Benchmark's JSON with the environment, topology and
// counter status in its context) and DIR/results.csv, each renamed into place only when complete.

#include <regex.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "bench/environment.h"
#include "bench/perf_counters.h"
#include "bench/suite.h"
#include "build_info.h"
#include "reports/fault_summary.h"
#include "reports/results_csv.h"
#include "topology/hugetlb.h"
#include "topology/system_settings.h"
#include "topology/topology.h"

namespace fs = std::filesystem;

namespace faultlab {
namespace {

constexpr int kBadInput = 2;

int BadInput(const std::string& message) {
  std::cerr << "faultlab: " << message << "\n";
  return kBadInput;
}

struct RunArgs {
  bool quick = false;
  std::vector<std::string> suites;
  std::string filter;
  std::string cpu_list;
  std::string node;
  std::vector<std::string> counters;
  std::string out;
  std::string reserve;
};

// The console view: one line per benchmark with the figures a reader looks at first (the mean
// of the repetitions and their spread, the tail, the first round, the harness share); every
// counter and repetition is in results.json and results.csv. Progress goes to stderr.
class CompactReporter : public benchmark::BenchmarkReporter {
 public:
  explicit CompactReporter(std::size_t total) : total_(total) {}

  bool ReportContext(const Context&) override {
    GetOutputStream() << absl::StrFormat("%-66s %9s %6s %9s %9s %9s %9s %7s\n", "benchmark",
                                         "mean", "cv", "p50", "p99", "max", "1st round",
                                         "harness");
    return true;
  }

  void ReportRuns(const std::vector<Run>& runs) override {
    if (runs.empty()) return;
    const Run& first = runs.front();
    const std::string name = DisplayName(first.run_name.str());
    if (first.run_type != Run::RT_Aggregate) {
      ++done_;
      std::cerr << "[" << done_ << "/" << total_ << "] " << name << " (" << total_ - done_
                << " left)\n";
      if (first.error_occurred) {
        GetOutputStream() << absl::StrFormat("%-66s %s\n", name, first.error_message);
        return;
      }
      if (first.repetitions <= 1) PrintRow(name, first, nullptr);
      return;
    }
    const Run* mean = nullptr;
    const Run* stddev = nullptr;
    for (const Run& run : runs) {
      if (run.aggregate_name == "mean") mean = &run;
      if (run.aggregate_name == "stddev") stddev = &run;
    }
    if (mean && !mean->error_occurred) PrintRow(name, *mean, stddev);
  }

 private:
  // The name without what every fault row repeats (iterations, repetitions, manual time).
  static std::string DisplayName(std::string name) {
    static const std::regex noise("/(iterations|repeats|rounds):[0-9]+|/manual_time");
    return std::regex_replace(name, noise, "");
  }

  static double Counter(const Run& run, const char* name) {
    auto it = run.counters.find(name);
    return it == run.counters.end() ? NAN : it->second.value;
  }

  // The spread is the coefficient of variation of the repetitions' means.
  void PrintRow(const std::string& name, const Run& run, const Run* stddev) {
    const std::string spread =
        stddev ? absl::StrFormat("%5.1f%%", stddev->GetAdjustedRealTime() /
                                                run.GetAdjustedRealTime() * 100)
               : std::string("     -");
    GetOutputStream() << absl::StrFormat(
        "%-66s %9s %6s %9s %9s %9s %9s %6.1f%%\n", name, FormatNs(run.GetAdjustedRealTime()),
        spread, FormatNs(Counter(run, "p50_ns")), FormatNs(Counter(run, "p99_ns")),
        FormatNs(Counter(run, "max_ns")), FormatNs(Counter(run, "first_round_ns")),
        Counter(run, "harness_ratio") * 100);
  }

  std::size_t total_;
  std::size_t done_ = 0;
};

// Collects the names `--benchmark_list_tests` prints, to count the run's benchmarks up front.
class ListReporter : public benchmark::ConsoleReporter {
 public:
  // Its error stream too: a filter that matches nothing gets faultlab's message, not two.
  ListReporter() {
    SetOutputStream(&names_);
    SetErrorStream(&errors_);
  }
  bool ReportContext(const Context&) override { return true; }
  std::size_t Count() const {
    std::size_t lines = 0;
    for (char ch : names_.str()) lines += ch == '\n';
    return lines;
  }

 private:
  std::ostringstream names_;
  std::ostringstream errors_;
};

// Google Benchmark parses its flags from an argv; this keeps the strings alive for it.
// Initialize() keeps argv[0] for good (as the context's executable name), so argv[0] is a static
// string rather than one of ours: every BenchmarkArgv may go out of scope.
class BenchmarkArgv {
 public:
  explicit BenchmarkArgv(std::vector<std::string> args) : args_(std::move(args)) {
    static char program[] = "faultlab";
    pointers_.push_back(program);
    for (std::size_t i = 1; i < args_.size(); ++i) pointers_.push_back(args_[i].data());
    pointers_.push_back(nullptr);
  }
  int argc = 0;
  char** Get() {
    argc = static_cast<int>(args_.size());
    return pointers_.data();
  }

 private:
  std::vector<std::string> args_;
  std::vector<char*> pointers_;
};

// Google Benchmark writes NaN and Infinity as bare words (the cv of a counter that stayed 0),
// which JSON does not allow; they become null.
std::string JsonWithoutNonFinite(const std::string& text) {
  static const std::regex non_finite(R"((": )-?(NaN|Infinity)([,\n]))");
  return std::regex_replace(text, non_finite, "$1null$3");
}

std::string Timestamp() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y%m%d-%H%M%S", std::gmtime(&now));
  return text;
}

// Creates `dir` (and parents) and proves it writable. Returns an error message, or empty.
// `created` lists the directories this made, so a failed run can remove them again.
std::string PrepareOutDir(const fs::path& dir, std::vector<fs::path>* created) {
  std::vector<fs::path> missing;
  for (fs::path p = dir; !p.empty() && !fs::exists(p); p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    std::error_code ec;
    if (!fs::create_directory(*it, ec) || ec) {
      for (auto& made : *created) fs::remove(made, ec);
      created->clear();
      return "cannot create output directory " + it->string() + ": " +
             (ec ? ec.message() : "failed");
    }
    created->insert(created->begin(), *it);
  }
  if (!fs::is_directory(dir)) return "output path " + dir.string() + " is not a directory";
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return "output directory " + dir.string() + " is not writable";
  }
  return {};
}

bool WriteFileAtomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".partial";
  {
    std::ofstream out(tmp);
    out << text;
    if (!out.flush()) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return !ec;
}

int Run(const RunArgs& args, const std::vector<std::string>& extras) {
  const auto run_start = std::chrono::steady_clock::now();
  // --- Validate everything first: nothing is written or changed before this block passes. ---
  for (const std::string& extra : extras) {
    if (extra.rfind("--benchmark_", 0) != 0) return BadInput("unknown option " + extra);
    if (extra.rfind("--benchmark_out", 0) == 0) {
      return BadInput(extra + " is faultlab's to set: use --out DIR");
    }
  }
  std::vector<std::string> suites = args.suites;
  if (suites.empty()) {
    for (const Suite& suite : Suites()) suites.push_back(suite.name);
  }
  for (const std::string& name : suites) {
    if (!FindSuite(name)) {
      std::string known;
      for (const Suite& suite : Suites()) known += (known.empty() ? "" : ", ") + suite.name;
      return BadInput("unknown suite '" + name + "' (suites: " + known + ")");
    }
  }
  if (!args.filter.empty()) {
    regex_t re;  // Google Benchmark matches its filter as a POSIX extended regex.
    if (regcomp(&re, args.filter.c_str(), REG_EXTENDED | REG_NOSUB) != 0) {
      return BadInput("--filter '" + args.filter + "' is not a valid regular expression");
    }
    regfree(&re);
  }
  std::unique_ptr<Topology> topology;
  try {
    topology = std::make_unique<Topology>();
  } catch (const std::exception& e) {
    std::cerr << "faultlab: cannot read the machine's topology: " << e.what() << "\n";
    return 1;
  }
  std::vector<int> cpu_request;
  std::string error;
  if (!args.cpu_list.empty()) {
    auto parsed = ParseCpuList(args.cpu_list, &error);
    if (!parsed) return BadInput("--cpu: " + error);
    cpu_request = *parsed;
  }
  std::optional<int> node;
  if (!args.node.empty()) {
    int parsed = -1;
    if (!absl::SimpleAtoi(args.node, &parsed) || parsed < 0) {
      return BadInput("--node: '" + args.node + "' is not a NUMA node number");
    }
    node = parsed;
  }
  auto cpus = ResolveRunCpus(*topology, cpu_request, node, &error);
  if (!cpus) return BadInput(error);
  const std::string tracefs = MountTracefsPrivately();
  std::vector<std::string> counters = args.counters.empty() ? DefaultCounterNames() : args.counters;
  // Only names the user gave are bad input; a default event this machine lacks (a tracepoint with
  // tracefs unmounted) is dropped with its reason like any event that cannot be opened.
  if (!args.counters.empty()) {
    if (std::string bad = CheckCounterNames(counters); !bad.empty()) return BadInput(bad);
  }
  std::vector<HugepageRequest> reservations;
  if (!args.reserve.empty()) {
    auto parsed = ParseHugepageRequests(args.reserve, &error);
    if (!parsed) return BadInput("--reserve-hugepages: " + error);
    reservations = *parsed;
  }
  const bool default_out = args.out.empty();
  const fs::path out_root = fs::path(build_info::kSourceDir) / "reports" / "out";
  const fs::path out_dir = default_out ? out_root / Timestamp() : fs::path(args.out);
  const fs::path partial_json = out_dir / ".results.json.partial";

  std::vector<std::string> gb_args = {"faultlab"};
  gb_args.insert(gb_args.end(), extras.begin(), extras.end());
  if (!args.filter.empty()) gb_args.push_back("--benchmark_filter=" + args.filter);

  RunOptions options;
  options.quick = args.quick;
  options.topology = topology.get();
  options.cpus = *cpus;
  options.node = node;
  options.counters = counters;
  SetCurrentRunOptions(options);
  for (const std::string& name : suites) FindSuite(name)->register_benchmarks(options);

  // Count the benchmarks the filter selects (and reject a filter that selects none, or a
  // Google Benchmark flag it does not know) before anything is written.
  std::size_t total = 0;
  {
    std::vector<std::string> list_args = gb_args;
    list_args.push_back("--benchmark_list_tests=true");
    BenchmarkArgv argv(list_args);
    char** raw = argv.Get();
    benchmark::Initialize(&argv.argc, raw);
    if (benchmark::ReportUnrecognizedArguments(argv.argc, raw)) return kBadInput;
    ListReporter lister;
    total = benchmark::RunSpecifiedBenchmarks(&lister);
    if (total == 0) {
      return BadInput("no benchmark matches --filter '" + args.filter + "' in suites " +
                      [&] {
                        std::string s;
                        for (auto& n : suites) s += (s.empty() ? "" : ",") + n;
                        return s;
                      }());
    }
  }

  std::vector<fs::path> created;
  if (std::string why = PrepareOutDir(out_dir, &created); !why.empty()) return BadInput(why);

  // --- Changes to the machine, each journalled and restored on exit or signal. ---
  if (std::string message; !RestoreStaleJournal(&message).empty()) {
    std::cerr << "faultlab: " << message << "\n";
  }
  nlohmann::json reserved = nlohmann::json::array();
  for (const HugepageRequest& request : reservations) {
    try {
      const long granted = ReserveHugepages(request.page_size, request.count, node.value_or(-1));
      reserved.push_back({{"page_size", request.page_size},
                          {"requested", request.count},
                          {"free_after_reserve", granted},
                          {"node", node.value_or(-1)}});
      std::cerr << "faultlab: reserved " << request.page_size / 1024 << " kB hugetlb pages: "
                << granted << " free of " << request.count << " asked (restored on exit)\n";
    } catch (const std::exception& e) {
      std::cerr << "faultlab: --reserve-hugepages: " << e.what() << "\n";
      SystemSettings::Get().RestoreAll();
      for (auto& made : created) fs::remove_all(made);
      return 1;
    }
  }

  nlohmann::json environment = CaptureEnvironment();
  const std::vector<std::string> warnings = DistortionWarnings(environment);
  for (const std::string& warning : warnings) std::cerr << "***WARNING*** " << warning << "\n";
  CounterGroup probe(counters);
  nlohmann::json dropped = nlohmann::json::array();
  for (const DroppedCounter& d : probe.dropped()) {
    dropped.push_back({{"name", d.name}, {"reason", d.reason}});
    std::cerr << "faultlab: counter " << d.name << " dropped: " << d.reason << "\n";
  }
  nlohmann::json degraded = nlohmann::json::array();
  for (const DroppedCounter& d : probe.degraded()) {
    degraded.push_back({{"name", d.name}, {"reason", d.reason}});
    std::cerr << "faultlab: counter " << d.name << ": " << d.reason << "\n";
  }

  gb_args.push_back("--benchmark_list_tests=false");
  gb_args.push_back("--benchmark_out=" + partial_json.string());
  gb_args.push_back("--benchmark_out_format=json");
  BenchmarkArgv argv(gb_args);
  char** raw = argv.Get();
  benchmark::Initialize(&argv.argc, raw);
  CompactReporter display(total);
  benchmark::RunSpecifiedBenchmarks(&display);
  benchmark::Shutdown();
  SystemSettings::Get().RestoreAll();

  // --- Finish the report: the environment goes into the context, then JSON and CSV. ---
  nlohmann::json results;
  {
    std::ifstream in(partial_json);
    std::stringstream text;
    text << in.rdbuf();
    results = nlohmann::json::parse(JsonWithoutNonFinite(text.str()), nullptr,
                                    /*allow_exceptions=*/false);
  }
  fs::remove(partial_json);
  if (results.is_discarded()) {
    std::cerr << "faultlab: Google Benchmark wrote no readable JSON\n";
    return 1;
  }
  nlohmann::json& context = results["context"];
  context["schema_version"] = kSchemaVersion;
  context["faultlab"] = {
      {"environment", environment},
      {"warnings", warnings},
      {"topology", topology->SummaryJson()},
      {"options",
       {{"quick", args.quick},
        {"suites", suites},
        {"filter", args.filter},
        {"cpus", *cpus},
        {"node", node ? nlohmann::json(*node) : nlohmann::json(nullptr)},
        {"hugepages_reserved", reserved}}},
      {"counters",
       {{"requested", counters},
        {"opened", probe.names()},
        {"dropped", dropped},
        {"degraded", degraded},
        {"tracefs", tracefs}}},
  };
  topology->ExportXml((out_dir / "topology.xml").string());
  context["faultlab"]["run_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  const std::string summary = FaultSummary(results);
  const bool ok = WriteFileAtomically(out_dir / "results.json", results.dump(2) + "\n") &&
                  WriteFileAtomically(out_dir / "results.csv", ResultsCsv(results)) &&
                  WriteFileAtomically(out_dir / "summary.txt", summary);
  if (!ok) {
    std::cerr << "faultlab: cannot write results into " << out_dir << "\n";
    return 1;
  }
  if (default_out) {
    std::error_code ec;
    fs::remove(out_root / "latest", ec);
    fs::create_directory_symlink(out_dir.filename(), out_root / "latest", ec);
  }
  std::cout << "\n" << summary;
  std::cerr << "faultlab: wrote " << out_dir.string() << "/{results.json,results.csv,summary.txt}"
            << "\n";
  return 0;
}

int Env(bool json) {
  nlohmann::json environment = CaptureEnvironment();
  try {
    Topology topology;
    environment["topology"] = topology.SummaryJson();
  } catch (const std::exception& e) {
    environment["topology"] = std::string("unavailable: ") + e.what();
  }
  if (json) {
    std::cout << environment.dump(2) << "\n";
  } else {
    PrintEnvironmentTable(environment, std::cout);
  }
  return 0;
}

int Restore() {
  std::string message;
  RestoreStaleJournal(&message);
  std::cout << "faultlab: " << message << "\n";
  return 0;
}

}  // namespace
}  // namespace faultlab

int main(int argc, char** argv) {
  using namespace faultlab;
  CLI::App app{"faultlab: benchmarks of the Linux page-fault fast paths"};
  app.require_subcommand(1);

  RunArgs args;
  CLI::App* run = app.add_subcommand("run", "run benchmark suites and write results.json/.csv");
  run->add_flag("--quick", args.quick, "the quick suite: smaller regions, fewer repetitions");
  run->add_option("--suite", args.suites, "suites to run, comma-separated")->delimiter(',');
  run->add_option("--filter", args.filter, "regular expression on benchmark names");
  run->add_option("--cpu", args.cpu_list, "CPUs to pin workers to, e.g. 0,2-3");
  run->add_option("--node", args.node, "NUMA node for CPUs and memory");
  run->add_option("--counters", args.counters, "perf event names, comma-separated")
      ->delimiter(',');
  run->add_option("--out", args.out, "output directory (default reports/out/<timestamp>)");
  run->add_option("--reserve-hugepages", args.reserve,
                  "reserve hugetlb pages for the run: N (2 MiB) or 2M:N,1G:N; restored on exit");
  run->allow_extras();

  bool env_json = false;
  CLI::App* env = app.add_subcommand("env", "print the environment and what would be skipped");
  env->add_flag("--json", env_json, "print JSON instead of a table");
  CLI::App* restore =
      app.add_subcommand("restore", "restore system settings a crashed run left changed");

  const std::string first = argc > 1 ? argv[1] : "";
  if (!first.empty() && first[0] != '-' && first != "run" && first != "env" &&
      first != "restore") {
    return BadInput(std::string("unknown command '") + argv[1] +
                    "' (commands: run, env, restore)");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return BadInput(e.what());
  }
  if (*run) return Run(args, run->remaining());
  if (*env) return Env(env_json);
  if (*restore) return Restore();
  return BadInput("no subcommand");
}
