/*
 * rwkv_relax: replacement for TVM's src/support/ring_buffer.h (missing from the wheel). The
 * RPC endpoint's byte queue. Kept as one contiguous region [head, tail) of a growable buffer
 * (compacted when it would grow), which is all the RPC code needs.
 */
#ifndef RWKV_RELAX_SUPPORT_RING_BUFFER_H_
#define RWKV_RELAX_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  size_t bytes_available() const { return tail_ - head_; }

  /*! \brief Make room for at least n bytes in total without further allocation. */
  void Reserve(size_t n) { MakeRoom(n > bytes_available() ? n - bytes_available() : 0); }

  /*! \brief Pop exactly `size` bytes (the caller checked bytes_available()). */
  void Read(void* data, size_t size) {
    size = std::min(size, bytes_available());
    std::memcpy(data, buf_.data() + head_, size);
    Consume(size);
  }

  void Write(const void* data, size_t size) {
    MakeRoom(size);
    std::memcpy(buf_.data() + tail_, data, size);
    tail_ += size;
  }

  /*! \brief Hand up to max_nbytes queued bytes to frecv(const void*, size_t) -> bytes taken. */
  template <typename FRecv>
  size_t ReadWithCallback(FRecv frecv, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, bytes_available());
    if (n == 0) return 0;
    size_t taken = frecv(buf_.data() + head_, n);
    Consume(std::min(taken, n));
    return taken;
  }

  /*! \brief Let fsend(void*, size_t) -> bytes produced fill up to max_nbytes at the tail. */
  template <typename FSend>
  size_t WriteWithCallback(FSend fsend, size_t max_nbytes) {
    MakeRoom(max_nbytes);
    size_t n = fsend(buf_.data() + tail_, max_nbytes);
    tail_ += std::min(n, max_nbytes);
    return n;
  }

 private:
  void Consume(size_t n) {
    head_ += n;
    if (head_ == tail_) head_ = tail_ = 0;
  }
  void MakeRoom(size_t extra) {
    if (tail_ + extra <= buf_.size()) return;
    if (head_ != 0) {  // slide the live bytes to the front first
      std::memmove(buf_.data(), buf_.data() + head_, tail_ - head_);
      tail_ -= head_;
      head_ = 0;
    }
    if (tail_ + extra > buf_.size()) buf_.resize(std::max(tail_ + extra, 2 * buf_.size()));
  }

  std::vector<char> buf_;
  size_t head_ = 0, tail_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_SUPPORT_RING_BUFFER_H_
