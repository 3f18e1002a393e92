#!/usr/bin/env bash
# The GPU session behind docs/recovery.md's general-English result and docs/benchmarks/recover.md, in one job on
# one H200:
#   bash docs/benchmarks/recovery_h200.sh MODEL.gguf EVAL_DIR OUT_DIR BUDGET_S [recovery_general.py options]
# 1. generation speed: bench_synth.py (teacher:N's decoder and sampler);
# 2. the loop's throughput: bench_recover.py, compiled (plain bf16 fine-tune, QAT + distillation);
# 3. recovery_general.py on teacher:N, N sized so that generation takes about GEN_S seconds at the speed step 1
#    measured (at most MAX_TOKENS), the ablation, then the long run fitted into what is left of BUDGET_S (with
#    `--main NAME`, no ablation: the long run's steps fitted at step 2's QAT + distillation step time).
# EVAL_DIR holds lee-select.txt and lee-test.txt (docs/benchmarks/lee_corpus.py). Writes OUT_DIR/*.json and logs.
# NPROC=N (default 1): step 3 runs data-parallel on N GPUs under torchrun (steps 1-2 measure one GPU).
# SKIP_BENCH=1: no steps 1-2 (the whole budget for recovery); generation and step rates from GEN_RATE and STEP_S
# (default: what one H200 measured on 2026-12-01, 62,122 tokens/s and 0.238 s per step of 64 x 1024 tokens).
set -u
MODEL=$1; EVAL=$2; OUT=$3; BUDGET=$4
GEN_S=${GEN_S:-240}; MAX_TOKENS=${MAX_TOKENS:-48000000}; NPROC=${NPROC:-1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
T0=$(date +%s)
if [ "${SKIP_BENCH:-0}" = 1 ]; then  # recovery only, at the rates of the 2026-12-01 H200 run (recover.md)
    RATE=${GEN_RATE:-62122}; STEP_S=${STEP_S:-0.238}; COMPILE=1
else
    python3 docs/benchmarks/bench_synth.py --model "$MODEL" --batch 2048 --length 512 \
        --json "$OUT/bench_synth.json" > "$OUT/bench.log" 2>&1
    python3 docs/benchmarks/bench_recover.py --model "$MODEL" --steps 10 --warmup 3 --compile --only plain,qat_distill \
        --json "$OUT/bench_compile.json" >> "$OUT/bench.log" 2>&1 && COMPILE=1 || COMPILE=0  # the long run compiles if this did
    RATE=$(python3 -c 'import json, sys
try:
    print(max(r["tokens_per_s"] for r in json.load(open(sys.argv[1]))["results"]))
except (OSError, KeyError, TypeError, ValueError):
    print(18_000)  # the generic loop'"'"'s measured speed (docs/benchmarks/recover.md)' "$OUT/bench_synth.json")
    STEP_S=$(python3 -c 'import json, sys
try:
    print(next(r["step_s"] for r in json.load(open(sys.argv[1]))["results"] if r["config"] == "qat_distill"))
except (OSError, KeyError, TypeError, ValueError, StopIteration):
    print(0)' "$OUT/bench_compile.json")
fi
# N GPUs write N x as much in the same time
TOKENS=$(python3 -c "print(int(min($MAX_TOKENS, $RATE * $GEN_S * $NPROC)))")
touch "$OUT/bench.done"  # other jobs sharing the GPU wait for this, so the throughput numbers are the loop's alone
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
echo "bench_s=$(( $(date +%s) - T0 )) compile=$COMPILE teacher_tokens=$TOKENS step_s=$STEP_S left_s=$LEFT" >> "$OUT/bench.log"
LAUNCH=(python3); [ "$NPROC" -gt 1 ] && LAUNCH=(python3 -m torch.distributed.run --nproc_per_node "$NPROC")
"${LAUNCH[@]}" docs/benchmarks/recovery_general.py --model "$MODEL" --select "$EVAL/lee-select.txt" \
    --test "$EVAL/lee-test.txt" --extra tests/support/fixtures/shakespeare_200k.txt --work /tmp/runs \
    --results "$OUT/recovery_general.json" --teacher-tokens "$TOKENS?batch=2048" --deadline-s "$LEFT" \
    --step-s "$STEP_S" --gen-s "$GEN_S" --compile $COMPILE "${@:5}" > "$OUT/recovery.log" 2>&1
echo "exit=$? total_s=$(( $(date +%s) - T0 ))" >> "$OUT/recovery.log"
