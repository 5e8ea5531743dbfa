// The C trampolines of the Go wrapper; see shim.h.

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

pj_status pjgo_map(pj_parallel_t *parallel, uintptr_t handle, pj_results_t **results_out,
                   pj_error_t **error_out) {
    // pj_parallel_map is synchronous: the producer state can live on this stack frame.
    pjgo_producer_t producer = {.handle = handle};
    return pj_parallel_map(parallel, pjgo_task, (void *)handle, pjgo_produce, &producer, results_out,
                           error_out);
}

pj_status pjgo_imap(pj_parallel_t *parallel, uintptr_t handle, pjgo_producer_t **producer_out,
                    pj_error_t **error_out) {
    pjgo_producer_t *producer = calloc(1, sizeof *producer);
    if (producer == NULL) {
        return PJ_STATUS_IO;  // no error object: the Go side describes the status
    }
    producer->handle = handle;
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
