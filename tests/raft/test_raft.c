/* Behaviours of the raft core a caller relies on, each driven step by step on
 * a small in-process cluster with a FIFO network that a test may cut. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"

#define BIG 0xA5A5000000000000ull /* member ids are etcd-style uint64 */

struct tmsg {
    struct raft_msg m;
    struct raft_entry ents[64];
    uint8_t data[64][128];
    struct raft_snapshot snap;
    uint8_t snapdata[16];
};

struct tnode {
    raft_t *r;
    raft_memstore_t *ms;
    uint64_t applied;
    unsigned n_applied_normal;
    uint64_t read_index[16], read_ctx[16];
    unsigned n_reads;
};

struct cluster {
    struct tnode n[16];
    unsigned nodes;
    struct tmsg *q;
    size_t nq, capq;
    bool cut[16];              /* node cut off from everyone */
    unsigned sent[20];         /* messages sent, by type */
    unsigned rejections;       /* APP_RESP rejections sent */
    uint64_t max_size_per_msg; /* for the batching test */
    size_t max_entries_seen;
};

static uint64_t id_of(unsigned i) {
    return BIG + i;
}

static unsigned idx_of(uint64_t id) {
    return (unsigned)(id - BIG);
}

static void start(struct cluster *c, unsigned i) {
    struct raft_config cfg = {.id = id_of(i),
                              .election_tick = 10,
                              .heartbeat_tick = 1,
                              .storage = raft_memstore_storage(c->n[i].ms),
                              .max_size_per_msg = c->max_size_per_msg,
                              .max_inflight_msgs = 4,
                              .check_quorum = true,
                              .pre_vote = true,
                              .seed = i * 7919u};
    struct raft_storage st = cfg.storage;
    struct raft_snapshot snap;
    st.ops->snapshot(st.ctx, &snap);
    cfg.applied = snap.meta.index;
    c->n[i].applied = snap.meta.index;
    assert_int_equal(raft_new(&cfg, &c->n[i].r), 0);
}

static void setup(struct cluster *c, unsigned nodes, uint64_t max_size) {
    memset(c, 0, sizeof(*c));
    c->nodes = nodes;
    c->max_size_per_msg = max_size;
    struct raft_conf_state cs = {.n_voters = nodes};
    for (unsigned i = 1; i <= nodes; i++)
        cs.voters[i - 1] = id_of(i);
    for (unsigned i = 1; i <= nodes; i++) {
        assert_int_equal(raft_memstore_new(&c->n[i].ms), 0);
        raft_memstore_bootstrap(c->n[i].ms, &cs);
        start(c, i);
    }
}

static void teardown(struct cluster *c) {
    for (unsigned i = 1; i <= c->nodes; i++) {
        raft_free(c->n[i].r);
        raft_memstore_free(c->n[i].ms);
    }
    free(c->q);
}

static void enqueue(struct cluster *c, const struct raft_msg *m) {
    if (c->nq == c->capq) {
        c->capq = c->capq ? c->capq * 2 : 64;
        c->q = realloc(c->q, c->capq * sizeof(*c->q));
        assert_non_null(c->q);
    }
    struct tmsg *t = &c->q[c->nq++];
    memset(t, 0, sizeof(*t));
    t->m = *m;
    assert_true(m->n_entries <= 64);
    for (size_t k = 0; k < m->n_entries; k++) {
        t->ents[k] = m->entries[k];
        assert_true(m->entries[k].len <= 128);
        if (m->entries[k].len)
            memcpy(t->data[k], m->entries[k].data, m->entries[k].len);
        t->ents[k].data = t->data[k];
    }
    if (m->snapshot) {
        t->snap = *m->snapshot;
        assert_true(m->snapshot->len <= 16);
        if (m->snapshot->len)
            memcpy(t->snapdata, m->snapshot->data, m->snapshot->len);
        t->snap.data = t->snapdata;
    }
    if (m->n_entries > c->max_entries_seen)
        c->max_entries_seen = m->n_entries;
}

/* One Ready of node i, in the contract's order. */
static bool handle(struct cluster *c, unsigned i) {
    struct tnode *n = &c->n[i];
    if (!raft_has_ready(n->r))
        return false;
    struct raft_ready rd;
    assert_int_equal(raft_ready(n->r, &rd), 0);
    if (rd.snapshot) {
        assert_int_equal(raft_memstore_apply_snapshot(n->ms, rd.snapshot), 0);
        n->applied = rd.snapshot->meta.index;
    }
    if (rd.n_entries)
        assert_int_equal(raft_memstore_append(n->ms, rd.entries, rd.n_entries), 0);
    if (rd.hard_state_changed)
        raft_memstore_set_hard_state(n->ms, &rd.hard_state);
    for (size_t k = 0; k < rd.n_msgs; k++) {
        c->sent[rd.msgs[k].type]++;
        c->rejections += rd.msgs[k].type == RAFT_MSG_APP_RESP && rd.msgs[k].reject;
        if (c->max_size_per_msg && rd.msgs[k].type == RAFT_MSG_APP && rd.msgs[k].n_entries > 1) {
            uint64_t bytes = 0;
            for (size_t e = 0; e < rd.msgs[k].n_entries; e++)
                bytes += rd.msgs[k].entries[e].len;
            assert_true(bytes <= c->max_size_per_msg);
        }
        enqueue(c, &rd.msgs[k]);
    }
    struct raft_conf_change ccs[4];
    unsigned ncc = 0;
    for (size_t k = 0; k < rd.n_committed; k++) {
        const struct raft_entry *e = &rd.committed[k];
        assert_int_equal(e->index, n->applied + 1);
        n->applied = e->index;
        if (e->type == RAFT_ENTRY_CONF_CHANGE) {
            assert_int_equal(raft_conf_change_decode(e->data, e->len, &ccs[ncc++]), 0);
        } else if (e->len) {
            n->n_applied_normal++;
        }
    }
    for (size_t k = 0; k < rd.n_reads; k++) {
        n->read_index[n->n_reads] = rd.reads[k].index;
        n->read_ctx[n->n_reads++] = rd.reads[k].context;
    }
    assert_int_equal(raft_advance(n->r, &rd), 0);
    for (unsigned k = 0; k < ncc; k++)
        assert_int_equal(raft_apply_conf_change(n->r, &ccs[k], NULL), 0);
    return true;
}

/* Delivers everything queued (FIFO) and handles Readys until quiet. */
static void pump(struct cluster *c) {
    for (int guard = 0; guard < 10000; guard++) {
        bool busy = false;
        for (unsigned i = 1; i <= c->nodes; i++)
            while (c->n[i].r && handle(c, i))
                busy = true;
        if (c->nq) {
            struct tmsg *q = c->q;
            size_t nq = c->nq;
            c->q = NULL;
            c->nq = c->capq = 0;
            for (size_t k = 0; k < nq; k++) {
                struct raft_msg *m = &q[k].m;
                unsigned to = idx_of(m->to), from = idx_of(m->from);
                if (to > c->nodes || c->cut[to] || c->cut[from] || !c->n[to].r)
                    continue; /* cut off, or a member that was never started */
                m->entries = q[k].ents;
                if (m->snapshot)
                    m->snapshot = &q[k].snap;
                assert_int_equal(raft_step(c->n[to].r, m), 0);
            }
            free(q);
            busy = true;
        }
        if (!busy)
            return;
    }
    fail_msg("cluster did not settle");
}

static void tick_all(struct cluster *c, unsigned ticks) {
    for (unsigned t = 0; t < ticks; t++) {
        for (unsigned i = 1; i <= c->nodes; i++)
            if (c->n[i].r)
                assert_int_equal(raft_tick(c->n[i].r), 0);
        pump(c);
    }
}

static struct raft_status status(struct cluster *c, unsigned i) {
    struct raft_status st;
    raft_status(c->n[i].r, &st);
    return st;
}

static void elect(struct cluster *c, unsigned i) {
    assert_int_equal(raft_campaign(c->n[i].r), 0);
    pump(c);
    assert_int_equal(status(c, i).role, RAFT_LEADER);
}

static int propose(struct cluster *c, unsigned i, const char *text) {
    const uint8_t *d = (const uint8_t *)text;
    uint32_t len = (uint32_t)strlen(text);
    return raft_propose(c->n[i].r, &d, &len, 1);
}

static void test_no_leader_fails_at_once(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    assert_int_equal(propose(&c, 2, "x"), RAFT_ENOLEADER);
    assert_int_equal(raft_read_index(c.n[2].r, 1), RAFT_ENOLEADER);
    assert_int_equal(raft_transfer_leadership(c.n[2].r, id_of(1)), RAFT_ENOLEADER);
    assert_string_equal(raft_strerror(RAFT_ENOLEADER), "raft: no leader");
    teardown(&c);
}

static void test_follower_proposal_is_forwarded_and_applied_everywhere(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    for (int k = 0; k < 10; k++)
        assert_int_equal(propose(&c, 3, "hello"), 0);
    pump(&c);
    tick_all(&c, 2); /* heartbeats carry the final commit index */
    for (unsigned i = 1; i <= 3; i++) {
        assert_int_equal(c.n[i].n_applied_normal, 10);
        assert_int_equal(c.n[i].applied, status(&c, 1).commit);
    }
    assert_true(c.sent[RAFT_MSG_PROP] >= 1);
    teardown(&c);
}

static void test_read_index_is_batched_into_one_round(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    unsigned hb = c.sent[RAFT_MSG_HEARTBEAT];
    /* Five reads queued before anything is delivered: one round starts. */
    for (uint64_t k = 1; k <= 5; k++)
        assert_int_equal(raft_read_index(c.n[1].r, k), 0);
    assert_int_equal(raft_read_index(c.n[2].r, 99), 0); /* a follower's read */
    pump(&c);
    assert_int_equal(c.n[1].n_reads, 5);
    assert_int_equal(c.n[2].n_reads, 1);
    assert_int_equal(c.n[2].read_ctx[0], 99);
    uint64_t commit = status(&c, 1).commit;
    for (unsigned k = 0; k < 5; k++) {
        assert_int_equal(c.n[1].read_ctx[k], k + 1);
        assert_int_equal(c.n[1].read_index[k], commit);
    }
    /* The leader's five reads and the forwarded one used at most two rounds
     * (the follower's request arrived while the first was in flight). */
    assert_true(c.sent[RAFT_MSG_HEARTBEAT] - hb <= 4);
    teardown(&c);
}

static void test_read_index_needs_a_quorum(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    c.cut[2] = c.cut[3] = true;
    assert_int_equal(raft_read_index(c.n[1].r, 7), 0);
    pump(&c);
    assert_int_equal(c.n[1].n_reads, 0); /* no answer without confirmation */
    c.cut[2] = false;
    tick_all(&c, 1);
    assert_int_equal(c.n[1].n_reads, 1);
    teardown(&c);
}

static void test_membership_one_change_at_a_time(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    struct raft_conf_change cc = {.type = RAFT_CC_REMOVE_NODE, .node_id = id_of(3)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc), 0);
    struct raft_conf_change cc2 = {.type = RAFT_CC_ADD_LEARNER, .node_id = id_of(9)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc2), RAFT_ECONFPENDING);
    pump(&c);
    tick_all(&c, 2);
    struct raft_conf_state cs;
    raft_conf_state(c.n[1].r, &cs);
    assert_int_equal(cs.n_voters, 2);
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc2), 0);
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc2), RAFT_ECONFPENDING);
    teardown(&c);
}

static void test_transfer_refused_to_learner_and_done_to_voter(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    struct raft_conf_change cc = {.type = RAFT_CC_ADD_LEARNER, .node_id = id_of(9)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc), 0);
    pump(&c);
    tick_all(&c, 2);
    assert_int_equal(raft_transfer_leadership(c.n[1].r, id_of(9)), RAFT_ETRANSFERTARGET);
    assert_int_equal(raft_transfer_leadership(c.n[1].r, id_of(1)), RAFT_ETRANSFERTARGET);
    assert_int_equal(raft_transfer_leadership(c.n[1].r, 12345), RAFT_ETRANSFERTARGET);
    assert_int_equal(raft_transfer_leadership(c.n[1].r, id_of(3)), 0);
    pump(&c);
    assert_int_equal(status(&c, 3).role, RAFT_LEADER);
    assert_int_equal(status(&c, 1).role, RAFT_FOLLOWER);
    teardown(&c);
}

static void test_check_quorum_steps_down_and_prevote_keeps_term(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    uint64_t term = status(&c, 1).term;
    c.cut[1] = true;
    tick_all(&c, 25);
    assert_int_not_equal(status(&c, 1).role, RAFT_LEADER); /* lost its quorum */
    /* The isolated node keeps asking (pre-vote) without raising its term, so
     * it does not depose the new leader when it comes back. */
    tick_all(&c, 60);
    assert_int_equal(status(&c, 1).term, term);
    c.cut[1] = false;
    tick_all(&c, 5);
    unsigned leaders = 0;
    for (unsigned i = 1; i <= 3; i++)
        leaders += status(&c, i).role == RAFT_LEADER;
    assert_int_equal(leaders, 1);
    assert_int_equal(status(&c, 1).role, RAFT_FOLLOWER);
    teardown(&c);
}

static void test_restart_from_hard_state_and_log(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    for (int k = 0; k < 5; k++)
        assert_int_equal(propose(&c, 1, "durable"), 0);
    pump(&c);
    tick_all(&c, 2);
    struct raft_status before = status(&c, 2);
    raft_free(c.n[2].r);
    start(&c, 2);
    struct raft_status after = status(&c, 2);
    assert_int_equal(after.term, before.term);
    assert_int_equal(after.vote, before.vote);
    assert_int_equal(after.commit, before.commit);
    assert_int_equal(after.last_index, before.last_index);
    c.n[2].n_applied_normal = 0;
    pump(&c); /* replays what the state machine must re-apply */
    assert_int_equal(c.n[2].n_applied_normal, 5);
    teardown(&c);
}

static void test_batches_are_size_bounded(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 250);
    elect(&c, 1);
    pump(&c);
    c.cut[3] = true;
    uint8_t buf[100];
    memset(buf, 'b', sizeof(buf));
    const uint8_t *d[20];
    uint32_t len[20];
    for (int k = 0; k < 20; k++) {
        d[k] = buf;
        len[k] = 100;
    }
    assert_int_equal(raft_propose(c.n[1].r, d, len, 20), 0);
    pump(&c);
    c.cut[3] = false;
    tick_all(&c, 10); /* node 3 catches up through bounded batches */
    assert_int_equal(c.n[3].n_applied_normal, 20);
    assert_true(c.max_entries_seen <= 2);
    teardown(&c);
}

static void test_lagging_follower_gets_snapshot(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    c.cut[3] = true;
    for (int k = 0; k < 8; k++)
        assert_int_equal(propose(&c, 1, "compact me"), 0);
    pump(&c);
    tick_all(&c, 1);
    /* The leader snapshots and compacts past what node 3 has. */
    struct raft_conf_state cs;
    raft_conf_state(c.n[1].r, &cs);
    uint64_t a = c.n[1].applied;
    uint8_t data[16] = "state";
    assert_int_equal(raft_memstore_create_snapshot(c.n[1].ms, a, &cs, data, sizeof(data)), 0);
    assert_int_equal(raft_memstore_compact(c.n[1].ms, a), 0);
    c.cut[3] = false;
    unsigned snaps = c.sent[RAFT_MSG_SNAP];
    tick_all(&c, 5);
    raft_report_snapshot(c.n[1].r, id_of(3), false);
    tick_all(&c, 5);
    assert_true(c.sent[RAFT_MSG_SNAP] > snaps);
    assert_true(c.n[3].applied >= a);
    assert_int_equal(status(&c, 3).commit, status(&c, 1).commit);
    teardown(&c);
}

static void test_conflict_hint_skips_a_whole_term(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    /* Node 1 appends 40 entries nobody else gets, then loses leadership. */
    c.cut[1] = true;
    for (int k = 0; k < 40; k++)
        assert_int_equal(propose(&c, 1, "divergent"), 0);
    pump(&c);
    tick_all(&c, 30); /* nodes 2 and 3 elect one of them */
    unsigned l = status(&c, 2).role == RAFT_LEADER ? 2 : 3;
    assert_int_equal(status(&c, l).role, RAFT_LEADER);
    for (int k = 0; k < 3; k++)
        assert_int_equal(propose(&c, l, "winner"), 0);
    pump(&c);
    c.rejections = 0;
    c.cut[1] = false;
    tick_all(&c, 3);
    assert_int_equal(status(&c, 1).leader, id_of(l));
    assert_int_equal(status(&c, 1).last_index, status(&c, l).last_index);
    assert_int_equal(status(&c, 1).commit, status(&c, l).commit);
    /* One hint jumps over the diverging term: far fewer than 40 round trips. */
    assert_true(c.rejections <= 3);
    teardown(&c);
}

static void test_leader_removing_itself_hands_over(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    struct raft_conf_change cc = {.type = RAFT_CC_REMOVE_NODE, .node_id = id_of(1)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc), 0);
    pump(&c);
    /* Well within an election timeout: the target campaigns as soon as it
     * has applied the removal. */
    tick_all(&c, 3);
    assert_int_not_equal(status(&c, 1).role, RAFT_LEADER);
    unsigned leader = status(&c, 2).role == RAFT_LEADER ? 2 : 3;
    assert_int_equal(status(&c, leader).role, RAFT_LEADER);
    struct raft_conf_state cs;
    raft_conf_state(c.n[leader].r, &cs);
    assert_int_equal(cs.n_voters, 2);
    assert_int_equal(propose(&c, leader, "after"), 0);
    pump(&c);
    tick_all(&c, 2);
    assert_int_equal(c.n[5 - leader].n_applied_normal, 1);
    teardown(&c);
}

static void test_proposals_refused_during_transfer_then_resume(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    c.cut[3] = true;
    assert_int_equal(propose(&c, 1, "x"), 0);
    pump(&c);
    assert_int_equal(raft_transfer_leadership(c.n[1].r, id_of(3)), 0);
    assert_int_equal(propose(&c, 1, "y"), RAFT_EDROPPED);
    tick_all(&c, 25); /* node 3 never catches up: the transfer is abandoned */
    assert_int_equal(status(&c, 1).role, RAFT_LEADER);
    assert_int_equal(status(&c, 1).lead_transferee, 0);
    assert_int_equal(propose(&c, 1, "z"), 0);
    teardown(&c);
}

/* An update changes nothing in raft but is ordered like any change; the
 * leader reports its view of each member's match index, a follower none. */
static void test_update_is_ordered_and_progress_is_the_leaders(void **state) {
    (void)state;
    struct cluster c;
    setup(&c, 3, 0);
    elect(&c, 1);
    pump(&c);
    struct raft_conf_change up = {.type = RAFT_CC_UPDATE_NODE, .node_id = id_of(2)};
    struct raft_conf_change gone = {.type = RAFT_CC_UPDATE_NODE, .node_id = id_of(9)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &gone), -EINVAL);
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &up), 0);
    struct raft_conf_change cc = {.type = RAFT_CC_ADD_LEARNER, .node_id = id_of(9)};
    assert_int_equal(raft_propose_conf_change(c.n[1].r, &cc), RAFT_ECONFPENDING);
    pump(&c);
    tick_all(&c, 2);
    struct raft_conf_state cs;
    raft_conf_state(c.n[1].r, &cs);
    assert_int_equal(cs.n_voters, 3);
    assert_int_equal(cs.n_learners, 0);
    uint64_t mine, theirs;
    assert_int_equal(raft_progress_match(c.n[1].r, id_of(1), &mine), 0);
    assert_int_equal(raft_progress_match(c.n[1].r, id_of(2), &theirs), 0);
    assert_int_equal(mine, status(&c, 1).last_index);
    assert_int_equal(theirs, mine);
    assert_int_equal(raft_progress_match(c.n[1].r, id_of(9), &theirs), -ENOENT);
    assert_int_equal(raft_progress_match(c.n[2].r, id_of(1), &theirs), RAFT_ENOLEADER);
    teardown(&c);
}

static void test_conf_change_codec(void **state) {
    (void)state;
    uint8_t ctx[3] = {1, 2, 3};
    struct raft_conf_change in = {.type = RAFT_CC_ADD_LEARNER,
                                  .node_id = 0x8e9e05c52164694dull,
                                  .context = ctx,
                                  .context_len = 3};
    uint8_t buf[32];
    size_t n = raft_conf_change_encode(&in, buf);
    assert_int_equal(n, raft_conf_change_encode(&in, NULL));
    struct raft_conf_change out;
    assert_int_equal(raft_conf_change_decode(buf, n, &out), 0);
    assert_int_equal(out.type, in.type);
    assert_true(out.node_id == in.node_id);
    assert_memory_equal(out.context, ctx, 3);
    assert_int_equal(raft_conf_change_decode(buf, 5, &out), -EINVAL);
    buf[0] = 7;
    assert_int_equal(raft_conf_change_decode(buf, n, &out), -EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_leader_fails_at_once),
        cmocka_unit_test(test_follower_proposal_is_forwarded_and_applied_everywhere),
        cmocka_unit_test(test_read_index_is_batched_into_one_round),
        cmocka_unit_test(test_read_index_needs_a_quorum),
        cmocka_unit_test(test_membership_one_change_at_a_time),
        cmocka_unit_test(test_transfer_refused_to_learner_and_done_to_voter),
        cmocka_unit_test(test_check_quorum_steps_down_and_prevote_keeps_term),
        cmocka_unit_test(test_restart_from_hard_state_and_log),
        cmocka_unit_test(test_batches_are_size_bounded),
        cmocka_unit_test(test_lagging_follower_gets_snapshot),
        cmocka_unit_test(test_conflict_hint_skips_a_whole_term),
        cmocka_unit_test(test_leader_removing_itself_hands_over),
        cmocka_unit_test(test_proposals_refused_during_transfer_then_resume),
        cmocka_unit_test(test_conf_change_codec),
        cmocka_unit_test(test_update_is_ordered_and_progress_is_the_leaders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
