# The install tests (registered by cmake/pj_install.cmake), one STEP each:
#   prefix        cmake --install BUILD_DIR --prefix PREFIX (a fresh prefix inside the build directory)
#                 and check that every file is there
#   pkgconfig     build examples/sqrt.c with `pkg-config --cflags --libs pj` (PKG_CONFIG_PATH at the
#                 prefix), run it with LD_LIBRARY_PATH; then with `pkg-config [--static] --cflags
#                 --libs pj-static` (libpj.a), run it without; skipped when pkg-config is missing
#   find_package  configure tests/install/ (find_package(pj), CMAKE_PREFIX_PATH=PREFIX), build, run;
#                 with -DMPI=ON also examples/mpi/mpi_squares.c through pj::mpi (run under MPIEXEC
#                 with MPIEXEC_FLAGS, "|"-separated, when MPIEXEC is given)
#   soname        (no install) target/release/libpj.so has the SONAME libpj.so.ABI, libpj.so.ABI
#                 beside it resolves to it, and a build-tree example (PROGRAM) needs libpj.so.ABI
# Every program must print examples/sqrt.expected.
cmake_minimum_required(VERSION 3.16)
foreach(var BUILD_DIR WORK_DIR PREFIX LIBDIR INCLUDEDIR VERSION ABI SOURCE_DIR C_COMPILER CXX_COMPILER GENERATOR STEP)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake needs -D${var}=...")
  endif()
endforeach()
string(REPLACE "|" ";" MPIEXEC_FLAGS "${MPIEXEC_FLAGS}")
set(expected_file "${SOURCE_DIR}/examples/sqrt.expected")
file(READ "${expected_file}" expected)

# run(<what> <command...>): runs a command, fails the test unless it exits 0; sets run_out.
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "${what} failed (${status}): ${cmd}\n${out}${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()

# check_program(<path>): runs it and compares its stdout with examples/sqrt.expected.
function(check_program program)
  run("${program}" "${program}")
  if(NOT run_out STREQUAL expected)
    message(FATAL_ERROR "${program} printed\n${run_out}\nbut ${expected_file} holds\n${expected}")
  endif()
  message(STATUS "ok: ${program}")
endfunction()

set(soname "libpj.so.${ABI}")

# check_needed(<program> <yes|no>): with readelf, checks whether the program's DT_NEEDED names
# libpj.so.ABI (the library's SONAME, not a path nor the bare libpj.so), or no libpj at all.
function(check_needed program want)
  find_program(READELF readelf)
  if(NOT READELF)
    return()
  endif()
  run("readelf" "${READELF}" -d "${program}")
  string(FIND "${run_out}" "Shared library: [${soname}]" at)
  string(FIND "${run_out}" "libpj" any)
  if(want AND at EQUAL -1)
    message(FATAL_ERROR "${program} does not need ${soname} by that name:\n${run_out}")
  elseif(NOT want AND NOT any EQUAL -1)
    message(FATAL_ERROR "${program} should not need libpj.so:\n${run_out}")
  endif()
endfunction()

# check_soname(<library>): readelf -d shows the SONAME libpj.so.ABI.
function(check_soname library)
  find_program(READELF readelf)
  if(NOT READELF)
    message(FATAL_ERROR "readelf is needed to check the SONAME of ${library} (Debian: binutils)")
  endif()
  run("readelf" "${READELF}" -d "${library}")
  string(FIND "${run_out}" "Library soname: [${soname}]" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${library} does not have the SONAME ${soname}:\n${run_out}")
  endif()
endfunction()

# check_link(<path> <target>): <path> is a symbolic link whose text is <target> (relative).
function(check_link path target)
  if(NOT IS_SYMLINK "${path}")
    message(FATAL_ERROR "${path} is not a symbolic link")
  endif()
  file(READ_SYMLINK "${path}" text)
  if(NOT text STREQUAL target)
    message(FATAL_ERROR "${path} points to ${text}, not ${target}")
  endif()
endfunction()

set(libdir "${PREFIX}/${LIBDIR}")
if(IS_ABSOLUTE "${LIBDIR}")
  set(libdir "${LIBDIR}")
endif()

if(STEP STREQUAL "prefix")
  file(REMOVE_RECURSE "${WORK_DIR}")
  run("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}")
  foreach(file "${libdir}/libpj.so" "${libdir}/libpj.a" "${PREFIX}/${INCLUDEDIR}/pj.h"
               "${PREFIX}/${INCLUDEDIR}/pj.hpp" "${libdir}/pkgconfig/pj.pc" "${libdir}/pkgconfig/pj-static.pc"
               "${libdir}/cmake/pj/pjConfig.cmake" "${libdir}/cmake/pj/pjConfigVersion.cmake")
    if(NOT EXISTS "${file}")
      message(FATAL_ERROR "cmake --install did not write ${file}")
    endif()
  endforeach()
  if(MPI)
    foreach(file "${libdir}/libpj_mpi.a" "${PREFIX}/${INCLUDEDIR}/pj_mpi.h")
      if(NOT EXISTS "${file}")
        message(FATAL_ERROR "cmake --install did not write ${file} (pj was built with MPI)")
      endif()
    endforeach()
  endif()
  # libpj.so.VERSION is the file; libpj.so.ABI (what programs load) and libpj.so (what -lpj finds)
  # are links to it.
  check_link("${libdir}/${soname}" "libpj.so.${VERSION}")
  check_link("${libdir}/libpj.so" "${soname}")
  check_soname("${libdir}/libpj.so.${VERSION}")
  file(STRINGS "${libdir}/pkgconfig/pj.pc" pc_prefix REGEX "^prefix=")
  if(NOT pc_prefix STREQUAL "prefix=${PREFIX}")
    message(FATAL_ERROR "pj.pc says ${pc_prefix}, not prefix=${PREFIX}")
  endif()
  message(STATUS "installed into ${PREFIX}")

elseif(STEP STREQUAL "pkgconfig")
  find_program(PKG_CONFIG pkg-config)
  if(NOT PKG_CONFIG)
    message("PJ_TEST_SKIPPED: pkg-config is not installed (Debian: apt-get install pkg-config; .ci/run installs it)")
    return()
  endif()
  set(ENV{PKG_CONFIG_PATH} "${libdir}/pkgconfig")
  run("pkg-config --modversion" "${PKG_CONFIG}" --modversion pj)
  string(STRIP "${run_out}" modversion)
  if(NOT modversion STREQUAL VERSION)
    message(FATAL_ERROR "pkg-config --modversion pj is ${modversion}, not ${VERSION} (Cargo.toml)")
  endif()
  run("pkg-config --static --libs" "${PKG_CONFIG}" --static --libs pj)
  foreach(lib -lpj -lpthread -ldl -lm)
    string(FIND "${run_out}" "${lib}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "pkg-config --static --libs pj lacks ${lib}: ${run_out}")
    endif()
  endforeach()
  run("pkg-config --cflags --libs" "${PKG_CONFIG}" --cflags --libs pj)
  string(STRIP "${run_out}" flags)
  message(STATUS "pkg-config --cflags --libs pj: ${flags}")
  separate_arguments(flags UNIX_COMMAND "${flags}")
  set(dir "${WORK_DIR}/pkgconfig")
  file(REMOVE_RECURSE "${dir}")
  file(MAKE_DIRECTORY "${dir}")
  run("cc" "${C_COMPILER}" -std=c11 -Wall -Wextra -Wpedantic -Werror
      "${SOURCE_DIR}/examples/sqrt.c" ${flags} -lm -o "${dir}/sqrt")
  check_needed("${dir}/sqrt" YES)
  set(ENV{LD_LIBRARY_PATH} "${libdir}")
  check_program("${dir}/sqrt")

  # The static library through pj-static.pc: with and without --static, the program needs no
  # libpj.so (pj.pc's -lpj would pick the shared library even with --static) and runs without
  # LD_LIBRARY_PATH.
  unset(ENV{LD_LIBRARY_PATH})
  foreach(mode static plain)
    set(static_flag)
    if(mode STREQUAL "static")
      set(static_flag --static)
    endif()
    run("pkg-config ${static_flag} --cflags --libs pj-static" "${PKG_CONFIG}" ${static_flag} --cflags --libs pj-static)
    string(STRIP "${run_out}" flags)
    message(STATUS "pkg-config ${static_flag} --cflags --libs pj-static: ${flags}")
    separate_arguments(flags UNIX_COMMAND "${flags}")
    run("cc" "${C_COMPILER}" -std=c11 -Wall -Wextra -Wpedantic -Werror
        "${SOURCE_DIR}/examples/sqrt.c" ${flags} -lm -o "${dir}/sqrt_static_${mode}")
    check_needed("${dir}/sqrt_static_${mode}" NO)
    check_program("${dir}/sqrt_static_${mode}")
  endforeach()

elseif(STEP STREQUAL "find_package")
  set(dir "${WORK_DIR}/find_package")
  file(REMOVE_RECURSE "${dir}")
  set(extra)
  if(MAKE_PROGRAM)
    list(APPEND extra "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
  endif()
  run("configure tests/install" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/tests/install" -B "${dir}"
      -G "${GENERATOR}" ${extra} "-DCMAKE_PREFIX_PATH=${PREFIX}"
      "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "-DPJ_EXAMPLES_DIR=${SOURCE_DIR}/examples"
      "-DPJ_EXPECTED_VERSION=${VERSION}" "-DPJ_EXPECT_MPI=${MPI}")
  file(STRINGS "${dir}/CMakeCache.txt" pj_dir REGEX "^pj_DIR:")
  if(NOT pj_dir MATCHES "=${libdir}/cmake/pj$")
    message(FATAL_ERROR "find_package(pj) found ${pj_dir}, not the one in ${libdir}/cmake/pj")
  endif()
  run("build tests/install" "${CMAKE_COMMAND}" --build "${dir}")
  check_needed("${dir}/sqrt_shared" YES)
  check_needed("${dir}/sqrt_static" NO)
  foreach(program sqrt_shared sqrt_static sqrt_cpp sqrt_cpp_wrapper)
    check_program("${dir}/${program}")
  endforeach()
  # pj::mpi: the program runs under mpiexec (Open MPI's flags as in examples/mpi) and its ranks
  # other than 0 run the tasks.
  if(MPI AND MPIEXEC)
    set(ENV{LD_LIBRARY_PATH} "${libdir}")
    run("mpiexec mpi_squares" "${MPIEXEC}" -n 3 ${MPIEXEC_FLAGS} "${dir}/mpi_squares")
    file(READ "${SOURCE_DIR}/examples/mpi/mpi_squares.expected" mpi_expected)
    if(NOT run_out STREQUAL mpi_expected)
      message(FATAL_ERROR "mpi_squares printed\n${run_out}\nbut mpi_squares.expected holds\n${mpi_expected}")
    endif()
    message(STATUS "ok: ${dir}/mpi_squares under mpiexec")
  endif()

elseif(STEP STREQUAL "soname")
  set(lib_dir "${SOURCE_DIR}/target/release")
  check_soname("${lib_dir}/libpj.so")
  if(NOT EXISTS "${lib_dir}/${soname}")
    message(FATAL_ERROR "${lib_dir}/${soname} is missing: programs linked with libpj.so need it")
  endif()
  get_filename_component(real "${lib_dir}/${soname}" REALPATH)
  get_filename_component(expected_real "${lib_dir}/libpj.so" REALPATH)
  if(NOT real STREQUAL expected_real)
    message(FATAL_ERROR "${lib_dir}/${soname} is ${real}, not libpj.so")
  endif()
  check_needed("${PROGRAM}" YES)
  check_program("${PROGRAM}")

else()
  message(FATAL_ERROR "unknown STEP ${STEP}")
endif()
