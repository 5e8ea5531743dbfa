# run(<what> <command...>): runs a command and fails (FATAL_ERROR, naming it with its output) unless
# it exits 0; sets run_out to its stdout. Shared by the cmake -P scripts (localize_static.cmake,
# tests/install/run.cmake).
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "${what} failed (${status}): ${cmd}\n${out}${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()
