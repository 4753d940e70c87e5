// The sequence runner shared by the differential test and the fuzzer (see model_ops.h): decodes
// one operation at a time from bytes, runs it on the model and on ModelReference, compares their
// answers and then everything observable.
#include "tests/model_ops.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "kernels/address_space.h"
#include "kernels/shmem_file.h"
#include "tests/model_reference.h"
#include "topology/topology.h"

namespace faultlab::model_check {

namespace {

// The sequence running on this process now (sequences run one at a time), for the abort handler.
struct RunningSequence {
  const std::string* label = nullptr;
  const std::vector<std::string>* log = nullptr;
};
RunningSequence running;

using model::AddressSpace;
using model::Cpu;
using model::ForkMode;
using model::Machine;
using model::PagemapEntry;
using model::Pfn;
using model::ShmemFile;
using model::kPageSize;
using model::kPmdSize;

constexpr std::uint64_t kMiB = 1ull << 20;

// Each VMA lives in one of these windows, at most one per window and address space. A VMA may
// span two PTE tables in any of them; in the second and third it may also span two PMD tables
// (across 1 GiB) or two PUD tables (across 512 GiB); the last ends at the top of the 48-bit
// address space.
constexpr std::uint64_t kWindowSize = 8 * kMiB;
constexpr std::uint64_t kWindowBases[] = {
    256 * kMiB,
    (1ull << 30) - 2 * kMiB,
    (1ull << 39) - 2 * kMiB,
    (1ull << 48) - kWindowSize,
};
constexpr int kWindows = 4;

constexpr std::uint64_t kShmemFileSize = 4 * kMiB;
constexpr std::uint64_t kHugeFileSize = 8 * kMiB;
constexpr int kMaxSpaces = 4;

std::string Hex(std::uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "%#" PRIx64, value);
  return text;
}

const char* EventName(UffdEvent::Kind kind) {
  switch (kind) {
    case UffdEvent::Kind::kMissing: return "missing";
    case UffdEvent::Kind::kMinor: return "minor";
    case UffdEvent::Kind::kWp: return "wp";
  }
  return "?";
}

std::string ModesName(std::uint32_t modes, bool wp_unpopulated) {
  if (modes == model::kUffdNone) return "none";
  std::string name;
  if (modes & model::kUffdMissing) name += "missing+";
  if (modes & model::kUffdMinor) name += "minor+";
  if (modes & model::kUffdWp) name += wp_unpopulated ? "wp(unpopulated)+" : "wp+";
  name.pop_back();
  return name;
}

std::string EventsText(const std::vector<RefUffdEvent>& events) {
  std::string text = "[";
  for (const RefUffdEvent& event : events) {
    if (text.size() > 1) text += ", ";
    text += EventName(event.kind);
    text += event.access == Access::kWrite ? " write " : " read ";
    text += Hex(event.address);
  }
  return text + "]";
}

// A shared file as both sides see it.
struct FilePair {
  std::shared_ptr<ShmemFile> model;
  std::shared_ptr<RefFile> ref;
  std::string name;   // for the log
};

enum class Op {
  kMap, kUnmap, kLoad, kStore, kTouch, kFork, kZap, kProtect, kUnprotect, kGuard, kUnguard,
  kPoison, kMigrate, kNumaScan, kRegister, kExit, kNewSpace,
};
struct OpWeight {
  Op op;
  int weight;
};
// Stores and loads dominate: they are what the faults are for. The weights add up to 100.
constexpr OpWeight kOpWeights[] = {
    {Op::kMap, 8},       {Op::kUnmap, 2},    {Op::kLoad, 13},     {Op::kStore, 20},
    {Op::kTouch, 11},    {Op::kFork, 7},     {Op::kZap, 6},       {Op::kProtect, 6},
    {Op::kUnprotect, 3}, {Op::kGuard, 3},    {Op::kUnguard, 2},   {Op::kPoison, 3},
    {Op::kMigrate, 5},   {Op::kNumaScan, 3}, {Op::kRegister, 2},  {Op::kExit, 3},
    {Op::kNewSpace, 3},
};
constexpr int SumOfWeights() {
  int sum = 0;
  for (const OpWeight& entry : kOpWeights) sum += entry.weight;
  return sum;
}
static_assert(SumOfWeights() == 100, "NextOp() draws from [0, 100)");

class SequenceRunner {
 public:
  SequenceRunner(ModelWorld& world, ByteSource& source, const RunOptions& options);
  RunResult Run();

 private:
  // --- Decoding ---
  Op NextOp();
  std::vector<int> LiveSpaces() const;
  int PickSpace();
  const RefVma* PickVma(int space, bool anon_only = false, bool prefer_wp = false);
  std::uint64_t PickPage(const RefVma& vma);
  std::uint64_t PickWord(const RefVma& vma);
  std::pair<std::uint64_t, std::uint64_t> PickRange(const RefVma& vma, std::uint64_t max_pages);
  Cpu& PickCpu(int* node);

  // --- Operations (each logs itself and compares the two answers) ---
  void Step();
  void DoMap(int space);
  void DoUnmap(int space);
  void DoAccess(int space, bool write, bool range);
  void DoFork(int space);
  void DoZap(int space);
  void DoProtect(int space, bool protect);
  void DoGuard(int space, bool install);
  void DoPoison(int space);
  void DoMigrate(int space);
  void DoNumaScan(int space);
  void DoRegister(int space);
  std::uint32_t PickUffdModes(VmaKind kind, bool* wp_unpopulated);
  void DoExit(int space);
  void DoNewSpace();
  FaultResult AccessOne(int space, Cpu& cpu, int cpu_node, std::uint64_t address, bool write,
                        std::uint64_t value, std::string* line);

  // The tests' uffd handler on the model side (the reference has its own copy of the policy).
  model::UffdHandler MakeHandler(VmaKind kind, std::uint64_t page_size);
  void OnUffd(AddressSpace& mm, Cpu& cpu, const UffdEvent& event, VmaKind kind,
              std::uint64_t page_size);

  // --- Checks ---
  void Fail(const std::string& what);
  template <typename T>
  void Expect(const char* what, const T& model_value, const T& ref_value);
  void CompareAll();
  void CompareSpace(int space);
  void CompareEvents();
  void Teardown();
  void Count(const std::string& what) { ++result_.counts[what]; }

  Machine& machine_;
  ByteSource& source_;
  RunOptions options_;
  RunResult result_;
  ModelReference ref_;

  std::unique_ptr<Cpu> cpus_[ModelWorld::kNodes];
  std::unique_ptr<AddressSpace> spaces_[kMaxSpaces];
  std::vector<FilePair> shmem_files_;
  FilePair huge_file_;

  std::vector<std::size_t> free_at_start_;   // per node: 4 KiB frames, then 2 MiB frames
  std::int32_t zero_refcount_at_start_ = 0;
  std::vector<RefUffdEvent> model_events_;   // what the model's handlers saw during this op
  int events_this_op_ = 0;                   // during one access
  std::deque<std::uint64_t> recent_words_;   // addresses used lately, to come back to
  std::uint64_t next_value_ = 1;
  // Frame identity, rebuilt at each comparison: reference frame id <-> model pfn.
  std::unordered_map<std::uint64_t, Pfn> pfn_of_frame_;
  std::unordered_map<Pfn, std::uint64_t> frame_of_pfn_;
  bool shared_table_seen_ = false;
};

SequenceRunner::SequenceRunner(ModelWorld& world, ByteSource& source, const RunOptions& options)
    : machine_(world.machine()), source_(source), options_(options) {
  options_.max_spaces = std::clamp(options_.max_spaces, 1, kMaxSpaces);
  for (int node = 0; node < ModelWorld::kNodes; ++node) {
    free_at_start_.push_back(machine_.free_frames(node, 0));
    free_at_start_.push_back(machine_.free_frames(node, model::kHugeOrder));
  }
  zero_refcount_at_start_ = machine_.meta(machine_.zero_pfn()).refcount.load();
  for (int node = 0; node < ModelWorld::kNodes; ++node) {
    cpus_[node] = std::make_unique<Cpu>(machine_, node);
  }
  // Two shmem files on different nodes (VMAs of one file may alias each other's pages) and a
  // hugetlbfs file.
  for (int node = 0; node < ModelWorld::kNodes; ++node) {
    shmem_files_.push_back({std::make_shared<ShmemFile>(machine_, kShmemFileSize, false, node),
                            ref_.NewFile(kShmemFileSize, false, node),
                            "shmem" + std::to_string(node)});
  }
  huge_file_ = {std::make_shared<ShmemFile>(machine_, kHugeFileSize, true, 1),
                ref_.NewFile(kHugeFileSize, true, 1), "huge"};
}

RunResult SequenceRunner::Run() {
  running = {&options_.label, &result_.log};
  try {
    DoNewSpace();
    while (result_.ok && result_.ops < options_.max_ops && !source_.exhausted()) Step();
  } catch (const std::exception& error) {
    Fail(std::string("exception: ") + error.what());
  }
  Teardown();
  running = {};
  return std::move(result_);
}

// --- Decoding -----------------------------------------------------------------------------------

Op SequenceRunner::NextOp() {
  std::uint64_t pick = source_.Below(100);
  for (const OpWeight& entry : kOpWeights) {
    if (pick < static_cast<std::uint64_t>(entry.weight)) return entry.op;
    pick -= entry.weight;
  }
  return Op::kStore;
}

std::vector<int> SequenceRunner::LiveSpaces() const {
  std::vector<int> live;
  for (int i = 0; i < kMaxSpaces; ++i) {
    if (spaces_[i]) live.push_back(i);
  }
  return live;
}

int SequenceRunner::PickSpace() {
  const std::vector<int> live = LiveSpaces();
  return live[source_.Below(live.size())];
}

const RefVma* SequenceRunner::PickVma(int space, bool anon_only, bool prefer_wp) {
  std::vector<const RefVma*> candidates;
  for (const RefVma& vma : ref_.Space(space).vmas) {
    if (!anon_only || vma.kind == VmaKind::kAnon) candidates.push_back(&vma);
  }
  if (prefer_wp && source_.Percent(85)) {
    std::vector<const RefVma*> registered;
    for (const RefVma* vma : candidates) {
      if (vma->registered_wp()) registered.push_back(vma);
    }
    if (!registered.empty()) candidates = registered;
  }
  if (candidates.empty()) return nullptr;
  return candidates[source_.Below(candidates.size())];
}

// A page of the VMA: one used lately (in any address space: after a fork the same address is a
// COW candidate), one at an edge or a table boundary, or any.
std::uint64_t SequenceRunner::PickPage(const RefVma& vma) {
  const std::uint64_t size = vma.page_size();
  const std::uint64_t pages = (vma.end - vma.start) / size;
  const std::uint64_t way = source_.Below(10);
  if (way < 4 && !recent_words_.empty()) {
    const std::uint64_t address = recent_words_[source_.Below(recent_words_.size())];
    if (address >= vma.start && address < vma.end) return address & ~(size - 1);
  }
  if (way < 6) {
    std::vector<std::uint64_t> edges = {vma.start, vma.end - size};
    const std::uint64_t boundary = (vma.start + kPmdSize) & ~(kPmdSize - 1);
    if (boundary < vma.end && size == kPageSize) {
      edges.push_back(boundary);
      edges.push_back(boundary - kPageSize);
    }
    return edges[source_.Below(edges.size())];
  }
  return vma.start + source_.Below(pages) * size;
}

std::uint64_t SequenceRunner::PickWord(const RefVma& vma) {
  std::uint64_t address = PickPage(vma);
  if (vma.page_size() != kPageSize) {
    // A 4 KiB piece of the huge page: its ends more often than not.
    const std::uint64_t way = source_.Below(4);
    address += (way == 0 ? 0 : way == 1 ? kPmdSize - kPageSize : source_.Below(512) * kPageSize);
  }
  address += kWordOffsets[source_.Below(kWordsPerPage)];
  recent_words_.push_back(address);
  if (recent_words_.size() > 16) recent_words_.pop_front();
  return address;
}

// [start, start + length) inside the VMA, in its pages: the whole VMA now and then.
std::pair<std::uint64_t, std::uint64_t> SequenceRunner::PickRange(const RefVma& vma,
                                                                  std::uint64_t max_pages) {
  if (source_.Percent(20)) return {vma.start, vma.end - vma.start};
  const std::uint64_t size = vma.page_size();
  const std::uint64_t start = PickPage(vma);
  const std::uint64_t room = (vma.end - start) / size;
  const std::uint64_t pages = 1 + source_.Below(std::min(room, max_pages));
  return {start, pages * size};
}

Cpu& SequenceRunner::PickCpu(int* node) {
  *node = static_cast<int>(source_.Below(ModelWorld::kNodes));
  return *cpus_[*node];
}

// --- Operations ---------------------------------------------------------------------------------

void SequenceRunner::Step() {
  Op op = NextOp();
  if (LiveSpaces().empty()) op = Op::kNewSpace;
  if (op == Op::kNewSpace && LiveSpaces().size() >= static_cast<std::size_t>(options_.max_spaces)) {
    op = Op::kStore;
  }
  if (op == Op::kFork && LiveSpaces().size() >= static_cast<std::size_t>(options_.max_spaces)) {
    op = Op::kExit;
  }
  const int space = op == Op::kNewSpace ? -1 : PickSpace();
  const bool has_vma = space >= 0 && !ref_.Space(space).vmas.empty();
  // Operations on a VMA need one: map one first.
  const bool needs_vma = op != Op::kNewSpace && op != Op::kFork && op != Op::kExit &&
                         op != Op::kMap;
  if (needs_vma && !has_vma) op = Op::kMap;

  ++result_.ops;
  switch (op) {
    case Op::kMap: DoMap(space); break;
    case Op::kUnmap: DoUnmap(space); break;
    case Op::kLoad: DoAccess(space, false, false); break;
    case Op::kStore: DoAccess(space, true, false); break;
    case Op::kTouch: DoAccess(space, source_.Percent(60), true); break;
    case Op::kFork: DoFork(space); break;
    case Op::kZap: DoZap(space); break;
    case Op::kProtect: DoProtect(space, true); break;
    case Op::kUnprotect: DoProtect(space, false); break;
    case Op::kGuard: DoGuard(space, true); break;
    case Op::kUnguard: DoGuard(space, false); break;
    case Op::kPoison: DoPoison(space); break;
    case Op::kMigrate: DoMigrate(space); break;
    case Op::kNumaScan: DoNumaScan(space); break;
    case Op::kRegister: DoRegister(space); break;
    case Op::kExit: DoExit(space); break;
    case Op::kNewSpace: DoNewSpace(); break;
  }
  CompareEvents();
  if (result_.ok) CompareAll();
}

void SequenceRunner::DoMap(int space) {
  // A free window in this address space.
  std::vector<int> free_windows;
  for (int w = 0; w < kWindows; ++w) {
    bool used = false;
    for (const RefVma& vma : ref_.Space(space).vmas) {
      used |= vma.start < kWindowBases[w] + kWindowSize && vma.end > kWindowBases[w];
    }
    if (!used) free_windows.push_back(w);
  }
  if (free_windows.empty()) {
    DoUnmap(space);   // every window is taken: make room for a later map
    return;
  }
  const std::uint64_t kind_pick = source_.Below(100);
  const std::uint64_t base = kWindowBases[free_windows[source_.Below(free_windows.size())]];
  RefVma vma;
  vma.kind = kind_pick < 50 ? VmaKind::kAnon : kind_pick < 85 ? VmaKind::kShmem : VmaKind::kHugetlb;
  std::uint64_t size_pick = source_.Below(10);
  if (options_.cow_pte_focus && kind_pick < 80) {
    vma.kind = VmaKind::kAnon;
    size_pick = 9;
  }
  if (vma.kind == VmaKind::kHugetlb) {
    vma.start = base + source_.Below(3) * kPmdSize;
    vma.end = vma.start + (1 + source_.Below(2)) * kPmdSize;
    vma.file = huge_file_.ref;
    vma.file_offset = source_.Below(kHugeFileSize / kPmdSize - (vma.end - vma.start) / kPmdSize + 1) *
                      kPmdSize;
  } else {
    // Small, medium or up to 3 MiB (768 pages), starting anywhere in the window's first 4 MiB;
    // or, for anonymous memory, covering a whole PTE table, which COW-PTE forks share.
    const bool whole_table = vma.kind == VmaKind::kAnon && size_pick >= 5;
    const std::uint64_t pages = whole_table     ? 512 + source_.Below(257)
                                : size_pick < 4 ? 1 + source_.Below(16)
                                : size_pick < 8 ? 17 + source_.Below(112)
                                                : 129 + source_.Below(640);
    vma.start = base + (whole_table && source_.Percent(60) ? 0 : source_.Below(1024) * kPageSize);
    vma.end = vma.start + pages * kPageSize;
    if (vma.kind == VmaKind::kShmem) {
      vma.file = shmem_files_[source_.Below(shmem_files_.size())].ref;
      // Offset 0 half the time: VMAs of one file then alias, in one address space or across
      // several, so pages are in the cache before a minor fault looks for them.
      vma.file_offset =
          source_.Percent(50) ? 0 : source_.Below(kShmemFileSize / kPageSize - pages + 1) * kPageSize;
    }
  }
  vma.writable = source_.Percent(90);
  vma.preferred_node = source_.Percent(70) ? -1 : static_cast<int>(source_.Below(2));
  // Tables of VMAs registered for wp are never shared: keep most whole-table VMAs unregistered.
  if (vma.kind != VmaKind::kAnon || vma.end - vma.start < kPmdSize || source_.Percent(40)) {
    vma.uffd_modes = PickUffdModes(vma.kind, &vma.uffd_wp_unpopulated);
  }
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);

  std::string line = std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                     std::to_string(cpu_node) + " map " + model::VmaKindName(vma.kind) + " [" +
                     Hex(vma.start) + ", " + Hex(vma.end) + ") " + (vma.writable ? "rw" : "ro") +
                     " node " + std::to_string(vma.preferred_node) + " uffd " +
                     ModesName(vma.uffd_modes, vma.uffd_wp_unpopulated);
  model::Vma model_vma;
  model_vma.start = vma.start;
  model_vma.end = vma.end;
  model_vma.kind = vma.kind;
  model_vma.writable = vma.writable;
  model_vma.file_offset = vma.file_offset;
  model_vma.preferred_node = vma.preferred_node;
  for (const FilePair* file : {&shmem_files_[0], &shmem_files_[1], &huge_file_}) {
    if (vma.file != file->ref) continue;
    model_vma.file = file->model;
    line += " file " + file->name + " +" + Hex(vma.file_offset);
  }
  result_.log.push_back(line);
  Count(std::string("map:") + model::VmaKindName(vma.kind));
  spaces_[space]->Map(cpu, model_vma);
  if (vma.uffd_modes != model::kUffdNone) {
    spaces_[space]->RegisterUffd(cpu, vma.start, vma.uffd_modes,
                                 MakeHandler(vma.kind, vma.page_size()), vma.uffd_wp_unpopulated);
  }
  ref_.Map(space, vma);
}

void SequenceRunner::DoUnmap(int space) {
  const RefVma vma = *PickVma(space);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " unmap " + Hex(vma.start));
  Count("unmap");
  spaces_[space]->Unmap(cpu, vma.start);
  ref_.Unmap(space, vma.start);
  // Nothing may be left behind where the VMA was.
  const std::vector<PagemapEntry> entries = spaces_[space]->Pagemap(vma.start, vma.end - vma.start);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].present || entries[i].marker != 0 || entries[i].migration) {
      Fail("unmapped page " + Hex(vma.start + i * kPageSize) + " still shows an entry");
      return;
    }
  }
}

FaultResult SequenceRunner::AccessOne(int space, Cpu& cpu, int cpu_node, std::uint64_t address,
                                      bool write, std::uint64_t value, std::string* line) {
  std::uint64_t model_value = 0;
  std::uint64_t ref_value = 0;
  events_this_op_ = 0;
  FaultResult model_result;
  FaultResult ref_result;
  if (write) {
    model_result = spaces_[space]->Store(cpu, address, value);
    ref_result = ref_.Store(space, cpu_node, address, value);
  } else {
    model_result = spaces_[space]->Load(cpu, address, &model_value);
    ref_result = ref_.Load(space, cpu_node, address, &ref_value);
  }
  if (line) *line += std::string(" ") + model::FaultResultName(model_result);
  Count(std::string(write ? "store:" : "load:") + model::FaultResultName(ref_result));
  if (model_result != ref_result) {
    Fail(std::string(write ? "store " : "load ") + Hex(address) + ": model " +
         model::FaultResultName(model_result) + ", reference " +
         model::FaultResultName(ref_result));
    return model_result;
  }
  if (model_result != FaultResult::kOk) return model_result;
  if (!write && model_value != ref_value) {
    Fail("load " + Hex(address) + ": model read " + Hex(model_value) + ", reference " +
         Hex(ref_value));
  }
  // What the fault made possible must now go through without one.
  if (!spaces_[space]->Accessible(address, write ? Access::kWrite : Access::kRead)) {
    Fail(std::string(write ? "store " : "load ") + Hex(address) +
         " succeeded but the walk does not permit it afterwards");
  }
  return model_result;
}

void SequenceRunner::DoAccess(int space, bool write, bool range) {
  const RefVma vma = *PickVma(space);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  std::string line = std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                     std::to_string(cpu_node) + (write ? " store" : " load");
  if (!range) {
    const std::uint64_t address = PickWord(vma);
    const std::uint64_t value = write ? (0xfa00000000000000ull | next_value_++) : 0;
    line += " " + Hex(address) + (write ? " = " + Hex(value) : "") + ":";
    result_.log.push_back(line);
    AccessOne(space, cpu, cpu_node, address, write, value, &result_.log.back());
    return;
  }
  // Consecutive pages, the same word of each: fills tables, crosses their boundaries.
  const auto [start, length] = PickRange(vma, 32);
  const std::uint64_t offset = kWordOffsets[source_.Below(kWordsPerPage)];
  line += " range " + Hex(start) + " +" + Hex(length) + " word " + Hex(offset) + ":";
  result_.log.push_back(line);
  Count("touch");
  // The log says how many accesses had each result, in the order the results first came.
  std::vector<std::pair<FaultResult, int>> results;
  for (std::uint64_t page = start; page < start + length && result_.ok; page += vma.page_size()) {
    const std::uint64_t value = write ? (0xfb00000000000000ull | next_value_++) : 0;
    const FaultResult result = AccessOne(space, cpu, cpu_node, page + offset, write, value, nullptr);
    auto same = std::find_if(results.begin(), results.end(),
                             [result](const auto& seen) { return seen.first == result; });
    if (same == results.end()) results.emplace_back(result, 1);
    else ++same->second;
  }
  for (const auto& [result, count] : results) {
    result_.log.back() += std::string(" ") + model::FaultResultName(result) + " x" +
                          std::to_string(count);
  }
}

void SequenceRunner::DoFork(int space) {
  int child = 0;
  while (spaces_[child]) ++child;
  const ForkMode mode = options_.classic_only    ? ForkMode::kClassic
                        : options_.cow_pte_focus ? static_cast<ForkMode>(1 + source_.Below(2))
                                                 : static_cast<ForkMode>(source_.Below(3));
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " fork " + model::ForkModeName(mode) +
                        " -> as" + std::to_string(child));
  Count(std::string("fork:") + model::ForkModeName(mode));
  spaces_[child] = spaces_[space]->Fork(cpu, mode);
  ref_.Fork(space, child);
  result_.counts["fork:tables_shared"] += spaces_[child]->PageTables().shared_pte_tables;
}

void SequenceRunner::DoZap(int space) {
  const RefVma vma = *PickVma(space);
  auto [start, length] = PickRange(vma, 64);
  // Now and then exactly one whole PTE table, which a shared table handles apart.
  const std::uint64_t table = (vma.start + kPmdSize - 1) & ~(kPmdSize - 1);
  if (vma.kind == VmaKind::kAnon && table + kPmdSize <= vma.end && source_.Percent(25)) {
    start = table;
    length = kPmdSize;
  }
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  // Whole shared tables take a path of their own (put, not copied and cleared): count them.
  for (std::uint64_t whole = (start + kPmdSize - 1) & ~(kPmdSize - 1);
       whole + kPmdSize <= start + length; whole += kPmdSize) {
    if (spaces_[space]->Pagemap(whole, kPageSize)[0].table_shared) Count("zap:whole_shared_table");
  }
  const std::uint64_t model_count = spaces_[space]->Zap(cpu, start, length);
  const std::uint64_t ref_count = ref_.Zap(space, start, length);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " zap " + Hex(start) + " +" + Hex(length) +
                        ": " + std::to_string(model_count));
  Count("zap");
  Expect("zap's count of pages unmapped", model_count, ref_count);
}

void SequenceRunner::DoProtect(int space, bool protect) {
  const RefVma vma = *PickVma(space, false, true);
  const auto [start, length] = PickRange(vma, 64);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  const int model_result = spaces_[space]->UffdWriteProtect(cpu, start, length, protect);
  const int ref_result = ref_.UffdWriteProtect(space, start, length, protect);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + (protect ? " wp " : " unwp ") + Hex(start) +
                        " +" + Hex(length) + ": " + std::to_string(model_result));
  Count(protect ? "wp" : "unwp");
  Expect("UffdWriteProtect's result", model_result, ref_result);
}

void SequenceRunner::DoGuard(int space, bool install) {
  const RefVma* found = PickVma(space, /*anon_only=*/true);
  if (!found) {
    result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) +
                          " guard: no anonymous VMA, nothing done");
    return;
  }
  const RefVma vma = *found;
  const auto [start, length] = PickRange(vma, 8);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  const std::uint64_t model_count = install ? spaces_[space]->InstallGuard(cpu, start, length)
                                            : spaces_[space]->RemoveGuard(cpu, start, length);
  const std::uint64_t ref_count = install ? ref_.InstallGuard(space, start, length)
                                          : ref_.RemoveGuard(space, start, length);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + (install ? " guard " : " unguard ") +
                        Hex(start) + " +" + Hex(length) + ": " + std::to_string(model_count));
  Count(install ? "guard" : "unguard");
  Expect(install ? "InstallGuard's count" : "RemoveGuard's count", model_count, ref_count);
}

void SequenceRunner::DoPoison(int space) {
  const RefVma vma = *PickVma(space);
  const auto [start, length] = PickRange(vma, 4);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  const int model_result = spaces_[space]->UffdPoison(cpu, start, length);
  const int ref_result = ref_.UffdPoison(space, start, length);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " poison " + Hex(start) + " +" +
                        Hex(length) + ": " + std::to_string(model_result));
  Count(ref_result == 0 ? "poison" : "poison:eexist");
  Expect("UffdPoison's result", model_result, ref_result);
}

void SequenceRunner::DoMigrate(int space) {
  // Mostly anonymous pages: only they migrate (shared ones give -EINVAL).
  const RefVma* anon = source_.Percent(80) ? PickVma(space, /*anon_only=*/true) : nullptr;
  const RefVma vma = anon ? *anon : *PickVma(space);
  const std::uint64_t address = PickWord(vma);
  // Mostly to the other node than the page's, else to either.
  int node = static_cast<int>(source_.Below(ModelWorld::kNodes));
  const RefEntry* entry = ref_.Space(space).EntryOf(vma, address);
  if (entry && entry->frame && source_.Percent(80)) node = 1 - entry->frame->node;
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  const int model_result = spaces_[space]->MigratePage(cpu, address, node);
  const int ref_result = ref_.MigratePage(space, address, node);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " migrate " + Hex(address) + " to node " +
                        std::to_string(node) + ": " + std::to_string(model_result));
  Count("migrate:" + std::to_string(ref_result));
  Expect("MigratePage's result", model_result, ref_result);
}

// One uffd mode per VMA, so that which event comes first is never in question.
std::uint32_t SequenceRunner::PickUffdModes(VmaKind kind, bool* wp_unpopulated) {
  const std::uint64_t pick = source_.Below(100);
  *wp_unpopulated = false;
  if (kind == VmaKind::kAnon) {
    if (pick < 30) {
      *wp_unpopulated = source_.Percent(50);
      return model::kUffdWp;
    }
    return pick < 50 ? model::kUffdMissing : model::kUffdNone;
  }
  return pick < 35   ? model::kUffdWp
         : pick < 50 ? model::kUffdMissing
         : pick < 65 ? model::kUffdMinor
                     : model::kUffdNone;
}

void SequenceRunner::DoNumaScan(int space) {
  const RefVma vma = *PickVma(space);
  const auto [start, length] = PickRange(vma, 64);
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  const std::uint64_t model_count = spaces_[space]->ChangeProtNuma(cpu, start, length);
  const std::uint64_t ref_count = ref_.ChangeProtNuma(space, start, length);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " numa scan " + Hex(start) + " +" +
                        Hex(length) + ": " + std::to_string(model_count));
  Count("numa_scan");
  Expect("ChangeProtNuma's count", model_count, ref_count);
}

// UFFDIO_REGISTER of a VMA mapped without (a forked child's, say): it may hold pages already.
void SequenceRunner::DoRegister(int space) {
  std::vector<const RefVma*> unregistered;
  for (const RefVma& vma : ref_.Space(space).vmas) {
    if (vma.uffd_modes == model::kUffdNone) unregistered.push_back(&vma);
  }
  const std::uint64_t pick = source_.Below(std::max<std::size_t>(unregistered.size(), 1));
  bool wp_unpopulated = false;
  if (unregistered.empty()) {
    result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) +
                          " register: every VMA is registered, nothing done");
    return;
  }
  const RefVma vma = *unregistered[pick];
  const std::uint32_t modes = PickUffdModes(vma.kind, &wp_unpopulated);
  if (modes == model::kUffdNone) {
    result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) +
                          " register: no mode chosen, nothing done");
    return;
  }
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " register " + Hex(vma.start) + " uffd " +
                        ModesName(modes, wp_unpopulated));
  Count("register");
  spaces_[space]->RegisterUffd(cpu, vma.start, modes, MakeHandler(vma.kind, vma.page_size()),
                               wp_unpopulated);
  ref_.RegisterUffd(space, vma.start, modes, wp_unpopulated);
}

void SequenceRunner::DoExit(int space) {
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " exit");
  Count("exit");
  spaces_[space]->Exit(cpu);
  spaces_[space].reset();
  ref_.Exit(space);
}

void SequenceRunner::DoNewSpace() {
  int space = 0;
  while (spaces_[space]) ++space;
  int cpu_node = 0;
  Cpu& cpu = PickCpu(&cpu_node);
  // Both encodings of NUMA hinting entries; a fork's child inherits its parent's.
  AddressSpace::Options options;
  options.protnone = source_.Percent(50) ? model::ProtnoneEncoding::kProtnone
                                         : model::ProtnoneEncoding::kFaultOnAccess;
  result_.log.push_back(std::to_string(result_.ops) + ": as" + std::to_string(space) + " cpu" +
                        std::to_string(cpu_node) + " new address space, hinting by " +
                        model::ProtnoneEncodingName(options.protnone));
  spaces_[space] = std::make_unique<AddressSpace>(machine_, cpu, options);
  ref_.NewSpace(space);
}

// --- The tests' uffd handler --------------------------------------------------------------------

model::UffdHandler SequenceRunner::MakeHandler(VmaKind kind, std::uint64_t page_size) {
  return [this, kind, page_size](AddressSpace& mm, Cpu& cpu, const UffdEvent& event) {
    OnUffd(mm, cpu, event, kind, page_size);
  };
}

void SequenceRunner::OnUffd(AddressSpace& mm, Cpu& cpu, const UffdEvent& event, VmaKind kind,
                            std::uint64_t page_size) {
  model_events_.push_back(RefUffdEvent{event.kind, event.address, event.access});
  Count(std::string("event:") + EventName(event.kind));
  // The model retries a fault until its handler resolved it; one that never is would spin until
  // the model gives up (kSigbus after many rounds). An access needs two events at most (a
  // missing fault, then a wp fault on what it mapped): fail at once, with the story so far.
  if (++events_this_op_ > 8) {
    Fail("uffd events do not stop: " + EventsText(model_events_));
    std::fprintf(stderr, "%s\n", result_.Report().c_str());
    std::abort();
  }
  int result = 0;
  const char* call = "";
  switch (event.kind) {
    case UffdEvent::Kind::kWp:
      call = "UffdWriteProtect";
      result = mm.UffdWriteProtect(cpu, event.address, page_size, false);
      break;
    case UffdEvent::Kind::kMissing:
      if (HandlerZeroFills(kind, event.address, event.access == Access::kWrite)) {
        call = "UffdZeropage";
        Count(std::string("zeropage:") + model::VmaKindName(kind));
        result = mm.UffdZeropage(cpu, event.address);
      } else {
        call = "UffdCopy";
        std::vector<std::uint64_t> page(page_size / sizeof(std::uint64_t));
        for (std::uint64_t sub = 0; sub < page_size; sub += kPageSize) {
          for (std::uint64_t offset : kWordOffsets) {
            page[(sub + offset) / sizeof(std::uint64_t)] = UffdCopyPattern(event.address + sub, offset);
          }
        }
        result = mm.UffdCopy(cpu, event.address, page.data());
      }
      break;
    case UffdEvent::Kind::kMinor:
      call = "UffdContinue";
      result = mm.UffdContinue(cpu, event.address);
      break;
  }
  if (result != 0) {
    Fail(std::string("the handler's ") + call + " at " + Hex(event.address) + " returned " +
         std::to_string(result));
  }
}

// --- Checks -------------------------------------------------------------------------------------

void SequenceRunner::Fail(const std::string& what) {
  if (!result_.ok) return;
  result_.ok = false;
  result_.failure = "after operation " + std::to_string(result_.ops) + ": " + what;
}

template <typename T>
void SequenceRunner::Expect(const char* what, const T& model_value, const T& ref_value) {
  if (model_value == ref_value) return;
  std::ostringstream text;
  text << what << ": model " << model_value << ", reference " << ref_value;
  Fail(text.str());
}

void SequenceRunner::CompareEvents() {
  std::vector<RefUffdEvent> ref_events = ref_.TakeEvents();
  if (result_.ok && model_events_ != ref_events) {
    Fail("uffd events: model " + EventsText(model_events_) + ", reference " +
         EventsText(ref_events));
  }
  model_events_.clear();
}

void SequenceRunner::CompareAll() {
  // The zero frame: never written, its refcount never moved.
  const Pfn zero = machine_.zero_pfn();
  Expect("the zero frame's refcount", machine_.meta(zero).refcount.load(), zero_refcount_at_start_);
  const auto* zero_words = reinterpret_cast<const std::uint64_t*>(machine_.frame(zero));
  for (std::uint64_t i = 0; i < kPageSize / sizeof(std::uint64_t) && result_.ok; ++i) {
    if (zero_words[i] != 0) Fail("the zero frame's word " + std::to_string(i) + " was written");
  }
  pfn_of_frame_.clear();
  frame_of_pfn_.clear();
  shared_table_seen_ = false;
  for (int space = 0; space < kMaxSpaces && result_.ok; ++space) {
    if (static_cast<bool>(spaces_[space]) != ref_.Live(space)) {
      Fail("address space " + std::to_string(space) + " is live on one side only");
      return;
    }
    if (spaces_[space]) CompareSpace(space);
  }
  if (shared_table_seen_) Count("ops_with_shared_tables");
}

void SequenceRunner::CompareSpace(int space) {
  const AddressSpace& mm = *spaces_[space];
  const RefAddressSpace& ref = ref_.Space(space);
  const std::vector<model::Vma> model_vmas = mm.vmas();
  if (model_vmas.size() != ref.vmas.size()) {
    Fail("as" + std::to_string(space) + " has " + std::to_string(model_vmas.size()) +
         " VMAs in the model, " + std::to_string(ref.vmas.size()) + " in the reference");
    return;
  }
  for (std::size_t v = 0; v < ref.vmas.size() && result_.ok; ++v) {
    const RefVma& vma = ref.vmas[v];
    const model::Vma& model_vma = model_vmas[v];
    if (model_vma.start != vma.start || model_vma.end != vma.end || model_vma.kind != vma.kind) {
      Fail("as" + std::to_string(space) + " VMA " + std::to_string(v) + " differs");
      return;
    }
    const std::vector<PagemapEntry> entries = mm.Pagemap(vma.start, vma.end - vma.start);
    if (entries.size() != (vma.end - vma.start) / kPageSize) {
      Fail("Pagemap gave " + std::to_string(entries.size()) + " entries for " +
           Hex(vma.end - vma.start) + " bytes");
      return;
    }
    // The reference's entries in address order, walked alongside the pagemap.
    auto next = ref.entries.lower_bound(vma.start);
    for (std::size_t i = 0; i < entries.size() && result_.ok; ++i) {
      const std::uint64_t address = vma.start + i * kPageSize;
      const std::uint64_t page = address & ~(vma.page_size() - 1);
      while (next != ref.entries.end() && next->first < page) ++next;
      const RefEntry* want =
          next != ref.entries.end() && next->first == page ? &next->second : nullptr;
      const PagemapEntry& got = entries[i];
      shared_table_seen_ |= got.table_shared;
      const bool present = want && want->frame;
      // Named only when something differs: building the name for every page costs more than
      // the comparison.
      auto at = [&] { return "as" + std::to_string(space) + " page " + Hex(address); };
      auto mismatch = [&](const std::string& what, auto model_value, auto ref_value) {
        std::ostringstream text;
        text << at() << ": " << what << ": model " << model_value << ", reference " << ref_value;
        Fail(text.str());
      };
      if (got.present != present) {
        mismatch("present", got.present, present);
        break;
      }
      if (got.migration) {
        Fail(at() + ": a migration entry outside any operation");
        break;
      }
      if (!present) {
        const PteMarker marker = want ? want->marker : 0;
        if (got.marker != marker) mismatch("marker bits", got.marker, marker);
        if (got.uffd_wp != ((marker & model::kPteMarkerUffdWp) != 0)) {
          mismatch("uffd_wp of a non-present entry", got.uffd_wp, !got.uffd_wp);
        }
        continue;
      }
      const RefFrame& frame = *want->frame;
      if (got.marker != 0) mismatch("marker bits of a present entry", got.marker, 0);
      if (got.zero_page != frame.zero) mismatch("zero_page", got.zero_page, frame.zero);
      if (got.uffd_wp != want->uffd_wp) mismatch("uffd_wp", got.uffd_wp, want->uffd_wp);
      if (got.huge != (vma.kind == VmaKind::kHugetlb)) mismatch("huge", got.huge, !got.huge);
      if (got.node != frame.node) mismatch("node", got.node, frame.node);
      if (got.numa_hint != want->numa_hint) mismatch("numa_hint", got.numa_hint, want->numa_hint);
      // A hinting entry permits no access, writes included.
      const bool writable = want->writable && !want->numa_hint;
      // COW-PTE leaves no trace on shared VMAs; on anonymous ones a lazily shared table reused
      // by its last owner is writable as a whole (README), so the model may allow more writes
      // than classic rules, never fewer.
      if ((options_.classic_only || vma.shared()) && got.writable != writable) {
        mismatch("writable", got.writable, writable);
      } else if (writable && !got.writable) {
        mismatch("writable (COW-PTE may add write permission, never take it)", got.writable,
                 writable);
      }
      if (!result_.ok) break;
      // One reference frame is one model frame: the sharing is the same.
      const std::uint64_t sub = frame.huge ? (address - (address & ~(kPmdSize - 1))) / kPageSize : 0;
      const Pfn head = got.pfn - sub;
      auto [by_frame, new_frame] = pfn_of_frame_.emplace(frame.id, head);
      auto [by_pfn, new_pfn] = frame_of_pfn_.emplace(head, frame.id);
      if (by_frame->second != head || by_pfn->second != frame.id) {
        Fail(at() + ": frame sharing differs: reference frame " + std::to_string(frame.id) +
             " is model pfn " + Hex(by_frame->second) + " elsewhere, here pfn " + Hex(head) +
             " (reference frame " + std::to_string(by_pfn->second) + " elsewhere)");
        break;
      }
      if (frame.zero != machine_.is_zero_pfn(head)) mismatch("maps the zero pfn", !frame.zero, frame.zero);
      // The data, read from the frame itself.
      const std::byte* memory = machine_.frame(got.pfn);
      for (std::uint64_t offset : kWordOffsets) {
        std::uint64_t word = 0;
        std::memcpy(&word, memory + offset, sizeof(word));
        const std::uint64_t expected = frame.Word(sub * kPageSize + offset);
        if (word != expected) {
          mismatch("word at +" + Hex(offset), Hex(word), Hex(expected));
          break;
        }
      }
      if (frame.zero) continue;
      const model::FrameMeta& meta = machine_.meta(head);
      const int refcount = meta.refcount.load();
      const int mapcount = meta.mapcount.load();
      if (got.writable && vma.kind == VmaKind::kAnon && (refcount != 1 || mapcount != 1)) {
        Fail(at() + ": writable anonymous page with refcount " + std::to_string(refcount) +
             " and mapcount " + std::to_string(mapcount) + " (want 1 and 1)");
      }
      if (options_.classic_only) {
        if (refcount != frame.refcount()) mismatch("refcount", refcount, frame.refcount());
        if (mapcount != frame.mappings) mismatch("mapcount", mapcount, frame.mappings);
      }
    }
  }
}

void SequenceRunner::Teardown() {
  // Every address space exits, then the files go, then the Cpus give their caches back: every
  // frame must be free again.
  Cpu& cpu = *cpus_[0];
  for (int space = 0; space < kMaxSpaces; ++space) {
    if (!spaces_[space]) continue;
    spaces_[space]->Exit(cpu);
    spaces_[space].reset();
    ref_.Exit(space);
  }
  for (FilePair& file : shmem_files_) file.model.reset();
  huge_file_.model.reset();
  // Which of the model's paths ran, by its own counters.
  for (auto& one : cpus_) {
    const model::CpuStats& stats = one->stats();
    result_.counts["model:cow_pte_reused"] += stats.cow_pte_reused;
    result_.counts["model:cow_pte_copied"] += stats.cow_pte_copied;
    result_.counts["model:pages_reused"] += stats.pages_reused;
    result_.counts["model:pages_copied"] += stats.pages_copied;
    result_.counts["model:numa_hint_faults"] += stats.numa_hint_faults;
    result_.counts["model:pages_migrated"] += stats.pages_migrated;
    result_.counts["model:zeropage_maps"] += stats.zeropage_maps;
    result_.counts["model:fault_retries"] += stats.fault_retries;
  }
  for (auto& one : cpus_) one.reset();
  for (int node = 0; node < ModelWorld::kNodes; ++node) {
    Expect("free 4 KiB frames at the end on node", machine_.free_frames(node, 0),
           free_at_start_[2 * node]);
    Expect("free 2 MiB frames at the end on node", machine_.free_frames(node, model::kHugeOrder),
           free_at_start_[2 * node + 1]);
  }
  Expect("the zero frame's refcount at the end", machine_.meta(machine_.zero_pfn()).refcount.load(),
         zero_refcount_at_start_);
}

}  // namespace

// --- Public -------------------------------------------------------------------------------------

std::uint8_t ByteSource::Byte() {
  if (position_ >= bytes_.size()) {
    ++position_;
    return 0;
  }
  return bytes_[position_++];
}

std::uint64_t ByteSource::Below(std::uint64_t n) {
  if (n <= 1) return 0;
  std::uint64_t value = Byte();
  if (n > 256) value = (value << 8) | Byte();
  return value % n;
}

std::string RunResult::Report() const {
  std::string text = ok ? "no difference" : failure;
  text += "\noperations (" + std::to_string(ops) + "):\n";
  for (const std::string& line : log) text += "  " + line + "\n";
  return text;
}

ModelWorld::ModelWorld() : topology_(std::make_unique<Topology>()) {
  std::vector<model::NodeSpec> nodes(
      kNodes, model::NodeSpec{std::nullopt, kFrames4kPerNode, kFrames2mPerNode});
  machine_ = std::make_unique<model::Machine>(*topology_, nodes);
}

ModelWorld::~ModelWorld() = default;

RunResult RunSequence(ModelWorld& world, ByteSource& source, const RunOptions& options) {
  return SequenceRunner(world, source, options).Run();
}

namespace {

struct sigaction previous_abort_action;

void WriteAll(const char* text, std::size_t size) {
  while (size > 0) {
    const ssize_t written = write(STDERR_FILENO, text, size);
    if (written <= 0) return;
    text += written;
    size -= static_cast<std::size_t>(written);
  }
}
void WriteText(const std::string& text) { WriteAll(text.data(), text.size()); }

// Reads only what the runner built before the abort; allocates nothing.
void OnAbort(int signal_number, siginfo_t* info, void* context) {
  if (running.log) {
    constexpr char kHeader[] = "\nmodel_check: aborted while running ";
    WriteAll(kHeader, sizeof(kHeader) - 1);
    WriteText(running.label && !running.label->empty() ? *running.label : "a sequence");
    constexpr char kOps[] =
        "; the operations so far (the abort came in the last one, or in the exits after it):\n";
    WriteAll(kOps, sizeof(kOps) - 1);
    for (const std::string& line : *running.log) {
      WriteAll("  ", 2);
      WriteText(line);
      WriteAll("\n", 1);
    }
    running = {};
  }
  // Pass it on: libFuzzer's handler saves the input; the default one ends the process.
  if (previous_abort_action.sa_flags & SA_SIGINFO) {
    previous_abort_action.sa_sigaction(signal_number, info, context);
  } else if (previous_abort_action.sa_handler != SIG_IGN &&
             previous_abort_action.sa_handler != SIG_DFL) {
    previous_abort_action.sa_handler(signal_number);
  } else {
    signal(SIGABRT, SIG_DFL);
    raise(SIGABRT);
  }
}

}  // namespace

void PrintLogOnAbort() {
  static const bool installed = [] {
    struct sigaction action = {};
    action.sa_sigaction = OnAbort;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGABRT, &action, &previous_abort_action) == 0;
  }();
  (void)installed;
}

RunResult RunFuzzInput(ModelWorld& world, std::span<const std::uint8_t> input) {
  ByteSource source(input);
  RunOptions options;
  options.classic_only = (source.Byte() & 1) != 0;
  options.max_ops = 200;
  return RunSequence(world, source, options);
}

}  // namespace faultlab::model_check
