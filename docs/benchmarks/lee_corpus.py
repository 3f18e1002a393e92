"""The held-out general English text of docs/recovery.md: the Lee Background Corpus (Lee, Pincombe & Welsh 2005:
news articles of the Australian Broadcasting Corporation), as the `gensim` wheel ships it in its test data.

    pip download --no-deps --only-binary=:all: gensim==4.3.3 -d /tmp/gensim
    python docs/benchmarks/lee_corpus.py /tmp/gensim/gensim-4.3.3-*.whl OUT_DIR

writes OUT_DIR/lee-select.txt (documents 1-150 of lee_background.cor: recipes are chosen on it) and
OUT_DIR/lee-test.txt (documents 151-300 and the 50 of lee.cor: reported, never used to choose anything);
one document per paragraph, read as Latin-1 (the files' encoding), written as UTF-8.
"""

import sys
import zipfile
from pathlib import Path

PREFIX = "gensim/test/test_data/"


def main() -> None:
    wheel, out = sys.argv[1], Path(sys.argv[2])
    with zipfile.ZipFile(wheel) as z:
        def docs(name: str) -> list[str]:
            return [line.strip() for line in z.read(PREFIX + name).decode("latin-1").splitlines() if line.strip()]

        background, lee = docs("lee_background.cor"), docs("lee.cor")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lee-select.txt").write_text("\n\n".join(background[:150]) + "\n", encoding="utf-8")
    (out / "lee-test.txt").write_text("\n\n".join(background[150:] + lee) + "\n", encoding="utf-8")
    print(f"{len(background)} + {len(lee)} documents -> {out}/lee-select.txt, lee-test.txt")


if __name__ == "__main__":
    main()
