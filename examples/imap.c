/*
 * Streaming: results are read one at a time while the inputs are still being produced, like
 * joblib's return_as="generator":
 *
 *     >>> for y in Parallel(n_jobs=2, return_as="generator", pre_dispatch=4)(
 *     ...         delayed(cube)(x) for x in range(1, 13)):
 *     ...     print(y)
 *
 * Call style: pj_parallel_imap starts the call with a producer callback (the counterpart of the
 * Python generator); each pj_parallel_next returns the next result, in input order, and asks the
 * producer for more inputs only while few enough are waiting. So memory stays bounded however many
 * inputs there are and however slowly the results are read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pj.h"

enum { N = 12, WINDOW = 4 }; /* WINDOW = pre_dispatch (4) x batch_size (1) */

/* Stops the program with the error's report when a pj call failed. */
static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* The task: x * x * x (runs in a worker process). */
static int32_t cube(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t x;
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one int64_t");
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    int64_t y = x * x * x;
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 1;
}

/* The producer's state. `read` is updated by main as results arrive, so the producer can show how
 * far ahead of the reader pj lets it run. */
struct inputs {
    int64_t next;    /* the next input: 1, 2, ..., N */
    int64_t current; /* the buffer handed to pj (read when produce returns) */
    int64_t read;    /* results read so far */
    int64_t ahead;   /* the most inputs ever produced and not yet read */
};

/* Called by pj on the thread that calls pj_parallel_next: stores the next input and returns 1, or
 * returns 0 at the end. pj copies the bytes after it returns and before it calls again, so one
 * buffer is enough. */
static int32_t produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    struct inputs *in = userdata;
    if (in->next > N) {
        return 0;
    }
    if (in->next - in->read > in->ahead) {
        in->ahead = in->next - in->read;
    }
    in->current = in->next++;
    *arg_out = (const uint8_t *)&in->current;
    *len_out = sizeof in->current;
    return 1;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;

    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("return_as", pj_config_set(cfg, "return_as", "generator", &err), err);
    /* The window: at most pre_dispatch x batch_size inputs produced and not yet read. */
    check("pre_dispatch", pj_config_set(cfg, "pre_dispatch", "4", &err), err);
    check("batch_size", pj_config_set(cfg, "batch_size", "1", &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    struct inputs in = {.next = 1, .current = 0, .read = 0, .ahead = 0};
    check("pj_parallel_imap", pj_parallel_imap(par, cube, NULL, produce, &in, &err), err);
    for (;;) {
        size_t index;
        const uint8_t *data; /* a view, valid until the next use of par */
        size_t len;
        pj_status st = pj_parallel_next(par, &index, &data, &len, &err);
        if (st == PJ_STATUS_DONE) {
            break; /* every result has been read: the call is over */
        }
        check("pj_parallel_next", st, err);
        int64_t y;
        memcpy(&y, data, sizeof y);
        in.read++;
        printf("task %zu: %lld\n", index, (long long)y);
    }
    printf("never more than %d inputs produced ahead of the reader: %s\n", WINDOW, in.ahead <= WINDOW ? "yes" : "no");

    pj_parallel_free(par);
    pj_config_free(cfg);
    return 0;
}
