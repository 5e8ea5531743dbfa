package pj

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// outcome is what input x of collectFn must give: its value, or the message of its failure.
func outcome(x int) (value int, msg string, panicked bool) {
	switch {
	case x%7 == 3:
		return 0, fmt.Sprintf("task %d failed: input %d: bad input", x, x), false
	case x%11 == 5:
		return 0, fmt.Sprintf("task %d panicked: boom %d", x, x), true
	case x%13 == 6:
		return 0, fmt.Sprintf("task %d panicked: panic called with nil argument", x), true
	}
	return x * x, "", false
}

// collectFn fails on some inputs, panics on others (with a value and with nil), and counts its
// calls per input.
func collectFn(calls []atomic.Int32) func(int) (int, error) {
	return func(x int) (int, error) {
		calls[x].Add(1)
		switch {
		case x%7 == 3:
			return 0, fmt.Errorf("input %d: %w", x, errBad)
		case x%11 == 5:
			panic(fmt.Sprint("boom ", x))
		case x%13 == 6:
			panic(nil)
		}
		return x * x, nil
	}
}

// checkOutcome checks input x's value and error against outcome(x).
func checkOutcome(t *testing.T, x, value int, err error) {
	t.Helper()
	want, msg, panicked := outcome(x)
	if msg == "" {
		if err != nil || value != want {
			t.Fatalf("input %d: got %d, %v; want %d, nil", x, value, err, want)
		}
		return
	}
	if value != 0 {
		t.Errorf("input %d failed but has the value %d", x, value)
	}
	e := asError(t, err)
	if e.Status != StatusTaskFailed || e.TaskIndex != x || e.Message != msg {
		t.Fatalf("input %d: got status %v, index %d, message %q; want task failed, %d, %q",
			x, e.Status, e.TaskIndex, e.Message, x, msg)
	}
	if !errors.Is(err, ErrTaskFailed) || errors.Is(err, ErrTimeout) {
		t.Errorf("input %d: errors.Is is wrong for %v", x, err)
	}
	if !strings.Contains(e.Report, fmt.Sprintf("task index: %d\n", x)) {
		t.Errorf("input %d: the report lacks the index:\n%s", x, e.Report)
	}
	var p *PanicError
	if got := errors.As(err, &p); got != panicked {
		t.Fatalf("input %d: wraps a *PanicError: %v, want %v", x, got, panicked)
	}
	if panicked {
		if p.Index != x || !strings.Contains(string(p.Stack), "collectFn") {
			t.Errorf("input %d: PanicError index %d, stack:\n%s", x, p.Index, p.Stack)
		}
	} else if !errors.Is(err, errBad) {
		t.Errorf("input %d: %v does not wrap fn's error", x, err)
	}
}

func checkEachRanOnce(t *testing.T, calls []atomic.Int32) {
	t.Helper()
	for x := range calls {
		if c := calls[x].Load(); c != 1 {
			t.Fatalf("input %d ran %d times, want once", x, c)
		}
	}
}

func TestMapCollect(t *testing.T) {
	for _, cfg := range configs {
		for _, n := range []int{0, 1, 7, 5000} {
			t.Run(fmt.Sprintf("%s/n=%d", cfg.name, n), func(t *testing.T) {
				calls := make([]atomic.Int32, n)
				results, err := MapCollect(context.Background(), ints(n), collectFn(calls), cfg.opts...)
				if err != nil {
					t.Fatal(err)
				}
				if results == nil || len(results) != n {
					t.Fatalf("got %d results (nil: %v), want %d", len(results), results == nil, n)
				}
				for x, r := range results {
					if r.Index != x {
						t.Fatalf("results[%d].Index = %d", x, r.Index)
					}
					checkOutcome(t, x, r.Value, r.Err)
				}
				checkEachRanOnce(t, calls)
			})
		}
	}
	settle(t)
}

// MapCollect collects whatever OnError says; Map and MapIndexed collect with OnError("collect") (or
// Set("on_error", "collect")) and return every value with an error joining the failures in order.
func TestMapWithOnErrorCollect(t *testing.T) {
	const n = 3000
	var wantFailed []int
	for x := range n {
		if _, msg, _ := outcome(x); msg != "" {
			wantFailed = append(wantFailed, x)
		}
	}
	runs := []struct {
		name string
		run  func(fn func(int) (int, error)) ([]int, error)
	}{
		{"Map+OnError", func(fn func(int) (int, error)) ([]int, error) {
			return Map(context.Background(), ints(n), fn, NJobs(4), OnError("collect"))
		}},
		{"Map+Set", func(fn func(int) (int, error)) ([]int, error) {
			return Map(context.Background(), ints(n), fn, NJobs(3), ChunkSize(5), Set("on_error", " collect\n"))
		}},
		{"Map+sequential", func(fn func(int) (int, error)) ([]int, error) {
			return Map(context.Background(), ints(n), fn, OnError("raise"), OnError("collect"))
		}},
		{"MapIndexed", func(fn func(int) (int, error)) ([]int, error) {
			return MapIndexed(context.Background(), ints(n), func(i, x int) (int, error) {
				if i != x {
					t.Errorf("index %d for input %d", i, x)
				}
				return fn(x)
			}, NJobs(2), OnError("collect"))
		}},
		{"MapCollect+OnError(raise)", func(fn func(int) (int, error)) ([]int, error) {
			results, err := MapCollect(context.Background(), ints(n), fn, NJobs(2), OnError("raise"))
			if err != nil {
				return nil, err
			}
			values := make([]int, n)
			var errs []error
			for _, r := range results {
				values[r.Index] = r.Value
				if r.Err != nil {
					errs = append(errs, r.Err)
				}
			}
			return values, errors.Join(errs...)
		}},
	}
	for _, tc := range runs {
		t.Run(tc.name, func(t *testing.T) {
			calls := make([]atomic.Int32, n)
			values, err := tc.run(collectFn(calls))
			if len(values) != n {
				t.Fatalf("got %d values, want %d (error %v)", len(values), n, err)
			}
			if !errors.Is(err, ErrTaskFailed) || !errors.Is(err, errBad) {
				t.Fatalf("errors.Is(%T, ErrTaskFailed / errBad) is false", err)
			}
			var p *PanicError
			if !errors.As(err, &p) || p.Index != 5 {
				t.Errorf("errors.As finds no *PanicError of input 5 (got %+v)", p)
			}
			joined, ok := err.(interface{ Unwrap() []error })
			if !ok {
				t.Fatalf("%T is not a joined error", err)
			}
			errs := joined.Unwrap()
			if len(errs) != len(wantFailed) {
				t.Fatalf("%d errors joined, want %d", len(errs), len(wantFailed))
			}
			for k, e := range errs {
				x := wantFailed[k]
				checkOutcome(t, x, values[x], e)
			}
			for x, v := range values {
				if _, msg, _ := outcome(x); msg == "" {
					checkOutcome(t, x, v, nil)
				}
			}
			if !strings.HasPrefix(err.Error(), "pj: task 3 failed: input 3: bad input\npj: task 5 panicked: boom 5\n") {
				t.Errorf("Error() starts with %q", err.Error()[:min(len(err.Error()), 200)])
			}
			checkEachRanOnce(t, calls)
		})
	}
	// Without failures the error is nil.
	out, err := Map(context.Background(), ints(100), square, NJobs(2), OnError("collect"))
	if err != nil || len(out) != 100 || out[9] != 81 {
		t.Errorf("no failure: got %d values, %v", len(out), err)
	}
	// "raise" (and "none") keep failing fast: one *Error, no values.
	for _, mode := range []string{"raise", "none", " raise "} {
		out, err := Map(context.Background(), ints(1000), collectFn(make([]atomic.Int32, 1000)), NJobs(2), OnError(mode))
		var e *Error
		if out != nil || !errors.As(err, &e) || err != error(e) {
			t.Fatalf("on_error %q: got %d values, %v; want a single *Error", mode, len(out), err)
		}
		if _, msg, _ := outcome(e.TaskIndex); msg == "" || e.Message != msg {
			t.Errorf("on_error %q: got %v", mode, err)
		}
	}
	settle(t)
}

func TestStreamCollect(t *testing.T) {
	const n = 4000
	for _, cfg := range []struct {
		name    string
		ordered bool
		opts    []Option
	}{
		{"ordered", true, []Option{NJobs(4)}},
		{"ordered,chunk=1", true, []Option{NJobs(2), ChunkSize(1)}},
		{"ordered,sequential", true, []Option{Backend("sequential")}},
		{"unordered", false, []Option{NJobs(4), Unordered()}},
		{"unordered,chunk=3", false, []Option{NJobs(3), ChunkSize(3), Unordered()}},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			calls := make([]atomic.Int32, n)
			seen := make([]bool, n)
			var order []int
			failed := 0
			opts := append(slices.Clone(cfg.opts), Set("on_error", "collect"))
			for r, err := range Stream(context.Background(), ints(n), collectFn(calls), opts...) {
				if r.Index < 0 || r.Index >= n {
					t.Fatalf("a call-level error (or a bad index): %+v, %v", r, err)
				}
				if seen[r.Index] {
					t.Fatalf("input %d yielded twice", r.Index)
				}
				seen[r.Index] = true
				order = append(order, r.Index)
				if err != nil {
					failed++
					if r.Err != err {
						t.Errorf("input %d: Result.Err %v differs from the yielded error %v", r.Index, r.Err, err)
					}
				} else if r.Err != nil {
					t.Errorf("input %d: Result.Err %v with a nil error", r.Index, r.Err)
				}
				checkOutcome(t, r.Index, r.Value, err)
			}
			if len(order) != n {
				t.Fatalf("got %d results, want %d", len(order), n)
			}
			if cfg.ordered && !slices.IsSorted(order) {
				t.Errorf("results out of input order")
			}
			if failed == 0 {
				t.Error("no failure yielded")
			}
			checkEachRanOnce(t, calls)
		})
	}
	settle(t)
}

// Under "collect", ctx and timeouts still end the whole call, and no result comes back.
func TestCollectCallLevelErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	results, err := MapCollect(ctx, ints(10_000), func(x int) (int, error) {
		time.Sleep(time.Millisecond)
		if x%2 == 0 {
			return 0, errBad
		}
		return x, nil
	}, NJobs(2))
	if results != nil || err != context.DeadlineExceeded {
		t.Errorf("got %d results, %v; want none, context.DeadlineExceeded", len(results), err)
	}

	release := make(chan struct{})
	values, err := Map(context.Background(), ints(100), func(x int) (int, error) {
		if x == 4 {
			<-release
		}
		if x == 1 {
			return 0, errBad
		}
		return x, nil
	}, NJobs(2), ChunkSize(1), OnError("collect"), Timeout(50*time.Millisecond))
	close(release)
	if e := asError(t, err); values != nil || !errors.Is(err, ErrTimeout) || e.TaskIndex != 4 {
		t.Errorf("got %d values, %v; want none and a timeout of input 4", len(values), err)
	}

	// Invalid options are call-level errors too.
	if _, err := MapCollect(context.Background(), ints(3), square, OnError("ignore")); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("OnError(\"ignore\"): got %v", err)
	}
	settle(t)
}

// pj's handle_sigint would take SIGINT from the Go runtime: it is refused, with the way to do it.
func TestHandleSigintIsRefused(t *testing.T) {
	for _, opt := range []Option{
		HandleSigint(true), Set("handle_sigint", "true"), Set("handle_sigint", " yes "),
		Set("handle_sigint", "1"), Set("handle_sigint", "True"),
	} {
		_, err := Map(context.Background(), ints(10), func(x int) (int, error) {
			t.Error("fn called")
			return x, nil
		}, NJobs(2), opt)
		e := asError(t, err)
		if !errors.Is(err, ErrInvalidArgument) || e.Status != StatusInvalidArgument || e.TaskIndex != -1 {
			t.Errorf("got %v, want ErrInvalidArgument", err)
		}
		for _, text := range []string{"handle_sigint", "Go runtime's SIGINT handler",
			"signal.NotifyContext(ctx, os.Interrupt)", "pass that ctx"} {
			if !strings.Contains(e.Message, text) {
				t.Errorf("the message lacks %q: %q", text, e.Message)
			}
		}
		if _, err2 := MapCollect(context.Background(), ints(1), square, opt); err2 == nil || err2.Error() != err.Error() {
			t.Errorf("MapCollect: got %v", err2)
		}
		for _, err2 := range Stream(context.Background(), ints(3), square, opt) {
			if err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Stream: got %v, want %v", err2, err)
			}
		}
		if _, err3 := EffectiveNJobs(opt); err3 == nil || err3.Error() != err.Error() {
			t.Errorf("EffectiveNJobs: got %v", err3)
		}
	}
	// false is the default and accepted; a value pj does not know is pj's own error.
	for _, opt := range []Option{HandleSigint(false), Set("handle_sigint", "false"), Set("handle_sigint", " no")} {
		if out, err := Map(context.Background(), ints(10), square, NJobs(2), opt); err != nil || out[3] != 9 {
			t.Errorf("handle_sigint false: %v", err)
		}
	}
	_, err := Map(context.Background(), ints(3), square, Set("handle_sigint", "maybe"))
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(e.Message, `"maybe"`) ||
		strings.Contains(e.Message, "NotifyContext") {
		t.Errorf("handle_sigint maybe: got %v", err)
	}
}

// validValues holds a valid value of every key pj_config_set accepts.
var validValues = map[string]string{
	"n_jobs":              "2",
	"backend":             "threads",
	"prefer":              "threads",
	"require":             "sharedmem",
	"verbose":             "0",
	"timeout":             "30",
	"pre_dispatch":        "2*n_jobs",
	"batch_size":          "auto",
	"temp_folder":         os.TempDir(),
	"max_nbytes":          "1M",
	"mmap_mode":           "r",
	"return_as":           "list",
	"keep_workers":        "true",
	"on_error":            "collect",
	"handle_sigint":       "false",
	"progress":            "none",
	"start_method":        "spawn",
	"stack_size":          "8M",
	"batch_bytes":         "16M",
	"max_tasks_per_child": "10",
	"worker_memory_limit": "512M",
	"idle_worker_timeout": "30",
}

// Set takes every key pj_config_set takes: the list comes from pj's own message for an unknown key,
// so a key added to pj and not handled here fails this test.
func TestSetAcceptsEveryPjKey(t *testing.T) {
	_, err := EffectiveNJobs(Set("no_such_key", "1"))
	e := asError(t, err)
	_, list, ok := strings.Cut(e.Message, "expected one of ")
	if !errors.Is(err, ErrInvalidArgument) || !ok {
		t.Fatalf("unknown key: got %v", err)
	}
	keys := strings.Split(list, ", ")
	if len(keys) < 16 {
		t.Fatalf("pj lists %d keys: %q", len(keys), list)
	}
	for _, key := range keys {
		value, ok := validValues[key]
		if !ok {
			t.Errorf("pj accepts the key %q, which this test (and maybe Set) does not know", key)
			continue
		}
		out, err := Map(context.Background(), ints(50), square, NJobs(2), Set(key, value))
		if err != nil || len(out) != 50 || out[7] != 49 {
			t.Errorf("Set(%q, %q): %v", key, value, err)
		}
		if _, err := EffectiveNJobs(Set(key, value)); err != nil {
			t.Errorf("EffectiveNJobs(Set(%q, %q)): %v", key, value, err)
		}
	}
}
