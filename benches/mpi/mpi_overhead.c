/*
 * The MPI backend's per-task overhead and speedup, against the process backend on rank 0 alone
 * (scripts/bench-mpi.sh builds and runs it):
 *
 *     mpirun -n 3 ./pj_mpi_bench [trivial_tasks=200000] [cpu_tasks=200] [cpu_ms=10]
 *
 * With n ranks, backend "mpi" has n - 1 workers; backend "processes" gets n_jobs = n - 1 too
 * (at least 1). Both submit by name with auto batching. Figures only: nothing is asserted but the
 * results' correctness.
 */
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "pj.h"
#include "pj_mpi.h"

/* int64 x -> 2x */
static int32_t task_double(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t x = 0;
    if (arg_len == sizeof x) {
        memcpy(&x, arg, sizeof x);
    }
    x *= 2;
    return pj_out_set(out, (const uint8_t *)&x, sizeof x) == PJ_STATUS_OK ? 0 : 1;
}

/* double ms -> burns that much CPU time of its own thread, returns it */
static int32_t task_spin(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    double ms = 0;
    if (arg_len == sizeof ms) {
        memcpy(&ms, arg, sizeof ms);
    }
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    volatile uint64_t x = 0;
    do {
        for (int i = 0; i < 10000; i++) {
            x = x + (uint64_t)i;
        }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((double)(t.tv_sec - t0.tv_sec) * 1e3 + (double)(t.tv_nsec - t0.tv_nsec) * 1e-6 < ms);
    return pj_out_set(out, (const uint8_t *)&ms, sizeof ms) == PJ_STATUS_OK ? 0 : 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds of this process (rank 0: the caller's thread and pj's threads, not children). */
static double cpu_self(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static pj_parallel_t *make(const char *backend, int workers) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    char n[32];
    snprintf(n, sizeof n, "%d", workers);
    pj_status st = pj_config_new(&cfg);
    if (st == PJ_STATUS_OK) {
        st = pj_config_set(cfg, "backend", backend, &err);
    }
    if (st == PJ_STATUS_OK && strcmp(backend, "processes") == 0) {
        st = pj_config_set(cfg, "n_jobs", n, &err);
    }
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_new(cfg, &par, &err);
    }
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "backend %s: %s: %s\n", backend, pj_status_str(st), pj_error_message(err));
    }
    pj_error_free(err);
    pj_config_free(cfg);
    return par;
}

/* Runs n tasks of `name` (argument i -> arg(i)); returns the wall time, or -1 on failure. */
typedef void (*arg_fn)(size_t i, uint8_t buf[8]);
static void arg_index(size_t i, uint8_t buf[8]) {
    int64_t x = (int64_t)i;
    memcpy(buf, &x, 8);
}
static double spin_ms;
static void arg_spin(size_t i, uint8_t buf[8]) {
    (void)i;
    memcpy(buf, &spin_ms, 8);
}

static double timed(pj_parallel_t *par, const char *name, size_t n, arg_fn arg, double *cpu) {
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    pj_status st = PJ_STATUS_OK;
    double c0 = cpu_self(), t0 = now();
    for (size_t i = 0; i < n && st == PJ_STATUS_OK; i++) {
        uint8_t buf[8];
        arg(i, buf);
        st = pj_parallel_submit_named(par, name, buf, sizeof buf, &err);
    }
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_collect(par, &res, &err);
    }
    double elapsed = now() - t0;
    if (cpu != NULL) {
        *cpu = cpu_self() - c0;
    }
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "%s x %zu: %s: %s\n", name, n, pj_status_str(st), pj_error_message(err));
        pj_error_free(err);
        return -1;
    }
    if (arg == arg_index) { /* check the results: 2i */
        for (size_t i = 0; i < n; i++) {
            const uint8_t *data = NULL;
            size_t len = 0;
            int64_t v = -1;
            pj_results_get(res, i, &data, &len);
            if (len == sizeof v) {
                memcpy(&v, data, sizeof v);
            }
            if (v != 2 * (int64_t)i) {
                fprintf(stderr, "%s: result %zu is %lld, not %lld\n", name, i, (long long)v,
                        (long long)(2 * (int64_t)i));
                pj_results_free(res);
                return -1;
            }
        }
    }
    pj_results_free(res);
    return elapsed;
}

int main(int argc, char **argv) {
    if (pj_register("double", task_double, NULL) != PJ_STATUS_OK ||
        pj_register("spin", task_spin, NULL) != PJ_STATUS_OK) {
        return 1;
    }
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 1;
    }
    size_t n_trivial = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000;
    size_t n_cpu = argc > 2 ? strtoull(argv[2], NULL, 10) : 200;
    spin_ms = argc > 3 ? strtod(argv[3], NULL) : 10.0;
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int workers = size > 1 ? size - 1 : 1;
    printf("pj MPI bench: %d ranks (%d worker ranks), processes backend with n_jobs %d, %ld CPUs\n",
           size, size - 1, workers, (long)pj_cpu_count());

    /* the baseline for the speedup: the CPU tasks one after the other on rank 0 */
    pj_parallel_t *seq = make("sequential", 1);
    double t_seq = seq ? timed(seq, "spin", n_cpu, arg_spin, NULL) : -1;
    pj_parallel_free(seq);
    if (t_seq <= 0) {
        return 1;
    }
    printf("%zu x %.0f ms CPU tasks, sequential on rank 0: %.3f s\n\n", n_cpu, spin_ms, t_seq);
    printf("%-10s %16s %20s %14s %14s\n", "backend", "ns per task", "rank 0 CPU per task",
           "CPU tasks (s)", "speedup");

    const char *backends[] = {"mpi", "processes"};
    int rc = 0;
    for (size_t b = 0; b < 2; b++) {
        pj_parallel_t *par = make(backends[b], workers);
        if (par == NULL) {
            rc = 1;
            continue;
        }
        double cpu = 0;
        if (timed(par, "double", 1000, arg_index, NULL) < 0) { /* warm-up */
            rc = 1;
            pj_parallel_free(par);
            continue;
        }
        double t_trivial = timed(par, "double", n_trivial, arg_index, &cpu);
        double t_cpu = timed(par, "spin", n_cpu, arg_spin, NULL);
        if (t_trivial < 0 || t_cpu < 0) {
            rc = 1;
        } else {
            printf("%-10s %16.0f %17.0f ns %14.3f %13.2fx\n", backends[b],
                   t_trivial * 1e9 / (double)n_trivial, cpu * 1e9 / (double)n_trivial, t_cpu,
                   t_seq / t_cpu);
        }
        pj_parallel_free(par);
    }
    printf("\n(%zu trivial tasks: 8-byte argument, returns 2x, auto batching; speedup: sequential "
           "time / time on the backend, ideal %d)\n",
           n_trivial, workers);
    return rc;
}
