#!/usr/bin/env bash
# run-remotebench.sh - the remote-tier read benchmark (bench/remotebench.c),
# recorded: a throw-away Redis Cluster of 3 masters and 3 replicas on
# loopback (tests/redis/cluster.sh), an embcached that imports a generated
# model (embcache-demo generate: ROWS x DIM float32) and publishes it there
# in 1 MiB chunks, then embcache-remotebench against the chunk keys:
# rcluster_mget (our client: as the remote tier uses it, 4 threads with a
# handle each, one partition's chunks a call, then other thread counts and
# batch sizes) next to hiredis_pipelined (one thread per master) at several
# pipeline depths, whose best is the cluster's own limit; RUNS runs, median
# and range, the per-run ratio of the tier's configuration to that limit
# (goal: >= 0.8).
#
#   bench/run-remotebench.sh [REMOTEBENCH EMBCACHED EMBCACHE_CLI EMBCACHE_DEMO]
#   bench/run-remotebench.sh --smoke REMOTEBENCH EMBCACHED EMBCACHE_CLI EMBCACHE_DEMO
#
# Without the four programs it builds them in BUILD (default build-rel,
# Release). It waits (up to QUIET_WAIT s) for a load below 0.5 and writes
# OUT (default bench/results/<YYYY-MM-DD>-<hostname>-remote.txt): the machine,
# the commit, the command and every line. --smoke (ctest's
# bench_remotebench_smoke): a 16 MiB model, one short run, nothing recorded,
# no waiting. Every process it starts is stopped by pid on every exit path.
#
# Environment: BUILD, OUT, ROWS (default 262144), DIM (default 256: 1 KiB
# rows, 256 MiB), RUNS (7), SECONDS_PER_RUN (2), THREADS (1,4), BATCH (keys
# a call: 1,8,64), TIER_THREADS (4), TIER_BATCH (1), DEPTH (GETs in flight
# per baseline connection: 1,2,8,64), QUIET_WAIT (120),
# DAEMON_THREADS (client threads of daemon_tier: 4), TENSOR (emb),
# REMOTE_THREADS (the reading daemon's remote-threads: 4),
# NOTE (a line for the header: how the programs were built, what else ran).
# Exit 0, 1 on failure, 77 when redis-server or redis-cli is not installed.
set -u
export EMBCACHE_CONFIG=

smoke=0
if [ "${1:-}" = --smoke ]; then smoke=1; shift; fi
progs=()
for p in "$@"; do progs+=("$(readlink -f "$p")"); done
set -- "${progs[@]}"
cd "$(dirname "$0")/.." || exit 1
root=$PWD
ROWS=${ROWS:-262144} DIM=${DIM:-256} RUNS=${RUNS:-7} SECONDS_PER_RUN=${SECONDS_PER_RUN:-2}
THREADS=${THREADS:-1,4} BATCH=${BATCH:-1,8,64} TIER_THREADS=${TIER_THREADS:-4}
TIER_BATCH=${TIER_BATCH:-1} DEPTH=${DEPTH:-1,2,8,64}
QUIET_WAIT=${QUIET_WAIT:-120}
if [ "$smoke" = 1 ]; then ROWS=16384 RUNS=1 SECONDS_PER_RUN=0.2 QUIET_WAIT=0; fi

for p in redis-server redis-cli; do
  command -v "$p" >/dev/null 2>&1 || { echo "run-remotebench: SKIP: $p is not installed" >&2; exit 77; }
done
if [ $# = 4 ]; then
  BENCH=$1 EMBCACHED=$2 CLI=$3 DEMO=$4
elif [ $# = 0 ] && [ "$smoke" = 0 ]; then
  BUILD=${BUILD:-build-rel}
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null || exit 1
  cmake --build "$BUILD" --target embcache-remotebench embcached embcache-cli embcache-demo \
    -j "$(nproc)" >/dev/null || exit 1
  BENCH=$BUILD/bench/embcache-remotebench EMBCACHED=$BUILD/embcached CLI=$BUILD/embcache
  DEMO=$BUILD/embcache-demo
else
  sed -n '11,12p' "$0" >&2
  exit 2
fi

dir=$(mktemp -d /tmp/ecremote-XXXXXX) || exit 1
daemon=0
cluster=0
cleanup() {
  if [ "$daemon" -gt 0 ]; then
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
  fi
  [ "$cluster" = 1 ] && bash "$root/tests/redis/cluster.sh" stop "$dir/cluster" >/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() { echo "run-remotebench: FAIL: $*" >&2; exit 1; }

# A base port whose 6 ports and their bus ports (+10000) nothing uses, all
# below the kernel's ephemeral range, where no outgoing connection can be.
port_used() { ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
for ((try = 0; try < 5 && cluster == 0; try++)); do
  base=$((10000 + RANDOM % (eph > 21006 ? eph - 20006 : 1000)))
  used=0
  for ((i = 0; i < 6; i++)); do
    port_used $((base + i)) && used=1
    port_used $((base + 10000 + i)) && used=1
  done
  [ "$used" = 1 ] && continue
  if bash "$root/tests/redis/cluster.sh" start "$dir/cluster" "$base" 3 1 > "$dir/cluster.log" 2>&1; then
    cluster=1
  else
    bash "$root/tests/redis/cluster.sh" stop "$dir/cluster" >/dev/null 2>&1
  fi
done
[ "$cluster" = 1 ] || fail "no cluster: $(cat "$dir/cluster.log")"
# wait_up SOCKET LOG WHAT: until the daemon just started ($daemon) answers on
# SOCKET (10 s at most); fail with its LOG if it exits first.
wait_up() {
  local i
  for ((i = 0; i < 200; i++)); do
    "$CLI" --socket "$1" stats >/dev/null 2>&1 && return 0
    kill -0 "$daemon" 2>/dev/null || fail "$3 exited: $(cat "$2")"
    sleep 0.05
  done
}
URL="redis-cluster://127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"

"$EMBCACHED" --data-dir "$dir/data" --socket "$dir/s" --shm-size 1G --remote "$URL" --quiet \
  > "$dir/daemon.log" 2>&1 &
daemon=$!
wait_up "$dir/s" "$dir/daemon.log" embcached
"$DEMO" generate --out "$dir/emb.npy" --rows "$ROWS" --dim "$DIM" >/dev/null || fail "generate"
"$CLI" --socket "$dir/s" import --model rb --version 1 "$dir/emb.npy" >/dev/null || fail "import"
rm -f "$dir/emb.npy"
pub=$("$CLI" --socket "$dir/s" publish rb 1) || fail "publish"
# The publisher is not part of the measurement: stop it, and start the
# reader, a daemon that pulls the version lazily and keeps nothing on disk,
# so that every miss is a read from the cluster (remotebench's daemon_tier).
kill -TERM "$daemon" 2>/dev/null
wait "$daemon" 2>/dev/null
daemon=0
"$EMBCACHED" --data-dir "$dir/reader" --socket "$dir/r" --shm-size 1G --remote "$URL" \
  --remote-keep false --remote-threads "${REMOTE_THREADS:-4}" --quiet > "$dir/reader.log" 2>&1 &
daemon=$!
wait_up "$dir/r" "$dir/reader.log" "embcached (reader)"
"$CLI" --socket "$dir/r" pull --lazy rb 1 >/dev/null || fail "pull --lazy: $(tail -3 "$dir/reader.log")"

# Replication of what was published must be over before anything is timed.
synced() {
  local port info moff
  for ((port = base; port < base + 6; port++)); do
    info=$(redis-cli -h 127.0.0.1 -p "$port" info replication | tr -d '\r') || return 1
    grep -qx role:master <<< "$info" || continue
    moff=$(sed -n 's/^master_repl_offset://p' <<< "$info")
    grep '^slave[0-9]*:' <<< "$info" | grep -q "offset=$moff," || return 1
  done
}
for ((i = 0; i < 300; i++)); do synced && break; sleep 0.1; done

. bench/quiet.sh
wait_quiet "$QUIET_WAIT"

args=(--url "$URL" --model rb --version 1 --runs "$RUNS" --seconds "$SECONDS_PER_RUN"
      --threads "$THREADS" --batch "$BATCH" --tier-threads "$TIER_THREADS"
      --tier-batch "$TIER_BATCH" --depth "$DEPTH" --daemon "$dir/r"
      --daemon-threads "${DAEMON_THREADS:-4}" --tensor "${TENSOR:-emb}")
if [ "$smoke" = 1 ]; then
  "$BENCH" "${args[@]}" || fail "embcache-remotebench"
  exit 0
fi
OUT=${OUT:-bench/results/$(date +%F)-$(hostname -s)-remote.txt}
{
  echo "# embcache remote-tier read benchmark (bench/remotebench.c): $(date -Iseconds)"
  echo "# git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "$( [ -n "$(git status --porcelain -- . ":(exclude)$OUT" 2>/dev/null)" ] && echo 'with uncommitted changes')"
  echo "# machine: $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1))," \
       "$(free -m | awk '/^Mem:/ { print $2 " MiB" }'), kernel $(uname -r)"
  echo "# programs: $BENCH ($(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$(dirname "$BENCH")/../CMakeCache.txt" 2>/dev/null || echo '?') build);" \
       "$(redis-server --version | cut -d' ' -f1-3)"
  echo "# cluster: 3 masters + 3 replicas on 127.0.0.1:$base..$((base + 5)) (tests/redis/cluster.sh), same host as the bench"
  echo "# model: rb 1, $ROWS x $DIM float32 (embcache-demo generate), published: $pub"
  echo "# command: $BENCH ${args[*]}"
  [ -n "${NOTE:-}" ] && echo "# note: $NOTE"
  echo "# load before: $(cat /proc/loadavg)"
} | tee "$OUT"
"$BENCH" "${args[@]}" 2>&1 | tee -a "$OUT"
rc=${PIPESTATUS[0]}
echo "# load after: $(cat /proc/loadavg)" | tee -a "$OUT"
[ "$rc" = 0 ] || fail "embcache-remotebench exited $rc"
echo "wrote $OUT" >&2
