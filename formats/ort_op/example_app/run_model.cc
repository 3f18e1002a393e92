// run_model: a host program that runs a .onnx using bitconv.TernaryMatMul through ONNX Runtime's C API.
//
// It is what any C or C++ application that already ships ONNX Runtime does to use the op: load libonnxruntime,
// register the op library on the session options, create a session, run. It links nothing from ONNX Runtime at
// build time -- the runtime is dlopen()ed from a path given on the command line -- and uses the hand-written
// declarations of ../ort_abi.h instead of ONNX Runtime's headers (which this project cannot install).
//
//   run_model LIBONNXRUNTIME OP_LIBRARY MODEL.onnx OUT.f32 [--output NAME] [--threads N] INPUT [INPUT...]
//     INPUT  NAME:DTYPE:SHAPE:FILE  DTYPE float32 or int64, SHAPE like 3x70, FILE raw little-endian values
//            e.g.  A:float32:3x70:a.f32    input_ids:int64:2x6:ids.i64
//     --output NAME  the output to write (default: the model's first output; it must be float32)
//     --threads N    intra-op threads, the pool the op runs on (default: ONNX Runtime's choice)
//   Writes the output as raw little-endian float32 to OUT.f32 and prints its name and shape, e.g. "Y [3, 37]".
//
// Build: g++ -std=c++17 -O2 -I formats/ort_op -o run_model formats/ort_op/example_app/run_model.cc -ldl
// Exit codes: 0 success, 1 an error (one line on stderr: ONNX Runtime's message for every failed call), 2 usage.
// tests/test_ort_app.py builds it and checks its output against the Python onnxruntime session.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort_abi.h"

#if defined(_WIN32)
#error "run_model loads ONNX Runtime with dlopen and passes char paths: POSIX only"
#endif
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "run_model reads and writes little-endian files as host memory: little-endian hosts only"
#endif

namespace {

// RegisterCustomOpsLibrary_V2 (entry 228) is the newest entry this program calls: ONNX Runtime 1.14 or newer.
// Asking for the oldest version that has it lets the program run on every runtime that can; the op library asks
// the runtime for its own version (16 or 17) when it is registered.
constexpr uint32_t kApiVersion = 14;

const OrtApi* g_ort = nullptr;

// Every failure ends up here and is printed by main as one line.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(OrtStatus* status) {
  if (!status) return;
  std::string message = g_ort->GetErrorMessage(status);
  g_ort->ReleaseStatus(status);
  throw Failure(message);
}

// Owning handles: each runtime object is released by its own Release entry, in reverse order of creation.
template <typename T>
using Owned = std::unique_ptr<T, void (*)(T*)>;

struct Input {
  std::string name;
  ONNXTensorElementDataType dtype = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  std::string path;
  std::vector<unsigned char> bytes;  // the tensor wraps this buffer, so it lives as long as the input
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::vector<int64_t> parse_shape(const std::string& text, const std::string& arg) {
  std::vector<int64_t> shape;
  std::stringstream parts(text);
  std::string part;
  while (std::getline(parts, part, 'x')) {
    char* end = nullptr;
    const long long dim = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || dim < 0) throw Usage("input '" + arg + "': bad shape '" + text + "'");
    shape.push_back(dim);
  }
  if (shape.empty()) throw Usage("input '" + arg + "': empty shape");
  return shape;
}

Input parse_input(const std::string& arg) {
  // NAME:DTYPE:SHAPE:FILE -- the file path is everything after the third colon, so it may contain colons.
  const size_t a = arg.find(':');
  const size_t b = a == std::string::npos ? a : arg.find(':', a + 1);
  const size_t c = b == std::string::npos ? b : arg.find(':', b + 1);
  if (c == std::string::npos || a == 0 || c + 1 == arg.size()) {
    throw Usage("input '" + arg + "' is not NAME:DTYPE:SHAPE:FILE");
  }
  Input in;
  in.name = arg.substr(0, a);
  const std::string dtype = arg.substr(a + 1, b - a - 1);
  if (dtype == "float32") {
    in.dtype = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  } else if (dtype == "int64") {
    in.dtype = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  } else {
    throw Usage("input '" + arg + "': dtype '" + dtype + "' is not float32 or int64");
  }
  in.shape = parse_shape(arg.substr(b + 1, c - b - 1), arg);
  in.path = arg.substr(c + 1);
  return in;
}

void load_input(Input& in) {
  std::ifstream file(in.path, std::ios::binary);
  if (!file) throw Failure("input '" + in.name + "': cannot open " + in.path);
  in.bytes.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  size_t n_bytes = in.dtype == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4 : 8;
  for (int64_t d : in.shape) {
    if (__builtin_mul_overflow(n_bytes, static_cast<size_t>(d), &n_bytes)) {
      throw Failure("input '" + in.name + "': shape " + shape_str(in.shape) + " is too large");
    }
  }
  if (in.bytes.size() != n_bytes) {
    throw Failure("input '" + in.name + "': " + in.path + " has " + std::to_string(in.bytes.size()) +
                  " bytes, shape " + shape_str(in.shape) + " needs " + std::to_string(n_bytes));
  }
}

const OrtApi* load_runtime(const char* path) {
  // Loaded for the life of the process and never dlclose()d: the runtime keeps threads and static state.
  void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw Failure(std::string("cannot load ONNX Runtime: ") + dlerror());
  auto get_api_base = reinterpret_cast<OrtGetApiBaseFn>(dlsym(handle, "OrtGetApiBase"));
  if (!get_api_base) throw Failure(std::string(path) + " does not export OrtGetApiBase: not an ONNX Runtime library");
  const OrtApiBase* base = get_api_base();
  const OrtApi* api = base->GetApi(kApiVersion);
  if (!api) {
    throw Failure(std::string("ONNX Runtime ") + base->GetVersionString() + " does not provide C API version " +
                  std::to_string(kApiVersion) + " (ONNX Runtime 1.14 or newer is needed)");
  }
  return api;
}

struct Options {
  const char* runtime_path = nullptr;
  const char* op_library_path = nullptr;
  const char* model_path = nullptr;
  const char* out_path = nullptr;
  std::string output_name;  // empty: the model's first output
  int threads = 0;          // 0: ONNX Runtime's default
  std::vector<Input> inputs;
};

Options parse_args(int argc, char** argv) {
  Options opt;
  std::vector<const char*> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--output" || arg == "--threads") {
      if (i + 1 == argc) throw Usage(arg + " needs a value");
      const std::string value = argv[++i];
      if (arg == "--output") {
        opt.output_name = value;
      } else {
        char* end = nullptr;
        const long threads = std::strtol(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || threads < 1 || threads > 1024) {
          throw Usage("--threads needs a positive integer, got '" + value + "'");
        }
        opt.threads = static_cast<int>(threads);
      }
    } else if (positional.size() < 4) {
      positional.push_back(argv[i]);
    } else {
      opt.inputs.push_back(parse_input(arg));
    }
  }
  if (positional.size() < 4 || opt.inputs.empty()) throw Usage("missing arguments");
  opt.runtime_path = positional[0];
  opt.op_library_path = positional[1];
  opt.model_path = positional[2];
  opt.out_path = positional[3];
  return opt;
}

std::string first_output_name(const OrtSession* session) {
  OrtAllocator* allocator = nullptr;  // the runtime's default CPU allocator; not released by us
  check(g_ort->GetAllocatorWithDefaultOptions(&allocator));
  char* name = nullptr;
  check(g_ort->SessionGetOutputName(session, 0, allocator, &name));
  std::string result = name;
  check(g_ort->AllocatorFree(allocator, name));
  return result;
}

void write_output(const OrtValue* value, const std::string& name, const char* path) {
  OrtTensorTypeAndShapeInfo* raw_info = nullptr;
  check(g_ort->GetTensorTypeAndShape(value, &raw_info));
  Owned<OrtTensorTypeAndShapeInfo> info(raw_info, g_ort->ReleaseTensorTypeAndShapeInfo);
  ONNXTensorElementDataType dtype = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  check(g_ort->GetTensorElementType(info.get(), &dtype));
  if (dtype != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    throw Failure("output '" + name + "' is not float32 (ONNX element type " + std::to_string(dtype) + ")");
  }
  size_t rank = 0, count = 0;
  check(g_ort->GetDimensionsCount(info.get(), &rank));
  std::vector<int64_t> shape(rank);
  check(g_ort->GetDimensions(info.get(), shape.data(), rank));
  check(g_ort->GetTensorShapeElementCount(info.get(), &count));
  void* data = nullptr;
  check(g_ort->GetTensorMutableData(const_cast<OrtValue*>(value), &data));

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
  out.close();
  if (!out) throw Failure(std::string("cannot write ") + path);
  std::cout << name << " " << shape_str(shape) << "\n";
}

void run(Options opt) {
  g_ort = load_runtime(opt.runtime_path);

  // Every failure reaches this program as a returned status, printed once by main; the runtime's own logger
  // would print the same run-time errors a second time, so it only reports fatal ones.
  OrtEnv* raw_env = nullptr;
  check(g_ort->CreateEnv(ORT_LOGGING_LEVEL_FATAL, "run_model", &raw_env));
  Owned<OrtEnv> env(raw_env, g_ort->ReleaseEnv);

  OrtSessionOptions* raw_options = nullptr;
  check(g_ort->CreateSessionOptions(&raw_options));
  Owned<OrtSessionOptions> options(raw_options, g_ort->ReleaseSessionOptions);
  if (opt.threads > 0) check(g_ort->SetIntraOpNumThreads(options.get(), opt.threads));
  // The op library must be registered before the session is created: the session resolves the model's
  // bitconv.TernaryMatMul nodes against the domains on these options.
  check(g_ort->RegisterCustomOpsLibrary_V2(options.get(), opt.op_library_path));

  OrtSession* raw_session = nullptr;
  check(g_ort->CreateSession(env.get(), opt.model_path, options.get(), &raw_session));
  Owned<OrtSession> session(raw_session, g_ort->ReleaseSession);
  if (opt.output_name.empty()) opt.output_name = first_output_name(session.get());

  OrtMemoryInfo* raw_memory = nullptr;
  check(g_ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &raw_memory));
  Owned<OrtMemoryInfo> memory(raw_memory, g_ort->ReleaseMemoryInfo);

  std::vector<Owned<OrtValue>> values;
  std::vector<const OrtValue*> value_ptrs;
  std::vector<const char*> names;
  for (Input& in : opt.inputs) {
    load_input(in);
    OrtValue* raw_value = nullptr;
    check(g_ort->CreateTensorWithDataAsOrtValue(memory.get(), in.bytes.data(), in.bytes.size(), in.shape.data(),
                                                in.shape.size(), in.dtype, &raw_value));
    values.emplace_back(raw_value, g_ort->ReleaseValue);
    value_ptrs.push_back(raw_value);
    names.push_back(in.name.c_str());
  }

  const char* output_name = opt.output_name.c_str();
  OrtValue* raw_output = nullptr;  // null: the runtime allocates the output
  check(g_ort->Run(session.get(), nullptr, names.data(), value_ptrs.data(), names.size(), &output_name, 1,
                   &raw_output));
  Owned<OrtValue> output(raw_output, g_ort->ReleaseValue);
  write_output(output.get(), opt.output_name, opt.out_path);
}

// One line, whatever the message holds: callers (and tests) read the first line of stderr.
void print_error(const char* what) {
  std::string line = std::string("run_model: ") + what;
  for (char& ch : line) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::cerr << line << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    run(parse_args(argc, argv));
  } catch (const Usage& e) {
    print_error(e.what());
    std::cerr << "usage: run_model LIBONNXRUNTIME OP_LIBRARY MODEL.onnx OUT.f32 [--output NAME] [--threads N] "
                 "NAME:DTYPE:SHAPE:FILE...\n";
    return 2;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
  return 0;
}
