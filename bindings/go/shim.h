/*
 * The C side of the Go wrapper: pj's callbacks (task and producer) as static C functions that forward
 * to the Go functions exported in export.go. A call's Go state crosses C only as a runtime/cgo.Handle,
 * an integer; the integer <-> void * casts happen here, in C, so no Go pointer is ever stored in C
 * memory and `go vet` has no unsafe.Pointer conversion to question.
 */
#ifndef PJGO_SHIM_H
#define PJGO_SHIM_H

#include <stdint.h>

#include "pj.h"

/* A streaming call's producer state: the handle, and the buffer the current task argument (an input
 * range [lo, hi)) is written to. pj copies the argument before calling the producer again. */
typedef struct pjgo_producer {
    uintptr_t handle;
    uint64_t range[2];
} pjgo_producer_t;

/* pj_parallel_map with the Go task and producer trampolines; `handle` identifies the call's Go state. */
pj_status pjgo_map(pj_parallel_t *parallel, uintptr_t handle, pj_results_t **results_out,
                   pj_error_t **error_out);

/* pj_parallel_imap with the Go trampolines. On success `*producer_out` receives the producer state
 * (free it with pjgo_producer_free once the call is over, i.e. after PJ_STATUS_DONE, an error or
 * pj_parallel_free). */
pj_status pjgo_imap(pj_parallel_t *parallel, uintptr_t handle, pjgo_producer_t **producer_out,
                    pj_error_t **error_out);

/* Frees a producer state from pjgo_imap. NULL is a no-op. */
void pjgo_producer_free(pjgo_producer_t *producer);

#endif /* PJGO_SHIM_H */
