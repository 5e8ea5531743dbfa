package pj

// Functions that stop early: MapContext (and MapIndexedContext, MapCollectContext, StreamContext)
// gives fn a context done when the call stops, and RegisterContext gives a named function one that
// asks pj (pj_out_cancelled).

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"iter"
	"sync"
	"time"
)

// MapContext is Map for a function that takes a context. The context is derived from ctx and is
// done once the call stops early: ctx is done, another input failed (fail-fast), a call of fn ran
// past the Timeout option, or the call returned. A long fn that watches it
// (ctx.Done() in a select, or ctx.Err() in a loop) and returns early makes a failure prompt: Map
// returns once the calls of fn already running have returned, and fn decides how soon that is. What
// fn returns after its context is done is discarded.
//
// The context costs nothing per input: it is one context.WithCancel per call, cancelled by the
// call itself (pj never needs to be asked).
func MapContext[T, R any](ctx context.Context, inputs []T, fn func(context.Context, T) (R, error), opts ...Option) ([]R, error) {
	if ctx == nil {
		return nil, errNilContext()
	}
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	return mapAll(ctx, inputs, withContext(callCtx, fn), nil, stoppedBy(cancel, opts))
}

// MapIndexedContext is MapIndexed for a function that takes a context, as MapContext gives it.
func MapIndexedContext[T, R any](ctx context.Context, inputs []T, fn func(context.Context, int, T) (R, error), opts ...Option) ([]R, error) {
	if ctx == nil {
		return nil, errNilContext()
	}
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wrapped func(int, T) (R, error)
	if fn != nil {
		wrapped = func(i int, input T) (R, error) { return fn(callCtx, i, input) }
	}
	return mapAll(ctx, inputs, nil, wrapped, stoppedBy(cancel, opts))
}

// MapCollectContext is MapCollect for a function that takes a context, as MapContext gives it (a
// failed input does not stop a collecting call, so the context is done when ctx is, when a call
// of fn runs past the Timeout option, or when the call returned).
func MapCollectContext[T, R any](ctx context.Context, inputs []T, fn func(context.Context, T) (R, error), opts ...Option) ([]Result[R], error) {
	if ctx == nil {
		return nil, errNilContext()
	}
	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	return MapCollect(ctx, inputs, withContext(callCtx, fn), stoppedBy(cancel, opts)...)
}

// StreamContext is Stream for a function that takes a context, as MapContext gives it; breaking
// out of the loop also makes it done, so the calls of fn still running can return at once.
func StreamContext[T, R any](ctx context.Context, inputs []T, fn func(context.Context, T) (R, error), opts ...Option) iter.Seq2[Result[R], error] {
	return func(yield func(Result[R], error) bool) {
		if ctx == nil {
			yield(Result[R]{Index: -1}, errNilContext())
			return
		}
		callCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		Stream(ctx, inputs, withContext(callCtx, fn), stoppedBy(cancel, opts)...)(yield)
	}
}

// withContext gives fn the call's context (nil stays nil, for the callers' own check).
func withContext[T, R any](callCtx context.Context, fn func(context.Context, T) (R, error)) func(T) (R, error) {
	if fn == nil {
		return nil
	}
	return func(input T) (R, error) { return fn(callCtx, input) }
}

// stoppedBy adds, after the caller's options, the hook that cancels the functions' context when
// the call stops early (without writing into the caller's slice).
func stoppedBy(cancel func(), opts []Option) []Option {
	return append(opts[:len(opts):len(opts)], newOption("stopped(cancel)", func(s *settings) { s.stopped = cancel }))
}

// taskContext is the context of one call of a function registered with RegisterContext: done
// once pj says the task's call is stopping (pj_out_cancelled), or once the function returned.
// Err asks pj directly; Done starts, at its first use, a goroutine that polls every millisecond.
type taskContext struct {
	mu   sync.RWMutex
	out  *C.pj_out_t // the task's output handle; nil once the function returned
	once sync.Once
	done chan struct{}
}

// taskPoll is how often a taskContext's Done channel looks at pj's flag.
const taskPoll = time.Millisecond

func newTaskContext(out *C.pj_out_t) *taskContext { return &taskContext{out: out} }

// Deadline: none (pj's Timeout is enforced by pj).
func (t *taskContext) Deadline() (time.Time, bool) { return time.Time{}, false }

// Value: a task context carries no values.
func (t *taskContext) Value(any) any { return nil }

// Err is context.Canceled once the call is stopping or the function returned, else nil.
func (t *taskContext) Err() error {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.out == nil || C.pj_out_cancelled(t.out) != 0 {
		return context.Canceled
	}
	return nil
}

// Done is closed once Err is not nil (seen within taskPoll).
func (t *taskContext) Done() <-chan struct{} {
	t.once.Do(func() {
		t.done = make(chan struct{})
		go t.watch()
	})
	return t.done
}

func (t *taskContext) watch() {
	tick := time.NewTicker(taskPoll)
	defer tick.Stop()
	for t.Err() == nil {
		<-tick.C
	}
	close(t.done)
}

func (t *taskContext) String() string { return "pj.taskContext" }

// end is called when the function returned: pj's handle is no longer valid, and the context is
// done from now on.
func (t *taskContext) end() {
	t.mu.Lock()
	t.out = nil
	t.mu.Unlock()
}
