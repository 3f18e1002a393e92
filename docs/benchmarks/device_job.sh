#!/usr/bin/env bash
# A job on the device machine that outlives the call starting it (a call runs at most 10 minutes, and the machine
# is given back 30 s after a call ends, so long work runs in the background and later calls, made at once, poll it).
#
#   bash docs/benchmarks/device_job.sh start STATE SCRIPT [ARGS...]   # runs `bash SCRIPT ARGS...` in the background
#   bash docs/benchmarks/device_job.sh poll STATE [DEST]              # state, step lines, log tail; copies to DEST
#   bash docs/benchmarks/device_job.sh wait SECONDS STATE [DEST]      # poll once the job is done or SECONDS passed
#
# start copies the repository (tracked and untracked files git does not ignore, as a call carries them) to STATE/repo and runs SCRIPT there (a later call lays the working
# tree anew, and bash reads a script as it runs it), in a new session (setsid), output to STATE/log.txt, its exit
# status to STATE/done; JOB_CPUS (e.g. "8-15") pins it to those CPUs with taskset, so that two jobs, such as a
# CPU benchmark and a GPU run, do not share cores. Lines a job prints starting with "== " are its steps, which
# poll lists. poll packs the log and the job's small result files (STATE/*.md, *.json, *.log, *.txt) into
# DEST/NAME.tar.gz, NAME the folder's name: one file per job, since a call brings back at most 8 files.
# Used by peer_decode_device.sh (issue 13) and recovery_device.sh (issue 11).
set -euo pipefail

usage() { echo "usage: $0 start STATE SCRIPT [ARGS...] | poll STATE [DEST] | wait SECONDS STATE [DEST]" >&2; exit 2; }
running() { [[ -f $1/pid ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

case ${1:-} in
    start)
        [[ $# -ge 3 ]] || usage
        state=$(realpath -m "$2"); script=$3; shift 3
        [[ -f $script ]] || { echo "error: $script: no such script (run from the repository root)" >&2; exit 2; }
        git rev-parse --show-toplevel >/dev/null 2>&1 || { echo "error: run from the repository root" >&2; exit 2; }
        mkdir -p "$state"
        if running "$state"; then echo "error: a job is running in $state (pid $(cat "$state/pid")); poll it" >&2; exit 1; fi
        rm -rf "$state/repo.partial" "$state/done"
        mkdir "$state/repo.partial"
        git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$state/repo.partial"
        for built in bitconv/_ternary_ops.so; do [[ -f $built ]] && cp "$built" "$state/repo.partial/$built"; done
        rm -rf "$state/repo" && mv "$state/repo.partial" "$state/repo"
        pin=(); [[ -n ${JOB_CPUS:-} ]] && pin=(taskset -c "$JOB_CPUS")
        printf -v cmd '%q ' "${pin[@]}" bash "$script" "$@"
        setsid bash -c "echo \$\$ >'$state/pid'; cd '$state/repo' && $cmd >>'$state/log.txt' 2>&1; echo \$? >'$state/done'" \
            </dev/null >/dev/null 2>&1 &
        sleep 1
        echo "started (pid $(cat "$state/pid"), CPUs ${JOB_CPUS:-all}); log $state/log.txt"
        ;;
    wait)
        [[ ${2:-} =~ ^[0-9]+$ && $# -ge 3 ]] || usage
        for ((i = 0; i < $2; i += 5)); do [[ -f $3/done ]] && break; sleep 5; done
        exec bash "$0" poll "${@:3}"
        ;;
    poll)
        [[ $# -ge 2 ]] || usage
        state=$2; dest=${3:-}
        [[ -d $state ]] || { echo "error: $state: no job started there" >&2; exit 2; }
        if [[ -f $state/done ]]; then echo "DONE, exit status $(cat "$state/done")"
        elif running "$state"; then echo "RUNNING (pid $(cat "$state/pid"))"
        else echo "STOPPED without finishing: start it again"; fi
        grep '^== ' "$state/log.txt" || true
        echo "-- last lines:"; tail -n 15 "$state/log.txt" | grep -v "^== " || true
        if [[ -n $dest ]]; then
            mkdir -p "$dest"
            mapfile -t files < <(cd "$state" && ls -1 ./*.md ./*.json ./*.log ./*.txt 2>/dev/null)
            tar -czf "$dest/$(basename "$state").tar.gz" -C "$state" "${files[@]}"
            echo "packed into $dest/$(basename "$state").tar.gz: ${files[*]}"
        fi
        ;;
    *) usage ;;
esac
