/*
 * When a task fails, pj fails fast: it stops dispatching, skips the queued tasks and returns an error
 * that names the failed task (its index in submission order), the code its callback returned and
 * the message it attached with pj_out_error. This is joblib's remote traceback, for C.
 *
 * Here task 3 of 10 fails. The program exits 0 when it observed exactly that failure.
 */
#include <stdio.h>
#include <string.h>

#include "pj.h"

/* The task: fails on 3 with code 7 and a message, succeeds (with no output) otherwise. */
static int32_t task_picky(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int i;
    if (arg_len != sizeof i) {
        return 1;
    }
    memcpy(&i, arg, sizeof i);
    if (i == 3) {
        char message[64];
        snprintf(message, sizeof message, "cannot handle %d", i);
        pj_out_error(out, message); /* copied by pj */
        return 7;
    }
    return 0;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int rc = 1;

    pj_status st = pj_config_new(&cfg);
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "pj_config_new: %s\n", pj_status_str(st));
        return 1;
    }
    if ((st = pj_config_set_n_jobs(cfg, 2, &err)) != PJ_STATUS_OK ||
        (st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        fprintf(stderr, "setup failed: %s\n%s", pj_status_str(st), pj_error_report(err));
        goto done;
    }

    for (int i = 0; i < 10; i++) {
        st = pj_parallel_submit(par, task_picky, NULL, (const uint8_t *)&i, sizeof i, &err);
        if (st == PJ_STATUS_TASK_FAILED) {
            /* A task has already failed: stop submitting; pj_parallel_collect reports the failure. */
            pj_error_free(err);
            err = NULL;
            break;
        }
        if (st != PJ_STATUS_OK) {
            fprintf(stderr, "pj_parallel_submit: %s\n%s", pj_status_str(st), pj_error_report(err));
            goto done;
        }
    }

    st = pj_parallel_collect(par, &res, &err);
    if (st == PJ_STATUS_OK) {
        fprintf(stderr, "expected task 3 to fail, but every task succeeded\n");
        goto done;
    }
    /* The error object says what failed and where. */
    printf("status: %s\n", pj_status_str(st));
    printf("task index: %lld\n", (long long)pj_error_task_index(err));
    printf("callback code: %d\n", (int)pj_error_callback_code(err));
    printf("message: %s\n", pj_error_message(err));
    printf("report:\n%s", pj_error_report(err));

    if (st == PJ_STATUS_TASK_FAILED && pj_error_task_index(err) == 3 && pj_error_callback_code(err) == 7) {
        rc = 0;
    }
    /* After a failed call the object is ready for a new one; here we are done with it. */

done:
    pj_error_free(err);
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
