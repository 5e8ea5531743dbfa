/*
 * A smoke test of pj's C ABI, as a C program sees it. Built twice: against libpj.so and libpj.a.
 * Exits 0 when every check passes; each failed check prints its line.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pj.h"

static int checks, failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        checks++;                                                                     \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

/* Checks that a call (evaluated once) failed with `expected`, that `err` agrees, and frees `err`. */
#define CHECK_FAILED(call, expected, err)                                \
    do {                                                                 \
        pj_status got_ = (call);                                         \
        CHECK(got_ == (expected));                                       \
        CHECK((err) != NULL);                                            \
        CHECK(pj_error_status(err) == (expected));                       \
        if (got_ != (expected) && (err) != NULL) {                       \
            fprintf(stderr, "  got: %s\n", pj_error_report(err));        \
        }                                                                \
        pj_error_free(err);                                              \
        (err) = NULL;                                                    \
    } while (0)

static int contains(const char *haystack, const char *needle) {
    return haystack != NULL && strstr(haystack, needle) != NULL;
}

/* Whether `message` quotes `value` as "value", 'value' or `value`. */
static int quotes(const char *message, const char *value) {
    static const char *marks[][2] = {{"\"", "\""}, {"'", "'"}, {"`", "`"}};
    char quoted[128];
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        snprintf(quoted, sizeof quoted, "%s%s%s", marks[i][0], value, marks[i][1]);
        if (contains(message, quoted)) {
            return 1;
        }
    }
    return 0;
}

static pj_config_t *new_config(const char *n_jobs, const char *backend) {
    pj_config_t *cfg = NULL;
    CHECK(pj_config_new(&cfg) == PJ_STATUS_OK && cfg != NULL);
    if (n_jobs) {
        CHECK(pj_config_set(cfg, "n_jobs", n_jobs, NULL) == PJ_STATUS_OK);
    }
    if (backend) {
        CHECK(pj_config_set(cfg, "backend", backend, NULL) == PJ_STATUS_OK);
    }
    return cfg;
}

static pj_parallel_t *new_parallel(const char *n_jobs, const char *backend) {
    pj_config_t *cfg = new_config(n_jobs, backend);
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    pj_status st = pj_parallel_new(cfg, &par, &err);
    CHECK(st == PJ_STATUS_OK && par != NULL && err == NULL);
    pj_error_free(err);
    pj_config_free(cfg); /* the executor keeps a copy */
    return par;
}

/* ---- tasks ---------------------------------------------------------------------------------- */

struct counters {
    atomic_long calls;
    atomic_long busy;
    int64_t fail_at; /* -1: never fail */
    pj_parallel_t *self; /* used by the re-entrancy task */
};

/* Reads a uint64 argument, writes 3 * arg + 1; fails at counters->fail_at with code 7. */
static int32_t task_affine(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    struct counters *c = userdata;
    uint64_t x;
    atomic_fetch_add(&c->calls, 1);
    if (arg_len != sizeof x) {
        pj_out_error(out, "bad argument length");
        return 99;
    }
    memcpy(&x, arg, sizeof x);
    if (c->fail_at >= 0 && x == (uint64_t)c->fail_at) {
        char message[64];
        snprintf(message, sizeof message, "bad input %llu", (unsigned long long)x);
        CHECK(pj_out_error(out, message) == PJ_STATUS_OK);
        return 7;
    }
    uint64_t y = 3 * x + 1;
    return pj_out_set(out, (const uint8_t *)&y, sizeof y) == PJ_STATUS_OK ? 0 : 98;
}

/* Produces 0, 1, ..., n - 1 as uint64 arguments; returns `fail` (if non-zero) at item `fail_at`. */
struct range {
    uint64_t next, n, fail_at;
    int32_t fail;
    uint64_t buffer;
};

static int32_t produce_range(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    struct range *r = userdata;
    if (r->fail != 0 && r->next == r->fail_at) {
        return r->fail;
    }
    if (r->next == r->n) {
        return 0;
    }
    r->buffer = r->next++; /* one reused buffer: pj copies before calling again */
    *arg_out = (const uint8_t *)&r->buffer;
    *len_out = sizeof r->buffer;
    return 1;
}

static void check_affine_results(const pj_results_t *res, size_t n) {
    CHECK(pj_results_len(res) == n);
    size_t wrong = 0;
    for (size_t i = 0; i < pj_results_len(res); i++) {
        const uint8_t *data = NULL;
        size_t len = 0;
        uint64_t y = 0;
        if (pj_results_get(res, i, &data, &len) != PJ_STATUS_OK || len != sizeof y) {
            wrong++;
            continue;
        }
        memcpy(&y, data, sizeof y);
        wrong += y != 3 * (uint64_t)i + 1;
    }
    CHECK(wrong == 0);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_version_and_statuses(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", PJ_VERSION_MAJOR, PJ_VERSION_MINOR, PJ_VERSION_PATCH);
    CHECK(strcmp(pj_version(), expected) == 0);
    CHECK(PJ_STATUS_OK == 0 && PJ_STATUS_PANIC == 11);
    for (uint32_t s = PJ_STATUS_OK; s <= PJ_STATUS_PANIC; s++) {
        CHECK(strncmp(pj_status_str(s), "PJ_STATUS_", 10) == 0);
    }
    CHECK(contains(pj_status_str(PJ_STATUS_TASK_FAILED), "PJ_STATUS_TASK_FAILED"));
    CHECK(strcmp(pj_status_str(1000), "unknown pj_status") == 0);
    CHECK(pj_cpu_count() >= 1);
}

static void test_many_tasks_in_order(const char *backend) {
    enum { N = 10000 };
    int threads = strcmp(backend, "threads") == 0; /* forked workers count in their own memory */
    pj_config_t *cfg = new_config(NULL, backend);
    CHECK(pj_config_set_n_jobs(cfg, 2, NULL) == PJ_STATUS_OK);
    CHECK(pj_effective_n_jobs(cfg) == 2);
    pj_parallel_t *par = NULL;
    CHECK(pj_parallel_new(cfg, &par, NULL) == PJ_STATUS_OK);
    pj_config_free(cfg);

    struct counters c = {0, 0, -1, NULL};
    pj_error_t *err = NULL;
    pj_status st = PJ_STATUS_OK;
    for (uint64_t i = 0; i < N && st == PJ_STATUS_OK; i++) {
        st = pj_parallel_submit(par, task_affine, &c, (const uint8_t *)&i, sizeof i, &err);
    }
    CHECK(st == PJ_STATUS_OK && err == NULL);
    pj_results_t *res = NULL;
    CHECK(pj_parallel_collect(par, &res, &err) == PJ_STATUS_OK && err == NULL);
    check_affine_results(res, N);
    CHECK(!threads || atomic_load(&c.calls) == N);
    pj_results_free(res);

    /* The same executor again, with the producer style: the pool is reused. */
    struct range r = {0, N, 0, 0, 0};
    res = NULL;
    CHECK(pj_parallel_map(par, task_affine, &c, produce_range, &r, &res, &err) == PJ_STATUS_OK);
    check_affine_results(res, N);
    CHECK(!threads || atomic_load(&c.calls) == 2 * N);
    pj_results_free(res);

    /* A collect without a call returns an empty result set. */
    res = NULL;
    CHECK(pj_parallel_collect(par, &res, NULL) == PJ_STATUS_OK && pj_results_len(res) == 0);
    pj_results_free(res);
    pj_parallel_free(par);
}

static void test_task_failure(const char *backend, const char *n_jobs) {
    enum { N = 10000, BAD = 4321 };
    pj_parallel_t *par = new_parallel(n_jobs, backend);
    struct counters c = {0, 0, BAD, NULL};
    pj_error_t *err = NULL;
    pj_status st = PJ_STATUS_OK;
    for (uint64_t i = 0; i < N; i++) {
        st = pj_parallel_submit(par, task_affine, &c, (const uint8_t *)&i, sizeof i, &err);
        if (st != PJ_STATUS_OK) {
            break; /* fail fast: submit reports a failure as soon as it is seen */
        }
    }
    if (st != PJ_STATUS_OK) {
        CHECK(st == PJ_STATUS_TASK_FAILED && pj_error_task_index(err) == BAD);
        pj_error_free(err);
        err = NULL;
    }
    pj_results_t *res = (pj_results_t *)&c; /* a sentinel: must stay untouched on failure */
    st = pj_parallel_collect(par, &res, &err);
    CHECK(st == PJ_STATUS_TASK_FAILED);
    CHECK(res == (pj_results_t *)&c);
    CHECK(pj_error_status(err) == PJ_STATUS_TASK_FAILED);
    CHECK(pj_error_task_index(err) == BAD);
    CHECK(pj_error_callback_code(err) == 7);
    CHECK(contains(pj_error_message(err), "bad input 4321"));
    CHECK(contains(pj_error_report(err), "task index: 4321"));
    CHECK(contains(pj_error_report(err), "bad input 4321"));
    pj_error_free(err);
    err = NULL;

    /* The same failure through map; the producer is not called again after it. */
    struct range r = {0, N, 0, 0, 0};
    res = NULL;
    st = pj_parallel_map(par, task_affine, &c, produce_range, &r, &res, &err);
    CHECK(st == PJ_STATUS_TASK_FAILED && res == NULL);
    CHECK(pj_error_task_index(err) == BAD && pj_error_callback_code(err) == 7);
    pj_error_free(err);
    err = NULL;

    /* A failing producer fails the call, and its message quotes the code. */
    struct range bad_producer = {0, 100, 50, -2, 0};
    c.fail_at = -1;
    st = pj_parallel_map(par, task_affine, &c, produce_range, &bad_producer, &res, &err);
    CHECK(st == PJ_STATUS_TASK_FAILED && res == NULL);
    CHECK(contains(pj_error_message(err), "-2"));
    pj_error_free(err);
    err = NULL;

    /* After a failed call the executor is ready for a new one. */
    for (uint64_t i = 0; i < 3; i++) {
        CHECK(pj_parallel_submit(par, task_affine, &c, (const uint8_t *)&i, sizeof i, NULL) == PJ_STATUS_OK);
    }
    CHECK(pj_parallel_collect(par, &res, NULL) == PJ_STATUS_OK);
    check_affine_results(res, 3);
    pj_results_free(res);
    pj_parallel_free(par);
}

/* pj_config_set(key, value) must fail with INVALID_ARGUMENT and a message that quotes `quoted`. */
static void expect_rejected(const char *key, const char *value, const char *quoted) {
    pj_config_t *cfg = new_config(NULL, NULL);
    pj_error_t *err = NULL;
    pj_status st = pj_config_set(cfg, key, value, &err);
    CHECK(st == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_error_status(err) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_error_task_index(err) == -1);
    if (!quotes(pj_error_message(err), quoted)) {
        CHECK(!"the message quotes the bad value");
        fprintf(stderr, "  %s=%s: message: %s\n", key, value, pj_error_message(err));
    }
    pj_error_free(err);
    pj_config_free(cfg);
}

static void test_config_validation(void) {
    expect_rejected("pre_dispatch", "import os", "import os");
    expect_rejected("max_nbytes", "12Q", "12Q");
    expect_rejected("n_jobs", "0", "0");
    expect_rejected("mmap_mode", "x", "x");
    expect_rejected("backend", "nope", "nope");
    expect_rejected("batch_size", "0", "0");
    expect_rejected("frobnicate", "1", "frobnicate");

    /* Every joblib keyword, in joblib's spellings. */
    static const char *accepted[][2] = {
        {"n_jobs", "-1"},           {"n_jobs", "none"},        {"backend", "threading"},
        {"backend", "sequential"},  {"backend", "loky"},       {"prefer", "threads"},
        {"require", "sharedmem"},   {"verbose", "0"},          {"timeout", "2.5"},
        {"timeout", "none"},        {"pre_dispatch", "2*n_jobs"}, {"pre_dispatch", "all"},
        {"batch_size", "auto"},     {"batch_size", "8"},       {"temp_folder", "/tmp"},
        {"max_nbytes", "1M"},       {"max_nbytes", "none"},    {"mmap_mode", "r+"},
        {"return_as", "generator_unordered"}, {"keep_workers", "true"},
    };
    pj_config_t *cfg = new_config(NULL, NULL);
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        pj_error_t *err = NULL;
        pj_status st = pj_config_set(cfg, accepted[i][0], accepted[i][1], &err);
        if (st != PJ_STATUS_OK) {
            CHECK(!"a joblib spelling is accepted");
            fprintf(stderr, "  %s=%s: %s\n", accepted[i][0], accepted[i][1], pj_error_message(err));
        }
        pj_error_free(err);
    }
    pj_config_free(cfg);

    /* n_jobs follows joblib's formula; a rejected value leaves the config unchanged. */
    cfg = new_config("-1", NULL);
    CHECK(pj_effective_n_jobs(cfg) == pj_cpu_count());
    CHECK(pj_config_set(cfg, "n_jobs", "3", NULL) == PJ_STATUS_OK && pj_effective_n_jobs(cfg) == 3);
    CHECK(pj_config_set(cfg, "n_jobs", "0", NULL) == PJ_STATUS_INVALID_ARGUMENT && pj_effective_n_jobs(cfg) == 3);
    CHECK(pj_config_set(cfg, "backend", "sequential", NULL) == PJ_STATUS_OK && pj_effective_n_jobs(cfg) == 1);
    CHECK(pj_effective_n_jobs(NULL) == 1);

    /* The typed setters validate too. */
    CHECK(pj_config_set_n_jobs(cfg, 0, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_batch_size(cfg, 0, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_batch_size(cfg, 16, NULL) == PJ_STATUS_OK);
    CHECK(pj_config_set_verbose(cfg, -1, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_timeout(cfg, 0.0, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_timeout(cfg, -1.0, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_timeout(cfg, NAN, NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set_timeout(cfg, INFINITY, NULL) == PJ_STATUS_OK);
    CHECK(pj_config_set_backend(cfg, "nope", NULL) == PJ_STATUS_INVALID_ARGUMENT);
    CHECK(pj_config_set(cfg, "n_jobs", "\xff", NULL) == PJ_STATUS_INVALID_ARGUMENT); /* not UTF-8 */
    pj_config_free(cfg);
}

/* Every spelling of the process backend works, and it is the default, as in joblib. */
static void test_process_backend(void) {
    static const char *names[] = {"processes", "loky", "multiprocessing", NULL};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        pj_parallel_t *par = new_parallel("2", names[i]);
        struct counters c = {0, 0, -1, NULL};
        pj_results_t *res = NULL;
        for (uint64_t x = 0; x < 100; x++) {
            CHECK(pj_parallel_submit(par, task_affine, &c, (const uint8_t *)&x, sizeof x, NULL) == PJ_STATUS_OK);
        }
        CHECK(pj_parallel_collect(par, &res, NULL) == PJ_STATUS_OK);
        check_affine_results(res, 100);
        pj_results_free(res);
        pj_parallel_free(par);
    }
}

/* Runs inside a task: the executor running it is busy; pj_out_* reject NULL arguments. */
static int32_t task_reentrant(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    struct counters *c = userdata;
    (void)arg;
    (void)arg_len;
    atomic_fetch_add(&c->calls, 1);
    pj_error_t *err = NULL;
    if (pj_parallel_submit(c->self, task_affine, c, NULL, 0, &err) == PJ_STATUS_BUSY &&
        pj_error_status(err) == PJ_STATUS_BUSY) {
        atomic_fetch_add(&c->busy, 1);
    }
    pj_error_free(err);
    int ok = pj_out_set(out, NULL, 3) == PJ_STATUS_NULL_ARGUMENT && pj_out_error(out, NULL) == PJ_STATUS_NULL_ARGUMENT &&
             pj_out_set(out, NULL, 0) == PJ_STATUS_OK && pj_out_alloc(out, 0) != NULL;
    return ok ? 0 : 1;
}

static void test_busy_and_out(const char *n_jobs) {
    pj_parallel_t *par = new_parallel(n_jobs, "threads"); /* counters live in this process */
    struct counters c = {0, 0, -1, par};
    struct range r = {0, 20, 0, 0, 0};
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    CHECK(pj_parallel_map(par, task_reentrant, &c, produce_range, &r, &res, &err) == PJ_STATUS_OK);
    CHECK(atomic_load(&c.calls) == 20 && atomic_load(&c.busy) == 20);
    /* An empty output is a non-NULL pointer with length 0. */
    const uint8_t *data = NULL;
    size_t len = 1;
    CHECK(pj_results_get(res, 19, &data, &len) == PJ_STATUS_OK && data != NULL && len == 0);
    pj_error_free(err);
    pj_results_free(res);
    pj_parallel_free(par);
}

static void test_null_arguments(void) {
    pj_error_t *err = NULL;
    pj_config_t *cfg = new_config(NULL, NULL);
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    struct counters c = {0, 0, -1, NULL};
    uint64_t x = 1;

    CHECK(pj_config_new(NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK_FAILED(pj_config_set(NULL, "n_jobs", "1", &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_config_set(cfg, NULL, "1", &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_config_set(cfg, "n_jobs", NULL, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK(pj_config_set_n_jobs(NULL, 2, NULL) == PJ_STATUS_NULL_ARGUMENT); /* error_out may be NULL */
    CHECK(pj_config_set_backend(cfg, NULL, NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_config_set_batch_size(NULL, 1, NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_config_set_verbose(NULL, 1, NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_config_set_timeout(NULL, 1.0, NULL) == PJ_STATUS_NULL_ARGUMENT);

    CHECK_FAILED(pj_parallel_new(cfg, NULL, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK(pj_parallel_new(NULL, &par, NULL) == PJ_STATUS_OK); /* NULL config: every default */
    CHECK_FAILED(pj_parallel_submit(NULL, task_affine, &c, (const uint8_t *)&x, sizeof x, &err),
                 PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_submit(par, NULL, &c, (const uint8_t *)&x, sizeof x, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_submit(par, task_affine, &c, NULL, 8, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_collect(NULL, &res, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_collect(par, NULL, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_map(par, task_affine, &c, NULL, NULL, &res, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_map(par, NULL, &c, produce_range, NULL, &res, &err), PJ_STATUS_NULL_ARGUMENT, err);
    CHECK_FAILED(pj_parallel_map(NULL, task_affine, &c, produce_range, NULL, &res, &err), PJ_STATUS_NULL_ARGUMENT,
                 err);
    CHECK(res == NULL);

    /* (NULL, 0) is an empty argument: task_affine rejects its length with code 99. */
    pj_status st = pj_parallel_submit(par, task_affine, &c, NULL, 0, NULL);
    CHECK(st == PJ_STATUS_OK || st == PJ_STATUS_TASK_FAILED); /* n_jobs 1 may run it at once */
    CHECK(pj_parallel_collect(par, &res, &err) == PJ_STATUS_TASK_FAILED);
    CHECK(pj_error_callback_code(err) == 99 && contains(pj_error_message(err), "bad argument length"));
    pj_error_free(err);
    err = NULL;

    CHECK(pj_parallel_submit(par, task_affine, &c, (const uint8_t *)&x, sizeof x, NULL) == PJ_STATUS_OK);
    CHECK(pj_parallel_collect(par, &res, NULL) == PJ_STATUS_OK);
    const uint8_t *data = NULL;
    size_t len = 0;
    CHECK(pj_results_get(NULL, 0, &data, &len) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_results_get(res, 0, NULL, &len) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_results_get(res, 0, &data, NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_results_get(res, 1, &data, &len) == PJ_STATUS_INVALID_ARGUMENT && data == NULL && len == 0);
    CHECK(pj_results_len(NULL) == 0);

    CHECK(pj_error_status(NULL) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(strcmp(pj_error_message(NULL), "") == 0 && strcmp(pj_error_report(NULL), "") == 0);
    CHECK(pj_error_task_index(NULL) == -1 && pj_error_callback_code(NULL) == 0);
    CHECK(pj_out_set(NULL, (const uint8_t *)&x, sizeof x) == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_out_alloc(NULL, 8) == NULL);
    CHECK(pj_out_error(NULL, "message") == PJ_STATUS_NULL_ARGUMENT);
    CHECK(pj_out_cancelled(NULL) == 0);
    CHECK(pj_out_truncate(NULL, 0) == PJ_STATUS_NULL_ARGUMENT);

    /* Every _free accepts NULL. */
    pj_config_free(NULL);
    pj_parallel_free(NULL);
    pj_results_free(NULL);
    pj_error_free(NULL);

    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
}

int main(void) {
    test_version_and_statuses();
    test_many_tasks_in_order("threads");
    test_many_tasks_in_order("processes");
    test_task_failure("threads", "2");
    test_task_failure("processes", "2");
    test_task_failure("threads", "1");
    test_task_failure("sequential", NULL);
    test_config_validation();
    test_process_backend();
    test_busy_and_out("1");
    test_busy_and_out("2");
    test_null_arguments();
    printf("abi_smoke: %d passed, %d failed\n", checks - failures, failures);
    return failures != 0;
}
