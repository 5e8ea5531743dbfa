package pj

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"iter"
	"runtime"
	"runtime/cgo"
	"sync"
)

// Map calls fn on every input on pj's worker threads and returns the results in input order.
//
// Options configure the call with joblib's keywords (NJobs, BatchSize, PreDispatch, ...); as in
// joblib, the default n_jobs is 1, so pass NJobs(-1) to use every CPU.
//
// Errors fail fast: the first input whose fn returns an error (or panics) stops the call, no new
// input starts, and Map returns an *Error with ErrTaskFailed that names the input (TaskIndex) and
// wraps fn's error, or a *PanicError for a panic. With a failure, Map returns once the calls of fn
// already running have returned (each stops after its current input).
//
// When ctx is done, or a call of fn runs past the Timeout option, Map returns at once: ctx.Err(), or
// an *Error with ErrTimeout. Go cannot interrupt a running function, so calls of fn running at that
// moment may still be running after Map returns (their results are discarded); no new call starts.
// In every other case no call of fn is running when Map returns.
//
// With OnError("collect"), failures do not stop the call: every input runs, and Map returns the whole
// slice (the zero value at each failed input) with, when some inputs failed, an error joining their
// *Error values in input order (see OnError; MapCollect gives each input's outcome directly).
//
// fn runs on several threads at once: it must be safe for concurrent use. It must not call
// runtime.Goexit (so no t.FailNow inside it). A nil fn gives an *Error with ErrInvalidArgument
// before anything starts (likewise for MapIndexed, MapCollect, Stream and their Context forms).
func Map[T, R any](ctx context.Context, inputs []T, fn func(T) (R, error), opts ...Option) ([]R, error) {
	return mapAll(ctx, inputs, fn, nil, opts)
}

// MapIndexed is Map for a function that also receives the input's index.
func MapIndexed[T, R any](ctx context.Context, inputs []T, fn func(int, T) (R, error), opts ...Option) ([]R, error) {
	return mapAll(ctx, inputs, nil, fn, opts)
}

// MapCollect calls fn on every input, like Map with OnError("collect"), and returns one Result per
// input, in input order: Index, and Value or Err. A failing input does not stop the call: every input
// runs, and a failure is its own Result's Err, an *Error naming the input (TaskIndex), with Status
// StatusTaskFailed, a Message ("task 7 failed: ..." or "task 7 panicked: ..."), a Report, and the
// cause (fn's error, or a *PanicError for a panic) for errors.Is and errors.As. That input's Value is
// the zero value.
//
// The error MapCollect returns is about the call as a whole, and then it returns no results: an
// invalid option, ctx.Err() when ctx is done, an *Error with ErrTimeout when a call of fn runs past
// the Timeout option (Go cannot abandon a running function), or an internal failure. The rules of
// Map about ctx, timeouts and running calls of fn apply. MapCollect always collects, whatever an
// OnError option says.
func MapCollect[T, R any](ctx context.Context, inputs []T, fn func(T) (R, error), opts ...Option) ([]Result[R], error) {
	s := newSettings(opts)
	s.collect = true
	values, c, err := run(ctx, inputs, fn, nil, s)
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

// errNilFunction is the error of a call given a nil function (before any executor is made).
func errNilFunction() error {
	return goError(StatusInvalidArgument, -1, "the function is nil")
}

// errNilContext is the error of a call given a nil context.Context.
func errNilContext() error {
	return goError(StatusInvalidArgument, -1, "the context is nil (use context.Background())")
}

// mapAll is Map and MapIndexed.
func mapAll[T, R any](ctx context.Context, inputs []T, fn func(T) (R, error), indexed func(int, T) (R, error), opts []Option) ([]R, error) {
	results, c, err := run(ctx, inputs, fn, indexed, newSettings(opts))
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

// executor is a call's pj_parallel_t: one of the call's own, or an Executor's. The goroutine driving
// the call uses it and frees it, while the call's waiter may cancel it once ctx is done (from ctx's
// AfterFunc or the caller's goroutine) at any moment, even once the call is over. pj_parallel_cancel
// must not race pj_parallel_free, nor reach an Executor's next call: cancel and free hold mu, and free
// clears par, so a late cancel does nothing instead of touching freed memory or another call.
type executor struct {
	mu  sync.Mutex
	par *C.pj_parallel_t // nil once freed
	// release, for an Executor's pj executor, gives the Executor's turn back instead of freeing it
	// (nil: the call's own executor, freed by free).
	release func()
}

// cancel cancels the pj call in flight on the executor, if any; once it is freed, it does nothing.
func (e *executor) cancel() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.par != nil {
		C.pj_parallel_cancel(e.par)
	}
}

// free frees the executor (or gives an Executor's back), abandoning a call still in flight; only the
// goroutine driving the call calls it, once, after the pj call has returned (an Executor's stream
// first ends its call with pjgo_abandon). pj_parallel_free runs outside the lock, since it waits for
// the running calls of fn (cancel must never wait for those): clearing par under the lock suffices,
// as no cancel can be running then nor start later.
func (e *executor) free() {
	e.mu.Lock()
	par := e.par
	e.par = nil
	e.mu.Unlock()
	if e.release != nil {
		e.release()
		return
	}
	C.pj_parallel_free(par)
}

// executorFor gives a call of that kind its pj executor and number of workers: a new one made from
// cfg, or with On(ex) the Executor's (cfg unused), once it is the call's turn (ctx done meanwhile
// gives ctx.Err()). slot is the Executor's progress slot for named calls (nil otherwise).
func (s *settings) executorFor(ctx context.Context, kind callKind, cfg *C.pj_config_t) (ex *executor, workers int, slot *C.uintptr_t, err error) {
	if s.exec == nil {
		par, workers, err := openConfig(cfg)
		if err != nil {
			return nil, 0, nil, err
		}
		return &executor{par: par}, workers, nil, nil
	}
	p, release, err := s.exec.acquire(ctx, s, kind)
	if err != nil {
		return nil, 0, nil, err
	}
	return &executor{par: p.par, release: release}, p.workers, p.slot, nil
}

// openFor is the executor of a call of Map and its siblings, and its number of workers.
func (s *settings) openFor(ctx context.Context) (*executor, int, error) {
	if s.exec != nil {
		if s.err != nil {
			return nil, 0, s.err
		}
		if s.processes != nil {
			return nil, 0, s.processes
		}
		ex, workers, _, err := s.executorFor(ctx, closures, nil)
		return ex, workers, err
	}
	cfg, err := s.config()
	if err != nil {
		return nil, 0, err
	}
	defer C.pj_config_free(cfg)
	ex, workers, _, err := s.executorFor(ctx, closures, cfg)
	return ex, workers, err
}

// run runs fn (or indexed) over every input as one pj call. It returns the results and the call's
// state (c.errs holds the inputs' failures under on_error "collect"), or the error that ended the
// call.
func run[T, R any](ctx context.Context, inputs []T, fn func(T) (R, error), indexed func(int, T) (R, error), s *settings) ([]R, *call, error) {
	if ctx == nil {
		return nil, nil, errNilContext()
	}
	if fn == nil && indexed == nil {
		return nil, nil, errNilFunction()
	}
	ex, workers, err := s.openFor(ctx)
	if err != nil {
		return nil, nil, err
	}
	par := ex.par
	if err := ctx.Err(); err != nil {
		ex.free()
		return nil, nil, err
	}
	n := len(inputs)
	results := make([]R, n)
	c := newCall(s, n, workers)
	c.loop = chunkLoop(c, inputs, results, fn, indexed)
	w := c.waiter(ctx, ex.cancel)
	defer w.close()
	if n == 0 {
		ex.free()
		w.report(true)
		return results, c, nil
	}
	// The pj call runs on a goroutine of its own (one cgo call, so one OS thread, as pj requires), so
	// that this one can report progress and leave at once when ctx is done or a timeout expires.
	events := make(chan event, 1)
	handle := cgo.NewHandle(c)
	liveCalls.Add(1)
	go func() {
		var res *C.pj_results_t
		var cerr *C.pj_error_t
		// par is used directly: only ex.free, below on this goroutine, invalidates it.
		status := C.pjgo_map(par, C.uintptr_t(handle), C.size_t(n), C.size_t(c.fixed), &res, &cerr)
		var perr *Error
		if status != C.PJ_STATUS_OK {
			perr = c.pjError(takeError(status, cerr))
		}
		C.pj_results_free(res) // empty outputs: the results are in Go memory
		ex.free()
		handle.Delete() // no trampoline runs once pj_parallel_map has returned
		callOver(perr)
		events <- event{over: true, err: perr}
	}()
	if err := w.awaitEnd(c, events); err != nil {
		return nil, nil, err
	}
	return results, c, nil
}

// Result is one input's outcome, from MapCollect or Stream: its index, and fn's result for it or,
// with OnError("collect"), its failure.
type Result[R any] struct {
	// Index is the input's index in inputs; -1 for the error that ends a stream.
	Index int
	// Value is fn's result for the input (the zero value when the input failed).
	Value R
	// Err is the input's own failure under OnError("collect") (always with MapCollect): an *Error
	// naming Index, wrapping fn's error or a *PanicError. nil when fn succeeded, and in the Result
	// yielded with an error that ends a stream.
	Err error
}

// Stream calls fn on every input on pj's worker threads, like Map, and yields each result as soon as
// it may: in input order by default, or in completion order with Unordered (joblib's return_as
// "generator" and "generator_unordered"). pj computes ahead of the loop only within its pre-dispatch
// window, so a slow loop body pauses the work instead of piling results up, and each result is
// released by Stream once yielded.
//
// An error ends the stream: it is yielded once, with a Result whose Index is -1, and is the same as
// Map's (an *Error naming the failed input, ctx.Err(), a timeout):
//
//	for r, err := range pj.Stream(ctx, inputs, fn, pj.NJobs(-1)) {
//		if err != nil {
//			return err
//		}
//		use(r.Index, r.Value)
//	}
//
// With OnError("collect"), a failed input does not end the stream: it is yielded in its turn with its
// own error, as (Result{Index: i, Err: e}, e), and the stream goes on; an error with Index -1 still
// ends it.
//
// Breaking out of the loop stops the call; the loop ends once the calls of fn already running have
// returned. The rules of Map about ctx, timeouts and running calls of fn apply; the progress
// callback runs inside the range statement, between iterations.
func Stream[T, R any](ctx context.Context, inputs []T, fn func(T) (R, error), opts ...Option) iter.Seq2[Result[R], error] {
	return func(yield func(Result[R], error) bool) {
		if ctx == nil {
			yield(Result[R]{Index: -1}, errNilContext())
			return
		}
		if fn == nil {
			yield(Result[R]{Index: -1}, errNilFunction())
			return
		}
		n := len(inputs)
		results := make([]R, n)
		s := newSettings(opts)
		ex, workers, err := s.openFor(ctx)
		if err != nil {
			yield(Result[R]{Index: -1}, err)
			return
		}
		if ex.release != nil { // this loop holds the Executor's turn
			var loopDone func()
			ex.release, loopDone = s.exec.streaming(ex.release)
			defer loopDone()
		}
		if err := ctx.Err(); err != nil {
			ex.free()
			yield(Result[R]{Index: -1}, err)
			return
		}
		c := newCall(s, n, workers)
		c.loop = chunkLoop(c, inputs, results, fn, nil)
		w := c.waiter(ctx, ex.cancel)
		defer w.close()
		if n == 0 {
			ex.free()
			w.report(true)
			return
		}
		events := make(chan event) // unbuffered: the driver reads at most one result ahead
		quit := make(chan struct{})
		over := make(chan struct{})
		handle := cgo.NewHandle(c)
		liveCalls.Add(1)
		go drive(ex, handle, c, events, quit, over)
		defer func() {
			if quit != nil {
				close(quit) // the driver stops reading and frees the call
			}
		}()
		for {
			ev, err := w.next(events)
			if err != nil {
				yield(Result[R]{Index: -1}, err)
				return
			}
			if ev.over {
				if err := c.outcome(ev.err); err != nil {
					yield(Result[R]{Index: -1}, err)
					return
				}
				w.report(true)
				return
			}
			for i := ev.lo; i < ev.hi; i++ {
				r := Result[R]{Index: i, Value: results[i]}
				var zero R
				results[i] = zero // the stream holds no result it has handed out
				var err error
				if c.collect && c.errs[i] != nil {
					r.Err, err = c.errs[i], c.errs[i]
					c.errs[i] = nil
				}
				if !yield(r, err) {
					c.halt(errBreak)
					close(quit)
					quit = nil
					_ = w.wait(over)
					return
				}
			}
		}
	}
}

// errBreak is the reason of a stream whose consumer stopped early (never returned to anyone).
var errBreak = goError(StatusCancelled, -1, "the stream's consumer stopped reading")

// drive runs a streaming pj call on a goroutine locked to its OS thread (every pj call of a stream
// must come from the thread that started it): it starts the call, then reads results one at a time
// and hands their input ranges over events, until the call is over or quit is closed. It frees
// everything before reporting the end of the call or closing over.
func drive(ex *executor, handle cgo.Handle, c *call, events chan<- event, quit <-chan struct{}, over chan<- struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	par := ex.par // used directly: only ex.free, in finish on this goroutine, invalidates it
	var producer *C.pjgo_producer_t
	finish := func(ev event) {
		if ex.release != nil {
			C.pjgo_abandon(par) // an Executor's: the call must be over before its next one
		}
		ex.free() // abandons a call still in flight, after its running tasks return
		C.pjgo_producer_free(producer)
		handle.Delete()
		callOver(ev.err)
		close(over)
		select {
		case events <- ev:
		case <-quit:
		}
	}
	var cerr *C.pj_error_t
	status := C.pjgo_imap(par, C.uintptr_t(handle), C.size_t(c.n), C.size_t(c.fixed), &producer, &cerr)
	if status != C.PJ_STATUS_OK {
		finish(event{over: true, err: takeError(status, cerr)})
		return
	}
	for {
		var index, length C.size_t
		var data *C.uint8_t
		switch status := C.pj_parallel_next(par, &index, &data, &length, &cerr); status {
		case C.PJ_STATUS_OK:
			lo, hi := c.chunk(int(index)) // the producer runs on this goroutine: no race
			select {
			case events <- event{lo: lo, hi: hi}:
			case <-quit:
				finish(event{over: true})
				return
			}
		case C.PJ_STATUS_DONE:
			finish(event{over: true})
			return
		default:
			finish(event{over: true, err: c.pjError(takeError(status, cerr))})
			return
		}
	}
}
