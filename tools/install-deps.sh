#!/usr/bin/env bash
# Install every build and test dependency of embcache from Debian 12 packages.
# Idempotent: packages already present are left alone. Run as root (or with sudo).
# The CUDA toolkit is not a Debian package here: the build finds it under
# /usr/local/cuda when it is installed and builds the CPU backend alone otherwise.
set -euo pipefail

PKGS=(
  build-essential cmake pkgconf
  libhwloc-dev liburing-dev libcmocka-dev libsqlite3-dev libxxhash-dev libdlpack-dev
  libmicrohttpd-dev
  # embcached's readiness notification to systemd (sd_notify; core/notify.c)
  libsystemd-dev
  python3 python3-numpy python3-pytest python3-torch
  # ec_search's matrix products (OpenBLAS, linked by name) and the FAISS
  # reference of its benchmark (bench/searchbench.py)
  libopenblas-dev python3-faiss
  # embcache-bench's baselines and plots (its smoke test runs them too)
  redis-server memcached libhiredis-dev libmemcached-dev gnuplot-nox fio
  # the remote tier's Redis Cluster client (core/rcluster*.c: libhiredis-dev) and
  # its test cluster (tests/redis/cluster.sh: redis-server, redis-cli)
  redis-tools
  # promtool, for the alert rules' tests, and prometheus itself, which test_prometheus
  # runs on a loopback port of its own (deploy/prometheus; the package's prometheus
  # service is not needed: stop it where systemd started it)
  prometheus
  # `embcache top`'s interactive test runs it in a detached tmux session (test_top)
  tmux
  # service_systemd boots a systemd container to follow the README's service steps
  systemd-container
)

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E "$0" "$@"; fi
  echo "install-deps.sh: run as root (or install sudo): apt-get needs it" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps.sh: all ${#PKGS[@]} packages already installed"
  exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
