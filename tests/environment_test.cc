// The environment record and the kernel feature probes, checked against this machine's own
// /proc and /sys and against synthetic records whose warnings are known.
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "bench/environment.h"
#include "bench/kernel_features.h"

namespace faultlab {
namespace {

using nlohmann::json;

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::string ReadTrimmed(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

bool AnyContains(const std::vector<std::string>& lines, const std::string& needle) {
  return std::any_of(lines.begin(), lines.end(), [&](const std::string& line) {
    return line.find(needle) != std::string::npos;
  });
}

// A record of a quiet bare-metal machine with a Release build: nothing to warn about.
json CleanEnvironment() {
  return json{
      {"schema_version", kSchemaVersion},
      {"kernel", {{"release", "6.18.0-test"}, {"init_on_alloc", false}}},
      {"kernel_config",
       {{"CONFIG_DEBUG_VM", "n"}, {"CONFIG_KASAN", "n"}, {"CONFIG_LOCKDEP", nullptr}}},
      {"thp", {{"enabled", "madvise"}, {"mthp", {{"64kB", {{"enabled", "never"}}}}}}},
      {"numa_balancing", 0},
      {"hypervisor", {{"present", false}, {"vendor", nullptr}}},
      {"damon", {{"active", false}, {"kdamonds", json::array()}, {"threads", json::array()}}},
      {"build", {{"build_type", "Release"}, {"sanitizer", ""}}},
      {"google_benchmark", {{"library_build_type", "release"}}},
  };
}

class CapturedEnvironment : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { env_ = new json(CaptureEnvironment()); }
  static void TearDownTestSuite() {
    delete env_;
    env_ = nullptr;
  }
  static const json& env() { return *env_; }

 private:
  static json* env_;
};
json* CapturedEnvironment::env_ = nullptr;

TEST_F(CapturedEnvironment, HasSchemaVersionAndEveryTopLevelKey) {
  ASSERT_TRUE(env().is_object());
  EXPECT_EQ(env().at("schema_version"), kSchemaVersion);
  for (const char* key : {"kernel",
                          "kernel_config",
                          "thp",
                          "hugetlb",
                          "numa_balancing",
                          "vm",
                          "perf_event_paranoid",
                          "kptr_restrict",
                          "userfaultfd",
                          "cpu",
                          "hypervisor",
                          "emulation",
                          "damon",
                          "swap",
                          "memory",
                          "cgroup",
                          "clocksource",
                          "build",
                          "google_benchmark",
                          "timestamp",
                          "hostname"}) {
    EXPECT_TRUE(env().contains(key)) << "missing " << key;
  }
  // Every field is null or a value; the record must always serialise.
  EXPECT_NO_THROW((void)env().dump());
}

TEST_F(CapturedEnvironment, KernelReleaseIsUnames) {
  utsname names{};
  ASSERT_EQ(uname(&names), 0);
  EXPECT_EQ(env()["kernel"]["release"], names.release);
  EXPECT_TRUE(env()["kernel"]["cmdline"].is_string());
}

TEST_F(CapturedEnvironment, ThpEnabledIsOneOfTheThreePolicies) {
  if (!Exists("/sys/kernel/mm/transparent_hugepage/enabled"))
    GTEST_SKIP() << "no THP in this kernel";
  const json& enabled = env()["thp"]["enabled"];
  ASSERT_TRUE(enabled.is_string());
  EXPECT_TRUE(enabled == "always" || enabled == "madvise" || enabled == "never") << enabled;
  EXPECT_NE(ReadTrimmed("/sys/kernel/mm/transparent_hugepage/enabled")
                .find("[" + enabled.get<std::string>() + "]"),
            std::string::npos);
}

TEST_F(CapturedEnvironment, HugetlbHasEachSizeTheKernelOffers) {
  if (!Exists("/sys/kernel/mm/hugepages/hugepages-2048kB"))
    GTEST_SKIP() << "no 2 MiB hugetlb pages";
  const json& entry = env()["hugetlb"]["2048kB"];
  ASSERT_TRUE(entry.is_object());
  // Other tests may resize the pools meanwhile, so only the shape and signs are checked.
  for (const char* field : {"nr", "free", "surplus", "resv"}) {
    ASSERT_TRUE(entry[field].is_number()) << field;
    EXPECT_GE(entry[field].get<long>(), 0) << field;
  }
  if (Exists("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")) {
    EXPECT_TRUE(entry["nodes"]["0"]["free"].is_number());
  }
}

TEST_F(CapturedEnvironment, CpuMemoryAndBuildArePlausible) {
  const json& cpu = env()["cpu"];
  ASSERT_TRUE(cpu["online"].is_number());
  EXPECT_GE(cpu["online"].get<int>(), 1);
  ASSERT_TRUE(cpu["allowed"].is_number());
  EXPECT_GE(cpu["allowed"].get<int>(), 1);
  EXPECT_LE(cpu["allowed"].get<int>(), cpu["online"].get<int>());
  EXPECT_EQ(cpu["online"].get<long>(), sysconf(_SC_NPROCESSORS_ONLN));

  const json& memory = env()["memory"];
  ASSERT_TRUE(memory["total_kb"].is_number());
  ASSERT_TRUE(memory["available_kb"].is_number());
  EXPECT_GT(memory["total_kb"].get<long long>(), 0);
  EXPECT_LE(memory["available_kb"].get<long long>(), memory["total_kb"].get<long long>());

  EXPECT_TRUE(env()["hypervisor"]["present"].is_boolean());
  EXPECT_TRUE(env()["damon"]["active"].is_boolean());
  EXPECT_FALSE(env()["build"]["faultlab_version"].get<std::string>().empty());
  EXPECT_FALSE(env()["build"]["compiler"].get<std::string>().empty());
  const json& gb_type = env()["google_benchmark"]["library_build_type"];
  EXPECT_TRUE(gb_type == "debug" || gb_type == "release") << gb_type;
}

TEST_F(CapturedEnvironment, TimestampIsIso8601Utc) {
  std::string timestamp = env()["timestamp"].get<std::string>();
  ASSERT_EQ(timestamp.size(), 20u) << timestamp;  // 2025-01-31T12:34:56Z
  EXPECT_EQ(timestamp[4], '-');
  EXPECT_EQ(timestamp[10], 'T');
  EXPECT_EQ(timestamp.back(), 'Z');
}

TEST_F(CapturedEnvironment, UserfaultfdRecordMatchesTheProbe) {
  const json& uffd = env()["userfaultfd"];
  EXPECT_EQ(uffd["dev_userfaultfd"]["present"], Exists("/dev/userfaultfd"));
  UffdApi api = ProbeUffdApi();
  if (!api.error.empty()) {
    EXPECT_EQ(uffd["api_error"], api.error);
    return;
  }
  EXPECT_EQ(
      uffd["api_features"], "0x" + [&] {
        std::ostringstream hex;
        hex << std::hex << api.features;
        return hex.str();
      }());
  // Each set bit is named once, known or not.
  EXPECT_EQ(uffd["features"].size(), static_cast<std::size_t>(__builtin_popcountll(api.features)));
}

TEST_F(CapturedEnvironment, TablePrintsTheReleaseAndTheWarnings) {
  std::ostringstream out;
  PrintEnvironmentTable(env(), out);
  std::string table = out.str();
  EXPECT_NE(table.find(env()["kernel"]["release"].get<std::string>()), std::string::npos);
  EXPECT_NE(table.find("Suites here:"), std::string::npos);
  std::vector<std::string> warnings = DistortionWarnings(env());
  for (const std::string& warning : warnings) {
    EXPECT_NE(table.find("***WARNING*** " + warning), std::string::npos) << warning;
  }
  EXPECT_EQ(table.find("***WARNING***") != std::string::npos, !warnings.empty());
}

TEST(DistortionWarnings, CleanEnvironmentHasNone) {
  std::vector<std::string> warnings = DistortionWarnings(CleanEnvironment());
  EXPECT_TRUE(warnings.empty()) << warnings.front();
}

TEST(DistortionWarnings, FlagsAHypervisor) {
  json env = CleanEnvironment();
  env["hypervisor"] = {{"present", true}, {"vendor", "KVM"}};
  std::vector<std::string> warnings = DistortionWarnings(env);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("VM (KVM)"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("first touch"), std::string::npos) << warnings[0];
}

TEST(DistortionWarnings, FlagsSoftwareEmulationFirst) {
  json env = CleanEnvironment();
  env["hypervisor"] = {{"present", true}, {"vendor", nullptr}};
  env["emulation"] = {{"emulated", true}, {"emulator", "qemu-tcg"}, {"source", "FAULTLAB_EMULATED"}};
  std::vector<std::string> warnings = DistortionWarnings(env);
  ASSERT_EQ(warnings.size(), 2u) << ::testing::PrintToString(warnings);
  EXPECT_NE(warnings[0].find("SOFTWARE EMULATION (qemu-tcg, from FAULTLAB_EMULATED)"),
            std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("NOT performance figures"), std::string::npos) << warnings[0];
  env["emulation"]["emulated"] = false;
  EXPECT_EQ(DistortionWarnings(env).size(), 1u);
}

// The variable scripts/numa-vm's guest exports reaches the record and the warnings; without it
// the record says not emulated (unless QEMU TCG's CPUID signature says otherwise).
TEST(CaptureEnvironment, RecordsFaultlabEmulated) {
  const char* before = std::getenv("FAULTLAB_EMULATED");
  const std::string saved = before ? before : "";
  ASSERT_EQ(setenv("FAULTLAB_EMULATED", "qemu-tcg-test", 1), 0);
  json env = CaptureEnvironment();
  if (before) {
    setenv("FAULTLAB_EMULATED", saved.c_str(), 1);
  } else {
    unsetenv("FAULTLAB_EMULATED");
  }
  EXPECT_EQ(env["emulation"]["emulated"], true);
  EXPECT_EQ(env["emulation"]["emulator"], "qemu-tcg-test");
  EXPECT_EQ(env["emulation"]["source"], "FAULTLAB_EMULATED");
  std::vector<std::string> warnings = DistortionWarnings(env);
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings[0].find("SOFTWARE EMULATION (qemu-tcg-test"), std::string::npos)
      << warnings[0];
  std::ostringstream table;
  PrintEnvironmentTable(env, table);
  EXPECT_NE(table.str().find("yes, qemu-tcg-test (from FAULTLAB_EMULATED)"), std::string::npos);
}

TEST(DistortionWarnings, FlagsThpAlways) {
  json env = CleanEnvironment();
  env["thp"]["enabled"] = "always";
  std::vector<std::string> warnings = DistortionWarnings(env);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("THP enabled=always"), std::string::npos) << warnings[0];
}

TEST(DistortionWarnings, FlagsEachDistortingCondition) {
  json env = CleanEnvironment();
  env["damon"]["active"] = true;
  env["build"]["build_type"] = "Debug";
  env["build"]["sanitizer"] = "address";
  env["google_benchmark"]["library_build_type"] = "debug";
  env["kernel_config"]["CONFIG_DEBUG_VM"] = "y";
  env["kernel_config"]["CONFIG_KASAN"] = "y";
  env["kernel"]["init_on_alloc"] = true;
  env["numa_balancing"] = 1;
  std::vector<std::string> warnings = DistortionWarnings(env);
  EXPECT_EQ(warnings.size(), 7u);
  EXPECT_TRUE(AnyContains(warnings, "DAMON")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "Debug")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "-fsanitize=address")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "Google Benchmark")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "CONFIG_DEBUG_VM, CONFIG_KASAN"))
      << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "init_on_alloc")) << ::testing::PrintToString(warnings);
  EXPECT_TRUE(AnyContains(warnings, "numa_balancing")) << ::testing::PrintToString(warnings);
  for (const std::string& warning : warnings)
    EXPECT_EQ(warning.find('\n'), std::string::npos) << warning;
}

TEST(DistortionWarnings, DebugOptionsThatNeedABootSwitchCountOnlyWhenSwitchedOn) {
  json env = CleanEnvironment();
  env["kernel_config"]["CONFIG_PAGE_TABLE_CHECK"] = "y";
  env["kernel_config"]["CONFIG_PAGE_TABLE_CHECK_ENFORCED"] = "n";
  EXPECT_TRUE(DistortionWarnings(env).empty());
  env["kernel"]["boot_params"] = {{"page_table_check", "on"}};
  std::vector<std::string> warnings = DistortionWarnings(env);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("CONFIG_PAGE_TABLE_CHECK"), std::string::npos) << warnings[0];
}

TEST(DistortionWarnings, ToleratesMissingAndMistypedFields) {
  EXPECT_TRUE(DistortionWarnings(json::object()).empty());
  EXPECT_TRUE(DistortionWarnings(json(nullptr)).empty());
  json odd = {
      {"hypervisor", "unavailable: test"}, {"thp", {{"enabled", 3}}}, {"build", json::array()}};
  EXPECT_TRUE(DistortionWarnings(odd).empty());
  std::ostringstream out;
  PrintEnvironmentTable(odd, out);
  EXPECT_NE(out.str().find("WARNINGS: none"), std::string::npos) << out.str();
}

TEST(PrintEnvironmentTable, SyntheticWarningsArePrinted) {
  json env = CleanEnvironment();
  env["hypervisor"] = {{"present", true}, {"vendor", "KVM"}};
  std::ostringstream out;
  PrintEnvironmentTable(env, out);
  EXPECT_NE(out.str().find("6.18.0-test"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("***WARNING*** running in a VM (KVM)"), std::string::npos) << out.str();
}

TEST(KernelFeatures, MemfdIsAvailable) { EXPECT_EQ(WhyUnavailable(Feature::kMemfd), std::nullopt); }

TEST(KernelFeatures, AnswersAreStable) {
  // Cached: asking twice gives the same answer, and each reason is a single line.
  for (Feature feature : {Feature::kThp, Feature::kHugetlb2M, Feature::kHugetlb1G, Feature::kMemfd,
                          Feature::kUserfaultfd, Feature::kHardwarePmu, Feature::kPerfKernel,
                          Feature::kNumaMulti, Feature::kGuardRegions, Feature::kNumaBalancing}) {
    std::optional<std::string> first = WhyUnavailable(feature);
    EXPECT_EQ(first, WhyUnavailable(feature));
    if (first) {
      EXPECT_FALSE(first->empty());
      EXPECT_EQ(first->find('\n'), std::string::npos) << *first;
    }
  }
}

TEST(KernelFeatures, ThpAnswerFollowsSysfs) {
  std::string enabled = ReadTrimmed("/sys/kernel/mm/transparent_hugepage/enabled");
  if (enabled.empty()) GTEST_SKIP() << "no THP in this kernel";
  bool never = enabled.find("[never]") != std::string::npos;
  EXPECT_EQ(WhyUnavailable(Feature::kThp).has_value(), never);
}

TEST(KernelFeatures, HugetlbSizeAnswerFollowsSysfs) {
  EXPECT_EQ(WhyUnavailable(Feature::kHugetlb2M).has_value(),
            !Exists("/sys/kernel/mm/hugepages/hugepages-2048kB"));
  EXPECT_EQ(WhyUnavailable(Feature::kHugetlb1G).has_value(),
            !Exists("/sys/kernel/mm/hugepages/hugepages-1048576kB"));
}

TEST(KernelFeatures, PerfKernelAnswerFollowsPrivilege) {
  if (geteuid() != 0) GTEST_SKIP() << "not root: the answer depends on perf_event_paranoid";
  EXPECT_EQ(WhyUnavailable(Feature::kPerfKernel), std::nullopt);
}

TEST(KernelFeatures, AbsurdHugetlbCountNamesTheFlag) {
  if (WhyUnavailable(Feature::kHugetlb2M)) GTEST_SKIP() << *WhyUnavailable(Feature::kHugetlb2M);
  constexpr std::size_t k2M = 2ul << 20;
  std::optional<std::string> why = WhyNoHugetlbPages(k2M, 1L << 40);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("--reserve-hugepages 2M:"), std::string::npos) << *why;
  EXPECT_NE(why->find("2 MiB"), std::string::npos) << *why;
  EXPECT_EQ(WhyNoHugetlbPages(k2M, 0), std::nullopt);
}

TEST(KernelFeatures, FreeHugetlbPagesReadsSysfs) {
  if (WhyUnavailable(Feature::kHugetlb2M)) GTEST_SKIP() << *WhyUnavailable(Feature::kHugetlb2M);
  EXPECT_GE(FreeHugetlbPages(2ul << 20), 0);
  EXPECT_EQ(FreeHugetlbPages(3ul << 20), -1);        // no such size
  EXPECT_EQ(FreeHugetlbPages(2ul << 20, 4096), -1);  // no such node
  if (Exists("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")) {
    EXPECT_GE(FreeHugetlbPages(2ul << 20, 0), 0);
  }
}

TEST(KernelFeatures, UnknownHugetlbSizeSaysSo) {
  std::optional<std::string> why = WhyNoHugetlbPages(3ul << 20, 1);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("no 3 MiB hugetlb pool"), std::string::npos) << *why;
}

TEST(KernelFeatures, UffdApiReportsFeatures) {
  std::string unprivileged = ReadTrimmed("/proc/sys/vm/unprivileged_userfaultfd");
  UffdApi api = ProbeUffdApi();
  if (geteuid() != 0 && !api.error.empty()) {
    GTEST_SKIP() << "not root and vm.unprivileged_userfaultfd=" << unprivileged << ": "
                 << api.error;
  }
  ASSERT_TRUE(api.error.empty()) << api.error;
  EXPECT_NE(api.features, 0u);
  // UFFDIO_API must at least offer REGISTER, UNREGISTER and API on a fresh descriptor.
  EXPECT_NE(api.ioctls & (1ull << 0x3F), 0u);
  EXPECT_NE(api.ioctls & 1ull, 0u);
  EXPECT_EQ(WhyUnavailable(Feature::kUserfaultfd), std::nullopt);
}

}  // namespace
}  // namespace faultlab
