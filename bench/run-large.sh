#!/usr/bin/env bash
# run-large.sh - embcache-bench's large scenario, recorded: a table larger
# than memory next to mmap and mmap-random at the same memory.
#
# Builds embcache-bench and embcached (Release, in $BUILD, default build),
# waits (up to QUIET_WAIT seconds) for the machine to be idle, then runs
# `--scenario large`: a LARGE_ROWS x 128 f32 table (default 16,000,000 rows,
# 7.6 GiB) is streamed to a .npy under $TMPDIR (never held in memory; rows are
# checked by recomputing them), imported, and gathered from cold with
# Zipf(0.99) ids in batches of 256 for SECONDS_PER (default 5) seconds by
# embcached with --budget LARGE_BUDGET (default 2G), then by mmap and
# mmap-random with the memory embcache used (its segment plus its daemon's
# private memory), REPEAT (default 3) times. Writes
#
#   bench/results/<YYYY-MM-DD>-<hostname>-large.txt    machine header, lines, table, goals
#   bench/results/<YYYY-MM-DD>-<hostname>-large.json   the results as a JSON array
#   bench/results/<YYYY-MM-DD>-<hostname>-large.csv    the same as CSV
#
# Needs about twice the table of free disk under $TMPDIR (the .npy and its
# partition file; the bench refuses otherwise and removes both when done),
# the segment (LARGE_BUDGET plus its index) in /dev/shm, and root (or a large
# `ulimit -l`): the memory holder locks all of the machine's memory but what
# the comparison allows, for the whole run. Do not run it on a machine others
# are using. Takes several minutes (generating and importing the table, then
# about a minute per repeat). Environment: BUILD, LARGE_ROWS, LARGE_BUDGET,
# SECONDS_PER, REPEAT, QUIET_WAIT (default 60), BENCH_ARGS.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
LARGE_ROWS=${LARGE_ROWS:-16000000}
LARGE_BUDGET=${LARGE_BUDGET:-2G}
SECONDS_PER=${SECONDS_PER:-5}
REPEAT=${REPEAT:-3}
QUIET_WAIT=${QUIET_WAIT:-60}
out="bench/results/$(date +%F)-$(hostname -s)-large"
tmp=${TMPDIR:-/tmp}

if [ "$(id -u)" != 0 ] && [ "$(ulimit -l)" != unlimited ]; then
    echo "run-large: not root and ulimit -l is $(ulimit -l) KiB: the memory holder cannot" \
         "lock memory, so the mmap lines will say fair=0" >&2
fi
need_gib=$(awk -v r="$LARGE_ROWS" 'BEGIN { printf "%.1f", 2 * r * 512 / 2^30 + 0.25 }')
echo "run-large: the table needs about $need_gib GiB free under $tmp" \
     "($(df -h "$tmp" | awk 'NR == 2 { print $4 }') free)" >&2

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target embcache-bench embcached -j "$(nproc)" >/dev/null
bin="$BUILD/bench/embcache-bench"

. bench/quiet.sh
wait_quiet "$QUIET_WAIT"

mkdir -p bench/results
args=(--scenario large --large-rows "$LARGE_ROWS" --large-budget "$LARGE_BUDGET"
      --seconds "$SECONDS_PER" --repeat "$REPEAT" --baselines mmap,mmap-random
      --hold-memory on --json="$out.json" --csv="$out.csv")
{
    echo "# embcache-bench large scenario: $(date -Iseconds)"
    echo "# command: $bin ${args[*]} ${BENCH_ARGS:-}"
    echo "# git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git diff --quiet HEAD -- client core shm bench ':!bench/results' 2>/dev/null || echo '(working tree modified)')"
    echo "# host: $(uname -a)"
    echo "# cpu: $(nproc) online, $(lscpu | sed -n 's/^Model name: *//p')"
    echo "# memory: $(free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }')"
    echo "# memory holder: uid $(id -u), ulimit -l $(ulimit -l), swap $(free -m | awk '/^Swap:/ { print $2 " MiB" }')"
    echo "# transparent huge pages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
    echo "# temp/data file system: $(df -hT "$tmp" | awk 'NR == 2 { print $1 " " $2 " " $3 " size, " $5 " free" }')"
    echo "# /dev/shm: $(df -h /dev/shm | awk 'NR == 2 { print $2 " size, " $4 " free" }')"
    echo "# load before: $(cat /proc/loadavg)"
} | tee "$out.txt"

set +e
"$bin" "${args[@]}" ${BENCH_ARGS:-} 2>&1 | tee -a "$out.txt"
status=${PIPESTATUS[0]}
set -e

echo "# load after: $(cat /proc/loadavg)" | tee -a "$out.txt"
echo "wrote $out.{txt,json,csv}" >&2
exit "$status"
