package pj

/*
#include <stdlib.h>
#include "pj.h"
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

// An Option configures one call of Map, MapIndexed, MapCollect or Stream. Most options set the joblib
// keyword of the same name, with joblib's spellings, and are validated by pj when the call starts: a
// bad value makes the call return an *Error with ErrInvalidArgument whose message quotes it. Timeout,
// Progress and ChunkSize are handled on the Go side, and so is OnError (validated by pj, carried out
// by this package); HandleSigint(true) is refused.
type Option func(*settings)

type keyValue struct{ key, value string }

// settings is what a call's options amount to.
type settings struct {
	kv         []keyValue // pj keywords, applied in order after backend=threads
	sequential bool       // the backend named is "sequential"
	timeout    time.Duration
	progress   func(done, total int, elapsed time.Duration)
	chunk      int   // inputs per pj task; 0: automatic
	collect    bool  // on_error "collect": every input runs, each failure is the input's own
	err        error // the first invalid option
}

func newSettings(opts []Option) *settings {
	s := &settings{}
	for _, opt := range opts {
		if opt != nil {
			opt(s)
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
	return func(s *settings) { s.set("n_jobs", strconv.Itoa(n)) }
}

// Backend names the backend: "threads" (alias "threading"; the default for Go) or "sequential" (every
// input on one thread, whatever n_jobs says). "none" restores the default. The process backends
// ("processes", "loky", "multiprocessing", pj's default for C) are refused with ErrUnsupported: Go
// code cannot run in a forked worker process.
func Backend(name string) Option {
	return func(s *settings) {
		trimmed := strings.TrimSpace(name)
		switch trimmed {
		case "processes", "loky", "multiprocessing":
			s.fail(processesRefused("backend", name))
		case "none", "None":
			s.sequential = false
			s.set("backend", "threads")
		default:
			s.sequential = trimmed == "sequential"
			s.set("backend", name)
		}
	}
}

// Prefer sets joblib's soft backend hint: "threads" or "none". "processes" is refused with
// ErrUnsupported, as for Backend. (The Go wrapper always names its backend, so the hint does not
// change which one runs.)
func Prefer(hint string) Option {
	return func(s *settings) {
		if strings.TrimSpace(hint) == "processes" {
			s.fail(processesRefused("prefer", hint))
			return
		}
		s.set("prefer", hint)
	}
}

func processesRefused(key, value string) *Error {
	return goError(StatusUnsupported, -1, fmt.Sprintf(
		"%s %q is not available from Go: Go code cannot run in a forked worker process (only the "+
			"forking thread survives a fork, and the Go runtime cannot run without its other threads); "+
			"use the \"threads\" backend (the default here) or \"sequential\". Named-function workers "+
			"will come with the spawn start method", key, value))
}

// Require sets joblib's hard constraint: "sharedmem" (always met by the threads and sequential
// backends) or "none".
func Require(constraint string) Option {
	return func(s *settings) { s.set("require", constraint) }
}

// Verbose sets joblib's verbosity level (0, the default, is silent; negative levels are an error).
// pj's joblib-format progress lines count pj tasks, each a chunk of inputs (see ChunkSize); the
// Progress option counts inputs.
func Verbose(level int) Option {
	return func(s *settings) { s.set("verbose", strconv.Itoa(level)) }
}

// Timeout limits each call of fn to d of wall-clock time, counted from its start. When a call runs
// longer, Map (or Stream) stops starting new calls and returns at once an *Error with ErrTimeout
// naming the input. Go cannot interrupt a goroutine: the overdue call keeps running in the background
// until it returns, and its result is discarded. d must be positive.
//
// The limit is enforced by the Go side, per input (pj's own timeout would count whole chunks); it is
// checked every d/10 (at least every millisecond, at most every quarter second).
func Timeout(d time.Duration) Option {
	return func(s *settings) {
		if d <= 0 {
			s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid timeout \"%v\": expected a positive duration", d)))
			return
		}
		s.timeout = d
	}
}

// PreDispatch sets joblib's pre_dispatch: how many pj tasks are in flight ahead of completions,
// "all", a number, or an expression in n_jobs such as "2*n_jobs" (the default).
func PreDispatch(expr string) Option {
	return func(s *settings) { s.set("pre_dispatch", expr) }
}

// BatchSize sets joblib's batch_size: "auto" (the default: joblib's adaptive heuristic) or a fixed
// number of pj tasks per batch. Each pj task is a chunk of inputs (see ChunkSize), so a batch holds
// batch_size × chunk inputs.
func BatchSize(size string) Option {
	return func(s *settings) { s.set("batch_size", size) }
}

// TempFolder sets joblib's temp_folder (where memory-mapped files go). It is validated now; the
// threads backend shares memory and never needs the files.
func TempFolder(path string) Option {
	return func(s *settings) { s.set("temp_folder", path) }
}

// MaxNbytes sets joblib's max_nbytes ("1M", "512k", "none", a number of bytes). Validated; no effect
// with threads.
func MaxNbytes(size string) Option {
	return func(s *settings) { s.set("max_nbytes", size) }
}

// MmapMode sets joblib's mmap_mode ("r", "r+", "w+", "c"). Validated; no effect with threads.
func MmapMode(mode string) Option {
	return func(s *settings) { s.set("mmap_mode", mode) }
}

// ReturnAs sets joblib's return_as. Stream yields results in input order for "list" and "generator"
// (the default), and in completion order for "generator_unordered". Map, MapIndexed and MapCollect
// always return their slice in input order.
func ReturnAs(mode string) Option {
	return func(s *settings) { s.set("return_as", mode) }
}

// Unordered is ReturnAs("generator_unordered"): Stream yields each result as soon as it is ready.
func Unordered() Option { return ReturnAs("generator_unordered") }

// KeepWorkers sets pj's keep_workers, which keeps worker processes alive across calls. Validated; it
// has no effect with threads.
func KeepWorkers(keep bool) Option {
	return func(s *settings) { s.set("keep_workers", strconv.FormatBool(keep)) }
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
func OnError(mode string) Option {
	return func(s *settings) {
		s.collect = trimASCII(mode) == "collect"
		s.set("on_error", mode) // validated by pj; config always hands pj "raise" in the end
	}
}

// ProgressBar turns pj's progress bar on stderr on (pj's progress="bar") or off (the default): a bar
// with counts, percentage, rate, elapsed time and ETA, redrawn in place on a terminal, a plain line
// every 2 s otherwise, and always a final line when the call ends. Like Verbose's lines, it counts
// pj tasks, each a chunk of inputs (see ChunkSize; ChunkSize(1) makes it count inputs), and with
// automatic chunks the total is known only once the last chunk has been handed to pj. It is drawn
// by the thread that drives the pj call; Progress, which counts inputs, is independent of it.
func ProgressBar(on bool) Option {
	return func(s *settings) {
		if on {
			s.set("progress", "bar")
		} else {
			s.set("progress", "none")
		}
	}
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
	return handleSigint(strconv.FormatBool(on))
}

// handleSigint is HandleSigint and Set("handle_sigint", value): pj's false spellings are passed on
// (harmless), anything else is either invalid (pj's own error, which quotes it) or means true and is
// refused.
func handleSigint(value string) Option {
	return func(s *settings) {
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
	}
}

// checkOption asks pj whether it accepts key = value (on a scratch config), and returns its error.
func checkOption(key, value string) error {
	var cfg *C.pj_config_t
	if status := C.pj_config_new(&cfg); status != C.PJ_STATUS_OK {
		return takeError(status, nil)
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
// been told to stop.
func Progress(fn func(done, total int, elapsed time.Duration)) Option {
	return func(s *settings) { s.progress = fn }
}

// ChunkSize sets how many consecutive inputs one pj task carries (default: automatic). Each pj task
// costs a C-to-Go transition plus pj's bookkeeping (together about half a microsecond), so this
// package hands the inputs to pj in chunks, and pj batches the chunks as joblib batches tasks.
// Automatic chunks start at one input and double until one has completed (so the first results come
// quickly whatever fn costs), then aim at about a millisecond of work each, measured as the call
// goes, and stay small enough to give each worker about 32 of them. Use ChunkSize(1) for one
// pj task per input. n must be at least 1.
func ChunkSize(n int) Option {
	return func(s *settings) {
		if n < 1 {
			s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid chunk size \"%d\": expected at least 1 input per task", n)))
			return
		}
		s.chunk = n
	}
}

// Set sets an option from strings, with joblib's keywords and spellings, for options that come from
// flags, files or the environment. It takes every key pj_config_set takes, each behaving as its
// typed option above:
//
//   - "n_jobs", "backend", "prefer", "require", "verbose", "pre_dispatch", "batch_size",
//     "return_as": as in joblib ("backend" and "prefer" refuse the process backends);
//   - "timeout": seconds, or "none" (enforced per input by this package, see Timeout);
//   - "on_error": "raise" or "collect" (see OnError);
//   - "progress": "bar" or "none" (see ProgressBar);
//   - "handle_sigint": "false" only; "true" is refused (see HandleSigint);
//   - "temp_folder", "max_nbytes", "mmap_mode", "keep_workers": validated, but meaningless here: they
//     concern worker processes and memory-mapped arguments, and this package runs on threads only.
//
// An unknown key is an ErrInvalidArgument error whose message lists the known ones.
func Set(key, value string) Option {
	return func(s *settings) {
		switch key {
		case "backend":
			Backend(value)(s)
		case "prefer":
			Prefer(value)(s)
		case "on_error":
			OnError(value)(s)
		case "handle_sigint":
			handleSigint(value)(s)
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
	}
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

// config is a pj_config_t built from the settings: backend "threads" first, then every keyword in the
// order given. The caller frees it with C.pj_config_free.
func (s *settings) config() (*C.pj_config_t, error) {
	if s.err != nil {
		return nil, s.err
	}
	var cfg *C.pj_config_t
	if status := C.pj_config_new(&cfg); status != C.PJ_STATUS_OK {
		return nil, takeError(status, nil)
	}
	set := func(key, value string) error { return setOption(cfg, key, value) }
	// Go code cannot run in a forked child: threads unless the options name "sequential".
	if err := set("backend", "threads"); err != nil {
		C.pj_config_free(cfg)
		return nil, err
	}
	for _, kv := range s.kv {
		if strings.ContainsRune(kv.key, 0) || strings.ContainsRune(kv.value, 0) {
			C.pj_config_free(cfg)
			return nil, goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"invalid option %q = %q: contains a NUL byte", kv.key, kv.value))
		}
		if err := set(kv.key, kv.value); err != nil {
			C.pj_config_free(cfg)
			return nil, err
		}
	}
	// on_error was validated above and is carried out on the Go side: pj sees chunks of inputs, and
	// a chunk succeeds even when some of its inputs failed under "collect", so pj always raises (on
	// the trampoline's own failures). pj never handles SIGINT here: it would take the signal from
	// the Go runtime (handleSigint refuses "true"; this also overrides a scoped default).
	for _, kv := range []keyValue{{"on_error", "raise"}, {"handle_sigint", "false"}} {
		if err := set(kv.key, kv.value); err != nil {
			C.pj_config_free(cfg)
			return nil, err
		}
	}
	return cfg, nil
}

// open creates the pj executor of a call and returns it with its number of workers.
func (s *settings) open() (*C.pj_parallel_t, int, error) {
	cfg, err := s.config()
	if err != nil {
		return nil, 0, err
	}
	defer C.pj_config_free(cfg)
	workers := int(C.pj_effective_n_jobs(cfg))
	var par *C.pj_parallel_t
	var cerr *C.pj_error_t
	if status := C.pj_parallel_new(cfg, &par, &cerr); status != C.PJ_STATUS_OK {
		return nil, 0, takeError(status, cerr)
	}
	return par, max(workers, 1), nil
}

// backendName is the backend as reports name it.
func (s *settings) backendName(workers int) string {
	if s.sequential || workers <= 1 {
		return "sequential"
	}
	return "threads"
}

// EffectiveNJobs is the number of worker threads a call with these options would use (joblib's
// effective_n_jobs): 1 unless NJobs says otherwise, and 1 for the sequential backend.
func EffectiveNJobs(opts ...Option) (int, error) {
	cfg, err := newSettings(opts).config()
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
