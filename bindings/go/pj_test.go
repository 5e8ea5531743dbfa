package pj

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/cgo"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func ints(n int) []int {
	in := make([]int, n)
	for i := range in {
		in[i] = i
	}
	return in
}

func square(x int) (int, error) { return x * x, nil }

// settle waits until no pj call runs in the background any more (after tests that released blocked
// calls), and fails the test if one is left behind.
func settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for liveCalls.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d pj calls still running in the background", liveCalls.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// asError returns err as an *Error, failing the test otherwise.
func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T %v, want a *pj.Error", err, err)
	}
	return e
}

var configs = []struct {
	name string
	opts []Option
}{
	{"default", nil},
	{"n_jobs=-1", []Option{NJobs(-1)}},
	{"n_jobs=2", []Option{NJobs(2)}},
	{"n_jobs=4,chunk=1", []Option{NJobs(4), ChunkSize(1)}},
	{"n_jobs=3,chunk=7,batch=3", []Option{NJobs(3), ChunkSize(7), BatchSize(3)}},
	{"sequential", []Option{NJobs(4), Backend("sequential")}},
	{"pre_dispatch=all", []Option{NJobs(2), PreDispatch("all")}},
	{"pre_dispatch=1", []Option{NJobs(2), PreDispatch("1"), BatchSize(1)}},
	{"timeout", []Option{NJobs(2), Timeout(time.Minute)}},
	{"chunk=max", []Option{NJobs(2), ChunkSize(math.MaxInt)}},
}

func TestMapOrderedResults(t *testing.T) {
	for _, cfg := range configs {
		for _, n := range []int{0, 1, 7, 1000, 100_003} {
			t.Run(fmt.Sprintf("%s/n=%d", cfg.name, n), func(t *testing.T) {
				out, err := Map(context.Background(), ints(n), square, cfg.opts...)
				if err != nil {
					t.Fatal(err)
				}
				if out == nil || len(out) != n {
					t.Fatalf("got %d results (nil: %v), want %d", len(out), out == nil, n)
				}
				for i, v := range out {
					if v != i*i {
						t.Fatalf("out[%d] = %d, want %d", i, v, i*i)
					}
				}
			})
		}
	}
	settle(t)
}

func TestMapIndexed(t *testing.T) {
	words := strings.Fields("the quick brown fox jumps over the lazy dog")
	out, err := MapIndexed(context.Background(), words, func(i int, w string) (string, error) {
		return strconv.Itoa(i) + ":" + w, nil
	}, NJobs(2), ChunkSize(2))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range words {
		if want := strconv.Itoa(i) + ":" + w; out[i] != want {
			t.Fatalf("out[%d] = %q, want %q", i, out[i], want)
		}
	}
}

func TestMapCallsEachInputOnce(t *testing.T) {
	const n = 50_000
	calls := make([]atomic.Int32, n)
	_, err := MapIndexed(context.Background(), make([]struct{}, n), func(i int, _ struct{}) (int, error) {
		calls[i].Add(1)
		return 0, nil
	}, NJobs(4))
	if err != nil {
		t.Fatal(err)
	}
	for i := range calls {
		if c := calls[i].Load(); c != 1 {
			t.Fatalf("input %d ran %d times", i, c)
		}
	}
}

var errBad = errors.New("bad input")

func TestTaskErrorNamesTheInput(t *testing.T) {
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			var running atomic.Int32
			out, err := Map(context.Background(), ints(20_000), func(x int) (int, error) {
				running.Add(1)
				defer running.Add(-1)
				if x == 537 {
					return 0, fmt.Errorf("input %d: %w", x, errBad)
				}
				return x, nil
			}, cfg.opts...)
			if out != nil {
				t.Errorf("got %d results with an error", len(out))
			}
			e := asError(t, err)
			if !errors.Is(err, ErrTaskFailed) || !errors.Is(err, errBad) || errors.Is(err, ErrTimeout) {
				t.Errorf("errors.Is is wrong for %v", err)
			}
			if e.Status != StatusTaskFailed || e.TaskIndex != 537 {
				t.Errorf("status %v, index %d; want task failed at 537", e.Status, e.TaskIndex)
			}
			if want := "pj: task 537 failed: input 537: bad input"; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
			if !strings.Contains(e.Report, "task index: 537\n") || !strings.Contains(e.Report, "bad input") {
				t.Errorf("report lacks the index or message:\n%s", e.Report)
			}
			// A failure waits for the running calls of fn: none is left when Map returns.
			if r := running.Load(); r != 0 {
				t.Errorf("%d calls of fn still running after Map returned", r)
			}
			if l := liveCalls.Load(); l != 0 {
				t.Errorf("%d pj calls still running after Map returned", l)
			}
		})
	}
}

type badStringer struct{}

func (badStringer) String() string { panic("String exploded") }

func TestPanicBecomesTaskError(t *testing.T) {
	type check func(t *testing.T, v any)
	isValue := func(want any) check {
		return func(t *testing.T, v any) {
			if v != want {
				t.Errorf("panic value %#v, want %#v", v, want)
			}
		}
	}
	isType := func(want string) check {
		return func(t *testing.T, v any) {
			if got := fmt.Sprintf("%T", v); got != want {
				t.Errorf("panic value %T (%v), want a %s", v, v, want)
			}
		}
	}
	var nilMap map[int]int
	cases := []struct {
		name  string
		fn    func(int) (int, error)
		text  string // in the message
		check check
	}{
		{"panic(42)", func(x int) (int, error) { panic(42) }, "task 77 panicked: 42", isValue(42)},
		{"panic(nil)", func(x int) (int, error) { panic(nil) }, "task 77 panicked: panic called with nil argument",
			isType("*runtime.PanicNilError")},
		{"panic(error)", func(x int) (int, error) { panic(errBad) }, "task 77 panicked: bad input", isValue(errBad)},
		{"panic in a deferred function", func(x int) (int, error) {
			defer func() { panic("from a deferred function") }()
			return x, nil
		}, "task 77 panicked: from a deferred function", isValue("from a deferred function")},
		{"panic replaced in a deferred function", func(x int) (int, error) {
			defer func() { panic("second") }()
			panic("first")
		}, "task 77 panicked: second", isValue("second")},
		{"recovered then panicking again", func(x int) (int, error) {
			defer func() {
				r := recover()
				panic(fmt.Sprint("re-panic: ", r))
			}()
			panic("inner")
		}, "task 77 panicked: re-panic: inner", isValue("re-panic: inner")},
		{"runtime error", func(x int) (int, error) { nilMap[x] = x; return 0, nil },
			"task 77 panicked: assignment to entry in nil map", isType("runtime.plainError")},
		{"index out of range", func(x int) (int, error) { return []int{}[x], nil },
			"task 77 panicked: runtime error: index out of range [77] with length 0", isType("runtime.boundsError")},
		{"String method panics", func(x int) (int, error) { panic(badStringer{}) },
			"task 77 panicked: %!v(PANIC=String method: String exploded)", isType("pj.badStringer")},
	}
	for _, cfg := range []struct {
		name string
		opts []Option
	}{{"threads", []Option{NJobs(2), ChunkSize(10)}}, {"sequential", []Option{Backend("sequential")}}} {
		for _, tc := range cases {
			t.Run(cfg.name+"/"+tc.name, func(t *testing.T) {
				_, err := Map(context.Background(), ints(200), func(x int) (int, error) {
					if x == 77 {
						return tc.fn(x)
					}
					return x, nil
				}, cfg.opts...)
				e := asError(t, err)
				if !errors.Is(err, ErrTaskFailed) || e.TaskIndex != 77 {
					t.Fatalf("got %v (index %d), want a task failure at 77", err, e.TaskIndex)
				}
				if !strings.Contains(e.Message, tc.text) {
					t.Errorf("message %q lacks %q", e.Message, tc.text)
				}
				var p *PanicError
				if !errors.As(err, &p) {
					t.Fatalf("%v does not wrap a *PanicError", err)
				}
				if p.Index != 77 {
					t.Errorf("PanicError.Index = %d", p.Index)
				}
				tc.check(t, p.Value)
				if !strings.Contains(string(p.Stack), "TestPanicBecomesTaskError") ||
					!strings.Contains(e.Report, "  stack:\n") {
					t.Errorf("the stack does not show the panicking function:\n%s", e.Report)
				}
			})
		}
	}
	// A panic(error) value is found by errors.Is through the *PanicError.
	_, err := Map(context.Background(), ints(3), func(int) (int, error) { panic(errBad) }, NJobs(2))
	if !errors.Is(err, errBad) {
		t.Errorf("errors.Is(%v, errBad) = false", err)
	}
	var nilErr *runtime.PanicNilError
	_, err = Map(context.Background(), ints(3), func(int) (int, error) { panic(nil) })
	if !errors.As(err, &nilErr) {
		t.Errorf("errors.As(%v, *runtime.PanicNilError) = false", err)
	}
	settle(t)
}

func TestStaleHandleIsReportedNotPanicked(t *testing.T) {
	c := newCall(newSettings(nil), 10, 1)
	c.loop = chunkLoop(c, ints(10), make([]int, 10), square, nil)
	h := cgo.NewHandle(c)
	h.Delete()
	code, msg := runTask(uintptr(h), 0, 10)
	if code != codeBroken || !strings.Contains(msg, "misuse of an invalid Handle") {
		t.Errorf("runTask on a deleted handle: %d %q", code, msg)
	}
	if _, _, more := runProduce(uintptr(h)); more != -1 {
		t.Errorf("runProduce on a deleted handle: %d, want -1", more)
	}
	// A handle to something else is a trampoline failure too, and stops the call when it can.
	other := cgo.NewHandle("not a call")
	defer other.Delete()
	if code, _ := runTask(uintptr(other), 0, 1); code != codeBroken {
		t.Errorf("runTask on a foreign handle: %d", code)
	}
}

func TestCancelReturnsPromptly(t *testing.T) {
	for _, cfg := range []struct {
		name string
		opts []Option
	}{{"threads", []Option{NJobs(2)}}, {"sequential", nil}} {
		t.Run(cfg.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var started atomic.Int32
			time.AfterFunc(100*time.Millisecond, cancel)
			begin := time.Now()
			_, err := Map(ctx, ints(10_000), func(x int) (int, error) {
				started.Add(1)
				time.Sleep(10 * time.Millisecond) // 10,000 inputs: 50 s of work on 2 threads
				return x, nil
			}, cfg.opts...)
			if elapsed := time.Since(begin); elapsed > time.Second {
				t.Errorf("Map returned %v after the cancellation", elapsed-100*time.Millisecond)
			}
			if err != context.Canceled {
				t.Errorf("got %v, want context.Canceled", err)
			}
			settle(t)
			if s := started.Load(); s >= 1000 {
				t.Errorf("%d inputs started: the call did not stop", s)
			}
		})
	}
}

func TestCancelWithABlockedFn(t *testing.T) {
	release := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := Map(ctx, ints(100), func(x int) (int, error) {
		if x == 0 {
			<-release // ignores ctx: Go cannot interrupt it
		}
		return x, nil
	}, NJobs(2), ChunkSize(1))
	if elapsed := time.Since(begin); elapsed > time.Second {
		t.Errorf("Map returned after %v", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want context.DeadlineExceeded", err)
	}
	if liveCalls.Load() != 1 {
		t.Errorf("liveCalls = %d, want the blocked call still running", liveCalls.Load())
	}
	close(release)
	settle(t)
}

// A done context cancels the pj call itself (pj_parallel_cancel): Map and Stream return ctx.Err() at
// once, no input starts after the cancellation beyond those already running, and pj ends the call
// with PJ_STATUS_CANCELLED once they have returned.
func TestCancelStopsThePjCall(t *testing.T) {
	const workers = 4
	calls := []struct {
		name string
		run  func(ctx context.Context, fn func(int) (int, error), opts []Option) error
	}{
		{"Map", func(ctx context.Context, fn func(int) (int, error), opts []Option) error {
			_, err := Map(ctx, ints(10_000), fn, opts...)
			return err
		}},
		{"Stream", func(ctx context.Context, fn func(int) (int, error), opts []Option) error {
			var errs []error
			for r, err := range Stream(ctx, ints(10_000), fn, opts...) {
				if err == nil {
					return fmt.Errorf("got result %+v while every call of fn blocks", r)
				}
				errs = append(errs, err)
			}
			if len(errs) != 1 {
				return fmt.Errorf("got errors %v, want one", errs)
			}
			return errs[0]
		}},
	}
	for _, call := range calls {
		for _, cfg := range []struct {
			name string
			opts []Option
		}{
			{"chunk=1", []Option{NJobs(workers), ChunkSize(1)}},
			{"automatic chunks", []Option{NJobs(workers)}},
			{"unordered", []Option{NJobs(workers), ChunkSize(1), Unordered()}},
			// Not pre_dispatch=all: its producer may still be running at the cancellation, and then
			// ends the pj call (with a producer failure) before pj_parallel_cancel can.
		} {
			t.Run(call.name+"/"+cfg.name, func(t *testing.T) {
				settle(t)
				cancelledBefore := cancelledCalls.Load()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				release := make(chan struct{})
				var started atomic.Int32
				// Cancel once every worker is blocked in fn, i.e. with work queued behind them.
				cancelledAt := make(chan time.Time, 1)
				go func() {
					deadline := time.Now().Add(5 * time.Second)
					for started.Load() < workers && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
					cancelledAt <- time.Now()
					cancel()
				}()
				err := call.run(ctx, func(x int) (int, error) {
					started.Add(1)
					<-release // ignores ctx: Go cannot interrupt it
					return x, nil
				}, cfg.opts)
				elapsed := time.Since(<-cancelledAt)
				inFlight := started.Load()
				if err != context.Canceled {
					t.Errorf("got %v, want context.Canceled", err)
				}
				if elapsed > time.Second {
					t.Errorf("returned %v after the cancellation", elapsed)
				}
				if inFlight != workers {
					t.Errorf("%d inputs started before the cancellation, want %d (one per worker)", inFlight, workers)
				}
				if l := liveCalls.Load(); l != 1 {
					t.Errorf("liveCalls = %d, want the pj call still waiting for the blocked calls of fn", l)
				}
				// pj looks for a cancellation every 20 ms while it waits for the running calls of fn:
				// let it see this one before they return (and fail at their next input).
				time.Sleep(100 * time.Millisecond)
				close(release)
				settle(t)
				if s := started.Load(); s != inFlight {
					t.Errorf("%d more inputs of 10,000 started after the cancellation", s-inFlight)
				}
				if c := cancelledCalls.Load() - cancelledBefore; c != 1 {
					t.Errorf("%d pj calls ended with PJ_STATUS_CANCELLED, want 1: pj_parallel_cancel was not called", c)
				}
			})
		}
	}
}

// Cancellations racing the end of calls (before the pj call starts, while it runs, while and after
// its executor is freed) neither crash nor corrupt anything: each call returns all its results or
// ctx.Err(). Meant for -race.
func TestCancelRacesCompletion(t *testing.T) {
	var completed, cancelled atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				ctx, cancel := context.WithCancel(context.Background())
				timer := time.AfterFunc(time.Duration((7*g+i)%40)*250*time.Microsecond, cancel)
				n := 100 + i
				opts := []Option{NJobs(2), ChunkSize(1 + i%4)}
				got := make([]int, 0, n)
				var err error
				if i%2 == 0 {
					got, err = Map(ctx, ints(n), square, opts...)
				} else {
					for r, rerr := range Stream(ctx, ints(n), square, opts...) {
						if rerr != nil {
							err = rerr
							continue
						}
						if err != nil || r.Index != len(got) {
							t.Errorf("stream result %+v after %d results (error %v)", r, len(got), err)
							return
						}
						got = append(got, r.Value)
					}
				}
				cancel() // a late cancellation: harmless
				timer.Stop()
				switch {
				case err == context.Canceled:
					cancelled.Add(1)
				case err != nil:
					t.Errorf("got %v, want nil or context.Canceled", err)
					return
				case len(got) != n:
					t.Errorf("got %d results, want %d", len(got), n)
					return
				default:
					for x, v := range got {
						if v != x*x {
							t.Errorf("result %d = %d, want %d", x, v, x*x)
							return
						}
					}
					completed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	settle(t)
	t.Logf("%d calls completed, %d cancelled", completed.Load(), cancelled.Load())
	if completed.Load() == 0 || cancelled.Load() == 0 {
		t.Errorf("%d calls completed, %d cancelled: the cancellations did not race the calls' ends",
			completed.Load(), cancelled.Load())
	}
}

// The executor's cancel may run at any moment, from any goroutine: concurrently with free, and after
// it, when it does nothing.
func TestExecutorCancelRacesFree(t *testing.T) {
	for range 50 {
		par, _, err := newSettings([]Option{NJobs(2)}).open()
		if err != nil {
			t.Fatal(err)
		}
		ex := &executor{par: par}
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 100 {
					ex.cancel()
				}
			}()
		}
		ex.free()
		ex.cancel()
		wg.Wait()
		if ex.par != nil {
			t.Fatal("free left the executor's pointer set")
		}
	}
}

func TestCancelledBeforeTheCall(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Map(ctx, ints(10), func(x int) (int, error) {
		t.Error("fn called with a cancelled context")
		return x, nil
	}, NJobs(2))
	if err != context.Canceled {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

func TestTimeout(t *testing.T) {
	for _, cfg := range []struct {
		name string
		opts []Option
	}{{"threads", []Option{NJobs(2)}}, {"sequential", nil}} {
		t.Run(cfg.name, func(t *testing.T) {
			release := make(chan struct{})
			begin := time.Now()
			_, err := Map(context.Background(), ints(1000), func(x int) (int, error) {
				if x == 3 {
					<-release
				}
				return x, nil
			}, append(cfg.opts, Timeout(100*time.Millisecond))...)
			elapsed := time.Since(begin)
			close(release)
			if elapsed > time.Second {
				t.Errorf("Map returned after %v with a 100ms timeout", elapsed)
			}
			e := asError(t, err)
			if !errors.Is(err, ErrTimeout) || e.Status != StatusTimeout || e.TaskIndex != 3 {
				t.Fatalf("got %v (status %v, index %d), want a timeout of input 3", err, e.Status, e.TaskIndex)
			}
			if want := "pj: task 3 exceeded the timeout of 100ms"; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
			settle(t)
		})
	}
	// Timeouts are per input: many fast inputs in one chunk never add up to one.
	begin := time.Now()
	_, err := Map(context.Background(), ints(400), func(x int) (int, error) {
		time.Sleep(time.Millisecond)
		return x, nil
	}, Timeout(250*time.Millisecond), ChunkSize(400))
	if err != nil {
		t.Errorf("400 inputs of 1ms in one chunk (%v) with a 250ms timeout: %v", time.Since(begin), err)
	}
}

func TestProcessesAreRefused(t *testing.T) {
	for _, opt := range []Option{
		Backend("processes"), Backend("loky"), Backend("multiprocessing"), Backend(" loky "),
		Prefer("processes"), Set("backend", "multiprocessing"), Set("prefer", "processes"),
	} {
		_, err := Map(context.Background(), ints(10), func(x int) (int, error) {
			t.Error("fn called")
			return x, nil
		}, opt)
		e := asError(t, err)
		if !errors.Is(err, ErrUnsupported) || e.Status != StatusUnsupported {
			t.Errorf("got %v, want ErrUnsupported", err)
		}
		if !strings.Contains(e.Message, "cannot run in another process") ||
			!strings.Contains(e.Message, "pj.Register") || !strings.Contains(e.Message, "pj.MapNamed") {
			t.Errorf("the message does not say why: %q", e.Message)
		}
	}
	// Nothing else was started by the refused calls.
	if liveCalls.Load() != 0 {
		t.Errorf("liveCalls = %d", liveCalls.Load())
	}
}

func TestMPIIsRefused(t *testing.T) {
	for _, opt := range []Option{Backend("mpi"), Set("backend", "mpi")} {
		_, err := Map(context.Background(), ints(10), func(x int) (int, error) {
			t.Error("fn called")
			return x, nil
		}, opt)
		e := asError(t, err)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(e.Message, "pj_mpi_main") {
			t.Errorf("got %v, want ErrUnsupported naming pj_mpi_main", err)
		}
		// Built without the pjmpi tag, the error says how to get the MPI backend.
		if !mpiBuilt && (!strings.Contains(e.Message, "-tags pjmpi") || !strings.Contains(e.Message, "pj.MPIMain()")) {
			t.Errorf("got %v, want the way to build with MPI", err)
		}
	}
	if err := MPIMain(); !mpiBuilt && (!errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "-tags pjmpi")) {
		t.Errorf("MPIMain without the pjmpi tag: %v", err)
	}
}

func TestEveryOptionIsAccepted(t *testing.T) {
	opts := []Option{
		NJobs(2), Backend("threading"), Prefer("threads"), Require("sharedmem"), Verbose(0),
		Timeout(time.Hour), PreDispatch("3*n_jobs"), BatchSizeAuto(), TempFolder(os.TempDir()),
		MaxNbytes(1 << 20), MmapMode("r+"), ReturnAs("generator"), KeepWorkers(false),
		Progress(func(int, int, time.Duration) {}), ChunkSize(3), Backend("none"),
		Set("n_jobs", "-1"), Set("backend", "sequential"), Set("prefer", "none"), Set("require", "none"),
		Set("verbose", "0"), Set("timeout", "1.5"), Set("timeout", "none"), Set("pre_dispatch", "all"),
		Set("batch_size", "4"), Set("temp_folder", os.TempDir()), Set("max_nbytes", "none"),
		Set("mmap_mode", "c"), Set("return_as", "generator_unordered"), Set("keep_workers", "true"),
		OnError("raise"), ProgressBar(false), HandleSigint(false), Set("progress", "none"),
		Set("handle_sigint", "false"), Set("on_error", "collect"), nil,
	}
	out, err := Map(context.Background(), ints(100), square, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if out[9] != 81 {
		t.Errorf("out[9] = %d", out[9])
	}
}

func TestInvalidOptionsQuoteTheValue(t *testing.T) {
	cases := []struct {
		opt  Option
		text string
	}{
		{NJobs(0), `"0"`},
		{Verbose(-1), `"-1"`},
		{PreDispatch("2*n_jobs+os.system"), `"2*n_jobs+os.system"`},
		{BatchSize(0), `"0"`},
		{Set("batch_size", "big"), `"big"`},
		{Set("max_nbytes", "12Q"), `"12Q"`},
		{MmapMode("rw"), `"rw"`},
		{ReturnAs("set"), `"set"`},
		{Require("magic"), `"magic"`},
		{Prefer("gpu"), `"gpu"`},
		{Backend("dask"), `"dask"`},
		{Set("n_job", "2"), `"n_job"`},
		{Set("keep_workers", "maybe"), `"maybe"`},
		{Set("timeout", "-1"), `"-1"`},
		{Set("timeout", "soon"), `"soon"`},
		{Timeout(0), `"0s"`},
		{ChunkSize(0), `"0"`},
		{Set("n_jobs", "2\x00"), "NUL"},
		{OnError("ignore"), `"ignore"`},
		{Set("on_error", "skip"), `"skip"`},
		{Set("progress", "tqdm"), `"tqdm"`},
		{Set("handle_sigint", "maybe"), `"maybe"`},
		{Set("handle_sigint", "true\x00"), "NUL"},
		{HandleSigint(true), "signal.NotifyContext"},
	}
	for _, tc := range cases {
		_, err := Map(context.Background(), ints(3), square, tc.opt)
		e := asError(t, err)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("got %v, want ErrInvalidArgument", err)
		}
		if !strings.Contains(e.Message, tc.text) {
			t.Errorf("message %q does not quote %s", e.Message, tc.text)
		}
		if e.TaskIndex != -1 {
			t.Errorf("TaskIndex = %d for an option error", e.TaskIndex)
		}
		// The same error comes from Stream and EffectiveNJobs.
		for _, err2 := range Stream(context.Background(), ints(3), square, tc.opt) {
			if err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Stream: got %v, want %v", err2, err)
			}
		}
		if _, err3 := EffectiveNJobs(tc.opt); err3 == nil || err3.Error() != err.Error() {
			t.Errorf("EffectiveNJobs: got %v, want %v", err3, err)
		}
	}
	// Inconsistent options are reported when the executor is made.
	_, err := Map(context.Background(), ints(3), square, Prefer("threads"), Require("sharedmem"), PreDispatch("n_jobs-5"))
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("pre_dispatch below 1: got %v", err)
	}
}

func TestEffectiveNJobsAndCPUs(t *testing.T) {
	cpus := CPUCount()
	if cpus < 1 {
		t.Fatalf("CPUCount() = %d", cpus)
	}
	for _, tc := range []struct {
		opts []Option
		want int
	}{
		{nil, 1},
		{[]Option{NJobs(-1)}, cpus},
		{[]Option{NJobs(3)}, 3},
		{[]Option{NJobs(-2)}, max(cpus-1, 1)},
		{[]Option{NJobs(4), Backend("sequential")}, 1},
	} {
		got, err := EffectiveNJobs(tc.opts...)
		if err != nil || got != tc.want {
			t.Errorf("EffectiveNJobs = %d, %v; want %d", got, err, tc.want)
		}
	}
	if v := Version(); !strings.HasPrefix(v, "0.") {
		t.Errorf("Version() = %q", v)
	}
}

func TestStreamOrdered(t *testing.T) {
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			next := 0
			for r, err := range Stream(context.Background(), ints(10_007), square, cfg.opts...) {
				if err != nil {
					t.Fatal(err)
				}
				if r.Index != next || r.Value != next*next {
					t.Fatalf("got %+v, want index %d", r, next)
				}
				next++
			}
			if next != 10_007 {
				t.Fatalf("got %d results", next)
			}
		})
	}
	for range Stream(context.Background(), []int{}, square, NJobs(2)) {
		t.Error("an empty input yielded something")
	}
	settle(t)
}

func TestStreamUnordered(t *testing.T) {
	seen := make([]bool, 50)
	var order []int
	for r, err := range Stream(context.Background(), ints(50), func(x int) (int, error) {
		if x == 0 {
			time.Sleep(300 * time.Millisecond)
		}
		return x * x, nil
	}, NJobs(2), ChunkSize(1), BatchSize(1), Unordered()) {
		if err != nil {
			t.Fatal(err)
		}
		if seen[r.Index] || r.Value != r.Index*r.Index {
			t.Fatalf("bad or repeated result %+v", r)
		}
		seen[r.Index] = true
		order = append(order, r.Index)
	}
	if len(order) != 50 {
		t.Fatalf("got %d results", len(order))
	}
	if order[0] == 0 {
		t.Errorf("the slow input 0 came first in completion order: %v", order)
	}
}

func TestStreamError(t *testing.T) {
	var results, errs int
	for r, err := range Stream(context.Background(), ints(1000), func(x int) (int, error) {
		if x == 500 {
			return 0, errBad
		}
		return x, nil
	}, NJobs(2), ChunkSize(10)) {
		if err != nil {
			errs++
			e := asError(t, err)
			if r.Index != -1 || e.TaskIndex != 500 || !errors.Is(err, errBad) {
				t.Errorf("got %+v, %v (index %d)", r, err, e.TaskIndex)
			}
			continue
		}
		if errs > 0 {
			t.Fatalf("a result after the error: %+v", r)
		}
		if r.Index >= 500 {
			t.Errorf("result %d after the failed input, in input order", r.Index)
		}
		results++
	}
	if errs != 1 {
		t.Errorf("got %d errors, want 1", errs)
	}
	if liveCalls.Load() != 0 {
		t.Errorf("liveCalls = %d after the stream ended", liveCalls.Load())
	}
}

func TestStreamBreakStopsTheCall(t *testing.T) {
	var started, running atomic.Int32
	n := 0
	for r, err := range Stream(context.Background(), ints(100_000), func(x int) (int, error) {
		started.Add(1)
		running.Add(1)
		defer running.Add(-1)
		time.Sleep(100 * time.Microsecond)
		return x, nil
	}, NJobs(2)) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 10 || r.Index == 10 {
			break
		}
	}
	if r := running.Load(); r != 0 {
		t.Errorf("%d calls of fn still running after the loop", r)
	}
	if l := liveCalls.Load(); l != 0 {
		t.Errorf("liveCalls = %d after the loop", l)
	}
	if s := started.Load(); s > 10_000 {
		t.Errorf("%d inputs started for 10 results", s)
	}
}

func TestStreamBackpressure(t *testing.T) {
	var started atomic.Int32
	consumed := 0
	for _, err := range Stream(context.Background(), ints(1000), func(x int) (int, error) {
		started.Add(1)
		return x, nil
	}, NJobs(2), ChunkSize(1), BatchSize(1), PreDispatch("2*n_jobs")) {
		if err != nil {
			t.Fatal(err)
		}
		consumed++
		if consumed <= 20 {
			time.Sleep(5 * time.Millisecond)
			// pre_dispatch × batch size = 4 tasks produced and not yet read, plus the one the
			// driver holds, plus one being read.
			if ahead := int(started.Load()) - consumed; ahead > 8 {
				t.Fatalf("%d inputs started ahead of a slow reader", ahead)
			}
		}
	}
	if consumed != 1000 {
		t.Errorf("consumed %d", consumed)
	}
}

func TestStreamCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	var errs []error
	begin := time.Now()
	for r, err := range Stream(ctx, ints(100), func(x int) (int, error) {
		if x == 5 {
			<-release
		}
		return x, nil
	}, NJobs(2), ChunkSize(1)) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r.Index == 4 {
			time.AfterFunc(50*time.Millisecond, cancel)
		}
	}
	if elapsed := time.Since(begin); elapsed > time.Second {
		t.Errorf("the stream ended after %v", elapsed)
	}
	if len(errs) != 1 || errs[0] != context.Canceled {
		t.Errorf("got errors %v, want [context.Canceled]", errs)
	}
	close(release)
	settle(t)
}

func TestStreamTimeout(t *testing.T) {
	release := make(chan struct{})
	var last error
	for _, err := range Stream(context.Background(), ints(100), func(x int) (int, error) {
		if x == 42 {
			<-release
		}
		return x, nil
	}, NJobs(2), Timeout(50*time.Millisecond), Unordered()) {
		last = err
	}
	close(release)
	if e := asError(t, last); !errors.Is(last, ErrTimeout) || e.TaskIndex != 42 {
		t.Errorf("got %v, want a timeout of input 42", last)
	}
	settle(t)
}

func TestProgress(t *testing.T) {
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			// Plain variables: the race detector checks that the callback never runs concurrently
			// with itself or with this goroutine.
			var calls, last int
			var lastElapsed time.Duration
			opts := append(slices.Clone(cfg.opts), Progress(func(done, total int, elapsed time.Duration) {
				if total != 5000 || done < last || done > total || elapsed < lastElapsed {
					t.Errorf("progress(%d, %d, %v) after (%d, %v)", done, total, elapsed, last, lastElapsed)
				}
				calls++
				last, lastElapsed = done, elapsed
			}))
			if _, err := Map(context.Background(), ints(5000), square, opts...); err != nil {
				t.Fatal(err)
			}
			if calls == 0 || last != 5000 {
				t.Errorf("%d progress calls, last done = %d", calls, last)
			}
			calls, last, lastElapsed = 0, 0, 0
			for _, err := range Stream(context.Background(), ints(5000), square, opts...) {
				if err != nil {
					t.Fatal(err)
				}
			}
			if calls == 0 || last != 5000 {
				t.Errorf("Stream: %d progress calls, last done = %d", calls, last)
			}
		})
	}
	var got []int
	if _, err := Map(context.Background(), []int{}, square, Progress(func(done, total int, _ time.Duration) {
		got = append(got, done, total)
	})); err != nil || !slices.Equal(got, []int{0, 0}) {
		t.Errorf("empty input: progress %v, err %v", got, err)
	}
}

func TestPanicInProgressPropagatesToTheCaller(t *testing.T) {
	var stopped bool
	func() {
		defer func() {
			if r := recover(); r != "progress exploded" {
				t.Errorf("recovered %v", r)
			}
			stopped = true
		}()
		_, _ = Map(context.Background(), ints(100_000), func(x int) (int, error) {
			time.Sleep(time.Microsecond)
			return x, nil
		}, NJobs(2), ChunkSize(10), Progress(func(done, total int, _ time.Duration) {
			panic("progress exploded")
		}))
	}()
	if !stopped {
		t.Error("Map returned normally")
	}
	settle(t)
}

func TestConcurrentCalls(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := Map(context.Background(), ints(20_000), func(x int) (int, error) { return x + g, nil }, NJobs(2))
			if err != nil {
				t.Error(err)
				return
			}
			for i, v := range out {
				if v != i+g {
					t.Errorf("goroutine %d: out[%d] = %d", g, i, v)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestNestedCalls(t *testing.T) {
	out, err := Map(context.Background(), ints(20), func(x int) (int, error) {
		inner, err := Map(context.Background(), ints(x), square, NJobs(2))
		if err != nil {
			return 0, err
		}
		sum := 0
		for _, v := range inner {
			sum += v
		}
		return sum, nil
	}, NJobs(2), ChunkSize(1))
	if err != nil {
		t.Fatal(err)
	}
	for x, v := range out {
		if want := (x - 1) * x * (2*x - 1) / 6; v != want {
			t.Errorf("out[%d] = %d, want %d", x, v, want)
		}
	}
}

func threads(t *testing.T) int {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Skip("no thread count")
	return 0
}

func TestManyCallsLeaveNothingBehind(t *testing.T) {
	run := func() {
		for range 200 {
			if _, err := Map(context.Background(), ints(100), square, NJobs(4)); err != nil {
				t.Fatal(err)
			}
			for _, err := range Stream(context.Background(), ints(100), square, NJobs(4)) {
				if err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	run() // warm up: the Go runtime keeps some threads of its own
	goroutines, before := runtime.NumGoroutine(), threads(t)
	run()
	settle(t)
	time.Sleep(50 * time.Millisecond)
	if after := threads(t); after > before+4 {
		t.Errorf("threads: %d before 400 more calls, %d after", before, after)
	}
	if after := runtime.NumGoroutine(); after > goroutines+2 {
		t.Errorf("goroutines: %d before 400 more calls, %d after", goroutines, after)
	}
}

func TestErrorIsMatchesOnlyItsSentinel(t *testing.T) {
	for status, sentinel := range sentinels {
		err := error(&Error{Status: status, TaskIndex: -1, Message: "m"})
		for _, other := range sentinels {
			if got := errors.Is(err, other); got != (other == sentinel) {
				t.Errorf("errors.Is(%v error, %v) = %v", status, other, got)
			}
		}
		if !strings.HasPrefix(status.String(), "PJ_STATUS_") {
			t.Errorf("Status(%d).String() = %q", status, status.String())
		}
	}
}
