//go:build pjfailpoints

package pj

// What a Go user sees when pj fails where no function can reach: a worker process that cannot
// start, receive, map, encode or send a batch, or clean up after one; a spilled input that cannot
// be written; an exported C function that fails. Needs the libpj built with the cargo feature
// failpoints (`cargo build --features failpoints --target-dir target/failpoints` at the root; the
// pjfailpoints tag links it, see cgo_failpoints.go):
//
//	go test -tags pjfailpoints -count=1 -run Failpoint ./...
//
// TestFailpointMatrix runs each cell in a process of its own (this test binary again, with
// PJ_FAILPOINTS armed and PJ_FP_CELL naming the cell, running TestFailpointCell), three at a
// time. A cell makes one armed call in one call style (Map, Stream, MapNamed, StreamNamed,
// MapCollectNamed), on an Executor or not, then disarms every process (the file `disarmed` in
// PJ_FAILPOINTS_DIR) and makes a second call (on the same Executor when there is one). It checks
// that the armed call returned, never with a wrong result; that its error is an *Error whose
// Status matches its sentinel (errors.Is), whose TaskIndex is in range and whose Message says what
// failed; that a Stream ends; that the next call works; and that no child process, descriptor,
// goroutine or temp file is left.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	fpTasks    = 24
	fpArgBytes = 2048 // above MaxNbytes(1024): the encoded input is spilled to a file
)

// fpArg is a cell's input: X, padded so that its encoding is spilled.
type fpArg struct {
	X   int
	Pad []byte
}

// fpOut is a cell's result: X * X and the pid of the process that computed it.
type fpOut struct{ Sq, Pid int }

func fpSquare(a fpArg) (fpOut, error) { return fpOut{Sq: a.X * a.X, Pid: os.Getpid()}, nil }

func init() { Register("fp.square", fpSquare) }

func fpInputs() []fpArg {
	in := make([]fpArg, fpTasks)
	for i := range in {
		in[i] = fpArg{X: i, Pad: make([]byte, fpArgBytes)}
	}
	return in
}

// fpCall is what one call gave: its error, the results by index, and the failures that
// MapCollectNamed or a Stream under OnError("collect") reported per input.
type fpCall struct {
	err    error
	got    map[int]fpOut
	blamed map[int]error
}

// fpRun makes one call in `style` ("map", "stream", "mapnamed", "streamnamed", "collectnamed"),
// on ex when it is not nil.
func fpRun(style string, ex *Executor) fpCall {
	ctx := context.Background()
	call := fpCall{got: map[int]fpOut{}, blamed: map[int]error{}}
	var opts []Option
	if ex != nil {
		opts = append(opts, On(ex))
	} else {
		opts = fpOptions(style)
	}
	if ex == nil || strings.HasSuffix(style, "named") {
		opts = append(opts, Timeout(3*time.Second))
	}
	in := fpInputs()
	switch style {
	case "map", "mapnamed":
		var out []fpOut
		if style == "map" {
			out, call.err = Map(ctx, in, fpSquare, opts...)
		} else {
			out, call.err = MapNamed[fpArg, fpOut](ctx, "fp.square", in, opts...)
		}
		if call.err == nil {
			for i, r := range out {
				call.got[i] = r
			}
		}
	case "stream", "streamnamed":
		seq := Stream(ctx, in, fpSquare, opts...)
		if style == "streamnamed" {
			seq = StreamNamed[fpArg, fpOut](ctx, "fp.square", in, opts...)
		}
		for r, err := range seq {
			if err != nil {
				call.err = err
				break
			}
			call.got[r.Index] = r.Value
		}
	case "collectnamed":
		var out []Result[fpOut]
		out, call.err = MapCollectNamed[fpArg, fpOut](ctx, "fp.square", in, opts...)
		for _, r := range out {
			if r.Err != nil {
				call.blamed[r.Index] = r.Err
				if call.err == nil {
					call.err = r.Err // the first failed input stands for the call
				}
			} else {
				call.got[r.Index] = r.Value
			}
		}
	}
	return call
}

// fpOptions are a cell's options: closures on two threads, named functions on two spawned worker
// processes, batches of 4, inputs above 1 KiB spilled.
func fpOptions(style string) []Option {
	opts := []Option{NJobs(2), BatchSize(4), MaxNbytes(1024)}
	if !strings.HasSuffix(style, "named") {
		opts = append(opts, Backend("threads"))
	}
	return opts
}

// fpWrong counts the results that are not X * X for their index.
func fpWrong(got map[int]fpOut) int {
	n := 0
	for i, r := range got {
		if r.Sq != i*i {
			n++
		}
	}
	return n
}

// fpSaysWhatFailed: the rules of tests/failpoints.rs' says_what_failed, on an *Error.
func fpSaysWhatFailed(stage, mode string, workerSide bool, e *Error) bool {
	what := e.Message
	died := e.Status == StatusWorkerDied
	stuck := e.Status == StatusTimeout && strings.Contains(what, "stuck outside any task")
	return strings.Contains(what, "failpoint "+stage) ||
		(mode == "panic" && strings.Contains(what, "panicked")) ||
		((mode == "exit" || mode == "segv") && died) ||
		(mode == "hang" && workerSide && stuck) ||
		(workerSide && mode == "panic" && (died || stuck)) ||
		((stage == "result_send" || stage == "worker_start") && died) ||
		(stage == "worker_start" && strings.Contains(what, "handshake")) ||
		// The C functions without an error object: the package names the one that failed.
		(stage == "export" && (strings.Contains(what, "pj_config_new failed") ||
			strings.Contains(what, "pj_results_get failed")))
}

// fpChildren counts this process's child processes (every thread's).
func fpChildren() int {
	n := 0
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		text, _ := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "children"))
		n += len(strings.Fields(string(text)))
	}
	return n
}

func fpCount(dir string) int {
	entries, _ := os.ReadDir(dir)
	return len(entries)
}

// fpSettle waits up to 5 s for probe() to come down to want; returns its last value.
func fpSettle(probe func() int, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	now := probe()
	for now > want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		now = probe()
	}
	return now
}

// TestFailpointCell is one cell, in a process the matrix started; skipped otherwise.
func TestFailpointCell(t *testing.T) {
	cell := os.Getenv("PJ_FP_CELL")
	if cell == "" {
		t.Skip("run by TestFailpointMatrix")
	}
	style, onExecutor, _ := strings.Cut(cell, ",")
	spec := os.Getenv("PJ_FAILPOINTS")
	stage, rest, _ := strings.Cut(spec, "=")
	mode, _, _ := strings.Cut(rest, "@")
	workerSide := stage != "spill_write" && stage != "export"
	dir := os.Getenv("PJ_FAILPOINTS_DIR")
	fired := func() int {
		text, _ := os.ReadFile(filepath.Join(dir, "fired"))
		return strings.Count(string(text), "\n")
	}

	kids, fds, goroutines := fpChildren(), fpCount("/proc/self/fd"), runtime.NumGoroutine()
	var ex *Executor
	var first fpCall
	if onExecutor == "executor" {
		var err error
		ex, err = NewExecutor(fpOptions(style)...)
		first.err = err
	}
	if first.err == nil {
		first = fpRun(style, ex)
	}
	t.Logf("first: %v (fired %d, got %d)", first.err, fired(), len(first.got))
	if n := fpWrong(first.got); n != 0 {
		t.Fatalf("%d wrong results", n)
	}
	if fired() == 0 {
		if stage == "export" {
			t.Fatalf("the stage never fired (the cell makes fewer exported calls than n: give this style a lower n in fpCells)")
		}
		t.Fatalf("the stage never fired")
	}
	// A worker that ends before any task of its batch started is replaced, and the batch runs
	// again: the call may succeed, whole. An exported function whose failure the package
	// tolerates (pj_parallel_expect: progress only) leaves the call as it was.
	replaceable := workerSide && (stage == "batch_receive" || stage == "arg_map") &&
		(mode == "panic" || mode == "exit" || mode == "segv")
	if first.err == nil {
		if !replaceable && stage != "export" {
			t.Fatalf("the armed call succeeded")
		}
		if len(first.got) != fpTasks {
			t.Fatalf("the armed call succeeded with %d results of %d", len(first.got), fpTasks)
		}
	} else {
		var e *Error
		if !errors.As(first.err, &e) {
			t.Fatalf("the error is not an *Error: %T %v", first.err, first.err)
		}
		if !errors.Is(first.err, sentinels[e.Status]) {
			t.Fatalf("errors.Is(err, the sentinel of %v) is false: %v", e.Status, first.err)
		}
		if e.TaskIndex < -1 || e.TaskIndex >= fpTasks {
			t.Fatalf("TaskIndex %d out of range: %v", e.TaskIndex, first.err)
		}
		if !fpSaysWhatFailed(stage, mode, workerSide, e) {
			t.Fatalf("the error does not say what failed: %v (%v)", first.err, e.Status)
		}
		for i, err := range first.blamed {
			var be *Error
			if !errors.As(err, &be) || be.TaskIndex != i || !fpSaysWhatFailed(stage, mode, workerSide, be) {
				t.Fatalf("input %d is blamed for something else: %v", i, err)
			}
		}
		if len(first.blamed) > 0 && len(first.blamed)+len(first.got) != fpTasks {
			t.Fatalf("MapCollectNamed lost inputs: %d failed, %d returned", len(first.blamed), len(first.got))
		}
	}

	// Disarmed everywhere: here and in every worker, spawned or kept.
	if err := os.WriteFile(filepath.Join(dir, "disarmed"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if onExecutor == "executor" && ex == nil {
		var err error
		if ex, err = NewExecutor(fpOptions(style)...); err != nil {
			t.Fatalf("NewExecutor after disarming: %v", err)
		}
	}
	second := fpRun(style, ex)
	if second.err != nil || len(second.got) != fpTasks || fpWrong(second.got) != 0 {
		t.Fatalf("the next call did not work: %v (%d results)", second.err, len(second.got))
	}
	if ex != nil {
		if err := ex.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if left := fpSettle(fpChildren, kids) - kids; left != 0 {
		t.Fatalf("%d child processes were left", left)
	}
	if left := fpSettle(runtime.NumGoroutine, goroutines) - goroutines; left > 0 {
		t.Fatalf("%d goroutines were left", left)
	}
	if left := fpCount("/proc/self/fd") - fds; left > 0 {
		t.Fatalf("%d descriptors were left", left)
	}
	var files []string
	_ = filepath.WalkDir(os.Getenv("PJ_TEMP_FOLDER"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	if len(files) != 0 {
		t.Fatalf("files were left in the temp folder: %v", files)
	}
}

type fpCell struct{ spec, cell string }

// fpCells: each worker stage and mode on the named calls (spawned workers), with the styles and
// Executor use rotated; spill_write on the named calls; and every exported function failing in
// turn (the n-th export of the cell's process) on each style. A hung spawned worker's start waits
// out the 30 s handshake limit: one cell.
func fpCells() []fpCell {
	named := []string{"mapnamed", "streamnamed", "collectnamed"}
	all := []string{"map", "stream", "mapnamed", "streamnamed", "collectnamed"}
	executor := []string{"call", "executor"}
	var cells []fpCell
	k := 0
	stages := []struct {
		name string
		pass int
	}{{"worker_start", 1}, {"batch_receive", 2}, {"arg_map", 2}, {"result_encode", 2}, {"result_send", 2}, {"task_cleanup", 2}}
	for _, s := range stages {
		for _, mode := range []string{"error", "panic", "exit", "segv", "hang"} {
			for j := 0; j < 2; j++ {
				if s.name == "worker_start" && mode == "hang" && j == 1 {
					continue
				}
				cells = append(cells, fpCell{fmt.Sprintf("%s=%s@%d", s.name, mode, s.pass),
					named[k%len(named)] + "," + executor[(k/len(named)+j)%2]})
				k++
			}
		}
	}
	for _, mode := range []string{"error", "panic"} {
		for _, style := range named {
			for _, ex := range executor {
				cells = append(cells, fpCell{"spill_write=" + mode + "@5", style + "," + ex})
			}
		}
	}
	// The first export of the process is WorkerMainIfRequested's registration (in TestMain), which
	// panics when pj refuses it, as documented.
	// Map without an Executor makes 14 exported calls up to the end of its armed call: beyond,
	// Stream instead.
	for n := 2; n <= 20; n++ {
		for j, ex := range executor {
			style := all[(n+j)%len(all)]
			if style == "map" && ex == "call" && n > 14 {
				style = "stream"
			}
			cells = append(cells, fpCell{fmt.Sprintf("export=error@%d", n), style + "," + ex})
		}
	}
	return cells
}

func TestFailpointMatrix(t *testing.T) {
	if os.Getenv("PJ_FP_CELL") != "" {
		t.Skip("in a cell")
	}
	const limit = 60 * time.Second
	cells := fpCells()
	only := os.Getenv("PJ_FP_ONLY") // stage[,stage]: while working on them
	root := t.TempDir()
	var mu sync.Mutex
	var failures []string
	slots := make(chan struct{}, 3)
	var wg sync.WaitGroup
	for number, c := range cells {
		stage, _, _ := strings.Cut(c.spec, "=")
		if only != "" && !strings.Contains(","+only+",", ","+stage+",") {
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			folder := filepath.Join(root, fmt.Sprint(number))
			temp, fp := filepath.Join(folder, "temp"), filepath.Join(folder, "fp")
			for _, d := range []string{temp, fp} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					panic(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFailpointCell$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "PJ_FAILPOINTS="+c.spec, "PJ_FP_CELL="+c.cell,
				"PJ_FAILPOINTS_DIR="+fp, "PJ_TEMP_FOLDER="+temp)
			out, err := cmd.CombinedOutput()
			if os.Getenv("PJ_FP_VERBOSE") != "" {
				t.Logf("--- %s on %s\n%s", c.spec, c.cell, out)
			}
			if err != nil || !strings.Contains(string(out), "--- PASS: TestFailpointCell") {
				why := fmt.Sprint(err)
				if ctx.Err() != nil {
					why = "hung (killed after 60 s)"
				}
				mu.Lock()
				failures = append(failures, fmt.Sprintf("%s on %s: %s\n%s", c.spec, c.cell, why, out))
				mu.Unlock()
			}
			_ = os.RemoveAll(folder)
		}()
	}
	wg.Wait()
	t.Logf("Go failpoint matrix: %d cells, %d failed", len(cells), len(failures))
	for _, f := range failures {
		t.Error(f)
	}
}
