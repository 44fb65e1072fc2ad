#!/usr/bin/env bash
# gpu-check.sh - the GPU checks of embcache in one command, on a machine with an NVIDIA GPU
# (written for the lent H200: CUDA 13, PyTorch, 16 cores, no package registry).
#
# NOT YET RUN ON A GPU. Written and exercised on a machine without one: the .deb fetching and
# unpacking, the CUDA build, the ctest plumbing (EMBCACHE_REQUIRE_GPU=1 failing every GPU
# test), and the cross-process checks against emulated GPUs (EMU=1). Expect to fix it on
# first contact, and record what it found (bench/results, README).
#
#   tools/gpu-check.sh OUTDIR               every step, about 8 minutes; results in OUTDIR
#   tools/gpu-check.sh --fetch-debs DIR     here (a Debian 12 host with apt): download the
#                                           .debs to carry into DIR (default .gpu-carry/debs)
#   STEPS="deps build ctest" tools/gpu-check.sh OUTDIR   some steps only (deps and build
#                                           are needed by the others in a fresh machine)
#   EMU=1 tools/gpu-check.sh OUTDIR         the plumbing without a GPU (see EMU below)
#
# Steps (each with its own time limit, all within BUDGET_S, default 540 s):
#   machine  nvidia-smi: GPU, driver, compute mode, PCIe link; no GPU is a failure (not EMU)
#   deps     the system's pkg-config modules, else the carried .debs unpacked (dpkg -x, or ar
#            and tar) into a private prefix: nothing is installed on the machine
#   build    cmake -DEMBCACHE_CUDA=ON for this GPU's architecture, Release, with the Python
#            whose torch sees the GPU (EMBCACHE_PYTHON), -j$JOBS
#   probe    tests/gpu/gpu-probe.cu: device attributes (read-only host registration, compute
#            mode, memory pools), a shm segment registered by three processes at once.
#            Findings, not verdicts (fails only when it cannot run or crashes). The slab's
#            sharing (cuMemCreate, a file descriptor) is checked across processes by
#            test_devtier_cuda, xproc and kill
#   ctest    EMBCACHE_REQUIRE_GPU=1 ctest -L cuda: test_backend_cuda, test_gather_kernel,
#            test_devtier_cuda, python_gpu, bench_gpu_smoke; a skip is a failure here
#   xproc    tests/gpu/gpu-xproc.py rows: 3 processes x f32, f16, bf16 outputs x (mapped host
#            tier, device tier), every row compared bit for bit; stream-ordering probes
#   kill     tests/gpu/gpu-xproc.py kill: the daemon's worker SIGKILLed with a device-tier
#            gather queued: rows intact, client's CUDA context alive, service restored
#   bench    bench/run-gpu.sh reduced (f32; dims 64, 256, 1024; batches 1..65536; 0.5 s each)
#
# OUTDIR (default bench/results/<date>-<host>-gpu-check): summary.txt (one verdict per step),
# check.log (everything), build.log, daemon logs and the bench's <date>-<host>-gpu.{txt,json}.
# PACK=DIR: at the end, DIR gets summary-<name>.txt and <name>.tgz (all of OUTDIR; <name> is
# OUTDIR's last component): two files, within what the device tool brings back from $OUT.
# Exit 0 when no step failed.
#
# What the machine needs, or the script says what is missing:
#   - CUDA toolkit (nvcc, headers, static cudart) under CUDA_HOME or /usr/local/cuda*;
#     cmake >= 3.20, gcc, make; python3 with numpy, pytest and torch (CUDA) for python_gpu,
#     xproc and kill (PY=... to choose; default: the first on PATH whose torch sees a GPU)
#   - the build dependencies: where pkg-config lacks them, Debian 12 .debs in $DEBS (default
#     <repo>/.gpu-carry/debs; ~10 MB): the ones `--fetch-debs` downloads (DEB_PKGS below).
#     Debian 12's libraries need glibc >= 2.36 (Ubuntu 24.04 has 2.39). With the device tool:
#     here, `echo /.gpu-carry/ >> .git/info/exclude; tools/gpu-check.sh --fetch-debs`, then
#     run with carry [".gpu-carry"] in two calls on the same warm machine (the build and the
#     unpacked .debs stay there), so that a failure of the first leaves time to fix and rerun:
#       STEPS="machine deps build probe ctest" BUDGET_S=330 PACK=$OUT tools/gpu-check.sh /tmp/gc1
#       STEPS="xproc kill bench" BUDGET_S=300 PACK=$OUT tools/gpu-check.sh /tmp/gc2
#   - /dev/shm with >= 3 GiB free (a container's default is 64 MiB)
#
# EMU=1: no GPU needed. deps and build as above (CUDA when the toolkit is there); ctest runs
# the emulated device tier's tests (-L devtier) and then checks that EMBCACHE_REQUIRE_GPU=1
# makes every test of -L cuda fail; xproc and kill run against a daemon with emulated GPUs,
# gathering to host memory; probe and bench are skipped. DEPS=carried uses the carried .debs
# even where the system has the packages (to test the unpacking).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DEBS=${DEBS:-$REPO/.gpu-carry/debs}
# Build dependencies (and, for machines without them, pkg-config itself) as Debian 12
# packages: the -dev packages for headers and .pc files, the libraries they need at run time.
DEB_PKGS="libsqlite3-dev libsqlite3-0 libxxhash-dev libxxhash0 liburing-dev liburing2
  libhwloc-dev libhwloc15 libcmocka-dev libcmocka0 libdlpack-dev
  libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
  libmicrohttpd-dev libmicrohttpd12 libsystemd-dev libsystemd0 libhiredis-dev libhiredis0.14
  pkgconf pkgconf-bin libpkgconf3"
# Their shared libraries, linked where the system has no copy of its own.
RT_SONAMES="libsqlite3.so.0 libxxhash.so.0 liburing.so.2 libhwloc.so.15 libcmocka.so.0
  libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libpkgconf.so.3 libmicrohttpd.so.12
  libsystemd.so.0 libhiredis.so.0.14"

if [ "${1:-}" = "--fetch-debs" ]; then
    dir=${2:-$DEBS}
    mkdir -p "$dir" && cd "$dir" || exit 1
    # shellcheck disable=SC2086 # a list of package names
    apt-get download $DEB_PKGS || { echo "gpu-check: apt-get download failed" >&2; exit 1; }
    ls -l ./*.deb
    du -sh .
    echo "carry $(realpath --relative-to="$REPO" "$dir" 2>/dev/null || echo "$dir") (an ignored" \
         "path: echo /.gpu-carry/ >> $REPO/.git/info/exclude)"
    exit 0
fi
case "${1:-}" in -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;; esac

DAY=$(date +%F)
OUTDIR=${1:-$REPO/bench/results/$DAY-$(hostname -s)-gpu-check}
PACK=${PACK:-}
EMU=${EMU:-0}
BUILD=${BUILD:-$REPO/build-gpu}
JOBS=${JOBS:-$(nproc)}
STEPS=${STEPS:-machine deps build probe ctest xproc kill bench}
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-540} ))
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
: > "$OUTDIR/summary.txt"
exec 3>&1 4>&2
exec > >(tee -a "$OUTDIR/check.log") 2>&1
TEE_PID=$!
export REPO BUILD OUTDIR EMU JOBS DAY

say() { printf '\n== %s\n' "$*"; }
verdict() { printf '%-7s %s\n' "$1" "$2" | tee -a "$OUTDIR/summary.txt"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
# run STEP LIMIT: step_STEP under its own limit, never past the deadline. 77 from a step is
# a skip only in EMU mode: on a GPU machine every check must run.
run() {
    local step=$1 lim=$2 left=$(( DEADLINE - $(date +%s) )) rc
    (( left < lim )) && lim=$left
    if (( lim < 15 )); then verdict SKIP "$step (out of time)"; return; fi
    say "$step (limit ${lim}s)"
    timeout -k 10 "$lim" bash -c "step_$step"
    rc=$?
    case $rc in
    0) verdict PASS "$step" ;;
    77) if [ "$EMU" = 1 ]; then verdict SKIP "$step (emulated GPUs)"
        else verdict FAIL "$step (skipped on a GPU machine)"; fi ;;
    124|137) verdict TIMEOUT "$step (after ${lim}s)" ;;
    *) verdict FAIL "$step (exit $rc)" ;;
    esac
}

[ -f "$REPO/cuda/gather.cu" ] || { echo "gpu-check: $REPO is not an embcache checkout"; exit 2; }

# ---- the machine, the toolkit, the interpreter (also what every step needs) ----
nvcc_path=$(command -v nvcc 2>/dev/null || ls -d /usr/local/cuda*/bin/nvcc 2>/dev/null | sort -V | tail -1)
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "${nvcc_path:-/usr/local/cuda/bin/nvcc}")")}
export PATH="$CUDA_HOME/bin:$PATH"
PY=${PY:-}
if [ -z "$PY" ]; then
    for p in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3 /opt/conda/bin/python; do
        ok='import sys, numpy, pytest, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
        [ "$EMU" = 1 ] && ok='import numpy, pytest, torch'
        if "$p" -c "$ok" >/dev/null 2>&1; then PY=$(command -v "$p"); break; fi
    done
fi
export PY
CC_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
export CC_ARCH=${CC_ARCH:-90}

step_machine() {
    echo "date $(date -Iseconds); host $(hostname); $(uname -srm)"
    echo "git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)" \
         "$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo '(working tree modified)')"
    echo "$(ldd --version 2>/dev/null | head -1); cores $(nproc)"
    echo "/dev/shm: $(df -Pk /dev/shm | awk 'NR==2 {printf "%.1f GiB free", $4/1048576}')"
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo "none under $CUDA_HOME")"
    echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo none)"
    if [ -n "$PY" ]; then
        "$PY" -c 'import sys, torch; print("python", sys.executable, "torch", torch.__version__,
                  "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())'
    else
        echo "WARNING: no python with numpy, pytest and torch (CUDA): python_gpu, xproc, kill fail"
    fi
    if [ "$EMU" = 1 ]; then echo "EMU=1: emulated GPUs"; return 0; fi
    nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total,memory.used,compute_mode,pcie.link.gen.current,pcie.link.width.current,pcie.link.gen.max,pcie.link.width.max \
        --format=csv || { echo "no NVIDIA GPU here (nvidia-smi fails)"; return 1; }
    nvidia-smi -q 2>/dev/null | grep -iE "MIG Mode|Current *: |Persistence" | head -4
    nvidia-smi -L | grep -q GPU || { echo "nvidia-smi lists no GPU"; return 1; }
}

# ---- deps: the system's, else the carried .debs in a private prefix ----
PREFIX=/tmp/ec-gpu-deps
use_prefix() {
    local L=$PREFIX/usr/lib/x86_64-linux-gnu
    export PKG_CONFIG_SYSROOT_DIR=$PREFIX
    export PKG_CONFIG_LIBDIR=$L/pkgconfig:$L/openblas-pthread/pkgconfig:$PREFIX/usr/share/pkgconfig
    export CMAKE_PREFIX_PATH=$PREFIX/usr
    export PATH=$PREFIX/usr/bin:$PATH
    # Only the libraries the system lacks go on the loader's path (a Debian libgfortran must
    # not displace a newer one of the system's in torch's process).
    export LD_LIBRARY_PATH=$PREFIX/rt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}
missing_modules() {
    local m miss=""
    command -v pkg-config >/dev/null || { echo "pkg-config"; return; }
    for m in sqlite3 libxxhash liburing hwloc openblas cmocka libmicrohttpd libsystemd hiredis; do
        pkg-config --exists "$m" 2>/dev/null || miss+=" $m"
    done
    find /usr/include "${CMAKE_PREFIX_PATH:-/nonexistent}/include" -maxdepth 2 -name dlpack.h \
        2>/dev/null | grep -q . || miss+=" dlpack"
    echo "$miss"
}
step_deps() {
    local miss d s
    miss=$(missing_modules)
    if [ -z "$miss" ] && [ "${DEPS:-}" != carried ]; then echo "the system has every module"; return 0; fi
    echo "missing:${miss:- (none; DEPS=carried)}"
    ls "$DEBS"/*.deb >/dev/null 2>&1 ||
        { echo "no .debs in $DEBS: run tools/gpu-check.sh --fetch-debs where apt works, carry them"; return 1; }
    rm -rf "$PREFIX" && mkdir -p "$PREFIX/rt"
    for d in "$DEBS"/*.deb; do
        if command -v dpkg >/dev/null; then dpkg -x "$d" "$PREFIX" || return 1
        else (t=$(mktemp -d) && cd "$t" && ar x "$d" && tar -xf data.tar.* -C "$PREFIX"; rc=$?; rm -rf "$t"; exit $rc) || return 1; fi
    done
    for s in $RT_SONAMES; do
        ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$s " && continue
        f=$(find "$PREFIX/usr/lib" "$PREFIX/lib" -name "$s" 2>/dev/null | head -1)
        [ -n "$f" ] && ln -sf "$f" "$PREFIX/rt/$s" && echo "from the .debs: $s"
    done
    # libmicrohttpd.pc names gnutls in Requires.private, which pkg-config resolves even
    # for a shared build, and the prefix's search path hides the system's: a stub stands
    # in (the library links against the system's libgnutls.so.30 at run time).
    mkdir -p "$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig"
    printf 'Name: gnutls\nDescription: stub for libmicrohttpd.pc\nVersion: 3.7.9\nLibs:\nCflags:\n' \
        > "$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig/gnutls.pc"
    use_prefix
    miss=$(missing_modules)
    [ -z "$miss" ] || { echo "still missing after unpacking $DEBS:$miss"; return 1; }
    echo "$PREFIX" > "$OUTDIR/.deps-prefix"
    pkg-config --modversion sqlite3 libxxhash liburing hwloc openblas cmocka libmicrohttpd \
        libsystemd hiredis | tr '\n' ' '; echo
}

step_build() {
    local cuda=ON
    [ "$EMU" = 1 ] && cuda=AUTO
    cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEMBCACHE_CUDA=$cuda \
          -DEMBCACHE_CUDA_ARCHS="$CC_ARCH" -DCUDAToolkit_ROOT="$CUDA_HOME" \
          ${PY:+-DEMBCACHE_PYTHON="$PY"} ${CMAKE_PREFIX_PATH:+-DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH"} \
          >"$OUTDIR/build.log" 2>&1 || { tail -30 "$OUTDIR/build.log"; return 1; }
    grep -E "embcache: CUDA backend" "$OUTDIR/build.log"
    if [ "$EMU" != 1 ] && ! grep -q "CUDA backend ON" "$OUTDIR/build.log"; then
        echo "the build has no CUDA backend: see build.log"; return 1
    fi
    cmake --build "$BUILD" -j "$JOBS" >>"$OUTDIR/build.log" 2>&1 ||
        { grep -E "error|Error" "$OUTDIR/build.log" | head -30; return 1; }
    echo "build warnings: $(grep -c 'warning:' "$OUTDIR/build.log")"
    ldd "$BUILD/libembcache.so" | grep -E "not found|openblas|cudart" || true
}

step_probe() {
    [ "$EMU" = 1 ] && return 77
    local bin=/tmp/ec-gpu-probe g rc=0
    nvcc -O2 -arch="sm_$CC_ARCH" -o "$bin" "$REPO/tests/gpu/gpu-probe.cu" || return 1
    g=$(df -Pk /dev/shm | awk 'NR==2 {g = int($4 / 1048576 / 3); print g > 4 ? 4 : (g < 1 ? 1 : g)}')
    "$bin" attrs || rc=1
    "$bin" shm "$g" || rc=1
    return $rc
}

step_ctest() {
    cd "$BUILD" || return 1
    if [ "$EMU" = 1 ]; then
        ctest -L devtier --output-on-failure --timeout 240 -j2 || return 1
        # The rule every GPU test follows: under EMBCACHE_REQUIRE_GPU=1 none may skip.
        EMBCACHE_REQUIRE_GPU=1 ctest -L cuda --timeout 120 -j2 > /tmp/ec-gpu-require.txt 2>&1
        grep -E "Test +#|tests passed" /tmp/ec-gpu-require.txt
        if grep -qE "Passed|Skipped" /tmp/ec-gpu-require.txt; then
            echo "EMBCACHE_REQUIRE_GPU=1 without a GPU: a GPU test passed or skipped"; return 1
        fi
        echo "EMBCACHE_REQUIRE_GPU=1 without a GPU: every GPU test failed, as it must"
        return 0
    fi
    EMBCACHE_REQUIRE_GPU=1 ctest -L cuda --output-on-failure --timeout 200 -j1
}

xproc() {
    [ -n "$PY" ] || { echo "no python with numpy, pytest and torch"; return 1; }
    EC_BUILD="$BUILD" EC_TMP=/tmp/ec-xproc PYTHONPATH="$BUILD/python${PYTHONPATH:+:$PYTHONPATH}" \
        "$PY" "$REPO/tests/gpu/gpu-xproc.py" "$1" $([ "$EMU" = 1 ] && echo --emu)
    local rc=$?
    cp /tmp/ec-xproc/embcached.log "$OUTDIR/xproc-$1-embcached.log" 2>/dev/null
    return $rc
}
step_xproc() { xproc rows; }
step_kill() { xproc kill; }

step_bench() {   # bench/run-gpu.sh, reduced: 3 f32 tables x 4 batch sizes x 0.5 s
    [ "$EMU" = 1 ] && return 77
    local rc
    BUILD="$BUILD" SECONDS_PER=0.5 QUIET_WAIT=0 GPU_TABLE_MIB=256 CUDA_ARCHS="$CC_ARCH" \
        PYTHON="${PY:-python3}" \
        BENCH_ARGS="--gpu-dims 64,256,1024 --gpu-batch 1,256,4096,65536 --gpu-dtypes f32" \
        bash "$REPO/bench/run-gpu.sh"
    rc=$?
    cp "$REPO"/bench/results/"$DAY-$(hostname -s)"-gpu.{txt,json} "$OUTDIR/" 2>/dev/null
    return $rc
}
export -f step_machine step_deps step_build step_probe step_ctest step_xproc step_kill \
          step_bench xproc use_prefix missing_modules
export PREFIX DEBS RT_SONAMES CC_ARCH

want machine && run machine 30
# deps runs in a child too, but its environment must reach the later steps
if want deps; then
    run deps 60
    [ -s "$OUTDIR/.deps-prefix" ] && use_prefix
elif [ -d "$PREFIX/rt" ]; then
    use_prefix
fi
want build && run build 240
want probe && run probe 60
want ctest && run ctest 150
want xproc && run xproc 100
want kill && run kill 45
want bench && run bench 150

say summary
cat "$OUTDIR/summary.txt"
grep -hE "RESULT|RACE|POISONED|ANOTHER ALLOCATION|WRONG|BROKEN|CUDA ERROR|tests passed|^goal" \
    "$OUTDIR/check.log" | grep -v "^grep" | head -30
! grep -qE "^(FAIL|TIMEOUT)" "$OUTDIR/summary.txt"
status=$?
# The log's tee must have written everything before it is packed.
exec 1>&3 2>&4 3>&- 4>&-
wait "$TEE_PID" 2>/dev/null || sleep 1
if [ -n "$PACK" ]; then
    name=$(basename "$OUTDIR")
    mkdir -p "$PACK" && cp "$OUTDIR/summary.txt" "$PACK/summary-$name.txt" &&
        tar -C "$(dirname "$OUTDIR")" -czf "$PACK/$name.tgz" "$name" &&
        echo "packed: $PACK/summary-$name.txt, $PACK/$name.tgz"
fi
exit $status
