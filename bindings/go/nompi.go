//go:build !pjmpi

package pj

import "os"

// mpiBuilt tells Backend that this build has no MPI backend (built without the pjmpi build tag).
const mpiBuilt = false

// MPIMain would start pj's MPI backend: this build has none, so it returns an *Error with
// ErrUnsupported saying to build with the pjmpi tag (see mpi.go: `go build -tags pjmpi`).
func MPIMain() error { return errNoMPI("pj.MPIMain") }

// MPIExit is os.Exit in a build without the MPI backend (see mpi.go for its role with it).
func MPIExit(code int) { os.Exit(code) }
