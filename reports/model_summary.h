// The model suite's figures from one run's results.json: each case's median per operation, the
// target it is held to and whether this run met it, and the model set beside the real kernel's
// fault where the `fault` suite ran the same path: what is left when the software path is taken
// away is the trap, the TLB fill and the return (and the kernel's bookkeeping the model skips).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace faultlab {

// Text lines; empty when the run has no model suite results.
std::string ModelSummary(const nlohmann::json& results);

}  // namespace faultlab
