// The model suite's cases that the kernel suites run beside their own (fork, uffd, guard, numa), so that
// a comparison takes both halves from one invocation (same machine state, same pinning).
#pragma once

#include "bench/suite.h"

namespace faultlab {

// Registers model/fork/*, model/cow_pte_break/* and the classic COW faults after fork
// (model/cow_copy, model/cow_reuse) with the model suite's sizes for options.quick.
void RegisterModelForkCases(const RunOptions& options);
// The model's cases beside suite `uffd` (zeropage, markers, userfaultfd round trips, write-protect,
// zap with markers) and beside suite `guard` (guard faults, install, remove); each suite
// registers them when the model suite is not selected anyway.
void RegisterModelUffdCases(const RunOptions& options);
void RegisterModelGuardCases(const RunOptions& options);
// Beside suite `numa`: move_pages's and the hinting fault's software path (model/migrate,
// model/numa_hint, model/numa_scan, one thread and several), without the trap or the kernel.
void RegisterModelNumaCases(const RunOptions& options);

}  // namespace faultlab
