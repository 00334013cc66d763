/*
 * rwkv_relax: minimal replacement for <tvm/support/serializer.h> (missing from the wheel).
 *
 * The byte layout must equal what the host TVM writes when it packs a model library (the VM
 * executable, the WebGPU module's function table): scalars as their little-endian bytes,
 * strings and sequences as a uint64 count followed by the elements, maps as a count followed by
 * key/value pairs, DLDataType as u8 code, u8 bits, u16 lanes, DLDevice as two int32.
 * wasm32 is little-endian, so no byte swapping is done (checked below).
 */
#ifndef RWKV_RELAX_TVM_SUPPORT_SERIALIZER_H_
#define RWKV_RELAX_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "rwkv_relax's serializer writes raw little-endian bytes");

namespace tvm {
namespace support {

namespace detail {
inline void WriteCount(Stream* strm, size_t n) {
  uint64_t count = static_cast<uint64_t>(n);
  strm->Write(&count, sizeof(count));
}
inline bool ReadCount(Stream* strm, uint64_t* n) { return strm->Read(n, sizeof(*n)) == sizeof(*n); }
}  // namespace detail

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const T& v) { strm->Write(&v, sizeof(T)); }
  static bool Read(Stream* strm, T* v) { return strm->Read(v, sizeof(T)) == sizeof(T); }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using Int = std::underlying_type_t<T>;
  static void Write(Stream* strm, const T& v) { Serializer<Int>::Write(strm, static_cast<Int>(v)); }
  static bool Read(Stream* strm, T* v) {
    Int raw;
    if (!Serializer<Int>::Read(strm, &raw)) return false;
    *v = static_cast<T>(raw);
    return true;
  }
};

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) {
    detail::WriteCount(strm, s.size());
    if (!s.empty()) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, std::string* s) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    s->resize(static_cast<size_t>(n));
    return n == 0 || strm->Read(&(*s)[0], s->size()) == s->size();
  }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) {
    detail::WriteCount(strm, s.size());
    if (s.size() != 0) strm->Write(s.data(), s.size());
  }
  static bool Read(Stream* strm, ffi::String* s) {
    std::string tmp;
    if (!Serializer<std::string>::Read(strm, &tmp)) return false;
    *s = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* p) {
    return Serializer<A>::Read(strm, &p->first) && Serializer<B>::Read(strm, &p->second);
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T>& v) {
    detail::WriteCount(strm, v.size());
    for (const T& x : v) Serializer<T>::Write(strm, x);
  }
  static bool Read(Stream* strm, std::vector<T>* v) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    v->resize(static_cast<size_t>(n));
    for (T& x : *v) {
      if (!Serializer<T>::Read(strm, &x)) return false;
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V>& m) {
    detail::WriteCount(strm, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, std::unordered_map<K, V>* m) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    m->clear();
    for (uint64_t i = 0; i < n; ++i) {
      std::pair<K, V> kv;
      if (!Serializer<std::pair<K, V>>::Read(strm, &kv)) return false;
      m->insert(std::move(kv));
    }
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& a) {
    detail::WriteCount(strm, a.size());
    for (size_t i = 0; i < a.size(); ++i) Serializer<T>::Write(strm, a[i]);
  }
  static bool Read(Stream* strm, ffi::Array<T>* a) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Array<T> out;
    for (uint64_t i = 0; i < n; ++i) {
      T x;
      if (!Serializer<T>::Read(strm, &x)) return false;
      out.push_back(std::move(x));
    }
    *a = std::move(out);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& m) {
    detail::WriteCount(strm, m.size());
    for (const auto& kv : m) {
      Serializer<K>::Write(strm, kv.first);
      Serializer<V>::Write(strm, kv.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* m) {
    uint64_t n;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Map<K, V> out;
    for (uint64_t i = 0; i < n; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &value)) return false;
      out.Set(std::move(key), std::move(value));
    }
    *m = std::move(out);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& t) {
    Serializer<uint8_t>::Write(strm, t.code);
    Serializer<uint8_t>::Write(strm, t.bits);
    Serializer<uint16_t>::Write(strm, t.lanes);
  }
  static bool Read(Stream* strm, DLDataType* t) {
    return Serializer<uint8_t>::Read(strm, &t->code) && Serializer<uint8_t>::Read(strm, &t->bits) &&
           Serializer<uint16_t>::Read(strm, &t->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& d) {
    Serializer<int32_t>::Write(strm, static_cast<int32_t>(d.device_type));
    Serializer<int32_t>::Write(strm, d.device_id);
  }
  static bool Read(Stream* strm, DLDevice* d) {
    int32_t type;
    if (!Serializer<int32_t>::Read(strm, &type)) return false;
    d->device_type = static_cast<DLDeviceType>(type);
    return Serializer<int32_t>::Read(strm, &d->device_id);
  }
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_TVM_SUPPORT_SERIALIZER_H_
