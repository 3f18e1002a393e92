// The part of ONNX Runtime's C ABI that bitconv calls, declared here by hand: the entries the custom op library
// calls (ternary_matmul.cc) and the entries the example host app calls (example_app/run_model.cc).
//
// Why by hand: ONNX Runtime's headers ship in no package this project can install, and third-party code is not
// copied into this repository. The C ABI is stable by design: `OrtGetApiBase()->GetApi(version)` returns a table
// of function pointers (`OrtApi`) that is append-only -- an entry, once shipped in API version V, keeps its index
// forever, and a runtime that accepts version V fills every entry up to the last one of V. So a client only needs
// the exact index of each entry it calls and the argument types of those entries; every other slot is an opaque
// `void*` placeholder here.
//
// Indices were learned from ONNX Runtime's public header (argument types) and the table `ort_api_1_to_N` in its
// onnxruntime_c_api.cc, which lists every entry in order with "End of Version N" markers: version 1 is the block
// CreateStatus(0) .. ReleaseCustomOpDomain(101), counted entry by entry; ReleaseCANNProviderOptions ends version 13
// at 224, so RegisterCustomOpsLibrary_V2, the fourth entry of version 14, sits at 228; GetBuildInfoString ends
// version 15 at 254, KernelContext_GetResource ends version 16 at 265, SessionOptionsAppendExecutionProvider_
// OpenVINO_V2 ends version 17 at 275. The static_asserts below pin each entry we call to its index, so a typo in a
// gap size fails the build; tests/test_ort_op.py loads the op library into the real onnxruntime and runs it, and
// tests/test_ort_app.py builds the app and runs it against the onnxruntime wheel's libonnxruntime.
//
// Entries the op library calls, with the API version that introduced them:
//   v1:  CreateStatus(0), CreateCustomOpDomain(26), CustomOpDomain_Add(27), AddCustomOpDomain(28),
//        GetTensorMutableData(51), GetTensorElementType(60), GetDimensionsCount(61), GetDimensions(62),
//        GetTensorTypeAndShape(65), KernelInfoGetAttribute_int64(86), KernelContext_GetInputCount(88),
//        KernelContext_GetInput(90), KernelContext_GetOutput(91), ReleaseStatus(93),
//        ReleaseTensorTypeAndShapeInfo(99)
//   v15: KernelInfo_GetNodeName(244), KernelInfoGetConstantInput_tensor(249)
//   v17: KernelContext_ParallelFor(274)
// Entries only the example app calls (a host program, the side of the ABI an application sees):
//   v1:  GetErrorMessage(2), CreateEnv(3), CreateSession(7), Run(9), CreateSessionOptions(10),
//        SetIntraOpNumThreads(24), SessionGetOutputName(37), CreateTensorWithDataAsOrtValue(49),
//        GetTensorShapeElementCount(64), CreateCpuMemoryInfo(69), AllocatorFree(76),
//        GetAllocatorWithDefaultOptions(78), ReleaseEnv(92), ReleaseMemoryInfo(94), ReleaseSession(95),
//        ReleaseValue(96), ReleaseSessionOptions(100)
//   v14: RegisterCustomOpsLibrary_V2(228) -- ONNX Runtime loads the library and owns its handle; the version-1
//        RegisterCustomOpsLibrary(29) would hand the dlopen handle to the caller to close after every session.
//
// Paths (`model_path`, `library_name`) are ORTCHAR_T in ONNX Runtime's header: char everywhere but Windows, where
// they are wchar_t. Only the app passes paths, and it is POSIX-only (dlopen), so they are declared as char here.
//
// The custom op itself is described to the runtime by an `OrtCustomOp` struct whose `version` field tells the
// runtime which of the trailing members exist: members up to GetOutputCharacteristic from version 8 (optional
// inputs), GetInputMemoryType from 13, the variadic queries from 14, CreateKernelV2/KernelComputeV2 (which return
// a status, so bad input becomes an error instead of a crash) from 16, InferOutputShapeFn and Get{Start,End}Version
// from 17, the in-place/alias queries after that. We fill the struct through version 17 and leave the later
// members null.
#ifndef BITCONV_ORT_ABI_H_
#define BITCONV_ORT_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define BITCONV_NOEXCEPT noexcept
#else
#define BITCONV_NOEXCEPT
#endif

// The API version with every entry the op library calls (KernelContext_ParallelFor is the newest, version 17).
// Version 16 is the fallback: everything but ParallelFor, so the op runs single-threaded. Below 16 the op cannot
// report errors. (The example app asks for its own version, 14; see run_model.cc.)
#define BITCONV_ORT_API_VERSION 17
#define BITCONV_ORT_API_VERSION_FALLBACK 16

// Opaque runtime objects: only ever handled through pointers. (OrtAllocator is a struct of function pointers in
// ONNX Runtime's header; we never call through it directly, only hand it back to AllocatorFree.)
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtAllocator OrtAllocator;
typedef struct OrtValue OrtValue;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtShapeInferContext OrtShapeInferContext;

// Values follow ONNX's TensorProto.DataType (append-only as well); we use FLOAT, UINT8, INT64 and FLOAT16.
typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 = 4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 = 5,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING = 8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL = 9,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
} ONNXTensorElementDataType;

typedef enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11,
} OrtErrorCode;

typedef enum OrtLoggingLevel {
  ORT_LOGGING_LEVEL_VERBOSE = 0,
  ORT_LOGGING_LEVEL_INFO = 1,
  ORT_LOGGING_LEVEL_WARNING = 2,
  ORT_LOGGING_LEVEL_ERROR = 3,
  ORT_LOGGING_LEVEL_FATAL = 4,
} OrtLoggingLevel;

typedef enum OrtAllocatorType {
  OrtInvalidAllocator = -1,
  OrtDeviceAllocator = 0,
  OrtArenaAllocator = 1,
} OrtAllocatorType;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeDefault = 0,
} OrtMemType;

typedef enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
} OrtCustomOpInputOutputCharacteristic;

struct OrtApi;
typedef struct OrtApi OrtApi;

// Never versioned: exactly these two entries, forever.
typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version)BITCONV_NOEXCEPT;
  const char* (*GetVersionString)(void)BITCONV_NOEXCEPT;
} OrtApiBase;

// Placeholder for `n` table entries this library never calls (each one a function pointer).
#define BITCONV_ORT_SKIP(first, last) void* unused_##first##_to_##last[(last) - (first) + 1]

struct OrtApi {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg)BITCONV_NOEXCEPT;  // 0
  BITCONV_ORT_SKIP(1, 1);
  const char* (*GetErrorMessage)(const OrtStatus* status)BITCONV_NOEXCEPT;  // 2
  OrtStatus* (*CreateEnv)(OrtLoggingLevel log_severity_level, const char* logid, OrtEnv** out)BITCONV_NOEXCEPT;  // 3
  BITCONV_ORT_SKIP(4, 6);
  OrtStatus* (*CreateSession)(const OrtEnv* env, const char* model_path, const OrtSessionOptions* options,
                              OrtSession** out)BITCONV_NOEXCEPT;  // 7
  BITCONV_ORT_SKIP(8, 8);
  // outputs[i] may be null on entry: the runtime then allocates the value, to be released with ReleaseValue.
  OrtStatus* (*Run)(OrtSession* session, const OrtRunOptions* run_options, const char* const* input_names,
                    const OrtValue* const* inputs, size_t input_len, const char* const* output_names,
                    size_t output_names_len, OrtValue** outputs)BITCONV_NOEXCEPT;  // 9
  OrtStatus* (*CreateSessionOptions)(OrtSessionOptions** options)BITCONV_NOEXCEPT;  // 10
  BITCONV_ORT_SKIP(11, 23);
  OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions* options, int intra_op_num_threads)BITCONV_NOEXCEPT;  // 24
  BITCONV_ORT_SKIP(25, 25);
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out)BITCONV_NOEXCEPT;  // 26
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const struct OrtCustomOp* op)BITCONV_NOEXCEPT;  // 27
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain)BITCONV_NOEXCEPT;  // 28
  BITCONV_ORT_SKIP(29, 36);
  // The name is allocated with `allocator` and freed by the caller with AllocatorFree.
  OrtStatus* (*SessionGetOutputName)(const OrtSession* session, size_t index, OrtAllocator* allocator,
                                     char** value)BITCONV_NOEXCEPT;  // 37
  BITCONV_ORT_SKIP(38, 48);
  // Wraps the caller's buffer without copying it: the buffer must outlive the value.
  OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* data, size_t data_n_bytes,
                                               const int64_t* shape, size_t shape_len,
                                               ONNXTensorElementDataType type, OrtValue** out)BITCONV_NOEXCEPT;  // 49
  BITCONV_ORT_SKIP(50, 50);
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out)BITCONV_NOEXCEPT;  // 51
  BITCONV_ORT_SKIP(52, 59);
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info,
                                     ONNXTensorElementDataType* out)BITCONV_NOEXCEPT;  // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out)BITCONV_NOEXCEPT;  // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims,
                              size_t dims_length)BITCONV_NOEXCEPT;  // 62
  BITCONV_ORT_SKIP(63, 63);
  OrtStatus* (*GetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out)BITCONV_NOEXCEPT;  // 64
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out)BITCONV_NOEXCEPT;  // 65
  BITCONV_ORT_SKIP(66, 68);
  OrtStatus* (*CreateCpuMemoryInfo)(OrtAllocatorType type, OrtMemType mem_type,
                                    OrtMemoryInfo** out)BITCONV_NOEXCEPT;  // 69
  BITCONV_ORT_SKIP(70, 75);
  OrtStatus* (*AllocatorFree)(OrtAllocator* allocator, void* p)BITCONV_NOEXCEPT;  // 76
  BITCONV_ORT_SKIP(77, 77);
  // The process-wide CPU allocator: never released by the caller.
  OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator** out)BITCONV_NOEXCEPT;  // 78
  BITCONV_ORT_SKIP(79, 85);
  OrtStatus* (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name,
                                             int64_t* out)BITCONV_NOEXCEPT;  // 86
  BITCONV_ORT_SKIP(87, 87);
  OrtStatus* (*KernelContext_GetInputCount)(const OrtKernelContext* context, size_t* out)BITCONV_NOEXCEPT;  // 88
  BITCONV_ORT_SKIP(89, 89);
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index,
                                       const OrtValue** out)BITCONV_NOEXCEPT;  // 90
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dims,
                                        size_t dim_count, OrtValue** out)BITCONV_NOEXCEPT;  // 91
  void (*ReleaseEnv)(OrtEnv* env)BITCONV_NOEXCEPT;  // 92
  void (*ReleaseStatus)(OrtStatus* status)BITCONV_NOEXCEPT;  // 93
  void (*ReleaseMemoryInfo)(OrtMemoryInfo* info)BITCONV_NOEXCEPT;  // 94
  void (*ReleaseSession)(OrtSession* session)BITCONV_NOEXCEPT;  // 95
  void (*ReleaseValue)(OrtValue* value)BITCONV_NOEXCEPT;  // 96
  BITCONV_ORT_SKIP(97, 98);
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info)BITCONV_NOEXCEPT;  // 99
  void (*ReleaseSessionOptions)(OrtSessionOptions* options)BITCONV_NOEXCEPT;  // 100
  BITCONV_ORT_SKIP(101, 227);
  // Loads the library, calls its RegisterCustomOps with these options, and keeps it loaded while needed.
  OrtStatus* (*RegisterCustomOpsLibrary_V2)(OrtSessionOptions* options,
                                            const char* library_name)BITCONV_NOEXCEPT;  // 228, version 14
  BITCONV_ORT_SKIP(229, 243);
  OrtStatus* (*KernelInfo_GetNodeName)(const OrtKernelInfo* info, char* out, size_t* size)BITCONV_NOEXCEPT;  // 244
  BITCONV_ORT_SKIP(245, 248);
  OrtStatus* (*KernelInfoGetConstantInput_tensor)(const OrtKernelInfo* info, size_t index, int* is_constant,
                                                  const OrtValue** out)BITCONV_NOEXCEPT;  // 249, version 15
  BITCONV_ORT_SKIP(250, 273);
  // Runs fn(usr_data, i) for i in [0, total) on the session's intra-op thread pool (inline when it has none).
  OrtStatus* (*KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void*, size_t), size_t total,
                                          size_t num_batch, void* usr_data)BITCONV_NOEXCEPT;  // 274, version 17
  // Later entries are never read through this declaration.
};

typedef struct OrtCustomOp {
  uint32_t version;  // the OrtApi version the members below follow
  void* (*CreateKernel)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const struct OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const struct OrtCustomOp* op);  // null: CPU
  ONNXTensorElementDataType (*GetInputType)(const struct OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const struct OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const struct OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const struct OrtCustomOp* op);
  void (*KernelCompute)(void* op_kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* op_kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const struct OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const struct OrtCustomOp* op, size_t index);
  OrtMemType (*GetInputMemoryType)(const struct OrtCustomOp* op, size_t index);  // version 13
  int (*GetVariadicInputMinArity)(const struct OrtCustomOp* op);                 // version 14
  int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const struct OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel);  // version 16
  OrtStatus* (*KernelComputeV2)(void* op_kernel, OrtKernelContext* context);
  OrtStatus* (*InferOutputShapeFn)(const struct OrtCustomOp* op, OrtShapeInferContext* context);  // version 17
  int (*GetStartVersion)(const struct OrtCustomOp* op);
  int (*GetEndVersion)(const struct OrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);  // version 18+, left null
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
} OrtCustomOp;

// The one symbol this library exports; ONNX Runtime looks it up after loading the library.
typedef OrtStatus* (*RegisterCustomOpsFn)(OrtSessionOptions* options, const OrtApiBase* api);

// The C API's one entry point, exported by libonnxruntime (what a host app looks up after loading it).
typedef const OrtApiBase* (*OrtGetApiBaseFn)(void);

#ifdef __cplusplus
}  // extern "C"

// Each entry we call sits at its ABI index (the table is an array of pointers).
#define BITCONV_ORT_AT(member, index) \
  static_assert(offsetof(OrtApi, member) == (index) * sizeof(void*), #member " must be OrtApi entry " #index)
BITCONV_ORT_AT(CreateStatus, 0);
BITCONV_ORT_AT(GetErrorMessage, 2);
BITCONV_ORT_AT(CreateEnv, 3);
BITCONV_ORT_AT(CreateSession, 7);
BITCONV_ORT_AT(Run, 9);
BITCONV_ORT_AT(CreateSessionOptions, 10);
BITCONV_ORT_AT(SetIntraOpNumThreads, 24);
BITCONV_ORT_AT(CreateCustomOpDomain, 26);
BITCONV_ORT_AT(CustomOpDomain_Add, 27);
BITCONV_ORT_AT(AddCustomOpDomain, 28);
BITCONV_ORT_AT(SessionGetOutputName, 37);
BITCONV_ORT_AT(CreateTensorWithDataAsOrtValue, 49);
BITCONV_ORT_AT(GetTensorMutableData, 51);
BITCONV_ORT_AT(GetTensorElementType, 60);
BITCONV_ORT_AT(GetDimensionsCount, 61);
BITCONV_ORT_AT(GetDimensions, 62);
BITCONV_ORT_AT(GetTensorShapeElementCount, 64);
BITCONV_ORT_AT(GetTensorTypeAndShape, 65);
BITCONV_ORT_AT(CreateCpuMemoryInfo, 69);
BITCONV_ORT_AT(AllocatorFree, 76);
BITCONV_ORT_AT(GetAllocatorWithDefaultOptions, 78);
BITCONV_ORT_AT(KernelInfoGetAttribute_int64, 86);
BITCONV_ORT_AT(KernelContext_GetInputCount, 88);
BITCONV_ORT_AT(KernelContext_GetInput, 90);
BITCONV_ORT_AT(KernelContext_GetOutput, 91);
BITCONV_ORT_AT(ReleaseEnv, 92);
BITCONV_ORT_AT(ReleaseStatus, 93);
BITCONV_ORT_AT(ReleaseMemoryInfo, 94);
BITCONV_ORT_AT(ReleaseSession, 95);
BITCONV_ORT_AT(ReleaseValue, 96);
BITCONV_ORT_AT(ReleaseTensorTypeAndShapeInfo, 99);
BITCONV_ORT_AT(ReleaseSessionOptions, 100);
BITCONV_ORT_AT(RegisterCustomOpsLibrary_V2, 228);
BITCONV_ORT_AT(KernelInfo_GetNodeName, 244);
BITCONV_ORT_AT(KernelInfoGetConstantInput_tensor, 249);
BITCONV_ORT_AT(KernelContext_ParallelFor, 274);
#undef BITCONV_ORT_AT
static_assert(sizeof(OrtApiBase) == 2 * sizeof(void*), "OrtApiBase has exactly two entries");
// `version` is padded to a pointer; CreateKernelV2 is the 17th function pointer after it.
static_assert(offsetof(OrtCustomOp, CreateKernelV2) == 17 * sizeof(void*),
              "OrtCustomOp: CreateKernelV2 follows the version-14 members");
#endif

#endif  // BITCONV_ORT_ABI_H_
