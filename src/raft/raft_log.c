/* raft_log: the node's view of its log — the caller's durable storage followed
 * by the unstable tail raft keeps until the caller has persisted it. Every
 * question about an index (its term, whether it is compacted, whether it is
 * durable) is answered here, so the rules of Log Matching live in one place. */
#include "raft/raft_int.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int raft_evec_reserve(struct raft_evec *ev, size_t need) {
    if (need <= ev->cap)
        return 0;
    size_t cap = ev->cap ? ev->cap : 16;
    while (cap < need)
        cap *= 2;
    struct raft_entry *v = realloc(ev->v, cap * sizeof(*v));
    if (!v)
        return -ENOMEM;
    ev->v = v;
    ev->cap = cap;
    return 0;
}

void raft_evec_free(struct raft_evec *ev) {
    free(ev->v);
    ev->v = NULL;
    ev->n = ev->cap = 0;
}

int raft_log_init(struct raft_log *l, struct raft_storage st) {
    memset(l, 0, sizeof(*l));
    l->st = st;
    l->uoff = st.ops->last_index(st.ctx) + 1;
    uint64_t first = st.ops->first_index(st.ctx);
    l->committed = first - 1;
    l->applied = first - 1;
    return 0;
}

/* Data of the entries of one append shares one block with a reference count,
 * so a batch costs one allocation however many entries it has. */
struct raft_ublock {
    size_t refs;
    uint8_t data[];
};

static void unref(struct raft_ublock *b) {
    if (b && --b->refs == 0)
        free(b);
}

static void free_unstable(struct raft_log *l, size_t from) {
    for (size_t k = from; k < l->un; k++)
        unref(l->ublk[k]);
    l->un = from;
}

void raft_log_destroy(struct raft_log *l) {
    free_unstable(l, 0);
    free(l->ue);
    free(l->ublk);
    if (l->has_usnap)
        free((void *)l->usnap.data);
    memset(l, 0, sizeof(*l));
}

uint64_t raft_log_first(const struct raft_log *l) {
    if (l->has_usnap)
        return l->usnap.meta.index + 1;
    return l->st.ops->first_index(l->st.ctx);
}

/* uoff is always one past the last stable entry (or the unstable snapshot),
 * so the log ends at uoff + un - 1 whatever is unstable. */
uint64_t raft_log_last(const struct raft_log *l) {
    return l->uoff + l->un - 1;
}

uint64_t raft_log_stable_last(const struct raft_log *l) {
    return l->uoff - 1;
}

int raft_log_get_term(const struct raft_log *l, uint64_t i, uint64_t *t) {
    if (l->un && i >= l->uoff && i < l->uoff + l->un) {
        *t = l->ue[i - l->uoff].term;
        return 0;
    }
    if (l->has_usnap) {
        if (i == l->usnap.meta.index) {
            *t = l->usnap.meta.term;
            return 0;
        }
        return i < l->usnap.meta.index ? RAFT_ECOMPACTED : RAFT_EUNAVAILABLE;
    }
    if (i >= l->uoff + l->un)
        return RAFT_EUNAVAILABLE;
    return l->st.ops->term(l->st.ctx, i, t);
}

uint64_t raft_log_term_or0(const struct raft_log *l, uint64_t i) {
    uint64_t t = 0;
    if (raft_log_get_term(l, i, &t) != 0)
        return 0;
    return t;
}

uint64_t raft_log_last_term(const struct raft_log *l) {
    uint64_t t = 0;
    int rc = raft_log_get_term(l, raft_log_last(l), &t);
    assert(rc == 0);
    (void)rc;
    return t;
}

bool raft_log_match_term(const struct raft_log *l, uint64_t i, uint64_t t) {
    uint64_t x;
    return raft_log_get_term(l, i, &x) == 0 && x == t;
}

bool raft_log_up_to_date(const struct raft_log *l, uint64_t last, uint64_t term) {
    uint64_t lt = raft_log_last_term(l);
    return term > lt || (term == lt && last >= raft_log_last(l));
}

int raft_log_slice(const struct raft_log *l, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                   struct raft_evec *ev) {
    if (lo >= hi)
        return 0;
    if (lo < raft_log_first(l))
        return RAFT_ECOMPACTED;
    if (hi > raft_log_last(l) + 1)
        return RAFT_EUNAVAILABLE;
    int rc = raft_evec_reserve(ev, ev->n + (size_t)(hi - lo));
    if (rc < 0)
        return rc;
    uint64_t size = 0;
    size_t start = ev->n;
    if (lo < l->uoff) {
        uint64_t shi = hi < l->uoff ? hi : l->uoff;
        size_t got = 0;
        rc = l->st.ops->entries(l->st.ctx, lo, shi, max_bytes, ev->v + ev->n, &got);
        if (rc != 0)
            return rc;
        assert(got >= 1 && got <= shi - lo);
        ev->n += got;
        if (got < shi - lo)
            return 0; /* the size cap was reached inside storage */
        for (size_t k = start; k < ev->n; k++)
            size += ev->v[k].len;
        lo = shi;
    }
    for (uint64_t i = lo; i < hi; i++) {
        const struct raft_entry *e = &l->ue[i - l->uoff];
        if (ev->n > start && size + e->len > max_bytes)
            break;
        size += e->len;
        ev->v[ev->n++] = *e;
    }
    return 0;
}

int raft_log_append(struct raft_log *l, const struct raft_entry *ents, size_t n) {
    if (n == 0)
        return 0;
    uint64_t after = ents[0].index;
    assert(after > l->committed);
    assert(after <= raft_log_last(l) + 1);
    size_t keep;
    if (after >= l->uoff + l->un)
        keep = l->un;
    else if (after <= l->uoff)
        keep = 0;
    else
        keep = (size_t)(after - l->uoff);
    if (keep + n > l->ucap) {
        size_t cap = l->ucap ? l->ucap : 64;
        while (cap < keep + n)
            cap *= 2;
        struct raft_entry *v = realloc(l->ue, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->ue = v;
        struct raft_ublock **b = realloc(l->ublk, cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        l->ublk = b;
        l->ucap = cap;
    }
    /* Allocate before touching the log: a failure changes nothing. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ents[i].len;
    struct raft_ublock *block = NULL;
    if (total) {
        block = malloc(sizeof(*block) + total);
        if (!block)
            return -ENOMEM;
        block->refs = 0;
    }
    free_unstable(l, keep);
    if (keep == 0)
        l->uoff = after;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        assert(i == 0 || ents[i].index == ents[i - 1].index + 1);
        struct raft_entry *e = &l->ue[l->un];
        *e = ents[i];
        e->data = NULL;
        l->ublk[l->un] = NULL;
        if (ents[i].len) {
            e->data = block->data + at;
            memcpy(e->data, ents[i].data, ents[i].len);
            at += ents[i].len;
            block->refs++;
            l->ublk[l->un] = block;
        }
        l->un++;
    }
    return 0;
}

int raft_log_maybe_append(struct raft_log *l, uint64_t index, uint64_t log_term, uint64_t commit,
                          const struct raft_entry *ents, size_t n, uint64_t *last_new) {
    if (!raft_log_match_term(l, index, log_term))
        return 0;
    uint64_t lastnew = index + n;
    size_t k = 0;
    /* Skip the entries we already have; the first conflict (or the first
     * new entry) is where appending starts. */
    while (k < n && raft_log_match_term(l, ents[k].index, ents[k].term))
        k++;
    if (k < n) {
        if (ents[k].index <= l->committed)
            return -EINVAL; /* would overwrite a committed entry: a safety bug upstream */
        int rc = raft_log_append(l, ents + k, n - k);
        if (rc < 0)
            return rc;
    }
    uint64_t c = commit < lastnew ? commit : lastnew;
    raft_log_commit_to(l, c);
    *last_new = lastnew;
    return 1;
}

void raft_log_commit_to(struct raft_log *l, uint64_t c) {
    if (c <= l->committed)
        return;
    assert(c <= raft_log_last(l));
    l->committed = c;
}

uint64_t raft_log_conflict_by_term(const struct raft_log *l, uint64_t i, uint64_t term) {
    for (; i > 0; i--) {
        uint64_t t;
        if (raft_log_get_term(l, i, &t) != 0 || t <= term)
            break;
    }
    return i;
}

int raft_dup_bytes(const uint8_t *p, size_t n, uint8_t **out) {
    *out = NULL;
    if (n == 0)
        return 0;
    *out = malloc(n);
    if (!*out)
        return -ENOMEM;
    memcpy(*out, p, n);
    return 0;
}

int raft_log_restore(struct raft_log *l, const struct raft_snapshot *snap) {
    uint8_t *d;
    if (raft_dup_bytes(snap->data, snap->len, &d) < 0)
        return -ENOMEM;
    if (l->has_usnap)
        free((void *)l->usnap.data);
    l->usnap = *snap;
    l->usnap.data = d;
    l->has_usnap = true;
    free_unstable(l, 0);
    l->uoff = snap->meta.index + 1;
    l->committed = snap->meta.index;
    return 0;
}

void raft_log_stable_to(struct raft_log *l, uint64_t i, uint64_t t) {
    if (i < l->uoff || i >= l->uoff + l->un || l->ue[i - l->uoff].term != t)
        return; /* that tail was replaced meanwhile: nothing became stable */
    size_t k = (size_t)(i - l->uoff) + 1;
    for (size_t j = 0; j < k; j++)
        unref(l->ublk[j]);
    memmove(l->ue, l->ue + k, (l->un - k) * sizeof(*l->ue));
    memmove(l->ublk, l->ublk + k, (l->un - k) * sizeof(*l->ublk));
    l->un -= k;
    l->uoff = i + 1;
}

void raft_log_stable_snap_to(struct raft_log *l, uint64_t i) {
    if (l->has_usnap && l->usnap.meta.index == i) {
        free((void *)l->usnap.data);
        l->has_usnap = false;
        memset(&l->usnap, 0, sizeof(l->usnap));
    }
}
