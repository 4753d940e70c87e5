#include "bench/tsc_clock.h"

#include <time.h>

namespace faultlab {
namespace {

uint64_t MonotonicTicksNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

double Calibrate() {
  // Bracket both clocks tightly at each end so the ~20 ns read cost does not bias the ratio.
  const uint64_t ns0 = MonotonicTicksNs();
  const uint64_t tsc0 = TscNow();
  uint64_t ns1 = ns0;
  while (ns1 - ns0 < 20'000'000) ns1 = MonotonicTicksNs();
  const uint64_t tsc1 = TscNow();
  return static_cast<double>(ns1 - ns0) / static_cast<double>(tsc1 - tsc0);
}

}  // namespace

double MonotonicNs() { return static_cast<double>(MonotonicTicksNs()); }

double TscNsPerTick() {
  static const double ns_per_tick = Calibrate();
  return ns_per_tick;
}

}  // namespace faultlab
