// results.csv from results.json: one row per benchmark run (each repetition and each aggregate),
// the name split into suite, case, variant and its named arguments, every counter as a column,
// and a `skipped` column holding the reason a row did not run.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace faultlab {

// The CSV text for a Google Benchmark JSON document.
std::string ResultsCsv(const nlohmann::json& results);

}  // namespace faultlab
