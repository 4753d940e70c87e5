// libFuzzer over the model's operation sequences: each input decodes (model_ops.h) into a valid
// sequence run against the model and ModelReference; a difference prints the operations and
// aborts, so libFuzzer keeps the input. Run it with `scripts/faultlab fuzz [SECONDS]`; replay a
// saved input with `build-fuzz/tests/fuzz/model_ops_fuzz FILE`.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "tests/model_ops.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using faultlab::model_check::ModelWorld;
  // One machine for the process: each input gives every frame back (the runner checks it).
  static ModelWorld* const world = [] {
    faultlab::model_check::PrintLogOnAbort();   // an abort inside the model still shows the ops
    return new ModelWorld();
  }();
  const faultlab::model_check::RunResult result =
      faultlab::model_check::RunFuzzInput(*world, std::span<const std::uint8_t>(data, size));
  if (!result.ok) {
    std::fprintf(stderr, "model_ops_fuzz: the model and the reference differ\n%s",
                 result.Report().c_str());
    std::abort();
  }
  return 0;
}
