/*
 * rwkv_relax: replacement for TVM's src/support/utils.h (missing from the wheel): the string
 * helpers the runtime sources call.
 */
#ifndef RWKV_RELAX_SUPPORT_UTILS_H_
#define RWKV_RELAX_SUPPORT_UTILS_H_

#include <cctype>
#include <cstring>
#include <string>
#include <vector>

namespace tvm {
namespace support {

inline bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

inline bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/*! \brief True for a non-empty run of decimal digits with an optional leading sign. */
inline bool IsNumber(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

inline std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_SUPPORT_UTILS_H_
