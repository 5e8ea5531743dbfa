/*
 * The C side of the Go wrapper: pj's callbacks (task and producer) as static C functions that forward
 * to the Go functions exported in export.go. A call's Go state crosses C only as a runtime/cgo.Handle,
 * an integer; the integer <-> void * casts happen here, in C, so no Go pointer is ever stored in C
 * memory and `go vet` has no unsafe.Pointer conversion to question.
 */
#ifndef PJGO_SHIM_H
#define PJGO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#include "pj_header.h"

/* A streaming call's producer state: the handle, and the buffer the current task argument (an input
 * range [lo, hi)) is written to. pj copies the argument before calling the producer again. */
typedef struct pjgo_producer {
    uintptr_t handle;
    uint64_t range[2];
} pjgo_producer_t;

/* Before the call, pj_parallel_expect(parallel, n_items, items_per_task) when items_per_task > 0:
 * in the same cgo call as the call it announces, so no other call can come in between. */

/* pj_parallel_map with the Go task and producer trampolines; `handle` identifies the call's Go state. */
pj_status pjgo_map(pj_parallel_t *parallel, uintptr_t handle, size_t n_items, size_t items_per_task,
                   pj_results_t **results_out, pj_error_t **error_out);

/* pj_parallel_imap with the Go trampolines. On success `*producer_out` receives the producer state
 * (free it with pjgo_producer_free once the call is over, i.e. after PJ_STATUS_DONE, an error or
 * pj_parallel_free). */
pj_status pjgo_imap(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                    size_t items_per_task, pjgo_producer_t **producer_out, pj_error_t **error_out);

/* Frees a producer state from pjgo_imap. NULL is a no-op. */
void pjgo_producer_free(pjgo_producer_t *producer);

/* Named functions (MapNamed): one C task function, registered with pj_register, runs every Go
 * function registered with pj.Register. A task's argument starts with the Go function's name; the
 * task takes no userdata, as start_method "spawn" requires. */

/* pj_register(name, the named-task trampoline). */
pj_status pjgo_register(const char *name, pj_error_t **error_out);

/* pj_worker_main_if_requested(0, NULL). In a spawned worker it never returns; the first task the
 * worker runs first gives SIGSEGV, SIGBUS and SIGFPE back to the Go runtime (pj's crash handler
 * takes them when the worker starts, and Go needs them to turn faults into run-time panics). */
int pjgo_worker_main(void);

/* pj_parallel_map of the named-task trampoline (no userdata) over the arguments the Go producer
 * of the call behind `handle` encodes, one input per task. */
pj_status pjgo_map_named(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                         pj_results_t **results_out, pj_error_t **error_out);

/* pj_parallel_imap of the named-task trampoline (StreamNamed): as pjgo_map_named, with the results
 * read by pj_parallel_next. */
pj_status pjgo_imap_named(pj_parallel_t *parallel, uintptr_t handle, size_t n_items,
                          pj_error_t **error_out);

/* pj_config_set_progress with a trampoline that reports to the call behind `handle`. */
pj_status pjgo_set_progress(pj_config_t *config, uintptr_t handle, pj_error_t **error_out);

/* pj_config_set_progress with a trampoline that reports to the named call whose handle is in
 * `*slot` at the time (none while it holds 0): the progress callback of an Executor's pj executor,
 * set once for all its calls. `slot` is C memory that outlives the pj executor made from `config`. */
pj_status pjgo_set_progress_slot(pj_config_t *config, const uintptr_t *slot, pj_error_t **error_out);

/* Ends the call in flight on `parallel`, if any (a stream its reader left): pj_parallel_cancel, then
 * pj_parallel_next until the call is over (a call with on_error "raise": its first failure ends it);
 * the executor is then ready for another call. On the thread that drives the call. */
void pjgo_abandon(pj_parallel_t *parallel);

#endif /* PJGO_SHIM_H */
