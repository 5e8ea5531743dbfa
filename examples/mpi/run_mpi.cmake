# Runs a program under mpiexec and checks it (used by the mpi_* tests of examples/mpi):
#
#   cmake -DMPIEXEC=mpirun "-DFLAGS=--oversubscribe|--allow-run-as-root" -DNP=3 -DPROGRAM=./prog
#         "-DARGS=mode" -DEXIT=0 -DEXPECT=file "-DCONTAINS=a|b" -DTIMEOUT=50 -P run_mpi.cmake
#
# Lists are "|"-separated. Passes when the whole mpiexec run exits with one of the EXIT statuses
# (default 0) within TIMEOUT seconds, its stdout equals the file EXPECT (when given) and its stdout
# or stderr contains every text of CONTAINS. Without MPIEXEC, PROGRAM runs on its own.
cmake_minimum_required(VERSION 3.16)
foreach(var PROGRAM NP)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_mpi.cmake needs -D${var}=...")
  endif()
endforeach()
foreach(var FLAGS ARGS EXIT CONTAINS)
  string(REPLACE "|" ";" ${var} "${${var}}")
endforeach()
if(NOT EXIT)
  set(EXIT 0)
endif()
if(NOT TIMEOUT)
  set(TIMEOUT 50)
endif()

if(MPIEXEC)
  set(command "${MPIEXEC}" ${FLAGS} -n ${NP} "${PROGRAM}" ${ARGS})
else()
  set(command "${PROGRAM}" ${ARGS})
endif()
string(REPLACE ";" " " shown "${command}")
message("$ ${shown}")
string(TIMESTAMP start "%s")
execute_process(COMMAND ${command} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT ${TIMEOUT})
string(TIMESTAMP end "%s")
math(EXPR seconds "${end} - ${start}")
message("${out}${err}")
message("(exit status ${status} after about ${seconds} s)")
if(NOT status IN_LIST EXIT)
  string(REPLACE ";" " or " wanted "${EXIT}")
  message(FATAL_ERROR "${shown} ended with \"${status}\", not ${wanted}")
endif()
if(EXPECT)
  file(READ "${EXPECT}" expected)
  if(NOT out STREQUAL expected)
    message(FATAL_ERROR "stdout differs from ${EXPECT}, which holds:\n${expected}")
  endif()
endif()
foreach(text IN LISTS CONTAINS)
  string(FIND "${out}${err}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "the output does not contain \"${text}\"")
  endif()
endforeach()
