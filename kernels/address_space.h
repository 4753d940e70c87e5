// An address space of the model (the kernel's mm_struct): VMAs, four levels of page tables, and
// the fault paths that fill them.
//
// The fast paths are lock-free, as the kernel's are under the PTE lock but without it:
// - A fault reads the entry, decides, and installs its new entry by compare-and-swap against the
//   value it read (the kernel's pte_same() check under the PTE lock); a lost race retries the
//   fault. Page-table pages are populated by CAS on the upper entry; the loser frees its table.
// - A frame found through an entry is pinned with TryGetFrame and the entry re-checked before the
//   frame is used (folio_try_get() and the re-check after it), so a concurrent zap never frees a
//   frame from under a copy.
// - Operations that change VMAs or copy a whole address space (Map, Unmap, RegisterUffd, Fork)
//   run as exclusive sections, the kernel's mmap_lock held for write: they wait until no Cpu is
//   inside an operation on this address space. Every other operation is on the read side, which
//   costs a store to the Cpu's own cache line and a load of this address space's flag (a Dekker
//   handshake with the exclusive side), not a shared counter: faults on disjoint ranges share no
//   written cache line.
// - Frames an operation unmaps are freed only once every other Cpu's user access (Load, Store) in
//   flight at the time has finished: the model's TLB flush (see kernels/README.md).
//
// Fork comes three ways (ForkMode):
// - kClassic, as copy_pte_range(): every entry copied, anonymous pages write-protected in parent
//   and child, their refcount and mapcount raised. Shared (shmem, hugetlbfs) VMAs are not copied
//   and fault in again in the child (vma_needs_copy()), unless uffd-wp markers must survive.
// - kCowPteEager, the COW-PTE series v3-v5: each PTE table wholly inside one private anonymous VMA
//   is shared between parent and child, read-only at the PMD (the PMD's write bit cleared; the
//   effective permission is the AND of the levels, as on x86), with a table refcount (the table
//   frame's refcount). Its entries are write-protected and each page's refcount and mapcount are
//   still raised at fork: every sharer owns one set of page references.
// - kCowPteLazy, the series' RFC v2: the table is shared and nothing else is done at fork; the
//   table owns one set of page references, and accounting happens when the table is broken.
// A fault that would change a shared table breaks it first (handle_cow_pte_fault()): when its
// refcount is 1 the table is reused (the PMD made writable again); otherwise a new table is
// allocated, the PMD marked by CAS as being broken (other threads of the address space wait: the
// mark keeps the address space's reference, so the table cannot be freed under the copy), the 512
// entries copied (lazy: write-protecting anonymous entries in both and taking the page references
// the fork deferred), the PMD switched to the copy, and the shared table put. Zap,
// write-protect, the protnone scan and migration break shared tables first too; a zap of a whole
// shared table only puts it. The last put of a shared table frees it (lazy: and drops its set).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/machine.h"
#include "kernels/pte.h"
#include "kernels/shmem_file.h"

namespace faultlab::model {

enum class VmaKind : std::uint8_t {
  kAnon,      // MAP_PRIVATE | MAP_ANONYMOUS, 4 KiB pages
  kShmem,     // MAP_SHARED of a ShmemFile (4 KiB pages)
  kHugetlb,   // MAP_SHARED of a huge ShmemFile (hugetlbfs): 2 MiB PMD leaves
};
const char* VmaKindName(VmaKind kind);   // "anon", "shmem", "hugetlb"

// userfaultfd registration modes, combinable.
enum UffdMode : std::uint32_t {
  kUffdNone = 0,
  kUffdMissing = 1u << 0,
  kUffdMinor = 1u << 1,     // shmem and hugetlb only
  kUffdWp = 1u << 2,
};

enum class Access : std::uint8_t { kRead, kWrite };

struct UffdEvent {
  enum class Kind : std::uint8_t { kMissing, kMinor, kWp };
  Kind kind = Kind::kMissing;
  std::uint64_t address = 0;     // page-aligned (2 MiB-aligned on hugetlb)
  Access access = Access::kRead;
};

class AddressSpace;
// The in-process userfaultfd handler. It runs in the faulting thread (the model has no trap to
// sleep in) and resolves the event through the address space's Uffd* calls; the fault is then
// retried. It must not call Map, Unmap, RegisterUffd or Fork on the same address space.
using UffdHandler = std::function<void(AddressSpace&, Cpu&, const UffdEvent&)>;

struct Vma {
  std::uint64_t start = 0;
  std::uint64_t end = 0;                 // exclusive
  VmaKind kind = VmaKind::kAnon;
  bool writable = true;                  // PROT_READ|PROT_WRITE, else PROT_READ
  std::shared_ptr<ShmemFile> file;       // kShmem, kHugetlb
  std::uint64_t file_offset = 0;         // bytes, page aligned
  std::uint32_t uffd_modes = kUffdNone;
  bool uffd_wp_unpopulated = false;      // UFFD_FEATURE_WP_UNPOPULATED: anon none entries get markers
  UffdHandler uffd_handler;              // empty: a uffd fault returns kSigbus (UFFD_FEATURE_SIGBUS)
  int preferred_node = -1;               // NUMA policy: -1 is MPOL_LOCAL (the faulting Cpu's node)
};

enum class FaultResult : std::uint8_t {
  kOk,          // the access can now proceed
  kSegv,        // no VMA, an access the VMA forbids, or a guard marker
  kSigbus,      // a poisoned marker, or a uffd fault with no handler
  kOom,         // no frame left on the node
};
const char* FaultResultName(FaultResult result);

enum class ForkMode : std::uint8_t { kClassic, kCowPteEager, kCowPteLazy };
const char* ForkModeName(ForkMode mode);   // "classic", "cow_pte_eager", "cow_pte_lazy"

// How this address space marks NUMA hinting entries.
enum class ProtnoneEncoding : std::uint8_t {
  kProtnone,        // x86: present cleared, PROTNONE (the global bit) set
  kFaultOnAccess,   // present kept, the 'fault on access' software bit set; an arch hook routes it
};
const char* ProtnoneEncodingName(ProtnoneEncoding encoding);   // "protnone", "fault_on_access"

// One entry of a pagemap-style read.
struct PagemapEntry {
  bool present = false;      // maps a frame (protnone entries too)
  bool writable = false;     // effective write permission: entry, and PMD for shared tables
  bool uffd_wp = false;      // the entry's uffd-wp bit, a uffd-wp marker, or a migration entry's bit
  PteMarker marker = 0;      // marker bits, 0 if not a marker
  bool migration = false;    // a migration entry
  bool numa_hint = false;    // protnone or fault-on-access
  bool zero_page = false;
  bool huge = false;         // a PMD leaf
  bool table_shared = false; // in a COW-PTE shared table
  int node = -1;             // node of the frame, -1 if none
  Pfn pfn = kNoPfn;
};

// Page-table memory, as /proc/PID/status's VmPTE counts it, plus what is shared.
struct PageTableUsage {
  std::uint64_t tables = 0;          // table pages reachable from this address space (all levels)
  std::uint64_t pte_tables = 0;      // of which last-level
  std::uint64_t shared_pte_tables = 0;   // of which shared with another address space
  std::uint64_t bytes() const { return tables * kPageSize; }
  // What this address space owns alone: shared tables counted as 1/refcount each.
  double owned_bytes = 0;
};

class AddressSpace {
 public:
  struct Options {
    ProtnoneEncoding protnone = ProtnoneEncoding::kProtnone;
  };
  // Allocates the PGD on `cpu`'s node. Throws std::bad_alloc when no frame is left.
  AddressSpace(Machine& machine, Cpu& cpu);
  AddressSpace(Machine& machine, Cpu& cpu, Options options);
  // Exit: zaps every VMA, puts shared tables, frees every table. No operation may be running on
  // it; `cpu` gives back the frames.
  void Exit(Cpu& cpu);
  ~AddressSpace();   // Exit() with a private Cpu if the owner did not call it
  AddressSpace(const AddressSpace&) = delete;
  AddressSpace& operator=(const AddressSpace&) = delete;

  Machine& machine() const { return machine_; }

  // --- VMAs (exclusive sections) ---
  // Adds a VMA. start and length must be page aligned (2 MiB for hugetlb), inside 48 bits, not
  // overlap another VMA, and name a file range inside the file for shmem and hugetlb. Throws
  // std::invalid_argument otherwise.
  void Map(Cpu& cpu, const Vma& vma);
  // Removes the VMA that starts at `start` exactly (no splitting): zaps it (markers too) and frees
  // the PTE tables only it used. Throws std::invalid_argument if there is none.
  void Unmap(Cpu& cpu, std::uint64_t start);
  // Registers the whole VMA that starts at `start` for the modes (replacing an earlier
  // registration), with the handler. No such VMA, or minor mode on anonymous memory, throws
  // std::invalid_argument (UFFDIO_REGISTER's EINVAL).
  void RegisterUffd(Cpu& cpu, std::uint64_t start, std::uint32_t modes, UffdHandler handler,
                    bool wp_unpopulated = false);
  // A copy of the VMA list, for tests and reports.
  std::vector<Vma> vmas() const;

  // --- Faults (read side) ---
  // Handles one fault at `address` for `access`, as handle_mm_fault() would, retrying lost races
  // and uffd round trips until the access may proceed or fails.
  FaultResult Fault(Cpu& cpu, std::uint64_t address, Access access);
  // What the model's MMU does for a user access: walk, and fault when the walk does not permit
  // it. Reads or writes the aligned 64-bit word at `address` (relaxed atomic accesses: a racing
  // writer of the same word is the application's race, not a data race of the model).
  FaultResult Load(Cpu& cpu, std::uint64_t address, std::uint64_t* value);
  FaultResult Store(Cpu& cpu, std::uint64_t address, std::uint64_t value);
  // Whether an access would proceed without a fault (the TLB-miss walk only).
  bool Accessible(std::uint64_t address, Access access) const;

  // --- madvise-like range operations (read side) ---
  // MADV_DONTNEED: clears entries and drops references; on a VMA registered for uffd-wp of shmem
  // or hugetlb, a uffd-wp entry (or marker) is replaced by a uffd-wp marker instead of none. Guard
  // markers stay (MADV_DONTNEED keeps guard regions); poison markers are cleared. Returns the
  // number of pages unmapped.
  std::uint64_t Zap(Cpu& cpu, std::uint64_t start, std::uint64_t length);
  // MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (anonymous VMAs): installs guard markers over the range,
  // zapping what was mapped; removes guard markers. Return the number of entries changed.
  std::uint64_t InstallGuard(Cpu& cpu, std::uint64_t start, std::uint64_t length);
  std::uint64_t RemoveGuard(Cpu& cpu, std::uint64_t start, std::uint64_t length);

  // --- userfaultfd resolution (read side; return 0 or a negative errno like the ioctls) ---
  // UFFDIO_COPY: installs a new frame filled from `src` (a page: 4 KiB, 2 MiB on hugetlb) at
  // the page of `address` if its entry is none or a uffd-wp marker; -EEXIST if mapped. On shmem
  // and hugetlb the page also enters the page cache (-EEXIST if it is there already). `wp` maps
  // it write-protected (UFFDIO_COPY_MODE_WP).
  int UffdCopy(Cpu& cpu, std::uint64_t address, const void* src, bool wp = false);
  // UFFDIO_ZEROPAGE at the page of `address`. Anonymous: maps the zero frame if the entry is none
  // (not over a uffd-wp marker); -EEXIST otherwise. shmem (shmem_mfill_atomic_pte(), as Linux
  // 6.18 does): UffdCopy's shmem path with a zero source: a new zeroed page enters the page cache
  // (-EEXIST if it is there already, or if the entry is mapped) and is mapped dirty, writable as
  // the VMA is, over none or a uffd-wp marker; not the zero frame. hugetlb: -EINVAL
  // (UFFDIO_REGISTER does not offer the ioctl on hugetlb ranges).
  int UffdZeropage(Cpu& cpu, std::uint64_t address);
  // UFFDIO_CONTINUE (shmem and hugetlb): maps the page already in the page cache, no copy;
  // -EFAULT if the cache has no page there, -EEXIST if mapped.
  int UffdContinue(Cpu& cpu, std::uint64_t address, bool wp = false);
  // UFFDIO_WRITEPROTECT over [start, start + length): protect sets the uffd-wp bit on present
  // entries and clears their write bit; on shmem and hugetlb (and anon with wp_unpopulated) none
  // entries get uffd-wp markers. Un-protect clears the bit (making exclusive anonymous and dirty
  // shared entries writable again) and removes uffd-wp markers. Returns 0, or -ENOENT outside a
  // VMA registered for wp.
  int UffdWriteProtect(Cpu& cpu, std::uint64_t start, std::uint64_t length, bool protect);
  // UFFDIO_POISON: installs poisoned markers on none entries; -EEXIST if one is mapped.
  int UffdPoison(Cpu& cpu, std::uint64_t start, std::uint64_t length);

  // --- NUMA ---
  // change_prot_numa(): marks present entries of anonymous and shmem VMAs as hinting entries
  // (skipping the zero page, entries already marked, and hugetlb, which task_numa_work skips).
  // Returns the number of entries marked.
  std::uint64_t ChangeProtNuma(Cpu& cpu, std::uint64_t start, std::uint64_t length);
  // move_pages() for one page: migrates the 4 KiB page mapped at `address` to `node` through a
  // migration entry. 0 (also when it is there already), -ENOENT (not mapped, or the zero page),
  // -EBUSY (mapped more than once: the model has no rmap to fix the other mappings; or being
  // migrated by another Cpu), -ENOMEM (target node empty), -ENODEV (no such node), -EINVAL (not
  // an anonymous VMA).
  int MigratePage(Cpu& cpu, std::uint64_t address, int node);

  // --- Fork (exclusive section) ---
  // The child address space; `cpu` allocates its tables. Throws std::bad_alloc when tables
  // cannot be had (the child is torn down first).
  std::unique_ptr<AddressSpace> Fork(Cpu& cpu, ForkMode mode);

  // --- Observation (read side) ---
  std::vector<PagemapEntry> Pagemap(std::uint64_t start, std::uint64_t length) const;
  PageTableUsage PageTables() const;
  // Pages mapped by present entries, the zero page excluded (as Rss counts).
  std::uint64_t ResidentPages() const;

  // The raw entry that maps `address` at the last level (PTE, or the PMD leaf), 0 if none.
  Pte EntryOf(std::uint64_t address) const;
  // Entries in [start, start + length) that are markers with any of `bits`: a scan of the raw PTE
  // tables, the per-entry work of a walker such as pagemap's.
  std::uint64_t CountMarkers(std::uint64_t start, std::uint64_t length, PteMarker bits) const;

 private:
  class ReadSide;
  class ExclusiveSection;
  struct Walk;
  // The implementation's helpers are declared in address_space.cc.
  friend struct AddressSpaceImpl;

  Machine& machine_;
  Options options_;
  Pfn pgd_ = kNoPfn;
  std::vector<Vma> vmas_;                 // sorted by start; changed only in exclusive sections
  std::atomic<bool> exclusive_{false};    // an exclusive section is running or waiting
  bool exited_ = false;
};

}  // namespace faultlab::model
