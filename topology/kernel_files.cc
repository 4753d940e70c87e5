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

std::string SelectedChoice(const std::string& text) {
  const std::size_t open = text.find('[');
  const std::size_t close = text.find(']', open);
  if (open == std::string::npos || close == std::string::npos) return text;
  return text.substr(open + 1, close - open - 1);
}

std::optional<std::string> ReadKernelChoice(const std::string& path) {
  std::optional<std::string> text = ReadKernelFile(path);
  if (!text) return std::nullopt;
  return SelectedChoice(*text);
}

}  // namespace faultlab
