// The C trampolines of the Go wrapper; see shim.h.

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"
#include "_cgo_export.h"

// A task's argument is an input range [lo, hi) as two native uint64_t; the task's userdata is the call's
// cgo.Handle.
static int32_t pjgo_task(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    uint64_t range[2];
    if (arg == NULL || arg_len != sizeof range) {
        pj_out_error(out, "pj (Go): malformed task argument");
        return -1;
    }
    memcpy(range, arg, sizeof range);
    return pjgoTask((uintptr_t)userdata, range[0], range[1], out);
}

static int32_t pjgo_produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    pjgo_producer_t *producer = userdata;
    int32_t more = pjgoProduce(producer->handle, &producer->range[0], &producer->range[1]);
    if (more == 1) {
        *arg_out = (const uint8_t *)producer->range;
        *len_out = sizeof producer->range;
    }
    return more;
}

/* Announces the coming call's size; its status is the call's to report (busy, inherited). */
static void pjgo_expect(pj_parallel_t *parallel, size_t n_items, size_t items_per_task) {
    if (items_per_task > 0) {
        (void)pj_parallel_expect(parallel, n_items, items_per_task, NULL);
    }
}

pj_status pjgo_map(pj_parallel_t *parallel, uintptr_t handle, size_t n_items, size_t items_per_task,
                   pj_results_t **results_out, pj_error_t **error_out) {
    // pj_parallel_map is synchronous: the producer state can live on this stack frame.
    pjgo_producer_t producer = {.handle = handle};
    pjgo_expect(parallel, n_items, items_per_task);
    return pj_parallel_map(parallel, pjgo_task, (void *)handle, pjgo_produce, &producer, results_out,
                           error_out);
}

pj_status pjgo_imap(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                    size_t items_per_task, pjgo_producer_t **producer_out, pj_error_t **error_out) {
    pjgo_producer_t *producer = calloc(1, sizeof *producer);
    if (producer == NULL) {
        return PJ_STATUS_IO;  // no error object: the Go side describes the status
    }
    producer->handle = handle;
    pjgo_expect(parallel, n_items, items_per_task);
    pj_status status =
        pj_parallel_imap(parallel, pjgo_task, (void *)handle, pjgo_produce, producer, error_out);
    if (status != PJ_STATUS_OK) {
        free(producer);
        return status;
    }
    *producer_out = producer;
    return status;
}

void pjgo_producer_free(pjgo_producer_t *producer) { free(producer); }

// The signals the Go runtime turns into run-time panics (nil dereferences, division by zero...).
static const int go_fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE};
#define GO_FAULT_SIGNALS (sizeof go_fault_signals / sizeof go_fault_signals[0])

// The Go runtime's handlers of those signals, saved before pj_worker_main_if_requested, and whether
// they are still to be put back (1 only in a process that became a spawned worker: the flag is
// cleared when pj_worker_main_if_requested returns, which it does only in a process that is not).
static struct sigaction go_fault_actions[GO_FAULT_SIGNALS];
static int go_actions_pending;

int pjgo_worker_main(void) {
    int saved = 1;
    for (size_t i = 0; i < GO_FAULT_SIGNALS; i++) {
        saved = saved && sigaction(go_fault_signals[i], NULL, &go_fault_actions[i]) == 0;
    }
    __atomic_store_n(&go_actions_pending, saved, __ATOMIC_RELEASE);
    int rc = pj_worker_main_if_requested(0, NULL);
    __atomic_store_n(&go_actions_pending, 0, __ATOMIC_RELEASE);
    return rc;
}

// pj's named-task function: the argument holds the Go function's name and its encoded input. In a
// spawned worker, the first task also gives the fault signals back to the Go runtime first.
static int32_t pjgo_named_task(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    (void)userdata;
    int first = __atomic_exchange_n(&go_actions_pending, 0, __ATOMIC_ACQ_REL);
    if (first) {
        for (size_t i = 0; i < GO_FAULT_SIGNALS; i++) {
            sigaction(go_fault_signals[i], &go_fault_actions[i], NULL);
        }
    }
    return pjgoNamedTask((uint8_t *)arg, arg_len, out, first);
}

pj_status pjgo_register(const char *name, pj_error_t **error_out) {
    return pj_register(name, pjgo_named_task, error_out);
}

static int32_t pjgo_named_produce(void *userdata, const uint8_t **arg_out, size_t *len_out) {
    uint8_t *arg = NULL;
    size_t len = 0;
    int32_t more = pjgoNamedProduce((uintptr_t)userdata, &arg, &len);
    if (more == 1) {
        *arg_out = arg;
        *len_out = len;
    }
    return more;
}

pj_status pjgo_map_named(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                         pj_results_t **results_out, pj_error_t **error_out) {
    pjgo_expect(parallel, n_items, 1);
    return pj_parallel_map(parallel, pjgo_named_task, NULL, pjgo_named_produce, (void *)handle,
                           results_out, error_out);
}

pj_status pjgo_imap_named(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                          pj_error_t **error_out) {
    pjgo_expect(parallel, n_items, 1);
    return pj_parallel_imap(parallel, pjgo_named_task, NULL, pjgo_named_produce, (void *)handle,
                            error_out);
}

static void pjgo_progress(void *userdata, uint64_t completed, int64_t total, double elapsed) {
    (void)total;
    (void)elapsed;
    pjgoNamedProgress((uintptr_t)userdata, completed);
}

pj_status pjgo_set_progress(pj_config_t *config, uintptr_t handle, pj_error_t **error_out) {
    return pj_config_set_progress(config, pjgo_progress, (void *)handle, error_out);
}

static void pjgo_progress_slot(void *userdata, uint64_t completed, int64_t total, double elapsed) {
    (void)total;
    (void)elapsed;
    uintptr_t handle = *(const uintptr_t *)userdata;
    if (handle != 0) {
        pjgoNamedProgress(handle, completed);
    }
}

pj_status pjgo_set_progress_slot(pj_config_t *config, const uintptr_t *slot, pj_error_t **error_out) {
    return pj_config_set_progress(config, pjgo_progress_slot, (void *)slot, error_out);
}

void pjgo_abandon(pj_parallel_t *parallel) {
    (void)pj_parallel_cancel(parallel);
    pj_status status;
    do {
        size_t index = 0, len = 0;
        const uint8_t *data = NULL;
        pj_error_t *error = NULL;
        status = pj_parallel_next(parallel, &index, &data, &len, &error);
        pj_error_free(error);
    } while (status == PJ_STATUS_OK);  // on_error "raise": any other status ends the call
}
