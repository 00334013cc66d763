/*
 * rwkv_relax: replacement for <tvm/support/cuda/nvtx.h> (missing from the wheel). There is no
 * NVTX in a browser: the profiling range is a no-op.
 */
#ifndef RWKV_RELAX_TVM_SUPPORT_CUDA_NVTX_H_
#define RWKV_RELAX_TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};

}  // namespace support
}  // namespace tvm

#endif  // RWKV_RELAX_TVM_SUPPORT_CUDA_NVTX_H_
