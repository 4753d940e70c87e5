// The model (kernels/) against ModelReference: seeded random operation sequences over two to
// four address spaces made by fork, compared after every operation (model_ops.h says what is
// compared). One suite forks only the classic way, so that write permissions, refcounts and
// mapcounts can be compared exactly; the other mixes the three fork modes. A failure prints its
// seed and the operations that led to it; FAULTLAB_MODEL_SEED reruns one seed with its log.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/model_ops.h"
#include "tests/model_reference.h"

namespace faultlab::model_check {
namespace {

// Sanitizer builds run the same sequences several times slower: fewer of them, too few to
// expect every rare path to come up (the plain build checks that).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif
constexpr int kSequences = kSanitized ? 40 : 200;
constexpr int kOpsPerSequence = 60;
// Enough bytes for kOpsPerSequence operations of the most demanding kind.
constexpr std::size_t kBytesPerSequence = 4096;

std::vector<std::uint8_t> BytesOf(std::uint64_t seed) {
  std::mt19937_64 generator(seed);
  std::vector<std::uint8_t> bytes(kBytesPerSequence);
  for (std::uint8_t& byte : bytes) byte = static_cast<std::uint8_t>(generator() >> 56);
  return bytes;
}

enum class Mix { kClassicOnly, kEveryMode, kCowPteFocus };
const char* MixName(Mix mix) {
  switch (mix) {
    case Mix::kClassicOnly: return "classic";
    case Mix::kEveryMode: return "every";
    case Mix::kCowPteFocus: return "cow_pte";
  }
  return "?";
}

RunOptions OptionsFor(Mix mix, std::uint64_t seed) {
  RunOptions options;
  options.label = "seed " + std::to_string(seed) + " (FAULTLAB_MODEL_SEED=" + std::to_string(seed) +
                  " FAULTLAB_MODEL_MIX=" + MixName(mix) + " replays it)";
  options.classic_only = mix == Mix::kClassicOnly;
  options.cow_pte_focus = mix == Mix::kCowPteFocus;
  options.max_ops = kOpsPerSequence;
  return options;
}

class ModelDifferentialTest : public ::testing::Test {
 protected:
  // One machine for every sequence: building one maps and prefaults its memory.
  static void SetUpTestSuite() {
    PrintLogOnAbort();
    world_ = new ModelWorld();
  }
  static void TearDownTestSuite() {
    delete world_;
    world_ = nullptr;
  }

  // Runs seeds [1, sequences]; stops at the first difference, printing how to replay it.
  // Returns (and prints) how often each kind of thing happened over all of them.
  static std::map<std::string, std::uint64_t> RunSeeds(Mix mix, int sequences) {
    std::map<std::string, std::uint64_t> counts;
    for (std::uint64_t seed = 1; seed <= static_cast<std::uint64_t>(sequences); ++seed) {
      const std::vector<std::uint8_t> bytes = BytesOf(seed);
      ByteSource source(bytes);
      const RunOptions options = OptionsFor(mix, seed);
      const RunResult result = RunSequence(*world_, source, options);
      EXPECT_TRUE(result.ok) << options.label << " with --gtest_filter='*Replay*'\n"
                             << result.Report();
      if (!result.ok) break;
      for (const auto& [what, count] : result.counts) counts[what] += count;
    }
    std::string summary;
    for (const auto& [what, count] : counts) summary += " " + what + "=" + std::to_string(count);
    std::printf("counts:%s\n", summary.c_str());
    return counts;
  }

  // The generator is worth something only if it reached the paths it is meant to.
  static void ExpectCoverage(const std::map<std::string, std::uint64_t>& counts,
                             const std::vector<std::string>& musts) {
    if (kSanitized) return;
    for (const std::string& what : musts) {
      EXPECT_GT(counts.count(what) ? counts.at(what) : 0, 0u) << "never happened: " << what;
    }
  }
  // What every mix must have done.
  static std::vector<std::string> EveryMix() {
    return {"map:anon", "map:shmem", "map:hugetlb", "zap", "wp", "unwp", "guard", "unguard",
            "poison", "poison:eexist", "event:wp", "event:missing", "event:minor", "load:ok",
            "store:ok", "store:segv", "store:sigbus", "migrate:0", "migrate:-16", "unmap", "exit",
            "numa_scan", "model:numa_hint_faults", "register", "zeropage:anon", "zeropage:shmem"};
  }

  static ModelWorld* world_;
};

ModelWorld* ModelDifferentialTest::world_ = nullptr;

TEST_F(ModelDifferentialTest, ClassicForksMatchTheReferenceExactly) {
  const auto counts = RunSeeds(Mix::kClassicOnly, kSequences);
  if (HasFailure()) return;
  ExpectCoverage(counts, EveryMix());
  ExpectCoverage(counts, {"fork:classic"});
}

TEST_F(ModelDifferentialTest, EveryForkModeMatchesTheReference) {
  const auto counts = RunSeeds(Mix::kEveryMode, kSequences);
  if (HasFailure()) return;
  ExpectCoverage(counts, EveryMix());
  ExpectCoverage(counts, {"fork:cow_pte_eager", "fork:cow_pte_lazy", "fork:tables_shared"});
}

TEST_F(ModelDifferentialTest, CowPteForksMatchTheReference) {
  const auto counts = RunSeeds(Mix::kCowPteFocus, kSequences / 2);
  if (HasFailure()) return;
  ExpectCoverage(counts, {"fork:tables_shared", "model:cow_pte_copied", "model:cow_pte_reused",
                          "zap:whole_shared_table"});
}

// FAULTLAB_MODEL_SEED=N [FAULTLAB_MODEL_MIX=classic|every|cow_pte]: one sequence, its operations
// printed.
TEST_F(ModelDifferentialTest, Replay) {
  const char* seed_text = std::getenv("FAULTLAB_MODEL_SEED");
  if (!seed_text) GTEST_SKIP() << "set FAULTLAB_MODEL_SEED to replay one sequence";
  const char* mix_text = std::getenv("FAULTLAB_MODEL_MIX");
  Mix mix = Mix::kEveryMode;
  for (Mix one : {Mix::kClassicOnly, Mix::kEveryMode, Mix::kCowPteFocus}) {
    if (mix_text && std::string(mix_text) == MixName(one)) mix = one;
  }
  const std::uint64_t seed = std::strtoull(seed_text, nullptr, 10);
  const std::vector<std::uint8_t> bytes = BytesOf(seed);
  ByteSource source(bytes);
  const RunResult result = RunSequence(*world_, source, OptionsFor(mix, seed));
  std::printf("%s", result.Report().c_str());
  EXPECT_TRUE(result.ok) << result.failure;
}

// The reference itself, on the README's central cases: if these fail, the reference is wrong,
// not the model.
TEST(ModelReferenceTest, ZeroPageThenWriteThenForkCopiesOnWrite) {
  ModelReference ref;
  ref.NewSpace(0);
  RefVma vma;
  vma.start = 0x100000;
  vma.end = 0x102000;
  ref.Map(0, vma);
  std::uint64_t value = 1;
  ASSERT_EQ(ref.Load(0, 0, 0x100000, &value), FaultResult::kOk);
  EXPECT_EQ(value, 0u);
  EXPECT_TRUE(ref.Space(0).EntryOf(vma, 0x100000)->frame->zero);
  ASSERT_EQ(ref.Store(0, 1, 0x100008, 42), FaultResult::kOk);
  const FrameRef written = ref.Space(0).EntryOf(vma, 0x100000)->frame;
  EXPECT_FALSE(written->zero);
  EXPECT_EQ(written->node, 1);   // the faulting Cpu's node: the VMA has no policy
  ref.Fork(0, 1);
  EXPECT_FALSE(ref.Space(0).EntryOf(vma, 0x100000)->writable);
  EXPECT_EQ(ref.Space(1).EntryOf(vma, 0x100000)->frame, written);
  EXPECT_EQ(written->refcount(), 2);
  ASSERT_EQ(ref.Store(0, 0, 0x100008, 43), FaultResult::kOk);   // the parent copies
  EXPECT_NE(ref.Space(0).EntryOf(vma, 0x100000)->frame, written);
  ASSERT_EQ(ref.Load(1, 0, 0x100008, &value), FaultResult::kOk);
  EXPECT_EQ(value, 42u);
  ASSERT_EQ(ref.Store(1, 0, 0x100008, 44), FaultResult::kOk);   // the child reuses
  EXPECT_EQ(ref.Space(1).EntryOf(vma, 0x100000)->frame, written);
  ref.Exit(1);
  ref.Exit(0);
  EXPECT_EQ(written->mappings, 0);
}

TEST(ModelReferenceTest, UffdWpOnShmemSurvivesZapAndFaultsOnWrite) {
  ModelReference ref;
  ref.NewSpace(0);
  RefVma vma;
  vma.start = 0x200000;
  vma.end = 0x202000;
  vma.kind = VmaKind::kShmem;
  vma.file = ref.NewFile(0x4000, false, 0);
  vma.uffd_modes = model::kUffdWp;
  ref.Map(0, vma);
  ASSERT_EQ(ref.Store(0, 0, 0x200000, 7), FaultResult::kOk);
  ASSERT_EQ(ref.UffdWriteProtect(0, 0x200000, 0x2000, true), 0);
  EXPECT_EQ(ref.Space(0).EntryOf(vma, 0x201000)->marker, model::kPteMarkerUffdWp);
  EXPECT_EQ(ref.Zap(0, 0x200000, 0x2000), 1u);
  EXPECT_EQ(ref.Space(0).EntryOf(vma, 0x200000)->marker, model::kPteMarkerUffdWp);
  ASSERT_EQ(ref.Store(0, 0, 0x200008, 8), FaultResult::kOk);
  const std::vector<RefUffdEvent> events = ref.TakeEvents();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, UffdEvent::Kind::kWp);
  std::uint64_t value = 0;
  ASSERT_EQ(ref.Load(0, 0, 0x200000, &value), FaultResult::kOk);
  EXPECT_EQ(value, 7u);   // the page cache kept the data
  EXPECT_TRUE(ref.Space(0).EntryOf(vma, 0x200000)->writable);
}

}  // namespace
}  // namespace faultlab::model_check
