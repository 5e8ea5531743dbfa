//go:build pjmpi

// The pj_mpi shim (bindings/mpi/pj_mpi.c), compiled into the package with the pjmpi build tag only,
// so that programs built without it never link MPI. See mpi.go.
#include "../mpi/pj_mpi.c"
