/* v3_move_leader: etcd's Maintenance.MoveLeader (`etcdctl move-leader`). Only
 * the leader takes it; it asks raft to transfer leadership (TimeoutNow to a
 * caught-up target) and answers once the target leads, polling every
 * heartbeat as etcd does, asking raft again every election timeout (raft
 * abandons a transfer that does not finish in one), until the client's
 * deadline — or etcd's request timeout when the client set none. */
#include <errno.h>
#include <stdlib.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

struct move_leader {
    struct server *s;
    api_call_t *call;
    uint64_t target;
    uint64_t deadline, next_ask; /* monotonic ns */
    uv_timer_t timer;
};

static void move_closed(uv_handle_t *h) {
    free(h->data);
}

static void move_end(struct move_leader *m, int code) {
    if (code == 0) {
        /* etcd's answer carries no header. */
        Etcdserverpb__MoveLeaderResponse r = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
        api_call_reply(m->call, &r.base);
        LOG_INFO(m->s->lg, "leadership transfer finished", LOG_UINT("new-leader", m->target));
    } else {
        v3_fail(m->call, code);
    }
    uv_close((uv_handle_t *)&m->timer, move_closed);
}

static void on_move_tick(uv_timer_t *t) {
    struct move_leader *m = t->data;
    struct server *s = m->s;
    struct node_status st;
    server_node_status(s->node, &st);
    uint64_t now = util_now_mono_ns();
    if (st.leader == m->target)
        move_end(m, 0);
    else if (s->stopping)
        move_end(m, -ESHUTDOWN);
    else if (api_call_is_cancelled(m->call))
        move_end(m, -ECANCELED);
    else if (now >= m->deadline)
        move_end(m, V3_ETRANSFERTIMEOUT);
    else if (now >= m->next_ask) {
        server_node_transfer_leadership(s->node, m->target);
        m->next_ask = now + (uint64_t)s->cfg->election_ms * 1000000u;
    }
}

/* Whether id is a voting member (etcd refuses a learner as transferee), as
 * the member store says now. */
static bool is_voter(const struct server *s, uint64_t id) {
    struct member_set set;
    uint64_t cluster_id;
    if (members_store_read(s->db, s->members_dbi, &set, &cluster_id, NULL) != 0)
        return false;
    const struct member *m = members_find(&set, id);
    bool voter = m && !m->learner;
    members_free(&set);
    return voter;
}

void v3_move_leader(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                    void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    uint64_t target = ((Etcdserverpb__MoveLeaderRequest *)msg)->targetid;
    protobuf_c_message_free_unpacked(msg, NULL);
    struct node_status st;
    server_node_status(s->node, &st);
    if (!st.is_leader) {
        v3_fail(call, V3_ENOTLEADER);
        return;
    }
    if (!is_voter(s, target)) {
        v3_fail(call, V3_EBADTRANSFEREE);
        return;
    }
    if (target == s->member_id) {
        /* etcd's wait for "the leader is the target" holds at once. */
        Etcdserverpb__MoveLeaderResponse r = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
        api_call_reply(call, &r.base);
        return;
    }
    struct move_leader *m = calloc(1, sizeof(*m));
    if (!m) {
        v3_fail(call, -ENOMEM);
        return;
    }
    uint64_t now = util_now_mono_ns(), client = api_call_deadline_ns(call);
    *m = (struct move_leader){
        .s = s,
        .call = call,
        .target = target,
        .deadline = client ? client : now + (5000 + 2 * (uint64_t)s->cfg->election_ms) * 1000000u,
        .next_ask = now,
    };
    LOG_INFO(s->lg, "leadership transfer starting", LOG_UINT("transferee", target));
    uv_timer_init(&s->loop, &m->timer);
    m->timer.data = m;
    uv_timer_start(&m->timer, on_move_tick, 0, s->cfg->heartbeat_ms ? s->cfg->heartbeat_ms : 100);
}
