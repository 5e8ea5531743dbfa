/*
 * Scoped defaults, joblib's parallel_config:
 *
 *     >>> with parallel_config(backend="threading", n_jobs=2):
 *     ...     Parallel()(delayed(f)(x) for x in xs)       # threads, 2 workers
 *
 * pj_config_push makes a config this thread's innermost default: an executor created afterwards
 * takes each option from its own config when set there, else from the innermost pushed config
 * that sets it, else joblib's default. pj_config_pop undoes the last push. Pushes nest, and only
 * the pushing thread sees them. pj_effective_n_jobs tells how many workers an executor would use.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pj.h"

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* A config with one option set (pj_config_set takes joblib's spellings). */
static pj_config_t *config_with(const char *key, const char *value) {
    pj_config_t *cfg = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check(key, pj_config_set(cfg, key, value, &err), err);
    return cfg;
}

/* The task writes to the caller's memory: the caller sees it only when the task ran on a thread
 * (a worker process writes to its own copy). */
static int32_t mark(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)arg;
    (void)arg_len;
    (void)out;
    *(int *)userdata = 1;
    return 0;
}

/* Creates an executor from `own` (NULL: no options of its own) and runs one task: reports the
 * workers it uses and whether the task ran on a thread of this process. */
static void show(const char *label, const pj_config_t *own) {
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    int marked = 0;
    check("pj_parallel_new", pj_parallel_new(own, &par, &err), err);
    check("pj_parallel_submit", pj_parallel_submit(par, mark, &marked, NULL, 0, &err), err);
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);
    printf("%-34s n_jobs %zu, task saw the caller's memory: %s\n", label, pj_effective_n_jobs(own),
           marked ? "yes" : "no");
    pj_results_free(res);
    pj_parallel_free(par);
}

int main(void) {
    pj_error_t *err = NULL;
    pj_config_t *processes4 = config_with("n_jobs", "4");
    check("backend", pj_config_set(processes4, "backend", "processes", &err), err);

    show("no default pushed:", NULL); /* n_jobs 1: runs in the caller */

    pj_config_t *threads2 = config_with("backend", "threads");
    check("n_jobs", pj_config_set(threads2, "n_jobs", "2", &err), err);
    check("pj_config_push", pj_config_push(threads2, &err), err);
    pj_config_free(threads2); /* push copied it */
    show("pushed threads, n_jobs 2:", NULL);
    show("own config: processes, n_jobs 4:", processes4); /* its own options win */

    pj_config_t *three = config_with("n_jobs", "3");
    check("pj_config_push", pj_config_push(three, &err), err); /* nested: only n_jobs changes */
    pj_config_free(three);
    show("nested push of n_jobs 3:", NULL);

    check("pj_config_pop", pj_config_pop(&err), err);
    show("after one pop:", NULL);
    check("pj_config_pop", pj_config_pop(&err), err);
    show("after two pops:", NULL);

    pj_status st = pj_config_pop(&err); /* nothing left to pop */
    printf("a third pop: %s\n", pj_status_str(st));
    pj_error_free(err);
    pj_config_free(processes4);
    return 0;
}
