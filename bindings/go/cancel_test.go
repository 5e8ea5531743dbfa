package pj

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func init() {
	// 0: waits up to 10 s for its context; 1: fails after 200 ms; else: 1 when its context is
	// already done, 0 when not.
	RegisterContext("test.poll", func(ctx context.Context, x int) (int, error) {
		switch x {
		case 0:
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(10 * time.Second):
				return 0, nil
			}
		case 1:
			time.Sleep(200 * time.Millisecond)
			return 0, errors.New("one gives up")
		default:
			if ctx.Err() != nil {
				return 1, nil
			}
			return 0, nil
		}
	})
}

// waitForDone waits up to 10 s for fn's context; 1 when it came.
func waitForDone(ctx context.Context) int {
	select {
	case <-ctx.Done():
		return 1
	case <-time.After(10 * time.Second):
		return 0
	}
}

func TestMapContextFailFastIsPrompt(t *testing.T) {
	begin := time.Now()
	_, err := MapContext(context.Background(), []int{0, 1}, func(ctx context.Context, x int) (int, error) {
		if x == 1 {
			time.Sleep(200 * time.Millisecond)
			return 0, errors.New("one gives up")
		}
		return waitForDone(ctx), nil
	}, NJobs(2), ChunkSize(1))
	elapsed := time.Since(begin)
	if !errors.Is(err, ErrTaskFailed) || asError(t, err).TaskIndex != 1 {
		t.Fatalf("got %v", err)
	}
	if elapsed > 2*time.Second {
		t.Errorf("fail-fast took %v with a sibling watching its context", elapsed)
	}
	settle(t)
}

func TestMapContextIsDoneWithTheCallersContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var saw, running atomic.Int64
	_, err := MapContext(ctx, []int{0, 1}, func(ctx context.Context, _ int) (int, error) {
		running.Add(1)
		defer running.Add(-1)
		for ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		saw.Add(1)
		return 0, nil
	}, NJobs(2), ChunkSize(1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for saw.Load() != 2 || running.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 calls of fn saw their context done", saw.Load())
		}
		time.Sleep(time.Millisecond)
	}
	settle(t)
}

func TestMapContextIsNotDoneInACallThatGoesOn(t *testing.T) {
	in := make([]int, 100)
	out, err := MapContext(context.Background(), in, func(ctx context.Context, _ int) (int, error) {
		if ctx.Err() != nil {
			return 1, nil
		}
		return 0, nil
	}, NJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range out {
		if v != 0 {
			t.Fatalf("input %d saw a done context", i)
		}
	}
}

func TestRegisterContextFailFastIsPromptOnThreads(t *testing.T) {
	for _, backend := range []string{"threads", "processes"} {
		begin := time.Now()
		_, err := MapNamed[int, int](context.Background(), "test.poll", []int{0, 1},
			NJobs(2), BatchSize(1), Backend(backend))
		elapsed := time.Since(begin)
		if !errors.Is(err, ErrTaskFailed) || asError(t, err).TaskIndex != 1 {
			t.Fatalf("%s: got %v", backend, err)
		}
		if elapsed > 2*time.Second {
			t.Errorf("%s: fail-fast took %v with a sibling watching its context", backend, elapsed)
		}
	}
	settle(t)
}

func TestRegisterContextIsNotDoneInACallThatGoesOn(t *testing.T) {
	for _, backend := range []string{"threads", "processes", "sequential"} {
		out, err := MapNamed[int, int](context.Background(), "test.poll", []int{2, 3, 4, 5},
			NJobs(2), Backend(backend))
		if err != nil {
			t.Fatalf("%s: %v", backend, err)
		}
		for i, v := range out {
			if v != 0 {
				t.Fatalf("%s: input %d saw a done context", backend, i)
			}
		}
	}
}

func TestStreamContextBreakIsPrompt(t *testing.T) {
	begin := time.Now()
	seen := 0
	for r, err := range StreamContext(context.Background(), []int{1, 0, 0, 0}, func(ctx context.Context, x int) (int, error) {
		if x == 1 {
			return 1, nil
		}
		return waitForDone(ctx), nil
	}, NJobs(2), ChunkSize(1)) {
		if err != nil {
			t.Fatalf("got %v", err)
		}
		seen += r.Value
		break
	}
	if seen != 1 {
		t.Fatalf("the first result was not input 0's")
	}
	if elapsed := time.Since(begin); elapsed > 2*time.Second {
		t.Errorf("leaving the stream took %v with functions watching their context", elapsed)
	}
	settle(t)
}

func TestMapCollectContextIsDoneWithTheCallersContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := MapCollectContext(ctx, []int{0, 1, 2}, func(ctx context.Context, x int) (int, error) {
		if x == 1 {
			return 0, errors.New("collected, not stopping")
		}
		return waitForDone(ctx), nil
	}, NJobs(2), ChunkSize(1))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if elapsed := time.Since(begin); elapsed > 2*time.Second {
		t.Errorf("MapCollectContext took %v after its context ended", elapsed)
	}
	settle(t)
}

func TestMapIndexedContextFailFastIsPrompt(t *testing.T) {
	begin := time.Now()
	_, err := MapIndexedContext(context.Background(), []int{0, 0}, func(ctx context.Context, i, _ int) (int, error) {
		if i == 1 {
			time.Sleep(200 * time.Millisecond)
			return 0, errors.New("one gives up")
		}
		return waitForDone(ctx), nil
	}, NJobs(2), ChunkSize(1))
	if !errors.Is(err, ErrTaskFailed) || asError(t, err).TaskIndex != 1 {
		t.Fatalf("got %v", err)
	}
	if elapsed := time.Since(begin); elapsed > 2*time.Second {
		t.Errorf("fail-fast took %v with a sibling watching its context", elapsed)
	}
	settle(t)
}
