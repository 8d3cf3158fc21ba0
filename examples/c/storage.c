/*
 * storage.c: a small storage process linked with libfilerep.
 *
 * It opens its segment from the segment's configuration file, so this
 * process IS the segment: it takes the arbiter's orders, and once it is the
 * acting primary its threads write relation blocks, append log records with
 * flushes, create, truncate and rename files and make and remove
 * directories, each call replicated to the mirror before it returns.
 *
 *   storage CONFIG [THREADS [ROUNDS]]
 *
 * Each of THREADS (default 4) threads works ROUNDS (default 20; 0: until
 * told to stop) rounds in its own directory "tN" of every filespace. A line
 * "report" on standard input prints the counts so far. SIGTERM, SIGINT or
 * the end of standard input tells it to stop: once its threads are done it
 * closes its segment (a primary's mirror confirms everything durable) and
 * exits, 0 when every call succeeded and every block read back as written.
 *
 * Lines on standard output: "segment open", "primary at generation G ...",
 * "calls C tracking T not-primary N failures F" (for each "report"),
 * "workers finished: ..." once every thread is done, "done: ..." at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include "filerep.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RECORD_BYTES 100
#define MAX_THREADS 64

static filerep_segment seg;
static uint32_t block_size;
static uint16_t log_fs; /* the log in the second filespace, if there is one */
static long rounds;
static int threads;

static atomic_bool stop;
static atomic_ullong calls, tracking_calls, failures, not_primary;
static atomic_int finished;

/* Print what failed with the library's message, count it, and tell the
 * caller to give up its round loop. FILEREP_ERR_NOT_PRIMARY is no failure:
 * this process is no longer the acting primary (its segment was stopped, or
 * handed its role over), so it stops; its clients would retry elsewhere. */
static int failed(int thread, const char *what, int rc)
{
    fprintf(stderr, "storage: thread %d: %s: %s (%s)\n", thread, what, filerep_last_error(),
            filerep_error_name(rc));
    if (rc == FILEREP_ERR_NOT_PRIMARY) {
        atomic_fetch_add(&not_primary, 1);
        kill(getpid(), SIGUSR1);
    } else {
        atomic_fetch_add(&failures, 1);
    }
    return -1;
}

#define CALL(expr)                                         \
    do {                                                   \
        int rc_ = (expr);                                  \
        n_calls++;                                         \
        if (rc_ != FILEREP_OK)                             \
            return failed(t, #expr, rc_);                  \
    } while (0)

/* A block's content: a function of (thread, round, block). */
static void fill(unsigned char *buf, int thread, long round, uint64_t block)
{
    uint64_t x = ((uint64_t)thread << 48) ^ ((uint64_t)round << 20) ^ block;
    for (uint32_t i = 0; i + 8 <= block_size; i += 8) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        memcpy(buf + i, &x, 8);
    }
}

static int current_mode(void)
{
    filerep_info info;
    if (filerep_segment_info(seg, &info) != FILEREP_OK)
        return -1;
    return info.mode;
}

/* One round of thread t: about a dozen calls of every kind. */
static int round_of(int t, long r, unsigned char *buf, unsigned char *back)
{
    char dir[32], rel[48], log[48], tmp[48], file[64], keep[48], kept[64];
    uint64_t n_calls = 0, nblocks, off, b;
    int mode_before = current_mode();
    snprintf(dir, sizeof dir, "t%d", t);
    snprintf(rel, sizeof rel, "t%d/rel", t);
    snprintf(log, sizeof log, "t%d/log", t);

    /* Relation file: extend by a block, overwrite an earlier one, read it back. */
    CALL(filerep_nblocks(seg, 0, rel, &nblocks));
    fill(buf, t, r, nblocks);
    CALL(filerep_extend(seg, 0, rel, nblocks, buf, block_size));
    b = (uint64_t)(r * 7) % (nblocks + 1);
    fill(buf, t, r + 1000000, b);
    CALL(filerep_write_block(seg, 0, rel, b, buf, block_size));
    CALL(filerep_read_block(seg, 0, rel, b, back, block_size));
    if (memcmp(buf, back, block_size) != 0) {
        fprintf(stderr, "storage: thread %d: block %" PRIu64 " of %s reads back wrong\n", t, b, rel);
        atomic_fetch_add(&failures, 1);
        return -1;
    }
    if (r % 8 == 7)
        CALL(filerep_truncate(seg, 0, rel, (nblocks + 1) / 2));

    /* Log file: append a record; every fourth, flush (durable on both hosts). */
    char record[RECORD_BYTES];
    memset(record, 'a' + (int)(r % 26), sizeof record);
    snprintf(record, sizeof record, "thread %d round %ld|", t, r);
    CALL(filerep_len(seg, log_fs, log, &off));
    CALL(filerep_write_at(seg, log_fs, log, off, record, sizeof record));
    if (r % 4 == 3)
        CALL(filerep_flush(seg, log_fs, log));

    /* Directories: make one with a file in it, rename it; keep one in five
     * (in one of four slots), remove the rest. */
    snprintf(tmp, sizeof tmp, "t%d/d%ld", t, r);
    snprintf(file, sizeof file, "%s/f", tmp);
    CALL(filerep_mkdir(seg, 0, tmp));
    CALL(filerep_create(seg, 0, file));
    CALL(filerep_write_at(seg, 0, file, 0, record, sizeof record));
    snprintf(keep, sizeof keep, "t%d/k%ld", t, (r / 5) % 4);
    snprintf(kept, sizeof kept, "%s/f", keep);
    if (r % 5 == 0) {
        bool there;
        CALL(filerep_exists(seg, 0, keep, &there));
        if (there) {
            CALL(filerep_unlink(seg, 0, kept));
            CALL(filerep_rmdir(seg, 0, keep));
        }
        CALL(filerep_rename(seg, 0, tmp, keep));
    } else {
        char moved[48], moved_file[64];
        snprintf(moved, sizeof moved, "t%d/m%ld", t, r);
        snprintf(moved_file, sizeof moved_file, "%s/f", moved);
        CALL(filerep_rename(seg, 0, tmp, moved));
        CALL(filerep_unlink(seg, 0, moved_file));
        CALL(filerep_rmdir(seg, 0, moved));
    }
    if (r % 16 == 15) {
        CALL(filerep_sync(seg, 0, rel));
        CALL(filerep_sync_dir(seg, 0, dir));
    }

    atomic_fetch_add(&calls, n_calls);
    if (mode_before == FILEREP_MODE_CHANGE_TRACKING && current_mode() == FILEREP_MODE_CHANGE_TRACKING)
        atomic_fetch_add(&tracking_calls, n_calls);
    return 0;
}

/* Every call of the setup counts too. */
static int setup(int t)
{
    char dir[32], rel[48], log[48];
    uint64_t n_calls = 0;
    snprintf(dir, sizeof dir, "t%d", t);
    snprintf(rel, sizeof rel, "t%d/rel", t);
    snprintf(log, sizeof log, "t%d/log", t);
    CALL(filerep_mkdir(seg, 0, dir));
    if (log_fs != 0)
        CALL(filerep_mkdir(seg, log_fs, dir));
    CALL(filerep_create(seg, 0, rel));
    CALL(filerep_create(seg, log_fs, log));
    atomic_fetch_add(&calls, n_calls);
    return 0;
}

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    unsigned char *buf = malloc(block_size), *back = malloc(block_size);
    if (buf == NULL || back == NULL) {
        fprintf(stderr, "storage: thread %d: out of memory\n", t);
        atomic_fetch_add(&failures, 1);
    } else if (setup(t) == 0) {
        for (long r = 0; rounds == 0 ? !atomic_load(&stop) : r < rounds; r++)
            if (round_of(t, r, buf, back) != 0)
                break;
    }
    free(buf);
    free(back);
    if (atomic_fetch_add(&finished, 1) + 1 == threads)
        printf("workers finished: %llu calls\n", (unsigned long long)atomic_load(&calls));
    return NULL;
}

static void report(void)
{
    printf("calls %llu tracking %llu not-primary %llu failures %llu\n", (unsigned long long)atomic_load(&calls),
           (unsigned long long)atomic_load(&tracking_calls), (unsigned long long)atomic_load(&not_primary),
           (unsigned long long)atomic_load(&failures));
}

/* Commands on standard input; its end is a stop, as SIGTERM is. */
static void *read_commands(void *arg)
{
    char line[64];
    (void)arg;
    while (fgets(line, sizeof line, stdin) != NULL)
        if (strncmp(line, "report", 6) == 0)
            report();
    kill(getpid(), SIGUSR1);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t tids[MAX_THREADS], reader;
    sigset_t stop_signals;
    filerep_info info;
    int rc;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s CONFIG [THREADS [ROUNDS]]\n", argv[0]);
        return 2;
    }
    threads = argc > 2 ? atoi(argv[2]) : 4;
    rounds = argc > 3 ? atol(argv[3]) : 20;
    if (threads < 1 || threads > MAX_THREADS || rounds < 0) {
        fprintf(stderr, "storage: THREADS is 1 to %d, ROUNDS 0 or more\n", MAX_THREADS);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Blocked before the library starts its threads, so that every thread
     * inherits the mask and only sigwait below takes these signals. */
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    rc = filerep_segment_open(argv[1], &seg);
    if (rc != FILEREP_OK) {
        fprintf(stderr, "storage: %s (%s)\n", filerep_last_error(), filerep_error_name(rc));
        return 1;
    }
    printf("segment open\n");
    /* The arbiter decides the role; a mirror would wait here and give up. */
    rc = filerep_segment_wait_primary(seg, 60000);
    if (rc == FILEREP_OK)
        rc = filerep_segment_info(seg, &info);
    if (rc != FILEREP_OK) {
        fprintf(stderr, "storage: %s (%s)\n", filerep_last_error(), filerep_error_name(rc));
        filerep_segment_close(seg);
        return 1;
    }
    block_size = info.block_size;
    log_fs = info.filespaces > 1 ? 1 : 0;
    printf("primary at generation %" PRIu64 ", block size %" PRIu32 ", %" PRIu32 " filespaces\n",
           info.generation, info.block_size, info.filespaces);

    int started = 0;
    for (; started < threads; started++) {
        if (pthread_create(&tids[started], NULL, worker, (void *)(intptr_t)started) != 0) {
            fprintf(stderr, "storage: cannot start thread %d\n", started);
            atomic_fetch_add(&failures, 1);
            atomic_store(&stop, true);
            break;
        }
    }
    if (pthread_create(&reader, NULL, read_commands, NULL) == 0)
        pthread_detach(reader);
    else
        fprintf(stderr, "storage: cannot read commands; stop it with SIGTERM\n");
    /* Until a stop signal, or the segment stops by itself (`filerep stop`
     * orders it to: then this process should exit). */
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        if (sigtimedwait(&stop_signals, NULL, &tick) >= 0)
            break;
        if (filerep_segment_info(seg, &info) == FILEREP_OK && info.role == FILEREP_ROLE_STOPPED) {
            printf("the segment stopped\n");
            break;
        }
    }
    atomic_store(&stop, true);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);

    printf("done: %llu calls, %llu in change tracking, %llu refused as not primary, %llu failures\n",
           (unsigned long long)atomic_load(&calls), (unsigned long long)atomic_load(&tracking_calls),
           (unsigned long long)atomic_load(&not_primary), (unsigned long long)atomic_load(&failures));
    rc = filerep_segment_close(seg);
    if (rc != FILEREP_OK) {
        fprintf(stderr, "storage: close: %s (%s)\n", filerep_last_error(), filerep_error_name(rc));
        return 1;
    }
    /* A closed handle is refused, and nothing is written. */
    rc = filerep_create(seg, 0, "after-close");
    if (rc != FILEREP_ERR_CLOSED) {
        fprintf(stderr, "storage: a closed handle gave %s\n", filerep_error_name(rc));
        return 1;
    }
    return atomic_load(&failures) == 0 ? 0 : 1;
}
