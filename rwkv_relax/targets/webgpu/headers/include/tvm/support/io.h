/*
 * rwkv_relax: minimal replacement for <tvm/support/io.h>, which the apache-tvm wheel does not
 * ship. Only what TVM's web runtime sources (web/emcc/*.cc and the runtime files they include)
 * use: an abstract byte stream whose typed Read/Write go through Serializer<T>.
 */
#ifndef RWKV_RELAX_TVM_SUPPORT_IO_H_
#define RWKV_RELAX_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

/*! \brief How a T goes to and from a Stream. Specialized in serializer.h and by TVM headers
 *  (FunctionInfo, VMFuncInfo); the second parameter lets families be enabled by trait. */
template <typename T, typename Enable = void>
struct Serializer {
  static constexpr bool enabled = false;
};

class Stream {
 public:
  virtual ~Stream() = default;
  /*! \return bytes actually read (short at end of stream) */
  virtual size_t Read(void* ptr, size_t size) = 0;
  virtual size_t Write(const void* ptr, size_t size) = 0;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "no Serializer<T> for this type");
    Serializer<T>::Write(this, value);
  }
  template <typename T>
  bool Read(T* out) {
    static_assert(Serializer<T>::enabled, "no Serializer<T> for this type");
    return Serializer<T>::Read(this, out);
  }
  template <typename T>
  void WriteArray(const T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) Write<T>(data[i]);
  }
  template <typename T>
  bool ReadArray(T* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (!Read<T>(data + i)) return false;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_TVM_SUPPORT_IO_H_
