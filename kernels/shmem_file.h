// A shmem (tmpfs/memfd) or hugetlbfs file of the model: its page cache, file offset to frame.
//
// The cache is a fixed array of slots, one per page of the file, each holding pfn + 1 (0: no page
// cached). A page is added by compare-and-swap on its slot: two faults that race to create the
// same page both allocate, one wins, the loser frees its frame, as shmem_get_folio's loser does.
// The cache holds one reference on every cached frame; mappings take their own.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "kernels/machine.h"

namespace faultlab::model {

class ShmemFile {
 public:
  // A file of `size` bytes (a multiple of the page size: 4 KiB, or 2 MiB when `huge`, the
  // hugetlbfs case) whose new pages are allocated on `node`. Throws std::invalid_argument on a
  // bad size.
  ShmemFile(Machine& machine, std::uint64_t size, bool huge, int node);
  ~ShmemFile();   // drops the cache's references; mappings must be gone first
  ShmemFile(const ShmemFile&) = delete;
  ShmemFile& operator=(const ShmemFile&) = delete;

  bool huge() const { return huge_; }
  std::uint64_t page_size() const { return huge_ ? kPmdSize : kPageSize; }
  std::uint64_t pages() const { return pages_; }
  int node() const { return node_; }

  // The cached frame of page `index`, or kNoPfn.
  Pfn Lookup(std::uint64_t index) const;
  // The cached frame, created (zeroed) if absent. kNoPfn when memory ran out. `created` tells
  // whether this call added it.
  Pfn GetOrCreate(Cpu& cpu, std::uint64_t index, bool* created = nullptr);
  // Adds page `index` filled with `data` (page_size() bytes) unless the page is cached already;
  // returns the cached frame (new or old) or kNoPfn when memory ran out. What UFFDIO_COPY into
  // shmem does to the cache, and what writing through a second, unregistered mapping does before
  // a minor fault.
  Pfn Insert(Cpu& cpu, std::uint64_t index, const void* data, bool* inserted = nullptr);
  // Removes page `index` from the cache (fallocate PUNCH_HOLE without the unmapping), dropping
  // the cache's reference.
  void Remove(Cpu& cpu, std::uint64_t index);

 private:
  Pfn Publish(Cpu& cpu, std::uint64_t index, Pfn fresh, bool* added);

  Machine& machine_;
  bool huge_;
  int node_;
  std::uint64_t pages_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> slots_;
};

}  // namespace faultlab::model
