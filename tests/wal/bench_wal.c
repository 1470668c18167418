/* bench_wal: what group commit buys. N writer threads (1, 16, 256) each append
 * one 100-byte entry and wait until it is durable, as a client waits for its
 * write; the figures are appends/s, fdatasyncs/s, entries per fdatasync and
 * the append-to-durable latency. A last run appends from one thread without
 * waiting (a raft leader's pipeline), bounded only by the queue.
 *
 *   make bench-wal [BENCH_ARGS="seconds dir"]   (defaults: 3 s per run, /tmp)
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wal/wal.h"

#define ENTRY_BYTES 100
#define MAX_SAMPLES (1u << 20)
/* An entry record on disk: 12-byte header, 20 bytes of index/term/type, data,
 * padding to 8. */
#define RECORD_BYTES ((12 + 20 + ENTRY_BYTES + 7) / 8 * 8)

struct bench {
    wal_t *w;
    pthread_mutex_t mu; /* serialises index choice, as wal.h asks of appenders */
    uint64_t next;
    atomic_int stop;
    atomic_ullong syncs;
};

struct worker {
    pthread_t t;
    struct bench *b;
    uint64_t done;
    uint64_t *lat; /* ns per append, up to MAX_SAMPLES */
    size_t n_lat;
    int failed;
};

static void on_durable(void *arg, const struct wal_durable *d) {
    struct bench *b = arg;
    (void)d;
    atomic_fetch_add(&b->syncs, 1);
}

static void *writer(void *arg) {
    struct worker *k = arg;
    struct bench *b = k->b;
    uint8_t data[ENTRY_BYTES];
    memset(data, 'q', sizeof(data));
    while (!atomic_load(&b->stop)) {
        struct wal_entry e = {.term = 1, .len = ENTRY_BYTES, .data = data};
        uint64_t seq, t0 = util_now_mono_ns();
        pthread_mutex_lock(&b->mu);
        e.index = b->next;
        int rc = wal_append(b->w, &e, 1, NULL, &seq);
        if (rc == 0)
            b->next++;
        pthread_mutex_unlock(&b->mu);
        if (rc == -EAGAIN)
            continue;
        if (rc != 0 || wal_wait(b->w, seq) != 0) {
            k->failed = 1;
            break;
        }
        if (k->n_lat < MAX_SAMPLES)
            k->lat[k->n_lat++] = util_now_mono_ns() - t0;
        k->done++;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[4096];
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static wal_t *open_fresh(const char *base, char *dir, size_t cap, struct bench *b) {
    snprintf(dir, cap, "%s/quoin-wal-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    struct wal_options o = {.on_durable = on_durable, .cb_arg = b};
    struct wal_recovery rec;
    struct util_err err;
    wal_t *w;
    if (wal_open(dir, &o, &w, &rec, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    wal_recovery_free(&rec);
    return w;
}

static void run_waiting(const char *base, int threads, double secs) {
    char dir[4096];
    struct bench b = {.next = 1};
    pthread_mutex_init(&b.mu, NULL);
    b.w = open_fresh(base, dir, sizeof(dir), &b);
    struct worker *ks = calloc((size_t)threads, sizeof(*ks));
    size_t per = MAX_SAMPLES / (size_t)threads;
    for (int i = 0; i < threads; i++) {
        ks[i].b = &b;
        ks[i].lat = malloc(per * sizeof(uint64_t));
        if (!ks[i].lat) {
            perror("malloc");
            exit(1);
        }
    }
    uint64_t t0 = util_now_mono_ns();
    for (int i = 0; i < threads; i++)
        pthread_create(&ks[i].t, NULL, writer, &ks[i]);
    usleep((useconds_t)(secs * 1e6));
    atomic_store(&b.stop, 1);
    uint64_t total = 0, n_lat = 0;
    int failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ks[i].t, NULL);
        total += ks[i].done;
        failed |= ks[i].failed;
        n_lat += ks[i].n_lat;
    }
    double el = (double)(util_now_mono_ns() - t0) / 1e9;
    uint64_t *all = malloc((n_lat ? n_lat : 1) * sizeof(uint64_t)), at = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + at, ks[i].lat, ks[i].n_lat * sizeof(uint64_t));
        at += ks[i].n_lat;
        free(ks[i].lat);
    }
    qsort(all, n_lat, sizeof(uint64_t), cmp_u64);
    uint64_t syncs = atomic_load(&b.syncs);
    printf("%4d writers: %9.0f appends/s %8.0f fdatasyncs/s %7.1f entries/fdatasync   latency "
           "p50 %6.0f us p99 %6.0f us%s\n",
           threads, (double)total / el, (double)syncs / el,
           syncs ? (double)total / (double)syncs : 0.0, n_lat ? (double)all[n_lat / 2] / 1e3 : 0.0,
           n_lat ? (double)all[n_lat * 99 / 100] / 1e3 : 0.0, failed ? "  (FAILED)" : "");
    free(all);
    free(ks);
    wal_close(b.w);
    rm_dir(dir);
}

/* One appender that never waits for a single write, only for room. */
static void run_pipelined(const char *base, double secs) {
    char dir[4096];
    struct bench b = {.next = 1};
    b.w = open_fresh(base, dir, sizeof(dir), &b);
    uint8_t data[ENTRY_BYTES];
    memset(data, 'q', sizeof(data));
    uint64_t t0 = util_now_mono_ns(), end = t0 + (uint64_t)(secs * 1e9), seq = 0;
    while (util_now_mono_ns() < end) {
        struct wal_entry e = {.index = b.next, .term = 1, .len = ENTRY_BYTES, .data = data};
        int rc = wal_append(b.w, &e, 1, NULL, &seq);
        if (rc == -EAGAIN) {
            struct pollfd p = {.fd = wal_event_fd(b.w), .events = POLLIN};
            uint64_t v;
            poll(&p, 1, 10);
            if (read(p.fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                break;
            continue;
        }
        if (rc != 0)
            break;
        b.next++;
    }
    wal_wait(b.w, seq);
    double el = (double)(util_now_mono_ns() - t0) / 1e9;
    uint64_t syncs = atomic_load(&b.syncs);
    printf("pipelined 1: %9.0f appends/s %8.0f fdatasyncs/s %7.1f entries/fdatasync   %.0f MB/s\n",
           (double)(b.next - 1) / el, (double)syncs / el,
           syncs ? (double)(b.next - 1) / (double)syncs : 0.0,
           (double)(b.next - 1) * RECORD_BYTES / el / 1e6);
    wal_close(b.w);

    /* Start-up cost: recover everything that run wrote. */
    struct wal_recovery rec;
    struct util_err err;
    wal_t *w;
    t0 = util_now_mono_ns();
    if (wal_open(dir, NULL, &w, &rec, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    printf("recovery:    %zu entries (%.0f MB) in %.0f ms\n", rec.n_entries,
           (double)rec.n_entries * RECORD_BYTES / 1e6, (double)(util_now_mono_ns() - t0) / 1e6);
    wal_recovery_free(&rec);
    wal_close(w);
    rm_dir(dir);
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    const char *base = argc > 2 ? argv[2] : "/tmp";
    printf("WAL group commit, %d-byte entries, %.1f s per run, in %s\n", ENTRY_BYTES, secs, base);
    int threads[] = {1, 16, 256};
    for (int i = 0; i < 3; i++)
        run_waiting(base, threads[i], secs);
    run_pipelined(base, secs);
    return 0;
}
