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

constexpr int64_t kColumnsPerTask = 256;  // output columns (rows of W) one thread-pool task computes

struct HalfMatMulKernel : KernelBase {
  static constexpr const char* kOpType = "HalfMatMul";
  static constexpr ONNXTensorElementDataType kWeightType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  static constexpr size_t kInputs = 2, kRequiredInputs = 2;
  KernelSet kernels{};

  OrtStatus* compute(OrtKernelContext* ctx);
};

constexpr const char* kInputNames[2] = {"A", "W"};

OrtStatus* HalfMatMulKernel::compute(OrtKernelContext* ctx) {
  Tensor in[2];
  bool present[2];
  if (OrtStatus* st = read_inputs(*this, ctx, kInputNames, 2, 2, "2 inputs (A, W)", in, present)) return st;
  const Tensor &A = in[0], &W = in[1];
  if (A.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    return error(std::string("input 'A' must be float32, got ") + dtype_name(A.dtype));
  if (W.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    return error(std::string("input 'W' must be float16, got ") + dtype_name(W.dtype));
  if (OrtStatus* st = check_product_shapes(*this, A, W)) return st;
  const int64_t N = W.dims[0], K = W.dims[1];

  float* y = nullptr;
  if (OrtStatus* st = product_output(api, ctx, A, N, &y)) return st;

  HalfProblem p;
  p.M = A.numel() / K;
  p.N = N;
  p.K = K;
  p.a = static_cast<const float*>(A.data);
  p.w = static_cast<const uint16_t*>(W.data);
  p.y = y;
  const HalfGemmFn gemm = kernels.gemm_half;
  return parallel_columns(api, ctx, N, kColumnsPerTask, [&](int64_t n0, int64_t n1) { gemm(p, n0, n1); });
}

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** out) noexcept {
  using K = HalfMatMulKernel;
  return create_kernel_with<K>(api, info, K::kOpType, out, [](K& kernel) -> OrtStatus* {
    std::string why;
    return select_kernels(&kernel.kernels, &why) ? nullptr : kernel.error(why);
  });
}

}  // namespace

const OrtCustomOp* half_matmul_op(uint32_t version) {
  static OrtCustomOp op;
  return describe_op<HalfMatMulKernel>(&op, version, create_kernel);
}

}  // namespace bitconv
