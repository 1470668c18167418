/* The watch property test: random puts, deletes, txns and compactions go
 * through mvcc batches and are published as the apply thread will, while
 * watchers come and go on several streams at random start revisions (current,
 * past, compacted, future), some of them behind tiny budgets with clients
 * that rarely read, so they keep falling back to history. Every response is
 * checked against the model — the list of every event in revision order —
 * as it is popped:
 *   - each watcher's events are exactly the model's events of its range and
 *     filters from its start revision: no gap, duplicate or reorder;
 *   - a response's header revision R is never ahead: every model event of the
 *     watcher up to R was received (for a stream-wide progress notification,
 *     by every watcher of the stream), so a revision is never split outside
 *     fragments;
 *   - a compacted response comes exactly when the watcher needed a revision
 *     at or below a compaction, with compact_revision = that compaction + 1;
 *   - at the end, once every client has read everything, every watcher not
 *     canceled and not compacted has received its whole list.
 * WATCH_SEEDS and WATCH_OPS scale the run (`make watch-long`); a failing
 * seed is printed and WATCH_SEED=n replays it alone. */
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

#define N_STREAMS 4
#define MAX_WATCHERS 256
#define MAX_COMPACTIONS 64

/* One model event, copied out of the mvcc result. */
struct mev {
    enum mvcc_event_type type;
    char key[8];
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create, mod, version, lease;
    bool has_prev;
    char *prev_value;
    size_t prev_len;
    int64_t prev_mod;
};

enum wstate { W_ACTIVE, W_CANCELING, W_DONE };

struct mw {
    int stream;
    int64_t id;
    const char *key, *end; /* end: NULL single key, "" from key */
    int64_t start;
    unsigned filters;
    bool prev_kv, fragment;
    bool start_compacted; /* start <= compaction when created */
    enum wstate state;
    bool created_seen;
    size_t pos;    /* model index after the last event received */
    bool mid_frag; /* inside a fragmented response */
    int64_t frag_rev;
};

struct sim {
    uint64_t rng;
    struct wt t;
    watch_stream_t *st[N_STREAMS];
    int drain[N_STREAMS]; /* responses popped per round (0: rarely reads) */
    size_t budget[N_STREAMS];
    size_t ctrl[N_STREAMS]; /* control responses the stream may hold at most */
    struct mev *log;
    size_t n_log, cap_log;
    struct mw w[MAX_WATCHERS];
    size_t n_w;
    int64_t compactions[MAX_COMPACTIONS];
    size_t n_comp;
    int64_t next_client_id;
    bool sweeping;
    /* statistics for the summary line */
    size_t events_checked, compacted, progress_checked, fragments;
};

/* Totals over the seeds, for the summary line. */
struct totals {
    size_t events, compacted, progress, fragments, watchers, complete, revisions;
};

static uint64_t rnd(struct sim *s) {
    uint64_t x = s->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return x;
}

static int rn(struct sim *s, int n) {
    return (int)(rnd(s) % (uint64_t)n);
}

static const char *const KEYS[] = {"a", "b", "b/1", "b/2", "b/3", "c", "d", "e/x", "e/y", "f"};
#define N_KEYS (sizeof(KEYS) / sizeof(KEYS[0]))

static char *dup_bytes(const uint8_t *p, size_t n) {
    char *d = malloc(n + 1);
    assert_non_null(d);
    if (n > 0)
        memcpy(d, p, n);
    d[n] = 0;
    return d;
}

static void record(const struct mvcc_event *ev, void *arg) {
    struct sim *s = arg;
    if (s->n_log == s->cap_log) {
        s->cap_log = s->cap_log ? 2 * s->cap_log : 256;
        s->log = realloc(s->log, s->cap_log * sizeof(*s->log));
        assert_non_null(s->log);
    }
    struct mev *m = &s->log[s->n_log++];
    memset(m, 0, sizeof(*m));
    m->type = ev->type;
    assert_true(ev->kv.key_len < sizeof(m->key));
    memcpy(m->key, ev->kv.key, ev->kv.key_len);
    m->key_len = ev->kv.key_len;
    m->value = dup_bytes(ev->kv.value, ev->kv.value_len);
    m->value_len = ev->kv.value_len;
    m->create = ev->kv.create_revision;
    m->mod = ev->kv.mod_revision;
    m->version = ev->kv.version;
    m->lease = ev->kv.lease;
    m->has_prev = ev->has_prev;
    if (ev->has_prev) {
        m->prev_value = dup_bytes(ev->prev_kv.value, ev->prev_kv.value_len);
        m->prev_len = ev->prev_kv.value_len;
        m->prev_mod = ev->prev_kv.mod_revision;
    }
}

static int bcmp_str(const char *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c != 0 ? c : (alen > blen) - (alen < blen);
}

static bool in_range(const struct mw *w, const struct mev *m) {
    if (w->key[0] == 0) /* every key (key "\0", from key) */
        return true;
    int lo = bcmp_str(m->key, m->key_len, w->key);
    if (w->end == NULL)
        return lo == 0;
    if (lo < 0)
        return false;
    return w->end[0] == 0 || bcmp_str(m->key, m->key_len, w->end) < 0;
}

static bool wants(const struct mw *w, const struct mev *m) {
    if (m->mod < w->start || !in_range(w, m))
        return false;
    if (m->type == MVCC_EVENT_PUT)
        return !(w->filters & WATCH_FILTER_NOPUT);
    return !(w->filters & WATCH_FILTER_NODELETE);
}

/* Model index of w's next expected event at or after `from`, or n_log. */
static size_t next_expected(const struct sim *s, const struct mw *w, size_t from) {
    while (from < s->n_log && !wants(w, &s->log[from]))
        from++;
    return from;
}

/* Every model event of w up to revision r has been received. */
static void assert_complete_through(const struct sim *s, const struct mw *w, int64_t r) {
    size_t i = next_expected(s, w, w->pos);
    if (i < s->n_log && s->log[i].mod <= r)
        fail_msg("watcher %d/%lld: header/progress revision %lld but event at %lld not received",
                 w->stream, (long long)w->id, (long long)r, (long long)s->log[i].mod);
}

static void check_event(struct sim *s, struct mw *w, const struct watch_response *r,
                        const struct mvcc_event *ev) {
    size_t i = next_expected(s, w, w->pos);
    if (i == s->n_log)
        fail_msg("watcher %d/%lld: unexpected event at %lld", w->stream, (long long)w->id,
                 (long long)ev->kv.mod_revision);
    const struct mev *m = &s->log[i];
    if (ev->kv.mod_revision != m->mod || ev->type != m->type || ev->kv.key_len != m->key_len ||
        memcmp(ev->kv.key, m->key, m->key_len) != 0)
        fail_msg("watcher %d/%lld: got %s %.*s@%lld, model %s %.*s@%lld", w->stream,
                 (long long)w->id, ev->type == MVCC_EVENT_PUT ? "put" : "del", (int)ev->kv.key_len,
                 (const char *)ev->kv.key, (long long)ev->kv.mod_revision,
                 m->type == MVCC_EVENT_PUT ? "put" : "del", (int)m->key_len, m->key,
                 (long long)m->mod);
    assert_int_equal(ev->kv.value_len, m->value_len);
    if (m->value_len > 0)
        assert_memory_equal(ev->kv.value, m->value, m->value_len);
    assert_int_equal(ev->kv.create_revision, m->create);
    assert_int_equal(ev->kv.version, m->version);
    assert_int_equal(ev->kv.lease, m->lease);
    assert_int_equal(r->prev_kv, w->prev_kv);
    if (w->prev_kv) {
        assert_int_equal(ev->has_prev, m->has_prev);
        if (m->has_prev) {
            assert_int_equal(ev->prev_kv.mod_revision, m->prev_mod);
            assert_int_equal(ev->prev_kv.value_len, m->prev_len);
            if (m->prev_len > 0)
                assert_memory_equal(ev->prev_kv.value, m->prev_value, m->prev_len);
        }
    }
    w->pos = i + 1;
    s->events_checked++;
}

static struct mw *find(struct sim *s, int stream, int64_t id) {
    for (size_t i = s->n_w; i-- > 0;)
        if (s->w[i].stream == stream && s->w[i].id == id && s->w[i].state != W_DONE)
            return &s->w[i];
    return NULL;
}

static int64_t last_compaction(const struct sim *s) {
    return s->n_comp ? s->compactions[s->n_comp - 1] : 0;
}

static void on_response(struct sim *s, int k, const struct watch_response *r) {
    if (r->watch_id == -1 && !r->created) {
        /* Stream-wide progress: nobody on the stream is behind it. */
        assert_int_equal(r->n_events, 0);
        for (size_t i = 0; i < s->n_w; i++)
            if (s->w[i].stream == k && s->w[i].created_seen && s->w[i].state != W_DONE)
                assert_complete_through(s, &s->w[i], r->revision);
        s->progress_checked++;
        return;
    }
    if (r->created && r->canceled) {
        assert_int_equal(r->watch_id, -1); /* a rejection we provoked */
        return;
    }
    struct mw *w = find(s, k, r->watch_id);
    if (w == NULL)
        fail_msg("stream %d: response for unknown watch id %lld", k, (long long)r->watch_id);
    if (r->created) {
        assert_false(w->created_seen);
        w->created_seen = true;
        return;
    }
    assert_true(w->created_seen);
    assert_true(w->state == W_ACTIVE || w->state == W_CANCELING);
    if (r->compact_revision != 0) {
        assert_true(r->canceled);
        assert_false(w->mid_frag);
        int64_t c = r->compact_revision - 1;
        bool known = false;
        for (size_t i = 0; i < s->n_comp; i++)
            known |= s->compactions[i] == c;
        assert_true(known);
        /* It had everything below its next revision, and that one is gone. */
        assert_complete_through(s, w, r->revision);
        assert_true(r->revision + 1 <= c);
        w->state = W_DONE;
        s->compacted++;
        return;
    }
    if (r->canceled) {
        assert_int_equal(w->state, W_CANCELING);
        assert_false(w->mid_frag);
        w->state = W_DONE;
        return;
    }
    assert_false(w->start_compacted);
    if (r->n_events == 0) {
        /* A watcher's own progress notification. */
        assert_false(w->mid_frag);
        assert_complete_through(s, w, r->revision);
        s->progress_checked++;
        return;
    }
    if (r->fragment || w->mid_frag) {
        assert_true(w->fragment);
        s->fragments++;
    }
    for (size_t i = 0; i < r->n_events; i++)
        check_event(s, w, r, r->events[i]);
    int64_t hi = r->events[r->n_events - 1]->kv.mod_revision;
    if (r->fragment) {
        /* Later fragments continue the same response. */
        assert_true(!w->mid_frag || w->frag_rev == r->revision);
        w->mid_frag = true;
        w->frag_rev = r->revision;
        return;
    }
    if (w->mid_frag)
        assert_int_equal(w->frag_rev, r->revision);
    w->mid_frag = false;
    assert_true(r->revision >= hi);
    assert_complete_through(s, w, r->revision);
}

static void drain(struct sim *s, int k, int max) {
    struct watch_response *r;
    for (int n = 0; n < max && watch_stream_pop(s->st[k], &r) == 0; n++) {
        on_response(s, k, r);
        watch_response_free(r);
    }
}

static const char *pick_end(struct sim *s, const char **key) {
    switch (rn(s, 6)) {
    case 0:
        *key = "b/";
        return "b0"; /* prefix */
    case 1:
        *key = "b";
        return "e"; /* range */
    case 2:
        *key = "c";
        return ""; /* from key */
    case 3:
        *key = "";
        return ""; /* every key */
    default:
        *key = KEYS[rn(s, N_KEYS)];
        return NULL; /* one key */
    }
}

static void create_watcher(struct sim *s) {
    if (s->n_w == MAX_WATCHERS)
        return;
    int k = rn(s, N_STREAMS);
    int64_t hub_rev = watch_hub_revision(s->t.hub);
    struct mw *w = &s->w[s->n_w];
    memset(w, 0, sizeof(*w));
    w->stream = k;
    w->end = pick_end(s, &w->key);
    struct watch_create_req req = {.key = (const uint8_t *)w->key, .key_len = strlen(w->key)};
    if (w->end != NULL) {
        req.range_end = (const uint8_t *)w->end;
        req.range_end_len = w->end[0] ? strlen(w->end) : 1;
    }
    switch (rn(s, 4)) {
    case 0:
        req.start_revision = 0;
        break;
    case 1:
        req.start_revision = hub_rev + 1 + rn(s, 4); /* future */
        break;
    default:
        req.start_revision = 1 + rn(s, (int)hub_rev); /* past, maybe compacted */
        break;
    }
    if (rn(s, 4) == 0)
        req.filters = rn(s, 2) ? WATCH_FILTER_NOPUT : WATCH_FILTER_NODELETE;
    req.prev_kv = rn(s, 2);
    req.fragment = rn(s, 3) == 0;
    req.progress_notify = rn(s, 2);
    if (rn(s, 8) == 0)
        req.watch_id = s->next_client_id++;
    w->start = req.start_revision == 0 || req.start_revision > hub_rev
                   ? (req.start_revision > hub_rev ? req.start_revision : hub_rev + 1)
                   : req.start_revision;
    w->start_compacted = w->start <= last_compaction(s);
    w->filters = req.filters;
    w->prev_kv = req.prev_kv;
    w->fragment = req.fragment;
    w->state = W_ACTIVE;
    int64_t id;
    assert_int_equal(watch_stream_create(s->st[k], &req, &id), 0);
    w->id = id;
    s->n_w++;
    s->ctrl[k] += 3; /* created; canceled or compacted; a duplicate's rejection */
    /* Now and then a duplicate of a live id: rejected, nothing changes. */
    if (id != 0 && rn(s, 10) == 0) {
        req.watch_id = id;
        assert_int_equal(watch_stream_create(s->st[k], &req, &id), WATCH_EDUPID);
    }
}

static void cancel_watcher(struct sim *s) {
    if (s->n_w == 0)
        return;
    struct mw *w = &s->w[rn(s, (int)s->n_w)];
    int rc = watch_stream_cancel(s->st[w->stream], w->id);
    if (w->state == W_ACTIVE) {
        /* Compacted meanwhile (response not read yet) is the only way out. */
        if (rc == -ENOENT)
            return;
        assert_int_equal(rc, 0);
        w->state = W_CANCELING;
    }
}

static void random_write(struct sim *s) {
    struct mvcc_op ops[4], sub[4];
    struct mvcc_txn_req txn = {0};
    char vals[4][320];
    int n = 1 + rn(s, 3);
    for (int i = 0; i < n; i++) {
        int len = rn(s, 6) == 0 ? 100 + rn(s, 200) : rn(s, 24);
        memset(vals[i], 'a' + rn(s, 26), (size_t)len);
        vals[i][len] = 0;
        int kind = rn(s, 10);
        if (kind < 6) {
            ops[i] = wt_op_put(KEYS[rn(s, N_KEYS)], vals[i]);
        } else if (kind < 8) {
            const char *key;
            const char *end = pick_end(s, &key);
            ops[i] =
                wt_op_del(key[0] ? key : "\x01", end != NULL && end[0] == 0 ? WT_FROM_KEY : end);
        } else if (i == 0) {
            /* A txn: several changes on distinct keys at one revision. */
            int m = 2 + rn(s, 3);
            int first = rn(s, (int)N_KEYS);
            for (int j = 0; j < m; j++) {
                const char *key = KEYS[(first + j) % N_KEYS];
                sub[j] = rn(s, 3) ? wt_op_put(key, vals[i]) : wt_op_del(key, NULL);
            }
            txn.success = sub;
            txn.n_success = (size_t)m;
            ops[i] = (struct mvcc_op){.type = MVCC_OP_TXN, .u.txn = &txn};
        } else {
            ops[i] = wt_op_put(KEYS[rn(s, N_KEYS)], vals[i]);
        }
    }
    wt_apply(&s->t, ops, (size_t)n, record, s);
}

static void random_compaction(struct sim *s) {
    int64_t rev = watch_hub_revision(s->t.hub), last = last_compaction(s);
    if (rev <= last || s->n_comp == MAX_COMPACTIONS)
        return;
    int64_t c = last + 1 + rn(s, (int)(rev - last));
    wt_compact(&s->t, c, false);
    s->compactions[s->n_comp++] = c;
    s->sweeping = true;
}

static void sweep_some(struct sim *s) {
    if (!s->sweeping)
        return;
    bool done;
    assert_int_equal(mvcc_compact_step(s->t.db, 1 + (size_t)rn(s, 30), &done), 0);
    s->sweeping = !done;
}

static void sync_some(struct sim *s) {
    int rc = watch_hub_sync_step(s->t.hub, 1 + (size_t)rn(s, 64));
    assert_true(rc == 0 || rc == 1);
}

static void request_progress(struct sim *s, int k) {
    assert_int_equal(watch_stream_request_progress(s->st[k]), 0);
    s->ctrl[k]++;
}

static void progress_tick(struct sim *s, int k) {
    watch_stream_progress_tick(s->st[k]);
    for (size_t i = 0; i < s->n_w; i++)
        s->ctrl[k] += s->w[i].stream == k;
}

/* A slow client's queue is bounded by its budget, one revision (values here
 * are at most 300 bytes, a batch's revision at most 4 events) and the control
 * responses — never by the number of writes. */
static void assert_memory_bound(struct sim *s, int k) {
    size_t bound = s->budget[k] + 4 * 400 + 64 * s->ctrl[k];
    size_t q = watch_stream_queued_bytes(s->st[k]);
    if (q > bound)
        fail_msg("stream %d: %zu bytes queued, bound %zu", k, q, bound);
}

static void run_seed(uint64_t seed, int n_ops, struct totals *tot) {
    struct sim *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->rng = seed * 0x9e3779b97f4a7c15ull + 1;
    s->next_client_id = 1000;
    struct watch_hub_options o = {.max_response_bytes = 250 + (size_t)rn(s, 600)};
    wt_open(&s->t, &o);
    for (int k = 0; k < N_STREAMS; k++) {
        bool slow = rn(s, 2);
        s->budget[k] = slow ? 100 + (size_t)rn(s, 600) : 1u << 20;
        s->drain[k] = slow ? 0 : 1 + rn(s, 8);
        assert_int_equal(watch_stream_open(s->t.hub, s->budget[k], NULL, NULL, &s->st[k]), 0);
    }
    for (int op = 0; op < n_ops; op++) {
        int a = rn(s, 100);
        if (a < 40)
            random_write(s);
        else if (a < 52)
            create_watcher(s);
        else if (a < 56)
            cancel_watcher(s);
        else if (a < 58 && rn(s, 3) == 0)
            random_compaction(s);
        else if (a < 64)
            sweep_some(s);
        else if (a < 78)
            sync_some(s);
        else if (a < 82)
            request_progress(s, rn(s, N_STREAMS));
        else if (a < 84)
            progress_tick(s, rn(s, N_STREAMS));
        else if (a < 85)
            watch_hub_restore(s->t.hub, watch_hub_revision(s->t.hub));
        for (int k = 0; k < N_STREAMS; k++) {
            drain(s, k, s->drain[k] ? s->drain[k] : (rn(s, 12) == 0 ? 1 + rn(s, 4) : 0));
            assert_memory_bound(s, k);
        }
    }
    struct watch_hub_stats st;
    /* Quiesce: every client reads everything, catch-up runs to the end. */
    for (int round = 0;; round++) {
        assert_true(round < 100000);
        for (int k = 0; k < N_STREAMS; k++)
            drain(s, k, 1 << 30);
        int rc = watch_hub_sync_step(s->t.hub, 1 + (size_t)rn(s, 128));
        assert_true(rc >= 0);
        watch_hub_stats(s->t.hub, &st);
        if (rc == 0 && st.unsynced == 0 && st.queued_bytes == 0)
            break;
    }
    for (size_t i = 0; i < s->n_w; i++) {
        struct mw *w = &s->w[i];
        assert_true(w->state == W_ACTIVE || w->state == W_DONE);
        assert_false(w->mid_frag);
        if (w->state == W_ACTIVE) {
            assert_false(w->start_compacted);
            assert_complete_through(s, w, INT64_MAX);
            tot->complete++;
        }
    }
    tot->events += s->events_checked;
    tot->compacted += s->compacted;
    tot->progress += s->progress_checked;
    tot->fragments += s->fragments;
    tot->watchers += s->n_w;
    tot->revisions += (size_t)watch_hub_revision(s->t.hub);
    for (int k = 0; k < N_STREAMS; k++)
        watch_stream_close(s->st[k]);
    wt_close(&s->t);
    for (size_t i = 0; i < s->n_log; i++) {
        free(s->log[i].value);
        free(s->log[i].prev_value);
    }
    free(s->log);
    free(s);
}

static long env_long(const char *name, long def) {
    const char *v = getenv(name);
    return v != NULL && *v ? strtol(v, NULL, 10) : def;
}

static void test_watch_property(void **state) {
    (void)state;
    long one = env_long("WATCH_SEED", -1);
    long seeds = env_long("WATCH_SEEDS", 150), ops = env_long("WATCH_OPS", 800);
    struct totals tot = {0};
    long n = 0;
    for (long seed = one >= 0 ? one : 1; seed <= (one >= 0 ? one : seeds); seed++, n++) {
        if (getenv("WATCH_VERBOSE") != NULL || one >= 0)
            print_message("seed %ld\n", seed);
        run_seed((uint64_t)seed, (int)ops, &tot);
    }
    print_message("%ld seeds x %ld ops: %zu watchers (%zu complete to the end, %zu compacted), "
                  "%zu revisions, %zu events checked, %zu progress, %zu fragment parts\n",
                  n, ops, tot.watchers, tot.complete, tot.compacted, tot.revisions, tot.events,
                  tot.progress, tot.fragments);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
