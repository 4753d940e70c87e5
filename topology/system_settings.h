// Changing system settings without leaving the machine changed.
//
// Every change to a sysfs/procfs file (hugetlb pools, THP, numa_balancing) goes through here:
// the old value is first written to a restore journal on disk (fsync'd), then the new value is
// written and read back. The old values are restored on normal exit, on SIGINT/SIGTERM (the
// handler restores and re-raises) and, after a crash, by `faultlab restore`, which replays a
// journal whose owner is gone. A run also replays a stale journal before it starts.
#pragma once

#include <string>
#include <vector>

namespace faultlab {

struct JournalEntry {
  std::string path;
  std::string old_value;
};

// The journal file: $FAULTLAB_JOURNAL if set, else /var/lib/faultlab/restore-journal as root,
// else $XDG_STATE_HOME (or ~/.local/state)/faultlab/restore-journal.
std::string RestoreJournalPath();

class SystemSettings {
 public:
  // The process-wide instance; installs the SIGINT/SIGTERM handlers and the atexit restore on
  // first use.
  static SystemSettings& Get();

  // Journals the current value of `path`, writes `value`, and returns what reading it back
  // gives (the kernel may grant less than asked, e.g. nr_hugepages). Throws std::runtime_error
  // with a one-line message if the file cannot be written.
  std::string Set(const std::string& path, const std::string& value);

  // Restores every value this process changed, newest first, and removes the journal.
  void RestoreAll();

 private:
  SystemSettings();
};

// Replays a journal left by a process that is gone. Returns the entries restored; an empty list
// when there was no journal. A journal whose owner is still alive is left alone.
std::vector<JournalEntry> RestoreStaleJournal(std::string* message);

}  // namespace faultlab
