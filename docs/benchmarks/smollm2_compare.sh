#!/usr/bin/env bash
# The SmolLM2-135M comparison in docs/benchmarks/smollm2_compare.md: six schemes, perplexity on the held-out
# last tenth of the Shakespeare text (first 20,000 tokens of it, windows of 512), then the report.
# Run from the repository root with ../shared/data beside it; takes about an hour on 2 busy cores.
set -euo pipefail
gguf=$(PYTHONPATH=docs/benchmarks python -c "from bench_support import smollm2_gguf; print(smollm2_gguf())")
out=${1:-runs/smol}
python -m bitconv compare "$gguf" --bits 16,8,4,2,1.58,1 --task perplexity \
    --data ../shared/data/text/shakespeare.txt --start-fraction 0.9 --max-tokens 20000 --context 512 \
    --latency-repeats 3 --out "$out" --delete-models --no-progress
mkdir -p docs/benchmarks/smollm2_compare
cp "$out"/bits-*.json docs/benchmarks/smollm2_compare/
python -m bitconv report docs/benchmarks/smollm2_compare --reference docs/benchmarks/bitnet_b158_reference.csv \
    --markdown docs/benchmarks/smollm2_compare/report.md --html docs/benchmarks/smollm2_compare/report.html \
    --json docs/benchmarks/smollm2_compare/report.json --title "SmolLM2-135M-Instruct: six schemes, held-out Shakespeare perplexity"
