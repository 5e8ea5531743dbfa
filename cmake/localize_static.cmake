# Keeps libpj.a's own Rust symbols to itself: after cargo writes target/release/libpj.a, its members
# (pj's code, std, the dependencies) are linked into one relocatable object (ld -r), every global
# symbol but pj_* is made local (objcopy), and the archive is rewritten with that one object.
#
# Why: a Rust staticlib carries its own copy of std, whose rust_eh_personality is a global, unmangled
# symbol; a program that links libpj.a and another Rust static library built by a different Rust
# toolchain failed with "multiple definition of `rust_eh_personality'" (test second_rust_staticlib).
# The COMDAT groups left in the object (std's DW.ref.rust_eh_personality, the pointer its unwind
# tables use) are renamed (pj.localized.<name>): the linker keeps only the first group of a name, and
# another Rust library's references to its own copy would find pj's, now local, and fail to link.
# The bitcode sections std's objects carry (.llvmbc, .llvmcmd) are dropped: joined by ld -r they are
# no longer valid bitcode, and a linker plugin reading them (LLVMgold) aborts.
#
#   cmake -DARCHIVE=target/release/libpj.a -DLD=ld -DOBJCOPY=objcopy -DAR=ar -DREADELF=readelf \
#         -P localize_static.cmake
#
# Idempotent: an archive that already holds only libpj_localized.o is left alone.
foreach(var ARCHIVE LD OBJCOPY AR READELF)
  if(NOT ${var})
    message(FATAL_ERROR "localize_static.cmake needs -D${var}=...")
  endif()
endforeach()

# run(<what> <command...>): cmake/run_command.cmake.
include("${CMAKE_CURRENT_LIST_DIR}/run_command.cmake")

set(object_name libpj_localized.o)
run("ar t" "${AR}" t "${ARCHIVE}")
if(run_out STREQUAL "${object_name}\n")
  return()
endif()

set(work "${ARCHIVE}.localize")
file(REMOVE_RECURSE "${work}")
file(MAKE_DIRECTORY "${work}")
run("ld -r" "${LD}" -r --whole-archive "${ARCHIVE}" -o "${work}/joined.o")
run("readelf -g" "${READELF}" -g -W "${work}/joined.o")
string(REGEX MATCHALL "COMDAT group section \\[ *[0-9]+\\] `[^']*' \\[[^]\n]+\\]" groups "${run_out}")
set(renames)
foreach(group IN LISTS groups)
  string(REGEX REPLACE ".*\\[([^]\n]+)\\]$" "\\1" signature "${group}")
  list(APPEND renames "--redefine-sym" "${signature}=pj.localized.${signature}")
endforeach()
list(REMOVE_DUPLICATES renames)
run("objcopy" "${OBJCOPY}" ${renames} --wildcard "--keep-global-symbol=pj_*"
    --remove-section=.llvmbc --remove-section=.llvmcmd "${work}/joined.o" "${work}/${object_name}")
run("ar" "${AR}" rcs "${work}/libpj.a" "${work}/${object_name}")
# A new file (not written in place): target/release/libpj.a is a hard link of cargo's deps copy.
file(RENAME "${work}/libpj.a" "${ARCHIVE}")
file(REMOVE_RECURSE "${work}")
message(STATUS "libpj.a: only pj_* symbols are global")
