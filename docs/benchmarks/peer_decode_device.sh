#!/usr/bin/env bash
# Issue 13's cross-check: bench_peer_decode.py on the device machine's CPU (no internet), from the repository root
# of the copy that travels there, with the carry folder that docs/benchmarks/peer_decode_carry.py assembled.
#
#   bash docs/benchmarks/peer_decode_device.sh start CARRY [STATE]   # starts the job in the background, returns
#   bash docs/benchmarks/peer_decode_device.sh poll [STATE] [DEST]   # state, log tail; copies reports to DEST
#   bash docs/benchmarks/peer_decode_device.sh wait SECONDS [STATE] [DEST]   # poll once done or SECONDS passed
#
# A call's $OUT is new for every call, so the job keeps its state in STATE (default /tmp/peer13, on the device's
# disk: a copy of CARRY, so later calls need not carry it; the models, ~4 GB, in STATE/work) and poll copies the
# small files (log, reports) to DEST, e.g. $OUT.
# The job, one step after another, each skipped when an earlier job finished it (start again after a failure
# or a lost machine on the same disk; a fresh machine starts over):
#   1. wheels: the ones of CARRY/wheels that this Python lacks (peer_decode_carry.py needed), pip --no-index
#      --no-deps --target SITE (/tmp/site, put first on PYTHONPATH)
#   2. llama-cpp-python from CARRY's pruned sdist into SITE (--no-build-isolation: scikit-build-core, cmake and
#      ninja from the machine or step 1), then the check that nothing is left to install
#   3. the op library: python setup.py build_ext --inplace
#   4. the benchmark, bench_peer_decode.py --llama-tokenizer CARRY/smollm2-tokenizer --workdir STATE/work, as the
#      committed tables ran: threads 1 and 2 with ONNX Runtime's pool spin off, 2 with spin on; then 8 threads
#      (spin off and on) as extra rows. Each writes STATE/<name>.md; STATE/done holds the job's exit status.
# Environment: BENCH_ARGS is added to every benchmark command (e.g. "--rounds 1 --tokens 8" for a dry run);
# RUNS_ONLY="NAME ..." runs only those of RUNS (e.g. the first two, to leave the 8-thread extras out).
set -euo pipefail
# From timings on a 2-vCPU developer machine (peer_decode.md, "Cross-check on a second CPU: how to run it")
ESTIMATE="estimate: 10-18 min in all (build 1-3, models 2, rows 7-13; RUNS_ONLY without the 8-thread rows: 3 less)"

usage() { echo "usage: $0 start CARRY [STATE] | poll [STATE] [DEST] | wait SECONDS [STATE] [DEST]" >&2; exit 2; }
SITE=${SITE:-/tmp/site}
RUNS=("threads1-2-spin-off:--threads 1 2 --spin off" "threads2-spin-on:--threads 2 --spin on"
      "threads8-spin-off:--threads 8 --spin off" "threads8-spin-on:--threads 8 --spin on")

job() {  # CARRY STATE: the steps above, in the foreground; start runs it under setsid
    local carry=$2/carry state=$2 sdist
    if [[ ! -d $carry ]]; then rm -rf "$carry.partial"; cp -r "$1" "$carry.partial"; mv "$carry.partial" "$carry"; fi
    sdist=$(ls "$carry"/llama_cpp_python-*.tar.gz)
    export ORT_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 PYTHONPATH="$SITE"
    step() { echo "== $(date -u +%H:%M:%S) $*"; }
    step "machine: $(nproc) CPUs, $(python --version), load $(cut -d' ' -f1-3 /proc/loadavg)"
    mkdir -p "$SITE"
    local listed  # an assignment, so that set -e stops the job when no wheel meets a requirement
    listed=$(python docs/benchmarks/peer_decode_carry.py needed "$carry")
    mapfile -t wheels < <(printf '%s' "$listed" | grep .)
    step "1. wheels to install: ${#wheels[@]} ${wheels[*]##*/}"
    if ((${#wheels[@]})); then python -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"; fi
    if python -c "import llama_cpp, sys; sys.exit(not llama_cpp.__file__.startswith('$SITE/'))" 2>/dev/null; then
        step "2. llama-cpp-python already in $SITE"
    else
        step "2. building llama-cpp-python from $sdist"
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python -m pip install --no-index --no-build-isolation --no-deps --target "$SITE" "$sdist"
    fi
    python docs/benchmarks/peer_decode_carry.py needed "$carry" --installed
    python -c "import llama_cpp, transformers, gguf; print('llama_cpp', llama_cpp.__version__, llama_cpp.__file__,
    '| transformers', transformers.__version__, '| gguf', gguf.__file__)"
    step "3. op library"
    python setup.py -q build_ext --inplace
    export PYTHONPATH="$PWD:$SITE"
    for run in "${RUNS[@]}"; do
        local name=${run%%:*} args=${run#*:}
        if [[ -n ${RUNS_ONLY:-} && " $RUNS_ONLY " != *" $name "* ]]; then continue; fi
        if [[ -s $state/$name.md ]]; then step "4. $name: done earlier"; continue; fi
        step "4. $name: bench_peer_decode.py $args ${BENCH_ARGS:-}"
        # shellcheck disable=SC2086  # the arguments are words
        python docs/benchmarks/bench_peer_decode.py $args ${BENCH_ARGS:-} --llama-tokenizer "$carry/smollm2-tokenizer" \
            --workdir "$state/work" --out "$state/$name.md"
    done
    step "all done"
}

case ${1:-} in
    start)
        [[ $# -ge 2 ]] || usage
        carry=$(realpath "$2"); state=${3:-/tmp/peer13}
        [[ -f setup.py && -f docs/benchmarks/bench_peer_decode.py ]] || { echo "error: run from the repository root" >&2; exit 2; }
        ls "$carry"/llama_cpp_python-*.tar.gz >/dev/null 2>&1 && [[ -d $carry/wheels && -d $carry/smollm2-tokenizer ]] \
            || { echo "error: $carry: not a carry folder (peer_decode_carry.py assemble writes one)" >&2; exit 2; }
        mkdir -p "$state"
        if [[ -f $state/pid ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
            echo "error: a job is running (pid $(cat "$state/pid")); poll it" >&2; exit 1
        fi
        rm -f "$state/done"
        # this script's job step in a new session, so that it outlives the call; done gets its status however
        # it ends, pid the job's shell (not setsid's, which may fork). It runs a copy: bash reads a script as it
        # goes, and a later call may lay the working tree anew under it
        cp "$0" "$state/job.sh"
        setsid bash -c "echo \$\$ >'$state/pid'; bash '$state/job.sh' __job '$carry' '$state' >>'$state/log.txt' 2>&1;
                        echo \$? >'$state/done'" </dev/null >/dev/null 2>&1 &
        sleep 1
        echo "started (pid $(cat "$state/pid")); log $state/log.txt; $ESTIMATE"
        ;;
    wait)
        [[ ${2:-} =~ ^[0-9]+$ ]] || usage
        state=${3:-/tmp/peer13}
        for ((i = 0; i < $2; i += 5)); do [[ -f $state/done ]] && break; sleep 5; done
        exec bash "$0" poll "${@:3}"
        ;;
    poll)
        state=${2:-/tmp/peer13}; dest=${3:-}
        [[ -d $state ]] || { echo "error: $state: no job started there" >&2; exit 2; }
        if [[ -f $state/done ]]; then echo "DONE, exit status $(cat "$state/done")";
        elif [[ -f $state/pid ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then echo "RUNNING (pid $(cat "$state/pid"))";
        else echo "STOPPED without finishing: start it again"; fi
        grep '^== ' "$state/log.txt" || true
        echo "-- last lines:"; tail -n 15 "$state/log.txt" | grep -v "^== " || true
        if [[ -n $dest ]]; then
            mkdir -p "$dest"
            cp "$state"/log.txt "$dest"/
            for f in "$state"/*.md; do [[ -e $f ]] && cp "$f" "$dest"/; done
            ls -la "$dest"
        fi
        ;;
    __job) shift; job "$@" ;;
    *) usage ;;
esac
