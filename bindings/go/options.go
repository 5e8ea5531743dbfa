package pj

/*
#include <stdlib.h>
#include "pj_header.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// An Option configures one call of Map, MapIndexed, MapCollect, Stream, MapNamed or MapCollectNamed.
// Most options set the joblib keyword of the same name, with joblib's spellings, and are validated by
// pj when the call starts: a bad value makes the call return an *Error with ErrInvalidArgument whose
// message quotes it. For Map and its siblings, Timeout, Progress and ChunkSize are handled on the Go
// side, and so is OnError (validated by pj, carried out by this package); for MapNamed they are pj's
// own (see MapNamed). HandleSigint(true) and the fork start method are refused.
//
// Options are made by the functions of this package that return one (NJobs, Backend, ..., Set); a nil
// Option is ignored. String describes an option as it was written, e.g. "NJobs(4)".
type Option interface {
	// String is the option as written in Go, e.g. `NJobs(4)` or `Set("batch_size", "auto")`.
	String() string
	apply(s *settings)
}

// option is every Option: its description and what it does to a call's settings.
type option struct {
	desc string
	fn   func(*settings)
}

func (o option) String() string    { return o.desc }
func (o option) apply(s *settings) { o.fn(s) }

func newOption(desc string, fn func(*settings)) Option { return option{desc, fn} }

type keyValue struct{ key, value string }

// settings is what a call's options amount to.
type settings struct {
	kv      []keyValue // pj keywords, applied in order, before the backend this package decides
	backend string     // the last backend named: "", "threads", "sequential" or "processes"
	// The first option that names a process backend: Map and its siblings refuse it (they run Go
	// closures, which cannot travel to another process); MapNamed accepts it.
	processes *Error
	timeout   time.Duration
	progress  func(done, total int, elapsed time.Duration)
	chunk     int       // inputs per pj task; 0: automatic
	collect   bool      // on_error "collect": every input runs, each failure is the input's own
	err       error     // the first invalid option
	stopped   func()    // MapContext: cancels the functions' context when the call stops early
	exec      *Executor // On: the Executor the call runs on (nil: an executor of the call's own)
}

func newSettings(opts []Option) *settings {
	for _, opt := range opts {
		if on, ok := opt.(onOption); ok && on.ex != nil {
			return executorSettings(on.ex, opts)
		}
	}
	s := &settings{}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(s)
		}
	}
	return s
}

func (s *settings) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

func (s *settings) set(key, value string) { s.kv = append(s.kv, keyValue{key, value}) }

// trimASCII trims what pj trims from an option value: ASCII whitespace (Rust's is_ascii_whitespace).
func trimASCII(value string) string { return strings.Trim(value, " \t\n\f\r") }

// NJobs sets n_jobs, the number of worker threads: a positive number, or negative for "all CPUs but
// |n|-1" (-1: every CPU pj may use, see CPUCount). As in joblib the default is 1: the inputs run one
// after another on a single thread. 0 is an error.
func NJobs(n int) Option {
	return newOption(fmt.Sprintf("NJobs(%d)", n), func(s *settings) { s.set("n_jobs", strconv.Itoa(n)) })
}

// Backend names the backend: "threads" (alias "threading"), "sequential" (every input on one thread,
// whatever n_jobs says) or "processes" (aliases "loky", "multiprocessing"). "none" restores the
// default: "threads" for Map, MapIndexed, MapCollect and Stream; "processes" for MapNamed and
// MapCollectNamed.
//
// The process backends run only functions registered with Register, through MapNamed or
// MapCollectNamed, in worker processes started afresh from the program's executable (pj's start
// method "spawn", which this package always uses: Go code cannot run in a forked child). Map and its
// siblings run closures, which cannot travel to another process: with a process backend they fail
// with ErrUnsupported.
func Backend(name string) Option {
	return newOption(fmt.Sprintf("Backend(%q)", name), func(s *settings) {
		switch trimmed := strings.TrimSpace(name); trimmed {
		case "processes", "loky", "multiprocessing":
			s.backend = "processes"
			s.refuseProcesses("backend", name)
			s.set("backend", name)
		case "none", "None":
			s.backend = "" // the call's own default, set last by config
		case "threads", "threading":
			s.backend = "threads"
			s.set("backend", name)
		case "mpi":
			if !mpiBuilt {
				s.fail(errNoMPI(fmt.Sprintf("backend %q", name)))
				return
			}
			s.backend = "mpi"
			if s.processes == nil {
				s.processes = goError(StatusUnsupported, -1, fmt.Sprintf(
					"backend %q is not available to Map, MapIndexed, MapCollect and Stream: their "+
						"function is a Go closure, which cannot run on another rank; register the "+
						"function with pj.Register from an init function and call pj.MapNamed, "+
						"pj.MapCollectNamed or pj.StreamNamed", name))
			}
			s.set("backend", name)
		case "sequential":
			s.backend = "sequential"
			s.set("backend", name)
		default:
			s.set("backend", name) // pj quotes it in its error
		}
	})
}

// Prefer sets joblib's soft backend hint: "threads", "processes" or "none". This package always names
// the backend it uses, so the hint does not change which one runs; Map and its siblings refuse
// "processes" with ErrUnsupported, as for Backend.
func Prefer(hint string) Option {
	return newOption(fmt.Sprintf("Prefer(%q)", hint), func(s *settings) {
		if strings.TrimSpace(hint) == "processes" {
			s.refuseProcesses("prefer", hint)
		}
		s.set("prefer", hint)
	})
}

// refuseProcesses records the first option that names a process backend, for Map and its siblings.
func (s *settings) refuseProcesses(key, value string) {
	if s.processes != nil {
		return
	}
	s.processes = goError(StatusUnsupported, -1, fmt.Sprintf(
		"%s %q is not available to Map, MapIndexed, MapCollect and Stream: their function is a Go "+
			"closure, which cannot run in another process (and Go code cannot run in a forked "+
			"child); register the function with pj.Register from an init function and call "+
			"pj.MapNamed (or pj.MapCollectNamed), which run it in worker processes started afresh "+
			"from this program (start method \"spawn\"), or use the \"threads\" backend (the "+
			"default here) or \"sequential\"", key, value))
}

// errNoMPI is the error of MPIMain and Backend("mpi") in a build without the pjmpi tag.
func errNoMPI(what string) error {
	return goError(StatusUnsupported, -1, what+" needs pj's MPI backend, which this program was "+
		"built without: build it with `go build -tags pjmpi` (which compiles pj's MPI shim, "+
		"pj_mpi_main, and links MPI), call pj.MPIMain() at the start of main, and run it under mpirun")
}

// startMethod is Set("start_method", value): "spawn" is what this package always uses for the process
// backends; "fork" and "forkserver" are refused (Go code cannot run in a forked child, and a fork
// server's workers are forks of a fork of this process); anything else is pj's to validate.
func startMethod(value string) Option {
	return newOption(fmt.Sprintf("Set(\"start_method\", %q)", value), func(s *settings) {
		if v := trimASCII(value); v == "fork" || v == "forkserver" {
			s.fail(goError(StatusUnsupported, -1, fmt.Sprintf(
				"start_method %q is not available from Go: only the forking thread survives a fork, "+
					"and the Go runtime cannot run without its other threads; the process backends "+
					"of MapNamed always use \"spawn\"", value)))
			return
		}
		s.set("start_method", value)
	})
}

// Require sets joblib's hard constraint: "sharedmem" (always met by the threads and sequential
// backends) or "none".
func Require(constraint string) Option {
	return newOption(fmt.Sprintf("Require(%q)", constraint), func(s *settings) { s.set("require", constraint) })
}

// Verbose sets joblib's verbosity level (0, the default, is silent; negative levels are an error).
// pj's joblib-format progress lines count pj tasks, each a chunk of inputs (see ChunkSize); the
// Progress option counts inputs.
func Verbose(level int) Option {
	return newOption(fmt.Sprintf("Verbose(%d)", level), func(s *settings) { s.set("verbose", strconv.Itoa(level)) })
}

// Timeout limits each call of fn to d of wall-clock time, counted from its start. When a call runs
// longer, Map (or Stream) stops starting new calls and returns at once an *Error with ErrTimeout
// naming the input. Go cannot interrupt a goroutine: the overdue call keeps running in the background
// until it returns, and its result is discarded. d must be positive.
//
// The limit is enforced by the Go side, per input (pj's own timeout would count whole chunks); it is
// checked every d/10 (at least every millisecond, at most every quarter second).
//
// MapNamed hands it to pj, whose tasks are its inputs: on processes the worker running an overdue
// input is killed (so nothing keeps running), and with OnError("collect") the timeout is that input's
// own failure while the others go on. With one worker (n_jobs 1) pj enforces no timeout and prints a
// warning, as joblib does.
func Timeout(d time.Duration) Option {
	return newOption(fmt.Sprintf("Timeout(%v)", d), func(s *settings) {
		if d <= 0 {
			s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid timeout \"%v\": expected a positive duration", d)))
			return
		}
		s.timeout = d
	})
}

// PreDispatch sets joblib's pre_dispatch: how many pj tasks are in flight ahead of completions,
// "all", a number, or an expression in n_jobs such as "2*n_jobs" (the default).
func PreDispatch(expr string) Option {
	return newOption(fmt.Sprintf("PreDispatch(%q)", expr), func(s *settings) { s.set("pre_dispatch", expr) })
}

// BatchSize sets joblib's batch_size to a fixed number of pj tasks per batch, n from 1 to 1048576
// (2^20; pj refuses other values with ErrInvalidArgument). Each pj task is a chunk of inputs (see
// ChunkSize), so a batch holds n × chunk inputs. The default is BatchSizeAuto.
func BatchSize(n int) Option {
	return newOption(fmt.Sprintf("BatchSize(%d)", n), func(s *settings) { s.set("batch_size", strconv.Itoa(n)) })
}

// BatchSizeAuto sets joblib's batch_size "auto", the default: joblib's adaptive heuristic, which
// sizes batches from the measured duration of the previous ones.
func BatchSizeAuto() Option {
	return newOption("BatchSizeAuto()", func(s *settings) { s.set("batch_size", "auto") })
}

// StackSize sets pj's stack_size: the stack of pj's worker threads, in bytes (64 KiB to 1 GiB; pj
// refuses other values with ErrInvalidArgument). The default (Set("stack_size", "none")) is the
// caller's RLIMIT_STACK. Go functions run on goroutine stacks, which grow on their own, so it matters
// only to deep C code called through cgo from fn; workers of MapNamed (spawned processes) run on
// their main thread, with RLIMIT_STACK.
func StackSize(bytes int64) Option {
	return newOption(fmt.Sprintf("StackSize(%d)", bytes), func(s *settings) {
		s.set("stack_size", strconv.FormatInt(bytes, 10))
	})
}

// MaxTasksPerChild sets pj's max_tasks_per_child (concurrent.futures' name): a worker process of
// MapNamed is replaced, silently, after running n pj tasks (n >= 1; pj refuses other values with
// ErrInvalidArgument). Each pj task of MapNamed is one input. Unset (Set("max_tasks_per_child",
// "none")) means never. Map and its siblings run on threads, which it does not concern.
func MaxTasksPerChild(n int) Option {
	return newOption(fmt.Sprintf("MaxTasksPerChild(%d)", n), func(s *settings) {
		s.set("max_tasks_per_child", strconv.Itoa(n))
	})
}

// WorkerMemoryLimit sets pj's worker_memory_limit in bytes (loky's memory-leak protection): a worker
// process of MapNamed whose resident memory exceeds it after a batch is replaced, silently, before
// its next batch (bytes >= 1; pj refuses other values with ErrInvalidArgument). Unset
// (Set("worker_memory_limit", "none")) means no limit; Set takes "512M"-style sizes. Map and its
// siblings run on threads, which it does not concern.
func WorkerMemoryLimit(bytes int64) Option {
	return newOption(fmt.Sprintf("WorkerMemoryLimit(%d)", bytes), func(s *settings) {
		s.set("worker_memory_limit", strconv.FormatInt(bytes, 10))
	})
}

// IdleWorkerTimeout sets pj's idle_worker_timeout (loky's name; default 300 s): a worker process of
// MapNamed that had no work for d exits, and the next call starts a new one. It matters with
// Set("keep_workers", "true"), whose workers otherwise wait between calls. d must be positive (pj
// refuses other values with ErrInvalidArgument); Set("idle_worker_timeout", "none") keeps idle
// workers forever. Map and its siblings run on threads, which it does not concern.
func IdleWorkerTimeout(d time.Duration) Option {
	return newOption(fmt.Sprintf("IdleWorkerTimeout(%v)", d), func(s *settings) {
		s.set("idle_worker_timeout", strconv.FormatFloat(d.Seconds(), 'g', -1, 64))
	})
}

// TempFolder sets joblib's temp_folder (where memory-mapped files go). It is validated now; it
// matters only to the process backends of MapNamed (arguments and results larger than max_nbytes).
func TempFolder(path string) Option {
	return newOption(fmt.Sprintf("TempFolder(%q)", path), func(s *settings) { s.set("temp_folder", path) })
}

// MaxNbytes sets joblib's max_nbytes in bytes (default 1 MiB; 0 memory-maps every argument and
// result; negative values are refused with ErrInvalidArgument): encoded inputs and results of
// MapNamed on processes larger than this travel through memory-mapped files. No effect with threads.
// MaxNbytesNone turns memory-mapping off; Set("max_nbytes", "1M") takes joblib's spellings.
func MaxNbytes(bytes int64) Option {
	return newOption(fmt.Sprintf("MaxNbytes(%d)", bytes), func(s *settings) {
		s.set("max_nbytes", strconv.FormatInt(bytes, 10))
	})
}

// MaxNbytesNone sets joblib's max_nbytes None: nothing is memory-mapped, every input and result of
// MapNamed on processes is copied through the worker's socket.
func MaxNbytesNone() Option {
	return newOption("MaxNbytesNone()", func(s *settings) { s.set("max_nbytes", "none") })
}

// MmapMode sets joblib's mmap_mode ("r", "r+", "w+", "c", "none"). Validated; no effect on this package's
// calls (MapNamed decodes each input into a Go value of its own).
func MmapMode(mode string) Option {
	return newOption(fmt.Sprintf("MmapMode(%q)", mode), func(s *settings) { s.set("mmap_mode", mode) })
}

// ReturnAs sets joblib's return_as. Stream yields results in input order for "list" and "generator"
// (the default), and in completion order for "generator_unordered". Map, MapIndexed and MapCollect
// always return their slice in input order.
func ReturnAs(mode string) Option {
	return newOption(fmt.Sprintf("ReturnAs(%q)", mode), func(s *settings) { s.set("return_as", mode) })
}

// Unordered is ReturnAs("generator_unordered"): Stream yields each result as soon as it is ready.
func Unordered() Option {
	return newOption("Unordered()", ReturnAs("generator_unordered").apply)
}

// KeepWorkers sets pj's keep_workers, which keeps worker processes alive across the calls of one pj
// executor: give it to NewExecutor, and the calls of MapNamed made with On(ex) reuse the same
// worker processes until ex.Close. A call without an Executor has an executor of its own, so there
// it has no effect: MapNamed then starts its worker processes at each call.
func KeepWorkers(keep bool) Option {
	return newOption(fmt.Sprintf("KeepWorkers(%t)", keep), func(s *settings) { s.set("keep_workers", strconv.FormatBool(keep)) })
}

// OnError sets pj's on_error: "raise" (the default, joblib's behaviour: the first input whose fn
// fails or panics stops the call) or "collect" (every input runs, and each failure is that input's
// own outcome; "none" means "raise"). pj validates the value; this package carries it out, since pj
// only sees chunks of inputs (see ChunkSize) while fn's errors and panics are caught per input on
// the Go side.
//
// With "collect", MapCollect is the natural call: one Result per input, with its Value or its Err.
// Map and MapIndexed then return the whole result slice, with the zero value at each failed input,
// and, when some inputs failed, an error that joins their *Error values in input order (errors.Join:
// errors.Is(err, ErrTaskFailed) holds, and errors.Is and errors.As see each input's cause). Stream
// yields each failed input as (Result{Index: i, Err: e}, e) and goes on.
//
// Only fn's own failures are collected. A done context, a call of fn past the Timeout (Go cannot
// abandon a running function, so the rest of its chunk could not run) and internal failures still
// end the whole call, as with "raise", and then no result is returned: calls of fn may still be
// running and writing theirs.
//
// MapNamed hands on_error to pj as it is (each input is one pj task): under "collect" an input's
// error, panic, timeout or crash (its worker died) is that input's own failure, and the call goes on.
func OnError(mode string) Option {
	return newOption(fmt.Sprintf("OnError(%q)", mode), func(s *settings) {
		s.collect = trimASCII(mode) == "collect"
		s.set("on_error", mode) // validated by pj; config always hands pj "raise" in the end
	})
}

// ProgressBar turns pj's progress bar on stderr on (pj's progress="bar") or off (the default): a bar
// with counts, percentage, rate, elapsed time and ETA, redrawn in place on a terminal (fitted to its
// width), a plain line every 2 s otherwise, and always a final line when the call ends ("stopped"
// when the call failed or was cancelled). It counts inputs, with the total known from the start:
// this package announces the call's size to pj (pj_parallel_expect), and with the bar on, automatic
// chunks all have one size (the largest automatic size) so that pj can count their inputs. It is
// drawn by the thread that drives the pj call; Progress, which also counts inputs, is independent
// of it. Verbose's lines count pj tasks (chunks), as joblib counts its tasks.
func ProgressBar(on bool) Option {
	return newOption(fmt.Sprintf("ProgressBar(%t)", on), func(s *settings) {
		if on {
			s.set("progress", "bar")
		} else {
			s.set("progress", "none")
		}
	})
}

// HandleSigint(true) is refused with ErrInvalidArgument: pj's handle_sigint would replace the Go
// runtime's SIGINT handler while a call blocks (and signal.Notify would stop seeing Ctrl-C). Cancel
// the call with its context instead, which already stops it at once:
//
//	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
//	defer stop()
//	out, err := pj.Map(ctx, inputs, fn, pj.NJobs(-1)) // err == context.Canceled after Ctrl-C
//
// HandleSigint(false) is accepted and changes nothing: this package never lets pj handle SIGINT.
func HandleSigint(on bool) Option {
	return handleSigint(fmt.Sprintf("HandleSigint(%t)", on), strconv.FormatBool(on))
}

// handleSigint is HandleSigint and Set("handle_sigint", value): pj's false spellings are passed on
// (harmless), anything else is either invalid (pj's own error, which quotes it) or means true and is
// refused.
func handleSigint(desc, value string) Option {
	return newOption(desc, func(s *settings) {
		switch trimASCII(value) {
		case "false", "False", "0", "no":
			s.set("handle_sigint", value)
			return
		}
		if strings.ContainsRune(value, 0) {
			s.set("handle_sigint", value) // config reports the NUL byte
			return
		}
		if err := checkOption("handle_sigint", value); err != nil {
			s.fail(err)
			return
		}
		s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
			"handle_sigint %q is not available from Go: pj would replace the Go runtime's SIGINT "+
				"handler while a call blocks; use ctx, stop := signal.NotifyContext(ctx, os.Interrupt) "+
				"and pass that ctx: a cancelled context stops the call, which returns ctx.Err()", value)))
	})
}

// checkOption asks pj whether it accepts key = value (on a scratch config), and returns its error.
func checkOption(key, value string) error {
	var cfg *C.pj_config_t
	if status := C.pj_config_new(&cfg); status != C.PJ_STATUS_OK {
		return statusError(status, "pj_config_new", -1)
	}
	defer C.pj_config_free(cfg)
	return setOption(cfg, key, value)
}

// setOption is pj_config_set with Go strings (free of NUL bytes).
func setOption(cfg *C.pj_config_t, key, value string) error {
	ckey, cvalue := C.CString(key), C.CString(value)
	defer C.free(unsafe.Pointer(ckey))
	defer C.free(unsafe.Pointer(cvalue))
	var err *C.pj_error_t
	if status := C.pj_config_set(cfg, ckey, cvalue, &err); status != C.PJ_STATUS_OK {
		return takeError(status, err)
	}
	return nil
}

// Progress registers a callback that reports progress: done inputs (completed, in any order; with
// OnError("collect") failed ones count as done) of total, and the time since the call started. It
// runs on the goroutine that called Map, MapIndexed, MapCollect or Stream (never concurrently with
// itself), as results arrive: at most once per completed chunk, and, when the call succeeds, a last
// time with done == total. A panic in it propagates to that goroutine as usual, after the call has
// been told to stop. With MapNamed it also runs on the calling goroutine, fed by pj's progress
// callback (one pj task per input).
func Progress(fn func(done, total int, elapsed time.Duration)) Option {
	return newOption("Progress(fn)", func(s *settings) { s.progress = fn })
}

// ChunkSize sets how many consecutive inputs one pj task carries (default: automatic). Each pj task
// costs a C-to-Go transition plus pj's bookkeeping (together about half a microsecond), so this
// package hands the inputs to pj in chunks, and pj batches the chunks as joblib batches tasks.
// Automatic chunks start at one input and double until one has completed (so the first results come
// quickly whatever fn costs), then aim at about a millisecond of work each, measured as the call
// goes, and stay small enough to give each worker about 32 of them. Use ChunkSize(1) for one
// pj task per input. n must be at least 1. MapNamed ignores it: each of its inputs is one pj task.
func ChunkSize(n int) Option {
	return newOption(fmt.Sprintf("ChunkSize(%d)", n), func(s *settings) {
		if n < 1 {
			s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid chunk size \"%d\": expected at least 1 input per task", n)))
			return
		}
		s.chunk = n
	})
}

// Set sets an option from strings, with joblib's keywords and spellings, for options that come from
// flags, files or the environment. It takes every key pj_config_set takes, each behaving as its
// typed option above:
//
//   - "n_jobs", "backend", "prefer", "require", "verbose", "pre_dispatch", "batch_size",
//     "return_as": as in joblib (Map and its siblings refuse the process backends, see Backend);
//   - "timeout": seconds, or "none" (see Timeout);
//   - "on_error": "raise" or "collect" (see OnError);
//   - "progress": "bar" or "none" (see ProgressBar);
//   - "handle_sigint": "false" only; "true" is refused (see HandleSigint);
//   - "start_method": "spawn", which the process backends of MapNamed always use; "fork" and
//     "forkserver" are refused with ErrUnsupported (Go code cannot run in a forked child);
//   - "stack_size": see StackSize;
//   - "batch_bytes": bytes, "16M"-style sizes or "none" (16M): the most argument plus result
//     bytes an automatically sized batch takes;
//   - "max_tasks_per_child", "worker_memory_limit" ("512M"-style sizes), "idle_worker_timeout"
//     (seconds): see MaxTasksPerChild, WorkerMemoryLimit and IdleWorkerTimeout; "none" is each
//     one's unlimited value;
//   - "temp_folder", "max_nbytes", "mmap_mode", "keep_workers": validated; they concern worker
//     processes and memory-mapped data, i.e. at most the process backends of MapNamed.
//
// An unknown key is an ErrInvalidArgument error whose message lists the known ones.
func Set(key, value string) Option {
	return newOption(fmt.Sprintf("Set(%q, %q)", key, value), func(s *settings) {
		switch key {
		case "backend":
			Backend(value).apply(s)
		case "prefer":
			Prefer(value).apply(s)
		case "on_error":
			OnError(value).apply(s)
		case "handle_sigint":
			handleSigint("", value).apply(s)
		case "start_method":
			startMethod(value).apply(s)
		case "timeout":
			d, err := parseTimeout(value)
			if err != nil {
				s.fail(err)
				return
			}
			s.timeout = d
		default:
			s.set(key, value)
		}
	})
}

// parseTimeout reads joblib's timeout spelling: seconds (positive, finite or +Inf), or "none".
func parseTimeout(value string) (time.Duration, error) {
	if value == "none" || value == "None" {
		return 0, nil
	}
	seconds, err := strconv.ParseFloat(value, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange):
		return 0, goError(StatusInvalidArgument, -1, fmt.Sprintf(
			"invalid timeout %q: expected a number of seconds or \"none\"", value))
	case math.IsNaN(seconds) || seconds <= 0:
		return 0, goError(StatusInvalidArgument, -1, fmt.Sprintf(
			"invalid timeout %q: expected a positive number of seconds or \"none\"", value))
	case seconds >= math.MaxInt64/float64(time.Second):
		return 0, nil // beyond a Duration: no limit in practice
	}
	return max(time.Duration(seconds*float64(time.Second)), 1), nil
}

// callKind is what a call runs: Go closures in this process (Map, MapIndexed, MapCollect, Stream), or
// functions registered by name (MapNamed, MapCollectNamed), which may run in other processes.
type callKind int

const (
	closures callKind = iota
	named
)

// backendFor is the backend pj runs a call of that kind on: the one named by the options, else
// "threads" for closures and "processes" for named functions.
func (s *settings) backendFor(kind callKind) string {
	switch {
	case s.backend == "sequential" || s.backend == "threads" || s.backend == "mpi":
		return s.backend
	case kind == named:
		return "processes"
	}
	return "threads"
}

// config is a pj_config_t for a call of Map and its siblings; see configFor.
func (s *settings) config() (*C.pj_config_t, error) { return s.configFor(closures) }

// configFor is a pj_config_t built from the settings for a call of that kind: every keyword in the
// order given, then what this package decides: the backend (and start method "spawn" with
// processes), on_error and handle_sigint, and for named functions the timeout. The caller frees it
// with C.pj_config_free.
func (s *settings) configFor(kind callKind) (*C.pj_config_t, error) {
	if s.err != nil {
		return nil, s.err
	}
	if kind == closures && s.processes != nil {
		return nil, s.processes
	}
	var cfg *C.pj_config_t
	if status := C.pj_config_new(&cfg); status != C.PJ_STATUS_OK {
		return nil, statusError(status, "pj_config_new", -1)
	}
	for _, kv := range s.kv {
		if strings.ContainsRune(kv.key, 0) || strings.ContainsRune(kv.value, 0) {
			C.pj_config_free(cfg)
			return nil, goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid option %q = %q: contains a NUL byte", kv.key, kv.value))
		}
		if err := setOption(cfg, kv.key, kv.value); err != nil {
			C.pj_config_free(cfg)
			return nil, err
		}
	}
	// Go code cannot run in a forked child: threads or sequential for closures; processes only with
	// the spawn start method, for named functions. This also overrides scoped defaults.
	backend := s.backendFor(kind)
	final := []keyValue{{"backend", backend}}
	if backend == "processes" {
		final = append(final, keyValue{"start_method", "spawn"})
	}
	// Closures: on_error was validated above and is carried out on the Go side: pj sees chunks of
	// inputs, and a chunk succeeds even when some of its inputs failed under "collect", so pj always
	// raises (on the trampoline's own failures). Named functions: one pj task per input, so pj's
	// on_error applies as it is. pj never handles SIGINT here: it would take the signal from the Go
	// runtime (handleSigint refuses "true"; this also overrides a scoped default).
	onError := "raise"
	if kind == named && s.collect {
		onError = "collect"
	}
	final = append(final, keyValue{"on_error", onError}, keyValue{"handle_sigint", "false"})
	if kind == named && s.timeout > 0 {
		// One pj task per input: pj's timeout is per input, and on processes it kills the worker.
		final = append(final, keyValue{"timeout", strconv.FormatFloat(s.timeout.Seconds(), 'g', -1, 64)})
	}
	for _, kv := range final {
		if err := setOption(cfg, kv.key, kv.value); err != nil {
			C.pj_config_free(cfg)
			return nil, err
		}
	}
	return cfg, nil
}

// open creates the pj executor of a call of Map and its siblings and returns it with its number of
// workers.
func (s *settings) open() (*C.pj_parallel_t, int, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, 0, err
	}
	defer C.pj_config_free(cfg)
	return openConfig(cfg)
}

// openConfig creates an executor from cfg and returns it with its number of workers.
func openConfig(cfg *C.pj_config_t) (*C.pj_parallel_t, int, error) {
	workers := int(C.pj_effective_n_jobs(cfg))
	var par *C.pj_parallel_t
	var cerr *C.pj_error_t
	if status := C.pj_parallel_new(cfg, &par, &cerr); status != C.PJ_STATUS_OK {
		return nil, 0, takeError(status, cerr)
	}
	return par, max(workers, 1), nil
}

// backendName is the backend of a call of Map and its siblings as reports name it.
func (s *settings) backendName(workers int) string {
	if s.backend == "sequential" || workers <= 1 {
		return "sequential"
	}
	return "threads"
}

// EffectiveNJobs is the number of workers (threads, or processes for MapNamed with a process backend)
// a call with these options would use (joblib's effective_n_jobs): 1 unless NJobs says otherwise, and
// 1 for the sequential backend.
func EffectiveNJobs(opts ...Option) (int, error) {
	s := newSettings(opts)
	kind := closures
	if s.backend == "processes" || s.backend == "mpi" {
		kind = named
	}
	cfg, err := s.configFor(kind)
	if err != nil {
		return 0, err
	}
	defer C.pj_config_free(cfg)
	n := int(C.pj_effective_n_jobs(cfg))
	if n == 0 {
		// The options cannot be resolved (e.g. inconsistent): pj_parallel_new says why.
		var par *C.pj_parallel_t
		var cerr *C.pj_error_t
		if status := C.pj_parallel_new(cfg, &par, &cerr); status != C.PJ_STATUS_OK {
			return 0, takeError(status, cerr)
		}
		C.pj_parallel_free(par)
		return 0, goError(StatusInvalidArgument, -1, "the options cannot be resolved")
	}
	return n, nil
}

// CPUCount is the number of CPUs pj may use: the smallest of the online CPUs, the process's affinity
// mask, its cgroup CPU quota and the PJ_MAX_CPU_COUNT environment variable; at least 1.
func CPUCount() int { return int(C.pj_cpu_count()) }

// Version is the version of the pj library in use, e.g. "0.1.0".
func Version() string { return C.GoString(C.pj_version()) }
