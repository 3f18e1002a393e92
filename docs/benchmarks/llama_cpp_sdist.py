"""Write a pruned copy of the official llama-cpp-python sdist that still builds the CPU library on x86-64 Linux,
small enough to carry to a machine without internet (the official 0.3.36 sdist is 77 MB; the copy about 5 MB).

    python docs/benchmarks/llama_cpp_sdist.py /tmp/lcp/llama_cpp_python-0.3.36.tar.gz OUT_DIR

The official file comes from `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`; its sha256 is
checked against PINNED. OUT_DIR/llama_cpp_python-0.3.36.tar.gz is the same package and version (same PKG-INFO,
CMakeLists.txt, pyproject.toml and sources of every file kept, members in the same order with the same metadata),
written deterministically (gzip mtime 0), so the same input always gives the same bytes; build it with
`pip install --no-build-isolation --no-deps OUT_DIR/llama_cpp_python-0.3.36.tar.gz`.

What goes, and why a default CPU build does not miss it:
- .git/ (the sdist builder's checkout): the version comes from llama_cpp/__init__.py (scikit-build-core's regex
  provider); llama.cpp's cmake/build-info.cmake falls back to commit "unknown" without it.
- examples/, docs/, docker/, tests/ of llama-cpp-python: not part of the wheel (wheel.packages = ["llama_cpp"]).
- vendor/llama.cpp/: models/ (tokenizer GGUFs for llama.cpp's tests), docs/, media/, benches/, tests/, examples/,
  pocs/, app/, scripts/, conversion/, gguf-py/, .github/, .devops/ and every tools/* but tools/mtmd: added to the
  build only when llama.cpp is the top-level CMake project (LLAMA_STANDALONE), never as llama-cpp-python's
  subdirectory; tools/mtmd stays (LLAVA_BUILD, on by default, builds it).
- vendor/llama.cpp/ggml/src/ggml-<backend>/ for every backend but the CPU one: ggml adds a backend's folder only
  when its GGML_<BACKEND> option is on, and each is off by default (BLAS and Metal default on only on Apple;
  CANN has no option() at all, so it is unset, i.e. off);
  the script checks that in ggml/CMakeLists.txt and stops if a removed backend's default changed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
import tarfile
from pathlib import Path

PINNED = {"llama_cpp_python-0.3.36.tar.gz": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"}
DROPPED = (".git", "examples", "docs", "docker", "tests",
           *(f"vendor/llama.cpp/{d}" for d in ("models", "docs", "media", "benches", "tests", "examples", "pocs",
                                                "app", "scripts", "conversion", "gguf-py", ".github", ".devops")))
KEPT_TOOL = "vendor/llama.cpp/tools/mtmd"
BACKENDS = "vendor/llama.cpp/ggml/src/ggml-"
APPLE_ONLY_DEFAULTS = {"${GGML_BLAS_DEFAULT}", "${GGML_METAL_DEFAULT}"}  # ON only if(APPLE), ggml/CMakeLists.txt


def backend_of(rel: str) -> str | None:
    """The ggml backend whose folder holds `rel` (a path inside the sdist's top folder), if any."""
    inside = rel.removeprefix(BACKENDS)
    return inside.split("/")[0] if inside != rel and "/" in inside else None


def dropped(rel: str) -> bool:
    """Whether the member at `rel` is left out."""
    if any(rel == d or rel.startswith(d + "/") for d in DROPPED):
        return True
    if rel.startswith("vendor/llama.cpp/tools/") and rel.count("/") >= 4:  # a tool's folder, not tools/CMakeLists
        return not rel.startswith(KEPT_TOOL + "/")
    return backend_of(rel) not in (None, "cpu")


def check_backend_defaults(tar: tarfile.TarFile, top: str, rels: list[str]) -> None:
    """Every removed ggml backend must be off by default on Linux, or the pruned build would miss its folder."""
    text = tar.extractfile(f"{top}/vendor/llama.cpp/ggml/CMakeLists.txt").read().decode()
    defaults = {name.lower(): value for name, value in re.findall(r'option\(GGML_(\w+)\s+"[^"]*"\s+(\S+)\)', text)}
    for backend in sorted({backend_of(rel) for rel in rels} - {None, "cpu"}):
        default = defaults.get(backend)
        if default is not None and default != "OFF" and default not in APPLE_ONLY_DEFAULTS:  # None: no option(),
            # an unset CMake variable is false (GGML_CANN)
            sys.exit(f"error: ggml backend {backend} is not off by default ({default}); update the pruning")


def prune(sdist: Path, out_dir: Path) -> Path:
    """Write out_dir/<sdist's name>, pruned; print its size and sha256."""
    if not sdist.is_file():
        sys.exit(f"error: {sdist}: no such file")
    expected = PINNED.get(sdist.name)
    if expected is None:
        sys.exit(f"error: {sdist.name}: not a pinned sdist (known: {', '.join(PINNED)})")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != expected:
        sys.exit(f"error: {sdist}: sha256 {digest} is not the official file's {expected}")
    top = sdist.name.removesuffix(".tar.gz")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / sdist.name
    partial = out.with_name(out.name + ".partial")
    kept = removed = 0
    with tarfile.open(sdist) as src:
        members = src.getmembers()
        rels = [m.name.partition("/")[2] for m in members]
        if any(m.name.partition("/")[0] != top for m in members):
            sys.exit(f"error: {sdist}: members outside its top folder {top}/")
        check_backend_defaults(src, top, rels)
        # mtime=0 and no file name in the gzip header: the same input gives the same bytes
        with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=src.format) as dst:
            for m, rel in zip(members, rels):
                if dropped(rel):
                    removed += m.size
                    continue
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
                kept += m.size
    partial.replace(out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB compressed ({kept / 1e6:.1f} MB of files kept, "
          f"{removed / 1e6:.1f} MB left out; official {sdist.stat().st_size / 1e6:.1f} MB), "
          f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdist", type=Path, help="the official llama_cpp_python-VERSION.tar.gz")
    parser.add_argument("out_dir", type=Path, help="folder for the pruned sdist (same file name)")
    args = parser.parse_args()
    prune(args.sdist, args.out_dir)


if __name__ == "__main__":
    main()
