//go:build pjmpi

package pj

/*
#include <signal.h>
#include <stdlib.h>
#include <stddef.h>
#include "../mpi/pj_mpi.h"

// The signals the Go runtime turns into run-time panics or needs for itself, whose handlers MPI's
// initialization might replace (Open MPI can install a backtrace printer for some): saved before
// pj_mpi_main and put back after it on rank 0, which goes on running Go code.
static const int pjgo_mpi_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGPIPE, SIGCHLD, SIGURG};
#define PJGO_MPI_SIGNALS (sizeof pjgo_mpi_signals / sizeof pjgo_mpi_signals[0])

// pj_mpi_main(NULL, NULL) (MPI takes no command line from Go), keeping the Go runtime's handlers.
// Worker ranks never return from it.
static int pjgo_mpi_main(void) {
    struct sigaction saved[PJGO_MPI_SIGNALS];
    int ok[PJGO_MPI_SIGNALS];
    for (size_t i = 0; i < PJGO_MPI_SIGNALS; i++) {
        ok[i] = sigaction(pjgo_mpi_signals[i], NULL, &saved[i]) == 0;
    }
    int rc = pj_mpi_main(NULL, NULL);
    for (size_t i = 0; i < PJGO_MPI_SIGNALS; i++) {
        if (ok[i]) {
            sigaction(pjgo_mpi_signals[i], &saved[i], NULL);
        }
    }
    return rc;
}

// exit(): C's, which runs the shim's atexit handler (the Go runtime's exit does not).
static void pjgo_mpi_exit(int code) { exit(code); }
*/
import "C"

import (
	"os"
	"sync"
	"sync/atomic"
)

// mpiBuilt tells Backend that this build has the MPI backend (the pjmpi build tag).
const mpiBuilt = true

var mpiMain struct {
	once sync.Once
	err  error
}

// mpiAttached is set once MPIMain has started the backend (on rank 0: the other ranks never
// return): MPIExit must then leave through C's exit.
var mpiAttached atomic.Bool

// MPIMain starts pj's MPI backend (Backend("mpi")) in a program run under mpirun or mpiexec; it
// exists with the pjmpi build tag, which compiles pj's MPI shim into the program and links MPI
// (without the tag, MPIMain returns an error saying so, and Backend("mpi") is refused).
//
// The same program runs on every rank. Call MPIMain at the start of main, on every rank, after the
// init functions that call Register (every rank must register the same functions), and before
// anything else that matters: only rank 0 returns from it, with nil, and goes on to run the
// program; every other rank serves rank 0's tasks with its registered functions until rank 0
// exits, then exits itself (status 0, or non-zero when it could not serve) without returning:
// deferred calls do not run there.
//
//	func init() { pj.Register("score", score) }
//
//	func main() {
//		if err := pj.MPIMain(); err != nil { // worker ranks never return from here
//			log.Fatal(err)
//		}
//		scores, err := pj.MapNamed[Doc, float64](ctx, "score", docs, pj.Backend("mpi"))
//		...
//		pj.MPIExit(0) // rank 0: lets the worker ranks go, finalizes MPI, exits
//	}
//
//	$ go build -tags pjmpi && mpirun -n 4 ./program   # rank 0 dispatches, ranks 1..3 compute
//
// Backend("mpi") runs MapNamed, MapCollectNamed and StreamNamed (not Map and the other closure
// calls) on the worker ranks; with a single rank, rank 0 runs every input itself, in order. A worker
// rank runs its tasks in a copy of the program that it spawns as its worker process (kept across
// tasks, replaced when one dies), as MapNamed's process backend does: MapNamed's rules about
// failures, panics, dead workers and timeouts apply, with the rank named in the report.
//
// MPIMain calls WorkerMainIfRequested first (so that those copies serve), which seals the registry.
// It initializes MPI (MPI_Init_thread, asking for MPI_THREAD_MULTIPLE, without the command line);
// the program must make no MPI calls of its own. Rank 0 must end the program with MPIExit, which
// lets the worker ranks go and finalizes MPI: os.Exit and a return from main skip that (the Go
// runtime leaves without C's exit handlers), and mpirun then reports that rank 0 exited without
// finalizing and ends the job with a failure status.
//
// It returns an *Error with ErrIO when MPI or pj's backend cannot start (the reason is also printed
// on stderr by the shim): the program should then exit with a non-zero status, which makes mpirun
// end the other ranks. Calling it again returns its first result.
func MPIMain() error {
	mpiMain.once.Do(func() {
		if !workerMainCalled.Load() {
			WorkerMainIfRequested() // a worker process spawned by a rank serves here
		}
		if rc := C.pjgo_mpi_main(); rc != 0 {
			mpiMain.err = goError(StatusIO, -1,
				"pj_mpi_main failed (its reason is on stderr): MPI or pj's MPI backend could not start")
			return
		}
		mpiAttached.Store(true)
	})
	return mpiMain.err
}

// MPIExit ends a program that called MPIMain, on rank 0, with status code: C's exit, whose handler
// (installed by MPIMain) tells the worker ranks to leave and finalizes MPI. Use it instead of
// os.Exit, and instead of returning from main; deferred calls do not run. Before MPIMain has
// succeeded it is os.Exit.
func MPIExit(code int) {
	if !mpiAttached.Load() {
		os.Exit(code)
	}
	C.pjgo_mpi_exit(C.int(code))
}
