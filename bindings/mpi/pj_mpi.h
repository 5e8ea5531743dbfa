/*
 * pj_mpi: pj's MPI backend (`backend` "mpi") for programs run under mpirun.
 *
 * The same program runs on every rank. Rank 0 runs your code and dispatches pj's tasks; every
 * other rank serves them with the functions it registered. libpj itself never links MPI: this
 * small shim (libpj_mpi.a, CMake target pj::mpi, built with the MPI compiler wrappers only when
 * MPI is found) hands pj the few MPI operations it needs, on pj's own communicator.
 *
 *     int main(int argc, char **argv) {
 *         pj_register("square", square, NULL);          // every rank, same functions, same order
 *         if (pj_mpi_main(&argc, &argv) != 0) return 1; // worker ranks never return from here
 *         // rank 0 only from here on
 *         pj_config_t *cfg; pj_config_new(&cfg);
 *         pj_config_set(cfg, "backend", "mpi", &err);
 *         ... pj_parallel_new, pj_parallel_submit_named(par, "square", &x, sizeof x, &err), ...
 *     }
 *
 *     $ mpirun -n 4 ./program          # rank 0 dispatches, ranks 1..3 run the tasks
 *
 * See examples/mpi/mpi_squares.c.
 */
#ifndef PJ_MPI_H
#define PJ_MPI_H

#include "pj.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Starts pj's MPI backend. Call it from `main` on every rank, after the program's `pj_register`
 * calls (every rank must register the same functions under the same names in the same order:
 * a rank whose registry differs serves nothing and exits with status 2 at the end, and calls on
 * rank 0 fail with PJ_STATUS_IO saying that the ranks "registered other task functions"), and
 * before anything else uses MPI unless the program initializes MPI itself (see below). `argc`
 * and `argv` are `main`'s, passed on to MPI_Init_thread (both may be NULL).
 *
 * What it does:
 * - Initializes MPI unless the program already did, asking for MPI_THREAD_MULTIPLE. At least
 *   MPI_THREAD_SERIALIZED is required (on rank 0, pj's dispatcher thread calls MPI while the main
 *   thread does not); with less it fails.
 * - Duplicates MPI_COMM_WORLD into pj's own communicator (MPI_ERRORS_RETURN set on it), so pj's
 *   messages never mix with the program's. This is collective: every rank must call it.
 * - Rank 0: makes backend "mpi" available (pj_mpi_attach) and returns 0. At exit (an atexit
 *   handler; or earlier, when the program calls MPI_Finalize itself) pj tells the other ranks to
 *   leave (pj_mpi_detach) and frees its communicator; then, when this function initialized MPI,
 *   the atexit handler calls MPI_Finalize, so the program must not. Do not end rank 0 with
 *   _exit() or a signal: the other ranks would wait for it until mpirun ends the job.
 * - Every other rank: runs tasks for rank 0 (pj_mpi_serve; each batch in a child process, so a
 *   crashing task is reported to rank 0 instead of ending the job: a forked child, or a copy of
 *   the program spawned as a worker when it called pj_worker_main_if_requested before this
 *   function, as the Go binding's pj.MPIMain does) until rank 0
 *   exits, then frees pj's communicator, finalizes MPI (also when the program initialized it:
 *   these ranks never return to it) and calls exit() with the status pj_mpi_serve returned (0,
 *   or non-zero when the rank could not serve). It never returns.
 *
 * With MPI_COMM_WORLD of size 1, rank 0 runs every task itself, sequentially.
 *
 * A rank that dies: by default Open MPI ends the whole job. Under `mpirun --enable-recovery` the
 * job goes on; pj gives the silent rank up after 10 s (its batch fails with
 * PJ_STATUS_WORKER_DIED) and, since MPI_Finalize would then wait for the dead rank forever, every
 * rank leaves at the end without finalizing MPI.
 *
 * The program's own MPI use: a program that initializes MPI itself (MPI_Init_thread with
 * MPI_THREAD_MULTIPLE) may use it on every rank before calling pj_mpi_main. Afterwards only rank 0
 * runs the program, so nothing involving the other ranks (MPI_COMM_WORLD traffic, collectives)
 * can be answered; rank-local MPI (MPI_COMM_SELF) remains. And since pj's dispatcher thread may
 * be inside MPI at any time until exit, rank 0 may make MPI calls only when MPI provided
 * MPI_THREAD_MULTIPLE (MPI_Query_thread tells); with MPI_THREAD_SERIALIZED it must make none.
 *
 * Returns 0 on rank 0 on success. On failure it returns a negative value (on any rank) after
 * printing why on stderr (MPI cannot start or gives too low a thread level, MPI was already
 * finalized, pj_mpi_main was called before, or pj refused to attach): the program should then
 * exit with a non-zero status, which makes mpirun end the other ranks.
 */
int pj_mpi_main(int *argc, char ***argv);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PJ_MPI_H */
