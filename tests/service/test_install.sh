#!/usr/bin/env bash
# test_install.sh - ctest service_install: what `cmake --install BUILD --prefix /usr`
# puts where, and that the installed pieces work together (README "Running it as a
# service"). Configures nothing: it installs the build ctest runs in into a temporary
# DESTDIR and checks
#   a. every file a Debian user expects, at its path: binaries, libembcache and its
#      links, every public header of include/, embcache.pc, the unit, the tmpfiles.d
#      and sysusers.d entries, /etc/embcache/embcached.conf (not /usr/etc), the
#      Python package where /usr/bin/python3 looks; the unit and .pc naming /usr and
#      /etc; a second install keeping an edited configuration;
#   b. systemd-analyze verify on the unit (ExecStart and ExecReload pointed at the
#      staged binaries, the one thing it needs that a staged install lacks), and the README's
#      `systemd-sysusers embcache.conf` and `systemd-tmpfiles --create embcache.conf`
#      run with --root of the staged install, making the user and the state directory
#      (part b skipped where systemd's tools are missing);
#   c. a C program built with `pkg-config --cflags --libs embcache` of the staged
#      install, run against the staged embcached (and the staged CLI, and the staged
#      Python package when numpy is there), with the staged libembcache.
# Usage: test_install.sh BUILD_DIR SOURCE_DIR [PYTHON] (the build must be complete:
# cmake --install builds nothing)
# Exit: 0 passed, 1 failed (saying what), 77 when cmake, pkg-config or a C compiler
# is missing. Every daemon started is stopped by its pid; the temporary files go.
set -uo pipefail

build=${1:?usage: test_install.sh BUILD_DIR SOURCE_DIR [PYTHON]}
src=${2:?source dir}
py=${3:-/usr/bin/python3}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ec-install.XXXXXX") || exit 1
root=$tmp/root
daemon=

cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        wait "$daemon" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "service_install: FAIL: $*" >&2
    exit 1
}
ok() { echo "  ok: $*"; }

for tool in cmake pkg-config cc; do
    command -v "$tool" >/dev/null || { echo "service_install: no $tool on PATH: skipped"; exit 77; }
done

cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
version=$(cache CMAKE_PROJECT_VERSION)
libdir=$(cache CMAKE_INSTALL_LIBDIR)
pydir=$(cache EMBCACHE_PYTHON_INSTALL_DIR)
[ -n "$version" ] && [ -n "$libdir" ] && [ -n "$pydir" ] ||
    fail "$build/CMakeCache.txt lacks CMAKE_PROJECT_VERSION, CMAKE_INSTALL_LIBDIR or EMBCACHE_PYTHON_INSTALL_DIR: is it a configured embcache build?"
case $libdir in /*) ;; *) libdir=/usr/$libdir ;; esac
case $pydir in /*) ;; *) pydir=/usr/$pydir ;; esac

# --- a. the staged install ---------------------------------------------------------
echo "a. DESTDIR=$root cmake --install $build --prefix /usr"
DESTDIR=$root cmake --install "$build" --prefix /usr >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "cmake --install failed (its output is above)"; }

expect_file() { [ -f "$root$1" ] || fail "cmake --install put no $1 (under DESTDIR $root)"; }
for b in embcached embcache embcache-demo; do
    [ -x "$root/usr/bin/$b" ] || fail "no executable /usr/bin/$b in the staged install"
done
expect_file "$libdir/libembcache.so.$version"
[ -L "$root$libdir/libembcache.so" ] && [ -e "$root$libdir/libembcache.so" ] ||
    fail "no $libdir/libembcache.so link (what -lembcache finds)"
soname=$(objdump -p "$root$libdir/libembcache.so.$version" 2>/dev/null | awk '$1 == "SONAME" {print $2}')
[ -n "$soname" ] && [ -e "$root$libdir/$soname" ] || fail "no link $libdir/$soname for the SONAME"
for h in "$src"/include/*.h; do
    expect_file "/usr/include/$(basename "$h")"
done
expect_file "$libdir/pkgconfig/embcache.pc"
expect_file /usr/lib/systemd/system/embcached.service
expect_file /usr/lib/tmpfiles.d/embcache.conf
expect_file /usr/lib/sysusers.d/embcache.conf
expect_file /etc/embcache/embcached.conf
[ ! -e "$root/usr/etc" ] || fail "the install made /usr/etc: the configuration belongs in /etc for prefix /usr"
expect_file "$pydir/embcache/__init__.py"
expect_file "$pydir/embcache/_install.py"
ok "every expected file is there"

unit=$root/usr/lib/systemd/system/embcached.service
grep -qx 'ExecStart=/usr/bin/embcached --config /etc/embcache/embcached.conf' "$unit" ||
    fail "the installed unit's ExecStart does not run /usr/bin/embcached --config /etc/embcache/embcached.conf: $(grep ExecStart= "$unit")"
for k in 'Type=notify' 'NotifyAccess=main' 'User=embcache' 'RuntimeDirectory=embcache' \
         'StateDirectory=embcache' 'ProtectSystem=strict' 'NoNewPrivileges=yes' 'PrivateTmp=yes'; do
    grep -qx "$k" "$unit" || fail "the installed unit lacks $k"
done
grep -q '^d /etc/embcache ' "$root/usr/lib/tmpfiles.d/embcache.conf" ||
    fail "the tmpfiles entry does not name /etc/embcache"
grep -qx 'prefix=/usr' "$root$libdir/pkgconfig/embcache.pc" || fail "embcache.pc does not say prefix=/usr"
grep -qx "Version: $version" "$root$libdir/pkgconfig/embcache.pc" ||
    fail "embcache.pc's Version is not the project's $version"
grep -qx "LIBRARY = '$libdir/$soname'" "$root$pydir/embcache/_install.py" ||
    fail "the Python package records $(tail -1 "$root$pydir/embcache/_install.py"), not $libdir/$soname"
for f in "$unit" "$root/usr/lib/tmpfiles.d/embcache.conf" "$root$libdir/pkgconfig/embcache.pc"; do
    ! grep -n '@[A-Z_]*@' "$f" || fail "placeholders left in $f (above)"
done
conf=$root/etc/embcache/embcached.conf
grep -qx 'socket = /run/embcache/embcached.sock' "$conf" || fail "the example configuration's socket is not /run/embcache/embcached.sock"
grep -qx 'data-dir = /var/lib/embcache' "$conf" || fail "the example configuration's data-dir is not /var/lib/embcache"
# The daemon's own parser takes the example as it is, and with every commented-out
# key switched on (a misspelt key or value there would be copied by its readers).
sed -E 's/^#([a-z-]+ = .*)$/\1/' "$conf" >"$tmp/all-keys.conf"
# The credentials file the example names must exist, mode 600: one of ours.
(umask 077 && printf 'example-password\n' >"$tmp/redis-cluster.auth")
sed -i "s|^remote-auth-file = .*|remote-auth-file = $tmp/redis-cluster.auth|" "$tmp/all-keys.conf"
grep -q "^remote-auth-file = $tmp/" "$tmp/all-keys.conf" ||
    fail "the example configuration shows no remote-auth-file key"
for c in "$conf" "$tmp/all-keys.conf"; do
    out=$("$root/usr/bin/embcached" --config "$c" --check 2>&1)
    grep -q '^ok  *config ' <<<"$out" ||
        fail "embcached --config $c --check does not accept the example configuration: $(grep config <<<"$out")"
done
ok "embcached --check parses the example, and every key it shows commented out"
if [ -x "$py" ]; then
    "$py" -c "import sys; sys.exit(0 if '$pydir' in sys.path else 1)" ||
        fail "$py does not look in $pydir, where the package was installed"
    ok "$pydir is on $py's path"
fi
ok "unit, tmpfiles entry, embcache.pc and the Python package name /usr and /etc"

# A second install keeps the administrator's configuration.
echo "# edited by the administrator" >>"$conf"
cp "$conf" "$tmp/edited.conf"
DESTDIR=$root cmake --install "$build" --prefix /usr >"$tmp/install2.log" 2>&1 ||
    { cat "$tmp/install2.log"; fail "the second cmake --install failed"; }
cmp -s "$conf" "$tmp/edited.conf" || fail "a second cmake --install overwrote the edited $conf"
cmp -s "$conf.new" "$src/deploy/systemd/embcached.conf" ||
    fail "a second install did not put the new example beside the edited configuration ($conf.new)"
ok "a second install kept the edited configuration and wrote embcached.conf.new"

# --- b. systemd's own checks --------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
    echo "b. systemd-analyze verify"
    mkdir -p "$tmp/units"
    # The one thing verify needs that a staged install lacks: the binaries at their paths.
    sed -e "s|^ExecStart=/usr/bin/embcached |ExecStart=$root/usr/bin/embcached |" \
        -e "s|^ExecReload=/usr/bin/embcache |ExecReload=$root/usr/bin/embcache |" "$unit" \
        >"$tmp/units/embcached.service"
    grep -q "^ExecStart=$root/" "$tmp/units/embcached.service" || fail "could not point ExecStart at the staged binary"
    grep -q "^ExecReload=$root/" "$tmp/units/embcached.service" || fail "could not point ExecReload at the staged CLI"
    if ! systemd-analyze verify --man=no "$tmp/units/embcached.service" >"$tmp/verify.log" 2>&1; then
        cat "$tmp/verify.log"
        fail "systemd-analyze verify rejected the unit (its output is above)"
    fi
    if grep -i 'embcached.service' "$tmp/verify.log"; then
        fail "systemd-analyze verify complained about the unit (above)"
    fi
    ok "systemd-analyze verify: no complaint"
    sa_help=$(systemd-analyze security --help 2>&1)
    if grep -q -- '--offline' <<<"$sa_help"; then
        systemd-analyze security --offline=yes --no-pager "$tmp/units/embcached.service" \
            >"$tmp/security.log" 2>&1
        tail -1 "$tmp/security.log" | sed 's/^/  systemd-analyze security: /'
        grep -q 'exposure level for embcached.service: [0-4]\.[0-9] OK' "$tmp/security.log" ||
            fail "systemd-analyze security rates the unit worse than OK: $(tail -1 "$tmp/security.log")"
    fi
else
    echo "b. skipped: no systemd-analyze on this machine"
fi
if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
    # The README's commands, in the staged root: the files found by their names
    # where systemd looks, and sysusers before tmpfiles make the user and a 0700
    # state directory that user owns.
    sr=$root
    mkdir -p "$sr/var/lib"
    systemd-sysusers --root="$sr" embcache.conf >"$tmp/sysusers.log" 2>&1 ||
        { cat "$tmp/sysusers.log"; fail "systemd-sysusers rejected the sysusers.d entry"; }
    uid=$(awk -F: '$1 == "embcache" {print $3}' "$sr/etc/passwd")
    [ -n "$uid" ] || fail "systemd-sysusers made no embcache user in $sr/etc/passwd"
    home=$(awk -F: '$1 == "embcache" {print $6}' "$sr/etc/passwd")
    [ "$home" = /var/lib/embcache ] || fail "the embcache user's home is $home, not /var/lib/embcache"
    systemd-tmpfiles --root="$sr" --create embcache.conf >"$tmp/tmpfiles.log" 2>&1 || { cat "$tmp/tmpfiles.log"; fail "systemd-tmpfiles --create failed on the tmpfiles.d entry"; }
    st=$(stat -c '%a %u' "$sr/var/lib/embcache" 2>/dev/null)
    [ "$st" = "700 $uid" ] || fail "systemd-tmpfiles made /var/lib/embcache as '$st' (mode uid), not '700 $uid'"
    [ -d "$sr/etc/embcache" ] || fail "systemd-tmpfiles made no /etc/embcache"
    ok "systemd-sysusers and systemd-tmpfiles: user embcache (uid $uid), /var/lib/embcache 0700 its own"
else
    echo "b. skipped: no systemd-sysusers or systemd-tmpfiles"
fi

# --- c. the installed library, headers and .pc, against the installed daemon -----
echo "c. a program built with pkg-config of the staged install"
export PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR=$root$libdir/pkgconfig
# pkgconf drops -I/usr/include and -L/usr/lib as the system's own before it adds the
# sysroot: keep them, they point into the staged install.
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
[ "$(pkg-config --modversion embcache)" = "$version" ] || fail "pkg-config --modversion embcache is not $version"
cflags=$(pkg-config --cflags embcache) && libs=$(pkg-config --libs embcache) ||
    fail "pkg-config --cflags --libs embcache failed"
case "$cflags $libs" in *"$root"*) ;; *) fail "pkg-config's flags do not point into the staged install: $cflags $libs" ;; esac
cat >"$tmp/prog.c" <<'EOF'
/* Built against the staged install: reads the daemon's statistics. */
#include <embcache.h>
#include <stdio.h>
#include <string.h>

static int count(const char *name, uint64_t value, void *arg)
{
    (void)name;
    (void)value;
    ++*(int *)arg;
    return 0;
}

int main(int argc, char **argv)
{
    ec_client *c = NULL;
    int n = 0, rc;

    if (argc != 2 || strcmp(ec_version(), EC_VERSION_STRING)) {
        fprintf(stderr, "prog: header %s, library %s\n", EC_VERSION_STRING, ec_version());
        return 2;
    }
    if ((rc = ec_client_connect(argv[1], &c)) != 0) {
        fprintf(stderr, "prog: %s\n", ec_last_error());
        return 3;
    }
    rc = ec_client_stats(c, count, &n);
    ec_client_close(c);
    if (rc || n == 0) {
        fprintf(stderr, "prog: stats: rc %d, %d statistics\n", rc, n);
        return 4;
    }
    printf("prog: %d statistics from embcached\n", n);
    return 0;
}
EOF
# A sanitized build's libembcache needs the sanitizer runtime in the program (and,
# for the uninstrumented Python, preloaded), as its own tests have (EC_TEST_SANITIZE,
# set by tests/CMakeLists.txt for such builds).
san=
if [ -n "${EC_TEST_SANITIZE:-}" ]; then
    san="-fsanitize=address,undefined"
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:protect_shadow_gap=0
fi
# shellcheck disable=SC2086 # pkg-config's flags are words
cc -Wall -Wextra -Werror -std=c11 $san $cflags "$tmp/prog.c" $libs -o "$tmp/prog" 2>"$tmp/cc.log" ||
    { cat "$tmp/cc.log"; fail "the program did not build with: cc $cflags prog.c $libs"; }
deps=$(LD_LIBRARY_PATH=$root$libdir ldd "$tmp/prog") || fail "ldd $tmp/prog failed"
grep -q "libembcache.so.* => $root$libdir/" <<<"$deps" ||
    fail "the program does not load the staged libembcache: $(grep embcache <<<"$deps")"
ok "built with: $cflags ... $libs"

sock=$tmp/embcached.sock
mkdir -m 0700 "$tmp/data"
"$root/usr/bin/embcached" --config none --data-dir "$tmp/data" --socket "$sock" --shm-size 64M \
    >"$tmp/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
    [ -S "$sock" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$tmp/daemon.log"; fail "the staged embcached exited at start"; }
    sleep 0.1
done
[ -S "$sock" ] || { cat "$tmp/daemon.log"; fail "the staged embcached made no socket at $sock within 20 s"; }
out=$(LD_LIBRARY_PATH=$root$libdir "$tmp/prog" "$sock" 2>&1) || fail "the program failed against the staged daemon: $out"
ok "$out"
out=$(LD_LIBRARY_PATH=$root$libdir "$root/usr/bin/embcache" --socket "$sock" stats 2>&1) ||
    fail "the staged CLI failed: embcache --socket $sock stats: $out"
ok "the staged CLI: embcache stats"
if [ -x "$py" ] && "$py" -c 'import numpy' 2>/dev/null; then
    pre=
    [ -n "$san" ] && pre=$(cc -print-file-name=libasan.so)
    out=$(LD_PRELOAD=$pre PYTHONPATH=$root$pydir EMBCACHE_LIBRARY=$root$libdir/$soname \
          PYTHONDONTWRITEBYTECODE=1 "$py" -c "import embcache, sys
assert embcache.__file__.startswith('$root'), embcache.__file__
with embcache.connect('$sock') as c:
    print(len(c.stats()), 'statistics through', embcache.__file__)" 2>&1) ||
        fail "the staged Python package failed: $out"
    ok "the staged Python package: $out"
else
    echo "  the Python package's run skipped: no $py with numpy"
fi
kill -TERM "$daemon"
wait "$daemon"
rc=$?
daemon=
[ "$rc" -eq 0 ] || { cat "$tmp/daemon.log"; fail "the staged embcached exited $rc after SIGTERM, not 0"; }
ok "the staged embcached stopped cleanly"
echo "service_install: passed"
