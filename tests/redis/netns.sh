#!/usr/bin/env bash
# netns.sh - throw-away "hosts" for tests: network namespaces joined by a
# private bridge, and the processes a test runs in them, all stopped by pid.
#
# A test sources it and calls ens_setup; `netns.sh selftest` (as root) runs
# the setup (which checks every host reaches every other), runs and stops a
# process in one, and cleans up.
#
#   ens_setup N            N (1..9) hosts: namespaces ech1-$$ .. echN-$$, each
#                          with lo up and one veth, eth0, whose other end is a
#                          port of bridge br0 inside a namespace of its own,
#                          ecsw-$$. Host i has ENS_NET.i/24 (ENS_ADDR[i]),
#                          ENS_NET a 10.231.X prefix that overlaps no address
#                          or route of this (the root) namespace. Nothing is
#                          added to this namespace: no link, no address, no
#                          route, so nothing outside the namespaces can be
#                          addressed from them or reach them. Installs an
#                          EXIT trap that runs ens_cleanup (INT and TERM exit
#                          through it), and makes ENS_DIR, a private
#                          directory removed at cleanup (ENS_KEEP=1 keeps it).
#                          Exits 77, saying why, only when it proved the
#                          machine unable: not root, no `ip`, `ip netns add`
#                          or veth or bridge links refused by the kernel.
#   ens_spawn TAG HOST LOG PROG [ARG...]
#                          runs PROG in host HOST's namespace (HOST 1..N) in
#                          the background, output to LOG; records its pid,
#                          PROG and its start time in ENS_DIR/pids/TAG; the
#                          pid is in ENS_PID.
#   ens_exec HOST PROG [ARG...]   runs PROG in host HOST's namespace, waits.
#   ens_pid TAG            prints the pid of TAG while it is ours and alive.
#   ens_stop TAG [SIGNAL]  SIGNAL (default TERM) to TAG's pid if it still is
#                          the process spawned (same PROG in its command line,
#                          same start time; never a recycled pid), then waits
#                          up to 10 s for it to exit (SIGKILL after that).
#   ens_cluster_dir DIR    a tests/redis/cluster.sh directory whose nodes
#                          cleanup stops (cluster.sh stop: by pid file).
#   ens_cleanup            stops every spawned process and cluster by pid,
#                          then any process still in one of the namespaces
#                          (each printed: it was started in a namespace of
#                          ours, so ours), deletes the namespaces and
#                          ENS_DIR. Returns 1 when something would not stop
#                          or be deleted.
#
# Environment: ENS_CLUSTER_SH (cluster.sh; default: next to this file).
# Runs in the test's shell; every namespace name carries the test's pid, so
# concurrent tests never share one.

ENS_TAG=$$
ENS_SW=ecsw-$ENS_TAG
ENS_NS=()
ENS_ADDR=()
ENS_NET=
ENS_DIR=
ENS_PID=
ENS_CLUSTERS=()
ENS_CLUSTER_SH=${ENS_CLUSTER_SH:-$(dirname "${BASH_SOURCE[0]}")/cluster.sh}
ens_cleaned=0

ens_skip() { echo "netns.sh: SKIP: $*" >&2; exit 77; }
ens_die() { echo "netns.sh: $*" >&2; exit 1; }

# "a.b.c.d" -> integer
ens_ip2int() {
  local IFS=. a b c d
  read -r a b c d <<< "$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}

# Does a.b.c.0/24 overlap any IPv4 address or route of this namespace?
ens_net_used() {
  local net=$1 cidr ip len lo hi mask n0 n1
  n0=$(ens_ip2int "$net.0")
  n1=$((n0 + 255))
  while read -r cidr; do
    case "$cidr" in default|'') continue;; esac
    ip=${cidr%/*}
    len=32
    [ "$cidr" != "$ip" ] && len=${cidr#*/}
    case "$ip" in *[!0-9.]*) continue;; esac
    [ "$len" -eq 0 ] && continue # a default route covers everything
    mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
    lo=$(($(ens_ip2int "$ip") & mask))
    hi=$((lo | (~mask & 0xffffffff)))
    [ "$lo" -le "$n1" ] && [ "$hi" -ge "$n0" ] && return 0
  done < <(ip -4 -o addr show | awk '{print $4}'
           ip -4 route show table all 2>/dev/null | awk '{print $1 == "local" || $1 == "broadcast" ? $2 : $1}')
  return 1
}

ens_setup() {
  local n=${1:-3} i x ns
  [ "$(id -u)" = 0 ] || ens_skip "not root: network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN"
  command -v ip >/dev/null 2>&1 || ens_skip "no 'ip' program (iproute2)"
  case "$n" in [1-9]) ;; *) ens_die "ens_setup: 1..9 hosts (got '$n')";; esac
  # shellcheck disable=SC2154 # ens_rc is assigned inside the trap
  trap 'ens_rc=$?; ens_cleanup || ens_rc=1; exit $ens_rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ENS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ecnetns-$ENS_TAG-XXXXXX") || ens_die "mktemp failed"
  chmod 700 "$ENS_DIR"
  mkdir "$ENS_DIR/pids"

  # 10.231.X.0/24, X from a start that depends on the pid, the first free one.
  for ((x = 0; x < 256; x++)); do
    local c=$(((ENS_TAG + x) % 250 + 1))
    if ! ens_net_used "10.231.$c"; then ENS_NET=10.231.$c; break; fi
  done
  [ -n "$ENS_NET" ] || ens_die "every 10.231.X.0/24 overlaps an address or route of this namespace"

  local err
  if ! err=$(ip netns add "$ENS_SW" 2>&1); then
    ens_skip "ip netns add refused: $err"
  fi
  ENS_NS+=("$ENS_SW")
  ip -n "$ENS_SW" link set lo up || ens_die "$ENS_SW: lo up"
  if ! err=$(ip -n "$ENS_SW" link add br0 type bridge 2>&1); then
    ens_skip "the kernel refuses a bridge link: $err"
  fi
  # No STP and no forwarding delay: ports forward at once.
  ip -n "$ENS_SW" link set br0 type bridge stp_state 0 forward_delay 0 2>/dev/null
  ip -n "$ENS_SW" link set br0 up || ens_die "$ENS_SW: br0 up"
  for ((i = 1; i <= n; i++)); do
    ns=ech$i-$ENS_TAG
    err=$(ip netns add "$ns" 2>&1) || ens_die "ip netns add $ns: $err"
    ENS_NS+=("$ns")
    ENS_ADDR[i]=$ENS_NET.$i
    # Both ends are created inside the namespaces: this one never sees them.
    if ! err=$(ip -n "$ENS_SW" link add "p$i" type veth peer name eth0 netns "$ns" 2>&1); then
      [ "$i" = 1 ] && ens_skip "the kernel refuses a veth pair: $err"
      ens_die "veth for $ns: $err"
    fi
    ip -n "$ENS_SW" link set "p$i" master br0 up || ens_die "$ENS_SW: p$i to br0"
    ip -n "$ns" link set lo up || ens_die "$ns: lo up"
    ip -n "$ns" addr add "${ENS_ADDR[i]}/24" dev eth0 || ens_die "$ns: address ${ENS_ADDR[i]}"
    ip -n "$ns" link set eth0 up || ens_die "$ns: eth0 up"
  done
  # Every host reaches every other before a test starts.
  local a b ok
  for ((a = 1; a <= n; a++)); do
    for ((b = 1; b <= n; b++)); do
      [ "$a" = "$b" ] && continue
      ok=0
      for ((x = 0; x < 50; x++)); do
        if ens_reaches "$a" "${ENS_ADDR[b]}"; then ok=1; break; fi
        sleep 0.1
      done
      [ "$ok" = 1 ] || ens_die "host $a cannot reach host $b (${ENS_ADDR[b]})"
    done
  done
  echo "netns.sh: $n hosts on $ENS_NET.0/24 (${ENS_NS[*]}), bridge in $ENS_SW; files in $ENS_DIR"
}

ens_ns() { echo "ech$1-$ENS_TAG"; }

# Does host H reach ADDR? A TCP connect to port 9 (discard), where nothing
# listens: "Connection refused" is the other host's RST, so it answered
# (no ping program is needed).
ens_reaches() {
  local out
  out=$(ip netns exec "ech$1-$ENS_TAG" timeout 2 bash -c "exec 3<>/dev/tcp/$2/9" 2>&1) &&
    return 0
  case "$out" in *"Connection refused"*) return 0;; esac
  return 1
}

ens_exec() {
  local h=$1
  shift
  ip netns exec "ech$h-$ENS_TAG" "$@"
}

# The start time of pid (field 22 of /proc/PID/stat), or nothing.
ens_starttime() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }    # the fields after the command name
  # shellcheck disable=SC2086
  set -- $s
  echo "${20}"   # field 22 is the 20th after "pid (comm)"
}

ens_spawn() {
  local tag=$1 h=$2 log=$3 prog=$4 st
  shift 3
  case "$tag" in ''|*[!A-Za-z0-9_-]*) ens_die "ens_spawn: bad tag '$tag'";; esac
  ip netns exec "ech$h-$ENS_TAG" "$@" > "$log" 2>&1 &
  ENS_PID=$!
  st=$(ens_starttime "$ENS_PID")
  printf '%s %s %s\n' "$ENS_PID" "${st:-0}" "$prog" > "$ENS_DIR/pids/$tag"
}

# Is the pid of record TAG still the process we spawned? Then print it.
ens_pid() {
  local f=$ENS_DIR/pids/$1 pid st prog
  [ -f "$f" ] || return 1
  read -r pid st prog < "$f"
  ens_is_ours "$pid" "$st" "$prog" && echo "$pid"
}

ens_is_ours() {
  local pid=$1 st=$2 prog=$3 cur
  case "$pid" in ''|*[!0-9]*) return 1;; esac
  [ -r "/proc/$pid/cmdline" ] || return 1
  cur=$(ens_starttime "$pid") || return 1
  [ "$st" = 0 ] || [ "$cur" = "$st" ] || return 1
  # The program is one of its arguments: itself after exec, or the argument
  # of `ip netns exec` just before.
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$prog" || return 1
  [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ]
}

ens_stop() {
  local tag=$1 sig=${2:-TERM} pid i
  pid=$(ens_pid "$tag") || { wait_quiet "$tag"; return 0; }
  kill -"$sig" "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    ens_pid "$tag" >/dev/null || break
    sleep 0.1
  done
  if ens_pid "$tag" >/dev/null; then
    echo "netns.sh: $tag (pid $pid) still runs 10 s after SIG$sig: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do ens_pid "$tag" >/dev/null || break; sleep 0.1; done
  fi
  wait_quiet "$tag"
  ! ens_pid "$tag" >/dev/null
}

# Reap TAG if it is a child of this shell (its status is not needed here).
wait_quiet() {
  local f=$ENS_DIR/pids/$1 pid
  [ -f "$f" ] || return 0
  read -r pid _ < "$f"
  wait "$pid" 2>/dev/null
  return 0
}

ens_cluster_dir() { ENS_CLUSTERS+=("$1"); }

ens_cleanup() {
  local rc=0 f tag ns pid i left
  [ "$ens_cleaned" = 1 ] && return 0
  ens_cleaned=1
  if [ -n "$ENS_DIR" ] && [ -d "$ENS_DIR/pids" ]; then
    for f in "$ENS_DIR"/pids/*; do
      [ -e "$f" ] || continue
      tag=${f##*/}
      ens_stop "$tag" TERM || { echo "netns.sh: $tag would not stop" >&2; rc=1; }
    done
  fi
  for f in "${ENS_CLUSTERS[@]}"; do
    bash "$ENS_CLUSTER_SH" stop "$f" >/dev/null || rc=1
  done
  # Whatever still runs in one of our namespaces was started there by this
  # test (a daemon's worker, a program a spawned one started): by pid.
  for ns in "${ENS_NS[@]}"; do
    left=$(ip netns pids "$ns" 2>/dev/null)
    [ -n "$left" ] || continue
    for pid in $left; do
      echo "netns.sh: pid $pid still in $ns: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null); SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    done
    rc=1
    for ((i = 0; i < 50; i++)); do
      [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
      sleep 0.1
    done
  done
  for ns in "${ENS_NS[@]}"; do
    ip netns del "$ns" 2>/dev/null || { echo "netns.sh: ip netns del $ns failed" >&2; rc=1; }
  done
  ENS_NS=()
  if [ -n "$ENS_DIR" ] && [ -d "$ENS_DIR" ]; then
    if [ "${ENS_KEEP:-0}" = 1 ]; then
      echo "netns.sh: kept $ENS_DIR"
    else
      rm -rf "$ENS_DIR"
    fi
  fi
  return $rc
}

# `netns.sh selftest`: set up 3 hosts (each reaching the others), run a process in one,
# stop it, clean up; then check that no namespace of ours is left.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  case "${1:-}" in
    selftest)
      ens_setup 3
      for h in 1 2 3; do
        ens_exec "$h" ip -4 -o addr show dev eth0 | awk '{print "  host '"$h"':", $4}'
      done
      ens_spawn sleeper 2 "$ENS_DIR/sleep.log" /bin/sleep 60
      pid=$(ens_pid sleeper) || ens_die "the spawned sleep is not running"
      [ "$(ip netns identify "$pid")" = "$(ens_ns 2)" ] || ens_die "sleep runs outside $(ens_ns 2)"
      ens_stop sleeper || ens_die "sleep did not stop"
      ens_cleanup || ens_die "cleanup failed"
      ip netns list | grep -q -- "-$ENS_TAG\b" && ens_die "namespaces left: $(ip netns list)"
      echo "netns.sh selftest: ok"
      ;;
    *) echo "usage: netns.sh selftest (or source it: see the comment on top)" >&2; exit 2 ;;
  esac
fi
