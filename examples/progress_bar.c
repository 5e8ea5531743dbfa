/*
 * pj's progress bar (progress="bar"), on stderr:
 *
 *     [#######.............]  37/100  37% | 12.3 tasks/s | elapsed 00:03 | ETA 00:05
 *
 * On a terminal it is redrawn in place; when stderr is a file or a pipe (as under ctest) it
 * writes a plain line every 2 s instead, and always a final line when the call ends. It is
 * independent of joblib's verbose lines (examples/progress.c) and of a progress callback
 * (pj_config_set_progress). Run it in a terminal to see the bar move: 60 tasks of 50 ms each on
 * 2 workers take about 1.5 s.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pj.h"

enum { N = 60 };

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* The task: 50 ms of waiting, then returns its argument + 1. */
static int32_t slow_increment(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int32_t x;
    if (arg_len != sizeof x) {
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    x += 1;
    return pj_out_set(out, (const uint8_t *)&x, sizeof x) == PJ_STATUS_OK ? 0 : 1;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;

    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("progress", pj_config_set(cfg, "progress", "bar", &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    for (int32_t x = 0; x < N; x++) {
        check("pj_parallel_submit", pj_parallel_submit(par, slow_increment, NULL, (const uint8_t *)&x, sizeof x, &err), err);
    }
    /* The total is known from here on: the bar shows a percentage and an ETA. */
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);

    long sum = 0;
    for (size_t i = 0; i < pj_results_len(res); i++) {
        const uint8_t *data;
        size_t len;
        int32_t y;
        check("pj_results_get", pj_results_get(res, i, &data, &len), NULL);
        memcpy(&y, data, sizeof y);
        sum += y;
    }
    printf("sum of 1..%d: %ld\n", N, sum);

    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return 0;
}
