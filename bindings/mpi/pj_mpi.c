/*
 * The pj_mpi shim: the MPI operations pj's MPI backend uses (pj_mpi_ops_t in pj.h), on pj's own
 * duplicate of MPI_COMM_WORLD, and pj_mpi_main, which starts the backend on every rank. Compiled
 * with the MPI compiler wrappers (CMake: MPI::MPI_C); libpj itself never links MPI.
 */
#include "pj_mpi.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

/* The shim's state: ops.context points here. Static: pj may use the table until exit. */
typedef struct {
    MPI_Comm comm;      /* pj's communicator (a duplicate of MPI_COMM_WORLD) */
    int we_initialized; /* pj_mpi_main called MPI_Init_thread, so it owns MPI_Finalize */
    int detached;       /* rank 0: pj_mpi_detach and MPI_Comm_free are done */
    int lost;           /* rank 0: worker ranks pj gave up for silence (dead) */
} shim_state;

static shim_state state = {MPI_COMM_NULL, 0, 0, 0};
static pj_mpi_ops_t ops;
static int started;

/* MPI error codes are positive; the table's test and iprobe report errors as negative values. */
static int negative(int code) { return code > 0 ? -code : -1; }

static void print_mpi_error(const char *what, int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) {
        snprintf(text, sizeof text, "MPI error %d", code);
    }
    fprintf(stderr, "pj_mpi_main: %s failed: %s\n", what, text);
}

static int shim_isend(void *context, int dest, int tag, const uint8_t *data, size_t len,
                      void **request) {
    shim_state *s = context;
    if (len > (size_t)INT_MAX) {
        return MPI_ERR_COUNT; /* MPI counts are ints: pj must split larger messages */
    }
    MPI_Request *req = malloc(sizeof *req);
    if (req == NULL) {
        return MPI_ERR_NO_MEM;
    }
    int rc = MPI_Isend(data, (int)len, MPI_BYTE, dest, tag, s->comm, req);
    if (rc != MPI_SUCCESS) {
        free(req);
        return rc;
    }
    *request = req;
    return 0;
}

static int shim_test(void *context, void *request) {
    (void)context;
    MPI_Request *req = request;
    int done = 0;
    int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        return negative(rc);
    }
    if (!done) {
        return 0;
    }
    free(req);
    return 1;
}

static int shim_iprobe(void *context, int *source, int *tag, size_t *len) {
    shim_state *s = context;
    MPI_Status status;
    int found = 0;
    int rc = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, s->comm, &found, &status);
    if (rc != MPI_SUCCESS) {
        return negative(rc);
    }
    if (!found) {
        return 0;
    }
    int count = 0;
    rc = MPI_Get_count(&status, MPI_BYTE, &count);
    if (rc != MPI_SUCCESS) {
        return negative(rc);
    }
    if (count < 0) { /* MPI_UNDEFINED: cannot happen for MPI_BYTE */
        return -1;
    }
    *source = status.MPI_SOURCE;
    *tag = status.MPI_TAG;
    *len = (size_t)count;
    return 1;
}

static int shim_recv(void *context, int source, int tag, uint8_t *data, size_t len) {
    shim_state *s = context;
    if (len > (size_t)INT_MAX) {
        return MPI_ERR_COUNT;
    }
    MPI_Status status;
    int rc = MPI_Recv(data, (int)len, MPI_BYTE, source, tag, s->comm, &status);
    if (rc != MPI_SUCCESS) {
        return rc;
    }
    /* Messages from one source with one tag are not overtaken, and only pj's thread receives on
     * this communicator, so this is the message iprobe announced; check its size all the same. */
    int count = 0;
    if (MPI_Get_count(&status, MPI_BYTE, &count) != MPI_SUCCESS || count < 0 ||
        (size_t)count != len) {
        return MPI_ERR_TRUNCATE;
    }
    return 0;
}

/* Rank 0: lets the worker ranks go and frees pj's communicator, once, while MPI still works. */
static void rank0_detach(void) {
    if (state.detached) {
        return;
    }
    state.detached = 1;
    state.lost = pj_mpi_detach();
    MPI_Comm_free(&state.comm);
}

/* Called by MPI_Finalize (it frees MPI_COMM_SELF first, running its attributes' delete
 * callbacks while MPI is still usable): covers a program that initialized MPI itself and
 * finalizes it before exit, when the atexit handler would come too late. */
static int finalize_callback(MPI_Comm comm, int keyval, void *value, void *extra) {
    (void)comm;
    (void)keyval;
    (void)value;
    (void)extra;
    rank0_detach();
    return MPI_SUCCESS;
}

static void rank0_at_exit(void) {
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (finalized) {
        return; /* the program finalized MPI: finalize_callback did the rest */
    }
    rank0_detach();
    /* A dead rank never joins MPI_Finalize's closing synchronization: with one lost (possible
     * only when the runtime keeps the job going, mpirun --enable-recovery), finalizing would
     * wait forever, so rank 0 leaves without it. */
    if (state.we_initialized && state.lost == 0) {
        MPI_Finalize();
    }
}

static const char *thread_level_name(int level) {
    switch (level) {
    case MPI_THREAD_SINGLE:
        return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
        return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
        return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
        return "MPI_THREAD_MULTIPLE";
    default:
        return "an unknown thread level";
    }
}

int pj_mpi_main(int *argc, char ***argv) {
    if (started) {
        fprintf(stderr, "pj_mpi_main: called more than once\n");
        return -1;
    }
    started = 1;

    int initialized = 0, finalized = 0, provided = MPI_THREAD_SINGLE, rc;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
        fprintf(stderr, "pj_mpi_main: MPI is already finalized\n");
        return -1;
    }
    if (!initialized) {
        rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) {
            print_mpi_error("MPI_Init_thread", rc);
            return -1;
        }
        state.we_initialized = 1;
    } else if ((rc = MPI_Query_thread(&provided)) != MPI_SUCCESS) {
        print_mpi_error("MPI_Query_thread", rc);
        return -1;
    }
    /* MPI_THREAD_* are monotonic: SINGLE < FUNNELED < SERIALIZED < MULTIPLE */
    if (provided < MPI_THREAD_SERIALIZED) {
        fprintf(stderr,
                "pj_mpi_main: MPI provides %s, but pj needs at least MPI_THREAD_SERIALIZED "
                "(pj's dispatcher thread on rank 0 calls MPI)%s\n",
                thread_level_name(provided),
                state.we_initialized ? "" : ": initialize MPI with MPI_Init_thread(..., "
                                            "MPI_THREAD_MULTIPLE, ...), or let pj_mpi_main do it");
        if (state.we_initialized) {
            MPI_Finalize(); /* every rank gets here alike, so no rank waits for another */
        }
        return -1;
    }

    rc = MPI_Comm_dup(MPI_COMM_WORLD, &state.comm);
    if (rc != MPI_SUCCESS) {
        print_mpi_error("MPI_Comm_dup(MPI_COMM_WORLD)", rc);
        return -1;
    }
    int rank = 0, size = 0;
    if ((rc = MPI_Comm_set_errhandler(state.comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (rc = MPI_Comm_rank(state.comm, &rank)) != MPI_SUCCESS ||
        (rc = MPI_Comm_size(state.comm, &size)) != MPI_SUCCESS) {
        print_mpi_error("setting up pj's communicator", rc);
        return -1;
    }

    ops.context = &state;
    ops.rank = rank;
    ops.size = size;
    ops.isend = shim_isend;
    ops.test = shim_test;
    ops.iprobe = shim_iprobe;
    ops.recv = shim_recv;
    ops.max_message = (size_t)INT_MAX;

    if (rank != 0) {
        int code = pj_mpi_serve(&ops);
        MPI_Comm_free(&state.comm);
        if (code == 3) {
            exit(0); /* a rank of the job died: MPI_Finalize would wait for it forever */
        }
        MPI_Finalized(&finalized);
        if (!finalized) {
            MPI_Finalize(); /* even when the program initialized MPI: it never gets control back */
        }
        exit(code);
    }

    pj_error_t *err = NULL;
    pj_status status = pj_mpi_attach(&ops, &err);
    if (status != PJ_STATUS_OK) {
        fprintf(stderr, "pj_mpi_main: pj_mpi_attach failed: %s: %s\n", pj_status_str(status),
                pj_error_message(err));
        pj_error_free(err);
        /* No MPI_Finalize: the worker ranks wait in pj_mpi_serve, and finalizing could wait
         * for them. The program exits non-zero, and mpirun ends them. */
        return -1;
    }
    /* Detach before MPI goes away: at exit, or inside the program's own MPI_Finalize. */
    int keyval = MPI_KEYVAL_INVALID;
    if (MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, finalize_callback, &keyval, NULL) !=
            MPI_SUCCESS ||
        MPI_Comm_set_attr(MPI_COMM_SELF, keyval, NULL) != MPI_SUCCESS) {
        fprintf(stderr, "pj_mpi_main: cannot watch MPI_Finalize: call pj_mpi_detach() before "
                        "your MPI_Finalize\n");
    }
    if (atexit(rank0_at_exit) != 0) {
        fprintf(stderr, "pj_mpi_main: atexit failed\n");
        rank0_detach();
        return -1;
    }
    return 0;
}
