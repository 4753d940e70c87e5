// What the CLI tests share: a scratch directory, reading a file whole, running the faultlab
// binary (FAULTLAB_BINARY, set by tests/CMakeLists.txt) with its output captured, finding the
// processes of a run, and reading the results.json a run writes: its iteration rows, their
// names' parts and counters, and the skip rows' reasons.
#pragma once

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace faultlab::cli_test {

namespace fs = std::filesystem;

struct Outcome {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A fresh directory under /tmp, removed with everything in it at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/tmp/faultlab-cli-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs the faultlab binary with `args`; stdout and stderr go to files in `scratch`.
inline Outcome Faultlab(const std::vector<std::string>& args, const ScratchDir& scratch) {
  std::string command = FAULTLAB_BINARY;
  for (const std::string& arg : args) command += " '" + arg + "'";
  const fs::path out = scratch.path() / "stdout";
  const fs::path err = scratch.path() / "stderr";
  command += " >" + out.string() + " 2>" + err.string();
  const int status = std::system(command.c_str());
  Outcome outcome;
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  outcome.out = Slurp(out);
  outcome.err = Slurp(err);
  return outcome;
}

// Starts the faultlab binary with `args` in the background, for a test that signals it mid-run:
// its restore journal at `journal`, stdout discarded, stderr into `scratch`/stderr. Returns its
// pid (-1 if fork failed); the caller reaps it.
inline pid_t StartFaultlab(const std::vector<std::string>& args, const fs::path& journal,
                           const ScratchDir& scratch) {
  std::vector<std::string> argv_strings = {FAULTLAB_BINARY};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_strings) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const std::string err = (scratch.path() / "stderr").string();
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("FAULTLAB_JOURNAL", journal.c_str(), 1);
    if (!freopen("/dev/null", "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(127);
    execv(FAULTLAB_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

// The number at the start of the file at `path` (a sysfs or procfs setting), or -1.
inline long ReadLong(const std::string& path) {
  std::ifstream in(path);
  long value = -1;
  in >> value;
  return value;
}

// The pids of processes whose command line contains `needle` (a run's --out directory names
// the run and every worker it forked).
inline std::vector<int> ProcessesWith(const std::string& needle) {
  std::vector<int> pids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;  // not a process
    // Arguments are NUL-separated; a needle without NULs matches within one argument.
    if (Slurp(entry.path() / "cmdline").find(needle) != std::string::npos) {
      pids.push_back(std::stoi(name));
    }
  }
  return pids;
}

// The processes whose command line holds `needle` (ProcessesWith) still there after a grace of
// up to 2 s: what a killed run left behind.
inline std::vector<int> SurvivorsWith(const std::string& needle) {
  std::vector<int> survivors;
  for (int i = 0; i < 20; ++i) {
    survivors = ProcessesWith(needle);
    if (survivors.empty()) break;
    usleep(100 * 1000);
  }
  return survivors;
}

// The CPUs this process may run on (its affinity mask), in order: what --cpu accepts here.
inline std::vector<int> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

// The results.json in the directory `out`, or a discarded value when there is none (or it is
// not JSON).
inline nlohmann::json ReadResults(const fs::path& out) {
  std::ifstream in(out / "results.json");
  return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

// What a `faultlab run` left: its exit code, its stderr and its results.
struct RunOutcome {
  int exit_code = -1;
  std::string err;
  nlohmann::json results;  // results.json, or discarded when the run wrote none
};

// Runs `faultlab <args> --out <scratch>/out <more>` in a scratch directory of its own (removed
// after) and returns what it left.
inline RunOutcome RunAndReadResults(const std::vector<std::string>& args,
                                    const std::vector<std::string>& more) {
  ScratchDir scratch;
  const fs::path out = scratch.path() / "out";
  std::vector<std::string> all = args;
  all.push_back("--out");
  all.push_back(out.string());
  all.insert(all.end(), more.begin(), more.end());
  const Outcome run = Faultlab(all, scratch);
  RunOutcome outcome;
  outcome.exit_code = run.exit_code;
  outcome.err = run.err;
  outcome.results = ReadResults(out);
  return outcome;
}

// The iteration rows (one per repetition) of `results` whose name starts with `prefix` (all of
// them when it is empty); none when the run wrote no results.
inline std::vector<nlohmann::json> IterationRows(const nlohmann::json& results,
                                                 const std::string& prefix = "") {
  std::vector<nlohmann::json> rows;
  if (results.is_discarded()) return rows;
  for (const nlohmann::json& run : results["benchmarks"]) {
    if (run["run_type"] == "iteration" && run["name"].get<std::string>().rfind(prefix, 0) == 0) {
      rows.push_back(run);
    }
  }
  return rows;
}

// The parts of a benchmark name between its slashes ("fault", "write", "anon4k", ...).
inline std::vector<std::string> Split(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream in(name);
  for (std::string part; std::getline(in, part, '/');) parts.push_back(part);
  return parts;
}

// The value of the named argument `key` in a benchmark name ("pages" in ".../pages:64/..."), or
// -1 when the name has none.
inline long NamedArg(const std::string& name, const std::string& key) {
  const std::size_t at = name.find("/" + key + ":");
  return at == std::string::npos ? -1 : std::stol(name.substr(at + key.size() + 2));
}

// The row's counter `name`; a failure, and -1, when the row has no such counter.
inline double Counter(const nlohmann::json& row, const std::string& name) {
  EXPECT_TRUE(row.contains(name)) << row["name"] << " has no counter " << name;
  return row.value(name, -1.0);
}

// Whether the row measured nothing (Google Benchmark's error_occurred): a skip row, or a row
// whose premise failed.
inline bool Skipped(const nlohmann::json& row) { return row.value("error_occurred", false); }

// Why the row measured nothing ("skipped: <reason>" for a skip row); empty for a row that ran.
inline std::string ErrorMessage(const nlohmann::json& row) {
  return row.value("error_message", "");
}

// Expects the row to be a skip row that names its reason after the prefix, and that the reason
// mentions `must_mention`.
inline void ExpectSkipWithReason(const nlohmann::json& row, const std::string& must_mention) {
  const std::string message = ErrorMessage(row);
  EXPECT_EQ(message.rfind("skipped: ", 0), 0u) << row["name"] << ": " << message;
  EXPECT_GT(message.size(), std::string("skipped: ").size() + 10) << row["name"];
  EXPECT_NE(message.find(must_mention), std::string::npos)
      << row["name"] << ": expected '" << must_mention << "' in: " << message;
}

// Whether the run opened the perf counter `counter` (its rows then carry it); false when the
// run wrote no results.
inline bool CounterOpened(const nlohmann::json& results, const std::string& counter) {
  if (results.is_discarded()) return false;
  for (const nlohmann::json& name : results["context"]["faultlab"]["counters"]["opened"]) {
    if (name == counter) return true;
  }
  return false;
}

}  // namespace faultlab::cli_test
