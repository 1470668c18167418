/* Unit tests of the watch engine: create, cancel, ids, filters, prev_kv,
 * ranges, start revisions (past, future, compacted), progress, fragments,
 * slow consumers and restore, on a real mvcc store. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wt.h"

static void test_create_current_and_live_events(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t r1 = wt_put(&t, "a", "1");
    watch_stream_t *st = wt_stream(&t, 0);
    int64_t id = wt_watch(st, "a", NULL, 0);
    assert_int_equal(id, 0);
    struct watch_response *r = wt_pop(st);
    assert_true(r->created);
    assert_int_equal(r->revision, r1); /* header: the hub's revision */
    watch_response_free(r);
    wt_assert_empty(st);
    int64_t r2 = wt_put(&t, "a", "2");
    wt_put(&t, "b", "x"); /* another key: nothing */
    r = wt_pop(st);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->n_events, 1);
    assert_true(wt_is_put(r->events[0], "a", "2", r2));
    assert_int_equal(r->events[0]->kv.version, 2);
    assert_int_equal(r->revision, r2);
    assert_false(r->prev_kv);
    watch_response_free(r);
    int64_t r3 = wt_del(&t, "a", NULL);
    r = wt_pop(st);
    assert_int_equal(r->n_events, 1);
    assert_true(wt_is_del(r->events[0], "a", r3));
    watch_response_free(r);
    wt_assert_empty(st);
    wt_finish(&t, st);
}

static void test_watch_ids(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    assert_int_equal(wt_watch(st, "a", NULL, 0), 0);
    assert_int_equal(wt_watch(st, "a", NULL, 0), 1);
    /* A client-chosen id, then auto ids skip it. */
    struct watch_create_req req = {.key = (const uint8_t *)"a", .key_len = 1, .watch_id = 2};
    int64_t id;
    assert_int_equal(watch_stream_create(st, &req, &id), 0);
    assert_int_equal(id, 2);
    assert_int_equal(wt_watch(st, "a", NULL, 0), 3);
    /* Duplicate id: etcd's rejection on the stream. */
    assert_int_equal(watch_stream_create(st, &req, &id), WATCH_EDUPID);
    for (int i = 0; i < 4; i++)
        wt_expect_created(st, i);
    struct watch_response *r = wt_pop(st);
    assert_true(r->created && r->canceled);
    assert_int_equal(r->watch_id, -1);
    assert_string_equal(r->cancel_reason, "mvcc: duplicate watch ID provided on the WatchStream");
    watch_response_free(r);
    /* A rejection the transport decided (auth) queues in order. */
    assert_int_equal(watch_stream_reject(st, "etcdserver: permission denied"), 0);
    r = wt_pop(st);
    assert_true(r->created && r->canceled);
    assert_int_equal(r->watch_id, -1);
    assert_string_equal(r->cancel_reason, "etcdserver: permission denied");
    watch_response_free(r);
    /* Cancel frees the id; auto allocation goes on from its counter. */
    assert_int_equal(watch_stream_cancel(st, 1), 0);
    r = wt_pop(st);
    assert_true(r->canceled);
    assert_false(r->created);
    assert_int_equal(r->watch_id, 1);
    watch_response_free(r);
    assert_int_equal(watch_stream_cancel(st, 1), -ENOENT);
    assert_int_equal(watch_stream_cancel(st, 77), -ENOENT);
    wt_assert_empty(st);
    assert_int_equal(wt_watch(st, "a", NULL, 0), 4);
    wt_expect_created(st, 4);
    /* Ids are per stream. */
    watch_stream_t *st2 = wt_stream(&t, 0);
    assert_int_equal(wt_watch(st2, "a", NULL, 0), 0);
    wt_expect_created(st2, 0);
    /* Every live watcher of both streams gets the put, in id order per stream. */
    int64_t rev = wt_put(&t, "a", "v");
    int64_t want[] = {0, 2, 3, 4};
    bool seen[5] = {false};
    for (int i = 0; i < 4; i++) {
        r = wt_pop(st);
        assert_int_equal(r->n_events, 1);
        assert_true(wt_is_put(r->events[0], "a", "v", rev));
        assert_true(r->watch_id >= 0 && r->watch_id < 5);
        seen[r->watch_id] = true;
        watch_response_free(r);
    }
    for (int i = 0; i < 4; i++)
        assert_true(seen[want[i]]);
    r = wt_pop(st2);
    assert_int_equal(r->watch_id, 0);
    watch_response_free(r);
    wt_assert_empty(st);
    watch_stream_close(st);
    watch_stream_close(st2);
    wt_close(&t);
}

static void test_cancel_stops_events(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    int64_t id = wt_watch(st, "k", NULL, 0);
    int64_t rev = wt_put(&t, "k", "1");
    assert_int_equal(watch_stream_cancel(st, id), 0);
    wt_put(&t, "k", "2");
    wt_expect_created(st, id);
    struct watch_response *r = wt_pop(st);
    assert_true(wt_is_put(r->events[0], "k", "1", rev)); /* queued before: kept */
    watch_response_free(r);
    r = wt_pop(st);
    assert_true(r->canceled);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->compact_revision, 0);
    assert_null(r->cancel_reason);
    watch_response_free(r);
    wt_assert_empty(st);
    wt_finish(&t, st);
}

static void test_filters_and_prev_kv(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    wt_put(&t, "k", "0");
    watch_stream_t *st = wt_stream(&t, 0);
    struct watch_create_req req = {.key = (const uint8_t *)"k", .key_len = 1};
    int64_t noput, nodel, prev, id;
    req.filters = WATCH_FILTER_NOPUT;
    assert_int_equal(watch_stream_create(st, &req, &noput), 0);
    req.filters = WATCH_FILTER_NODELETE;
    assert_int_equal(watch_stream_create(st, &req, &nodel), 0);
    req.filters = 0;
    req.prev_kv = true;
    assert_int_equal(watch_stream_create(st, &req, &prev), 0);
    for (int64_t i = 0; i < 3; i++)
        wt_expect_created(st, i);
    int64_t r1 = wt_put(&t, "k", "1");
    int64_t r2 = wt_del(&t, "k", NULL);
    (void)id;
    /* Per revision: nodel and prev get the put; noput and prev the delete
     * (in any order between watchers). */
    struct watch_response *r;
    for (int i = 0; i < 4; i++) {
        r = wt_pop(st);
        assert_int_equal(r->n_events, 1);
        const struct mvcc_event *ev = r->events[0];
        if (i < 2) {
            assert_true(wt_is_put(ev, "k", "1", r1));
            assert_true(r->watch_id == nodel || r->watch_id == prev);
        } else {
            assert_true(wt_is_del(ev, "k", r2));
            assert_true(r->watch_id == noput || r->watch_id == prev);
        }
        assert_int_equal(r->prev_kv, r->watch_id == prev);
        if (r->watch_id == prev) {
            assert_true(ev->has_prev);
            assert_memory_equal(ev->prev_kv.value, i < 2 ? "0" : "1", 1);
        }
        watch_response_free(r);
    }
    wt_assert_empty(st);
    /* prev_kv also comes from history. */
    req.start_revision = r1;
    assert_int_equal(watch_stream_create(st, &req, &id), 0);
    wt_expect_created(st, id);
    wt_sync(&t);
    r = wt_pop(st);
    assert_int_equal(r->n_events, 2);
    assert_true(r->prev_kv && r->events[0]->has_prev && r->events[1]->has_prev);
    assert_memory_equal(r->events[0]->prev_kv.value, "0", 1);
    assert_memory_equal(r->events[1]->prev_kv.value, "1", 1);
    watch_response_free(r);
    wt_finish(&t, st);
}

/* Each kind of range sees exactly its keys. */
static void test_ranges(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    struct {
        const char *key, *end, *want;
    } cases[] = {
        {"b", NULL, "b,"},                       /* single key */
        {"b", "c", "b,b/x,"},                    /* [b, c): the prefix b */
        {"b/", "b0", "b/x,"},                    /* prefix b/ */
        {"b", WT_FROM_KEY, "b,b/x,c,zz,"},       /* from key */
        {"", WT_FROM_KEY, "\x01,a,b,b/x,c,zz,"}, /* every key */
        {"a", "b", "a,"},
    };
    size_t n = sizeof(cases) / sizeof(cases[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(wt_watch(st, cases[i].key, cases[i].end, 0), (int64_t)i);
    /* Empty ranges are rejected as etcd does. */
    struct watch_create_req bad = {.key = (const uint8_t *)"b",
                                   .key_len = 1,
                                   .range_end = (const uint8_t *)"a",
                                   .range_end_len = 1};
    int64_t id;
    assert_int_equal(watch_stream_create(st, &bad, &id), WATCH_EEMPTYRANGE);
    bad.range_end = (const uint8_t *)"b";
    assert_int_equal(watch_stream_create(st, &bad, &id), WATCH_EEMPTYRANGE);
    for (size_t i = 0; i < n; i++)
        wt_expect_created(st, (int64_t)i);
    for (int i = 0; i < 2; i++) {
        struct watch_response *r = wt_pop(st);
        assert_true(r->canceled && r->created);
        assert_string_equal(r->cancel_reason, "mvcc: watcher range is empty");
        watch_response_free(r);
    }
    const char *keys[] = {"\x01", "a", "b", "b/x", "c", "zz"};
    for (size_t k = 0; k < 6; k++)
        wt_put(&t, keys[k], "v");
    char got[6][64] = {{0}};
    struct watch_response *r;
    while (watch_stream_pop(st, &r) == 0) {
        for (size_t i = 0; i < r->n_events; i++) {
            strncat(got[r->watch_id], (const char *)r->events[i]->kv.key, r->events[i]->kv.key_len);
            strcat(got[r->watch_id], ",");
        }
        watch_response_free(r);
    }
    for (size_t i = 0; i < n; i++)
        assert_string_equal(got[i], cases[i].want);
    wt_finish(&t, st);
}

static void test_past_start_catches_up_without_gap(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t first = wt_put(&t, "k", "0");
    for (int i = 1; i < 10; i++)
        wt_put(&t, "k", "x");
    watch_stream_t *st = wt_stream(&t, 0);
    wt_watch_created(st, "k", NULL, first + 3);
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.unsynced, 1);
    assert_true(t.sync_wakeups > 0);
    /* Writes published while it is unsynced come from history, once. */
    wt_put(&t, "k", "y");
    wt_assert_empty(st);
    wt_sync(&t);
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.unsynced, 0);
    assert_int_equal(s.synced, 1);
    int64_t last = wt_put(&t, "k", "z");
    int64_t want = first + 3;
    struct watch_response *r;
    while (watch_stream_pop(st, &r) == 0) {
        for (size_t i = 0; i < r->n_events; i++)
            assert_int_equal(r->events[i]->kv.mod_revision, want++);
        assert_true(r->revision >= want - 1);
        watch_response_free(r);
    }
    assert_int_equal(want, last + 1);
    wt_finish(&t, st);
}

/* A watcher far behind does not hold up one near the head: steps take turns
 * leading the scan. */
static void test_catch_up_takes_turns(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t first = wt_put(&t, "far", "0");
    for (int i = 0; i < 300; i++)
        wt_put(&t, "far", "x");
    int64_t near = wt_put(&t, "near", "1");
    watch_stream_t *st = wt_stream(&t, 0);
    int64_t f = wt_watch(st, "far", NULL, first);
    int64_t n = wt_watch(st, "near", NULL, near);
    wt_expect_created(st, f);
    wt_expect_created(st, n);
    bool near_done = false;
    for (int step = 0; step < 4 && !near_done; step++) {
        assert_int_equal(watch_hub_sync_step(t.hub, 10), 1);
        struct watch_response *r;
        while (watch_stream_pop(st, &r) == 0) {
            near_done |= r->watch_id == n;
            watch_response_free(r);
        }
    }
    assert_true(near_done); /* long before the far one's 300 revisions */
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.unsynced, 1);
    wt_sync(&t);
    wt_finish(&t, st);
}

static void test_future_start(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t rev = wt_put(&t, "k", "0");
    watch_stream_t *st = wt_stream(&t, 0);
    wt_watch_created(st, "k", NULL, rev + 3);
    wt_put(&t, "k", "1");
    wt_put(&t, "k", "2");
    wt_assert_empty(st);
    int64_t r3 = wt_put(&t, "k", "3");
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->n_events, 1);
    assert_true(wt_is_put(r->events[0], "k", "3", r3));
    watch_response_free(r);
    wt_finish(&t, st);
}

static void test_compacted_start(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t r1 = wt_put(&t, "k", "1");
    wt_put(&t, "k", "2");
    int64_t r3 = wt_del(&t, "k", NULL);
    int64_t r4 = wt_put(&t, "k", "4");
    wt_compact(&t, r3, true);
    watch_stream_t *st = wt_stream(&t, 0);
    /* Below the compaction, and at it (its delete is gone from history). */
    int64_t a = wt_watch(st, "k", NULL, r1);
    int64_t b = wt_watch(st, "k", NULL, r3);
    int64_t c = wt_watch(st, "k", NULL, r3 + 1);
    wt_expect_created(st, a);
    wt_expect_created(st, b);
    wt_expect_created(st, c);
    wt_sync(&t);
    int compacted = 0;
    struct watch_response *r;
    while (watch_stream_pop(st, &r) == 0) {
        if (r->compact_revision != 0) {
            assert_true(r->watch_id == a || r->watch_id == b);
            assert_true(r->canceled);
            assert_int_equal(r->compact_revision, r3 + 1);
            assert_int_equal(r->n_events, 0);
            compacted++;
        } else {
            assert_int_equal(r->watch_id, c);
            assert_int_equal(r->n_events, 1);
            assert_true(wt_is_put(r->events[0], "k", "4", r4));
        }
        watch_response_free(r);
    }
    assert_int_equal(compacted, 2);
    /* The compacted watchers are gone: their ids are free again. */
    struct watch_create_req req = {.key = (const uint8_t *)"k", .key_len = 1, .watch_id = a};
    int64_t id;
    assert_int_equal(watch_stream_create(st, &req, &id), 0);
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.synced, 2);
    wt_finish(&t, st);
}

static void test_compaction_while_slow(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 64);
    int64_t id = wt_watch_created(st, "k", NULL, 0);
    int64_t r1 = wt_put(&t, "k", "1"); /* queue empty: accepted whole */
    int64_t last = 0;
    for (int i = 0; i < 5; i++)
        last = wt_put(&t, "k", "v");
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.unsynced, 1);
    wt_compact(&t, last, true);
    struct watch_response *r = wt_pop(st);
    assert_true(wt_is_put(r->events[0], "k", "1", r1));
    assert_int_equal(r->revision, r1);
    watch_response_free(r);
    wt_sync(&t);
    r = wt_pop(st);
    assert_true(r->canceled);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->compact_revision, last + 1);
    assert_int_equal(r->revision, r1); /* it had everything up to r1 */
    watch_response_free(r);
    wt_assert_empty(st);
    wt_finish(&t, st);
}

static void test_slow_consumer_bounded_then_complete(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st;
    const size_t budget = 512;
    assert_int_equal(watch_stream_open(t.hub, budget, NULL, NULL, &st), 0);
    int64_t id = wt_watch(st, "k", "l", 0);
    char key[16];
    int64_t first = 0, last = 0;
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "k%03d", i);
        last = wt_put(&t, key, "some value of a few bytes");
        if (first == 0)
            first = last;
        assert_true(watch_stream_queued_bytes(st) <= budget);
    }
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.unsynced, 1);
    int wakeups = t.sync_wakeups;
    /* The client reads again: catch-up, page by page within the budget. */
    int64_t want = first;
    bool created = false;
    for (int rounds = 0; rounds < 10000 && want <= last; rounds++) {
        struct watch_response *r;
        if (watch_stream_pop(st, &r) != 0) {
            assert_true(watch_hub_sync_step(t.hub, 50) >= 0);
            assert_true(watch_stream_queued_bytes(st) <= 2 * budget);
            continue;
        }
        if (r->created) {
            created = true;
        } else {
            assert_int_equal(r->watch_id, id);
            for (size_t i = 0; i < r->n_events; i++)
                assert_int_equal(r->events[i]->kv.mod_revision, want++);
            assert_int_equal(r->revision, want - 1);
        }
        watch_response_free(r);
    }
    assert_true(created);
    assert_int_equal(want, last + 1);
    assert_true(t.sync_wakeups > wakeups); /* draining woke the sync */
    wt_sync(&t);
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.synced, 1);
    int64_t live = wt_put(&t, "k999", "v");
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->events[0]->kv.mod_revision, live);
    watch_response_free(r);
    wt_finish(&t, st);
}

/* A revision larger than the whole budget still gets through a catch-up on a
 * stream whose queue live traffic keeps non-empty. */
static void test_big_revision_on_busy_stream(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    char big[600];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    struct mvcc_op puts[2] = {wt_op_put("b1", big), wt_op_put("b2", big)};
    struct mvcc_txn_req txn = {.success = puts, .n_success = 2};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &txn};
    int64_t rev = wt_apply(&t, &op, 1, NULL, NULL);
    watch_stream_t *st = wt_stream(&t, 400);
    int64_t live = wt_watch(st, "x", NULL, 0);
    int64_t past = wt_watch(st, "b", "c", rev);
    wt_expect_created(st, live);
    wt_expect_created(st, past);
    wt_put(&t, "x", "1"); /* the queue is not empty when the step runs */
    assert_true(watch_stream_queued_bytes(st) > 0);
    assert_true(watch_hub_sync_step(t.hub, 0) >= 0);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->watch_id, live);
    watch_response_free(r);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, past);
    assert_int_equal(r->n_events, 2);
    assert_true(watch_response_size(r) > 400);
    watch_response_free(r);
    wt_finish(&t, st);
}

static void test_progress_request(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t r1 = wt_put(&t, "k", "1");
    watch_stream_t *st = wt_stream(&t, 0);
    /* No watcher: answered at once with the revision. */
    assert_int_equal(watch_stream_request_progress(st), 0);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->watch_id, -1);
    assert_int_equal(r->revision, r1);
    assert_false(r->created || r->canceled);
    assert_int_equal(r->n_events, 0);
    watch_response_free(r);
    /* A watcher catching up holds the answer back until its events are out. */
    int64_t id = wt_watch(st, "k", NULL, r1);
    int64_t r2 = wt_put(&t, "k", "2");
    assert_int_equal(watch_stream_request_progress(st), 0);
    assert_int_equal(watch_stream_request_progress(st), 0);
    wt_expect_created(st, id);
    wt_assert_empty(st);
    wt_sync(&t);
    r = wt_pop(st);
    assert_int_equal(r->n_events, 2);
    assert_int_equal(r->events[1]->kv.mod_revision, r2);
    watch_response_free(r);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, -1);
    assert_int_equal(r->revision, r2);
    watch_response_free(r);
    wt_assert_empty(st); /* the two requests got one answer */
    /* Requests while an answer is unread share it. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(watch_stream_request_progress(st), 0);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, -1);
    watch_response_free(r);
    wt_assert_empty(st);
    /* A pending answer is also released when the lagging watcher goes. */
    int64_t id2 = wt_watch(st, "k", NULL, r1);
    assert_int_equal(watch_stream_request_progress(st), 0);
    assert_int_equal(watch_stream_cancel(st, id2), 0);
    wt_expect_created(st, id2);
    r = wt_pop(st);
    assert_true(r->canceled);
    watch_response_free(r);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, -1);
    assert_int_equal(r->revision, r2);
    watch_response_free(r);
    wt_finish(&t, st);
}

static void test_progress_tick(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t r1 = wt_put(&t, "k", "1");
    watch_stream_t *st = wt_stream(&t, 0);
    struct watch_create_req req = {
        .key = (const uint8_t *)"k", .key_len = 1, .progress_notify = true};
    int64_t id, plain;
    assert_int_equal(watch_stream_create(st, &req, &id), 0);
    plain = wt_watch(st, "k", NULL, 0);
    wt_expect_created(st, id);
    wt_expect_created(st, plain);
    watch_stream_progress_tick(st);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->revision, r1);
    assert_int_equal(r->n_events, 0);
    watch_response_free(r);
    wt_assert_empty(st);
    /* After events the next tick is elided, then notifications resume. */
    int64_t r2 = wt_put(&t, "k", "2");
    for (int i = 0; i < 2; i++)
        watch_response_free(wt_pop(st));
    watch_stream_progress_tick(st);
    wt_assert_empty(st);
    watch_stream_progress_tick(st);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, id);
    assert_int_equal(r->revision, r2);
    watch_response_free(r);
    /* A lagging watcher gets no periodic progress. */
    req.start_revision = r1;
    int64_t lag;
    assert_int_equal(watch_stream_create(st, &req, &lag), 0);
    wt_expect_created(st, lag);
    watch_stream_progress_tick(st);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, id);
    watch_response_free(r);
    wt_assert_empty(st);
    wt_finish(&t, st);
}

static void test_revisions_kept_whole(void **state) {
    (void)state;
    struct watch_hub_options o = {.max_response_bytes = 200};
    struct wt t;
    wt_open(&t, &o);
    watch_stream_t *st = wt_stream(&t, 0);
    wt_watch_created(st, "", WT_FROM_KEY, 0);
    /* One batch: three revisions; the middle one a txn of six puts. */
    struct mvcc_op puts[6];
    const char *keys[] = {"t1", "t2", "t3", "t4", "t5", "t6"};
    for (int i = 0; i < 6; i++)
        puts[i] = wt_op_put(keys[i], "value-value-value");
    struct mvcc_txn_req txn = {.success = puts, .n_success = 6};
    struct mvcc_op ops[3] = {
        wt_op_put("a", "1"), {.type = MVCC_OP_TXN, .u.txn = &txn}, wt_op_put("b", "2")};
    int64_t rev = wt_apply(&t, ops, 3, NULL, NULL);
    /* Each response holds whole revisions; the txn's six events, over the
     * limit, stay together. */
    int64_t seen_rev = 0;
    size_t total = 0;
    struct watch_response *r;
    while (watch_stream_pop(st, &r) == 0) {
        assert_false(r->fragment);
        int64_t lo = r->events[0]->kv.mod_revision;
        int64_t hi = r->events[r->n_events - 1]->kv.mod_revision;
        assert_true(lo > seen_rev);
        if (lo == rev - 1)
            assert_int_equal(r->n_events, 6);
        seen_rev = hi;
        total += r->n_events;
        assert_int_equal(r->revision, hi); /* complete through its last revision */
        watch_response_free(r);
    }
    assert_int_equal(total, 8);
    assert_int_equal(seen_rev, rev);
    wt_finish(&t, st);
}

static void test_fragment(void **state) {
    (void)state;
    struct watch_hub_options o = {.max_response_bytes = 300};
    struct wt t;
    wt_open(&t, &o);
    watch_stream_t *st = wt_stream(&t, 0);
    struct watch_create_req req = {.key = (const uint8_t *)"f",
                                   .key_len = 1,
                                   .range_end = (const uint8_t *)"g",
                                   .range_end_len = 1,
                                   .fragment = true};
    int64_t frag, whole;
    assert_int_equal(watch_stream_create(st, &req, &frag), 0);
    req.fragment = false;
    assert_int_equal(watch_stream_create(st, &req, &whole), 0);
    wt_expect_created(st, frag);
    wt_expect_created(st, whole);
    char val[81];
    memset(val, 'v', 80);
    val[80] = 0;
    struct mvcc_op puts[10];
    char keys[10][16];
    for (int i = 0; i < 10; i++) {
        snprintf(keys[i], sizeof(keys[i]), "f%d", i);
        puts[i] = wt_op_put(keys[i], val);
    }
    struct mvcc_txn_req txn = {.success = puts, .n_success = 10};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &txn};
    int64_t rev = wt_apply(&t, &op, 1, NULL, NULL);
    size_t frag_parts = 0, frag_events = 0, whole_parts = 0;
    struct watch_response *r;
    bool frag_done = false;
    while (watch_stream_pop(st, &r) == 0) {
        assert_int_equal(r->revision, rev);
        if (r->watch_id == frag) {
            assert_false(frag_done);
            frag_parts++;
            frag_events += r->n_events;
            assert_true(watch_response_size(r) <= 300);
            frag_done = !r->fragment;
        } else {
            whole_parts++;
            assert_false(r->fragment);
            assert_int_equal(r->n_events, 10);
        }
        watch_response_free(r);
    }
    assert_true(frag_done);
    assert_true(frag_parts >= 3);
    assert_int_equal(frag_events, 10);
    assert_int_equal(whole_parts, 1);
    wt_finish(&t, st);
}

static void ready_cb(void *arg) {
    (*(int *)arg)++;
}

static void test_ready_callback(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int calls = 0;
    watch_stream_t *st;
    assert_int_equal(watch_stream_open(t.hub, 0, ready_cb, &calls, &st), 0);
    int64_t id = wt_watch(st, "k", NULL, 0);
    assert_int_equal(calls, 1);
    wt_put(&t, "k", "1"); /* queue not empty: no new call */
    assert_int_equal(calls, 1);
    wt_expect_created(st, id);
    watch_response_free(wt_pop(st));
    wt_put(&t, "k", "2");
    assert_int_equal(calls, 2);
    wt_finish(&t, st);
}

static void test_restore(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    wt_watch_created(st, "k", NULL, 0);
    int64_t r1 = wt_put(&t, "k", "1");
    watch_response_free(wt_pop(st));
    /* Writes land in the store without being published (as a snapshot
     * install does), then the hub is told. */
    struct mvcc_op op = wt_op_put("k", "2");
    int64_t r2 = wt_apply_unpublished(&t, &op, 1, 0);
    watch_hub_restore(t.hub, r2);
    assert_int_equal(watch_hub_revision(t.hub), r2);
    wt_sync(&t);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->n_events, 1);
    assert_true(wt_is_put(r->events[0], "k", "2", r2));
    assert_true(r2 == r1 + 1);
    watch_response_free(r);
    int64_t r3 = wt_put(&t, "k", "3");
    r = wt_pop(st);
    assert_true(wt_is_put(r->events[0], "k", "3", r3));
    watch_response_free(r);
    wt_finish(&t, st);
}

static void test_close_with_watchers_in_every_state(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    int64_t r1 = wt_put(&t, "k", "1");
    watch_stream_t *st = wt_stream(&t, 64);
    wt_watch(st, "k", NULL, 0);        /* synced */
    wt_watch(st, "k", NULL, r1);       /* unsynced (past) */
    wt_watch(st, "k", NULL, r1 + 100); /* future */
    wt_watch(st, "a", WT_FROM_KEY, 0); /* range */
    for (int i = 0; i < 20; i++)       /* queue over budget */
        wt_put(&t, "k", "more");
    watch_stream_close(st);
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.streams, 0);
    assert_int_equal(s.synced + s.unsynced, 0);
    wt_sync(&t);
    wt_close(&t);
}

/* A batch published twice, or a publish without events, changes nothing
 * for watchers but the hub's revision. */
static void test_republish_and_empty_publish(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    wt_watch_created(st, "k", NULL, 0);
    struct mvcc_op op = wt_op_put("k", "1");
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t.db, &b), 0);
    mvcc_result_t *res;
    assert_int_equal(mvcc_apply(b, &op, &res), 0);
    int64_t rev = mvcc_batch_revision(b);
    assert_int_equal(mvcc_batch_commit(b), 0);
    watch_hub_publish(t.hub, res->events, res->n_events, rev);
    watch_hub_publish(t.hub, res->events, res->n_events, rev);
    mvcc_result_free(res);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->n_events, 1);
    watch_response_free(r);
    wt_assert_empty(st);
    /* A revision without events for anyone (a lease-only batch, say). */
    watch_hub_publish(t.hub, NULL, 0, rev + 1);
    assert_int_equal(watch_hub_revision(t.hub), rev + 1);
    wt_assert_empty(st);
    int64_t late = wt_watch(st, "k", NULL, 0);
    r = wt_pop(st);
    assert_int_equal(r->watch_id, late);
    assert_int_equal(r->revision, rev + 1);
    watch_response_free(r);
    wt_finish(&t, st);
}

/* After a restore into a store whose history was compacted past a watcher,
 * it gets the compacted response. */
static void test_restore_into_compacted_history(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 0);
    int64_t a = wt_watch_created(st, "k", NULL, 0);
    int64_t r1 = wt_put(&t, "k", "1");
    watch_response_free(wt_pop(st));
    /* The snapshot brings revisions the hub never saw, compacted. */
    struct mvcc_op ops[2] = {wt_op_put("k", "2"), wt_op_put("other", "x")};
    int64_t snap = r1 + 2;
    assert_int_equal(wt_apply_unpublished(&t, ops, 2, snap - 1), snap);
    watch_hub_restore(t.hub, snap);
    wt_sync(&t);
    struct watch_response *r = wt_pop(st);
    assert_int_equal(r->watch_id, a);
    assert_int_equal(r->compact_revision, snap);
    assert_int_equal(r->revision, r1);
    watch_response_free(r);
    wt_assert_empty(st);
    struct watch_hub_stats s;
    watch_hub_stats(t.hub, &s);
    assert_int_equal(s.synced + s.unsynced, 0);
    wt_finish(&t, st);
}

/* Many single-key watchers: each gets exactly its key's events. */
static void test_many_watchers(void **state) {
    (void)state;
    struct wt t;
    wt_open(&t, NULL);
    watch_stream_t *st = wt_stream(&t, 1u << 24);
    char key[16];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "key%04d", i);
        assert_int_equal(wt_watch(st, key, NULL, 0), i);
        watch_response_free(wt_pop(st));
    }
    int64_t revs[2000];
    for (int i = 0; i < 2000; i += 7) {
        snprintf(key, sizeof(key), "key%04d", i);
        revs[i] = wt_put(&t, key, "v");
    }
    struct watch_response *r;
    int n = 0;
    while (watch_stream_pop(st, &r) == 0) {
        assert_int_equal(r->watch_id % 7, 0);
        snprintf(key, sizeof(key), "key%04d", (int)r->watch_id);
        assert_true(wt_is_put(r->events[0], key, "v", revs[r->watch_id]));
        n++;
        watch_response_free(r);
    }
    assert_int_equal(n, (2000 + 6) / 7);
    wt_finish(&t, st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_current_and_live_events),
        cmocka_unit_test(test_watch_ids),
        cmocka_unit_test(test_cancel_stops_events),
        cmocka_unit_test(test_filters_and_prev_kv),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_past_start_catches_up_without_gap),
        cmocka_unit_test(test_catch_up_takes_turns),
        cmocka_unit_test(test_future_start),
        cmocka_unit_test(test_compacted_start),
        cmocka_unit_test(test_compaction_while_slow),
        cmocka_unit_test(test_slow_consumer_bounded_then_complete),
        cmocka_unit_test(test_big_revision_on_busy_stream),
        cmocka_unit_test(test_progress_request),
        cmocka_unit_test(test_progress_tick),
        cmocka_unit_test(test_revisions_kept_whole),
        cmocka_unit_test(test_fragment),
        cmocka_unit_test(test_ready_callback),
        cmocka_unit_test(test_restore),
        cmocka_unit_test(test_close_with_watchers_in_every_state),
        cmocka_unit_test(test_many_watchers),
        cmocka_unit_test(test_republish_and_empty_publish),
        cmocka_unit_test(test_restore_into_compacted_history),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
