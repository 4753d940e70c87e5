// A reference implementation of what the model (kernels/) lets a user observe, for the
// differential test and the fuzzer: the rules of kernels/README.md and nothing else.
//
// Each address space is a map from page address to what the page shows (none, marker bits, or a
// mapping of a frame with its permission and uffd-wp bit); frames are shared objects holding the
// few 64-bit words the tests write, a node and a mapping count. There are no page tables, no
// concurrency, no deferred accounting and no COW-PTE: every rule is one plain branch here, so when
// the model and this disagree, the disagreement names the rule. It is meant to be obviously right,
// not fast.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kernels/address_space.h"
#include "kernels/pte.h"

namespace faultlab::model_check {

using model::Access;
using model::FaultResult;
using model::PteMarker;
using model::UffdEvent;
using model::VmaKind;

// The byte offsets, inside every 4 KiB page, of the words the tests write and compare: the first
// and last words catch a copy or a translation that is off by a page, the others its middle.
inline constexpr std::uint64_t kWordOffsets[] = {0, 8, 2048, 4088};
inline constexpr int kWordsPerPage = 4;

// What a UFFDIO_COPY made by the tests' handlers puts at byte `offset` of the page at `address`:
// distinct per page and per word, never zero.
std::uint64_t UffdCopyPattern(std::uint64_t address, std::uint64_t offset);

// Whether the tests' handlers answer a missing fault at `page` with UFFDIO_ZEROPAGE rather than
// UFFDIO_COPY of UffdCopyPattern: reads of anonymous memory (the zero frame), and reads of shmem
// at even 4 KiB page numbers (a zeroed page in the cache), so that both of shmem's fills come up.
// hugetlb refuses UFFDIO_ZEROPAGE: always a copy there, as for every write.
inline bool HandlerZeroFills(VmaKind kind, std::uint64_t page, bool write) {
  if (write) return false;
  return kind == VmaKind::kAnon || (kind == VmaKind::kShmem && (page / model::kPageSize) % 2 == 0);
}

struct RefFrame {
  std::uint64_t id = 0;          // names the frame in reports; a copy or a migration is a new id
  int node = 0;
  bool zero = false;             // the zero frame
  bool huge = false;             // 2 MiB (hugetlb)
  bool cached = false;           // held by a file's page cache
  int mappings = 0;              // entries mapping it, over every address space (its mapcount)
  std::map<std::uint64_t, std::uint64_t> words;   // byte offset -> value; absent words are 0

  std::uint64_t Word(std::uint64_t offset) const;
  // What the kernel's refcount would be without COW-PTE's deferred accounting.
  int refcount() const { return mappings + (cached ? 1 : 0); }
};
using FrameRef = std::shared_ptr<RefFrame>;

// A shmem or hugetlbfs file: its page cache.
struct RefFile {
  std::uint64_t size = 0;
  bool huge = false;
  int node = 0;
  std::map<std::uint64_t, FrameRef> cache;   // page index -> frame

  std::uint64_t page_size() const { return huge ? model::kPmdSize : model::kPageSize; }
};

struct RefVma {
  std::uint64_t start = 0;
  std::uint64_t end = 0;
  VmaKind kind = VmaKind::kAnon;
  bool writable = true;
  std::shared_ptr<RefFile> file;
  std::uint64_t file_offset = 0;
  std::uint32_t uffd_modes = model::kUffdNone;
  bool uffd_wp_unpopulated = false;
  int preferred_node = -1;
  // Registered VMAs have the tests' handler: missing faults are resolved with UFFDIO_ZEROPAGE
  // (where HandlerZeroFills says) or UFFDIO_COPY of UffdCopyPattern, minor faults with
  // UFFDIO_CONTINUE, wp faults by un-protecting the page. A forked child's VMAs have no
  // registration.
  std::uint64_t page_size() const {
    return kind == VmaKind::kHugetlb ? model::kPmdSize : model::kPageSize;
  }
  bool shared() const { return kind != VmaKind::kAnon; }
  bool registered_wp() const { return (uffd_modes & model::kUffdWp) != 0; }
};

// What one page shows.
struct RefEntry {
  FrameRef frame;                // a mapping when set (the zero frame included)
  PteMarker marker = 0;          // marker bits when frame is null; none when 0 too
  bool writable = false;         // effective write permission
  bool uffd_wp = false;          // the mapping's uffd-wp bit (a marker's is in `marker`)
  bool dirty = false;            // shared mappings: written through this entry since mapped
  bool numa_hint = false;        // ChangeProtNuma marked it: the next access faults

  bool none() const { return !frame && marker == 0; }
};

struct RefAddressSpace {
  std::vector<RefVma> vmas;                  // sorted by start
  std::map<std::uint64_t, RefEntry> entries; // page address -> entry; absent pages are none

  const RefVma* FindVma(std::uint64_t address) const;
  // The entry of the page holding `address` in `vma`, or nullptr for none.
  const RefEntry* EntryOf(const RefVma& vma, std::uint64_t address) const;
};

struct RefUffdEvent {
  UffdEvent::Kind kind = UffdEvent::Kind::kMissing;
  std::uint64_t address = 0;
  Access access = Access::kRead;
  bool operator==(const RefUffdEvent&) const = default;
};

// The reference machine: address spaces by the caller's ids, the zero frame, frame ids.
class ModelReference {
 public:
  ModelReference();

  std::shared_ptr<RefFile> NewFile(std::uint64_t size, bool huge, int node);

  void NewSpace(int id);
  bool Live(int id) const { return spaces_.count(id) != 0; }
  const RefAddressSpace& Space(int id) const { return spaces_.at(id); }

  // The caller checks what the model checks (alignment, overlap, file range): these assume it.
  void Map(int id, const RefVma& vma);
  void Unmap(int id, std::uint64_t start);
  // Same contract as AddressSpace::Fork: the child is `child_id`; every ForkMode looks the same.
  void Fork(int parent_id, int child_id);
  void Exit(int id);

  // `cpu_node` is the faulting Cpu's node: where new anonymous frames go without a VMA policy.
  FaultResult Load(int id, int cpu_node, std::uint64_t address, std::uint64_t* value);
  FaultResult Store(int id, int cpu_node, std::uint64_t address, std::uint64_t value);

  std::uint64_t Zap(int id, std::uint64_t start, std::uint64_t length);
  std::uint64_t InstallGuard(int id, std::uint64_t start, std::uint64_t length);
  std::uint64_t RemoveGuard(int id, std::uint64_t start, std::uint64_t length);
  int UffdWriteProtect(int id, std::uint64_t start, std::uint64_t length, bool protect);
  int UffdPoison(int id, std::uint64_t start, std::uint64_t length);
  int MigratePage(int id, std::uint64_t address, int node);
  std::uint64_t ChangeProtNuma(int id, std::uint64_t start, std::uint64_t length);
  // Registers the VMA that starts at `start` (UFFDIO_REGISTER on a VMA that has none).
  void RegisterUffd(int id, std::uint64_t start, std::uint32_t modes, bool wp_unpopulated);

  const FrameRef& zero_frame() const { return zero_; }
  // The uffd events delivered since the last call, in order.
  std::vector<RefUffdEvent> TakeEvents();

 private:
  // One access as the MMU and the fault handler see it: faults until it may proceed, then
  // returns the frame and the byte offset of `address` in it.
  FaultResult Access(RefAddressSpace& space, int cpu_node, std::uint64_t address, bool write,
                     RefFrame** frame, std::uint64_t* offset);
  // Delivers a uffd event to the tests' handler, which resolves it. False if the VMA has no
  // handler for it (the model then returns kSigbus).
  bool DeliverUffd(RefAddressSpace& space, const RefVma& vma, UffdEvent::Kind kind,
                   std::uint64_t page, bool write, int cpu_node);
  int WriteProtect(RefAddressSpace& space, std::uint64_t start, std::uint64_t length,
                   bool protect);
  int UffdCopy(RefAddressSpace& space, const RefVma& vma, std::uint64_t page, int cpu_node);
  int UffdZeropage(RefAddressSpace& space, const RefVma& vma, std::uint64_t page);
  // shmem_mfill_atomic_pte(): UFFDIO_COPY (of UffdCopyPattern) or UFFDIO_ZEROPAGE (`zero`) into a
  // shared VMA.
  int FillShared(RefAddressSpace& space, const RefVma& vma, std::uint64_t page, bool zero);
  int UffdContinue(RefAddressSpace& space, const RefVma& vma, std::uint64_t page);

  FrameRef NewFrame(int node, bool huge);
  FrameRef CachedFrame(const RefVma& vma, std::uint64_t page, bool create);
  static int AllocNode(const RefVma& vma, int cpu_node);
  void MapFrame(RefEntry& entry, FrameRef frame);
  void Unmap(RefEntry& entry);
  static void Prune(RefAddressSpace& space);
  RefAddressSpace& Mutable(int id) { return spaces_.at(id); }

  std::map<int, RefAddressSpace> spaces_;
  FrameRef zero_;
  std::uint64_t next_frame_id_ = 1;
  std::vector<RefUffdEvent> events_;
};

}  // namespace faultlab::model_check
