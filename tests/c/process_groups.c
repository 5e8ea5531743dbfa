/*
 * What a task starts dies with its worker, as a C program sees it: a task starts `sleep 1000` in
 * the background through system() (the shell exits at once, so the sleep is reparented), writes
 * its pid to a file, then crashes. After the call the sleep must be gone, and a child the program
 * started before the call must still run, after the call and after pj_parallel_free.
 * Exits 0 when every check passes; each failed check prints its line.
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pj.h"

static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

static char pid_file[64];

/* Task: starts the background sleep, writes its pid to `pid_file`, crashes. */
static int32_t leave_a_sleep_and_crash(void *userdata, const uint8_t *arg, size_t len, pj_out_t *out) {
    (void)userdata, (void)arg, (void)len, (void)out;
    char command[512];
    snprintf(command, sizeof command,
             "sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > %s.partial && mv %s.partial %s", pid_file,
             pid_file, pid_file);
    if (system(command) != 0) {
        return 1;
    }
    abort();
}

/* Whether `pid` runs (not gone, not a zombie waiting for its reaper), from /proc/<pid>/stat. */
static int runs(long pid) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *end = strrchr(text, ')');
    return end != NULL && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(void) {
    snprintf(pid_file, sizeof pid_file, "/tmp/pj-c-process-groups-%ld.pid", (long)getpid());
    remove(pid_file);

    /* The program's own child, started before the call: pj must never touch it. */
    pid_t own = fork();
    if (own == 0) {
        execlp("sleep", "sleep", "1000", (char *)NULL);
        _exit(127);
    }
    CHECK(own > 0);

    pj_config_t *cfg = NULL;
    CHECK(pj_config_new(&cfg) == PJ_STATUS_OK);
    CHECK(pj_config_set(cfg, "backend", "processes", NULL) == PJ_STATUS_OK);
    CHECK(pj_config_set(cfg, "n_jobs", "2", NULL) == PJ_STATUS_OK);
    pj_parallel_t *par = NULL;
    CHECK(pj_parallel_new(cfg, &par, NULL) == PJ_STATUS_OK);
    pj_config_free(cfg);
    CHECK(pj_parallel_submit(par, leave_a_sleep_and_crash, NULL, NULL, 0, NULL) == PJ_STATUS_OK);
    pj_results_t *results = NULL;
    CHECK(pj_parallel_collect(par, &results, NULL) == PJ_STATUS_WORKER_DIED);

    long sleep_pid = 0;
    FILE *f = fopen(pid_file, "r");
    CHECK(f != NULL);
    if (f != NULL) {
        CHECK(fscanf(f, "%ld", &sleep_pid) == 1);
        fclose(f);
    }
    remove(pid_file);
    CHECK(sleep_pid > 1);
    /* Generous: a busy machine may take a while to schedule the kill and the reaper. */
    for (int waited = 0; sleep_pid > 1 && runs(sleep_pid) && waited < 20000; waited += 10) {
        pause_ms(10);
    }
    CHECK(sleep_pid > 1 && !runs(sleep_pid));
    if (sleep_pid > 1 && runs(sleep_pid)) {
        kill((pid_t)sleep_pid, SIGKILL);
    }

    CHECK(waitpid(own, NULL, WNOHANG) == 0);
    pj_parallel_free(par);
    CHECK(waitpid(own, NULL, WNOHANG) == 0);
    kill(own, SIGKILL);
    waitpid(own, NULL, 0);

    if (failures == 0) {
        printf("process_groups: all checks passed\n");
    }
    return failures == 0 ? 0 : 1;
}
