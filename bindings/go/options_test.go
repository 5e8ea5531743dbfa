package pj

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// goTool is the go command that runs these tests (skips the test when there is none).
func goTool(t *testing.T) string {
	t.Helper()
	if path, err := exec.LookPath("go"); err == nil {
		return path
	}
	path := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(path); err != nil {
		t.Skip("no go command to run")
	}
	return path
}

// go doc shows every exported declaration with types a user can name: Option is not a function of
// an unexported type, and the options whose value is a number take a number.
func TestGoDocShowsNoUnexportedTypes(t *testing.T) {
	out, err := exec.Command(goTool(t), "doc", "-all", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go doc -all: %v\n%s", err, out)
	}
	doc := string(out)
	if strings.Contains(doc, "settings") {
		t.Errorf("go doc mentions the unexported type settings:\n%s", grepLines(doc, "settings"))
	}
	for _, want := range []string{
		"type Option interface",
		"func BatchSize(n int) Option",
		"func BatchSizeAuto() Option",
		"func MaxNbytes(bytes int64) Option",
		"func MaxNbytesNone() Option",
		"func StackSize(bytes int64) Option",
		"func MaxTasksPerChild(n int) Option",
		"func WorkerMemoryLimit(bytes int64) Option",
		"func IdleWorkerTimeout(d time.Duration) Option",
		"func NJobs(n int) Option",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("go doc lacks %q", want)
		}
	}
	// No exported function signature names a lowercase (unexported) type of this package.
	sig := regexp.MustCompile(`(?m)^func [A-Z]\w*(\[[^\]]*\])?\(.*$`)
	unexported := regexp.MustCompile(`[(\s,*\]]\*?(settings|option|call|keyValue|callKind)\b`)
	for _, line := range sig.FindAllString(doc, -1) {
		if unexported.MatchString(line) {
			t.Errorf("exported signature names an unexported type: %s", line)
		}
	}
}

func grepLines(text, word string) string {
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, word) {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// An option says what it is, as it was written.
func TestOptionsDescribeThemselves(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{NJobs(-1), "NJobs(-1)"},
		{BatchSize(8), "BatchSize(8)"},
		{BatchSizeAuto(), "BatchSizeAuto()"},
		{MaxNbytes(1 << 20), "MaxNbytes(1048576)"},
		{MaxNbytesNone(), "MaxNbytesNone()"},
		{StackSize(8 << 20), "StackSize(8388608)"},
		{MaxTasksPerChild(10), "MaxTasksPerChild(10)"},
		{WorkerMemoryLimit(512 << 20), "WorkerMemoryLimit(536870912)"},
		{IdleWorkerTimeout(1500 * time.Millisecond), "IdleWorkerTimeout(1.5s)"},
		{Backend("threads"), `Backend("threads")`},
		{Set("batch_size", "auto"), `Set("batch_size", "auto")`},
		{Unordered(), "Unordered()"},
	} {
		if got := tc.opt.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// The typed size options reach pj as numbers: a fixed batch size of 1 gives one batch per pj task
// (each input its own chunk), "auto" and max_nbytes values are accepted, and values pj refuses are
// quoted in its error.
func TestTypedSizeOptions(t *testing.T) {
	for _, opts := range [][]Option{
		{NJobs(2), ChunkSize(1), BatchSize(1)},
		{NJobs(2), BatchSizeAuto()},
		{NJobs(2), BatchSize(1 << 20)},
		{NJobs(2), MaxNbytes(0)},
		{NJobs(2), MaxNbytes(1 << 40)},
		{NJobs(2), MaxNbytesNone()},
		{NJobs(2), StackSize(1 << 20)},
		{NJobs(2), MaxTasksPerChild(1), WorkerMemoryLimit(1), IdleWorkerTimeout(time.Millisecond)},
	} {
		out, err := Map(context.Background(), ints(50), square, opts...)
		if err != nil {
			t.Fatalf("%v: %v", opts, err)
		}
		if out[7] != 49 {
			t.Errorf("%v: out[7] = %d", opts, out[7])
		}
	}
	for _, tc := range []struct {
		opt  Option
		text string
	}{
		{BatchSize(0), `"0"`},
		{BatchSize(-3), `"-3"`},
		{BatchSize(1<<20 + 1), `"1048577"`},
		{MaxNbytes(-1), `"-1"`},
		{StackSize(1024), `"1024"`},
		{MaxTasksPerChild(0), `"0"`},
		{MaxTasksPerChild(-2), `"-2"`},
		{WorkerMemoryLimit(0), `"0"`},
		{IdleWorkerTimeout(0), `"0"`},
		{IdleWorkerTimeout(-time.Second), `"-1"`},
	} {
		_, err := Map(context.Background(), ints(3), square, tc.opt)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%v: got %v, want ErrInvalidArgument quoting %s", tc.opt, err, tc.text)
		}
	}
}
