/* The leader half of the lease layer (etcd's primary lessor): when each lease
 * expires on this member's monotonic clock, when each is due for a
 * checkpoint, renewals and TimeToLive. None of it is replicated: it is built
 * from the "lease" database at promotion and follows committed batches
 * (lprimary_apply) until demotion. Everything here runs under ls->mu. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lease/lease_int.h"

static struct ent *ent_new(int64_t id) {
    struct ent *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    e->id = id;
    for (int i = 0; i < H_COUNT; i++)
        e->hpos[i] = HEAP_NONE;
    return e;
}

/* Adds a fresh entry to the table and the expiry heap. */
static int ent_add(lease_t *ls, int64_t id, struct ent **out) {
    struct ent *e = lfault(ls) ? NULL : ent_new(id);
    if (e == NULL)
        return -ENOMEM;
    if (lfault(ls) || ltab_put(&ls->tab, e) != 0) {
        free(e);
        return -ENOMEM;
    }
    if (lfault(ls) || lheap_set(&ls->heaps[H_EXPIRY], e, 0) != 0) {
        ltab_del(&ls->tab, id);
        free(e);
        return -ENOMEM;
    }
    *out = e;
    return 0;
}

static void ent_drop(lease_t *ls, struct ent *e) {
    for (int i = 0; i < H_COUNT; i++)
        lheap_remove(&ls->heaps[i], e);
    ltab_del(&ls->tab, e->id);
    free(e);
}

static void set_expiry(lease_t *ls, struct ent *e, uint64_t expiry) {
    e->expiry = expiry;
    /* Every entry is in the expiry heap from ent_add on: no allocation. */
    int rc = lheap_set(&ls->heaps[H_EXPIRY], e, expiry);
    assert(rc == 0);
    (void)rc;
}

/* Puts e in the checkpoint heap at `at` (an allocation if it is not in it). */
static int checkpoint_at(lease_t *ls, struct ent *e, uint64_t at) {
    if (e->hpos[H_CHECKPOINT] == HEAP_NONE && lfault(ls))
        return -ENOMEM;
    return lheap_set(&ls->heaps[H_CHECKPOINT], e, at);
}

/* etcd's scheduleCheckpointIfNeeded: a lease with more than an interval left
 * is checkpointed an interval from now; a shorter one needs no periodic
 * checkpoint (it expires or gets renewed first). */
static int schedule_checkpoint(lease_t *ls, struct ent *e, uint64_t now) {
    uint64_t iv = ls->opt.checkpoint_interval_ns;
    if (e->expiry > now && e->expiry - now > iv)
        return checkpoint_at(ls, e, now + iv);
    lheap_remove(&ls->heaps[H_CHECKPOINT], e);
    return 0;
}

void lprimary_clear(lease_t *ls) {
    ltab_free(&ls->tab);
    for (int i = 0; i < H_COUNT; i++)
        lheap_free(&ls->heaps[i]);
}

/* Out of memory while following a batch: half-updated leader state could
 * revoke a lease early or never, so it is dropped; the member then acts as a
 * follower for leases (lease_is_primary turns false) until promoted again. */
static void lose_primary(lease_t *ls, int rc) {
    LOG_ERROR(ls->lg, "lease: leader state dropped", LOG_STR("error", lease_strerror(rc)));
    lprimary_clear(ls);
    ls->primary = false;
}

void lprimary_apply(lease_t *ls, const struct pend *p, uint64_t now_mono) {
    struct ent *e = ltab_get(&ls->tab, p->id);
    int rc = 0;
    switch (p->op) {
    case P_GRANT:
        /* Present already when promotion read a snapshot holding the grant. */
        if (e == NULL && (rc = ent_add(ls, p->id, &e)) != 0)
            break;
        e->ttl = p->ttl;
        e->deadline = p->deadline;
        e->promised = 0;
        set_expiry(ls, e, lsat_add(now_mono, lttl_ns(e->ttl)));
        rc = schedule_checkpoint(ls, e, now_mono);
        break;
    case P_REVOKE:
        if (e != NULL)
            ent_drop(ls, e);
        break;
    case P_CHECKPOINT:
        if (e == NULL)
            break;
        e->deadline = p->deadline;
        /* A checkpoint proposed before a renewal here can land after it and
         * record less than the renewal promised: record more at once. */
        if (e->promised != 0 && (e->deadline == 0 || e->deadline < e->promised))
            rc = checkpoint_at(ls, e, now_mono);
        else
            rc = schedule_checkpoint(ls, e, now_mono);
        break;
    }
    if (rc != 0)
        lose_primary(ls, rc);
}

struct promo {
    lease_t *ls;
    uint64_t now_mono, now_wall;
    size_t n;
};

/* Where a new leader starts a lease: its persisted deadline plus the grace,
 * or, with no deadline known, etcd's rule (remaining TTL or TTL, extended). */
static uint64_t promoted_left(const lease_t *ls, const struct lrec *r, uint64_t now_wall) {
    uint64_t grace = ls->opt.grace_ns;
    if (r->deadline != 0) {
        uint64_t end = lsat_add(r->deadline, grace);
        return end > now_wall ? end - now_wall : 0;
    }
    return lsat_add(lttl_ns(r->remaining > 0 ? r->remaining : r->ttl), grace);
}

static int promote_one(void *arg, int64_t id, const struct lrec *r) {
    struct promo *pr = arg;
    lease_t *ls = pr->ls;
    struct ent *e;
    int rc = ent_add(ls, id, &e);
    if (rc != 0)
        return rc;
    /* As etcd's recovery: a lease granted under a smaller minimum renews to
     * the current one. */
    e->ttl = r->ttl < ls->opt.min_ttl ? ls->opt.min_ttl : r->ttl;
    e->deadline = r->deadline;
    set_expiry(ls, e, lsat_add(pr->now_mono, promoted_left(ls, r, pr->now_wall)));
    pr->n++;
    return schedule_checkpoint(ls, e, pr->now_mono);
}

/* lease_promote's work, with ls->mu held. */
static int promote_locked(lease_t *ls, uint64_t now_mono, uint64_t now_wall) {
    lprimary_clear(ls);
    ls->primary = false;
    mvcc_read_t *rd;
    struct promo pr = {.ls = ls, .now_mono = now_mono, .now_wall = now_wall};
    int rc = mvcc_read_begin(ls->db, &rd);
    if (rc == 0) {
        rc = lrec_walk(ls, mvcc_read_txn(rd), promote_one, &pr);
        mvcc_read_end(rd);
    }
    if (rc == 0)
        ls->primary = true;
    else
        lprimary_clear(ls);
    if (rc == 0)
        LOG_INFO(ls->lg, "lease: promoted to primary lessor", LOG_UINT("leases", pr.n));
    else
        LOG_ERROR(ls->lg, "lease: promotion failed", LOG_STR("error", lease_strerror(rc)));
    return rc;
}

int lease_promote(lease_t *ls, uint64_t now_mono, uint64_t now_wall) {
    pthread_mutex_lock(&ls->mu);
    int rc = promote_locked(ls, now_mono, now_wall);
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

int lease_reload(lease_t *ls, uint64_t now_mono, uint64_t now_wall) {
    pthread_mutex_lock(&ls->mu);
    int rc = ls->primary ? promote_locked(ls, now_mono, now_wall) : 0;
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

void lease_demote(lease_t *ls) {
    pthread_mutex_lock(&ls->mu);
    lprimary_clear(ls);
    ls->primary = false;
    pthread_mutex_unlock(&ls->mu);
}

bool lease_is_primary(lease_t *ls) {
    pthread_mutex_lock(&ls->mu);
    bool p = ls->primary;
    pthread_mutex_unlock(&ls->mu);
    return p;
}

/* The leader's entry of a lease: 0, or a LEASE_E* code. */
static int find_ent(lease_t *ls, int64_t id, struct ent **out) {
    if (!ls->primary)
        return LEASE_ENOTPRIMARY;
    *out = ltab_get(&ls->tab, id);
    return *out != NULL ? 0 : LEASE_ENOTFOUND;
}

int lease_renew(lease_t *ls, int64_t id, uint64_t now_mono, uint64_t now_wall, int64_t *ttl,
                struct lease_checkpoint *cp, bool *propose) {
    *propose = false;
    pthread_mutex_lock(&ls->mu);
    struct ent *e;
    int rc = find_ent(ls, id, &e);
    if (rc == 0 && e->expiry <= now_mono)
        rc = LEASE_EEXPIRED;
    if (rc == 0) {
        uint64_t t = lttl_ns(e->ttl);
        set_expiry(ls, e, lsat_add(now_mono, t));
        e->promised = lsat_add(now_wall, t);
        *ttl = e->ttl;
        if (e->deadline == 0 || e->deadline < e->promised) {
            uint64_t ahead =
                t / 2 < ls->opt.checkpoint_interval_ns ? t / 2 : ls->opt.checkpoint_interval_ns;
            cp->id = id;
            cp->remaining_ttl = 0;
            cp->deadline_wall_ns = lsat_add(e->promised, ahead);
            *propose = true;
        }
    }
    pthread_mutex_unlock(&ls->mu);
    return rc;
}

size_t lease_expired(lease_t *ls, uint64_t now_mono, int64_t *ids, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&ls->mu);
    struct heap *h = &ls->heaps[H_EXPIRY];
    struct ent *e;
    while (ls->primary && n < max && (e = lheap_top(h)) != NULL && e->hkey[H_EXPIRY] <= now_mono) {
        /* The key is when to look next: the expiry, or a retry time once
         * reported. Either way it moves past now, so the loop ends. */
        uint64_t next = e->expiry;
        if (e->expiry <= now_mono) {
            ids[n++] = e->id;
            next = lsat_add(now_mono, ls->opt.retry_ns);
        }
        int rc = lheap_set(h, e, next);
        assert(rc == 0);
        (void)rc;
    }
    pthread_mutex_unlock(&ls->mu);
    return n;
}

size_t lease_due_checkpoints(lease_t *ls, uint64_t now_mono, uint64_t now_wall,
                             struct lease_checkpoint *out, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&ls->mu);
    struct heap *h = &ls->heaps[H_CHECKPOINT];
    struct ent *e;
    while (ls->primary && n < max && (e = lheap_top(h)) != NULL &&
           e->hkey[H_CHECKPOINT] <= now_mono) {
        lheap_remove(h, e);
        if (e->expiry <= now_mono)
            continue; /* its revoke settles it */
        uint64_t left = e->expiry - now_mono;
        uint64_t deadline = lsat_add(now_wall, left);
        out[n].id = e->id;
        out[n].remaining_ttl = (int64_t)((left + NS_PER_S - 1) / NS_PER_S);
        out[n].deadline_wall_ns = deadline < e->promised ? e->promised : deadline;
        n++;
    }
    pthread_mutex_unlock(&ls->mu);
    return n;
}

int lease_time_to_live(lease_t *ls, int64_t id, bool with_keys, uint64_t now_mono,
                       struct lease_ttl *out) {
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&ls->mu);
    struct ent *e;
    int rc = find_ent(ls, id, &e);
    if (rc == 0) {
        out->id = id;
        out->granted_ttl = e->ttl;
        out->ttl = e->expiry >= now_mono ? (int64_t)((e->expiry - now_mono) / NS_PER_S)
                                         : -(int64_t)((now_mono - e->expiry) / NS_PER_S);
    }
    pthread_mutex_unlock(&ls->mu);
    if (rc == 0 && with_keys)
        rc = lkeys_read(ls, id, out);
    if (rc != 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

void lease_ttl_free(struct lease_ttl *t) {
    free(t->keys);
    free(t->data);
    memset(t, 0, sizeof(*t));
}
