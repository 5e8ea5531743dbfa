package pj

/*
#include "shim.h"
*/
import "C"

import (
	"bytes"
	"context"
	"encoding/gob"
	"fmt"
	"iter"
	"reflect"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// StreamNamed is Stream for a function registered with Register: it runs it on every input as
// MapNamed does (worker processes by default, see MapNamed for the backends, the encoding, the
// failures and the costs) and yields each result as soon as it may: in input order by default, or in
// completion order with Unordered. R cannot be inferred: write
// pj.StreamNamed[In, Out](ctx, "name", inputs).
//
// pj encodes and sends inputs only within its pre-dispatch window ahead of the loop, so a slow loop
// body pauses the work instead of piling results up; each result is decoded when it is yielded.
//
// An error ends the stream: it is yielded once, with a Result whose Index is -1, and is the one
// MapNamed would return (an *Error naming the failed input, ctx.Err(), ...):
//
//	for r, err := range pj.StreamNamed[Doc, float64](ctx, "score", docs, pj.NJobs(-1)) {
//		if err != nil {
//			return err
//		}
//		use(r.Index, r.Value)
//	}
//
// With OnError("collect"), a failed input (an error, a panic, a timeout, a dead worker, a result
// that cannot be decoded) does not end the stream: it is yielded in its turn as
// (Result{Index: i, Err: e}, e), and the stream goes on; an error with Index -1 still ends it.
//
// Breaking out of the loop stops the call (on processes pj kills the workers running an input; an
// Executor starts new ones as needed); the loop ends once that is done. The progress callback
// runs inside the range statement, between iterations, and counts inputs.
func StreamNamed[T, R any](ctx context.Context, name string, inputs []T, opts ...Option) iter.Seq2[Result[R], error] {
	return func(yield func(Result[R], error) bool) {
		s := newSettings(opts)
		nc, handle, ex, err := openNamed[T, R](ctx, name, inputs, s)
		if err != nil {
			yield(Result[R]{Index: -1}, err)
			return
		}
		if ex.release != nil { // this loop holds the Executor's turn
			var loopDone func()
			ex.release, loopDone = s.exec.streaming(ex.release)
			defer loopDone()
		}
		c := nc.c
		w := c.waiter(ctx, ex.cancel)
		defer w.close()
		if nc.n == 0 {
			ex.free()
			handle.Delete()
			w.report(true)
			return
		}
		events := make(chan event) // unbuffered: the driver reads at most one result ahead
		quit := make(chan struct{})
		over := make(chan struct{})
		liveCalls.Add(1)
		go driveNamed(ex, handle, nc, events, quit, over)
		defer func() {
			if quit != nil {
				close(quit) // the driver stops reading and frees the call
			}
		}()
		stop := func() {
			c.halt(errBreak)
			ex.cancel() // pj stops the call: its queued tasks never start, running workers are killed
			close(quit)
			quit = nil
			_ = w.wait(over)
		}
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
			r := Result[R]{Index: ev.lo}
			var failure *Error
			if ev.failed != nil {
				failure = ev.failed
			} else if derr := gob.NewDecoder(bytes.NewReader(ev.data)).Decode(&r.Value); derr != nil {
				msg := fmt.Sprintf("task %d failed: pj (Go): cannot decode its result as %v: %v",
					ev.lo, reflect.TypeFor[R](), derr)
				failure = &Error{Status: StatusTaskFailed, TaskIndex: ev.lo, Message: msg,
					Report: report(kinds[StatusTaskFailed], ev.lo, c.backend, msg, nil), Err: derr}
			}
			if failure != nil {
				if !c.collect {
					stop()
					yield(Result[R]{Index: -1}, failure)
					return
				}
				var zero R
				r.Value, r.Err = zero, failure
			}
			var rerr error
			if r.Err != nil {
				rerr = r.Err
			}
			if !yield(r, rerr) {
				stop()
				return
			}
		}
	}
}

// driveNamed runs a streaming named call on a goroutine locked to its OS thread (every pj call of a
// stream must come from the thread that started it, and pj calls the producer there): it starts the
// call, then reads results one at a time and hands each one over events (its bytes copied: pj's view
// lasts until the next read), or under on_error "collect" an input's own failure, until the call is
// over or quit is closed. It frees everything before reporting the end of the call or closing over.
func driveNamed(ex *executor, handle cgo.Handle, nc *namedCall, events chan<- event, quit <-chan struct{}, over chan<- struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := nc.c
	par := ex.par // used directly: only ex.free, in finish on this goroutine, invalidates it
	finish := func(ev event) {
		if ex.release != nil {
			C.pjgo_abandon(par) // an Executor's: the call must be over before its next one
		}
		ex.free() // abandons a call still in flight
		handle.Delete()
		nc.free()
		callOver(ev.err)
		close(over)
		select {
		case events <- ev:
		case <-quit:
		}
	}
	send := func(ev event) bool {
		select {
		case events <- ev:
			return true
		case <-quit:
			finish(event{over: true})
			return false
		}
	}
	var cerr *C.pj_error_t
	if status := C.pjgo_imap_named(par, C.uintptr_t(handle), C.size_t(nc.n), &cerr); status != C.PJ_STATUS_OK {
		finish(event{over: true, err: takeError(status, cerr)})
		return
	}
	for {
		index := ^C.size_t(0) // set by pj with a result, and with an input's own failure
		var length C.size_t
		var data *C.uint8_t
		status := C.pj_parallel_next(par, &index, &data, &length, &cerr)
		switch {
		case status == C.PJ_STATUS_OK:
			var b []byte
			if length > 0 {
				b = C.GoBytes(unsafe.Pointer(data), C.int(length))
			}
			if !send(event{lo: int(index), hi: int(index) + 1, data: b}) {
				return
			}
		case status == C.PJ_STATUS_DONE:
			finish(event{over: true})
			return
		case c.collect && index != ^C.size_t(0) && int(index) < nc.n && c.why() == nil &&
			(status == C.PJ_STATUS_TASK_FAILED || status == C.PJ_STATUS_TIMEOUT ||
				status == C.PJ_STATUS_WORKER_DIED):
			// on_error "collect": this input's own failure; the call goes on.
			e := takeNamedError(status, cerr)
			if e.TaskIndex < 0 {
				e.TaskIndex = int(index)
			}
			if !send(event{lo: int(index), hi: int(index) + 1, failed: e}) {
				return
			}
		default:
			finish(event{over: true, err: takeNamedError(status, cerr)})
			return
		}
		cerr = nil
	}
}
