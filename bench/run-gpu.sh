#!/usr/bin/env bash
# run-gpu.sh - embcache-bench's gpu scenario, recorded.
#
# Builds embcache-bench and embcached with CUDA (Release, in $BUILD, default
# build-gpu) for the GPU of this machine, picks a Python whose torch sees
# the GPU for the PyTorch baseline, waits (up to QUIET_WAIT seconds) for the
# machine to be idle, and runs the gpu scenario: f32 and f16 tables of
# GPU_TABLE_MIB MiB, rows 64, 256, 1024 and 4096 wide, batches of 1 to 65536
# rows (powers of 4), SECONDS_PER seconds per configuration:
#   (a) ec_tensor_gather_ex into GPU memory from the device tier,
#   (b) the same with the device tier off (rows read over PCIe from mapped
#       host memory), next to the measured host-to-device bandwidth,
#   (c) PyTorch table[ids].cuda() from a host table, (d) index_select on a
#       GPU-resident table (bench/gpu_torch_baseline.py).
# Writes
#
#   bench/results/<YYYY-MM-DD>-<hostname>-gpu.txt    machine and GPU header, lines, table, goals
#   bench/results/<YYYY-MM-DD>-<hostname>-gpu.json   the results as a JSON array
#
# Exits 77 when this machine has no GPU. Environment: BUILD, SECONDS_PER
# (default 1), QUIET_WAIT (default 60), PYTHON (the interpreter for the
# PyTorch baseline; default: the first of python3 on PATH and
# /usr/bin/python3 whose torch has CUDA), CUDA_ARCHS (default: this GPU's
# compute capability), GPU_TABLE_MIB (default 256), BENCH_ARGS (extra
# arguments, e.g. "--gpu-dims 128 --gpu-device 1").
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
SECONDS_PER=${SECONDS_PER:-1}
QUIET_WAIT=${QUIET_WAIT:-60}
GPU_TABLE_MIB=${GPU_TABLE_MIB:-256}
out="bench/results/$(date +%F)-$(hostname -s)-gpu"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "run-gpu: no NVIDIA GPU here (nvidia-smi is missing or sees none): skipped" >&2
    exit 77
fi
if [ -z "${CUDA_ARCHS:-}" ]; then
    CUDA_ARCHS=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
                 head -1 | tr -d ' .') || true
fi
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEMBCACHE_CUDA=ON \
      ${CUDA_ARCHS:+-DEMBCACHE_CUDA_ARCHS=$CUDA_ARCHS} >/dev/null
cmake --build "$BUILD" --target embcache-bench embcached -j "$(nproc)" >/dev/null
bin="$BUILD/bench/embcache-bench"

py=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
    if "$p" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >/dev/null 2>&1; then
        py=$p
        break
    fi
done
if [ -z "$py" ]; then
    py=${PYTHON:-python3}
    echo "run-gpu: no Python here has torch with CUDA: the PyTorch baseline (c)/(d) is" \
         "skipped (set PYTHON)" >&2
fi

. bench/quiet.sh
wait_quiet "$QUIET_WAIT"

mkdir -p "$(dirname "$out")"
args=(--scenario gpu --seconds "$SECONDS_PER" --gpu-table-mib "$GPU_TABLE_MIB"
      --gpu-python "$py" --json="$out.json")
{
    echo "# embcache-bench gpu scenario: $(date -Iseconds)"
    echo "# command: $bin ${args[*]} ${BENCH_ARGS:-}"
    echo "# git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git diff --quiet HEAD -- client core cuda shm bench ':!bench/results' 2>/dev/null || echo '(working tree modified)')"
    echo "# host: $(uname -a)"
    echo "# cpu: $(nproc) online, $(lscpu | sed -n 's/^Model name: *//p')"
    echo "# memory: $(free -m | awk '/^Mem:/ { print $2 " MiB total, " $7 " MiB available" }')"
    nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total,pcie.link.gen.current,pcie.link.width.current,pcie.link.gen.max,pcie.link.width.max \
        --format=csv 2>/dev/null | sed 's/^/# gpu: /'
    echo "# nvcc: $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -1 || echo '?'), architectures ${CUDA_ARCHS:-default}"
    echo "# python: $py ($("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo 'no torch'))"
    echo "# load before: $(cat /proc/loadavg)"
} | tee "$out.txt"

set +e
# shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
"$bin" "${args[@]}" ${BENCH_ARGS:-} 2>&1 | tee -a "$out.txt"
status=${PIPESTATUS[0]}
set -e

echo "# load after: $(cat /proc/loadavg)" | tee -a "$out.txt"
echo "wrote $out.{txt,json}" >&2
exit "$status"
