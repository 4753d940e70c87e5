// The model's address space: the walk, the fault paths, fork three ways, uffd, markers, NUMA
// hinting and migration. The rules are in kernels/README.md; the concurrency design in
// address_space.h.
#include "kernels/address_space.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

namespace faultlab::model {

namespace {

constexpr Pte kPageBits = kPtePresent | kPteUser | kPteAccessed;

int Index(std::uint64_t address, int shift) { return static_cast<int>((address >> shift) & 511); }

std::atomic_ref<Pte> Ref(Pte* entry) { return std::atomic_ref<Pte>(*entry); }
// Entries are read with acquire: a frame's contents and metadata, written before the entry was
// published by a release CAS, are then visible.
Pte LoadEntry(const Pte* entry) {
  return std::atomic_ref<Pte>(*const_cast<Pte*>(entry)).load(std::memory_order_acquire);
}
// Sequentially consistent, not just acq_rel: a TLB flush after an entry change relies on the
// change preceding its look at the Cpus' access announcements (same instruction on x86).
bool Cas(Pte* entry, Pte expected, Pte desired) {
  return Ref(entry).compare_exchange_strong(expected, desired, std::memory_order_seq_cst,
                                            std::memory_order_acquire);
}

[[noreturn]] void ModelBug(const char* what) {
  std::fprintf(stderr, "faultlab model: %s\n", what);
  std::abort();
}

void CpuRelax() { __builtin_ia32_pause(); }

}  // namespace

const char* VmaKindName(VmaKind kind) {
  switch (kind) {
    case VmaKind::kAnon: return "anon";
    case VmaKind::kShmem: return "shmem";
    case VmaKind::kHugetlb: return "hugetlb";
  }
  return "?";
}

const char* FaultResultName(FaultResult result) {
  switch (result) {
    case FaultResult::kOk: return "ok";
    case FaultResult::kSegv: return "segv";
    case FaultResult::kSigbus: return "sigbus";
    case FaultResult::kOom: return "oom";
  }
  return "?";
}

const char* ForkModeName(ForkMode mode) {
  switch (mode) {
    case ForkMode::kClassic: return "classic";
    case ForkMode::kCowPteEager: return "cow_pte_eager";
    case ForkMode::kCowPteLazy: return "cow_pte_lazy";
  }
  return "?";
}

const char* ProtnoneEncodingName(ProtnoneEncoding encoding) {
  return encoding == ProtnoneEncoding::kProtnone ? "protnone" : "fault_on_access";
}

// The read side: the Cpu says which address space it is in (a seq_cst store on its own slot),
// then checks that no exclusive section is running; the exclusive side sets its flag, then waits
// for every slot that names this address space. Either the reader sees the flag and backs off,
// or the writer sees the reader and waits: the Dekker handshake, with no shared written line.
class AddressSpace::ReadSide {
 public:
  ReadSide(const AddressSpace& mm, Cpu& cpu) : slot_(cpu.slot()), cpu_(cpu) {
    if (cpu_.active_depth++ != 0) ModelBug("an operation nested inside another on the same Cpu");
    for (;;) {
      slot_.active_mm.store(&mm, std::memory_order_seq_cst);
      if (!mm.exclusive_.load(std::memory_order_seq_cst)) break;
      slot_.active_mm.store(nullptr, std::memory_order_release);
      while (mm.exclusive_.load(std::memory_order_acquire)) std::this_thread::yield();
    }
  }
  ~ReadSide() {
    slot_.active_mm.store(nullptr, std::memory_order_release);
    --cpu_.active_depth;
  }
  ReadSide(const ReadSide&) = delete;
  ReadSide& operator=(const ReadSide&) = delete;

 private:
  Machine::CpuSlot& slot_;
  Cpu& cpu_;
};

// A user access (Load, Store) in flight: from its walk to its last use of the word it found. A TLB
// flush waits for these, and only these: an access never waits for anything, so no flush can be
// part of a wait cycle. The Dekker pairing is the same as above: the access announces itself, then
// walks; the flusher changes the entry, then looks for announcements.
class UserAccess {
 public:
  UserAccess(const AddressSpace& mm, Cpu& cpu) : slot_(cpu.slot()) {
    slot_.generation.store(slot_.generation.load(std::memory_order_relaxed) + 1,
                           std::memory_order_relaxed);
    slot_.accessing.store(&mm, std::memory_order_seq_cst);
  }
  ~UserAccess() { slot_.accessing.store(nullptr, std::memory_order_release); }
  UserAccess(const UserAccess&) = delete;
  UserAccess& operator=(const UserAccess&) = delete;

 private:
  Machine::CpuSlot& slot_;
};

class AddressSpace::ExclusiveSection {
 public:
  ExclusiveSection(AddressSpace& mm, Cpu& cpu) : mm_(mm) {
    if (cpu.active_depth != 0) ModelBug("an exclusive section inside an operation");
    bool expected = false;
    while (!mm_.exclusive_.compare_exchange_weak(expected, true, std::memory_order_seq_cst)) {
      expected = false;
      std::this_thread::yield();
    }
    Machine& machine = mm_.machine_;
    for (int i = 0, n = machine.cpu_slots_used(); i < n; ++i) {
      const Machine::CpuSlot& slot = machine.cpu_slot(i);
      while (slot.active_mm.load(std::memory_order_seq_cst) == &mm_) std::this_thread::yield();
    }
  }
  ~ExclusiveSection() { mm_.exclusive_.store(false, std::memory_order_release); }
  ExclusiveSection(const ExclusiveSection&) = delete;
  ExclusiveSection& operator=(const ExclusiveSection&) = delete;

 private:
  AddressSpace& mm_;
};

// Frames unmapped by an operation are freed only after every other Cpu inside this address space
// has finished the operation it was in when they were unmapped: a concurrent Load or Store may
// still use a translation it made before (the kernel's TLB flush before tlb_finish_mmu frees).
class FrameGather {
 public:
  FrameGather(const AddressSpace& mm, Cpu& cpu) : mm_(mm), cpu_(cpu) {}
  ~FrameGather() { Finish(); }
  FrameGather(const FrameGather&) = delete;
  FrameGather& operator=(const FrameGather&) = delete;

  // Drops a mapping's reference; the frame is gathered if it was the last.
  void Put(Pfn pfn) {
    FrameMeta& meta = cpu_.machine().meta(pfn);
    const std::int32_t before = meta.refcount.fetch_sub(1, std::memory_order_acq_rel);
    if (before == 1) {
      frames_.push_back(pfn);
    } else if (before <= 0) {
      ModelBug("frame refcount underflow");
    }
  }
  void Unmap(Pfn pfn) {
    cpu_.machine().meta(pfn).mapcount.fetch_sub(1, std::memory_order_relaxed);
    Put(pfn);
  }
  // Waits until no other Cpu still uses a translation it made before the entries just changed.
  void FlushTlb() {
    Machine& machine = cpu_.machine();
    const Machine::CpuSlot* own = &cpu_.slot();
    for (int i = 0, n = machine.cpu_slots_used(); i < n; ++i) {
      const Machine::CpuSlot& slot = machine.cpu_slot(i);
      if (&slot == own || slot.accessing.load(std::memory_order_seq_cst) != &mm_) continue;
      const std::uint64_t generation = slot.generation.load(std::memory_order_acquire);
      while (slot.accessing.load(std::memory_order_acquire) == &mm_ &&
             slot.generation.load(std::memory_order_acquire) == generation) {
        CpuRelax();
      }
    }
  }
  void Finish() {
    if (frames_.empty()) return;
    FlushTlb();
    for (Pfn pfn : frames_) cpu_.machine().FreeFrame(cpu_, pfn);
    frames_.clear();
  }

 private:
  const AddressSpace& mm_;
  Cpu& cpu_;
  std::vector<Pfn> frames_;
};

// What one attempt at a fault came to.
enum class Attempt { kOk, kRetry, kEvent, kWaitMigration, kSegv, kSigbus, kOom };

struct AddressSpaceImpl {
  using Self = AddressSpace;

  static Pte* Table(const Self& mm, Pfn table) {
    return reinterpret_cast<Pte*>(mm.machine_.frame(table));
  }

  static Pfn AllocTable(Self& mm, Cpu& cpu) {
    const Pfn pfn = mm.machine_.AllocateFrame(cpu, cpu.node(), kFramePageTable);
    if (pfn == kNoPfn) return kNoPfn;
    std::memset(mm.machine_.frame(pfn), 0, kPageSize);
    ++cpu.stats().tables_allocated;
    return pfn;
  }
  // A table that was never visible to anyone else.
  static void FreeUnusedTable(Self& mm, Cpu& cpu, Pfn table) {
    mm.machine_.PutFrame(cpu, table);
    ++cpu.stats().tables_freed;
  }

  // The table one level down from `table` for `address`, allocated when a Cpu is given: kNoPfn
  // when absent, or when no frame was left (*oom set).
  static Pfn Descend(Self& mm, Cpu* cpu, Pfn table, std::uint64_t address, int shift, bool* oom) {
    Pte* entry = Table(mm, table) + Index(address, shift);
    Pte value = LoadEntry(entry);
    if (value == 0) {
      if (cpu == nullptr) return kNoPfn;
      const Pfn fresh = AllocTable(mm, *cpu);
      if (fresh == kNoPfn) {
        if (oom) *oom = true;
        return kNoPfn;
      }
      const Pte desired = PfnPte(fresh, kTableEntryBits);
      if (Cas(entry, 0, desired)) {
        value = desired;
      } else {
        FreeUnusedTable(mm, *cpu, fresh);   // lost the race: use the winner's table
        value = LoadEntry(entry);
      }
    }
    return PtePfn(value);
  }

  // The PMD entry of `address`; with a Cpu, the upper levels are allocated on the way.
  static Pte* PmdEntry(const Self& mm, Cpu* cpu, std::uint64_t address, bool* oom = nullptr) {
    Self& self = const_cast<Self&>(mm);
    const Pfn pud = Descend(self, cpu, mm.pgd_, address, kPgdShift, oom);
    if (pud == kNoPfn) return nullptr;
    const Pfn pmd = Descend(self, cpu, pud, address, kPudShift, oom);
    if (pmd == kNoPfn) return nullptr;
    return Table(mm, pmd) + Index(address, kPmdShift);
  }

  // The PTE of `address` under a PMD value that points to a table.
  static Pte* PteEntry(const Self& mm, Pte pmd, std::uint64_t address) {
    return Table(mm, PtePfn(pmd)) + Index(address, kPageShift);
  }

  static bool PmdIsTable(Pte pmd) { return (pmd & kPtePresent) && !PmdLeaf(pmd); }
  static bool PmdShared(Pte pmd) { return PmdIsTable(pmd) && !PteWrite(pmd); }

  static const Vma* FindVma(const Self& mm, std::uint64_t address) {
    auto it = std::upper_bound(mm.vmas_.begin(), mm.vmas_.end(), address,
                               [](std::uint64_t a, const Vma& v) { return a < v.start; });
    if (it == mm.vmas_.begin()) return nullptr;
    --it;
    return address < it->end ? &*it : nullptr;
  }

  static int TargetNode(const Vma& vma, const Cpu& cpu) {
    return vma.preferred_node >= 0 ? vma.preferred_node : cpu.node();
  }

  static std::uint64_t FileIndex(const Vma& vma, std::uint64_t address) {
    return (address - vma.start + vma.file_offset) / vma.file->page_size();
  }

  static bool KeepsUffdWpMarkers(const Vma& vma) {
    return vma.kind != VmaKind::kAnon && (vma.uffd_modes & kUffdWp);
  }

  // --- COW-PTE ---------------------------------------------------------------------------------

  // Drops the page references one owner holds through a table: every mapped frame but the zero one.
  static void DropTableReferences(Self& mm, FrameGather& gather, Pfn table) {
    Pte* entries = Table(mm, table);
    for (int i = 0; i < kEntriesPerTable; ++i) {
      const Pte pte = LoadEntry(entries + i);
      if (PtePresent(pte) && !PteSpecial(pte)) gather.Unmap(PtePfn(pte));
    }
  }

  // One owner lets go of a shared table. With eager accounting the owner drops its own set of page
  // references first; with lazy accounting the table's single set goes with the last owner.
  static void LeaveSharedTable(Self& mm, Cpu& cpu, FrameGather& gather, Pfn table,
                               bool drop_own_set) {
    FrameMeta& meta = mm.machine_.meta(table);
    const bool lazy = meta.flags.load(std::memory_order_acquire) & kFrameCowPteLazy;
    if (drop_own_set && !lazy) DropTableReferences(mm, gather, table);
    if (meta.refcount.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      if (lazy) DropTableReferences(mm, gather, table);
      meta.refcount.store(1, std::memory_order_relaxed);   // PutFrame's reference
      mm.machine_.PutFrame(cpu, table);
      ++cpu.stats().tables_freed;
    }
  }

  // A software bit of a PMD entry that points to a shared PTE table (the entry's soft-dirty bit,
  // which means nothing there): a thread of this address space is copying the table to break it.
  // The PMD keeps pointing to the table meanwhile, so this address space's reference -- all that
  // keeps the table alive for it -- is held until the copy is done; other threads of the address
  // space wait instead of copying it too.
  static constexpr Pte kPmdBreaking = kPteSoftDirty;

  // handle_cow_pte_fault(): makes the table under `pmd_entry` private to this address space.
  // Returns false when no frame was left for the copy; true when the caller should look at the
  // PMD again (broken, reused, or another thread is breaking it).
  static bool BreakCowPte(Self& mm, Cpu& cpu, Pte* pmd_entry, Pte pmd) {
    if (pmd & kPmdBreaking) {
      std::this_thread::yield();
      return true;
    }
    const Pfn shared = PtePfn(pmd);
    FrameMeta& meta = mm.machine_.meta(shared);
    if (meta.refcount.load(std::memory_order_acquire) == 1) {
      // The last owner: reuse the table. Its entries are write-protected already (eager, or a
      // lazy sharer's copy did it) or map only pages nobody else maps (lazy, nobody copied).
      if (Cas(pmd_entry, pmd, pmd | kPteWrite)) ++cpu.stats().cow_pte_reused;
      return true;
    }
    const Pfn fresh = AllocTable(mm, cpu);
    if (fresh == kNoPfn) return false;
    // Only the thread that marks the PMD copies: a second copier could otherwise still be reading
    // the table after the first had switched the PMD and let go of it, and the table been freed
    // (the other owners gone too) and reused under it.
    if (!Cas(pmd_entry, pmd, pmd | kPmdBreaking)) {
      FreeUnusedTable(mm, cpu, fresh);
      return true;
    }
    const bool lazy = meta.flags.load(std::memory_order_acquire) & kFrameCowPteLazy;
    Pte* from = Table(mm, shared);
    Pte* to = Table(mm, fresh);
    for (int i = 0; i < kEntriesPerTable; ++i) {
      Pte pte = LoadEntry(from + i);
      if (pte == 0) continue;
      if (lazy && PtePresent(pte) && !PteSpecial(pte)) {
        // The accounting the lazy fork deferred: write-protect in both, take this owner's set.
        if (PteWrite(pte)) pte = Ref(from + i).fetch_and(~kPteWrite) & ~kPteWrite;
        FrameMeta& page = mm.machine_.meta(PtePfn(pte));
        page.refcount.fetch_add(1, std::memory_order_relaxed);
        page.mapcount.fetch_add(1, std::memory_order_relaxed);
      }
      to[i] = pte;   // the new table is private until the PMD is switched below
    }
    // Nothing else changes a marked PMD (Zap leaves it alone, other breakers wait).
    Ref(pmd_entry).store(PfnPte(fresh, kTableEntryBits), std::memory_order_release);
    FrameGather gather(mm, cpu);
    LeaveSharedTable(mm, cpu, gather, shared, /*drop_own_set=*/false);
    ++cpu.stats().cow_pte_copied;
    return true;
  }

  // The PTE of `address` in a table this address space may modify: allocates missing levels and
  // breaks a shared table. nullptr when out of frames.
  static Pte* WritablePte(Self& mm, Cpu& cpu, std::uint64_t address) {
    Pte* pmd_entry = PmdEntry(mm, &cpu, address);
    return pmd_entry ? WritablePteUnder(mm, cpu, pmd_entry, address) : nullptr;
  }
  static Pte* WritablePteUnder(Self& mm, Cpu& cpu, Pte* pmd_entry, std::uint64_t address) {
    for (;;) {
      const Pte pmd = LoadEntry(pmd_entry);
      if (pmd == 0) {
        const Pfn fresh = AllocTable(mm, cpu);
        if (fresh == kNoPfn) return nullptr;
        if (!Cas(pmd_entry, 0, PfnPte(fresh, kTableEntryBits))) FreeUnusedTable(mm, cpu, fresh);
        continue;
      }
      if (PmdShared(pmd)) {
        if (!BreakCowPte(mm, cpu, pmd_entry, pmd)) return nullptr;
        continue;
      }
      return PteEntry(mm, pmd, address);
    }
  }

  // --- Faults ----------------------------------------------------------------------------------

  static Pte RestoreHint(const Self& mm, Pte pte) {
    return mm.options_.protnone == ProtnoneEncoding::kProtnone
               ? (pte & ~kPteProtnone) | kPtePresent
               : pte & ~kPteFaultOnAccess;
  }

  static void ZeroFrame(Self& mm, Cpu& cpu, Pfn pfn, std::uint64_t bytes) {
    std::memset(mm.machine_.frame(pfn), 0, bytes);
    cpu.stats().pages_zeroed += bytes / kPageSize;
  }

  // A new anonymous frame on the policy's node, zeroed, mapped once.
  static Pfn NewAnonFrame(Self& mm, Cpu& cpu, const Vma& vma) {
    const Pfn pfn = mm.machine_.AllocateFrame(cpu, TargetNode(vma, cpu), kFrameAnon);
    if (pfn == kNoPfn) return kNoPfn;
    ZeroFrame(mm, cpu, pfn, kPageSize);
    mm.machine_.meta(pfn).mapcount.store(1, std::memory_order_relaxed);
    return pfn;
  }
  // Frees a frame whose installation lost its race: nobody ever saw it.
  static void DiscardFrame(Self& mm, Cpu& cpu, Pfn pfn) {
    mm.machine_.meta(pfn).mapcount.store(0, std::memory_order_relaxed);
    mm.machine_.PutFrame(cpu, pfn);
  }

  // Migrates the frame of `orig` (mapped once, anonymous) to `node`, leaving `restored` with the
  // new frame in the entry. kRetry when the entry changed under us.
  static Attempt Migrate(Self& mm, Cpu& cpu, Pte* entry, Pte orig, Pte restored, int node,
                         int* error) {
    Machine& machine = mm.machine_;
    const Pfn old_pfn = PtePfn(orig);
    if (!machine.TryGetFrame(old_pfn)) return Attempt::kRetry;
    FrameGather gather(mm, cpu);
    if (LoadEntry(entry) != orig) {
      gather.Put(old_pfn);
      return Attempt::kRetry;
    }
    const Pfn new_pfn = machine.AllocateFrame(cpu, node, kFrameAnon);
    if (new_pfn == kNoPfn) {
      gather.Put(old_pfn);
      if (error) *error = -ENOMEM;
      return Cas(entry, orig, restored) ? Attempt::kOk : Attempt::kRetry;
    }
    // Concurrent faults on the migration entry wait (migration_entry_wait()) until it is gone.
    // The entry carries the uffd-wp bit (try_to_migrate_one()'s pte_swp_mkuffd_wp()): while the
    // page is being copied, UFFDIO_WRITEPROTECT changes that bit and nothing else, and the
    // installed entry takes its protection from it alone.
    Pte migration = MakeMigrationEntry(old_pfn, PteWrite(restored));
    if (PteUffdWp(restored)) migration |= kSwpUffdWp;
    if (!Cas(entry, orig, migration)) {
      machine.PutFrame(cpu, new_pfn);
      gather.Put(old_pfn);
      return Attempt::kRetry;
    }
    gather.FlushTlb();   // no Store through the old translation may land after the copy
    std::memcpy(machine.frame(new_pfn), machine.frame(old_pfn), kPageSize);
    machine.meta(new_pfn).mapcount.store(1, std::memory_order_relaxed);
    ++cpu.stats().pages_copied;
    // Nobody waits on a migration entry while holding anything: a zap may clear it (and drop the
    // mapping's reference itself), a write-protect may set or clear its uffd-wp bit; the install
    // carries the bit over as it is now (remove_migration_pte()), or gives up. Taking it from
    // `restored` instead would undo an un-protect that ran during the copy: the page would come
    // back write-protected after UFFDIO_WRITEPROTECT said it was not, and the next write would
    // raise a wp event nobody expects (or SIGBUS).
    for (Pte now = LoadEntry(entry);;) {
      if (!IsMigrationEntry(now)) {
        DiscardFrame(mm, cpu, new_pfn);
        gather.Put(old_pfn);
        return Attempt::kOk;
      }
      Pte installed = (restored & ~(kPtePfnMask | kPteUffdWp)) | PfnPte(new_pfn, 0);
      if (now & kSwpUffdWp) installed = (installed & ~kPteWrite) | kPteUffdWp;
      if (Cas(entry, now, installed)) break;
      now = LoadEntry(entry);
    }
    gather.Unmap(old_pfn);   // the mapping's reference
    gather.Put(old_pfn);     // ours
    ++cpu.stats().pages_migrated;
    return Attempt::kOk;
  }

  // do_numa_page(): restore the entry, or migrate its frame to where the policy wants it.
  // numa_hint_faults counts the faults that took the hinting entry (restored it, or replaced it
  // by a migration entry), as the kernel counts NUMA_HINT_FAULTS only after its pte_same() check:
  // a fault that lost the entry to another thread's fault on the same page retries and finds it
  // restored, and is not a hinting fault.
  static Attempt NumaHintFault(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig) {
    const Pte restored = RestoreHint(mm, orig);
    const FrameMeta& meta = mm.machine_.meta(PtePfn(orig));
    const int target = TargetNode(vma, cpu);
    // Shared pages (mapped more than once, or in a page cache) stay: the model keeps no rmap to
    // fix their other mappings.
    Attempt attempt;
    if (meta.node == target || vma.kind != VmaKind::kAnon ||
        meta.mapcount.load(std::memory_order_relaxed) != 1) {
      attempt = Cas(entry, orig, restored) ? Attempt::kOk : Attempt::kRetry;
    } else {
      attempt = Migrate(mm, cpu, entry, orig, restored, target, nullptr);
    }
    if (attempt == Attempt::kOk) ++cpu.stats().numa_hint_faults;
    return attempt;
  }

  // The arch hook for entries that carry the 'fault on access' software bit: on an architecture
  // that marks NUMA hinting entries this way (rather than with x86's PROTNONE), the access traps
  // although the entry is present, and the hook hands the fault to the generic hinting path, which
  // restores the entry by clearing the bit.
  static Attempt ArchFaultOnAccess(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig) {
    return NumaHintFault(mm, cpu, vma, entry, orig);
  }

  // Write to a read-only anonymous mapping: reuse an exclusive frame, else copy (do_wp_page()).
  static Attempt AnonWriteProtectFault(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig) {
    Machine& machine = mm.machine_;
    const Pfn old_pfn = PtePfn(orig);
    if (machine.is_zero_pfn(old_pfn)) {
      // A write after a zero-page read: a zeroed frame, nothing to copy.
      const Pfn pfn = NewAnonFrame(mm, cpu, vma);
      if (pfn == kNoPfn) return Attempt::kOom;
      if (!Cas(entry, orig, PfnPte(pfn, kPageBits | kPteWrite | kPteDirty))) {
        DiscardFrame(mm, cpu, pfn);
        return Attempt::kRetry;
      }
      return Attempt::kOk;
    }
    // Forks are exclusive sections, so nobody can raise this refcount while we look at it.
    if (machine.meta(old_pfn).refcount.load(std::memory_order_acquire) == 1) {
      if (!Cas(entry, orig, orig | kPteWrite | kPteDirty)) return Attempt::kRetry;
      ++cpu.stats().pages_reused;
      return Attempt::kOk;
    }
    if (!machine.TryGetFrame(old_pfn)) return Attempt::kRetry;
    FrameGather gather(mm, cpu);
    if (LoadEntry(entry) != orig) {
      gather.Put(old_pfn);
      return Attempt::kRetry;
    }
    const Pfn pfn = machine.AllocateFrame(cpu, TargetNode(vma, cpu), kFrameAnon);
    if (pfn == kNoPfn) {
      gather.Put(old_pfn);
      return Attempt::kOom;
    }
    std::memcpy(machine.frame(pfn), machine.frame(old_pfn), kPageSize);
    machine.meta(pfn).mapcount.store(1, std::memory_order_relaxed);
    if (!Cas(entry, orig, PfnPte(pfn, kPageBits | kPteWrite | kPteDirty))) {
      DiscardFrame(mm, cpu, pfn);
      gather.Put(old_pfn);
      return Attempt::kRetry;
    }
    ++cpu.stats().pages_copied;
    gather.Unmap(old_pfn);
    gather.Put(old_pfn);
    return Attempt::kOk;
  }

  // A fault on a none entry or a marker of an anonymous VMA.
  static Attempt AnonMissingFault(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig,
                                  Access access, UffdEvent* event) {
    if (vma.uffd_modes & kUffdMissing) {   // a uffd-wp marker is none to a missing fault
      event->kind = UffdEvent::Kind::kMissing;
      return Attempt::kEvent;
    }
    const Pte keep_wp = IsUffdWpMarker(orig) ? kPteUffdWp : 0;
    if (access == Access::kRead) {
      if (!Cas(entry, orig, PfnPte(mm.machine_.zero_pfn(), kPageBits | kPteSpecial | keep_wp))) {
        return Attempt::kRetry;
      }
      ++cpu.stats().zeropage_maps;
      return Attempt::kOk;
    }
    const Pfn pfn = NewAnonFrame(mm, cpu, vma);
    if (pfn == kNoPfn) return Attempt::kOom;
    if (!Cas(entry, orig, PfnPte(pfn, kPageBits | kPteWrite | kPteDirty))) {
      DiscardFrame(mm, cpu, pfn);
      return Attempt::kRetry;
    }
    return Attempt::kOk;
  }

  // A fault on a none entry or a marker of a shared VMA (shmem, or hugetlb at the PMD level).
  static Attempt SharedMissingFault(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig,
                                    std::uint64_t address, Access access, UffdEvent* event) {
    ShmemFile& file = *vma.file;
    const std::uint64_t index = FileIndex(vma, address);
    Pfn pfn = file.Lookup(index);
    if (pfn == kNoPfn) {
      if (vma.uffd_modes & kUffdMissing) {
        event->kind = UffdEvent::Kind::kMissing;
        return Attempt::kEvent;
      }
      pfn = file.GetOrCreate(cpu, index);
      if (pfn == kNoPfn) return Attempt::kOom;
    } else if (vma.uffd_modes & kUffdMinor) {
      event->kind = UffdEvent::Kind::kMinor;
      return Attempt::kEvent;
    }
    return InstallCached(mm, cpu, vma, entry, orig, pfn, access == Access::kWrite,
                         IsUffdWpMarker(orig))
               ? Attempt::kOk
               : Attempt::kRetry;
  }

  // Maps a page-cache frame at `entry` if it still holds `orig`.
  static bool InstallCached(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry, Pte orig, Pfn pfn, bool write,
                            bool wp) {
    Machine& machine = mm.machine_;
    if (!machine.TryGetFrame(pfn)) return false;   // removed from the cache meanwhile
    machine.meta(pfn).mapcount.fetch_add(1, std::memory_order_relaxed);
    Pte pte = PfnPte(pfn, kPageBits);
    if (vma.kind == VmaKind::kHugetlb) pte |= kPtePse;
    if (write && !wp) pte |= kPteWrite | kPteDirty;
    if (wp) pte |= kPteUffdWp;
    if (!Cas(entry, orig, pte)) {
      machine.meta(pfn).mapcount.fetch_sub(1, std::memory_order_relaxed);
      // Not a plain decrement: the page may have left the cache meanwhile, making ours the last.
      machine.PutFrame(cpu, pfn);
      return false;
    }
    return true;
  }

  // One attempt at a fault on the last-level entry (a PTE, or a hugetlb PMD).
  static Attempt FaultEntry(Self& mm, Cpu& cpu, const Vma& vma, Pte* entry,
                            std::uint64_t address, Access access, UffdEvent* event) {
    const Pte orig = LoadEntry(entry);
    if (PteNoneMostly(orig)) {
      const PteMarker marker = PteMarkerBits(orig);
      if (marker & kPteMarkerGuard) return Attempt::kSegv;
      if (marker & kPteMarkerPoisoned) return Attempt::kSigbus;
      if ((marker & kPteMarkerUffdWp) && access == Access::kWrite && (vma.uffd_modes & kUffdWp)) {
        event->kind = UffdEvent::Kind::kWp;
        return Attempt::kEvent;
      }
      return vma.kind == VmaKind::kAnon
                 ? AnonMissingFault(mm, cpu, vma, entry, orig, access, event)
                 : SharedMissingFault(mm, cpu, vma, entry, orig, address, access, event);
    }
    if (IsMigrationEntry(orig)) return Attempt::kWaitMigration;
    if (!PtePresent(orig)) return Attempt::kSigbus;   // the model has no swap
    if (PteFaultOnAccess(orig)) return ArchFaultOnAccess(mm, cpu, vma, entry, orig);
    if (PteProtnone(orig)) return NumaHintFault(mm, cpu, vma, entry, orig);
    if (access == Access::kRead || PteWrite(orig)) return Attempt::kOk;   // spurious
    if (PteUffdWp(orig) && (vma.uffd_modes & kUffdWp)) {
      event->kind = UffdEvent::Kind::kWp;
      return Attempt::kEvent;
    }
    const Pte orig_clean = orig & ~kPteUffdWp;   // a bit left without a registration is moot
    if (vma.kind != VmaKind::kAnon) {
      // A shared mapping becomes writable in place (wp_page_shared()).
      return Cas(entry, orig, orig_clean | kPteWrite | kPteDirty) ? Attempt::kOk
                                                                  : Attempt::kRetry;
    }
    if (orig_clean != orig && !Cas(entry, orig, orig_clean)) return Attempt::kRetry;
    return AnonWriteProtectFault(mm, cpu, vma, entry, orig_clean);
  }

  // One attempt: walk, break a shared table if the fault will change it, handle the entry.
  static Attempt FaultOnce(Self& mm, Cpu& cpu, const Vma& vma, std::uint64_t address,
                           Access access, UffdEvent* event) {
    Pte* entry = nullptr;
    if (vma.kind == VmaKind::kHugetlb) {
      entry = PmdEntry(mm, &cpu, address);
    } else {
      Pte* pmd_entry = PmdEntry(mm, &cpu, address);
      if (!pmd_entry) return Attempt::kOom;
      const Pte pmd = LoadEntry(pmd_entry);
      if (PmdShared(pmd)) {
        // A read of a present entry changes nothing in the table: no need to break it.
        const Pte pte = LoadEntry(PteEntry(mm, pmd, address));
        if (access == Access::kRead && PtePresent(pte) && !PteNumaHint(pte)) return Attempt::kOk;
      }
      entry = WritablePteUnder(mm, cpu, pmd_entry, address);
    }
    if (!entry) return Attempt::kOom;
    return FaultEntry(mm, cpu, vma, entry, address, access, event);
  }

  // The word at `address` if the walk permits the access, else nullptr.
  static std::uint64_t* Translate(const Self& mm, std::uint64_t address, Access access) {
    const Pte* pmd_entry = PmdEntry(mm, nullptr, address);
    if (!pmd_entry) return nullptr;
    const Pte pmd = LoadEntry(pmd_entry);
    Pte leaf = pmd;
    std::uint64_t offset = address & (kPmdSize - 1);
    if (PmdIsTable(pmd)) {
      leaf = LoadEntry(PteEntry(mm, pmd, address));
      offset = address & (kPageSize - 1);
      if (access == Access::kWrite && !PteWrite(pmd)) return nullptr;
    } else if (!PmdLeaf(pmd)) {
      return nullptr;
    }
    if (!(leaf & kPtePresent) || PteFaultOnAccess(leaf)) return nullptr;
    if (access == Access::kWrite && !PteWrite(leaf)) return nullptr;
    return reinterpret_cast<std::uint64_t*>(mm.machine_.frame(PtePfn(leaf)) + offset);
  }
};

using Impl = AddressSpaceImpl;

// --- Construction and teardown ----------------------------------------------------------------

AddressSpace::AddressSpace(Machine& machine, Cpu& cpu) : AddressSpace(machine, cpu, Options{}) {}

AddressSpace::AddressSpace(Machine& machine, Cpu& cpu, Options options)
    : machine_(machine), options_(options) {
  pgd_ = Impl::AllocTable(*this, cpu);
  if (pgd_ == kNoPfn) throw std::bad_alloc();
}

AddressSpace::~AddressSpace() {
  if (!exited_) {
    Cpu cpu(machine_, 0);
    Exit(cpu);
  }
}

void AddressSpace::Exit(Cpu& cpu) {
  if (exited_) return;
  exited_ = true;
  FrameGather gather(*this, cpu);
  Pte* pgd = Impl::Table(*this, pgd_);
  for (int g = 0; g < kEntriesPerTable; ++g) {
    if (pgd[g] == 0) continue;
    const Pfn pud_pfn = PtePfn(pgd[g]);
    Pte* pud = Impl::Table(*this, pud_pfn);
    for (int u = 0; u < kEntriesPerTable; ++u) {
      if (pud[u] == 0) continue;
      const Pfn pmd_pfn = PtePfn(pud[u]);
      Pte* pmd = Impl::Table(*this, pmd_pfn);
      for (int m = 0; m < kEntriesPerTable; ++m) {
        const Pte entry = LoadEntry(pmd + m);
        if (entry == 0) continue;
        if (Impl::PmdShared(entry)) {
          Impl::LeaveSharedTable(*this, cpu, gather, PtePfn(entry), /*drop_own_set=*/true);
        } else if (Impl::PmdIsTable(entry)) {
          Impl::DropTableReferences(*this, gather, PtePfn(entry));
          machine_.PutFrame(cpu, PtePfn(entry));
          ++cpu.stats().tables_freed;
        } else if (PtePresent(entry)) {
          gather.Unmap(PtePfn(entry));   // a hugetlb leaf
        }
      }
      machine_.PutFrame(cpu, pmd_pfn);
      ++cpu.stats().tables_freed;
    }
    machine_.PutFrame(cpu, pud_pfn);
    ++cpu.stats().tables_freed;
  }
  gather.Finish();
  machine_.PutFrame(cpu, pgd_);
  ++cpu.stats().tables_freed;
  vmas_.clear();
}

// --- VMAs -------------------------------------------------------------------------------------

void AddressSpace::Map(Cpu& cpu, const Vma& vma) {
  const std::uint64_t align = vma.kind == VmaKind::kHugetlb ? kPmdSize : kPageSize;
  if (vma.start % align || vma.end % align || vma.start >= vma.end || vma.end > kAddressLimit) {
    throw std::invalid_argument("Map: range must be page aligned, non-empty and below 2^48");
  }
  if (vma.kind != VmaKind::kAnon) {
    if (!vma.file || vma.file->huge() != (vma.kind == VmaKind::kHugetlb) ||
        vma.file_offset % align ||
        vma.file_offset + (vma.end - vma.start) > vma.file->pages() * vma.file->page_size()) {
      throw std::invalid_argument("Map: shared VMAs need a file of the right page size covering them");
    }
  }
  if ((vma.uffd_modes & kUffdMinor) && vma.kind == VmaKind::kAnon) {
    throw std::invalid_argument("Map: minor mode needs shmem or hugetlb");
  }
  ExclusiveSection exclusive(*this, cpu);
  auto at = std::lower_bound(vmas_.begin(), vmas_.end(), vma.start,
                             [](const Vma& v, std::uint64_t a) { return v.start < a; });
  if ((at != vmas_.end() && at->start < vma.end) || (at != vmas_.begin() && std::prev(at)->end > vma.start)) {
    throw std::invalid_argument("Map: overlaps an existing VMA");
  }
  vmas_.insert(at, vma);
}

std::vector<Vma> AddressSpace::vmas() const { return vmas_; }

void AddressSpace::RegisterUffd(Cpu& cpu, std::uint64_t start, std::uint32_t modes,
                                UffdHandler handler, bool wp_unpopulated) {
  ExclusiveSection exclusive(*this, cpu);
  auto it = std::find_if(vmas_.begin(), vmas_.end(), [&](const Vma& v) { return v.start == start; });
  if (it == vmas_.end()) throw std::invalid_argument("RegisterUffd: no VMA starts there");
  if ((modes & kUffdMinor) && it->kind == VmaKind::kAnon) {
    throw std::invalid_argument("RegisterUffd: minor mode needs shmem or hugetlb (EINVAL)");
  }
  it->uffd_modes = modes;
  it->uffd_handler = std::move(handler);
  it->uffd_wp_unpopulated = wp_unpopulated;
}

// --- Faults and accesses ----------------------------------------------------------------------

FaultResult AddressSpace::Fault(Cpu& cpu, std::uint64_t address, Access access) {
  ++cpu.stats().faults;
  // A handler that never resolves its event would leave the thread waiting forever, as the
  // kernel would; the model gives up after this many round trips so a test fails instead.
  constexpr int kMaxUnresolvedEvents = 1000;
  int events = 0;
  for (;;) {
    UffdEvent event;
    UffdHandler handler;
    Attempt attempt;
    {
      ReadSide read_side(*this, cpu);
      const Vma* vma = Impl::FindVma(*this, address);
      if (!vma || (access == Access::kWrite && !vma->writable)) return FaultResult::kSegv;
      const std::uint64_t page = address & ~((vma->kind == VmaKind::kHugetlb ? kPmdSize : kPageSize) - 1);
      attempt = Impl::FaultOnce(*this, cpu, *vma, page, access, &event);
      if (attempt == Attempt::kEvent) {
        event.address = page;
        event.access = access;
        handler = vma->uffd_handler;
      }
    }
    // Everything below runs outside the read side: a handler may take as long as it likes, and a
    // migration or TLB flush never waits for a thread that waits for it (handle_userfault() and
    // migration_entry_wait() drop the mmap lock too).
    switch (attempt) {
      case Attempt::kOk: return FaultResult::kOk;
      case Attempt::kSegv: return FaultResult::kSegv;
      case Attempt::kSigbus: return FaultResult::kSigbus;
      case Attempt::kOom: return FaultResult::kOom;
      case Attempt::kRetry:
        ++cpu.stats().fault_retries;
        break;
      case Attempt::kWaitMigration:
        ++cpu.stats().migration_waits;
        std::this_thread::yield();
        break;
      case Attempt::kEvent:
        if (!handler || ++events > kMaxUnresolvedEvents) return FaultResult::kSigbus;
        ++cpu.stats().uffd_events;
        handler(*this, cpu, event);
        break;
    }
  }
}

bool AddressSpace::Accessible(std::uint64_t address, Access access) const {
  return Impl::Translate(*this, address, access) != nullptr;
}

FaultResult AddressSpace::Load(Cpu& cpu, std::uint64_t address, std::uint64_t* value) {
  for (;;) {
    {
      ReadSide read_side(*this, cpu);
      UserAccess user_access(*this, cpu);
      if (std::uint64_t* word = Impl::Translate(*this, address & ~7ull, Access::kRead)) {
        *value = std::atomic_ref<std::uint64_t>(*word).load(std::memory_order_relaxed);
        return FaultResult::kOk;
      }
    }
    const FaultResult result = Fault(cpu, address, Access::kRead);
    if (result != FaultResult::kOk) return result;
  }
}

FaultResult AddressSpace::Store(Cpu& cpu, std::uint64_t address, std::uint64_t value) {
  for (;;) {
    {
      ReadSide read_side(*this, cpu);
      UserAccess user_access(*this, cpu);
      if (std::uint64_t* word = Impl::Translate(*this, address & ~7ull, Access::kWrite)) {
        std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_relaxed);
        return FaultResult::kOk;
      }
    }
    const FaultResult result = Fault(cpu, address, Access::kWrite);
    if (result != FaultResult::kOk) return result;
  }
}

// --- Range walks ------------------------------------------------------------------------------

namespace {

// Calls fn(vma, lo, hi) for each piece of [start, start + length) inside one VMA and one PMD range.
template <typename Fn>
void ForEachPmdPiece(const std::vector<Vma>& vmas, std::uint64_t start, std::uint64_t length,
                     Fn&& fn) {
  const std::uint64_t end = start + length;
  for (const Vma& vma : vmas) {
    const std::uint64_t lo = std::max(start, vma.start);
    const std::uint64_t hi = std::min(end, vma.end);
    for (std::uint64_t a = lo; a < hi;) {
      const std::uint64_t next = std::min(hi, (a & ~(kPmdSize - 1)) + kPmdSize);
      fn(vma, a, next);
      a = next;
    }
  }
}

// Replaces the entry by what `change` makes of it, retrying when it changed meanwhile; returns
// the value replaced (the new value is returned through *now). `change` returning the old value
// means no change.
template <typename Change>
Pte Update(Pte* entry, Change&& change, Pte* now = nullptr) {
  for (;;) {
    const Pte old = LoadEntry(entry);
    const Pte desired = change(old);
    if (desired == old || Cas(entry, old, desired)) {
      if (now) *now = desired;
      return old;
    }
  }
}

// The frame an entry holds a mapping reference on: present entries but the zero frame's, and
// migration entries (the reference of the mapping being migrated); else kNoPfn.
Pfn MappedPfn(Pte pte) {
  if (PtePresent(pte)) return PteSpecial(pte) ? kNoPfn : PtePfn(pte);
  if (IsMigrationEntry(pte)) return PteToSwapEntry(pte).offset;
  return kNoPfn;
}

}  // namespace

// Entries of one piece: the PTEs of a private table (broken first if shared), or the hugetlb PMD.
// `allocate` creates the table when absent (for operations that install markers on none).
struct PieceEntries {
  Pte* first = nullptr;
  std::uint64_t count = 0;
  std::uint64_t step = kPageSize;
  bool oom = false;
};

static PieceEntries EntriesOf(AddressSpace& mm, Cpu& cpu, const Vma& vma, std::uint64_t lo,
                              std::uint64_t hi, bool allocate) {
  PieceEntries piece;
  if (vma.kind == VmaKind::kHugetlb) {
    piece.first = Impl::PmdEntry(mm, allocate ? &cpu : nullptr, lo, &piece.oom);
    piece.count = piece.first ? (hi - lo) / kPmdSize : 0;
    piece.step = kPmdSize;
    return piece;
  }
  Pte* pmd_entry = Impl::PmdEntry(mm, allocate ? &cpu : nullptr, lo, &piece.oom);
  if (!pmd_entry) return piece;
  if (LoadEntry(pmd_entry) == 0 && !allocate) return piece;
  piece.first = Impl::WritablePte(mm, cpu, lo);
  piece.oom = piece.first == nullptr;
  piece.count = piece.first ? (hi - lo) / kPageSize : 0;
  return piece;
}

std::uint64_t AddressSpace::Zap(Cpu& cpu, std::uint64_t start, std::uint64_t length) {
  ReadSide read_side(*this, cpu);
  FrameGather gather(*this, cpu);
  std::uint64_t unmapped = 0;
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    if (vma.kind != VmaKind::kHugetlb && hi - lo == kPmdSize) {
      // A whole shared table without guard markers is let go of, not copied and then cleared.
      Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, lo);
      const Pte pmd = pmd_entry ? LoadEntry(pmd_entry) : 0;
      if (Impl::PmdShared(pmd) && !(pmd & Impl::kPmdBreaking) &&
          CountMarkers(lo, kPmdSize, kPteMarkerGuard) == 0 && Cas(pmd_entry, pmd, 0)) {
        Pte* entries = Impl::Table(*this, PtePfn(pmd));
        for (int i = 0; i < kEntriesPerTable; ++i) {
          const Pte pte = LoadEntry(entries + i);
          if (PtePresent(pte)) ++unmapped;   // zero-page mappings count, as below
        }
        Impl::LeaveSharedTable(*this, cpu, gather, PtePfn(pmd), /*drop_own_set=*/true);
        return;
      }
    }
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/false);
    const bool keep_wp = Impl::KeepsUffdWpMarkers(vma);
    for (std::uint64_t i = 0; i < piece.count; ++i) {
      Pte now = 0;
      const Pte old = Update(piece.first + i, [&](Pte pte) -> Pte {
        if (PteNone(pte)) return pte;
        if (IsPteMarker(pte)) {
          PteMarker keep = PteMarkerBits(pte) & (kPteMarkerGuard | (keep_wp ? kPteMarkerUffdWp : 0));
          return keep ? MakePteMarker(keep) : 0;
        }
        const bool wp = IsMigrationEntry(pte) ? (pte & kSwpUffdWp) != 0 : PteUffdWp(pte);
        return keep_wp && wp ? MakePteMarker(kPteMarkerUffdWp) : 0;
      }, &now);
      if (old == now) continue;
      if (MappedPfn(old) != kNoPfn) gather.Unmap(MappedPfn(old));
      if (PtePresent(old) || IsMigrationEntry(old)) {
        unmapped += vma.kind == VmaKind::kHugetlb ? kPagesPerPmd : 1;
      }
    }
  });
  return unmapped;
}

void AddressSpace::Unmap(Cpu& cpu, std::uint64_t start) {
  ExclusiveSection exclusive(*this, cpu);
  auto it = std::find_if(vmas_.begin(), vmas_.end(), [&](const Vma& v) { return v.start == start; });
  if (it == vmas_.end()) throw std::invalid_argument("Unmap: no VMA starts there");
  const Vma vma = *it;
  vmas_.erase(it);
  FrameGather gather(*this, cpu);
  // Everything goes, markers included; then the PTE tables no other VMA uses.
  for (std::uint64_t a = vma.start & ~(kPmdSize - 1); a < vma.end; a += kPmdSize) {
    Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, a);
    if (!pmd_entry) continue;
    const Pte pmd = LoadEntry(pmd_entry);
    if (pmd == 0) continue;
    const std::uint64_t lo = std::max(a, vma.start);
    const std::uint64_t hi = std::min(a + kPmdSize, vma.end);
    const bool table_alone = std::none_of(vmas_.begin(), vmas_.end(), [&](const Vma& v) {
      return v.start < a + kPmdSize && v.end > a;
    });
    if (!Impl::PmdIsTable(pmd)) {   // a hugetlb leaf or marker
      if (PtePresent(pmd)) gather.Unmap(PtePfn(pmd));
      Ref(pmd_entry).store(0, std::memory_order_release);
      continue;
    }
    if (Impl::PmdShared(pmd) && table_alone) {
      Ref(pmd_entry).store(0, std::memory_order_release);
      Impl::LeaveSharedTable(*this, cpu, gather, PtePfn(pmd), /*drop_own_set=*/true);
      continue;
    }
    Pte* entries = Impl::WritablePte(*this, cpu, lo) - Index(lo, kPageShift);
    for (std::uint64_t p = lo; p < hi; p += kPageSize) {
      const Pte old = Ref(entries + Index(p, kPageShift)).exchange(0, std::memory_order_acq_rel);
      if (PtePresent(old) && !PteSpecial(old)) gather.Unmap(PtePfn(old));
    }
    if (table_alone) {
      const Pfn table = PtePfn(LoadEntry(pmd_entry));
      Ref(pmd_entry).store(0, std::memory_order_release);
      gather.FlushTlb();
      machine_.PutFrame(cpu, table);
      ++cpu.stats().tables_freed;
    }
  }
}

// --- Guard regions and poison -----------------------------------------------------------------

std::uint64_t AddressSpace::InstallGuard(Cpu& cpu, std::uint64_t start, std::uint64_t length) {
  ReadSide read_side(*this, cpu);
  FrameGather gather(*this, cpu);
  std::uint64_t changed = 0;
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    if (vma.kind == VmaKind::kHugetlb) return;   // MADV_GUARD_INSTALL refuses hugetlb
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/true);
    for (std::uint64_t i = 0; i < piece.count; ++i) {
      // MADV_GUARD_INSTALL zaps first (which clears poison and uffd-wp markers too), then
      // installs the marker: a guard marker replaces whatever was there.
      const Pte old = Update(piece.first + i, [](Pte) -> Pte { return MakePteMarker(kPteMarkerGuard); });
      if (MappedPfn(old) != kNoPfn) gather.Unmap(MappedPfn(old));
      if (!(PteMarkerBits(old) & kPteMarkerGuard)) ++changed;
    }
  });
  return changed;
}

std::uint64_t AddressSpace::RemoveGuard(Cpu& cpu, std::uint64_t start, std::uint64_t length) {
  ReadSide read_side(*this, cpu);
  std::uint64_t changed = 0;
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/false);
    for (std::uint64_t i = 0; i < piece.count; ++i) {
      const Pte old = Update(piece.first + i, [](Pte pte) -> Pte {
        if (!(PteMarkerBits(pte) & kPteMarkerGuard)) return pte;
        const PteMarker rest = PteMarkerBits(pte) & ~kPteMarkerGuard;
        return rest ? MakePteMarker(rest) : 0;
      });
      if (PteMarkerBits(old) & kPteMarkerGuard) ++changed;
    }
  });
  return changed;
}

int AddressSpace::UffdPoison(Cpu& cpu, std::uint64_t start, std::uint64_t length) {
  ReadSide read_side(*this, cpu);
  int error = 0;
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    if (error) return;
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/true);
    if (piece.oom) error = -ENOMEM;
    for (std::uint64_t i = 0; i < piece.count && !error; ++i) {
      Update(piece.first + i, [&](Pte pte) -> Pte {
        if (!PteNone(pte)) {   // any entry, even a marker (mfill_atomic_pte_poison())
          error = -EEXIST;
          return pte;
        }
        return MakePteMarker(kPteMarkerPoisoned);
      });
    }
  });
  return error;
}

// --- userfaultfd resolution -------------------------------------------------------------------

namespace {
// The entry a uffd ioctl fills: only none entries and uffd-wp markers may be filled.
bool Fillable(Pte pte) { return PteNone(pte) || (IsPteMarker(pte) && PteMarkerBits(pte) == kPteMarkerUffdWp); }
}  // namespace

static Pte* UffdEntry(AddressSpace& mm, Cpu& cpu, const Vma& vma, std::uint64_t page) {
  return vma.kind == VmaKind::kHugetlb ? Impl::PmdEntry(mm, &cpu, page)
                                       : Impl::WritablePte(mm, cpu, page);
}

// shmem_mfill_atomic_pte(), UFFDIO_COPY (`src`) and UFFDIO_ZEROPAGE (`src` null) into a shared
// VMA: a new page, filled from `src` or zeroed, enters the file's cache (-EEXIST if the cache has
// a page there) and is mapped as mfill_atomic_install_pte() maps it: dirty, writable as the VMA
// is, over none or a uffd-wp marker. The file counts the copy or the zeroing.
static int UffdFillShared(AddressSpace& mm, Cpu& cpu, const Vma& vma, Pte* entry,
                          std::uint64_t page, const void* src, bool wp) {
  const Pte orig = LoadEntry(entry);
  if (!Fillable(orig)) return -EEXIST;
  const std::uint64_t index = Impl::FileIndex(vma, page);
  bool inserted = false;
  const Pfn pfn = src ? vma.file->Insert(cpu, index, src, &inserted)
                      : vma.file->GetOrCreate(cpu, index, &inserted);
  if (pfn == kNoPfn) return -ENOMEM;
  if (!inserted) return -EEXIST;
  if (Impl::InstallCached(mm, cpu, vma, entry, orig, pfn, vma.writable, wp)) return 0;
  // A fault that found our page in the cache may have mapped it first. The kernel's filler keeps
  // the new folio locked until its PTE is in, so that fault would have waited and found it
  // mapped: the answer is 0 all the same. Anything else changed the entry: -EAGAIN.
  const Pte now = LoadEntry(entry);
  return PtePresent(now) && PtePfn(now) == pfn ? 0 : -EAGAIN;
}

int AddressSpace::UffdCopy(Cpu& cpu, std::uint64_t address, const void* src, bool wp) {
  ReadSide read_side(*this, cpu);
  const Vma* vma = Impl::FindVma(*this, address);
  if (!vma) return -ENOENT;
  const std::uint64_t size = vma->kind == VmaKind::kHugetlb ? kPmdSize : kPageSize;
  const std::uint64_t page = address & ~(size - 1);
  Pte* entry = UffdEntry(*this, cpu, *vma, page);
  if (!entry) return -ENOMEM;
  if (vma->kind != VmaKind::kAnon) return UffdFillShared(*this, cpu, *vma, entry, page, src, wp);
  for (;;) {
    const Pte orig = LoadEntry(entry);
    if (!Fillable(orig)) return -EEXIST;
    const Pfn pfn = machine_.AllocateFrame(cpu, Impl::TargetNode(*vma, cpu), kFrameAnon);
    if (pfn == kNoPfn) return -ENOMEM;
    std::memcpy(machine_.frame(pfn), src, kPageSize);
    machine_.meta(pfn).mapcount.store(1, std::memory_order_relaxed);
    Pte pte = PfnPte(pfn, kPageBits | kPteDirty);
    if (wp) pte |= kPteUffdWp;
    else if (vma->writable) pte |= kPteWrite;
    if (Cas(entry, orig, pte)) {
      ++cpu.stats().pages_copied;
      return 0;
    }
    Impl::DiscardFrame(*this, cpu, pfn);
  }
}

int AddressSpace::UffdZeropage(Cpu& cpu, std::uint64_t address) {
  ReadSide read_side(*this, cpu);
  const Vma* vma = Impl::FindVma(*this, address);
  if (!vma) return -ENOENT;
  // hugetlb: UFFDIO_REGISTER does not offer UFFDIO_ZEROPAGE there, and mfill_atomic_hugetlb()
  // refuses it.
  if (vma->kind == VmaKind::kHugetlb) return -EINVAL;
  const std::uint64_t page = address & ~(kPageSize - 1);
  Pte* entry = Impl::WritablePte(*this, cpu, page);
  if (!entry) return -ENOMEM;
  // shmem: a zeroed page in the file, mapped (not the zero frame), as UFFDIO_COPY of zeros.
  if (vma->kind == VmaKind::kShmem) {
    return UffdFillShared(*this, cpu, *vma, entry, page, nullptr, false);
  }
  for (;;) {
    // Unlike UFFDIO_COPY, UFFDIO_ZEROPAGE on anonymous memory does not overwrite a uffd-wp marker:
    // it would lose the protection (mfill_atomic_pte_zeropage() checks pte_none()).
    const Pte orig = LoadEntry(entry);
    if (!PteNone(orig)) return -EEXIST;
    if (Cas(entry, orig, PfnPte(machine_.zero_pfn(), kPageBits | kPteSpecial))) {
      ++cpu.stats().zeropage_maps;
      return 0;
    }
  }
}

int AddressSpace::UffdContinue(Cpu& cpu, std::uint64_t address, bool wp) {
  ReadSide read_side(*this, cpu);
  const Vma* vma = Impl::FindVma(*this, address);
  if (!vma) return -ENOENT;
  if (vma->kind == VmaKind::kAnon) return -EINVAL;
  const std::uint64_t size = vma->file->page_size();
  const std::uint64_t page = address & ~(size - 1);
  const Pfn pfn = vma->file->Lookup(Impl::FileIndex(*vma, page));
  if (pfn == kNoPfn) return -EFAULT;
  Pte* entry = UffdEntry(*this, cpu, *vma, page);
  if (!entry) return -ENOMEM;
  for (;;) {
    const Pte orig = LoadEntry(entry);
    if (!Fillable(orig)) return -EEXIST;
    if (Impl::InstallCached(*this, cpu, *vma, entry, orig, pfn, vma->writable, wp)) return 0;
    if (vma->file->Lookup(Impl::FileIndex(*vma, page)) != pfn) return -EFAULT;
  }
}

int AddressSpace::UffdWriteProtect(Cpu& cpu, std::uint64_t start, std::uint64_t length,
                                   bool protect) {
  ReadSide read_side(*this, cpu);
  int error = 0;
  for (std::uint64_t a = start; a < start + length;) {
    const Vma* vma = Impl::FindVma(*this, a);
    if (!vma || !(vma->uffd_modes & kUffdWp)) return -ENOENT;
    a = vma->end;
  }
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    const bool markers = vma.kind != VmaKind::kAnon || vma.uffd_wp_unpopulated;
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/protect && markers);
    if (piece.oom) error = -ENOMEM;
    for (std::uint64_t i = 0; i < piece.count; ++i) {
      Update(piece.first + i, [&](Pte pte) -> Pte {
        // A migration entry keeps the bit for the entry it becomes (the swap-pte uffd-wp bit).
        if (IsMigrationEntry(pte)) return protect ? pte | kSwpUffdWp : pte & ~kSwpUffdWp;
        if (protect) {
          if (PtePresent(pte)) return (pte & ~kPteWrite) | kPteUffdWp;
          if (PteNone(pte)) return markers ? MakePteMarker(kPteMarkerUffdWp) : pte;
          return pte;
        }
        if (IsUffdWpMarker(pte)) {
          const PteMarker rest = PteMarkerBits(pte) & ~kPteMarkerUffdWp;
          return rest ? MakePteMarker(rest) : 0;
        }
        if (!PtePresent(pte) || !PteUffdWp(pte)) return pte;
        Pte cleared = pte & ~kPteUffdWp;
        // Write permission comes back only where a write fault would not have to copy.
        const bool exclusive_anon = vma.kind == VmaKind::kAnon && !PteSpecial(pte) &&
                                    machine_.meta(PtePfn(pte)).refcount.load() == 1;
        const bool dirty_shared = vma.kind != VmaKind::kAnon && PteDirty(pte);
        if (vma.writable && (exclusive_anon || dirty_shared)) cleared |= kPteWrite;
        return cleared;
      });
    }
  });
  return error;
}

// --- NUMA -------------------------------------------------------------------------------------

std::uint64_t AddressSpace::ChangeProtNuma(Cpu& cpu, std::uint64_t start, std::uint64_t length) {
  ReadSide read_side(*this, cpu);
  std::uint64_t marked = 0;
  ForEachPmdPiece(vmas_, start, length, [&](const Vma& vma, std::uint64_t lo, std::uint64_t hi) {
    if (vma.kind == VmaKind::kHugetlb) return;
    const PieceEntries piece = EntriesOf(*this, cpu, vma, lo, hi, /*allocate=*/false);
    for (std::uint64_t i = 0; i < piece.count; ++i) {
      Pte now = 0;
      const Pte old = Update(piece.first + i, [&](Pte pte) -> Pte {
        if (!(pte & kPtePresent) || PteSpecial(pte) || PteNumaHint(pte)) return pte;
        return options_.protnone == ProtnoneEncoding::kProtnone
                   ? (pte & ~kPtePresent) | kPteProtnone
                   : pte | kPteFaultOnAccess;
      }, &now);
      if (old != now) ++marked;
    }
  });
  return marked;
}

int AddressSpace::MigratePage(Cpu& cpu, std::uint64_t address, int node) {
  if (node < 0 || node >= machine_.node_count()) return -ENODEV;
  ReadSide read_side(*this, cpu);
  const Vma* vma = Impl::FindVma(*this, address);
  if (!vma) return -ENOENT;
  if (vma->kind != VmaKind::kAnon) return -EINVAL;
  Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, address);
  if (!pmd_entry || LoadEntry(pmd_entry) == 0) return -ENOENT;
  Pte* entry = Impl::WritablePte(*this, cpu, address);
  if (!entry) return -ENOMEM;
  for (;;) {
    const Pte orig = LoadEntry(entry);
    if (IsMigrationEntry(orig)) return -EBUSY;   // being migrated by someone else
    if (!PtePresent(orig) || PteSpecial(orig)) return -ENOENT;
    const FrameMeta& meta = machine_.meta(PtePfn(orig));
    const bool elsewhere = meta.node != node;
    const bool shared = meta.mapcount.load(std::memory_order_relaxed) != 1;
    // The frame's metadata counts only while the entry still maps it (a hinting fault may have
    // just migrated it).
    if (LoadEntry(entry) != orig) continue;
    if (!elsewhere) return 0;
    if (shared) return -EBUSY;
    int error = 0;
    if (Impl::Migrate(*this, cpu, entry, orig, orig, node, &error) == Attempt::kOk) return error;
  }
}

// --- Fork -------------------------------------------------------------------------------------

namespace {

// What the child's copy of a parent entry is (copy_present_pte() / copy_nonpresent_pte()), the
// parent's entry write-protected first when the mapping is private.
Pte ChildEntry(Pte pte) {
  if (IsPteMarker(pte)) {
    const PteMarker rest = PteMarkerBits(pte) & ~kPteMarkerUffdWp;   // the child has no uffd
    return rest ? MakePteMarker(rest) : 0;
  }
  return pte & ~kPteUffdWp;
}

// Write-protects a parent's entry at fork. A plain store, not a locked RMW: inside the exclusive
// section nothing else changes this address space's entries, and in a table shared with other
// address spaces the only concurrent change is another owner's break clearing this same bit. (x86
// needs an atomic clear because the MMU may set the dirty bit meanwhile; the model's MMU sets none.)
Pte WriteProtectForFork(Pte* entry, Pte pte) {
  if (!PteWrite(pte)) return pte;
  pte &= ~kPteWrite;
  Ref(entry).store(pte, std::memory_order_relaxed);
  return pte;
}

}  // namespace

std::unique_ptr<AddressSpace> AddressSpace::Fork(Cpu& cpu, ForkMode mode) {

  ExclusiveSection exclusive(*this, cpu);
  auto child = std::make_unique<AddressSpace>(machine_, cpu, options_);
  child->vmas_ = vmas_;
  for (Vma& vma : child->vmas_) {
    vma.uffd_modes = kUffdNone;
    vma.uffd_handler = nullptr;
    vma.uffd_wp_unpopulated = false;
  }
  const std::uint32_t share_flag = mode == ForkMode::kCowPteLazy ? kFrameCowPteLazy : kFrameCowPteEager;
  const std::uint32_t other_flag = share_flag ^ (kFrameCowPteLazy | kFrameCowPteEager);
  for (const Vma& vma : vmas_) {
    // Shared mappings fault in again in the child, unless markers must be kept (vma_needs_copy()).
    if (vma.kind != VmaKind::kAnon && !(vma.uffd_modes & kUffdWp)) continue;
    const bool private_anon = vma.kind == VmaKind::kAnon;
    for (std::uint64_t a = vma.start; a < vma.end;) {
      const std::uint64_t base = a & ~(kPmdSize - 1);
      const std::uint64_t hi = std::min(vma.end, base + kPmdSize);
      const std::uint64_t lo = a;
      a = hi;
      Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, lo);
      if (!pmd_entry) continue;
      const Pte pmd = LoadEntry(pmd_entry);
      if (pmd == 0) continue;
      Pte* child_pmd = Impl::PmdEntry(*child, &cpu, lo);
      if (!child_pmd) throw std::bad_alloc();
      if (!Impl::PmdIsTable(pmd)) {   // hugetlb: a leaf or a marker at the PMD level
        if (PtePresent(pmd)) {
          FrameMeta& page = machine_.meta(PtePfn(pmd));
          page.refcount.fetch_add(1, std::memory_order_relaxed);
          page.mapcount.fetch_add(1, std::memory_order_relaxed);
        }
        Ref(child_pmd).store(ChildEntry(pmd), std::memory_order_release);
        continue;
      }
      const Pfn table = PtePfn(pmd);
      FrameMeta& table_meta = machine_.meta(table);
      bool share = mode != ForkMode::kClassic && private_anon && !(vma.uffd_modes & kUffdWp) &&
                   lo == base && hi == base + kPmdSize;
      if (share) {
        // A table shared with the other accounting stays unshared: its references are counted
        // one way only. A table with one owner takes this fork's way.
        if (table_meta.refcount.load(std::memory_order_acquire) == 1) {
          table_meta.flags.fetch_and(~other_flag, std::memory_order_relaxed);
          table_meta.flags.fetch_or(share_flag, std::memory_order_release);
        } else if (table_meta.flags.load(std::memory_order_acquire) & other_flag) {
          share = false;
        }
      }
      Pte* entries = Impl::Table(*this, table);
      if (share) {
        table_meta.refcount.fetch_add(1, std::memory_order_acq_rel);
        if (mode == ForkMode::kCowPteEager) {
          for (int i = 0; i < kEntriesPerTable; ++i) {
                const Pte pte = LoadEntry(entries + i);
            if (!PtePresent(pte) || PteSpecial(pte)) continue;
            WriteProtectForFork(entries + i, pte);
            FrameMeta& page = machine_.meta(PtePfn(pte));
            page.refcount.fetch_add(1, std::memory_order_relaxed);
            page.mapcount.fetch_add(1, std::memory_order_relaxed);
          }
        }
        const Pte shared_pmd = pmd & ~kPteWrite;
        Ref(pmd_entry).fetch_and(~kPteWrite, std::memory_order_acq_rel);
        Ref(child_pmd).store(shared_pmd, std::memory_order_release);
        continue;
      }
      // Classic: copy the entries of [lo, hi) into a table of the child's own.
      Pte* child_entries = Impl::WritablePte(*child, cpu, lo);
      if (!child_entries) throw std::bad_alloc();
      child_entries -= Index(lo, kPageShift);
      for (std::uint64_t p = lo; p < hi; p += kPageSize) {
        const int i = Index(p, kPageShift);
        Pte pte = LoadEntry(entries + i);
        if (pte == 0) continue;
        if (PtePresent(pte) && !PteSpecial(pte)) {
          if (private_anon) pte = WriteProtectForFork(entries + i, pte);
          FrameMeta& page = machine_.meta(PtePfn(pte));
          page.refcount.fetch_add(1, std::memory_order_relaxed);
          page.mapcount.fetch_add(1, std::memory_order_relaxed);
        }
        Ref(child_entries + i).store(ChildEntry(pte), std::memory_order_relaxed);
      }
    }
  }
  return child;
}

// --- Observation ------------------------------------------------------------------------------

std::vector<PagemapEntry> AddressSpace::Pagemap(std::uint64_t start, std::uint64_t length) const {
  std::vector<PagemapEntry> result;
  result.reserve(length / kPageSize);
  for (std::uint64_t a = start & ~(kPageSize - 1); a < start + length; a += kPageSize) {
    PagemapEntry out;
    const Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, a);
    const Pte pmd = pmd_entry ? LoadEntry(pmd_entry) : 0;
    Pte pte = pmd;
    bool pmd_writable = true;
    if (Impl::PmdIsTable(pmd)) {
      pte = LoadEntry(Impl::PteEntry(*this, pmd, a));
      out.table_shared = !PteWrite(pmd);
      pmd_writable = PteWrite(pmd);
    } else {
      out.huge = pmd != 0;
    }
    out.marker = PteMarkerBits(pte);
    out.migration = IsMigrationEntry(pte);
    if (PtePresent(pte)) {
      out.present = true;
      out.numa_hint = PteNumaHint(pte);
      out.pfn = PtePfn(pte) + (out.huge ? (a & (kPmdSize - 1)) / kPageSize : 0);
      out.zero_page = machine_.is_zero_pfn(PtePfn(pte));
      out.node = machine_.meta(PtePfn(pte)).node;
      out.writable = PteWrite(pte) && pmd_writable && !out.numa_hint;
      out.uffd_wp = PteUffdWp(pte);
    } else {
      // A marker's uffd-wp bit, or a migration entry's (the swap-pte bit, as pagemap reads it).
      out.uffd_wp = (out.marker & kPteMarkerUffdWp) != 0 || (out.migration && (pte & kSwpUffdWp));
    }
    result.push_back(out);
  }
  return result;
}

Pte AddressSpace::EntryOf(std::uint64_t address) const {
  const Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, address);
  if (!pmd_entry) return 0;
  const Pte pmd = LoadEntry(pmd_entry);
  return Impl::PmdIsTable(pmd) ? LoadEntry(Impl::PteEntry(*this, pmd, address)) : pmd;
}

std::uint64_t AddressSpace::CountMarkers(std::uint64_t start, std::uint64_t length,
                                         PteMarker bits) const {
  std::uint64_t count = 0;
  const std::uint64_t end = start + length;
  for (std::uint64_t a = start & ~(kPageSize - 1); a < end;) {
    const std::uint64_t next = std::min(end, (a & ~(kPmdSize - 1)) + kPmdSize);
    const Pte* pmd_entry = Impl::PmdEntry(*this, nullptr, a);
    const Pte pmd = pmd_entry ? LoadEntry(pmd_entry) : 0;
    if (Impl::PmdIsTable(pmd)) {
      Pte* entries = Impl::PteEntry(*this, pmd, a);
      const std::uint64_t n = (next - a + kPageSize - 1) / kPageSize;
      // Branch-free, in four independent sums: markers are rare and scattered, so a branch per
      // entry would mispredict on each one, and one sum would chain every add. A marker with any
      // of `bits` is a swap entry of type PTE_MARKER (top five bits set, present and PROTNONE
      // clear) whose inverted offset has one of the bits clear.
      constexpr Pte kMatchMask = (0x1full << kSwapTypeShift) | kPtePresent | kPteProtnone;
      constexpr Pte kMatchValue = static_cast<Pte>(kSwpPteMarker) << kSwapTypeShift;
      const Pte wanted = (bits & kPteMarkerMask) << kSwapOffsetShift;
      const auto hit = [&](std::uint64_t i) -> std::uint64_t {
        const Pte pte = Ref(entries + i).load(std::memory_order_relaxed);
        return static_cast<std::uint64_t>(((pte & kMatchMask) == kMatchValue) & ((~pte & wanted) != 0));
      };
      std::uint64_t sums[4] = {0, 0, 0, 0};
      std::uint64_t i = 0;
      for (; i + 4 <= n; i += 4) {
        sums[0] += hit(i);
        sums[1] += hit(i + 1);
        sums[2] += hit(i + 2);
        sums[3] += hit(i + 3);
      }
      for (; i < n; ++i) sums[0] += hit(i);
      count += sums[0] + sums[1] + sums[2] + sums[3];
    } else if (PteMarkerBits(pmd) & bits) {
      ++count;
    }
    a = next;
  }
  return count;
}

PageTableUsage AddressSpace::PageTables() const {
  PageTableUsage usage;
  usage.tables = 1;
  const Pte* pgd = Impl::Table(*this, pgd_);
  for (int g = 0; g < kEntriesPerTable; ++g) {
    if (pgd[g] == 0) continue;
    const Pte* pud = Impl::Table(*this, PtePfn(pgd[g]));
    ++usage.tables;
    for (int u = 0; u < kEntriesPerTable; ++u) {
      if (pud[u] == 0) continue;
      const Pte* pmd = Impl::Table(*this, PtePfn(pud[u]));
      ++usage.tables;
      for (int m = 0; m < kEntriesPerTable; ++m) {
        const Pte entry = LoadEntry(pmd + m);
        if (!Impl::PmdIsTable(entry)) continue;
        ++usage.tables;
        ++usage.pte_tables;
        if (Impl::PmdShared(entry)) {
          ++usage.shared_pte_tables;
          const int owners = std::max(1, machine_.meta(PtePfn(entry)).refcount.load());
          usage.owned_bytes += static_cast<double>(kPageSize) / owners;
        } else {
          usage.owned_bytes += kPageSize;
        }
      }
    }
  }
  usage.owned_bytes += static_cast<double>(usage.tables - usage.pte_tables) * kPageSize;
  return usage;
}

std::uint64_t AddressSpace::ResidentPages() const {
  std::uint64_t pages = 0;
  for (const Vma& vma : vmas_) {
    for (const PagemapEntry& entry : Pagemap(vma.start, vma.end - vma.start)) {
      pages += entry.present && !entry.zero_page;
    }
  }
  return pages;
}

}  // namespace faultlab::model
