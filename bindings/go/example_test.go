package pj_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	pj "github.com/pj-parallel/pj/bindings/go"
)

// joblib's Parallel(n_jobs=2)(delayed(sqrt)(i ** 2) for i in range(10)).
func Example() {
	inputs := make([]float64, 10)
	for i := range inputs {
		inputs[i] = float64(i * i)
	}
	roots, err := pj.Map(context.Background(), inputs, func(x float64) (float64, error) {
		return math.Sqrt(x), nil
	}, pj.NJobs(2))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(roots)
	// Output: [0 1 2 3 4 5 6 7 8 9]
}

func ExampleMap() {
	words := strings.Fields("pj runs a function over many inputs")
	lengths, err := pj.Map(context.Background(), words, func(w string) (int, error) {
		return len(w), nil
	}, pj.NJobs(-1)) // every CPU
	fmt.Println(lengths, err)
	// Output: [2 4 1 8 4 4 6] <nil>
}

// When ctx is done, no new input starts and Map returns ctx.Err() at once.
func ExampleMap_cancel() {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := pj.Map(ctx, make([]int, 10_000), func(x int) (int, error) {
		time.Sleep(time.Millisecond) // 10 s of work in all
		return x, nil
	}, pj.NJobs(2))
	fmt.Println(err, time.Since(start) < time.Second)
	// Output: context deadline exceeded true
}

func ExampleMapIndexed() {
	names := []string{"ada", "grace", "edsger"}
	labels, _ := pj.MapIndexed(context.Background(), names, func(i int, name string) (string, error) {
		return strconv.Itoa(i) + "=" + name, nil
	}, pj.NJobs(2))
	fmt.Println(labels)
	// Output: [0=ada 1=grace 2=edsger]
}

// Stream yields results while the call runs, in input order unless pj.Unordered is given.
func ExampleStream() {
	inputs := []int{1, 2, 3, 4}
	for r, err := range pj.Stream(context.Background(), inputs, func(x int) (int, error) {
		return x * 10, nil
	}, pj.NJobs(2)) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(r.Index, r.Value)
	}
	// Output:
	// 0 10
	// 1 20
	// 2 30
	// 3 40
}

// With pj.Unordered, each result comes as soon as it is ready; Result.Index says which input it is.
func ExampleStream_unordered() {
	inputs := []time.Duration{100 * time.Millisecond, 0, 0, 0}
	var order []int
	for r, err := range pj.Stream(context.Background(), inputs, func(d time.Duration) (time.Duration, error) {
		time.Sleep(d)
		return d, nil
	}, pj.NJobs(2), pj.Unordered(), pj.ChunkSize(1), pj.BatchSize(1)) {
		if err != nil {
			fmt.Println(err)
			return
		}
		order = append(order, r.Index)
	}
	fmt.Println("the slow input came last:", order[len(order)-1] == 0)
	slices.Sort(order)
	fmt.Println(order)
	// Output:
	// the slow input came last: true
	// [0 1 2 3]
}

// A failing input stops the call; the error names it and wraps fn's error.
func ExampleError() {
	errNegative := errors.New("negative input")
	_, err := pj.Map(context.Background(), []float64{4, 9, -1, 16}, func(x float64) (float64, error) {
		if x < 0 {
			return 0, errNegative
		}
		return math.Sqrt(x), nil
	}, pj.NJobs(2))
	var e *pj.Error
	if errors.As(err, &e) {
		fmt.Println(e.TaskIndex, e.Status == pj.StatusTaskFailed)
	}
	fmt.Println(errors.Is(err, pj.ErrTaskFailed), errors.Is(err, errNegative))
	fmt.Println(err)
	// Output:
	// 2 true
	// true true
	// pj: task 2 failed: negative input
}

// A panic in fn never crosses into C: it becomes a task error naming the input and the value.
func ExamplePanicError() {
	_, err := pj.Map(context.Background(), []int{1, 2, 3}, func(x int) (int, error) {
		if x == 2 {
			panic(42)
		}
		return x, nil
	}, pj.NJobs(2))
	var p *pj.PanicError
	if errors.As(err, &p) {
		fmt.Println(p.Index, p.Value)
	}
	fmt.Println(err)
	// Output:
	// 1 42
	// pj: task 1 panicked: 42
}

func ExampleTimeout() {
	release := make(chan struct{})
	defer close(release)
	_, err := pj.Map(context.Background(), []int{0, 1, 2}, func(x int) (int, error) {
		if x == 1 {
			<-release // stuck; Map returns without waiting for it
		}
		return x, nil
	}, pj.NJobs(2), pj.Timeout(50*time.Millisecond))
	fmt.Println(errors.Is(err, pj.ErrTimeout))
	fmt.Println(err)
	// Output:
	// true
	// pj: task 1 exceeded the timeout of 50ms
}

func ExampleProgress() {
	_, err := pj.Map(context.Background(), make([]int, 10_000), func(x int) (int, error) {
		return x, nil
	}, pj.NJobs(2), pj.Progress(func(done, total int, elapsed time.Duration) {
		if done == total { // called as results arrive, on this goroutine, last with done == total
			fmt.Printf("done %d of %d\n", done, total)
		}
	}))
	fmt.Println(err)
	// Output:
	// done 10000 of 10000
	// <nil>
}

// Map runs a closure, which cannot travel to another process: the process backends are refused
// (MapNamed runs registered functions on them).
func ExampleBackend() {
	_, err := pj.Map(context.Background(), []int{1}, func(x int) (int, error) {
		return x, nil
	}, pj.Backend("loky"))
	fmt.Println(errors.Is(err, pj.ErrUnsupported))
	// Output: true
}

// Options can come from strings (flags, files, the environment), with joblib's keywords.
func ExampleSet() {
	os.Setenv("MYAPP_N_JOBS", "2")
	opts := []pj.Option{pj.Set("n_jobs", os.Getenv("MYAPP_N_JOBS")), pj.Set("batch_size", "auto")}
	n, err := pj.EffectiveNJobs(opts...)
	fmt.Println(n, err)

	_, err = pj.EffectiveNJobs(pj.Set("pre_dispatch", "2*n_jobs+__import__"))
	fmt.Println(errors.Is(err, pj.ErrInvalidArgument))
	// Output:
	// 2 <nil>
	// true
}

// With MapCollect every input runs; each Result holds the input's value or its own *pj.Error.
func ExampleMapCollect() {
	results, err := pj.MapCollect(context.Background(), []string{"1", "two", "3", ""}, strconv.Atoi, pj.NJobs(2))
	if err != nil { // about the call as a whole: options, ctx, a timeout
		fmt.Println(err)
		return
	}
	for _, r := range results {
		var e *pj.Error
		if errors.As(r.Err, &e) {
			fmt.Println(r.Index, "failed:", e.TaskIndex == r.Index, errors.Is(r.Err, strconv.ErrSyntax))
			continue
		}
		fmt.Println(r.Index, "=", r.Value)
	}
	// Output:
	// 0 = 1
	// 1 failed: true true
	// 2 = 3
	// 3 failed: true true
}

// Map with OnError("collect") returns every value (zero where an input failed) and an error joining
// the failures in input order.
func ExampleOnError() {
	values, err := pj.Map(context.Background(), []int{1, 0, 4, 0}, func(x int) (int, error) {
		return 12 / x, nil // panics on 0: a runtime error, recovered per input
	}, pj.NJobs(2), pj.OnError("collect"))
	fmt.Println(values)
	fmt.Println(errors.Is(err, pj.ErrTaskFailed))
	fmt.Println(err)
	// Output:
	// [12 0 3 0]
	// true
	// pj: task 1 panicked: runtime error: integer divide by zero
	// pj: task 3 panicked: runtime error: integer divide by zero
}

// pj's handle_sigint is refused from Go (pj would take SIGINT from the Go runtime while a call
// blocks). signal.NotifyContext does the job: Ctrl-C cancels ctx, which stops the call, and Map
// returns context.Canceled at once.
func ExampleHandleSigint() {
	_, err := pj.EffectiveNJobs(pj.HandleSigint(true))
	fmt.Println(errors.Is(err, pj.ErrInvalidArgument))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() { // simulates a Ctrl-C 50 ms into a call of 5 s
		time.Sleep(50 * time.Millisecond)
		self, _ := os.FindProcess(os.Getpid())
		_ = self.Signal(os.Interrupt)
	}()
	start := time.Now()
	_, err = pj.Map(ctx, make([]int, 10_000), func(x int) (int, error) {
		time.Sleep(time.Millisecond)
		return x, nil
	}, pj.NJobs(2))
	fmt.Println(err, time.Since(start) < time.Second)
	// Output:
	// true
	// context canceled true
}

// pj's progress bar on stderr: counts, percentage, rate, elapsed time and ETA. Here the call ends
// with this line on stderr (on a terminal the bar is redrawn in place while the call runs):
//
//	[####################] 1000/1000 100% | 1666894 tasks/s | elapsed 00:00 | ETA 00:00
func ExampleProgressBar() {
	_, err := pj.Map(context.Background(), make([]int, 1000), func(x int) (int, error) {
		return x, nil
	}, pj.NJobs(2), pj.ProgressBar(true), pj.ChunkSize(1)) // ChunkSize(1): the bar counts inputs
	if err != nil {
		fmt.Println(err)
	}
}

// steps is what example.collatz returns: gob carries it between processes (exported fields).
type steps struct{ N, Steps, Pid int }

// Functions that MapNamed may run in worker processes are registered by name from init, so that
// every process of the program registers them: the caller and the workers, which are fresh runs of
// the same executable.
func init() {
	pj.Register("example.collatz", func(n int) (steps, error) {
		s := steps{N: n, Pid: os.Getpid()}
		for ; n > 1; s.Steps++ {
			if n%2 == 0 {
				n /= 2
			} else {
				n = 3*n + 1
			}
		}
		return s, nil
	})
}

// MapNamed runs a registered function in worker processes. A program calls
// pj.WorkerMainIfRequested() at the start of main (a test binary, in TestMain), which turns the
// process into a worker when pj started it as one.
func ExampleMapNamed() {
	out, err := pj.MapNamed[int, steps](context.Background(), "example.collatz", []int{1, 6, 27, 97},
		pj.NJobs(2)) // Backend("processes") is MapNamed's default
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range out {
		fmt.Println(s.N, s.Steps, s.Pid != os.Getpid())
	}
	// Output:
	// 1 0 true
	// 6 8 true
	// 27 111 true
	// 97 118 true
}

// A long function that watches its context lets a failure elsewhere end the call at once: here
// input 0 would wait a minute, but input 1 fails after 10 ms and MapContext returns right after.
func ExampleMapContext() {
	start := time.Now()
	_, err := pj.MapContext(context.Background(), []int{0, 1}, func(ctx context.Context, x int) (int, error) {
		if x == 1 {
			time.Sleep(10 * time.Millisecond)
			return 0, errors.New("no luck")
		}
		select {
		case <-ctx.Done(): // the call is stopping: give up
			return 0, ctx.Err()
		case <-time.After(time.Minute):
			return x, nil
		}
	}, pj.NJobs(2), pj.ChunkSize(1))
	fmt.Println(err, time.Since(start) < 5*time.Second)
	// Output: pj: task 1 failed: no luck true
}

// An Executor keeps its workers across calls: with KeepWorkers(true), MapNamed's worker processes
// start at the first call and serve the next ones, until Close.
func ExampleNewExecutor() {
	ex, err := pj.NewExecutor(pj.NJobs(2), pj.KeepWorkers(true))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ex.Close() // stops the threads and reaps the worker processes
	pids := map[int]bool{}
	for _, inputs := range [][]int{{1, 6}, {27, 97}, {7, 9}} {
		out, err := pj.MapNamed[int, steps](context.Background(), "example.collatz", inputs, pj.On(ex))
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, s := range out {
			pids[s.Pid] = true
		}
	}
	fmt.Println("3 calls ran in at most 2 worker processes:", len(pids) <= 2 && !pids[os.Getpid()])
	// Output: 3 calls ran in at most 2 worker processes: true
}
