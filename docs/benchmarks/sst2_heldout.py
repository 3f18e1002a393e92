"""A held-out split of SST-2's *training* data for choosing recovery options (docs/recovery.md).

GLUE's SST-2 train split holds every phrase of its sentences, so a random split of it scores phrases whose
sentence (and sibling phrases) were trained on. This split holds out whole sentences instead:

- candidates: examples of at least 10 words ending in sentence punctuation (. ! ?) that occur in no other
  example (a longer one would contain them);
- `--n` of them (fixed seed) are the held-out sentences (dev.tsv);
- train.tsv is every other example of the input files less each one that is a run of whole words of a
  held-out sentence, so no phrase of a held-out sentence is trained on.

    PYTHONPATH=. python docs/benchmarks/sst2_heldout.py ../shared/data/sst2/train.tsv \
        ../shared/data/sst2/validation.tsv --n 1500 --seed 0 --out runs/sst2-heldout

sst2/test.tsv is never read here: it is for the final numbers only.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from bitconv.train.data import read_labelled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="TSV files of the GLUE SST-2 train split")
    ap.add_argument("--n", type=int, default=1500, help="held-out sentences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    rows: list[tuple[str, str]] = []
    for path in args.inputs:
        data = read_labelled(path)
        rows += list(zip(data.texts, data.labels))
    rows = list(dict.fromkeys(rows))  # a phrase listed twice is one example
    blob = "\n" + "\n".join(t for t, _ in rows) + "\n"
    candidates = [(t, y) for t, y in rows
                  if len(t.split()) >= 10 and t.rstrip()[-1:] in ".!?" and blob.count(t) == 1]
    held = random.Random(args.seed).sample(candidates, args.n)
    held_blob = "\n".join(f" {t} " for t, _ in held)  # spaces: a phrase is whole words of a held-out sentence
    train = [(t, y) for t, y in rows if f" {t} " not in held_blob]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.tsv", train), ("dev.tsv", held)):
        (args.out / name).write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in part), encoding="utf-8")
    print(f"{len(rows)} examples, {len(candidates)} candidate sentences; held out {len(held)} sentences, "
          f"dropped {len(rows) - len(train) - len(held)} of their phrases; train {len(train)}")


if __name__ == "__main__":
    main()
