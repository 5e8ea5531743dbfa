package pj

// Seams a new user hits, probed adversarially: nil functions, nonsense sizes, an Executor used
// from inside a Stream's loop on it, closed twice or while a call runs, and calls racing on it.
// Each probe bounds its wait, so that a hang is a failure and not a stuck test.

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// bounded runs f on a goroutine and fails the test when it has not returned within d.
func bounded(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %v", what, d)
	}
}

func TestSeamNilFunctionIsAnError(t *testing.T) {
	ctx := context.Background()
	in := ints(10)
	for _, backend := range []string{"threads", "sequential"} {
		_, err := Map[int, int](ctx, in, nil, Backend(backend), NJobs(2))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Map with a nil fn on %s: %v, want ErrInvalidArgument", backend, err)
		}
		_, err = MapIndexed[int, int](ctx, in, nil, Backend(backend), NJobs(2))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("MapIndexed with a nil fn on %s: %v, want ErrInvalidArgument", backend, err)
		}
		_, err = MapCollect[int, int](ctx, in, nil, Backend(backend), NJobs(2))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("MapCollect with a nil fn on %s: %v, want ErrInvalidArgument", backend, err)
		}
		_, err = MapContext[int, int](ctx, in, nil, Backend(backend), NJobs(2))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("MapContext with a nil fn on %s: %v, want ErrInvalidArgument", backend, err)
		}
		n := 0
		for _, err := range Stream[int, int](ctx, in, nil, Backend(backend), NJobs(2)) {
			n++
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Stream with a nil fn on %s: %v, want ErrInvalidArgument", backend, err)
			}
		}
		if n != 1 {
			t.Errorf("Stream with a nil fn on %s yielded %d times, want once (the error)", backend, n)
		}
	}
}

func TestSeamNonsenseSizesAreRefused(t *testing.T) {
	ctx := context.Background()
	for name, opt := range map[string]Option{
		"ChunkSize(-1)":         ChunkSize(-1),
		"BatchSize(-1)":         BatchSize(-1),
		"BatchSize(0)":          BatchSize(0),
		"NJobs(0)":              NJobs(0),
		"MaxNbytes(-1)":         MaxNbytes(-1),
		"Timeout(-1s)":          Timeout(-time.Second),
		"StackSize(-1)":         StackSize(-1),
		"MaxTasksPerChild(-1)":  MaxTasksPerChild(-1),
		"WorkerMemoryLimit(-1)": WorkerMemoryLimit(-1),
		"IdleWorkerTimeout(-1)": IdleWorkerTimeout(-time.Second),
	} {
		bounded(t, 30*time.Second, name, func() {
			out, err := Map(ctx, ints(5), square, opt, Backend("threads"))
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: got %v, %v; want ErrInvalidArgument", name, out, err)
			}
		})
	}
	// Huge but meaningful: more workers than CPUs is joblib's right; the call works.
	bounded(t, 60*time.Second, "NJobs(1<<40)", func() {
		out, err := Map(ctx, ints(5), square, NJobs(1<<40), Backend("threads"))
		if err != nil && !errors.Is(err, ErrInvalidArgument) && !errors.Is(err, ErrIO) {
			t.Errorf("NJobs(1<<40): %v", err)
		}
		if err == nil && len(out) != 5 {
			t.Errorf("NJobs(1<<40): %d results", len(out))
		}
	})
}

// A call on an Executor from the loop body of a Stream running on that same Executor: the stream
// holds the Executor's turn until its loop ends, so the inner call could only wait forever.
func TestSeamCallInsideAStreamLoopOnTheSameExecutor(t *testing.T) {
	ex, err := NewExecutor(NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ctx := context.Background()
	for _, named := range []bool{false, true} {
		bounded(t, 30*time.Second, "a call inside a Stream's loop on the same Executor", func() {
			seq := Stream(ctx, ints(10), func(x int) (pidSquare, error) { return pidSquare{X: x, Square: x * x}, nil }, On(ex))
			if named {
				seq = StreamNamed[int, pidSquare](ctx, "test.square", ints(10), On(ex))
			}
			for r, err := range seq {
				if err != nil {
					t.Errorf("named=%v: stream: %v", named, err)
					break
				}
				if r.Index == 3 {
					_, err := MapNamed[int, pidSquare](ctx, "test.square", ints(3), On(ex))
					if !errors.Is(err, ErrBusy) {
						t.Errorf("named=%v: the inner MapNamed: %v, want ErrBusy", named, err)
					}
					_, err = Map(ctx, ints(3), square, On(ex))
					if !errors.Is(err, ErrBusy) {
						t.Errorf("named=%v: the inner Map: %v, want ErrBusy", named, err)
					}
				}
			}
		})
	}
	// And the Executor works afterwards.
	if out, err := Map(ctx, ints(4), square, On(ex)); err != nil || len(out) != 4 {
		t.Fatalf("after: %v %v", out, err)
	}
}

// Close from the loop body of a Stream (or StreamNamed, whose kept workers must be reaped) on the
// Executor: Close would wait for the call in flight, which is this very loop. It returns at once;
// the loop goes on to its end, and the Executor is freed then.
func TestSeamCloseInsideAStreamLoop(t *testing.T) {
	for _, named := range []bool{false, true} {
		opts := []Option{NJobs(2), Backend("threads")}
		if named {
			opts = []Option{NJobs(2), KeepWorkers(true)}
		}
		ex, err := NewExecutor(opts...)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		kids := childCount()
		bounded(t, 30*time.Second, "Close inside a Stream's loop on the same Executor", func() {
			seq := Stream(ctx, ints(10), func(x int) (pidSquare, error) { return pidSquare{X: x, Square: x * x}, nil }, On(ex))
			if named {
				seq = StreamNamed[int, pidSquare](ctx, "test.square", ints(10), On(ex))
			}
			seen := 0
			for r, err := range seq {
				if err != nil {
					t.Errorf("named=%v: the stream failed after Close: %v", named, err)
					break
				}
				if r.Value.Square != r.Index*r.Index {
					t.Errorf("named=%v: result %d = %v", named, r.Index, r.Value)
				}
				seen++
				if seen == 2 {
					if err := ex.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				}
				if seen == 3 {
					if _, err := Map(ctx, ints(3), square, On(ex)); !errors.Is(err, ErrClosed) {
						t.Errorf("named=%v: a call from the loop after its Close: %v, want ErrClosed", named, err)
					}
				}
			}
			if seen != 10 {
				t.Errorf("named=%v: the loop saw %d results of 10", named, seen)
			}
		})
		if _, err := Map(ctx, ints(3), square, On(ex)); !errors.Is(err, ErrClosed) {
			t.Fatalf("named=%v: a call after Close: %v, want ErrClosed", named, err)
		}
		if err := ex.Close(); err != nil {
			t.Fatalf("named=%v: the second Close: %v", named, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for childCount() > kids && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if left := childCount() - kids; left > 0 {
			t.Fatalf("named=%v: %d worker processes left after the loop ended", named, left)
		}
	}
}

// childCount counts this process's child processes.
func childCount() int {
	n := 0
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		text, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		n += len(strings.Fields(string(text)))
	}
	return n
}

// Close while another goroutine's call runs: the call ends normally, Close waits for it, later
// calls get ErrClosed, and a waiting call gives up with ErrClosed.
func TestSeamCloseWhileACallRuns(t *testing.T) {
	ex, err := NewExecutor(NJobs(2), Backend("threads"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	started := make(chan struct{})
	var once sync.Once
	slow := func(x int) (int, error) {
		once.Do(func() { close(started) })
		time.Sleep(5 * time.Millisecond)
		return x * x, nil
	}
	var out []int
	var callErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, callErr = Map(ctx, ints(40), slow, On(ex))
	}()
	<-started
	bounded(t, 30*time.Second, "Close during a call", func() {
		if err := ex.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	wg.Wait()
	if callErr != nil || len(out) != 40 {
		t.Fatalf("the call in flight: %d results, %v", len(out), callErr)
	}
	for i, v := range out {
		if v != i*i {
			t.Fatalf("result %d = %d", i, v)
		}
	}
	if _, err := Map(ctx, ints(3), square, On(ex)); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// Calls racing on one Executor from several goroutines: each runs in its turn and gets its own
// results (run with -race).
func TestSeamConcurrentCallsOnOneExecutorGetTheirOwnResults(t *testing.T) {
	ex, err := NewExecutor(NJobs(2), Backend("threads"))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for range 5 {
				in := ints(50 + g)
				out, err := Map(ctx, in, func(x int) (int, error) { return x*1000 + g, nil }, On(ex))
				if err != nil {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
				for i, v := range out {
					if v != i*1000+g {
						t.Errorf("goroutine %d got another call's result %d at %d", g, v, i)
						return
					}
				}
			}
		}()
	}
	bounded(t, 60*time.Second, "racing calls", wg.Wait)
}

// A cancelled context mid-Stream (threads and spawned workers): the loop gets ctx.Err() in
// bounded time and ends.
func TestSeamContextCancelledMidStream(t *testing.T) {
	for _, named := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		var seq func(func(Result[pidSquare], error) bool)
		if named {
			seq = StreamNamed[int, pidSquare](ctx, "test.square", ints(200), NJobs(2))
		} else {
			seq = Stream(ctx, ints(200), func(x int) (pidSquare, error) {
				time.Sleep(time.Millisecond)
				return pidSquare{X: x, Square: x * x}, nil
			}, NJobs(2), Backend("threads"))
		}
		var last error
		bounded(t, 30*time.Second, "a Stream whose ctx is cancelled", func() {
			n := 0
			for r, err := range seq {
				if err != nil {
					last = err
					break
				}
				if r.Value.Square != r.Index*r.Index {
					t.Errorf("result %d = %v", r.Index, r.Value)
				}
				if n++; n == 5 {
					cancel()
				}
			}
		})
		cancel()
		if !errors.Is(last, context.Canceled) {
			t.Errorf("named=%v: the loop ended with %v, want context.Canceled", named, last)
		}
	}
}

// A nil context (which Go's convention forbids, but which compiles) is an error, not a panic.
func TestSeamNilContextIsAnError(t *testing.T) {
	var ctx context.Context // nil
	fn := func(x int) (int, error) { return x, nil }
	cfn := func(_ context.Context, x int) (int, error) { return x, nil }
	in := ints(5)
	firstErr := func(seq func(func(Result[int], error) bool)) (err error) {
		for _, e := range seq {
			if e != nil {
				return e
			}
		}
		return nil
	}
	firstNamedErr := func(seq func(func(Result[pidSquare], error) bool)) (err error) {
		for _, e := range seq {
			if e != nil {
				return e
			}
		}
		return nil
	}
	for name, call := range map[string]func() error{
		"Map":        func() error { _, err := Map(ctx, in, fn, NJobs(2)); return err },
		"MapIndexed": func() error { _, err := MapIndexed(ctx, in, func(int, int) (int, error) { return 0, nil }); return err },
		"MapCollect": func() error { _, err := MapCollect(ctx, in, fn); return err },
		"Stream":     func() error { return firstErr(Stream(ctx, in, fn)) },
		"MapContext": func() error { _, err := MapContext(ctx, in, cfn); return err },
		"MapIndexedContext": func() error {
			_, err := MapIndexedContext(ctx, in, func(context.Context, int, int) (int, error) { return 0, nil })
			return err
		},
		"MapCollectContext": func() error { _, err := MapCollectContext(ctx, in, cfn); return err },
		"StreamContext":     func() error { return firstErr(StreamContext(ctx, in, cfn)) },
		"MapNamed":          func() error { _, err := MapNamed[int, pidSquare](ctx, "test.square", in); return err },
		"MapCollectNamed":   func() error { _, err := MapCollectNamed[int, pidSquare](ctx, "test.square", in); return err },
		"StreamNamed":       func() error { return firstNamedErr(StreamNamed[int, pidSquare](ctx, "test.square", in)) },
	} {
		func() {
			defer func() {
				if v := recover(); v != nil {
					t.Errorf("%s with a nil ctx panicked: %v", name, v)
				}
			}()
			if err := call(); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s with a nil ctx: %v, want ErrInvalidArgument", name, err)
			}
		}()
	}
}

// A panicking function on an Executor (threads, and kept spawned workers): a *PanicError for the
// input, and the next call on the same Executor works (on processes, in the same workers: a
// recovered panic does not end one).
func TestSeamPanicOnAnExecutorLeavesItUsable(t *testing.T) {
	ctx := context.Background()
	threads, err := NewExecutor(NJobs(2), Backend("threads"))
	if err != nil {
		t.Fatal(err)
	}
	defer threads.Close()
	_, err = Map(ctx, ints(30), func(x int) (int, error) {
		if x == 17 {
			panic("seventeen")
		}
		return x, nil
	}, On(threads))
	var pe *PanicError
	if !errors.As(err, &pe) || pe.Index != 17 {
		t.Fatalf("threads: %v, want a *PanicError for input 17", err)
	}
	if out, err := Map(ctx, ints(30), square, On(threads)); err != nil || out[29] != 29*29 {
		t.Fatalf("threads, the next call: %v", err)
	}

	procs, err := NewExecutor(NJobs(2), KeepWorkers(true))
	if err != nil {
		t.Fatal(err)
	}
	defer procs.Close()
	before, err := MapNamed[int, pidSquare](ctx, "test.square", ints(8), On(procs))
	if err != nil {
		t.Fatal(err)
	}
	_, err = MapNamed[int, int](ctx, "test.outcome", []int{1, 2, 5}, On(procs)) // 5 panics
	var e *Error
	if !errors.As(err, &e) || e.TaskIndex != 2 || !errors.Is(err, ErrTaskFailed) || !errors.As(err, &pe) {
		t.Fatalf("processes: %v, want ErrTaskFailed with a *PanicError for input 2", err)
	}
	after, err := MapNamed[int, pidSquare](ctx, "test.square", ints(8), On(procs))
	if err != nil {
		t.Fatalf("processes, the next call: %v", err)
	}
	pids := map[int]bool{}
	for _, r := range before {
		pids[r.Pid] = true
	}
	for _, r := range after {
		if r.Square != r.X*r.X || !pids[r.Pid] || r.Pid == os.Getpid() {
			t.Fatalf("processes, the next call: %+v (workers before: %v)", r, pids)
		}
	}
}

// A Stream on an Executor whose loop ended on its ctx while calls of fn still run: the next call
// from the same goroutine waits for them (the Executor's turn), as from any goroutine; it is not
// taken for a call from inside the loop.
func TestSeamCallAfterAStreamLoopEndedOnItsContext(t *testing.T) {
	ex, err := NewExecutor(NJobs(2), Backend("threads"))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	// The loop and the next call on one goroutine (bounded's).
	bounded(t, 60*time.Second, "a Stream ended on its ctx, then the next call", func() {
		for round := range 3 {
			ctx, cancel := context.WithCancel(context.Background())
			var last error
			for _, err := range Stream(ctx, ints(100), func(x int) (int, error) {
				time.Sleep(30 * time.Millisecond)
				return x, nil
			}, On(ex), ChunkSize(1)) {
				if err != nil {
					last = err
					break
				}
				cancel()
			}
			cancel()
			if !errors.Is(last, context.Canceled) {
				t.Errorf("round %d: the loop ended with %v", round, last)
			}
			if out, err := Map(context.Background(), ints(4), square, On(ex)); err != nil || len(out) != 4 {
				t.Errorf("round %d: the next call from the same goroutine: %v", round, err)
			}
		}
	})
}
