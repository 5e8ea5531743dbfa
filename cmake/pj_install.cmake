# Installing pj (included by the root CMakeLists.txt):
#
#   cargo build --release && cmake -S . -B build && cmake --build build
#   cmake --install build --prefix <prefix>
#
# puts under <prefix>: lib/libpj.so.VERSION with the links lib/libpj.so.ABI and lib/libpj.so,
# lib/libpj.a, include/pj.h, include/pj.hpp, lib/pkgconfig/pj.pc (shared), lib/pkgconfig/pj-static.pc
# (static), lib/libpj_mpi.a and include/pj_mpi.h when the MPI shim was built, and
# lib/cmake/pj/pj{Config,ConfigVersion}.cmake (find_package(pj) -> pj::pj, pj::pj_static, pj::cpp,
# pj::mpi). The libraries are cargo's (target/release), imported rather than built by CMake, so they
# are installed as files. The tests install_* install into build/install-test/ and build
# examples/sqrt.c against it with pkg-config and with find_package (tests/install/).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The version is Cargo.toml's (the first `version = "..."` line is the [package] one).
file(STRINGS "${PJ_ROOT}/Cargo.toml" pj_version_line REGEX "^version *= *\"[^\"]+\"" LIMIT_COUNT 1)
string(REGEX REPLACE "^version *= *\"([^\"]+)\".*" "\\1" PJ_VERSION "${pj_version_line}")
if(NOT PJ_VERSION MATCHES "^[0-9]+\\.[0-9]+\\.[0-9]+")
  message(FATAL_ERROR "cannot read the package version from ${PJ_ROOT}/Cargo.toml")
endif()
file(STRINGS "${PJ_ROOT}/Cargo.toml" pj_description_line REGEX "^description *= *\"[^\"]+\"" LIMIT_COUNT 1)
string(REGEX REPLACE "^description *= *\"([^\"]+)\".*" "\\1" PJ_DESCRIPTION "${pj_description_line}")
# Reconfigure when Cargo.toml changes (the version could).
set_property(DIRECTORY "${PJ_ROOT}" APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${PJ_ROOT}/Cargo.toml")

# What libpj.a needs from the system on Linux/glibc, as
# `cargo rustc --release --lib --crate-type staticlib -- --print native-static-libs` prints it
# (-lc is implied by every C link).
set(PJ_STATIC_LIBS gcc_s util rt pthread m dl c)
list(TRANSFORM PJ_STATIC_LIBS PREPEND "-l" OUTPUT_VARIABLE pj_static_flags)
string(JOIN " " PJ_STATIC_LIBS_PC ${pj_static_flags})
set(PJ_STATIC_LIBS_CMAKE ${PJ_STATIC_LIBS})
list(REMOVE_ITEM PJ_STATIC_LIBS_CMAKE c)

set(PJ_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/pj")
set(PJ_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig")

# The shared library as the convention has it: the file libpj.so.VERSION, the link libpj.so.ABI (its
# SONAME: what programs load) and the link libpj.so (what the linker finds for -lpj). The links are
# made here and installed as links.
install(PROGRAMS "${PJ_LIB_DIR}/libpj.so" DESTINATION "${CMAKE_INSTALL_LIBDIR}" RENAME "libpj.so.${PJ_VERSION}")
set(pj_links_dir "${CMAKE_CURRENT_BINARY_DIR}/pj_links")
file(MAKE_DIRECTORY "${pj_links_dir}")
file(CREATE_LINK "libpj.so.${PJ_VERSION}" "${pj_links_dir}/${PJ_SONAME}" SYMBOLIC)
file(CREATE_LINK "${PJ_SONAME}" "${pj_links_dir}/libpj.so" SYMBOLIC)
install(FILES "${pj_links_dir}/${PJ_SONAME}" "${pj_links_dir}/libpj.so" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES "${PJ_LIB_DIR}/libpj.a" DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES "${PJ_INCLUDE_DIR}/pj.h" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
if(EXISTS "${PJ_ROOT}/bindings/cpp/include/pj.hpp")
  install(FILES "${PJ_ROOT}/bindings/cpp/include/pj.hpp" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
endif()
# The MPI backend's shim, when MPI was found (bindings/mpi): lib/libpj_mpi.a and include/pj_mpi.h.
# A program links it before libpj and MPI: cc app.c -lpj_mpi -lpj $(mpicc --showme:link).
if(TARGET pj_mpi)
  install(TARGETS pj_mpi ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}")
  install(FILES "${PJ_ROOT}/bindings/mpi/pj_mpi.h" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# pj::mpi in the CMake package when the shim is installed.
if(TARGET pj_mpi)
  set(PJ_HAS_MPI TRUE)
else()
  set(PJ_HAS_MPI FALSE)
endif()

# CMake package: relocatable (paths relative to the config file), so written at configure time.
configure_package_config_file("${PJ_ROOT}/cmake/pjConfig.cmake.in"
  "${CMAKE_CURRENT_BINARY_DIR}/pjConfig.cmake"
  INSTALL_DESTINATION "${PJ_INSTALL_CMAKEDIR}"
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
# 0.x: a minor release may change the ABI, so only the same major.minor is compatible.
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/pjConfigVersion.cmake"
  VERSION "${PJ_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/pjConfig.cmake" "${CMAKE_CURRENT_BINARY_DIR}/pjConfigVersion.cmake"
  DESTINATION "${PJ_INSTALL_CMAKEDIR}")

# pj.pc (libpj.so) and pj-static.pc (libpj.a) hold the prefix itself, which `cmake --install
# --prefix` chooses at install time: write them then, from cmake/pj.pc.in and cmake/pj-static.pc.in
# (the other values are fixed now).
foreach(kind LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${kind}}")
    set(pj_pc_${kind} "${CMAKE_INSTALL_${kind}}")
  else()
    set(pj_pc_${kind} "\${prefix}/${CMAKE_INSTALL_${kind}}")
  endif()
endforeach()
set(pj_pc_work "${CMAKE_CURRENT_BINARY_DIR}/pj_pc")
install(CODE "
  set(PJ_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(PJ_PC_LIBDIR [==[${pj_pc_LIBDIR}]==])
  set(PJ_PC_INCLUDEDIR [==[${pj_pc_INCLUDEDIR}]==])
  set(PJ_VERSION [==[${PJ_VERSION}]==])
  set(PJ_DESCRIPTION [==[${PJ_DESCRIPTION}]==])
  set(PJ_STATIC_LIBS_PC [==[${PJ_STATIC_LIBS_PC}]==])
  configure_file([==[${PJ_ROOT}/cmake/pj.pc.in]==] [==[${pj_pc_work}/pj.pc]==] @ONLY)
  configure_file([==[${PJ_ROOT}/cmake/pj-static.pc.in]==] [==[${pj_pc_work}/pj-static.pc]==] @ONLY)
  file(INSTALL DESTINATION \"\${CMAKE_INSTALL_PREFIX}/${PJ_INSTALL_PKGCONFIGDIR}\" TYPE FILE
       FILES [==[${pj_pc_work}/pj.pc]==] [==[${pj_pc_work}/pj-static.pc]==])
")

if(NOT PJ_BUILD_TESTS)
  return()
endif()

# The tests: one installs into a prefix inside the build directory (a fixture), the others build
# examples/sqrt.c (and examples/cpp/sqrt.cpp) against that prefix and check the output.
set(PJ_INSTALL_TEST_DIR "${CMAKE_CURRENT_BINARY_DIR}/install-test")
set(pj_install_test_args
  "-DBUILD_DIR=${CMAKE_CURRENT_BINARY_DIR}" "-DWORK_DIR=${PJ_INSTALL_TEST_DIR}"
  "-DPREFIX=${PJ_INSTALL_TEST_DIR}/prefix" "-DLIBDIR=${CMAKE_INSTALL_LIBDIR}"
  "-DINCLUDEDIR=${CMAKE_INSTALL_INCLUDEDIR}" "-DVERSION=${PJ_VERSION}" "-DABI=${PJ_ABI}" "-DSOURCE_DIR=${PJ_ROOT}"
  "-DC_COMPILER=${CMAKE_C_COMPILER}" "-DCXX_COMPILER=${CMAKE_CXX_COMPILER}"
  "-DGENERATOR=${CMAKE_GENERATOR}" "-DMAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}")
if(TARGET pj_mpi)
  # pj::mpi's consumer test; mpiexec as examples/mpi runs it (Open MPI: root, more ranks than CPUs)
  list(APPEND pj_install_test_args -DMPI=ON)
  if(MPIEXEC_EXECUTABLE)
    set(pj_install_mpiexec_flags ${MPIEXEC_PREFLAGS})
    execute_process(COMMAND "${MPIEXEC_EXECUTABLE}" --version OUTPUT_VARIABLE pj_install_mpiexec_version
                    ERROR_VARIABLE pj_install_mpiexec_version TIMEOUT 30)
    if(pj_install_mpiexec_version MATCHES "Open MPI|OpenRTE")
      list(APPEND pj_install_mpiexec_flags --allow-run-as-root --oversubscribe --timeout 60
           --mca btl_vader_single_copy_mechanism none)
    endif()
    string(REPLACE ";" "|" pj_install_mpiexec_flags "${pj_install_mpiexec_flags}")
    list(APPEND pj_install_test_args "-DMPIEXEC=${MPIEXEC_EXECUTABLE}" "-DMPIEXEC_FLAGS=${pj_install_mpiexec_flags}")
  endif()
endif()
foreach(step prefix pkgconfig find_package)
  add_test(NAME install_${step}
    COMMAND "${CMAKE_COMMAND}" ${pj_install_test_args} -DSTEP=${step} -P "${PJ_ROOT}/tests/install/run.cmake")
  set_tests_properties(install_${step} PROPERTIES TIMEOUT ${PJ_TEST_TIMEOUT} SKIP_REGULAR_EXPRESSION "PJ_TEST_SKIPPED")
endforeach()
set_tests_properties(install_prefix PROPERTIES FIXTURES_SETUP pj_install_prefix)
# add_subdirectory(pj) in another project builds pj's libraries and none of its tests or examples.
add_test(NAME subdirectory_consumer
  COMMAND "${CMAKE_COMMAND}" ${pj_install_test_args} -DSTEP=subdirectory -P "${PJ_ROOT}/tests/install/run.cmake")
# RUN_SERIAL: building pj there runs cargo into this tree's target/release, rewriting libpj.a and
# libpj.so while other tests (second_rust_staticlib, install_prefix, soname_build_tree) read them;
# under ctest -j, second_rust_staticlib once found the archive not yet localized.
set_tests_properties(subdirectory_consumer PROPERTIES TIMEOUT ${PJ_TEST_TIMEOUT} RUN_SERIAL TRUE)
# libpj.a linked beside another Rust static library (one that defines std's global symbols too).
add_test(NAME second_rust_staticlib
  COMMAND "${CMAKE_COMMAND}" ${pj_install_test_args} -DSTEP=second_rust_staticlib
          "-DLIBPJ_A=${PJ_LIB_DIR}/libpj.a" -P "${PJ_ROOT}/tests/install/run.cmake")
set_tests_properties(second_rust_staticlib PROPERTIES TIMEOUT ${PJ_TEST_TIMEOUT})
# The build tree's libpj.so: its SONAME, the libpj.so.ABI link beside it, and a program that loads it.
if(TARGET sqrt)
  add_test(NAME soname_build_tree
    COMMAND "${CMAKE_COMMAND}" ${pj_install_test_args} -DSTEP=soname "-DPROGRAM=$<TARGET_FILE:sqrt>"
            -P "${PJ_ROOT}/tests/install/run.cmake")
  set_tests_properties(soname_build_tree PROPERTIES TIMEOUT ${PJ_TEST_TIMEOUT})
endif()
set_tests_properties(install_pkgconfig install_find_package PROPERTIES FIXTURES_REQUIRED pj_install_prefix)
