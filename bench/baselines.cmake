# The Redis and libmemcached baselines of embcache-bench
# (bench/baseline_redis.c, bench/baseline_memcached.c), each built only when
# its client library is found; included by bench/CMakeLists.txt after it
# creates the embcache-bench target (which always has baseline_server.c and
# our own memcached clients, baseline_mcproto.c). Their test, test_baselines,
# builds whether or not that target exists; it starts real servers and skips
# (77) when no server program is installed. test_bench_units checks the LRU
# simulator, the memory holder, the mmap baselines and the page-cache
# helpers.

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
message(STATUS "embcache-bench baselines: redis ${HIREDIS_FOUND}, memcached ${LIBMEMCACHED_FOUND}")

if(TARGET embcache-bench AND EC_BASELINE_SRC)
  target_sources(embcache-bench PRIVATE ${EC_BASELINE_SRC})
  target_link_libraries(embcache-bench PRIVATE ${EC_BASELINE_LIBS})
  target_compile_definitions(embcache-bench PRIVATE ${EC_BASELINE_DEFS})
endif()

# embcache-resultbench: the cache manager next to Redis (needs hiredis).
if(HIREDIS_FOUND AND NOT TARGET embcache-resultbench)
  add_executable(embcache-resultbench ${CMAKE_CURRENT_LIST_DIR}/resultbench.c)
  target_link_libraries(embcache-resultbench PRIVATE ec_client PkgConfig::HIREDIS Threads::Threads)
  add_dependencies(embcache-resultbench embcached)
endif()

if(EMBCACHE_TESTS AND NOT TARGET PkgConfig::CMOCKA)
  pkg_check_modules(CMOCKA QUIET IMPORTED_TARGET cmocka)
endif()
if(EMBCACHE_TESTS AND TARGET PkgConfig::CMOCKA AND NOT TARGET test_baselines)
  # Without either library it still builds, and exits 77 (skipped).
  add_executable(test_baselines ${CMAKE_CURRENT_LIST_DIR}/test_baselines.c ${EC_BASELINE_SRC}
                 ${CMAKE_CURRENT_LIST_DIR}/baseline_server.c
                 ${CMAKE_CURRENT_LIST_DIR}/baseline_mcproto.c)
  target_include_directories(test_baselines PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(test_baselines PRIVATE PkgConfig::CMOCKA ${EC_BASELINE_LIBS})
  target_compile_definitions(test_baselines PRIVATE ${EC_BASELINE_DEFS})
  add_test(NAME bench_baselines COMMAND test_baselines)
  set_tests_properties(bench_baselines PROPERTIES LABELS bench TIMEOUT 120
                       SKIP_RETURN_CODE 77)
endif()
if(EMBCACHE_TESTS AND TARGET PkgConfig::CMOCKA AND NOT TARGET test_bench_units)
  add_executable(test_bench_units ${CMAKE_CURRENT_LIST_DIR}/test_bench_units.c
                 ${CMAKE_CURRENT_LIST_DIR}/lru_sim.c ${CMAKE_CURRENT_LIST_DIR}/memhold.c
                 ${CMAKE_CURRENT_LIST_DIR}/baseline_mmap.c ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
  target_include_directories(test_bench_units PRIVATE ${CMAKE_CURRENT_LIST_DIR}
                             ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(test_bench_units PRIVATE PkgConfig::CMOCKA m)
  add_test(NAME bench_units COMMAND test_bench_units)
  set_tests_properties(bench_units PROPERTIES LABELS bench TIMEOUT 60)
endif()

# embcache-dynbench: dynamic tables' updates under readers, and a row
# written nonstop (bench/dynbench.c).
if(NOT TARGET embcache-dynbench)
  add_executable(embcache-dynbench ${CMAKE_CURRENT_LIST_DIR}/dynbench.c
                 ${CMAKE_CURRENT_LIST_DIR}/bench_util.c)
  target_link_libraries(embcache-dynbench PRIVATE ec_client Threads::Threads)
  add_dependencies(embcache-dynbench embcached)
endif()
