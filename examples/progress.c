/*
 * Progress, as joblib's verbose=10 prints it, plus pj's progress callback:
 *
 *     >>> Parallel(n_jobs=2, verbose=10)(delayed(slow_square)(i) for i in range(400))
 *     [Parallel(n_jobs=2)]: Using backend LokyBackend with 2 concurrent workers.
 *     [Parallel(n_jobs=2)]: Done   1 tasks      | elapsed:    0.0s
 *     ...
 *     [Parallel(n_jobs=2)]: Done 400 out of 400 | elapsed:    0.5s finished
 *
 * The inputs come from a producer (like a Python generator), so the total is learnt when the
 * producer ends. Verbose lines go to stderr; the callback's summary and the checksum to stdout.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c11 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pj.h"

enum { N = 400 };

/* The task: about 2 ms of waiting, then x * x. */
static int32_t slow_square(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    uint64_t x;
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one uint64_t");
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    struct timespec pause = {0, 2 * 1000 * 1000};
    nanosleep(&pause, NULL);
    uint64_t y = x * x;
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 1;
}

/* The producer: 0, 1, ..., N-1 (pj copies each argument before asking for the next). */
struct counter {
    uint64_t next;
};

static int32_t produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    static uint64_t current;
    struct counter *c = userdata;
    if (c->next == N) {
        return 0;
    }
    current = c->next++;
    *arg_out = (const uint8_t *)&current;
    *len_out = sizeof current;
    return 1;
}

/* The progress callback: runs on this thread, once per completed task, in order. */
struct progress {
    uint64_t calls, last_completed;
    int64_t last_total;
};

static void on_progress(void *userdata, uint64_t completed, int64_t total, double elapsed) {
    (void)elapsed;
    struct progress *p = userdata;
    p->calls++;
    p->last_completed = completed;
    p->last_total = total;
}

static void report(const char *what, pj_status status, pj_error_t *err) {
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(status), pj_error_report(err));
    pj_error_free(err);
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    struct progress seen = {0, 0, 0};
    struct counter inputs = {0};
    int rc = 1;
    pj_status st;

    if ((st = pj_config_new(&cfg)) != PJ_STATUS_OK) {
        report("pj_config_new", st, NULL);
        return 1;
    }
    if ((st = pj_config_set_n_jobs(cfg, 2, &err)) != PJ_STATUS_OK ||
        (st = pj_config_set_verbose(cfg, 10, &err)) != PJ_STATUS_OK ||
        (st = pj_config_set_progress(cfg, on_progress, &seen, &err)) != PJ_STATUS_OK) {
        report("pj_config_set_*", st, err);
        goto done;
    }
    if ((st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_new", st, err);
        goto done;
    }
    if ((st = pj_parallel_map(par, slow_square, NULL, produce, &inputs, &res, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_map", st, err);
        goto done;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < pj_results_len(res); i++) {
        const uint8_t *data;
        size_t len;
        uint64_t y;
        if (pj_results_get(res, i, &data, &len) != PJ_STATUS_OK || len != sizeof y) {
            fprintf(stderr, "result %zu: unexpected status or length\n", i);
            goto done;
        }
        memcpy(&y, data, sizeof y);
        sum += y;
    }
    printf("progress callback: %llu calls, last %llu/%lld\n", (unsigned long long)seen.calls,
           (unsigned long long)seen.last_completed, (long long)seen.last_total);
    printf("sum of squares below %d: %llu\n", N, (unsigned long long)sum);
    rc = 0;

done:
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
