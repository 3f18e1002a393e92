// RegisterCustomOps: the library's one exported symbol. ONNX Runtime calls it for every SessionOptions the library
// is registered on; it adds the "bitconv" domain with TernaryMatMul, HalfMatMul and Int8MatMul.
#include <mutex>
#include <string>

#include "op_support.h"
#include "ort_abi.h"

#define BITCONV_EXPORT extern "C" __attribute__((visibility("default")))

namespace bitconv {

const OrtCustomOp* int8_matmul_op(uint32_t version);  // int8_matmul.cc

namespace {

std::mutex g_register_mutex;
// One domain for the whole process, added to every session's options. It is never released: sessions created
// from those options refer to it for their lifetime and the library cannot know when the last one ends.
OrtCustomOpDomain* g_domain = nullptr;

}  // namespace
}  // namespace bitconv

BITCONV_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace bitconv;
  if (!api_base) return nullptr;
  std::lock_guard<std::mutex> lock(g_register_mutex);
  if (!g_api.ort) {
    const OrtApi* api = api_base->GetApi(BITCONV_ORT_API_VERSION);
    uint32_t version = BITCONV_ORT_API_VERSION;
    if (!api) {
      api = api_base->GetApi(BITCONV_ORT_API_VERSION_FALLBACK);
      version = BITCONV_ORT_API_VERSION_FALLBACK;
    }
    if (!api) {
      // Too old to report kernel errors as statuses; refuse rather than crash on bad input later.
      const OrtApi* v1 = api_base->GetApi(1);
      if (!v1) return nullptr;
      const std::string msg = std::string("bitconv's ops need ONNX Runtime 1.16 or newer (C API version 16); "
                                          "this runtime is ") + api_base->GetVersionString();
      return v1->CreateStatus(ORT_FAIL, msg.c_str());
    }
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* st = api->CreateCustomOpDomain(kDomain, &domain)) return st;
    for (const OrtCustomOp* op : {ternary_matmul_op(version), half_matmul_op(version), int8_matmul_op(version)})
      if (OrtStatus* st = api->CustomOpDomain_Add(domain, op)) return st;
    g_domain = domain;
    g_api.ort = api;
    g_api.version = version;
  }
  return g_api.ort->AddCustomOpDomain(options, g_domain);
}
