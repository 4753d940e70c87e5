// The page cache of a model shmem or hugetlbfs file: one slot per page holding pfn + 1, filled by
// compare-and-swap so that racing faults agree on one frame without a lock.
//
// A new frame is filled (zeroed, or copied into) before it is published with release, and every
// reader loads the slot with acquire, so whoever finds a frame through the cache sees its
// contents. The cache's own reference is the one AllocateFrame returned; the loser of a race puts
// that reference on its fresh frame, which frees it.
#include "kernels/shmem_file.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace faultlab::model {
namespace {

void CheckIndex(std::uint64_t index, std::uint64_t pages) {
  if (index >= pages) {
    throw std::out_of_range("page " + std::to_string(index) + " is beyond a file of " +
                            std::to_string(pages) + " pages");
  }
}

}  // namespace

ShmemFile::ShmemFile(Machine& machine, std::uint64_t size, bool huge, int node)
    : machine_(machine), huge_(huge), node_(node), pages_(0) {
  if (size == 0 || size % page_size() != 0) {
    throw std::invalid_argument("a file size must be a non-zero multiple of " +
                                std::to_string(page_size()) + " bytes, not " +
                                std::to_string(size));
  }
  if (node < 0 || node >= machine.node_count()) {
    throw std::invalid_argument("no simulated node " + std::to_string(node) + " for a file");
  }
  pages_ = size / page_size();
  // Value-initialized: every slot starts empty (0).
  slots_ = std::make_unique<std::atomic<std::uint64_t>[]>(pages_);
}

ShmemFile::~ShmemFile() {
  // Putting frames needs a Cpu's caches; the destructor runs on whatever thread owns the file,
  // whose own Cpu it cannot name, so it brings a short-lived one.
  Cpu cpu(machine_, node_);
  for (std::uint64_t index = 0; index < pages_; ++index) {
    const std::uint64_t slot = slots_[index].load(std::memory_order_acquire);
    if (slot != 0) machine_.PutFrame(cpu, slot - 1);
  }
}

Pfn ShmemFile::Lookup(std::uint64_t index) const {
  CheckIndex(index, pages_);
  const std::uint64_t slot = slots_[index].load(std::memory_order_acquire);
  return slot == 0 ? kNoPfn : slot - 1;
}

Pfn ShmemFile::GetOrCreate(Cpu& cpu, std::uint64_t index, bool* created) {
  if (created != nullptr) *created = false;
  const Pfn cached = Lookup(index);
  if (cached != kNoPfn) return cached;
  const Pfn fresh = huge_ ? machine_.AllocateHugeFrame(cpu, node_, kFrameCache)
                          : machine_.AllocateFrame(cpu, node_, kFrameCache);
  if (fresh == kNoPfn) return kNoPfn;
  std::memset(machine_.frame(fresh), 0, page_size());
  cpu.stats().pages_zeroed += page_size() / kPageSize;
  return Publish(cpu, index, fresh, created);
}

Pfn ShmemFile::Insert(Cpu& cpu, std::uint64_t index, const void* data, bool* inserted) {
  if (inserted != nullptr) *inserted = false;
  const Pfn cached = Lookup(index);
  if (cached != kNoPfn) return cached;
  const Pfn fresh = huge_ ? machine_.AllocateHugeFrame(cpu, node_, kFrameCache)
                          : machine_.AllocateFrame(cpu, node_, kFrameCache);
  if (fresh == kNoPfn) return kNoPfn;
  std::memcpy(machine_.frame(fresh), data, page_size());
  cpu.stats().pages_copied += page_size() / kPageSize;
  return Publish(cpu, index, fresh, inserted);
}

void ShmemFile::Remove(Cpu& cpu, std::uint64_t index) {
  CheckIndex(index, pages_);
  // Acquire-release: the put below may free the frame, which must come after the publisher's
  // writes; and whoever fills the slot next must not be ordered before this removal.
  const std::uint64_t slot = slots_[index].exchange(0, std::memory_order_acq_rel);
  if (slot != 0) machine_.PutFrame(cpu, slot - 1);
}

Pfn ShmemFile::Publish(Cpu& cpu, std::uint64_t index, Pfn fresh, bool* added) {
  std::uint64_t expected = 0;
  // Release publishes the frame's contents; acquire on failure lets the loser read the winner's.
  if (slots_[index].compare_exchange_strong(expected, fresh + 1, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
    if (added != nullptr) *added = true;
    return fresh;
  }
  machine_.PutFrame(cpu, fresh);
  if (added != nullptr) *added = false;
  return expected - 1;
}

}  // namespace faultlab::model
