// The harness pieces every suite leans on: the barrier (threads and forked processes), the
// exactly-once arrival, nearest-rank percentiles, counter totals, and work in a forked child.

#include "bench/harness.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <new>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace faultlab {
namespace {

TEST(SpinBarrier, NoThreadPassesBeforeAllArriveAndItIsReusable) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  SpinBarrier barrier;
  std::atomic<int> arrived{0};
  std::atomic<bool> early{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int r = 0; r < kRounds; ++r) {
        arrived.fetch_add(1);
        barrier.Wait(kThreads);
        // Everyone of this round has arrived before anyone gets here.
        if (arrived.load() < (r + 1) * kThreads) early = true;
        barrier.Wait(kThreads);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(early.load());
  EXPECT_EQ(arrived.load(), kThreads * kRounds);
}

TEST(SpinBarrier, WorksBetweenForkedProcessesInSharedMemory) {
  void* shared = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(shared, MAP_FAILED);
  auto* barrier = new (shared) SpinBarrier();
  auto* counter = new (static_cast<char*>(shared) + 64) std::atomic<int>(0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    counter->fetch_add(1);
    barrier->Wait(2);
    _exit(0);
  }
  barrier->Wait(2);
  // The child incremented before it arrived, so after the barrier its increment is visible.
  EXPECT_EQ(counter->load(), 1);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  munmap(shared, 4096);
}

TEST(BarrierArrival, AWorkerThatLeavesEarlyStillReleasesTheOthers) {
  SpinBarrier barrier;
  std::thread failing([&] {
    BarrierArrival arrival(&barrier, 2);
    // Returns before calling Arrive(): the destructor must arrive for it.
  });
  BarrierArrival arrival(&barrier, 2);
  arrival.Arrive();  // would spin forever if the failing worker never arrived
  arrival.Arrive();  // a second call is a no-op
  failing.join();
  SUCCEED();
}

TEST(Summarize, NearestRankPercentilesAreSamplesThatOccurred) {
  std::vector<double> ns;
  for (int i = 1; i <= 1000; ++i) ns.push_back(1001 - i);  // 1000..1, unsorted
  const LatencySummary s = Summarize(ns);
  EXPECT_EQ(s.count, 1000u);
  EXPECT_DOUBLE_EQ(s.mean, 500.5);
  EXPECT_DOUBLE_EQ(s.p50, 500);
  EXPECT_DOUBLE_EQ(s.p90, 900);
  EXPECT_DOUBLE_EQ(s.p99, 990);
  EXPECT_DOUBLE_EQ(s.p999, 999);
  EXPECT_DOUBLE_EQ(s.max, 1000);
}

TEST(Summarize, EmptyAndSingleSample) {
  std::vector<double> none;
  EXPECT_EQ(Summarize(none).count, 0u);
  std::vector<double> one = {42};
  const LatencySummary s = Summarize(one);
  EXPECT_DOUBLE_EQ(s.p50, 42);
  EXPECT_DOUBLE_EQ(s.p999, 42);
  EXPECT_DOUBLE_EQ(s.max, 42);
}

TEST(CounterTotals, AddsDeltasAndMerges) {
  CounterTotals a;
  a.names = {"page-faults", "minor-faults"};
  a.Add({10, 5}, {110, 105});
  a.Add({200, 200}, {250, 260});
  ASSERT_EQ(a.sums.size(), 2u);
  EXPECT_DOUBLE_EQ(a.sums[0], 150);
  EXPECT_DOUBLE_EQ(a.sums[1], 160);
  CounterTotals b;
  b.Merge(a);
  b.Merge(a);
  EXPECT_EQ(b.names, a.names);
  EXPECT_DOUBLE_EQ(b.sums[0], 300);
}

TEST(RunInChild, ReturnsWhatTheChildSentWholePastThePipesBuffer) {
  std::string expected(1 << 20, '\0');
  for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<char>(i * 7);
  const ChildOutcome child = RunInChild([&] { return expected; }, 60, "the test's copy");
  EXPECT_EQ(child.error, "");
  EXPECT_TRUE(child.output == expected) << child.output.size() << " bytes back";
}

TEST(RunInChild, AChildThatFailsGivesWhyAndNoOutput) {
  const ChildOutcome exited = RunInChild([]() -> std::string { _exit(3); }, 60, "exit");
  EXPECT_EQ(exited.error, "the measuring child exited with status 3");
  EXPECT_EQ(exited.output, "");
  const ChildOutcome killed = RunInChild(
      []() -> std::string {
        kill(getpid(), SIGKILL);
        return "never sent";
      },
      60, "kill");
  EXPECT_EQ(killed.error, "the measuring child was killed by signal 9");
  EXPECT_EQ(killed.output, "");
}

// A child past its time is killed and reaped: the row fails, the run goes on, no process stays.
TEST(RunInChild, AChildPastItsTimeIsKilledAndReaped) {
  auto* child_pid = static_cast<std::atomic<pid_t>*>(
      mmap(nullptr, sizeof(std::atomic<pid_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(child_pid, MAP_FAILED);
  new (child_pid) std::atomic<pid_t>(0);
  const ChildOutcome child = RunInChild(
      [&]() -> std::string {
        child_pid->store(getpid());
        // Sends nothing and never ends on its own, as a call stuck in the kernel would.
        for (;;) pause();
      },
      1, "the test's sleep");
  EXPECT_EQ(child.error, "the measuring child did not finish the test's sleep within 1 s: killed");
  EXPECT_EQ(child.output, "");
  const pid_t pid = child_pid->load();
  ASSERT_GT(pid, 0);
  EXPECT_EQ(kill(pid, 0), -1);  // reaped: not even a zombie
  EXPECT_EQ(errno, ESRCH);
  munmap(child_pid, sizeof(std::atomic<pid_t>));
}

}  // namespace
}  // namespace faultlab
