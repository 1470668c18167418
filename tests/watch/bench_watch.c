/* Publish cost with many watchers: what the apply thread pays per committed
 * event as the number of watchers grows (the interval index should keep it
 * flat for narrow watchers), and catch-up speed from history. Not a test:
 * `make bench-watch` prints figures. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "watch/watch.h"

static int drain(watch_stream_t *st) {
    struct watch_response *r;
    int n = 0;
    while (watch_stream_pop(st, &r) == 0) {
        n += (int)r->n_events;
        watch_response_free(r);
    }
    return n;
}

/* Publishes `n` single-event batches on random keys of `nkeys` with
 * `watchers` single-key watchers and `ranges` 16-key range watchers; returns
 * nanoseconds per publish. */
static double run(mvcc_t *db, int watchers, int ranges, int nkeys, int n, int *delivered) {
    watch_hub_t *hub;
    watch_stream_t *st;
    if (watch_hub_create(db, NULL, NULL, &hub) != 0 ||
        watch_stream_open(hub, 1u << 30, NULL, NULL, &st) != 0) {
        fprintf(stderr, "bench: cannot create hub\n");
        exit(1);
    }
    char key[32], end[32];
    for (int i = 0; i < watchers + ranges; i++) {
        struct watch_create_req req = {0};
        snprintf(key, sizeof(key), "key%07d", (i * 7919) % nkeys);
        req.key = (const uint8_t *)key;
        req.key_len = strlen(key);
        if (i >= watchers) {
            snprintf(end, sizeof(end), "key%07d", (i * 7919) % nkeys + 16);
            req.range_end = (const uint8_t *)end;
            req.range_end_len = strlen(end);
        }
        int64_t id;
        if (watch_stream_create(st, &req, &id) != 0)
            exit(1);
    }
    drain(st);
    int64_t rev = watch_hub_revision(hub);
    unsigned seed = 1;
    *delivered = 0;
    uint64_t t0 = util_now_mono_ns();
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key%07d", rand_r(&seed) % nkeys);
        struct mvcc_event ev = {.type = MVCC_EVENT_PUT};
        ev.kv.key = (const uint8_t *)key;
        ev.kv.key_len = strlen(key);
        ev.kv.value = (const uint8_t *)"value";
        ev.kv.value_len = 5;
        ev.kv.mod_revision = ++rev;
        ev.kv.create_revision = rev;
        ev.kv.version = 1;
        watch_hub_publish(hub, &ev, 1, rev);
        if (i % 1024 == 0)
            *delivered += drain(st);
    }
    uint64_t ns = util_now_mono_ns() - t0;
    *delivered += drain(st);
    watch_stream_close(st);
    watch_hub_destroy(hub);
    return (double)ns / n;
}

/* Writes `n` puts (1000 per batch, unpublished: only history matters), then
 * times one all-keys watcher catching up from the first of them. */
static void catch_up(mvcc_t *db, int n) {
    int64_t first = 0;
    char key[32];
    for (int i = 0; i < n; i += 1000) {
        mvcc_batch_t *b;
        if (mvcc_batch_begin(db, &b) != 0)
            exit(1);
        for (int j = i; j < i + 1000 && j < n; j++) {
            snprintf(key, sizeof(key), "key%07d", j);
            struct mvcc_op op = {.type = MVCC_OP_PUT};
            op.u.put.key = (const uint8_t *)key;
            op.u.put.key_len = strlen(key);
            op.u.put.value = (const uint8_t *)"a value of some thirty bytes..";
            op.u.put.value_len = 30;
            mvcc_result_t *res;
            if (mvcc_apply(b, &op, &res) != 0)
                exit(1);
            if (first == 0)
                first = res->resp.revision;
            mvcc_result_free(res);
        }
        if (mvcc_batch_commit(b) != 0)
            exit(1);
    }
    watch_hub_t *hub;
    watch_stream_t *st;
    if (watch_hub_create(db, NULL, NULL, &hub) != 0 ||
        watch_stream_open(hub, 0, NULL, NULL, &st) != 0)
        exit(1);
    struct watch_create_req req = {.key = (const uint8_t *)"k",
                                   .key_len = 1,
                                   .range_end = (const uint8_t *)"l",
                                   .range_end_len = 1,
                                   .start_revision = first};
    int64_t id;
    if (watch_stream_create(st, &req, &id) != 0)
        exit(1);
    uint64_t t0 = util_now_mono_ns();
    int got = 0;
    struct watch_hub_stats s;
    do {
        while (watch_hub_sync_step(hub, 0) == 1)
            got += drain(st);
        got += drain(st);
        watch_hub_stats(hub, &s);
    } while (s.unsynced > 0);
    double sec = (double)(util_now_mono_ns() - t0) / 1e9;
    printf("catch-up: %d events from history in %.3f s (%.0f events/s)\n", got, sec, got / sec);
    watch_stream_close(st);
    watch_hub_destroy(hub);
}

int main(void) {
    char dir[] = "/tmp/quoin-bench-watch-XXXXXX", path[64];
    if (mkdtemp(dir) == NULL)
        return 1;
    snprintf(path, sizeof(path), "%s/db", dir);
    mvcc_t *db;
    struct util_err err;
    struct mvcc_options mo = {.no_sync = true};
    if (mvcc_open(path, &mo, NULL, &db, &err) != 0) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    const int nkeys = 1000000, n = 200000;
    int counts[] = {0, 1, 100, 1000, 10000, 100000};
    printf("%-10s %-8s %14s %12s\n", "watchers", "ranges", "ns/publish", "delivered");
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        int delivered;
        double ns = run(db, counts[i], counts[i] / 10, nkeys, n, &delivered);
        printf("%-10d %-8d %14.0f %12d\n", counts[i], counts[i] / 10, ns, delivered);
    }
    catch_up(db, 200000);
    mvcc_close(db);
    unlink(path);
    snprintf(path, sizeof(path), "%s/db-lock", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}
