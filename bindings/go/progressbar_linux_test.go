//go:build linux

package pj

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
)

// captureStderr runs f with file descriptor 2 (where pj's Rust code writes) redirected to a pipe, and
// returns what was written there.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	saved, err := syscall.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(saved)
	read := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		read <- string(b)
	}()
	if err := syscall.Dup3(int(w.Fd()), 2, 0); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if err := syscall.Dup3(saved, 2, 0); err != nil {
				panic(err)
			}
			w.Close()
		}()
		f()
	}()
	return <-read
}

func TestProgressBar(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []Option
		want []string // in the output, or nothing when empty
	}{
		// stderr is a pipe here: no in-place redraws, the final line when the call ends (the first
		// plain line only comes after 2 s). The bar counts inputs, whatever the chunks.
		{"ProgressBar(true)", []Option{NJobs(2), ChunkSize(1), ProgressBar(true)},
			[]string{"[####################] 3000/3000 100% |", "tasks/s", "elapsed 00:00"}},
		{"automatic chunks", []Option{NJobs(2), ProgressBar(true)}, []string{" 3000/3000 100% |", "items/s"}},
		{"Set", []Option{NJobs(2), Set("progress", "bar")}, []string{" 3000/3000 100% |"}},
		{"sequential", []Option{ProgressBar(true), ChunkSize(10)}, []string{" 3000/3000 100% |", "items/s"}},
		{"ProgressBar(false)", []Option{NJobs(2), ProgressBar(true), ProgressBar(false)}, nil},
		{"none", []Option{NJobs(2), ProgressBar(true), Set("progress", "none")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out []int
			var err error
			text := captureStderr(t, func() {
				out, err = Map(context.Background(), ints(3000), square, tc.opts...)
			})
			if err != nil || len(out) != 3000 || out[2999] != 2999*2999 {
				t.Fatalf("got %d results, %v", len(out), err)
			}
			if tc.want == nil && text != "" {
				t.Errorf("no bar wanted, got %q", text)
			}
			for _, want := range tc.want {
				if !strings.Contains(text, want) {
					t.Errorf("stderr lacks %q:\n%s", want, text)
				}
			}
			if strings.Contains(text, "\r") || strings.Contains(text, "\x1b[") {
				t.Errorf("in-place redraws on a pipe: %q", text)
			}
		})
	}
	_, err := Map(context.Background(), ints(3), square, Set("progress", "fancy"))
	if e := asError(t, err); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(e.Message, `"fancy"`) {
		t.Errorf("progress fancy: got %v", err)
	}
}
