#!/usr/bin/env bash
# The quick start: install dependencies, build, start embcached on a data
# directory under the checkout, import the demo model on first run (a
# generated 200,000 x 128 float32 table), read random rows through the
# client library, check them, print a few and the lookup latency, and stop
# the daemon. Run from anywhere in the checkout, as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
echo "demo: built embcached, embcache, embcache-demo in build/"

data="$top/data"
mkdir -p "$data"
sock="$data/embcached.sock"
if [ "${#sock}" -ge 100 ]; then sock="/tmp/embcache-demo-$(id -u).sock"; fi
export EMBCACHE_SOCKET="$sock"

# The demo's 256 MiB of shared memory goes with the daemon when it ends.
# EMBCACHE_CONFIG=: these options alone, not an installed /etc/embcache/embcached.conf.
EMBCACHE_CONFIG= build/embcached --data-dir "$data" --socket "$sock" --shm-size 256M \
  2>"$data/embcached.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  [ -S "$sock" ] && build/embcache stats >/dev/null 2>&1 && break
  kill -0 $daemon 2>/dev/null || { cat "$data/embcached.log" >&2; exit 1; }
  sleep 0.1
done
echo "demo: embcached (pid $daemon) is serving $sock; its log is $data/embcached.log"

if ! build/embcache ls demo >/dev/null 2>&1; then
  build/embcache-demo generate --out "$data/word_embeddings.npy" --rows 200000 --dim 128
  build/embcache import --model demo --version 1 --round 0 \
    --params '{"dim": 128, "generator": "embcache-demo"}' "$data/word_embeddings.npy"
  build/embcache alias demo current 1
  rm -f "$data/word_embeddings.npy"
fi
build/embcache ls demo
build/embcache-demo run --model demo --version current --tensor word_embeddings
echo "demo: two rows through the CLI:"
build/embcache get demo current word_embeddings 7 199999 | cut -c1-120
