/* The watch test model (see model.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static uint64_t rnd(struct model *m) {
    uint64_t x = m->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    m->rng = x;
    return x;
}

int model_rn(struct model *m, int n) {
    return (int)(rnd(m) % (uint64_t)n);
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

static void lock(struct model *m) {
    if (m->lock != NULL)
        pthread_mutex_lock(m->lock);
}

static void unlock(struct model *m) {
    if (m->lock != NULL)
        pthread_mutex_unlock(m->lock);
}

static void record_locked(struct model *m, const struct mvcc_event *ev);

/* The seen callback of wt_apply: events enter the model before publish. */
static void record(const struct mvcc_event *ev, void *arg) {
    struct model *m = arg;
    lock(m);
    record_locked(m, ev);
    unlock(m);
}

static void record_locked(struct model *m, const struct mvcc_event *ev) {
    if (m->n_log == m->cap_log) {
        m->cap_log = m->cap_log ? 2 * m->cap_log : 256;
        m->log = realloc(m->log, m->cap_log * sizeof(*m->log));
        assert_non_null(m->log);
    }
    struct mev *e = &m->log[m->n_log++];
    memset(e, 0, sizeof(*e));
    e->type = ev->type;
    assert_true(ev->kv.key_len < sizeof(e->key));
    memcpy(e->key, ev->kv.key, ev->kv.key_len);
    e->key_len = ev->kv.key_len;
    e->value = dup_bytes(ev->kv.value, ev->kv.value_len);
    e->value_len = ev->kv.value_len;
    e->create = ev->kv.create_revision;
    e->mod = ev->kv.mod_revision;
    e->version = ev->kv.version;
    e->lease = ev->kv.lease;
    e->has_prev = ev->has_prev;
    if (ev->has_prev) {
        e->prev_value = dup_bytes(ev->prev_kv.value, ev->prev_kv.value_len);
        e->prev_len = ev->prev_kv.value_len;
        e->prev_mod = ev->prev_kv.mod_revision;
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
static size_t next_expected(const struct model *m, const struct mw *w, size_t from) {
    while (from < m->n_log && !wants(w, &m->log[from]))
        from++;
    return from;
}

/* Every model event of w up to revision r has been received. */
static void assert_complete_through(const struct model *m, const struct mw *w, int64_t r) {
    size_t i = next_expected(m, w, w->pos);
    if (i < m->n_log && m->log[i].mod <= r)
        fail_msg("watcher %d/%lld: header/progress revision %lld but event at %lld not received",
                 w->stream, (long long)w->id, (long long)r, (long long)m->log[i].mod);
}

static void check_event(struct model *m, struct mw *w, const struct watch_response *r,
                        const struct mvcc_event *ev) {
    size_t i = next_expected(m, w, w->pos);
    if (i == m->n_log)
        fail_msg("watcher %d/%lld [%s,%s) from %lld: unexpected %s %.*s@%lld (model has %zu "
                 "events up to %lld, watcher at %zu)",
                 w->stream, (long long)w->id, w->key, w->end ? w->end : "(key)",
                 (long long)w->start, ev->type == MVCC_EVENT_PUT ? "put" : "del",
                 (int)ev->kv.key_len, (const char *)ev->kv.key, (long long)ev->kv.mod_revision,
                 m->n_log, m->n_log ? (long long)m->log[m->n_log - 1].mod : 0LL, w->pos);
    const struct mev *e = &m->log[i];
    if (ev->kv.mod_revision != e->mod || ev->type != e->type || ev->kv.key_len != e->key_len ||
        memcmp(ev->kv.key, e->key, e->key_len) != 0)
        fail_msg("watcher %d/%lld: got %s %.*s@%lld, model %s %.*s@%lld", w->stream,
                 (long long)w->id, ev->type == MVCC_EVENT_PUT ? "put" : "del", (int)ev->kv.key_len,
                 (const char *)ev->kv.key, (long long)ev->kv.mod_revision,
                 e->type == MVCC_EVENT_PUT ? "put" : "del", (int)e->key_len, e->key,
                 (long long)e->mod);
    assert_int_equal(ev->kv.value_len, e->value_len);
    if (e->value_len > 0)
        assert_memory_equal(ev->kv.value, e->value, e->value_len);
    assert_int_equal(ev->kv.create_revision, e->create);
    assert_int_equal(ev->kv.version, e->version);
    assert_int_equal(ev->kv.lease, e->lease);
    assert_int_equal(r->prev_kv, w->prev_kv);
    if (w->prev_kv) {
        assert_int_equal(ev->has_prev, e->has_prev);
        if (e->has_prev) {
            assert_int_equal(ev->prev_kv.mod_revision, e->prev_mod);
            assert_int_equal(ev->prev_kv.value_len, e->prev_len);
            if (e->prev_len > 0)
                assert_memory_equal(ev->prev_kv.value, e->prev_value, e->prev_len);
        }
    }
    w->pos = i + 1;
    m->events_checked++;
}

static struct mw *find(struct model *m, int stream, int64_t id) {
    for (size_t i = m->n_w; i-- > 0;)
        if (m->w[i].stream == stream && m->w[i].id == id && m->w[i].state != W_DONE)
            return &m->w[i];
    return NULL;
}

static int64_t last_compaction(const struct model *m) {
    return m->n_comp ? m->compactions[m->n_comp - 1] : 0;
}

static void on_response(struct model *m, int k, const struct watch_response *r) {
    if (r->watch_id == -1 && !r->created) {
        /* Stream-wide progress: nobody on the stream is behind it. */
        assert_int_equal(r->n_events, 0);
        for (size_t i = 0; i < m->n_w; i++)
            if (m->w[i].stream == k && m->w[i].created_seen && m->w[i].state != W_DONE)
                assert_complete_through(m, &m->w[i], r->revision);
        m->progress_checked++;
        return;
    }
    if (r->created && r->canceled) {
        assert_int_equal(r->watch_id, -1); /* a rejection we provoked */
        return;
    }
    struct mw *w = find(m, k, r->watch_id);
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
        for (size_t i = 0; i < m->n_comp; i++)
            known |= m->compactions[i] == c;
        assert_true(known);
        /* It had everything below its next revision, and that one is gone. */
        assert_complete_through(m, w, r->revision);
        assert_true(r->revision + 1 <= c);
        w->state = W_DONE;
        m->compacted++;
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
        assert_complete_through(m, w, r->revision);
        m->progress_checked++;
        return;
    }
    if (r->fragment || w->mid_frag) {
        assert_true(w->fragment);
        m->fragments++;
    }
    for (size_t i = 0; i < r->n_events; i++)
        check_event(m, w, r, r->events[i]);
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
    assert_complete_through(m, w, r->revision);
}

static const char *pick_end(struct model *m, const char **key) {
    switch (model_rn(m, 6)) {
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
        *key = KEYS[model_rn(m, N_KEYS)];
        return NULL; /* one key */
    }
}

static void create_watcher(struct model *m) {
    if (m->n_w == MODEL_WATCHERS)
        return;
    int k = model_rn(m, m->n_streams);
    int64_t hub_rev = watch_hub_revision(m->t.hub);
    struct mw *w = &m->w[m->n_w];
    memset(w, 0, sizeof(*w));
    w->stream = k;
    w->end = pick_end(m, &w->key);
    struct watch_create_req req = {.key = (const uint8_t *)w->key, .key_len = strlen(w->key)};
    if (w->end != NULL) {
        req.range_end = (const uint8_t *)w->end;
        req.range_end_len = w->end[0] ? strlen(w->end) : 1;
    }
    switch (model_rn(m, 4)) {
    case 0:
        req.start_revision = 0;
        break;
    case 1:
        req.start_revision = hub_rev + 1 + model_rn(m, 4); /* future */
        break;
    default:
        req.start_revision = 1 + model_rn(m, (int)hub_rev); /* past, maybe compacted */
        break;
    }
    if (model_rn(m, 4) == 0)
        req.filters = model_rn(m, 2) ? WATCH_FILTER_NOPUT : WATCH_FILTER_NODELETE;
    req.prev_kv = model_rn(m, 2);
    req.fragment = model_rn(m, 3) == 0;
    req.progress_notify = model_rn(m, 2);
    if (model_rn(m, 8) == 0)
        req.watch_id = m->next_client_id++;
    w->start = req.start_revision == 0 || req.start_revision > hub_rev
                   ? (req.start_revision > hub_rev ? req.start_revision : hub_rev + 1)
                   : req.start_revision;
    w->start_compacted = w->start <= last_compaction(m);
    w->filters = req.filters;
    w->prev_kv = req.prev_kv;
    w->fragment = req.fragment;
    w->state = W_ACTIVE;
    int64_t id;
    assert_int_equal(watch_stream_create(m->st[k], &req, &id), 0);
    w->id = id;
    m->n_w++;
    m->ctrl[k] += 3; /* created; canceled or compacted; a duplicate's rejection */
    /* Now and then a duplicate of a live id: rejected, nothing changes.
     * (Only single-threaded: a sync thread may compact the watcher away.) */
    if (m->lock == NULL && id != 0 && model_rn(m, 10) == 0) {
        req.watch_id = id;
        assert_int_equal(watch_stream_create(m->st[k], &req, &id), WATCH_EDUPID);
    }
}

static void cancel_watcher(struct model *m) {
    if (m->n_w == 0)
        return;
    struct mw *w = &m->w[model_rn(m, (int)m->n_w)];
    int rc = watch_stream_cancel(m->st[w->stream], w->id);
    if (w->state == W_ACTIVE) {
        /* Compacted meanwhile (response not read yet) is the only way out. */
        if (rc == -ENOENT)
            return;
        assert_int_equal(rc, 0);
        w->state = W_CANCELING;
    }
}

void model_random_write(struct model *m) {
    struct mvcc_op ops[4], sub[4];
    struct mvcc_txn_req txn = {0};
    char vals[4][320];
    int n = 1 + model_rn(m, 3);
    for (int i = 0; i < n; i++) {
        int len = model_rn(m, 6) == 0 ? 100 + model_rn(m, 200) : model_rn(m, 24);
        memset(vals[i], 'a' + model_rn(m, 26), (size_t)len);
        vals[i][len] = 0;
        int kind = model_rn(m, 10);
        if (kind < 6) {
            ops[i] = wt_op_put(KEYS[model_rn(m, N_KEYS)], vals[i]);
        } else if (kind < 8) {
            const char *key;
            const char *end = pick_end(m, &key);
            ops[i] =
                wt_op_del(key[0] ? key : "\x01", end != NULL && end[0] == 0 ? WT_FROM_KEY : end);
        } else if (i == 0) {
            /* A txn: several changes on distinct keys at one revision. */
            int count = 2 + model_rn(m, 3);
            int first = model_rn(m, (int)N_KEYS);
            for (int j = 0; j < count; j++) {
                const char *key = KEYS[(first + j) % N_KEYS];
                sub[j] = model_rn(m, 3) ? wt_op_put(key, vals[i]) : wt_op_del(key, NULL);
            }
            txn.success = sub;
            txn.n_success = (size_t)count;
            ops[i] = (struct mvcc_op){.type = MVCC_OP_TXN, .u.txn = &txn};
        } else {
            ops[i] = wt_op_put(KEYS[model_rn(m, N_KEYS)], vals[i]);
        }
    }
    wt_apply(&m->t, ops, (size_t)n, record, m);
}

void model_random_compaction(struct model *m) {
    int64_t rev = watch_hub_revision(m->t.hub), last = last_compaction(m);
    if (rev <= last || m->n_comp == MODEL_COMPACTIONS)
        return;
    /* Mostly well behind the head, as an operator compacts old history. */
    int64_t c = last + 1 + model_rn(m, (int)(rev - last + 1) / 2);
    /* Known to the checker before a catch-up can see it. */
    lock(m);
    m->compactions[m->n_comp++] = c;
    unlock(m);
    wt_compact(&m->t, c, false);
    m->sweeping = true;
}

void model_on_response(struct model *m, int k, const struct watch_response *r) {
    lock(m);
    on_response(m, k, r);
    unlock(m);
}

void model_create_watcher(struct model *m) {
    lock(m);
    create_watcher(m);
    unlock(m);
}

void model_cancel_watcher(struct model *m) {
    lock(m);
    cancel_watcher(m);
    unlock(m);
}

void model_sweep_some(struct model *m) {
    if (!m->sweeping)
        return;
    bool done;
    assert_int_equal(mvcc_compact_step(m->t.db, 1 + (size_t)model_rn(m, 30), &done), 0);
    m->sweeping = !done;
}

void model_init(struct model *m, uint64_t seed, const struct watch_hub_options *opt) {
    memset(m, 0, sizeof(*m));
    m->rng = seed * 0x9e3779b97f4a7c15ull + 1;
    m->next_client_id = 1000;
    wt_open(&m->t, opt);
}

void model_check_end(struct model *m, struct totals *tot) {
    lock(m);
    for (size_t i = 0; i < m->n_w; i++) {
        struct mw *w = &m->w[i];
        assert_true(w->state == W_ACTIVE || w->state == W_DONE);
        assert_false(w->mid_frag);
        if (w->state == W_ACTIVE) {
            assert_true(w->created_seen);
            assert_false(w->start_compacted);
            assert_complete_through(m, w, INT64_MAX);
            tot->complete++;
        }
    }
    unlock(m);
}

void model_finish(struct model *m, struct totals *tot) {
    tot->events += m->events_checked;
    tot->compacted += m->compacted;
    tot->progress += m->progress_checked;
    tot->fragments += m->fragments;
    tot->watchers += m->n_w;
    tot->revisions += (size_t)watch_hub_revision(m->t.hub);
    wt_close(&m->t);
    for (size_t i = 0; i < m->n_log; i++) {
        free(m->log[i].value);
        free(m->log[i].prev_value);
    }
    free(m->log);
}

void model_print_totals(const struct totals *tot, long runs, long ops) {
    print_message("%ld runs x %ld ops: %zu watchers (%zu complete to the end, %zu compacted), "
                  "%zu revisions, %zu events checked, %zu progress, %zu fragment parts\n",
                  runs, ops, tot->watchers, tot->complete, tot->compacted, tot->revisions,
                  tot->events, tot->progress, tot->fragments);
}
