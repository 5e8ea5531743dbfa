/*
 * Stopping a call early, two ways:
 *
 * 1. pj_parallel_cancel from another thread (it is also async-signal-safe: a signal handler may
 *    call it). The blocked call returns PJ_STATUS_CANCELLED, queued tasks never start, and the
 *    executor stays usable.
 * 2. handle_sigint=true: while a call blocks, a SIGINT (Ctrl-C) cancels it instead of killing the
 *    program, as KeyboardInterrupt stops a joblib call. Here the program sends SIGINT to itself.
 *    pj's handler is there only while the call blocks; the host's own action is put back after.
 *
 * Each call has 100 tasks of up to 30 s: without the cancellation they would run for 25 minutes.
 * A long task polls pj_out_cancelled(out) and returns as soon as it gives 1: this is what makes a
 * cancel prompt on threads, where a running callback cannot be interrupted (worker processes
 * running a task are killed).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, kill, sigaction under -std=c11 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pj.h"

enum { TASKS = 100 };

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

static void nap_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* The task: says it has started (the flag userdata points to), then works for up to 30 s in small
 * steps, stopping early once the call is cancelled. */
static int32_t long_task(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)arg;
    (void)arg_len;
    atomic_int *started = userdata;
    atomic_store(started, 1);
    for (int step = 0; step < 3000 && !pj_out_cancelled(out); step++) {
        nap_ms(10);
    }
    return 0;
}

/* The producer: TASKS empty arguments. */
static int32_t produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    int *left = userdata;
    if (*left == 0) {
        return 0;
    }
    (*left)--;
    *arg_out = NULL; /* allowed with a length of 0 */
    *len_out = 0;
    return 1;
}

/* What the helper thread does once a task runs. */
struct helper {
    atomic_int *started;
    pj_parallel_t *par;
    int send_sigint; /* 0: pj_parallel_cancel(par); 1: SIGINT to this process */
};

static void *helper_main(void *arg) {
    struct helper *h = arg;
    /* Waits until a task runs, so that the call is surely in flight (at most 60 s). */
    for (int i = 0; i < 60000 && !atomic_load(h->started); i++) {
        nap_ms(1);
    }
    if (h->send_sigint) {
        kill(getpid(), SIGINT);
    } else {
        pj_parallel_cancel(h->par);
    }
    return NULL;
}

/* Runs TASKS long tasks with pj_parallel_map while a helper thread stops the call; prints the
 * status and the message the call ended with. */
static void run_and_stop(const char *label, pj_parallel_t *par, atomic_int *started, int send_sigint) {
    atomic_store(started, 0);
    struct helper h = {started, par, send_sigint};
    pthread_t thread;
    if (pthread_create(&thread, NULL, helper_main, &h) != 0) {
        exit(1);
    }
    int left = TASKS;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    pj_status st = pj_parallel_map(par, long_task, started, produce, &left, &res, &err);
    pthread_join(thread, NULL);
    printf("%s: %s\n  %s\n", label, pj_status_str(st), pj_error_message(err));
    pj_error_free(err);
    pj_results_free(res); /* NULL here: results are written only on success */
}

/* A trivial task, to show that the executor still works after a cancel. */
static int32_t answer(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    (void)arg;
    (void)arg_len;
    int32_t value = 42;
    return pj_out_set(out, (const uint8_t *)&value, sizeof value) == PJ_STATUS_OK ? 0 : 1;
}

static int32_t run_answer(pj_parallel_t *par) {
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    check("pj_parallel_submit", pj_parallel_submit(par, answer, NULL, NULL, 0, &err), err);
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);
    const uint8_t *data;
    size_t len;
    int32_t value = 0;
    if (pj_results_get(res, 0, &data, &len) == PJ_STATUS_OK && len == sizeof value) {
        memcpy(&value, data, sizeof value);
    }
    pj_results_free(res);
    return value;
}

static pj_parallel_t *executor(const char *backend, int handle_sigint) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("backend", pj_config_set(cfg, "backend", backend, &err), err);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("batch_size", pj_config_set(cfg, "batch_size", "1", &err), err);
    check("handle_sigint", pj_config_set(cfg, "handle_sigint", handle_sigint ? "true" : "false", &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);
    pj_config_free(cfg);
    return par;
}

int main(void) {
    /* 1. Threads: the tasks see the caller's memory, so the flag can be an ordinary variable. */
    atomic_int started_flag = 0;
    pj_parallel_t *par = executor("threads", 0);
    run_and_stop("pj_parallel_cancel from another thread", par, &started_flag, 0);
    printf("the executor still works: %d\n", (int)run_answer(par));
    pj_parallel_free(par);

    /* 2. Worker processes (the default backend): the flag must live in shared memory to be seen
     * from the workers. */
    pj_shared_t *shared = NULL;
    pj_error_t *err = NULL;
    check("pj_shared_new", pj_shared_new(NULL, sizeof(atomic_int), &shared, &err), err);
    atomic_int *started = (atomic_int *)pj_shared_data(shared); /* zeroed bytes: 0 */
    struct sigaction before, after;
    sigaction(SIGINT, NULL, &before);
    par = executor("processes", 1);
    run_and_stop("SIGINT with handle_sigint=true", par, started, 1);
    sigaction(SIGINT, NULL, &after);
    printf("still running, SIGINT action restored: %s\n", after.sa_handler == before.sa_handler ? "yes" : "no");
    printf("the executor still works: %d\n", (int)run_answer(par));
    pj_parallel_free(par);
    pj_shared_free(shared);
    return 0;
}
