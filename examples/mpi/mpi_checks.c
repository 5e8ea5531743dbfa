/*
 * The MPI backend's tests (run by ctest under mpiexec, see CMakeLists.txt): one program, one mode
 * per test, each printing what it checks and exiting non-zero on any mismatch.
 *
 *     mpirun -n 3 ./mpi_checks ordered    10,000 ordered results (auto batching), a second call on
 *                                         the same object, a second object; the tasks ran on the
 *                                         worker ranks, every one of them (on rank 0 with -n 1)
 *     mpirun -n 3 ./mpi_checks big        16 MiB arguments and 16 MiB results, byte for byte
 *     mpirun -n 3 ./mpi_checks fail       task 37 of 100 fails with code 3: PJ_STATUS_TASK_FAILED
 *                                         naming the task and the MPI rank; on_error=collect
 *     mpirun -n 3 ./mpi_checks crash      task 5 raises SIGSEGV, then SIGABRT: PJ_STATUS_WORKER_DIED
 *                                         naming the task, the signal and the MPI rank; the next
 *                                         call on the same object works
 *     mpirun -n 3 ./mpi_checks mismatch   ranks other than 0 register one more function: calls
 *                                         fail with PJ_STATUS_IO ("registered other task functions")
 *     mpirun -n 3 ./mpi_checks timeout    timeout 0.5 s and a task that sleeps 30 s:
 *                                         PJ_STATUS_TIMEOUT within a few seconds, then a call works
 *     mpirun --enable-recovery -n 3 ./mpi_checks lost
 *                                         task 3 SIGKILLs the worker rank running it (its forked
 *                                         child's parent): rank 0 gives the silent rank up after
 *                                         10 s (PJ_STATUS_WORKER_DIED), then calls use the others
 *     mpirun -n 3 ./mpi_checks own_init   the program initializes MPI itself (before pj_mpi_main)
 *                                         and finalizes it before returning from main: pj lets
 *                                         the worker ranks go inside that MPI_Finalize
 */
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pj.h"
#include "pj_mpi.h"

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stdout, "FAILED (%s:%d): ", __FILE__, __LINE__);                               \
            fprintf(stdout, __VA_ARGS__);                                                          \
            fputc('\n', stdout);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* The MPI rank of the process running a task (mpirun puts it in the environment; tasks run in
 * forked children of the worker ranks, which must not call MPI), or -1 when unknown. */
static int64_t env_rank(void) {
    const char *names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *value = getenv(names[i]);
        if (value != NULL && *value != '\0') {
            return strtoll(value, NULL, 10);
        }
    }
    return -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t read_i64(const uint8_t *arg, size_t len, size_t at) {
    int64_t x = 0;
    if (len >= (at + 1) * sizeof x) {
        memcpy(&x, arg + at * sizeof x, sizeof x);
    }
    return x;
}

/* ---- the task functions (registered on every rank, in this order) --------------------------- */

/* int64 x -> (x * x, the MPI rank that ran it) */
static int32_t task_square(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    if (arg_len != sizeof(int64_t)) {
        pj_out_error(out, "square: expected one int64_t");
        return 1;
    }
    int64_t x = read_i64(arg, arg_len, 0);
    int64_t result[2] = {x * x, env_rank()};
    return pj_out_set(out, (const uint8_t *)result, sizeof result) == PJ_STATUS_OK ? 0 : 1;
}

/* bytes -> the same number of bytes, reversed and inverted */
static int32_t task_transform(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    uint8_t *dst = pj_out_alloc(out, arg_len);
    if (dst == NULL) {
        return 1;
    }
    for (size_t j = 0; j < arg_len; j++) {
        dst[j] = (uint8_t)~arg[arg_len - 1 - j];
    }
    return 0;
}

/* int64 i -> i + 1000, but task 37 fails with code 3 */
static int32_t task_fail37(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t i = read_i64(arg, arg_len, 0);
    if (i == 37) {
        pj_out_error(out, "refusing task 37");
        return 3;
    }
    int64_t result = i + 1000;
    return pj_out_set(out, (const uint8_t *)&result, sizeof result) == PJ_STATUS_OK ? 0 : 1;
}

/* (int64 i, int64 signal) -> i, but task 5 dies of the signal (SIGABRT through abort()) */
static int32_t task_crash(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t i = read_i64(arg, arg_len, 0), sig = read_i64(arg, arg_len, 1);
    if (i == 5) {
        if (sig == SIGABRT) {
            abort();
        }
        raise((int)sig);
    }
    return pj_out_set(out, (const uint8_t *)&i, sizeof i) == PJ_STATUS_OK ? 0 : 1;
}

/* double seconds -> sleeps that long, returns them */
static int32_t task_sleep(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    double seconds = 0;
    if (arg_len == sizeof seconds) {
        memcpy(&seconds, arg, sizeof seconds);
    }
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
    return pj_out_set(out, (const uint8_t *)&seconds, sizeof seconds) == PJ_STATUS_OK ? 0 : 1;
}

/* int64 i -> i, but task 3 SIGKILLs the worker rank that runs it: the task runs in a child that
 * the rank forked, so the rank is its parent (and the child dies with it) */
static int32_t task_kill_rank(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t i = read_i64(arg, arg_len, 0);
    if (i == 3) {
        kill(getppid(), SIGKILL);
        for (;;) {
            pause();
        }
    }
    return pj_out_set(out, (const uint8_t *)&i, sizeof i) == PJ_STATUS_OK ? 0 : 1;
}

/* registered by the ranks other than 0 in mode "mismatch" only */
static int32_t task_extra(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    return pj_out_set(out, arg, arg_len) == PJ_STATUS_OK ? 0 : 1;
}

/* ---- helpers ----------------------------------------------------------------------------------- */

static int world_size;

static void print_error(const char *what, pj_status status, const pj_error_t *err) {
    printf("%s: %s: %s\n", what, pj_status_str(status), pj_error_message(err));
}

/* A new pj_parallel_t with backend "mpi" and an optional second option; NULL on failure. */
static pj_parallel_t *new_mpi(const char *key, const char *value) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    pj_status st = pj_config_new(&cfg);
    if (st == PJ_STATUS_OK) {
        st = pj_config_set(cfg, "backend", "mpi", &err);
    }
    if (st == PJ_STATUS_OK && key != NULL) {
        st = pj_config_set(cfg, key, value, &err);
    }
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_new(cfg, &par, &err);
    }
    CHECK(st == PJ_STATUS_OK, "creating a pj_parallel_t with backend mpi: %s: %s", pj_status_str(st),
          pj_error_message(err));
    pj_error_free(err);
    pj_config_free(cfg);
    return st == PJ_STATUS_OK ? par : NULL;
}

/* Submits `n` named tasks whose arguments are the int64 values first..first+n-1 and collects. */
static pj_status run_i64(pj_parallel_t *par, const char *name, int64_t first, size_t n,
                         pj_results_t **res, pj_error_t **err) {
    for (size_t i = 0; i < n; i++) {
        int64_t x = first + (int64_t)i;
        pj_status st = pj_parallel_submit_named(par, name, (const uint8_t *)&x, sizeof x, err);
        if (st != PJ_STATUS_OK) {
            pj_results_t *ignored = NULL; /* end the call */
            pj_error_t *ignored_err = NULL;
            pj_parallel_collect(par, &ignored, &ignored_err);
            pj_results_free(ignored);
            pj_error_free(ignored_err);
            return st;
        }
    }
    return pj_parallel_collect(par, res, err);
}

/* Runs `n` squares of first.. on `par` and checks every result, in order; counts the tasks per
 * rank into `per_rank` (size world_size). */
static void check_squares(pj_parallel_t *par, const char *what, int64_t first, size_t n,
                          size_t *per_rank) {
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    double t0 = now();
    pj_status st = run_i64(par, "square", first, n, &res, &err);
    CHECK(st == PJ_STATUS_OK, "%s: %s: %s", what, pj_status_str(st), pj_error_message(err));
    pj_error_free(err);
    if (st != PJ_STATUS_OK) {
        return;
    }
    size_t wrong = 0, bad_rank = 0;
    CHECK(pj_results_len(res) == n, "%s: %zu results, not %zu", what, pj_results_len(res), n);
    for (size_t i = 0; i < n && i < pj_results_len(res); i++) {
        const uint8_t *data = NULL;
        size_t len = 0;
        int64_t r[2] = {0, -1}, x = first + (int64_t)i;
        if (pj_results_get(res, i, &data, &len) != PJ_STATUS_OK || len != sizeof r) {
            wrong++;
            continue;
        }
        memcpy(r, data, sizeof r);
        if (r[0] != x * x) {
            if (wrong++ < 5) {
                printf("  %s: result %zu is %lld, not %lld\n", what, i, (long long)r[0],
                       (long long)(x * x));
            }
        }
        if (r[1] < 0 || r[1] >= world_size) {
            bad_rank++;
        } else if (per_rank != NULL) {
            per_rank[r[1]]++;
        }
    }
    CHECK(wrong == 0, "%s: %zu wrong results", what, wrong);
    CHECK(bad_rank == 0, "%s: %zu results from no known rank", what, bad_rank);
    printf("%s: %zu results in order, correct (%.3f s)\n", what, n, now() - t0);
    pj_results_free(res);
}

/* ---- the modes ------------------------------------------------------------------------------- */

static void mode_ordered(void) {
    size_t per_rank[256] = {0};
    pj_parallel_t *par = new_mpi(NULL, NULL);
    if (par == NULL) {
        return;
    }
    check_squares(par, "first call (10000 tasks)", 0, 10000, per_rank);
    printf("tasks per rank:");
    for (int r = 0; r < world_size; r++) {
        printf(" %d:%zu", r, per_rank[r]);
    }
    printf("\n");
    if (world_size == 1) {
        CHECK(per_rank[0] == 10000, "with one rank, rank 0 ran %zu tasks of 10000", per_rank[0]);
    } else {
        CHECK(per_rank[0] == 0, "rank 0 ran %zu tasks: it should only dispatch", per_rank[0]);
        for (int r = 1; r < world_size; r++) {
            CHECK(per_rank[r] > 0, "rank %d ran no task", r);
        }
    }
    check_squares(par, "second call on the same object (1000 tasks)", 100000, 1000, NULL);
    pj_parallel_free(par);

    par = new_mpi(NULL, NULL);
    if (par != NULL) {
        check_squares(par, "a second pj_parallel_t (500 tasks)", -250, 500, NULL);
    }
    pj_parallel_free(par);
}

#define BIG (16u << 20)
#define BIG_TASKS 6

static uint8_t pattern(size_t task, size_t j) {
    return (uint8_t)(j * 31u + task * 17u + (j >> 12) + (j >> 20) * 7u);
}

static void mode_big(void) {
    pj_parallel_t *par = new_mpi(NULL, NULL);
    uint8_t *buf = malloc(BIG);
    if (par == NULL || buf == NULL) {
        CHECK(buf != NULL, "out of memory");
        pj_parallel_free(par);
        free(buf);
        return;
    }
    double t0 = now();
    pj_error_t *err = NULL;
    pj_status st = PJ_STATUS_OK;
    for (size_t t = 0; t < BIG_TASKS && st == PJ_STATUS_OK; t++) {
        for (size_t j = 0; j < BIG; j++) {
            buf[j] = pattern(t, j);
        }
        st = pj_parallel_submit_named(par, "transform", buf, BIG, &err);
    }
    pj_results_t *res = NULL;
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_collect(par, &res, &err);
    }
    CHECK(st == PJ_STATUS_OK, "%d tasks of 16 MiB: %s: %s", BIG_TASKS, pj_status_str(st),
          pj_error_message(err));
    pj_error_free(err);
    if (st == PJ_STATUS_OK) {
        CHECK(pj_results_len(res) == BIG_TASKS, "%zu results, not %d", pj_results_len(res),
              BIG_TASKS);
        for (size_t t = 0; t < BIG_TASKS && t < pj_results_len(res); t++) {
            const uint8_t *data = NULL;
            size_t len = 0, wrong = 0;
            pj_results_get(res, t, &data, &len);
            CHECK(len == BIG, "result %zu has %zu bytes, not %u", t, len, BIG);
            for (size_t j = 0; len == BIG && j < BIG; j++) {
                unsigned want = 255u - pattern(t, BIG - 1 - j); /* the inverted byte */
                wrong += data[j] != want;
            }
            CHECK(wrong == 0, "result %zu: %zu bytes differ", t, wrong);
        }
        printf("%d results of 16 MiB from 16 MiB arguments: byte for byte correct (%.2f s)\n",
               BIG_TASKS, now() - t0);
    }
    pj_results_free(res);
    /* and the object still works for small tasks */
    check_squares(par, "small tasks after the big ones (100 tasks)", 0, 100, NULL);
    pj_parallel_free(par);
    free(buf);
}

static void mode_fail(void) {
    pj_parallel_t *par = new_mpi(NULL, NULL);
    if (par == NULL) {
        return;
    }
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    pj_status st = run_i64(par, "fail37", 0, 100, &res, &err);
    print_error("100 tasks, task 37 fails", st, err);
    CHECK(st == PJ_STATUS_TASK_FAILED, "status %s, not PJ_STATUS_TASK_FAILED", pj_status_str(st));
    CHECK(pj_error_task_index(err) == 37, "the error's task index is %lld, not 37",
          (long long)pj_error_task_index(err));
    CHECK(pj_error_callback_code(err) == 3, "callback code %d, not 3", pj_error_callback_code(err));
    const char *cb = pj_error_callback_message(err);
    CHECK(cb != NULL && strcmp(cb, "refusing task 37") == 0, "callback message \"%s\"",
          cb ? cb : "(null)");
    CHECK(strstr(pj_error_message(err), "task 37") != NULL, "the message does not name task 37");
    CHECK(strstr(pj_error_message(err), "MPI rank") != NULL, "the message does not name the MPI rank");
    printf("report:\n%s", pj_error_report(err));
    pj_error_free(err);
    pj_results_free(res);
    check_squares(par, "the next call on the same object (100 tasks)", 0, 100, NULL);
    pj_parallel_free(par);

    /* on_error=collect: every task runs and carries its own status */
    par = new_mpi("on_error", "collect");
    if (par == NULL) {
        return;
    }
    res = NULL;
    err = NULL;
    st = run_i64(par, "fail37", 0, 100, &res, &err);
    CHECK(st == PJ_STATUS_OK, "on_error=collect: %s: %s", pj_status_str(st), pj_error_message(err));
    pj_error_free(err);
    if (st == PJ_STATUS_OK) {
        size_t wrong = 0;
        CHECK(pj_results_len(res) == 100, "on_error=collect: %zu results", pj_results_len(res));
        CHECK(pj_results_error_count(res) == 1, "on_error=collect: %zu errors, not 1",
              pj_results_error_count(res));
        for (size_t i = 0; i < pj_results_len(res); i++) {
            pj_status ts = pj_results_status(res, i);
            const uint8_t *data = NULL;
            size_t len = 0;
            int64_t v = -1;
            pj_results_get(res, i, &data, &len);
            if (len == sizeof v) {
                memcpy(&v, data, sizeof v);
            }
            if (i == 37) {
                const pj_error_t *te = pj_results_error(res, i);
                const char *msg = pj_error_message(te);
                printf("on_error=collect: task 37: %s: %s\n", pj_status_str(ts), msg);
                CHECK(ts == PJ_STATUS_TASK_FAILED, "task 37's status is %s", pj_status_str(ts));
                CHECK(te != NULL && strstr(msg, "task 37") != NULL && strstr(msg, "MPI rank") != NULL,
                      "task 37's error does not name the task and the MPI rank");
                CHECK(len == 0, "task 37's output has %zu bytes", len);
            } else if (ts != PJ_STATUS_OK || v != (int64_t)i + 1000) {
                wrong++;
            }
        }
        CHECK(wrong == 0, "on_error=collect: %zu other tasks wrong", wrong);
        printf("on_error=collect: the 99 other results are present and correct\n");
    }
    pj_results_free(res);
    pj_parallel_free(par);
}

/* Ends a call after its submits: `submitted` is the last submit's status. A refused submit (a
 * failure seen while submitting) leaves the call open, and collect ends it with the same error:
 * checked here, so that the caller sees one error either way. */
static pj_status collect_after_submits(pj_parallel_t *par, pj_status submitted, pj_results_t **res,
                                       pj_error_t **err) {
    if (submitted == PJ_STATUS_OK) {
        return pj_parallel_collect(par, res, err);
    }
    int64_t refused_index = pj_error_task_index(*err);
    pj_error_free(*err);
    *err = NULL;
    pj_status st = pj_parallel_collect(par, res, err);
    CHECK(st == submitted && pj_error_task_index(*err) == refused_index,
          "collect ended the call with %s for task %lld, the refused submit said %s for task %lld",
          pj_status_str(st), (long long)pj_error_task_index(*err), pj_status_str(submitted),
          (long long)refused_index);
    return st;
}

static void crash_call(pj_parallel_t *par, int sig, const char *sig_name) {
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    pj_status st = PJ_STATUS_OK;
    for (int64_t i = 0; i < 20 && st == PJ_STATUS_OK; i++) {
        int64_t arg[2] = {i, sig};
        st = pj_parallel_submit_named(par, "crash", (const uint8_t *)arg, sizeof arg, &err);
    }
    st = collect_after_submits(par, st, &res, &err);
    char what[64];
    snprintf(what, sizeof what, "20 tasks, task 5 dies of %s", sig_name);
    print_error(what, st, err);
    const char *msg = pj_error_message(err);
    CHECK(st == PJ_STATUS_WORKER_DIED, "status %s, not PJ_STATUS_WORKER_DIED", pj_status_str(st));
    CHECK(pj_error_task_index(err) == 5, "the error's task index is %lld, not 5",
          (long long)pj_error_task_index(err));
    CHECK(strstr(msg, "task 5") != NULL, "the message does not name task 5");
    CHECK(strstr(msg, sig_name) != NULL || strstr(pj_error_report(err), sig_name) != NULL,
          "neither the message nor the report names %s", sig_name);
    CHECK(strstr(msg, "MPI rank") != NULL, "the message does not name the MPI rank");
    printf("report:\n%s", pj_error_report(err));
    pj_error_free(err);
    pj_results_free(res);
}

static void mode_crash(void) {
    pj_parallel_t *par = new_mpi(NULL, NULL);
    if (par == NULL) {
        return;
    }
    crash_call(par, SIGSEGV, "SIGSEGV");
    check_squares(par, "the next call on the same object (1000 tasks)", 0, 1000, NULL);
    crash_call(par, SIGABRT, "SIGABRT");
    size_t per_rank[256] = {0};
    check_squares(par, "and the next one (1000 tasks)", 0, 1000, per_rank);
    for (int r = 1; r < world_size; r++) {
        CHECK(per_rank[r] > 0, "rank %d ran no task after the crashes", r);
    }
    pj_parallel_free(par);
}

static void mode_mismatch(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    const char *where = "pj_config_set";
    pj_status st = pj_config_new(&cfg);
    if (st == PJ_STATUS_OK) {
        st = pj_config_set(cfg, "backend", "mpi", &err);
    }
    if (st == PJ_STATUS_OK) {
        where = "pj_parallel_new";
        st = pj_parallel_new(cfg, &par, &err);
    }
    if (st == PJ_STATUS_OK) {
        where = "submit + collect";
        st = run_i64(par, "square", 0, 10, &res, &err);
    }
    print_error(where, st, err);
    CHECK(st == PJ_STATUS_IO, "%s: status %s, not PJ_STATUS_IO", where, pj_status_str(st));
    CHECK(strstr(pj_error_message(err), "registered other task functions") != NULL,
          "the message does not say \"registered other task functions\"");
    pj_error_free(err);
    err = NULL;
    pj_results_free(res);
    res = NULL;
    if (par != NULL) { /* a second call fails the same way, at once */
        double t0 = now();
        st = run_i64(par, "square", 0, 10, &res, &err);
        print_error("a second call", st, err);
        CHECK(st == PJ_STATUS_IO, "a second call: status %s, not PJ_STATUS_IO", pj_status_str(st));
        CHECK(now() - t0 < 5.0, "a second call took %.1f s", now() - t0);
        pj_error_free(err);
        pj_results_free(res);
    }
    pj_parallel_free(par);
    pj_config_free(cfg);
}

static void mode_timeout(void) {
    pj_parallel_t *par = new_mpi("timeout", "0.5");
    if (par == NULL) {
        return;
    }
    const double seconds[] = {0.0, 30.0, 0.0, 0.0};
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    pj_status st = PJ_STATUS_OK;
    double t0 = now();
    for (size_t i = 0; i < sizeof seconds / sizeof seconds[0] && st == PJ_STATUS_OK; i++) {
        st = pj_parallel_submit_named(par, "sleep", (const uint8_t *)&seconds[i], sizeof seconds[i],
                                      &err);
    }
    st = collect_after_submits(par, st, &res, &err);
    double elapsed = now() - t0;
    print_error("timeout 0.5 s, task 1 sleeps 30 s", st, err);
    printf("the call returned after %.2f s\n", elapsed);
    CHECK(st == PJ_STATUS_TIMEOUT, "status %s, not PJ_STATUS_TIMEOUT", pj_status_str(st));
    CHECK(pj_error_task_index(err) == 1, "the error's task index is %lld, not 1",
          (long long)pj_error_task_index(err));
    CHECK(elapsed < 5.0, "the call took %.1f s (limit 0.5 s)", elapsed);
    pj_error_free(err);
    pj_results_free(res);
    check_squares(par, "the next call on the same object (100 tasks)", 0, 100, NULL);
    pj_parallel_free(par);
}

static void mode_lost(void) {
    pj_parallel_t *par = new_mpi(NULL, NULL);
    if (par == NULL) {
        return;
    }
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    double t0 = now();
    pj_status st = run_i64(par, "kill_rank", 0, 8, &res, &err);
    double elapsed = now() - t0;
    print_error("8 tasks, task 3 kills its rank", st, err);
    printf("the call returned after %.1f s\n", elapsed);
    CHECK(st == PJ_STATUS_WORKER_DIED, "status %s, not PJ_STATUS_WORKER_DIED", pj_status_str(st));
    CHECK(err != NULL && strstr(pj_error_message(err), "stopped answering") != NULL &&
              strstr(pj_error_message(err), "MPI rank") != NULL,
          "the message does not say that an MPI rank stopped answering");
    CHECK(elapsed < 30.0, "the call took %.1f s (the silence limit is 10 s)", elapsed);
    pj_error_free(err);
    pj_results_free(res);
    check_squares(par, "the next call, on the ranks left (1000 tasks)", 0, 1000, NULL);
    pj_parallel_free(par);
}

int main(int argc, char **argv) {
    /* Mode own_init: MPI belongs to the program, which finalizes it before exit. */
    int own_init = argc > 1 && strcmp(argv[1], "own_init") == 0;
    if (own_init) {
        int provided = 0;
        if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
            fprintf(stderr, "MPI_Init_thread failed\n");
            return 1;
        }
    }
    /* Every rank registers the same functions in the same order, except in mode "mismatch",
     * where the ranks other than 0 (known from mpirun's environment: MPI is not started yet)
     * register one more. */
    int mismatch = argc > 1 && strcmp(argv[1], "mismatch") == 0;
    if (pj_register("square", task_square, NULL) != PJ_STATUS_OK ||
        pj_register("transform", task_transform, NULL) != PJ_STATUS_OK ||
        pj_register("fail37", task_fail37, NULL) != PJ_STATUS_OK ||
        pj_register("crash", task_crash, NULL) != PJ_STATUS_OK ||
        pj_register("sleep", task_sleep, NULL) != PJ_STATUS_OK ||
        pj_register("kill_rank", task_kill_rank, NULL) != PJ_STATUS_OK ||
        (mismatch && env_rank() > 0 && pj_register("extra", task_extra, NULL) != PJ_STATUS_OK)) {
        fprintf(stderr, "pj_register failed\n");
        return 1;
    }
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 1;
    }
    /* rank 0 only from here */
    setvbuf(stdout, NULL, _IOLBF, 0);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    if (world_size > 256) {
        world_size = 256;
    }
    const char *mode = argc > 1 ? argv[1] : "ordered";
    printf("mode %s on %d ranks\n", mode, world_size);
    if (strcmp(mode, "ordered") == 0) {
        mode_ordered();
    } else if (strcmp(mode, "big") == 0) {
        mode_big();
    } else if (strcmp(mode, "fail") == 0) {
        mode_fail();
    } else if (strcmp(mode, "crash") == 0) {
        mode_crash();
    } else if (strcmp(mode, "mismatch") == 0) {
        mode_mismatch();
    } else if (strcmp(mode, "timeout") == 0) {
        mode_timeout();
    } else if (strcmp(mode, "lost") == 0) {
        mode_lost();
    } else if (own_init) {
        size_t per_rank[256] = {0};
        pj_parallel_t *par = new_mpi(NULL, NULL);
        if (par != NULL) {
            check_squares(par, "MPI initialized by the program (1000 tasks)", 0, 1000, per_rank);
            CHECK(world_size == 1 || per_rank[0] == 0, "rank 0 ran %zu tasks", per_rank[0]);
        }
        pj_parallel_free(par);
        /* the program's own MPI traffic, on rank 0 while pj's thread runs (MPI_THREAD_MULTIPLE) */
        int one = 1, sum = 0;
        CHECK(MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_SELF) == MPI_SUCCESS &&
                  sum == 1,
              "MPI_Allreduce on MPI_COMM_SELF");
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    if (own_init) {
        MPI_Finalize(); /* pj detaches inside it (the worker ranks leave); no hang */
        printf("MPI_Finalize returned\n");
    }
    if (failures != 0) {
        printf("%s: %d check(s) FAILED\n", mode, failures);
        return 1;
    }
    printf("%s: all checks passed\n", mode);
    return 0;
}
