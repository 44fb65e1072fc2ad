#!/usr/bin/env bash
# run-pagerbench.sh - the standard pager benchmark run, recorded.
#
# Installs fio if it is missing (as root; otherwise says how), builds
# embcache-pagerbench in Release, waits (up to QUIET_WAIT seconds) for the
# machine to be idle, then runs the standard set: 1 GiB file, partitions of
# 256 KiB, 1 MiB and 4 MiB, queue depths 1, 8 and 32, both pagers, fio
# (io_uring, direct=1, sequential and random) on the same file at the same
# block size and depth, each configuration REPEAT times (default 3),
# interleaved, so the table's medians and paired ratios survive a noisy
# disk. Writes
#
#   bench/results/<YYYY-MM-DD>-<hostname>-pager.txt   machine header + lines + table
#   bench/results/<YYYY-MM-DD>-<hostname>-pager.json  the same results as JSON
#
# Environment: BUILD (build dir, default build), PAGERBENCH_DIR (where the
# 1 GiB bench files go, one at a time; default /tmp/embcache-bench),
# SIZE_MIB (default 1024), REPEAT (default 3), QUIET_WAIT (default 120),
# PAGERBENCH_ARGS (extra arguments, e.g. "--random"). Takes about 4 minutes
# on a 2-vCPU VM.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DIR=${PAGERBENCH_DIR:-/tmp/embcache-bench}
SIZE_MIB=${SIZE_MIB:-1024}
QUIET_WAIT=${QUIET_WAIT:-120}
REPEAT=${REPEAT:-3}
OUT=bench/results
stem="$OUT/$(date +%F)-$(hostname -s)-pager"
fio_arg=()

if ! command -v fio >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fio is not installed: apt-get install -y fio" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y fio >&2 ||
            echo "could not install fio; going on without it" >&2
    else
        echo "fio is not installed and this is not root: run 'sudo apt-get install fio'" \
             "for the comparison; going on without it" >&2
    fi
fi
command -v fio >/dev/null 2>&1 || fio_arg=(--fio none)

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target embcache-pagerbench -j "$(nproc)" >/dev/null
bin="$BUILD/bench/embcache-pagerbench"

# Other work on the machine skews every number: wait a while for quiet.
. bench/quiet.sh
wait_quiet "$QUIET_WAIT"

mkdir -p "$OUT" "$DIR"
dev=$(findmnt -no SOURCE -T "$DIR" 2>/dev/null || true)
blk=$(basename "$(readlink -f "$dev" 2>/dev/null || echo none)")
q=/sys/block/$blk/queue
{
    echo "# embcache pager benchmark: $(date -Iseconds)"
    echo "# command: $bin --dir $DIR --size-mib $SIZE_MIB --partition-kib 256,1024,4096" \
         "--qd 1,8,32 --pager both --repeat $REPEAT --json ${fio_arg[*]} ${PAGERBENCH_ARGS:-}"
    echo "# git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git diff --quiet HEAD -- core bench 2>/dev/null || echo '(core/ or bench/ modified)')"
    echo "# host: $(uname -a)"
    echo "# cpu: $(nproc) online, $(lscpu | sed -n 's/^Model name: *//p')," \
         "$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | sed 's/^./hypervisor &/')"
    echo "# memory: $(free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }')"
    echo "# file system: $(df -hT "$DIR" | awk 'NR == 2 { print $1 " " $2 " " $3 " size, " $5 " free" }')" \
         "mounted at $(findmnt -no TARGET -T "$DIR")"
    if [ -d "$q" ]; then
        echo "# device: $blk $(lsblk -dno SIZE,MODEL,TRAN "/dev/$blk" 2>/dev/null | xargs)," \
             "scheduler $(cat "$q/scheduler"), nr_requests $(cat "$q/nr_requests")," \
             "max_sectors_kb $(cat "$q/max_sectors_kb"), max_segments $(cat "$q/max_segments")," \
             "rotational $(cat "$q/rotational"), hw queues $(ls "/sys/block/$blk/mq" | wc -l)"
    fi
    echo "# fio: $(fio --version 2>/dev/null || echo 'not installed')"
    echo "# io_uring: kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 'n/a (enabled)')," \
         "RLIMIT_MEMLOCK $(ulimit -l)"
    echo "# load before: $(cat /proc/loadavg)"
} | tee "$stem.txt"

"$bin" --dir "$DIR" --size-mib "$SIZE_MIB" --partition-kib 256,1024,4096 --qd 1,8,32 \
    --pager both --repeat "$REPEAT" --json "${fio_arg[@]}" ${PAGERBENCH_ARGS:-} 2>&1 >"$stem.json" |
    tee -a "$stem.txt"

echo "# load after: $(cat /proc/loadavg)" | tee -a "$stem.txt"
echo "wrote $stem.txt and $stem.json" >&2
