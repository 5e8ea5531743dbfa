/*
 * backend "mpi": the same program runs on every rank of an MPI job. Rank 0 runs main past
 * pj_mpi_main and dispatches; the other ranks serve its tasks with the functions they
 * registered, by name, and exit when rank 0 does.
 *
 *     $ mpirun -n 3 ./mpi_squares
 *     squares: 0 1 4 9 16 25 36 49 64 81
 *     tasks ran outside rank 0: yes
 *
 * (Under `mpirun -n 1`, rank 0 runs the tasks itself and the second line says "no".)
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pj.h"
#include "pj_mpi.h"

/* The task: returns (x * x, the pid of the process that ran it). */
static int32_t square(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t x, result[2];
    if (arg_len != sizeof x) {
        pj_out_error(out, "expected one int64_t");
        return 1;
    }
    memcpy(&x, arg, sizeof x);
    result[0] = x * x;
    result[1] = (int64_t)getpid();
    return pj_out_set(out, (const uint8_t *)result, sizeof result) == PJ_STATUS_OK ? 0 : 1;
}

static void report(const char *what, pj_status status, pj_error_t *err) {
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(status), pj_error_report(err));
    pj_error_free(err);
}

int main(int argc, char **argv) {
    /* 1. Register every task function, in the same order on every rank. */
    if (pj_register("square", square, NULL) != PJ_STATUS_OK) {
        return 1;
    }
    /* 2. Start MPI and pj's backend. Ranks other than 0 serve tasks here and never return. */
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 1;
    }

    /* 3. Rank 0: an ordinary pj program, with backend "mpi". */
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int rc = 1;
    pj_status st;
    if ((st = pj_config_new(&cfg)) != PJ_STATUS_OK) {
        report("pj_config_new", st, NULL);
        return 1;
    }
    if ((st = pj_config_set(cfg, "backend", "mpi", &err)) != PJ_STATUS_OK) {
        report("pj_config_set", st, err);
        goto done;
    }
    if ((st = pj_parallel_new(cfg, &par, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_new", st, err);
        goto done;
    }
    for (int64_t x = 0; x < 10; x++) {
        st = pj_parallel_submit_named(par, "square", (const uint8_t *)&x, sizeof x, &err);
        if (st != PJ_STATUS_OK) {
            report("pj_parallel_submit_named", st, err);
            goto done;
        }
    }
    if ((st = pj_parallel_collect(par, &res, &err)) != PJ_STATUS_OK) {
        report("pj_parallel_collect", st, err);
        goto done;
    }
    int elsewhere = 1;
    printf("squares:");
    for (size_t i = 0; i < pj_results_len(res); i++) {
        const uint8_t *data;
        size_t len;
        int64_t result[2];
        if (pj_results_get(res, i, &data, &len) != PJ_STATUS_OK || len != sizeof result) {
            fprintf(stderr, "\nresult %zu: unexpected status or length\n", i);
            goto done;
        }
        memcpy(result, data, sizeof result);
        printf(" %lld", (long long)result[0]);
        elsewhere = elsewhere && result[1] != (int64_t)getpid();
    }
    printf("\ntasks ran outside rank 0: %s\n", elsewhere ? "yes" : "no");
    rc = 0;

done:
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc; /* at exit, pj lets the other ranks go and MPI is finalized */
}
