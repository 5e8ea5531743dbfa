/*
 * return_as: in which order a streaming call hands its results back, as joblib's
 *
 *     >>> Parallel(n_jobs=2, return_as="generator")(...)            # input order
 *     >>> Parallel(n_jobs=2, return_as="generator_unordered")(...)  # completion order
 *
 * ("list", the default, is input order too: with pj_parallel_collect / pj_parallel_map the results
 * come back all at once.) Here task 0 is the slow one: it finishes only after tasks 1 to 4. In
 * input order its result still comes first, so the reader waits for it; in completion order the
 * reader gets the others as soon as they are done, and task 0's last. pj_parallel_next says which
 * task each result belongs to.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep under -std=c11 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pj.h"

enum { N = 5 };

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* Shared by the tasks (threads) and the reader. */
struct state {
    atomic_int others_done; /* tasks 1..N-1 finished */
    atomic_int read;        /* results read by main */
    int unordered;
};

/* Task x returns x * x; task 0 first waits (at most 30 s) until it is surely the last to finish:
 * until the reader has read the N-1 other results (completion order), or until the others are
 * done (input order, where the reader cannot read them before task 0's). */
static int32_t square(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    struct state *s = userdata;
    int32_t x;
    if (arg_len != sizeof x) {
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    if (x == 0) {
        atomic_int *wait_for = s->unordered ? &s->read : &s->others_done;
        for (int i = 0; i < 30000 && atomic_load(wait_for) < N - 1; i++) {
            struct timespec pause = {0, 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
    int32_t y = x * x;
    pj_status st = pj_out_set(out, (const uint8_t *)&y, sizeof y);
    if (x != 0) {
        atomic_fetch_add(&s->others_done, 1);
    }
    return st == PJ_STATUS_OK ? 0 : 1;
}

/* The producer: 0, 1, ..., N-1. pj copies the argument when this returns. */
struct inputs {
    int32_t next;
    int32_t current;
};

static int32_t produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    struct inputs *in = userdata;
    if (in->next == N) {
        return 0;
    }
    in->current = in->next++;
    *arg_out = (const uint8_t *)&in->current;
    *len_out = sizeof in->current;
    return 1;
}

static void run(const char *return_as) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("backend", pj_config_set(cfg, "backend", "threads", &err), err);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("batch_size", pj_config_set(cfg, "batch_size", "1", &err), err);
    check("pre_dispatch", pj_config_set(cfg, "pre_dispatch", "all", &err), err);
    check("return_as", pj_config_set(cfg, "return_as", return_as, &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    struct state s = {0, 0, strcmp(return_as, "generator_unordered") == 0};
    struct inputs in = {0, 0};
    check("pj_parallel_imap", pj_parallel_imap(par, square, &s, produce, &in, &err), err);
    printf("%-20s", return_as);
    for (;;) {
        size_t index;
        const uint8_t *data;
        size_t len;
        pj_status st = pj_parallel_next(par, &index, &data, &len, &err);
        if (st == PJ_STATUS_DONE) {
            break;
        }
        check("pj_parallel_next", st, err);
        int32_t y;
        memcpy(&y, data, sizeof y);
        printf(" task %zu=%d", index, (int)y);
        atomic_fetch_add(&s.read, 1);
    }
    printf("\n");
    pj_parallel_free(par);
    pj_config_free(cfg);
}

int main(void) {
    run("generator");
    run("generator_unordered");
    return 0;
}
