package pj

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Task return codes of the Go trampoline (pj only distinguishes 0 from the rest: the Go side keeps the
// reason a call stopped and reports it itself).
const (
	codeOK      = 0
	codeFailed  = 1 // fn failed or panicked on an input of the chunk
	codeStopped = 2 // the call was already stopped (failure elsewhere, cancellation, timeout)
	codeBroken  = 3 // the trampoline itself failed (stale handle, a panic while recovering)
)

// liveCalls counts calls whose pj side is still running (tests check that none is left behind).
var liveCalls atomic.Int64

// cancelledCalls counts calls whose pj side ended with PJ_STATUS_CANCELLED, i.e. was stopped by
// pj_parallel_cancel (tests check that a done context reaches pj).
var cancelledCalls atomic.Int64

// callOver records that the pj side of a call is over, with pj's error (nil for success).
func callOver(perr *Error) {
	if perr != nil && perr.Status == StatusCancelled {
		cancelledCalls.Add(1) // before liveCalls: a test that saw no live call sees this count
	}
	liveCalls.Add(-1)
}

// call is one call's Go-side state. pj's task and producer trampolines (export.go) reach it through a
// cgo.Handle; the goroutine that called Map or Stream waits on it.
//
// The inputs travel to pj as chunks: pj task k is the input range [starts[k], starts[k+1]) (the last
// one ends at n), and the trampoline runs loop over it. loop stores each result in a Go slice indexed
// by the input, so results never cross C and every element is written by exactly one task.
type call struct {
	n       int
	loop    func(lo, hi int, s *slot) int32 // made by chunkLoop
	backend string

	// on_error "collect": a failing or panicking input does not stop the call; its *Error goes to
	// errs[i] (written by the one task that runs input i, read once the chunk is reported done).
	collect bool
	errs    []*Error

	stop atomic.Bool // set by halt: trampolines and the producer stop at their next input
	// stopped, when not nil, is called by halt (after stop is set): MapContext's functions see
	// their context done.
	stopped func()

	// The producer's state. Only the goroutine driving the pj call touches it (pj calls the producer
	// on the thread that made the call, and a cgo callback runs on the calling goroutine).
	next    int   // the first input not yet produced
	starts  []int // the first input of each chunk produced (automatic sizes only)
	fixed   int   // ChunkSize, or 0 for automatic sizes
	maxSize int   // the largest automatic size: keeps about 32 chunks per worker
	last    int   // the size of the previous chunk

	// Time spent in completed chunks, and their inputs, for automatic sizes.
	busyNanos, busyInputs atomic.Int64

	mu     sync.Mutex
	reason error // why the call stopped early (first one wins): *Error, or a context's error

	done     atomic.Int64                                 // inputs completed, for progress
	notify   chan struct{}                                // capacity 1: wakes the waiter for progress
	progress func(done, total int, elapsed time.Duration) // nil: no progress reporting
	start    time.Time

	timeout time.Duration
	slotsMu sync.Mutex
	slots   []*slot // one per chunk running at the moment (or idle, for reuse)
	idle    []*slot
}

// slot records which input a running chunk is at and since when (nanoseconds since call.start).
type slot struct {
	index atomic.Int64 // -1 when idle
	since atomic.Int64
}

func newCall(s *settings, n, workers int) *call {
	c := &call{
		n:        n,
		fixed:    s.chunk,
		maxSize:  max(n/(32*workers), 1),
		backend:  s.backendName(workers),
		progress: s.progress,
		timeout:  s.timeout,
		start:    time.Now(),
		collect:  s.collect,
		stopped:  s.stopped,
	}
	if c.fixed == 0 && s.drawsBar() {
		// pj's bar counts inputs only when every chunk has the same size (pj_parallel_expect):
		// with the bar on, automatic chunks are all of the largest automatic size.
		c.fixed = c.maxSize
	}
	if c.collect {
		c.errs = make([]*Error, n)
	}
	if c.progress != nil {
		c.notify = make(chan struct{}, 1)
	}
	return c
}

// drawsBar reports whether the settings turn pj's progress bar on (the last "progress" keyword
// set, as pj applies them in order).
func (s *settings) drawsBar() bool {
	bar := false
	for _, kv := range s.kv {
		if kv.key == "progress" {
			bar = trimASCII(kv.value) == "bar"
		}
	}
	return bar
}

// halt stops the call for reason (unless it already stopped for another one).
func (c *call) halt(reason error) {
	c.mu.Lock()
	if c.reason == nil {
		c.reason = reason
	}
	c.mu.Unlock()
	c.stop.Store(true)
	if c.stopped != nil {
		c.stopped()
	}
}

// why is the reason the call stopped early, or nil.
func (c *call) why() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// chunkTarget is how long an automatic chunk should take: long enough to make the ~0.5 µs a pj task
// costs negligible, short enough for pj's batching to balance the load and for a stream to deliver
// results regularly.
const chunkTarget = time.Millisecond

// produce hands pj the next chunk: 1 with [lo, hi), 0 at the end, -1 once the call is stopped.
func (c *call) produce() (lo, hi int, more int32) {
	if c.stop.Load() {
		return 0, 0, -1
	}
	if c.next >= c.n {
		return 0, 0, 0
	}
	lo = c.next
	c.last = min(c.size(), c.n-lo)
	c.next = lo + c.last
	if c.fixed == 0 {
		c.starts = append(c.starts, lo)
	}
	return lo, c.next, 1
}

// size is the number of inputs of the next chunk. Automatic sizes start at 1 and double until a
// chunk has completed (so the first results come quickly whatever fn costs), then aim at chunkTarget
// per chunk from the average time per input so far; they never exceed maxSize.
func (c *call) size() int {
	if c.fixed > 0 {
		return c.fixed
	}
	size := max(2*c.last, 1)
	if inputs := c.busyInputs.Load(); inputs > 0 {
		perInput := max(c.busyNanos.Load()/inputs, 1)
		size = int(max(int64(chunkTarget)/perInput, 1))
	}
	return min(size, c.maxSize)
}

// chunk returns the inputs [lo, hi) of chunk k (produced already); on the driving goroutine only.
func (c *call) chunk(k int) (lo, hi int) {
	if c.fixed > 0 {
		lo = min(k, c.n/c.fixed) * c.fixed
		return lo, min(lo+min(c.fixed, c.n-lo), c.n)
	}
	if k < 0 || k >= len(c.starts) {
		return 0, 0
	}
	if k+1 < len(c.starts) {
		return c.starts[k], c.starts[k+1]
	}
	return c.starts[k], c.next
}

// pjError converts pj's error about a task (a chunk) into one about the chunk's first input; on the
// driving goroutine only.
func (c *call) pjError(e *Error) *Error {
	if e != nil && e.TaskIndex >= 0 {
		e.TaskIndex, _ = c.chunk(e.TaskIndex)
	}
	return e
}

// runChunk runs the inputs [lo, hi) on a pj worker thread (or the thread driving the call, for the
// sequential backend). A failing or panicking input stops the call with an error naming it; a panic
// never leaves this function.
func (c *call) runChunk(lo, hi int) int32 {
	if c.stop.Load() {
		return codeStopped
	}
	var s *slot
	if c.timeout > 0 {
		s = c.acquire()
		defer c.release(s)
	}
	var began time.Time
	if c.fixed == 0 {
		began = time.Now()
	}
	code := c.loop(lo, hi, s)
	if code == codeOK {
		if c.fixed == 0 {
			c.busyNanos.Add(int64(time.Since(began)))
			c.busyInputs.Add(int64(hi - lo))
		}
		c.completed(hi - lo)
	}
	return code
}

// chunkLoop returns the loop of runChunk for one call: fn (or indexed, when fn is nil) over inputs
// [lo, hi), each result stored in out. It is generic so that the only indirect call per input is
// the user's function. s, when not nil, records each input's start for the timeout. With on_error
// "collect" it is collectLoop instead.
func chunkLoop[T, R any](c *call, in []T, out []R, fn func(T) (R, error), indexed func(int, T) (R, error)) func(lo, hi int, s *slot) int32 {
	if c.collect {
		return collectLoop(c, in, out, fn, indexed)
	}
	return func(lo, hi int, s *slot) (code int32) {
		i := lo
		returned := false
		defer func() {
			if !returned {
				// A panic (recover gives its value; panic(nil) arrives as *runtime.PanicNilError),
				// or runtime.Goexit (recover gives nil and cannot stop it).
				code = c.panicked(i, recover())
			}
		}()
		for ; i < hi; i++ {
			if c.stop.Load() {
				returned = true
				return codeStopped
			}
			if s != nil {
				s.enter(c, i)
			}
			var r R
			var err error
			if fn != nil {
				r, err = fn(in[i])
			} else {
				r, err = indexed(i, in[i])
			}
			if err != nil {
				returned = true
				c.halt(taskError(i, c.backend, err))
				return codeFailed
			}
			out[i] = r
		}
		returned = true
		return codeOK
	}
}

// collectLoop is chunkLoop for on_error "collect": each input's failure (an error or a panic) is
// recorded in c.errs and the chunk goes on; the chunk succeeds unless the call is stopped. A panic is
// recovered per input, which costs a deferred call per input that chunkLoop's fail-fast loop avoids.
func collectLoop[T, R any](c *call, in []T, out []R, fn func(T) (R, error), indexed func(int, T) (R, error)) func(lo, hi int, s *slot) int32 {
	return func(lo, hi int, s *slot) (code int32) {
		i := lo
		returned := false
		defer func() {
			if !returned {
				// runtime.Goexit: runOne's recover cannot stop it, and the chunk cannot go on.
				code = c.panicked(i, recover())
			}
		}()
		for ; i < hi; i++ {
			if c.stop.Load() {
				returned = true
				return codeStopped
			}
			if s != nil {
				s.enter(c, i)
			}
			if e := runOne(c, i, in, out, fn, indexed); e != nil {
				c.errs[i] = e
			}
		}
		returned = true
		return codeOK
	}
}

// runOne runs input i, stores its result in out[i] and returns nil, or returns its failure: fn's
// error, or its panic (recovered here; panic(nil) arrives as *runtime.PanicNilError).
func runOne[T, R any](c *call, i int, in []T, out []R, fn func(T) (R, error), indexed func(int, T) (R, error)) (failure *Error) {
	returned := false
	defer func() {
		if !returned {
			failure = panicError(i, c.backend, recover(), debug.Stack())
		}
	}()
	var r R
	var err error
	if fn != nil {
		r, err = fn(in[i])
	} else {
		r, err = indexed(i, in[i])
	}
	returned = true
	if err != nil {
		return taskError(i, c.backend, err)
	}
	out[i] = r
	return nil
}

// failures returns the inputs' failures of a finished call under on_error "collect", in input
// order (nil when none failed).
func (c *call) failures() []error {
	var errs []error
	for _, e := range c.errs {
		if e != nil {
			errs = append(errs, e)
		}
	}
	return errs
}

// panicked stops the call for input i's panic with value v.
func (c *call) panicked(i int, v any) int32 {
	c.halt(panicError(i, c.backend, v, debug.Stack()))
	return codeFailed
}

func (c *call) completed(k int) {
	c.done.Add(int64(k))
	if c.notify != nil {
		select {
		case c.notify <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// enter records that input i starts now.
func (s *slot) enter(c *call, i int) {
	s.since.Store(int64(time.Since(c.start)))
	s.index.Store(int64(i))
}

func (c *call) acquire() *slot {
	c.slotsMu.Lock()
	defer c.slotsMu.Unlock()
	if k := len(c.idle); k > 0 {
		s := c.idle[k-1]
		c.idle = c.idle[:k-1]
		return s
	}
	s := &slot{}
	s.index.Store(-1)
	c.slots = append(c.slots, s)
	return s
}

func (c *call) release(s *slot) {
	s.index.Store(-1)
	c.slotsMu.Lock()
	c.idle = append(c.idle, s)
	c.slotsMu.Unlock()
}

// overdue returns the timeout error of a call of fn running longer than the timeout, if any.
func (c *call) overdue() *Error {
	now := int64(time.Since(c.start))
	c.slotsMu.Lock()
	defer c.slotsMu.Unlock()
	for _, s := range c.slots {
		// Written since-then-index, read index-then-since: a fresh index never pairs with a stale
		// start time.
		index := s.index.Load()
		if index < 0 || now-s.since.Load() <= int64(c.timeout) {
			continue
		}
		msg := fmt.Sprintf("task %d exceeded the timeout of %v", index, c.timeout)
		return &Error{
			Status:    StatusTimeout,
			TaskIndex: int(index),
			Message:   msg,
			Report:    report("timeout", int(index), c.backend, msg, nil),
		}
	}
	return nil
}

// outcome is the error a finished call returns: the Go side's reason if the call stopped early, else
// pj's error, else nil.
func (c *call) outcome(perr *Error) error {
	if reason := c.why(); reason != nil {
		return reason
	}
	if perr != nil {
		return perr
	}
	return nil
}

// event is what the goroutine driving a pj call reports to the waiting one.
type event struct {
	lo, hi int    // a completed chunk's inputs, ready to be read (Stream)
	over   bool   // the call is over
	err    *Error // pj's error, when the call ended with one
	// StreamNamed: input lo's encoded result, or under on_error "collect" its own failure.
	data   []byte
	failed *Error
}

// waiter is the caller's side of a call: it waits for events while reporting progress and watching
// the context and the timeout.
type waiter struct {
	c        *call
	ctx      context.Context
	tick     <-chan time.Time
	ticker   *time.Ticker
	cancel   func() // cancels the pj call: pj_parallel_cancel, through executor.cancel
	stopCtx  func() bool
	reported int64
}

// waiter returns the caller's side of c. cancel cancels the pj call (pj_parallel_cancel, through
// executor.cancel): it may run at any moment, from any goroutine, and must be harmless once the call
// is over.
func (c *call) waiter(ctx context.Context, cancel func()) *waiter {
	w := &waiter{c: c, ctx: ctx, cancel: cancel, reported: -1}
	// Stop the call as soon as ctx is done, even while the caller is busy elsewhere (a Stream
	// consumer's loop body).
	w.stopCtx = context.AfterFunc(ctx, w.cancelled)
	if c.timeout > 0 {
		period := min(max(c.timeout/10, time.Millisecond), 250*time.Millisecond)
		w.ticker = time.NewTicker(period)
		w.tick = w.ticker.C
	}
	return w
}

// cancelled stops the call because ctx is done. halt comes first: it stops the trampolines (the
// running chunks return at their next input, the producer fails) and records ctx.Err() as the call's
// reason before pj can report the cancellation. Then cancel has pj stop dispatching at once: queued
// tasks never start, and the blocked pj call returns PJ_STATUS_CANCELLED once the running calls of fn
// have returned. Calling it again, or once the call is over, is harmless.
func (w *waiter) cancelled() {
	w.c.halt(w.ctx.Err())
	w.cancel()
}

// close releases the waiter and stops the call if it is still running (the caller is leaving: a
// break, an error, a panic in the progress callback).
func (w *waiter) close() {
	w.stopCtx()
	// ctx may be done with the AfterFunc not started, and then stopCtx keeps it from ever running:
	// the context package closes ctx.Done() before it starts the AfterFunc, so the caller may see ctx
	// done and leave first.
	if w.ctx.Err() != nil {
		w.cancelled()
	}
	if w.ticker != nil {
		w.ticker.Stop()
	}
	w.c.stop.Store(true)
}

// next returns the next event, or the error the call must end with at once: the context is done, or
// a call of fn ran past the timeout. Then the call is stopped, but its pj side may still be finishing
// in the background (a running fn cannot be interrupted).
func (w *waiter) next(events <-chan event) (event, error) {
	c := w.c
	for {
		select {
		case ev := <-events:
			return ev, nil
		case <-w.ctx.Done():
			w.cancelled()
			return event{}, c.why()
		case <-c.notify:
			w.report(false)
		case <-w.tick:
			if err := c.overdue(); err != nil {
				c.halt(err)
				return event{}, c.why()
			}
		}
	}
}

// wait blocks until over is closed (the pj side has finished) or the context is done.
func (w *waiter) wait(over <-chan struct{}) error {
	select {
	case <-over:
		return nil
	case <-w.ctx.Done():
		w.cancelled()
		return w.ctx.Err()
	}
}

// report calls the progress callback if the count changed (final: with done == total).
// awaitEnd waits for the end of a whole-call pj run (Map, MapNamed and their kin), then turns its
// outcome into the call's error and reports the final progress.
func (w *waiter) awaitEnd(c *call, events <-chan event) error {
	ev, err := w.next(events)
	if err != nil {
		return err
	}
	if err := c.outcome(ev.err); err != nil {
		return err
	}
	w.report(true)
	return nil
}

func (w *waiter) report(final bool) {
	c := w.c
	if c.progress == nil {
		return
	}
	done := c.done.Load()
	if final {
		done = int64(c.n)
	}
	if done == w.reported {
		return
	}
	w.reported = done
	c.progress(int(done), c.n, time.Since(c.start))
}
