/*
 * rwkv_relax: replacement for TVM's 3rdparty/compiler-rt/builtin_fp16.h (missing from the
 * wheel). The runtime's sort kernel widens IEEE half floats with
 * __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(bits); this is a generic
 * exact widening between binary floating-point formats (zero, subnormal, normal, inf, NaN).
 */
#ifndef RWKV_RELAX_BUILTIN_FP16_H_
#define RWKV_RELAX_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T,
          typename DST_REP_T, int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_REP_T a) {
  static_assert(DST_SIG_BITS >= SRC_SIG_BITS, "only widening is supported");
  constexpr int kSrcBits = 8 * sizeof(SRC_REP_T), kDstBits = 8 * sizeof(DST_REP_T);
  constexpr int kSrcExpBits = kSrcBits - SRC_SIG_BITS - 1, kDstExpBits = kDstBits - DST_SIG_BITS - 1;
  constexpr int64_t kSrcBias = (int64_t(1) << (kSrcExpBits - 1)) - 1;
  constexpr int64_t kDstBias = (int64_t(1) << (kDstExpBits - 1)) - 1;
  constexpr uint64_t kSrcExpMax = (uint64_t(1) << kSrcExpBits) - 1;
  constexpr uint64_t kDstExpMax = (uint64_t(1) << kDstExpBits) - 1;
  constexpr uint64_t kSrcSigMask = (uint64_t(1) << SRC_SIG_BITS) - 1;
  constexpr int kShift = DST_SIG_BITS - SRC_SIG_BITS;

  const uint64_t bits = static_cast<uint64_t>(a);
  const uint64_t sign = (bits >> (kSrcBits - 1)) & 1;
  uint64_t exp = (bits >> SRC_SIG_BITS) & kSrcExpMax;
  uint64_t sig = bits & kSrcSigMask;
  uint64_t out_exp, out_sig;
  if (exp == kSrcExpMax) {  // inf / NaN keep their payload
    out_exp = kDstExpMax;
    out_sig = sig << kShift;
  } else if (exp == 0 && sig == 0) {
    out_exp = 0;
    out_sig = 0;
  } else if (exp == 0) {  // subnormal source: normalize (always normal in the wider format)
    int64_t e = 1 - kSrcBias;
    while ((sig & (uint64_t(1) << SRC_SIG_BITS)) == 0) {
      sig <<= 1;
      --e;
    }
    out_exp = static_cast<uint64_t>(e + kDstBias);
    out_sig = (sig & kSrcSigMask) << kShift;
  } else {
    out_exp = static_cast<uint64_t>(static_cast<int64_t>(exp) - kSrcBias + kDstBias);
    out_sig = sig << kShift;
  }
  const DST_REP_T out = static_cast<DST_REP_T>((sign << (kDstBits - 1)) | (out_exp << DST_SIG_BITS) | out_sig);
  DST_T result;
  std::memcpy(&result, &out, sizeof(result));
  return result;
}

#endif  // RWKV_RELAX_BUILTIN_FP16_H_
