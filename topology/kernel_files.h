// Reading the kernel's one-value files under /proc and /sys (nr_hugepages, THP modes, ...).
#pragma once

#include <optional>
#include <string>

namespace faultlab {

// The file's text without surrounding white space; nullopt if it cannot be read.
std::optional<std::string> ReadKernelFile(const std::string& path);

// The file as one whole number; nullopt if it cannot be read or holds anything else.
std::optional<long> ReadKernelLong(const std::string& path);

// Files such as transparent_hugepage/enabled read "always [madvise] never" and take "madvise":
// the bracketed word is the value, and the only form that can be written back. Text without
// brackets is returned as it is.
std::string SelectedChoice(const std::string& text);

// ReadKernelFile, then SelectedChoice.
std::optional<std::string> ReadKernelChoice(const std::string& path);

}  // namespace faultlab
