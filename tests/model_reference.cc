// The reference implementation of the model's observable rules (see model_reference.h). Each
// function follows one paragraph of kernels/README.md; where the README leaves a case open, the
// comment says which kernel behaviour was taken.
#include "tests/model_reference.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iterator>

namespace faultlab::model_check {

namespace {

using model::kPageSize;
using model::kPteMarkerGuard;
using model::kPteMarkerPoisoned;
using model::kPteMarkerUffdWp;

std::uint64_t AlignDown(std::uint64_t value, std::uint64_t alignment) {
  return value & ~(alignment - 1);
}

[[noreturn]] void ReferenceBug(const char* what) {
  std::fprintf(stderr, "model reference: %s\n", what);
  std::abort();
}

}  // namespace

std::uint64_t UffdCopyPattern(std::uint64_t address, std::uint64_t offset) {
  return 0x5546464443505900ull ^ (address + offset) ^ ((address + offset) << 40) ^ 1;
}

std::uint64_t RefFrame::Word(std::uint64_t offset) const {
  auto it = words.find(offset);
  return it == words.end() ? 0 : it->second;
}

const RefVma* RefAddressSpace::FindVma(std::uint64_t address) const {
  for (const RefVma& vma : vmas) {
    if (address >= vma.start && address < vma.end) return &vma;
  }
  return nullptr;
}

const RefEntry* RefAddressSpace::EntryOf(const RefVma& vma, std::uint64_t address) const {
  auto it = entries.find(AlignDown(address, vma.page_size()));
  return it == entries.end() ? nullptr : &it->second;
}

ModelReference::ModelReference() : zero_(std::make_shared<RefFrame>()) {
  zero_->zero = true;
  zero_->id = 0;
}

std::shared_ptr<RefFile> ModelReference::NewFile(std::uint64_t size, bool huge, int node) {
  auto file = std::make_shared<RefFile>();
  file->size = size;
  file->huge = huge;
  file->node = node;
  return file;
}

void ModelReference::NewSpace(int id) { spaces_[id] = RefAddressSpace{}; }

std::vector<RefUffdEvent> ModelReference::TakeEvents() {
  std::vector<RefUffdEvent> events;
  events.swap(events_);
  return events;
}

FrameRef ModelReference::NewFrame(int node, bool huge) {
  auto frame = std::make_shared<RefFrame>();
  frame->id = next_frame_id_++;
  frame->node = node;
  frame->huge = huge;
  return frame;
}

int ModelReference::AllocNode(const RefVma& vma, int cpu_node) {
  return vma.preferred_node >= 0 ? vma.preferred_node : cpu_node;
}

// The file's page for `page` of a shared VMA; a new zeroed page enters the cache when `create`.
FrameRef ModelReference::CachedFrame(const RefVma& vma, std::uint64_t page, bool create) {
  RefFile& file = *vma.file;
  const std::uint64_t index = (page - vma.start + vma.file_offset) / file.page_size();
  auto it = file.cache.find(index);
  if (it != file.cache.end()) return it->second;
  if (!create) return nullptr;
  FrameRef frame = NewFrame(file.node, file.huge);
  frame->cached = true;
  file.cache[index] = frame;
  return frame;
}

void ModelReference::MapFrame(RefEntry& entry, FrameRef frame) {
  if (!frame->zero) ++frame->mappings;
  entry = RefEntry{};
  entry.frame = std::move(frame);
}

// Access() may leave none entries behind (a failed fault, a marker a handler removed): the entry
// map holds only what a page shows.
void ModelReference::Prune(RefAddressSpace& space) {
  for (auto it = space.entries.begin(); it != space.entries.end();) {
    it = it->second.none() ? space.entries.erase(it) : std::next(it);
  }
}

void ModelReference::Unmap(RefEntry& entry) {
  if (entry.frame && !entry.frame->zero) {
    if (--entry.frame->mappings < 0) ReferenceBug("mapping count underflow");
  }
  entry.frame.reset();
}

// --- VMAs and address spaces --------------------------------------------------------------------

void ModelReference::Map(int id, const RefVma& vma) {
  RefAddressSpace& space = Mutable(id);
  auto at = std::upper_bound(space.vmas.begin(), space.vmas.end(), vma.start,
                             [](std::uint64_t start, const RefVma& v) { return start < v.start; });
  space.vmas.insert(at, vma);
}

void ModelReference::Unmap(int id, std::uint64_t start) {
  RefAddressSpace& space = Mutable(id);
  auto vma = std::find_if(space.vmas.begin(), space.vmas.end(),
                          [start](const RefVma& v) { return v.start == start; });
  if (vma == space.vmas.end()) ReferenceBug("Unmap of no VMA");
  // Markers go too: the range has no VMA left to give them meaning.
  auto first = space.entries.lower_bound(vma->start);
  auto last = space.entries.lower_bound(vma->end);
  for (auto it = first; it != last; ++it) Unmap(it->second);
  space.entries.erase(first, last);
  space.vmas.erase(vma);
}

void ModelReference::Fork(int parent_id, int child_id) {
  RefAddressSpace& parent = Mutable(parent_id);
  RefAddressSpace child;
  for (const RefVma& vma : parent.vmas) {
    RefVma copy = vma;
    copy.uffd_modes = model::kUffdNone;   // the child has no uffd registration
    copy.uffd_wp_unpopulated = false;
    child.vmas.push_back(copy);
    // Shared VMAs fault in again in the child, unless uffd-wp markers must be kept.
    if (vma.shared() && !vma.registered_wp()) continue;
    auto first = parent.entries.lower_bound(vma.start);
    auto last = parent.entries.lower_bound(vma.end);
    for (auto it = first; it != last; ++it) {
      RefEntry& from = it->second;
      RefEntry to;
      if (from.frame) {
        MapFrame(to, from.frame);
        to.numa_hint = from.numa_hint;   // copied as it is, hinting bits included
        if (vma.shared()) {
          to.writable = from.writable;
          // copy_present_pte() cleans a shared entry in the child (pte_mkclean).
          to.dirty = false;
        } else {
          from.writable = false;   // both sides lose write permission
        }
      } else {
        // Guard and poison markers survive; uffd-wp needs a registration the child lacks.
        to.marker = from.marker & ~kPteMarkerUffdWp;
        if (to.marker == 0) continue;
      }
      child.entries.emplace(it->first, std::move(to));
    }
  }
  spaces_[child_id] = std::move(child);
}

void ModelReference::RegisterUffd(int id, std::uint64_t start, std::uint32_t modes,
                                  bool wp_unpopulated) {
  for (RefVma& vma : Mutable(id).vmas) {
    if (vma.start != start) continue;
    vma.uffd_modes = modes;
    vma.uffd_wp_unpopulated = wp_unpopulated;
  }
}

void ModelReference::Exit(int id) {
  RefAddressSpace& space = Mutable(id);
  for (auto& [page, entry] : space.entries) Unmap(entry);
  spaces_.erase(id);
}

// --- Faults -------------------------------------------------------------------------------------

bool ModelReference::DeliverUffd(RefAddressSpace& space, const RefVma& vma, UffdEvent::Kind kind,
                                 std::uint64_t page, bool write, int cpu_node) {
  const std::uint32_t mode = kind == UffdEvent::Kind::kWp       ? model::kUffdWp
                             : kind == UffdEvent::Kind::kMinor ? model::kUffdMinor
                                                                : model::kUffdMissing;
  if ((vma.uffd_modes & mode) == 0) return false;
  events_.push_back(RefUffdEvent{kind, page, write ? Access::kWrite : Access::kRead});
  // The tests' handler. Its calls must succeed: a failure here is a livelock in the model.
  int result = 0;
  switch (kind) {
    case UffdEvent::Kind::kWp:
      result = WriteProtect(space, page, vma.page_size(), false);
      break;
    case UffdEvent::Kind::kMissing:
      result = HandlerZeroFills(vma.kind, page, write) ? UffdZeropage(space, vma, page)
                                                       : UffdCopy(space, vma, page, cpu_node);
      break;
    case UffdEvent::Kind::kMinor:
      result = UffdContinue(space, vma, page);
      break;
  }
  if (result != 0) ReferenceBug("the reference's own uffd handler failed");
  return true;
}

FaultResult ModelReference::Access(RefAddressSpace& space, int cpu_node, std::uint64_t address,
                                   bool write, RefFrame** frame, std::uint64_t* offset) {
  const RefVma* vma_found = space.FindVma(address);
  if (!vma_found) return FaultResult::kSegv;
  // The VMA is copied: a handler's calls never change VMAs, but keep the rules independent of it.
  const RefVma vma = *vma_found;
  if (write && !vma.writable) return FaultResult::kSegv;
  const std::uint64_t page = AlignDown(address, vma.page_size());
  // Every round either lets the access proceed, fails it, or makes progress the next round sees;
  // a few rounds suffice (a uffd round trip, then the fault it leads to).
  for (int round = 0; round < 16; ++round) {
    RefEntry& entry = space.entries[page];
    if (!entry.frame) {
      const PteMarker marker = entry.marker;
      if (marker & kPteMarkerGuard) return FaultResult::kSegv;
      if (marker & kPteMarkerPoisoned) return FaultResult::kSigbus;
      const bool wp_marker = (marker & kPteMarkerUffdWp) != 0;
      if (wp_marker && write && vma.registered_wp()) {
        if (!DeliverUffd(space, vma, UffdEvent::Kind::kWp, page, write, cpu_node)) {
          return FaultResult::kSigbus;
        }
        continue;
      }
      if (vma.kind == VmaKind::kAnon) {
        // Missing mode: nothing to map for anonymous memory, read or write.
        if ((vma.uffd_modes & model::kUffdMissing) && !wp_marker) {
          DeliverUffd(space, vma, UffdEvent::Kind::kMissing, page, write, cpu_node);
          continue;
        }
        if (!write) {
          // The zero frame, read-only; a uffd-wp marker's bit stays on the mapping.
          MapFrame(entry, zero_);
          entry.uffd_wp = wp_marker;
        } else {
          MapFrame(entry, NewFrame(AllocNode(vma, cpu_node), false));
          entry.writable = true;
        }
        continue;
      }
      FrameRef cached = CachedFrame(vma, page, false);
      if (!cached) {
        if (vma.uffd_modes & model::kUffdMissing) {
          DeliverUffd(space, vma, UffdEvent::Kind::kMissing, page, write, cpu_node);
          continue;
        }
        cached = CachedFrame(vma, page, true);
      } else if (vma.uffd_modes & model::kUffdMinor) {
        DeliverUffd(space, vma, UffdEvent::Kind::kMinor, page, write, cpu_node);
        continue;
      }
      MapFrame(entry, cached);
      entry.uffd_wp = wp_marker;
      entry.writable = write && !wp_marker;
      entry.dirty = entry.writable;
      continue;
    }
    if (entry.numa_hint) {
      // do_numa_page(): migrate to where the policy wants the page, if it is anonymous and
      // mapped once (the model keeps no rmap for the other mappings), else restore the entry.
      const int target = AllocNode(vma, cpu_node);
      if (entry.frame->node != target && vma.kind == VmaKind::kAnon &&
          entry.frame->mappings == 1) {
        FrameRef moved = NewFrame(target, false);
        moved->words = entry.frame->words;
        const RefEntry kept = entry;
        Unmap(entry);
        entry = kept;
        entry.frame = std::move(moved);
        ++entry.frame->mappings;
      }
      entry.numa_hint = false;
      continue;
    }
    if (!write || entry.writable) {
      *frame = entry.frame.get();
      *offset = address - page;
      return FaultResult::kOk;
    }
    // A write to a read-only mapping.
    if (entry.uffd_wp && vma.registered_wp()) {
      if (!DeliverUffd(space, vma, UffdEvent::Kind::kWp, page, write, cpu_node)) {
        return FaultResult::kSigbus;
      }
      continue;
    }
    entry.uffd_wp = false;   // a bit left without a registration means nothing
    if (vma.shared()) {
      entry.writable = true;   // no copy: the file's page is the page
      entry.dirty = true;
      continue;
    }
    if (entry.frame->zero) {
      // Write after a zero-page read: a zeroed frame, nothing to copy.
      MapFrame(entry, NewFrame(AllocNode(vma, cpu_node), false));
    } else if (entry.frame->refcount() != 1) {
      FrameRef copy = NewFrame(AllocNode(vma, cpu_node), false);
      copy->words = entry.frame->words;
      Unmap(entry);
      MapFrame(entry, std::move(copy));
    }
    // else: nobody else maps the frame, which is reused.
    entry.writable = true;
  }
  ReferenceBug("an access did not settle");
}

FaultResult ModelReference::Load(int id, int cpu_node, std::uint64_t address,
                                 std::uint64_t* value) {
  RefAddressSpace& space = Mutable(id);
  RefFrame* frame = nullptr;
  std::uint64_t offset = 0;
  const FaultResult result = Access(space, cpu_node, address, false, &frame, &offset);
  Prune(space);
  if (result == FaultResult::kOk) *value = frame->Word(offset);
  return result;
}

FaultResult ModelReference::Store(int id, int cpu_node, std::uint64_t address,
                                  std::uint64_t value) {
  RefAddressSpace& space = Mutable(id);
  RefFrame* frame = nullptr;
  std::uint64_t offset = 0;
  const FaultResult result = Access(space, cpu_node, address, true, &frame, &offset);
  Prune(space);
  if (result == FaultResult::kOk) {
    if (frame->zero) ReferenceBug("a store to the zero frame");
    frame->words[offset] = value;
  }
  return result;
}

// --- uffd resolution ------------------------------------------------------------------------------

int ModelReference::UffdCopy(RefAddressSpace& space, const RefVma& vma, std::uint64_t page,
                             int cpu_node) {
  if (vma.shared()) return FillShared(space, vma, page, false);
  RefEntry& entry = space.entries[page];
  if (entry.frame || (entry.marker & ~kPteMarkerUffdWp) != 0) return -EEXIST;
  FrameRef frame = NewFrame(AllocNode(vma, cpu_node), false);
  for (std::uint64_t offset : kWordOffsets) frame->words[offset] = UffdCopyPattern(page, offset);
  // mfill_atomic_install_pte(): dirty, and writable as the VMA is.
  MapFrame(entry, std::move(frame));
  entry.writable = vma.writable;
  entry.dirty = true;
  return 0;
}

int ModelReference::UffdZeropage(RefAddressSpace& space, const RefVma& vma, std::uint64_t page) {
  // hugetlb: UFFDIO_REGISTER does not offer the ioctl there; mfill_atomic_hugetlb() refuses it.
  if (vma.kind == VmaKind::kHugetlb) return -EINVAL;
  // shmem (Linux 6.18's shmem_mfill_atomic_pte()): a zeroed page in the file, mapped.
  if (vma.shared()) return FillShared(space, vma, page, true);
  RefEntry& entry = space.entries[page];
  // Anonymous: the zero frame, on none only (mfill_atomic_pte_zeropage() checks pte_none(): a
  // uffd-wp marker is not overwritten).
  if (!entry.none()) return -EEXIST;
  MapFrame(entry, zero_);
  return 0;
}

int ModelReference::FillShared(RefAddressSpace& space, const RefVma& vma, std::uint64_t page,
                               bool zero) {
  RefEntry& entry = space.entries[page];
  // mfill_atomic_install_pte() fills a none entry or a uffd-wp marker, as UffdCopy does.
  if (entry.frame || (entry.marker & ~kPteMarkerUffdWp) != 0) return -EEXIST;
  // shmem_add_to_page_cache(): -EEXIST if the file has a page there.
  if (CachedFrame(vma, page, false)) return -EEXIST;
  FrameRef frame = CachedFrame(vma, page, true);   // a new page, all words zero
  if (!zero) {
    for (std::uint64_t sub = 0; sub < vma.page_size(); sub += kPageSize) {
      for (std::uint64_t offset : kWordOffsets) {
        frame->words[sub + offset] = UffdCopyPattern(page + sub, offset);
      }
    }
  }
  // mfill_atomic_install_pte(): dirty, and writable as the VMA is; a uffd-wp marker is replaced
  // (the tests' handler asks for no UFFDIO_COPY_MODE_WP).
  MapFrame(entry, std::move(frame));
  entry.writable = vma.writable;
  entry.dirty = true;
  return 0;
}

int ModelReference::UffdContinue(RefAddressSpace& space, const RefVma& vma, std::uint64_t page) {
  if (vma.kind == VmaKind::kAnon) return -EINVAL;
  FrameRef cached = CachedFrame(vma, page, false);
  if (!cached) return -EFAULT;
  RefEntry& entry = space.entries[page];
  if (entry.frame || (entry.marker & ~kPteMarkerUffdWp) != 0) return -EEXIST;
  MapFrame(entry, std::move(cached));
  entry.writable = vma.writable;
  entry.dirty = true;
  return 0;
}

// --- Range operations -----------------------------------------------------------------------------

std::uint64_t ModelReference::Zap(int id, std::uint64_t start, std::uint64_t length) {
  RefAddressSpace& space = Mutable(id);
  std::uint64_t unmapped = 0;
  auto it = space.entries.lower_bound(start);
  while (it != space.entries.end() && it->first < start + length) {
    RefEntry& entry = it->second;
    const RefVma* vma = space.FindVma(it->first);
    const bool keeps_wp = vma->shared() && vma->registered_wp();
    if (entry.frame) {
      const bool wp = entry.uffd_wp;
      Unmap(entry);
      unmapped += vma->page_size() / kPageSize;   // the zero page counts: it was mapped
      entry = RefEntry{};
      if (keeps_wp && wp) entry.marker = kPteMarkerUffdWp;
    } else {
      // Guard markers stay; poison markers go; uffd-wp markers stay where they are kept.
      entry.marker &= kPteMarkerGuard | (keeps_wp ? kPteMarkerUffdWp : 0);
    }
    it = entry.none() ? space.entries.erase(it) : std::next(it);
  }
  return unmapped;
}

std::uint64_t ModelReference::InstallGuard(int id, std::uint64_t start, std::uint64_t length) {
  RefAddressSpace& space = Mutable(id);
  std::uint64_t changed = 0;
  for (std::uint64_t page = start; page < start + length; page += kPageSize) {
    RefEntry& entry = space.entries[page];
    if (!entry.frame && (entry.marker & kPteMarkerGuard)) continue;
    // "Zapping what was mapped": as the kernel's madvise_guard_install() zaps first, a poison or
    // uffd-wp marker goes (Zap clears both on anonymous VMAs) and the guard marker is alone.
    Unmap(entry);
    entry = RefEntry{};
    entry.marker = kPteMarkerGuard;
    ++changed;
  }
  return changed;
}

std::uint64_t ModelReference::RemoveGuard(int id, std::uint64_t start, std::uint64_t length) {
  RefAddressSpace& space = Mutable(id);
  std::uint64_t changed = 0;
  auto it = space.entries.lower_bound(start);
  while (it != space.entries.end() && it->first < start + length) {
    RefEntry& entry = it->second;
    if (!entry.frame && (entry.marker & kPteMarkerGuard)) {
      entry.marker &= ~kPteMarkerGuard;
      ++changed;
    }
    it = entry.none() ? space.entries.erase(it) : std::next(it);
  }
  return changed;
}

int ModelReference::UffdWriteProtect(int id, std::uint64_t start, std::uint64_t length,
                                     bool protect) {
  return WriteProtect(Mutable(id), start, length, protect);
}

int ModelReference::WriteProtect(RefAddressSpace& space, std::uint64_t start,
                                 std::uint64_t length, bool protect) {
  for (std::uint64_t address = start; address < start + length;) {
    const RefVma* vma = space.FindVma(address);
    if (!vma || !vma->registered_wp()) return -ENOENT;
    address = vma->end;
  }
  for (std::uint64_t address = start; address < start + length;) {
    const RefVma& vma = *space.FindVma(address);
    const std::uint64_t page = AlignDown(address, vma.page_size());
    address = page + vma.page_size();
    auto it = space.entries.find(page);
    RefEntry* entry = it == space.entries.end() ? nullptr : &it->second;
    if (protect) {
      if (entry && entry->frame) {
        entry->uffd_wp = true;
        entry->writable = false;
      } else if (!entry && (vma.shared() || vma.uffd_wp_unpopulated)) {
        space.entries[page].marker = kPteMarkerUffdWp;
      }
      // Guard and poison markers are left alone: any access fails on them anyway.
      continue;
    }
    if (!entry) continue;
    if (entry->frame) {
      if (!entry->uffd_wp) continue;
      entry->uffd_wp = false;
      // Write permission comes back where a write fault would not copy: an anonymous frame
      // nobody else maps (the README's "exclusive": refcount 1, as the write fault's reuse test;
      // the kernel asks PageAnonExclusive, which fork clears for good), or a dirty shared page.
      entry->writable = vma.writable && (vma.shared() ? entry->dirty
                                                      : !entry->frame->zero &&
                                                            entry->frame->refcount() == 1);
    } else {
      entry->marker &= ~kPteMarkerUffdWp;
      if (entry->none()) space.entries.erase(it);
    }
  }
  return 0;
}

int ModelReference::UffdPoison(int id, std::uint64_t start, std::uint64_t length) {
  RefAddressSpace& space = Mutable(id);
  // mfill_atomic_pte_poison(): page by page, stopping at the first entry that is not none; it
  // "refuses to overwrite any PTE, even a PTE marker (e.g. UFFD WP)".
  for (std::uint64_t address = start; address < start + length;) {
    const RefVma* vma = space.FindVma(address);
    if (!vma) return -ENOENT;
    const std::uint64_t page = AlignDown(address, vma->page_size());
    address = page + vma->page_size();
    if (space.entries.count(page)) return -EEXIST;
    space.entries[page].marker = kPteMarkerPoisoned;
  }
  return 0;
}

int ModelReference::MigratePage(int id, std::uint64_t address, int node) {
  RefAddressSpace& space = Mutable(id);
  const RefVma* vma = space.FindVma(address);
  if (!vma) return -ENOENT;
  // The model migrates anonymous pages only: it keeps no rmap to fix a page cache's other users.
  if (vma->shared()) return -EINVAL;
  auto it = space.entries.find(AlignDown(address, kPageSize));
  if (it == space.entries.end() || !it->second.frame || it->second.frame->zero) return -ENOENT;
  RefEntry& entry = it->second;
  if (entry.frame->node == node) return 0;   // already there, as move_pages() reports it
  if (entry.frame->mappings > 1) return -EBUSY;
  FrameRef moved = NewFrame(node, false);
  moved->words = entry.frame->words;
  const RefEntry kept = entry;   // permission and uffd-wp bit survive
  Unmap(entry);
  entry = kept;
  entry.frame = moved;
  ++moved->mappings;
  return 0;
}

std::uint64_t ModelReference::ChangeProtNuma(int id, std::uint64_t start, std::uint64_t length) {
  RefAddressSpace& space = Mutable(id);
  std::uint64_t marked = 0;
  for (auto it = space.entries.lower_bound(start);
       it != space.entries.end() && it->first < start + length; ++it) {
    RefEntry& entry = it->second;
    // Not the zero page, not hugetlb (task_numa_work skips it), not twice.
    if (!entry.frame || entry.frame->zero || entry.frame->huge || entry.numa_hint) continue;
    entry.numa_hint = true;
    ++marked;
  }
  return marked;
}

}  // namespace faultlab::model_check
