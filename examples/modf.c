/*
 * joblib's second example, in C: a task with two results.
 *
 *     >>> from math import modf
 *     >>> r = Parallel(n_jobs=2)(delayed(modf)(i / 2.) for i in range(10))
 *     >>> res, i = zip(*r)
 *     >>> res
 *     (0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.5)
 *     >>> i
 *     (0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0)
 *
 * Call style: pj_parallel_map, which pulls the inputs from a producer callback (the counterpart of
 * the Python generator) on the calling thread and returns every result in input order.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pj.h"

#define N 10

/* The task: modf(x) gives a fractional and an integral part, written as two doubles in place. */
static int32_t task_modf(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    double x, parts[2];
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one double");
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    parts[0] = modf(x, &parts[1]);
    uint8_t *dst = pj_out_alloc(out, sizeof parts); /* 16 bytes owned by pj, written in place */
    if (dst == NULL) {
        return 1;
    }
    memcpy(dst, parts, sizeof parts);
    return 0;
}

/* The producer: yields i / 2.0 for i in 0..N. pj copies each argument before asking for the next,
 * so the producer may reuse one buffer. It is always called on the thread that called map. */
struct inputs {
    int next;
    double value;
};

static int32_t produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    struct inputs *in = userdata;
    if (in->next == N) {
        return 0; /* end of input */
    }
    in->value = in->next++ / 2.0;
    *arg_out = (const uint8_t *)&in->value;
    *len_out = sizeof in->value;
    return 1; /* one more item */
}

/* Prints a tuple the way Python does. */
static void print_tuple(const double *values, size_t n) {
    printf("(");
    for (size_t i = 0; i < n; i++) {
        printf("%s%.1f", i ? ", " : "", values[i]);
    }
    printf(")\n");
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
    /* Options can also be set from strings, with joblib's keywords and spellings. */
    if ((st = pj_config_set(cfg, "n_jobs", "2", &err)) != PJ_STATUS_OK ||
        (st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        goto fail;
    }
    struct inputs in = {0, 0.0};
    if ((st = pj_parallel_map(par, task_modf, NULL, produce, &in, &res, &err)) != PJ_STATUS_OK) {
        goto fail;
    }

    /* zip(*r): one array of fractional parts, one of integral parts. */
    double frac[N], whole[N];
    size_t n = pj_results_len(res);
    if (n != N) {
        fprintf(stderr, "expected %d results, got %zu\n", N, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *data;
        size_t len;
        double parts[2];
        if (pj_results_get(res, i, &data, &len) != PJ_STATUS_OK || len != sizeof parts) {
            fprintf(stderr, "result %zu: unexpected status or length\n", i);
            goto done;
        }
        memcpy(parts, data, sizeof parts);
        frac[i] = parts[0];
        whole[i] = parts[1];
    }
    print_tuple(frac, n);
    print_tuple(whole, n);
    rc = 0;
    goto done;

fail:
    fprintf(stderr, "%s\n%s", pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
done:
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
