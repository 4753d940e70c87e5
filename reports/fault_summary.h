// The fault suite's figures set against each other, from one run's results.json: each case's
// steady-state mean with its spread across repetitions, first-round cost and harness share, as a
// ratio of the 4 KiB write fault (per 4 KiB for huge pages), and each scaling shape as latency
// and throughput ratios of one worker. Ratios from one run are what this noisy, shared machine
// can compare; absolute times are not.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace faultlab {

// "1623 ns", "89.3 us", "1.90 ms": a latency at the precision a noisy machine supports; "-" for
// a figure that is missing (NaN).
std::string FormatNs(double ns);

// Text lines; empty when the run has no fault suite results.
std::string FaultSummary(const nlohmann::json& results);

}  // namespace faultlab
