# The Redis and memcached baselines of embcache-bench (bench/baseline_redis.c,
# bench/baseline_memcached.c, bench/baseline_server.c), each built only when
# its client library is found; included by bench/CMakeLists.txt after it
# creates the embcache-bench target. Their test, test_baselines, builds
# whether or not that target exists; it starts real servers and skips (77)
# when neither program is installed.

pkg_check_modules(HIREDIS QUIET IMPORTED_TARGET hiredis)
pkg_check_modules(LIBMEMCACHED QUIET IMPORTED_TARGET libmemcached)

set(EC_BASELINE_SRC "")
set(EC_BASELINE_LIBS "")
set(EC_BASELINE_DEFS "")
if(HIREDIS_FOUND)
  list(APPEND EC_BASELINE_SRC ${CMAKE_CURRENT_LIST_DIR}/baseline_redis.c)
  list(APPEND EC_BASELINE_LIBS PkgConfig::HIREDIS)
  list(APPEND EC_BASELINE_DEFS EC_HAVE_REDIS=1)
endif()
if(LIBMEMCACHED_FOUND)
  list(APPEND EC_BASELINE_SRC ${CMAKE_CURRENT_LIST_DIR}/baseline_memcached.c)
  list(APPEND EC_BASELINE_LIBS PkgConfig::LIBMEMCACHED)
  list(APPEND EC_BASELINE_DEFS EC_HAVE_MEMCACHED=1)
endif()
if(EC_BASELINE_SRC)
  list(APPEND EC_BASELINE_SRC ${CMAKE_CURRENT_LIST_DIR}/baseline_server.c)
endif()
message(STATUS "embcache-bench baselines: redis ${HIREDIS_FOUND}, memcached ${LIBMEMCACHED_FOUND}")

if(TARGET embcache-bench AND EC_BASELINE_SRC)
  target_sources(embcache-bench PRIVATE ${EC_BASELINE_SRC})
  target_link_libraries(embcache-bench PRIVATE ${EC_BASELINE_LIBS})
  target_compile_definitions(embcache-bench PRIVATE ${EC_BASELINE_DEFS})
endif()

if(EMBCACHE_TESTS AND NOT TARGET PkgConfig::CMOCKA)
  pkg_check_modules(CMOCKA QUIET IMPORTED_TARGET cmocka)
endif()
if(EMBCACHE_TESTS AND TARGET PkgConfig::CMOCKA AND NOT TARGET test_baselines)
  # Without either library it still builds, and exits 77 (skipped).
  add_executable(test_baselines ${CMAKE_CURRENT_LIST_DIR}/test_baselines.c ${EC_BASELINE_SRC})
  target_include_directories(test_baselines PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(test_baselines PRIVATE PkgConfig::CMOCKA ${EC_BASELINE_LIBS})
  target_compile_definitions(test_baselines PRIVATE ${EC_BASELINE_DEFS})
  add_test(NAME bench_baselines COMMAND test_baselines)
  set_tests_properties(bench_baselines PROPERTIES LABELS bench TIMEOUT 120
                       SKIP_RETURN_CODE 77)
endif()
