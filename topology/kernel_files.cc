#include "topology/kernel_files.h"

#include <fstream>
#include <iterator>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

namespace faultlab {

std::optional<std::string> ReadKernelFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(text));
}

std::optional<long> ReadKernelLong(const std::string& path) {
  std::optional<std::string> text = ReadKernelFile(path);
  long value = 0;
  if (!text || !absl::SimpleAtoi(*text, &value)) return std::nullopt;
  return value;
}

}  // namespace faultlab
