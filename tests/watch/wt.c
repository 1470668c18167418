/* Shared helpers of the watch tests (see wt.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wt.h"

const char WT_FROM_KEY[] = "";

static void count_wakeup(void *arg) {
    struct wt *t = arg;
    t->sync_wakeups++;
}

void wt_open(struct wt *t, const struct watch_hub_options *opt) {
    memset(t, 0, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/quoin-watch-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/db", t->dir);
    struct util_err err;
    struct mvcc_options mo = {.no_sync = true};
    if (mvcc_open(t->path, &mo, NULL, &t->db, &err) != 0)
        fail_msg("mvcc_open: %s", err.msg);
    struct watch_hub_options o = {0};
    if (opt != NULL)
        o = *opt;
    if (o.sync_wanted == NULL) {
        o.sync_wanted = count_wakeup;
        o.sync_arg = t;
    }
    assert_int_equal(watch_hub_create(t->db, &o, NULL, &t->hub), 0);
}

void wt_close(struct wt *t) {
    watch_hub_destroy(t->hub);
    mvcc_close(t->db);
    char buf[160];
    snprintf(buf, sizeof(buf), "%s/db", t->dir);
    unlink(buf);
    snprintf(buf, sizeof(buf), "%s/db-lock", t->dir);
    unlink(buf);
    rmdir(t->dir);
}

int64_t wt_apply(struct wt *t, const struct mvcc_op *ops, size_t n,
                 void (*seen)(const struct mvcc_event *ev, void *arg), void *arg) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    mvcc_result_t **res = calloc(n ? n : 1, sizeof(*res));
    assert_non_null(res);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(mvcc_apply(b, &ops[i], &res[i]), 0);
        total += res[i]->n_events;
    }
    int64_t rev = mvcc_batch_revision(b);
    /* Events reach `seen` before the commit: a catch-up on another thread
     * may read them from history as soon as they are committed. */
    struct mvcc_event *evs = calloc(total ? total : 1, sizeof(*evs));
    assert_non_null(evs);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < res[i]->n_events; j++) {
            evs[k] = res[i]->events[j];
            if (seen != NULL)
                seen(&evs[k], arg);
            k++;
        }
    assert_int_equal(mvcc_batch_commit(b), 0);
    watch_hub_publish(t->hub, evs, total, rev);
    free(evs);
    for (size_t i = 0; i < n; i++)
        mvcc_result_free(res[i]);
    free(res);
    return rev;
}

int64_t wt_apply_unpublished(struct wt *t, const struct mvcc_op *ops, size_t n,
                             int64_t compact_at) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    for (size_t i = 0; i < n; i++) {
        mvcc_result_t *res;
        assert_int_equal(mvcc_apply(b, &ops[i], &res), 0);
        mvcc_result_free(res);
    }
    int64_t rev = mvcc_batch_revision(b);
    if (compact_at != 0)
        assert_int_equal(mvcc_compact(b, compact_at), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    return rev;
}

struct mvcc_op wt_op_put(const char *key, const char *value) {
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = (const uint8_t *)key;
    op.u.put.key_len = strlen(key);
    op.u.put.value = (const uint8_t *)value;
    op.u.put.value_len = strlen(value);
    return op;
}

struct mvcc_op wt_op_del(const char *key, const char *end) {
    struct mvcc_op op = {.type = MVCC_OP_DELETE};
    op.u.del.key = (const uint8_t *)key;
    op.u.del.key_len = strlen(key);
    if (end == WT_FROM_KEY) {
        op.u.del.range_end = (const uint8_t *)"";
        op.u.del.range_end_len = 1;
    } else if (end != NULL) {
        op.u.del.range_end = (const uint8_t *)end;
        op.u.del.range_end_len = strlen(end);
    }
    return op;
}

int64_t wt_put(struct wt *t, const char *key, const char *value) {
    struct mvcc_op op = wt_op_put(key, value);
    return wt_apply(t, &op, 1, NULL, NULL);
}

int64_t wt_del(struct wt *t, const char *key, const char *end) {
    struct mvcc_op op = wt_op_del(key, end);
    return wt_apply(t, &op, 1, NULL, NULL);
}

void wt_compact(struct wt *t, int64_t rev, bool sweep) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    assert_int_equal(mvcc_compact(b, rev), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    bool done = !sweep;
    while (!done)
        assert_int_equal(mvcc_compact_step(t->db, 64, &done), 0);
}

void wt_sync(struct wt *t) {
    int rc;
    while ((rc = watch_hub_sync_step(t->hub, 0)) == 1)
        ;
    assert_int_equal(rc, 0);
}

watch_stream_t *wt_stream(struct wt *t, size_t budget) {
    watch_stream_t *st;
    assert_int_equal(watch_stream_open(t->hub, budget, NULL, NULL, &st), 0);
    return st;
}

void wt_finish(struct wt *t, watch_stream_t *st) {
    watch_stream_close(st);
    wt_close(t);
}

int64_t wt_watch(watch_stream_t *st, const char *key, const char *end, int64_t start) {
    struct watch_create_req req = {
        .key = (const uint8_t *)key, .key_len = strlen(key), .start_revision = start};
    if (end == WT_FROM_KEY) {
        req.range_end = (const uint8_t *)"";
        req.range_end_len = 1;
    } else if (end != NULL) {
        req.range_end = (const uint8_t *)end;
        req.range_end_len = strlen(end);
    }
    int64_t id;
    assert_int_equal(watch_stream_create(st, &req, &id), 0);
    return id;
}

int64_t wt_watch_created(watch_stream_t *st, const char *key, const char *end, int64_t start) {
    int64_t id = wt_watch(st, key, end, start);
    wt_expect_created(st, id);
    return id;
}

struct watch_response *wt_pop(watch_stream_t *st) {
    struct watch_response *r = NULL;
    assert_int_equal(watch_stream_pop(st, &r), 0);
    assert_non_null(r);
    return r;
}

void wt_assert_empty(watch_stream_t *st) {
    struct watch_response *r = NULL;
    assert_int_equal(watch_stream_pop(st, &r), -EAGAIN);
    assert_int_equal(watch_stream_queued_bytes(st), 0);
}

void wt_expect_created(watch_stream_t *st, int64_t id) {
    struct watch_response *r = wt_pop(st);
    assert_true(r->created);
    assert_false(r->canceled);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->n_events, 0);
    watch_response_free(r);
}

static bool bytes_are(const uint8_t *p, size_t n, const char *s) {
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

bool wt_is_put(const struct mvcc_event *ev, const char *key, const char *value, int64_t rev) {
    return ev->type == MVCC_EVENT_PUT && bytes_are(ev->kv.key, ev->kv.key_len, key) &&
           bytes_are(ev->kv.value, ev->kv.value_len, value) && ev->kv.mod_revision == rev;
}

bool wt_is_del(const struct mvcc_event *ev, const char *key, int64_t rev) {
    return ev->type == MVCC_EVENT_DELETE && bytes_are(ev->kv.key, ev->kv.key_len, key) &&
           ev->kv.mod_revision == rev;
}

long wt_env_long(const char *name, long def) {
    const char *v = getenv(name);
    return v != NULL && *v ? strtol(v, NULL, 10) : def;
}
