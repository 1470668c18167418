/* Unit tests of every WAL operation: open, append (with overwrites), hard
 * state, snapshot markers, durability notification, queue bounds, segment
 * roll-over, release and close. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "walt.h"
#include "wal/wal.h"

static const struct wal_options small = {.segment_size = 4096};

/* Asserts the recovered entries are exactly [first, last] with term terms[i]. */
static void expect_log(const struct wal_recovery *rec, uint64_t first, uint64_t last,
                       const uint64_t *terms) {
    assert_int_equal(rec->n_entries, last + 1 - first);
    for (uint64_t i = first; i <= last; i++)
        assert_true(walt_entry_ok(&rec->entries[i - first], i, terms[i - first]));
    assert_int_equal(rec->last_index, last);
}

static void open_empty(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    assert_int_equal(wal_exists("/nonexistent/quoin"), 0);
    assert_int_equal(wal_exists(dir), 0);
    wal_t *w = walt_open(dir, &small, &rec);
    assert_int_equal(wal_exists(dir), 1);
    assert_int_equal(rec.n_entries, 0);
    assert_int_equal(rec.last_index, 0);
    assert_int_equal(rec.hard_state.commit, 0);
    assert_int_equal(rec.snapshot.index, 0);
    struct wal_durable d;
    wal_durable(w, &d);
    assert_int_equal(d.seq, 0);
    assert_int_equal(d.error, 0);
    /* The next segment is prepared in advance, and removed at close. */
    char spare[512];
    walt_path(spare, sizeof(spare), dir, "spare.wal.tmp");
    for (int i = 0; i < 500 && access(spare, F_OK) != 0; i++)
        usleep(2000);
    assert_int_equal(access(spare, F_OK), 0);
    assert_int_equal(walt_file_size(spare), 4096);
    assert_int_equal(wal_close(w), 0);
    assert_int_equal(access(spare, F_OK), -1);
    char **names;
    size_t n = walt_segments(dir, &names);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "0000000000000000-0000000000000001.wal");
    char p[512];
    walt_path(p, sizeof(p), dir, names[0]);
    assert_int_equal(walt_file_size(p), 4096);
    walt_free_names(names, n);
    wal_recovery_free(&rec);
    walt_rmdir(dir);
}

/* wal_open makes the log's directory (not its parents). */
static void open_creates_directory(void **state) {
    (void)state;
    char *dir = walt_tmpdir(), sub[512], deep[512];
    walt_path(sub, sizeof(sub), dir, "wal");
    walt_path(deep, sizeof(deep), dir, "no/such");
    struct wal_recovery rec;
    struct util_err err = {0};
    wal_t *w = NULL;
    assert_int_equal(wal_open(deep, NULL, &w, &rec, &err), -ENOENT);
    assert_non_null(strstr(err.msg, deep));
    w = walt_open(sub, NULL, &rec);
    assert_int_equal(wal_exists(sub), 1);
    char *s = strdup(sub);
    assert_non_null(s);
    walt_finish(w, &rec, s);
    walt_rmdir(dir);
}

static void append_and_reopen(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, NULL, &rec);
    uint64_t seq = 0;
    for (uint64_t i = 0; i < 10; i++) {
        struct wal_hard_state hs = {.term = 1, .vote = 2, .commit = i * 10};
        uint64_t s = walt_append(w, i * 10 + 1, 10, 1, &hs);
        assert_int_equal(s, seq + 1);
        seq = s;
    }
    assert_int_equal(wal_wait(w, seq), 0);
    struct wal_durable d;
    wal_durable(w, &d);
    assert_int_equal(d.seq, seq);
    assert_int_equal(d.index, 100);
    assert_int_equal(d.term, 1);
    assert_int_equal(wal_close(w), 0);

    w = walt_open(dir, NULL, &rec);
    uint64_t terms[100];
    for (int i = 0; i < 100; i++)
        terms[i] = 1;
    expect_log(&rec, 1, 100, terms);
    assert_int_equal(rec.hard_state.term, 1);
    assert_int_equal(rec.hard_state.vote, 2);
    assert_int_equal(rec.hard_state.commit, 90);
    assert_int_equal(rec.last_term, 1);
    wal_recovery_free(&rec);
    /* Appending continues where the log ended, with seqs from 1 again. */
    assert_int_equal(walt_append(w, 101, 1, 2, NULL), 1);
    walt_reopen(&w, dir, NULL, &rec);
    assert_int_equal(rec.n_entries, 101);
    assert_true(walt_entry_ok(&rec.entries[100], 101, 2));
    walt_finish(w, &rec, dir);
}

static void empty_data_entries(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, NULL, &rec);
    struct wal_entry e[2] = {{.index = 1, .term = 1, .type = 7}, {.index = 2, .term = 1}};
    assert_int_equal(wal_append(w, e, 2, NULL, NULL), 0);
    walt_reopen(&w, dir, NULL, &rec);
    assert_int_equal(rec.n_entries, 2);
    assert_int_equal(rec.entries[0].len, 0);
    assert_int_equal(rec.entries[0].type, 7);
    assert_int_equal(rec.entries[1].index, 2);
    walt_finish(w, &rec, dir);
}

/* Raft overwrites a conflicting suffix by appending at a lower index. */
static void overwrite_suffix(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &small, &rec);
    walt_append(w, 1, 10, 1, NULL);
    uint64_t seq = walt_append(w, 6, 3, 2, NULL);
    assert_int_equal(wal_wait(w, seq), 0);
    struct wal_durable d;
    wal_durable(w, &d);
    assert_int_equal(d.index, 8);
    assert_int_equal(d.term, 2);
    /* The log now ends at 8: 9 and 10 are gone, so 10 would leave a gap. */
    uint8_t buf[WALT_MAX_DATA];
    struct wal_entry e;
    walt_entry(&e, 10, 2, buf);
    assert_int_equal(wal_append(w, &e, 1, NULL, NULL), -EINVAL);
    assert_int_equal(wal_close(w), 0);

    w = walt_open(dir, &small, &rec);
    uint64_t terms[] = {1, 1, 1, 1, 1, 2, 2, 2};
    expect_log(&rec, 1, 8, terms);
    wal_recovery_free(&rec);
    walt_append(w, 4, 1, 3, NULL);
    walt_reopen(&w, dir, &small, &rec);
    uint64_t terms2[] = {1, 1, 1, 3};
    expect_log(&rec, 1, 4, terms2);
    walt_finish(w, &rec, dir);
}

static void invalid_calls(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, NULL, &rec);
    uint8_t buf[2][WALT_MAX_DATA];
    struct wal_entry e[2];
    walt_entry(&e[0], 0, 1, buf[0]);
    assert_int_equal(wal_append(w, e, 1, NULL, NULL), -EINVAL); /* index 0 */
    walt_entry(&e[0], 2, 1, buf[0]);
    assert_int_equal(wal_append(w, e, 1, NULL, NULL), -EINVAL); /* gap */
    walt_entry(&e[0], 1, 1, buf[0]);
    walt_entry(&e[1], 3, 1, buf[1]);
    assert_int_equal(wal_append(w, e, 2, NULL, NULL), -EINVAL); /* not consecutive */
    assert_int_equal(wal_append(w, NULL, 1, NULL, NULL), -EINVAL);
    e[1] = e[0];
    e[1].index = 2;
    e[1].data = NULL;
    assert_int_equal(wal_append(w, e, 2, NULL, NULL), -EINVAL); /* data missing */
    e[1].data = buf[1];
    e[1].len = WAL_MAX_ENTRY_DATA + 1;
    assert_int_equal(wal_append(w, e, 2, NULL, NULL), -EINVAL); /* too large */

    walt_append(w, 1, 30, 1, NULL);
    struct wal_snapshot s = {.index = 20, .term = 1};
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_KEEP_LOG, NULL), 0);
    walt_entry(&e[0], 20, 2, buf[0]);
    assert_int_equal(wal_append(w, e, 1, NULL, NULL), -EINVAL); /* under the snapshot */
    s.index = 19;
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_KEEP_LOG, NULL), -EINVAL);
    s.index = 25;
    assert_int_equal(wal_save_snapshot(w, &s, (enum wal_snapshot_mode)7, NULL), -EINVAL);
    assert_int_equal(wal_save_snapshot(w, NULL, WAL_SNAPSHOT_KEEP_LOG, NULL), -EINVAL);
    assert_int_equal(wal_release_to(w, 21), -EINVAL); /* beyond the snapshot */
    /* Nothing above was queued: seqs 1 and 2 are the only calls. */
    uint64_t seq = walt_append(w, 21, 1, 2, NULL);
    assert_int_equal(seq, 3);
    assert_int_equal(wal_wait(w, 4), -EINVAL); /* never issued */
    walt_reopen(&w, dir, NULL, &rec);
    assert_int_equal(rec.snapshot.index, 20);
    uint64_t t = 2;
    expect_log(&rec, 21, 21, &t);
    walt_finish(w, &rec, dir);
}

static void snapshot_markers(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    uint64_t terms[20];
    for (int i = 0; i < 20; i++)
        terms[i] = 1;
    wal_t *w = walt_open(dir, &small, &rec);
    walt_append(w, 1, 30, 1, NULL);
    struct wal_snapshot s = {.index = 20, .term = 1};
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_KEEP_LOG, NULL), 0);
    assert_int_equal(wal_close(w), 0);

    w = walt_open(dir, &small, &rec);
    assert_int_equal(rec.snapshot.index, 20);
    assert_int_equal(rec.snapshot.term, 1);
    expect_log(&rec, 21, 30, terms);
    wal_recovery_free(&rec);
    /* A snapshot that conflicts with the log replaces it. */
    s = (struct wal_snapshot){.index = 25, .term = 4};
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_DISCARD_LOG, NULL), 0);
    assert_int_equal(wal_close(w), 0);

    w = walt_open(dir, &small, &rec);
    assert_int_equal(rec.n_entries, 0);
    assert_int_equal(rec.last_index, 25);
    assert_int_equal(rec.last_term, 4);
    wal_recovery_free(&rec);
    walt_append(w, 26, 5, 4, NULL);
    /* A snapshot beyond the log's end ends the log there even when kept. */
    s = (struct wal_snapshot){.index = 40, .term = 5};
    uint64_t seq;
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_KEEP_LOG, &seq), 0);
    assert_int_equal(wal_wait(w, seq), 0);
    struct wal_durable d;
    wal_durable(w, &d);
    assert_int_equal(d.index, 40);
    assert_int_equal(d.term, 5);
    assert_int_equal(d.snapshot_index, 40);
    walt_append(w, 41, 2, 5, NULL);
    assert_int_equal(wal_close(w), 0);

    w = walt_open(dir, &small, &rec);
    assert_int_equal(rec.snapshot.index, 40);
    uint64_t t5[] = {5, 5};
    expect_log(&rec, 41, 42, t5);
    walt_finish(w, &rec, dir);
}

static void hard_state_and_barrier(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, NULL, &rec);
    struct wal_hard_state hs = {.term = 7, .vote = 3, .commit = 0};
    uint64_t s1, s2;
    assert_int_equal(wal_append(w, NULL, 0, &hs, &s1), 0);
    assert_int_equal(wal_append(w, NULL, 0, NULL, &s2), 0);
    assert_int_equal(s2, s1 + 1);
    assert_int_equal(wal_wait(w, s2), 0);
    walt_reopen(&w, dir, NULL, &rec);
    assert_int_equal(rec.hard_state.term, 7);
    assert_int_equal(rec.hard_state.vote, 3);
    assert_int_equal(rec.n_entries, 0);
    walt_finish(w, &rec, dir);
}

/* A callback that can hold the wal thread, to fill the queue on purpose. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
    int calls;
    uint64_t last_seq;
    int monotonic;
};

static void gate_cb(void *arg, const struct wal_durable *d) {
    struct gate *g = arg;
    pthread_mutex_lock(&g->mu);
    if (d->seq <= g->last_seq)
        g->monotonic = 0;
    g->last_seq = d->seq;
    g->calls++;
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void queue_full(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 1};
    struct wal_options o = {.queue_size = 8192, .on_durable = gate_cb, .cb_arg = &g};
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &o, &rec);
    uint8_t big[9000] = {0};
    struct wal_entry e = {.index = 1, .term = 1, .len = sizeof(big), .data = big};
    assert_int_equal(wal_append(w, &e, 1, NULL, NULL), -EMSGSIZE);

    uint64_t seq = walt_append(w, 1, 1, 1, NULL);
    /* The wal thread is now held in the callback: the queue fills up. */
    uint64_t next = 2;
    int rc;
    uint8_t buf[WALT_MAX_DATA];
    for (;;) {
        walt_entry(&e, next, 1, buf);
        rc = wal_append(w, &e, 1, NULL, &seq);
        if (rc != 0)
            break;
        next++;
    }
    assert_int_equal(rc, -EAGAIN);
    assert_true(next > 10);
    pthread_mutex_lock(&g.mu);
    g.open = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    assert_int_equal(wal_wait(w, seq), 0);
    /* The refused entry was not queued: it is still the next one. */
    assert_int_equal(wal_append(w, &e, 1, NULL, &seq), 0);
    assert_int_equal(wal_close(w), 0);
    assert_true(g.monotonic);
    assert_true(g.calls >= 2);
    w = walt_open(dir, &o, &rec);
    assert_int_equal(rec.n_entries, next);
    for (uint64_t i = 1; i <= next; i++)
        assert_true(walt_entry_ok(&rec.entries[i - 1], i, 1));
    walt_finish(w, &rec, dir);
}

static void event_fd_signals(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, NULL, &rec);
    int fd = wal_event_fd(w);
    uint64_t v;
    assert_int_equal(read(fd, &v, sizeof(v)), -1); /* nothing yet */
    uint64_t seq = walt_append(w, 1, 3, 1, NULL);
    struct wal_durable d = {0};
    while (d.seq < seq) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 5000), 1);
        assert_int_equal(read(fd, &v, sizeof(v)), (ssize_t)sizeof(v));
        wal_durable(w, &d);
    }
    assert_int_equal(d.index, 3);
    walt_finish(w, &rec, dir);
}

/* The callback may queue more work: here a hard state once the first entry
 * is durable, as a raft node might after its own append. */
struct chain {
    wal_t *w;
    int appended;
    int rc;
};

static void chain_cb(void *arg, const struct wal_durable *d) {
    struct chain *c = arg;
    if (c->appended || d->seq < 1)
        return;
    struct wal_hard_state hs = {.term = 1, .vote = 1, .commit = d->index};
    c->rc = wal_append(c->w, NULL, 0, &hs, NULL);
    c->appended = 1;
}

static void callback_may_append(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct chain c = {0};
    struct wal_options o = {.on_durable = chain_cb, .cb_arg = &c};
    struct wal_recovery rec;
    /* The callback reads c.w only after the first append, which follows this. */
    c.w = walt_open(dir, &o, &rec);
    assert_int_equal(wal_wait(c.w, walt_append(c.w, 1, 4, 1, NULL)), 0);
    walt_reopen(&c.w, dir, NULL, &rec);
    assert_int_equal(c.rc, 0);
    assert_int_equal(rec.hard_state.commit, 4);
    assert_int_equal(rec.n_entries, 4);
    walt_finish(c.w, &rec, dir);
}

static void segments_roll_and_release(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &small, &rec);
    uint64_t seq = 0;
    for (uint64_t i = 1; i <= 500; i += 5) {
        struct wal_hard_state hs = {.term = 1, .commit = i};
        seq = walt_append(w, i, 5, 1, &hs);
    }
    assert_int_equal(wal_wait(w, seq), 0);
    assert_int_equal(wal_release_to(w, 200), -EINVAL); /* no snapshot yet */
    struct wal_snapshot s = {.index = 200, .term = 1};
    assert_int_equal(wal_save_snapshot(w, &s, WAL_SNAPSHOT_KEEP_LOG, &seq), 0);
    assert_int_equal(wal_wait(w, seq), 0);
    char **names;
    size_t before = walt_segments(dir, &names);
    assert_true(before > 10);
    /* Names carry consecutive seqs and the first index of each segment. */
    for (size_t i = 0; i < before; i++) {
        unsigned long long sq, first;
        assert_int_equal(sscanf(names[i], "%16llx-%16llx.wal", &sq, &first), 2);
        assert_int_equal(sq, i);
        assert_true(first >= 1 && first <= 501);
    }
    walt_free_names(names, before);
    assert_int_equal(wal_release_to(w, 200), 0);
    assert_int_equal(wal_close(w), 0);

    size_t after = walt_segments(dir, &names);
    assert_true(after < before);
    unsigned long long sq, first;
    assert_int_equal(sscanf(names[0], "%16llx-%16llx.wal", &sq, &first), 2);
    assert_true(first <= 201);
    if (after > 1) {
        assert_int_equal(sscanf(names[1], "%16llx-%16llx.wal", &sq, &first), 2);
        assert_true(first > 201);
    }
    walt_free_names(names, after);

    w = walt_open(dir, &small, &rec);
    assert_int_equal(rec.snapshot.index, 200);
    assert_int_equal(rec.hard_state.commit, 496);
    uint64_t terms[300];
    for (int i = 0; i < 300; i++)
        terms[i] = 1;
    expect_log(&rec, 201, 500, terms);
    walt_finish(w, &rec, dir);
}

static void entry_larger_than_segment(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &small, &rec);
    static uint8_t big[20000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    walt_append(w, 1, 2, 1, NULL);
    struct wal_entry e = {.index = 3, .term = 1, .len = sizeof(big), .data = big};
    assert_int_equal(wal_append(w, &e, 1, NULL, NULL), 0);
    walt_append(w, 4, 2, 1, NULL);
    walt_reopen(&w, dir, &small, &rec);
    assert_int_equal(rec.n_entries, 5);
    assert_int_equal(rec.entries[2].len, sizeof(big));
    assert_memory_equal(rec.entries[2].data, big, sizeof(big));
    assert_true(walt_entry_ok(&rec.entries[4], 5, 1));
    walt_finish(w, &rec, dir);
}

struct writers {
    wal_t *w;
    pthread_mutex_t mu; /* serialises choosing the index, as the contract asks */
    uint64_t next;
    int per_thread;
};

static void *writer(void *arg) {
    struct writers *ws = arg;
    uint8_t buf[WALT_MAX_DATA];
    for (int i = 0; i < ws->per_thread; i++) {
        struct wal_entry e;
        uint64_t seq;
        pthread_mutex_lock(&ws->mu);
        walt_entry(&e, ws->next, 1, buf);
        int rc = wal_append(ws->w, &e, 1, NULL, &seq);
        if (rc == 0)
            ws->next++;
        pthread_mutex_unlock(&ws->mu);
        if (rc != 0 || wal_wait(ws->w, seq) != 0)
            return (void *)1;
    }
    return NULL;
}

static void concurrent_writers(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    struct writers ws = {.mu = PTHREAD_MUTEX_INITIALIZER, .next = 1, .per_thread = 100};
    ws.w = walt_open(dir, &small, &rec);
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&t[i], NULL, writer, &ws), 0);
    for (int i = 0; i < 8; i++) {
        void *r;
        pthread_join(t[i], &r);
        assert_null(r);
    }
    walt_reopen(&ws.w, dir, &small, &rec);
    assert_int_equal(rec.n_entries, 800);
    for (uint64_t i = 1; i <= 800; i++)
        assert_true(walt_entry_ok(&rec.entries[i - 1], i, 1));
    walt_finish(ws.w, &rec, dir);
}

static void second_open_refused(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec, rec2;
    wal_t *w = walt_open(dir, NULL, &rec), *w2 = NULL;
    struct util_err err = {0};
    assert_int_equal(wal_open(dir, NULL, &w2, &rec2, &err), -EWOULDBLOCK);
    assert_null(w2);
    assert_non_null(strstr(err.msg, "another process"));
    walt_finish(w, &rec, dir);
}

static void close_flushes_queue(void **state) {
    (void)state;
    char *dir = walt_tmpdir();
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &small, &rec);
    for (uint64_t i = 1; i <= 200; i++)
        walt_append(w, i, 1, 1, NULL);
    walt_reopen(&w, dir, &small, &rec);
    assert_int_equal(rec.n_entries, 200);
    wal_recovery_free(&rec);
    assert_int_equal(wal_close(w), 0);
    walt_finish(NULL, &rec, dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(open_empty),
        cmocka_unit_test(open_creates_directory),
        cmocka_unit_test(append_and_reopen),
        cmocka_unit_test(empty_data_entries),
        cmocka_unit_test(overwrite_suffix),
        cmocka_unit_test(invalid_calls),
        cmocka_unit_test(snapshot_markers),
        cmocka_unit_test(hard_state_and_barrier),
        cmocka_unit_test(queue_full),
        cmocka_unit_test(event_fd_signals),
        cmocka_unit_test(callback_may_append),
        cmocka_unit_test(segments_roll_and_release),
        cmocka_unit_test(entry_larger_than_segment),
        cmocka_unit_test(concurrent_writers),
        cmocka_unit_test(second_open_refused),
        cmocka_unit_test(close_flushes_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
