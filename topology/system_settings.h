// Changing system settings without leaving the machine changed.
//
// Every change to a sysfs/procfs file (hugetlb pools, THP, numa_balancing) goes through here:
// the old value is first written to a restore journal on disk (fsync'd), then the new value is
// written and read back. The old values are restored on normal exit, on SIGINT/SIGTERM (the
// handler restores and re-raises) and, after a crash, by `faultlab restore`, which replays a
// journal whose owner is gone. A run also replays a stale journal before it starts.
#pragma once

#include <signal.h>

#include <string>
#include <vector>

namespace faultlab {

struct JournalEntry {
  std::string path;
  std::string old_value;
};

// The journal file: $FAULTLAB_JOURNAL if set, else /var/lib/faultlab/restore-journal as root,
// else $XDG_STATE_HOME (or ~/.local/state)/faultlab/restore-journal. Read when a process makes
// its first change (and again after RestoreAll), so tests can point each case elsewhere.
//
// Format, text: "faultlab-restore-journal 1 pid <pid> start <field 22 of /proc/<pid>/stat>",
// then one line per changed file in order of first change: the path, a TAB, the old value.
// Rewritten atomically (temporary file, fsync, rename) before each new value is written.
std::string RestoreJournalPath();

class SystemSettings {
 public:
  // The process-wide instance; installs the SIGINT/SIGTERM handlers and the atexit restore on
  // first use. The handlers restore with async-signal-safe calls only and then re-raise the
  // signal with the default action, so the exit status still says "killed by SIGTERM". A
  // signal that was ignored stays ignored; a handler installed before ours is called after the
  // restore instead of the re-raise. Handlers installed after ours replace it (their owner must
  // then call RestoreAll). _exit and crashes leave the journal for RestoreStaleJournal.
  static SystemSettings& Get();

  // Journals the current value of `path` (first change of a path only: later Sets keep the
  // first old value), writes `value`, and returns what reading it back gives, trimmed (the
  // kernel may grant less than asked, e.g. nr_hugepages). For files that list the choices and
  // bracket the selected one ("always [madvise] never") both the journalled old value and the
  // returned value are the bracketed word, the only form that can be written back. Throws
  // std::runtime_error with a one-line message ("cannot write <path>: <reason>") if the file
  // cannot be read or written, or if the journal belongs to another running faultlab; the
  // journal then holds exactly the changes that were made. Thread-safe.
  std::string Set(const std::string& path, const std::string& value);

  // Restores every value this process changed, newest first, and removes the journal.
  // Idempotent. A value that cannot be written back is reported on stderr and kept in the
  // journal. In a forked child it does nothing: the parent's changes are the parent's to undo.
  void RestoreAll();

 private:
  SystemSettings();
};

// Holds SIGINT/SIGTERM back on this thread for a scope; one that arrives meanwhile acts when the
// scope ends. Around journal updates it keeps the restore handler from seeing a half-made change;
// around the final renames of a run it leaves either no output or a complete one.
class BlockTerminatingSignals {
 public:
  BlockTerminatingSignals();
  ~BlockTerminatingSignals();
  BlockTerminatingSignals(const BlockTerminatingSignals&) = delete;
  BlockTerminatingSignals& operator=(const BlockTerminatingSignals&) = delete;

 private:
  sigset_t old_;
};

// Replays a journal left by a process that is gone (its pid is gone, is a zombie, or now names a
// process with another start time), newest change first, then removes it. Returns the entries
// restored; an empty list when there was no journal. A journal whose owner is still alive is left
// alone. `message` gets one line for the user, e.g. "restored 1 setting left by faultlab pid
// 1234: /proc/sys/vm/nr_hugepages=0", "no restore journal", or why the journal was left.
std::vector<JournalEntry> RestoreStaleJournal(std::string* message);

}  // namespace faultlab
