/*
 * joblib's documented output pattern (a w+ memmap every task fills), in C:
 *
 *     >>> out = np.memmap(path, dtype=np.float64, shape=(8, 4), mode="w+")
 *     >>> def fill(i, out): out[i] = [i * 10 + j for j in range(4)]
 *     >>> Parallel(n_jobs=2)(delayed(fill)(i, out) for i in range(8))
 *
 * The output buffer is a pj_shared_t: worker processes write their own row in place and the
 * caller reads the whole table when the call returns. No result bytes travel back at all.
 */
#include <stdio.h>
#include <string.h>

#include "pj.h"

enum { ROWS = 8, COLS = 4 };

/* The task: writes row i of the table that userdata points to. The table lives in shared memory,
 * so the write is visible to the caller even though this runs in a forked worker process. */
static int32_t fill_row(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    double *table = userdata;
    size_t row;
    if (arg_len != sizeof row) {
        pj_out_error(out, "expected one size_t");
        return 1;
    }
    memcpy(&row, arg, sizeof row);
    for (size_t col = 0; col < COLS; col++) {
        table[row * COLS + col] = (double)(row * 10 + col);
    }
    return 0;
}

static void report(const char *what, pj_status status, pj_error_t *err) {
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(status), pj_error_report(err));
    pj_error_free(err);
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_shared_t *shared = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int rc = 1;
    pj_status st;

    if ((st = pj_config_new(&cfg)) != PJ_STATUS_OK) {
        report("pj_config_new", st, NULL);
        return 1;
    }
    if ((st = pj_config_set_n_jobs(cfg, 2, &err)) != PJ_STATUS_OK) {
        report("pj_config_set_n_jobs", st, err);
        goto done;
    }
    /* Created before the call, so the workers forked by the call map it too. */
    if ((st = pj_shared_new(cfg, ROWS * COLS * sizeof(double), &shared, &err)) != PJ_STATUS_OK) {
        report("pj_shared_new", st, err);
        goto done;
    }
    if ((st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_new", st, err);
        goto done;
    }
    double *table = (double *)pj_shared_data(shared);
    for (size_t row = 0; row < ROWS; row++) {
        st = pj_parallel_submit(par, fill_row, table, (const uint8_t *)&row, sizeof row, &err);
        if (st != PJ_STATUS_OK) {
            report("pj_parallel_submit", st, err);
            goto done;
        }
    }
    if ((st = pj_parallel_collect(par, &res, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_collect", st, err);
        goto done;
    }
    for (size_t row = 0; row < ROWS; row++) {
        for (size_t col = 0; col < COLS; col++) {
            printf("%s%4.0f", col ? " " : "", table[row * COLS + col]);
        }
        printf("\n");
    }
    rc = 0;

done: /* every _free accepts NULL */
    pj_results_free(res);
    pj_parallel_free(par);
    pj_shared_free(shared);
    pj_config_free(cfg);
    return rc;
}
