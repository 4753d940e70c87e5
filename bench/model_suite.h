// The model suite's cases that the fork suite runs beside the kernel's, so that a fork comparison
// takes both halves from one invocation (same machine state, same pinning).
#pragma once

#include "bench/suite.h"

namespace faultlab {

// Registers model/fork/*, model/cow_pte_break/* and the classic COW faults after fork
// (model/cow_copy, model/cow_reuse) with the model suite's sizes for options.quick.
void RegisterModelForkCases(const RunOptions& options);

}  // namespace faultlab
