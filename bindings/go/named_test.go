package pj

import (
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The functions of these tests, registered in every process of the test binary: the caller, and the
// worker processes pj starts from it (TestMain in main_test.go calls WorkerMainIfRequested).

type pidSquare struct{ X, Square, Pid int }

// record exercises gob with nested values.
type record struct {
	Name   string
	Tags   []string
	Counts map[string]int
	Next   *record
}

// shape is an interface type: its concrete types travel with gob.Register.
type shape interface{ Area() float64 }

type squareShape struct{ Side float64 }
type circleShape struct{ Radius float64 }

func (s squareShape) Area() float64 { return s.Side * s.Side }
func (c circleShape) Area() float64 { return math.Pi * c.Radius * c.Radius }

// hidden has no exported field: gob cannot encode it.
type hidden struct{ x int }

// extraFunctionVar, when set in a worker's environment, makes that worker register one more function
// than its caller (TestMapNamedRegistryMismatch).
const extraFunctionVar = "PJGO_TEST_EXTRA_FUNCTION"

func init() {
	gob.Register(squareShape{})
	gob.Register(circleShape{})
	Register("test.square", func(x int) (pidSquare, error) {
		return pidSquare{X: x, Square: x * x, Pid: os.Getpid()}, nil
	})
	Register("test.record", func(r record) (record, error) {
		r.Name = strings.ToUpper(r.Name)
		r.Counts["seen"]++
		if r.Next != nil {
			r.Next.Name += "!"
		}
		return r, nil
	})
	Register("test.area", func(s shape) (float64, error) { return s.Area(), nil })
	Register("test.hidden", func(h hidden) (int, error) { return h.x, nil })
	// test.outcome fails, panics or crashes on some inputs (see namedOutcome).
	Register("test.outcome", func(x int) (int, error) {
		switch {
		case x%7 == 3:
			return 0, fmt.Errorf("input %d: %w", x, errBad)
		case x%11 == 5:
			panic(fmt.Sprint("boom ", x))
		case x%13 == 6:
			var p *pidSquare
			return p.X, nil // a nil dereference: a run-time panic, in the worker too
		case x == 40:
			os.Exit(3)
		}
		return x * x, nil
	})
	Register("test.crash", func(mode string) (int, error) {
		switch mode {
		case "exit":
			os.Exit(3)
		case "kill":
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Minute)
		case "fault":
			// A write to an unmapped page (not a nil dereference): the Go runtime ends the process
			// with a fatal error, after a goroutine dump on stderr (whatever GOTRACEBACK says), which
			// this worker's stderr swallows.
			if null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0); err == nil {
				_ = syscall.Dup3(int(null.Fd()), 2, 0)
			}
			page, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE,
				syscall.MAP_ANON|syscall.MAP_PRIVATE)
			if err != nil {
				return 0, err
			}
			if err := syscall.Munmap(page); err != nil {
				return 0, err
			}
			page[0] = 1
		}
		return os.Getpid(), nil
	})
	Register("test.sleep", func(d time.Duration) (int, error) {
		time.Sleep(d)
		return os.Getpid(), nil
	})
	Register("test.env", func(prefix string) ([]string, error) {
		var found []string
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, prefix) {
				found = append(found, kv)
			}
		}
		if v := os.Getenv("PJ_WORKER_FD"); v != "" {
			found = append(found, "Getenv: "+v)
		}
		return found, nil
	})
	Register("test.double", func(b []byte) ([]byte, error) { return append(b, b...), nil })
	// test.nested makes a named call of its own from a worker, and returns the pids involved.
	Register("test.nested", func(n int) ([]int, error) {
		out, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(n), NJobs(2))
		if err != nil {
			return nil, err
		}
		pids := []int{os.Getpid()}
		for _, r := range out {
			pids = append(pids, r.Pid)
		}
		return pids, nil
	})
	if os.Getenv(extraFunctionVar) != "" {
		Register("test.extra", func(x int) (int, error) { return x, nil })
	}
}

// namedOutcome is what input x of test.outcome must give: its value, or its failure.
func namedOutcome(x int) (value int, status Status, msg string) {
	switch {
	case x%7 == 3:
		return 0, StatusTaskFailed, fmt.Sprintf("task %d failed: input %d: bad input", x, x)
	case x%11 == 5:
		return 0, StatusTaskFailed, fmt.Sprintf("task %d panicked: boom %d", x, x)
	case x%13 == 6:
		return 0, StatusTaskFailed, fmt.Sprintf("task %d panicked: runtime error: invalid memory address or nil pointer dereference", x)
	case x == 40:
		return 0, StatusWorkerDied, ""
	}
	return x * x, StatusOK, ""
}

func TestMapNamedRunsInWorkerProcesses(t *testing.T) {
	for _, cfg := range []struct {
		name      string
		opts      []Option
		elsewhere bool // the inputs run in other processes
	}{
		{"processes", []Option{NJobs(3)}, true},
		{"loky,batch=1", []Option{NJobs(2), Backend("loky"), BatchSize(1)}, true},
		{"processes,pre_dispatch=all", []Option{NJobs(4), Backend("processes"), PreDispatch("all")}, true},
		{"spawn named", []Option{NJobs(2), Set("start_method", "spawn")}, true},
		{"n_jobs=1", nil, false},
		{"threads", []Option{NJobs(3), Backend("threads")}, false},
		{"sequential", []Option{NJobs(3), Backend("sequential")}, false},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			for _, n := range []int{0, 1, 300} {
				out, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(n), cfg.opts...)
				if err != nil {
					t.Fatal(err)
				}
				if out == nil || len(out) != n {
					t.Fatalf("got %d results (nil: %v), want %d", len(out), out == nil, n)
				}
				pids := map[int]bool{}
				for i, r := range out {
					if r.X != i || r.Square != i*i {
						t.Fatalf("result %d: got %+v", i, r)
					}
					pids[r.Pid] = true
				}
				if n > 0 && pids[os.Getpid()] == cfg.elsewhere {
					t.Errorf("n=%d: ran in this process (%d): %v; want elsewhere: %v", n, os.Getpid(), pids, cfg.elsewhere)
				}
			}
		})
	}
	settle(t)
}

// MaxTasksPerChild replaces MapNamed's worker processes after exactly that many inputs each,
// silently; the recycling options reach pj's process pool.
func TestMapNamedMaxTasksPerChild(t *testing.T) {
	out, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(100),
		NJobs(2), BatchSize(3), MaxTasksPerChild(10), WorkerMemoryLimit(64<<30),
		IdleWorkerTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	perPid := map[int]int{}
	for i, r := range out {
		if r.X != i || r.Square != i*i {
			t.Fatalf("result %d: got %+v", i, r)
		}
		perPid[r.Pid]++
	}
	if len(perPid) < 10 {
		t.Errorf("%d distinct workers, want at least 10: %v", len(perPid), perPid)
	}
	t.Logf("%d workers: %v", len(perPid), perPid)
	for pid, n := range perPid {
		if n > 10 {
			t.Errorf("worker %d ran %d inputs, more than 10", pid, n)
		}
	}
	settle(t)
}

func TestMapNamedGobValues(t *testing.T) {
	in := []record{
		{Name: "a", Tags: []string{"x"}, Counts: map[string]int{"seen": 1}},
		{Name: "b", Counts: map[string]int{}, Next: &record{Name: "c"}},
	}
	out, err := MapNamed[record, record](context.Background(), "test.record", in, NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Name != "A" || out[0].Tags[0] != "x" || out[0].Counts["seen"] != 2 || out[0].Next != nil {
		t.Errorf("result 0: %+v", out[0])
	}
	if out[1].Name != "B" || out[1].Counts["seen"] != 1 || out[1].Next == nil || out[1].Next.Name != "c!" {
		t.Errorf("result 1: %+v", out[1])
	}
	if in[0].Name != "a" || in[0].Counts["seen"] != 1 {
		t.Errorf("the inputs changed: %+v", in[0])
	}
	// An interface type: each input carries its concrete type (registered with gob.Register).
	areas, err := MapNamed[shape, float64](context.Background(), "test.area",
		[]shape{squareShape{2}, circleShape{1}, squareShape{3}}, NJobs(2))
	if err != nil || len(areas) != 3 || areas[0] != 4 || areas[1] != math.Pi || areas[2] != 9 {
		t.Errorf("areas: %v, %v", areas, err)
	}
}

// Arguments and results above max_nbytes (1M by default) travel through memory-mapped files.
func TestMapNamedLargeValues(t *testing.T) {
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i % 251)
	}
	out, err := MapNamed[[]byte, []byte](context.Background(), "test.double", [][]byte{big, big[:10], big}, NJobs(2))
	if err != nil || len(out) != 3 {
		t.Fatalf("got %d results, %v", len(out), err)
	}
	for i, want := range [][]byte{big, big[:10], big} {
		if len(out[i]) != 2*len(want) || !slices.Equal(out[i][:len(want)], want) || !slices.Equal(out[i][len(want):], want) {
			t.Errorf("result %d: %d bytes", i, len(out[i]))
		}
	}
}

// A function running in a worker may make named calls of its own: pj spawns its workers from the
// worker.
func TestMapNamedNested(t *testing.T) {
	out, err := MapNamed[int, []int](context.Background(), "test.nested", []int{3, 4}, NJobs(2))
	if err != nil || len(out) != 2 || len(out[0]) != 4 || len(out[1]) != 5 {
		t.Fatalf("got %v, %v", out, err)
	}
	for _, pids := range out {
		for _, pid := range pids {
			if pid == os.Getpid() {
				t.Errorf("pids %v include this process's", pids)
			}
		}
		for _, pid := range pids[1:] {
			if pid == pids[0] {
				t.Errorf("pids %v: the inner call ran in the outer worker", pids)
			}
		}
	}
}

func TestMapNamedErrorNamesTheInput(t *testing.T) {
	in := ints(5) // input 3 fails (x%7 == 3)
	_, err := MapNamed[int, int](context.Background(), "test.outcome", in, NJobs(2))
	e := asError(t, err)
	if !errors.Is(err, ErrTaskFailed) || e.TaskIndex != 3 || e.Message != "task 3 failed: input 3: bad input" {
		t.Fatalf("got %v (index %d)", err, e.TaskIndex)
	}
	if e.Err == nil || e.Err.Error() != "input 3: bad input" {
		t.Errorf("cause: %v", e.Err)
	}
	for _, want := range []string{"pj error: task failed\n", "  task index: 3\n", "  backend: processes\n",
		"  message: task 3 failed: input 3: bad input\n"} {
		if !strings.Contains(e.Report, want) {
			t.Errorf("the report lacks %q:\n%s", want, e.Report)
		}
	}
	settle(t)
}

func TestMapNamedPanics(t *testing.T) {
	for _, tc := range []struct {
		input int
		value string
	}{{5, "boom 5"}, {6, "runtime error: invalid memory address or nil pointer dereference"}} {
		in := []int{0, 1, tc.input, 2}
		_, err := MapNamed[int, int](context.Background(), "test.outcome", in, NJobs(2))
		e := asError(t, err)
		want := fmt.Sprintf("task 2 panicked: %s", tc.value)
		if !errors.Is(err, ErrTaskFailed) || e.TaskIndex != 2 || e.Message != want {
			t.Fatalf("got %v (index %d), want %q", err, e.TaskIndex, want)
		}
		var p *PanicError
		if !errors.As(err, &p) || p.Index != 2 || p.Value != tc.value {
			t.Fatalf("cause: %#v", e.Err)
		}
		if !strings.HasPrefix(string(p.Stack), "goroutine ") || !strings.Contains(string(p.Stack), "named_test.go") {
			t.Errorf("stack:\n%s", p.Stack)
		}
		if !strings.Contains(e.Report, "  stack:\n    goroutine ") || !strings.Contains(e.Report, "  message: "+want+"\n") {
			t.Errorf("report:\n%s", e.Report)
		}
	}
	settle(t)
}

func TestMapNamedWorkerDied(t *testing.T) {
	for _, tc := range []struct{ mode, report string }{
		{"exit", "worker exited: exit status 3"},
		{"kill", "killed by signal: SIGKILL"},
		{"fault", "worker exited: exit status 2"}, // the Go runtime's fatal error
	} {
		_, err := MapNamed[string, int](context.Background(), "test.crash", []string{"ok", tc.mode, "ok"}, NJobs(2))
		e := asError(t, err)
		if !errors.Is(err, ErrWorkerDied) || e.TaskIndex != 1 || !strings.Contains(e.Report, tc.report) {
			t.Errorf("%s: got %v (index %d), report:\n%s", tc.mode, err, e.TaskIndex, e.Report)
		}
	}
	settle(t)
}

func TestMapCollectNamed(t *testing.T) {
	in := ints(60)
	check := func(t *testing.T, x, value int, err error) {
		t.Helper()
		want, status, msg := namedOutcome(x)
		if status == StatusOK {
			if err != nil || value != want {
				t.Errorf("input %d: got %d, %v; want %d", x, value, err, want)
			}
			return
		}
		e := asError(t, err)
		if e.Status != status || e.TaskIndex != x || (msg != "" && e.Message != msg) || value != 0 {
			t.Errorf("input %d: got %d, %v (status %v, index %d); want %v %q", x, value, err, e.Status, e.TaskIndex, status, msg)
		}
	}
	results, err := MapCollectNamed[int, int](context.Background(), "test.outcome", in, NJobs(3), BatchSize(1))
	if err != nil || len(results) != len(in) {
		t.Fatalf("got %d results, %v", len(results), err)
	}
	for i, r := range results {
		if r.Index != i {
			t.Fatalf("result %d has index %d", i, r.Index)
		}
		check(t, i, r.Value, r.Err)
	}
	var p *PanicError
	if !errors.As(results[5].Err, &p) || p.Value != "boom 5" {
		t.Errorf("input 5: %#v", results[5].Err)
	}
	// MapNamed with OnError("collect"): every value, and the failures joined in input order.
	values, err := MapNamed[int, int](context.Background(), "test.outcome", in, NJobs(3), OnError("collect"))
	if len(values) != len(in) || !errors.Is(err, ErrTaskFailed) || !errors.Is(err, ErrWorkerDied) {
		t.Fatalf("got %d values, %v", len(values), err)
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("not a joined error: %T", err)
	}
	errs := joined.Unwrap()
	next := 0
	for x := range in {
		_, status, _ := namedOutcome(x)
		if status == StatusOK {
			check(t, x, values[x], nil)
			continue
		}
		if next >= len(errs) {
			t.Fatalf("only %d errors", len(errs))
		}
		check(t, x, values[x], errs[next])
		next++
	}
	if next != len(errs) {
		t.Errorf("%d errors, want %d", len(errs), next)
	}
	settle(t)
}

func TestMapNamedCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	in := []time.Duration{time.Millisecond, time.Minute, time.Minute, time.Minute}
	_, err := MapNamed[time.Duration, int](ctx, "test.sleep", in, NJobs(2))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if elapsed := time.Since(begin); elapsed > time.Second {
		t.Errorf("returned after %v", elapsed)
	}
	settle(t) // pj killed the workers: its call is over too
	// A context done before the call starts nothing.
	_, err = MapNamed[time.Duration, int](ctx, "test.sleep", in, NJobs(2))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

func TestMapNamedTimeout(t *testing.T) {
	begin := time.Now()
	in := []time.Duration{time.Millisecond, time.Minute, time.Millisecond}
	_, err := MapNamed[time.Duration, int](context.Background(), "test.sleep", in, NJobs(2),
		Timeout(300*time.Millisecond))
	e := asError(t, err)
	if !errors.Is(err, ErrTimeout) || e.TaskIndex != 1 {
		t.Fatalf("got %v (index %d)", err, e.TaskIndex)
	}
	if elapsed := time.Since(begin); elapsed > 10*time.Second {
		t.Errorf("returned after %v", elapsed)
	}
	// Under collect, the overdue input is its own failure; the others run.
	results, err := MapCollectNamed[time.Duration, int](context.Background(), "test.sleep", in, NJobs(2),
		Timeout(300*time.Millisecond))
	if err != nil || !errors.Is(results[1].Err, ErrTimeout) || results[0].Err != nil || results[2].Err != nil {
		t.Fatalf("got %v: %+v", err, results)
	}
	settle(t)
}

func TestMapNamedProgress(t *testing.T) {
	var calls, last, total int
	_, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(500), NJobs(2),
		Progress(func(done, n int, elapsed time.Duration) {
			if done < last || n != 500 {
				t.Errorf("progress went from %d to %d of %d", last, done, n)
			}
			calls++
			last, total = done, n
		}))
	if err != nil || calls == 0 || last != 500 || total != 500 {
		t.Errorf("%v: %d calls, last %d of %d", err, calls, last, total)
	}
}

func TestMapNamedRefusals(t *testing.T) {
	ctx := context.Background()
	_, err := MapNamed[int, int](ctx, "test.missing", ints(3), NJobs(2))
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(e.Message, `"test.missing"`) ||
		!strings.Contains(e.Message, `"test.square"`) {
		t.Errorf("unregistered: %v", err)
	}
	_, err = MapNamed[int, int](ctx, "test.square", ints(3))
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) ||
		!strings.Contains(e.Message, "registered as a func(int) (pj.pidSquare, error)") {
		t.Errorf("wrong types: %v", err)
	}
	_, err = MapNamed[hidden, int](ctx, "test.hidden", []hidden{{1}}, NJobs(2))
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) || e.TaskIndex != 0 ||
		!strings.Contains(e.Message, "no exported fields") {
		t.Errorf("unencodable: %v", err)
	}
	_, err = MapNamed[int, pidSquare](ctx, "test.square", ints(3), NJobs(2), Set("start_method", "fork"))
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("fork: %v", err)
	}
	_, err = MapNamed[int, pidSquare](ctx, "test.square", ints(3), NJobs(2), Set("start_method", "forkserver"))
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("forkserver: %v", err)
	}
	_, err = MapNamed[int, pidSquare](ctx, "test.square", ints(3), NJobs(2), Backend("processes"),
		Require("sharedmem"))
	if !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("processes with require=sharedmem: %v", err)
	}
	// Without WorkerMainIfRequested, the workers would run the whole program: refused before.
	workerMainCalled.Store(false)
	_, err = MapNamed[int, pidSquare](ctx, "test.square", ints(3), NJobs(2))
	workerMainCalled.Store(true)
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(e.Message, "WorkerMainIfRequested") {
		t.Errorf("without WorkerMainIfRequested: %v", err)
	}
	// Map and its siblings refuse the process backends, and point to MapNamed.
	_, err = MapCollect(ctx, ints(3), square, Backend("processes"))
	if e := asError(t, err); !errors.Is(err, ErrUnsupported) || !strings.Contains(e.Message, "pj.MapNamed") {
		t.Errorf("MapCollect on processes: %v", err)
	}
	if n, err := EffectiveNJobs(Backend("processes"), NJobs(3)); n != 3 || err != nil {
		t.Errorf("EffectiveNJobs on processes: %d, %v", n, err)
	}
	if liveCalls.Load() != 0 {
		t.Errorf("liveCalls = %d", liveCalls.Load())
	}
}

func TestRegisterMisuse(t *testing.T) {
	mustPanic := func(what, want string, f func()) {
		t.Helper()
		defer func() {
			t.Helper()
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), want) {
				t.Errorf("%s: got panic %v, want one with %q", what, r, want)
			}
		}()
		f()
	}
	mustPanic("empty name", "non-empty", func() { Register("", square) })
	mustPanic("NUL", "NUL", func() { Register("a\x00b", square) })
	mustPanic("nil function", "nil function", func() { Register[int, int]("test.nil", nil) })
	// The registry is sealed once WorkerMainIfRequested has run (TestMain).
	mustPanic("late", "after pj.WorkerMainIfRequested", func() { Register("test.late", square) })
	mustPanic("late duplicate", "after pj.WorkerMainIfRequested", func() { Register("test.square", square) })
	if _, err := lookupNamed[int, int]("test.late"); err == nil {
		t.Error("a refused registration was kept")
	}
}

// A worker whose program registered other functions than the caller is refused.
func TestMapNamedRegistryMismatch(t *testing.T) {
	t.Setenv(extraFunctionVar, "1") // inherited by the workers, whose init registers test.extra
	_, err := MapNamed[int, pidSquare](context.Background(), "test.square", ints(10), NJobs(2))
	e := asError(t, err)
	if !errors.Is(err, ErrIO) || !strings.Contains(e.Message, "test.extra") {
		t.Fatalf("got %v", err)
	}
	settle(t)
}

// pj removes its PJ_WORKER_* variables in a worker; the Go side does too, from the Go runtime's copy
// of the environment, so that the processes a task starts do not take themselves for workers.
func TestWorkerVariablesDoNotLeak(t *testing.T) {
	out, err := MapNamed[string, []string](context.Background(), "test.env", []string{"PJ_WORKER_", "PJ_WORKER_"}, NJobs(2))
	if err != nil || len(out) != 2 || len(out[0]) != 0 || len(out[1]) != 0 {
		t.Errorf("got %q, %v", out, err)
	}
}
