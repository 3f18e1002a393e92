#!/usr/bin/env bash
# The GPU session behind docs/recovery.md and docs/benchmarks/recover.md: the loop's throughput
# (bench_recover.py), then the recipe ablation and the long run (recovery_general.py), in one job on one H200.
#   bash docs/benchmarks/recovery_h200.sh MODEL.gguf EVAL_DIR OUT_DIR
# EVAL_DIR holds lee-select.txt and lee-test.txt (docs/benchmarks/lee_corpus.py). Writes OUT_DIR/*.json and logs.
set -u
MODEL=$1; EVAL=$2; OUT=$3
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
T0=$(date +%s)
python3 docs/benchmarks/bench_recover.py --model "$MODEL" --steps 10 --warmup 3 --json "$OUT/bench.json" \
    > "$OUT/bench.log" 2>&1
python3 docs/benchmarks/bench_recover.py --model "$MODEL" --steps 10 --warmup 3 --compile --only plain,qat_distill \
    --json "$OUT/bench_compile.json" > "$OUT/bench_compile.log" 2>&1 && COMPILE=1 || COMPILE=0
echo "compile=$COMPILE bench_s=$(( $(date +%s) - T0 ))" >> "$OUT/bench.log"
python3 docs/benchmarks/recovery_general.py --model "$MODEL" --select "$EVAL/lee-select.txt" \
    --test "$EVAL/lee-test.txt" --extra tests/support/fixtures/shakespeare_200k.txt --work /tmp/runs \
    --results "$OUT/recovery_general.json" --compile $COMPILE "${@:4}" > "$OUT/recovery.log" 2>&1
echo "exit=$? total_s=$(( $(date +%s) - T0 ))" >> "$OUT/recovery.log"
