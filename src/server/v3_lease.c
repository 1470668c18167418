/* v3_lease: etcd's Lease service — Grant, Revoke, KeepAlive, TimeToLive,
 * Leases — over src/lease, and the leader's timer that revokes expired leases
 * and proposes checkpoints. Grants, revokes and checkpoints go through raft;
 * renewals and TimeToLive are the leader's own, forwarded to it from other
 * members (v3_lease_fwd.c; docs/lease.md). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint64_t get_be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static bool is_lease_error(int code) {
    return code <= LEASE_ENOTFOUND && code >= LEASE_EEXPIRED;
}

/* ---- apply ------------------------------------------------------------------ */

/* Decodes a checkpoint entry's payload. Returns the count, or -EINVAL. */
static int decode_checkpoints(const uint8_t *p, size_t len, struct lease_checkpoint **out) {
    if (len % 24 != 0)
        return -EINVAL;
    size_t n = len / 24;
    struct lease_checkpoint *cps = calloc(n ? n : 1, sizeof(*cps));
    if (!cps)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        cps[i] = (struct lease_checkpoint){.id = (int64_t)get_be64(p + 24 * i),
                                           .remaining_ttl = (int64_t)get_be64(p + 24 * i + 8),
                                           .deadline_wall_ns = get_be64(p + 24 * i + 16)};
    *out = cps;
    return (int)n;
}

int v3_lease_apply(struct server *s, enum v3_entry_kind kind, uint64_t id, const uint8_t *p,
                   size_t len, struct apply_done *done) {
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    *a = (struct v3_applied){.s = s, .id = id, .kind = kind};
    int rc = 0;
    if (kind == V3_ENTRY_LEASE_GRANT && len >= 8) {
        Etcdserverpb__LeaseGrantRequest *q =
            etcdserverpb__lease_grant_request__unpack(NULL, len - 8, p + 8);
        if (q) {
            a->lease_id = q->id;
            rc = lease_grant(s->lease_batch, q->id, q->ttl, get_be64(p), &a->ttl);
            etcdserverpb__lease_grant_request__free_unpacked(q, NULL);
        }
    } else if (kind == V3_ENTRY_LEASE_REVOKE) {
        Etcdserverpb__LeaseRevokeRequest *q =
            etcdserverpb__lease_revoke_request__unpack(NULL, len, p);
        if (q) {
            a->lease_id = q->id;
            rc = lease_revoke(s->lease_batch, q->id, &a->res);
            etcdserverpb__lease_revoke_request__free_unpacked(q, NULL);
        }
    } else if (kind == V3_ENTRY_LEASE_CHECKPOINT) {
        struct lease_checkpoint *cps = NULL;
        int n = decode_checkpoints(p, len, &cps);
        if (n >= 0)
            rc = lease_checkpoint(s->lease_batch, cps, (size_t)n);
        free(cps);
    }
    if (is_lease_error(rc)) {
        a->code = rc;
        rc = 0;
    }
    return v3_applied_hand_over(s, a, rc, done);
}

/* ---- Grant, Revoke ----------------------------------------------------------- */

static void answer_grant(struct server *s, api_call_t *call, struct v3_applied *a) {
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    v3_header_msg(s, 0, &h);
    Etcdserverpb__LeaseGrantResponse r = ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
    r.header = &h;
    r.id = a->lease_id;
    r.ttl = a->ttl;
    api_call_reply(call, &r.base);
}

static void on_grant(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                     void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    Etcdserverpb__LeaseGrantRequest *q = (Etcdserverpb__LeaseGrantRequest *)msg;
    /* The id is chosen here, before proposing, so every member applies the
     * same one (etcd: the proposing member's id generator). */
    while (q->id == 0)
        q->id = (int64_t)(server_next_id(s) & INT64_MAX);
    size_t plen = etcdserverpb__lease_grant_request__get_packed_size(q);
    uint8_t *payload = malloc(8 + plen);
    if (!payload) {
        protobuf_c_message_free_unpacked(msg, NULL);
        v3_fail(call, -ENOMEM);
        return;
    }
    put_be64(payload, util_now_wall_ns());
    etcdserverpb__lease_grant_request__pack(q, payload + 8);
    protobuf_c_message_free_unpacked(msg, NULL);
    v3_propose(s, call, V3_ENTRY_LEASE_GRANT, payload, 8 + plen, answer_grant);
    free(payload);
}

static void answer_revoke(struct server *s, api_call_t *call, struct v3_applied *a) {
    v3_answer_header_only(s, call, a->res ? a->res->resp.revision : 0);
}

static void on_revoke(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                      void *arg) {
    protobuf_c_message_free_unpacked(msg, NULL);
    v3_propose(arg, call, V3_ENTRY_LEASE_REVOKE, data, len, answer_revoke);
}

/* ---- checkpoints ------------------------------------------------------------- */

int v3_lease_propose_checkpoints(struct server *s, const struct lease_checkpoint *cps, size_t n,
                                 wait_fn fn, void *ctx, uint64_t *wait_id) {
    uint8_t *e = malloc(V3_ENTRY_HEADER + 24 * n);
    if (!e)
        return -ENOMEM;
    uint64_t id = server_next_id(s);
    e[0] = V3_ENTRY_FORMAT;
    e[1] = V3_ENTRY_LEASE_CHECKPOINT;
    put_be64(e + 2, id);
    for (size_t i = 0; i < n; i++) {
        put_be64(e + V3_ENTRY_HEADER + 24 * i, (uint64_t)cps[i].id);
        put_be64(e + V3_ENTRY_HEADER + 24 * i + 8, (uint64_t)cps[i].remaining_ttl);
        put_be64(e + V3_ENTRY_HEADER + 24 * i + 16, cps[i].deadline_wall_ns);
    }
    int rc = fn ? server_wait_register(s->writes, id, fn, ctx) : 0;
    if (rc == 0) {
        if (wait_id)
            *wait_id = id;
        rc = server_node_propose(s->node, e, V3_ENTRY_HEADER + 24 * n);
        if (rc != 0 && fn)
            server_wait_cancel(s->writes, id); /* the waiter learns it failed */
        if (fn)
            rc = 0; /* the waiter owns the outcome from here */
    }
    free(e);
    return rc;
}

/* ---- KeepAlive ---------------------------------------------------------------
 * One stream renews any number of leases, each through v3_lease_call (here on
 * the leader, else at the leader). Answers may come late (a renewal that
 * needs a checkpoint first), so the stream stays open until every renewal it
 * started has been answered (pending). Everything here runs on the io loop. */

struct keepalive {
    struct server *s;
    api_call_t *call;
    int pending;   /* renewals started and not yet answered */
    bool closing;  /* the client half-closed or went away */
    bool finished; /* the stream was ended with an error */
};

/* Frees k once nothing refers to it, ending the stream if nothing ended it. */
static void keepalive_release(struct keepalive *k) {
    if (k->pending > 0 || (!k->closing && !k->finished))
        return;
    if (!k->finished)
        api_call_finish(k->call, API_GRPC_OK, NULL);
    free(k);
}

/* A renewal's answer. As etcd: a lease that is not found answers TTL 0; no
 * leader or a timeout ends the stream with that error. */
static void keepalive_answer(struct keepalive *k, int64_t id, int code, const uint8_t *body,
                             size_t len) {
    int64_t ttl = 0;
    if (code == 0) {
        Etcdserverpb__LeaseKeepAliveResponse *a =
            etcdserverpb__lease_keep_alive_response__unpack(NULL, len, body);
        if (a)
            ttl = a->ttl;
        else
            code = -ENOMEM;
        if (a)
            etcdserverpb__lease_keep_alive_response__free_unpacked(a, NULL);
    }
    if (!k->finished && (code == 0 || code == LEASE_ENOTFOUND)) {
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        v3_header_msg(k->s, 0, &h);
        Etcdserverpb__LeaseKeepAliveResponse r = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
        r.header = &h;
        r.id = id;
        r.ttl = ttl;
        api_call_send(k->call, &r.base);
    } else if (!k->finished) {
        /* The call's data is cleared first: callbacks still on their way (a
         * half-close) then find nothing, and k lives until pending is 0. */
        k->finished = true;
        api_call_set_data(k->call, NULL);
        v3_fail(k->call, code);
    }
    k->pending--;
    keepalive_release(k);
}

struct keepalive_wait {
    struct keepalive *k;
    int64_t id;
};

static void keepalive_done(void *ctx, int code, const uint8_t *body, size_t len) {
    struct keepalive_wait w = *(struct keepalive_wait *)ctx;
    free(ctx);
    keepalive_answer(w.k, w.id, code, body, len);
}

static void on_keepalive_open(api_call_t *call, void *arg) {
    struct keepalive *k = calloc(1, sizeof(*k));
    if (!k) {
        v3_fail(call, -ENOMEM);
        return;
    }
    k->s = arg;
    k->call = call;
    api_call_set_data(call, k);
}

static void on_keepalive(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                         void *arg) {
    (void)arg;
    struct keepalive *k = api_call_data(call);
    int64_t id = ((Etcdserverpb__LeaseKeepAliveRequest *)msg)->id;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (!k)
        return;
    k->pending++;
    struct keepalive_wait *w = malloc(sizeof(*w));
    if (!w) {
        keepalive_answer(k, id, -ENOMEM, NULL, 0);
        return;
    }
    *w = (struct keepalive_wait){.k = k, .id = id};
    v3_lease_call(k->s, V3_LEASE_RENEW, data, len, keepalive_done, w);
}

static void on_keepalive_end(api_call_t *call, void *arg) {
    (void)arg;
    struct keepalive *k = api_call_data(call);
    if (!k)
        return;
    api_call_set_data(call, NULL);
    k->closing = true;
    keepalive_release(k);
}

/* ---- TimeToLive, Leases -------------------------------------------------------- */

struct ttl_wait {
    struct server *s;
    api_call_t *call;
    int64_t id;
};

/* The leader's answer, sent with this member's header. As etcd: a lease that
 * is gone answers TTL -1 without an error. */
static void time_to_live_done(void *ctx, int code, const uint8_t *body, size_t len) {
    struct ttl_wait *w = ctx;
    Etcdserverpb__LeaseTimeToLiveResponse gone = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    Etcdserverpb__LeaseTimeToLiveResponse *r = NULL;
    if (code == 0 && !(r = etcdserverpb__lease_time_to_live_response__unpack(NULL, len, body)))
        code = -ENOMEM;
    if (code == LEASE_ENOTFOUND) {
        gone.id = w->id;
        gone.ttl = -1;
        code = 0;
    }
    if (code == 0) {
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        v3_header_msg(w->s, 0, &h);
        Etcdserverpb__LeaseTimeToLiveResponse *out = r ? r : &gone;
        out->header = &h;
        api_call_reply(w->call, &out->base);
        out->header = NULL;
    } else {
        v3_fail(w->call, code);
    }
    if (r)
        etcdserverpb__lease_time_to_live_response__free_unpacked(r, NULL);
    free(w);
}

static void on_time_to_live(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                            size_t len, void *arg) {
    struct ttl_wait *w = malloc(sizeof(*w));
    int64_t id = ((Etcdserverpb__LeaseTimeToLiveRequest *)msg)->id;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (!w) {
        v3_fail(call, -ENOMEM);
        return;
    }
    *w = (struct ttl_wait){.s = arg, .call = call, .id = id};
    v3_lease_call(arg, V3_LEASE_TTL, data, len, time_to_live_done, w);
}

static void on_leases(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                      void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    int64_t *ids = NULL;
    size_t n = 0;
    int rc = lease_list(s->leases, &ids, &n);
    Etcdserverpb__LeaseStatus *st = calloc(n ? n : 1, sizeof(*st));
    Etcdserverpb__LeaseStatus **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    if (rc == 0 && (!st || !ptrs))
        rc = -ENOMEM;
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            etcdserverpb__lease_status__init(&st[i]);
            st[i].id = ids[i];
            ptrs[i] = &st[i];
        }
        Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
        v3_header_msg(s, 0, &h);
        Etcdserverpb__LeaseLeasesResponse r = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
        r.header = &h;
        r.n_leases = n;
        r.leases = ptrs;
        api_call_reply(call, &r.base);
    } else {
        v3_fail(call, rc);
    }
    free(st);
    free(ptrs);
    free(ids);
}

/* ---- the leader's timer ------------------------------------------------------- */

void v3_lease_role_changed(struct server *s, bool leader) {
    pthread_mutex_lock(&s->role_mu);
    s->promote_pending = leader;
    if (!leader)
        lease_demote(s->leases);
    pthread_mutex_unlock(&s->role_mu);
}

/* The mutex orders a promotion after the last role change: a demotion while
 * a promotion reads the leases waits for it, then undoes it. */
void v3_lease_maybe_promote(struct server *s) {
    pthread_mutex_lock(&s->role_mu);
    if (s->promote_pending) {
        uint64_t applied, applied_term;
        int64_t rev, compact;
        struct node_status st;
        mvcc_state(s->db, &applied, &applied_term, &rev, &compact);
        server_node_status(s->node, &st);
        if (st.is_leader && applied_term == st.term) {
            int rc = lease_promote(s->leases, util_now_mono_ns(), util_now_wall_ns());
            s->promote_pending = rc != 0; /* tried again on the next tick */
            if (rc != 0)
                LOG_ERROR(s->lg, "cannot take over lease expiry as leader",
                          LOG_STR("error", lease_strerror(rc)));
        }
    }
    pthread_mutex_unlock(&s->role_mu);
}

void v3_lease_tick(struct server *s) {
    v3_lease_maybe_promote(s);
    if (!lease_is_primary(s->leases))
        return;
    int64_t ids[LEASE_REVOKE_BATCH];
    size_t n = lease_expired(s->leases, util_now_mono_ns(), ids, LEASE_REVOKE_BATCH);
    for (size_t i = 0; i < n; i++) {
        Etcdserverpb__LeaseRevokeRequest q = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
        q.id = ids[i];
        uint8_t e[V3_ENTRY_HEADER + 16];
        e[0] = V3_ENTRY_FORMAT;
        e[1] = V3_ENTRY_LEASE_REVOKE;
        put_be64(e + 2, server_next_id(s));
        size_t plen = etcdserverpb__lease_revoke_request__pack(&q, e + V3_ENTRY_HEADER);
        /* A lost proposal is retried: lease_expired reports the lease again. */
        server_node_propose(s->node, e, V3_ENTRY_HEADER + plen);
    }
    struct lease_checkpoint *cps = malloc(LEASE_CHECKPOINT_BATCH * sizeof(*cps));
    if (!cps)
        return;
    n = lease_due_checkpoints(s->leases, util_now_mono_ns(), util_now_wall_ns(), cps,
                              LEASE_CHECKPOINT_BATCH);
    if (n)
        v3_lease_propose_checkpoints(s, cps, n, NULL, NULL, NULL);
    free(cps);
}

int v3_lease_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Lease/LeaseGrant",
         .request = &etcdserverpb__lease_grant_request__descriptor,
         .response = &etcdserverpb__lease_grant_response__descriptor,
         .on_message = on_grant,
         .arg = s},
        {.path = "/etcdserverpb.Lease/LeaseRevoke",
         .request = &etcdserverpb__lease_revoke_request__descriptor,
         .response = &etcdserverpb__lease_revoke_response__descriptor,
         .on_message = on_revoke,
         .arg = s},
        {.path = "/etcdserverpb.Lease/LeaseKeepAlive",
         .client_streaming = true,
         .server_streaming = true,
         .request = &etcdserverpb__lease_keep_alive_request__descriptor,
         .response = &etcdserverpb__lease_keep_alive_response__descriptor,
         .on_open = on_keepalive_open,
         .on_message = on_keepalive,
         .on_half_close = on_keepalive_end,
         .on_cancel = on_keepalive_end,
         .arg = s},
        {.path = "/etcdserverpb.Lease/LeaseTimeToLive",
         .request = &etcdserverpb__lease_time_to_live_request__descriptor,
         .response = &etcdserverpb__lease_time_to_live_response__descriptor,
         .on_message = on_time_to_live,
         .arg = s},
        {.path = "/etcdserverpb.Lease/LeaseLeases",
         .request = &etcdserverpb__lease_leases_request__descriptor,
         .response = &etcdserverpb__lease_leases_response__descriptor,
         .on_message = on_leases,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
