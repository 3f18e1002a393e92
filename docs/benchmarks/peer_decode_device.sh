#!/usr/bin/env bash
# Issue 13's cross-check: bench_peer_decode.py on the device machine's CPU (no internet), with the carry folder
# that docs/benchmarks/peer_decode_carry.py assembled; a job for device_job.sh, which runs it in the background
# from a copy of the repository (peer_decode.md, "Cross-check on a second CPU: how to run it"):
#
#   mkdir -p /tmp/peer13 && cp -r .carry/xcheck13 /tmp/peer13/carry
#   JOB_CPUS=8-15 bash docs/benchmarks/device_job.sh start /tmp/peer13 docs/benchmarks/peer_decode_device.sh \
#       /tmp/peer13/carry /tmp/peer13
#   bash docs/benchmarks/device_job.sh wait 560 /tmp/peer13 $OUT       # again, at once, until DONE
#
# The steps, each skipped when an earlier job finished it (start again after a failure; a fresh machine starts
# over):
#   1. wheels: the ones of CARRY/wheels that this Python lacks (peer_decode_carry.py needed), pip --no-index
#      --no-deps --target SITE (/tmp/site, put first on PYTHONPATH)
#   2. llama-cpp-python from CARRY's pruned sdist into SITE (--no-build-isolation: scikit-build-core, cmake and
#      ninja from the machine or step 1), then the check that nothing is left to install
#   3. the op library: python3 setup.py build_ext --inplace
#   4. the benchmark, bench_peer_decode.py --llama-tokenizer CARRY/smollm2-tokenizer --workdir STATE/work, as the
#      committed tables ran: threads 1 and 2 with ONNX Runtime's pool spin off, 2 with spin on; then 8 threads
#      (spin off and on) as extra rows. Each writes STATE/<name>.md (poll copies them to $OUT).
# Environment: BENCH_ARGS is added to every benchmark command (e.g. "--rounds 1 --tokens 8" for a dry run);
# RUNS_ONLY="NAME ..." runs only those of RUNS (e.g. the first two, to leave the 8-thread extras out).
# Estimate from timings on a 2-vCPU developer machine: 10-18 min in all (build 1-3, models 2, rows 7-13;
# RUNS_ONLY without the 8-thread rows: 3 less).
set -euo pipefail
SITE=${SITE:-/tmp/site}
RUNS=("threads1-2-spin-off:--threads 1 2 --spin off" "threads2-spin-on:--threads 2 --spin on"
      "threads8-spin-off:--threads 8 --spin off" "threads8-spin-on:--threads 8 --spin on")

job() {  # CARRY STATE: the steps above
    local carry=$1 state=$2 sdist
    ls "$carry"/llama_cpp_python-*.tar.gz >/dev/null 2>&1 && [[ -d $carry/wheels && -d $carry/smollm2-tokenizer ]] \
        || { echo "error: $carry: not a carry folder (peer_decode_carry.py assemble writes one)" >&2; exit 2; }
    sdist=$(ls "$carry"/llama_cpp_python-*.tar.gz)
    export ORT_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 PYTHONPATH="$SITE"
    step() { echo "== $(date -u +%H:%M:%S) $*"; }
    step "machine: $(nproc) CPUs, $(python3 --version), load $(cut -d' ' -f1-3 /proc/loadavg)"
    mkdir -p "$SITE"
    local listed  # an assignment, so that set -e stops the job when no wheel meets a requirement
    listed=$(python3 docs/benchmarks/peer_decode_carry.py needed "$carry")
    mapfile -t wheels < <(printf '%s' "$listed" | grep .)
    step "1. wheels to install: ${#wheels[@]} ${wheels[*]##*/}"
    if ((${#wheels[@]})); then python3 -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"; fi
    if python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.__file__.startswith('$SITE/'))" 2>/dev/null; then
        step "2. llama-cpp-python already in $SITE"
    else
        step "2. building llama-cpp-python from $sdist"
        # GGML_NATIVE on, said outright: ggml turns it off when SOURCE_DATE_EPOCH is set, and a llama.cpp without
        # the CPU's SIMD would be a weak peer (the report's "llama.cpp build" line lists what it was built with)
        CMAKE_ARGS="-DGGML_NATIVE=ON ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-index --no-build-isolation --no-deps --target "$SITE" "$sdist"
    fi
    python3 docs/benchmarks/peer_decode_carry.py needed "$carry" --installed
    # On the H200 machine (2026-12-01: g++ 13.3, cmake 4.4.3 and scikit-build-core 1.1.0 from its torch venv) the
    # built libllama.so does not list libstdc++ as needed, and loading any model crashed (SIGSEGV in print_info's
    # std::string code, since the C++ symbols resolved to whatever the process had loaded). Preloading the system
    # libstdc++ fixed it; a build that links it gets no preload.
    local needed  # read whole first: `readelf | grep -q` can fail under pipefail when grep stops reading early
    needed=$(readelf -d "$SITE/llama_cpp/lib/libllama.so")
    if [[ $needed != *NEEDED*libstdc++* ]]; then
        export LD_PRELOAD="$(g++ -print-file-name=libstdc++.so.6)${LD_PRELOAD:+:$LD_PRELOAD}"
        step "2. libllama.so does not link libstdc++: LD_PRELOAD=$LD_PRELOAD"
    fi
    python3 -c "import llama_cpp, transformers, gguf; print('llama_cpp', llama_cpp.__version__, llama_cpp.__file__,
    '| transformers', transformers.__version__, '| gguf', gguf.__file__)"
    step "3. op library"
    python3 setup.py -q build_ext --inplace
    export PYTHONPATH="$PWD:$SITE"
    for run in "${RUNS[@]}"; do
        local name=${run%%:*} args=${run#*:}
        if [[ -n ${RUNS_ONLY:-} && " $RUNS_ONLY " != *" $name "* ]]; then continue; fi
        if [[ -s $state/$name.md ]]; then step "4. $name: done earlier"; continue; fi
        step "4. $name: bench_peer_decode.py $args ${BENCH_ARGS:-}"
        # shellcheck disable=SC2086  # the arguments are words
        python3 docs/benchmarks/bench_peer_decode.py $args ${BENCH_ARGS:-} --llama-tokenizer "$carry/smollm2-tokenizer" \
            --workdir "$state/work" --out "$state/$name.md"
    done
    step "all done"
}

[[ $# -eq 2 && -d $1 ]] || { echo "usage: $0 CARRY STATE (a job for device_job.sh; CARRY as peer_decode_carry.py assembles it)" >&2; exit 2; }
job "$@"
