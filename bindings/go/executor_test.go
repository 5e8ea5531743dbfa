package pj

import (
	"context"
	"errors"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// namedPids runs test.square over n inputs with opts and returns the worker pids that ran them.
func namedPids(t *testing.T, n int, opts ...Option) map[int]bool {
	t.Helper()
	out, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(n), opts...)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[int]bool{}
	for i, r := range out {
		if r.X != i || r.Square != i*i {
			t.Fatalf("result %d: got %+v", i, r)
		}
		pids[r.Pid] = true
	}
	return pids
}

// parentOf reads the parent pid of pid from /proc (-1 when it cannot).
func parentOf(pid int) int {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1
	}
	// pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 {
		return -1
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// Issue 18 item 5: an Executor with KeepWorkers(true) runs the calls of MapNamed on the same worker
// processes, which stay alive between calls as children of this process; Close reaps them all.
func TestExecutorKeepsWorkers(t *testing.T) {
	ex, err := NewExecutor(NJobs(2), KeepWorkers(true))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	all := map[int]bool{}
	for call := range 3 {
		pids := namedPids(t, 50, On(ex))
		for pid := range pids {
			if pid == os.Getpid() {
				t.Fatalf("call %d ran in this process", call)
			}
			all[pid] = true
		}
		// Between calls the workers are alive, and ours.
		for pid := range all {
			if ppid := parentOf(pid); ppid != os.Getpid() {
				t.Fatalf("after call %d: worker %d has parent %d, want %d (alive and ours)", call, pid, ppid, os.Getpid())
			}
		}
	}
	if len(all) > 2 {
		t.Fatalf("3 calls on 2 kept workers ran in %d processes: %v", len(all), all)
	}
	if err := ex.Close(); err != nil {
		t.Fatal(err)
	}
	for pid := range all {
		// Reaped, not a zombie: kill(pid, 0) fails with ESRCH.
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("worker %d after Close: kill(0) gave %v, want ESRCH", pid, err)
		}
	}
	settle(t)
}

// Without KeepWorkers an Executor's calls start their worker processes afresh (the check above
// can fail), and the calls of an Executor leave no child behind either.
func TestExecutorWithoutKeepWorkers(t *testing.T) {
	ex, err := NewExecutor(NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	all := map[int]bool{}
	for range 3 {
		for pid := range namedPids(t, 50, On(ex)) {
			all[pid] = true
		}
	}
	if len(all) < 3 {
		t.Fatalf("3 calls without keep_workers ran in only %d processes: %v", len(all), all)
	}
	for pid := range all {
		if parentOf(pid) == os.Getpid() {
			t.Errorf("worker %d of a finished call is still our child", pid)
		}
	}
	settle(t)
}

// Every call function runs on an Executor, one call after another on the same pool.
func TestExecutorCalls(t *testing.T) {
	ex, err := NewExecutor(NJobs(3))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ctx := context.Background()
	for range 3 {
		out, err := Map(ctx, ints(1000), square, On(ex))
		if err != nil || len(out) != 1000 || out[999] != 999*999 {
			t.Fatalf("Map: %v, %d results", err, len(out))
		}
	}
	idx, err := MapIndexed(ctx, ints(10), func(i, x int) (int, error) { return i + x, nil }, On(ex), ChunkSize(1))
	if err != nil || idx[9] != 18 {
		t.Fatalf("MapIndexed: %v %v", err, idx)
	}
	collected, err := MapCollect(ctx, ints(10), func(x int) (int, error) {
		if x == 4 {
			return 0, errors.New("four")
		}
		return x, nil
	}, On(ex))
	if err != nil || collected[4].Err == nil || collected[5].Value != 5 {
		t.Fatalf("MapCollect: %v %+v", err, collected)
	}
	// A stream left early ends its call: the next call on the Executor runs.
	seen := 0
	for r, err := range Stream(ctx, ints(10000), square, On(ex), ChunkSize(1)) {
		if err != nil {
			t.Fatal(err)
		}
		if seen++; seen == 3 {
			_ = r
			break
		}
	}
	var got []int
	for r, err := range Stream(ctx, ints(5), square, On(ex)) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Value)
	}
	if !slices.Equal(got, []int{0, 1, 4, 9, 16}) {
		t.Fatalf("Stream after a broken stream: %v", got)
	}
	// Named functions on threads, with a per-call Progress (the Executor's progress slot).
	var last int
	out, err := MapNamed[int, pidSquare](ctx, "test.square", ints(20), On(ex), Backend("threads"))
	if err == nil || !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "NewExecutor") {
		t.Fatalf("a per-call Backend on an Executor: %v, %v", out, err)
	}
	out, err = MapNamed[int, pidSquare](ctx, "test.square", ints(20), On(ex),
		Progress(func(done, total int, _ time.Duration) { last = done }))
	if err != nil || len(out) != 20 || last != 20 {
		t.Fatalf("MapNamed with progress: %v, %d results, progress %d", err, len(out), last)
	}
	settle(t)
}

// Options: the Executor's apply to every call; a call takes only its own (Progress, Timeout,
// ChunkSize, OnError) and refuses the others, naming them.
func TestExecutorOptions(t *testing.T) {
	if _, err := NewExecutor(NJobs(0)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NJobs(0): %v", err)
	}
	if _, err := NewExecutor(Require("sharedmem"), Backend("processes")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("inconsistent options: %v", err)
	}
	ex, err := NewExecutor(NJobs(2), OnError("collect"))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	if _, err := NewExecutor(On(ex)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NewExecutor(On(ex)): %v", err)
	}
	if _, err := Map(context.Background(), ints(3), square, On(nil)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("On(nil): %v", err)
	}
	for _, opt := range []Option{NJobs(4), BatchSize(2), Set("n_jobs", "2"), KeepWorkers(true), ProgressBar(true)} {
		_, err := Map(context.Background(), ints(3), square, On(ex), opt)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), opt.String()) {
			t.Errorf("%s on a call with On: %v", opt, err)
		}
	}
	if _, err := Map(context.Background(), ints(3), square, On(ex), Timeout(-1)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("an invalid per-call option: %v", err)
	}
	// The Executor's OnError("collect") applies: Map returns every value and the joined errors.
	failing := func(x int) (int, error) {
		if x == 1 {
			return 0, errors.New("one")
		}
		return x, nil
	}
	out, err := Map(context.Background(), ints(3), failing, On(ex))
	if !errors.Is(err, ErrTaskFailed) || len(out) != 3 || out[2] != 2 {
		t.Fatalf("collect from the Executor: %v %v", out, err)
	}
	// ... and a call's own OnError overrides it.
	out, err = Map(context.Background(), ints(3), failing, On(ex), OnError("raise"), ChunkSize(1), Timeout(time.Minute))
	if !errors.Is(err, ErrTaskFailed) || out != nil {
		t.Fatalf("raise from the call: %v %v", out, err)
	}
}

// Close is idempotent; calls after Close, and calls waiting for their turn when it comes, return
// ErrClosed; Close waits for the call in flight.
func TestExecutorClose(t *testing.T) {
	ex, err := NewExecutor(NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	release := make(chan struct{})
	started := make(chan struct{})
	var once sync.Once
	first := make(chan error, 1)
	go func() {
		_, err := Map(ctx, ints(2), func(x int) (int, error) {
			once.Do(func() { close(started) })
			<-release
			return x, nil
		}, On(ex), ChunkSize(1))
		first <- err
	}()
	<-started
	waiting := make(chan error, 1)
	go func() {
		_, err := Map(ctx, ints(2), square, On(ex))
		waiting <- err
	}()
	// A waiting call gives up when its context is done.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := Map(short, ints(2), square, On(ex)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting with a done context: %v", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- ex.Close() }()
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("a call waiting when Close came: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a waiting call did not return after Close")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a call was in flight", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("the call in flight during Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := ex.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := Map(ctx, ints(2), square, On(ex)); !errors.Is(err, ErrClosed) ||
		!strings.HasPrefix(err.Error(), "pj: the executor is closed") {
		t.Fatalf("Map after Close: %v", err)
	}
	if _, err := MapNamed[int, pidSquare](ctx, "test.square", ints(2), On(ex)); !errors.Is(err, ErrClosed) {
		t.Fatalf("MapNamed after Close: %v", err)
	}
	for _, err := range Stream(ctx, ints(2), square, On(ex)) {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Stream after Close: %v", err)
		}
	}
	settle(t)
}

// Concurrent calls from many goroutines run one at a time, each with its own results (run with
// -race); a cancelled call's Executor serves the next one once its running functions return; a
// call made from inside a call on the same Executor fails with ErrBusy instead of waiting forever.
func TestExecutorConcurrentCalls(t *testing.T) {
	ex, err := NewExecutor(NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				out, err := Map(ctx, ints(200), func(x int) (int, error) { return x + g, nil }, On(ex))
				if err != nil {
					errs <- err
					return
				}
				if out[199] != 199+g {
					errs <- errors.New("wrong result")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	cctx, cancel := context.WithCancel(ctx)
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	_, err = Map(cctx, ints(100), func(x int) (int, error) {
		time.Sleep(5 * time.Millisecond)
		return x, nil
	}, On(ex), ChunkSize(1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	if out, err := Map(ctx, ints(10), square, On(ex)); err != nil || out[9] != 81 {
		t.Fatalf("the call after a cancelled one: %v %v", out, err)
	}

	_, err = Map(ctx, ints(2), func(x int) (int, error) {
		_, err := Map(ctx, ints(2), square, On(ex))
		return x, err
	}, On(ex), ChunkSize(1))
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("a nested call on the same Executor: %v", err)
	}
	settle(t)
}

// The finalizer, a safety net only: an Executor dropped without Close is freed once the garbage
// collector finds it, and its kept worker processes are reaped then.
func TestExecutorFinalizerReapsWorkers(t *testing.T) {
	pids := func() map[int]bool {
		ex, err := NewExecutor(NJobs(2), KeepWorkers(true))
		if err != nil {
			t.Fatal(err)
		}
		return namedPids(t, 20, On(ex))
	}()
	deadline := time.Now().Add(30 * time.Second)
	for pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("worker %d of an unreachable Executor still alive", pid)
			}
			runtime.GC()
			time.Sleep(time.Millisecond)
		}
	}
	settle(t)
}
