// Host-side checks of rwkv_relax/web_runtime's replacement headers (built and run by
// tests/test_webgpu.py with the host C++ compiler). The browser test covers the serializer
// against bytes the host TVM wrote; this covers the pieces a model run does not reach
// (base64, ring buffer, arena) and every fp16 bit pattern.
#include <builtin_fp16.h>
#include <tvm/support/io.h>
#include <tvm/support/serializer.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/support/arena.h"
#include "src/support/base64.h"
#include "src/support/bytes_io.h"
#include "src/support/ring_buffer.h"
#include "src/support/utils.h"

using namespace tvm;
using namespace tvm::support;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static void TestSerializer() {
  std::string bytes;
  BytesOutStream out(&bytes);
  out.Write(uint64_t{0x0102030405060708});
  out.Write(std::string("abc"));
  out.Write(std::vector<int32_t>{-1, 2});
  out.Write(DLDataType{kDLFloat, 32, 1});
  std::unordered_map<std::string, std::string> smap{{"k", "v"}};
  out.Write(smap);
  ffi::Map<ffi::String, ffi::Array<ffi::String>> fmap;
  fmap.Set("f", ffi::Array<ffi::String>{"x", "yz"});
  out.Write(fmap);
  // little-endian scalars, uint64 counts before strings and sequences
  const unsigned char head[] = {8, 7, 6, 5, 4, 3, 2, 1, 3, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 'c'};
  CHECK(bytes.size() > sizeof(head) && std::memcmp(bytes.data(), head, sizeof(head)) == 0);

  BytesInStream in(bytes);
  uint64_t u;
  std::string s;
  std::vector<int32_t> v;
  DLDataType t;
  std::unordered_map<std::string, std::string> smap2;
  ffi::Map<ffi::String, ffi::Array<ffi::String>> fmap2;
  CHECK(in.Read(&u) && u == 0x0102030405060708);
  CHECK(in.Read(&s) && s == "abc");
  CHECK(in.Read(&v) && v.size() == 2 && v[0] == -1 && v[1] == 2);
  CHECK(in.Read(&t) && t.code == kDLFloat && t.bits == 32 && t.lanes == 1);
  CHECK(in.Read(&smap2) && smap2 == smap);
  CHECK(in.Read(&fmap2) && fmap2.size() == 1 && fmap2["f"].size() == 2 && fmap2["f"][1] == "yz");
  CHECK(!in.Read(&u));  // end of stream
}

static void TestBase64() {
  for (int len = 0; len < 12; ++len) {
    std::string data;
    for (int i = 0; i < len; ++i) data.push_back(static_cast<char>(i * 37 + 200));
    std::string text;
    BytesOutStream text_out(&text);
    Base64OutStream enc(&text_out);
    enc.Write(data.data(), data.size());
    enc.Finish();
    CHECK(text.size() == static_cast<size_t>((len + 2) / 3 * 4));
    BytesInStream text_in(text);
    Base64InStream dec(&text_in);
    dec.InitPosition();
    std::string back(len + 1, '\0');
    CHECK(dec.Read(&back[0], back.size()) == static_cast<size_t>(len));
    CHECK(back.substr(0, len) == data);
  }
  std::string text;
  BytesOutStream text_out(&text);
  Base64OutStream enc(&text_out);
  enc.Write("Ma", 2);
  enc.Write("na", 2);
  enc.Finish();
  CHECK(text == "TWFuYQ==");  // RFC 4648 alphabet and padding
}

static void TestRingBuffer() {
  RingBuffer rb;
  uint8_t next_in = 0, next_out = 0;
  for (int round = 0; round < 3000; ++round) {
    uint8_t chunk[64];
    size_t n = (round * 7) % 50 + 1;
    for (size_t i = 0; i < n; ++i) chunk[i] = next_in++;
    if (round % 2) {
      rb.Write(chunk, n);
    } else {
      rb.WriteWithCallback([&](void* p, size_t room) { std::memcpy(p, chunk, n); return n; }, 64);
    }
    if (round % 4 == 1) rb.Reserve(300);
    size_t take = round % 5 == 0 ? rb.bytes_available() : rb.bytes_available() / 3;
    if (round % 3 == 0) {
      uint8_t got[256];
      rb.Read(got, take);
      for (size_t i = 0; i < take; ++i) CHECK(got[i] == next_out++);
    } else {
      rb.ReadWithCallback([&](const void* p, size_t avail) {
        size_t k = avail < take ? avail : take;
        for (size_t i = 0; i < k; ++i) CHECK(static_cast<const uint8_t*>(p)[i] == next_out++);
        return k;
      }, rb.bytes_available());
    }
  }
}

static void TestArenaAndUtils() {
  Arena arena;
  for (int i = 0; i < 500; ++i) std::memset(arena.allocate_<char>(i * 13), 1, i * 13);
  arena.RecycleAll();
  double* d = arena.allocate_<double>(3);
  CHECK(reinterpret_cast<uintptr_t>(d) % alignof(double) == 0);
  CHECK(StartsWith("RPCSessionTimeoutError: x", "RPCSessionTimeoutError: "));
  CHECK(!StartsWith("RPC", "RPCSession"));
  CHECK(IsNumber("-12") && IsNumber("7") && !IsNumber("1a") && !IsNumber("") && !IsNumber("-"));
}

static void TestHalfToFloat() {
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    float got = __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(static_cast<uint16_t>(h));
    _Float16 half;
    uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&half, &bits, 2);
    float want = static_cast<float>(half);
    bool same = std::isnan(want) ? std::isnan(got) : std::memcmp(&got, &want, 4) == 0;
    bad += !same;
  }
  CHECK(bad == 0);
}

int main() {
  TestSerializer();
  TestBase64();
  TestRingBuffer();
  TestArenaAndUtils();
  TestHalfToFloat();
  std::printf("%s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
