// Package pj is joblib's Parallel for Go: it runs a function over many inputs on a pool of worker
// threads, or of worker processes for functions registered by name, with automatic batching, results
// in input order, fail-fast errors that name the failed input, context cancellation and timeouts. It
// wraps libpj, pj's C library (a Rust core), through cgo.
//
//	squares, err := pj.Map(ctx, inputs, func(x float64) (float64, error) {
//		return math.Sqrt(x), nil
//	}, pj.NJobs(-1))
//
// # Calls
//
// Map and MapIndexed return every result at once, in input order. Stream yields results as they are
// ready (in input order, or in completion order with Unordered) as a range-over-func iterator.
// MapCollect runs every input whatever fails and returns one Result per input, with its Value or its
// own Err. MapNamed, MapCollectNamed and StreamNamed run a function registered with Register, by
// default in worker processes (see below), or on the ranks of an MPI job (MPI below). Options take joblib's keywords (NJobs, PreDispatch, BatchSize,
// Verbose, ...) and pj's (OnError, ProgressBar, KeepWorkers); Set takes every key of pj_config_set as
// strings. Timeout, Progress and ChunkSize are handled by this package (by pj for MapNamed). Like
// joblib, n_jobs defaults to 1: pass NJobs(-1) for every CPU.
//
// Some keys are accepted and validated but matter little here: temp_folder and max_nbytes concern
// only the large arguments and results of MapNamed on processes; mmap_mode nothing; keep_workers
// only calls on an Executor (below). handle_sigint is refused (HandleSigint): pj would take SIGINT
// from the Go runtime while a call blocks. Use signal.NotifyContext(ctx, os.Interrupt) and pass that
// ctx: a cancelled context already stops the call (with MapNamed, pj kills the running workers).
//
// # Executors
//
// Each call makes and frees an executor of its own: its worker threads, or worker processes for
// MapNamed, start at the call and end with it. An Executor lives across calls, as pj's executor
// does in C and C++: every call function runs on it with the option On(ex), and its workers serve
// one call after another; with KeepWorkers(true) that includes MapNamed's worker processes, which
// then start once instead of at each call.
//
//	ex, err := pj.NewExecutor(pj.NJobs(-1), pj.KeepWorkers(true))
//	if err != nil {
//		return err
//	}
//	defer ex.Close() // stops the threads, reaps the worker processes
//	for _, batch := range batches {
//		scores, err := pj.MapNamed[Doc, float64](ctx, "score", batch, pj.On(ex))
//		...
//	}
//
// Close it as a *sql.DB or an *os.File is closed: when done with it (a finalizer is only a safety
// net). It is safe for concurrent use, and runs one call at a time (others wait for their turn);
// see Executor for the whole contract.
//
// # Processes: named functions
//
// pj's default backend for C is "processes" with workers forked from the caller. Go code cannot run
// in a forked child (only the forking thread survives, and the Go runtime cannot run without its
// others), and a Go closure cannot travel to another process, so Map, MapIndexed, MapCollect and
// Stream run fn on pj's worker threads ("threads") or on one thread ("sequential"), and refuse the
// process backends with ErrUnsupported.
//
// Functions registered by name run in worker processes: pj's start method "spawn" starts each worker
// afresh from the program's executable, with the caller's arguments and environment, and the
// program turns itself into a worker at the start of main:
//
//	func init() { pj.Register("score", score) } // score: func(Doc) (float64, error)
//
//	func main() {
//		pj.WorkerMainIfRequested() // in a worker: serves tasks, then exits
//		scores, err := pj.MapNamed[Doc, float64](ctx, "score", docs, pj.NJobs(-1))
//		...
//	}
//
// Tests do the same in TestMain (the test binary is re-executed as a worker, and the worker never
// reaches m.Run, so the test flags it inherits do not matter):
//
//	func TestMain(m *testing.M) {
//		pj.WorkerMainIfRequested()
//		os.Exit(m.Run())
//	}
//
// Each input is one pj task: it is encoded with encoding/gob, decoded in a worker, and the result
// comes back the same way, so T and R must suit gob (exported fields, gob.Register for the concrete
// types behind interfaces, no nil pointer as the whole value; see Register). Workers are started at
// each call (a run of the program up to WorkerMainIfRequested: a few milliseconds; once for many
// calls on an Executor with KeepWorkers), and gob costs a few microseconds per small value each
// way (it sends the type's description with each value), so
// processes pay off for work of a millisecond or more per input, or for isolation: a crash (a fault
// outside Go's checks, os.Exit, a signal) kills one worker and gives ErrWorkerDied naming the input,
// and the Timeout option kills the worker running an overdue input. pj's auto batching groups the
// tasks sent to a worker at once. A panic in the function (nil dereferences included) is a task
// failure, as with Map; its *PanicError carries the value as text and the worker's stack. The
// Go-side registry is fixed by WorkerMainIfRequested, and pj checks at each worker's start that its
// registered names are the caller's.
//
// # MPI
//
// Built with the pjmpi tag (go build -tags pjmpi: it compiles pj's MPI shim and links MPI, found
// with pkg-config ompi-c), a program run under mpirun calls MPIMain at the start of main, on every
// rank: the worker ranks serve registered functions there and exit, rank 0 returns and runs them
// on the other ranks with Backend("mpi"), then ends with MPIExit. Without the tag, MPIMain and
// Backend("mpi") fail with ErrUnsupported saying so. See MPIMain.
//
// # Cost and chunks
//
// Each pj task crosses from C into Go (a cgo callback on a thread Go did not create: about 100 ns),
// so the inputs go to pj in chunks of consecutive inputs, one chunk per pj task, and pj's own
// batching works on top. fn is called directly from the chunk's loop; the per-input overhead of Map
// on a trivial fn is a few nanoseconds (see BenchmarkMap1M). ChunkSize overrides the automatic size.
// MapNamed does not chunk: each input is one pj task (its gob encoding dwarfs the task's cost).
//
// # Errors and panics
//
// Failures are *Error values: Status, the input's TaskIndex, a one-line Message, a multi-line Report,
// and the cause (fn's error, or a *PanicError) for errors.Is and errors.As. Each status has a
// sentinel: errors.Is(err, pj.ErrTimeout). A panic in fn never unwinds into C: every Go function pj
// calls recovers it, the call fails fast, and the *Error names the input and the panic value. With
// MapNamed on processes, fn's error itself stays in the worker: the cause is an error with its text.
// A cancelled context gives ctx.Err(). A nil ctx or a nil fn gives an *Error with
// ErrInvalidArgument before anything starts.
//
// With OnError("collect") (pj's on_error) failures do not stop the call: every input runs, and each
// failed input gets its own *Error: in its Result with MapCollect, yielded in its turn by Stream, or
// joined (errors.Join, in input order) into the error Map returns along with every value. pj only
// sees chunks of inputs, so this package catches fn's errors and panics per input itself rather than
// through pj's per-task statuses. A done context, a timeout or an internal failure still ends the
// whole call. MapNamed hands on_error to pj as it is (one task per input), so there a timeout or a
// dead worker is also the input's own failure, and the call goes on.
//
// # Stopping early
//
// A call that fails or is cancelled starts no new input, but Go cannot interrupt a function that
// is running, and a failing call returns only once the calls of fn already running have returned.
// A long function can return early instead: MapContext (likewise MapIndexedContext,
// MapCollectContext and StreamContext) passes fn a context that is done once the call stops (ctx
// done, another input failed, a timeout, the stream's loop was left, or the call returned);
// RegisterContext
// registers a named function that gets a context done once pj says its call is stopping
// (pj_out_cancelled: its ctx.Err() asks pj with one atomic load, so it can be polled in a loop, and
// its Done channel is served by a goroutine that polls every millisecond, started at its first
// use). On processes a failure or a cancellation kills the running workers anyway. What a function
// returns after its context is done is discarded, and an error it returns then is not taken for
// the call's cause.
//
// # Finding libpj
//
// By default the package builds against this repository: the header in ../../include (generated by
// `cargo build`) and libpj.so in ../../target/release (run `cargo build --release` first), with an
// rpath to it, so tests and binaries need no LD_LIBRARY_PATH. Before that build, compiling the
// package stops with an error that says to run it. With the build tag pkgconfig the flags come from
// an installed pj.pc instead (`go build -tags pkgconfig`, PKG_CONFIG_PATH if needed).
//
// The module path is github.com/pj-parallel/pj/bindings/go (package name pj). Since it needs libpj,
// another module uses it from a checkout of pj, with a replace directive or a go.work file; see the
// README next to this file.
package pj
