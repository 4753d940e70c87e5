// Random operation sequences run against the model (kernels/) and against ModelReference side by
// side, comparing what a user can observe after every operation. One piece of code serves the
// seeded differential test (model_differential_test.cc) and the libFuzzer target
// (fuzz/model_ops_fuzz.cc): both hand it bytes, which it decodes into operations one at a time,
// each chosen among those valid in the current state, so every input is a valid sequence.
//
// The operations: map (anonymous, shmem, hugetlbfs; optionally registered for one uffd mode,
// with a handler), unmap, load, store, range touch, fork (classic, COW-PTE eager or lazy), zap,
// uffd write-protect and un-protect, guard install and remove, poison, migrate, the NUMA hinting
// scan, late uffd registration, exit, new address space; on two Cpus of two nodes.
//
// What is compared after every operation, over every mapped range of every address space: the
// operation's answers (fault results, loaded values, counts, errnos, the uffd events the handlers
// saw); the VMA lists; per page the pagemap's present, zero_page, uffd_wp, marker, numa_hint,
// huge and node; writable exactly on shared VMAs and when every fork was classic, else only that
// the model allows every write the reference does (a lazily shared table reused by its last owner
// is writable as a whole by design); the data words of every present page, read from the frame
// (Machine::frame), not through Load, which would fault; which pages share a frame (one reference
// frame is one model pfn, and the other way round). Invariants: a writable anonymous page has
// refcount and mapcount 1; with classic forks only, refcount and mapcount are exactly what the
// reference counts; the zero frame is all zeroes and its refcount never moves. At the end every
// address space exits and every frame must be free again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/machine.h"

namespace faultlab {
class Topology;
}

namespace faultlab::model_check {

// Where the operations' choices come from: a fuzzer's input, or a seeded generator's bytes.
// Reads past the end give zeroes (so every input decodes) and mark the source exhausted.
class ByteSource {
 public:
  explicit ByteSource(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}
  bool exhausted() const { return position_ >= bytes_.size(); }
  std::uint8_t Byte();
  // In [0, n) for n >= 1: one byte for n <= 256, else two.
  std::uint64_t Below(std::uint64_t n);
  bool Percent(int percent) { return Below(100) < static_cast<std::uint64_t>(percent); }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t position_ = 0;
};

struct RunOptions {
  // Only ForkMode::kClassic: writable bits, refcounts and mapcounts are then compared exactly.
  bool classic_only = false;
  int max_ops = 60;     // the sequence also ends when the bytes do
  int max_spaces = 4;   // live address spaces at once (at most 4)
  // COW-PTE forks only, and anonymous VMAs that cover whole PTE tables: the shared-table paths
  // (break by copy or reuse, zap and exit of shared tables) far more often.
  bool cow_pte_focus = false;
  // What names this sequence if the process dies in it (a seed, say): see PrintLogOnAbort().
  std::string label;
};

struct RunResult {
  bool ok = true;
  int ops = 0;                                  // operations run
  std::string failure;                          // the first difference, empty when ok
  std::vector<std::string> log;                 // one line per operation, as run
  std::map<std::string, std::uint64_t> counts;  // how often each kind of thing happened
  // The failure and the operations that led to it, ready to print.
  std::string Report() const;
};

// The machine every sequence runs on: two simulated nodes on unbound memory, made once and reused
// (each sequence must give every frame back, which the runner checks).
class ModelWorld {
 public:
  ModelWorld();
  ~ModelWorld();
  ModelWorld(const ModelWorld&) = delete;
  ModelWorld& operator=(const ModelWorld&) = delete;

  model::Machine& machine() { return *machine_; }

  static constexpr int kNodes = 2;
  static constexpr std::size_t kFrames4kPerNode = 16384;   // 64 MiB: no sequence runs out
  static constexpr std::size_t kFrames2mPerNode = 8;

 private:
  std::unique_ptr<Topology> topology_;
  std::unique_ptr<model::Machine> machine_;
};

// Decodes and runs one sequence from `source` until it is exhausted or options.max_ops ran, then
// exits every address space and checks that every frame came back.
RunResult RunSequence(ModelWorld& world, ByteSource& source, const RunOptions& options);

// The fuzzer's view of an input: its first byte chooses the options, the rest the operations.
RunResult RunFuzzInput(ModelWorld& world, std::span<const std::uint8_t> input);

// Installs (once) a SIGABRT handler that prints the running sequence's label and operations
// before passing the signal on to the handler it replaced: when the model or the reference
// aborts on an internal check, the run cannot report, and this says how to get there.
void PrintLogOnAbort();

}  // namespace faultlab::model_check
