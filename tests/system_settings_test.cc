// The restore journal: Set journals before it writes, RestoreAll undoes newest first, a
// SIGINT/SIGTERM restores and still dies of the signal, and a crash leaves a journal that
// RestoreStaleJournal replays only once its owner is gone.
//
// Regular files in a temporary directory stand in for sysfs files (Set needs only open, read
// and write), and FAULTLAB_JOURNAL points into the same directory: nothing here changes the
// machine, so nothing needs root.
#include "topology/system_settings.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace faultlab {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::string OwnStartTime() {
  std::string stat = ReadAll("/proc/self/stat");
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::string field;
  for (int i = 3; i <= 22; ++i) fields >> field;
  return field;
}

class SystemSettingsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/faultlab-settings-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    // A subdirectory that does not exist yet: Set must create the journal's parents.
    journal_ = dir_ + "/state/faultlab/restore-journal";
    setenv("FAULTLAB_JOURNAL", journal_.c_str(), 1);
    scratch_ = dir_ + "/nr_hugepages";
    WriteAll(scratch_, "0\n");
  }
  void TearDown() override {
    SystemSettings::Get().RestoreAll();
    unsetenv("FAULTLAB_JOURNAL");
    std::filesystem::remove_all(dir_);
  }

  // Runs `body` in a forked child (which must not return) and returns its wait status.
  template <typename Body>
  int InChild(Body body) {
    pid_t pid = fork();
    if (pid == 0) {
      body();
      _exit(99);  // the body should have died of a signal
    }
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    return status;
  }

  void ExpectChildRestoresOn(int sig) {
    int status = InChild([&] {
      try {
        if (SystemSettings::Get().Set(scratch_, "8") != "8") _exit(2);
      } catch (const std::exception&) {
        _exit(3);
      }
      if (ReadAll(scratch_) != "8" || !Exists(journal_)) _exit(4);
      raise(sig);
    });
    ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << WEXITSTATUS(status);
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_EQ(ReadAll(scratch_), "0");
    EXPECT_FALSE(Exists(journal_));
  }

  std::string dir_, journal_, scratch_;
};

// The journal holds the old value before the new one is written, and goes away on restore.
TEST_F(SystemSettingsTest, SetJournalsAndRestoreAllRestores) {
  EXPECT_EQ(SystemSettings::Get().Set(scratch_, "64"), "64");
  EXPECT_EQ(ReadAll(scratch_), "64");  // truncated, not "64\n" over "0\n"
  std::string journal = ReadAll(journal_);
  EXPECT_EQ(journal, "faultlab-restore-journal 1 pid " + std::to_string(getpid()) + " start " +
                         OwnStartTime() + "\n" + scratch_ + "\t0\n");
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadAll(scratch_), "0");
  EXPECT_FALSE(Exists(journal_));
  SystemSettings::Get().RestoreAll();  // idempotent
  EXPECT_EQ(ReadAll(scratch_), "0");
}

// Later Sets of a path keep the first old value; restore goes newest first.
TEST_F(SystemSettingsTest, FirstOldValueWinsAndRestoreIsNewestFirst) {
  std::string other = dir_ + "/enabled";
  WriteAll(other, "always [madvise] never\n");
  SystemSettings::Get().Set(scratch_, "4");
  SystemSettings::Get().Set(scratch_, "8");
  // The bracketed choice is the value that can be written back.
  EXPECT_EQ(SystemSettings::Get().Set(other, "[never]"), "never");
  std::string journal = ReadAll(journal_);
  EXPECT_NE(journal.find(scratch_ + "\t0\n" + other + "\tmadvise\n"), std::string::npos)
      << journal;
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadAll(scratch_), "0");
  EXPECT_EQ(ReadAll(other), "madvise");
  EXPECT_FALSE(Exists(journal_));
}

// A failed write leaves no journal entry behind.
TEST_F(SystemSettingsTest, FailedWriteThrowsAndDropsTheEntry) {
  // Read-only in sysfs even for root, and harmless to try.
  const std::string read_only = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
  if (!Exists(read_only)) GTEST_SKIP() << read_only << " does not exist";
  try {
    SystemSettings::Get().Set(read_only, "5");
    FAIL() << "writing " << read_only << " succeeded";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("cannot write " + read_only + ": ", 0), 0u) << e.what();
  }
  EXPECT_FALSE(Exists(journal_));
  // With an earlier change journalled, the failed one is dropped and the earlier one kept.
  SystemSettings::Get().Set(scratch_, "2");
  EXPECT_THROW(SystemSettings::Get().Set(read_only, "5"), std::runtime_error);
  EXPECT_EQ(ReadAll(journal_).find(read_only), std::string::npos);
  EXPECT_NE(ReadAll(journal_).find(scratch_ + "\t0\n"), std::string::npos);
  EXPECT_THROW(SystemSettings::Get().Set(dir_ + "/missing", "1"), std::runtime_error);
  EXPECT_THROW(SystemSettings::Get().Set(scratch_, "a\tb"), std::runtime_error);
}

TEST_F(SystemSettingsTest, SigtermRestoresAndStillDiesOfSigterm) { ExpectChildRestoresOn(SIGTERM); }

TEST_F(SystemSettingsTest, SigintRestoresAndStillDiesOfSigint) { ExpectChildRestoresOn(SIGINT); }

// A crash runs no handler: the journal stays, and the next run replays it.
TEST_F(SystemSettingsTest, CrashLeavesJournalThatRestoreStaleJournalReplays) {
  for (int sig : {SIGKILL, SIGABRT}) {
    SCOPED_TRACE(strsignal(sig));
    pid_t child = 0;
    int status = InChild([&] {
      rlimit no_core{0, 0};
      setrlimit(RLIMIT_CORE, &no_core);  // abort() should not leave a core file behind
      SystemSettings::Get().Set(scratch_, "16");
      if (sig == SIGABRT) abort();
      raise(sig);
    });
    ASSERT_TRUE(WIFSIGNALED(status));
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_EQ(ReadAll(scratch_), "16");
    ASSERT_TRUE(Exists(journal_));
    std::string journal = ReadAll(journal_);
    child = std::atoi(journal.substr(journal.find(" pid ") + 5).c_str());

    std::string message;
    std::vector<JournalEntry> restored = RestoreStaleJournal(&message);
    ASSERT_EQ(restored.size(), 1u) << message;
    EXPECT_EQ(restored[0].path, scratch_);
    EXPECT_EQ(restored[0].old_value, "0");
    EXPECT_EQ(message, "restored 1 setting left by faultlab pid " + std::to_string(child) + ": " +
                           scratch_ + "=0");
    EXPECT_EQ(ReadAll(scratch_), "0");
    EXPECT_FALSE(Exists(journal_));
  }
  std::string message;
  EXPECT_TRUE(RestoreStaleJournal(&message).empty());
  EXPECT_EQ(message, "no restore journal");
}

// A journal whose owner runs (here: this test process) is not replayed; one whose pid now names a
// process with another start time (a recycled pid) is.
TEST_F(SystemSettingsTest, JournalOfALiveOwnerIsLeftAlone) {
  std::filesystem::create_directories(std::filesystem::path(journal_).parent_path());
  const std::string header = "faultlab-restore-journal 1 pid " + std::to_string(getpid());
  WriteAll(scratch_, "32");
  WriteAll(journal_, header + " start " + OwnStartTime() + "\n" + scratch_ + "\t0\n");
  std::string message;
  EXPECT_TRUE(RestoreStaleJournal(&message).empty());
  EXPECT_NE(message.find("belongs to running faultlab pid " + std::to_string(getpid())),
            std::string::npos)
      << message;
  EXPECT_EQ(ReadAll(scratch_), "32");
  EXPECT_TRUE(Exists(journal_));
  // While another live faultlab holds the journal, Set refuses instead of overwriting it.
  EXPECT_THROW(SystemSettings::Get().Set(dir_ + "/other", "1"), std::runtime_error);

  WriteAll(journal_, header + " start 1\n" + scratch_ + "\t0\n");
  EXPECT_EQ(RestoreStaleJournal(&message).size(), 1u) << message;
  EXPECT_EQ(ReadAll(scratch_), "0");
  EXPECT_FALSE(Exists(journal_));
}

// A first Set replays a stale journal before claiming the path for itself.
TEST_F(SystemSettingsTest, SetReplaysAStaleJournalFirst) {
  std::filesystem::create_directories(std::filesystem::path(journal_).parent_path());
  WriteAll(scratch_, "32");  // left at 32 by a faultlab that crashed
  WriteAll(journal_, "faultlab-restore-journal 1 pid " + std::to_string(getpid()) +
                         " start 1\n" + scratch_ + "\t0\n");
  EXPECT_EQ(SystemSettings::Get().Set(scratch_, "8"), "8");
  EXPECT_NE(ReadAll(journal_).find(scratch_ + "\t0\n"), std::string::npos);
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadAll(scratch_), "0");
}

TEST_F(SystemSettingsTest, DamagedJournalIsLeftAlone) {
  std::filesystem::create_directories(std::filesystem::path(journal_).parent_path());
  WriteAll(journal_, "not a journal\n");
  std::string message;
  EXPECT_TRUE(RestoreStaleJournal(&message).empty());
  EXPECT_NE(message.find("damaged"), std::string::npos) << message;
  EXPECT_TRUE(Exists(journal_));
}

// A forked child inherits the parent's table but must not undo the parent's changes when it
// exits or is signalled.
TEST_F(SystemSettingsTest, ForkedChildDoesNotRestoreItsParentsChanges) {
  SystemSettings::Get().Set(scratch_, "8");
  int status = InChild([] { raise(SIGTERM); });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(ReadAll(scratch_), "8");
  EXPECT_TRUE(Exists(journal_));
  pid_t pid = fork();
  if (pid == 0) exit(0);  // runs atexit handlers
  waitpid(pid, &status, 0);
  EXPECT_EQ(ReadAll(scratch_), "8");
  EXPECT_TRUE(Exists(journal_));
  SystemSettings::Get().RestoreAll();
  EXPECT_EQ(ReadAll(scratch_), "0");
}

TEST(RestoreJournalPathTest, EnvironmentOverrides) {
  setenv("FAULTLAB_JOURNAL", "/tmp/x/journal", 1);
  EXPECT_EQ(RestoreJournalPath(), "/tmp/x/journal");
  unsetenv("FAULTLAB_JOURNAL");
  if (geteuid() == 0) {
    EXPECT_EQ(RestoreJournalPath(), "/var/lib/faultlab/restore-journal");
  }
}

}  // namespace
}  // namespace faultlab
