/*
 * rwkv_relax: replacement for TVM's src/support/base64.h (missing from the wheel). Base64
 * encoding/decoding Streams layered on another Stream; the runtime uses them only for a
 * Tensor's JSON form.
 */
#ifndef RWKV_RELAX_SUPPORT_BASE64_H_
#define RWKV_RELAX_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
/*! \return the 6-bit value of c, or -1 when c is not in the alphabet */
inline int Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

/*! \brief Encodes what is written into base64 text on `out`; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  explicit Base64OutStream(Stream* out) : out_(out) {}

  using Stream::Read;
  using Stream::Write;
  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    const auto* p = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[fill_++] = p[i];
      if (fill_ == 3) EmitGroup();
    }
    return size;
  }
  /*! \brief Pad and flush the last partial group. */
  void Finish() {
    if (fill_ != 0) EmitGroup();
  }

 private:
  void EmitGroup() {
    const char* abc = base64::Alphabet();
    uint32_t bits = (uint32_t(group_[0]) << 16) | (uint32_t(fill_ > 1 ? group_[1] : 0) << 8) |
                    uint32_t(fill_ > 2 ? group_[2] : 0);
    char text[4] = {abc[(bits >> 18) & 63], abc[(bits >> 12) & 63],
                    fill_ > 1 ? abc[(bits >> 6) & 63] : '=', fill_ > 2 ? abc[bits & 63] : '='};
    out_->Write(text, 4);
    fill_ = 0;
  }
  Stream* out_;
  uint8_t group_[3] = {0, 0, 0};
  size_t fill_ = 0;
};

/*! \brief Decodes base64 text read from `in` (whitespace ignored). InitPosition() decodes the
 *  whole input at once; reads are then served from memory. */
class Base64InStream : public Stream {
 public:
  explicit Base64InStream(Stream* in) : in_(in) {}

  void InitPosition() {
    decoded_.clear();
    pos_ = 0;
    uint32_t bits = 0;
    int nbits = 0;
    char c;
    while (in_->Read(&c, 1) == 1) {
      if (c == '=') break;
      int v = base64::Value(c);
      if (v < 0) continue;  // whitespace / line breaks
      bits = (bits << 6) | uint32_t(v);
      nbits += 6;
      if (nbits >= 8) {
        nbits -= 8;
        decoded_.push_back(static_cast<char>((bits >> nbits) & 0xFF));
      }
    }
  }

  using Stream::Read;
  using Stream::Write;
  size_t Read(void* ptr, size_t size) final {
    size_t n = decoded_.size() - pos_ < size ? decoded_.size() - pos_ : size;
    if (n != 0) std::memcpy(ptr, decoded_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) final { return 0; }

 private:
  Stream* in_;
  std::string decoded_;
  size_t pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_SUPPORT_BASE64_H_
