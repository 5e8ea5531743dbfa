/*
 * Memmapping, as joblib does for large numpy arguments: on worker processes, an argument larger
 * than max_nbytes (default 1M) is written once to a file in the temp folder, and each worker maps
 * that file instead of receiving a copy of the bytes through its socket. The worker's view is
 * read-only by default (mmap_mode "r"). The file has no name, so nothing is ever left in the
 * folder, even if the program is killed. Smaller arguments, and every argument with
 * max_nbytes="none", travel as copies.
 *
 * The task looks itself up in /proc/self/maps to tell whether its argument lies in a mapping of a
 * file from the temp folder. (On the threads backend nothing is mapped: threads read the
 * caller's copy directly.)
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp under -std=c11 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pj.h"

enum { BIG = 4 * 1024 * 1024 }; /* 4 MiB, above max_nbytes */

static void check(const char *what, pj_status st, pj_error_t *err) {
    if (st == PJ_STATUS_OK) {
        return;
    }
    fprintf(stderr, "%s: %s\n%s", what, pj_status_str(st), pj_error_report(err));
    pj_error_free(err);
    exit(1);
}

/* 1 when `address` lies in a mapping of a file whose path starts with `folder`. */
static int mapped_from(const void *address, const char *folder) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) {
        return 0;
    }
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, maps) != NULL) {
        unsigned long long start, end;
        int path_at = 0;
        /* "start-end perms offset dev inode path" */
        if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &start, &end, &path_at) < 2 || path_at == 0) {
            continue;
        }
        unsigned long long a = (unsigned long long)(uintptr_t)address;
        found = start <= a && a < end && strncmp(line + path_at, folder, strlen(folder)) == 0;
    }
    fclose(maps);
    return found;
}

/* The task: returns two bytes, [all argument bytes as expected (1/0), argument mapped from a
 * file of the temp folder (1/0)]. userdata is the folder's path (readable in the worker: it
 * existed when the worker was forked). */
static int32_t inspect(void *userdata, const uint8_t *arg, size_t arg_len, pj_out_t *out) {
    const char *folder = userdata;
    uint8_t answer[2] = {1, 0};
    for (size_t i = 0; i < arg_len; i++) {
        if (arg[i] != (uint8_t)(i % 251)) {
            answer[0] = 0;
        }
    }
    answer[1] = (uint8_t)mapped_from(arg, folder);
    return pj_out_set(out, answer, sizeof answer) == PJ_STATUS_OK ? 0 : 1;
}

/* 1 when the folder has no entry besides . and .. */
static int is_empty(const char *folder) {
    DIR *dir = opendir(folder);
    if (dir == NULL) {
        return 0;
    }
    int entries = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL;) {
        entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    }
    closedir(dir);
    return entries == 0;
}

/* Runs `inspect` on `len` bytes of `arg` with the given max_nbytes; prints what the task saw. */
static void run(const char *folder, const char *max_nbytes, const uint8_t *arg, size_t len) {
    pj_config_t *cfg = NULL;
    pj_parallel_t *par = NULL;
    pj_results_t *res = NULL;
    pj_error_t *err = NULL;
    check("pj_config_new", pj_config_new(&cfg), NULL);
    check("backend", pj_config_set(cfg, "backend", "processes", &err), err);
    check("n_jobs", pj_config_set(cfg, "n_jobs", "2", &err), err);
    check("temp_folder", pj_config_set(cfg, "temp_folder", folder, &err), err);
    check("max_nbytes", pj_config_set(cfg, "max_nbytes", max_nbytes, &err), err);
    check("pj_parallel_new", pj_parallel_new(cfg, &par, &err), err);

    check("pj_parallel_submit", pj_parallel_submit(par, inspect, (void *)folder, arg, len, &err), err);
    check("pj_parallel_collect", pj_parallel_collect(par, &res, &err), err);
    const uint8_t *answer;
    size_t answer_len;
    check("pj_results_get", pj_results_get(res, 0, &answer, &answer_len), NULL);
    printf("%7zu bytes, max_nbytes=%-4s: bytes intact: %s, mapped from the temp folder: %s\n", len, max_nbytes,
           answer[0] ? "yes" : "no", answer[1] ? "yes" : "no");

    pj_results_free(res);
    pj_parallel_free(par);
    pj_config_free(cfg);
}

int main(void) {
    char folder[] = "/tmp/pj-memmap-example-XXXXXX";
    if (mkdtemp(folder) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    uint8_t *big = malloc(BIG);
    if (big == NULL) {
        return 1;
    }
    for (size_t i = 0; i < BIG; i++) {
        big[i] = (uint8_t)(i % 251);
    }

    run(folder, "1M", big, BIG);   /* above max_nbytes: mapped, not copied */
    run(folder, "1M", big, 1000);  /* below: copied through the socket */
    run(folder, "none", big, BIG); /* memmapping off: copied */
    printf("temp folder empty afterwards: %s\n", is_empty(folder) ? "yes" : "no");

    free(big);
    rmdir(folder);
    return 0;
}
