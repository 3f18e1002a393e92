#!/usr/bin/env bash
# The SST-2 runs of issue 15 on one GPU (docs/recovery.md, "Classification on unseen sentences"): the fp MiniLM
# baseline and the W1.58A16 / W1.58A8 students, options chosen on the held-out dev split, scored on sst2/test.tsv.
# Started in the background from the repository root of the GPU machine:
#
#   setsid nohup bash docs/benchmarks/classify_h200.sh /tmp/c15 900 > /dev/null 2>&1 < /dev/null &
#
# Reads (made here by the commands in classify_runs.py's docstring):
#   .carry/minilm                     all-MiniLM-L6-v2 (classify_runs.py pack --bits 16 --vocab-of ...)
#   .carry/mpnet0, .carry/mpnet1      optional: all-mpnet-base-v2 (pack --bits 8 ... --part-mib 48); without
#                                     them only the runs that need no mpnet are made
#   .carry/sst2-heldout/{train,dev,test}.tsv   sst2_heldout.py's split and sst2/test.tsv
#   .carry/wheels/transformers-*.whl  (or .whl/transformers-*.whl) installed into OUT/site when the machine's
#                                     transformers is older than 5.24 (bitconv.load, which recover uses for the
#                                     converted folder, needs 5.24)
# Writes OUT/runner.log, OUT/results.json (after every run; "summary" holds the choice and the test numbers),
# OUT/w/results/NAME.json (each run's, as soon as it ends), OUT/w/NAME.log, and OUT/DONE at the end.
# The second argument is the wall-clock budget in seconds from the start of this script (default 900): no run
# starts with less than --min-left-s (300) left, runs still going then are stopped. Further arguments go to
# `classify_runs.py run` (e.g. --only NAME,..., --parallel N; --device cpu --steps 3 for a smoke test).
set -u
OUT=${1:?usage: classify_h200.sh OUT_DIR [BUDGET_S] [classify_runs.py run options]}
BUDGET=${2:-900}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DATA=${DATA:-.carry/sst2-heldout}
T0=$(date +%s)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
exec > "$OUT/runner.log" 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
echo "start $(date -u '+%Y-%m-%d %H:%M:%S UTC') budget ${BUDGET}s"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

new_enough() { "$PY" -c 'import sys, transformers as t; sys.exit(tuple(map(int, t.__version__.split(".")[:2])) < (5, 24))'; }
if ! new_enough; then
    for wheel in .carry/wheels/transformers-*.whl .whl/transformers-*.whl; do
        [ -e "$wheel" ] && "$PY" -m pip install --quiet --no-deps --no-index --upgrade --target "$OUT/site" "$wheel" \
            && break
    done
    export PYTHONPATH=$OUT/site:$PYTHONPATH
    new_enough || { echo "transformers >= 5.24 is needed: carry .carry/wheels/transformers-5.24.0-py3-none-any.whl"; exit 1; }
fi
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

"$PY" docs/benchmarks/classify_runs.py unpack .carry/minilm "$OUT/models/minilm" || exit 1
MPNET=()
if [ -d .carry/mpnet0 ]; then
    "$PY" docs/benchmarks/classify_runs.py unpack .carry/mpnet[0-9]* "$OUT/models/mpnet" || exit 1
    MPNET=(--mpnet "$OUT/models/mpnet")
fi
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
echo "weights unpacked after $(( $(date +%s) - T0 ))s; ${LEFT}s left"
"$PY" docs/benchmarks/classify_runs.py run --minilm "$OUT/models/minilm" "${MPNET[@]}" --sst2 "$DATA" \
    --test "$DATA/test.tsv" --work "$OUT/w" --results "$OUT/results.json" --deadline-s "$LEFT" "$@"
echo "exit=$? total_s=$(( $(date +%s) - T0 ))"
"$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["summary"], indent=1))' "$OUT/results.json"
touch "$OUT/DONE"
