package pj

/*
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// ErrClosed is the error of a call made on an Executor after its Close (errors.Is(err, ErrClosed);
// the error is an *Error with StatusInvalidArgument, so errors.Is(err, ErrInvalidArgument) holds too).
var ErrClosed = errors.New("pj: executor closed")

// An Executor is a long-lived pj executor: its workers (threads, or with KeepWorkers(true) the
// worker processes of MapNamed) outlive each call and serve the next one. Every call function of
// this package runs on it when given the option On(ex):
//
//	ex, err := pj.NewExecutor(pj.NJobs(4), pj.KeepWorkers(true))
//	if err != nil {
//		return err
//	}
//	defer ex.Close()
//	a, err := pj.MapNamed[Doc, float64](ctx, "score", docs, pj.On(ex))
//	b, err := pj.MapNamed[Doc, float64](ctx, "score", more, pj.On(ex)) // the same worker processes
//
// Without an Executor each call makes and frees an executor of its own, so worker processes start
// at each call and KeepWorkers means nothing.
//
// # Close
//
// Close the Executor when it is no longer needed, as with a *sql.DB or an *os.File: Close stops its
// worker threads and reaps its worker processes (with KeepWorkers(true) they stay alive between
// calls until then). The Executor is meant to be long-lived and shared: open it once, not per call.
// An Executor that becomes unreachable without Close is freed by a finalizer as a safety net, but
// when the garbage collector gets to it is unspecified (perhaps never): until then its idle worker
// processes live on. Close is idempotent; a call made after Close returns an error matching
// ErrClosed.
//
// # Concurrency
//
// An Executor is safe for concurrent use by multiple goroutines, and runs one call at a time, as
// pj's executor (pj_parallel_t) does: a call made while another is in flight waits for it to end,
// or returns ctx.Err() once its ctx is done, or ErrClosed once Close is called. A call that returned
// early (ctx done, a Timeout) holds the Executor until the calls of fn it had started have
// returned. A function running in a call on an Executor that makes a call on the same Executor gets
// ErrBusy at once (the inner call could never start); do not wait from such a function for another
// goroutine's call on it either. Close waits for the call in flight, if any, to end.
//
// A Stream or StreamNamed on an Executor holds it until its loop ends (the loop is the call in
// flight). From that loop's body, a call on the same Executor gets ErrBusy at once, and Close
// returns at once: the loop goes on to its end, and the Executor is freed then (calls made
// meanwhile get ErrClosed). From another goroutine both wait for the loop to end, as above.
type Executor struct {
	opts []Option // the executor's options, applied before each call's own
	// turn holds a token while a call runs: acquiring it is waiting for one's turn.
	turn chan struct{}
	// closing is closed by Close: waiting calls give up.
	closing chan struct{}

	mu     sync.Mutex
	closed bool
	pools  map[poolKey]*pool // the pj executors, made at their first call
	// streamer is the goroutine running the loop of the Stream (or StreamNamed) that holds the
	// turn (0: none); under mu. A call or Close from that loop's body could only wait for a turn
	// that comes back when the loop ends: the call gets ErrBusy, Close is finished by the stream.
	streamer int64
	// closeOnRelease: Close was called from the loop of the stream holding the turn; the stream
	// frees the pools when it gives the turn back (under mu).
	closeOnRelease bool
}

// poolKey tells apart the pj executors an Executor needs: the kind of call, and for named functions
// the settings pj applies itself (on_error, the timeout), which are part of a pj executor's config.
// Closures carry out on_error and the timeout on the Go side, so their calls share one.
type poolKey struct {
	kind    callKind
	collect bool
	timeout time.Duration
}

// pool is one pj executor of an Executor, and its number of workers.
type pool struct {
	par     *C.pj_parallel_t
	workers int
	// slot is C memory holding the cgo.Handle of the named call in flight (0 between calls): the
	// pj executor's progress callback, set once in its config, reports to that call (named pools).
	slot *C.uintptr_t
}

// NewExecutor returns an Executor with the given options, which apply to every call made on it (see
// On). pj validates them now: a bad value gives an *Error with ErrInvalidArgument. No worker starts
// before the first call. The caller must Close it.
func NewExecutor(opts ...Option) (*Executor, error) {
	for _, opt := range opts {
		if _, ok := opt.(onOption); ok {
			return nil, goError(StatusInvalidArgument, -1,
				"pj.NewExecutor: the option On(...) belongs to calls, not to executors")
		}
	}
	s := newSettings(opts)
	cfg, err := s.configFor(named) // validates every option (named: the process backends are fine)
	if err != nil {
		return nil, err
	}
	par, _, err := openConfig(cfg) // checks their consistency; starts nothing
	C.pj_config_free(cfg)
	if err != nil {
		return nil, err
	}
	C.pj_parallel_free(par)
	ex := &Executor{
		opts:    append([]Option(nil), opts...),
		turn:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		pools:   map[poolKey]*pool{},
	}
	// A safety net only: it frees what an unreachable, unclosed Executor holds. A call in flight
	// keeps its Executor reachable (its release function refers to it), so the finalizer never runs
	// during a call.
	runtime.SetFinalizer(ex, func(ex *Executor) { _ = ex.Close() })
	return ex, nil
}

// Close frees the Executor: it waits for the call in flight, if any, to end, then stops the worker
// threads and reaps the worker processes. Calls waiting for their turn return ErrClosed, and so do
// later calls. Close is idempotent: it always returns nil.
func (ex *Executor) Close() error {
	ex.mu.Lock()
	if ex.closed {
		ex.mu.Unlock()
		return nil
	}
	ex.closed = true
	close(ex.closing)
	if ex.streamer != 0 && ex.streamer == goroutineID() {
		// From the loop of the stream that holds the turn, which comes back only once this loop
		// ends: the stream frees the pools then (see streaming).
		ex.closeOnRelease = true
		ex.mu.Unlock()
		return nil
	}
	ex.mu.Unlock()
	ex.turn <- struct{}{} // the call in flight has ended; no other can start (closed): kept forever
	ex.freePools()
	return nil
}

// freePools frees the pj executors; the caller holds the turn for good.
func (ex *Executor) freePools() {
	ex.mu.Lock()
	pools := ex.pools
	ex.pools = nil
	ex.mu.Unlock()
	for _, p := range pools {
		C.pj_parallel_free(p.par)
		C.free(unsafe.Pointer(p.slot))
	}
	runtime.SetFinalizer(ex, nil)
}

// streaming marks the Executor as held by a stream whose loop runs on this goroutine, until
// loopDone (deferred by the stream's iterator function: once it returns, no loop body can run).
// It returns the release function to use instead of release: it finishes a Close made from the
// loop (keeping the turn for good) instead of giving the turn back. Called once per streaming call
// on an Executor, before the stream's first result.
func (ex *Executor) streaming(release func()) (wrapped func(), loopDone func()) {
	g := goroutineID()
	ex.mu.Lock()
	ex.streamer = g
	ex.mu.Unlock()
	wrapped = func() {
		ex.mu.Lock()
		closing := ex.closeOnRelease
		ex.mu.Unlock()
		if closing {
			ex.freePools()
			return
		}
		release()
	}
	loopDone = func() {
		ex.mu.Lock()
		if ex.streamer == g {
			ex.streamer = 0
		}
		ex.mu.Unlock()
	}
	return wrapped, loopDone
}

// goroutineID is the calling goroutine's number, read from the first line of its stack trace
// ("goroutine 18 [running]:"); 0 if it cannot be read. Only on slow paths: a streaming call's start,
// a call that finds the turn taken, Close.
func goroutineID() int64 {
	var buf [64]byte
	line := buf[:runtime.Stack(buf[:], false)]
	line = bytes.TrimPrefix(line, []byte("goroutine "))
	if end := bytes.IndexByte(line, ' '); end > 0 {
		if id, err := strconv.ParseInt(string(line[:end]), 10, 64); err == nil {
			return id
		}
	}
	return 0
}

// errClosed is the error of a call on a closed Executor.
func errClosed() error {
	return &Error{Status: StatusInvalidArgument, TaskIndex: -1,
		Message: "the executor is closed (a call after Executor.Close)",
		Report:  report(kinds[StatusInvalidArgument], -1, "", "the executor is closed", nil),
		Err:     ErrClosed}
}

// errNested is the error of a call on an Executor made by a function running in its own call.
func errNested() error {
	return goError(StatusBusy, -1, "the executor is running a call: a function running in a "+
		"call on an Executor cannot make a call on the same Executor (make another Executor, or a "+
		"call without On)")
}

// errInStreamLoop is the error of a call on an Executor made from the loop of a Stream on it.
func errInStreamLoop() error {
	return goError(StatusBusy, -1, "the executor is running a Stream whose loop made this call: "+
		"the stream holds the executor until its loop ends (break first, or use another Executor)")
}

// acquire waits for the Executor's turn, then returns the pj executor for a call of that kind with
// settings s, the number of its workers, and the function that gives the turn back (to call once
// the pj side of the call is over, after the call's executor was detached).
func (ex *Executor) acquire(ctx context.Context, s *settings, kind callKind) (*pool, func(), error) {
	select {
	case ex.turn <- struct{}{}:
	default:
		if C.pj_nesting_level() > 0 {
			// Inside a pj task: most likely of this very Executor's call, which would wait for
			// this one forever.
			return nil, nil, errNested()
		}
		ex.mu.Lock()
		closed, inLoop := ex.closed, ex.streamer != 0 && ex.streamer == goroutineID()
		ex.mu.Unlock()
		if closed {
			return nil, nil, errClosed()
		}
		if inLoop {
			// From the loop of the stream that holds the turn: it comes back when the loop ends.
			return nil, nil, errInStreamLoop()
		}
		select {
		case ex.turn <- struct{}{}:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-ex.closing:
			return nil, nil, errClosed()
		}
	}
	release := func() {
		<-ex.turn
		runtime.KeepAlive(ex)
	}
	ex.mu.Lock()
	closed := ex.closed
	ex.mu.Unlock()
	if closed {
		release()
		return nil, nil, errClosed()
	}
	// The pools are only touched while holding the turn (Close takes it for good before freeing
	// them), so no lock is needed below.
	key := poolKey{kind: kind}
	if kind == named {
		key.collect, key.timeout = s.collect, s.timeout
	}
	if p := ex.pools[key]; p != nil {
		return p, release, nil
	}
	p, err := newPool(s, kind)
	if err != nil {
		release()
		return nil, nil, err
	}
	ex.pools[key] = p
	return p, release, nil
}

// newPool makes the pj executor of a pool.
func newPool(s *settings, kind callKind) (*pool, error) {
	cfg, err := s.configFor(kind)
	if err != nil {
		return nil, err
	}
	defer C.pj_config_free(cfg)
	p := &pool{}
	if kind == named {
		p.slot = (*C.uintptr_t)(C.calloc(1, C.size_t(unsafe.Sizeof(C.uintptr_t(0)))))
		if p.slot == nil {
			return nil, goError(StatusIO, -1, "out of memory")
		}
		var cerr *C.pj_error_t
		if status := C.pjgo_set_progress_slot(cfg, p.slot, &cerr); status != C.PJ_STATUS_OK {
			C.free(unsafe.Pointer(p.slot))
			return nil, takeError(status, cerr)
		}
	}
	p.par, p.workers, err = openConfig(cfg)
	if err != nil {
		C.free(unsafe.Pointer(p.slot))
		return nil, err
	}
	return p, nil
}

// onOption is On's option: it names the Executor a call runs on.
type onOption struct{ ex *Executor }

func (o onOption) String() string { return "On(ex)" }

func (o onOption) apply(s *settings) {
	if o.ex == nil {
		s.fail(goError(StatusInvalidArgument, -1, "pj.On(nil): no executor"))
		return
	}
	if s.exec != nil && s.exec != o.ex {
		s.fail(goError(StatusInvalidArgument, -1, "two executors named by On options"))
		return
	}
	s.exec = o.ex
}

// On runs a call on ex (see Executor) instead of an executor of the call's own: the call takes the
// Executor's options, and its workers. A call on an Executor takes only the options that concern
// one call: Progress, Timeout, ChunkSize and OnError (as the typed options or through Set); the
// others configure the workers and belong to NewExecutor: given here they make the call fail with
// ErrInvalidArgument. For MapNamed and MapCollectNamed, pj carries out OnError and Timeout itself,
// so calls that differ in them run on different worker pools of the Executor (MapCollectNamed
// implies OnError("collect")).
func On(ex *Executor) Option { return onOption{ex} }

// executorSettings is the settings of a call with On(ex) among opts: the Executor's options, then
// the call's own, which may only be those of one call (see On).
func executorSettings(ex *Executor, opts []Option) *settings {
	var own []Option
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if _, ok := opt.(onOption); ok {
			continue
		}
		probe := newSettings([]Option{opt})
		if probe.err != nil {
			own = append(own, opt) // reported by the call, as without an Executor
			continue
		}
		perCall := probe.backend == "" && probe.processes == nil
		for _, kv := range probe.kv {
			perCall = perCall && kv.key == "on_error"
		}
		if !perCall {
			s := &settings{exec: ex}
			s.fail(goError(StatusInvalidArgument, -1, fmt.Sprintf(
				"option %s configures the executor: pass it to pj.NewExecutor (a call on an "+
					"Executor takes only Progress, Timeout, ChunkSize and OnError)", opt)))
			return s
		}
		own = append(own, opt)
	}
	s := &settings{}
	for _, opt := range ex.opts {
		if opt != nil {
			opt.apply(s)
		}
	}
	for _, opt := range own {
		opt.apply(s)
	}
	s.exec = ex
	return s
}
