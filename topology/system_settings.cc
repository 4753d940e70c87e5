// The restore journal and the SIGINT/SIGTERM/atexit restore of changed system settings.
//
// Two copies of what has to be restored are kept. `entries_` (under `mutex_`) is the ordinary
// one that Set and RestoreAll work with. The signal handler cannot take a mutex or allocate, so
// it reads a second, pre-rendered copy: fixed-size C strings in static arrays, published through
// an atomic count. An entry is rendered first and only then counted, and the journal on disk and
// this table are both updated before the new value is written, so a handler that runs at any
// moment (on this thread or another) restores either nothing or a value that is still correct:
// writing an old value back before the new one was written changes nothing.
#include "topology/system_settings.h"
#include "absl/strings/ascii.h"
#include "topology/kernel_files.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace faultlab {
namespace {

constexpr const char* kJournalMagic = "faultlab-restore-journal";
constexpr int kJournalVersion = 1;

// Sized for what faultlab changes (a few hugetlb pools, THP, numa_balancing) with room to
// spare; Set refuses more rather than restoring only part of them.
constexpr int kMaxEntries = 64;
constexpr std::size_t kMaxPath = 512;
constexpr std::size_t kMaxValue = 256;

// The handler's copy. Plain arrays: written only while the slot is unpublished (index >= count).
char g_paths[kMaxEntries][kMaxPath];
char g_old_values[kMaxEntries][kMaxValue];
std::size_t g_old_lengths[kMaxEntries];
char g_journal_path[kMaxPath];
char g_journal_tmp_path[kMaxPath + 32];
std::atomic<int> g_count{0};
// The process whose changes these are. A forked child inherits the table but must not restore
// its parent's settings when it is signalled or exits.
std::atomic<pid_t> g_owner_pid{0};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<pid_t>::is_always_lock_free,
              "the signal handler reads these atomics");

struct sigaction g_previous[2];  // SIGINT, SIGTERM as they were before we installed ours
int SignalSlot(int sig) { return sig == SIGINT ? 0 : 1; }

// Async-signal-safe: open/write/close/unlink only.
void RestoreFromSignalTable() {
  for (int i = g_count.load(std::memory_order_acquire) - 1; i >= 0; --i) {
    int fd = open(g_paths[i], O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t unused = write(fd, g_old_values[i], g_old_lengths[i]);
    (void)unused;
    close(fd);
  }
  // The journal goes even if a write failed: a handler has no way to report or retry, and a
  // journal replayed later would fail the same way.
  if (g_journal_path[0] != '\0') unlink(g_journal_path);
  if (g_journal_tmp_path[0] != '\0') unlink(g_journal_tmp_path);
}

// Chaining: an earlier SIG_IGN is respected by never installing ours for that signal (the
// process would not die of it, so nothing needs restoring). An earlier function handler is called
// after we restored, and we then return instead of re-raising: that handler owns the process's
// response (it may exit, longjmp or carry on; RestoreAll at exit writes the same values again,
// which is harmless). Otherwise the disposition is reset to SIG_DFL and the signal re-raised, so
// the parent sees "killed by SIGTERM" rather than a normal exit.
extern "C" void OnTerminatingSignal(int sig, siginfo_t* info, void* context) {
  int saved_errno = errno;
  if (g_owner_pid.load(std::memory_order_acquire) == getpid()) RestoreFromSignalTable();
  const struct sigaction& previous = g_previous[SignalSlot(sig)];
  if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction != nullptr) {
    previous.sa_sigaction(sig, info, context);
    errno = saved_errno;
    return;
  }
  if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler != SIG_DFL &&
      previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    errno = saved_errno;
    return;
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  // `sig` is blocked while its handler runs, so this stays pending and kills the process as soon
  // as the handler returns and the mask is restored.
  raise(sig);
  errno = saved_errno;
}

void InstallSignalHandlers() {
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction current {};
    sigaction(sig, nullptr, &current);
    if (!(current.sa_flags & SA_SIGINFO) && current.sa_handler == SIG_IGN) continue;
    g_previous[SignalSlot(sig)] = current;
    struct sigaction ours {};
    ours.sa_sigaction = OnTerminatingSignal;
    ours.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&ours.sa_mask);
    // Restoring twice at once (SIGINT during SIGTERM's restore) would be harmless but noisy.
    sigaddset(&ours.sa_mask, SIGINT);
    sigaddset(&ours.sa_mask, SIGTERM);
    sigaction(sig, &ours, nullptr);
  }
}

std::string ErrnoText(int err) { return std::strerror(err); }



// Reads a whole (small) file; errno-style error code on failure, 0 on success.
int ReadSmallFile(const std::string& path, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  out->clear();
  char buffer[4096];
  while (out->size() < (1u << 20)) {
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return err;
    }
    if (n == 0) break;
    out->append(buffer, static_cast<std::size_t>(n));
  }
  close(fd);
  return 0;
}

// Writes all of `text` to `fd`, retrying short writes and EINTR; 0 or the errno.
int WriteAll(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

// One write(2) of the whole value: sysfs and procfs take a value in a single write, and
// O_TRUNC makes a regular file (the tests' stand-in) hold just the new value.
int WriteSettingFile(const std::string& path, const std::string& value) {
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) return errno;
  if (int err = WriteAll(fd, value)) {
    close(fd);
    return err;
  }
  if (close(fd) != 0) return errno;
  return 0;
}

bool JournalSafe(const std::string& text) {
  return text.find_first_of("\t\n\r") == std::string::npos;
}

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); with the pid it names a
// process uniquely, so a recycled pid is not mistaken for the journal's owner. nullopt if the
// process does not exist or is a zombie (it can no longer restore anything).
std::optional<unsigned long long> ProcessStartTime(pid_t pid) {
  std::string stat;
  if (ReadSmallFile("/proc/" + std::to_string(pid) + "/stat", &stat) != 0) return std::nullopt;
  // comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
  std::size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::vector<std::string> fields;
  std::size_t pos = paren + 1;
  while (pos < stat.size()) {
    std::size_t begin = stat.find_first_not_of(' ', pos);
    if (begin == std::string::npos) break;
    std::size_t end = stat.find(' ', begin);
    if (end == std::string::npos) end = stat.size();
    fields.push_back(stat.substr(begin, end - begin));
    pos = end;
  }
  // fields[0] is field 3 (state), so field 22 is fields[19].
  if (fields.size() < 20) return std::nullopt;
  if (fields[0] == "Z" || fields[0] == "X") return std::nullopt;
  return std::strtoull(fields[19].c_str(), nullptr, 10);
}

struct ParsedJournal {
  long pid = 0;
  unsigned long long start = 0;
  std::vector<JournalEntry> entries;
};

std::optional<ParsedJournal> ParseJournal(const std::string& text, std::string* error) {
  ParsedJournal journal;
  std::size_t line_end = text.find('\n');
  std::string header = text.substr(0, line_end);
  char magic[64] = {};
  int version = 0;
  char pid_word[8] = {}, start_word[8] = {};
  if (std::sscanf(header.c_str(), "%63s %d %7s %ld %7s %llu", magic, &version, pid_word,
                  &journal.pid, start_word, &journal.start) != 6 ||
      std::string(magic) != kJournalMagic || std::string(pid_word) != "pid" ||
      std::string(start_word) != "start") {
    *error = "bad header line \"" + header + "\"";
    return std::nullopt;
  }
  if (version != kJournalVersion) {
    *error = "journal version " + std::to_string(version) + ", this faultlab reads version " +
             std::to_string(kJournalVersion);
    return std::nullopt;
  }
  while (line_end != std::string::npos && line_end + 1 < text.size()) {
    std::size_t begin = line_end + 1;
    line_end = text.find('\n', begin);
    std::string line = text.substr(begin, line_end == std::string::npos ? std::string::npos
                                                                        : line_end - begin);
    if (line.empty()) continue;
    std::size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0) {
      *error = "bad entry line \"" + line + "\"";
      return std::nullopt;
    }
    journal.entries.push_back({line.substr(0, tab), line.substr(tab + 1)});
  }
  return journal;
}

std::string RenderJournal(pid_t pid, unsigned long long start,
                          const std::vector<JournalEntry>& entries) {
  std::string text = std::string(kJournalMagic) + " " + std::to_string(kJournalVersion) +
                     " pid " + std::to_string(pid) + " start " + std::to_string(start) + "\n";
  for (const JournalEntry& entry : entries) text += entry.path + "\t" + entry.old_value + "\n";
  return text;
}

int MakeParentDirs(const std::string& path) {
  for (std::size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    std::string dir = path.substr(0, slash);
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  }
  return 0;
}

// Write a temporary file, fsync it, rename it over the journal and fsync the directory: after a
// crash or power loss the journal is either the old one or the new one, never half of each.
int WriteFileAtomically(const std::string& path, const std::string& tmp_path,
                        const std::string& text) {
  if (int err = MakeParentDirs(path)) return err;
  int fd = open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  if (int err = WriteAll(fd, text)) {
    close(fd);
    unlink(tmp_path.c_str());
    return err;
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    int err = errno;
    unlink(tmp_path.c_str());
    return err;
  }
  if (rename(tmp_path.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp_path.c_str());
    return err;
  }
  std::string dir = path.substr(0, path.rfind('/'));
  int dir_fd = open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    fsync(dir_fd);
    close(dir_fd);
  }
  return 0;
}

std::string Plural(std::size_t n, const char* word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// State shared by Set and RestoreAll; a leaked singleton so atexit can still use it after static
// destructors have run.
struct State {
  std::mutex mutex;
  std::vector<JournalEntry> entries;  // in order of first change
  std::string journal_path;           // fixed for an episode (first Set until RestoreAll)
  pid_t owner = 0;
  unsigned long long owner_start = 0;
};

State& TheState() {
  static State* state = new State;
  return *state;
}

void CopyToSlot(int slot, const JournalEntry& entry) {
  std::snprintf(g_paths[slot], kMaxPath, "%s", entry.path.c_str());
  std::snprintf(g_old_values[slot], kMaxValue, "%s", entry.old_value.c_str());
  g_old_lengths[slot] = entry.old_value.size();
}

// Rewrites the journal from `state.entries`, or removes it when there is nothing left to restore.
int SyncJournal(const State& state) {
  if (state.entries.empty()) {
    if (unlink(state.journal_path.c_str()) != 0 && errno != ENOENT) return errno;
    return 0;
  }
  return WriteFileAtomically(state.journal_path, g_journal_tmp_path,
                             RenderJournal(state.owner, state.owner_start, state.entries));
}

}  // namespace

std::string RestoreJournalPath() {
  const char* overridden = std::getenv("FAULTLAB_JOURNAL");
  if (overridden != nullptr && overridden[0] != '\0') return overridden;
  if (geteuid() == 0) return "/var/lib/faultlab/restore-journal";
  const char* state_home = std::getenv("XDG_STATE_HOME");
  if (state_home != nullptr && state_home[0] == '/') {
    return std::string(state_home) + "/faultlab/restore-journal";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && home[0] != '\0' ? home : "/tmp") +
         "/.local/state/faultlab/restore-journal";
}

SystemSettings::SystemSettings() {
  InstallSignalHandlers();
  // exit() and returning from main restore; _exit, quick_exit and crashes leave the journal for
  // RestoreStaleJournal.
  std::atexit([] { SystemSettings::Get().RestoreAll(); });
}

SystemSettings& SystemSettings::Get() {
  static SystemSettings* instance = new SystemSettings;
  return *instance;
}

std::string SystemSettings::Set(const std::string& path, const std::string& value) {
  if (!JournalSafe(value) || value.size() >= kMaxValue) {
    throw std::runtime_error("cannot write " + path + ": value \"" + value +
                             "\" has a tab or newline or is too long to journal");
  }
  State& state = TheState();
  BlockTerminatingSignals blocked;
  std::lock_guard<std::mutex> lock(state.mutex);

  if (state.owner != 0 && state.owner != getpid()) {
    // Inherited across fork: these are the parent's changes, and the parent restores them.
    g_count.store(0, std::memory_order_release);
    state.entries.clear();
    state.owner = 0;
  }

  bool added = false;
  auto known = std::find_if(state.entries.begin(), state.entries.end(),
                            [&](const JournalEntry& entry) { return entry.path == path; });
  if (known == state.entries.end()) {
    if (!JournalSafe(path) || path.size() >= kMaxPath || path.empty() || path[0] != '/') {
      throw std::runtime_error("cannot write " + path + ": the journal takes absolute paths of "
                               "under " + std::to_string(kMaxPath) + " bytes without tabs");
    }
    if (state.entries.size() >= static_cast<std::size_t>(kMaxEntries)) {
      throw std::runtime_error("cannot write " + path + ": the restore journal is full (" +
                               std::to_string(kMaxEntries) + " settings)");
    }
    std::string current;
    if (int err = ReadSmallFile(path, &current)) {
      throw std::runtime_error("cannot write " + path + ": " + ErrnoText(err));
    }
    std::string old_value = SelectedChoice(std::string(absl::StripAsciiWhitespace(current)));
    if (!JournalSafe(old_value) || old_value.size() >= kMaxValue) {
      throw std::runtime_error("cannot write " + path +
                               ": its current value spans lines or is too long to journal");
    }

    if (state.entries.empty()) {
      // A new episode: claim the journal, after replaying one left by a dead faultlab (its old
      // values are the machine's real defaults; ours would be its leftovers).
      std::string journal_path = RestoreJournalPath();
      if (journal_path.size() >= kMaxPath) {
        throw std::runtime_error("restore journal path too long: " + journal_path);
      }
      if (access(journal_path.c_str(), F_OK) == 0) {
        std::string message;
        std::vector<JournalEntry> replayed = RestoreStaleJournal(&message);
        if (access(journal_path.c_str(), F_OK) == 0) {
          throw std::runtime_error("cannot write " + path + ": " + message);
        }
        std::fprintf(stderr, "faultlab: %s\n", message.c_str());
        if (int err = ReadSmallFile(path, &current)) {
          throw std::runtime_error("cannot write " + path + ": " + ErrnoText(err));
        }
        old_value = SelectedChoice(std::string(absl::StripAsciiWhitespace(current)));
      }
      std::optional<unsigned long long> start = ProcessStartTime(getpid());
      if (!start) throw std::runtime_error("cannot read /proc/self/stat for the restore journal");
      state.journal_path = journal_path;
      state.owner = getpid();
      state.owner_start = *start;
      std::snprintf(g_journal_path, sizeof g_journal_path, "%s", journal_path.c_str());
      std::snprintf(g_journal_tmp_path, sizeof g_journal_tmp_path, "%s.tmp.%ld",
                    journal_path.c_str(), static_cast<long>(getpid()));
      g_owner_pid.store(state.owner, std::memory_order_release);
    }

    int slot = static_cast<int>(state.entries.size());
    state.entries.push_back({path, old_value});
    CopyToSlot(slot, state.entries.back());
    if (int err = SyncJournal(state)) {
      state.entries.pop_back();
      throw std::runtime_error("cannot write " + path + ": cannot write restore journal " +
                               state.journal_path + ": " + ErrnoText(err));
    }
    g_count.store(slot + 1, std::memory_order_release);
    added = true;
  }

  if (int err = WriteSettingFile(path, value)) {
    if (added) {
      // O_TRUNC may already have emptied a regular file; for sysfs this rewrites the same value.
      WriteSettingFile(path, state.entries.back().old_value);
      g_count.store(static_cast<int>(state.entries.size()) - 1, std::memory_order_release);
      state.entries.pop_back();
      if (int journal_err = SyncJournal(state)) {
        std::fprintf(stderr, "faultlab: cannot update restore journal %s: %s\n",
                     state.journal_path.c_str(), ErrnoText(journal_err).c_str());
      }
    }
    throw std::runtime_error("cannot write " + path + ": " + ErrnoText(err));
  }

  std::string read_back;
  if (int err = ReadSmallFile(path, &read_back)) {
    throw std::runtime_error("cannot read back " + path + ": " + ErrnoText(err));
  }
  return SelectedChoice(std::string(absl::StripAsciiWhitespace(read_back)));
}

void SystemSettings::RestoreAll() {
  State& state = TheState();
  BlockTerminatingSignals blocked;
  std::lock_guard<std::mutex> lock(state.mutex);
  if (state.owner != getpid() || state.entries.empty()) {
    // Nothing changed here, or the changes are a parent's (inherited across fork): its job. The
    // journal path is not touched: with no entries it may be another process's journal.
    g_count.store(0, std::memory_order_release);
    state.entries.clear();
    state.owner = 0;
    g_owner_pid.store(0, std::memory_order_release);
    return;
  }
  std::vector<JournalEntry> failed;
  for (auto it = state.entries.rbegin(); it != state.entries.rend(); ++it) {
    if (int err = WriteSettingFile(it->path, it->old_value)) {
      std::fprintf(stderr, "faultlab: cannot restore %s to %s: %s\n", it->path.c_str(),
                   it->old_value.c_str(), ErrnoText(err).c_str());
      failed.insert(failed.begin(), *it);
    }
  }
  // Failed entries stay, in memory and in the journal, so the next RestoreAll (atexit) or a
  // later RestoreStaleJournal tries again.
  // Unpublish before overwriting slots a handler on another thread might be reading.
  g_count.store(0, std::memory_order_release);
  for (std::size_t i = 0; i < failed.size(); ++i) CopyToSlot(static_cast<int>(i), failed[i]);
  g_count.store(static_cast<int>(failed.size()), std::memory_order_release);
  state.entries = failed;
  if (int err = SyncJournal(state)) {
    std::fprintf(stderr, "faultlab: cannot update restore journal %s: %s\n",
                 state.journal_path.c_str(), ErrnoText(err).c_str());
  }
  if (state.entries.empty()) {
    state.owner = 0;
    g_owner_pid.store(0, std::memory_order_release);
  }
}

std::vector<JournalEntry> RestoreStaleJournal(std::string* message) {
  std::string ignored;
  if (message == nullptr) message = &ignored;
  const std::string path = RestoreJournalPath();
  std::string text;
  if (int err = ReadSmallFile(path, &text)) {
    *message = err == ENOENT ? "no restore journal"
                             : "cannot read restore journal " + path + ": " + ErrnoText(err);
    return {};
  }
  std::string error;
  std::optional<ParsedJournal> journal = ParseJournal(text, &error);
  if (!journal) {
    *message = "restore journal " + path + " is damaged (" + error +
               "); restore its settings by hand, then delete it";
    return {};
  }
  std::optional<unsigned long long> start = ProcessStartTime(static_cast<pid_t>(journal->pid));
  if (start && *start == journal->start) {
    *message = "restore journal " + path + " belongs to running faultlab pid " +
               std::to_string(journal->pid) + "; left alone";
    return {};
  }

  std::vector<JournalEntry> restored, failed;
  std::string failures;
  for (auto it = journal->entries.rbegin(); it != journal->entries.rend(); ++it) {
    if (int err = WriteSettingFile(it->path, it->old_value)) {
      failed.insert(failed.begin(), *it);
      failures += (failures.empty() ? "" : ", ") + it->path + " (" + ErrnoText(err) + ")";
    } else {
      restored.push_back(*it);
    }
  }
  std::string summary = "restored " + Plural(restored.size(), "setting") +
                        " left by faultlab pid " + std::to_string(journal->pid);
  for (std::size_t i = 0; i < restored.size(); ++i) {
    summary += (i == 0 ? ": " : ", ") + restored[i].path + "=" + restored[i].old_value;
  }
  if (failed.empty()) {
    unlink(path.c_str());
  } else {
    // Keep what could not be written back, still under the dead owner, for the next attempt.
    WriteFileAtomically(path, path + ".tmp." + std::to_string(getpid()),
                        RenderJournal(static_cast<pid_t>(journal->pid), journal->start, failed));
    summary += "; could not restore " + failures + " (journal kept)";
  }
  *message = summary;
  return restored;
}

BlockTerminatingSignals::BlockTerminatingSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, &old_);
}

BlockTerminatingSignals::~BlockTerminatingSignals() {
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

}  // namespace faultlab
