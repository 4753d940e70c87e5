// The per-fault timestamp: rdtsc, calibrated against CLOCK_MONOTONIC.
//
// A fault costs ~1-2 us here and the harness may add at most 2% to it. clock_gettime costs
// ~23 ns through the vDSO in this VM and rdtsc ~10 ns (measured), so each touch is stamped with
// rdtsc. No fence is needed after the touch: the fault's exception entry and iret serialise, so
// the stamp cannot be taken before the fault completes. The TSC is invariant here
// (constant_tsc, nonstop_tsc); calibration converts ticks to nanoseconds once per process.
#pragma once

#include <x86intrin.h>

#include <cstdint>

namespace faultlab {

inline uint64_t TscNow() { return __rdtsc(); }

// Nanoseconds per TSC tick, measured once (about 20 ms against CLOCK_MONOTONIC).
double TscNsPerTick();

// CLOCK_MONOTONIC in nanoseconds: for wall-clock spans outside the per-fault stamps.
double MonotonicNs();

}  // namespace faultlab
