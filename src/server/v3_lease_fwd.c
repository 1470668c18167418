/* v3_lease_fwd: lease renewals and TimeToLive on any member. Only the leader
 * holds the leases' clocks (docs/lease.md), so a member that is not the leader
 * forwards each request to the leader over the peer transport
 * (peer_transport_call) and answers its client with the leader's answer — what
 * etcd does over its peer HTTP handler (/leases, /leases/internal). The
 * leader answers from its lease layer; a "not found" there is confirmed after
 * a read index so that a lease this member has not applied yet (a new leader,
 * or a grant answered by a faster follower) is not reported gone.
 *
 * A client's request is retried — another leader, a leader that was
 * changing — until etcd's request timeout (5 s + 2 election timeouts); it
 * then fails with "etcdserver: no leader" if no leader is known at that
 * moment, else "etcdserver: request timed out". Everything here runs on the io loop; what
 * finishes on another thread (the transport's answer, an applied checkpoint,
 * a read index) is posted back to it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

/* The leader's answer to a forwarded request (the RESP frame's status). */
enum fwd_status {
    FWD_OK = 0,        /* body: the LeaseKeepAliveResponse / LeaseTimeToLiveResponse */
    FWD_NOT_FOUND = 1, /* etcd's ErrLeaseNotFound */
    FWD_NOT_LEADER = 2,
    FWD_RETRY = 3, /* the leader could not answer now (a lost checkpoint, no memory) */
};

/* A try that waits longer than this is abandoned and made again (a leader
 * that vanished without closing its connection). */
#define FWD_ATTEMPT_MS 1000
/* Pause before trying again (no leader yet, or it was changing). */
#define FWD_RETRY_MS 100

struct lease_req {
    struct server *s;
    enum v3_lease_op op;
    uint8_t *req; /* the LeaseKeepAliveRequest / LeaseTimeToLiveRequest */
    size_t req_len;
    /* Who asked: a client of this member (done), or another member (from). */
    v3_lease_done_fn done;
    void *ctx;
    uint64_t from, call_id;
    uint64_t deadline; /* monotonic ns */
    bool rechecked;    /* "not found" was looked up again after a read index */
    /* What the request waits for on another thread: a checkpoint (writes
     * table) or a read index (reads table), cancelled at the deadline. */
    server_wait_t *wait_table;
    uint64_t wait_id;
    bool wait_checkpoint; /* else a read index */
    uv_timer_t timer;     /* retry pause, or the deadline of a wait */
    bool timer_ready;
    /* An outcome from another thread, posted to the io loop. */
    int rc;
    uint8_t status;
    uint8_t *body;
    size_t len;
    int64_t lease_id, ttl; /* renew: what to answer once the checkpoint applied */
};

static void attempt(struct lease_req *r);
static void run_here(struct lease_req *r);

static void req_release(struct lease_req *r) {
    free(r->req);
    free(r->body);
    free(r);
}

static void req_closed(uv_handle_t *h) {
    req_release(h->data);
}

static void req_free(struct lease_req *r) {
    if (r->timer_ready)
        uv_close((uv_handle_t *)&r->timer, req_closed);
    else
        req_release(r);
}

static void finish(struct lease_req *r, int code, const uint8_t *body, size_t len) {
    r->done(r->ctx, code, body, len);
    req_free(r);
}

static void timer_start(struct lease_req *r, uv_timer_cb cb, uint64_t ms) {
    if (!r->timer_ready) {
        uv_timer_init(&r->s->loop, &r->timer);
        r->timer.data = r;
        r->timer_ready = true;
    }
    uv_timer_start(&r->timer, cb, ms, 0);
}

static void on_retry(uv_timer_t *t) {
    attempt(t->data);
}

/* A client's request could not be answered now: try again after a pause,
 * or give up at the deadline — as etcd, with "no leader" when none is known
 * then, else "request timed out". */
static void retry_later(struct lease_req *r) {
    if (r->s->stopping) {
        finish(r, -ESHUTDOWN, NULL, 0);
    } else if (util_now_mono_ns() >= r->deadline) {
        struct node_status st;
        server_node_status(r->s->node, &st);
        finish(r, st.leader ? V3_ETIMEOUT : RAFT_ENOLEADER, NULL, 0);
    } else {
        timer_start(r, on_retry, FWD_RETRY_MS);
    }
}

/* The leader's part is done (here, for a client of this member or for
 * another member): answer whoever asked. io loop. */
static void outcome(struct lease_req *r, enum fwd_status st, const uint8_t *body, size_t len) {
    struct server *s = r->s;
    if (r->from) {
        if (!s->stopping && s->peer && util_now_mono_ns() < r->deadline)
            peer_transport_reply(s->peer, r->from, r->call_id, (uint8_t)st, body, len);
        req_free(r);
    } else if (st == FWD_OK) {
        finish(r, 0, body, len);
    } else if (st == FWD_NOT_FOUND) {
        finish(r, LEASE_ENOTFOUND, NULL, 0);
    } else {
        retry_later(r);
    }
}

/* ---- waiting on another thread --------------------------------------------- */

/* Posted to the io loop by a waiter. */
static void waited(void *ctx) {
    struct lease_req *r = ctx;
    if (r->timer_ready)
        uv_timer_stop(&r->timer);
    r->wait_table = NULL;
    if (r->rc != 0) {
        outcome(r, FWD_RETRY, NULL, 0);
    } else if (r->wait_checkpoint) {
        /* The checkpoint covering the renewal is applied: answer it. */
        Etcdserverpb__LeaseKeepAliveResponse a = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
        a.id = r->lease_id;
        a.ttl = r->ttl;
        uint8_t buf[32];
        outcome(r, FWD_OK, buf, etcdserverpb__lease_keep_alive_response__pack(&a, buf));
    } else {
        run_here(r); /* read index applied: look the lease up again */
    }
}

/* A waiter: result is a struct v3_applied (checkpoint) or read_outcome (read
 * index), NULL when cancelled. Any thread. */
static void on_waited(void *ctx, void *result, bool checkpoint) {
    struct lease_req *r = ctx;
    if (checkpoint) {
        struct v3_applied *a = result;
        r->rc = a && a->code == 0 ? 0 : -ECANCELED;
        v3_applied_free(a);
    } else {
        const struct read_outcome *o = result;
        r->rc = o ? o->code : -ECANCELED;
    }
    if (server_post(r->s, waited, r) != 0)
        LOG_ERROR(r->s->lg, "out of memory answering a lease request; it is dropped");
}

static void on_checkpointed(void *ctx, void *result) {
    on_waited(ctx, result, true);
}

static void on_read_index(void *ctx, void *result) {
    on_waited(ctx, result, false);
}

/* The deadline passed while waiting: the waiter fires now with NULL. */
static void on_wait_deadline(uv_timer_t *t) {
    struct lease_req *r = t->data;
    if (r->wait_table)
        server_wait_cancel(r->wait_table, r->wait_id);
}

static void wait_started(struct lease_req *r, server_wait_t *table, uint64_t id) {
    r->wait_checkpoint = table == r->s->writes;
    r->wait_table = table;
    r->wait_id = id;
    uint64_t now = util_now_mono_ns();
    timer_start(r, on_wait_deadline, r->deadline > now ? (r->deadline - now) / 1000000u + 1 : 1);
}

/* "Not found" on the leader may be a lease it has not applied yet: get a
 * read index (a heartbeat round in this term) and look again once applied. */
static void recheck(struct lease_req *r) {
    struct server *s = r->s;
    r->rechecked = true;
    uint64_t id = server_next_id(s);
    if (server_wait_register(s->reads, id, on_read_index, r) != 0) {
        outcome(r, FWD_RETRY, NULL, 0);
        return;
    }
    wait_started(r, s->reads, id);
    if (server_node_read_index(s->node, id) != 0)
        server_wait_cancel(s->reads, id); /* answers through waited */
}

/* ---- the leader's part ------------------------------------------------------ */

static void renew_here(struct lease_req *r) {
    struct server *s = r->s;
    Etcdserverpb__LeaseKeepAliveRequest *q =
        etcdserverpb__lease_keep_alive_request__unpack(NULL, r->req_len, r->req);
    if (!q) {
        outcome(r, FWD_RETRY, NULL, 0);
        return;
    }
    int64_t id = q->id, ttl = 0;
    etcdserverpb__lease_keep_alive_request__free_unpacked(q, NULL);
    struct lease_checkpoint cp;
    bool propose = false;
    int rc =
        lease_renew(s->leases, id, util_now_mono_ns(), util_now_wall_ns(), &ttl, &cp, &propose);
    if (rc == 0 && propose) {
        /* Answered once the deadline on disk covers what the client is told. */
        r->lease_id = id;
        r->ttl = ttl;
        uint64_t wid;
        if (v3_lease_propose_checkpoints(s, &cp, 1, on_checkpointed, r, &wid) == 0)
            wait_started(r, s->writes, wid);
        else
            outcome(r, FWD_RETRY, NULL, 0);
    } else if (rc == 0) {
        Etcdserverpb__LeaseKeepAliveResponse a = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
        a.id = id;
        a.ttl = ttl;
        uint8_t buf[32];
        outcome(r, FWD_OK, buf, etcdserverpb__lease_keep_alive_response__pack(&a, buf));
    } else if (rc == LEASE_ENOTFOUND && !r->rechecked) {
        recheck(r);
    } else if (rc == LEASE_ENOTFOUND || rc == LEASE_EEXPIRED) {
        outcome(r, FWD_NOT_FOUND, NULL, 0);
    } else {
        outcome(r, rc == LEASE_ENOTPRIMARY ? FWD_NOT_LEADER : FWD_RETRY, NULL, 0);
    }
}

static void ttl_here(struct lease_req *r) {
    struct server *s = r->s;
    Etcdserverpb__LeaseTimeToLiveRequest *q =
        etcdserverpb__lease_time_to_live_request__unpack(NULL, r->req_len, r->req);
    if (!q) {
        outcome(r, FWD_RETRY, NULL, 0);
        return;
    }
    struct lease_ttl t;
    int64_t id = q->id;
    int rc = lease_time_to_live(s->leases, id, q->keys, util_now_mono_ns(), &t);
    etcdserverpb__lease_time_to_live_request__free_unpacked(q, NULL);
    if (rc == LEASE_ENOTFOUND && !r->rechecked) {
        recheck(r);
        return;
    }
    if (rc != 0) {
        outcome(r,
                rc == LEASE_ENOTFOUND || rc == LEASE_EEXPIRED ? FWD_NOT_FOUND
                : rc == LEASE_ENOTPRIMARY                     ? FWD_NOT_LEADER
                                                              : FWD_RETRY,
                NULL, 0);
        return;
    }
    Etcdserverpb__LeaseTimeToLiveResponse a = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    a.id = id;
    a.ttl = t.ttl;
    a.grantedttl = t.granted_ttl;
    ProtobufCBinaryData *keys = calloc(t.n_keys ? t.n_keys : 1, sizeof(*keys));
    uint8_t *buf = NULL;
    size_t len = 0;
    if (keys) {
        for (size_t i = 0; i < t.n_keys; i++)
            keys[i] = (ProtobufCBinaryData){.len = t.keys[i].len, .data = (uint8_t *)t.keys[i].key};
        a.n_keys = t.n_keys;
        a.keys = keys;
        len = etcdserverpb__lease_time_to_live_response__get_packed_size(&a);
        if ((buf = malloc(len ? len : 1)))
            etcdserverpb__lease_time_to_live_response__pack(&a, buf);
    }
    if (buf)
        outcome(r, FWD_OK, buf, len);
    else
        outcome(r, FWD_RETRY, NULL, 0);
    free(buf);
    free(keys);
    lease_ttl_free(&t);
}

static void run_here(struct lease_req *r) {
    if (r->s->stopping) /* the wait tables are gone */
        outcome(r, FWD_RETRY, NULL, 0);
    else if (r->op == V3_LEASE_RENEW)
        renew_here(r);
    else
        ttl_here(r);
}

/* ---- forwarding ------------------------------------------------------------- */

/* Posted to the io loop: the leader answered, or the try failed. */
static void answered(void *ctx) {
    struct lease_req *r = ctx;
    if (r->rc == 0 && r->status == FWD_OK)
        finish(r, 0, r->body, r->len);
    else if (r->rc == 0 && r->status == FWD_NOT_FOUND)
        finish(r, LEASE_ENOTFOUND, NULL, 0);
    else
        retry_later(r);
}

/* The peer transport's callback (transport thread). */
static void on_answer(void *arg, int rc, uint8_t status, const uint8_t *body, size_t len) {
    struct lease_req *r = arg;
    free(r->body);
    r->body = NULL;
    r->len = 0;
    r->rc = rc;
    r->status = status;
    if (rc == 0 && status == FWD_OK) {
        r->body = malloc(len ? len : 1);
        if (r->body) {
            memcpy(r->body, body, len);
            r->len = len;
        } else {
            r->status = FWD_RETRY;
        }
    }
    if (server_post(r->s, answered, r) != 0)
        LOG_ERROR(r->s->lg, "out of memory answering a lease request; it is dropped");
}

/* One try of a client's request: here if this member leads, else at the
 * leader. io loop. */
static void attempt(struct lease_req *r) {
    struct server *s = r->s;
    if (s->stopping) {
        finish(r, -ESHUTDOWN, NULL, 0);
        return;
    }
    if (lease_is_primary(s->leases)) {
        r->rechecked = false;
        run_here(r);
        return;
    }
    struct node_status st;
    server_node_status(s->node, &st);
    if (st.leader && st.leader != s->member_id && s->peer) {
        uint64_t now = util_now_mono_ns();
        uint64_t left_ms = r->deadline > now ? (r->deadline - now) / 1000000u : 0;
        unsigned ms = left_ms < FWD_ATTEMPT_MS ? (unsigned)left_ms + 1 : FWD_ATTEMPT_MS;
        if (peer_transport_call(s->peer, st.leader, (uint8_t)r->op, r->req, r->req_len, ms,
                                on_answer, r) == 0)
            return;
    }
    retry_later(r);
}

void v3_lease_call(struct server *s, enum v3_lease_op op, const uint8_t *req, size_t len,
                   v3_lease_done_fn done, void *ctx) {
    struct lease_req *r = calloc(1, sizeof(*r));
    uint8_t *copy = malloc(len ? len : 1);
    if (!r || !copy) {
        free(r);
        free(copy);
        done(ctx, -ENOMEM, NULL, 0);
        return;
    }
    memcpy(copy, req, len);
    /* etcd's request timeout: 5 s plus two election timeouts. */
    uint64_t timeout_ms = 5000 + 2 * (uint64_t)s->cfg->election_ms;
    *r = (struct lease_req){.s = s,
                            .op = op,
                            .req = copy,
                            .req_len = len,
                            .done = done,
                            .ctx = ctx,
                            .deadline = util_now_mono_ns() + timeout_ms * 1000000u};
    attempt(r);
}

/* ---- requests from other members --------------------------------------------- */

static void serve_peer(void *ctx) {
    struct lease_req *r = ctx;
    if (r->s->stopping || util_now_mono_ns() >= r->deadline)
        req_free(r); /* the caller has given up, or this member is going */
    else
        run_here(r);
}

void v3_lease_on_request(void *arg, uint64_t from, uint64_t id, uint8_t method,
                         uint64_t deadline_mono, const uint8_t *body, size_t len) {
    struct server *s = arg;
    if (method != V3_LEASE_RENEW && method != V3_LEASE_TTL)
        return;
    struct lease_req *r = calloc(1, sizeof(*r));
    uint8_t *copy = malloc(len ? len : 1);
    if (!r || !copy) {
        free(r);
        free(copy);
        return; /* the caller times out and asks again */
    }
    memcpy(copy, body, len);
    *r = (struct lease_req){.s = s,
                            .op = (enum v3_lease_op)method,
                            .req = copy,
                            .req_len = len,
                            .from = from,
                            .call_id = id,
                            .deadline = deadline_mono};
    if (server_post(s, serve_peer, r) != 0) {
        free(copy);
        free(r);
    }
}
