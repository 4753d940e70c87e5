// Recording half of every benchmark's repetitions under perf, so that a `faultlab run
// --flamegraph` measures what the recording costs in the same run.
//
// scripts/faultlab starts perf record with its events off (--delay=-1) and a control FIFO
// (--control fifo:CTL,ACK), and names both FIFOs in FAULTLAB_PERF_CONTROL="CTL,ACK". faultlab
// then runs every benchmark with twice its repetitions and has perf record repetitions 1 and 2
// of every 4 (plain, recorded, recorded, plain: a drift in the machine's speed over the
// benchmark falls on both halves alike). Recording is switched in Google Benchmark's Setup and
// Teardown of each repetition, outside the timed code, and perf acknowledges each switch before
// the repetition starts. The flame graphs hold the recorded repetitions; the report sets their
// figures against the plain ones (reports/faultlab_report/flamegraph.py).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

namespace faultlab {

// Opens the FIFOs FAULTLAB_PERF_CONTROL names. nullopt when it is unset (a plain run) or they
// opened; otherwise why not.
std::optional<std::string> StartProfileControl();

// Whether this run records half its repetitions (StartProfileControl opened the FIFOs).
bool ProfileControlActive();

// The name (comm) StartProfileControl gave the run's threads, faultlab-<pid in hex>: the reports
// keep the samples of that comm. Empty when not active.
std::string ProfileComm();

// Whether perf records repetition `index` (from 0) of a benchmark.
bool RecordedRepetition(int index);

// Every faultlab benchmark's settings: `iterations` events a repetition, timed by the row itself
// (manual time, in ns), `repetitions` repetitions; with the profile control active, twice as
// many, recording switched around each.
benchmark::internal::Benchmark* Configure(benchmark::internal::Benchmark* benchmark,
                                         int64_t iterations, int repetitions);

// The indices of the repetitions perf recorded since the last call (the reporter takes them at
// each benchmark's end), and the count of repetitions seen starts again from 0.
std::vector<int> TakeRecordedRepetitions();

}  // namespace faultlab
