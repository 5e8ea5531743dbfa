/*
 * Every call style on every backend and start method, with the same inputs and the same checks:
 * submit + collect, submit_named + collect, map, imap ordered, imap unordered, for (a function
 * pointer), for_named and on_error=collect, on threads, sequential, processes with fork, with
 * spawn (this program is its own spawned worker) and with forkserver, and, built with PJ_STYLE_MATRIX_MPI and run under
 * mpiexec, on backend "mpi". A combination that cannot work must be refused with
 * PJ_STATUS_UNSUPPORTED and a message saying why (pj_parallel_for takes a function pointer, which
 * spawned workers, fork-server workers and MPI ranks do not take); every other one must give the expected results.
 * Prints the matrix; exits non-zero on the first wrong cell.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pj.h"
#ifdef PJ_STYLE_MATRIX_MPI
#include "pj_mpi.h"
#endif

#define N 200
#define FAILING 5 /* the input on_error=collect makes fail */

/* int64 x -> x * x + 1; fails (code 7, "five") on FAILING when the argument's second word is 1 */
static int32_t square(void *userdata, const uint8_t *arg, size_t len, pj_out_t *out) {
    (void)userdata;
    int64_t words[2] = {0, 0};
    if (len != sizeof words) {
        return 1;
    }
    memcpy(words, arg, sizeof words);
    if (words[1] == 1 && words[0] == FAILING) {
        pj_out_error(out, "five");
        return 7;
    }
    int64_t y = words[0] * words[0] + 1;
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 1;
}

/* range -> [start, end, the sum of i * i + 1 over it] */
static int32_t squares_range(void *userdata, size_t start, size_t end, pj_out_t *out) {
    (void)userdata;
    uint64_t words[3] = {start, end, 0};
    for (size_t i = start; i < end; i++) {
        words[2] += (uint64_t)(i * i + 1);
    }
    return pj_out_set(out, (const uint8_t *)words, sizeof words) == PJ_STATUS_OK ? 0 : 1;
}

/* pj_parallel_for's form: writes i * i + 1 into the uint64 array in userdata */
static int32_t squares_into(void *userdata, size_t start, size_t end, pj_out_t *out) {
    (void)out;
    uint64_t *table = userdata;
    for (size_t i = start; i < end; i++) {
        table[i] = (uint64_t)(i * i + 1);
    }
    return 0;
}

/* The inputs 0..N-1, as (x, fail) pairs. */
struct inputs {
    int64_t next;
    int64_t fail;
    int64_t buf[2];
};

static int32_t produce(void *userdata, const uint8_t **arg, size_t *len) {
    struct inputs *in = userdata;
    if (in->next >= N) {
        return 0;
    }
    in->buf[0] = in->next++;
    in->buf[1] = in->fail;
    *arg = (const uint8_t *)in->buf;
    *len = sizeof in->buf;
    return 1;
}

static int failures = 0;

/* A cell's verdict: "ok", "unsupported: <why>", or a failure. */
static char verdict[512];

static int fail(const char *what, pj_status st, pj_error_t *err) {
    snprintf(verdict, sizeof verdict, "FAILED: %s (%s%s%s)", what, pj_status_str(st),
             err ? ": " : "", err ? pj_error_message(err) : "");
    pj_error_free(err);
    return 1;
}

/* Checks results 0..N-1 against x * x + 1 (none when the call failed with `failed_index`). */
static int check_results(pj_results_t *res, int collect) {
    if (pj_results_len(res) != N) {
        snprintf(verdict, sizeof verdict, "FAILED: %zu results", pj_results_len(res));
        return 1;
    }
    for (size_t i = 0; i < N; i++) {
        const uint8_t *data = NULL;
        size_t len = 0;
        pj_status st = pj_results_get(res, i, &data, &len);
        if (collect && i == FAILING) {
            if (pj_results_status(res, i) != PJ_STATUS_TASK_FAILED) {
                snprintf(verdict, sizeof verdict, "FAILED: task %d's status is %s", FAILING,
                         pj_status_str(pj_results_status(res, i)));
                return 1;
            }
            continue;
        }
        int64_t y = -1;
        if (st == PJ_STATUS_OK && len == sizeof y) {
            memcpy(&y, data, sizeof y);
        }
        if (y != (int64_t)(i * i + 1)) {
            snprintf(verdict, sizeof verdict, "FAILED: result %zu is %lld", i, (long long)y);
            return 1;
        }
    }
    return 0;
}

static pj_parallel_t *make(const char *const *options, const char *extra_key, const char *extra) {
    pj_config_t *cfg = NULL;
    pj_error_t *err = NULL;
    pj_parallel_t *par = NULL;
    pj_status st = pj_config_new(&cfg);
    for (size_t i = 0; st == PJ_STATUS_OK && options[i] != NULL; i += 2) {
        st = pj_config_set(cfg, options[i], options[i + 1], &err);
    }
    if (st == PJ_STATUS_OK && extra_key != NULL) {
        st = pj_config_set(cfg, extra_key, extra, &err);
    }
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_new(cfg, &par, &err);
    }
    pj_config_free(cfg);
    if (st != PJ_STATUS_OK) {
        fprintf(stderr, "cannot create the executor: %s\n", err ? pj_error_message(err) : "");
        pj_error_free(err);
        exit(2);
    }
    return par;
}

static int style_submit(const char *const *options, int named) {
    pj_parallel_t *par = make(options, NULL, NULL);
    pj_error_t *err = NULL;
    pj_status st = PJ_STATUS_OK;
    for (int64_t x = 0; st == PJ_STATUS_OK && x < N; x++) {
        int64_t arg[2] = {x, 0};
        st = named ? pj_parallel_submit_named(par, "square", (const uint8_t *)arg, sizeof arg, &err)
                   : pj_parallel_submit(par, square, NULL, (const uint8_t *)arg, sizeof arg, &err);
    }
    pj_results_t *res = NULL;
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_collect(par, &res, &err);
    }
    int bad = st != PJ_STATUS_OK ? fail("submit/collect", st, err) : check_results(res, 0);
    pj_results_free(res);
    pj_parallel_free(par);
    return bad;
}

static int style_map(const char *const *options, int collect) {
    pj_parallel_t *par = make(options, collect ? "on_error" : NULL, "collect");
    struct inputs in = {0, collect, {0, 0}};
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    pj_status st = pj_parallel_map(par, square, NULL, produce, &in, &res, &err);
    int bad = st != PJ_STATUS_OK ? fail("map", st, err) : check_results(res, collect);
    pj_results_free(res);
    pj_parallel_free(par);
    return bad;
}

static int style_imap(const char *const *options, int unordered) {
    pj_parallel_t *par = make(options, unordered ? "return_as" : NULL, "generator_unordered");
    struct inputs in = {0, 0, {0, 0}};
    pj_error_t *err = NULL;
    pj_status st = pj_parallel_imap(par, square, NULL, produce, &in, &err);
    int seen[N] = {0};
    size_t count = 0, last = 0;
    int in_order = 1;
    while (st == PJ_STATUS_OK) {
        size_t index = 0;
        const uint8_t *data = NULL;
        size_t len = 0;
        st = pj_parallel_next(par, &index, &data, &len, &err);
        if (st != PJ_STATUS_OK) {
            break;
        }
        int64_t y = -1;
        if (len == sizeof y) {
            memcpy(&y, data, sizeof y);
        }
        if (index >= N || seen[index] || y != (int64_t)(index * index + 1)) {
            snprintf(verdict, sizeof verdict, "FAILED: result for index %zu is %lld", index,
                     (long long)y);
            pj_parallel_free(par);
            return 1;
        }
        in_order = in_order && (count == 0 || index == last + 1);
        seen[index] = 1;
        last = index;
        count++;
    }
    int bad = st != PJ_STATUS_DONE ? fail("imap", st, err) : 0;
    if (!bad && (count != N || (!unordered && !in_order))) {
        snprintf(verdict, sizeof verdict, "FAILED: %zu results%s", count,
                 in_order ? "" : ", not in input order");
        bad = 1;
    }
    pj_parallel_free(par);
    return bad;
}

/* pj_parallel_for, writing into a pj_shared_t buffer (shared with forked workers). */
static int style_for(const char *const *options) {
    pj_parallel_t *par = make(options, NULL, NULL);
    pj_error_t *err = NULL;
    pj_shared_t *shared = NULL;
    pj_status st = pj_shared_new(NULL, N * sizeof(uint64_t), &shared, &err);
    if (st == PJ_STATUS_OK) {
        st = pj_parallel_for(par, N, squares_into, pj_shared_data(shared), &err);
    }
    int bad = 0;
    if (st == PJ_STATUS_UNSUPPORTED) {
        const char *why = err ? pj_error_message(err) : "";
        if (strstr(why, "pj_parallel_for_named") == NULL) {
            bad = fail("for: UNSUPPORTED without pointing to pj_parallel_for_named", st, err);
        } else {
            snprintf(verdict, sizeof verdict, "unsupported: %s", why);
            pj_error_free(err);
        }
    } else if (st != PJ_STATUS_OK) {
        bad = fail("for", st, err);
    } else {
        const uint64_t *table = (const uint64_t *)pj_shared_data(shared);
        for (size_t i = 0; i < N && !bad; i++) {
            if (table[i] != (uint64_t)(i * i + 1)) {
                snprintf(verdict, sizeof verdict, "FAILED: item %zu is %llu", i,
                         (unsigned long long)table[i]);
                bad = 1;
            }
        }
    }
    pj_shared_free(shared);
    pj_parallel_free(par);
    return bad;
}

static int style_for_named(const char *const *options) {
    pj_parallel_t *par = make(options, NULL, NULL);
    pj_error_t *err = NULL;
    pj_results_t *res = NULL;
    pj_status st = pj_parallel_for_named(par, "squares", N, &res, &err);
    int bad = st != PJ_STATUS_OK ? fail("for_named", st, err) : 0;
    uint64_t next = 0;
    for (size_t k = 0; !bad && k < pj_results_len(res); k++) {
        const uint8_t *data = NULL;
        size_t len = 0;
        uint64_t words[3] = {0, 0, 0};
        if (pj_results_get(res, k, &data, &len) == PJ_STATUS_OK && len == sizeof words) {
            memcpy(words, data, sizeof words);
        }
        uint64_t sum = 0;
        for (uint64_t i = words[0]; i < words[1]; i++) {
            sum += i * i + 1;
        }
        if (words[0] != next || words[1] <= words[0] || words[2] != sum) {
            snprintf(verdict, sizeof verdict, "FAILED: range %zu is [%llu, %llu)", k,
                     (unsigned long long)words[0], (unsigned long long)words[1]);
            bad = 1;
        }
        next = words[1];
    }
    if (!bad && next != N) {
        snprintf(verdict, sizeof verdict, "FAILED: the ranges end at %llu", (unsigned long long)next);
        bad = 1;
    }
    pj_results_free(res);
    pj_parallel_free(par);
    return bad;
}

enum style { SUBMIT, SUBMIT_NAMED, MAP, IMAP, IMAP_UNORDERED, FOR, FOR_NAMED, COLLECT, STYLES };
static const char *const style_names[STYLES] = {
    "submit+collect", "submit_named+collect", "map", "imap ordered",
    "imap unordered", "for", "for_named", "map, on_error=collect"};

static int run_style(enum style style, const char *const *options) {
    switch (style) {
    case SUBMIT: return style_submit(options, 0);
    case SUBMIT_NAMED: return style_submit(options, 1);
    case MAP: return style_map(options, 0);
    case IMAP: return style_imap(options, 0);
    case IMAP_UNORDERED: return style_imap(options, 1);
    case FOR: return style_for(options);
    case FOR_NAMED: return style_for_named(options);
    case COLLECT: return style_map(options, 1);
    default: return 1;
    }
}

int main(int argc, char **argv) {
    if (pj_register("square", square, NULL) != PJ_STATUS_OK ||
        pj_register_range("squares", squares_range, NULL) != PJ_STATUS_OK) {
        return 2;
    }
#ifdef PJ_STYLE_MATRIX_MPI
    if (pj_mpi_main(&argc, &argv) != 0) {
        return 2;
    }
    static const char *const mpi[] = {"backend", "mpi", NULL};
    const char *const *backends[] = {mpi};
    const char *labels[] = {"mpi"};
#else
    if (pj_worker_main_if_requested(argc, (const char *const *)argv) != 0) {
        return 2;
    }
    static const char *const threads[] = {"backend", "threads", "n_jobs", "2", NULL};
    static const char *const sequential[] = {"backend", "sequential", NULL};
    static const char *const fork_[] = {"backend", "processes", "n_jobs", "2", NULL};
    static const char *const spawn[] = {"backend", "processes", "n_jobs", "2",
                                        "start_method", "spawn", NULL};
    static const char *const forkserver[] = {"backend", "processes", "n_jobs", "2",
                                             "start_method", "forkserver", NULL};
    const char *const *backends[] = {threads, sequential, fork_, spawn, forkserver};
    const char *labels[] = {"threads", "sequential", "processes (fork)", "processes (spawn)",
                            "processes (forkserver)"};
#endif
    const size_t n_backends = sizeof backends / sizeof backends[0];
    for (size_t b = 0; b < n_backends; b++) {
        for (int s = 0; s < STYLES; s++) {
            snprintf(verdict, sizeof verdict, "ok");
            int bad = run_style((enum style)s, backends[b]);
            /* Only pj_parallel_for may be refused, and only where workers do not share the
             * caller's function addresses. */
            int shares_addresses = strstr(labels[b], "spawn") == NULL &&
                                   strstr(labels[b], "forkserver") == NULL &&
                                   strcmp(labels[b], "mpi") != 0;
            if (!bad && strncmp(verdict, "unsupported", 11) == 0 && (s != FOR || shares_addresses)) {
                bad = 1;
            }
            failures += bad;
            printf("%-22s %-22s %s\n", labels[b], style_names[s], verdict);
        }
    }
    printf(failures == 0 ? "style matrix: every cell right\n" : "style matrix: %d wrong cell(s)\n",
           failures);
    return failures == 0 ? 0 : 1;
}
