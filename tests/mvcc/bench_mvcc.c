/* mvcc benchmark (make bench-mvcc; not part of make test): put throughput,
 * open time and RSS right after open of large databases, and the latency of
 * a 10,000-key range.
 *
 *   bench_mvcc DIR [KEYS_FOR_OPEN_TEST...]
 *
 * Builds DIR/bench-puts with 1M keys (256-byte values, 100 puts per batch, keys
 * in scattered order), reports puts/s and range latency, and re-executes
 * itself to open it in a fresh process, reporting open time and VmRSS; then
 * the same open test on DIR/bench-N for each count N given (built with
 * sequential keys if missing). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mvcc/mvcc.h"

#define VALUE_LEN 256
#define PER_BATCH 100

static double now_s(void) {
    return (double)util_now_mono_ns() / 1e9;
}

/* A snapshot and a range iterator on it. */
static int open_range(mvcc_t *db, const struct mvcc_range_req *q, mvcc_read_t **rd,
                      mvcc_range_it_t **it) {
    int rc = mvcc_read_begin(db, rd);
    if (rc != 0)
        return rc;
    if ((rc = mvcc_range_open(*rd, q, it)) != 0)
        mvcc_read_end(*rd);
    return rc;
}

/* A field of /proc/self/status in KiB ("VmRSS", "RssAnon", ...). */
static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    size_t fl = strlen(field);
    long v = -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            v = atol(line + fl + 1);
            break;
        }
    fclose(f);
    return v;
}

/* Streams every key of the store and reports time and heap growth: memory
 * must not depend on the range size (the file pages it touches are page
 * cache, counted in RssFile, not RssAnon). */
static int full_stream(mvcc_t *db) {
    long anon0 = status_kib("RssAnon");
    double t0 = now_s();
    mvcc_read_t *rd;
    mvcc_range_it_t *it;
    struct mvcc_range_req q = {.key = (const uint8_t *)"", .key_len = 1};
    q.range_end = (const uint8_t *)"";
    q.range_end_len = 1;
    int rc = open_range(db, &q, &rd, &it);
    if (rc != 0)
        return rc;
    struct mvcc_kv kv;
    long n = 0;
    while (mvcc_range_next(it, &kv) == 1)
        n++;
    long anon1 = status_kib("RssAnon");
    mvcc_range_close(it);
    mvcc_read_end(rd);
    printf("stream all %ld keys: %.0f ms, RssAnon %+ld KiB during it (RssFile %ld KiB)\n", n,
           (now_s() - t0) * 1e3, anon1 - anon0, status_kib("RssFile"));
    return 0;
}

static int open_db(const char *path, bool write_map, mvcc_t **db) {
    struct mvcc_options opt = {.quota_bytes = 32ull << 30, .no_sync = true, .write_map = write_map};
    struct util_err err;
    int rc = mvcc_open(path, &opt, NULL, db, &err);
    if (rc != 0)
        fprintf(stderr, "bench: %s\n", err.msg);
    return rc;
}

/* Applies one put of a VALUE_LEN-byte value in a batch. */
static int apply_put(mvcc_batch_t *b, const char *key, size_t kl, const uint8_t *value) {
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = (const uint8_t *)key;
    op.u.put.key_len = kl;
    op.u.put.value = value;
    op.u.put.value_len = VALUE_LEN;
    mvcc_result_t *res;
    int rc = mvcc_apply(b, &op, &res);
    if (rc == 0)
        mvcc_result_free(res);
    return rc;
}

/* Writes n keys; scattered: key i is (i * a large odd number) mod n. */
static int fill(mvcc_t *db, long n, bool scattered, double *secs) {
    uint8_t value[VALUE_LEN];
    for (int i = 0; i < VALUE_LEN; i++)
        value[i] = (uint8_t)('a' + i % 26);
    double t0 = now_s();
    for (long i = 0; i < n;) {
        mvcc_batch_t *b;
        int rc = mvcc_batch_begin(db, &b);
        if (rc != 0)
            return rc;
        for (int j = 0; j < PER_BATCH && i < n; j++, i++) {
            char key[32];
            long k = scattered
                         ? (long)(((unsigned long long)i * 2654435761ull) % (unsigned long long)n)
                         : i;
            int kl = snprintf(key, sizeof(key), "/registry/pods/%010ld", k);
            if ((rc = apply_put(b, key, (size_t)kl, value)) != 0) {
                mvcc_batch_abort(b);
                return rc;
            }
        }
        mvcc_batch_set_applied(b, (uint64_t)i, 1);
        if ((rc = mvcc_batch_commit(b)) != 0)
            return rc;
    }
    *secs = now_s() - t0;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times 50 ranges of 10,000 consecutive keys at scattered starting points. */
static int range_latency(mvcc_t *db, long n) {
    double lat[50];
    for (int r = 0; r < 50; r++) {
        char key[32];
        long start =
            (long)(((unsigned long long)r * 7919ull * 131ull) % (unsigned long long)(n - 10000));
        int kl = snprintf(key, sizeof(key), "/registry/pods/%010ld", start);
        struct mvcc_range_req q = {.key = (const uint8_t *)key, .key_len = (size_t)kl};
        char end[32];
        int el = snprintf(end, sizeof(end), "/registry/pods/%010ld", start + 10000);
        q.range_end = (const uint8_t *)end;
        q.range_end_len = (size_t)el;
        double t0 = now_s();
        mvcc_read_t *rd;
        mvcc_range_it_t *it;
        int rc = open_range(db, &q, &rd, &it);
        if (rc != 0)
            return rc;
        struct mvcc_kv kv;
        size_t got = 0, bytes = 0;
        while (mvcc_range_next(it, &kv) == 1) {
            got++;
            bytes += kv.value_len;
        }
        mvcc_range_close(it);
        mvcc_read_end(rd);
        lat[r] = now_s() - t0;
        if (got != 10000 || bytes != 10000 * VALUE_LEN) {
            fprintf(stderr, "bench: range returned %zu keys\n", got);
            return -EIO;
        }
    }
    qsort(lat, 50, sizeof(lat[0]), cmp_double);
    printf("range of 10000 keys (streamed from a snapshot, values read): p50 %.2f ms, "
           "max %.2f ms\n",
           lat[25] * 1e3, lat[49] * 1e3);
    return 0;
}

struct writer {
    mvcc_t *db;
    atomic_bool stop;
    long puts;
    _Atomic double worst;      /* longest batch, seconds */
    _Atomic double worst_wait; /* longest wait for the writer lock */
};

/* Keeps applying batches of 10 puts, timing each, while maintenance runs. */
static void *write_loop(void *arg) {
    struct writer *w = arg;
    uint8_t value[VALUE_LEN] = {0};
    while (!atomic_load(&w->stop)) {
        double t0 = now_s();
        mvcc_batch_t *b;
        if (mvcc_batch_begin(w->db, &b) != 0)
            break;
        if (now_s() - t0 > w->worst_wait)
            w->worst_wait = now_s() - t0;
        for (int j = 0; j < 10; j++) {
            char key[32];
            int kl = snprintf(key, sizeof(key), "/registry/events/%010ld", w->puts++);
            apply_put(b, key, (size_t)kl, value);
        }
        mvcc_batch_commit(b);
        double d = now_s() - t0;
        if (d > w->worst)
            w->worst = d;
        usleep(1000); /* a steady load of about 10k puts/s, not a flood */
    }
    return NULL;
}

/* Deletes half the keys, compacts and defragments while a writer runs,
 * reporting how long the writer had to wait at worst. */
static int maintenance(mvcc_t *db, long n) {
    mvcc_batch_t *b;
    int rc;
    for (long i = 0; i < n; i += 2 * PER_BATCH) {
        if ((rc = mvcc_batch_begin(db, &b)) != 0)
            return rc;
        for (long j = i; j < i + 2 * PER_BATCH && j < n; j += 2) {
            char key[32];
            int kl = snprintf(key, sizeof(key), "/registry/pods/%010ld", j);
            struct mvcc_op op = {.type = MVCC_OP_DELETE};
            op.u.del.key = (const uint8_t *)key;
            op.u.del.key_len = (size_t)kl;
            mvcc_result_t *res;
            if (mvcc_apply(b, &op, &res) == 0)
                mvcc_result_free(res);
        }
        if ((rc = mvcc_batch_commit(b)) != 0)
            return rc;
    }
    int64_t rev;
    mvcc_state(db, NULL, NULL, &rev, NULL);
    if ((rc = mvcc_batch_begin(db, &b)) != 0)
        return rc;
    mvcc_compact(b, rev);
    if ((rc = mvcc_batch_commit(b)) != 0)
        return rc;
    struct writer w = {.db = db};
    atomic_init(&w.stop, false);
    atomic_init(&w.worst, 0);
    atomic_init(&w.worst_wait, 0);
    pthread_t th;
    if (pthread_create(&th, NULL, write_loop, &w) != 0)
        return -EAGAIN;
    double t0 = now_s(), worst_step = 0;
    bool done = false;
    int steps = 0;
    while (!done && rc == 0) {
        double s0 = now_s();
        rc = mvcc_compact_step(db, 1000, &done);
        if (now_s() - s0 > worst_step)
            worst_step = now_s() - s0;
        steps++;
    }
    double compact_s = now_s() - t0, compact_worst = w.worst, compact_wait = w.worst_wait;
    w.worst = 0;
    w.worst_wait = 0;
    uint64_t before, after, held = 0;
    mvcc_size(db, &before, NULL);
    struct util_err err;
    t0 = now_s();
    if (rc == 0)
        rc = mvcc_defrag(db, &held, &err);
    double defrag_s = now_s() - t0;
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    mvcc_size(db, &after, NULL);
    if (rc != 0)
        return rc;
    printf("compaction of %ld deleted keys: %.1f s in %d steps of 1000 records, longest step "
           "%.1f ms; writer: longest batch %.1f ms, longest lock wait %.1f ms\n",
           n / 2, compact_s, steps, worst_step * 1e3, compact_worst * 1e3, compact_wait * 1e3);
    printf("defrag: %.1f s, %.0f -> %.0f MiB, writes held %.2f ms; writer: longest batch %.1f "
           "ms, longest lock wait %.1f ms (%ld puts in all)\n",
           defrag_s, before / 1048576.0, after / 1048576.0, held / 1e6, w.worst * 1e3,
           w.worst_wait * 1e3, w.puts);
    return 0;
}

/* Child mode: open, report, close. */
static int open_only(const char *path) {
    long before = status_kib("VmRSS");
    double t0 = now_s();
    mvcc_t *db;
    if (open_db(path, false, &db) != 0)
        return 1;
    double t1 = now_s();
    long after = status_kib("VmRSS");
    int64_t rev;
    mvcc_state(db, NULL, NULL, &rev, NULL);
    double t2 = now_s();
    printf("open %s: %.2f ms (first state read +%.2f ms), VmRSS %ld KiB after open (%ld KiB "
           "before), revision %lld\n",
           path, (t1 - t0) * 1e3, (t2 - t1) * 1e3, after, before, (long long)rev);
    mvcc_close(db);
    return 0;
}

/* Opens `path` in a new process, so RSS counts nothing of the builder's. */
static int open_child(const char *self, const char *path) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        execl("/proc/self/exe", self, "--open", path, (char *)NULL);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--open") == 0)
        return open_only(argv[2]);
    if (argc < 2) {
        fprintf(stderr, "usage: bench_mvcc DIR [KEYS...]\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[512];
    mvcc_t *db;
    double secs;
    long n = 1000000;
    for (int wm = 1; wm >= 0; wm--) {
        snprintf(path, sizeof(path), "%s/bench-puts%s", dir, wm ? "-wm" : "");
        if (open_db(path, wm, &db) != 0 || fill(db, n, true, &secs) != 0)
            return 1;
        uint64_t size;
        mvcc_size(db, &size, NULL);
        printf("puts: %ld keys, %d-byte values, %d per batch, no sync%s: %.0f puts/s (%.1f s, "
               "db %.0f MiB)\n",
               n, VALUE_LEN, PER_BATCH, wm ? ", write_map" : "", n / secs, secs, size / 1048576.0);
        if (wm) {
            mvcc_close(db);
            unlink(path);
        }
    }
    double t0 = now_s();
    mvcc_sync(db);
    printf("sync after load: %.0f ms\n", (now_s() - t0) * 1e3);
    if (range_latency(db, n) != 0 || full_stream(db) != 0)
        return 1;
    uint32_t hash;
    int64_t cur, comp;
    t0 = now_s();
    if (mvcc_hash_kv(db, 0, &hash, &cur, &comp) != 0)
        return 1;
    printf("hashkv over %ld revisions: %.0f ms\n", n, (now_s() - t0) * 1e3);
    mvcc_close(db);
    if (open_child(argv[0], path) != 0)
        return 1;
    if (open_db(path, false, &db) != 0 || maintenance(db, n) != 0)
        return 1;
    mvcc_close(db);

    for (int a = 2; a < argc; a++) {
        long keys = atol(argv[a]);
        snprintf(path, sizeof(path), "%s/bench-%ld", dir, keys);
        if (access(path, F_OK) != 0) {
            if (open_db(path, true, &db) != 0 || fill(db, keys, false, &secs) != 0)
                return 1;
            mvcc_close(db);
            printf("built %s: %ld keys in %.1f s (%.0f puts/s, sequential keys)\n", path, keys,
                   secs, keys / secs);
        }
        if (open_child(argv[0], path) != 0)
            return 1;
    }
    return 0;
}
