#!/usr/bin/env bash
# Builds the MPI backend's bench (benches/mpi/mpi_overhead.c) and runs it under mpirun: the
# per-task overhead of backend "mpi" against backend "processes", and the speedup of CPU-bound
# tasks on each. Figures only; nothing is asserted. Works from any directory.
#
#   scripts/bench-mpi.sh [trivial_tasks=200000] [cpu_tasks=200] [cpu_ms=10]
#   scripts/bench-mpi.sh large [tasks=3] [mib=1024]   # one batch of results above 2 GiB
#                                                      # (benches/mpi/mpi_large.c; RANKS default 2)
#   scripts/bench-mpi.sh raw [reps=5] [mib...=16 64 256]
#       # backend "mpi"'s bandwidth (mpi_large.c's bw mode: one task per call returning, then
#       # taking, MIB MiB) beside plain MPI_Send/MPI_Recv of the same bytes between the same two
#       # ranks (benches/mpi/mpi_raw.c), and backend "processes" (n_jobs 2) on rank 0 alone (the
#       # local hop each worker rank makes); RANKS is 2
#
# Environment: RANKS (default 3: rank 0 dispatches, the others work), BUILD_DIR (default
# build-mpi), MPIRUN (default mpirun), MPIRUN_FLAGS (extra flags for mpirun).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${BUILD_DIR:-build-mpi}
mpirun=${MPIRUN:-mpirun}
if ! command -v "$mpirun" >/dev/null; then
    echo "error: $mpirun not found (Debian: apt-get install libopenmpi-dev openmpi-bin)" >&2
    exit 1
fi

generator="Unix Makefiles"
if command -v ninja >/dev/null; then generator=Ninja; fi
if [[ -f $build_dir/CMakeCache.txt ]] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=$generator" "$build_dir/CMakeCache.txt"; then
    generator=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
fi
# Quiet unless something fails.
if ! log=$(cmake -S . -B "$build_dir" -G "$generator" -DCMAKE_BUILD_TYPE=Release 2>&1 &&
           cmake --build "$build_dir" --target pj_mpi_bench pj_mpi_large pj_mpi_raw 2>&1); then
    printf '%s\n' "$log" >&2
    exit 1
fi
bench=$build_dir/benches/mpi/pj_mpi_bench
ranks=${RANKS:-3}
raw=
if [[ ${1:-} == large ]]; then
    shift
    bench=$build_dir/benches/mpi/pj_mpi_large
    ranks=${RANKS:-2}
elif [[ ${1:-} == raw ]]; then
    shift
    bench=$build_dir/benches/mpi/pj_mpi_large
    raw=$build_dir/benches/mpi/pj_mpi_raw
    ranks=2
fi
if [[ ! -x $bench ]]; then
    echo "error: $bench was not built: CMake found no MPI (see $build_dir/CMakeCache.txt)" >&2
    exit 1
fi

flags=()
if "$mpirun" --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
    flags=(--oversubscribe)
    if [[ $(id -u) -eq 0 ]]; then flags+=(--allow-run-as-root); fi
fi
# shellcheck disable=SC2206 # MPIRUN_FLAGS is meant to be split
flags+=(${MPIRUN_FLAGS:-})
if [[ -n $raw ]]; then
    # The same flags, ranks and sizes for both, one after the other.
    printf '$ %s\n' "$mpirun ${flags[*]} -n 2 $raw $*"
    "$mpirun" "${flags[@]}" -n 2 "$raw" "$@"
    printf '$ %s\n' "$mpirun ${flags[*]} -n 2 $bench bw $*"
    "$mpirun" "${flags[@]}" -n 2 "$bench" bw "$@"
    # The local hop inside every worker rank (its batch runs in a forked child): backend
    # "processes" (n_jobs 2: with 1 the task would run on the caller's thread), on rank 0 alone.
    printf '$ %s\n' "$mpirun ${flags[*]} -n 2 $bench bw-processes $*"
    "$mpirun" "${flags[@]}" -n 2 "$bench" bw-processes "$@"
    exit
fi
printf '$ %s\n' "$mpirun ${flags[*]} -n $ranks $bench $*"
"$mpirun" "${flags[@]}" -n "$ranks" "$bench" "$@"
