// What the CLI tests share: a scratch directory, reading a file whole, and running the faultlab
// binary (FAULTLAB_BINARY, set by tests/CMakeLists.txt) with its output captured.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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

inline long ReadLong(const std::string& path) {
  std::ifstream in(path);
  long value = -1;
  in >> value;
  return value;
}

}  // namespace faultlab::cli_test
