/*
 * rwkv_relax: replacement for TVM's src/support/arena.h (missing from the wheel). A bump
 * allocator for the RPC endpoint's temporary buffers: allocate_<T>(n), then RecycleAll().
 */
#ifndef RWKV_RELAX_SUPPORT_ARENA_H_
#define RWKV_RELAX_SUPPORT_ARENA_H_

#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /*! \brief Room for `count` trivially-destructible Ts, valid until RecycleAll(). */
  template <typename T>
  T* allocate_(int count = 1) {
    static_assert(std::is_trivially_destructible<T>::value, "the arena never runs destructors");
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count < 0 ? 0 : count)));
  }

  /*! \brief Forget every allocation; keeps the first block for reuse. */
  void RecycleAll() {
    if (blocks_.size() > 1) blocks_.resize(1);
    used_ = 0;
  }

 private:
  static constexpr size_t kAlign = alignof(std::max_align_t);
  static constexpr size_t kBlock = 64 * 1024;

  struct Block {
    std::unique_ptr<std::max_align_t[]> data;
    size_t size;
  };

  void* Alloc(size_t nbytes) {
    nbytes = (nbytes + kAlign - 1) / kAlign * kAlign;
    if (blocks_.empty() || used_ + nbytes > blocks_.back().size) {
      size_t size = nbytes > kBlock ? nbytes : kBlock;
      blocks_.push_back(Block{std::unique_ptr<std::max_align_t[]>(
                                  new std::max_align_t[size / sizeof(std::max_align_t) + 1]),
                              size});
      used_ = 0;
    }
    char* base = reinterpret_cast<char*>(blocks_.back().data.get());
    void* out = base + used_;
    used_ += nbytes;
    return out;
  }

  std::vector<Block> blocks_;
  size_t used_ = 0;  // bytes used in blocks_.back()
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_SUPPORT_ARENA_H_
