#include "bench/suite.h"

#include <algorithm>
#include <utility>

namespace faultlab {
namespace {

// Function-local statics: suites add themselves during static initialisation, in any order.
std::vector<Suite>& SuiteList() {
  static std::vector<Suite> suites;
  return suites;
}

RunOptions& Options() {
  static RunOptions options;
  return options;
}

}  // namespace

const RunOptions& CurrentRunOptions() { return Options(); }
int Repetitions(const RunOptions& options) {
  return options.repetitions.value_or(options.quick ? 3 : 5);
}
void SetCurrentRunOptions(RunOptions options) { Options() = std::move(options); }

bool RunsSuite(const RunOptions& options, const std::string& name) {
  return std::find(options.suites.begin(), options.suites.end(), name) != options.suites.end();
}

bool AddSuite(Suite suite) {
  SuiteList().push_back(std::move(suite));
  return true;
}

const std::vector<Suite>& Suites() { return SuiteList(); }

const Suite* FindSuite(const std::string& name) {
  for (const Suite& suite : SuiteList()) {
    if (suite.name == name) return &suite;
  }
  return nullptr;
}

}  // namespace faultlab
