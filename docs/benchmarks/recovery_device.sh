#!/usr/bin/env bash
# Issue 11's GPU run on the device machine: recovery_h200.sh (generation and loop benchmarks, then SmolLM2-135M's
# ternary recovery on text it writes itself, measured on held-out general English) on every GPU of the machine,
# with what recovery_carry.py put in two carry folders; a job for device_job.sh (docs/recovery.md, "Running it
# on the device"):
#
#   call 1, carry .carry/r11a:  mkdir -p /tmp/r11 && cp -r .carry/r11a /tmp/r11/a
#   call 2, carry .carry/r11b:  cp -r .carry/r11b /tmp/r11/b && JOB_CPUS=0-7 bash docs/benchmarks/device_job.sh \
#       start /tmp/r11 docs/benchmarks/recovery_device.sh /tmp/r11 BUDGET_S [recovery_general.py options]
#   then, at once, again until DONE:  bash docs/benchmarks/device_job.sh wait 560 /tmp/r11 $OUT
#
# The steps: join the GGUF's two parts into STATE/model.gguf and check its sha256; install into STATE/site only
# the carried wheels whose version this Python lacks (transformers as pyproject asks, gguf); then
# NPROC=<GPUs> recovery_h200.sh with its results in STATE (gpu.txt, bench*.json, bench.log, recovery_general.json,
# recovery.log), which device_job.sh's poll packs. BUDGET_S: seconds recovery_h200.sh may take in all (its long
# run is fitted into what is left after the benchmarks). GEN_S, MAX_TOKENS, SKIP_BENCH (1: no benchmarks, the
# whole budget for recovery), GEN_RATE, STEP_S: as recovery_h200.sh reads them.
set -euo pipefail
[[ $# -ge 2 && -d $1/a && -d $1/b && $2 =~ ^[0-9]+$ ]] || {
    echo "usage: $0 STATE BUDGET_S [recovery_general.py options] (STATE/a and STATE/b: recovery_carry.py's r11a, r11b)" >&2
    exit 2
}
state=$(realpath "$1") budget=$2
shift 2
step() { echo "== $(date -u +%H:%M:%S) $*"; }
step "machine: $(nproc) CPUs, $(python3 --version), $(nvidia-smi -L | wc -l) GPUs"
if [[ ! -f $state/model.gguf ]]; then
    cat "$state/a/model.gguf.part0" "$state/b/model.gguf.part1" > "$state/model.gguf.partial"
    [[ $(sha256sum "$state/model.gguf.partial" | cut -d' ' -f1) == $(cat "$state/a/model.gguf.sha256") ]] \
        || { echo "error: the joined GGUF's sha256 differs from $state/a/model.gguf.sha256: carry both parts again" >&2; exit 1; }
    mv "$state/model.gguf.partial" "$state/model.gguf"
fi
step "1. model.gguf joined and checked"
mapfile -t wheels < <(python3 - "$state/a/wheels" <<'EOF'
import importlib.metadata, pathlib, sys
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    try:
        if importlib.metadata.version(name) == version:
            continue
    except importlib.metadata.PackageNotFoundError:
        pass
    print(wheel)
EOF
)
mkdir -p "$state/site"
if ((${#wheels[@]})); then python3 -m pip install -q --no-index --no-deps --no-compile --target "$state/site" "${wheels[@]}"; fi
export PYTHONPATH="$PWD:$state/site"
step "2. wheels installed: ${#wheels[@]} ${wheels[*]##*/}; $(python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
step "3. recovery_h200.sh, budget ${budget} s"
NPROC=$(nvidia-smi -L | wc -l) bash docs/benchmarks/recovery_h200.sh "$state/model.gguf" "$state/a/lee" "$state" "$budget" "$@"
step "all done: $(tail -n 1 "$state/recovery.log")"
