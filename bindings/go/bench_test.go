package pj

import (
	"context"
	"os"
	"strconv"
	"testing"
)

// BenchmarkMap1M measures Map over 1,000,000 trivial inputs (x*2+1) on every CPU and reports the
// wall-clock cost per input ("ns/item"). The other benchmarks put it in context: the same loop in
// plain Go, and Map on one thread (the per-input overhead of the wrapper without parallelism).
func BenchmarkMap1M(b *testing.B) {
	in := ints(1_000_000)
	fn := func(x int) (int, error) { return 2*x + 1, nil }
	b.Run("n_jobs=-1", func(b *testing.B) {
		for range b.N {
			if _, err := Map(context.Background(), in, fn, NJobs(-1)); err != nil {
				b.Fatal(err)
			}
		}
		reportPerItem(b, len(in))
	})
	b.Run("n_jobs=1", func(b *testing.B) {
		for range b.N {
			if _, err := Map(context.Background(), in, fn); err != nil {
				b.Fatal(err)
			}
		}
		reportPerItem(b, len(in))
	})
	b.Run("chunk=1,n_jobs=-1", func(b *testing.B) {
		// One pj task (one C-to-Go transition) per input: what chunking saves.
		for range b.N {
			if _, err := Map(context.Background(), in, fn, NJobs(-1), ChunkSize(1)); err != nil {
				b.Fatal(err)
			}
		}
		reportPerItem(b, len(in))
	})
	b.Run("stream,n_jobs=-1", func(b *testing.B) {
		for range b.N {
			for _, err := range Stream(context.Background(), in, fn, NJobs(-1)) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		reportPerItem(b, len(in))
	})
	b.Run("plain Go loop", func(b *testing.B) {
		for range b.N {
			out := make([]int, len(in))
			for i, x := range in {
				out[i], _ = fn(x)
			}
		}
		reportPerItem(b, len(in))
	})
}

// BenchmarkCompareMap is the Go row of benches/compare.rs (workload (a)): Map of x*2 over
// PJ_COMPARE_ITEMS inputs (default 1,000,000) on two threads, ns per input. The executor's first
// call is not timed, as in the other rows.
func BenchmarkCompareMap(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("PJ_COMPARE_ITEMS")); err == nil && v > 0 {
		n = v
	}
	in := ints(n)
	fn := func(x int) (int, error) { return x * 2, nil }
	if _, err := Map(context.Background(), in, fn, NJobs(2)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		out, err := Map(context.Background(), in, fn, NJobs(2))
		if err != nil || out[n-1] != 2*(n-1) {
			b.Fatal(err)
		}
	}
	reportPerItem(b, n)
}

func reportPerItem(b *testing.B, items int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(items), "ns/item")
}

// BenchmarkMapCall measures the fixed cost of a call: Map over 10 inputs, on one thread (no worker
// thread is started) and on two (pj starts and joins two threads, each calling into Go).
func BenchmarkMapCall(b *testing.B) {
	in := ints(10)
	fn := func(x int) (int, error) { return 2*x + 1, nil }
	for _, tc := range []struct {
		name string
		opts []Option
	}{{"n_jobs=1", nil}, {"n_jobs=2", []Option{NJobs(2)}}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				if _, err := Map(context.Background(), in, fn, tc.opts...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func init() { Register("bench.affine", func(x int) (int, error) { return 2*x + 1, nil }) }

// BenchmarkMapNamed measures MapNamed over 100,000 trivial inputs: the per-input cost of the gob
// encoding both ways and of one pj task per input, on every CPU's worker processes (started at each
// call, included) and in this process (n_jobs 1, no worker: encoding and pj's bookkeeping only).
// "call,processes" is the fixed cost of a call that starts two workers (10 inputs).
func BenchmarkMapNamed(b *testing.B) {
	in := ints(100_000)
	for _, tc := range []struct {
		name string
		in   []int
		opts []Option
	}{
		{"processes,n_jobs=-1", in, []Option{NJobs(-1)}},
		{"n_jobs=1", in, nil},
		{"call,processes", in[:10], []Option{NJobs(2)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				if _, err := MapNamed[int, int](context.Background(), "bench.affine", tc.in, tc.opts...); err != nil {
					b.Fatal(err)
				}
			}
			reportPerItem(b, len(tc.in))
		})
	}
}
