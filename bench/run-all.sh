#!/usr/bin/env bash
# run-all.sh - the standard embcache-bench suite, recorded.
#
# Builds embcache-bench and embcached (Release, in $BUILD, default build),
# waits (up to QUIET_WAIT seconds) for the machine to be idle, then runs every
# standard scenario on the default table (1,000,000 x 128 f32) with every
# baseline that is installed: hit at batch 1, 16, 256, 4096 with uniform and
# Zipf(0.99) ids (floors, mmap, Redis and memcached over Unix sockets), miss
# (next to fio), mixed (budget = table/4, next to mmap and mmap-random at the
# same memory, with an exact LRU of the same ids), rowmiss (missed rows next to
# fio 4 KiB randread at qd 32) and scale (1, 2, 4, 8 client processes),
# SECONDS_PER (default 2) per configuration, every configuration REPEAT
# (default 3) times: the lines and the goals give medians. Writes everything to
#
#   bench/results/<YYYY-MM-DD>-<hostname>/bench.txt    machine header, lines, table, goals
#   bench/results/<YYYY-MM-DD>-<hostname>/bench.json   the results as a JSON array
#   bench/results/<YYYY-MM-DD>-<hostname>/bench.csv    the same as CSV
#   bench/results/<YYYY-MM-DD>-<hostname>/plots/       latency CDFs, rows/s vs batch (PNG)
#
# The mixed scenario holds most of the machine's memory with mlock (see
# bench/README.md, "same memory"): run it as root (or with a large enough
# `ulimit -l`), on a machine nobody else needs for those minutes; without
# mlock the mmap comparison is printed with fair=0 and no ratio. The large
# scenario (a table bigger than memory) is bench/run-large.sh.
#
# Takes about 15 minutes on a 2-vCPU VM. Environment: BUILD, SECONDS_PER
# (seconds per configuration), REPEAT (default 3), QUIET_WAIT (default 60),
# BENCH_ARGS (extra arguments, e.g. "--rows 200000").
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SECONDS_PER=${SECONDS_PER:-2}
REPEAT=${REPEAT:-3}
QUIET_WAIT=${QUIET_WAIT:-60}
dir="bench/results/$(date +%F)-$(hostname -s)"

for p in redis-server memcached fio gnuplot; do
    command -v "$p" >/dev/null 2>&1 ||
        echo "run-all: $p is not installed; that part is skipped (tools/install-deps.sh)" >&2
done
if [ "$(id -u)" != 0 ] && [ "$(ulimit -l)" != unlimited ]; then
    echo "run-all: not root and ulimit -l is $(ulimit -l) KiB: the memory holder cannot lock" \
         "memory, so mixed's mmap lines will say fair=0" >&2
fi

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target embcache-bench embcached -j "$(nproc)" >/dev/null
bin="$BUILD/bench/embcache-bench"

. bench/quiet.sh
wait_quiet "$QUIET_WAIT"

mkdir -p "$dir/plots"
args=(--scenario hit,miss,mixed,rowmiss,scale --batch 1,16,256,4096 --dist uniform,zipf
      --clients 1,2,4,8 --seconds "$SECONDS_PER" --repeat "$REPEAT" --baselines all
      --server-transport unix --hold-memory on
      --json="$dir/bench.json" --csv="$dir/bench.csv" --plot "$dir/plots")
tmp=${TMPDIR:-/tmp}
{
    echo "# embcache-bench standard suite: $(date -Iseconds)"
    echo "# command: $bin ${args[*]} ${BENCH_ARGS:-}"
    echo "# git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git diff --quiet HEAD -- client core shm bench ':!bench/results' 2>/dev/null || echo '(working tree modified)')"
    echo "# host: $(uname -a)"
    echo "# cpu: $(nproc) online, $(lscpu | sed -n 's/^Model name: *//p')," \
         "$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | sed 's/^./hypervisor &/')"
    echo "# caches: $(lscpu | sed -n 's/^L\([123][a-z]*\) cache: *\(.*\)/L\1 \2/p' | paste -sd, -)"
    echo "# memory: $(free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }')"
    echo "# memory holder: uid $(id -u), ulimit -l $(ulimit -l), swap $(free -m | awk '/^Swap:/ { print $2 " MiB" }')"
    echo "# transparent huge pages: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)," \
         "shmem $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null)"
    echo "# temp/data file system: $(df -hT "$tmp" | awk 'NR == 2 { print $1 " " $2 " " $3 " size, " $5 " free" }')"
    echo "# redis: $(redis-server --version 2>/dev/null || echo 'not installed')"
    echo "# memcached: $(memcached -V 2>/dev/null || echo 'not installed')"
    echo "# fio: $(fio --version 2>/dev/null || echo 'not installed')"
    echo "# gnuplot: $(gnuplot --version 2>/dev/null || echo 'not installed')"
    echo "# load before: $(cat /proc/loadavg)"
} | tee "$dir/bench.txt"

set +e
"$bin" "${args[@]}" ${BENCH_ARGS:-} 2>&1 | tee -a "$dir/bench.txt"
status=${PIPESTATUS[0]}
set -e

echo "# load after: $(cat /proc/loadavg)" | tee -a "$dir/bench.txt"
echo "wrote $dir/bench.{txt,json,csv} and $dir/plots/" >&2
exit "$status"
