#!/usr/bin/env bash
# test_netns_cluster.sh - the Redis Cluster tier across hosts, with hosts
# played by network namespaces (tests/redis/netns.sh): three hosts on a
# private bridge, a cluster of 3 masters and 3 replicas on their addresses
# (tests/redis/cluster.sh, each master's replica on another host), and
# embcached daemons on hosts 1 and 2.
#
#   a. daemon 1 imports a generated model (rc_reader gen: every element a
#      function of its position) and publishes it; every replica has all of
#      it before anything is killed.
#   b. a reader on host 2 (rc_reader cluster: ec_rcluster_mget of every
#      chunk key, pass after pass, every byte checked) while the master of
#      the first chunk is killed with SIGKILL: 0 wrong bytes, 0 keys missing,
#      errors only on keys that master served and only between the kill and
#      FAILOVER_SLACK_MS after its replica took over, no streak of errors
#      longer than STREAK_MAX_MS, and clean passes after the last error. The
#      killed node is started again and rejoins as a replica.
#   c. the same reader while `redis-cli --cluster reshard` moves
#      RESHARD_SLOTS slots from one master to another and then on to the
#      third: 0 wrong bytes, 0 missing, 0 errors, and the reader followed
#      MOVED or ASK redirects (it did read keys whose slots moved).
#   d. the daemon, eager (phase_daemon_eager): `embcache pull` into daemon 2
#      (host 2), then every row read through it (rc_reader rows:
#      ec_tensor_gather) equals the source.
#   e. the daemon, lazy (phase_daemon_lazy; runs only when `embcache pull
#      --help` mentions --lazy, the remote read path): `pull --lazy` into a
#      third daemon on host 2 with a budget of a quarter of the model and
#      --remote-keep false, so that its reads keep going to the cluster;
#      rows read through it while another master is killed, checked as in b,
#      and its remote counters must show reads from the cluster.
#
# A summary of every figure is printed at the end. Every process is started
# through netns.sh (or cluster.sh, by pid file) and stopped by pid, on every
# exit path; nothing is addressed outside the namespaces (no program here
# talks to a cluster address from this namespace).
#
# Usage: test_netns_cluster.sh EMBCACHED EMBCACHE_CLI RC_READER
# Exit 0 pass, 1 fail, 77 skipped: not root, `ip netns add` refused, or no
# redis-server / redis-cli (netns.sh and this script say which).
# Environment: REDIS_SERVER, REDIS_CLI; ENS_KEEP=1 keeps the files.
# shellcheck disable=SC2317 # (functions called through wait_for look unreachable)
set -u
export EMBCACHE_CONFIG= # the daemons run with this script's options only

[ $# = 3 ] || { echo "usage: test_netns_cluster.sh EMBCACHED EMBCACHE_CLI RC_READER" >&2; exit 2; }
EMBCACHED=$1 CLI=$2 READER=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_SH=$here/cluster.sh
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
export REDIS_SERVER REDIS_CLI

# The model: ROWS x DIM float32 (1 KiB rows), cut into partitions of
# PART_BYTES, so that each partition is one chunk key of 64 KiB and the keys
# spread over all the slots.
ROWS=32768 DIM=256 SEED=16 PART_BYTES=65536 MODEL=m VERSION=1 TENSOR=emb
BASEPORT=7000                # the namespaces are private: any port is free
FAILOVER_WAIT_S=30           # the most a failover may take here
FAILOVER_SLACK_MS=3000       # errors may go on this long after it
STREAK_MAX_MS=15000          # the longest run of failing reads allowed
RESHARD_SLOTS=300

t0_s=$(date +%s)
note() { echo "test_netns_cluster: $*"; }
now_ms() { date +%s%3N; }

for p in "$EMBCACHED" "$CLI" "$READER"; do
  [ -x "$p" ] || { echo "test_netns_cluster: $p is not an executable" >&2; exit 1; }
done
for p in "$REDIS_SERVER" "$REDIS_CLI"; do
  command -v "$p" >/dev/null 2>&1 ||
    { echo "test_netns_cluster: SKIP: $p is not installed" >&2; exit 77; }
done

# shellcheck source=netns.sh
. "$here/netns.sh"
ens_setup 3
D=$ENS_DIR
CL=$D/cluster
A1=${ENS_ADDR[1]} A2=${ENS_ADDR[2]} A3=${ENS_ADDR[3]}

fail() {
  echo "test_netns_cluster: FAIL: $*" >&2
  local f
  for f in "$D"/*.log; do
    [ -s "$f" ] || continue
    echo "---- last lines of ${f##*/}" >&2
    tail -n 8 "$f" >&2
  done
  exit 1
}

# ---- the cluster's nodes, seen from a host ----
host_of() { echo "${1##*.}"; }                       # 10.231.X.h -> h
rcli() { # ADDR PORT ARG...: redis-cli from that node's own host
  local a=$1 p=$2
  shift 2
  ens_exec "$(host_of "$a")" "$REDIS_CLI" -h "$a" -p "$p" "$@" < /dev/null
}
node_pid() { head -c 32 "$CL/redis-$1.pid" 2>/dev/null | tr -dc 0-9; }

# `cluster nodes` from the first node that answers (skipping port $1).
cluster_nodes() {
  local addr port out
  while read -r addr port _; do
    [ "$port" = "${1:-}" ] && continue
    out=$(rcli "$addr" "$port" cluster nodes 2>/dev/null) && [ -n "$out" ] &&
      { printf '%s\n' "$out"; return 0; }
  done < "$CL/nodes"
  return 1
}

# The "addr:port" of the live master serving slot $1 (in `cluster nodes` on stdin).
master_of_slot() {
  awk -v s="$1" '
    $3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) {
        if ($i ~ /^\[/) continue
        n = split($i, r, "-"); lo = r[1]; hi = n > 1 ? r[2] : r[1]
        if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { sub(/@.*/, "", $2); print $2; exit }
      }
    }'
}

# Every live node: cluster_state ok (skipping port $1).
cluster_ok() {
  local addr port
  while read -r addr port _; do
    [ "$port" = "${1:-}" ] && continue
    rcli "$addr" "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' ||
      return 1
  done < "$CL/nodes"
}

# Every replica's offset equals its master's: all written data is on them.
replicas_synced() {
  local addr port info moff
  while read -r addr port _; do
    info=$(rcli "$addr" "$port" info replication 2>/dev/null | tr -d '\r') || return 1
    printf '%s\n' "$info" | grep -qx 'role:master' || continue
    moff=$(printf '%s\n' "$info" | sed -n 's/^master_repl_offset://p')
    printf '%s\n' "$info" | grep -q '^slave0:.*state=online' || return 1
    printf '%s\n' "$info" | grep '^slave[0-9]*:' | grep -vq "offset=$moff," && return 1
  done < "$CL/nodes"
  return 0
}

wait_for() { # SECONDS WHAT CMD...: poll CMD every 0.1 s
  local s=$1 what=$2 i
  shift 2
  for ((i = 0; i < s * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  fail "$what: not within $s s"
}

# key=value of a reader's summary line
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<< "$2"; }

# Start a cluster reader on host 2 as TAG; wait until it finished a pass.
reader_start() {
  local tag=$1
  shift
  ens_spawn "$tag" 2 "$D/$tag.log" "$READER" cluster "$URL" "$MODEL" "$VERSION" "$ROWS" "$DIM" \
    "$SEED" "$RPP" --batch 64 "$@"
  wait_for 30 "reader $tag's first pass" reader_passed "$tag"
}
reader_passed() {
  grep -q 'passes=[1-9]' "$D/$1.log" 2>/dev/null && return 0
  ens_pid "$1" >/dev/null || fail "reader $1 exited: $(cat "$D/$1.log")"
  return 1
}
# Stop it (SIGTERM: it finishes its pass) and print its summary line.
reader_stop() {
  local line
  ens_stop "$1" TERM || fail "reader $1 did not stop"
  line=$(grep '^rc_reader [a-z]*: passes=' "$D/$1.log" | tail -n 1)
  [ -n "$line" ] || fail "reader $1 printed no summary: $(tail -n 5 "$D/$1.log")"
  echo "$line"
}

# kill_master ADDR:PORT SLOT: SIGKILL to that master (a slot it serves),
# then wait until another live master serves the slot and every live node
# says ok. Sets t_kill, t_fo (Unix ms) and new_master.
kill_master() {
  local victim=$1 slot=$2 pid
  pid=$(node_pid "${victim##*:}")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] ||
    fail "the pid '$pid' of $victim is not a redis-server"
  t_kill=$(now_ms)
  kill -KILL "$pid" || fail "kill -9 $pid"
  note "kill -9 master $victim (pid $pid, serves slot $slot)"
  promoted() {
    local m
    m=$(cluster_nodes "${victim##*:}" | master_of_slot "$slot")
    [ -n "$m" ] && [ "$m" != "$victim" ] && cluster_ok "${victim##*:}" && new_master=$m
  }
  new_master=
  wait_for "$FAILOVER_WAIT_S" "failover of $victim" promoted
  t_fo=$(now_ms)
}

# restart_node ADDR:PORT: start a killed node again (its namespace, its
# files); it must rejoin as a replica, linked and in sync.
restart_node() {
  local a=${1%:*} p=${1##*:} t
  ens_exec "$(host_of "$a")" "$REDIS_SERVER" "$CL/redis-$p.conf" || fail "restart of $1"
  rejoined() {
    local info
    info=$(rcli "$a" "$p" info replication 2>/dev/null | tr -d '\r') || return 1
    grep -qx role:slave <<< "$info" && grep -qx master_link_status:up <<< "$info" &&
      cluster_ok && replicas_synced
  }
  t=$(now_ms)
  wait_for 60 "$1 rejoining as a replica" rejoined
  echo $(($(now_ms) - t))
}

# (Functions that print a value run in $(...): their fail() ends only that
# subshell, so every caller adds `|| exit 1`.)
declare -A FIG # every figure for the summary
fig() { FIG[$1]=$2; }

# ---- the cluster: node i on host (i mod 3) + 1 ----
ens_cluster_dir "$CL"
EC_RC_NETNS="$A1=$(ens_ns 1) $A2=$(ens_ns 2) $A3=$(ens_ns 3)"
export EC_RC_NETNS
t=$(now_ms)
bash "$CLUSTER_SH" start "$CL" "$BASEPORT" 3 1 "$A1" "$A2" "$A3" > "$D/cluster-start.log" 2>&1 ||
  fail "cluster.sh start: $(cat "$D/cluster-start.log")"
fig cluster_start_ms $(($(now_ms) - t))
URL="redis-cluster://$A1:$BASEPORT,$A2:$((BASEPORT + 1)),$A3:$((BASEPORT + 2))"
nodes=$(cluster_nodes) || fail "no node answers CLUSTER NODES"
# Each node in its own host's namespace, and each master's replica elsewhere.
while read -r addr port _; do
  pid=$(node_pid "$port")
  [ "$(ip netns identify "$pid")" = "$(ens_ns "$(host_of "$addr")")" ] ||
    fail "node $addr:$port (pid $pid) runs in '$(ip netns identify "$pid")', not $(ens_ns "$(host_of "$addr")")"
done < "$CL/nodes"
bad=$(awk '{ id[$1] = $2; m[$1] = $4; f[$1] = $3 }
  END { for (n in f) if (f[n] ~ /slave/) {
          split(id[n], a, ":"); split(id[m[n]], b, ":");
          if (a[1] == b[1]) print id[n] " replicates " id[m[n]] " on the same host" } }' <<< "$nodes")
[ -z "$bad" ] || fail "replica placement: $bad"
note "cluster: 6 nodes on $A1, $A2, $A3 up in ${FIG[cluster_start_ms]} ms"

# ---- a. two daemons; daemon 1 imports and publishes ----
start_daemon() { # TAG HOST [OPTION...]
  local tag=$1 h=$2 i
  shift 2
  ens_spawn "$tag" "$h" "$D/$tag.log" "$EMBCACHED" --data-dir "$D/$tag-data" \
    --socket "$D/$tag.sock" --shm-size 256M --remote "$URL" "$@"
  for ((i = 0; i < 200; i++)); do
    ens_exec "$h" "$CLI" --socket "$D/$tag.sock" stats >/dev/null 2>&1 && return 0
    ens_pid "$tag" >/dev/null || fail "embcached $tag exited at start: $(cat "$D/$tag.log")"
    sleep 0.05
  done
  fail "embcached $tag did not answer on $D/$tag.sock"
}
start_daemon d1 1
start_daemon d2 2
"$READER" gen "$D/$TENSOR.npy" "$ROWS" "$DIM" "$SEED" || fail "rc_reader gen"
ens_exec 1 "$CLI" --socket "$D/d1.sock" import --model "$MODEL" --version "$VERSION" \
  --partition-bytes "$PART_BYTES" "$D/$TENSOR.npy" > "$D/import.out" 2>&1 ||
  fail "import: $(cat "$D/import.out")"
info=$(ens_exec 1 "$READER" info "$D/d1.sock" "$MODEL" "$VERSION" "$TENSOR") || fail "rc_reader info"
RPP=$(sed -n 's/.*rows_per_partition=\([0-9]*\).*/\1/p' <<< "$info")
PARTS=$(sed -n 's/.*partitions=\([0-9]*\).*/\1/p' <<< "$info")
{ [ -n "$RPP" ] && [ -n "$PARTS" ]; } || fail "rc_reader info: $info"
t=$(now_ms)
ens_exec 1 "$CLI" --socket "$D/d1.sock" publish "$MODEL" "$VERSION" > "$D/publish.out" 2>&1 ||
  fail "publish: $(cat "$D/publish.out")"
fig publish_ms $(($(now_ms) - t))
note "a. daemon 1 (host 1) published $MODEL $VERSION: $ROWS x $DIM float32, $PARTS partitions of $RPP rows: $(head -n 1 "$D/publish.out")"
# Every chunk (one per partition here) is on a master, and on its replica.
keys=0 chunks=0
while read -r addr port _; do
  rcli "$addr" "$port" info replication | tr -d '\r' | grep -qx role:master || continue
  keys=$((keys + $(rcli "$addr" "$port" dbsize | tr -dc 0-9)))
  chunks=$((chunks + $(rcli "$addr" "$port" --scan --pattern "ec:c:$MODEL:$VERSION:*" | wc -l)))
done < "$CL/nodes"
[ "$chunks" = "$PARTS" ] || fail "the masters hold $chunks chunk keys of $MODEL $VERSION; $PARTS were published"
wait_for 30 "replicas in sync with their masters" replicas_synced
fig keys "$keys"
fig chunk_keys "$chunks"

# failover_window P MIN: phase P's read errors (FIG[P_*]) all fell between the
# kill ($t_kill) and FAILOVER_SLACK_MS after the failover ($t_fo), none ran for
# longer than STREAK_MAX_MS, and at least MIN passes were clean after the last.
failover_window() {
  local p=$1 min=$2 first last
  if [ "${FIG[${p}_errors]}" != 0 ]; then
    first=${FIG[${p}_first_error_ms]} last=${FIG[${p}_last_error_ms]}
    [ "$first" -ge "$t_kill" ] || fail "$p: an error at $first, before the kill at $t_kill"
    [ "$last" -le $((t_fo + FAILOVER_SLACK_MS)) ] ||
      fail "$p: an error $((last - t_fo)) ms after the failover (allowed: $FAILOVER_SLACK_MS)"
  fi
  [ "${FIG[${p}_longest_streak_ms]}" -le "$STREAK_MAX_MS" ] ||
    fail "$p: errors for ${FIG[${p}_longest_streak_ms]} ms in a row (allowed: $STREAK_MAX_MS)"
  [ "${FIG[${p}_clean_passes_after_last_error]}" -ge "$min" ] ||
    fail "$p: only ${FIG[${p}_clean_passes_after_last_error]} clean passes after the last error (at least $min)"
}

# ---- b. reads from host 2 while a master is killed ----
slot=$(rcli "$A1" "$BASEPORT" cluster keyslot "ec:c:$MODEL:$VERSION:0:0:0" | tr -dc 0-9)
victim=$(cluster_nodes | master_of_slot "$slot")
[ -n "$victim" ] || fail "no master serves slot $slot"
reader_start rb --victim "$victim"
sleep 2
kill_master "$victim" "$slot"
fig failover_ms $((t_fo - t_kill))
note "b. $new_master took over after $((t_fo - t_kill)) ms; reading on for 5 s"
sleep 5
line=$(reader_stop rb) || exit 1 # (fail said why)
note "b. $line"
for k in passes reads bytes MBps wrong_bytes missing errors errors_elsewhere error_passes \
         first_error_ms last_error_ms longest_streak_ms clean_passes_after_last_error moved \
         retries refreshes connect_failures; do
  fig "b_$k" "$(field "$k" "$line")"
done
victim_keys=$(sed -n 's/.* \([0-9]*\) keys on victim.*/\1/p' "$D/rb.log" | head -n 1)
fig b_victim_keys "$victim_keys"
[ "${FIG[b_wrong_bytes]}" = 0 ] || fail "b: ${FIG[b_wrong_bytes]} wrong bytes read"
[ "${FIG[b_missing]}" = 0 ] || fail "b: ${FIG[b_missing]} keys missing"
[ "${FIG[b_errors_elsewhere]}" = 0 ] ||
  fail "b: ${FIG[b_errors_elsewhere]} errors on keys the killed master did not serve"
[ "${victim_keys:-0}" -gt 0 ] || fail "b: no key on the killed master: the kill tested nothing"
failover_window b 3
b_new_master=$new_master

# The killed node comes back (in its namespace, same files) as a replica.
ms=$(restart_node "$victim") || exit 1
fig rejoin_ms "$ms"
note "b. $victim restarted: a replica of $b_new_master again after ${FIG[rejoin_ms]} ms"

# ---- c. reads while slots move master to master ----
masters=$(cluster_nodes | awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {print $1}' | sort)
read -r m1 m2 m3 <<< "$(tr '\n' ' ' <<< "$masters")"
[ -n "$m3" ] || fail "c: want 3 masters with slots: $masters"
reader_start rc
# What `redis-cli --cluster reshard` insists on first: every node agrees on
# the configuration (after a failover or a reshard that takes a moment).
cluster_agrees() {
  local out
  out=$(ens_exec 1 "$REDIS_CLI" --cluster check "$A1:$BASEPORT" < /dev/null 2>&1) &&
    ! grep -q 'ERR' <<< "$out"
}
reshard() { # FROM TO
  local t
  wait_for 30 "c: every node agreeing on the configuration" cluster_agrees
  t=$(now_ms)
  ens_exec 1 timeout 120 "$REDIS_CLI" --cluster reshard "$A1:$BASEPORT" --cluster-from "$1" \
    --cluster-to "$2" --cluster-slots "$RESHARD_SLOTS" --cluster-yes >> "$D/reshard.log" 2>&1 ||
    fail "c: reshard $1 -> $2: $(tail -n 5 "$D/reshard.log")"
  echo $(($(now_ms) - t))
}
ms=$(reshard "$m1" "$m2") || exit 1
fig reshard1_ms "$ms"
ms=$(reshard "$m2" "$m3") || exit 1
fig reshard2_ms "$ms"
wait_for 30 "c: every node agreeing on the configuration" cluster_agrees
ens_exec 1 "$REDIS_CLI" --cluster check "$A1:$BASEPORT" > "$D/check.log" 2>&1 ||
  fail "c: cluster check after the reshard: $(grep -E 'ERR|WARN' "$D/check.log" | head -n 5)"
grep -q 'All 16384 slots covered' "$D/check.log" || fail "c: slots not covered: $(cat "$D/check.log")"
note "c. moved $RESHARD_SLOTS slots ${m1:0:8} -> ${m2:0:8} in ${FIG[reshard1_ms]} ms, then ${m2:0:8} -> ${m3:0:8} in ${FIG[reshard2_ms]} ms; reading on for 2 s"
sleep 2
line=$(reader_stop rc) || exit 1
note "c. $line"
for k in passes reads bytes MBps wrong_bytes missing errors error_passes longest_streak_ms \
         moved ask retries refreshes; do
  fig "c_$k" "$(field "$k" "$line")"
done
[ "${FIG[c_wrong_bytes]}" = 0 ] || fail "c: ${FIG[c_wrong_bytes]} wrong bytes read"
[ "${FIG[c_missing]}" = 0 ] || fail "c: ${FIG[c_missing]} keys missing"
[ "${FIG[c_errors]}" = 0 ] || fail "c: ${FIG[c_errors]} reads failed during the reshard"
[ $((FIG[c_moved] + FIG[c_ask])) -gt 0 ] ||
  fail "c: no MOVED or ASK followed: the reader never read a key whose slot moved"

# ---- d. and e. the daemons on host 2 ----
# d. Eager: the whole version copied into daemon 2, then every row read
# through it and compared with the source.
phase_daemon_eager() {
  local t line
  t=$(now_ms)
  ens_exec 2 "$CLI" --socket "$D/d2.sock" pull "$MODEL" "$VERSION" > "$D/pull.out" 2>&1 ||
    fail "d: pull into daemon 2: $(cat "$D/pull.out")"
  fig d_pull_ms $(($(now_ms) - t))
  ens_spawn rd 2 "$D/rd.log" "$READER" rows "$D/d2.sock" "$MODEL" "$VERSION" "$TENSOR" \
    "$ROWS" "$DIM" "$SEED" --passes 2
  ens_stop_wait rd 60
  line=$(grep '^rc_reader rows: passes=' "$D/rd.log" | tail -n 1)
  [ -n "$line" ] || fail "d: the rows reader printed no summary: $(tail -n 5 "$D/rd.log")"
  note "d. eager pull into daemon 2 in ${FIG[d_pull_ms]} ms; $line"
  for k in passes reads wrong_bytes errors; do fig "d_$k" "$(field "$k" "$line")"; done
  [ "${FIG[d_wrong_bytes]}" = 0 ] || fail "d: ${FIG[d_wrong_bytes]} wrong bytes through daemon 2"
  [ "${FIG[d_errors]}" = 0 ] || fail "d: ${FIG[d_errors]} rows failed through daemon 2"
  [ "${FIG[d_reads]}" = $((2 * ROWS)) ] || fail "d: ${FIG[d_reads]} rows read, want $((2 * ROWS))"
}

# e. Lazy (the remote read path): daemon 3, on host 2 too, registers the
# version without its data and reads its misses from the cluster. It runs
# with a budget far below the model (8 MiB of 32) and --remote-keep false,
# so that its reads keep going to the cluster, and a master (with a replica; not the
# one of b) is killed under a rows reader: 0 wrong bytes, errors only
# between the kill and FAILOVER_SLACK_MS after the failover, clean passes
# after it, and the daemon's remote counters say it read from the cluster.
phase_daemon_lazy() {
  local line vict vslot k st
  start_daemon d3 2 --budget 8M --remote-keep false
  t=$(now_ms)
  ens_exec 2 "$CLI" --socket "$D/d3.sock" pull --lazy "$MODEL" "$VERSION" > "$D/pull.out" 2>&1 ||
    fail "e: lazy pull into daemon 3: $(cat "$D/pull.out")"
  fig e_pull_ms $(($(now_ms) - t))
  ens_spawn re 2 "$D/re.log" "$READER" rows "$D/d3.sock" "$MODEL" "$VERSION" "$TENSOR" \
    "$ROWS" "$DIM" "$SEED"
  wait_for 60 "the rows reader's first pass" reader_passed re
  vict=$(cluster_nodes | awk -v nm="$b_new_master" '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {
           a = $2; sub(/@.*/, "", a); if (a != nm) { print a; exit } }')
  [ -n "$vict" ] || fail "e: no master to kill"
  vslot=$(cluster_nodes | awk -v v="$vict" '{ a = $2; sub(/@.*/, "", a) }
           a == v { for (i = 9; i <= NF; i++) if ($i !~ /^\[/) { split($i, r, "-"); print r[1]; exit } }')
  kill_master "$vict" "$vslot"
  fig e_failover_ms $((t_fo - t_kill))
  note "e. $new_master took over after $((t_fo - t_kill)) ms; reading through daemon 3 for 5 s"
  sleep 5
  ens_stop re TERM || fail "e: the rows reader did not stop"
  line=$(grep '^rc_reader rows: passes=' "$D/re.log" | tail -n 1)
  [ -n "$line" ] || fail "e: the rows reader printed no summary: $(tail -n 5 "$D/re.log")"
  note "e. lazy pull in ${FIG[e_pull_ms]} ms; $line"
  grep -q 'first error' "$D/re.log" && note "e. $(grep 'first error' "$D/re.log")"
  for k in passes reads MBps wrong_bytes errors first_error_ms last_error_ms longest_streak_ms \
           clean_passes_after_last_error; do
    fig "e_$k" "$(field "$k" "$line")"
  done
  st=$(ens_exec 2 "$CLI" --socket "$D/d3.sock" stats --json 2>/dev/null)
  for k in remote_reads remote_bytes remote_errors remote_retries remote_checksum_failures; do
    fig "e_$k" "$(sed -n "s/.*\"$k\": *\([0-9]*\).*/\1/p" <<< "$st" | head -n 1)"
  done
  [ "${FIG[e_wrong_bytes]}" = 0 ] || fail "e: ${FIG[e_wrong_bytes]} wrong bytes through daemon 3"
  [ "${FIG[e_remote_reads]:-0}" -gt 0 ] ||
    fail "e: daemon 3 says it read nothing from the cluster (remote_reads '${FIG[e_remote_reads]}')"
  [ "${FIG[e_remote_checksum_failures]:-0}" = 0 ] ||
    fail "e: ${FIG[e_remote_checksum_failures]} partitions from the cluster failed their checksum"
  failover_window e 1
}

# Wait up to S seconds for TAG to exit by itself, else stop it and fail.
ens_stop_wait() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    ens_pid "$1" >/dev/null || { wait_quiet "$1"; return 0; }
    sleep 0.1
  done
  ens_stop "$1" TERM
  fail "$1 did not finish within $2 s"
}

phase_daemon_eager
if "$CLI" pull --help 2>&1 | grep -q -- '--lazy'; then
  fig e_mode lazy
  phase_daemon_lazy
else
  fig e_mode "not run: 'embcache pull --help' has no --lazy"
  note "e. 'embcache pull --help' has no --lazy yet: no reads through the remote read path"
fi

# ---- summary ----
fig seconds $(($(date +%s) - t0_s))
echo "test_netns_cluster: summary"
for k in $(printf '%s\n' "${!FIG[@]}" | sort); do
  printf '  %-34s %s\n' "$k" "${FIG[$k]}"
done
echo "  (bounds: errors only on the killed master's keys and within ${FAILOVER_SLACK_MS} ms" \
  "after its failover, streaks <= ${STREAK_MAX_MS} ms; 0 wrong bytes, 0 missing everywhere;" \
  "0 errors during the reshard)"
note "PASS"
exit 0
