// What the kernel really mapped: /proc/self/pagemap and /proc/self/smaps for one address range.
//
// Benchmarks check their premise here before trusting a figure (selftests/mm cow.c style):
// every page present, the zero page really shared (it does not count in Rss), a THP really
// huge, a hugetlb mapping really of the page size asked for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace faultlab {

// One pagemap entry per 4 KiB page of [addr, addr+len). Empty if pagemap cannot be read.
std::vector<uint64_t> ReadPagemap(const void* addr, std::size_t len);

// Bits of a pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
inline bool PagemapPresent(uint64_t e) { return (e >> 63) & 1; }
// The page frame of a present entry; 0 unless the reader has CAP_SYS_ADMIN (root here).
inline uint64_t PagemapPfn(uint64_t e) { return e & ((uint64_t{1} << 55) - 1); }
// A guard region marker (MADV_GUARD_INSTALL) at this page; reported since Linux 6.15.
inline bool PagemapGuardRegion(uint64_t e) { return (e >> 58) & 1; }

// "0x1f2e3d": a pagemap entry, frame or address as people compare them.
std::string Hex(uint64_t value);

// How many pages of the range are present.
std::size_t CountPresent(const std::vector<uint64_t>& pagemap);

// The smaps fields of the VMA that contains `addr`, in kB ("Rss", "AnonHugePages",
// "KernelPageSize", "Private_Hugetlb", ...). Empty if no VMA contains it.
std::map<std::string, long> SmapsOf(const void* addr);

// One field of SmapsOf's result in kB, or -1 where the VMA (or the field) is missing.
long SmapsField(const std::map<std::string, long>& smaps, const std::string& name);

}  // namespace faultlab
