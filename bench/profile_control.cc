#include "bench/profile_control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

namespace faultlab {
namespace {

// How long perf may take to acknowledge a switch; it answers in microseconds when alive.
constexpr int kAckTimeoutMs = 10'000;

struct ProfileControl {
  int ctl = -1;
  int ack = -1;
  bool enabled = false;  // perf is recording
  bool broken = false;   // a switch failed: the rest of the run is left as it is
  int next_index = 0;    // the index of the benchmark's next repetition
  std::vector<int> recorded;
  std::string comm;      // the name the run's threads have while recorded
};

ProfileControl& Control() {
  static ProfileControl control;
  return control;
}

// Sends `command` and waits for perf's "ack"; false (and says why, once) if either fails.
bool Send(const char* command) {
  ProfileControl& control = Control();
  const std::string line = std::string(command) + "\n";
  std::string why;
  if (write(control.ctl, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    why = std::string("cannot write to it: ") + std::strerror(errno);
  }
  // perf answers "ack\n" (and a NUL) on the ACK FIFO.
  for (std::string answer; why.empty() && answer.find('\n') == std::string::npos;) {
    pollfd ready{control.ack, POLLIN, 0};
    const int polled = poll(&ready, 1, kAckTimeoutMs);
    if (polled < 0 && errno == EINTR) continue;
    if (polled <= 0) {
      why = "perf did not acknowledge '" + std::string(command) + "' within " +
            std::to_string(kAckTimeoutMs / 1000) + " s";
      break;
    }
    char buffer[16];
    const ssize_t n = read(control.ack, buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      why = n == 0 ? "perf closed it" : std::string("cannot read its answer: ") + std::strerror(errno);
      break;
    }
    answer.append(buffer, static_cast<std::size_t>(n));
  }
  if (why.empty()) return true;
  control.broken = true;
  std::cerr << "faultlab: perf's control FIFO: " << why
            << "; recording is no longer switched for the rest of the run\n";
  return false;
}

void BeforeRepetition(const benchmark::State&) {
  ProfileControl& control = Control();
  const int index = control.next_index++;
  if (control.ctl < 0 || control.broken || !RecordedRepetition(index)) return;
  if (Send("enable")) {
    control.enabled = true;
    control.recorded.push_back(index);
  }
}

void AfterRepetition(const benchmark::State&) {
  ProfileControl& control = Control();
  if (!control.enabled) return;
  control.enabled = false;
  Send("disable");
}

}  // namespace

std::optional<std::string> StartProfileControl() {
  const char* fifos = std::getenv("FAULTLAB_PERF_CONTROL");
  if (fifos == nullptr) return std::nullopt;
  const std::string value = fifos;
  const std::size_t comma = value.find(',');
  if (comma == std::string::npos || comma == 0 || comma + 1 == value.size()) {
    return "FAULTLAB_PERF_CONTROL: '" + value + "' is not CTL_FIFO,ACK_FIFO";
  }
  const std::string ctl = value.substr(0, comma), ack = value.substr(comma + 1);
  ProfileControl& control = Control();
  // perf record opens both FIFOs before it starts faultlab; non-blocking opens fail (ENXIO)
  // rather than wait if it did not.
  control.ctl = open(ctl.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (control.ctl < 0) return "FAULTLAB_PERF_CONTROL: " + ctl + ": " + std::strerror(errno);
  control.ack = open(ack.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (control.ack < 0) {
    const std::string why = "FAULTLAB_PERF_CONTROL: " + ack + ": " + std::strerror(errno);
    close(control.ctl);
    control.ctl = -1;
    return why;
  }
  // A name of this run's own for its threads and the children they fork (they inherit it), so
  // that the reports keep this run's samples of the system-wide profile and not those of another
  // faultlab running beside it (at most 15 characters: a pid is at most 0x400000).
  char comm[16];
  std::snprintf(comm, sizeof(comm), "faultlab-%x", static_cast<unsigned>(getpid()));
  prctl(PR_SET_NAME, comm);
  control.comm = comm;
  return std::nullopt;
}

std::string ProfileComm() { return Control().comm; }

bool ProfileControlActive() { return Control().ctl >= 0; }

bool RecordedRepetition(int index) { return index % 4 == 1 || index % 4 == 2; }

benchmark::internal::Benchmark* Configure(benchmark::internal::Benchmark* benchmark,
                                         int64_t iterations, int repetitions) {
  benchmark->Iterations(iterations)->UseManualTime()->Unit(benchmark::kNanosecond);
  if (!ProfileControlActive()) return benchmark->Repetitions(repetitions);
  return benchmark->Repetitions(2 * repetitions)
      ->Setup(BeforeRepetition)
      ->Teardown(AfterRepetition);
}

std::vector<int> TakeRecordedRepetitions() {
  ProfileControl& control = Control();
  std::vector<int> recorded;
  recorded.swap(control.recorded);
  control.next_index = 0;
  return recorded;
}

}  // namespace faultlab
