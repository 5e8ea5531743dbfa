//go:build pjmpi && !pjmpi_flags

package pj

// With the pjmpi build tag, MPI's compiler and linker flags come from pkg-config's ompi-c (Open
// MPI, as Debian and most distributions install it). For another MPI, or flags of your own, add the
// pjmpi_flags tag and give them in CGO_CFLAGS and CGO_LDFLAGS, e.g. from `mpicc -show` (MPICH) or
// `mpicc --showme:compile` and `--showme:link` (Open MPI); see README.md.

/*
#cgo pkg-config: ompi-c
*/
import "C"
