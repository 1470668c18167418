/* raft: the consensus state machine — roles and terms, elections (PreVote,
 * CheckQuorum, transfer), replication with per-follower flow control, commit
 * by counting current-term replicas, ReadIndex rounds, membership, and the
 * Ready/advance hand-off. The caller's loop contract is in raft.h. */
#include "raft/raft_int.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum pr_state { PR_PROBE, PR_REPLICATE, PR_SNAPSHOT };

/* Bounded ring of the last index of each APP message in flight to a follower
 * (replicate state): when full, the leader stops sending until acks free it. */
struct inflights {
    uint64_t *buf;
    unsigned start, count, cap;
};

/* The leader's view of one member, plus election bookkeeping. */
struct progress {
    uint64_t id;
    uint64_t match, next;
    uint64_t pending_snapshot;
    uint64_t read_acked; /* highest read-index round this member confirmed */
    struct inflights infl;
    uint8_t state;
    bool recent_active;
    bool probe_sent;
    bool learner;
    int8_t vote; /* 0: none yet, 1: granted, -1: rejected */
};

/* A message waiting in the outbox. APP messages hold only the index range
 * and the term of their last entry: the entries are looked up when the Ready
 * is built, so no pointer into a log that may change is ever kept. */
struct out_msg {
    struct raft_msg m;
    uint64_t last_term;
    struct raft_entry *owned; /* forwarded proposal: copies owned here */
    struct raft_snapshot snap;
};

/* A read waiting for its heartbeat round (or for the leader's first commit). */
struct read_req {
    uint64_t ctx, from, index, round;
};

enum campaign_type { CAMPAIGN_PRE, CAMPAIGN_ELECTION, CAMPAIGN_TRANSFER };

struct raft {
    uint64_t id;
    uint64_t term, vote, lead, lead_transferee;
    enum raft_role role;
    struct raft_log log;

    struct progress prs[RAFT_MAX_MEMBERS];
    unsigned n_prs;

    unsigned election_tick, heartbeat_tick, randomized_timeout;
    unsigned election_elapsed, heartbeat_elapsed;
    bool check_quorum, pre_vote;
    uint64_t max_size_per_msg, max_committed_size;
    unsigned max_inflight;
    uint64_t pending_conf_index;
    bool transfer_pending; /* TimeoutNow received while a conf change was unapplied */
    uint64_t rng;

    /* ReadIndex (leader): reads in arrival order; rounds are numbered. */
    struct read_req *reads;
    size_t n_reads, cap_reads;
    uint64_t round_started, round_confirmed;
    struct raft_read_state *read_states;
    size_t n_read_states, cap_read_states;

    struct out_msg *out;
    size_t n_out, cap_out;

    /* Buffers of the Ready being handed out, reused from batch to batch. */
    struct raft_msg *rd_msgs;
    size_t cap_rd_msgs;
    struct raft_evec rd_ents;
    struct raft_evec rd_committed;
    struct raft_evec scratch;
    struct raft_soft_state prev_soft;
    struct raft_hard_state prev_hs;

    unsigned faults;
    log_t *lg;
};

#ifdef QUOIN_TESTING
#define FAULT(r, f) (((r)->faults & (f)) != 0)
void raft_set_faults(raft_t *r, unsigned faults) {
    r->faults = faults;
}
#else
#define FAULT(r, f) false
#endif

const char *raft_strerror(int code) {
    switch (code) {
    case 0:
        return "ok";
    case RAFT_ENOLEADER:
        return "raft: no leader";
    case RAFT_EDROPPED:
        return "raft: proposal dropped";
    case RAFT_ECONFPENDING:
        return "raft: a membership change is already in progress";
    case RAFT_ECOMPACTED:
        return "requested index is unavailable due to compaction";
    case RAFT_EUNAVAILABLE:
        return "requested entry at index is unavailable";
    case RAFT_ESNAPTEMP:
        return "snapshot is temporarily unavailable";
    case RAFT_ETRANSFERTARGET:
        return "raft: leadership transfer target is not a voter";
    case RAFT_ETRANSFERLAGGING:
        return "raft: leadership transfer target is lagging";
    case -ENOMEM:
        return "out of memory";
    case -EINVAL:
        return "invalid argument";
    default:
        return "unknown error";
    }
}

/* ---- small helpers ---- */

static uint64_t rng_next(raft_t *r) {
    /* splitmix64: the node's own deterministic stream, seeded by the caller. */
    uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void reset_randomized_timeout(raft_t *r) {
    r->randomized_timeout = r->election_tick + (unsigned)(rng_next(r) % r->election_tick);
}

static struct progress *pr_get(raft_t *r, uint64_t id) {
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id)
            return &r->prs[i];
    return NULL;
}

static unsigned n_voters(const raft_t *r) {
    unsigned n = 0;
    for (unsigned i = 0; i < r->n_prs; i++)
        n += !r->prs[i].learner;
    return n;
}

static unsigned quorum(const raft_t *r) {
    return n_voters(r) / 2 + 1;
}

/* A single-voter cluster of this node: reads and commits need nobody else. */
static bool sole_voter(raft_t *r) {
    struct progress *p = pr_get(r, r->id);
    return p && !p->learner && n_voters(r) == 1;
}

/* Whether this node may campaign: only a voter of its own configuration (a
 * learner, a removed node or a node still joining may not). */
static bool promotable(raft_t *r) {
    struct progress *p = pr_get(r, r->id);
    return p && !p->learner;
}

/* The q-th largest value among the voters' values (q = quorum): the highest
 * value a quorum has reached. */
static uint64_t quorum_value(raft_t *r, uint64_t (*val)(const raft_t *, const struct progress *)) {
    uint64_t v[RAFT_MAX_MEMBERS];
    unsigned n = 0;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (!r->prs[i].learner)
            v[n++] = val(r, &r->prs[i]);
    if (n == 0)
        return 0;
    for (unsigned i = 1; i < n; i++) /* insertion sort, descending: n is tiny */
        for (unsigned j = i; j > 0 && v[j] > v[j - 1]; j--) {
            uint64_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2 + 1 - 1];
}

static void infl_reset(struct inflights *in) {
    in->start = in->count = 0;
}

static bool infl_full(const struct inflights *in) {
    return in->count == in->cap;
}

static void infl_add(struct inflights *in, uint64_t last) {
    assert(!infl_full(in));
    in->buf[(in->start + in->count) % in->cap] = last;
    in->count++;
}

static void infl_free_le(struct inflights *in, uint64_t to) {
    while (in->count && in->buf[in->start] <= to) {
        in->start = (in->start + 1) % in->cap;
        in->count--;
    }
}

static void infl_free_first(struct inflights *in) {
    if (in->count) {
        in->start = (in->start + 1) % in->cap;
        in->count--;
    }
}

static void pr_become_probe(struct progress *p) {
    if (p->state == PR_SNAPSHOT) {
        uint64_t ps = p->pending_snapshot;
        p->next = (p->match > ps ? p->match : ps) + 1;
    } else {
        p->next = p->match + 1;
    }
    p->state = PR_PROBE;
    p->pending_snapshot = 0;
    p->probe_sent = false;
    infl_reset(&p->infl);
}

static void pr_become_replicate(struct progress *p) {
    p->state = PR_REPLICATE;
    p->next = p->match + 1;
    p->probe_sent = false;
    infl_reset(&p->infl);
}

static bool pr_paused(const struct progress *p) {
    switch (p->state) {
    case PR_PROBE:
        return p->probe_sent;
    case PR_REPLICATE:
        return infl_full(&p->infl);
    default:
        return true;
    }
}

static bool pr_maybe_update(struct progress *p, uint64_t n) {
    bool updated = false;
    if (p->match < n) {
        p->match = n;
        updated = true;
        p->probe_sent = false;
    }
    if (p->next < n + 1)
        p->next = n + 1;
    return updated;
}

/* A rejection of the APP that followed `rejected`; hint is the follower's
 * guess of the last index that may match. False if the rejection is stale. */
static bool pr_maybe_decr(struct progress *p, uint64_t rejected, uint64_t hint) {
    if (p->state == PR_REPLICATE) {
        if (rejected <= p->match)
            return false;
        p->next = p->match + 1;
        return true;
    }
    if (p->next - 1 != rejected)
        return false;
    uint64_t n = rejected < hint + 1 ? rejected : hint + 1;
    p->next = n > p->match + 1 ? n : p->match + 1;
    if (p->next < 1)
        p->next = 1;
    p->probe_sent = false;
    return true;
}

static int pr_add(raft_t *r, uint64_t id, bool learner) {
    if (r->n_prs == RAFT_MAX_MEMBERS)
        return -EINVAL;
    struct progress *p = &r->prs[r->n_prs];
    uint64_t *buf = p->infl.buf;
    if (!buf) {
        buf = calloc(r->max_inflight, sizeof(*buf));
        if (!buf)
            return -ENOMEM;
    }
    memset(p, 0, sizeof(*p));
    p->infl.buf = buf;
    p->infl.cap = r->max_inflight;
    p->id = id;
    p->learner = learner;
    p->next = raft_log_last(&r->log) + 1;
    p->state = PR_PROBE;
    p->recent_active = true;
    if (id == r->id)
        p->match = raft_log_stable_last(&r->log);
    r->n_prs++;
    return 0;
}

static void pr_remove(raft_t *r, uint64_t id) {
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) {
            /* Swap the removed slot to the end so its buffer is reused. */
            struct progress t = r->prs[i];
            r->prs[i] = r->prs[r->n_prs - 1];
            r->prs[r->n_prs - 1] = t;
            r->n_prs--;
            return;
        }
}

/* Replaces the membership with cs (start-up and snapshot restore). */
static int set_conf(raft_t *r, const struct raft_conf_state *cs) {
    r->n_prs = 0;
    for (uint32_t i = 0; i < cs->n_voters; i++) {
        int rc = pr_add(r, cs->voters[i], false);
        if (rc < 0)
            return rc;
    }
    for (uint32_t i = 0; i < cs->n_learners; i++) {
        int rc = pr_add(r, cs->learners[i], true);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void raft_conf_state(const raft_t *r, struct raft_conf_state *cs) {
    memset(cs, 0, sizeof(*cs));
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].learner)
            cs->learners[cs->n_learners++] = r->prs[i].id;
        else
            cs->voters[cs->n_voters++] = r->prs[i].id;
    }
}

/* Makes room for `need` elements of `size` bytes in *arr (capacity *cap),
 * doubling. Returns 0 or -ENOMEM (the array is unchanged then). */
static int grow(void **arr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    while (c < need)
        c *= 2;
    void *v = realloc(*arr, c * size);
    if (!v)
        return -ENOMEM;
    *arr = v;
    *cap = c;
    return 0;
}

/* ---- outbox ---- */

static struct out_msg *out_push(raft_t *r) {
    if (grow((void **)&r->out, &r->cap_out, r->n_out + 1, sizeof(*r->out)) < 0)
        return NULL;
    struct out_msg *o = &r->out[r->n_out++];
    memset(o, 0, sizeof(*o));
    return o;
}

/* Queues m from this node. Term is stamped unless the message carries its
 * own (votes) or must not carry one (proposals and reads are term-less so a
 * leader of any term accepts them). */
static int send(raft_t *r, const struct raft_msg *m) {
    struct out_msg *o = out_push(r);
    if (!o)
        return -ENOMEM;
    o->m = *m;
    if (o->m.from == 0)
        o->m.from = r->id;
    if (o->m.term == 0 && m->type != RAFT_MSG_PROP && m->type != RAFT_MSG_READ_INDEX)
        o->m.term = r->term;
    return 0;
}

static void out_free_owned(struct out_msg *o) {
    if (!o->owned)
        return;
    for (size_t i = 0; i < o->m.n_entries; i++)
        free(o->owned[i].data);
    free(o->owned);
    o->owned = NULL;
}

/* ---- replication ---- */

static int send_append(raft_t *r, uint64_t to, bool send_if_empty, bool *sent) {
    if (sent)
        *sent = false;
    struct progress *p = pr_get(r, to);
    if (!p || pr_paused(p))
        return 0;
    uint64_t prev = p->next - 1;
    assert(prev <= raft_log_last(&r->log));
    uint64_t prev_term = 0;
    int rct = raft_log_get_term(&r->log, prev, &prev_term);
    r->scratch.n = 0;
    uint64_t last = raft_log_last(&r->log);
    int rce = 0;
    if (rct == 0 && p->next <= last)
        rce = raft_log_slice(&r->log, p->next, last + 1, r->max_size_per_msg, &r->scratch);
    if (rce == -ENOMEM)
        return rce;
    if (rct != 0 || rce != 0) {
        /* The entries are compacted: the follower needs a snapshot. */
        if (!p->recent_active)
            return 0;
        struct raft_snapshot snap;
        if (r->log.st.ops->snapshot(r->log.st.ctx, &snap) != 0)
            return 0;
        if (snap.meta.index == 0)
            return 0;
        int rc = send(r, &(struct raft_msg){.type = RAFT_MSG_SNAP, .to = to});
        if (rc < 0)
            return rc;
        p->state = PR_SNAPSHOT;
        p->pending_snapshot = snap.meta.index;
        p->probe_sent = false;
        infl_reset(&p->infl);
        if (sent)
            *sent = true;
        return 0;
    }
    size_t n = r->scratch.n;
    if (n == 0 && !send_if_empty)
        return 0;
    struct out_msg *o = out_push(r);
    if (!o)
        return -ENOMEM;
    o->m = (struct raft_msg){.type = RAFT_MSG_APP,
                             .to = to,
                             .from = r->id,
                             .term = r->term,
                             .index = prev,
                             .log_term = prev_term,
                             .n_entries = n,
                             .commit = r->log.committed};
    if (n) {
        uint64_t lastsent = r->scratch.v[n - 1].index;
        o->last_term = r->scratch.v[n - 1].term;
        if (p->state == PR_REPLICATE) {
            p->next = lastsent + 1;
            infl_add(&p->infl, lastsent);
        } else {
            p->probe_sent = true;
        }
    } else if (p->state == PR_PROBE) {
        p->probe_sent = true;
    }
    if (sent)
        *sent = true;
    return 0;
}

static int bcast_append(raft_t *r) {
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].id == r->id)
            continue;
        int rc = send_append(r, r->prs[i].id, true, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int bcast_heartbeat(raft_t *r) {
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        if (p->id == r->id)
            continue;
        uint64_t c = p->match < r->log.committed ? p->match : r->log.committed;
        int rc = send(r, &(struct raft_msg){.type = RAFT_MSG_HEARTBEAT,
                                            .to = p->id,
                                            .commit = c,
                                            .context = r->round_started});
        if (rc < 0)
            return rc;
    }
    return 0;
}

static uint64_t val_match(const raft_t *r, const struct progress *p) {
    (void)r;
    return p->match;
}

static uint64_t val_read_acked(const raft_t *r, const struct progress *p) {
    return p->id == r->id ? r->round_started : p->read_acked;
}

static int read_respond(raft_t *r, const struct read_req *q);
static int start_round(raft_t *r);

static bool committed_in_term(const raft_t *r) {
    return raft_log_term_or0(&r->log, r->log.committed) == r->term;
}

/* Reads that arrived before this leader's first commit wait with round 0;
 * once it has committed an entry of its term they are admitted. */
static int release_waiting_reads(raft_t *r) {
    if (!committed_in_term(r))
        return 0;
    size_t k = 0;
    bool need_round = false;
    int rc = 0;
    for (size_t i = 0; i < r->n_reads; i++) {
        struct read_req q = r->reads[i];
        if (q.round == 0) {
            q.index = r->log.committed;
            if ((sole_voter(r)) || FAULT(r, RAFT_FAULT_READ_NO_HEARTBEAT)) {
                if (rc == 0)
                    rc = read_respond(r, &q);
                continue;
            }
            q.round = r->round_started + 1;
            need_round = true;
        }
        r->reads[k++] = q;
    }
    r->n_reads = k;
    if (rc < 0)
        return rc;
    if (need_round && r->round_confirmed == r->round_started)
        return start_round(r);
    return 0;
}

/* Advances the commit index to what a quorum has, but only if that entry is
 * of the current term (Figure 8): older entries commit with it. */
static bool maybe_commit(raft_t *r) {
    uint64_t mci = quorum_value(r, val_match);
    if (mci <= r->log.committed)
        return false;
    if (!FAULT(r, RAFT_FAULT_COMMIT_OLD_TERM) && raft_log_term_or0(&r->log, mci) != r->term)
        return false;
    raft_log_commit_to(&r->log, mci);
    return true;
}

/* ---- role changes ---- */

static void abort_transfer(raft_t *r) {
    r->lead_transferee = 0;
}

static void reset(raft_t *r, uint64_t term) {
    if (r->term != term) {
        r->term = term;
        r->vote = 0;
    }
    r->lead = 0;
    r->election_elapsed = 0;
    r->heartbeat_elapsed = 0;
    reset_randomized_timeout(r);
    abort_transfer(r);
    uint64_t last = raft_log_last(&r->log);
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        p->match = p->id == r->id ? raft_log_stable_last(&r->log) : 0;
        p->next = last + 1;
        p->state = PR_PROBE;
        p->pending_snapshot = 0;
        p->probe_sent = false;
        p->recent_active = p->id == r->id;
        p->read_acked = 0;
        p->vote = 0;
        infl_reset(&p->infl);
    }
    r->pending_conf_index = 0;
    r->transfer_pending = false;
    r->n_reads = 0;
    r->round_started = r->round_confirmed = 0;
}

static void become_follower(raft_t *r, uint64_t term, uint64_t lead) {
    reset(r, term);
    r->lead = lead;
    r->role = RAFT_FOLLOWER;
}

static void become_candidate(raft_t *r) {
    assert(r->role != RAFT_LEADER);
    reset(r, r->term + 1);
    r->vote = r->id;
    r->role = RAFT_CANDIDATE;
}

static void become_pre_candidate(raft_t *r) {
    assert(r->role != RAFT_LEADER);
    for (unsigned i = 0; i < r->n_prs; i++)
        r->prs[i].vote = 0;
    r->lead = 0;
    r->role = RAFT_PRE_CANDIDATE;
}

static int append_entries(raft_t *r, struct raft_entry *ents, size_t n);

static int become_leader(raft_t *r) {
    assert(r->role != RAFT_FOLLOWER);
    reset(r, r->term);
    r->lead = r->id;
    r->role = RAFT_LEADER;
    struct progress *self = pr_get(r, r->id);
    if (self)
        pr_become_replicate(self);
    /* The empty entry of the new term lets earlier entries commit (they can
     * only commit alongside an entry of the leader's term). */
    struct raft_entry e = {.type = RAFT_ENTRY_NORMAL};
    int rc = append_entries(r, &e, 1);
    if (rc < 0)
        return rc;
    r->pending_conf_index = raft_log_last(&r->log);
    LOG_INFO(r->lg, "raft: became leader", LOG_UINT("id", r->id), LOG_UINT("term", r->term));
    return 0;
}

/* Stamps term and index on new entries and appends them. The leader's own
 * copy counts towards commitment only once durable (raft_advance). */
static int append_entries(raft_t *r, struct raft_entry *ents, size_t n) {
    uint64_t li = raft_log_last(&r->log);
    for (size_t i = 0; i < n; i++) {
        ents[i].term = r->term;
        ents[i].index = li + 1 + i;
    }
    return raft_log_append(&r->log, ents, n);
}

static bool has_unapplied_conf(raft_t *r) {
    if (r->log.committed <= r->log.applied)
        return false;
    r->scratch.n = 0;
    if (raft_log_slice(&r->log, r->log.applied + 1, r->log.committed + 1, UINT64_MAX,
                       &r->scratch) != 0)
        return false;
    for (size_t i = 0; i < r->scratch.n; i++)
        if (r->scratch.v[i].type == RAFT_ENTRY_CONF_CHANGE)
            return true;
    return false;
}

static int poll_votes(raft_t *r, uint64_t id, bool granted, int *result);

static int campaign(raft_t *r, enum campaign_type t) {
    uint32_t type;
    uint64_t term;
    if (t == CAMPAIGN_PRE) {
        become_pre_candidate(r);
        type = RAFT_MSG_PRE_VOTE;
        term = r->term + 1; /* the term it would use; not adopted yet */
    } else {
        become_candidate(r);
        type = RAFT_MSG_VOTE;
        term = r->term;
    }
    int result = 0;
    int rc = poll_votes(r, r->id, true, &result);
    if (rc < 0)
        return rc;
    if (result > 0) {
        /* A single voter wins at once. */
        if (t == CAMPAIGN_PRE)
            return campaign(r, CAMPAIGN_ELECTION);
        return become_leader(r);
    }
    uint64_t li = raft_log_last(&r->log), lt = raft_log_last_term(&r->log);
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct progress *p = &r->prs[i];
        if (p->id == r->id || p->learner)
            continue;
        rc = send(r, &(struct raft_msg){.type = type,
                                        .to = p->id,
                                        .term = term,
                                        .index = li,
                                        .log_term = lt,
                                        .context = t == CAMPAIGN_TRANSFER});
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Records a vote; *result becomes 1 (won), -1 (lost) or 0 (undecided). */
static int poll_votes(raft_t *r, uint64_t id, bool granted, int *result) {
    struct progress *p = pr_get(r, id);
    if (p && !p->learner && p->vote == 0)
        p->vote = granted ? 1 : -1;
    unsigned yes = 0, no = 0, nv = n_voters(r), q = quorum(r);
    for (unsigned i = 0; i < r->n_prs; i++) {
        if (r->prs[i].learner)
            continue;
        yes += r->prs[i].vote > 0;
        no += r->prs[i].vote < 0;
    }
    *result = yes >= q ? 1 : (no > nv - q ? -1 : 0);
    return 0;
}

static int hup(raft_t *r, enum campaign_type t) {
    if (r->role == RAFT_LEADER || !promotable(r))
        return 0;
    if (has_unapplied_conf(r))
        return 0; /* campaign again once the membership is known */
    if (t == CAMPAIGN_ELECTION && r->pre_vote)
        t = CAMPAIGN_PRE;
    return campaign(r, t);
}

static int hand_over(raft_t *r);

static int send_timeout_now(raft_t *r, uint64_t to) {
    return send(r, &(struct raft_msg){.type = RAFT_MSG_TIMEOUT_NOW, .to = to});
}

/* ---- ReadIndex ---- */

static int push_read_state(raft_t *r, uint64_t index, uint64_t ctx) {
    if (grow((void **)&r->read_states, &r->cap_read_states, r->n_read_states + 1,
             sizeof(*r->read_states)) < 0)
        return -ENOMEM;
    r->read_states[r->n_read_states++] = (struct raft_read_state){.index = index, .context = ctx};
    return 0;
}

static int read_respond(raft_t *r, const struct read_req *q) {
    if (q->from == r->id || q->from == 0)
        return push_read_state(r, q->index, q->ctx);
    return send(r, &(struct raft_msg){.type = RAFT_MSG_READ_INDEX_RESP,
                                      .to = q->from,
                                      .index = q->index,
                                      .context = q->ctx});
}

static int reads_push(raft_t *r, const struct read_req *q) {
    if (grow((void **)&r->reads, &r->cap_reads, r->n_reads + 1, sizeof(*r->reads)) < 0)
        return -ENOMEM;
    r->reads[r->n_reads++] = *q;
    return 0;
}

static int start_round(raft_t *r) {
    r->round_started++;
    return bcast_heartbeat(r);
}

/* Leader: queue a read at the current commit index for the next heartbeat
 * round; start that round now unless one is already in flight (then it
 * starts when the current one completes, covering every read queued). */
static int read_admit(raft_t *r, uint64_t ctx, uint64_t from) {
    struct read_req q = {.ctx = ctx, .from = from, .index = r->log.committed};
    if (!committed_in_term(r)) {
        q.round = 0;
        return reads_push(r, &q);
    }
    if (sole_voter(r))
        return read_respond(r, &q);
    if (FAULT(r, RAFT_FAULT_READ_NO_HEARTBEAT))
        return read_respond(r, &q);
    q.round = r->round_started + 1;
    int rc = reads_push(r, &q);
    if (rc < 0)
        return rc;
    if (r->round_confirmed == r->round_started)
        return start_round(r);
    return 0;
}

static int reads_confirm(raft_t *r) {
    uint64_t c = quorum_value(r, val_read_acked);
    if (c <= r->round_confirmed)
        return 0;
    r->round_confirmed = c;
    size_t k = 0;
    int rc = 0;
    for (size_t i = 0; i < r->n_reads; i++) {
        struct read_req *q = &r->reads[i];
        if (q->round != 0 && q->round <= c) {
            if (rc == 0)
                rc = read_respond(r, q);
        } else {
            r->reads[k++] = *q;
        }
    }
    r->n_reads = k;
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < r->n_reads; i++)
        if (r->reads[i].round > r->round_confirmed && r->round_confirmed == r->round_started)
            return start_round(r);
    return 0;
}

/* ---- stepping ---- */

static int handle_append(raft_t *r, const struct raft_msg *m) {
    if (m->index < r->log.committed)
        return send(r, &(struct raft_msg){
                           .type = RAFT_MSG_APP_RESP, .to = m->from, .index = r->log.committed});
    uint64_t last_new = 0;
    int rc = raft_log_maybe_append(&r->log, m->index, m->log_term, m->commit, m->entries,
                                   m->n_entries, &last_new);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return send(
            r, &(struct raft_msg){.type = RAFT_MSG_APP_RESP, .to = m->from, .index = last_new});
    /* Mismatch: hint the last index whose term is <= the leader's prev term so
     * the leader can skip a whole diverging term in one round trip. */
    uint64_t li = raft_log_last(&r->log);
    uint64_t hint = m->index < li ? m->index : li;
    hint = raft_log_conflict_by_term(&r->log, hint, m->log_term);
    return send(r, &(struct raft_msg){.type = RAFT_MSG_APP_RESP,
                                      .to = m->from,
                                      .index = m->index,
                                      .reject = true,
                                      .reject_hint = hint,
                                      .log_term = raft_log_term_or0(&r->log, hint)});
}

static int handle_heartbeat(raft_t *r, const struct raft_msg *m) {
    uint64_t li = raft_log_last(&r->log);
    raft_log_commit_to(&r->log, m->commit < li ? m->commit : li);
    return send(r, &(struct raft_msg){
                       .type = RAFT_MSG_HEARTBEAT_RESP, .to = m->from, .context = m->context});
}

static int handle_snapshot(raft_t *r, const struct raft_msg *m) {
    const struct raft_snapshot *s = m->snapshot;
    if (!s)
        return -EINVAL;
    uint64_t idx = s->meta.index;
    if (idx <= r->log.committed)
        return send(r, &(struct raft_msg){
                           .type = RAFT_MSG_APP_RESP, .to = m->from, .index = r->log.committed});
    if (raft_log_match_term(&r->log, idx, s->meta.term)) {
        /* We already have that entry: just commit up to it. */
        raft_log_commit_to(&r->log, idx);
        return send(r, &(struct raft_msg){
                           .type = RAFT_MSG_APP_RESP, .to = m->from, .index = r->log.committed});
    }
    int rc = raft_log_restore(&r->log, s);
    if (rc < 0)
        return rc;
    rc = set_conf(r, &s->meta.conf);
    if (rc < 0)
        return rc;
    LOG_INFO(r->lg, "raft: restored snapshot", LOG_UINT("id", r->id), LOG_UINT("index", idx));
    return send(r, &(struct raft_msg){
                       .type = RAFT_MSG_APP_RESP, .to = m->from, .index = raft_log_last(&r->log)});
}

static int leader_append_resp(raft_t *r, const struct raft_msg *m, struct progress *p) {
    int rc;
    p->recent_active = true;
    if (m->reject) {
        uint64_t hint = m->reject_hint;
        if (m->log_term > 0)
            hint = raft_log_conflict_by_term(&r->log, hint, m->log_term);
        if (pr_maybe_decr(p, m->index, hint)) {
            if (p->state == PR_REPLICATE)
                pr_become_probe(p);
            return send_append(r, m->from, true, NULL);
        }
        return 0;
    }
    bool old_paused = pr_paused(p);
    if (!pr_maybe_update(p, m->index))
        return 0;
    if (p->state == PR_PROBE) {
        pr_become_replicate(p);
    } else if (p->state == PR_SNAPSHOT && p->match >= p->pending_snapshot) {
        pr_become_probe(p);
        pr_become_replicate(p);
    } else if (p->state == PR_REPLICATE) {
        infl_free_le(&p->infl, m->index);
    }
    if (maybe_commit(r)) {
        rc = bcast_append(r);
        if (rc < 0)
            return rc;
        rc = release_waiting_reads(r);
        if (rc < 0)
            return rc;
    } else if (old_paused) {
        rc = send_append(r, m->from, true, NULL);
        if (rc < 0)
            return rc;
    }
    /* Fill the window while there is something to send. */
    for (;;) {
        bool sent = false;
        rc = send_append(r, m->from, false, &sent);
        if (rc < 0)
            return rc;
        if (!sent)
            break;
    }
    if (m->from == r->lead_transferee && p->match == raft_log_last(&r->log))
        return send_timeout_now(r, m->from);
    return 0;
}

static int leader_transfer(raft_t *r, uint64_t target) {
    struct progress *p = pr_get(r, target);
    if (!p || p->learner || target == r->id)
        return RAFT_ETRANSFERTARGET;
    if (r->lead_transferee == target)
        return 0;
    abort_transfer(r);
    r->election_elapsed = 0; /* the transfer must finish within one timeout */
    r->lead_transferee = target;
    if (p->match == raft_log_last(&r->log))
        return send_timeout_now(r, target);
    return send_append(r, target, true, NULL);
}

/* Whether a change makes sense against the leader's configuration: it must
 * change something, keep a voter, and fit. */
static bool conf_change_valid(raft_t *r, const struct raft_conf_change *cc) {
    struct progress *p = pr_get(r, cc->node_id);
    bool nothing = (cc->type == RAFT_CC_ADD_NODE && p && !p->learner) ||
                   (cc->type == RAFT_CC_ADD_LEARNER && p) ||
                   ((cc->type == RAFT_CC_REMOVE_NODE || cc->type == RAFT_CC_UPDATE_NODE) && !p);
    bool last_voter = cc->type == RAFT_CC_REMOVE_NODE && p && !p->learner && n_voters(r) == 1;
    return cc->node_id != 0 && !nothing && !last_voter && (p || r->n_prs < RAFT_MAX_MEMBERS);
}

static int copy_and_append(raft_t *r, const struct raft_entry *ents, size_t n) {
    struct raft_entry stack[64];
    struct raft_entry *v = n <= 64 ? stack : malloc(n * sizeof(*v));
    if (!v)
        return -ENOMEM;
    memcpy(v, ents, n * sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        if (v[i].type != RAFT_ENTRY_CONF_CHANGE)
            continue;
        /* Single-server changes: one at a time, and only once this leader has
         * applied its first entry; a forwarded change is checked here like a
         * local one. Otherwise the change becomes a no-op. */
        struct raft_conf_change cc;
        if (r->pending_conf_index > r->log.applied ||
            raft_conf_change_decode(v[i].data, v[i].len, &cc) != 0 || !conf_change_valid(r, &cc)) {
            v[i] = (struct raft_entry){.type = RAFT_ENTRY_NORMAL};
        } else {
            r->pending_conf_index = raft_log_last(&r->log) + 1 + i;
        }
    }
    int rc = append_entries(r, v, n);
    if (v != stack)
        free(v);
    if (rc < 0)
        return rc;
    return bcast_append(r);
}

static int step_leader(raft_t *r, const struct raft_msg *m) {
    struct progress *p;
    switch (m->type) {
    case RAFT_MSG_PROP:
        if (m->n_entries == 0)
            return 0;
        if (!pr_get(r, r->id) || r->lead_transferee)
            return RAFT_EDROPPED;
        return copy_and_append(r, m->entries, m->n_entries);
    case RAFT_MSG_READ_INDEX:
        return read_admit(r, m->context, m->from ? m->from : r->id);
    case RAFT_MSG_TRANSFER_LEADER:
        return leader_transfer(r, m->from);
    default:
        break;
    }
    p = pr_get(r, m->from);
    if (!p)
        return 0;
    switch (m->type) {
    case RAFT_MSG_APP_RESP:
        return leader_append_resp(r, m, p);
    case RAFT_MSG_HEARTBEAT_RESP: {
        p->recent_active = true;
        p->probe_sent = false;
        if (m->context > p->read_acked && m->context <= r->round_started)
            p->read_acked = m->context;
        if (p->state == PR_REPLICATE && infl_full(&p->infl))
            infl_free_first(&p->infl);
        int rc = 0;
        if (p->match < raft_log_last(&r->log))
            rc = send_append(r, m->from, true, NULL);
        if (rc < 0)
            return rc;
        return reads_confirm(r);
    }
    default:
        return 0;
    }
}

static int step_candidate(raft_t *r, const struct raft_msg *m) {
    uint32_t my_resp = r->role == RAFT_PRE_CANDIDATE ? RAFT_MSG_PRE_VOTE_RESP : RAFT_MSG_VOTE_RESP;
    switch (m->type) {
    case RAFT_MSG_PROP:
        return RAFT_ENOLEADER;
    case RAFT_MSG_APP:
        become_follower(r, m->term, m->from);
        return handle_append(r, m);
    case RAFT_MSG_HEARTBEAT:
        become_follower(r, m->term, m->from);
        return handle_heartbeat(r, m);
    case RAFT_MSG_SNAP:
        become_follower(r, m->term, m->from);
        return handle_snapshot(r, m);
    default:
        break;
    }
    if (m->type != my_resp)
        return 0;
    int result = 0;
    poll_votes(r, m->from, !m->reject, &result);
    if (result > 0) {
        if (r->role == RAFT_PRE_CANDIDATE)
            return campaign(r, CAMPAIGN_ELECTION);
        int rc = become_leader(r);
        if (rc < 0)
            return rc;
        return bcast_append(r);
    }
    if (result < 0)
        become_follower(r, r->term, 0);
    return 0;
}

static int step_follower(raft_t *r, const struct raft_msg *m) {
    switch (m->type) {
    case RAFT_MSG_PROP:
    case RAFT_MSG_TRANSFER_LEADER:
    case RAFT_MSG_READ_INDEX: {
        if (r->lead == 0)
            return RAFT_ENOLEADER;
        struct raft_msg f = *m;
        f.to = r->lead;
        f.entries = NULL;
        int rc = send(r, &f);
        if (rc < 0 || m->type != RAFT_MSG_PROP || m->n_entries == 0)
            return rc;
        /* A forwarded proposal owns copies of its entries until sent. */
        struct out_msg *o = &r->out[r->n_out - 1];
        o->owned = calloc(m->n_entries, sizeof(*o->owned));
        if (!o->owned) {
            r->n_out--;
            return -ENOMEM;
        }
        for (size_t i = 0; i < m->n_entries; i++) {
            o->owned[i] = m->entries[i];
            o->owned[i].data = NULL;
            if (m->entries[i].len) {
                o->owned[i].data = malloc(m->entries[i].len);
                if (!o->owned[i].data) {
                    o->m.n_entries = i;
                    out_free_owned(o);
                    r->n_out--;
                    return -ENOMEM;
                }
                memcpy(o->owned[i].data, m->entries[i].data, m->entries[i].len);
            }
        }
        return 0;
    }
    case RAFT_MSG_APP:
        r->election_elapsed = 0;
        r->lead = m->from;
        return handle_append(r, m);
    case RAFT_MSG_HEARTBEAT:
        r->election_elapsed = 0;
        r->lead = m->from;
        return handle_heartbeat(r, m);
    case RAFT_MSG_SNAP:
        r->election_elapsed = 0;
        r->lead = m->from;
        return handle_snapshot(r, m);
    case RAFT_MSG_TIMEOUT_NOW:
        if (!promotable(r))
            return 0;
        if (has_unapplied_conf(r)) {
            /* Campaign once the configuration is applied (typically the
             * removal of the leader handing over), not an election later. */
            r->transfer_pending = true;
            return 0;
        }
        return hup(r, CAMPAIGN_TRANSFER);
    case RAFT_MSG_READ_INDEX_RESP:
        return push_read_state(r, m->index, m->context);
    default:
        return 0;
    }
}

static int step(raft_t *r, const struct raft_msg *m) {
    bool vote_req = m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PRE_VOTE;
    if (m->term == 0) {
        /* local message or term-less request */
    } else if (m->term > r->term) {
        if (vote_req) {
            bool force = m->context == 1;
            bool in_lease =
                r->check_quorum && r->lead != 0 && r->election_elapsed < r->election_tick;
            if (!force && in_lease)
                return 0; /* a leader is alive: do not let this one disrupt it */
        }
        if (m->type == RAFT_MSG_PRE_VOTE) {
            /* never change term on a pre-vote */
        } else if (m->type == RAFT_MSG_PRE_VOTE_RESP && !m->reject) {
            /* the term in the reply is the one we would campaign with */
        } else if (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT ||
                   m->type == RAFT_MSG_SNAP) {
            become_follower(r, m->term, m->from);
        } else {
            become_follower(r, m->term, 0);
        }
    } else if (m->term < r->term) {
        if ((r->check_quorum || r->pre_vote) &&
            (m->type == RAFT_MSG_HEARTBEAT || m->type == RAFT_MSG_APP))
            /* Tell a stale leader our term so it steps down. */
            return send(r, &(struct raft_msg){.type = RAFT_MSG_APP_RESP, .to = m->from});
        if (m->type == RAFT_MSG_PRE_VOTE)
            return send(r, &(struct raft_msg){
                               .type = RAFT_MSG_PRE_VOTE_RESP, .to = m->from, .reject = true});
        return 0;
    }

    if (vote_req) {
        bool can_vote = r->vote == m->from || (r->vote == 0 && r->lead == 0) ||
                        (m->type == RAFT_MSG_PRE_VOTE && m->term > r->term) ||
                        (FAULT(r, RAFT_FAULT_DOUBLE_VOTE) && r->role == RAFT_FOLLOWER);
        uint32_t resp = m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP : RAFT_MSG_PRE_VOTE_RESP;
        if (can_vote && raft_log_up_to_date(&r->log, m->index, m->log_term)) {
            if (m->type == RAFT_MSG_VOTE) {
                r->election_elapsed = 0;
                r->vote = m->from;
            }
            return send(r,
                        &(struct raft_msg){
                            .type = resp, .to = m->from, .term = m->term, .context = m->context});
        }
        return send(r, &(struct raft_msg){.type = resp, .to = m->from, .reject = true});
    }
    switch (r->role) {
    case RAFT_LEADER:
        return step_leader(r, m);
    case RAFT_CANDIDATE:
    case RAFT_PRE_CANDIDATE:
        return step_candidate(r, m);
    default:
        return step_follower(r, m);
    }
}

/* ---- public interface ---- */

/* The state invariants every public call must leave true. */
static void check_invariants(const raft_t *r) {
#ifndef NDEBUG
    uint64_t last = raft_log_last(&r->log);
    assert(r->log.applied <= r->log.committed);
    assert(r->log.committed <= last);
    assert(r->role != RAFT_LEADER || r->lead == r->id);
    assert(r->role != RAFT_CANDIDATE || r->vote == r->id);
    for (unsigned i = 0; r->role == RAFT_LEADER && i < r->n_prs; i++) {
        const struct progress *p = &r->prs[i];
        assert(p->match <= last && p->next <= last + 1);
        assert(p->id == r->id || p->match < p->next);
        assert(p->infl.count <= p->infl.cap);
    }
#else
    (void)r;
#endif
}

int raft_step(raft_t *r, const struct raft_msg *m) {
    switch (m->type) {
    case RAFT_MSG_HUP:
    case RAFT_MSG_BEAT:
    case RAFT_MSG_UNREACHABLE:
    case RAFT_MSG_SNAP_STATUS:
    case RAFT_MSG_CHECK_QUORUM:
        return -EINVAL;
    default:
        break;
    }
    if (m->type > RAFT_MSG_PRE_VOTE_RESP)
        return -EINVAL;
    int rc = step(r, m);
    check_invariants(r);
    /* Errors that only mean "cannot serve this request" are the sender's
     * business (it times out); only resource failures reach the caller. */
    return rc == -ENOMEM ? rc : 0;
}

static int tick(raft_t *r) {
    if (r->role != RAFT_LEADER) {
        r->election_elapsed++;
        if (promotable(r) && r->election_elapsed >= r->randomized_timeout) {
            r->election_elapsed = 0;
            return hup(r, CAMPAIGN_ELECTION);
        }
        return 0;
    }
    r->heartbeat_elapsed++;
    r->election_elapsed++;
    if (r->election_elapsed >= r->election_tick) {
        r->election_elapsed = 0;
        if (r->check_quorum) {
            unsigned active = 0;
            for (unsigned i = 0; i < r->n_prs; i++) {
                struct progress *p = &r->prs[i];
                if (!p->learner && (p->recent_active || p->id == r->id))
                    active++;
                if (p->id != r->id)
                    p->recent_active = false;
            }
            if (active < quorum(r)) {
                LOG_WARN(r->lg, "raft: lost quorum, stepping down", LOG_UINT("id", r->id));
                become_follower(r, r->term, 0);
                return 0;
            }
        }
        if (r->lead_transferee)
            abort_transfer(r); /* did not finish within an election timeout */
        if (!pr_get(r, r->id)) {
            int rc = hand_over(r); /* removed: try again, maybe with another voter */
            if (rc < 0)
                return rc;
        }
    }
    if (r->heartbeat_elapsed >= r->heartbeat_tick) {
        r->heartbeat_elapsed = 0;
        return bcast_heartbeat(r);
    }
    return 0;
}

int raft_tick(raft_t *r) {
    int rc = tick(r);
    check_invariants(r);
    return rc;
}

int raft_campaign(raft_t *r) {
    return hup(r, CAMPAIGN_ELECTION);
}

int raft_propose(raft_t *r, const uint8_t *const *data, const uint32_t *len, size_t n) {
    if (n == 0)
        return 0;
    if (r->role != RAFT_LEADER && r->lead == 0)
        return RAFT_ENOLEADER;
    if (r->role == RAFT_LEADER && r->lead_transferee)
        return RAFT_EDROPPED;
    struct raft_entry stack[64];
    struct raft_entry *v = n <= 64 ? stack : malloc(n * sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        v[i] = (struct raft_entry){
            .type = RAFT_ENTRY_NORMAL, .len = len[i], .data = (uint8_t *)data[i]};
    int rc = step(r, &(struct raft_msg){.type = RAFT_MSG_PROP, .entries = v, .n_entries = n});
    if (v != stack)
        free(v);
    return rc;
}

size_t raft_conf_change_encode(const struct raft_conf_change *cc, uint8_t *buf) {
    size_t n = 9 + cc->context_len;
    if (!buf)
        return n;
    buf[0] = (uint8_t)cc->type;
    for (int i = 0; i < 8; i++)
        buf[1 + i] = (uint8_t)(cc->node_id >> (56 - 8 * i));
    if (cc->context_len)
        memcpy(buf + 9, cc->context, cc->context_len);
    return n;
}

int raft_conf_change_decode(const uint8_t *data, size_t len, struct raft_conf_change *cc) {
    if (len < 9)
        return -EINVAL;
    memset(cc, 0, sizeof(*cc));
    cc->type = data[0];
    if (cc->type != RAFT_CC_ADD_NODE && cc->type != RAFT_CC_REMOVE_NODE &&
        cc->type != RAFT_CC_UPDATE_NODE && cc->type != RAFT_CC_ADD_LEARNER)
        return -EINVAL;
    for (int i = 0; i < 8; i++)
        cc->node_id = (cc->node_id << 8) | data[1 + i];
    cc->context = len > 9 ? data + 9 : NULL;
    cc->context_len = (uint32_t)(len - 9);
    return 0;
}

int raft_propose_conf_change(raft_t *r, const struct raft_conf_change *cc) {
    if (cc->node_id == 0)
        return -EINVAL;
    if (r->role == RAFT_LEADER) {
        if (r->pending_conf_index > r->log.applied)
            return RAFT_ECONFPENDING;
        if (r->lead_transferee)
            return RAFT_EDROPPED;
        if (!conf_change_valid(r, cc))
            return -EINVAL;
    } else if (r->lead == 0) {
        return RAFT_ENOLEADER;
    }
    uint8_t stack[256];
    size_t n = raft_conf_change_encode(cc, NULL);
    uint8_t *buf = n <= sizeof(stack) ? stack : malloc(n);
    if (!buf)
        return -ENOMEM;
    raft_conf_change_encode(cc, buf);
    struct raft_entry e = {.type = RAFT_ENTRY_CONF_CHANGE, .len = (uint32_t)n, .data = buf};
    int rc = step(r, &(struct raft_msg){.type = RAFT_MSG_PROP, .entries = &e, .n_entries = 1});
    if (buf != stack)
        free(buf);
    return rc;
}

/* A leader that applied its own removal keeps leading (without counting
 * itself) until the voter with the longest log has caught up and taken over
 * through TimeoutNow: stepping down at once could leave the others unaware
 * that the removal committed, each waiting for the removed node's vote. */
static int hand_over(raft_t *r) {
    struct progress *best = NULL;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (!r->prs[i].learner && (!best || r->prs[i].match > best->match))
            best = &r->prs[i];
    if (!best) {
        become_follower(r, r->term, 0);
        return 0;
    }
    if (r->lead_transferee == best->id)
        return 0;
    int rc = bcast_append(r); /* tell everyone the commit index now */
    if (rc < 0)
        return rc;
    return leader_transfer(r, best->id);
}

int raft_apply_conf_change(raft_t *r, const struct raft_conf_change *cc,
                           struct raft_conf_state *cs) {
    struct progress *p = pr_get(r, cc->node_id);
    int rc = 0;
    switch (cc->type) {
    case RAFT_CC_ADD_NODE:
        if (p)
            p->learner = false;
        else
            rc = pr_add(r, cc->node_id, false);
        break;
    case RAFT_CC_ADD_LEARNER:
        if (!p)
            rc = pr_add(r, cc->node_id, true);
        break;
    case RAFT_CC_REMOVE_NODE:
        if (p)
            pr_remove(r, cc->node_id);
        break;
    case RAFT_CC_UPDATE_NODE:
        break;
    default:
        rc = -EINVAL;
    }
    if (rc < 0)
        return rc;
    if (cs)
        raft_conf_state(r, cs);
    if (r->role == RAFT_FOLLOWER && r->transfer_pending && !has_unapplied_conf(r)) {
        r->transfer_pending = false;
        return hup(r, CAMPAIGN_TRANSFER);
    }
    if (r->role != RAFT_LEADER)
        return 0;
    if (!pr_get(r, r->id))
        return hand_over(r);
    if (r->lead_transferee && !pr_get(r, r->lead_transferee))
        abort_transfer(r);
    if (maybe_commit(r)) {
        rc = bcast_append(r);
        if (rc < 0)
            return rc;
    }
    return reads_confirm(r);
}

int raft_read_index(raft_t *r, uint64_t context) {
    if (r->role != RAFT_LEADER && r->lead == 0)
        return RAFT_ENOLEADER;
    return step(r, &(struct raft_msg){.type = RAFT_MSG_READ_INDEX, .context = context});
}

int raft_transfer_leadership(raft_t *r, uint64_t to) {
    if (r->role == RAFT_LEADER) {
        struct progress *p = pr_get(r, to);
        if (!p || p->learner || to == r->id)
            return RAFT_ETRANSFERTARGET;
        if (p->state == PR_SNAPSHOT)
            return RAFT_ETRANSFERLAGGING;
        return leader_transfer(r, to);
    }
    if (r->lead == 0)
        return RAFT_ENOLEADER;
    return send(r, &(struct raft_msg){.type = RAFT_MSG_TRANSFER_LEADER, .to = r->lead, .from = to});
}

void raft_report_unreachable(raft_t *r, uint64_t id) {
    struct progress *p = r->role == RAFT_LEADER ? pr_get(r, id) : NULL;
    if (p && p->state == PR_REPLICATE)
        pr_become_probe(p);
}

void raft_report_snapshot(raft_t *r, uint64_t id, bool failed) {
    struct progress *p = r->role == RAFT_LEADER ? pr_get(r, id) : NULL;
    if (!p || p->state != PR_SNAPSHOT)
        return;
    if (failed)
        p->pending_snapshot = 0;
    pr_become_probe(p);
    /* Wait for the follower's answer (or a heartbeat) before probing. */
    p->probe_sent = true;
}

/* ---- Ready ---- */

static uint64_t committed_hi(const raft_t *r) {
    if (r->log.has_usnap)
        return 0;
    uint64_t hi = r->log.committed;
    if (!FAULT(r, RAFT_FAULT_APPLY_UNPERSISTED)) {
        uint64_t sl = raft_log_stable_last(&r->log);
        if (sl < hi)
            hi = sl;
    }
    return hi;
}

static struct raft_hard_state hard_state(const raft_t *r) {
    return (struct raft_hard_state){.term = r->term, .vote = r->vote, .commit = r->log.committed};
}

bool raft_has_ready(const raft_t *r) {
    struct raft_hard_state hs = hard_state(r);
    return r->n_out || r->log.un || r->log.has_usnap || r->n_read_states ||
           committed_hi(r) > r->log.applied || r->prev_soft.leader != r->lead ||
           r->prev_soft.role != r->role || memcmp(&hs, &r->prev_hs, sizeof(hs)) != 0;
}

/* Fills the entries of the queued APP messages from the log. A message whose
 * entries changed or were compacted since it was queued is dropped: Raft
 * treats it as lost. */
static int build_msgs(raft_t *r, size_t *n_msgs) {
    if (grow((void **)&r->rd_msgs, &r->cap_rd_msgs, r->n_out, sizeof(*r->rd_msgs)) < 0)
        return -ENOMEM;
    r->rd_ents.n = 0;
    size_t k = 0;
    for (size_t i = 0; i < r->n_out; i++) {
        struct out_msg *o = &r->out[i];
        struct raft_msg *m = &r->rd_msgs[k];
        *m = o->m;
        if (m->type == RAFT_MSG_APP && m->n_entries) {
            size_t at = r->rd_ents.n;
            uint64_t lo = m->index + 1, hi = m->index + 1 + m->n_entries;
            int rc = raft_log_slice(&r->log, lo, hi, UINT64_MAX, &r->rd_ents);
            if (rc == -ENOMEM)
                return rc;
            if (rc != 0 || r->rd_ents.n - at != m->n_entries ||
                r->rd_ents.v[r->rd_ents.n - 1].term != o->last_term ||
                !raft_log_match_term(&r->log, m->index, m->log_term)) {
                r->rd_ents.n = at;
                continue;
            }
        } else if (m->type == RAFT_MSG_SNAP) {
            if (r->log.st.ops->snapshot(r->log.st.ctx, &o->snap) != 0)
                continue;
            m->snapshot = &o->snap;
        } else if (m->type == RAFT_MSG_PROP) {
            m->entries = o->owned;
        }
        k++;
    }
    /* rd_ents may have moved while growing: point the messages at it now. */
    size_t at = 0;
    for (size_t i = 0; i < k; i++) {
        struct raft_msg *m = &r->rd_msgs[i];
        if (m->type == RAFT_MSG_APP && m->n_entries) {
            m->entries = r->rd_ents.v + at;
            at += m->n_entries;
        }
    }
    *n_msgs = k;
    return 0;
}

int raft_ready(raft_t *r, struct raft_ready *rd) {
    memset(rd, 0, sizeof(*rd));
    rd->soft = (struct raft_soft_state){.leader = r->lead, .role = r->role};
    rd->soft_changed = rd->soft.leader != r->prev_soft.leader || rd->soft.role != r->prev_soft.role;
    rd->hard_state = hard_state(r);
    rd->hard_state_changed = memcmp(&rd->hard_state, &r->prev_hs, sizeof(rd->hard_state)) != 0;
    if (r->log.has_usnap)
        rd->snapshot = &r->log.usnap;
    rd->entries = r->log.ue;
    rd->n_entries = r->log.un;

    r->rd_committed.n = 0;
    uint64_t hi = committed_hi(r);
    if (hi > r->log.applied) {
        uint64_t max = r->max_committed_size ? r->max_committed_size : UINT64_MAX;
        int rc = raft_log_slice(&r->log, r->log.applied + 1, hi + 1, max, &r->rd_committed);
        if (rc == -ENOMEM)
            return rc;
        assert(rc == 0);
    }
    rd->committed = r->rd_committed.v;
    rd->n_committed = r->rd_committed.n;

    int rc = build_msgs(r, &rd->n_msgs);
    if (rc < 0)
        return rc;
    rd->msgs = r->rd_msgs;
    rd->reads = r->read_states;
    rd->n_reads = r->n_read_states;
    rd->must_sync = rd->n_entries > 0 || rd->hard_state.term != r->prev_hs.term ||
                    rd->hard_state.vote != r->prev_hs.vote;
    return 0;
}

int raft_advance(raft_t *r, const struct raft_ready *rd) {
    r->prev_soft = rd->soft;
    if (rd->hard_state_changed)
        r->prev_hs = rd->hard_state;
    if (rd->snapshot) {
        uint64_t si = rd->snapshot->meta.index;
        raft_log_stable_snap_to(&r->log, si);
        if (si > r->log.applied)
            r->log.applied = si;
    }
    if (rd->n_entries) {
        const struct raft_entry *e = &rd->entries[rd->n_entries - 1];
        raft_log_stable_to(&r->log, e->index, e->term);
    }
    struct progress *self = r->role == RAFT_LEADER ? pr_get(r, r->id) : NULL;
    if (self && pr_maybe_update(self, raft_log_stable_last(&r->log)) && maybe_commit(r)) {
        int rc = bcast_append(r);
        if (rc == 0)
            rc = release_waiting_reads(r);
        if (rc < 0)
            return rc;
    }
    if (rd->n_committed) {
        uint64_t a = rd->committed[rd->n_committed - 1].index;
        assert(a <= r->log.committed);
        if (a > r->log.applied)
            r->log.applied = a;
    }
    for (size_t i = 0; i < r->n_out; i++)
        out_free_owned(&r->out[i]);
    r->n_out = 0;
    r->n_read_states = 0;
    check_invariants(r);
    return 0;
}

/* ---- life cycle ---- */

int raft_new(const struct raft_config *cfg, raft_t **out) {
    if (cfg->id == 0 || cfg->heartbeat_tick == 0 || cfg->election_tick <= cfg->heartbeat_tick ||
        cfg->max_inflight_msgs == 0 || !cfg->storage.ops)
        return -EINVAL;
    raft_t *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->id = cfg->id;
    r->election_tick = cfg->election_tick;
    r->heartbeat_tick = cfg->heartbeat_tick;
    r->check_quorum = cfg->check_quorum;
    r->pre_vote = cfg->pre_vote;
    r->max_size_per_msg = cfg->max_size_per_msg;
    r->max_committed_size = cfg->max_committed_size_per_ready;
    r->max_inflight = cfg->max_inflight_msgs;
    r->rng = cfg->seed ^ (cfg->id * 0x9e3779b97f4a7c15ull);
    r->lg = cfg->log;
    int rc = raft_log_init(&r->log, cfg->storage);
    if (rc < 0)
        goto err;
    struct raft_hard_state hs;
    struct raft_conf_state cs;
    rc = cfg->storage.ops->initial_state(cfg->storage.ctx, &hs, &cs);
    if (rc < 0)
        goto err;
    rc = -EINVAL;
    if (hs.commit > raft_log_last(&r->log) || cs.n_voters > RAFT_MAX_MEMBERS ||
        cs.n_learners > RAFT_MAX_MEMBERS || cs.n_voters + cs.n_learners > RAFT_MAX_MEMBERS)
        goto err;
    if (hs.commit > r->log.committed)
        r->log.committed = hs.commit;
    if (cfg->applied > r->log.applied) {
        /* The state machine may have applied past the persisted commit index
         * (it applies in parallel with persisting); what it applied was
         * committed, so the commit index catches up. */
        if (cfg->applied > raft_log_last(&r->log))
            goto err;
        if (cfg->applied > r->log.committed)
            r->log.committed = cfg->applied;
        r->log.applied = cfg->applied;
    }
    rc = set_conf(r, &cs);
    if (rc < 0)
        goto err;
    r->term = hs.term;
    r->vote = hs.vote;
    r->prev_hs = hard_state(r);
    become_follower(r, r->term, 0);
    r->prev_soft = (struct raft_soft_state){.leader = 0, .role = RAFT_FOLLOWER};
    *out = r;
    return 0;
err:
    raft_free(r);
    return rc;
}

void raft_free(raft_t *r) {
    if (!r)
        return;
    for (unsigned i = 0; i < RAFT_MAX_MEMBERS; i++)
        free(r->prs[i].infl.buf);
    for (size_t i = 0; i < r->n_out; i++)
        out_free_owned(&r->out[i]);
    free(r->out);
    free(r->rd_msgs);
    free(r->reads);
    free(r->read_states);
    raft_evec_free(&r->rd_ents);
    raft_evec_free(&r->rd_committed);
    raft_evec_free(&r->scratch);
    raft_log_destroy(&r->log);
    free(r);
}

void raft_status(const raft_t *r, struct raft_status *st) {
    const struct progress *self = NULL;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == r->id)
            self = &r->prs[i];
    *st = (struct raft_status){.id = r->id,
                               .term = r->term,
                               .vote = r->vote,
                               .commit = r->log.committed,
                               .applied = r->log.applied,
                               .last_index = raft_log_last(&r->log),
                               .leader = r->lead,
                               .role = r->role,
                               .lead_transferee = r->lead_transferee,
                               .is_learner = self && self->learner};
}

int raft_progress_match(const raft_t *r, uint64_t id, uint64_t *match) {
    if (r->role != RAFT_LEADER)
        return RAFT_ENOLEADER;
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) {
            *match = r->prs[i].match;
            return 0;
        }
    return -ENOENT;
}

int raft_log_term(const raft_t *r, uint64_t i, uint64_t *term) {
    return raft_log_get_term(&r->log, i, term);
}
