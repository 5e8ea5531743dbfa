// Command mpi runs registered Go functions on the ranks of an MPI job (pj's backend "mpi"):
//
//	go build -tags pjmpi -o mpi_go ./examples/mpi
//	mpirun -n 3 ./mpi_go   # rank 0 runs main; ranks 1 and 2 compute
//
// Built without the pjmpi tag it says so and exits with status 1. ctest runs it under mpiexec
// (examples/mpi/CMakeLists.txt: mpi_example_go) and compares its output with mpi_go.expected.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	pj "github.com/pj-parallel/pj/bindings/go"
)

// placed is a result with the MPI rank that computed it (Open MPI and MPICH name it in the
// environment of every process of the job, the ranks' worker processes included), and whether the
// process that ran it started its Go runtime itself (a worker rank runs tasks in a copy of the
// program it spawns: Go cannot run in a forked child, which would share its parent's initPid).
type placed struct {
	Square int
	Rank   int
	Fresh  bool
}

// initPid is the pid of the process that ran this program's initialization.
var initPid = os.Getpid()

func rank() int {
	for _, key := range []string{"OMPI_COMM_WORLD_RANK", "PMI_RANK"} {
		if r, err := strconv.Atoi(os.Getenv(key)); err == nil {
			return r
		}
	}
	return -1
}

func init() {
	// Every rank registers the same functions, from init.
	pj.Register("example.square", func(x int) (placed, error) {
		return placed{Square: x * x, Rank: rank(), Fresh: os.Getpid() == initPid}, nil
	})
	pj.Register("example.checked", func(x int) (int, error) {
		if x == 3 {
			return 0, errors.New("3 is not welcome")
		}
		if x == 5 {
			panic("5 panics")
		}
		return x * 10, nil
	})
}

func main() {
	if err := pj.MPIMain(); err != nil { // worker ranks serve inside and never return
		fmt.Fprintln(os.Stderr, "mpi_go:", err)
		os.Exit(1)
	}
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "mpi_go:", err)
		pj.MPIExit(1)
	}
	pj.MPIExit(0) // rank 0 ends here: the worker ranks leave, MPI is finalized
}

func run(ctx context.Context) error {
	mpi := pj.Backend("mpi")
	elsewhere := true
	out, err := pj.MapNamed[int, placed](ctx, "example.square", []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, mpi)
	if err != nil {
		return err
	}
	fmt.Print("MapNamed squares:")
	for _, p := range out {
		fmt.Print(" ", p.Square)
		elsewhere = elsewhere && p.Rank > 0 && p.Fresh
	}
	fmt.Println()

	fmt.Print("StreamNamed squares:")
	for r, err := range pj.StreamNamed[int, placed](ctx, "example.square", []int{10, 11, 12, 13}, mpi) {
		if err != nil {
			return err
		}
		fmt.Printf(" %d:%d", r.Index, r.Value.Square)
		elsewhere = elsewhere && r.Value.Rank > 0 && r.Value.Fresh
	}
	fmt.Println()
	fmt.Println("every task ran on a worker rank, in a spawned copy of the program:", elsewhere)

	// A failure names its input; with OnError("collect") every input is yielded in its turn.
	_, err = pj.MapNamed[int, int](ctx, "example.checked", []int{1, 2, 3}, mpi)
	var e *pj.Error
	if !errors.As(err, &e) || !errors.Is(err, pj.ErrTaskFailed) {
		return fmt.Errorf("want a task failure, got %v", err)
	}
	fmt.Printf("MapNamed failure: input %d: %s\n", e.TaskIndex, e.Message)
	for r, err := range pj.StreamNamed[int, int](ctx, "example.checked", []int{1, 3, 5, 7}, mpi, pj.OnError("collect")) {
		var p *pj.PanicError
		switch {
		case errors.As(err, &p):
			fmt.Printf("  %d: panicked: %v\n", r.Index, p.Value)
		case err != nil && r.Index >= 0:
			fmt.Printf("  %d: failed: %v\n", r.Index, err)
		case err != nil:
			return err
		default:
			fmt.Printf("  %d: %d\n", r.Index, r.Value)
		}
	}
	return nil
}
