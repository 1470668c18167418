/* What the whole history reveals about operations whose outcome was not
 * recorded, computed once before the search (see lc_learn in lincheck_int.h).
 *
 * Test clients write unique values, so a value only one operation writes
 * identifies that operation: if a read or a watcher saw it, the operation
 * happened, before it was first seen, at the revision it was seen with. A
 * timed-out delete shows as a watch event at a revision no known write took.
 * A timed-out CAS can only take effect while the version it compares against
 * is current. And, in a closed world, a write of unknown revision can only
 * have taken a revision no known write took: a gap. */
#include "lincheck_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void lc_seen(struct lc_learned *l, int value, int64_t rev, int64_t version, uint64_t t) {
    if (value == LC_ABSENT)
        return;
    if (t < l->seen[value])
        l->seen[value] = t;
    if (l->vrev[value] == 0)
        l->vrev[value] = rev;
    if (version > 0 && l->vver[value] >= 0)
        l->vver[value] = l->vver[value] == 0 || l->vver[value] == version ? version : -1;
}

/* Counts, for each value, the operations that may put it (once per op,
 * whichever branch). */
static void lc_count_writers(const struct lc_op *op, int *writers) {
    for (int b = 0; b < 2; b++)
        for (size_t j = 0; j < op->nsubs[b]; j++) {
            const struct lc_sub *s = &op->subs[b][j];
            int dup = 0;
            for (int b2 = 0; b2 <= b; b2++)
                for (size_t j2 = 0; j2 < (b2 < b ? op->nsubs[b2] : j) && !dup; j2++)
                    dup = op->subs[b2][j2].kind == LC_PUT && op->subs[b2][j2].value == s->value;
            writers[s->value] += s->kind == LC_PUT && !dup;
        }
}

/* For each value: its writers, when it was first seen and at what revision. */
static void lc_observe(const struct lincheck_history *h, struct lc_learned *l) {
    for (size_t v = 0; v < h->values.n; v++)
        l->seen[v] = LC_NEVER;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->status == LC_FAIL)
            continue;
        lc_count_writers(op, l->writers);
        if (op->status != LC_OK)
            continue;
        for (size_t j = 0; j < op->nkvs; j++)
            lc_seen(l, op->kvs[j].value, op->kvs[j].mod, op->kvs[j].version, op->ret);
        for (size_t j = 0; j < op->nevs; j++)
            if (op->evs[j].type == LC_EV_PUT)
                lc_seen(l, op->evs[j].value, op->evs[j].rev, op->evs[j].version, op->ret);
        if (op->kind != LC_TXN || op->succeeded < 0)
            continue;
        for (size_t j = 0; j < op->nsubs[op->succeeded]; j++)
            if (op->subs[op->succeeded][j].kind == LC_GET)
                lc_seen(l, op->subs[op->succeeded][j].res.value, op->subs[op->succeeded][j].res.mod,
                        op->subs[op->succeeded][j].res.version, op->ret);
        for (size_t j = 0; j < op->ncmps && op->succeeded; j++)
            if (op->cmps[j].target == LC_T_VALUE && op->cmps[j].op == LC_EQ)
                lc_seen(l, op->cmps[j].value, 0, 0, op->ret);
    }
}

/* A timed-out op's revision and the time it was first seen, from the values
 * only it writes (rev 0 when unseen or contradictory). */
static void lc_learn_puts(const struct lc_learned *l, const struct lc_op *op, int64_t *rev,
                          uint64_t *by) {
    *rev = 0;
    *by = LC_NEVER;
    for (int b = 0; b < 2 && op->kind == LC_TXN; b++)
        for (size_t j = 0; j < op->nsubs[b]; j++) {
            const struct lc_sub *s = &op->subs[b][j];
            if (s->kind != LC_PUT || l->writers[s->value] != 1 || l->seen[s->value] == LC_NEVER)
                continue;
            if (l->seen[s->value] < *by)
                *by = l->seen[s->value];
            if (*rev >= 0 && l->vrev[s->value] > 0)
                *rev = *rev == 0 || *rev == l->vrev[s->value] ? l->vrev[s->value] : -1;
        }
    if (*rev < 0)
        *rev = 0;
}

/* Whether ok op wrote key k (a put, or a delete that deleted it). */
static int lc_wrote_key(const struct lc_op *op, int k) {
    if (op->kind != LC_TXN || op->status != LC_OK || op->succeeded < 0 || op->rev <= 0)
        return 0;
    for (size_t j = 0; j < op->nsubs[op->succeeded]; j++) {
        const struct lc_sub *s = &op->subs[op->succeeded][j];
        if (s->key == k && (s->kind == LC_PUT || (s->kind == LC_DEL && s->deleted > 0)))
            return 1;
    }
    return 0;
}

/* The latest time a timed-out CAS can still take effect: its compare names
 * one version of the key (a mod_revision, or a value only one acknowledged
 * write wrote), and once an acknowledged write has replaced that version,
 * which it did before completing, the compare can never hold again. */
static uint64_t lc_deadline(const struct lincheck_history *h, const struct lc_op *op,
                            const int *writers) {
    int64_t since = 0;
    uint64_t t = LC_NEVER;
    if (op->ncmps != 1 || op->cmps[0].op != LC_EQ)
        return LC_NEVER;
    const struct lc_cmp *c = &op->cmps[0];
    if (c->target == LC_T_MOD) {
        since = c->num;
    } else if (c->target == LC_T_VALUE && writers[c->value] == 1) {
        for (size_t i = 0; i < h->nops; i++) {
            const struct lc_op *w = &h->ops[i];
            for (size_t j = 0; lc_wrote_key(w, c->key) && j < w->nsubs[w->succeeded]; j++)
                if (w->subs[w->succeeded][j].kind == LC_PUT &&
                    w->subs[w->succeeded][j].value == c->value)
                    since = w->rev;
        }
    }
    if (since <= 0)
        return LC_NEVER;
    for (size_t i = 0; i < h->nops; i++)
        if (h->ops[i].rev > since && h->ops[i].ret < t && lc_wrote_key(&h->ops[i], c->key))
            t = h->ops[i].ret;
    return t;
}

static int lc_i64_cmp(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Collects the revisions taken (acknowledged writes, and timed-out writes
 * whose revision is known) as sorted runs, for lc_next_gap. */
static int lc_gaps_build(const struct lincheck_history *h, struct lc_learned *l) {
    size_t n = 0;
    l->used = calloc(h->nops + 1, sizeof(int64_t));
    l->run_end = calloc(h->nops + 1, sizeof(int64_t));
    if (l->used == NULL || l->run_end == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < h->nops; i++)
        if (h->ops[i].status == LC_OK ? h->ops[i].rev > 0 && lc_txn_wrote(&h->ops[i]) != 0
                                      : l->rev[i] > 0)
            l->used[n++] = l->rev[i];
    qsort(l->used, n, sizeof(int64_t), lc_i64_cmp);
    l->nused = 0;
    for (size_t i = 0; i < n; i++)
        if (l->nused == 0 || l->used[l->nused - 1] != l->used[i])
            l->used[l->nused++] = l->used[i];
    for (size_t i = l->nused; i-- > 0;)
        l->run_end[i] =
            i + 1 < l->nused && l->used[i + 1] == l->used[i] + 1 ? l->run_end[i + 1] : l->used[i];
    return 0;
}

int64_t lc_next_gap(const struct lc_learned *l, int64_t floor) {
    size_t lo = 0, hi = l->nused;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (l->used[mid] <= floor)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < l->nused && l->used[lo] == floor + 1)
        return l->run_end[lo] + 1;
    return floor + 1;
}

static int lc_taken(const struct lc_learned *l, int64_t rev) {
    return lc_next_gap(l, rev - 1) != rev;
}

/* A delete event that no known write explains, as one watcher saw it. */
struct lc_delev {
    int key;
    int64_t rev;
    uint64_t by; /* when it was known to have happened */
};

static int lc_delev_cmp(const void *a, const void *b) {
    const struct lc_delev *x = a, *y = b;
    if (x->key != y->key)
        return x->key - y->key;
    return (x->rev > y->rev) - (x->rev < y->rev);
}

/* A timed-out plain delete of one key: interchangeable with any other. */
static int lc_plain_delete(const struct lc_op *op) {
    return op->kind == LC_TXN && op->status == LC_INDET && op->ncmps == 0 && op->nsubs[0] == 0 &&
           op->nsubs[1] == 1 && op->subs[1][0].kind == LC_DEL;
}

/* Gives each delete event at a free revision to a timed-out plain delete of
 * its key: in revision order, to the earliest invoked one still free that was
 * invoked before the event was known. Plain deletes of a key differ only in
 * their invocation time, so the earliest is always as good a choice as any.
 * Keys that something else may have deleted unseen (a lease's end, a
 * timed-out txn) are left alone: the event might be theirs. */
static int lc_learn_deletes(const struct lincheck_history *h, struct lc_learned *l) {
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < h->nops; i++)
        cap += h->ops[i].kind == LC_WATCH ? h->ops[i].nevs : 0;
    struct lc_delev *ev = calloc(cap + 1, sizeof(*ev));
    unsigned char *other = calloc(h->keys.n + 1, 1); /* keys others may delete */
    if (ev == NULL || other == NULL) {
        free(ev);
        free(other);
        return -ENOMEM;
    }
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        for (int b = 0; b < 2; b++)
            for (size_t j = 0; j < op->nsubs[b]; j++) {
                const struct lc_sub *s = &op->subs[b][j];
                if ((s->kind == LC_PUT && s->lease != 0) ||
                    (s->kind == LC_DEL && op->status == LC_INDET && !lc_plain_delete(op)))
                    other[s->key] = 1;
            }
        for (size_t j = 0; op->kind == LC_WATCH && op->status == LC_OK && j < op->nevs; j++)
            if (op->evs[j].type == LC_EV_DEL && !lc_taken(l, op->evs[j].rev))
                ev[n++] = (struct lc_delev){op->evs[j].key, op->evs[j].rev, op->ret};
    }
    qsort(ev, n, sizeof(*ev), lc_delev_cmp);
    for (size_t e = 0; e < n; e++) {
        if (other[ev[e].key] || (e > 0 && ev[e].key == ev[e - 1].key && ev[e].rev == ev[e - 1].rev))
            continue;
        size_t best = h->nops;
        for (size_t i = 0; i < h->nops; i++) {
            const struct lc_op *op = &h->ops[i];
            if (lc_plain_delete(op) && op->subs[1][0].key == ev[e].key && l->rev[i] == 0 &&
                op->call < ev[e].by && (best == h->nops || op->call < h->ops[best].call))
                best = i;
        }
        if (best < h->nops) {
            l->rev[best] = ev[e].rev;
            l->by[best] = ev[e].by;
            l->must[best] = 1;
        }
    }
    free(ev);
    free(other);
    return 0;
}

int lc_learn(const struct lincheck_history *h, struct lc_learned *l) {
    memset(l, 0, sizeof(*l));
    l->seen = calloc(h->values.n + 1, sizeof(*l->seen));
    l->vrev = calloc(h->values.n + 1, sizeof(*l->vrev));
    l->vver = calloc(h->values.n + 1, sizeof(*l->vver));
    l->writers = calloc(h->values.n + 1, sizeof(*l->writers));
    l->rev = calloc(h->nops + 1, sizeof(*l->rev));
    l->by = calloc(h->nops + 1, sizeof(*l->by));
    l->must = calloc(h->nops + 1, 1);
    if (!l->seen || !l->vrev || !l->vver || !l->writers || !l->rev || !l->by || !l->must)
        return -ENOMEM;
    lc_observe(h, l);
    /* A version only says which write made it when one operation writes the value. */
    for (size_t v = 0; v < h->values.n; v++)
        if (l->writers[v] != 1 || l->vver[v] < 0)
            l->vver[v] = 0;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *op = &h->ops[i];
        if (op->status != LC_INDET) {
            l->rev[i] = op->rev;
            l->by[i] = op->ret;
            l->must[i] = 1;
            continue;
        }
        lc_learn_puts(l, op, &l->rev[i], &l->by[i]);
        l->must[i] = l->by[i] != LC_NEVER;
        if (!l->must[i] && op->kind == LC_TXN)
            l->by[i] = lc_deadline(h, op, l->writers);
    }
    /* Deletes are matched against the revisions still free of known writes. */
    int rc = lc_gaps_build(h, l);
    if (rc == 0)
        rc = lc_learn_deletes(h, l);
    if (rc == 0) {
        free(l->used);
        free(l->run_end);
        rc = lc_gaps_build(h, l);
    }
    for (size_t i = 0; i < h->nops; i++)
        if (l->by[i] < h->ops[i].call)
            l->by[i] = h->ops[i].call;
    return rc;
}

void lc_learned_free(struct lc_learned *l) {
    free(l->seen);
    free(l->vrev);
    free(l->vver);
    free(l->writers);
    free(l->rev);
    free(l->by);
    free(l->must);
    free(l->used);
    free(l->run_end);
}
