/*
 * on_error="collect": every task runs, whatever the others do, and each result carries its own
 * status. (By default, on_error="raise", joblib's behaviour: the first failure ends the call and
 * the tasks queued behind it never start; see examples/error.c.)
 *
 * Here tasks 3 and 7 fail. The call still returns PJ_STATUS_OK; pj_results_status and
 * pj_results_error tell, for each task, whether it succeeded and why not.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pj.h"

enum { N = 10 };

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* The task: 10 * x, but refuses 3 and 7 (any non-zero return is a failure; the message is
 * optional). */
static int32_t times_ten(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int32_t x;
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one int32_t");
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    if (x == 3 || x == 7) {
        char message[64];
        snprintf(message, sizeof message, "%d is unlucky", (int)x);
        pj_out_error(out, message);
        return 5;
    }
    int32_t y = 10 * x;
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 1;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;

    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("on_error", pj_config_set(cfg, "on_error", "collect", &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    for (int32_t x = 0; x < N; x++) {
        check("pj_parallel_submit", pj_parallel_submit(par, times_ten, NULL, (const uint8_t *)&x, sizeof x, &err), err);
    }
    /* OK although two tasks failed. */
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);

    printf("%zu of %zu tasks failed\n", pj_results_error_count(res), pj_results_len(res));
    for (size_t i = 0; i < pj_results_len(res); i++) {
        if (pj_results_status(res, i) == PJ_STATUS_OK) {
            const uint8_t *data;
            size_t len;
            int32_t y;
            check("pj_results_get", pj_results_get(res, i, &data, &len), NULL);
            memcpy(&y, data, sizeof y);
            printf("task %zu: %d\n", i, (int)y);
        } else {
            /* Borrowed from res: never pj_error_free it. */
            const pj_error_t *task_err = pj_results_error(res, i);
            printf("task %zu: %s (code %d)\n", i, pj_error_message(task_err), (int)pj_error_callback_code(task_err));
        }
    }

    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return 0;
}
