// The bitconv.TernaryMatMul custom op for ONNX Runtime: Y = A @ W^T (+ outliers) (+ bias) with W stored exactly as
// the bitconv packed format stores a ternary weight (formats/SPEC.md). See formats/ort_op/README.md for the
// contract (inputs, attributes, errors, threads).
//
// This file: the op's description, attribute and input validation, activation quantization, the base-3 -> 2-bit
// repack, threading, outliers and bias. The arithmetic lives in kernels_*.cc, registration in register.cc.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "kernels.h"
#include "op_support.h"
#include "ort_abi.h"

namespace bitconv {
namespace {

constexpr const char* kOpType = "TernaryMatMul";
constexpr const char* kInputNames[] = {"A", "codes", "scale", "outlier_idx", "outlier_val", "bias"};
constexpr size_t kNumInputs = 6;
constexpr size_t kFirstOptionalInput = 3;
constexpr int64_t kColumnsPerTask = 64;  // output columns one thread-pool task computes

enum Packing : int64_t { kPacking2Bit = 0, kPackingBase3 = 1 };

// ceil(a / b) for a >= 0, b > 0. Not (a + b - 1) / b: K and group_size are attributes of the graph, and near
// INT64_MAX that sum overflows (undefined behaviour; in practice a wrong, even negative, count).
int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

int64_t row_bytes_for(int64_t K, int64_t packing) { return ceil_div(K, packing == kPackingBase3 ? 5 : 4); }

// Base-3 rows (five trits a byte, byte = sum (t_i + 1) * 3^i) -> 2-bit rows (code = t + 2, padding 2).
bool base3_to_2bit(const uint8_t* src, int64_t N, int64_t K, std::vector<uint8_t>* dst, std::string* error) {
  const int64_t src_row = row_bytes_for(K, kPackingBase3), dst_row = row_bytes_for(K, kPacking2Bit);
  dst->assign(static_cast<size_t>(N * dst_row), 0);
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* s = src + n * src_row;
    uint8_t* d = dst->data() + n * dst_row;
    for (int64_t k = 0; k < dst_row * 4; ++k) {
      int code = 2;
      if (k < K) {
        int byte = s[k / 5];
        if (byte > 242) {
          std::ostringstream e;
          e << "input 'codes' (base-3) row " << n << " has byte " << byte
            << " > 242, which no five trits make: the tensor is corrupt";
          *error = e.str();
          return false;
        }
        for (int64_t i = 0; i < k % 5; ++i) byte /= 3;
        code = byte % 3 + 1;
      }
      d[k >> 2] |= static_cast<uint8_t>(code << (2 * (k & 3)));
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// the kernel

struct TernaryMatMulKernel : KernelBase {
  int64_t K = 0, N = 0, group_size = 0, act_quant = 0, packing = kPacking2Bit;
  KernelSet kernels{};
  std::vector<uint8_t> constant_codes_2bit;  // base-3 codes of a constant initializer, repacked once
  AlignedArray<uint32_t> interleaved;         // interleave_codes() of a constant initializer (float activations)
  AlignedArray<uint8_t> tiles;                // tile_codes() of a constant initializer (int8 activations)

  OrtStatus* compute(OrtKernelContext* ctx);
};

struct Outliers {
  const int64_t* idx = nullptr;
  const uint16_t* val = nullptr;  // float16 bits
  int64_t count = 0;
};

struct Task {
  const GemmProblem* p;
  GemmFn gemm;
  const Outliers* outliers;
  const float* bias;
  bool int8;  // act_quant = 1: the outliers multiply the dequantized int8 activations p.q / s
  int64_t n_tasks;
};

void run_task(void* user, size_t index) {
  const Task& t = *static_cast<const Task*>(user);
  const GemmProblem& p = *t.p;
  const int64_t n0 = static_cast<int64_t>(index) * kColumnsPerTask;
  const int64_t n1 = std::min(p.N, n0 + kColumnsPerTask);
  t.gemm(p, n0, n1);
  // outliers of rows [n0, n1): the spec stores code 2 (zero) under them, so they are a sparse correction
  if (t.outliers->count) {
    const int64_t* begin = t.outliers->idx;
    const int64_t* end = begin + t.outliers->count;
    const int64_t* it = std::lower_bound(begin, end, n0 * p.K);
    const int64_t* stop = std::lower_bound(it, end, n1 * p.K);
    for (; it != stop; ++it) {
      const int64_t n = *it / p.K, k = *it % p.K;
      const float v = half_to_float(t.outliers->val[it - begin]);
      for (int64_t m = 0; m < p.M; ++m) {
        const float a = t.int8 ? static_cast<float>(p.q[m * p.q_stride + k]) / p.q_row_scale[m] : p.a[m * p.K + k];
        p.y[m * p.N + n] += a * v;
      }
    }
  }
  if (t.bias)
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = n0; n < n1; ++n) p.y[m * p.N + n] += t.bias[n];
}

OrtStatus* TernaryMatMulKernel::compute(OrtKernelContext* ctx) {
  size_t n_inputs = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &n_inputs)) return st;
  if (n_inputs < kFirstOptionalInput || n_inputs > kNumInputs)
    return error("expects 3 to 6 inputs (A, codes, scale[, outlier_idx, outlier_val, bias]), got " +
                 std::to_string(n_inputs));
  Tensor in[kNumInputs];
  bool present[kNumInputs] = {};
  for (size_t i = 0; i < n_inputs; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (!v) {
      if (i < kFirstOptionalInput) return error(std::string("required input '") + kInputNames[i] + "' is missing");
      continue;  // an omitted optional input
    }
    if (OrtStatus* st = read_tensor(api, v, &in[i])) return st;
    present[i] = true;
  }
  auto dtype_error = [&](size_t i, const char* want) {
    return error(std::string("input '") + kInputNames[i] + "' must be " + want + ", got " + dtype_name(in[i].dtype));
  };

  // A [..., K]
  const Tensor& A = in[0];
  if (A.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(0, "float32");
  if (A.dims.empty()) return error("input 'A' must have at least one dimension [..., K], got a scalar");
  if (A.dims.back() != K)
    return error("input 'A' has last dimension " + std::to_string(A.dims.back()) + " (shape " + shape_str(A.dims) +
                 "), but the packed weight has K=" + std::to_string(K) + " input features");
  for (int64_t d : A.dims)
    if (d <= 0) return error("input 'A' has shape " + shape_str(A.dims) + " with zero rows; nothing to multiply");
  const int64_t M = A.numel() / K;

  // codes [N, row_bytes]
  const Tensor& C = in[1];
  if (C.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) return dtype_error(1, "uint8 (packed codes)");
  const int64_t row_bytes = row_bytes_for(K, packing);
  const char* packing_name = packing == kPackingBase3 ? "base-3 packing (ceil(K/5))" : "2-bit packing (ceil(K/4))";
  if (C.dims.size() != 2 || C.dims[0] != N || C.dims[1] != row_bytes)
    return error("input 'codes' has shape " + shape_str(C.dims) + ", expected [" + std::to_string(N) + ", " +
                 std::to_string(row_bytes) + "] for N=" + std::to_string(N) + ", K=" + std::to_string(K) + " with " +
                 packing_name + "; wrong byte length or wrong K/N attributes for this weight");

  // scale
  const Tensor& S = in[2];
  if (S.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(2, "float32");
  GemmProblem p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.scale = static_cast<const float*>(S.data);
  if (group_size > 0) {
    p.scale_kind = ScaleKind::kGroup;
    p.group_size = group_size;
    p.n_groups = ceil_div(K, group_size);  // 1 for any group_size >= K: one group per row
    if (S.dims.size() != 2 || S.dims[0] != N || S.dims[1] != p.n_groups)
      return error("input 'scale' has shape " + shape_str(S.dims) + ", expected [" + std::to_string(N) + ", " +
                   std::to_string(p.n_groups) + "] (one per output row and group of " + std::to_string(group_size) +
                   " input columns)");
  } else {
    p.group_size = K;
    p.n_groups = 1;
    if (S.dims.size() == 1 && S.dims[0] == 1) {
      p.scale_kind = ScaleKind::kTensor;
    } else if (S.dims.size() == 1 && S.dims[0] == N) {
      p.scale_kind = ScaleKind::kChannel;
    } else {
      return error("input 'scale' has shape " + shape_str(S.dims) + ", expected [1] (per tensor) or [" +
                   std::to_string(N) + "] (per output channel); grouped scales need the group_size attribute");
    }
  }

  // the 2-bit codes the kernels read
  const uint8_t* codes = static_cast<const uint8_t*>(C.data);
  std::vector<uint8_t> repacked;
  if (packing == kPackingBase3) {
    if (!constant_codes_2bit.empty()) {
      codes = constant_codes_2bit.data();
    } else {
      std::string why;
      if (!base3_to_2bit(codes, N, K, &repacked, &why)) return error(why);
      codes = repacked.data();
    }
  }
  p.codes = codes;
  p.row_bytes = row_bytes_for(K, kPacking2Bit);
  p.interleaved = interleaved.empty() ? nullptr : interleaved.data();

  // outliers
  Outliers outliers;
  if (present[3] != present[4])
    return error("inputs 'outlier_idx' and 'outlier_val' come together: give both or neither");
  if (present[3]) {
    const Tensor& I = in[3];
    const Tensor& V = in[4];
    if (I.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) return dtype_error(3, "int64");
    if (V.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) return dtype_error(4, "float16");
    if (I.dims.size() != 1 || V.dims.size() != 1 || I.dims[0] != V.dims[0])
      return error("inputs 'outlier_idx' " + shape_str(I.dims) + " and 'outlier_val' " + shape_str(V.dims) +
                   " must be 1-D of the same length");
    outliers.idx = static_cast<const int64_t*>(I.data);
    outliers.val = static_cast<const uint16_t*>(V.data);
    outliers.count = I.dims[0];
    for (int64_t i = 0; i < outliers.count; ++i) {
      const int64_t f = outliers.idx[i];
      if (f < 0 || f >= N * K)
        return error("input 'outlier_idx' entry " + std::to_string(i) + " = " + std::to_string(f) +
                     " is outside the weight (N*K = " + std::to_string(N * K) + ")");
      if (i && f <= outliers.idx[i - 1])
        return error("input 'outlier_idx' must be sorted ascending without repeats; entry " + std::to_string(i) +
                     " = " + std::to_string(f) + " follows " + std::to_string(outliers.idx[i - 1]));
      if (code_at(codes + (f / K) * p.row_bytes, f % K) != 2)
        return error("input 'codes' holds a nonzero trit under outlier " + std::to_string(i) + " (row " +
                     std::to_string(f / K) + ", column " + std::to_string(f % K) +
                     "); the format stores code 2 (zero) at outlier positions");
    }
  }

  // bias [N]
  const float* bias = nullptr;
  if (present[5]) {
    const Tensor& B = in[5];
    if (B.dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return dtype_error(5, "float32");
    if (B.dims.size() != 1 || B.dims[0] != N)
      return error("input 'bias' has shape " + shape_str(B.dims) + ", expected [" + std::to_string(N) + "]");
    bias = static_cast<const float*>(B.data);
  }

  // Y [..., N]
  std::vector<int64_t> out_dims(A.dims.begin(), A.dims.end() - 1);
  out_dims.push_back(N);
  OrtValue* out = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, out_dims.data(), out_dims.size(), &out)) return st;
  void* y = nullptr;
  if (OrtStatus* st = api->GetTensorMutableData(out, &y)) return st;
  p.y = static_cast<float*>(y);
  p.a = static_cast<const float*>(A.data);

  AlignedArray<float> a_tables;
  if (!act_quant && kernels.float_workspace) {
    const int64_t n_floats = kernels.float_workspace(p);
    if (n_floats > 0) {
      a_tables.resize(static_cast<size_t>(n_floats));
      kernels.prepare_float(p, a_tables.data());
      p.a_tables = a_tables.data();
    }
  }

  // int8 activations: one 64-byte aligned buffer for q [M, q_stride], the group sums and the row scales
  AlignedArray<uint8_t> int8_buffer;
  AlignedArray<uint8_t> call_tiles;  // the tile layout of codes that are not a constant initializer
  GemmFn gemm = kernels.gemm_float;
  if (act_quant) {
    p.q_stride = int8_row_stride(K);
    const int64_t q_bytes = M * p.q_stride, sum_bytes = (M * p.n_groups * 4 + 63) / 64 * 64;
    int8_buffer.resize(static_cast<size_t>(q_bytes + sum_bytes + M * 4));
    int8_t* q = reinterpret_cast<int8_t*>(int8_buffer.data());
    int32_t* group_sum = reinterpret_cast<int32_t*>(int8_buffer.data() + q_bytes);
    float* row_scale = reinterpret_cast<float*>(int8_buffer.data() + q_bytes + sum_bytes);
    kernels.quantize_int8(p, p.a, q, group_sum, row_scale);
    p.q = q;
    p.q_group_sum = group_sum;
    p.q_row_scale = row_scale;
    if (kernels.int8_tiles && tiles_apply(p)) {
      if (!tiles.empty()) {
        p.tiles = tiles.data();
      } else {
        call_tiles.resize(static_cast<size_t>(tile_bytes(N, K)));
        tile_codes(codes, p.row_bytes, N, K, 0, tile_blocks(N), call_tiles.data());
        p.tiles = call_tiles.data();
      }
    }
    gemm = kernels.gemm_int8;
  }

  Task task{&p, gemm, &outliers, bias, act_quant != 0, (N + kColumnsPerTask - 1) / kColumnsPerTask};
  if (g_api.version >= 17) {
    // the session's intra-op pool; with one intra-op thread it runs the tasks inline
    if (OrtStatus* st = api->KernelContext_ParallelFor(ctx, run_task, static_cast<size_t>(task.n_tasks), 0, &task))
      return st;
  } else {
    for (int64_t i = 0; i < task.n_tasks; ++i) run_task(&task, static_cast<size_t>(i));
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------------------------
// OrtCustomOp callbacks

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** out) noexcept {
  try {
    auto kernel = std::make_unique<TernaryMatMulKernel>();
    kernel->api = api;
    kernel->op_type = kOpType;
    kernel->node = node_name(api, info);
    auto attr = [&](const char* name, int64_t* value, bool required) -> OrtStatus* {
      OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, value);
      if (!st) return nullptr;
      api->ReleaseStatus(st);
      if (!required) return nullptr;
      return kernel->error(std::string("attribute '") + name + "' (int) is required");
    };
    if (OrtStatus* st = attr("K", &kernel->K, true)) return st;
    if (OrtStatus* st = attr("N", &kernel->N, true)) return st;
    if (OrtStatus* st = attr("group_size", &kernel->group_size, false)) return st;
    if (OrtStatus* st = attr("act_quant", &kernel->act_quant, false)) return st;
    if (OrtStatus* st = attr("packing", &kernel->packing, false)) return st;
    if (kernel->K <= 0 || kernel->N <= 0)
      return kernel->error("attributes K and N must be positive, got K=" + std::to_string(kernel->K) +
                           ", N=" + std::to_string(kernel->N));
    if (kernel->group_size < 0) return kernel->error("attribute 'group_size' must be >= 0 (0 = not grouped)");
    if (kernel->act_quant != 0 && kernel->act_quant != 1)
      return kernel->error("attribute 'act_quant' must be 0 (float activations) or 1 (int8 per token), got " +
                           std::to_string(kernel->act_quant));
    if (kernel->packing != kPacking2Bit && kernel->packing != kPackingBase3)
      return kernel->error("attribute 'packing' must be 0 (2-bit) or 1 (base-3), got " +
                           std::to_string(kernel->packing));
    std::string why;
    if (!select_kernels(&kernel->kernels, &why)) return kernel->error(why);

    // A constant weight (an initializer) is prepared once here instead of on every run: base-3 codes repacked to
    // 2-bit, and the codes regrouped for the SIMD kernels that read 16 output rows at once -- column-interleaved
    // words for float activations, the tile layout for int8 activations. Either copy is about as large as the
    // codes and takes one pass over them (docs/benchmarks/ternary_gemv.md states the time).
    const bool wants_interleave = kernel->act_quant == 0 && kernel->kernels.prepare_float != nullptr;
    const bool wants_tiles = kernel->act_quant == 1 && kernel->kernels.int8_tiles &&
                             (kernel->group_size == 0 || kernel->group_size % kTileColumns == 0);
    if (kernel->packing == kPackingBase3 || wants_interleave || wants_tiles) {
      int is_constant = 0;
      const OrtValue* value = nullptr;
      if (OrtStatus* st = api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value)) {
        api->ReleaseStatus(st);
      } else if (is_constant && value) {
        Tensor codes;
        if (OrtStatus* st2 = read_tensor(api, value, &codes)) return st2;
        const int64_t rb = row_bytes_for(kernel->K, kernel->packing);
        // a mismatching constant is left alone here and reported by compute() with the full message
        if (codes.dtype == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 && codes.dims.size() == 2 &&
            codes.dims[0] == kernel->N && codes.dims[1] == rb) {
          const uint8_t* two_bit = static_cast<const uint8_t*>(codes.data);
          if (kernel->packing == kPackingBase3) {
            if (!base3_to_2bit(two_bit, kernel->N, kernel->K, &kernel->constant_codes_2bit, &why))
              return kernel->error(why);
            two_bit = kernel->constant_codes_2bit.data();
          }
          const int64_t rb2 = row_bytes_for(kernel->K, kPacking2Bit);
          if (wants_interleave) {
            kernel->interleaved.resize(static_cast<size_t>(interleaved_words(kernel->N, kernel->K)));
            interleave_codes(two_bit, rb2, kernel->N, kernel->K, kernel->interleaved.data());
          }
          if (wants_tiles) {
            kernel->tiles.resize(static_cast<size_t>(tile_bytes(kernel->N, kernel->K)));
            tile_codes(two_bit, rb2, kernel->N, kernel->K, 0, tile_blocks(kernel->N), kernel->tiles.data());
          }
        }
      }
    }
    *out = kernel.release();
    return nullptr;
  } catch (...) {
    return status_from_exception(api, kOpType, " creating the kernel");
  }
}

const char* op_name(const OrtCustomOp*) { return kOpType; }
ONNXTensorElementDataType op_input_type(const OrtCustomOp*, size_t index) {
  switch (index) {
    case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}
size_t op_input_count(const OrtCustomOp*) { return kNumInputs; }
OrtCustomOpInputOutputCharacteristic op_input_characteristic(const OrtCustomOp*, size_t index) {
  return index < kFirstOptionalInput ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
}

}  // namespace

const OrtCustomOp* ternary_matmul_op(uint32_t version) {
  static OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  fill_common_callbacks(&op, version);
  op.GetName = op_name;
  op.GetInputType = op_input_type;
  op.GetInputTypeCount = op_input_count;
  op.GetInputCharacteristic = op_input_characteristic;
  op.KernelDestroy = destroy_kernel<TernaryMatMulKernel>;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute_kernel<TernaryMatMulKernel>;
  return &op;
}

}  // namespace bitconv
