#include "bench/mm_probe.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace faultlab {

std::vector<uint64_t> ReadPagemap(const void* addr, std::size_t len) {
  const std::size_t first = reinterpret_cast<uintptr_t>(addr) / 4096;
  const std::size_t count = (len + 4095) / 4096;
  std::vector<uint64_t> entries(count);
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::size_t done = 0;
  while (done < count) {
    ssize_t n = pread(fd, entries.data() + done, (count - done) * sizeof(uint64_t),
                      static_cast<off_t>((first + done) * sizeof(uint64_t)));
    if (n <= 0) break;
    done += static_cast<std::size_t>(n) / sizeof(uint64_t);
  }
  close(fd);
  if (done != count) return {};
  return entries;
}

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

std::size_t CountPresent(const std::vector<uint64_t>& pagemap) {
  std::size_t present = 0;
  for (uint64_t e : pagemap) present += PagemapPresent(e);
  return present;
}

std::map<std::string, long> SmapsOf(const void* addr) {
  const auto target = reinterpret_cast<uintptr_t>(addr);
  std::ifstream smaps("/proc/self/smaps");
  std::map<std::string, long> fields;
  bool inside = false;
  std::string line;
  while (std::getline(smaps, line)) {
    unsigned long start = 0, end = 0;
    // A VMA header line starts with "start-end perms"; field lines start with "Name:".
    if (std::sscanf(line.c_str(), "%lx-%lx ", &start, &end) == 2 &&
        line.find(':') > line.find(' ')) {
      if (inside) break;
      inside = target >= start && target < end;
      continue;
    }
    if (!inside) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream value(line.substr(colon + 1));
    long kb = 0;
    if (value >> kb) fields[line.substr(0, colon)] = kb;
  }
  return fields;
}

long SmapsField(const std::map<std::string, long>& smaps, const std::string& name) {
  const auto it = smaps.find(name);
  return it == smaps.end() ? -1 : it->second;
}

}  // namespace faultlab
