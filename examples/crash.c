/*
 * When a task crashes its worker process (here: a write through a NULL pointer), pj reports the
 * task like any failed task, with the signal that killed the worker and the crashing stack, which
 * the worker's crash handler recorded and pj symbolized: function names always (from the symbol
 * table), files and lines when the program is built with -g. The rest of the program is unharmed:
 * the worker was a separate process, forked by pj.
 *
 * Here task 3 of 10 crashes in crash_here(). The program prints pj_error_report() and exits 0 when
 * it observed exactly that failure.
 */
#include <stdio.h>
#include <string.h>

#include "pj.h"

/* Read at run time, so the compiler cannot see (and optimize around) the NULL. */
static volatile int *volatile nowhere = NULL;

/* The crash, in a function of its own so that the report can name it (noinline: kept a frame). */
__attribute__((noinline)) static void crash_here(int i) {
    *nowhere = i; /* SIGSEGV, fault address 0x0 */
}

/* The task: crashes on 3, succeeds (with no output) otherwise. */
static int32_t task_crashy(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    (void)out;
    int i;
    if (arg_len != sizeof i) {
        return 1;
    }
    memcpy(&i, arg, sizeof i);
    if (i == 3) {
        crash_here(i);
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
    /* Worker processes (the default backend, named here because a crash needs one). */
    if ((st = pj_config_set_backend(cfg, "processes", &err)) != PJ_STATUS_OK ||
        (st = pj_config_set_n_jobs(cfg, 2, &err)) != PJ_STATUS_OK ||
        (st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        fprintf(stderr, "setup failed: %s\n%s", pj_status_str(st), pj_error_report(err));
        goto done;
    }

    for (int i = 0; i < 10; i++) {
        st = pj_parallel_submit(par, task_crashy, NULL, (const uint8_t *)&i, sizeof i, &err);
        if (st != PJ_STATUS_OK && pj_error_task_index(err) >= 0) {
            /* A task has already failed (the worker died): stop submitting; pj_parallel_collect
             * reports it. */
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
        fprintf(stderr, "expected task 3 to crash its worker, but every task succeeded\n");
        goto done;
    }
    printf("status: %s\n", pj_status_str(st));
    printf("task index: %lld\n", (long long)pj_error_task_index(err));
    /* Signal, fault address and the worker's backtrace: crash_here, then task_crashy, ... */
    printf("report:\n%s", pj_error_report(err));

    if (st == PJ_STATUS_WORKER_DIED && pj_error_task_index(err) == 3) {
        rc = 0;
    }

done:
    pj_error_free(err);
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
