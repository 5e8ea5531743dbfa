/*
 * backend "mpi" in a program that never called pj_mpi_main (it links only libpj, not the pj_mpi
 * shim, and runs without mpirun): the config accepts the name, and pj_parallel_new or the first
 * call fails with PJ_STATUS_UNSUPPORTED, with a message that points at pj_mpi_main.
 *
 *     $ ./mpi_no_main
 *     ... PJ_STATUS_UNSUPPORTED ... pj_mpi_main ...
 *     backend mpi without pj_mpi_main: ok
 */
#include <stdio.h>
#include <string.h>

#include "pj.h"

static int32_t square(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int64_t x = 0;
    if (arg_len == sizeof x) {
        memcpy(&x, arg, sizeof x);
    }
    x *= x;
    return pj_out_set(out, (const uint8_t *)&x, sizeof x) == PJ_STATUS_OK ? 0 : 1;
}

int main(void) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int rc = 1;
    if (pj_register("square", square, NULL) != PJ_STATUS_OK || pj_config_new(&cfg) != PJ_STATUS_OK) {
        return 1;
    }
    pj_status st = pj_config_set(cfg, "backend", "mpi", &err);
    if (st != PJ_STATUS_OK) {
        printf("pj_config_set(backend, mpi): %s: %s\n", pj_status_str(st), pj_error_message(err));
        goto done;
    }
    const char *where = "pj_parallel_new";
    st = pj_parallel_new(cfg, &par, &err);
    for (int64_t x = 0; st == PJ_STATUS_OK && x < 10; x++) {
        where = "pj_parallel_submit_named";
        st = pj_parallel_submit_named(par, "square", (const uint8_t *)&x, sizeof x, &err);
    }
    if (st == PJ_STATUS_OK) {
        where = "pj_parallel_collect";
        st = pj_parallel_collect(par, &res, &err);
    }
    printf("%s: %s: %s\n", where, pj_status_str(st), pj_error_message(err));
    if (st != PJ_STATUS_UNSUPPORTED) {
        printf("FAILED: expected PJ_STATUS_UNSUPPORTED\n");
    } else if (strstr(pj_error_message(err), "pj_mpi_main") == NULL) {
        printf("FAILED: the message does not mention pj_mpi_main\n");
    } else {
        printf("backend mpi without pj_mpi_main: ok\n");
        rc = 0;
    }

done:
    pj_error_free(err);
    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
    return rc;
}
