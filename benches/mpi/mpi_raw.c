/*
 * Plain MPI between ranks 0 and 1, no pj: the yardstick for backend "mpi"'s large transfers
 * (scripts/bench-mpi.sh raw builds and runs it beside pj_mpi_large's bw mode):
 *
 *     mpirun -n 2 ./pj_mpi_raw [reps=5] [mib...=16 64 256]
 *
 * For each size, `reps` times in each direction: rank 1 MPI_Sends MIB MiB to rank 0 (the way
 * pj's results go) and rank 0 to rank 1 (its arguments), the receiver in MPI_Recv into a buffer
 * it allocated and touched before the clock starts (the receiver's clock: from a zero-byte
 * go-ahead it sends to the end of its MPI_Recv). Prints the median GB/s. Figures only.
 */
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* `count` MiB from `from` to `to`, `reps` times; the median seconds as rank `to` timed them. */
static double transfer(int rank, int from, int to, size_t mib, int reps, unsigned char *buf) {
    size_t len = mib << 20;
    double *seconds = calloc((size_t)reps, sizeof *seconds);
    if (seconds == NULL) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int r = 0; r < reps; r++) {
        if (rank == to) {
            double t0 = MPI_Wtime();
            MPI_Send(NULL, 0, MPI_BYTE, from, 1, MPI_COMM_WORLD); /* go-ahead */
            MPI_Recv(buf, (int)len, MPI_BYTE, from, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            seconds[r] = MPI_Wtime() - t0;
            if (buf[len - 1] != (unsigned char)(from + 1)) {
                fprintf(stderr, "pj_mpi_raw: wrong bytes\n");
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        } else if (rank == from) {
            memset(buf, from + 1, len);
            MPI_Recv(NULL, 0, MPI_BYTE, to, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, (int)len, MPI_BYTE, to, 2, MPI_COMM_WORLD);
        }
    }
    qsort(seconds, (size_t)reps, sizeof *seconds, compare);
    double median = seconds[reps / 2];
    free(seconds);
    return median;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        fprintf(stderr, "pj_mpi_raw: run it with mpirun -n 2\n");
        MPI_Finalize();
        return 1;
    }
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1) {
        reps = 1;
    }
    size_t sizes[16] = {16, 64, 256};
    int count = 3;
    if (argc > 2) {
        count = 0;
        for (int i = 2; i < argc && count < 16; i++) {
            sizes[count++] = (size_t)strtoull(argv[i], NULL, 10);
        }
    }
    for (int i = 0; i < count; i++) {
        size_t mib = sizes[i];
        if (mib == 0 || mib > 2047) {
            continue; /* one MPI message: counts are ints */
        }
        unsigned char *buf = NULL;
        if (rank <= 1) {
            buf = malloc(mib << 20);
            if (buf == NULL) {
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            memset(buf, 0, mib << 20); /* touched before the clock starts */
        }
        /* results: rank 1 -> rank 0; arguments: rank 0 -> rank 1 (timed by rank 1, reported
         * to rank 0) */
        double results = rank <= 1 ? transfer(rank, 1, 0, mib, reps, buf) : 0;
        double arguments = rank <= 1 ? transfer(rank, 0, 1, mib, reps, buf) : 0;
        if (rank == 1) {
            MPI_Send(&arguments, 1, MPI_DOUBLE, 0, 3, MPI_COMM_WORLD);
        } else if (rank == 0) {
            MPI_Recv(&arguments, 1, MPI_DOUBLE, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            double gb = (double)(mib << 20) * 1e-9;
            printf("raw MPI_Send/MPI_Recv, %zu MiB: 1 -> 0 (results) %.3f s %.2f GB/s, "
                   "0 -> 1 (arguments) %.3f s %.2f GB/s (median of %d)\n",
                   mib, results, gb / results, arguments, gb / arguments, reps);
            fflush(stdout);
        }
        free(buf);
    }
    MPI_Finalize();
    return 0;
}
