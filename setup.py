"""Builds the ONNX Runtime custom op library (bitconv/_ternary_ops.so) with the package; metadata is in pyproject.toml.

The library is a plain shared library that ONNX Runtime loads with dlopen and that Python never imports, so it has
no PyInit function and carries a platform name without the Python ABI tag. It links nothing from ONNX Runtime (the
C ABI it uses is declared in formats/ort_op/ort_abi.h) and exports only RegisterCustomOps (exports.map).

Build in a checkout:  python setup.py build_ext --inplace
"""

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OP_DIR = Path("formats") / "ort_op"
LIBRARY_BASENAME = "_ternary_ops"


def library_filename() -> str:
    if sys.platform == "win32":
        return LIBRARY_BASENAME + ".dll"
    return LIBRARY_BASENAME + (".dylib" if sys.platform == "darwin" else ".so")


class BuildOpLibrary(build_ext):
    """build_ext for a non-module shared library: plain file name, no PyInit export."""

    def get_ext_filename(self, fullname: str) -> str:
        parts = fullname.split(".")
        return str(Path(*parts[:-1]) / library_filename())

    def get_export_symbols(self, ext):  # the .def file on Windows would otherwise demand PyInit_...
        return ext.export_symbols


link_args = []
if sys.platform.startswith("linux"):
    link_args.append(f"-Wl,--version-script={(Path(__file__).parent / OP_DIR / 'exports.map').resolve()}")

ternary_ops = Extension(
    f"bitconv.{LIBRARY_BASENAME}",
    sources=[str(OP_DIR / name) for name in
             ("register.cc", "op_support.cc", "ternary_matmul.cc", "half_matmul.cc", "int8_matmul.cc",
              "kernels_scalar.cc", "kernels_avx2.cc", "kernels_avx512.cc")],
    depends=[str(OP_DIR / name) for name in ("ort_abi.h", "op_support.h", "kernels.h", "exports.map")],
    include_dirs=[str(OP_DIR)],
    language="c++",
    # SIMD kernels carry their own target attributes: no global -mavx flags, so the library loads on any x86-64
    extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden", "-fvisibility-inlines-hidden"],
    extra_link_args=link_args,
    export_symbols=["RegisterCustomOps"],
)

setup(ext_modules=[ternary_ops], cmdclass={"build_ext": BuildOpLibrary})
