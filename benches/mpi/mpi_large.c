/*
 * The MPI backend with batches above one MPI message (MPI counts are ints: 2 GiB): TASKS tasks in
 * ONE batch, each returning MIB MiB, so that the batch's outcome needs several messages; every
 * byte is checked on rank 0. Figures only (scripts/bench-mpi.sh large builds and runs it):
 *
 *     mpirun -n 2 ./pj_mpi_large [tasks=3] [mib=1024]
 *
 * Needs several times the result set in memory (the worker's child, the worker rank, MPI's
 * buffers and rank 0's results): about 4 x tasks x mib MiB.
 *
 *     mpirun -n 2 ./pj_mpi_large bw [reps=5] [mib...=16 64 256]
 *
 * The MPI backend's bandwidth, to put beside pj_mpi_raw's (scripts/bench-mpi.sh raw runs both):
 * for each size, `reps` calls of one task in one batch that returns MIB MiB (results: rank 1 to
 * rank 0), then `reps` calls of one task that takes an argument of MIB MiB and returns 2 bytes
 * (arguments: rank 0 to rank 1). Each call is timed from its submit to the end of its collect on
 * one executor; prints the median GB/s. `bw-processes` instead of `bw`: the same calls on
 * backend "processes" with n_jobs 2 on rank 0 (a forked worker runs the task: the hop every worker rank
 * makes to run a batch in its own child), for comparison.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pj.h"
#include "pj_mpi.h"

/* (index, bytes) as two uint64 -> `bytes` bytes, each the low byte of index * 37 + 11 */
static int32_t task_fill(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    uint64_t spec[2] = {0, 0};
    if (arg_len != sizeof spec) {
        return 1;
    }
    memcpy(spec, arg, sizeof spec);
    uint8_t *dst = pj_out_alloc(out, (size_t)spec[1]);
    if (dst == NULL) {
        return 2;
    }
    memset(dst, (int)(uint8_t)(spec[0] * 37 + 11), (size_t)spec[1]);
    return 0;
}

/* any bytes -> their first and last byte */
static int32_t task_take(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    if (arg_len == 0) {
        return 1;
    }
    uint8_t ends[2] = {arg[0], arg[arg_len - 1]};
    return pj_out_set(out, ends, sizeof ends) == PJ_STATUS_OK ? 0 : 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One call of one task by `name` with `arg`: its seconds, or a negative value on failure (the
 * result checked against `want`: its length and first and last bytes). */
static double one_call(pj_parallel_t *par, const char *name, const uint8_t *arg, size_t arg_len,
                       size_t want_len, uint8_t want_first, uint8_t want_last) {
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    double t0 = now();
    pj_status st = pj_parallel_submit_named(par, name, arg, arg_len, &err);
    if (st == PJ_STATUS_OK) st = pj_parallel_collect(par, &res, &err);
    double seconds = now() - t0;
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "pj_mpi_large: status %d: %s\n", (int)st, err ? pj_error_message(err) : "");
        pj_error_free(err);
        return -1;
    }
    const uint8_t *data = NULL;
    size_t len = 0;
    if (pj_results_get(res, 0, &data, &len) != PJ_STATUS_OK || len != want_len || len < 2 ||
        data[0] != want_first || data[len - 1] != want_last) {
        fprintf(stderr, "pj_mpi_large: wrong result (%zu bytes)\n", len);
        seconds = -1;
    }
    pj_results_free(res);
    return seconds;
}

/* The bw mode (see the top of the file); `backend` "processes" (n_jobs 2) for bw-processes. */
static int bandwidth(int argc, char **argv, const char *backend) {
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1) {
        reps = 1;
    }
    uint64_t sizes[16] = {16, 64, 256};
    int count = 3;
    if (argc > 3) {
        count = 0;
        for (int i = 3; i < argc && count < 16; i++) {
            sizes[count++] = strtoull(argv[i], NULL, 10);
        }
    }
    pj_error_t *err = NULL;
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_status st = pj_config_new(&cfg);
    if (st == PJ_STATUS_OK) st = pj_config_set(cfg, "backend", backend, &err);
    if (st == PJ_STATUS_OK && strcmp(backend, "processes") == 0) {
        st = pj_config_set(cfg, "n_jobs", "2", &err);
    }
    if (st == PJ_STATUS_OK) st = pj_config_set(cfg, "batch_bytes", "none", &err);
    if (st == PJ_STATUS_OK) st = pj_parallel_new(cfg, &par, &err);
    pj_config_free(cfg);
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "pj_mpi_large: status %d: %s\n", (int)st, err ? pj_error_message(err) : "");
        pj_error_free(err);
        return 1;
    }
    double *seconds = calloc((size_t)reps, sizeof *seconds);
    int rc = seconds == NULL;
    for (int i = 0; rc == 0 && i < count; i++) {
        uint64_t bytes = sizes[i] << 20;
        uint8_t *arg = malloc(bytes);
        if (bytes < 2 || arg == NULL) {
            free(arg);
            continue;
        }
        memset(arg, 5, bytes);
        arg[0] = 7;
        double gb = (double)bytes * 1e-9, median[2] = {0, 0};
        for (int direction = 0; rc == 0 && direction < 2; direction++) {
            for (int r = 0; rc == 0 && r < reps; r++) {
                uint8_t fill = (uint8_t)(r * 37 + 11);
                uint64_t spec[2] = {(uint64_t)r, bytes};
                seconds[r] = direction == 0
                                 ? one_call(par, "fill", (const uint8_t *)spec, sizeof spec, bytes,
                                            fill, fill)
                                 : one_call(par, "take", arg, bytes, 2, 7, 5);
                rc = seconds[r] < 0;
            }
            qsort(seconds, (size_t)reps, sizeof *seconds, compare);
            median[direction] = seconds[reps / 2];
        }
        free(arg);
        if (rc == 0) {
            printf("pj %s, one task per call, %llu MiB: results %.3f s %.2f GB/s, arguments "
                   "%.3f s %.2f GB/s (median of %d)\n",
                   strcmp(backend, "mpi") == 0 ? "MPI" : "processes (n_jobs 2, rank 0 alone)",
                   (unsigned long long)sizes[i], median[0], gb / median[0], median[1],
                   gb / median[1], reps);
            fflush(stdout);
        }
    }
    free(seconds);
    pj_parallel_free(par);
    return rc;
}

int main(int argc, char **argv) {
    if (pj_register("fill", task_fill, NULL) != PJ_STATUS_OK ||
        pj_register("take", task_take, NULL) != PJ_STATUS_OK) {
        return 1;
    }
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 1;
    }
    if (argc > 1 && strcmp(argv[1], "bw") == 0) {
        return bandwidth(argc, argv, "mpi");
    }
    if (argc > 1 && strcmp(argv[1], "bw-processes") == 0) {
        return bandwidth(argc, argv, "processes");
    }
    uint64_t tasks = argc > 1 ? strtoull(argv[1], NULL, 10) : 3;
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
    char batch[32];
    snprintf(batch, sizeof batch, "%llu", (unsigned long long)tasks);

    pj_error_t *err = NULL;
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_status st = pj_config_new(&cfg);
    if (st == PJ_STATUS_OK) st = pj_config_set(cfg, "backend", "mpi", &err);
    if (st == PJ_STATUS_OK) st = pj_config_set(cfg, "batch_size", batch, &err);
    if (st == PJ_STATUS_OK) st = pj_config_set(cfg, "batch_bytes", "none", &err);
    if (st == PJ_STATUS_OK) st = pj_parallel_new(cfg, &par, &err);
    pj_config_free(cfg);
    double t0 = now();
    for (uint64_t i = 0; st == PJ_STATUS_OK && i < tasks; i++) {
        uint64_t spec[2] = {i, mib << 20};
        st = pj_parallel_submit_named(par, "fill", (const uint8_t *)spec, sizeof spec, &err);
    }
    pj_results_t *res = NULL;
    if (st == PJ_STATUS_OK) st = pj_parallel_collect(par, &res, &err);
    double seconds = now() - t0;
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "pj_mpi_large: status %d: %s\n", (int)st, err ? pj_error_message(err) : "");
        pj_error_free(err);
        pj_parallel_free(par);
        return 1;
    }
    int rc = 0;
    for (uint64_t i = 0; i < tasks; i++) {
        const uint8_t *data = NULL;
        size_t len = 0;
        uint8_t want = (uint8_t)(i * 37 + 11);
        if (pj_results_get(res, (size_t)i, &data, &len) != PJ_STATUS_OK || len != (mib << 20)) {
            fprintf(stderr, "pj_mpi_large: result %llu has %zu bytes\n", (unsigned long long)i, len);
            rc = 1;
            continue;
        }
        for (size_t b = 0; b < len; b++) {
            if (data[b] != want) {
                fprintf(stderr, "pj_mpi_large: result %llu differs at byte %zu\n",
                        (unsigned long long)i, b);
                rc = 1;
                break;
            }
        }
    }
    double gib = (double)(tasks * mib) / 1024.0;
    printf("pj MPI, one batch of %llu tasks x %llu MiB = %.2f GiB of results: %.2f s (%.2f GB/s)%s\n",
           (unsigned long long)tasks, (unsigned long long)mib, gib, seconds,
           gib * 1.073741824 / seconds, rc == 0 ? ", every byte checked" : ", WRONG");
    pj_results_free(res);
    pj_parallel_free(par);
    return rc;
}
