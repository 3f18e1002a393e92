// Helpers shared by the library's custom ops (op_support.h).
#include "op_support.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <sstream>

namespace bitconv {

namespace {
#if defined(__x86_64__) || defined(__i386__)
// __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0), not only CPUID.
bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("fma");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

}  // namespace

bool select_kernels(KernelSet* out, std::string* error) {
  const char* env = std::getenv("BITCONV_ORT_ISA");
  const std::string want = env ? env : "";
  if (want.empty() || want == "auto") {
    *out = cpu_has_avx512() ? avx512_kernels() : cpu_has_avx2() ? avx2_kernels() : scalar_kernels();
    return true;
  }
  if (want == "scalar") {
    *out = scalar_kernels();
    return true;
  }
  if (want == "avx2") {
    if (!cpu_has_avx2()) {
      *error = "BITCONV_ORT_ISA=avx2 but this CPU lacks AVX2/FMA/F16C; unset it or choose scalar";
      return false;
    }
    *out = avx2_kernels();
    return true;
  }
  if (want == "avx512") {
    if (!cpu_has_avx512()) {
      *error = "BITCONV_ORT_ISA=avx512 but this CPU lacks AVX-512 F/BW/VL/DQ/VNNI; unset it or choose avx2 or scalar";
      return false;
    }
    *out = avx512_kernels();
    return true;
  }
  *error = "BITCONV_ORT_ISA=" + want + " is not one of auto, scalar, avx2, avx512";
  return false;
}

Api g_api;

std::string shape_str(const std::vector<int64_t>& dims) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << "]";
  return s.str();
}

const char* dtype_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "another dtype";
  }
}

OrtStatus* read_tensor(const OrtApi* api, const OrtValue* value, Tensor* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* st = api->GetTensorTypeAndShape(value, &info)) return st;
  size_t rank = 0;
  OrtStatus* st = api->GetTensorElementType(info, &out->dtype);
  if (!st) st = api->GetDimensionsCount(info, &rank);
  if (!st) {
    out->dims.assign(rank, 0);
    st = api->GetDimensions(info, out->dims.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (st) return st;
  void* data = nullptr;
  if (OrtStatus* s2 = api->GetTensorMutableData(const_cast<OrtValue*>(value), &data)) return s2;
  out->data = data;
  return nullptr;
}

std::string node_name(const OrtApi* api, const OrtKernelInfo* info) {
  size_t size = 0;
  if (OrtStatus* st = api->KernelInfo_GetNodeName(info, nullptr, &size)) {
    api->ReleaseStatus(st);
    return "?";
  }
  std::string name(size, '\0');
  if (OrtStatus* st = api->KernelInfo_GetNodeName(info, &name[0], &size)) {
    api->ReleaseStatus(st);
    return "?";
  }
  name.resize(std::strlen(name.c_str()));
  return name;
}

OrtStatus* KernelBase::error(const std::string& what) const {
  const std::string msg = std::string(op_type) + " node '" + node + "': " + what;
  return api->CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}

OrtStatus* read_inputs(const KernelBase& kernel, OrtKernelContext* ctx, const char* const* names, size_t n_required,
                       size_t n_max, const char* expects, Tensor* in, bool* present) {
  size_t n_inputs = 0;
  if (OrtStatus* st = kernel.api->KernelContext_GetInputCount(ctx, &n_inputs)) return st;
  if (n_inputs < n_required || n_inputs > n_max)
    return kernel.error(std::string("expects ") + expects + ", got " + std::to_string(n_inputs) + " inputs");
  for (size_t i = 0; i < n_max; ++i) present[i] = false;
  for (size_t i = 0; i < n_inputs; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = kernel.api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (!v) {
      if (i < n_required) return kernel.error(std::string("required input '") + names[i] + "' is missing");
      continue;  // an omitted optional input
    }
    if (OrtStatus* st = read_tensor(kernel.api, v, &in[i])) return st;
    present[i] = true;
  }
  return nullptr;
}

OrtStatus* check_product_shapes(const KernelBase& kernel, const Tensor& A, const Tensor& W) {
  if (W.dims.size() != 2 || W.dims[0] <= 0 || W.dims[1] <= 0)
    return kernel.error("input 'W' must be a non-empty matrix [N, K], got shape " + shape_str(W.dims));
  const int64_t K = W.dims[1];
  if (A.dims.empty()) return kernel.error("input 'A' must have at least one dimension [..., K], got a scalar");
  if (A.dims.back() != K)
    return kernel.error("input 'A' has last dimension " + std::to_string(A.dims.back()) + " (shape " +
                        shape_str(A.dims) + "), but 'W' " + shape_str(W.dims) + " has K=" + std::to_string(K) +
                        " input features");
  for (int64_t d : A.dims)
    if (d <= 0)
      return kernel.error("input 'A' has shape " + shape_str(A.dims) + " with zero rows; nothing to multiply");
  return nullptr;
}

OrtStatus* product_output(const OrtApi* api, OrtKernelContext* ctx, const Tensor& A, int64_t N, float** y) {
  std::vector<int64_t> out_dims(A.dims.begin(), A.dims.end() - 1);
  out_dims.push_back(N);
  OrtValue* out = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, out_dims.data(), out_dims.size(), &out)) return st;
  void* data = nullptr;
  if (OrtStatus* st = api->GetTensorMutableData(out, &data)) return st;
  *y = static_cast<float*>(data);
  return nullptr;
}

OrtStatus* status_from_exception(const OrtApi* api, const char* op_type, const char* context) noexcept {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_FAIL, (std::string(op_type) + ": out of memory" + context).c_str());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (std::string(op_type) + ": " + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, (std::string(op_type) + ": unknown error" + context).c_str());
  }
}

namespace {
const char* op_provider(const OrtCustomOp*) { return nullptr; }  // CPU execution provider
OrtMemType op_input_memory_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int op_variadic_min_arity(const OrtCustomOp*) { return 1; }
int op_variadic_homogeneity(const OrtCustomOp*) { return 1; }
int op_start_version(const OrtCustomOp*) { return 1; }
int op_end_version(const OrtCustomOp*) { return 2147483647; }
ONNXTensorElementDataType op_output_type(const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
size_t op_output_count(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic op_output_characteristic(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
}  // namespace

void fill_common_callbacks(OrtCustomOp* op, uint32_t version) {
  op->version = version;
  op->GetExecutionProviderType = op_provider;
  op->GetInputMemoryType = op_input_memory_type;
  op->GetVariadicInputMinArity = op_variadic_min_arity;
  op->GetVariadicInputHomogeneity = op_variadic_homogeneity;
  op->GetVariadicOutputMinArity = op_variadic_min_arity;
  op->GetVariadicOutputHomogeneity = op_variadic_homogeneity;
  op->GetOutputType = op_output_type;
  op->GetOutputTypeCount = op_output_count;
  op->GetOutputCharacteristic = op_output_characteristic;
  if (version >= 17) {
    op->GetStartVersion = op_start_version;
    op->GetEndVersion = op_end_version;
  }
}

}  // namespace bitconv
