// faultlab: the program behind scripts/faultlab.
//
//   faultlab run [--quick] [--suite LIST] [--filter REGEX] [--cpu LIST] [--node N]
//                [--counters LIST] [--out DIR] [--reserve-hugepages SPEC] [--cow-pte-prctl N]
//                [--repetitions N] [--numa-balancing] [--benchmark_*...]
//   faultlab env [--json]
//   faultlab restore
//
// `run` validates every input before it writes or changes anything; bad input gets one line on
// stderr and exit code 2. It then runs the selected suites through Google Benchmark, pinned and
// counted, and writes DIR/results.json (Google Benchmark's JSON with the environment, topology and
// counter status in its context), DIR/results.csv, DIR/summary.txt and DIR/topology.xml. DIR is
// created only when the run has finished, and each file is renamed into place only when complete.

#include <limits.h>
#include <malloc.h>
#include <regex.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
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
#include "bench/profile_control.h"
#include "bench/suite.h"
#include "build_info.h"
#include "reports/fault_summary.h"
#include "reports/model_summary.h"
#include "reports/results_csv.h"
#include "topology/hugetlb.h"
#include "topology/system_settings.h"
#include "topology/topology.h"

namespace fs = std::filesystem;

namespace faultlab {
namespace {

constexpr int kBadInput = 2;

// Forked workers pass their counter totals back through fixed slots of this many (fault_suite.cc).
constexpr std::size_t kMaxCounters = 64;
// A full run repeats every benchmark: 100 keeps a mistyped count from running for days.
constexpr int kMaxRepetitions = 100;

// RestoreStaleJournal's message when there is no journal: the one message not worth printing.
constexpr const char* kNoJournalMessage = "no restore journal";

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
  std::string cow_pte_prctl;
  std::string repetitions;
  bool numa_balancing = false;
};

// The console view: one line per benchmark with the figures a reader looks at first (the mean
// of the repetitions and their spread, the tail, the first round, the harness share); every
// counter and repetition is in results.json and results.csv. Progress goes to stderr.
// It also notes when each benchmark ran (its span), on CLOCK_MONOTONIC, the clock
// `faultlab run --flamegraph` has perf stamp its samples with, so one profile of the whole run
// cuts into one flame graph per benchmark. A benchmark's span runs from the previous one's end
// (or the run's start) to its own rows, so its setup is in it too.
class CompactReporter : public benchmark::BenchmarkReporter {
 public:
  explicit CompactReporter(std::size_t total) : total_(total), span_start_(MonotonicSeconds()) {}

  // [{"name", "start", "end"}] in CLOCK_MONOTONIC seconds, one per benchmark in run order.
  const nlohmann::json& spans() const { return spans_; }

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
      const double now = MonotonicSeconds();
      spans_.push_back({{"name", first.run_name.str()}, {"start", span_start_}, {"end", now}});
      // In a --flamegraph run, which of its repetitions perf recorded (profile_control.h).
      if (ProfileControlActive()) spans_.back()["recorded_repetitions"] = TakeRecordedRepetitions();
      span_start_ = now;
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
    // A suite that reports no percentile gives its median round (the model suite); one that
    // measures no harness cost shows "-".
    const double p50 = std::isnan(Counter(run, "p50_ns")) ? Counter(run, "median_ns")
                                                          : Counter(run, "p50_ns");
    const double harness = Counter(run, "harness_ratio");
    GetOutputStream() << absl::StrFormat(
        "%-66s %9s %6s %9s %9s %9s %9s %7s\n", name, FormatNs(run.GetAdjustedRealTime()), spread,
        FormatNs(p50), FormatNs(Counter(run, "p99_ns")), FormatNs(Counter(run, "max_ns")),
        FormatNs(Counter(run, "first_round_ns")),
        std::isnan(harness) ? std::string("-") : absl::StrFormat("%.1f%%", harness * 100));
  }

  static double MonotonicSeconds() {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
  }

  std::size_t total_;
  std::size_t done_ = 0;
  double span_start_;
  nlohmann::json spans_ = nlohmann::json::array();
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

// Google Benchmark flags that change something in a faultlab run. The others are faultlab's to set
// (iterations, repetitions, output, the console view) or have a faultlab option instead. Values
// are checked here because Google Benchmark answers a bad one with its usage text and exit code 0.
// Returns why `arg` is refused, or empty.
std::string CheckBenchmarkFlag(const std::string& arg) {
  const std::size_t eq = arg.find('=');
  const std::string flag = arg.substr(0, eq);
  const std::optional<std::string> value =
      eq == std::string::npos ? std::nullopt : std::optional<std::string>(arg.substr(eq + 1));
  if (flag == "--benchmark_enable_random_interleaving" ||
      flag == "--benchmark_report_aggregates_only" ||
      flag == "--benchmark_display_aggregates_only") {
    if (!value || *value == "true" || *value == "false" || *value == "1" || *value == "0") return {};
    return flag + " takes true or false, not '" + *value + "'";
  }
  if (flag == "--benchmark_context") {
    bool ok = value && !value->empty();
    for (std::size_t begin = 0; ok && begin <= value->size();) {
      std::size_t end = value->find(',', begin);
      if (end == std::string::npos) end = value->size();
      const std::string pair = value->substr(begin, end - begin);
      const std::size_t sep = pair.find('=');
      ok = sep != std::string::npos && sep > 0 && pair.find('=', sep + 1) == std::string::npos;
      begin = end + 1;
    }
    if (ok) return {};
    return flag + " takes KEY=VALUE[,KEY=VALUE...], not '" + value.value_or("") + "'";
  }
  if (flag == "--v") {
    int level = -1;
    if (value && absl::SimpleAtoi(*value, &level) && level >= 0) return {};
    return "--v takes a verbosity level (a number), not '" + value.value_or("") + "'";
  }
  if (flag == "--benchmark_filter") return flag + " is faultlab's to set: use --filter REGEX";
  if (flag == "--benchmark_out" || flag == "--benchmark_out_format") {
    return flag + " is faultlab's to set: use --out DIR (results.json and results.csv)";
  }
  if (flag == "--benchmark_min_time" || flag == "--benchmark_min_warmup_time" ||
      flag == "--benchmark_repetitions") {
    if (flag == "--benchmark_repetitions") return flag + " is faultlab's to set: use --repetitions N";
    return flag + " has no effect in faultlab: iterations and repetitions are set per benchmark";
  }
  if (flag == "--benchmark_format" || flag == "--benchmark_color" ||
      flag == "--benchmark_counters_tabular" || flag == "--benchmark_time_unit") {
    return flag + " has no effect in faultlab: it prints its own console view, and every figure "
                  "is in results.json and results.csv";
  }
  if (flag == "--benchmark_perf_counters") {
    return flag + " has no effect in faultlab: use --counters LIST";
  }
  if (flag == "--benchmark_list_tests") {
    return flag + " has no effect in faultlab: a run prints each benchmark's name as it goes";
  }
  return arg.rfind("-", 0) == 0 ? "unknown option " + arg : "unexpected argument '" + arg + "'";
}

// Proves that `dir` could be created, or written if it exists, without creating it: the nearest
// existing ancestor (or `dir` itself) must be a directory this process can add entries to. Only
// making and removing a probe directory there tells for sure: access() says yes to root on /proc.
// Returns why not, or empty.
std::string CheckOutDir(const fs::path& dir) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(dir, ec);
  if (ec) return "output directory " + dir.string() + ": " + ec.message();
  for (fs::path p = absolute;; p = p.parent_path()) {
    const fs::file_status status = fs::status(p, ec);
    if (status.type() == fs::file_type::not_found && p != p.parent_path()) continue;
    if (ec) {
      return "cannot use output directory " + dir.string() + ": " +
             (p == absolute ? "" : p.string() + ": ") + ec.message();
    }
    if (!fs::is_directory(status)) {
      return "cannot use output directory " + dir.string() + ": " + p.string() +
             " is not a directory";
    }
    std::string probe = (p / ".faultlab-probe-XXXXXX").string();
    if (mkdtemp(probe.data()) == nullptr) {
      return "cannot use output directory " + dir.string() + ": cannot write in " + p.string() +
             ": " + std::strerror(errno);
    }
    rmdir(probe.c_str());
    return {};
  }
}

// Creates `dir` and its missing parents. `created` gets each directory this made, parents first,
// so a failed run can remove them again. Returns an error message, or empty.
std::string CreateOutDir(const fs::path& dir, std::vector<fs::path>* created) {
  std::vector<fs::path> missing;
  std::error_code ec;
  for (fs::path p = dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    const bool made = fs::create_directory(*it, ec);
    if (ec) return "cannot create output directory " + it->string() + ": " + ec.message();
    if (made) created->push_back(*it);
  }
  return {};
}

// Writes a temporary file next to `path` and renames it over `path`: a reader sees the old file
// or the whole new one. Returns why it failed, or empty.
std::string WriteFileAtomically(const fs::path& path, const std::string& text) {
  const fs::path tmp =
      path.parent_path() / ("." + path.filename().string() + ".partial." + std::to_string(getpid()));
  std::error_code ec;
  {
    errno = 0;
    std::ofstream out(tmp);
    out << text;
    out.close();
    if (out.fail()) ec.assign(errno ? errno : EIO, std::generic_category());
  }
  if (!ec) fs::rename(tmp, path, ec);
  if (!ec) return {};
  std::error_code ignored;
  fs::remove(tmp, ignored);
  return "cannot write " + path.string() + ": " + ec.message();
}

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Google Benchmark writes its JSON into a private directory, so that nothing appears in the
// output directory until the run is complete. The directory goes on every return from Run and,
// through this handler, on SIGINT/SIGTERM. Run installs the handler before SystemSettings installs
// its own, which restores the machine's settings first and then calls this one.
char g_scratch_dir[PATH_MAX];
char g_scratch_files[2][PATH_MAX];  // every file Run puts in it
std::atomic<pid_t> g_scratch_owner{0};
static_assert(std::atomic<pid_t>::is_always_lock_free, "the signal handler reads it");

// Async-signal-safe calls only.
extern "C" void RemoveScratchAndDie(int sig) {
  // A forked worker has the parent's handler but not its files.
  if (g_scratch_owner.load() == getpid()) {
    for (const char* file : g_scratch_files) unlink(file);
    rmdir(g_scratch_dir);
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  // Pending until the handler returns; the exit status then still names the signal.
  raise(sig);
}

void InstallScratchCleanup() {
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction current {};
    sigaction(sig, nullptr, &current);
    if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) continue;
    struct sigaction ours {};
    ours.sa_handler = RemoveScratchAndDie;
    sigemptyset(&ours.sa_mask);
    sigaction(sig, &ours, nullptr);
  }
}

class ScratchDir {
 public:
  // path() is empty if the directory could not be made; errno says why.
  ScratchDir() {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/faultlab-XXXXXX";
    if (tmpl.size() + 16 >= PATH_MAX) {  // the handler's copies must hold every path
      errno = ENAMETOOLONG;
      return;
    }
    if (mkdtemp(tmpl.data()) == nullptr) return;
    path_ = tmpl;
    std::snprintf(g_scratch_dir, sizeof g_scratch_dir, "%s", tmpl.c_str());
    std::snprintf(g_scratch_files[0], PATH_MAX, "%s", Json().c_str());
    std::snprintf(g_scratch_files[1], PATH_MAX, "%s", Xml().c_str());
    g_scratch_owner.store(getpid());
  }
  ~ScratchDir() {
    g_scratch_owner.store(0);
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path Json() const { return path_ / "results.json"; }
  fs::path Xml() const { return path_ / "topology.xml"; }

 private:
  fs::path path_;
};

// The default output directory: reports/out/<timestamp>, or <timestamp>-2, -3... when a run in
// the same second took that name. create_directory claims a name atomically against such a run.
std::string ClaimTimestampDir(const fs::path& root, const std::string& stamp, fs::path* dir) {
  for (int n = 1; n <= 100; ++n) {
    const fs::path candidate = root / (n == 1 ? stamp : stamp + "-" + std::to_string(n));
    std::error_code ec;
    if (fs::create_directory(candidate, ec)) {
      *dir = candidate;
      return {};
    }
    if (ec) return "cannot create output directory " + candidate.string() + ": " + ec.message();
  }
  return "cannot create output directory " + (root / stamp).string() + ": 100 runs took the name";
}

int Run(const RunArgs& args, const std::vector<std::string>& extras) {
  const auto run_start = std::chrono::steady_clock::now();
  // Before anything can call SystemSettings::Get(), so that its handler calls this one (see above).
  InstallScratchCleanup();
  // --- Validate everything first: nothing is written or changed before this block passes. ---
  for (const std::string& extra : extras) {
    if (std::string why = CheckBenchmarkFlag(extra); !why.empty()) return BadInput(why);
  }
  // Each suite once, in the order given: a suite named twice would run every benchmark twice.
  std::vector<std::string> suites;
  std::vector<std::string> asked = args.suites;
  if (asked.empty()) {
    for (const Suite& suite : Suites()) asked.push_back(suite.name);
  }
  for (const std::string& name : asked) {
    if (std::find(suites.begin(), suites.end(), name) == suites.end()) suites.push_back(name);
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
  if (args.counters.size() > kMaxCounters) {
    return BadInput("--counters: " + std::to_string(args.counters.size()) + " events, at most " +
                    std::to_string(kMaxCounters));
  }
  const std::string tracefs = MountTracefsPrivately();
  std::vector<std::string> counters = args.counters.empty() ? DefaultCounterNames() : args.counters;
  // Only names the user gave are bad input; a default event this machine lacks (a tracepoint with
  // tracefs unmounted) is dropped with its reason like any event that cannot be opened.
  if (!args.counters.empty()) {
    if (std::string bad = CheckCounterNames(counters); !bad.empty()) return BadInput(bad);
  }
  std::optional<int> cow_pte_prctl;
  if (!args.cow_pte_prctl.empty()) {
    int parsed = -1;
    if (!absl::SimpleAtoi(args.cow_pte_prctl, &parsed) || parsed <= 0) {
      return BadInput("--cow-pte-prctl: '" + args.cow_pte_prctl + "' is not a prctl number");
    }
    if (std::find(suites.begin(), suites.end(), "fork") == suites.end()) {
      return BadInput("--cow-pte-prctl is for the fork suite, which this run does not include");
    }
    cow_pte_prctl = parsed;
  }
  std::optional<int> repetitions;
  if (!args.repetitions.empty()) {
    int parsed = 0;
    if (!absl::SimpleAtoi(args.repetitions, &parsed) || parsed < 1 || parsed > kMaxRepetitions) {
      return BadInput("--repetitions: '" + args.repetitions + "' is not a count from 1 to " +
                      std::to_string(kMaxRepetitions));
    }
    repetitions = parsed;
  }
  if (args.numa_balancing &&
      std::find(suites.begin(), suites.end(), "numa") == suites.end()) {
    return BadInput("--numa-balancing is for the numa suite, which this run does not include");
  }
  std::vector<HugepageRequest> reservations;
  if (!args.reserve.empty()) {
    auto parsed = ParseHugepageRequests(args.reserve, &error);
    if (!parsed) return BadInput("--reserve-hugepages: " + error);
    reservations = *parsed;
  }
  const bool default_out = args.out.empty();
  const fs::path out_root = fs::path(build_info::kSourceDir) / "reports" / "out";
  const std::string stamp = Timestamp();  // the run's start names its default directory
  if (std::string why = CheckOutDir(default_out ? out_root : fs::path(args.out)); !why.empty()) {
    return BadInput(why);
  }

  std::vector<std::string> gb_args = {"faultlab"};
  gb_args.insert(gb_args.end(), extras.begin(), extras.end());
  if (!args.filter.empty()) gb_args.push_back("--benchmark_filter=" + args.filter);

  RunOptions options;
  options.quick = args.quick;
  options.suites = suites;
  options.cow_pte_prctl = cow_pte_prctl;
  options.repetitions = repetitions;
  options.numa_balancing = args.numa_balancing;
  options.topology = topology.get();
  options.cpus = *cpus;
  options.node = node;
  options.counters = counters;
  // Before the suites register: a recorded run doubles every benchmark's repetitions.
  if (std::optional<std::string> why = StartProfileControl()) return BadInput(*why);
  if (ProfileControlActive() &&
      std::any_of(extras.begin(), extras.end(), [](const std::string& arg) {
        return arg.rfind("--benchmark_enable_random_interleaving", 0) == 0 &&
               arg != "--benchmark_enable_random_interleaving=false" &&
               arg != "--benchmark_enable_random_interleaving=0";
      })) {
    return BadInput(
        "--flamegraph and --benchmark_enable_random_interleaving do not go together: the "
        "recording is switched per repetition in each benchmark's own order");
  }
  SetCurrentRunOptions(options);
  for (const std::string& name : suites) FindSuite(name)->register_benchmarks(options);

  // Count the benchmarks the filter selects (and reject a filter that selects none) before
  // anything is written.
  std::size_t total = 0;
  {
    // Without --benchmark_context: Google Benchmark adds its pairs on every Initialize, and
    // complains about each pair the second time.
    std::vector<std::string> list_args;
    for (const std::string& arg : gb_args) {
      if (arg.rfind("--benchmark_context", 0) != 0) list_args.push_back(arg);
    }
    list_args.push_back("--benchmark_list_tests=true");
    BenchmarkArgv argv(list_args);
    char** raw = argv.Get();
    benchmark::Initialize(&argv.argc, raw);
    // CheckBenchmarkFlag passed only flags Google Benchmark knows; this guards that list.
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

  ScratchDir scratch;
  if (scratch.path().empty()) {
    std::cerr << "faultlab: cannot make a temporary directory: " << std::strerror(errno) << "\n";
    return 1;
  }

  // --- Changes to the machine, each journalled and restored on exit or signal. ---
  {
    std::string message;
    RestoreStaleJournal(&message);
    // Anything but "no journal" is worth saying: what was restored, or why a journal was left.
    if (message != kNoJournalMessage) std::cerr << "faultlab: " << message << "\n";
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
      return 1;
    }
  }

  nlohmann::json environment = CaptureEnvironment();
  const std::vector<std::string> warnings = DistortionWarnings(environment);
  for (const std::string& warning : warnings) std::cerr << "***WARNING*** " << warning << "\n";
  // Which counters open here, for the context. Like the workers' groups it does not inherit, and
  // it is closed before the run: an open inheriting group would follow every benchmark thread and
  // forked worker.
  std::vector<std::string> opened;
  nlohmann::json dropped = nlohmann::json::array();
  nlohmann::json degraded = nlohmann::json::array();
  {
    CounterGroup probe(counters, /*inherit=*/false);
    opened = probe.names();
    for (const DroppedCounter& d : probe.dropped()) {
      dropped.push_back({{"name", d.name}, {"reason", d.reason}});
      std::cerr << "faultlab: counter " << d.name << " dropped: " << d.reason << "\n";
    }
    for (const DroppedCounter& d : probe.degraded()) {
      degraded.push_back({{"name", d.name}, {"reason", d.reason}});
      std::cerr << "faultlab: counter " << d.name << ": " << d.reason << "\n";
    }
  }

  gb_args.push_back("--benchmark_list_tests=false");
  gb_args.push_back("--benchmark_out=" + scratch.Json().string());
  gb_args.push_back("--benchmark_out_format=json");
  BenchmarkArgv argv(gb_args);
  char** raw = argv.Get();
  benchmark::Initialize(&argv.argc, raw);
  CompactReporter display(total);
  benchmark::RunSpecifiedBenchmarks(&display);
  benchmark::Shutdown();
  SystemSettings::Get().RestoreAll();

  // --- Finish the report: the environment goes into the context, then JSON and CSV. ---
  BlockTerminatingSignals defer;
  nlohmann::json results = nlohmann::json::parse(JsonWithoutNonFinite(Slurp(scratch.Json())),
                                                 nullptr, /*allow_exceptions=*/false);
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
        {"hugepages_reserved", reserved},
        // The environment above is the machine's state before the run; with this opt-in the
        // numa suite's hinting rows turned numa_balancing on around themselves (and back).
        {"numa_balancing_opt_in", args.numa_balancing}}},
      {"counters",
       {{"requested", counters},
        {"opened", opened},
        {"dropped", dropped},
        {"degraded", degraded},
        {"tracefs", tracefs}}},
  };
  context["faultlab"]["benchmark_spans"] = display.spans();
  if (ProfileControlActive()) {
    context["faultlab"]["profile_control"] = {
        {"recorded_repetitions", "1 and 2 of every 4, counted from 0"},
        {"comm", ProfileComm()},
        {"repetitions_doubled", true}};
  }
  context["faultlab"]["run_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  const std::string summary = FaultSummary(results) + ModelSummary(results);
  std::vector<std::pair<std::string, std::string>> files = {
      {"results.json", results.dump(2) + "\n"},
      {"results.csv", ResultsCsv(results)},
      {"summary.txt", summary},
  };
  // The topology is a record of the machine, not a result: a run is not failed for want of it.
  if (topology->ExportXml(scratch.Xml().string())) {
    files.push_back({"topology.xml", Slurp(scratch.Xml())});
  } else {
    std::cerr << "faultlab: topology.xml not written: hwloc: " << std::strerror(errno) << "\n";
  }

  // Only now does the output directory appear, and each file in it only when complete.
  std::vector<fs::path> created;
  fs::path out_dir = args.out;
  std::string why = CreateOutDir(default_out ? out_root : out_dir, &created);
  if (why.empty() && default_out) {
    why = ClaimTimestampDir(out_root, stamp, &out_dir);
    if (why.empty()) created.push_back(out_dir);
  }
  std::vector<fs::path> written;
  for (const auto& [name, text] : files) {
    if (!why.empty()) break;
    why = WriteFileAtomically(out_dir / name, text);
    if (why.empty()) written.push_back(out_dir / name);
  }
  if (!why.empty()) {
    std::error_code ec;
    for (const fs::path& file : written) fs::remove(file, ec);
    for (auto it = created.rbegin(); it != created.rend(); ++it) fs::remove(*it, ec);
    std::cerr << "faultlab: " << why << "\n";
    return 1;
  }
  if (default_out) {
    std::error_code ec;
    fs::remove(out_root / "latest", ec);
    fs::create_directory_symlink(out_dir.filename(), out_root / "latest", ec);
  }
  std::cout << "\n" << summary;
  std::cerr << "faultlab: wrote " << out_dir.string() << "/{";
  for (std::size_t i = 0; i < files.size(); ++i) std::cerr << (i ? "," : "") << files[i].first;
  std::cerr << "}\n";
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
    // As a run's context has them beside the environment: a reader of the JSON alone (a guest's
    // `env --json` from `faultlab vm`) sees the same warnings the table prints.
    environment["warnings"] = DistortionWarnings(environment);
    std::cout << environment.dump(2) << "\n";
  } else {
    PrintEnvironmentTable(environment, std::cout);
  }
  return 0;
}

// Exit code 1 while a journal remains (damaged, unreadable, owned by a running faultlab, or with
// a setting that could not be written back): the machine may still be changed.
int Restore() {
  std::string message;
  RestoreStaleJournal(&message);
  std::error_code ec;
  const bool remains = fs::exists(RestoreJournalPath(), ec) || ec;
  (remains ? std::cerr : std::cout) << "faultlab: " << message << "\n";
  return remains ? 1 : 0;
}

}  // namespace
}  // namespace faultlab

int main(int argc, char** argv) {
  using namespace faultlab;
  // hwloc would dlopen its GL, OpenCL, PCI and libxml2 plugins, and libX11, libicu, libOpenCL and
  // more with them: some 90 mappings that every fork benchmark would copy and every child tear
  // down (about 150 us of a 1 MiB fork here). faultlab reads no I/O devices, and hwloc writes
  // topology.xml without libxml2 just as well. A user's own setting wins.
  setenv("HWLOC_PLUGINS_BLACKLIST", "hwloc_gl,hwloc_opencl,hwloc_pci,hwloc_xml_libxml", 0);
  // glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
  // after one premise check read the pagemap of a 4 GiB region (8 MiB), later large blocks came
  // from the heap and stayed touched: faultlab kept ~8 MiB more of its own pages, and every later
  // fork copied their PTEs (a 1 MiB fork went from 0.17 to 0.36 ms). A fixed threshold turns the
  // adjustment off: blocks of 128 KiB and more are mapped and unmapped, and the heap is trimmed.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  mallopt(M_TRIM_THRESHOLD, 128 * 1024);
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
  run->add_option("--repetitions", args.repetitions,
                  "repetitions of every benchmark (default 3 with --quick, else 5; a comparison's "
                  "U test wants 9 or more)");
  run->add_option("--cow-pte-prctl", args.cow_pte_prctl,
                  "the prctl number of a kernel carrying the COW-PTE series: adds the fork "
                  "suite's *_cow_pte cases (never called by default: the series used 65, which "
                  "is PR_SET_MDWE in mainline)");
  run->add_flag("--numa-balancing", args.numa_balancing,
                "let the numa suite's hinting rows turn kernel.numa_balancing on around "
                "themselves (journalled, restored after them, on exit, on signals and by "
                "`faultlab restore`); without it they are skip rows");
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
