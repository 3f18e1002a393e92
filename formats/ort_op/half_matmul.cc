// The bitconv.HalfMatMul custom op: Y = A @ W^T with W a float16 [N, K] matrix used as stored.
//
// Why: a packed model keeps its embeddings and (tied) lm_head in float16. ONNX Runtime's CPU MatMul has no fast
// float16 path on x86, so an exported graph had to Cast them to float32, which ONNX Runtime folds at session start:
// twice the memory, and the vocabulary projection -- the largest single matrix of a small model -- read at twice
// the bytes on every decoded token. This op converts 16 halves at a time in registers instead (F16C / AVX-512);
// the conversion is exact and the sums are float32, so Y equals MatMul(A, float32(W)^T) up to summation order.
//
// Inputs: A float32 [..., K] (at least one row), W float16 [N, K]. Output: Y float32 [..., N]. No attributes.
#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "kernels.h"
#include "op_support.h"
#include "ort_abi.h"

namespace bitconv {
namespace {

constexpr const char* kOpType = "HalfMatMul";
constexpr int64_t kColumnsPerTask = 256;  // output columns (rows of W) one thread-pool task computes

struct HalfMatMulKernel : KernelBase {
  KernelSet kernels{};

  OrtStatus* compute(OrtKernelContext* ctx);
};

struct Task {
  const HalfProblem* p;
  HalfGemmFn gemm;
};

void run_task(void* user, size_t index) {
  const Task& t = *static_cast<const Task*>(user);
  const int64_t n0 = static_cast<int64_t>(index) * kColumnsPerTask;
  t.gemm(*t.p, n0, std::min(t.p->N, n0 + kColumnsPerTask));
}

OrtStatus* HalfMatMulKernel::compute(OrtKernelContext* ctx) {
  size_t n_inputs = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &n_inputs)) return st;
  if (n_inputs != 2) return error("expects 2 inputs (A, W), got " + std::to_string(n_inputs));
  Tensor A, W;
  for (size_t i = 0; i < 2; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (!v) return error(std::string("required input '") + (i ? "W" : "A") + "' is missing");
    if (OrtStatus* st = read_tensor(api, v, i ? &W : &A)) return st;
  }
  if (A.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    return error(std::string("input 'A' must be float32, got ") + dtype_name(A.dtype));
  if (W.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    return error(std::string("input 'W' must be float16, got ") + dtype_name(W.dtype));
  if (W.dims.size() != 2 || W.dims[0] <= 0 || W.dims[1] <= 0)
    return error("input 'W' must be a non-empty matrix [N, K], got shape " + shape_str(W.dims));
  const int64_t N = W.dims[0], K = W.dims[1];
  if (A.dims.empty()) return error("input 'A' must have at least one dimension [..., K], got a scalar");
  if (A.dims.back() != K)
    return error("input 'A' has last dimension " + std::to_string(A.dims.back()) + " (shape " + shape_str(A.dims) +
                 "), but 'W' " + shape_str(W.dims) + " has K=" + std::to_string(K) + " input features");
  for (int64_t d : A.dims)
    if (d <= 0) return error("input 'A' has shape " + shape_str(A.dims) + " with zero rows; nothing to multiply");

  std::vector<int64_t> out_dims(A.dims.begin(), A.dims.end() - 1);
  out_dims.push_back(N);
  OrtValue* out = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, out_dims.data(), out_dims.size(), &out)) return st;
  void* y = nullptr;
  if (OrtStatus* st = api->GetTensorMutableData(out, &y)) return st;

  HalfProblem p;
  p.M = A.numel() / K;
  p.N = N;
  p.K = K;
  p.a = static_cast<const float*>(A.data);
  p.w = static_cast<const uint16_t*>(W.data);
  p.y = static_cast<float*>(y);
  Task task{&p, kernels.gemm_half};
  const int64_t n_tasks = (N + kColumnsPerTask - 1) / kColumnsPerTask;
  if (g_api.version >= 17)  // the session's intra-op pool; with one intra-op thread it runs the tasks inline
    return api->KernelContext_ParallelFor(ctx, run_task, static_cast<size_t>(n_tasks), 0, &task);
  for (int64_t i = 0; i < n_tasks; ++i) run_task(&task, static_cast<size_t>(i));
  return nullptr;
}

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** out) noexcept {
  try {
    auto kernel = std::make_unique<HalfMatMulKernel>();
    kernel->api = api;
    kernel->op_type = kOpType;
    kernel->node = node_name(api, info);
    std::string why;
    if (!select_kernels(&kernel->kernels, &why)) return kernel->error(why);
    *out = kernel.release();
    return nullptr;
  } catch (...) {
    return status_from_exception(api, kOpType, " creating the kernel");
  }
}

const char* op_name(const OrtCustomOp*) { return kOpType; }
ONNXTensorElementDataType op_input_type(const OrtCustomOp*, size_t index) {
  return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t op_input_count(const OrtCustomOp*) { return 2; }
OrtCustomOpInputOutputCharacteristic op_required(const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; }

}  // namespace

const OrtCustomOp* half_matmul_op(uint32_t version) {
  static OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  fill_common_callbacks(&op, version);
  op.GetName = op_name;
  op.GetInputType = op_input_type;
  op.GetInputTypeCount = op_input_count;
  op.GetInputCharacteristic = op_required;
  op.KernelDestroy = destroy_kernel<HalfMatMulKernel>;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute_kernel<HalfMatMulKernel>;
  return &op;
}

}  // namespace bitconv
