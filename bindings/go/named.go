package pj

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime/cgo"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// Return codes of the named-task trampoline (pj reports them as the callback's code; the caller's
// side turns them back into an error of the right shape).
const (
	codeNamedError  = 1 // the function returned an error; the message is its text
	codeNamedPanic  = 2 // the function panicked; the message is the value, panicSeparator, the stack
	codeNamedBroken = 3 // the trampoline could not run the function (lookup, decoding, encoding)
)

// panicSeparator separates a panic's value from its stack (debug.Stack, which starts with
// "goroutine ") in the message of a panicked task.
const panicSeparator = "\n\n"

// namedFunc is a function registered with Register, its types erased.
type namedFunc struct {
	in, out reflect.Type
	// run decodes an input from arg, calls the function and encodes its result: codeOK with the
	// result, or one of the codeNamed* codes with a message.
	// out is the task's pj output handle (valid while run runs), for RegisterContext's context.
	run func(arg []byte, out *C.pj_out_t) (result []byte, code int32, msg string)
}

// registry holds the functions registered with Register. It is sealed by WorkerMainIfRequested: a
// spawned worker never gets past that call, so a function registered later would exist only in the
// caller.
var registry struct {
	mu     sync.RWMutex
	funcs  map[string]*namedFunc
	names  []string // in registration order
	sealed bool
}

// workerMainCalled records that WorkerMainIfRequested ran in this process (and returned: this process
// is not a worker), which MapNamed requires before it starts worker processes.
var workerMainCalled atomic.Bool

// Register registers fn under name, for MapNamed and MapCollectNamed, which may run it in worker
// processes: fresh runs of this program's executable that find it by name. Call it from an init
// function (or a package-level variable's initializer), so that every process of the program
// registers the same functions, and before WorkerMainIfRequested, which seals the registry.
//
//	func init() { pj.Register("resize", resize) } // resize: func(Image) (Thumbnail, error)
//
//	func main() {
//		pj.WorkerMainIfRequested() // in a worker process, serves tasks and exits
//		thumbs, err := pj.MapNamed[Image, Thumbnail](ctx, "resize", images, pj.NJobs(-1))
//		...
//	}
//
// Inputs and results travel between processes with encoding/gob: T and R must be types gob can
// encode and decode (exported struct fields only, and at least one; no channels or functions; no nil
// pointer as the whole value; a value held in an interface needs gob.Register of its concrete
// type, in every process, so from init too). fn runs in other processes: what it writes to memory
// stays there, only its result comes back.
//
// Register panics when name is empty, not UTF-8 or contains a NUL byte, when fn is nil, when name is
// already registered, and when called after WorkerMainIfRequested.
func Register[T, R any](name string, fn func(T) (R, error)) {
	var call func(context.Context, T) (R, error)
	if fn != nil {
		call = func(_ context.Context, input T) (R, error) { return fn(input) }
	}
	register(name, call, false)
}

// RegisterContext is Register for a function that takes a context: it is done once the function's
// call is stopping (pj_out_cancelled: cancelled, because ctx of MapNamed is done; failed fast,
// because another input failed; or ended), so that a long function can return early. In worker
// processes a cancellation or a failure kills the running workers, so there the context serves
// mostly when the call runs on threads or sequentially. ctx.Err() asks pj directly (one atomic
// load): poll it in a loop; ctx.Done() starts a goroutine that polls every millisecond until the
// function returns. The context is done once the function has returned.
func RegisterContext[T, R any](name string, fn func(context.Context, T) (R, error)) {
	register(name, fn, true)
}

// register is Register and RegisterContext: withContext says whether fn wants a task context
// (without, it gets nil).
func register[T, R any](name string, fn func(context.Context, T) (R, error), withContext bool) {
	switch {
	case name == "" || !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		panic(fmt.Sprintf("pj.Register(%q): the name must be non-empty UTF-8 without NUL bytes", name))
	case fn == nil:
		panic(fmt.Sprintf("pj.Register(%q): nil function", name))
	}
	in, out := reflect.TypeFor[T](), reflect.TypeFor[R]()
	f := &namedFunc{in: in, out: out, run: func(arg []byte, pjOut *C.pj_out_t) ([]byte, int32, string) {
		var input T
		if err := gob.NewDecoder(bytes.NewReader(arg)).Decode(&input); err != nil {
			return nil, codeNamedBroken, fmt.Sprintf(
				"pj (Go): cannot decode the input of %q as %v: %v", name, in, err)
		}
		var ctx context.Context
		if withContext {
			task := newTaskContext(pjOut)
			defer task.end()
			ctx = task
		}
		result, code, msg := callNamed(fn, ctx, input)
		if code != codeOK {
			return nil, code, msg
		}
		var buf bytes.Buffer
		if err := gob.NewEncoder(&buf).Encode(&result); err != nil {
			return nil, codeNamedBroken, fmt.Sprintf(
				"pj (Go): cannot encode the result of %q (%v) with encoding/gob: %v", name, out, err)
		}
		return buf.Bytes(), codeOK, ""
	}}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	switch {
	case registry.sealed:
		panic(fmt.Sprintf("pj.Register(%q) after pj.WorkerMainIfRequested: register every function "+
			"from an init function, so that worker processes, which stop at "+
			"WorkerMainIfRequested, register it too", name))
	case registry.funcs[name] != nil:
		panic(fmt.Sprintf("pj.Register(%q): the name is already registered", name))
	}
	if registry.funcs == nil {
		registry.funcs = make(map[string]*namedFunc)
	}
	registry.funcs[name] = f
	registry.names = append(registry.names, name)
}

// callNamed calls fn on input and returns its result, or the code and message of its error or panic
// (recovered here; panic(nil) arrives as *runtime.PanicNilError).
func callNamed[T, R any](fn func(context.Context, T) (R, error), ctx context.Context, input T) (result R, code int32, msg string) {
	returned := false
	defer func() {
		if !returned {
			code = codeNamedPanic
			msg = describe(recover()) + panicSeparator + string(debug.Stack())
		}
	}()
	result, err := fn(ctx, input)
	returned = true
	if err != nil {
		return result, codeNamedError, describe(err)
	}
	return result, codeOK, ""
}

// WorkerMainIfRequested turns this process into a worker when pj started it as one, and returns at
// once otherwise. Call it at the start of main, before anything else that matters (goroutines,
// output, files), after the init functions that call Register; in tests, at the start of TestMain:
//
//	func TestMain(m *testing.M) {
//		pj.WorkerMainIfRequested()
//		os.Exit(m.Run())
//	}
//
// The process backends of MapNamed start worker processes afresh from this program's executable,
// with the caller's arguments and environment plus pj's PJ_WORKER_* variables: each runs the
// program's init functions (registering the same functions), then reaches this call, which checks
// that its functions are the caller's, serves tasks until the caller is done with it, and exits the
// process without returning (deferred calls do not run). MapNamed refuses to start workers in a
// process that has not called it (the worker would run the whole main instead).
//
// It seals the registry (Register panics afterwards) and registers with pj one C function that runs
// every Go function: its name lists the registered names, so a worker whose program registered other
// functions is refused (the call fails with ErrIO naming both lists). It panics if pj refuses that
// registration.
func WorkerMainIfRequested() {
	registry.mu.Lock()
	registry.sealed = true
	names := slices.Clone(registry.names)
	registry.mu.Unlock()
	if len(names) > 0 {
		cname := C.CString("pj.go[" + strings.Join(names, ", ") + "]")
		defer C.free(unsafe.Pointer(cname))
		var cerr *C.pj_error_t
		if status := C.pjgo_register(cname, &cerr); status != C.PJ_STATUS_OK {
			panic(takeError(status, cerr))
		}
	}
	workerMainCalled.Store(true)
	C.pjgo_worker_main()
}

// lookupNamed returns the function registered under name, checking its types against T and R.
func lookupNamed[T, R any](name string) (*namedFunc, error) {
	registry.mu.RLock()
	f := registry.funcs[name]
	names := slices.Clone(registry.names)
	registry.mu.RUnlock()
	in, out := reflect.TypeFor[T](), reflect.TypeFor[R]()
	if f == nil {
		known := "none"
		if len(names) > 0 {
			known = fmt.Sprintf("%q", names)
		}
		return nil, goError(StatusInvalidArgument, -1, fmt.Sprintf(
			"no function is registered under %q (registered: %s): register it with pj.Register "+
				"from an init function", name, known))
	}
	if f.in != in || f.out != out {
		return nil, goError(StatusInvalidArgument, -1, fmt.Sprintf(
			"pj.MapNamed[%v, %v]: %q is registered as a func(%v) (%v, error)", in, out, name, f.in, f.out))
	}
	return f, nil
}

// appendName appends the header of a task's argument: the function's name, length first.
func appendName(b []byte, name string) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

// splitName splits a task's argument into the function's name and the encoded input.
func splitName(arg []byte) (name string, payload []byte, ok bool) {
	length, k := binary.Uvarint(arg)
	if k <= 0 || length > uint64(len(arg)-k) {
		return "", nil, false
	}
	end := k + int(length)
	return string(arg[k:end]), arg[end:], true
}

// runNamedTask runs one task of a named call (in a worker process, or on pj's threads): the function
// named at the start of arg, on the input encoded after it. No panic leaves it.
func runNamedTask(arg []byte, out *C.pj_out_t) (result []byte, code int32, msg string) {
	returned := false
	defer func() {
		if !returned {
			code = codeNamedBroken
			msg = "pj (Go): the named-task trampoline failed: " + describe(recover())
		}
	}()
	name, payload, ok := splitName(arg)
	if !ok {
		returned = true
		return nil, codeNamedBroken, "pj (Go): malformed task argument"
	}
	registry.mu.RLock()
	f := registry.funcs[name]
	registry.mu.RUnlock()
	if f == nil {
		returned = true
		return nil, codeNamedBroken, fmt.Sprintf("pj (Go): no function is registered under %q in "+
			"process %d: every process of the program must register the same functions, from init "+
			"functions", name, os.Getpid())
	}
	result, code, msg = f.run(payload, out)
	returned = true
	return result, code, msg
}

// forgetWorkerVariables removes pj's PJ_WORKER_* variables from the Go copy of the environment, in a
// spawned worker: pj removes them from the C environment, but the Go runtime keeps a copy made at
// start-up, from which os/exec would hand them to the processes a task starts.
func forgetWorkerVariables() {
	for _, kv := range os.Environ() {
		if key, _, _ := strings.Cut(kv, "="); strings.HasPrefix(key, "PJ_WORKER_") {
			_ = os.Unsetenv(key)
		}
	}
}

// namedCall is the caller's side of one named call: the producer that encodes the inputs, one per
// pj task, into a C buffer (pj reads an argument after the producer returns, until its next call),
// and the call's state for progress and stopping.
type namedCall struct {
	c      *call
	n      int
	next   int
	encode func(i int, b []byte) ([]byte, error) // appends input i's argument to b
	header []byte
	// The encoding buffer, and the C buffer pj reads: only the goroutine driving the call touches
	// them (pj calls the producer on the thread that made the call).
	scratch []byte
	cbuf    unsafe.Pointer
	ccap    int
}

// produce hands pj the next argument: 1 with its bytes, 0 at the end, -1 once the call is stopped
// (or an input cannot be encoded: then the call stops with an error naming it).
func (nc *namedCall) produce() (arg *C.uint8_t, length C.size_t, more int32) {
	if nc.c.stop.Load() {
		return nil, 0, -1
	}
	if nc.next >= nc.n {
		return nil, 0, 0
	}
	i := nc.next
	b, err := nc.encode(i, append(nc.scratch[:0], nc.header...))
	if err != nil {
		nc.c.halt(goError(StatusInvalidArgument, i, fmt.Sprintf(
			"task %d: cannot encode the input with encoding/gob: %v", i, err)))
		return nil, 0, -1
	}
	nc.scratch = b
	if len(b) > nc.ccap {
		C.free(nc.cbuf)
		nc.ccap = max(len(b), 2*nc.ccap, 256)
		nc.cbuf = C.malloc(C.size_t(nc.ccap))
		if nc.cbuf == nil {
			nc.ccap = 0
			nc.c.halt(goError(StatusIO, i, fmt.Sprintf("task %d: out of memory for its %d-byte argument", i, len(b))))
			return nil, 0, -1
		}
	}
	copy(unsafe.Slice((*byte)(nc.cbuf), len(b)), b)
	nc.next++
	return (*C.uint8_t)(nc.cbuf), C.size_t(len(b)), 1
}

// free releases the C buffer, once the call is over.
func (nc *namedCall) free() {
	C.free(nc.cbuf)
	nc.cbuf, nc.ccap = nil, 0
}

// progressed records that pj reports done inputs completed.
func (c *call) progressed(done uint64) {
	c.done.Store(int64(done))
	if c.notify != nil {
		select {
		case c.notify <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// MapNamed calls the function registered under name (see Register) on every input and returns the
// results in input order. R cannot be inferred: write pj.MapNamed[In, Out](ctx, "name", inputs).
//
// Its default backend is "processes": worker processes started afresh from this program's
// executable (pj's start method "spawn"; Go code cannot run in a forked child), which must call
// WorkerMainIfRequested at the start of main (TestMain in tests). Each input is one pj task: the
// input is encoded with encoding/gob (see Register for the limits), sent to a worker, decoded there,
// and the result comes back the same way; pj's auto batching groups the tasks sent to a worker at
// once. Backend("threads") and Backend("sequential") run the function in this process through the
// same encoding. As in joblib, n_jobs defaults to 1 (then every input runs in this process, in
// order): pass NJobs(-1) for one worker per CPU.
//
// Costs: starting a worker is a fresh run of the program up to WorkerMainIfRequested (a few
// milliseconds, plus what its init functions do), at each call; each input then costs its gob
// encoding and decoding both ways (a few microseconds for small values: gob sends the type's
// description with each one) and the trip through pj (batched). Use it for functions that take
// milliseconds or more, or that must be isolated (crashes, memory, global state); Map on threads is
// far cheaper for small work.
//
// Errors fail fast, as with Map: the first input whose function returns an error or panics stops the
// call and MapNamed returns an *Error with ErrTaskFailed naming the input (TaskIndex) whose cause is
// an error with the function's error text (the error value itself stays in the worker: errors.Is
// with your own sentinels does not see through), or a *PanicError whose Value is the panic value as
// text and whose Stack is the worker's. A nil dereference or a division by zero in the function is a
// panic there too. A worker that dies while running an input (a crash, os.Exit, a signal) gives an
// *Error with ErrWorkerDied naming the input, and its Report tells how it died. The Timeout option
// is pj's: the worker running an overdue input is killed (ErrTimeout). With OnError("collect") (or
// MapCollectNamed) each of those failures is its own input's, and the other inputs run. When ctx is
// done, pj kills the running workers and MapNamed returns ctx.Err() at once.
//
// An unregistered name, or a function registered with other types than T and R, gives ErrInvalidArgument;
// so does an input gob cannot encode (naming it), and a process backend in a program that has not
// called WorkerMainIfRequested.
func MapNamed[T, R any](ctx context.Context, name string, inputs []T, opts ...Option) ([]R, error) {
	results, c, err := runNamed[T, R](ctx, name, inputs, newSettings(opts))
	if err != nil {
		return nil, err
	}
	if c.collect {
		if errs := c.failures(); errs != nil {
			return results, errors.Join(errs...)
		}
	}
	return results, nil
}

// MapCollectNamed is MapNamed with OnError("collect"), returning one Result per input in input order,
// as MapCollect does: Index, and Value or Err (an *Error naming the input: a failure, panic, timeout
// or dead worker, see MapNamed). Its own error is about the call as a whole, and then it returns no
// results.
func MapCollectNamed[T, R any](ctx context.Context, name string, inputs []T, opts ...Option) ([]Result[R], error) {
	s := newSettings(opts)
	s.collect = true
	values, c, err := runNamed[T, R](ctx, name, inputs, s)
	if err != nil {
		return nil, err
	}
	results := make([]Result[R], len(values))
	for i := range values {
		results[i] = Result[R]{Index: i, Value: values[i]}
		if e := c.errs[i]; e != nil {
			results[i].Err = e
		}
	}
	return results, nil
}

// runNamed runs the function registered under name over every input as one pj call, one task per
// input. It returns the results and the call's state (c.errs holds the inputs' failures under
// on_error "collect"), or the error that ended the call.
func runNamed[T, R any](ctx context.Context, name string, inputs []T, s *settings) ([]R, *call, error) {
	nc, handle, ex, err := openNamed[T, R](ctx, name, inputs, s)
	if err != nil {
		return nil, nil, err
	}
	n := len(inputs)
	par := ex.par
	results := make([]R, n)
	c := nc.c
	w := c.waiter(ctx, ex.cancel)
	defer w.close()
	if n == 0 {
		ex.free()
		handle.Delete()
		w.report(true)
		return results, c, nil
	}
	events := make(chan event, 1)
	liveCalls.Add(1)
	go func() {
		var res *C.pj_results_t
		var cerr *C.pj_error_t
		// par is used directly: only ex.free, below on this goroutine, invalidates it.
		status := C.pjgo_map_named(par, C.uintptr_t(handle), C.size_t(n), &res, &cerr)
		var perr *Error
		if status == C.PJ_STATUS_OK {
			perr = decodeNamed(res, results, c)
		} else {
			perr = takeNamedError(status, cerr)
		}
		C.pj_results_free(res)
		ex.free()
		handle.Delete() // no trampoline runs once pj_parallel_map has returned
		nc.free()
		callOver(perr)
		events <- event{over: true, err: perr}
	}()
	if err := w.awaitEnd(c, events); err != nil {
		return nil, nil, err
	}
	return results, c, nil
}

// openNamed prepares a named call over inputs (MapNamed and StreamNamed): it checks the function and
// the backend, and returns the call's producer state (nc.c is the call), the handle pj's callbacks
// reach it through, and its executor (with its progress reporting set). On success the caller owns
// the three: ex.free, handle.Delete and nc.free once the pj side is over.
func openNamed[T, R any](ctx context.Context, name string, inputs []T, s *settings) (*namedCall, cgo.Handle, *executor, error) {
	if ctx == nil {
		return nil, 0, nil, errNilContext()
	}
	if _, err := lookupNamed[T, R](name); err != nil {
		return nil, 0, nil, err
	}
	backend := s.backendFor(named)
	if s.err == nil && backend == "processes" && !workerMainCalled.Load() {
		return nil, 0, nil, goError(StatusInvalidArgument, -1,
			"MapNamed on processes needs pj.WorkerMainIfRequested() at the start of main (of TestMain "+
				"in tests), after the init functions that call pj.Register: worker processes are "+
				"fresh runs of this program, which that call turns into workers")
	}
	n := len(inputs)
	nc := &namedCall{n: n, header: appendName(nil, name)}
	nc.encode = func(i int, b []byte) ([]byte, error) {
		buf := bytes.NewBuffer(b)
		err := gob.NewEncoder(buf).Encode(&inputs[i])
		return buf.Bytes(), err
	}
	handle := cgo.NewHandle(nc)
	var cfg *C.pj_config_t
	if s.exec == nil {
		var err error
		if cfg, err = s.configFor(named); err != nil {
			handle.Delete()
			return nil, 0, nil, err
		}
		if s.progress != nil {
			var cerr *C.pj_error_t
			if status := C.pjgo_set_progress(cfg, C.uintptr_t(handle), &cerr); status != C.PJ_STATUS_OK {
				C.pj_config_free(cfg)
				handle.Delete()
				return nil, 0, nil, takeError(status, cerr)
			}
		}
	} else if s.err != nil {
		handle.Delete()
		return nil, 0, nil, s.err
	}
	ex, workers, slot, err := s.executorFor(ctx, named, cfg)
	C.pj_config_free(cfg)
	if err != nil {
		handle.Delete()
		return nil, 0, nil, err
	}
	if slot != nil && s.progress != nil {
		// The Executor's progress callback reports to this call until its turn is given back.
		*slot = C.uintptr_t(handle)
		release := ex.release
		ex.release = func() {
			*slot = 0
			release()
		}
	}
	if err := ctx.Err(); err != nil {
		ex.free()
		handle.Delete()
		return nil, 0, nil, err
	}
	c := newCall(s, n, workers)
	c.timeout = 0 // pj's own, per task (configFor)
	if workers > 1 {
		c.backend = backend
	}
	nc.c = c
	return nc, handle, ex, nil
}

// decodeNamed decodes each task's result into out; under on_error "collect" it records each failed
// task's error in c.errs instead. It returns the error that fails the whole call, if any.
func decodeNamed[R any](res *C.pj_results_t, out []R, c *call) *Error {
	if int(C.pj_results_len(res)) != len(out) {
		return goError(StatusPanic, -1, fmt.Sprintf("pj (Go): %d results for %d inputs",
			int(C.pj_results_len(res)), len(out)))
	}
	for i := range out {
		index := C.size_t(i)
		if status := C.pj_results_status(res, index); status != C.PJ_STATUS_OK {
			cerr := C.pj_results_error(res, index) // borrowed from res
			e := copyError(status, cerr)
			if e.TaskIndex < 0 {
				e.TaskIndex = i
			}
			e = namedFailure(e, cerr)
			if !c.collect {
				return e
			}
			c.errs[i] = e
			continue
		}
		var data *C.uint8_t
		var length C.size_t
		if status := C.pj_results_get(res, index, &data, &length); status != C.PJ_STATUS_OK {
			return statusError(status, "pj_results_get", i)
		}
		b := unsafe.Slice((*byte)(unsafe.Pointer(data)), int(length))
		if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&out[i]); err != nil {
			msg := fmt.Sprintf("task %d failed: pj (Go): cannot decode its result as %v: %v",
				i, reflect.TypeFor[R](), err)
			e := &Error{Status: StatusTaskFailed, TaskIndex: i, Message: msg,
				Report: report(kinds[StatusTaskFailed], i, c.backend, msg, nil), Err: err}
			if !c.collect {
				return e
			}
			c.errs[i] = e
		}
	}
	return nil
}

// takeNamedError copies and frees the error of a named call that pj ended with a failure.
func takeNamedError(status C.pj_status, cerr *C.pj_error_t) *Error {
	defer C.pj_error_free(cerr)
	return namedFailure(copyError(status, cerr), cerr)
}

// namedFailure turns pj's error about a task that the named-task trampoline failed (code) into the
// error Map would give: "task 7 failed: <the error's text>" with the text as its cause, or "task 7
// panicked: <value>" with a *PanicError; pj's report keeps its lines about the task (backend,
// worker) and gets this message and the panic's stack. Other errors (timeouts, dead workers, ...) are
// returned as they are. cerr is pj's error (or nil): its callback message is the trampoline's text
// as given (pj's one-line message escapes its newlines).
func namedFailure(e *Error, cerr *C.pj_error_t) *Error {
	var code int32
	if cerr != nil {
		code = int32(C.pj_error_callback_code(cerr))
	}
	if e.Status != StatusTaskFailed || e.TaskIndex < 0 || code < codeNamedError || code > codeNamedBroken {
		return e
	}
	i := e.TaskIndex
	var text string
	if raw := C.pj_error_callback_message(cerr); raw != nil {
		text = C.GoString(raw)
	} else {
		text = strings.TrimPrefix(e.Message, fmt.Sprintf("task %d failed with code %d: ", i, code))
	}
	var stack []byte
	if code == codeNamedPanic {
		value := text
		if k := strings.LastIndex(text, panicSeparator+"goroutine "); k >= 0 {
			value, stack = text[:k], []byte(text[k+len(panicSeparator):])
		}
		p := &PanicError{Index: i, Value: value, Stack: stack}
		e.Err, e.Message = p, p.Error()
	} else {
		e.Err, e.Message = errors.New(text), fmt.Sprintf("task %d failed: %s", i, text)
	}
	head := e.Report
	if k := strings.Index(head, "\n  message: "); k >= 0 {
		head = head[:k+1]
	}
	var b strings.Builder
	b.WriteString(head)
	writeMessage(&b, e.Message, stack)
	e.Report = b.String()
	return e
}
