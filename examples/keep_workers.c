/*
 * keep_workers=true: worker processes outlive a call and serve the next calls of the same
 * executor, like joblib's reusable loky executor. By default pj forks its workers at each call's
 * start (so they see the caller's memory as it is then) and ends them with the call; kept workers
 * save the fork, but see the caller's memory as of their own fork: data (and pj_shared_t buffers)
 * created after the first call are not valid in them.
 *
 * Each call runs 2 tasks that return their worker's pid. The two tasks wait for each other
 * (through a counter in a pj_shared_t buffer), so each call surely uses both workers. The program
 * compares the pids of two calls, with and without keep_workers.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, getpid under -std=c11 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pj.h"

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* The task: counts itself in, waits (at most 30 s) until the other task of the call has too, so
 * that both run at once on different workers, and returns its worker's pid. */
static int32_t meet_and_tell_pid(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)arg;
    (void)arg_len;
    atomic_int *arrived = userdata;
    atomic_fetch_add(arrived, 1);
    for (int i = 0; i < 30000 && atomic_load(arrived) < 2; i++) {
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    int64_t pid = (int64_t)getpid();
    return pj_out_set(out, (const uint8_t *)&pid, sizeof pid) == PJ_STATUS_OK ? 0 : 1;
}

/* One call of 2 tasks; stores the two pids, smaller first. */
static void call(pj_parallel_t *par, atomic_int *arrived, int64_t pids[2]) {
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    atomic_store(arrived, 0);
    for (int i = 0; i < 2; i++) {
        check("pj_parallel_submit", pj_parallel_submit(par, meet_and_tell_pid, arrived, NULL, 0, &err), err);
    }
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);
    for (size_t i = 0; i < 2; i++) {
        const uint8_t *data;
        size_t len;
        check("pj_results_get", pj_results_get(res, i, &data, &len), NULL);
        memcpy(&pids[i], data, sizeof pids[i]);
    }
    if (pids[0] > pids[1]) {
        int64_t t = pids[0];
        pids[0] = pids[1];
        pids[1] = t;
    }
    pj_results_free(res);
}

static void run(const char *keep_workers, atomic_int *arrived) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("backend", pj_config_set(cfg, "backend", "processes", &err), err);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("batch_size", pj_config_set(cfg, "batch_size", "1", &err), err);
    check("keep_workers", pj_config_set(cfg, "keep_workers", keep_workers, &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    int64_t first[2], second[2];
    call(par, arrived, first);
    call(par, arrived, second);
    int two_workers = first[0] != first[1] && second[0] != second[1];
    int same = first[0] == second[0] && first[1] == second[1];
    /* pids vary from run to run: print what they show, not the pids */
    printf("keep_workers=%-5s: 2 workers per call: %s, the second call ran on the same workers: %s\n", keep_workers,
           two_workers ? "yes" : "no", same ? "yes" : "no");
    pj_parallel_free(par); /* ends the kept workers */
    pj_config_free(cfg);
}

int main(void) {
    pj_shared_t *shared = NULL;
    pj_error_t *err = NULL;
    /* Created before any call, so that every worker maps it (kept ones too). */
    check("pj_shared_new", pj_shared_new(NULL, sizeof(atomic_int), &shared, &err), err);
    atomic_int *arrived = (atomic_int *)pj_shared_data(shared);

    run("true", arrived);
    run("false", arrived);

    pj_shared_free(shared);
    return 0;
}
