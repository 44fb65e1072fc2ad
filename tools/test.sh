#!/usr/bin/env bash
# The test command: install dependencies, build with warnings as errors,
# and run the whole test suite with ctest (unit, shm, integration).
#   tools/test.sh            the normal build (build-test/)
#   tools/test.sh --asan     the same under AddressSanitizer + UBSan (build-asan/)
# Extra arguments after the mode go to ctest (e.g. -L unit, -R test_index).
# The suite must leave nothing behind: no embcache segment in /dev/shm and no
# embcached process that it started; this script fails when it does.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build-test
flags=(-DEMBCACHE_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEMBCACHE_FAULT_INJECTION=ON)
if [ "${1:-}" = "--asan" ]; then
  shift
  dir=build-asan
  flags+=(-DEMBCACHE_SANITIZE=ON)
  # protect_shadow_gap=0: the CUDA driver maps memory where ASan's shadow
  # gap would be; harmless without a GPU.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:protect_shadow_gap=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

tools/install-deps.sh
cmake -S . -B "$dir" "${flags[@]}"
cmake --build "$dir" -j"$(nproc)"
leftovers() {
  # embcache segments in /dev/shm; embcached processes running from this build
  ls /dev/shm 2>/dev/null | grep '^embcache-' || true
  pgrep -f "^$PWD/$dir/.*embcached" 2>/dev/null | sed 's/^/embcached pid /' || true
}
before=$(leftovers)
rc=0
(cd "$dir" && ctest --output-on-failure --timeout 600 -j"$(nproc)" "$@") || rc=$?
sleep 1
after=$(leftovers)
new=$(comm -13 <(printf '%s\n' "$before" | sort) <(printf '%s\n' "$after" | sort) | grep . || true)
if [ -n "$new" ]; then
  echo "tools/test.sh: the test suite left behind:" >&2
  printf '%s\n' "$new" | sed 's/^/  /' >&2
  rc=${rc/#0/1}
fi
exit "$rc"
