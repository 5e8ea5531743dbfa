/*
 * The OpenMP column of benches/compare.rs, which builds it with `gcc -O2 -fopenmp` into target/ and
 * runs it once per workload. Every parallel region uses 2 threads. Prints one line per measured
 * variant: its name, then the wall time of each run in seconds.
 *
 *   omp trivial N RUNS         out[i] = in[i] * 2 over N 8-byte items: "serial ..." and "omp ..."
 *   omp cpu TASKS ITERS RUNS   TASKS spin loops of ITERS iterations: "serial ..." and "omp ..."
 *   omp buffer BYTES RUNS      sum of the bytes of a BYTES buffer (filled before timing), 2 halves
 *                              in parallel: "serial ..." and "omp ..."
 *   omp cold                   this process's first parallel region (2 trivial iterations):
 *                              "cold t" (thread creation included; process start-up excluded)
 */
#include <inttypes.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "omp: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static void fail(const char *what) {
    fprintf(stderr, "omp: wrong result in %s\n", what);
    exit(3);
}

/* The same loop as spin() in benches/compare.rs: a chain of dependent multiply-adds; the empty asm
 * statement keeps the compiler from reassociating or vectorising it. */
static uint64_t spin(uint64_t iters, uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t i = 0; i < iters; i++) {
        x = x * 6364136223846793005ULL + i;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

/* The sum of the bytes in 16-bit partial sums of 256 bytes, as sum_bytes() in benches/compare.rs. */
static uint64_t sum_bytes(const uint8_t *p, size_t n) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i += 256) {
        size_t len = n - i < 256 ? n - i : 256;
        uint16_t s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; j++) {
            s += p[i + j];
        }
        total += s;
    }
    return total;
}

static void print_times(const char *name, const double *t, int runs) {
    printf("%s", name);
    for (int r = 0; r < runs; r++) {
        printf(" %.9f", t[r]);
    }
    printf("\n");
}

static void trivial(size_t n, int runs) {
    uint64_t *in = xmalloc(n * sizeof *in);
    for (size_t i = 0; i < n; i++) {
        in[i] = i;
    }
    double *ts = xmalloc((size_t)runs * sizeof *ts), *to = xmalloc((size_t)runs * sizeof *to);
    /* Warm-up: starts the thread team. */
#pragma omp parallel num_threads(2)
    {
    }
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        uint64_t *out = xmalloc(n * sizeof *out);
        for (size_t i = 0; i < n; i++) {
            out[i] = in[i] * 2;
        }
        ts[r] = now() - t0;
        if (out[n - 1] != 2 * (n - 1)) fail("trivial serial");
        free(out);

        t0 = now();
        out = xmalloc(n * sizeof *out);
#pragma omp parallel for num_threads(2) schedule(static)
        for (size_t i = 0; i < n; i++) {
            out[i] = in[i] * 2;
        }
        to[r] = now() - t0;
        if (out[n - 1] != 2 * (n - 1)) fail("trivial omp");
        free(out);
    }
    print_times("serial", ts, runs);
    print_times("omp", to, runs);
    free(in);
    free(ts);
    free(to);
}

static void cpu(size_t tasks, uint64_t iters, int runs) {
    uint64_t *out = xmalloc(tasks * sizeof *out);
    double *ts = xmalloc((size_t)runs * sizeof *ts), *to = xmalloc((size_t)runs * sizeof *to);
#pragma omp parallel num_threads(2)
    {
    }
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        for (size_t t = 0; t < tasks; t++) {
            out[t] = spin(iters, t);
        }
        ts[r] = now() - t0;
        uint64_t check = out[tasks - 1];

        memset(out, 0, tasks * sizeof *out);
        t0 = now();
#pragma omp parallel for num_threads(2) schedule(dynamic, 1)
        for (size_t t = 0; t < tasks; t++) {
            out[t] = spin(iters, t);
        }
        to[r] = now() - t0;
        if (out[tasks - 1] != check) fail("cpu");
    }
    print_times("serial", ts, runs);
    print_times("omp", to, runs);
    free(out);
    free(ts);
    free(to);
}

static void buffer(size_t bytes, int runs) {
    uint8_t *buf = xmalloc(bytes);
    uint64_t expected = 0;
    for (size_t i = 0; i < bytes; i++) {
        buf[i] = (uint8_t)(i * 31);
        expected += buf[i];
    }
    double *ts = xmalloc((size_t)runs * sizeof *ts), *to = xmalloc((size_t)runs * sizeof *to);
#pragma omp parallel num_threads(2)
    {
    }
    size_t half = bytes / 2;
    for (int r = 0; r < runs; r++) {
        double t0 = now();
        uint64_t s = sum_bytes(buf, bytes);
        ts[r] = now() - t0;
        if (s != expected) fail("buffer serial");

        t0 = now();
        s = 0;
#pragma omp parallel for num_threads(2) schedule(static) reduction(+ : s)
        for (int h = 0; h < 2; h++) {
            s += h == 0 ? sum_bytes(buf, half) : sum_bytes(buf + half, bytes - half);
        }
        to[r] = now() - t0;
        if (s != expected) fail("buffer omp");
    }
    print_times("serial", ts, runs);
    print_times("omp", to, runs);
    free(buf);
    free(ts);
    free(to);
}

static void cold(void) {
    uint64_t out[2];
    double t0 = now();
#pragma omp parallel for num_threads(2) schedule(static)
    for (int i = 0; i < 2; i++) {
        out[i] = (uint64_t)i * 2;
    }
    double t = now() - t0;
    if (out[1] != 2) fail("cold");
    print_times("cold", &t, 1);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "trivial") == 0) {
        trivial(strtoull(argv[2], NULL, 10), atoi(argv[3]));
    } else if (argc == 5 && strcmp(argv[1], "cpu") == 0) {
        cpu(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10), atoi(argv[4]));
    } else if (argc == 4 && strcmp(argv[1], "buffer") == 0) {
        buffer(strtoull(argv[2], NULL, 10), atoi(argv[3]));
    } else if (argc == 2 && strcmp(argv[1], "cold") == 0) {
        cold();
    } else {
        fprintf(stderr, "usage: omp trivial N RUNS | cpu TASKS ITERS RUNS | buffer BYTES RUNS | cold\n");
        return 1;
    }
    return 0;
}
