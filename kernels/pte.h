// Page-table entries of the model, as 64-bit words laid out like x86-64's.
//
// Present entries carry the hardware bits (present, write, user, accessed, dirty, PSE for a PMD
// leaf) and the software bits Linux keeps in the ignored ones (special, uffd-wp, soft-dirty); a
// PROT_NONE entry is the x86 one: present cleared, the global bit reused as PROTNONE
// (arch/x86/include/asm/pgtable_types.h). Non-present, non-none entries are swap entries laid out
// as x86-64 lays them out since L1TF (arch/x86/include/asm/pgtable_64.h): type in bits 59-63,
// the offset inverted in bits 9-58, and the swap-pte software bits (exclusive, soft-dirty,
// uffd-wp) in the low bits. The special swap types sit at the top of the 5-bit type space in the
// kernel's order (include/linux/swap.h), PTE_MARKER last; a marker's offset carries its bits
// (include/linux/swapops.h). Everything here is constexpr and checked at compile time below.
#pragma once

#include <cstdint>

namespace faultlab::model {

using Pte = std::uint64_t;   // also used for PMD, PUD and PGD entries
using Pfn = std::uint64_t;   // a frame number in the model's machine (see machine.h)

inline constexpr int kPageShift = 12;
inline constexpr std::uint64_t kPageSize = 1ull << kPageShift;
inline constexpr int kPmdShift = 21;
inline constexpr std::uint64_t kPmdSize = 1ull << kPmdShift;          // 2 MiB
inline constexpr int kPudShift = 30;
inline constexpr int kPgdShift = 39;
inline constexpr int kEntriesPerTable = 512;
inline constexpr int kPagesPerPmd = kEntriesPerTable;
// Four levels address 48 bits of virtual space.
inline constexpr std::uint64_t kAddressLimit = 1ull << 48;

// Hardware bits.
inline constexpr Pte kPtePresent = 1ull << 0;
inline constexpr Pte kPteWrite = 1ull << 1;
inline constexpr Pte kPteUser = 1ull << 2;
inline constexpr Pte kPtePwt = 1ull << 3;
inline constexpr Pte kPtePcd = 1ull << 4;
inline constexpr Pte kPteAccessed = 1ull << 5;
inline constexpr Pte kPteDirty = 1ull << 6;
inline constexpr Pte kPtePse = 1ull << 7;          // PMD/PUD: this entry maps a huge page
inline constexpr Pte kPteGlobal = 1ull << 8;
// Software bits (Linux's _PAGE_BIT_SOFTW1..3 and the ones it reuses).
inline constexpr Pte kPteSpecial = 1ull << 9;      // SOFTW1: no struct page refcounting (zero page)
inline constexpr Pte kPteUffdWp = 1ull << 10;      // SOFTW2: write-protected by userfaultfd
inline constexpr Pte kPteSoftDirty = 1ull << 11;   // SOFTW3
inline constexpr Pte kPteProtnone = kPteGlobal;    // only meaningful with present clear
// The model's 'fault on access' software bit (SOFTW4's position), for an architecture without a
// PROTNONE encoding: the entry stays present and the model's MMU faults on any access to it, and
// an arch hook hands the fault to the NUMA hinting path (AddressSpace::Options::protnone).
inline constexpr Pte kPteFaultOnAccess = 1ull << 58;
inline constexpr Pte kPteNx = 1ull << 63;
inline constexpr Pte kPtePfnMask = ((1ull << 52) - 1) & ~((1ull << kPageShift) - 1);
// What a table entry pointing to a lower-level table carries (_PAGE_TABLE).
inline constexpr Pte kTableEntryBits = kPtePresent | kPteWrite | kPteUser | kPteAccessed | kPteDirty;

constexpr Pfn PtePfn(Pte pte) { return (pte & kPtePfnMask) >> kPageShift; }
constexpr Pte PfnPte(Pfn pfn, Pte bits) { return (pfn << kPageShift) | bits; }

constexpr bool PteNone(Pte pte) { return pte == 0; }
// Present to Linux: a PROT_NONE entry is present although the hardware would fault on it.
constexpr bool PtePresent(Pte pte) { return (pte & (kPtePresent | kPteProtnone)) != 0; }
constexpr bool PteProtnone(Pte pte) {
  return (pte & (kPtePresent | kPteProtnone)) == kPteProtnone;
}
constexpr bool PteFaultOnAccess(Pte pte) {
  return (pte & (kPtePresent | kPteFaultOnAccess)) == (kPtePresent | kPteFaultOnAccess);
}
// Hinting entries of either encoding: the access faults into the NUMA hinting path.
constexpr bool PteNumaHint(Pte pte) { return PteProtnone(pte) || PteFaultOnAccess(pte); }
constexpr bool PteWrite(Pte pte) { return (pte & kPteWrite) != 0; }
constexpr bool PteSpecial(Pte pte) { return (pte & kPteSpecial) != 0; }
constexpr bool PteUffdWp(Pte pte) { return (pte & kPteUffdWp) != 0; }
constexpr bool PteDirty(Pte pte) { return (pte & kPteDirty) != 0; }
constexpr bool PmdLeaf(Pte pmd) { return (pmd & kPtePse) != 0; }

// --- Swap entries ---------------------------------------------------------------------------
inline constexpr int kSwapTypeShift = 59;
inline constexpr int kSwapTypeBits = 5;
inline constexpr int kSwapOffsetShift = 9;
inline constexpr int kSwapOffsetBits = kSwapTypeShift - kSwapOffsetShift;   // 50
inline constexpr Pte kSwapOffsetMask = ((1ull << kSwapOffsetBits) - 1) << kSwapOffsetShift;
// Swap-pte software bits (_PAGE_SWP_EXCLUSIVE, _PAGE_SWP_SOFT_DIRTY, _PAGE_SWP_UFFD_WP).
inline constexpr Pte kSwpExclusive = kPtePwt;
inline constexpr Pte kSwpSoftDirty = kPteWrite;
inline constexpr Pte kSwpUffdWp = kPteUser;

// The special types, counted down from the top of the 5-bit space as include/linux/swap.h does.
inline constexpr unsigned kMaxSwapfiles = 24;
inline constexpr unsigned kSwpHwpoison = 24;
inline constexpr unsigned kSwpMigrationRead = 25;
inline constexpr unsigned kSwpMigrationReadExclusive = 26;
inline constexpr unsigned kSwpMigrationWrite = 27;
inline constexpr unsigned kSwpDeviceWrite = 28;
inline constexpr unsigned kSwpDeviceRead = 29;
inline constexpr unsigned kSwpDeviceExclusive = 30;
inline constexpr unsigned kSwpPteMarker = 31;

struct SwapEntry {
  unsigned type = 0;
  std::uint64_t offset = 0;
};

constexpr Pte SwapEntryToPte(SwapEntry entry) {
  // The offset is stored inverted so that a non-present entry never names real memory (L1TF).
  return (static_cast<Pte>(entry.type) << kSwapTypeShift) |
         ((~entry.offset << kSwapOffsetShift) & kSwapOffsetMask);
}
constexpr SwapEntry PteToSwapEntry(Pte pte) {
  return SwapEntry{static_cast<unsigned>(pte >> kSwapTypeShift),
                   (~pte & kSwapOffsetMask) >> kSwapOffsetShift};
}
// A swap entry: neither none nor present (is_swap_pte()).
constexpr bool IsSwapPte(Pte pte) { return !PteNone(pte) && !PtePresent(pte); }
constexpr bool IsMigrationEntry(Pte pte) {
  if (!IsSwapPte(pte)) return false;
  const unsigned type = PteToSwapEntry(pte).type;
  return type >= kSwpMigrationRead && type <= kSwpMigrationWrite;
}

// --- PTE markers ----------------------------------------------------------------------------
using PteMarker = std::uint64_t;
inline constexpr PteMarker kPteMarkerUffdWp = 1ull << 0;
inline constexpr PteMarker kPteMarkerPoisoned = 1ull << 1;
inline constexpr PteMarker kPteMarkerGuard = 1ull << 2;
inline constexpr PteMarker kPteMarkerMask = kPteMarkerUffdWp | kPteMarkerPoisoned | kPteMarkerGuard;

constexpr bool IsPteMarker(Pte pte) {
  return IsSwapPte(pte) && PteToSwapEntry(pte).type == kSwpPteMarker;
}
constexpr PteMarker PteMarkerBits(Pte pte) {
  return IsPteMarker(pte) ? PteToSwapEntry(pte).offset & kPteMarkerMask : 0;
}
constexpr Pte MakePteMarker(PteMarker marker) {
  return SwapEntryToPte(SwapEntry{kSwpPteMarker, marker & kPteMarkerMask});
}
// "Either none or a marker": what most fault paths treat alike (pte_none_mostly()).
constexpr bool PteNoneMostly(Pte pte) { return PteNone(pte) || IsPteMarker(pte); }
// A marker that only records uffd-wp (is_pte_marker_uffd_wp()).
constexpr bool IsUffdWpMarker(Pte pte) { return (PteMarkerBits(pte) & kPteMarkerUffdWp) != 0; }

constexpr Pte MakeMigrationEntry(Pfn pfn, bool write) {
  return SwapEntryToPte(SwapEntry{write ? kSwpMigrationWrite : kSwpMigrationRead, pfn});
}

// --- Compile-time checks of the layout ------------------------------------------------------
static_assert(kPtePfnMask == 0x000ffffffffff000ull, "PFN in bits 12-51 as on x86-64");
static_assert(kSwapOffsetMask == 0x07fffffffffffe00ull, "swap offset in bits 9-58");
static_assert(((kSwapOffsetMask | (0x1full << kSwapTypeShift)) & 0x1ff) == 0,
              "swap type and offset leave the low 9 bits for the software bits");
static_assert(kSwpPteMarker == (1u << kSwapTypeBits) - 1, "PTE_MARKER is the last swap type");
static_assert((SwapEntryToPte({kSwpPteMarker, 0}) & kPtePresent) == 0, "swap entries not present");
static_assert(PteToSwapEntry(SwapEntryToPte({kSwpMigrationWrite, 123456})).offset == 123456);
static_assert(PteToSwapEntry(SwapEntryToPte({kSwpMigrationWrite, 123456})).type == kSwpMigrationWrite);
static_assert(IsPteMarker(MakePteMarker(kPteMarkerUffdWp)) && !PteNone(MakePteMarker(0)));
static_assert(PteNoneMostly(0) && PteNoneMostly(MakePteMarker(kPteMarkerGuard)));
static_assert(!PteNoneMostly(PfnPte(1, kPtePresent)) && !PteNoneMostly(MakeMigrationEntry(1, true)));
static_assert(PtePresent(PfnPte(7, kPteProtnone)) && PteProtnone(PfnPte(7, kPteProtnone)));
static_assert(!IsSwapPte(PfnPte(7, kPteProtnone)), "a protnone entry is not a swap entry");
static_assert(PteFaultOnAccess(PfnPte(7, kPtePresent | kPteFaultOnAccess)) &&
              !PteFaultOnAccess(SwapEntryToPte({kSwpPteMarker, 0})),
              "fault-on-access entries are present, so the bit may overlap the swap offset");
static_assert((kSwpUffdWp & (kSwapOffsetMask | kPtePresent)) == 0);
static_assert((kPteFaultOnAccess & kPtePfnMask) == 0, "the software bit is outside the PFN");

}  // namespace faultlab::model
