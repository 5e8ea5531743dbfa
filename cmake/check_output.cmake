# Runs PROGRAM and checks it: exit status 0, stdout equal to the file EXPECT (when given), and
# stdout or stderr containing every "|"-separated text in CONTAINS (when given). Used by
# pj_output_test().
#
#   cmake -DPROGRAM=./sqrt -DEXPECT=sqrt.expected -DCONTAINS="a|b" -P check_output.cmake
execute_process(COMMAND "${PROGRAM}" RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(NOT status EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} exited with ${status}")
endif()
if(EXPECT)
  file(READ "${EXPECT}" expected)
  if(NOT out STREQUAL expected)
    message(FATAL_ERROR "stdout of ${PROGRAM} differs from ${EXPECT}, which holds:\n${expected}")
  endif()
endif()
if(CONTAINS)
  string(REPLACE "|" ";" texts "${CONTAINS}")
  foreach(text IN LISTS texts)
    string(FIND "${out}${err}" "${text}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "the output of ${PROGRAM} does not contain \"${text}\"")
    endif()
  endforeach()
endif()
