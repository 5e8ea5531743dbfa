/*
 * A parallel loop, OpenMP's `#pragma omp parallel for` or rayon's `par_iter().for_each`:
 *
 *     #pragma omp parallel for
 *     for (size_t i = 0; i < N; i++) squares[i] = i * i;
 *
 * pj_parallel_for splits 0..N into ranges (about 16 per worker) and calls the range callback once
 * per range: there is no per-item cost, and nothing comes back but the status. The callback writes
 * its results where the caller can read them:
 * - on threads, straight into the caller's own memory;
 * - on worker processes (the default backend), into a pj_shared_t buffer, since what a forked
 *   worker writes to ordinary memory stays in the worker.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pj.h"

enum { N = 1000000 };

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* The range callback: squares[i] = i * i for i in start..end (end excluded). */
static int32_t fill_squares(void *userdata, size_t start, size_t end, pj_out_t *out) {
    (void)out; /* takes no data here; pj_out_error(out, ...) would explain a failure */
    uint64_t *squares = userdata;
    for (size_t i = start; i < end; i++) {
        squares[i] = (uint64_t)i * i;
    }
    return 0;
}

/* Runs the loop over `squares` with the given backend and prints a summary. */
static void run(const char *backend, uint64_t *squares) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("backend", pj_config_set(cfg, "backend", backend, &err), err);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    check("pj_parallel_for", pj_parallel_for(par, N, fill_squares, squares, &err), err);

    uint64_t sum = 0;
    for (size_t i = 0; i < N; i++) {
        sum += squares[i];
    }
    printf("%s: squares[%d] = %llu, sum = %llu\n", backend, N - 1, (unsigned long long)squares[N - 1],
           (unsigned long long)sum);
    pj_parallel_free(par);
    pj_config_free(cfg);
}

int main(void) {
    /* Threads share the caller's memory: an ordinary array will do. */
    uint64_t *array = calloc(N, sizeof *array);
    if (array == NULL) {
        return 1;
    }
    run("threads", array);
    free(array);

    /* Worker processes: the output must live in shared memory, created before the call. */
    pj_shared_t *shared = NULL;
    pj_error_t *err = NULL;
    check("pj_shared_new", pj_shared_new(NULL, N * sizeof(uint64_t), &shared, &err), err);
    run("processes", (uint64_t *)pj_shared_data(shared));
    pj_shared_free(shared);
    return 0;
}
