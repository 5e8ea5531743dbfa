/*
 * A per-task time limit, joblib's `timeout`:
 *
 *     >>> Parallel(n_jobs=2, timeout=1)(delayed(nap)(s) for s in [0, 30, 0])
 *     TimeoutError
 *
 * The clock starts when a task starts on its worker. Task 1 sleeps 30 s; after 1 s the call fails
 * with PJ_STATUS_TIMEOUT naming the task and the limit, and (on worker processes, the default) the
 * stuck worker is killed, so the call returns at once instead of after 30 s. The executor stays
 * usable: the next call gets a fresh worker.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pj.h"

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The task: sleeps for the number of seconds it is given. */
static int32_t nap(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    (void)out;
    int32_t seconds;
    if (arg_len != sizeof seconds) {
        return 1;
    }
    memcpy(&seconds, arg, sizeof seconds);
    struct timespec pause = {seconds, 0};
    nanosleep(&pause, NULL);
    return 0;
}

/* Submits one task per entry of `seconds` and collects them. */
static pj_status run(pj_parallel_t *par, const int32_t *seconds, size_t n, pj_error_t **err) {
    pj_results_t *res = NULL;
    for (size_t i = 0; i < n; i++) {
        pj_status st = pj_parallel_submit(par, nap, NULL, (const uint8_t *)&seconds[i], sizeof seconds[i], err);
        if (st != PJ_STATUS_OK) {
            pj_error_free(*err); /* the same failure comes back from collect */
            *err = NULL;
            break;
        }
    }
    pj_status st = pj_parallel_collect(par, &res, err);
    pj_results_free(res);
    return st;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;

    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("batch_size", pj_config_set(cfg, "batch_size", "1", &err), err);
    check("timeout", pj_config_set_timeout(cfg, 1.0, &err), err); /* or pj_config_set(cfg, "timeout", "1", ...) */
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    const int32_t slow[] = {0, 30, 0};
    double start = now_seconds();
    pj_status st = run(par, slow, 3, &err);
    double elapsed = now_seconds() - start;
    printf("%s\n", pj_status_str(st));
    printf("task index: %lld\n", (long long)pj_error_task_index(err));
    printf("returned before the task's 30 s: %s\n", elapsed < 20.0 ? "yes" : "no");
    /* The message gives the limit and how long the task ran (which varies: stderr, not stdout). */
    fprintf(stderr, "message: %s\n", pj_error_message(err));
    pj_error_free(err);
    err = NULL;

    const int32_t quick[] = {0, 0, 0};
    check("second call", run(par, quick, 3, &err), err);
    printf("the next call: PJ_STATUS_OK\n");

    pj_parallel_free(par);
    pj_config_free(cfg);
    return 0;
}
