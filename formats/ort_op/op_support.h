// What the library's custom ops share: the runtime's API table, kernel-set selection, reading input tensors,
// names for messages, and the parts of an OrtCustomOp description that are the same for every op.
#ifndef BITCONV_ORT_OP_SUPPORT_H_
#define BITCONV_ORT_OP_SUPPORT_H_

#include <cstdint>
#include <memory>
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

// CreateKernelV2 for kernel type K: a K with the API table, op type and node name, set up by init(kernel) (which
// returns an error status or null); exceptions become statuses, as in compute_kernel.
template <typename K, typename Init>
OrtStatus* create_kernel_with(const OrtApi* api, const OrtKernelInfo* info, const char* op_type, void** out,
                              const Init& init) noexcept {
  try {
    std::unique_ptr<K> kernel(new K());
    kernel->api = api;
    kernel->op_type = op_type;
    kernel->node = node_name(api, info);
    if (OrtStatus* st = init(*kernel)) return st;
    *out = kernel.release();
    return nullptr;
  } catch (...) {
    return status_from_exception(api, op_type, " creating the kernel");
  }
}

// The inputs of one run into in[0..n_max) (present[i] false for an omitted optional input): n_required to n_max
// of them, the first n_required given. `expects` says what the op takes, for the message on a wrong count.
OrtStatus* read_inputs(const KernelBase& kernel, OrtKernelContext* ctx, const char* const* names, size_t n_required,
                       size_t n_max, const char* expects, Tensor* in, bool* present);

// Y = A @ W^T shapes: W a non-empty matrix [N, K], A [..., K] with at least one row and no empty dimension.
OrtStatus* check_product_shapes(const KernelBase& kernel, const Tensor& A, const Tensor& W);

// The float32 output Y [..., N] of a product with A [..., K], allocated by the runtime.
OrtStatus* product_output(const OrtApi* api, OrtKernelContext* ctx, const Tensor& A, int64_t N, float** y);

// fn(n0, n1) for output columns [0, N) in tasks of `columns`, on the session's intra-op pool (API 17); with one
// intra-op thread, or API 16, the tasks run inline.
template <typename Fn>
OrtStatus* parallel_columns(const OrtApi* api, OrtKernelContext* ctx, int64_t N, int64_t columns, const Fn& fn) {
  struct Task {
    const Fn* fn;
    int64_t N, columns;
    static void run(void* user, size_t index) {
      const Task& t = *static_cast<const Task*>(user);
      const int64_t n0 = static_cast<int64_t>(index) * t.columns;
      (*t.fn)(n0, n0 + t.columns < t.N ? n0 + t.columns : t.N);
    }
  } task{&fn, N, columns};
  const size_t n_tasks = static_cast<size_t>((N + columns - 1) / columns);
  if (g_api.version >= 17) return api->KernelContext_ParallelFor(ctx, Task::run, n_tasks, 0, &task);
  for (size_t i = 0; i < n_tasks; ++i) Task::run(&task, i);
  return nullptr;
}

// The OrtCustomOp of a matrix-product kernel type K (a KernelBase with compute(ctx)) created by `create`: op type
// K::kOpType, inputs A (float32), W (K::kWeightType), then float32 ones, K::kRequiredInputs of K::kInputs
// required and the rest optional; one float32 output.
template <typename K>
const OrtCustomOp* describe_op(OrtCustomOp* op, uint32_t version,
                               OrtStatus* (*create)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*,
                                                    void**) noexcept) {
  *op = OrtCustomOp{};
  fill_common_callbacks(op, version);
  op->GetName = [](const OrtCustomOp*) { return K::kOpType; };
  op->GetInputType = [](const OrtCustomOp*, size_t index) {
    return index == 1 ? K::kWeightType : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op->GetInputTypeCount = [](const OrtCustomOp*) { return K::kInputs; };
  op->GetInputCharacteristic = [](const OrtCustomOp*, size_t index) {
    return index < K::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  op->KernelDestroy = destroy_kernel<K>;
  op->CreateKernelV2 = create;
  op->KernelComputeV2 = compute_kernel<K>;
  return op;
}

// The ops of this library, described for the API `version` (16 or 17); the structs live for the process.
const OrtCustomOp* ternary_matmul_op(uint32_t version);
const OrtCustomOp* half_matmul_op(uint32_t version);

}  // namespace bitconv

#endif  // BITCONV_ORT_OP_SUPPORT_H_
