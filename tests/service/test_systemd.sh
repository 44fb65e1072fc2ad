#!/usr/bin/env bash
# test_systemd.sh - ctest service_systemd: the README's "Running it as a service" steps
# under a real systemd, as PID 1 of a container (systemd-nspawn) booted from this
# machine's own root file system through an overlay whose writes are thrown away: the
# machine running the test is not changed, and it need not run systemd itself.
#
# Inside, a oneshot unit (the container's only boot target) runs what a new user runs:
# cmake --install BUILD --prefix /usr, systemd-sysusers, systemd-tmpfiles --create,
# systemctl daemon-reload, systemctl enable --now embcached; then checks that the unit
# is active (Type=notify: systemd says active only after READY=1) with its status line,
# that `embcache stats` works as root and as an unprivileged user (through the
# service's socket, the client's fallback), that /metrics and /healthz answer on
# 127.0.0.1:9464 (the example configuration's), that `systemctl reload` has applied
# when it returns (config_reloads 1, config_last_reload_ok 1) and fails on an invalid
# file while the service serves on, and that `systemctl stop` ends it with
# status 0 and Result=success. Each check writes a line to a file the host reads.
#
# Usage: test_systemd.sh BUILD_DIR (a complete build; cmake --install builds nothing)
# Exit: 0 passed, 1 failed (saying which check), 77 when it cannot run here: not root,
# no systemd-nspawn (Debian: systemd-container), no systemd, or a trivial container
# does not start (no namespaces in this environment): each proved before skipping.
set -uo pipefail

build=$(cd "${1:?usage: test_systemd.sh BUILD_DIR}" && pwd) || exit 1
# The source tree too: the install runs deploy/install.cmake from it.
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
[ -d "$src" ] || { echo "test_systemd: $build/CMakeCache.txt names no source directory" >&2; exit 1; }
skip() { echo "test_systemd: skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "not root (systemd-nspawn needs it)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (apt-get install systemd-container)"
[ -x /lib/systemd/systemd ] || skip "no systemd to boot (/lib/systemd/systemd)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ec-systemd.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dir/etc" "$tmp/dir/usr/lib" "$tmp/upper" "$tmp/out"
cp /etc/os-release "$tmp/dir/etc/"
cp /usr/lib/os-release "$tmp/dir/usr/lib/" 2>/dev/null

# The container: an empty directory that nspawn accepts as an OS tree, with the host's
# root overlaid on it (writes go to $tmp/upper), the build and its source bound at
# their own paths (cmake_install.cmake names them; install.cmake stages files in the
# build), loopback only.
systemd-nspawn --quiet --keep-unit --register=no --private-network -D "$tmp/dir" \
    --overlay="/:$tmp/upper:/" /bin/true >"$tmp/probe.log" 2>&1 ||
    skip "a trivial container does not start here: $(tail -1 "$tmp/probe.log")"

cat >"$tmp/out/ectest.service" <<'EOF'
[Unit]
Description=embcache: the README's service steps
After=basic.target
[Service]
Type=oneshot
ExecStart=/bin/bash /out/steps.sh
EOF
# A sanitized build: LeakSanitizer stops the world with ptrace, which the unit's
# system-call filter (@system-service) forbids; the other checks stay on
# (EC_TEST_SANITIZE, set by tests/CMakeLists.txt for such builds).
dropin=:
if [ -n "${EC_TEST_SANITIZE:-}" ]; then
    dropin="mkdir -p /etc/systemd/system/embcached.service.d && printf '[Service]\\nEnvironment=ASAN_OPTIONS=detect_leaks=0:abort_on_error=1\\n' > /etc/systemd/system/embcached.service.d/asan.conf"
fi
cat >"$tmp/out/steps.sh" <<EOF
#!/bin/bash
exec >/out/steps.log 2>&1
set -x
ok() { echo "\$1" >> /out/results; }
$dropin
cmake --install $build --prefix /usr >/dev/null && ok install
systemd-sysusers && id embcache && ok sysusers
systemd-tmpfiles --create && [ -d /var/lib/embcache ] && [ -f /etc/embcache/embcached.conf ] && ok tmpfiles
systemctl daemon-reload && systemctl enable --now embcached && ok started
for i in \$(seq 50); do systemctl is-active --quiet embcached && break; sleep 0.2; done
systemctl is-active embcached && ok active && touch /out/was-active
systemctl show embcached -p StatusText | grep -q 'StatusText=serving' && ok status
embcache stats | grep -q '^segment_bytes' && ok stats-root
runuser -u nobody -- env -u XDG_RUNTIME_DIR -u EMBCACHE_SOCKET embcache stats | grep -q '^segment_bytes' && ok stats-user
python3 -c "import urllib.request as u; b=u.urlopen('http://127.0.0.1:9464/metrics').read().decode(); assert 'embcache_segment_bytes ' in b" && ok metrics
python3 -c "import urllib.request as u; assert u.urlopen('http://127.0.0.1:9464/healthz').status == 200" && ok healthz
# Applied when systemctl returns (ExecReload is \`embcache reload\`): no waiting here.
systemctl reload embcached &&
    embcache stats | grep -q '^config_reloads *1\$' && embcache stats | grep -q '^config_last_reload_ok *1\$' && ok reload
# An invalid file: systemctl reload fails, the service serves on, nothing changed.
cp /etc/embcache/embcached.conf /out/conf.bak
echo 'budget = 12X' >> /etc/embcache/embcached.conf
! systemctl reload embcached && systemctl is-active --quiet embcached &&
    embcache stats | grep -q '^config_last_reload_ok *0\$' && ok reload-refused
cp /out/conf.bak /etc/embcache/embcached.conf
systemctl stop embcached
[ -f /out/was-active ] && ! systemctl is-active --quiet embcached &&
    systemctl show embcached -p Result | grep -q 'Result=success' &&
    systemctl show embcached -p ExecMainStatus | grep -q 'ExecMainStatus=0' && ok stopped
journalctl -u embcached --no-pager | tail -20
echo done >> /out/results
systemctl poweroff --no-block || kill -s SIGRTMIN+4 1
EOF
chmod +x "$tmp/out/steps.sh"
# systemd.unit= makes the oneshot the boot target; it powers the container off at its
# end (or the timeout ends it).
timeout 240 systemd-nspawn --quiet --keep-unit --register=no --private-network \
    -D "$tmp/dir" --overlay="/:$tmp/upper:/" --bind="$build:$build" --bind-ro="$src:$src" \
    --bind="$tmp/out:/out" \
    --bind-ro="$tmp/out/ectest.service:/etc/systemd/system/ectest.service" \
    -b systemd.unit=ectest.service >"$tmp/boot.log" 2>&1
rc=$?
fail=0
for check in install sysusers tmpfiles started active status stats-root stats-user metrics \
             healthz reload reload-refused stopped done; do
    if grep -qx "$check" "$tmp/out/results" 2>/dev/null; then
        echo "test_systemd: ok: $check"
    else
        echo "test_systemd: FAIL: $check" >&2
        fail=1
    fi
done
if [ "$fail" -ne 0 ]; then
    echo "--- the steps' log" >&2
    tail -60 "$tmp/out/steps.log" >&2 2>/dev/null
    echo "--- the container (nspawn exit $rc)" >&2
    tail -20 "$tmp/boot.log" >&2
    exit 1
fi
echo "test_systemd: the README's service steps work under systemd $(systemctl --version | head -1 | cut -d' ' -f2)"
