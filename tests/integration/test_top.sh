#!/usr/bin/env bash
# test_top.sh - `embcache top` (tools/cli_top.c) against a real embcached:
#   1. no daemon: exit 3, one line on stderr naming the socket and embcached;
#   2. batch mode (-b, no terminal): -n frames, rates that follow the load
#      (non-zero while embcache-demo gathers, 0 once it stopped), bad options;
#   3. interactive, in a detached tmux session of 120x40 on a private server
#      (tmux -L): the screen shows the tensor, a non-zero hit rate and the
#      memory line while the demo gathers; a resize to 80x10 is redrawn to fit
#      (the first line still on top); `q` ends it with status 0 and the
#      alternate screen left; SIGTERM and Ctrl-C (SIGINT) do the same.
# The daemon, the load loop and the tmux server are this script's, stopped by
# pid (and kill-server on the private socket) on every exit path.
# Usage: test_top.sh EMBCACHED EMBCACHE_CLI EMBCACHE_DEMO
# Exit 0 pass, 1 fail, 77 skipped (tmux is not installed: only then).
set -u
# The daemon runs with this script's options only, whatever /etc/embcache holds.
export EMBCACHE_CONFIG=

EMBCACHED=$1 CLI=$2 DEMO=$3
TENSOR=demo/1/word_embeddings

fail() { echo "test_top: FAIL: $*" >&2; exit 1; }
note() { echo "test_top: $*"; }

dir=$(mktemp -d /tmp/ectop-XXXXXX) || fail "mktemp"
sock=$dir/s
tsock=ectop-$$-$RANDOM
daemon=0 load=0
have_tmux=0
command -v tmux >/dev/null 2>&1 && have_tmux=1

cleanup() {
  [ "$load" -gt 0 ] && kill "$load" 2>/dev/null && wait "$load" 2>/dev/null
  [ "$have_tmux" = 1 ] && tmux -L "$tsock" kill-server 2>/dev/null
  if [ "$daemon" -gt 0 ]; then
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# ---- the daemon, a demo table, a namespace ----
"$EMBCACHED" --data-dir "$dir/data" --socket "$sock" --shm-size 64M --quiet \
  >"$dir/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
  "$CLI" --socket "$sock" stats >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || fail "embcached exited at start: $(cat "$dir/daemon.log")"
  sleep 0.05
done
"$CLI" --socket "$sock" stats >/dev/null || fail "embcached did not start on $sock"
"$DEMO" generate --out "$dir/word_embeddings.npy" --rows 20000 --dim 32 >/dev/null ||
  fail "embcache-demo generate"
"$CLI" --socket "$sock" import --model demo --version 1 "$dir/word_embeddings.npy" >/dev/null ||
  fail "import"
"$CLI" --socket "$sock" results create topns --shared >/dev/null || fail "results create"
"$CLI" --socket "$sock" results put topns k1 --value v1 >/dev/null || fail "results put"

# A loop of demo runs (each 20,000 checked single-row gathers, then batches)
# and a result lookup each, until SIGTERM (which stops the running demo too).
start_load() {
  (
    c=0
    trap '[ "$c" -gt 0 ] && kill "$c" 2>/dev/null; exit 0' TERM
    while :; do
      "$DEMO" run --socket "$sock" --version 1 --lookups 20000 >/dev/null &
      c=$!
      wait "$c" || exit 1
      "$CLI" --socket "$sock" results get topns k1 >/dev/null || exit 1
    done
  ) &
  load=$!
}
stop_load() {
  kill "$load" 2>/dev/null
  wait "$load" 2>/dev/null
  load=0
}

# ---- 1. no daemon ----
out=$("$CLI" --socket "$dir/none.sock" top -b -n 1 2>"$dir/err"); rc=$?
[ "$rc" = 3 ] || fail "no daemon: exit $rc, want 3"
[ -z "$out" ] || fail "no daemon: printed on stdout: $out"
[ "$(wc -l <"$dir/err")" = 1 ] || fail "no daemon: want one line on stderr: $(cat "$dir/err")"
grep -q "$dir/none.sock" "$dir/err" || fail "no daemon: the message does not name the socket"
grep -q "start one with 'embcached" "$dir/err" ||
  fail "no daemon: the message does not say to start embcached: $(cat "$dir/err")"
note "no daemon: exit 3, $(cat "$dir/err")"

for bad in "-d 0" "-d x" "-n 0" "-t 0" "extra"; do
  # shellcheck disable=SC2086
  "$CLI" --socket "$sock" top -b $bad >/dev/null 2>"$dir/err"; rc=$?
  [ "$rc" = 2 ] || fail "top $bad: exit $rc, want 2"
  [ -s "$dir/err" ] || fail "top $bad: nothing on stderr"
done

# ---- 2. batch mode ----
# Prime the table (the first run faults it in), then measure under load.
"$DEMO" run --socket "$sock" --version 1 --lookups 1000 >/dev/null || fail "demo run"
start_load
sleep 0.3
"$CLI" --socket "$sock" top -b -n 3 -d 0.5 >"$dir/batch" 2>"$dir/err"; rc=$?
[ "$rc" = 0 ] || fail "top -b -n 3: exit $rc: $(cat "$dir/err")"
[ ! -s "$dir/err" ] || fail "top -b: stderr: $(cat "$dir/err")"
frames=$(grep -c '^embcache top - ' "$dir/batch")
[ "$frames" = 3 ] || fail "top -b -n 3 printed $frames frames"
if grep -q $'\033' "$dir/batch"; then fail "batch mode printed escape sequences"; fi
# Every frame: the tensor's rows requested and hit per second above 0, the
# gathers per second above 0 (the counters moved between every two samples).
awk -v t="$TENSOR" '
  $1 == t {
    n++
    if ($3 == "0" || $3 == "-" || $4 == "0" || $4 == "-") bad = bad " frame " n ": " $0
  }
  /^Requests:/ { r++; if ($3 == "0/s" || $3 == "-/s") bad = bad " requests " r ": " $0 }
  END { if (n != 3 || r != 3 || bad != "") { print "rows " n ", requests " r bad; exit 1 } }
' "$dir/batch" >"$dir/why" || fail "batch frames under load: $(cat "$dir/why")"
grep -q '^Memory: *used .* of budget .* segment 64.0 MiB' "$dir/batch" ||
  fail "batch: no memory line: $(grep ^Memory "$dir/batch")"
grep -q '^topns ' "$dir/batch" || fail "batch: the namespace topns is not listed"
note "batch under load: $(grep "^$TENSOR" "$dir/batch" | tail -1)"
stop_load
# No load: the rates fall to 0 (they are differences, not totals).
sleep 0.3
"$CLI" --socket "$sock" top -b -n 2 -d 0.3 >"$dir/idle" || fail "top -b idle"
last=$(grep "^$TENSOR " "$dir/idle" | tail -1)
[ "$(echo "$last" | awk '{print $3}')" = 0 ] || fail "idle: REQ/s not 0: $last"
grep '^Requests:' "$dir/idle" | tail -1 | grep -q 'gathers 0/s' ||
  fail "idle: gathers not 0/s: $(grep '^Requests:' "$dir/idle" | tail -1)"
# Not a terminal and no -b: batch all the same.
"$CLI" --socket "$sock" top -n 1 -d 0.2 </dev/null >"$dir/auto" || fail "top without a terminal"
grep -q '^embcache top - ' "$dir/auto" || fail "top without a terminal printed no frame"

# ---- 3. interactive, under tmux ----
if [ "$have_tmux" = 0 ]; then
  echo "test_top: tmux not installed (apt-get install tmux): interactive part skipped"
  exit 77
fi
T() { tmux -L "$tsock" -f /dev/null "$@"; }

# The pane's text, or fail after secs seconds waiting for a line to match.
wait_screen() { # session secs grep-pattern
  local s=$1 secs=$2 pat=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    T capture-pane -p -t "$s" >"$dir/screen" 2>/dev/null
    grep -Eq "$pat" "$dir/screen" && return 0
    sleep 0.1
  done
  return 1
}
# Wait for top in session s to end: its exit status, as the shell around it
# recorded it (tmux itself may show a pane dead before it reaps the process).
wait_dead() { # session
  local i
  for ((i = 0; i < 100; i++)); do
    if [ -s "$dir/rc.$1" ] && [ "$(T display-message -p -t "$1" '#{pane_dead}')" = 1 ]; then
      cat "$dir/rc.$1"
      return 0
    fi
    sleep 0.1
  done
  echo "timeout (rc file '$(cat "$dir/rc.$1" 2>/dev/null)')"
}
# top in the foreground of the pane (the inner shell writes its pid, then
# execs top); the outer shell records top's exit status and exits with it.
start_top() { # session
  local inner outer
  inner=$(printf 'echo $$ >%q; exec %q --socket %q top -d 0.5' "$dir/pid.$1" "$CLI" "$sock")
  outer=$(printf 'sh -c %q; rc=$?; echo $rc >%q; exit $rc' "$inner" "$dir/rc.$1")
  T new-session -d -s "$1" -x 120 -y 40 "$outer" \; \
    set-option -t "$1" remain-on-exit on || fail "tmux new-session"
}

start_load
start_top q1
# The tensor's line with a non-zero hit rate (HIT/s and HIT%), while loaded.
nz='[0-9.]*[1-9][0-9.]*' # a number that is not 0
wait_screen q1 15 "^$TENSOR +partitions +[0-9.]+[kM]? +$nz[kM]? +$nz%" ||
  fail "tmux: no tensor line with a non-zero hit rate in 15 s:
$(cat "$dir/screen")"
grep -Eq '^Requests: +gathers [0-9.]+[kM]?/s .* hit [0-9.]*[1-9][0-9.]*%' "$dir/screen" ||
  fail "tmux: no non-zero hit rate on the requests line: $(grep ^Requests "$dir/screen")"
grep -Eq '^Memory: +used .* of budget .* segment 64.0 MiB +pinned' "$dir/screen" ||
  fail "tmux: no memory line: $(grep ^Memory "$dir/screen")"
grep -Eq '^embcache top - ' "$dir/screen" || fail "tmux: the header is not on the first line"
grep -Eq '^topns ' "$dir/screen" || fail "tmux: the namespace is not listed"
[ "$(head -1 "$dir/screen" | cut -c1-15)" = "embcache top - " ] ||
  fail "tmux: the first line is not the header: $(head -1 "$dir/screen")"
note "tmux 120x40: $(grep "^$TENSOR" "$dir/screen")"

# Resize to 80x10: the frame (15 lines) is cut to fit, the header stays on top
# (drawn as 15 lines it would scroll the header away).
T resize-window -t q1 -x 80 -y 10 || fail "tmux resize-window"
sleep 1.2
T capture-pane -p -t q1 >"$dir/screen"
[ "$(head -1 "$dir/screen" | cut -c1-15)" = "embcache top - " ] ||
  fail "tmux after resize: the first line is not the header:
$(cat "$dir/screen")"
[ "$(awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }' "$dir/screen")" -le 80 ] ||
  fail "tmux after resize: a line wider than 80 columns"
grep -q '^Memory:' "$dir/screen" || fail "tmux after resize: no memory line"
T resize-window -t q1 -x 120 -y 40

T send-keys -t q1 q
st=$(wait_dead q1)
[ "$st" = 0 ] || fail "tmux: after q the pane's status is '$st', want 0:
$(T capture-pane -p -t q1)"
T capture-pane -p -t q1 >"$dir/screen"
if grep -q '^Requests:' "$dir/screen"; then
  fail "tmux: after q the screen still shows the frame (alternate screen not left)"
fi
note "q: exit status 0, terminal restored"

# SIGTERM and Ctrl-C: the same clean exit.
start_top q2
wait_screen q2 10 '^Memory:' || fail "tmux q2: no frame"
pid=$(cat "$dir/pid.q2")
kill -TERM "$pid" || fail "kill -TERM $pid"
st=$(wait_dead q2)
[ "$st" = 0 ] || fail "tmux: after SIGTERM the pane's status is '$st', want 0"
T capture-pane -p -t q2 >"$dir/screen"
if grep -q '^Requests:' "$dir/screen"; then fail "tmux: after SIGTERM the frame is still shown"; fi

start_top q3
wait_screen q3 10 '^Memory:' || fail "tmux q3: no frame"
T send-keys -t q3 C-c
st=$(wait_dead q3)
[ "$st" = 0 ] || fail "tmux: after Ctrl-C the pane's status is '$st', want 0"
note "SIGTERM and Ctrl-C: exit status 0"
stop_load

echo "test_top: PASS"
exit 0
