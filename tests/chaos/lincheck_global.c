/* lincheck's checks outside the per-key search: properties of the global
 * revision (per client, against real time, uniqueness), self-consistency of
 * results, the final read (no lost write, no surviving lease key), and watch
 * streams (exactly once, in order, no gap, progress never ahead). */
#include "lincheck_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Findings of one kind beyond this many are counted, not printed. */
#define LC_MAX_SHOWN 5

/* Ops with a header revision that order against each other: ok reads and
 * writes (serializable reads may come from a member behind the others). */
static int lc_has_rev(const struct lc_op *op) {
    return op->status == LC_OK && op->rev > 0 && !op->serializable &&
           (op->kind == LC_TXN || op->kind == LC_RANGE);
}

/* An op with the fields it is sorted by (client, then key, then revision). */
struct lc_ref {
    const struct lc_op *op;
    uint64_t key;
    int64_t rev;
    int client;
};

static int lc_ref_cmp(const void *a, const void *b) {
    const struct lc_ref *x = a, *y = b;
    if (x->client != y->client)
        return x->client < y->client ? -1 : 1;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    if (x->rev != y->rev)
        return x->rev < y->rev ? -1 : 1;
    return x->op->line - y->op->line;
}

/* Fills refs with the ops with a header revision, keyed by what sorts them:
 * by 0 = client and invocation, 1 = invocation, 2 = completion, 3 = the
 * writes only (timed-out ones too when their revision was learned). */
static size_t lc_refs(const struct lincheck_history *h, const struct lc_learned *l,
                      struct lc_ref *refs, int by) {
    size_t n = 0;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        int learned = op->status == LC_INDET && l->rev[i] > 0;
        if (by == 3 ? !learned && !(lc_has_rev(op) && lc_txn_wrote(op) == 1) : !lc_has_rev(op))
            continue;
        refs[n].op = op;
        refs[n].rev = l->rev[i];
        refs[n].client = by == 0 ? op->client : 0;
        refs[n].key = by == 3 ? 0 : by == 2 ? op->ret : op->call;
        n++;
    }
    qsort(refs, n, sizeof(*refs), lc_ref_cmp);
    return n;
}

static int lc_pair(struct lincheck_result *res, const struct lincheck_history *h,
                   const struct lc_op *a, const struct lc_op *b) {
    int rc = lc_report_op(&res->report, h, a);
    return rc != 0 ? rc : lc_report_op(&res->report, h, b);
}

/* Per client, in invocation order, header revisions never go back. */
static int lc_check_clients(const struct lincheck_history *h, const struct lc_learned *l,
                            struct lincheck_result *res, struct lc_ref *refs) {
    size_t n = lc_refs(h, l, refs, 0), shown = 0;
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++) {
        if (refs[i].client != refs[i - 1].client || refs[i].rev >= refs[i - 1].rev)
            continue;
        if (shown++ < LC_MAX_SHOWN) {
            rc = lc_report_anomaly(
                res, LINCHECK_A_CLIENT_REV_BACK, "client %s saw revision %lld after %lld",
                h->clients.str[refs[i].client], (long long)refs[i].rev, (long long)refs[i - 1].rev);
            if (rc == 0)
                rc = lc_pair(res, h, refs[i - 1].op, refs[i].op);
        }
    }
    return rc;
}

/* An op invoked after another completed sees at least its revision, and a
 * write gets a higher one. */
static int lc_check_realtime(const struct lincheck_history *h, const struct lc_learned *l,
                             struct lincheck_result *res, struct lc_ref *by_call,
                             struct lc_ref *by_ret) {
    size_t n = lc_refs(h, l, by_call, 1), shown = 0, j = 0;
    const struct lc_op *max = NULL;
    int rc = 0;
    lc_refs(h, l, by_ret, 2);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct lc_op *b = by_call[i].op;
        for (; j < n && by_ret[j].op->ret < b->call; j++)
            if (max == NULL || by_ret[j].op->rev > max->rev)
                max = by_ret[j].op;
        if (max == NULL)
            continue;
        int w = lc_txn_wrote(b) == 1;
        if (b->rev > max->rev || (!w && b->rev == max->rev))
            continue;
        if (shown++ < LC_MAX_SHOWN) {
            rc = lc_report_anomaly(res, LINCHECK_A_REALTIME_REV,
                                   "a %s at revision %lld started after an operation at "
                                   "revision %lld had completed",
                                   w ? "write" : "read", (long long)b->rev, (long long)max->rev);
            if (rc == 0)
                rc = lc_pair(res, h, max, b);
        }
    }
    return rc;
}

/* Distinct writes never share a revision: acknowledged ones, and timed-out
 * ones whose revision a read or watcher revealed. */
static int lc_check_dup_revs(const struct lincheck_history *h, const struct lc_learned *l,
                             struct lincheck_result *res, struct lc_ref *refs) {
    size_t n = lc_refs(h, l, refs, 3), shown = 0;
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++) {
        if (refs[i].rev != refs[i - 1].rev || shown++ >= LC_MAX_SHOWN)
            continue;
        rc = lc_report_anomaly(res, LINCHECK_A_DUP_REV, "two writes both got revision %lld",
                               (long long)refs[i].rev);
        if (rc == 0)
            rc = lc_pair(res, h, refs[i - 1].op, refs[i].op);
    }
    return rc;
}

/* A result never reports a key modified after the revision it was read at. */
static int lc_check_kv(struct lincheck_result *res, const struct lincheck_history *h,
                       const struct lc_op *op, const struct lc_kv *kv) {
    if (kv->value == LC_ABSENT || op->rev <= 0)
        return 0;
    /* Fields the history did not record are 0 and prove nothing. */
    if (kv->mod <= op->rev && (kv->mod == 0 || kv->create <= kv->mod))
        return 0;
    int rc = lc_report_anomaly(res, LINCHECK_A_BAD_RESULT,
                               "read at revision %lld returned a key with mod_rev %lld and "
                               "create_rev %lld",
                               (long long)op->rev, (long long)kv->mod, (long long)kv->create);
    return rc != 0 ? rc : lc_report_op(&res->report, h, op);
}

static int lc_check_results(const struct lincheck_history *h, struct lincheck_result *res) {
    int rc = 0;
    for (size_t i = 0; i < h->nops && rc == 0; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->status != LC_OK)
            continue;
        for (size_t j = 0; j < op->nkvs && rc == 0; j++)
            rc = lc_check_kv(res, h, op, &op->kvs[j]);
        if (op->kind != LC_TXN || op->succeeded < 0)
            continue;
        for (size_t j = 0; j < op->nsubs[op->succeeded] && rc == 0; j++)
            if (op->subs[op->succeeded][j].kind == LC_GET)
                rc = lc_check_kv(res, h, op, &op->subs[op->succeeded][j].res);
    }
    return rc;
}

/* The last acknowledged write of key k at or below revision rev, or NULL;
 * *sub is its sub-operation on k. */
static const struct lc_op *lc_last_write(const struct lincheck_history *h, int k, int64_t rev,
                                         const struct lc_sub **sub) {
    const struct lc_op *best = NULL;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (lc_txn_wrote(op) != 1 || op->rev > rev || (best != NULL && op->rev <= best->rev))
            continue;
        for (size_t j = 0; j < op->nsubs[op->succeeded]; j++) {
            const struct lc_sub *s = &op->subs[op->succeeded][j];
            if (s->key == k && (s->kind == LC_PUT || s->deleted > 0)) {
                best = op;
                *sub = s;
            }
        }
    }
    return best;
}

/* Whether some operation without a recorded outcome may have deleted key k
 * (an indeterminate write, a delete with no count, or a lease's end). */
static int lc_may_vanish(const struct lincheck_history *h, int k, int64_t lease) {
    if (lease > 0)
        return 1;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->kind != LC_TXN || op->status == LC_FAIL)
            continue;
        for (int b = 0; b < 2; b++)
            for (size_t j = 0; j < op->nsubs[b]; j++)
                if (op->subs[b][j].key == k && op->subs[b][j].kind == LC_DEL &&
                    (op->status == LC_INDET || op->subs[b][j].deleted < 0))
                    return 1;
    }
    return 0;
}

/* Whether lease number l was revoked or seen expired before time t. */
static const struct lc_op *lc_lease_ended(const struct lincheck_history *h, int l, uint64_t t) {
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if ((op->kind == LC_REVOKE || op->kind == LC_EXPIRED) && op->status == LC_OK &&
            op->lidx == l && op->ret < t)
            return op;
    }
    return NULL;
}

static int lc_lease_number(const struct lincheck_history *h, int64_t id) {
    for (size_t i = 0; i < h->nleases; i++)
        if (h->leases[i] == id)
            return (int)i;
    return -1;
}

/* One key of a final read: the last acknowledged write is there (or was
 * overwritten by something newer; a delete is not undone), and no key of an
 * ended lease is. */
static int lc_check_final_key(const struct lincheck_history *h, struct lincheck_result *res,
                              const struct lc_op *fin, int k) {
    const struct lc_kv *kv = NULL;
    const struct lc_sub *ws = NULL;
    for (size_t j = 0; j < fin->nkvs; j++)
        if (fin->kvs[j].key == k)
            kv = &fin->kvs[j];
    const struct lc_op *w = lc_last_write(h, k, fin->rev, &ws);
    int rc = 0;
    if (w != NULL && w->ret < fin->call) {
        if (ws->kind == LC_DEL) {
            /* A delete is lost when an older version of the key came back. */
            if (kv != NULL && kv->mod > 0 && kv->mod < w->rev)
                rc = lc_report_anomaly(res, LINCHECK_A_LOST_WRITE,
                                       "the final read returns key \"%s\" at mod_rev %lld, "
                                       "though it was deleted at revision %lld",
                                       h->keys.str[k], (long long)kv->mod, (long long)w->rev);
            else
                w = NULL;
        } else if (kv == NULL && !lc_may_vanish(h, k, ws->lease)) {
            rc = lc_report_anomaly(res, LINCHECK_A_LOST_WRITE,
                                   "the final read at revision %lld misses key \"%s\", "
                                   "acknowledged at revision %lld",
                                   (long long)fin->rev, h->keys.str[k], (long long)w->rev);
        } else if (kv != NULL && kv->mod > 0 && kv->mod < w->rev) {
            rc = lc_report_anomaly(res, LINCHECK_A_LOST_WRITE,
                                   "the final read returns key \"%s\" at mod_rev %lld, older "
                                   "than its acknowledged write at revision %lld",
                                   h->keys.str[k], (long long)kv->mod, (long long)w->rev);
        } else {
            w = NULL;
        }
        if (rc == 0 && w != NULL)
            rc = lc_pair(res, h, w, fin);
    }
    if (rc != 0 || kv == NULL)
        return rc;
    int64_t lease = kv->lease;
    if (lease < 0) {
        /* Unrecorded: take it from the write that produced the value read. */
        const struct lc_op *src = lc_last_write(h, k, kv->mod, &ws);
        lease = src != NULL && src->rev == kv->mod && ws->kind == LC_PUT ? ws->lease : 0;
    }
    int l = lease > 0 ? lc_lease_number(h, lease) : -1;
    const struct lc_op *end = l >= 0 ? lc_lease_ended(h, l, fin->call) : NULL;
    if (end == NULL)
        return 0;
    rc = lc_report_anomaly(res, LINCHECK_A_LEASE_KEY,
                           "key \"%s\" of lease %lld is still in the final read after the "
                           "lease ended",
                           h->keys.str[k], (long long)lease);
    return rc != 0 ? rc : lc_pair(res, h, end, fin);
}

static int lc_check_final(const struct lincheck_history *h, struct lincheck_result *res) {
    int rc = 0;
    for (size_t i = 0; i < h->nops && rc == 0; i++) {
        const struct lc_op *fin = &h->ops[i];
        if (fin->kind != LC_RANGE || !fin->final || fin->status != LC_OK || fin->serializable)
            continue;
        for (size_t k = 0; k < h->keys.n && rc == 0; k++)
            if (lc_in_range(h, fin, (int)k))
                rc = lc_check_final_key(h, res, fin, (int)k);
    }
    return rc;
}

/* --- watches -------------------------------------------------------------- */

/* An event of the key space: from an acknowledged write (op set, w == NULL)
 * or as a watcher received it (w set). */
struct lc_event {
    int64_t rev;
    int key;
    enum lc_ev_type type;
    int value;
    const struct lc_op *op; /* the write, or the watch */
    const struct lc_wev *w;
};

static int lc_event_cmp(const void *a, const void *b) {
    const struct lc_event *x = a, *y = b;
    if (x->rev != y->rev)
        return x->rev < y->rev ? -1 : 1;
    if (x->key != y->key)
        return x->key - y->key;
    if ((x->w != NULL) != (y->w != NULL))
        return x->w != NULL ? 1 : -1; /* writes first within a (rev, key) */
    return x->op->line - y->op->line;
}

/* Whether an event that no acknowledged write explains can come from an
 * operation whose outcome was not recorded, or from a lease's end. */
static int lc_explained(const struct lincheck_history *h, const struct lc_event *e) {
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->kind != LC_TXN || op->status == LC_FAIL)
            continue;
        for (int b = 0; b < 2; b++)
            for (size_t j = 0; j < op->nsubs[b]; j++) {
                const struct lc_sub *s = &op->subs[b][j];
                int open = op->status == LC_INDET || (s->kind == LC_DEL && s->deleted < 0);
                if (s->key != e->key)
                    continue;
                if (e->type == LC_EV_PUT && s->kind == LC_PUT && s->value == e->value &&
                    op->status == LC_INDET)
                    return 1;
                if (e->type == LC_EV_DEL &&
                    ((s->kind == LC_DEL && open) || (s->kind == LC_PUT && s->lease != 0)))
                    return 1;
            }
    }
    return 0;
}

/* Builds the sorted, de-duplicated events of the history (writes, and what
 * watchers saw that timed-out operations or leases explain) into *out, and
 * reports events that contradict the writes or match none. */
static int lc_events(const struct lincheck_history *h, struct lincheck_result *res,
                     struct lc_event **out, size_t *nout) {
    size_t n = 0, cap = 0, m = 0, shown = 0;
    int rc = 0;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (lc_txn_wrote(op) != 0 && op->rev > 0)
            cap += op->nsubs[op->succeeded];
        cap += op->kind == LC_WATCH ? op->nevs : 0;
    }
    struct lc_event *ev = calloc(cap + 1, sizeof(*ev));
    if (ev == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->kind == LC_WATCH) {
            for (size_t j = 0; j < op->nevs; j++) {
                const struct lc_wev *w = &op->evs[j];
                if (w->type == LC_EV_PUT || w->type == LC_EV_DEL)
                    ev[n++] = (struct lc_event){w->rev, w->key, w->type, w->value, op, w};
            }
        } else if (lc_txn_wrote(op) != 0 && op->rev > 0) {
            for (size_t j = 0; j < op->nsubs[op->succeeded]; j++) {
                const struct lc_sub *s = &op->subs[op->succeeded][j];
                if (s->kind == LC_PUT)
                    ev[n++] = (struct lc_event){op->rev, s->key, LC_EV_PUT, s->value, op, NULL};
                else if (s->kind == LC_DEL && s->deleted > 0)
                    ev[n++] = (struct lc_event){op->rev, s->key, LC_EV_DEL, LC_ABSENT, op, NULL};
            }
        }
    }
    qsort(ev, n, sizeof(*ev), lc_event_cmp);
    for (size_t i = 0; i < n && rc == 0;) {
        size_t j = i;
        while (j < n && ev[j].rev == ev[i].rev && ev[j].key == ev[i].key)
            j++;
        const struct lc_event *ref = &ev[i];
        int bad = ref->w != NULL && !lc_explained(h, ref);
        /* A revision taken by an acknowledged write belongs to that write's keys only. */
        for (size_t x = 0; x < h->nops && ref->w != NULL && !bad; x++)
            bad = lc_txn_wrote(&h->ops[x]) == 1 && h->ops[x].rev == ref->rev;
        for (size_t x = i + 1; x < j && !bad; x++)
            bad = ev[x].type != ref->type || ev[x].value != ref->value;
        if (bad && shown++ < LC_MAX_SHOWN) {
            rc = lc_report_anomaly(res, LINCHECK_A_WATCH_PHANTOM,
                                   "watch event %s \"%s\" at revision %lld %s",
                                   ref->type == LC_EV_PUT ? "put" : "delete", h->keys.str[ref->key],
                                   (long long)ref->rev,
                                   ref->w == NULL ? "differs from the write at that revision"
                                                  : "matches no write of the history");
            for (size_t x = i; x < j && x < i + 3 && rc == 0; x++)
                rc = lc_report_op(&res->report, h, ev[x].op);
        }
        ev[m++] = *ref;
        i = j;
    }
    *out = ev;
    *nout = m;
    return rc;
}

static int lc_wev_cmp(const void *a, const void *b) {
    const struct lc_wev *x = *(const struct lc_wev *const *)a,
                        *y = *(const struct lc_wev *const *)b;
    if (x->rev != y->rev)
        return x->rev < y->rev ? -1 : 1;
    return x->key - y->key;
}

/* One watcher: order and progress within each stream segment (between
 * reconnects), then exactly-once delivery of every event of its range from its
 * start revision up to the highest revision it is known to have caught up to. */
static int lc_check_watcher(const struct lincheck_history *h, struct lincheck_result *res,
                            const struct lc_op *wo, const struct lc_event *ev, size_t nev) {
    const struct lc_wev **got = calloc(wo->nevs + 1, sizeof(*got));
    int64_t last = 0, progress = 0, upto = wo->start_rev - 1;
    size_t n = 0, gaps = 0;
    int rc = 0, order = 0, ahead = 0;
    if (got == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < wo->nevs && rc == 0; i++) {
        const struct lc_wev *w = &wo->evs[i];
        if (w->type == LC_EV_RECONNECT) {
            last = 0;
            progress = 0;
            continue;
        }
        if (w->rev > upto)
            upto = w->rev;
        if (w->type == LC_EV_PROGRESS) {
            progress = w->rev > progress ? w->rev : progress;
            continue;
        }
        got[n++] = w;
        if ((w->rev < last || w->rev < wo->start_rev || !lc_in_range(h, wo, w->key)) &&
            order++ == 0) {
            rc = lc_report_anomaly(res, LINCHECK_A_WATCH_ORDER,
                                   "watcher got \"%s\" at revision %lld after revision %lld "
                                   "(start %lld), or outside its range",
                                   h->keys.str[w->key], (long long)w->rev, (long long)last,
                                   (long long)wo->start_rev);
            if (rc == 0)
                rc = lc_report_op(&res->report, h, wo);
        }
        if (w->rev <= progress && ahead++ == 0) {
            rc = lc_report_anomaly(res, LINCHECK_A_PROGRESS_AHEAD,
                                   "watcher got \"%s\" at revision %lld after a progress "
                                   "notification at revision %lld",
                                   h->keys.str[w->key], (long long)w->rev, (long long)progress);
            if (rc == 0)
                rc = lc_report_op(&res->report, h, wo);
        }
        last = w->rev > last ? w->rev : last;
    }
    qsort(got, n, sizeof(*got), lc_wev_cmp);
    for (size_t i = 1; i < n && rc == 0; i++) {
        if (got[i]->rev != got[i - 1]->rev || got[i]->key != got[i - 1]->key)
            continue;
        rc = lc_report_anomaly(res, LINCHECK_A_WATCH_DUP,
                               "watcher got \"%s\" at revision %lld twice",
                               h->keys.str[got[i]->key], (long long)got[i]->rev);
        if (rc == 0)
            rc = lc_report_op(&res->report, h, wo);
        break;
    }
    size_t j = 0;
    for (size_t i = 0; i < nev && rc == 0; i++) {
        const struct lc_event *e = &ev[i];
        if (e->rev < wo->start_rev || e->rev > upto || !lc_in_range(h, wo, e->key))
            continue;
        while (j < n && (got[j]->rev < e->rev || (got[j]->rev == e->rev && got[j]->key < e->key)))
            j++;
        if (j < n && got[j]->rev == e->rev && got[j]->key == e->key)
            continue;
        if (gaps++ >= LC_MAX_SHOWN)
            continue;
        rc = lc_report_anomaly(res, LINCHECK_A_WATCH_GAP,
                               "watcher never got %s \"%s\" at revision %lld, though it caught "
                               "up to revision %lld",
                               e->type == LC_EV_PUT ? "put" : "delete", h->keys.str[e->key],
                               (long long)e->rev, (long long)upto);
        if (rc == 0)
            rc = lc_pair(res, h, e->op, wo);
    }
    free(got);
    return rc;
}

static int lc_check_watches(const struct lincheck_history *h, struct lincheck_result *res) {
    struct lc_event *ev = NULL;
    size_t nev = 0;
    int rc = lc_events(h, res, &ev, &nev);
    for (size_t i = 0; i < h->nops && rc == 0; i++)
        if (h->ops[i].kind == LC_WATCH)
            rc = lc_check_watcher(h, res, &h->ops[i], ev, nev);
    free(ev);
    return rc;
}

/* Whether op may have taken a revision nobody reported: a write whose
 * outcome or revision is unknown, a revoke, a grant (its lease may expire
 * with keys attached). */
static int lc_unknown_writer(const struct lc_op *op, int64_t learned_rev) {
    if (op->status == LC_FAIL)
        return 0;
    if (op->kind == LC_GRANT || op->kind == LC_REVOKE)
        return 1;
    if (op->kind != LC_TXN)
        return 0;
    if (op->status == LC_OK)
        return op->rev <= 0 && lc_txn_wrote(op) != 0;
    for (int b = 0; b < 2 && learned_rev <= 0; b++)
        for (size_t j = 0; j < op->nsubs[b]; j++)
            if (op->subs[b][j].kind != LC_GET)
                return 1;
    return 0;
}

/* In a closed world every revision between the first one seen and the last
 * one written was taken by a write of the history: etcd never skips one. A
 * server that does (say, a delete of nothing or a failed txn bumping the
 * revision) leaves more free revisions than operations that could have taken
 * them. */
static int lc_check_density(const struct lincheck_history *h, const struct lc_learned *l,
                            struct lincheck_result *res) {
    int64_t lo = INT64_MAX, first = 0;
    size_t writers = 0, taken = 0, shown = 0;
    int rc;
    for (size_t i = 0; i < h->nops; i++) {
        if (lc_has_rev(&h->ops[i]) && h->ops[i].rev < lo)
            lo = h->ops[i].rev;
        writers += (size_t)lc_unknown_writer(&h->ops[i], l->rev[i]);
    }
    if (l->nused == 0 || lo == INT64_MAX || l->used[l->nused - 1] <= lo)
        return 0;
    int64_t hi = l->used[l->nused - 1];
    for (size_t i = 0; i < l->nused; i++)
        taken += l->used[i] > lo;
    size_t free_revs = (size_t)(hi - lo) - taken;
    if (free_revs <= writers)
        return 0;
    for (int64_t r = lo + 1; r <= hi && first == 0; r++)
        if (lc_next_gap(l, r - 1) == r)
            first = r;
    rc = lc_report_anomaly(res, LINCHECK_A_REV_SKIPPED,
                           "%zu revisions in (%lld, %lld] were taken by no write of the history, "
                           "which has only %zu operations that could have taken one unseen; the "
                           "first is %lld",
                           free_revs, (long long)lo, (long long)hi, writers, (long long)first);
    /* Operations that reported that revision are the first place to look. */
    for (size_t i = 0; i < h->nops && rc == 0 && shown < 3; i++)
        if (lc_has_rev(&h->ops[i]) && h->ops[i].rev == first && shown++ < 3)
            rc = lc_report_op(&res->report, h, &h->ops[i]);
    return rc;
}

int lc_check_global(const struct lincheck_history *h, const struct lc_learned *l, int open_world,
                    struct lincheck_result *res) {
    struct lc_ref *a = calloc(h->nops + 1, sizeof(*a)), *b = calloc(h->nops + 1, sizeof(*b));
    int rc = -ENOMEM;
    if (a == NULL || b == NULL)
        goto err;
    if ((rc = lc_check_results(h, res)) != 0 || (rc = lc_check_clients(h, l, res, a)) != 0 ||
        (rc = lc_check_realtime(h, l, res, a, b)) != 0 ||
        (rc = lc_check_dup_revs(h, l, res, a)) != 0 || (rc = lc_check_final(h, res)) != 0 ||
        (rc = lc_check_watches(h, res)) != 0 ||
        (!open_world && (rc = lc_check_density(h, l, res)) != 0))
        goto err;
err:
    free(a);
    free(b);
    return rc;
}
