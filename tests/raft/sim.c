/* sim: the deterministic cluster simulator and its safety checker (see sim.h).
 *
 * Model. Time is in ticks; every step every running node ticks, then every
 * message due at that tick is delivered in a random order. Each node drives
 * its raft handle exactly as raft.h's loop contract says, with a memory store
 * standing for its disk and a durable state machine (applied index plus a
 * running hash of what was applied, as LMDB keeps it in the server). A crash
 * throws the raft handle away: what was not written to the store is lost.
 *
 * Checks, after every step:
 *  - election safety: at most one leader per term;
 *  - log matching: every persisted entry (index, term) has one content and one
 *    predecessor term across all nodes (by induction, equal logs before it);
 *  - leader completeness: a new leader's log holds every committed entry;
 *  - commit agreement: nodes agree on the term of every committed index;
 *  - state machine safety: every node applies the same entry at an index, and
 *    snapshots carry the same state as applying the entries did;
 *  - durability across restarts: a restarted node's log covers its persisted
 *    commit index and everything its state machine applied;
 *  - linearizable reads: a read index is at least every index applied
 *    anywhere before the read was asked;
 *  - liveness: after the chaos, with faults off, a leader is elected and every
 *    accepted proposal is applied on every member within LIVENESS_TICKS. */
#include "sim.h"

#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"

#define MAXN 9
#define ELECTION 10
#define LIVENESS_TICKS (30 * ELECTION)
#define TRACE_LINES 600
#define TRACE_LEN 200

struct netmsg {
    uint64_t at;
    struct raft_msg m;
    struct raft_entry *ents; /* owned copies */
    struct raft_snapshot snap;
    uint8_t *mem; /* one block: entry data and snapshot data */
};

struct node {
    uint64_t id; /* 0: slot unused */
    bool up;
    bool removed; /* retired for good: shut down after leaving the cluster */
    bool left;    /* applied its own removal */
    bool joining;
    raft_t *r;
    raft_memstore_t *ms;
    uint64_t sm_applied, sm_hash; /* the durable state machine */
    uint64_t seen_commit;
};

struct proposal {
    uint64_t id;
    uint64_t index; /* 0: not applied yet */
};

struct pending_read {
    uint64_t ctx, node_id, watermark;
};

struct lm_slot {
    uint64_t index, term, hash, prev_term;
};

struct u64vec {
    uint64_t *v;
    size_t n;
};

struct sim {
    struct sim_opts o;
    uint64_t rng;
    uint64_t t;
    unsigned gen;
    struct raft_config cfg;
    struct node nodes[MAXN];
    bool blocked[MAXN][MAXN];
    struct netmsg *net;
    size_t n_net, cap_net;
    /* checker state */
    struct u64vec leader_of_term, commit_term, applied_hash, state_hash;
    struct lm_slot *lm;
    size_t lm_cap, lm_n;
    struct proposal *props;
    size_t n_props, cap_props;
    struct pending_read *reads;
    size_t n_reads, cap_reads;
    struct raft_conf_change *ccs; /* conf changes of the Ready being handled */
    size_t cap_ccs;
    uint64_t next_read_ctx, max_applied, max_commit;
    bool failed;
    char msg[512];
    struct sim_stats st;
    /* trace ring */
    bool tracing;
    char (*trace)[TRACE_LEN];
    size_t trace_n;
};

/* ---- utilities ---- */

static uint64_t rnd(struct sim *s) {
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned rndn(struct sim *s, unsigned n) {
    return (unsigned)(rnd(s) % n);
}

/* True with probability per/10000. */
static bool chance(struct sim *s, unsigned per) {
    return rndn(s, 10000) < per;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static void *xalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return p;
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return p;
}

static uint64_t *vat(struct u64vec *v, uint64_t i) {
    if (i >= v->n) {
        size_t n = v->n ? v->n : 256;
        while (n <= i)
            n *= 2;
        v->v = xrealloc(v->v, n * sizeof(*v->v));
        memset(v->v + v->n, 0, (n - v->n) * sizeof(*v->v));
        v->n = n;
    }
    return &v->v[i];
}

static int slot_of(uint64_t id) {
    return (int)(id & 0xff) - 1;
}

static void tr(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tr(struct sim *s, const char *fmt, ...) {
    if (!s->tracing)
        return;
    char *line = s->trace[s->trace_n % TRACE_LINES];
    int k = snprintf(line, TRACE_LEN, "t=%-5llu ", (unsigned long long)s->t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + k, TRACE_LEN - (size_t)k, fmt, ap);
    va_end(ap);
    s->trace_n++;
    if (s->o.trace_all && s->o.trace)
        fprintf(s->o.trace, "%s\n", line);
}

static void fail(struct sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct sim *s, const char *fmt, ...) {
    if (s->failed)
        return;
    s->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
    va_end(ap);
    tr(s, "VIOLATION: %s", s->msg);
}

static const char *msg_name(uint32_t t) {
    static const char *names[] = {"HUP",       "BEAT",     "PROP",         "APP",
                                  "APP_RESP",  "VOTE",     "VOTE_RESP",    "SNAP",
                                  "HEARTBEAT", "HB_RESP",  "UNREACHABLE",  "SNAP_STATUS",
                                  "CHECK_Q",   "TRANSFER", "TIMEOUT_NOW",  "READ_INDEX",
                                  "READ_RESP", "PRE_VOTE", "PRE_VOTE_RESP"};
    return t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

static const char *cc_name(uint32_t t) {
    return t == RAFT_CC_ADD_NODE      ? "add voter"
           : t == RAFT_CC_REMOVE_NODE ? "remove"
                                      : "add learner";
}

static const char *role_name(enum raft_role r) {
    switch (r) {
    case RAFT_LEADER:
        return "leader";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_PRE_CANDIDATE:
        return "pre-candidate";
    default:
        return "follower";
    }
}

/* ---- checker ---- */

static bool quiet_phase(const struct sim *s) {
    return s->t > s->o.steps;
}

static struct lm_slot *lm_find(struct sim *s, uint64_t index, uint64_t term) {
    if (s->lm_n * 2 >= s->lm_cap) {
        size_t cap = s->lm_cap ? s->lm_cap * 2 : 4096;
        struct lm_slot *old = s->lm;
        size_t oldcap = s->lm_cap;
        s->lm = xalloc(cap * sizeof(*s->lm));
        s->lm_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].index) {
                size_t h = (size_t)mix(old[i].index, old[i].term) & (cap - 1);
                while (s->lm[h].index)
                    h = (h + 1) & (cap - 1);
                s->lm[h] = old[i];
            }
        free(old);
    }
    size_t h = (size_t)mix(index, term) & (s->lm_cap - 1);
    while (s->lm[h].index && (s->lm[h].index != index || s->lm[h].term != term))
        h = (h + 1) & (s->lm_cap - 1);
    return &s->lm[h];
}

/* Log matching, checked as entries reach a node's disk. */
static void check_persisted(struct sim *s, struct node *n, const struct raft_entry *e,
                            uint64_t prev_term) {
    struct lm_slot *x = lm_find(s, e->index, e->term);
    uint64_t h = hash_bytes(e->data, e->len) ^ e->type;
    if (!x->index) {
        *x =
            (struct lm_slot){.index = e->index, .term = e->term, .hash = h, .prev_term = prev_term};
        s->lm_n++;
        return;
    }
    if (x->hash != h || x->prev_term != prev_term)
        fail(s, "log matching: n%d persisted (index %llu, term %llu) with different %s",
             slot_of(n->id) + 1, (unsigned long long)e->index, (unsigned long long)e->term,
             x->hash != h ? "content" : "previous term");
}

static void check_leader_complete(struct sim *s, struct node *n) {
    uint64_t t;
    for (uint64_t i = s->max_commit; i > 0; i--) {
        uint64_t want = *vat(&s->commit_term, i);
        int rc = raft_log_term(n->r, i, &t);
        if (rc == RAFT_ECOMPACTED)
            break;
        if (!want)
            continue;
        if (rc != 0 || t != want) {
            fail(s, "leader completeness: new leader n%d lacks committed index %llu (term %llu)",
                 slot_of(n->id) + 1, (unsigned long long)i, (unsigned long long)want);
            return;
        }
    }
}

static void check_node(struct sim *s, struct node *n) {
    struct raft_status st;
    raft_status(n->r, &st);
    if (st.role == RAFT_LEADER) {
        uint64_t *l = vat(&s->leader_of_term, st.term);
        if (*l == 0) {
            *l = n->id;
            s->st.elections++;
            tr(s, "n%d became leader of term %llu (last index %llu, commit %llu)",
               slot_of(n->id) + 1, (unsigned long long)st.term, (unsigned long long)st.last_index,
               (unsigned long long)st.commit);
            check_leader_complete(s, n);
            /* A leader cut off right after winning leaves entries of its term
             * on its disk only: the raw material of Figure 8. */
            if (s->o.faults && !quiet_phase(s) && chance(s, s->o.hunt ? 5000 : 1500)) {
                int k = slot_of(n->id);
                for (int j = 0; j < MAXN; j++)
                    s->blocked[k][j] = s->blocked[j][k] = j != k;
                s->st.partitions++;
                tr(s, "ISOLATE new leader n%d", k + 1);
            }
        } else if (*l != n->id) {
            fail(s, "election safety: n%d and n%d are both leaders of term %llu", slot_of(*l) + 1,
                 slot_of(n->id) + 1, (unsigned long long)st.term);
        }
    }
    for (uint64_t i = n->seen_commit + 1; i <= st.commit; i++) {
        uint64_t t;
        if (raft_log_term(n->r, i, &t) != 0)
            continue;
        uint64_t *c = vat(&s->commit_term, i);
        if (*c == 0)
            *c = t;
        else if (*c != t)
            fail(s, "commit agreement: n%d committed index %llu with term %llu, others %llu",
                 slot_of(n->id) + 1, (unsigned long long)i, (unsigned long long)t,
                 (unsigned long long)*c);
    }
    if (st.commit > n->seen_commit)
        n->seen_commit = st.commit;
    if (st.commit > s->max_commit)
        s->max_commit = st.commit;
}

/* ---- network ---- */

static void net_send(struct sim *s, const struct raft_msg *m, uint64_t delay) {
    if (s->n_net == s->cap_net) {
        s->cap_net = s->cap_net ? s->cap_net * 2 : 256;
        s->net = xrealloc(s->net, s->cap_net * sizeof(*s->net));
    }
    struct netmsg *x = &s->net[s->n_net++];
    memset(x, 0, sizeof(*x));
    x->at = s->t + delay;
    x->m = *m;
    size_t bytes = 0;
    for (size_t i = 0; i < m->n_entries; i++)
        bytes += m->entries[i].len;
    if (m->snapshot)
        bytes += m->snapshot->len;
    x->mem = bytes ? xalloc(bytes) : NULL;
    size_t at = 0;
    if (m->n_entries) {
        x->ents = xalloc(m->n_entries * sizeof(*x->ents));
        for (size_t i = 0; i < m->n_entries; i++) {
            x->ents[i] = m->entries[i];
            x->ents[i].data = NULL;
            if (m->entries[i].len) {
                x->ents[i].data = x->mem + at;
                memcpy(x->mem + at, m->entries[i].data, m->entries[i].len);
                at += m->entries[i].len;
            }
        }
    }
    x->m.entries = x->ents;
    if (m->snapshot) {
        x->snap = *m->snapshot;
        x->snap.data = NULL;
        if (m->snapshot->len) {
            memcpy(x->mem + at, m->snapshot->data, m->snapshot->len);
            x->snap.data = x->mem + at;
        }
        x->m.snapshot = &x->snap;
    }
}

static void net_free(struct netmsg *x) {
    free(x->ents);
    free(x->mem);
}

static void report_snapshot(struct sim *s, const struct raft_msg *m, bool failed) {
    if (m->type != RAFT_MSG_SNAP)
        return;
    int k = slot_of(m->from);
    struct node *from = k >= 0 && k < MAXN ? &s->nodes[k] : NULL;
    if (from && from->id == m->from && from->up)
        raft_report_snapshot(from->r, m->to, failed);
}

/* Puts one outgoing message on the wire, with loss, duplication and delay. */
static void transmit(struct sim *s, const struct raft_msg *m, bool quiet) {
    if (!quiet && s->o.faults && chance(s, 300)) {
        s->st.dropped++;
        tr(s, "  lost %s n%d->n%d", msg_name(m->type), slot_of(m->from) + 1, slot_of(m->to) + 1);
        report_snapshot(s, m, true);
        return;
    }
    uint64_t maxd = (!quiet && s->o.faults) ? 4 : 1;
    net_send(s, m, 1 + rndn(s, (unsigned)maxd));
    if (!quiet && s->o.faults && m->type != RAFT_MSG_SNAP && chance(s, 150)) {
        s->st.duplicated++;
        net_send(s, m, 1 + rndn(s, (unsigned)maxd + 2));
    }
}

/* ---- nodes ---- */

static void crash(struct sim *s, struct node *n, const char *why) {
    tr(s, "CRASH n%d (%s)", slot_of(n->id) + 1, why);
    raft_free(n->r);
    n->r = NULL;
    n->up = false;
    s->st.crashes++;
}

static void apply_entry(struct sim *s, struct node *n, const struct raft_entry *e,
                        struct raft_conf_change *cc, bool *has_cc) {
    uint64_t h = hash_bytes(e->data, e->len) ^ e->type;
    uint64_t *ah = vat(&s->applied_hash, e->index);
    if (*ah == 0)
        *ah = h | 1;
    else if (*ah != (h | 1))
        fail(s, "state machine safety: n%d applied a different entry at index %llu",
             slot_of(n->id) + 1, (unsigned long long)e->index);
    if (e->type == RAFT_ENTRY_CONF_CHANGE) {
        if (raft_conf_change_decode(e->data, e->len, cc) != 0)
            fail(s, "undecodable conf change at %llu", (unsigned long long)e->index);
        else
            *has_cc = true;
    }
    if (e->index <= n->sm_applied)
        return; /* replay after restart: the state machine already has it */
    if (e->index != n->sm_applied + 1) {
        fail(s, "n%d applied index %llu after %llu (gap)", slot_of(n->id) + 1,
             (unsigned long long)e->index, (unsigned long long)n->sm_applied);
        return;
    }
    n->sm_applied = e->index;
    n->sm_hash = mix(n->sm_hash, h);
    uint64_t *sh = vat(&s->state_hash, e->index);
    if (*sh == 0)
        *sh = n->sm_hash | 1;
    else if (*sh != (n->sm_hash | 1))
        fail(s, "state machine safety: n%d state differs after index %llu", slot_of(n->id) + 1,
             (unsigned long long)e->index);
    if (e->index > s->max_applied)
        s->max_applied = e->index;
    if (e->type == RAFT_ENTRY_NORMAL && e->len >= 8) {
        uint64_t id;
        memcpy(&id, e->data, 8);
        if (id >= 1 && id <= s->n_props && s->props[id - 1].index == 0) {
            s->props[id - 1].index = e->index;
            s->st.applied++;
        }
    }
}

static void install_snapshot(struct sim *s, struct node *n, const struct raft_snapshot *snap) {
    uint64_t idx, h;
    if (snap->len != 16) {
        fail(s, "n%d got a snapshot of %zu bytes", slot_of(n->id) + 1, snap->len);
        return;
    }
    memcpy(&idx, snap->data, 8);
    memcpy(&h, snap->data + 8, 8);
    if (idx != snap->meta.index)
        fail(s, "snapshot data says index %llu, metadata %llu", (unsigned long long)idx,
             (unsigned long long)snap->meta.index);
    uint64_t *sh = vat(&s->state_hash, idx);
    if (*sh && *sh != (h | 1))
        fail(s, "state machine safety: snapshot at %llu installed on n%d differs",
             (unsigned long long)idx, slot_of(n->id) + 1);
    if (raft_memstore_apply_snapshot(n->ms, snap) != 0)
        fail(s, "n%d could not install snapshot %llu", slot_of(n->id) + 1, (unsigned long long)idx);
    if (idx > n->sm_applied) {
        n->sm_applied = idx;
        n->sm_hash = h;
    }
    tr(s, "  n%d installed snapshot at %llu", slot_of(n->id) + 1, (unsigned long long)idx);
}

static void check_read(struct sim *s, struct node *n, const struct raft_read_state *rs) {
    for (size_t i = 0; i < s->n_reads; i++) {
        struct pending_read *p = &s->reads[i];
        if (p->ctx != rs->context || p->node_id != n->id)
            continue;
        if (rs->index < p->watermark)
            fail(s,
                 "linearizability: read %llu on n%d got index %llu but index %llu was "
                 "applied before it was asked",
                 (unsigned long long)p->ctx, slot_of(n->id) + 1, (unsigned long long)rs->index,
                 (unsigned long long)p->watermark);
        struct raft_status st;
        raft_status(n->r, &st);
        if (rs->index > s->max_commit && rs->index > st.commit)
            fail(s, "read index %llu beyond any commit", (unsigned long long)rs->index);
        tr(s, "  n%d read %llu -> index %llu (watermark %llu)", slot_of(n->id) + 1,
           (unsigned long long)p->ctx, (unsigned long long)rs->index,
           (unsigned long long)p->watermark);
        s->st.reads_done++;
        *p = s->reads[--s->n_reads];
        return;
    }
}

/* Handles every Ready of node n following raft.h's loop contract, with a
 * chance of crashing at each point where a real process could. Returns false
 * if the node crashed. */
static bool process(struct sim *s, struct node *n) {
    while (n->up && raft_has_ready(n->r)) {
        struct raft_ready rd;
        if (raft_ready(n->r, &rd) != 0) {
            fail(s, "raft_ready failed");
            return false;
        }
        int crash_at = -1;
        /* Crash halfway most often where it hurts: while entries are being
         * made durable. */
        if (s->o.faults && !quiet_phase(s) && chance(s, rd.n_entries ? 150 : 20))
            crash_at = (int)rndn(s, 5);
        bool leader = rd.soft.role == RAFT_LEADER;
        /* A leader dying as soon as it has decided a new commit index, before
         * telling anyone, is the other half of Figure 8. Its decision counts
         * as a commit for the checker: Raft must keep it whatever happens. */
        if (leader && rd.hard_state.commit > n->seen_commit) {
            check_node(s, n);
            if (s->o.faults && !quiet_phase(s) && chance(s, s->o.hunt ? 3000 : 500))
                crash_at = 0;
        }
        if (rd.soft_changed)
            tr(s, "  n%d is %s, leader n%d", slot_of(n->id) + 1, role_name(rd.soft.role),
               rd.soft.leader ? slot_of(rd.soft.leader) + 1 : 0);
        if (leader)
            for (size_t i = 0; i < rd.n_msgs; i++)
                transmit(s, &rd.msgs[i], quiet_phase(s));
        if (crash_at == 0)
            goto crashed;
        if (rd.snapshot)
            install_snapshot(s, n, rd.snapshot);
        /* Committed entries are durable before the Ready: apply them first,
         * which is what makes an "apply before persisting" bug observable. */
        if (rd.n_committed > s->cap_ccs) {
            s->cap_ccs = rd.n_committed;
            s->ccs = xrealloc(s->ccs, s->cap_ccs * sizeof(*s->ccs));
        }
        struct raft_conf_change *ccs = s->ccs;
        size_t n_cc = 0;
        for (size_t i = 0; i < rd.n_committed; i++) {
            bool has = false;
            apply_entry(s, n, &rd.committed[i], &ccs[n_cc], &has);
            if (has) {
                ccs[n_cc].context = NULL; /* points into the Ready; raft ignores it */
                ccs[n_cc].context_len = 0;
                n_cc++;
            }
            if (crash_at == 1 && i == rd.n_committed / 2)
                goto crashed;
        }
        if (crash_at == 1)
            goto crashed;
        if (rd.n_entries) {
            size_t upto = rd.n_entries;
            if (crash_at == 2)
                upto = rndn(s, (unsigned)rd.n_entries + 1);
            for (size_t i = 0; i < upto; i++) {
                uint64_t pt = 0;
                struct raft_storage stg = raft_memstore_storage(n->ms);
                if (i > 0)
                    pt = rd.entries[i - 1].term;
                else
                    stg.ops->term(stg.ctx, rd.entries[0].index - 1, &pt);
                check_persisted(s, n, &rd.entries[i], pt);
            }
            if (upto && raft_memstore_append(n->ms, rd.entries, upto) != 0)
                fail(s, "n%d: memstore append failed", slot_of(n->id) + 1);
            if (crash_at == 2)
                goto crashed;
        }
        if (rd.hard_state_changed)
            raft_memstore_set_hard_state(n->ms, &rd.hard_state);
        if (crash_at == 3)
            goto crashed;
        if (!leader)
            for (size_t i = 0; i < rd.n_msgs; i++)
                transmit(s, &rd.msgs[i], quiet_phase(s));
        for (size_t i = 0; i < rd.n_reads; i++)
            check_read(s, n, &rd.reads[i]);
        if (crash_at == 4)
            goto crashed;
        raft_advance(n->r, &rd);
        check_node(s, n);
        for (size_t i = 0; i < n_cc; i++) {
            struct raft_conf_state cs;
            if (raft_apply_conf_change(n->r, &ccs[i], &cs) != 0)
                fail(s, "apply conf change failed");
            tr(s, "  n%d applied conf change %s n%d (%s.%llx): %u voters, %u learners",
               slot_of(n->id) + 1, cc_name(ccs[i].type), slot_of(ccs[i].node_id) + 1, "id",
               (unsigned long long)(ccs[i].node_id >> 32), cs.n_voters, cs.n_learners);
            if (ccs[i].node_id == n->id && ccs[i].type == RAFT_CC_REMOVE_NODE) {
                tr(s, "  n%d applied its own removal", slot_of(n->id) + 1);
                n->left = true;
            }
        }
        continue;
    crashed:
        s->st.mid_ready_crashes++;
        crash(s, n, "halfway through a Ready");
        return false;
    }
    return n->up;
}

static bool start_node(struct sim *s, struct node *n) {
    struct raft_hard_state hs;
    raft_memstore_hard_state(n->ms, &hs);
    uint64_t last = raft_memstore_last_index(n->ms);
    struct raft_storage stg = raft_memstore_storage(n->ms);
    struct raft_snapshot snap;
    stg.ops->snapshot(stg.ctx, &snap);
    if (hs.commit > last)
        fail(s, "durability: n%d restarts with commit %llu but its log ends at %llu",
             slot_of(n->id) + 1, (unsigned long long)hs.commit, (unsigned long long)last);
    if (n->sm_applied > last)
        fail(s, "durability: n%d applied index %llu but after restart its log ends at %llu",
             slot_of(n->id) + 1, (unsigned long long)n->sm_applied, (unsigned long long)last);
    if (s->failed)
        return false;
    struct raft_config c = s->cfg;
    c.id = n->id;
    c.storage = stg;
    c.applied = snap.meta.index;
    c.seed = rnd(s);
    int rc = raft_new(&c, &n->r);
    if (rc != 0) {
        fail(s, "raft_new failed for n%d: %s", slot_of(n->id) + 1, raft_strerror(rc));
        return false;
    }
    if (s->o.raft_faults) {
#ifdef QUOIN_TESTING
        raft_set_faults(n->r, s->o.raft_faults);
#endif
    }
    n->up = true;
    n->seen_commit = snap.meta.index;
    return true;
}

static void restart(struct sim *s, struct node *n) {
    tr(s, "RESTART n%d", slot_of(n->id) + 1);
    s->st.restarts++;
    if (start_node(s, n))
        process(s, n);
}

static struct node *new_node(struct sim *s, int slot) {
    struct node *n = &s->nodes[slot];
    if (n->ms)
        raft_memstore_free(n->ms);
    memset(n, 0, sizeof(*n));
    n->id = ((uint64_t)(++s->gen) << 32) | (uint64_t)(slot + 1);
    if (raft_memstore_new(&n->ms) != 0) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return n;
}

/* ---- actions ---- */

static struct node *random_up(struct sim *s) {
    int ups[MAXN], k = 0;
    for (int i = 0; i < MAXN; i++)
        if (s->nodes[i].up)
            ups[k++] = i;
    return k ? &s->nodes[ups[rndn(s, (unsigned)k)]] : NULL;
}

static struct node *find_leader(struct sim *s) {
    struct node *best = NULL;
    uint64_t bt = 0;
    for (int i = 0; i < MAXN; i++) {
        struct node *n = &s->nodes[i];
        if (!n->up)
            continue;
        struct raft_status st;
        raft_status(n->r, &st);
        if (st.role == RAFT_LEADER && st.term >= bt) {
            best = n;
            bt = st.term;
        }
    }
    return best;
}

static void new_proposal(struct sim *s, struct node *n) {
    if (s->n_props == s->cap_props) {
        s->cap_props = s->cap_props ? s->cap_props * 2 : 256;
        s->props = xrealloc(s->props, s->cap_props * sizeof(*s->props));
    }
    uint64_t pid = s->n_props + 1;
    /* Only proposals raft accepted are owed a commit. */
    uint8_t buf[64];
    uint32_t len = 8 + rndn(s, 40);
    memcpy(buf, &pid, 8);
    for (uint32_t i = 8; i < len; i++)
        buf[i] = (uint8_t)rnd(s);
    const uint8_t *d = buf;
    int rc = raft_propose(n->r, &d, &len, 1);
    tr(s, "propose #%llu at n%d: %s", (unsigned long long)pid, slot_of(n->id) + 1,
       raft_strerror(rc));
    if (rc == 0) {
        s->props[s->n_props++] = (struct proposal){.id = pid};
        s->st.proposals++;
    }
    process(s, n);
}

static void do_read(struct sim *s, struct node *n) {
    uint64_t ctx = ++s->next_read_ctx;
    struct raft_status st;
    raft_status(n->r, &st);
    int rc = raft_read_index(n->r, ctx);
    tr(s, "read %llu at n%d (%s of term %llu, watermark %llu): %s", (unsigned long long)ctx,
       slot_of(n->id) + 1, role_name(st.role), (unsigned long long)st.term,
       (unsigned long long)s->max_applied, raft_strerror(rc));
    if (rc == 0) {
        if (s->n_reads == s->cap_reads) {
            s->cap_reads = s->cap_reads ? s->cap_reads * 2 : 64;
            s->reads = xrealloc(s->reads, s->cap_reads * sizeof(*s->reads));
        }
        s->reads[s->n_reads++] =
            (struct pending_read){.ctx = ctx, .node_id = n->id, .watermark = s->max_applied};
    }
    process(s, n);
}

static void do_snapshot(struct sim *s, struct node *n) {
    struct raft_storage stg = raft_memstore_storage(n->ms);
    struct raft_snapshot cur;
    stg.ops->snapshot(stg.ctx, &cur);
    struct raft_status st;
    raft_status(n->r, &st);
    /* Only at raft's applied index: after a restart raft replays entries the
     * state machine already has, and those must stay in the log meanwhile. */
    if (n->sm_applied <= cur.meta.index || n->sm_applied != st.applied)
        return;
    uint8_t data[16];
    memcpy(data, &n->sm_applied, 8);
    memcpy(data + 8, &n->sm_hash, 8);
    struct raft_conf_state cs;
    raft_conf_state(n->r, &cs);
    if (raft_memstore_create_snapshot(n->ms, n->sm_applied, &cs, data, 16) != 0) {
        fail(s, "create snapshot failed");
        return;
    }
    uint64_t lag = rndn(s, 8);
    uint64_t upto = n->sm_applied > lag ? n->sm_applied - lag : 0;
    raft_memstore_compact(n->ms, upto);
    s->st.snapshots_made++;
    tr(s, "n%d snapshot at %llu, compacted to %llu", slot_of(n->id) + 1,
       (unsigned long long)n->sm_applied, (unsigned long long)upto);
}

static void do_conf_change(struct sim *s) {
    struct node *l = find_leader(s);
    if (!l)
        return;
    struct raft_conf_state cs;
    raft_conf_state(l->r, &cs);
    struct raft_conf_change cc = {0};
    unsigned what = rndn(s, 4);
    int free_slot = -1;
    for (int i = 0; i < MAXN; i++)
        if (!s->nodes[i].id || (s->nodes[i].removed && !s->nodes[i].up)) {
            free_slot = i;
            break;
        }
    unsigned members = cs.n_voters + cs.n_learners;
    if ((what == 0 || what == 1) && free_slot >= 0 && members < 7) {
        struct node *n = new_node(s, free_slot);
        cc.type = what == 0 ? RAFT_CC_ADD_LEARNER : RAFT_CC_ADD_NODE;
        cc.node_id = n->id;
        n->joining = true;
        start_node(s, n);
    } else if (what == 2 && cs.n_voters + cs.n_learners > 1) {
        /* Never shrink two voters to one: if the removed one stops before
         * the other learns the removal committed, the survivor waits forever
         * for its vote (documented in raft.h). */
        unsigned k = rndn(s, members);
        if (k < cs.n_voters && cs.n_voters == 2)
            return;
        cc.type = RAFT_CC_REMOVE_NODE;
        cc.node_id = k < cs.n_voters ? cs.voters[k] : cs.learners[k - cs.n_voters];
    } else if (cs.n_learners) {
        cc.type = RAFT_CC_ADD_NODE;
        cc.node_id = cs.learners[rndn(s, cs.n_learners)];
    } else {
        return;
    }
    /* A quarter of the changes are asked of another node and forwarded (the
     * leader then checks them itself). */
    struct node *at = l;
    if (chance(s, 2500)) {
        struct node *o = random_up(s);
        struct raft_status st;
        if (o)
            raft_status(o->r, &st);
        if (o && st.leader)
            at = o;
    }
    int rc = raft_propose_conf_change(at->r, &cc);
    tr(s, "conf change at n%d (leader n%d): %s n%d: %s", slot_of(at->id) + 1, slot_of(l->id) + 1,
       cc_name(cc.type), slot_of(cc.node_id) + 1, raft_strerror(rc));
    if (rc == 0)
        s->st.conf_changes++;
    process(s, at);
}

static void do_transfer(struct sim *s) {
    struct node *l = find_leader(s);
    if (!l)
        return;
    struct raft_conf_state cs;
    raft_conf_state(l->r, &cs);
    if (!cs.n_voters)
        return;
    uint64_t to = cs.voters[rndn(s, cs.n_voters)];
    int rc = raft_transfer_leadership(l->r, to);
    tr(s, "transfer leadership n%d -> n%d: %s", slot_of(l->id) + 1, slot_of(to) + 1,
       raft_strerror(rc));
    if (rc == 0)
        s->st.transfers++;
    process(s, l);
}

static void do_partition(struct sim *s) {
    memset(s->blocked, 0, sizeof(s->blocked));
    struct node *l = find_leader(s);
    if (l && chance(s, s->o.hunt ? 6000 : 3300)) {
        /* cut the leader off alone: it may serve stale state until it notices */
        int k = slot_of(l->id);
        for (int j = 0; j < MAXN; j++)
            s->blocked[k][j] = s->blocked[j][k] = j != k;
        s->st.partitions++;
        tr(s, "PARTITION leader n%d alone", k + 1);
    } else if (chance(s, 5000)) {
        /* symmetric: split into two sides */
        unsigned mask = (unsigned)rnd(s);
        for (int a = 0; a < MAXN; a++)
            for (int b = 0; b < MAXN; b++)
                s->blocked[a][b] = ((mask >> a) & 1) != ((mask >> b) & 1);
        s->st.partitions++;
        tr(s, "PARTITION sides mask %x", mask & 0x1ff);
    } else {
        int a = (int)rndn(s, MAXN), b = (int)rndn(s, MAXN);
        s->blocked[a][b] = true;
        s->st.one_way++;
        tr(s, "ONE-WAY PARTITION n%d -/-> n%d", a + 1, b + 1);
    }
}

static void deliver_due(struct sim *s) {
    /* Take the due messages out first: delivering sends new ones. */
    size_t k = 0, nd = 0;
    struct netmsg *due = NULL;
    for (size_t i = 0; i < s->n_net; i++) {
        if (s->net[i].at <= s->t) {
            due = xrealloc(due, (nd + 1) * sizeof(*due));
            due[nd++] = s->net[i];
        } else {
            s->net[k++] = s->net[i];
        }
    }
    s->n_net = k;
    /* Shuffle (reordering) while faults are on; FIFO per link afterwards,
     * as a TCP transport delivers. */
    for (size_t i = quiet_phase(s) ? 0 : nd; i > 1; i--) {
        size_t j = rndn(s, (unsigned)i);
        struct netmsg t = due[i - 1];
        due[i - 1] = due[j];
        due[j] = t;
    }
    for (size_t i = 0; i < nd && !s->failed; i++) {
        struct netmsg *x = &due[i];
        x->m.entries = x->ents;
        if (x->m.snapshot)
            x->m.snapshot = &x->snap;
        int a = slot_of(x->m.from), b = slot_of(x->m.to);
        struct node *to = (b >= 0 && b < MAXN) ? &s->nodes[b] : NULL;
        bool ok = to && to->up && to->id == x->m.to && !s->blocked[a][b];
        if (!ok) {
            s->st.dropped++;
            report_snapshot(s, &x->m, true);
            continue;
        }
        tr(s, "deliver %s n%d->n%d term %llu idx %llu lterm %llu n=%zu commit %llu%s ctx %llu",
           msg_name(x->m.type), a + 1, b + 1, (unsigned long long)x->m.term,
           (unsigned long long)x->m.index, (unsigned long long)x->m.log_term, x->m.n_entries,
           (unsigned long long)x->m.commit, x->m.reject ? " REJECT" : "",
           (unsigned long long)x->m.context);
        s->st.delivered++;
        if (x->m.type == RAFT_MSG_SNAP)
            s->st.snapshots_sent++;
        if (raft_step(to->r, &x->m) != 0)
            fail(s, "raft_step failed");
        report_snapshot(s, &x->m, false);
        process(s, to);
    }
    for (size_t i = 0; i < nd; i++)
        net_free(&due[i]);
    free(due);
}

/* The membership as the most advanced running node has applied it. */
static void current_conf(struct sim *s, struct raft_conf_state *cs) {
    uint64_t best = 0;
    memset(cs, 0, sizeof(*cs));
    for (int i = 0; i < MAXN; i++) {
        struct node *n = &s->nodes[i];
        if (n->up && n->sm_applied >= best) {
            best = n->sm_applied;
            raft_conf_state(n->r, cs);
        }
    }
}

static bool is_member(const struct raft_conf_state *cs, uint64_t id) {
    for (uint32_t i = 0; i < cs->n_voters; i++)
        if (cs->voters[i] == id)
            return true;
    for (uint32_t i = 0; i < cs->n_learners; i++)
        if (cs->learners[i] == id)
            return true;
    return false;
}

static void tick_all(struct sim *s) {
    for (int i = 0; i < MAXN && !s->failed; i++) {
        struct node *n = &s->nodes[i];
        if (!n->up)
            continue;
        if (s->o.faults && !quiet_phase(s) && chance(s, 500))
            continue; /* clock skew: this node misses a tick */
        raft_tick(n->r);
        process(s, n);
    }
}

static bool is_member(const struct raft_conf_state *cs, uint64_t id);

/* Whether another node may still count n as a member (then n must keep
 * answering: the others may need its vote to learn of its removal). */
static bool still_needed(struct sim *s, const struct node *n) {
    for (int i = 0; i < MAXN; i++) {
        struct node *o = &s->nodes[i];
        struct raft_conf_state cs;
        if (o == n || !o->id || o->removed)
            continue;
        if (!o->up)
            return true; /* it may restart without having applied the removal */
        raft_conf_state(o->r, &cs);
        if (is_member(&cs, n->id))
            return true;
    }
    return false;
}

static void retire(struct sim *s, struct node *n) {
    tr(s, "n%d left the cluster: shutting down", slot_of(n->id) + 1);
    raft_free(n->r);
    n->r = NULL;
    n->up = false;
    n->removed = true;
}

/* A node's log end: from raft when running, from its disk when down. */
static void log_end(struct node *n, uint64_t *last, uint64_t *term) {
    if (n->up) {
        struct raft_status st;
        raft_status(n->r, &st);
        *last = st.last_index;
        raft_log_term(n->r, *last, term);
        return;
    }
    struct raft_storage stg = raft_memstore_storage(n->ms);
    *last = raft_memstore_last_index(n->ms);
    stg.ops->term(stg.ctx, *last, term);
}

static bool has_entry(struct node *n, uint64_t i, uint64_t t) {
    uint64_t x = 0;
    if (n->up)
        return raft_log_term(n->r, i, &x) == 0 && x == t;
    struct raft_storage stg = raft_memstore_storage(n->ms);
    int rc = stg.ops->term(stg.ctx, i, &x);
    return rc == RAFT_ECOMPACTED || (rc == 0 && x == t);
}

/* The invariant behind Leader Completeness: a node that lacks a committed
 * entry must not be at least as up to date as a quorum of voters (else it
 * could be elected and the entry lost). Checked while the membership is the
 * bootstrap one, so the quorum is unambiguous. */
static void check_commit_safe(struct sim *s) {
    uint64_t c = s->max_commit;
    uint64_t tc = c < s->commit_term.n ? s->commit_term.v[c] : 0;
    if (!tc || s->st.conf_changes)
        return;
    unsigned nv = s->o.nodes, q = nv / 2 + 1;
    uint64_t last[MAXN], term[MAXN];
    for (unsigned i = 0; i < nv; i++)
        log_end(&s->nodes[i], &last[i], &term[i]);
    for (unsigned x = 0; x < nv; x++) {
        if (has_entry(&s->nodes[x], c, tc))
            continue;
        unsigned votes = 0;
        for (unsigned v = 0; v < nv; v++)
            votes += term[x] > term[v] || (term[x] == term[v] && last[x] >= last[v]);
        if (votes >= q) {
            fail(s,
                 "commit safety: index %llu (term %llu) is committed, but n%u lacks it and "
                 "is as up to date as %u of %u voters",
                 (unsigned long long)c, (unsigned long long)tc, x + 1, votes, nv);
            return;
        }
    }
}

static void check_all(struct sim *s) {
    check_commit_safe(s);
    for (int i = 0; i < MAXN && !s->failed; i++) {
        struct node *n = &s->nodes[i];
        if (!n->up)
            continue;
        check_node(s, n);
        struct raft_status st;
        raft_status(n->r, &st);
        if (n->left && st.role != RAFT_LEADER && !still_needed(s, n))
            retire(s, n);
    }
}

static void chaos_step(struct sim *s) {
    if (s->o.faults) {
        if (chance(s, 60)) {
            struct node *n = random_up(s);
            if (n)
                crash(s, n, "random");
        }
        for (int k = 0; k < MAXN; k++) {
            struct node *n = &s->nodes[k];
            if (n->id && !n->up && !n->removed && chance(s, 400))
                restart(s, n);
        }
        if (chance(s, s->o.hunt ? 300 : 120))
            do_partition(s);
        if (chance(s, 400) && (s->st.partitions || s->st.one_way)) {
            memset(s->blocked, 0, sizeof(s->blocked));
            s->st.heals++;
            tr(s, "HEAL");
        }
    }
    if (chance(s, 3000)) {
        struct node *n = random_up(s);
        if (n)
            new_proposal(s, n);
    }
    if (chance(s, 1200)) {
        /* Half of the reads go to the node that believes it leads with the
         * oldest term: a deposed leader that has not noticed yet, if any. */
        struct node *n = random_up(s);
        if (chance(s, 5000)) {
            uint64_t best = UINT64_MAX;
            for (int i = 0; i < MAXN; i++) {
                struct node *c = &s->nodes[i];
                struct raft_status st;
                if (!c->up)
                    continue;
                raft_status(c->r, &st);
                if (st.role == RAFT_LEADER && st.term < best) {
                    n = c;
                    best = st.term;
                }
            }
        }
        if (n)
            do_read(s, n);
    }
    if (chance(s, 200)) {
        struct node *n = random_up(s);
        if (n)
            do_snapshot(s, n);
    }
    if (s->o.membership && chance(s, 60))
        do_conf_change(s);
    if (s->o.membership && chance(s, 40))
        do_transfer(s);
}

/* Faults stop: heal, restart every member, stop non-members; then every
 * accepted proposal must be applied on every member within LIVENESS_TICKS. */
static void liveness(struct sim *s) {
    memset(s->blocked, 0, sizeof(s->blocked));
    /* The bound: LIVENESS_TICKS to elect and settle, plus two ticks per entry
     * the most lagging member may have to fetch (one entry per message at
     * worst, one round trip per in-flight window). */
    uint64_t last = s->max_commit, least = UINT64_MAX;
    for (int i = 0; i < MAXN; i++) {
        struct node *n = &s->nodes[i];
        if (!n->id || n->removed)
            continue;
        uint64_t l, t;
        log_end(n, &l, &t);
        if (l > last)
            last = l;
        if (n->sm_applied < least)
            least = n->sm_applied;
    }
    uint64_t backlog = last - (least == UINT64_MAX ? 0 : least);
    for (size_t i = 0; i < s->n_props; i++)
        backlog += s->props[i].index == 0;
    uint64_t bound = LIVENESS_TICKS + 2 * backlog;
    tr(s, "QUIET: faults stop; %zu proposals accepted; liveness bound %llu ticks", s->n_props,
       (unsigned long long)bound);
    uint64_t start = s->t, retried_leader = 0, retried_term = 0;
    for (;;) {
        s->t++;
        s->st.steps++;
        for (int i = 0; i < MAXN; i++) {
            struct node *n = &s->nodes[i];
            if (n->id && !n->removed && !n->up)
                restart(s, n);
        }
        struct raft_conf_state cs;
        current_conf(s, &cs);
        for (int i = 0; i < MAXN; i++) {
            struct node *n = &s->nodes[i];
            if (!n->id || n->removed)
                continue;
            if (n->up && !n->joining && cs.n_voters && !is_member(&cs, n->id) &&
                !still_needed(s, n))
                retire(s, n);
        }
        tick_all(s);
        deliver_due(s);
        check_all(s);
        if (s->failed)
            return;
        /* A client retries what has not been applied yet, once per leader
         * (with faults off, only a change of leader can lose a proposal). */
        struct node *l = find_leader(s);
        struct raft_status lst;
        if (l)
            raft_status(l->r, &lst);
        if (l && (l->id != retried_leader || lst.term != retried_term)) {
            retried_leader = l->id;
            retried_term = lst.term;
            for (size_t i = 0; i < s->n_props; i++) {
                if (s->props[i].index)
                    continue;
                uint8_t buf[8];
                memcpy(buf, &s->props[i].id, 8);
                const uint8_t *d = buf;
                uint32_t len = 8;
                if (raft_propose(l->r, &d, &len, 1) != 0)
                    retried_leader = 0; /* refused (a transfer?): try again */
                process(s, l);
            }
        }
        bool done = find_leader(s) != NULL;
        uint64_t need = 0;
        for (size_t i = 0; i < s->n_props && done; i++) {
            if (!s->props[i].index)
                done = false;
            else if (s->props[i].index > need)
                need = s->props[i].index;
        }
        for (int i = 0; i < MAXN && done; i++) {
            struct node *n = &s->nodes[i];
            if (n->id && is_member(&cs, n->id) && (!n->up || n->sm_applied < need))
                done = false;
        }
        if (done) {
            tr(s, "QUIET: all %zu proposals applied on every member after %llu ticks", s->n_props,
               (unsigned long long)(s->t - start));
            return;
        }
        if (s->t - start > bound) {
            for (int i = 0; i < MAXN; i++) {
                struct node *n = &s->nodes[i];
                if (!n->up)
                    continue;
                struct raft_status st;
                struct raft_conf_state ncs;
                raft_status(n->r, &st);
                raft_conf_state(n->r, &ncs);
                tr(s,
                   "  n%d: %s term %llu, commit %llu, applied %llu, last %llu, %u voters, "
                   "%u learners%s",
                   i + 1, role_name(st.role), (unsigned long long)st.term,
                   (unsigned long long)st.commit, (unsigned long long)st.applied,
                   (unsigned long long)st.last_index, ncs.n_voters, ncs.n_learners,
                   is_member(&ncs, n->id) ? "" : ", not a member itself");
            }
            size_t missing = 0;
            for (size_t i = 0; i < s->n_props; i++)
                missing += s->props[i].index == 0;
            fail(s,
                 "liveness: %llu ticks after faults stopped, leader %s, %zu proposals "
                 "not applied",
                 (unsigned long long)(s->t - start), find_leader(s) ? "present" : "absent",
                 missing);
            return;
        }
    }
}

static void bootstrap(struct sim *s) {
    unsigned nn = s->o.nodes;
    struct raft_entry ents[MAXN];
    uint8_t bufs[MAXN][16];
    for (unsigned i = 0; i < nn; i++)
        new_node(s, (int)i);
    /* Like etcd: the initial members are conf-change entries 1..N, committed
     * in every initial member's log; a joining node replays them. */
    for (unsigned i = 0; i < nn; i++) {
        struct raft_conf_change cc = {.type = RAFT_CC_ADD_NODE, .node_id = s->nodes[i].id};
        size_t len = raft_conf_change_encode(&cc, bufs[i]);
        ents[i] = (struct raft_entry){.term = 1,
                                      .index = i + 1,
                                      .type = RAFT_ENTRY_CONF_CHANGE,
                                      .len = (uint32_t)len,
                                      .data = bufs[i]};
    }
    struct raft_hard_state hs = {.term = 1, .commit = nn};
    for (unsigned i = 0; i < nn; i++) {
        struct node *n = &s->nodes[i];
        raft_memstore_append(n->ms, ents, nn);
        raft_memstore_set_hard_state(n->ms, &hs);
        for (unsigned k = 0; k < nn; k++)
            check_persisted(s, n, &ents[k], k ? 1 : 0);
    }
    for (unsigned i = 0; i < nn; i++)
        if (start_node(s, &s->nodes[i]))
            process(s, &s->nodes[i]);
}

static void sim_free(struct sim *s) {
    for (int i = 0; i < MAXN; i++) {
        raft_free(s->nodes[i].r);
        raft_memstore_free(s->nodes[i].ms);
    }
    for (size_t i = 0; i < s->n_net; i++)
        net_free(&s->net[i]);
    free(s->net);
    free(s->leader_of_term.v);
    free(s->commit_term.v);
    free(s->applied_hash.v);
    free(s->state_hash.v);
    free(s->lm);
    free(s->props);
    free(s->reads);
    free(s->ccs);
    free(s->trace);
}

static bool run_once(const struct sim_opts *o, bool tracing, struct sim_result *res) {
    struct sim *s = xalloc(sizeof(*s));
    s->o = *o;
    s->rng = o->seed * 0x2545f4914f6cdd1dull + 1;
    s->tracing = tracing;
    if (tracing)
        s->trace = xalloc(TRACE_LINES * sizeof(*s->trace));
    /* Per-seed variety in the knobs that shape replication. */
    static const uint64_t sizes[] = {0, 64, 256, 1 << 20};
    s->cfg = (struct raft_config){.election_tick = ELECTION,
                                  .heartbeat_tick = 1 + rndn(s, 2),
                                  .max_size_per_msg = o->hunt ? 0 : sizes[rndn(s, 4)],
                                  .max_committed_size_per_ready = sizes[rndn(s, 4)],
                                  .max_inflight_msgs = 1 + rndn(s, 8),
                                  .check_quorum = rndn(s, 2) != 0,
                                  .pre_vote = rndn(s, 4) != 0};
    tr(s,
       "seed %llu: %u nodes, heartbeat %u, max msg %llu, inflight %u, check_quorum %d, "
       "pre_vote %d",
       (unsigned long long)o->seed, o->nodes, s->cfg.heartbeat_tick,
       (unsigned long long)s->cfg.max_size_per_msg, s->cfg.max_inflight_msgs, s->cfg.check_quorum,
       s->cfg.pre_vote);
    bootstrap(s);
    for (s->t = 1; s->t <= o->steps && !s->failed; s->t++) {
        s->st.steps++;
        chaos_step(s);
        tick_all(s);
        deliver_due(s);
        check_all(s);
    }
    if (!s->failed)
        liveness(s);
    memset(res, 0, sizeof(*res));
    res->ok = !s->failed;
    res->fail_step = s->t;
    res->stats = s->st;
    snprintf(res->msg, sizeof(res->msg), "%s", s->msg);
    if (tracing && s->failed && o->trace && !o->trace_all) {
        size_t from = s->trace_n > TRACE_LINES ? s->trace_n - TRACE_LINES : 0;
        fprintf(o->trace, "---- trace of seed %llu (last %zu events) ----\n",
                (unsigned long long)o->seed, s->trace_n - from);
        for (size_t i = from; i < s->trace_n; i++)
            fprintf(o->trace, "%s\n", s->trace[i % TRACE_LINES]);
        fprintf(o->trace, "---- end of trace ----\n");
    }
    sim_free(s);
    free(s);
    return res->ok;
}

bool sim_run(const struct sim_opts *o, struct sim_result *res) {
    if (run_once(o, o->trace_all, res))
        return true;
    if (o->trace) {
        fprintf(o->trace, "sim: seed %llu FAILED at step %llu: %s\n", (unsigned long long)o->seed,
                (unsigned long long)res->fail_step, res->msg);
        if (!o->trace_all) {
            struct sim_result again;
            run_once(o, true, &again);
            if (again.ok || strcmp(again.msg, res->msg) != 0)
                fprintf(o->trace, "sim: replay of seed %llu did NOT reproduce the failure\n",
                        (unsigned long long)o->seed);
        }
        fprintf(o->trace, "sim: replay with: SEED=%llu NODES=%u STEPS=%u\n",
                (unsigned long long)o->seed, o->nodes, o->steps);
    }
    return false;
}

void sim_stats_add(struct sim_stats *into, const struct sim_stats *s) {
    const uint64_t *a = (const uint64_t *)s;
    uint64_t *b = (uint64_t *)into;
    for (size_t i = 0; i < sizeof(*s) / sizeof(uint64_t); i++)
        b[i] += a[i];
}

void sim_stats_print(FILE *f, const struct sim_stats *s) {
    fprintf(f,
            "steps %llu; messages delivered %llu, lost %llu, duplicated %llu; partitions %llu "
            "symmetric + %llu one-way, heals %llu; crashes %llu (%llu mid-Ready), restarts "
            "%llu; proposals %llu accepted, %llu applied; conf changes %llu; transfers %llu; "
            "snapshots made %llu, sent %llu; reads %llu; elections %llu\n",
            (unsigned long long)s->steps, (unsigned long long)s->delivered,
            (unsigned long long)s->dropped, (unsigned long long)s->duplicated,
            (unsigned long long)s->partitions, (unsigned long long)s->one_way,
            (unsigned long long)s->heals, (unsigned long long)s->crashes,
            (unsigned long long)s->mid_ready_crashes, (unsigned long long)s->restarts,
            (unsigned long long)s->proposals, (unsigned long long)s->applied,
            (unsigned long long)s->conf_changes, (unsigned long long)s->transfers,
            (unsigned long long)s->snapshots_made, (unsigned long long)s->snapshots_sent,
            (unsigned long long)s->reads_done, (unsigned long long)s->elections);
}
