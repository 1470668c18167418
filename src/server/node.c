/* node: the raft loop thread of a member (see node.h for the contract). */
#include "server/node.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "server/snapshot.h"
#include "wal/wal.h"

/* etcd refuses proposals once the apply backlog passes this many entries
 * ("etcdserver: too many requests"); quoin keeps the same bound. */
#define NODE_MAX_APPLY_GAP 5000

/* Entries kept in memory behind a checkpoint, for members that lag (etcd's
 * snapshotCatchUpEntries). */
#define NODE_LOG_MARGIN 5000

/* Configurations remembered with the index of the conf change that made
 * them, so a checkpoint records the configuration as of its own index. */
#define NODE_CONF_HISTORY 16

/* raft_conf_change_encode's bytes before the context: type, node id. */
#define NODE_CC_HEADER 9

/* transfer_to: any voter raft accepts (member ids are never all ones). */
#define NODE_ANY_VOTER UINT64_MAX

/* etcd's request timeout is this plus two election timeouts: a read index
 * not answered by then fails. */
#define NODE_REQUEST_TIMEOUT_MS 5000

/* Read-index requests waiting for raft's answer at once; past it a read is
 * refused ("too many requests"), so a leader that stopped answering cannot
 * make the table grow without bound. */
#define NODE_MAX_READS 65536

struct node_item {
    uint8_t *data; /* a proposal's bytes, or NULL for a read request */
    uint32_t len;
    uint64_t context; /* read requests */
    bool conf;        /* data is an encoded raft_conf_change */
};

/* A read-index request handed to raft and not answered yet. */
struct node_read {
    uint64_t context;
    uint64_t queued_ns;    /* reached the raft loop: the request timeout runs from here */
    uint64_t sent_ns;      /* last handed to raft */
    uint64_t leader, term; /* the leader raft knew then, and its term */
    bool over;             /* answered or failed: dropped at the next tick */
};

/* A committed conf change, copied out of a Ready to apply after advance. */
struct node_conf_entry {
    uint64_t index;
    uint8_t *data;
    uint32_t len;
};

struct server_node {
    uv_loop_t loop;
    uv_timer_t tick;
    uv_async_t wake;
    pthread_t thread;
    log_t *lg;
    raft_t *raft;
    raft_memstore_t *ms;
    wal_t *wal;
    struct node_callbacks cb;
    unsigned heartbeat_ms;

    pthread_mutex_t mu; /* guards the queue and stopping */
    struct node_item *queue;
    size_t n_queued, max_queued;
    bool stopping;
    bool wake_closed; /* under mu: the wakeup handle is closed or closing */

    /* Scratch space reused across Readies, so the hot path does not allocate. */
    struct wal_entry *wal_ents;
    size_t wal_ents_cap;
    struct node_item *batch;
    const uint8_t **prop_data;
    uint32_t *prop_len;

    _Atomic uint64_t leader, term, commit, last_index;
    atomic_bool is_learner;
    _Atomic uint64_t checkpoint_req; /* index the state machine synced; 0: none */
    uint64_t release_at;             /* WAL segments to release once durable */
    uint64_t id;
    bool was_leader;
    peer_transport_t *peer;
    struct peer_event *events[256];
    /* Members a snapshot could not be sent to, reported outside the Ready. */
    uint64_t snap_fail[RAFT_MAX_MEMBERS];
    size_t n_snap_fail;
    node_snap_t *snap; /* NULL: snapshots are not sent */
    char *snap_dir;
    /* Files of MsgSnaps stepped in this turn: removed unless installed. */
    char *received[8];
    size_t n_received;
    /* A leadership transfer asked for: 0 none, NODE_ANY_VOTER, or a member. */
    _Atomic uint64_t transfer_to;
    _Atomic uint32_t n_voters;
    /* Raft thread: configurations after recent conf changes, oldest first;
     * conf_base is the one before the oldest. */
    struct {
        uint64_t index;
        struct raft_conf_state cs;
    } confs[NODE_CONF_HISTORY];
    size_t n_confs;
    struct raft_conf_state conf_base;
    struct node_conf_entry *ccs; /* scratch: conf changes of one Ready */
    size_t n_ccs, cap_ccs;
    /* The leader's view of every member's match index, as of the last
     * Ready (n_prog 0 on a follower). */
    pthread_mutex_t prog_mu;
    uint64_t prog_ids[RAFT_MAX_MEMBERS], prog_match[RAFT_MAX_MEMBERS];
    size_t n_prog;
    /* Raft thread: read-index requests not answered yet, oldest first (raft
     * answers them roughly in that order), in [reads_head, n_reads) with
     * those finished since the last tick (marked over). */
    struct node_read *reads;
    size_t reads_head, n_reads, cap_reads;
    uint64_t read_timeout_ns, read_resend_ns;
};

/* Wakes the raft loop, unless it has closed its wakeup handle (stopping):
 * libuv aborts on a send to a closed handle, and the peer transport's thread
 * and the apply thread may still call in while the member stops. Any thread. */
static void wake(server_node_t *n) {
    pthread_mutex_lock(&n->mu);
    if (!n->wake_closed)
        uv_async_send(&n->wake);
    pthread_mutex_unlock(&n->mu);
}

static void fail_items(server_node_t *n, struct node_item *items, size_t count, int code) {
    for (size_t i = 0; i < count; i++) {
        if (items[i].data) {
            /* A conf change is reported by its context, which carries the
             * caller's request as a proposal's data does. */
            size_t skip = items[i].conf ? NODE_CC_HEADER : 0;
            if (n->cb.propose_failed && items[i].len >= skip)
                n->cb.propose_failed(n->cb.arg, items[i].data + skip, items[i].len - skip, code);
            free(items[i].data);
        } else if (n->cb.read_failed) {
            n->cb.read_failed(n->cb.arg, items[i].context, code);
        }
    }
}

static int enqueue(server_node_t *n, struct node_item it) {
    pthread_mutex_lock(&n->mu);
    int rc = 0;
    if (n->stopping)
        rc = -ESHUTDOWN;
    else if (n->n_queued == n->max_queued)
        rc = -EAGAIN;
    else
        n->queue[n->n_queued++] = it;
    pthread_mutex_unlock(&n->mu);
    if (rc == 0)
        wake(n);
    return rc;
}

int server_node_propose(server_node_t *n, const void *data, size_t len) {
    if (len > UINT32_MAX)
        return -EINVAL;
    if (n->cb.applied && atomic_load(&n->commit) > n->cb.applied(n->cb.arg) + NODE_MAX_APPLY_GAP)
        return -EAGAIN;
    struct node_item it = {.data = malloc(len ? len : 1), .len = (uint32_t)len};
    if (!it.data)
        return -ENOMEM;
    memcpy(it.data, data, len);
    int rc = enqueue(n, it);
    if (rc != 0)
        free(it.data);
    return rc;
}

int server_node_propose_conf_change(server_node_t *n, const struct raft_conf_change *cc) {
    size_t len = raft_conf_change_encode(cc, NULL);
    struct node_item it = {.data = malloc(len), .len = (uint32_t)len, .conf = true};
    if (!it.data)
        return -ENOMEM;
    raft_conf_change_encode(cc, it.data);
    int rc = enqueue(n, it);
    if (rc != 0)
        free(it.data);
    return rc;
}

int server_node_read_index(server_node_t *n, uint64_t context) {
    return enqueue(n, (struct node_item){.context = context});
}

void server_node_status(server_node_t *n, struct node_status *st) {
    st->id = n->id;
    st->leader = atomic_load(&n->leader);
    st->term = atomic_load(&n->term);
    st->commit = atomic_load(&n->commit);
    st->last_index = atomic_load(&n->last_index);
    st->is_leader = st->leader == n->id;
    st->n_voters = atomic_load(&n->n_voters);
    st->is_learner = atomic_load(&n->is_learner);
}

static void publish_status(server_node_t *n) {
    struct raft_status st;
    raft_status(n->raft, &st);
    atomic_store(&n->leader, st.leader);
    atomic_store(&n->term, st.term);
    atomic_store(&n->commit, st.commit);
    atomic_store(&n->last_index, st.last_index);
    atomic_store(&n->is_learner, st.is_learner);
    struct raft_conf_state cs;
    raft_conf_state(n->raft, &cs);
    atomic_store(&n->n_voters, cs.n_voters);
    uint64_t ids[2 * RAFT_MAX_MEMBERS];
    size_t n_ids = 0;
    for (size_t i = 0; i < cs.n_voters; i++)
        ids[n_ids++] = cs.voters[i];
    for (size_t i = 0; i < cs.n_learners; i++)
        ids[n_ids++] = cs.learners[i];
    pthread_mutex_lock(&n->prog_mu);
    n->n_prog = 0;
    for (size_t i = 0; st.role == RAFT_LEADER && i < n_ids && n->n_prog < RAFT_MAX_MEMBERS; i++)
        if (raft_progress_match(n->raft, ids[i], &n->prog_match[n->n_prog]) == 0)
            n->prog_ids[n->n_prog++] = ids[i];
    pthread_mutex_unlock(&n->prog_mu);
}

bool server_node_learner_ready(uint64_t match, uint64_t leader_match) {
    return (double)match >= (double)leader_match * 0.9;
}

int server_node_progress(server_node_t *n, uint64_t id, uint64_t *match, uint64_t *leader_match) {
    pthread_mutex_lock(&n->prog_mu);
    int rc = n->n_prog ? -ENOENT : NODE_ENOTLEADER;
    bool found_self = false;
    for (size_t i = 0; i < n->n_prog; i++) {
        if (n->prog_ids[i] == id) {
            *match = n->prog_match[i];
            rc = 0;
        }
        if (n->prog_ids[i] == n->id) {
            *leader_match = n->prog_match[i];
            found_self = true;
        }
    }
    pthread_mutex_unlock(&n->prog_mu);
    return rc == 0 && !found_self ? -ENOENT : rc;
}

/* Keeps the committed conf changes of a Ready (its memory is raft's until
 * advance), to apply them once it is advanced. */
static int keep_conf_changes(server_node_t *n, const struct raft_ready *rd) {
    n->n_ccs = 0;
    for (size_t i = 0; i < rd->n_committed; i++) {
        const struct raft_entry *e = &rd->committed[i];
        if (e->type != RAFT_ENTRY_CONF_CHANGE)
            continue;
        if (n->n_ccs == n->cap_ccs) {
            size_t cap = n->cap_ccs ? n->cap_ccs * 2 : 4;
            struct node_conf_entry *p = realloc(n->ccs, cap * sizeof(*p));
            if (!p)
                return -ENOMEM;
            n->ccs = p;
            n->cap_ccs = cap;
        }
        struct node_conf_entry *c = &n->ccs[n->n_ccs];
        if (!(c->data = malloc(e->len ? e->len : 1)))
            return -ENOMEM;
        memcpy(c->data, e->data, e->len);
        c->len = e->len;
        c->index = e->index;
        n->n_ccs++;
    }
    return 0;
}

/* Remembers the configuration that the change at `index` made. */
static void remember_conf(server_node_t *n, uint64_t index, const struct raft_conf_state *cs) {
    if (n->n_confs == NODE_CONF_HISTORY) {
        n->conf_base = n->confs[0].cs;
        memmove(&n->confs[0], &n->confs[1], (NODE_CONF_HISTORY - 1) * sizeof(n->confs[0]));
        n->n_confs--;
    }
    n->confs[n->n_confs].index = index;
    n->confs[n->n_confs].cs = *cs;
    n->n_confs++;
}

/* The configuration as of log index `index`. */
static void conf_at(void *arg, uint64_t index, struct raft_conf_state *cs) {
    const server_node_t *n = arg;
    *cs = n->conf_base;
    for (size_t i = 0; i < n->n_confs && n->confs[i].index <= index; i++)
        *cs = n->confs[i].cs;
}

/* Applies the conf changes kept from the Ready just advanced, in order, each
 * unless the caller refuses it. Raft thread, outside a Ready. */
static void apply_conf_changes(server_node_t *n) {
    for (size_t i = 0; i < n->n_ccs; i++) {
        struct node_conf_entry *c = &n->ccs[i];
        struct raft_conf_change cc;
        if (raft_conf_change_decode(c->data, c->len, &cc) == 0 &&
            (!n->cb.conf_change || n->cb.conf_change(n->cb.arg, &cc, c->index))) {
            struct raft_conf_state cs = {0};
            if (raft_apply_conf_change(n->raft, &cc, &cs) == 0)
                remember_conf(n, c->index, &cs);
            LOG_INFO(n->lg, "applied a membership change", LOG_UINT("index", c->index),
                     LOG_INT("type", cc.type), LOG_UINT("member", cc.node_id),
                     LOG_UINT("voters", cs.n_voters), LOG_UINT("learners", cs.n_learners));
        }
        free(c->data);
    }
    n->n_ccs = 0;
}

/* The WAL's queue is full: waits for what is queued to become durable. */
static int wait_wal_room(wal_t *w) {
    struct wal_durable d;
    wal_durable(w, &d);
    return wal_wait(w, d.seq + 1);
}

/* Persists one Ready: entries into the in-memory log raft reads from and into
 * the WAL, then the hard state after them; waits for the fdatasync. */
static int persist(server_node_t *n, const struct raft_ready *rd) {
    if (rd->n_entries > n->wal_ents_cap) {
        size_t cap = rd->n_entries * 2;
        struct wal_entry *we = realloc(n->wal_ents, cap * sizeof(*we));
        if (!we)
            return -ENOMEM;
        n->wal_ents = we;
        n->wal_ents_cap = cap;
    }
    for (size_t i = 0; i < rd->n_entries; i++) {
        const struct raft_entry *e = &rd->entries[i];
        n->wal_ents[i] = (struct wal_entry){
            .index = e->index, .term = e->term, .type = e->type, .len = e->len, .data = e->data};
    }
    int rc;
    if (rd->n_entries && (rc = raft_memstore_append(n->ms, rd->entries, rd->n_entries)) != 0)
        return rc;
    const struct wal_hard_state *hs = NULL;
    struct wal_hard_state whs;
    if (rd->hard_state_changed) {
        raft_memstore_set_hard_state(n->ms, &rd->hard_state);
        whs = (struct wal_hard_state){.term = rd->hard_state.term,
                                      .vote = rd->hard_state.vote,
                                      .commit = rd->hard_state.commit};
        hs = &whs;
    }
    if (!rd->n_entries && !hs)
        return 0;
    uint64_t seq;
    while ((rc = wal_append(n->wal, n->wal_ents, rd->n_entries, hs, &seq)) == -EAGAIN)
        if ((rc = wait_wal_room(n->wal)) != 0)
            return rc;
    if (rc != 0)
        return rc;
    return rd->must_sync || rd->n_entries ? wal_wait(n->wal, seq) : 0;
}

/* Installs the snapshot of a Ready (raft accepted a MsgSnap; its data is
 * the path of the file the transport received, see peer.h): the file gets
 * its durable name, then the WAL's marker (discarding the log it replaces:
 * raft restores only a snapshot that conflicts with its log) is made
 * durable, then the in-memory log restarts after it and the state machine
 * is told to install the file. A failure is fatal, as in persist. */
static int install_snapshot(server_node_t *n, const struct raft_snapshot *snap) {
    char received[4096], kept[4096];
    if (!n->snap_dir || !n->cb.snapshot_install || snap->len >= sizeof(received))
        return -EINVAL;
    memcpy(received, snap->data, snap->len);
    received[snap->len] = '\0';
    int rc = node_snap_keep(n->snap_dir, received, snap->meta.index, kept, sizeof(kept));
    if (rc != 0)
        return rc;
    struct wal_snapshot ws = {.index = snap->meta.index, .term = snap->meta.term};
    uint64_t seq;
    while ((rc = wal_save_snapshot(n->wal, &ws, WAL_SNAPSHOT_DISCARD_LOG, &seq)) == -EAGAIN)
        if ((rc = wait_wal_room(n->wal)) != 0)
            return rc;
    if (rc != 0 || (rc = wal_wait(n->wal, seq)) != 0)
        return rc;
    struct raft_snapshot meta = {.meta = snap->meta};
    if ((rc = raft_memstore_apply_snapshot(n->ms, &meta)) != 0)
        return rc;
    n->release_at = snap->meta.index;
    n->conf_base = snap->meta.conf;
    n->n_confs = 0;
    struct raft_conf_state installed;
    n->cb.snapshot_install(n->cb.arg, kept, snap->meta.index, snap->meta.term, &installed);
    if (installed.n_voters != snap->meta.conf.n_voters ||
        installed.n_learners != snap->meta.conf.n_learners)
        LOG_WARN(n->lg, "the snapshot's configuration and its member set differ",
                 LOG_UINT("index", snap->meta.index), LOG_UINT("voters", snap->meta.conf.n_voters),
                 LOG_UINT("members", installed.n_voters));
    return 0;
}

/* Queues a failed snapshot report for `to` (once). */
static void snap_failed(server_node_t *n, uint64_t to) {
    for (size_t i = 0; i < n->n_snap_fail; i++)
        if (n->snap_fail[i] == to)
            return;
    if (n->n_snap_fail < RAFT_MAX_MEMBERS)
        n->snap_fail[n->n_snap_fail++] = to;
}

/* Removes the received snapshot files of this turn that raft did not take
 * (stale, or it already had the entries): the installed one was renamed. */
static void drop_received(server_node_t *n) {
    for (size_t i = 0; i < n->n_received; i++) {
        if (unlink(n->received[i]) == 0)
            LOG_INFO(n->lg, "dropped a received snapshot raft did not need",
                     LOG_STR("file", n->received[i]));
        free(n->received[i]);
    }
    n->n_received = 0;
}

/* ---- linearizable reads ----------------------------------------------------
 * Raft forgets a read-index request when the leader it went to is lost (the
 * message dies with it, or the leader's queue is reset when it steps down).
 * The raft loop therefore keeps every request until raft answers it, and
 * hands it to raft again when another leader (or the same one in a new term)
 * is known, or when one election timeout passed without an answer (a message
 * the transport dropped). Any answer raft gives is linearizable: the leader
 * that gave it confirmed its leadership after the request reached it, and
 * raft drops answers of an older term. Only the first answer is passed on,
 * so a read resent is never answered twice. A request not answered within
 * etcd's request timeout fails: "no leader" when none is known then, else
 * "request timed out". */

/* Drops the finished requests at the head of the table. */
static void reads_trim(server_node_t *n) {
    while (n->reads_head < n->n_reads && n->reads[n->reads_head].over)
        n->reads_head++;
    if (n->reads_head == n->n_reads)
        n->reads_head = n->n_reads = 0;
}

/* Hands a read to raft, noting who leads. Returns as raft_read_index. */
static int read_send(server_node_t *n, struct node_read *r, const struct raft_status *st,
                     uint64_t now) {
    int rc = raft_read_index(n->raft, r->context);
    if (rc == 0) {
        r->sent_ns = now;
        r->leader = st->leader;
        r->term = st->term;
    }
    return rc;
}

/* A new read: handed to raft and kept until answered, or failed at once
 * (no leader known: the client may ask another member). Raft loop. */
static void read_start(server_node_t *n, uint64_t context, const struct raft_status *st,
                       uint64_t now) {
    int rc = 0;
    if (n->n_reads - n->reads_head >= NODE_MAX_READS) {
        rc = -EAGAIN;
    } else if (n->n_reads == n->cap_reads && n->reads_head > 0) {
        n->n_reads -= n->reads_head;
        memmove(n->reads, n->reads + n->reads_head, n->n_reads * sizeof(*n->reads));
        n->reads_head = 0;
    } else if (n->n_reads == n->cap_reads) {
        size_t cap = n->cap_reads ? n->cap_reads * 2 : 256;
        struct node_read *p = realloc(n->reads, cap * sizeof(*p));
        if (p) {
            n->reads = p;
            n->cap_reads = cap;
        } else {
            rc = -ENOMEM;
        }
    }
    if (rc == 0) {
        struct node_read *r = &n->reads[n->n_reads];
        *r = (struct node_read){.context = context, .queued_ns = now};
        if ((rc = read_send(n, r, st, now)) == 0)
            n->n_reads++;
    }
    if (rc != 0 && n->cb.read_failed)
        n->cb.read_failed(n->cb.arg, context, rc);
}

/* Raft answered the read `context`: whether it was still waiting (false: an
 * answer to a request sent twice came again). */
static bool read_answered(server_node_t *n, uint64_t context) {
    for (size_t i = n->reads_head; i < n->n_reads; i++) {
        struct node_read *r = &n->reads[i];
        if (!r->over && r->context == context) {
            r->over = true;
            reads_trim(n);
            return true;
        }
    }
    return false;
}

/* Every tick: resends the reads whose leader changed or that waited an
 * election timeout, fails those past the request timeout, and drops the
 * finished ones (answers arrive out of order when a request was lost, so
 * the table does not hold more than a tick of them). Raft loop, outside a
 * Ready. */
static void reads_check(server_node_t *n) {
    if (n->reads_head == n->n_reads)
        return;
    struct raft_status st;
    raft_status(n->raft, &st);
    uint64_t now = util_now_mono_ns();
    size_t k = 0;
    for (size_t i = n->reads_head; i < n->n_reads; i++) {
        struct node_read *r = &n->reads[i];
        if (r->over)
            continue;
        if (now - r->queued_ns >= n->read_timeout_ns) {
            if (n->cb.read_failed)
                n->cb.read_failed(n->cb.arg, r->context, st.leader ? -ETIMEDOUT : RAFT_ENOLEADER);
            continue;
        }
        if (st.leader &&
            (st.leader != r->leader || st.term != r->term || now - r->sent_ns >= n->read_resend_ns))
            read_send(n, r, &st, now); /* on failure: tried again next tick */
        n->reads[k++] = *r;
    }
    n->reads_head = 0;
    n->n_reads = k;
}

/* Fails every read still waiting (the member stops). */
static void reads_fail_all(server_node_t *n, int code) {
    for (size_t i = n->reads_head; i < n->n_reads; i++)
        if (!n->reads[i].over && n->cb.read_failed)
            n->cb.read_failed(n->cb.arg, n->reads[i].context, code);
    n->reads_head = n->n_reads = 0;
}

/* Runs every pending Ready to completion. A persistence failure is fatal for
 * the member: raft's promises (votes, acknowledgements) rest on the disk. */
static void drain_ready(server_node_t *n) {
    while (raft_has_ready(n->raft)) {
        struct raft_ready rd;
        if (raft_ready(n->raft, &rd) != 0)
            return; /* out of memory: retried on the next tick */
        int rc = rd.snapshot ? install_snapshot(n, rd.snapshot) : 0;
        if (rc != 0) {
            LOG_ERROR(n->lg, "cannot install the received snapshot; stopping the member",
                      LOG_STR("error", raft_strerror(rc)));
            abort();
        }
        rc = persist(n, &rd);
        if (rc == 0)
            rc = keep_conf_changes(n, &rd);
        if (rc != 0) {
            LOG_ERROR(n->lg, "cannot persist the raft log; stopping the member",
                      LOG_STR("error", raft_strerror(rc)));
            abort();
        }
        /* Messages leave once what they promise is durable (persist above
         * waited for the fdatasync). A snapshot's data is made off this
         * thread; one that cannot start is reported failed (raft probes the
         * member again later). */
        for (size_t i = 0; n->peer && i < rd.n_msgs; i++) {
            if (rd.msgs[i].type != RAFT_MSG_SNAP)
                peer_transport_send(n->peer, &rd.msgs[i]);
            else if (!n->snap || node_snap_send(n->snap, &rd.msgs[i]) != 0)
                snap_failed(n, rd.msgs[i].to);
        }
        if (rd.n_committed && n->cb.committed)
            n->cb.committed(n->cb.arg, rd.committed, rd.n_committed);
        for (size_t i = 0; i < rd.n_reads; i++)
            if (read_answered(n, rd.reads[i].context) && n->cb.read_ready)
                n->cb.read_ready(n->cb.arg, rd.reads[i].context, rd.reads[i].index);
        if (rd.soft_changed) {
            bool leader = rd.soft.role == RAFT_LEADER;
            LOG_INFO(n->lg, leader ? "became leader" : "raft role changed",
                     LOG_UINT("leader", rd.soft.leader), LOG_INT("role", rd.soft.role));
            if (leader != n->was_leader && n->cb.role_changed)
                n->cb.role_changed(n->cb.arg, leader);
            n->was_leader = leader;
        }
        raft_advance(n->raft, &rd);
        apply_conf_changes(n);
        publish_status(n);
    }
    drop_received(n);
}

/* Takes everything queued and feeds it to raft: proposals in one batch. */
/* The state machine is on disk up to `index`: the log before it is only
 * needed by members that lag. The in-memory log keeps NODE_LOG_MARGIN entries
 * behind it for them and forgets the rest; the WAL records a snapshot marker
 * and, once that is durable, releases the segments it covers. */
static void checkpoint(server_node_t *n, uint64_t index) {
    uint64_t term;
    struct raft_conf_state cs;
    if (raft_log_term(n->raft, index, &term) != 0)
        return; /* already compacted past it */
    conf_at(n, index, &cs);
    if (raft_memstore_create_snapshot(n->ms, index, &cs, NULL, 0) != 0)
        return;
    if (index > NODE_LOG_MARGIN)
        raft_memstore_compact(n->ms, index - NODE_LOG_MARGIN);
    struct wal_snapshot snap = {.index = index, .term = term};
    if (wal_save_snapshot(n->wal, &snap, WAL_SNAPSHOT_KEEP_LOG, NULL) == 0)
        n->release_at = index;
    LOG_DEBUG(n->lg, "checkpointed the raft log", LOG_UINT("index", index),
              LOG_UINT("first-kept", index > NODE_LOG_MARGIN ? index - NODE_LOG_MARGIN + 1 : 1));
}

/* Releases the WAL segments a durable snapshot marker covers. */
static void maybe_release(server_node_t *n) {
    if (!n->release_at)
        return;
    struct wal_durable d;
    wal_durable(n->wal, &d);
    if (d.snapshot_index >= n->release_at) {
        wal_release_to(n->wal, n->release_at);
        n->release_at = 0;
    }
}

int server_node_checkpoint(server_node_t *n, uint64_t index) {
    atomic_store(&n->checkpoint_req, index);
    wake(n);
    return 0;
}

/* A received snapshot: its message steps as is (the data is the file's
 * path); the file is kept only if the next Ready installs it. */
static void step_snapshot(server_node_t *n, const struct peer_event *ev) {
    char *path = ev->snap_path ? strdup(ev->snap_path) : NULL;
    if (!path || !n->snap_dir || !n->cb.snapshot_install ||
        n->n_received == sizeof(n->received) / sizeof(char *)) {
        if (ev->snap_path)
            unlink(ev->snap_path);
        free(path);
        return;
    }
    LOG_INFO(n->lg, "received a snapshot", LOG_UINT("from", ev->peer),
             LOG_UINT("index", ev->msg.snapshot ? ev->msg.snapshot->meta.index : 0),
             LOG_UINT("size", ev->snap_size));
    n->received[n->n_received++] = path;
    raft_step(n->raft, &ev->msg);
}

static void snap_status(server_node_t *n, const struct peer_event *ev) {
    if (n->snap)
        node_snap_done(n->snap, ev->peer);
    LOG_INFO(n->lg, ev->failed ? "sending a snapshot failed" : "a snapshot was sent",
             LOG_UINT("to", ev->peer));
    raft_report_snapshot(n->raft, ev->peer, ev->failed);
}

/* Feeds what the other members sent to raft. Raft loop, outside a Ready. */
static void take_peer_events(server_node_t *n) {
    if (!n->peer)
        return;
    for (size_t i = 0; i < n->n_snap_fail; i++)
        raft_report_snapshot(n->raft, n->snap_fail[i], true);
    n->n_snap_fail = 0;
    size_t got;
    size_t max = sizeof(n->events) / sizeof(n->events[0]);
    do {
        got = peer_transport_recv_batch(n->peer, n->events, max);
        for (size_t i = 0; i < got; i++) {
            struct peer_event *ev = n->events[i];
            if (ev->type == PEER_EV_MSG && ev->msg.type == RAFT_MSG_SNAP)
                step_snapshot(n, ev);
            else if (ev->type == PEER_EV_MSG)
                raft_step(n->raft, &ev->msg);
            else if (ev->type == PEER_EV_UNREACHABLE)
                raft_report_unreachable(n->raft, ev->peer);
            else if (ev->type == PEER_EV_SNAP_STATUS)
                snap_status(n, ev);
            peer_event_free(ev);
        }
    } while (got == max);
}

/* Asks raft to hand leadership to `to`, or to any other voter (the first
 * that raft accepts: it refuses one that lags). Raft loop. */
static void transfer(server_node_t *n, uint64_t to) {
    struct raft_status st;
    struct raft_conf_state cs;
    raft_status(n->raft, &st);
    if (st.role != RAFT_LEADER)
        return;
    if (to != NODE_ANY_VOTER) {
        int rc = raft_transfer_leadership(n->raft, to);
        if (rc != 0)
            LOG_WARN(n->lg, "raft refused a leadership transfer", LOG_UINT("to", to),
                     LOG_STR("error", raft_strerror(rc)));
        return;
    }
    raft_conf_state(n->raft, &cs);
    for (size_t i = 0; i < cs.n_voters; i++) {
        if (cs.voters[i] != n->id && raft_transfer_leadership(n->raft, cs.voters[i]) == 0) {
            LOG_INFO(n->lg, "handing leadership over", LOG_UINT("to", cs.voters[i]));
            return;
        }
    }
}

/* A promotion goes ahead only when the learner has 90% of the leader's log
 * (etcd's isLearnerReady), checked where the leader's view of it lives. */
static int check_promotion(server_node_t *n, const struct raft_conf_change *cc) {
    struct raft_conf_state cs;
    raft_conf_state(n->raft, &cs);
    bool learner = false;
    for (size_t i = 0; i < cs.n_learners; i++)
        learner |= cs.learners[i] == cc->node_id;
    if (cc->type != RAFT_CC_ADD_NODE || !learner)
        return 0;
    uint64_t mine, theirs;
    int rc = raft_progress_match(n->raft, n->id, &mine);
    if (rc == RAFT_ENOLEADER)
        return 0; /* forwarded: the caller asked the leader */
    if (rc == 0)
        rc = raft_progress_match(n->raft, cc->node_id, &theirs);
    if (rc != 0)
        return rc;
    return server_node_learner_ready(theirs, mine) ? 0 : NODE_ELEARNERNOTREADY;
}

/* Hands a queued conf change to raft, or reports why it cannot go. */
static void propose_conf(server_node_t *n, struct node_item *it) {
    struct raft_conf_change cc;
    int rc = raft_conf_change_decode(it->data, it->len, &cc);
    if (rc == 0)
        rc = check_promotion(n, &cc);
    if (rc == 0)
        rc = raft_propose_conf_change(n->raft, &cc);
    if (rc != 0)
        fail_items(n, it, 1, rc);
    else
        free(it->data);
}

int server_node_transfer_leadership(server_node_t *n, uint64_t to) {
    atomic_store(&n->transfer_to, to ? to : NODE_ANY_VOTER);
    wake(n);
    return 0;
}

static void on_wake(uv_async_t *a) {
    server_node_t *n = a->data;
    take_peer_events(n);
    uint64_t to = atomic_exchange(&n->transfer_to, 0);
    if (to)
        transfer(n, to);
    uint64_t cp = atomic_exchange(&n->checkpoint_req, 0);
    if (cp)
        checkpoint(n, cp);
    maybe_release(n);
    pthread_mutex_lock(&n->mu);
    size_t count = n->n_queued;
    memcpy(n->batch, n->queue, count * sizeof(*n->batch));
    n->n_queued = 0;
    bool stopping = n->stopping;
    if (stopping)
        n->wake_closed = true; /* closed below, under no other sender */
    pthread_mutex_unlock(&n->mu);
    if (stopping) {
        if (n->snap)
            node_snap_stop(n->snap);
        fail_items(n, n->batch, count, -ESHUTDOWN);
        reads_fail_all(n, -ESHUTDOWN);
        uv_timer_stop(&n->tick);
        uv_close((uv_handle_t *)&n->tick, NULL);
        uv_close((uv_handle_t *)&n->wake, NULL);
        return;
    }
    size_t np = 0;
    struct raft_status st;
    raft_status(n->raft, &st);
    uint64_t now = util_now_mono_ns();
    for (size_t i = 0; i < count; i++) {
        if (!n->batch[i].data) {
            read_start(n, n->batch[i].context, &st, now);
            continue;
        }
        if (n->batch[i].conf) {
            propose_conf(n, &n->batch[i]);
            continue;
        }
        n->prop_data[np] = n->batch[i].data;
        n->prop_len[np] = n->batch[i].len;
        np++;
    }
    int rc = np ? raft_propose(n->raft, n->prop_data, n->prop_len, np) : 0;
    for (size_t i = 0; i < count; i++) {
        if (!n->batch[i].data || n->batch[i].conf)
            continue;
        if (rc != 0)
            fail_items(n, &n->batch[i], 1, rc);
        else
            free(n->batch[i].data);
    }
    drain_ready(n);
}

static void on_tick(uv_timer_t *t) {
    server_node_t *n = t->data;
    maybe_release(n);
    take_peer_events(n);
    reads_check(n);
    raft_tick(n->raft);
    drain_ready(n);
}

/* The peer transport has something for the raft loop. Any thread. */
static void wake_node(void *arg) {
    wake(arg);
}

static void *node_main(void *arg) {
    server_node_t *n = arg;
    drain_ready(n); /* a restarted member may have committed entries to apply */
    uv_run(&n->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* A WAL marker past what the state machine applied is a received snapshot
 * whose installation a crash interrupted: its kept file installs first.
 * Every other leftover of the snapshot directory goes. */
static int recover_snapshot(server_node_t *n, const struct wal_snapshot *ws, uint64_t applied,
                            struct raft_conf_state *cs, struct util_err *err) {
    uint64_t keep = ws->index > applied ? ws->index : 0;
    node_snap_clean(n->snap_dir, keep, n->lg);
    if (!keep)
        return 0;
    char path[4096];
    node_snap_path(n->snap_dir, keep, path, sizeof(path));
    if (access(path, R_OK) != 0 || !n->cb.snapshot_install)
        return util_errorf(err, -ENOENT,
                           "the WAL holds a snapshot at index %llu that the key space (applied "
                           "index %llu) lacks, and its file %s is missing",
                           (unsigned long long)keep, (unsigned long long)applied, path);
    n->cb.snapshot_install(n->cb.arg, path, ws->index, ws->term, cs);
    return 0;
}

#ifdef QUOIN_TESTING
bool server_test_bug(const char *name) {
    const char *bugs = getenv("QUOIN_BUG");
    size_t len = strlen(name);
    for (const char *p = bugs; p && *p; p += strcspn(p, ",")) {
        p += *p == ',';
        if (strncmp(p, name, len) == 0 && (p[len] == ',' || p[len] == '\0'))
            return true;
    }
    return false;
}

/* The chaos harness's disk switches (docs/testing.md): QUOIN_TEST_WAL_FAULT=
 * "<write|fdatasync>:<eio|enospc>:<n>" fails the nth such call of the WAL,
 * QUOIN_TEST_SYNC_MARK names the power-cut mark file. */
static void test_wal_options(struct wal_options *o) {
    const char *f = getenv("QUOIN_TEST_WAL_FAULT");
    char op[16], kind[16];
    unsigned nth;
    if (f && sscanf(f, "%15[a-z]:%15[a-z]:%u", op, kind, &nth) == 3 && nth > 0) {
        o->fault.op = strcmp(op, "write") == 0 ? WAL_FAULT_WRITE : WAL_FAULT_FDATASYNC;
        o->fault.kind = strcmp(kind, "enospc") == 0 ? WAL_FAULT_ENOSPC : WAL_FAULT_EIO;
        o->fault.nth = nth;
    }
    o->test_sync_mark = getenv("QUOIN_TEST_SYNC_MARK");
    o->test_lazy_sync = server_test_bug("ack-before-fsync");
}
#endif

/* Rebuilds the in-memory log from what the WAL recovered. */
static int load_wal(server_node_t *n, const struct node_config *cfg, struct util_err *err) {
    struct wal_options wopts = {.log = n->lg};
#ifdef QUOIN_TESTING
    test_wal_options(&wopts);
#endif
    struct wal_recovery rec;
    int rc = wal_open(cfg->wal_dir, &wopts, &n->wal, &rec, err);
    if (rc != 0)
        return rc;
    /* The configuration is the member store's, which an interrupted
     * installation replaces first. */
    struct raft_conf_state cs = *cfg->conf;
    if (n->snap_dir && (rc = recover_snapshot(n, &rec.snapshot, cfg->applied, &cs, err)) != 0) {
        wal_recovery_free(&rec);
        return rc;
    }
    n->conf_base = cs;
    raft_memstore_bootstrap(n->ms, &cs);
    /* A log that starts after a snapshot marker: the state machine holds
     * everything up to it (it was synced before the marker was written). */
    if (rec.snapshot.index) {
        struct raft_snapshot snap = {
            .meta = {.index = rec.snapshot.index, .term = rec.snapshot.term, .conf = cs}};
        if ((rc = raft_memstore_apply_snapshot(n->ms, &snap)) != 0) {
            wal_recovery_free(&rec);
            return util_errorf(err, rc, "cannot load the snapshot marker at index %llu",
                               (unsigned long long)rec.snapshot.index);
        }
    }
    struct raft_hard_state hs = {
        .term = rec.hard_state.term, .vote = rec.hard_state.vote, .commit = rec.hard_state.commit};
    /* A new member starts in term 1, as etcd's bootstrap does, so its first
     * election makes term 2 and response headers read as etcd's. */
    if (hs.term == 0 && rec.n_entries == 0)
        hs.term = 1;
    raft_memstore_set_hard_state(n->ms, &hs);
    rc = 0;
    if (rec.n_entries) {
        struct raft_entry *ents = calloc(rec.n_entries, sizeof(*ents));
        if (!ents) {
            rc = util_errorf(err, -ENOMEM, "out of memory recovering the WAL");
        } else {
            for (size_t i = 0; i < rec.n_entries; i++)
                ents[i] = (struct raft_entry){.index = rec.entries[i].index,
                                              .term = rec.entries[i].term,
                                              .type = rec.entries[i].type,
                                              .len = rec.entries[i].len,
                                              .data = (uint8_t *)rec.entries[i].data};
            rc = raft_memstore_append(n->ms, ents, rec.n_entries);
            if (rc != 0)
                util_errorf(err, rc, "the WAL in %s holds a log raft cannot load (%s)",
                            cfg->wal_dir, raft_strerror(rc));
            free(ents);
        }
    }
    LOG_INFO(n->lg, "recovered the write-ahead log", LOG_STR("dir", cfg->wal_dir),
             LOG_UINT("entries", rec.n_entries), LOG_UINT("term", hs.term),
             LOG_UINT("commit", hs.commit));
    wal_recovery_free(&rec);
    return rc;
}

/* Closes the WAL (syncing what is queued) and frees everything n holds. */
static void node_free(server_node_t *n) {
    int rc = wal_close(n->wal);
    if (rc != 0)
        LOG_ERROR(n->lg, "closing the WAL failed", LOG_STR("error", strerror(-rc)));
    raft_free(n->raft);
    raft_memstore_free(n->ms);
    node_snap_free(n->snap);
    free(n->snap_dir);
    for (size_t i = 0; i < n->n_received; i++)
        free(n->received[i]);
    free(n->wal_ents);
    free(n->queue);
    free(n->batch);
    free(n->prop_data);
    free(n->prop_len);
    free(n->reads);
    for (size_t i = 0; i < n->n_ccs; i++)
        free(n->ccs[i].data);
    free(n->ccs);
    pthread_mutex_destroy(&n->mu);
    pthread_mutex_destroy(&n->prog_mu);
    free(n);
}

int server_node_start(const struct node_config *cfg, const struct node_callbacks *cb, log_t *lg,
                      server_node_t **out, struct util_err *err) {
    server_node_t *n = calloc(1, sizeof(*n));
    int rc;
    if (!n)
        return util_errorf(err, -ENOMEM, "out of memory");
    n->lg = lg;
    n->cb = *cb;
    n->id = cfg->id;
    n->heartbeat_ms = cfg->heartbeat_ms;
    n->read_resend_ns = (uint64_t)cfg->election_ms * 1000000u;
    n->read_timeout_ns = (NODE_REQUEST_TIMEOUT_MS + 2ull * cfg->election_ms) * 1000000u;
    n->max_queued = cfg->max_queued ? cfg->max_queued : 8192;
    pthread_mutex_init(&n->mu, NULL);
    pthread_mutex_init(&n->prog_mu, NULL);
    n->queue = calloc(n->max_queued, sizeof(*n->queue));
    n->batch = calloc(n->max_queued, sizeof(*n->batch));
    n->prop_data = calloc(n->max_queued, sizeof(*n->prop_data));
    n->prop_len = calloc(n->max_queued, sizeof(*n->prop_len));
    if (cfg->snap_dir)
        n->snap_dir = strdup(cfg->snap_dir);
    if (!n->queue || !n->batch || !n->prop_data || !n->prop_len ||
        (cfg->snap_dir && !n->snap_dir)) {
        rc = util_errorf(err, -ENOMEM, "out of memory");
        goto err;
    }
    if ((rc = raft_memstore_new(&n->ms)) != 0) {
        util_errorf(err, rc, "out of memory");
        goto err;
    }
    if ((rc = load_wal(n, cfg, err)) != 0)
        goto err;
    struct raft_config rcfg = {
        .id = cfg->id,
        .heartbeat_tick = 1,
        .election_tick = cfg->election_ms / cfg->heartbeat_ms,
        .storage = raft_memstore_storage(n->ms),
        .applied = cfg->applied,
        .max_size_per_msg = 1 << 20,
        .max_committed_size_per_ready = 64 << 20,
        .max_inflight_msgs = 256,
        .check_quorum = true,
        .pre_vote = true,
        .seed = cfg->id ^ util_now_mono_ns(),
        .log = lg,
    };
    if ((rc = raft_new(&rcfg, &n->raft)) != 0) {
        util_errorf(err, rc, "cannot start raft: %s", raft_strerror(rc));
        goto err;
    }
    if ((rc = uv_loop_init(&n->loop)) != 0) {
        util_errorf(err, rc, "cannot create the raft loop: %s", uv_strerror(rc));
        goto err;
    }
    uv_timer_init(&n->loop, &n->tick);
    uv_async_init(&n->loop, &n->wake, on_wake);
    n->tick.data = n->wake.data = n;
    uv_timer_start(&n->tick, on_tick, cfg->heartbeat_ms, cfg->heartbeat_ms);
    if (cfg->peer && n->snap_dir && cb->snapshot_write) {
        struct node_snap_config scfg = {.loop = &n->loop,
                                        .raft = n->raft,
                                        .peer = cfg->peer,
                                        .dir = n->snap_dir,
                                        .write = cb->snapshot_write,
                                        .arg = cb->arg,
                                        .conf_at = conf_at,
                                        .conf_arg = n,
                                        .lg = lg};
        if ((rc = node_snap_new(&scfg, &n->snap)) != 0) {
            util_errorf(err, rc, "out of memory");
            goto err_loop;
        }
    }
    if (cfg->peer) {
        struct peer_config pcfg = *cfg->peer_cfg;
        pcfg.notify = wake_node;
        pcfg.notify_arg = n;
        if ((rc = peer_transport_start(cfg->peer, &pcfg, err)) != 0)
            goto err_loop;
        n->peer = cfg->peer;
    }
    /* A lone voter need not wait an election timeout for itself. */
    if (cfg->conf->n_voters == 1 && cfg->conf->voters[0] == cfg->id)
        raft_campaign(n->raft);
    publish_status(n);
    /* Set before the thread starts: its first Ready may already reach the
     * apply thread, whose hooks use the handle. */
    *out = n;
    if ((rc = pthread_create(&n->thread, NULL, node_main, n)) != 0) {
        *out = NULL;
        util_errorf(err, -rc, "cannot start the raft thread: %s", strerror(rc));
        rc = -rc;
        goto err_loop;
    }
    return 0;
err_loop:
    uv_close((uv_handle_t *)&n->tick, NULL);
    uv_close((uv_handle_t *)&n->wake, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
err:
    node_free(n);
    return rc;
}

void server_node_stop(server_node_t *n) {
    if (!n)
        return;
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    pthread_mutex_unlock(&n->mu);
    uv_async_send(&n->wake);
    pthread_join(n->thread, NULL);
    uv_loop_close(&n->loop);
    /* Anything queued after the loop took its last batch. */
    fail_items(n, n->queue, n->n_queued, -ESHUTDOWN);
    n->n_queued = 0;
    int rc = wal_close(n->wal);
    n->wal = NULL;
    if (rc != 0)
        LOG_ERROR(n->lg, "closing the WAL failed", LOG_STR("error", strerror(-rc)));
}

void server_node_free(server_node_t *n) {
    if (n)
        node_free(n);
}
