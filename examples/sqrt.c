/*
 * joblib's first example, in C:
 *
 *     >>> from math import sqrt
 *     >>> Parallel(n_jobs=2)(delayed(sqrt)(i ** 2) for i in range(10))
 *     [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
 *
 * Each task receives one double (i * i) as its argument bytes and returns one double.
 * Call style: pj_parallel_submit for every input, then pj_parallel_collect.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pj.h"

/* The task: runs in a worker (a forked process by default, as in joblib). Its argument and result
 * are plain bytes, copied by pj. */
static int32_t task_sqrt(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    double x;
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one double");
        return 1;
    }
    memcpy(&x, arg, sizeof x); /* memcpy: pj's buffers carry no alignment promise */
    double y = sqrt(x);
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 1;
}

/* Prints a failed call's error and frees it. */
static void report(const char *what, pj_status status, pj_error_t *err) {
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(status), pj_error_report(err));
    pj_error_free(err);
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int rc = 1;

    pj_status st = pj_config_new(&cfg);
    if (st != PJ_STATUS_OK) {
        report("pj_config_new", st, NULL);
        return 1;
    }
    if ((st = pj_config_set_n_jobs(cfg, 2, &err)) != PJ_STATUS_OK) {
        report("pj_config_set_n_jobs", st, err);
        goto done;
    }
    /* pj_parallel_new copies the config: it could be freed right here. */
    if ((st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_new", st, err);
        goto done;
    }

    for (int i = 0; i < 10; i++) {
        double x = (double)i * i;
        /* The argument bytes are copied now, so a local variable is fine. */
        if ((st = pj_parallel_submit(par, task_sqrt, NULL, (const uint8_t *)&x, sizeof x, &err)) != PJ_STATUS_OK) {
            report("pj_parallel_submit", st, err);
            goto done;
        }
    }
    /* Waits for every task; results come back in submission order. */
    if ((st = pj_parallel_collect(par, &res, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_collect", st, err);
        goto done;
    }

    printf("[");
    for (size_t i = 0; i < pj_results_len(res); i++) {
        const uint8_t *data;
        size_t len;
        double y;
        if ((st = pj_results_get(res, i, &data, &len)) != PJ_STATUS_OK || len != sizeof y) {
            fprintf(stderr, "\nresult %zu: unexpected status or length\n", i);
            goto done;
        }
        memcpy(&y, data, sizeof y);
        printf("%s%.1f", i ? ", " : "", y);
    }
    printf("]\n");
    rc = 0;

done: /* every _free accepts NULL */
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
