// What the library's custom ops share: the runtime's API table, kernel-set selection, reading input tensors,
// names for messages, and the parts of an OrtCustomOp description that are the same for every op.
#ifndef BITCONV_ORT_OP_SUPPORT_H_
#define BITCONV_ORT_OP_SUPPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"
#include "ort_abi.h"

namespace bitconv {

constexpr const char* kDomain = "bitconv";

// The API table and the version it was obtained for, set once by RegisterCustomOps (register.cc). Ops use the
// version to know whether KernelContext_ParallelFor (API 17) exists.
struct Api {
  const OrtApi* ort = nullptr;
  uint32_t version = 0;
};
extern Api g_api;

// The kernel set for this CPU, or the one BITCONV_ORT_ISA=scalar|avx2|avx512 forces (tests exercise each); read
// when a session creates a kernel, so a process can run sessions on different paths. False + *error if forced to
// a set the CPU lacks or to an unknown name.
bool select_kernels(KernelSet* out, std::string* error);

struct Tensor {
  ONNXTensorElementDataType dtype = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  const void* data = nullptr;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
};

OrtStatus* read_tensor(const OrtApi* api, const OrtValue* value, Tensor* out);
std::string shape_str(const std::vector<int64_t>& dims);
const char* dtype_name(ONNXTensorElementDataType t);
std::string node_name(const OrtApi* api, const OrtKernelInfo* info);  // "?" when the runtime cannot say

// Callbacks every op fills the same way: CPU execution provider, default memory, no variadic inputs, opset range,
// one required float32 output.
void fill_common_callbacks(OrtCustomOp* op, uint32_t version);

// What every kernel object holds: the API table, its op type and node name, for messages.
struct KernelBase {
  const OrtApi* api = nullptr;
  const char* op_type = "";
  std::string node;

  // ORT_INVALID_ARGUMENT "<op type> node '<node>': <what>"
  OrtStatus* error(const std::string& what) const;
};

// Inside a catch block: the exception being handled as an ORT_FAIL status named after the op, so no C++
// exception unwinds into the runtime ("<op type>: out of memory<context>" or "<op type>: <what()>").
OrtStatus* status_from_exception(const OrtApi* api, const char* op_type, const char* context = "") noexcept;

// KernelComputeV2 and KernelDestroy for a kernel type K (a KernelBase with OrtStatus* compute(ctx)).
template <typename K>
OrtStatus* compute_kernel(void* kernel, OrtKernelContext* ctx) noexcept {
  auto* k = static_cast<K*>(kernel);
  try {
    return k->compute(ctx);
  } catch (...) {
    return status_from_exception(k->api, k->op_type);
  }
}
template <typename K>
void destroy_kernel(void* kernel) noexcept {
  delete static_cast<K*>(kernel);
}

// The ops of this library, described for the API `version` (16 or 17); the structs live for the process.
const OrtCustomOp* ternary_matmul_op(uint32_t version);
const OrtCustomOp* half_matmul_op(uint32_t version);

}  // namespace bitconv

#endif  // BITCONV_ORT_OP_SUPPORT_H_
