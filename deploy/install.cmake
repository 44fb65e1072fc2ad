# install.cmake - run by `cmake --install` (the install(CODE) of the top
# CMakeLists.txt): writes embcache.pc, the systemd unit, the tmpfiles.d and
# sysusers.d entries and the example configuration for the prefix of this
# install, which `cmake --install --prefix` may have changed since configure.
#
# Paths, for a prefix P (GNUInstallDirs' rules, applied now rather than at
# configure time):
#   unit      P/lib/systemd/system/embcached.service
#   tmpfiles  P/lib/tmpfiles.d/embcache.conf
#   sysusers  P/lib/sysusers.d/embcache.conf
#   pkg-config  P/<libdir>/pkgconfig/embcache.pc
#   config    <sysconfdir>/embcache/embcached.conf: /etc for P=/usr,
#             /etc/opt/X for P=/opt/X, else P/etc (or CMAKE_INSTALL_SYSCONFDIR
#             when it was configured absolute). An existing file is kept (it
#             is the administrator's); the example then goes beside it as
#             embcached.conf.new.
# DESTDIR is honoured (file(INSTALL) prepends it); the files go into
# install_manifest.txt like the rest.
#
# Set by the caller: EC_SOURCE_DIR, EC_BINARY_DIR, EC_VERSION, EC_BINDIR,
# EC_LIBDIR, EC_INCLUDEDIR, EC_SYSCONFDIR (GNUInstallDirs' values).

set(EC_PREFIX "${CMAKE_INSTALL_PREFIX}")
string(REGEX REPLACE "(.)/+$" "\\1" EC_PREFIX "${EC_PREFIX}")

# A directory of the install: absolute as configured, else under the prefix.
function(ec_full_dir out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "${EC_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

ec_full_dir(EC_FULL_BINDIR "${EC_BINDIR}")
ec_full_dir(EC_FULL_LIBDIR "${EC_LIBDIR}")
if(IS_ABSOLUTE "${EC_SYSCONFDIR}")
  set(EC_FULL_SYSCONFDIR "${EC_SYSCONFDIR}")
elseif(EC_PREFIX STREQUAL "/usr" AND EC_SYSCONFDIR STREQUAL "etc")
  set(EC_FULL_SYSCONFDIR "/etc")
elseif(EC_PREFIX MATCHES "^/opt/" AND EC_SYSCONFDIR STREQUAL "etc")
  set(EC_FULL_SYSCONFDIR "/etc${EC_PREFIX}")
else()
  set(EC_FULL_SYSCONFDIR "${EC_PREFIX}/${EC_SYSCONFDIR}")
endif()
# pkg-config variables relative to ${prefix} where they can be.
foreach(v LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${EC_${v}}")
    set(EC_PC_${v} "${EC_${v}}")
  else()
    set(EC_PC_${v} "\${prefix}/${EC_${v}}")
  endif()
endforeach()

# Written to a scratch directory, installed from there, then removed (so a
# `sudo cmake --install` leaves nothing of root's in the build tree).
set(ec_stage "${EC_BINARY_DIR}/deploy-install-stage")
file(REMOVE_RECURSE "${ec_stage}")
file(MAKE_DIRECTORY "${ec_stage}")

function(ec_install_configured template dest_dir name)
  file(READ "${EC_SOURCE_DIR}/${template}" text)
  string(CONFIGURE "${text}" text @ONLY)
  if(text MATCHES "@EC_[A-Z_]+@")
    message(FATAL_ERROR "install.cmake: ${template} has a placeholder left (${CMAKE_MATCH_0}); "
                        "define it in deploy/install.cmake")
  endif()
  file(WRITE "${ec_stage}/${name}" "${text}")
  file(INSTALL DESTINATION "${dest_dir}" TYPE FILE FILES "${ec_stage}/${name}")
endfunction()

ec_install_configured(deploy/pkgconfig/embcache.pc.in "${EC_FULL_LIBDIR}/pkgconfig" embcache.pc)
ec_install_configured(deploy/systemd/embcached.service.in "${EC_PREFIX}/lib/systemd/system"
                      embcached.service)
ec_install_configured(deploy/systemd/embcache.tmpfiles.conf.in "${EC_PREFIX}/lib/tmpfiles.d"
                      embcache.conf)
file(INSTALL DESTINATION "${EC_PREFIX}/lib/sysusers.d" TYPE FILE
     FILES "${EC_SOURCE_DIR}/deploy/systemd/embcache.sysusers.conf" RENAME embcache.conf)

# The example configuration, unless the administrator's is there already.
set(ec_conf "${EC_FULL_SYSCONFDIR}/embcache/embcached.conf")
set(ec_conf_src "${EC_SOURCE_DIR}/deploy/systemd/embcached.conf")
if(EXISTS "$ENV{DESTDIR}${ec_conf}")
  file(READ "$ENV{DESTDIR}${ec_conf}" ec_old)
  file(READ "${ec_conf_src}" ec_new)
  if(ec_old STREQUAL ec_new)
    message(STATUS "Up-to-date: $ENV{DESTDIR}${ec_conf}")
  else()
    file(INSTALL DESTINATION "${EC_FULL_SYSCONFDIR}/embcache" TYPE FILE
         FILES "${ec_conf_src}" RENAME embcached.conf.new)
    message(STATUS "Kept $ENV{DESTDIR}${ec_conf} (yours); the new example is "
                   "$ENV{DESTDIR}${ec_conf}.new: compare them")
  endif()
else()
  file(INSTALL DESTINATION "${EC_FULL_SYSCONFDIR}/embcache" TYPE FILE FILES "${ec_conf_src}")
endif()
file(REMOVE_RECURSE "${ec_stage}")
