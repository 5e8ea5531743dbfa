package pj

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"
)

// collectStream reads a whole stream: its results in the order yielded, and the error that ended it.
func collectStream[R any](t *testing.T, seq func(func(Result[R], error) bool)) ([]Result[R], error) {
	t.Helper()
	var out []Result[R]
	for r, err := range seq {
		if r.Index == -1 {
			if err == nil {
				t.Fatal("a Result with Index -1 and no error")
			}
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Issue 21 item 2: StreamNamed runs a registered function on every backend MapNamed has, in worker
// processes by default (spawned from the test binary: TestMain), in input order or, with
// Unordered, in completion order.
func TestStreamNamedBackends(t *testing.T) {
	for _, cfg := range []struct {
		name      string
		opts      []Option
		elsewhere bool // the inputs run in other processes
	}{
		{"processes", []Option{NJobs(3)}, true},
		{"spawn,batch=1", []Option{NJobs(2), Set("start_method", "spawn"), BatchSize(1)}, true},
		{"processes,unordered", []Option{NJobs(3), Unordered()}, true},
		{"n_jobs=1", nil, false},
		{"threads", []Option{NJobs(3), Backend("threads")}, false},
		{"threads,unordered", []Option{NJobs(3), Backend("threads"), Unordered()}, false},
		{"sequential", []Option{NJobs(3), Backend("sequential")}, false},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			unordered := slices.ContainsFunc(cfg.opts, func(o Option) bool { return o.String() == Unordered().String() })
			for _, n := range []int{0, 1, 200} {
				out, err := collectStream(t, StreamNamed[int, pidSquare](context.Background(), "test.square", ints(n), cfg.opts...))
				if err != nil {
					t.Fatal(err)
				}
				if len(out) != n {
					t.Fatalf("n=%d: got %d results", n, len(out))
				}
				seen := make([]bool, n)
				pids := map[int]bool{}
				for k, r := range out {
					if !unordered && r.Index != k {
						t.Fatalf("result %d has index %d: not in input order", k, r.Index)
					}
					if r.Index < 0 || r.Index >= n || seen[r.Index] || r.Err != nil {
						t.Fatalf("result %d: %+v", k, r)
					}
					seen[r.Index] = true
					if v := r.Value; v.X != r.Index || v.Square != r.Index*r.Index {
						t.Fatalf("input %d: got %+v", r.Index, v)
					}
					pids[r.Value.Pid] = true
				}
				if n > 0 && pids[os.Getpid()] == cfg.elsewhere {
					t.Errorf("n=%d: ran in this process (%d): %v; want elsewhere: %v", n, os.Getpid(), pids, cfg.elsewhere)
				}
			}
		})
	}
	settle(t)
}

// Go code cannot run in a forked child: StreamNamed refuses the fork start method, as MapNamed does.
func TestStreamNamedRefusals(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []Option
		want error
	}{
		{"fork", []Option{NJobs(2), Set("start_method", "fork")}, ErrUnsupported},
		{"mpi without the tag", []Option{NJobs(2), Backend("mpi")}, ErrUnsupported},
		{"sharedmem", []Option{NJobs(2), Backend("processes"), Require("sharedmem")}, ErrInvalidArgument},
	} {
		out, err := collectStream(t, StreamNamed[int, pidSquare](ctx, "test.square", ints(3), tc.opts...))
		if len(out) != 0 || !errors.Is(err, tc.want) {
			t.Errorf("%s: got %d results, %v; want %v", tc.name, len(out), err, tc.want)
		}
	}
	out, err := collectStream(t, StreamNamed[int, int](ctx, "test.square", ints(3), NJobs(2)))
	if len(out) != 0 || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("wrong types: got %d results, %v", len(out), err)
	}
	if liveCalls.Load() != 0 {
		t.Errorf("liveCalls = %d", liveCalls.Load())
	}
}

// Without OnError("collect") the first failure ends the stream, after the inputs before it; with it
// every input is yielded in its turn, a failure as its own error.
func TestStreamNamedFailures(t *testing.T) {
	for _, opts := range [][]Option{{NJobs(2)}, {NJobs(2), Backend("threads")}} {
		out, err := collectStream(t, StreamNamed[int, int](context.Background(), "test.outcome", ints(5), opts...))
		e := asError(t, err)
		if !errors.Is(err, ErrTaskFailed) || e.TaskIndex != 3 || e.Message != "task 3 failed: input 3: bad input" {
			t.Fatalf("%v: got %v (index %d)", opts, err, e.TaskIndex)
		}
		// Fail-fast: the inputs before the failure come in order, as far as they completed.
		if len(out) > 3 {
			t.Errorf("%v: %d results before the failure of input 3", opts, len(out))
		}
		for i, r := range out {
			if r.Index != i || r.Value != i*i || r.Err != nil {
				t.Errorf("%v: before the failure: %+v", opts, out)
			}
		}
	}
	in := ints(60) // failures, panics, and a worker that exits (40): see namedOutcome
	out, err := collectStream(t, StreamNamed[int, int](context.Background(), "test.outcome", in,
		NJobs(3), BatchSize(1), OnError("collect")))
	if err != nil || len(out) != len(in) {
		t.Fatalf("got %d results, %v", len(out), err)
	}
	for i, r := range out {
		want, status, msg := namedOutcome(i)
		if r.Index != i {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
		if status == StatusOK {
			if r.Err != nil || r.Value != want {
				t.Errorf("input %d: got %+v", i, r)
			}
			continue
		}
		e := asError(t, r.Err)
		if e.Status != status || e.TaskIndex != i || (msg != "" && e.Message != msg) || r.Value != 0 {
			t.Errorf("input %d: got %+v (status %v, index %d); want %v %q", i, r, e.Status, e.TaskIndex, status, msg)
		}
	}
	var p *PanicError
	if !errors.As(out[5].Err, &p) || p.Value != "boom 5" {
		t.Errorf("input 5: %#v", out[5].Err)
	}
	settle(t)
}

// Breaking out of the loop stops the call: the workers running minute-long inputs are killed, and
// the loop ends long before those would.
func TestStreamNamedBreak(t *testing.T) {
	begin := time.Now()
	in := []time.Duration{0, time.Minute, time.Minute, time.Minute}
	got := 0
	for r, err := range StreamNamed[time.Duration, int](context.Background(), "test.sleep", in, NJobs(3)) {
		if err != nil || r.Index != 0 {
			t.Fatalf("got %+v, %v", r, err)
		}
		got++
		break
	}
	if got != 1 {
		t.Fatalf("got %d results", got)
	}
	if elapsed := time.Since(begin); elapsed > 20*time.Second {
		t.Errorf("the loop ended after %v", elapsed)
	}
	settle(t)
}

// A done context ends the stream with ctx.Err() at once.
func TestStreamNamedCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	in := []time.Duration{time.Millisecond, time.Minute, time.Minute, time.Minute}
	out, err := collectStream(t, StreamNamed[time.Duration, int](ctx, "test.sleep", in, NJobs(2)))
	if !errors.Is(err, context.DeadlineExceeded) || len(out) > 1 {
		t.Fatalf("got %d results, %v", len(out), err)
	}
	if elapsed := time.Since(begin); elapsed > 20*time.Second {
		t.Errorf("returned after %v", elapsed)
	}
	settle(t)
}

func TestStreamNamedProgress(t *testing.T) {
	var calls, last int
	out, err := collectStream(t, StreamNamed[int, pidSquare](context.Background(), "test.square", ints(300), NJobs(2),
		Progress(func(done, n int, _ time.Duration) {
			if done < last || n != 300 {
				t.Errorf("progress went from %d to %d of %d", last, done, n)
			}
			calls++
			last = done
		})))
	if err != nil || len(out) != 300 || calls == 0 || last != 300 {
		t.Errorf("%v: %d results, %d calls, last %d", err, len(out), calls, last)
	}
}

// StreamNamed on an Executor with KeepWorkers(true): its calls run on the same worker processes,
// a stream left early gives the turn back with the workers kept, and MapNamed follows on them.
func TestStreamNamedOnExecutor(t *testing.T) {
	ex, err := NewExecutor(NJobs(2), KeepWorkers(true))
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	all := map[int]bool{}
	for call := range 2 {
		out, err := collectStream(t, StreamNamed[int, pidSquare](context.Background(), "test.square", ints(50), On(ex)))
		if err != nil || len(out) != 50 {
			t.Fatalf("call %d: %d results, %v", call, len(out), err)
		}
		for i, r := range out {
			if r.Index != i || r.Value.Square != i*i || r.Value.Pid == os.Getpid() {
				t.Fatalf("call %d, result %d: %+v", call, i, r)
			}
			all[r.Value.Pid] = true
		}
	}
	for r, err := range StreamNamed[int, pidSquare](context.Background(), "test.square", ints(500), On(ex)) {
		if err != nil || r.Index != 0 {
			t.Fatalf("got %+v, %v", r, err)
		}
		all[r.Value.Pid] = true
		break
	}
	out, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(50), On(ex))
	if err != nil || len(out) != 50 {
		t.Fatalf("MapNamed after a stream left early: %d results, %v", len(out), err)
	}
	for _, r := range out {
		all[r.Pid] = true
	}
	if len(all) > 2 {
		t.Errorf("calls on 2 kept workers ran in %d processes: %v", len(all), all)
	}
	// A call option the Executor owns is refused.
	if _, err := collectStream(t, StreamNamed[int, pidSquare](context.Background(), "test.square", ints(5), On(ex), NJobs(4))); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("NJobs on an Executor's call: %v", err)
	}
	if err := ex.Close(); err != nil {
		t.Fatal(err)
	}
	settle(t)
}
