#!/usr/bin/env bash
# cluster.sh - start and stop a throw-away local Redis Cluster for tests
# (tests/unit/test_rcluster.c and other tests drive it on loopback;
# tests/redis/test_netns_cluster.sh runs its nodes in network namespaces,
# EC_RC_NETNS below; so can a person).
#
#   cluster.sh start DIR BASEPORT [MASTERS [REPLICAS]] [BIND_ADDR...]
#   cluster.sh stop DIR
#   cluster.sh status DIR
#
# start: MASTERS*(1+REPLICAS) redis-server nodes (default 3 masters, 1
# replica each), node i on port BASEPORT+i (its cluster bus on +10000) and
# bound to, and announcing, BIND_ADDR[i mod count] (default 127.0.0.1 for
# every node; nodes in network namespaces each give their own). Every
# file of the cluster lives in DIR: redis-PORT.conf, nodes-PORT.conf (the
# cluster config), redis-PORT.pid, redis-PORT.log. Then `redis-cli --cluster
# create`, and waits (EC_RC_WAIT_S, default 60 s) until every node says
# cluster_state:ok with all 16384 slots ok and knows every other node, and
# every replica's link to its master is up. DIR/nodes then lists one node a
# line: "ADDR PORT PIDFILE". Exits 0 when the cluster is ready, 1 otherwise
# (having stopped what it started), 77 when redis-server or redis-cli is not
# installed.
#
# stop: SIGTERM to every pid in DIR/*.pid that is still a redis-server
# (checked in /proc, so a recycled pid is never hit), then SIGKILL after 10 s;
# waits until each has exited. Never kills by name: other Redis servers may run
# on this machine. Nodes killed before (kill -9 in a failover test) are fine.
#
# Environment: REDIS_SERVER, REDIS_CLI (programs), EC_RC_NODE_TIMEOUT
# (cluster-node-timeout in ms, default 1000: a failover takes a few seconds),
# EC_RC_WAIT_S, EC_RC_PASS (a password every node requires, requirepass and
# masterauth; this script's redis-cli calls give it through REDISCLI_AUTH),
# EC_RC_NETNS (below). Slots of a failed master are not served
# until its replica takes over, but the others keep serving
# (cluster-require-full-coverage no).
#
# Nodes in network namespaces (tests/redis/netns.sh): EC_RC_NETNS="ADDR=NS
# [ADDR=NS...]" names, per BIND_ADDR, the namespace a node on that address
# runs in; its redis-server and every redis-cli that talks to it run under
# `ip netns exec NS`, and `--cluster create` runs in the first node's. An
# address it does not name runs in this script's namespace. Those nodes run
# without protected mode (no password: they would refuse every other host),
# which is safe only because nothing outside the test's namespaces reaches
# them. Stopping needs no namespace: pids are the same in all of them.
set -u

server=${REDIS_SERVER:-redis-server}
cli=${REDIS_CLI:-redis-cli}
node_timeout=${EC_RC_NODE_TIMEOUT:-1000}
wait_s=${EC_RC_WAIT_S:-60}
pass=${EC_RC_PASS:-}
case "$pass" in *[!A-Za-z0-9_.-]*) echo "cluster.sh: EC_RC_PASS: letters, digits, '_.-' only" >&2; exit 2;; esac
[ -n "$pass" ] && export REDISCLI_AUTH=$pass

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
  echo "usage: cluster.sh start DIR BASEPORT [MASTERS [REPLICAS]] [BIND_ADDR...]" >&2
  echo "       cluster.sh stop DIR | status DIR" >&2
  exit 2
}

is_uint() { case "$1" in ''|*[!0-9]*) return 1;; *) return 0;; esac; }

# on_addr ADDR CMD...: run CMD in the namespace EC_RC_NETNS gives ADDR, if any.
on_addr() {
  local addr=$1 pair ns=
  shift
  for pair in ${EC_RC_NETNS:-}; do
    [ "${pair%%=*}" = "$addr" ] && ns=${pair#*=}
  done
  if [ -n "$ns" ]; then
    ip netns exec "$ns" "$@"
  else
    "$@"
  fi
}

# pid is alive and is a redis-server (not a zombie, not a recycled pid).
is_redis_pid() {
  local pid=$1 comm state
  is_uint "$pid" || return 1
  [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case "$comm" in redis-server*|redis-check*) ;; *) return 1;; esac
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
  [ "$state" != "Z" ]
}

stop_cluster() {
  local dir=$1 f pid pids=() i
  [ -d "$dir" ] || return 0
  for f in "$dir"/redis-*.pid; do
    [ -e "$f" ] || continue
    pid=$(head -c 32 "$f" | tr -dc 0-9)
    if is_redis_pid "$pid"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  for ((i = 0; i < 100; i++)); do
    local alive=()
    for pid in "${pids[@]}"; do is_redis_pid "$pid" && alive+=("$pid"); done
    pids=("${alive[@]}")
    [ "${#pids[@]}" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    echo "cluster.sh: node pid $pid ignored SIGTERM for 10 s; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
  done
  for ((i = 0; i < 50 && ${#pids[@]} > 0; i++)); do
    local alive=()
    for pid in "${pids[@]}"; do is_redis_pid "$pid" && alive+=("$pid"); done
    pids=("${alive[@]}")
    sleep 0.1
  done
  [ "${#pids[@]}" -eq 0 ] || die "nodes ${pids[*]} did not exit"
  rm -f "$dir"/redis-*.pid
  return 0
}

# One line of CLUSTER INFO / INFO output: "field:value" -> value.
info_field() { tr -d '\r' | sed -n "s/^$1://p"; }

cluster_ready() {
  local n=$1 addr port out line
  while read -r addr port _; do
    out=$(on_addr "$addr" "$cli" -h "$addr" -p "$port" --no-raw cluster info 2>/dev/null) ||
      return 1
    [ "$(printf '%s\n' "$out" | info_field cluster_state)" = ok ] || return 1
    [ "$(printf '%s\n' "$out" | info_field cluster_slots_ok)" = 16384 ] || return 1
    [ "$(printf '%s\n' "$out" | info_field cluster_known_nodes)" = "$n" ] || return 1
    out=$(on_addr "$addr" "$cli" -h "$addr" -p "$port" info replication 2>/dev/null) || return 1
    line=$(printf '%s\n' "$out" | info_field role)
    if [ "$line" = slave ]; then
      [ "$(printf '%s\n' "$out" | info_field master_link_status)" = up ] || return 1
    fi
  done < "$dir/nodes"
  return 0
}

start_cluster() {
  [ $# -ge 2 ] || usage
  dir=$1 base=$2
  shift 2
  local masters=3 replicas=1
  if [ $# -gt 0 ] && is_uint "$1"; then masters=$1; shift; fi
  if [ $# -gt 0 ] && is_uint "$1"; then replicas=$1; shift; fi
  local addrs=("$@")
  [ ${#addrs[@]} -gt 0 ] || addrs=(127.0.0.1)

  command -v "$server" >/dev/null 2>&1 || { echo "cluster.sh: $server not found" >&2; exit 77; }
  command -v "$cli" >/dev/null 2>&1 || { echo "cluster.sh: $cli not found" >&2; exit 77; }
  is_uint "$base" || die "BASEPORT '$base' is not a number"
  [ "$masters" -ge 3 ] || die "a cluster needs at least 3 masters (got $masters)"
  local n=$((masters * (1 + replicas)))
  if [ "$base" -lt 1024 ] || [ $((base + n - 1 + 10000)) -gt 65535 ]; then
    die "ports $base..$((base + n - 1)) and their bus ports (+10000) must lie in 1024..65535"
  fi
  mkdir -p "$dir" || die "cannot create $dir"
  dir=$(cd "$dir" && pwd)
  for f in "$dir"/redis-*.pid; do
    [ -e "$f" ] || continue
    pid=$(head -c 32 "$f" | tr -dc 0-9)
    is_redis_pid "$pid" && die "$dir already has a running node (pid $pid): stop it first"
  done

  : > "$dir/nodes"
  local i port addr hosts=()
  for ((i = 0; i < n; i++)); do
    port=$((base + i))
    addr=${addrs[$((i % ${#addrs[@]}))]}
    local prot=yes
    case "$addr" in 127.*|::1) prot=no;; esac
    # A node in a test's namespace is reachable only from that test's hosts.
    case " ${EC_RC_NETNS:-} " in *" $addr="*) prot=no;; esac
    rm -f "$dir/nodes-$port.conf" "$dir/redis-$port.log"
    cat > "$dir/redis-$port.conf" <<EOF
port $port
bind $addr
protected-mode $prot
daemonize yes
pidfile $dir/redis-$port.pid
logfile $dir/redis-$port.log
dir $dir
cluster-enabled yes
cluster-config-file $dir/nodes-$port.conf
cluster-node-timeout $node_timeout
cluster-require-full-coverage no
cluster-announce-ip $addr
cluster-replica-validity-factor 0
appendonly no
save ""
EOF
    [ -n "$pass" ] && printf 'requirepass %s\nmasterauth %s\n' "$pass" "$pass" >> "$dir/redis-$port.conf"
    if ! on_addr "$addr" "$server" "$dir/redis-$port.conf"; then
      stop_cluster "$dir"
      die "redis-server on $addr:$port did not start (see $dir/redis-$port.log)"
    fi
    echo "$addr $port $dir/redis-$port.pid" >> "$dir/nodes"
    case "$addr" in *:*) hosts+=("[$addr]:$port");; *) hosts+=("$addr:$port");; esac
  done

  # Every node answers PING before the cluster is created.
  local ok=0
  for ((i = 0; i < 100; i++)); do
    ok=1
    while read -r addr port _; do
      [ "$(on_addr "$addr" "$cli" -h "$addr" -p "$port" ping 2>/dev/null)" = PONG ] ||
        { ok=0; break; }
    done < "$dir/nodes"
    [ $ok = 1 ] && break
    sleep 0.1
  done
  [ $ok = 1 ] || { stop_cluster "$dir"; die "nodes did not answer PING within 10 s (see $dir/*.log)"; }

  # (It waits for the nodes to meet without a limit of its own.)
  if ! on_addr "${addrs[0]}" timeout "$wait_s" "$cli" --cluster create "${hosts[@]}" \
      --cluster-replicas "$replicas" --cluster-yes > "$dir/create.log" 2>&1; then
    stop_cluster "$dir"
    die "redis-cli --cluster create failed: $(tail -n 5 "$dir/create.log" | tr '\n' ' ')"
  fi
  for ((i = 0; i < wait_s * 10; i++)); do
    if cluster_ready "$n"; then
      echo "cluster.sh: $n nodes ready in $dir (ports $base..$((base + n - 1)))"
      return 0
    fi
    sleep 0.1
  done
  stop_cluster "$dir"
  die "the cluster was not ready (state ok, 16384 slots, $n nodes, replicas linked) within ${wait_s} s"
}

status_cluster() {
  local dir=$1 addr port pidf pid rc=0
  [ -f "$dir/nodes" ] || die "$dir/nodes: no cluster started there"
  while read -r addr port pidf; do
    pid=$(head -c 32 "$pidf" 2>/dev/null | tr -dc 0-9)
    if is_redis_pid "$pid"; then
      echo "$addr:$port pid $pid $(on_addr "$addr" "$cli" -h "$addr" -p "$port" cluster info \
        2>/dev/null | info_field cluster_state)"
    else
      echo "$addr:$port down"; rc=1
    fi
  done < "$dir/nodes"
  return $rc
}

[ $# -ge 2 ] || usage
cmd=$1
shift
case "$cmd" in
  start) start_cluster "$@" ;;
  stop) stop_cluster "$1" ;;
  status) status_cluster "$1" ;;
  *) usage ;;
esac
