/* v3_cluster: etcd's Cluster service and membership — MemberAdd, Remove,
 * Update, Promote and List; the member store set up at start-up (a new
 * cluster, a member joining an existing one, a restart); conf changes
 * checked and applied on the raft thread (raft, peer transport) and on the
 * apply thread (member store, answers); a member publishing its name and
 * client URLs; a removed member stopping. docs/cluster.md ("Membership")
 * describes the design. */
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

/* How long a member joining waits for each member it asks. */
#define JOIN_FETCH_MS 3000

/* A removed member stops this long after applying its removal (etcd: 1 s),
 * so the others learn that the removal committed. */
#define REMOVED_STOP_NS 1000000000ull

/* etcd's request timeout for a membership change: 5 s plus two election
 * timeouts. */
#define REQUEST_TIMEOUT_MS 5000

/* A publish not applied by then is asked again. */
#define PUBLISH_RETRY_NS 5000000000ull

static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---- answers ---- */

/* The protobuf view of a member set; strings point into the set. */
struct pb_members {
    Etcdserverpb__Member *v;
    Etcdserverpb__Member **ptrs;
};

static int pb_members_fill(struct pb_members *pb, const struct member_set *set) {
    pb->v = calloc(set->n ? set->n : 1, sizeof(*pb->v));
    pb->ptrs = calloc(set->n ? set->n : 1, sizeof(*pb->ptrs));
    if (!pb->v || !pb->ptrs) {
        free(pb->v);
        free(pb->ptrs);
        return -ENOMEM;
    }
    for (size_t i = 0; i < set->n; i++) {
        const struct member *m = &set->v[i];
        Etcdserverpb__Member *p = &pb->v[i];
        etcdserverpb__member__init(p);
        p->id = m->id;
        p->name = m->name;
        p->peerurls = m->peer_urls;
        p->n_peerurls = m->n_peer_urls;
        p->clienturls = m->client_urls;
        p->n_clienturls = m->n_client_urls;
        p->islearner = m->learner;
        pb->ptrs[i] = p;
    }
    return 0;
}

static void pb_members_free(struct pb_members *pb) {
    free(pb->v);
    free(pb->ptrs);
}

/* etcd answers the Cluster service with a header without a revision. */
static void cluster_header(struct server *s, Etcdserverpb__ResponseHeader *h) {
    v3_header_msg(s, 0, h);
    h->revision = 0;
}

enum answer_kind { ANSWER_LIST, ANSWER_ADD, ANSWER_REMOVE, ANSWER_UPDATE, ANSWER_PROMOTE };

/* Answers with the member list as the store holds it now; for ANSWER_ADD
 * with the member added too. Any thread. */
static void answer_members(struct server *s, api_call_t *call, enum answer_kind kind,
                           uint64_t member) {
    struct member_set set;
    uint64_t cid;
    struct pb_members pb;
    int rc = members_store_read(s->db, s->members_dbi, &set, &cid, NULL);
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    if ((rc = pb_members_fill(&pb, &set)) != 0) {
        members_free(&set);
        v3_fail(call, rc);
        return;
    }
    /* This member knows its own attributes before its publish is applied
     * (etcd serves clients only once it published). */
    char *own[16];
    for (size_t i = 0; i < set.n; i++) {
        Etcdserverpb__Member *p = &pb.v[i];
        if (p->id != s->member_id || p->n_clienturls)
            continue;
        p->name = s->cfg->name;
        for (size_t k = 0; k < s->cfg->advertise_client_urls.n && k < 16; k++)
            own[p->n_clienturls++] = s->cfg->advertise_client_urls.v[k].text;
        p->clienturls = own;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    cluster_header(s, &h);
    union {
        Etcdserverpb__MemberListResponse list;
        Etcdserverpb__MemberAddResponse add;
        Etcdserverpb__MemberRemoveResponse remove;
        Etcdserverpb__MemberUpdateResponse update;
        Etcdserverpb__MemberPromoteResponse promote;
    } r;
    switch (kind) {
    case ANSWER_LIST:
        r.list = (Etcdserverpb__MemberListResponse)ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
        r.list.header = &h, r.list.members = pb.ptrs, r.list.n_members = set.n;
        break;
    case ANSWER_ADD:
        r.add = (Etcdserverpb__MemberAddResponse)ETCDSERVERPB__MEMBER_ADD_RESPONSE__INIT;
        r.add.header = &h, r.add.members = pb.ptrs, r.add.n_members = set.n;
        for (size_t i = 0; i < set.n; i++)
            if (pb.v[i].id == member)
                r.add.member = &pb.v[i];
        break;
    case ANSWER_REMOVE:
        r.remove = (Etcdserverpb__MemberRemoveResponse)ETCDSERVERPB__MEMBER_REMOVE_RESPONSE__INIT;
        r.remove.header = &h, r.remove.members = pb.ptrs, r.remove.n_members = set.n;
        break;
    case ANSWER_UPDATE:
        r.update = (Etcdserverpb__MemberUpdateResponse)ETCDSERVERPB__MEMBER_UPDATE_RESPONSE__INIT;
        r.update.header = &h, r.update.members = pb.ptrs, r.update.n_members = set.n;
        break;
    case ANSWER_PROMOTE:
        r.promote =
            (Etcdserverpb__MemberPromoteResponse)ETCDSERVERPB__MEMBER_PROMOTE_RESPONSE__INIT;
        r.promote.header = &h, r.promote.members = pb.ptrs, r.promote.n_members = set.n;
        break;
    }
    api_call_reply(call, (const ProtobufCMessage *)&r);
    pb_members_free(&pb);
    members_free(&set);
}

static void answer_add(struct server *s, api_call_t *call, struct v3_applied *a) {
    answer_members(s, call, ANSWER_ADD, a->member_id);
}

static void answer_remove(struct server *s, api_call_t *call, struct v3_applied *a) {
    answer_members(s, call, ANSWER_REMOVE, a->member_id);
}

static void answer_update(struct server *s, api_call_t *call, struct v3_applied *a) {
    answer_members(s, call, ANSWER_UPDATE, a->member_id);
}

static void answer_promote(struct server *s, api_call_t *call, struct v3_applied *a) {
    answer_members(s, call, ANSWER_PROMOTE, a->member_id);
}

/* ---- the requests ---- */

/* etcd's types.NewURLs: scheme http(s) or unix(s), host:port, no path. */
static bool url_valid(const char *u) {
    const char *rest = NULL;
    static const char *const schemes[] = {"http://", "https://", "unix://", "unixs://"};
    for (size_t i = 0; i < 4 && !rest; i++)
        if (strncmp(u, schemes[i], strlen(schemes[i])) == 0)
            rest = u + strlen(schemes[i]);
    if (!rest || !*rest || strchr(rest, '/'))
        return false;
    const char *colon = strrchr(rest, ':');
    if (!colon || colon == rest || !colon[1])
        return false;
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    return true;
}

static bool urls_valid(char *const *urls, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!url_valid(urls[i]))
            return false;
    return n > 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A new member's id as etcd makes one: SHA-1 of its sorted peer URLs and
 * the time in seconds, first 8 bytes. */
static int new_member_id(char *const *urls, size_t n, uint64_t *id) {
    char **sorted = calloc(n ? n : 1, sizeof(*sorted));
    if (!sorted)
        return -ENOMEM;
    memcpy(sorted, urls, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_str);
    struct util_buf b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = util_buf_append(&b, sorted[i], strlen(sorted[i]));
    if (rc == 0)
        rc = util_buf_printf(&b, "%" PRIu64, util_now_wall_ns() / 1000000000u);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (rc == 0 && !EVP_Digest(b.data, b.len, md, &mdlen, EVP_sha1(), NULL))
        rc = -ENOMEM;
    *id = 0;
    for (int i = 0; rc == 0 && i < 8; i++)
        *id = *id << 8 | md[i];
    util_buf_free(&b);
    free(sorted);
    return rc;
}

/* Whether this member's transport reaches member m (itself: yes). */
static bool reached(struct server *s, const struct member *m) {
    struct peer_stats st;
    return m->id == s->member_id ||
           (peer_transport_stats(s->peer, m->id, &st) == 0 && st.connected);
}

/* etcd's check that the change keeps the active quorum: an added member
 * needs every voter reached; a removed voter that is reached must leave a
 * quorum of reached voters behind. */
static int check_healthy(struct server *s, const struct member_set *set, enum members_op op,
                         uint64_t id) {
    size_t voters = 0, active = 0;
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i].learner)
            continue;
        voters++;
        if (reached(s, &set->v[i]))
            active++;
        else
            LOG_WARN(s->lg, "a membership change may be refused: a voter is not connected",
                     LOG_STR("voter-name", set->v[i].name), LOG_UINT("voter-id", set->v[i].id));
    }
    if (op == MEMBERS_OP_ADD)
        return active == voters ? 0 : MEMBERS_EUNHEALTHY;
    const struct member *m = members_find(set, id);
    if (op != MEMBERS_OP_REMOVE || !m || m->learner || !reached(s, m))
        return 0;
    return active - 1 >= 1 + (voters - 1) / 2 ? 0 : MEMBERS_EUNHEALTHY;
}

/* etcd's --strict-reconfig-check (IsReadyToAddVotingMember,
 * IsReadyToRemoveVotingMember, IsReadyToPromoteMember): the voters that
 * have started — published their name — after the change must make a
 * quorum of the voters after it (a promoted learner counted as started);
 * then the active quorum must hold (check_healthy). */
static int check_started(struct server *s, const struct member_set *set, enum members_op op,
                         uint64_t id, bool learner) {
    if (!s->cfg->strict_reconfig_check)
        return 0;
    size_t voters = 0, up = 0;
    for (size_t i = 0; i < set->n; i++) {
        const struct member *m = &set->v[i];
        if (m->learner || (op == MEMBERS_OP_REMOVE && m->id == id))
            continue;
        voters++;
        up += m->name[0] != 0;
    }
    bool quorum = true;
    if (op == MEMBERS_OP_REMOVE) {
        const struct member *m = members_find(set, id);
        quorum = (m && m->learner) || up >= voters / 2 + 1;
    } else if (op == MEMBERS_OP_ADD && !learner) {
        /* A second member for a cluster of one is allowed (etcd's case of
         * restoring a cluster's data). */
        quorum = (voters == 1 && up == 1) || up >= (voters + 1) / 2 + 1;
    } else if (op == MEMBERS_OP_PROMOTE) {
        quorum = up + 1 >= (voters + 1) / 2 + 1;
    }
    if (!quorum)
        return MEMBERS_ENOTSTARTED;
    return check_healthy(s, set, op, id);
}

/* Checks a change against the store as this member has applied it
 * (etcd's checks before proposing). Returns 0 or the refusal. */
static int check_change(struct server *s, enum members_op op, uint64_t id, const struct member *m) {
    struct member_set set;
    uint64_t cid;
    int rc = members_store_read(s->db, s->members_dbi, &set, &cid, NULL);
    if (rc != 0)
        return rc;
    rc = check_started(s, &set, op, id, m && m->learner);
    if (rc == 0)
        rc = members_check(&set, op, id, m);
    members_free(&set);
    return rc;
}

/* Proposes a checked change; the apply thread checks again at its place in
 * the log. */
static void send_change(struct server *s, api_call_t *call, enum members_op op, uint64_t id,
                        const struct member *m, v3_answer_fn answer) {
    struct util_buf b = {0};
    uint8_t o = (uint8_t)op;
    int rc = util_buf_append(&b, &o, 1);
    if (rc == 0 && m)
        rc = members_encode(m, &b);
    if (rc != 0) {
        util_buf_free(&b);
        v3_fail(call, rc);
        return;
    }
    uint32_t type = op == MEMBERS_OP_REMOVE   ? RAFT_CC_REMOVE_NODE
                    : op == MEMBERS_OP_UPDATE ? RAFT_CC_UPDATE_NODE
                    : m && m->learner         ? RAFT_CC_ADD_LEARNER
                                              : RAFT_CC_ADD_NODE;
    struct raft_conf_change cc = {.type = type, .node_id = id};
    uint64_t wid = v3_propose_conf(s, call, &cc, (const uint8_t *)b.data, b.len, answer);
    util_buf_free(&b);
    size_t cap = sizeof(s->cluster_waits) / sizeof(s->cluster_waits[0]);
    if (wid && s->n_cluster_waits < cap) {
        uint64_t ms = REQUEST_TIMEOUT_MS + 2ull * s->cfg->election_ms;
        s->cluster_waits[s->n_cluster_waits].id = wid;
        s->cluster_waits[s->n_cluster_waits++].deadline_ns = util_now_mono_ns() + ms * 1000000u;
    }
}

/* Answers "request timed out" to the changes not applied in time (their
 * waiters are gone once answered: triggering them again is a no-op). io
 * loop, on the tick. */
static void expire_changes(struct server *s) {
    uint64_t now = util_now_mono_ns();
    size_t kept = 0;
    for (size_t i = 0; i < s->n_cluster_waits; i++) {
        if (s->cluster_waits[i].deadline_ns > now) {
            s->cluster_waits[kept++] = s->cluster_waits[i];
            continue;
        }
        struct v3_applied *a = calloc(1, sizeof(*a));
        if (!a) {
            server_wait_cancel(s->writes, s->cluster_waits[i].id);
            continue;
        }
        *a = (struct v3_applied){.s = s, .id = s->cluster_waits[i].id, .code = -ETIMEDOUT};
        if (!server_wait_trigger(s->writes, a->id, a))
            v3_applied_free(a);
    }
    s->n_cluster_waits = kept;
}

static void propose_change(struct server *s, api_call_t *call, enum members_op op, uint64_t id,
                           const struct member *m, v3_answer_fn answer) {
    int rc = check_change(s, op, id, m);
    if (rc != 0)
        v3_fail(call, rc);
    else
        send_change(s, call, op, id, m, answer);
}

/* ---- promotion from a follower ----
 * Only the leader knows how far a learner is (etcd forwards MemberPromote to
 * it over HTTP): a follower asks the leader on its peer port for the
 * learner's progress, on a worker thread, and proposes the promotion (raft
 * forwards it) once the leader says the learner is in sync. */

struct promote_ask {
    uv_work_t work;
    struct server *s;
    api_call_t *call;
    uint64_t id;
    char *urls[16];
    size_t n_urls;
    int rc;
};

/* The answer to PEER_ASK_PROGRESS: code (0, NODE_ENOTLEADER, MEMBERS_ENOTFOUND) as 4
 * bytes two's complement, the member's match index, the leader's. */
#define PROGRESS_ANSWER_LEN 20

static void promote_ask_run(uv_work_t *w) {
    struct promote_ask *pa = w->data;
    pa->rc = RAFT_ENOLEADER;
    for (size_t i = 0; i < pa->n_urls && pa->rc == RAFT_ENOLEADER; i++) {
        struct util_buf out = {0};
        struct util_err err = {0};
        uint64_t cid, mid;
        if (peer_ask(pa->urls[i], PEER_ASK_PROGRESS, pa->id, JOIN_FETCH_MS, &cid, &mid, &out,
                     &err) == 0 &&
            out.len == PROGRESS_ANSWER_LEN && cid == pa->s->cluster_id) {
            const uint8_t *p = (const uint8_t *)out.data;
            int32_t code = (int32_t)(uint32_t)(be64(p) >> 32);
            if (code == 0)
                pa->rc = server_node_learner_ready(be64(p + 4), be64(p + 12))
                             ? 0
                             : NODE_ELEARNERNOTREADY;
            else if (code != NODE_ENOTLEADER)
                pa->rc = code;
        }
        util_buf_free(&out);
    }
}

static void promote_ask_done(uv_work_t *w, int status) {
    struct promote_ask *pa = w->data;
    if (status != 0)
        v3_fail(pa->call, -ECANCELED);
    else if (pa->rc != 0)
        v3_fail(pa->call, pa->rc);
    else
        send_change(pa->s, pa->call, MEMBERS_OP_PROMOTE, pa->id, NULL, answer_promote);
    for (size_t i = 0; i < pa->n_urls; i++)
        free(pa->urls[i]);
    free(pa);
}

/* Asks the leader (on a follower) whether learner id is in sync. */
static void promote_via_leader(struct server *s, api_call_t *call, uint64_t id) {
    struct node_status st;
    server_node_status(s->node, &st);
    struct member_set set;
    uint64_t cid;
    int rc =
        st.leader ? members_store_read(s->db, s->members_dbi, &set, &cid, NULL) : RAFT_ENOLEADER;
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    const struct member *leader = members_find(&set, st.leader);
    struct promote_ask *pa = calloc(1, sizeof(*pa));
    rc = pa ? 0 : -ENOMEM;
    if (pa) {
        *pa = (struct promote_ask){.s = s, .call = call, .id = id};
        pa->work.data = pa;
        for (size_t i = 0; leader && i < leader->n_peer_urls && i < 16 && rc == 0; i++)
            if (!(pa->urls[pa->n_urls++] = strdup(leader->peer_urls[i])))
                rc = -ENOMEM;
    }
    members_free(&set);
    if (rc == 0 && pa->n_urls == 0)
        rc = RAFT_ENOLEADER;
    if (rc == 0 && uv_queue_work(&s->loop, &pa->work, promote_ask_run, promote_ask_done) != 0)
        rc = -ENOMEM;
    if (rc != 0) {
        for (size_t i = 0; pa && i < pa->n_urls; i++)
            free(pa->urls[i]);
        free(pa);
        v3_fail(call, rc);
    }
}

static void on_member_add(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                          void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    Etcdserverpb__MemberAddRequest *q = (Etcdserverpb__MemberAddRequest *)msg;
    struct member m = {.learner = q->islearner,
                       .name = "",
                       .peer_urls = q->peerurls,
                       .n_peer_urls = q->n_peerurls};
    if (!urls_valid(q->peerurls, q->n_peerurls))
        v3_fail(call, MEMBERS_EBADURLS);
    else if (new_member_id(q->peerurls, q->n_peerurls, &m.id) != 0)
        v3_fail(call, -ENOMEM);
    else
        propose_change(s, call, MEMBERS_OP_ADD, m.id, &m, answer_add);
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_member_remove(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                             size_t len, void *arg) {
    (void)data;
    (void)len;
    uint64_t id = ((Etcdserverpb__MemberRemoveRequest *)msg)->id;
    protobuf_c_message_free_unpacked(msg, NULL);
    propose_change(arg, call, MEMBERS_OP_REMOVE, id, NULL, answer_remove);
}

static void on_member_update(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                             size_t len, void *arg) {
    (void)data;
    (void)len;
    Etcdserverpb__MemberUpdateRequest *q = (Etcdserverpb__MemberUpdateRequest *)msg;
    struct member m = {
        .id = q->id, .name = "", .peer_urls = q->peerurls, .n_peer_urls = q->n_peerurls};
    if (!urls_valid(q->peerurls, q->n_peerurls))
        v3_fail(call, MEMBERS_EBADURLS);
    else
        propose_change(arg, call, MEMBERS_OP_UPDATE, q->id, &m, answer_update);
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_member_promote(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                              size_t len, void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    uint64_t id = ((Etcdserverpb__MemberPromoteRequest *)msg)->id;
    protobuf_c_message_free_unpacked(msg, NULL);
    struct node_status st;
    server_node_status(s->node, &st);
    int rc = check_change(s, MEMBERS_OP_PROMOTE, id, NULL);
    if (rc != 0)
        v3_fail(call, rc);
    else if (st.is_leader)
        send_change(s, call, MEMBERS_OP_PROMOTE, id, NULL, answer_promote); /* raft loop checks */
    else
        promote_via_leader(s, call, id);
}

static void on_member_list(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                           void *arg) {
    (void)data;
    (void)len;
    protobuf_c_message_free_unpacked(msg, NULL);
    answer_members(arg, call, ANSWER_LIST, 0);
}

int v3_cluster_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Cluster/MemberAdd",
         .request = &etcdserverpb__member_add_request__descriptor,
         .response = &etcdserverpb__member_add_response__descriptor,
         .on_message = on_member_add,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.Cluster/MemberRemove",
         .request = &etcdserverpb__member_remove_request__descriptor,
         .response = &etcdserverpb__member_remove_response__descriptor,
         .on_message = on_member_remove,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.Cluster/MemberUpdate",
         .request = &etcdserverpb__member_update_request__descriptor,
         .response = &etcdserverpb__member_update_response__descriptor,
         .on_message = on_member_update,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.Cluster/MemberPromote",
         .request = &etcdserverpb__member_promote_request__descriptor,
         .response = &etcdserverpb__member_promote_response__descriptor,
         .on_message = on_member_promote,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.Cluster/MemberList",
         .request = &etcdserverpb__member_list_request__descriptor,
         .response = &etcdserverpb__member_list_response__descriptor,
         .on_message = on_member_list,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}

/* ---- applying ---- */

/* A decoded membership change: its request id, what it does, the member. */
struct change {
    uint64_t req;
    enum members_op op;
    struct member m; /* add and update only */
};

/* Decodes a conf change's context. Returns 0, or -EINVAL for a change this
 * server did not write (refused on every member alike). */
static int change_decode(const struct raft_conf_change *cc, struct change *ch) {
    const uint8_t *p = cc->context;
    size_t n = cc->context_len;
    *ch = (struct change){0};
    if (n < V3_ENTRY_HEADER + 1 || p[0] != V3_ENTRY_FORMAT || p[1] != V3_ENTRY_MEMBER)
        return -EINVAL;
    ch->req = be64(p + 2);
    ch->op = (enum members_op)p[V3_ENTRY_HEADER];
    if (ch->op != MEMBERS_OP_ADD && ch->op != MEMBERS_OP_UPDATE)
        return ch->op == MEMBERS_OP_REMOVE || ch->op == MEMBERS_OP_PROMOTE ? 0 : -EINVAL;
    int rc = members_decode(p + V3_ENTRY_HEADER + 1, n - V3_ENTRY_HEADER - 1, &ch->m);
    ch->m.id = cc->node_id;
    return rc;
}

/* A conf change at its place in the log: checked against the store, written
 * to it, answered once the batch is committed. */
static int apply_conf(struct server *s, mvcc_batch_t *b, const struct raft_entry *e,
                      struct apply_done *done) {
    struct raft_conf_change cc;
    struct change ch;
    if (raft_conf_change_decode(e->data, e->len, &cc) != 0)
        return 0;
    int drc = change_decode(&cc, &ch);
    if (drc != 0) /* a foreign change is refused alike on the raft thread */
        return drc == -ENOMEM ? drc : 0;
    MDB_txn *txn = mvcc_batch_txn(b);
    struct member_set set;
    uint64_t cid;
    int rc = members_store_load(txn, s->members_dbi, &set, &cid, NULL);
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (rc != 0 || !a) {
        free(a);
        members_free(&set);
        member_free(&ch.m);
        return rc ? rc : -ENOMEM;
    }
    *a =
        (struct v3_applied){.s = s, .id = ch.req, .kind = V3_ENTRY_MEMBER, .member_id = cc.node_id};
    a->code = members_check(&set, ch.op, cc.node_id, &ch.m);
    if (a->code == 0 && (rc = members_apply(&set, ch.op, cc.node_id, &ch.m)) == 0) {
        struct member *m = members_find(&set, cc.node_id);
        rc = m ? members_store_put(txn, s->members_dbi, m)
               : members_store_del(txn, s->members_dbi, cc.node_id);
        if (rc == 0 && ch.op == MEMBERS_OP_REMOVE)
            rc = members_store_add_removed(txn, s->members_dbi, cc.node_id);
    }
    members_free(&set);
    member_free(&ch.m);
    return v3_applied_hand_over(s, a, rc, done);
}

/* A member's published name and client URLs. Nobody waits on other
 * members. */
static int apply_attr(struct server *s, mvcc_batch_t *b, const struct raft_entry *e,
                      struct apply_done *done) {
    if (e->len < V3_ENTRY_HEADER + 8)
        return 0;
    uint64_t id = be64(e->data + V3_ENTRY_HEADER);
    struct member attr;
    if (members_decode(e->data + V3_ENTRY_HEADER + 8, e->len - V3_ENTRY_HEADER - 8, &attr) != 0)
        return 0;
    MDB_txn *txn = mvcc_batch_txn(b);
    struct member_set set;
    uint64_t cid;
    int rc = members_store_load(txn, s->members_dbi, &set, &cid, NULL);
    struct member *m = rc == 0 ? members_find(&set, id) : NULL;
    if (m) {
        /* Only the attributes: the peer URLs and the learner flag are the
         * conf changes' to set. */
        attr.id = id;
        attr.learner = m->learner;
        char **keep = attr.peer_urls;
        size_t n_keep = attr.n_peer_urls;
        attr.peer_urls = m->peer_urls;
        attr.n_peer_urls = m->n_peer_urls;
        rc = members_store_put(txn, s->members_dbi, &attr);
        attr.peer_urls = keep;
        attr.n_peer_urls = n_keep;
    }
    members_free(&set);
    member_free(&attr);
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    *a = (struct v3_applied){
        .s = s, .id = be64(e->data + 2), .kind = V3_ENTRY_MEMBER_ATTR, .member_id = id};
    return v3_applied_hand_over(s, a, rc, done);
}

int v3_cluster_apply(struct server *s, mvcc_batch_t *b, const struct raft_entry *e,
                     struct apply_done *done) {
    if (e->type == RAFT_ENTRY_CONF_CHANGE)
        return apply_conf(s, b, e, done);
    return apply_attr(s, b, e, done);
}

/* The raft thread's side of a committed change: the same check against its
 * own copy of the set, then the transport follows. */
bool v3_cluster_conf_change(void *arg, const struct raft_conf_change *cc, uint64_t index) {
    struct server *s = arg;
    struct change ch;
    int rc = change_decode(cc, &ch);
    if (rc == -EINVAL) {
        LOG_WARN(s->lg, "ignoring a membership change this server did not write",
                 LOG_UINT("index", index));
        return false;
    }
    if (rc == 0 && (rc = members_check(&s->raft_members, ch.op, cc->node_id, &ch.m)) == 0)
        rc = members_apply(&s->raft_members, ch.op, cc->node_id, &ch.m);
    if (rc == -ENOMEM) {
        /* Refusing it here while the apply thread accepts it would make the
         * two disagree: the member stops, as when it cannot apply. */
        LOG_ERROR(s->lg, "out of memory applying a membership change; stopping the member");
        abort();
    }
    if (rc != 0) {
        member_free(&ch.m);
        LOG_INFO(s->lg, "membership change refused", LOG_UINT("index", index),
                 LOG_UINT("member", cc->node_id), LOG_INT("code", rc));
        return false;
    }
    const struct member *m = members_find(&s->raft_members, cc->node_id);
    if (ch.op == MEMBERS_OP_REMOVE) {
        if (cc->node_id == s->member_id)
            atomic_store(&s->removed_ns, util_now_mono_ns());
        else
            peer_transport_remove_peer(s->peer, cc->node_id);
    } else if (m && m->id != s->member_id) {
        peer_transport_set_peer(s->peer, m->id, (const char *const *)m->peer_urls, m->n_peer_urls);
    }
    member_free(&ch.m);
    return true;
}

/* Gives the transport every member of set but this one. */
static int set_peers(struct server *s, const struct member_set *set, struct util_err *err) {
    for (size_t i = 0; i < set->n; i++) {
        const struct member *m = &set->v[i];
        if (m->id == s->member_id || !m->n_peer_urls)
            continue;
        int rc = peer_transport_set_peer(s->peer, m->id, (const char *const *)m->peer_urls,
                                         m->n_peer_urls);
        if (rc != 0)
            return util_errorf(err, rc, "cannot add member %" PRIx64 " to the peer transport",
                               m->id);
    }
    return 0;
}

int v3_cluster_reload(struct server *s, struct raft_conf_state *cs) {
    struct member_set set;
    uint64_t cid;
    int rc = members_store_read(s->db, s->members_dbi, &set, &cid, NULL);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < s->raft_members.n; i++) {
        uint64_t id = s->raft_members.v[i].id;
        if (id != s->member_id && !members_find(&set, id))
            peer_transport_remove_peer(s->peer, id);
    }
    rc = set_peers(s, &set, NULL);
    members_free(&s->raft_members);
    s->raft_members = set;
    if (cs)
        members_conf_state(&set, cs);
    return rc;
}

/* ---- publishing ---- */

/* The publish entry was applied, failed, or was given up on. Any thread. */
static void publish_done(void *ctx, void *result) {
    struct server *s = ctx;
    struct v3_applied *a = result;
    bool ok = a && a->code == 0;
    atomic_store(&s->publish_state, ok ? 2 : 0);
    if (ok)
        LOG_INFO(s->lg, "published local member to cluster through raft",
                 LOG_STR("name", s->cfg->name));
    if (a)
        v3_applied_free(a);
}

/* Proposes this member's name and client URLs, as etcd's publish. io loop. */
static void publish(struct server *s) {
    struct member me = {.id = s->member_id,
                        .name = s->cfg->name,
                        .client_urls = NULL,
                        .n_client_urls = s->cfg->advertise_client_urls.n};
    char *urls[16];
    for (size_t i = 0; i < me.n_client_urls && i < 16; i++)
        urls[i] = s->cfg->advertise_client_urls.v[i].text;
    if (me.n_client_urls > 16)
        me.n_client_urls = 16;
    me.client_urls = urls;
    struct util_buf b = {0};
    uint64_t id = server_next_id(s);
    uint8_t h[V3_ENTRY_HEADER + 8] = {V3_ENTRY_FORMAT, V3_ENTRY_MEMBER_ATTR};
    for (int i = 0; i < 8; i++) {
        h[2 + i] = (uint8_t)(id >> (56 - 8 * i));
        h[V3_ENTRY_HEADER + i] = (uint8_t)(s->member_id >> (56 - 8 * i));
    }
    int rc = util_buf_append(&b, h, sizeof(h));
    if (rc == 0)
        rc = members_encode(&me, &b);
    if (rc == 0 && (rc = server_wait_register(s->writes, id, publish_done, s)) == 0) {
        atomic_store(&s->publish_state, 1);
        s->publish_id = id;
        s->publish_at_ns = util_now_mono_ns();
        if (server_node_propose(s->node, b.data, b.len) != 0)
            server_wait_cancel(s->writes, id);
    }
    util_buf_free(&b);
}

bool v3_cluster_tick(struct server *s) {
    expire_changes(s);
    uint64_t removed = atomic_load(&s->removed_ns);
    struct peer_stats ps;
    /* Removed while it could not hear of it: a peer said so. */
    if (!removed && peer_transport_stats(s->peer, 0, &ps) == 0 && ps.removed)
        atomic_store(&s->removed_ns, removed = util_now_mono_ns() - REMOVED_STOP_NS);
    if (removed && util_now_mono_ns() > removed + REMOVED_STOP_NS) {
        LOG_ERROR(s->lg, "the member has been permanently removed from the cluster");
        return true;
    }
    int st = atomic_load(&s->publish_state);
    struct node_status ns;
    server_node_status(s->node, &ns);
    if (st == 0 && ns.leader)
        publish(s);
    else if (st == 1 && util_now_mono_ns() > s->publish_at_ns + PUBLISH_RETRY_NS)
        server_wait_cancel(s->writes, s->publish_id);
    return false;
}

/* ---- the transport's answer to a member joining ---- */

/* The leader's answer to PEER_ASK_PROGRESS (see PROGRESS_ANSWER_LEN). */
static int answer_progress(struct server *s, uint64_t id, struct util_buf *out) {
    uint64_t match = 0, leader_match = 0;
    int code = server_node_progress(s->node, id, &match, &leader_match);
    if (code == -ENOENT)
        code = MEMBERS_ENOTFOUND;
    uint8_t b[PROGRESS_ANSWER_LEN];
    uint32_t c = (uint32_t)code;
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(c >> (24 - 8 * i));
    for (int i = 0; i < 8; i++) {
        b[4 + i] = (uint8_t)(match >> (56 - 8 * i));
        b[12 + i] = (uint8_t)(leader_match >> (56 - 8 * i));
    }
    return util_buf_append(out, b, sizeof(b));
}

int v3_cluster_answer(void *arg, enum peer_question q, uint64_t about, struct util_buf *out) {
    struct server *s = arg;
    if (q == PEER_ASK_PROGRESS)
        return answer_progress(s, about, out);
    struct member_set set, boot;
    uint64_t cid;
    int rc = members_store_read(s->db, s->members_dbi, &set, &cid, &boot);
    if (rc != 0)
        return rc;
    size_t at = out->len;
    uint8_t len[4] = {0};
    rc = util_buf_append(out, len, 4);
    if (rc == 0)
        rc = members_encode_set(&set, out);
    if (rc == 0) {
        size_t n = out->len - at - 4;
        for (int i = 0; i < 4; i++)
            ((uint8_t *)out->data)[at + (size_t)i] = (uint8_t)(n >> (24 - 8 * i));
        rc = members_encode_set(&boot, out);
    }
    members_free(&set);
    members_free(&boot);
    return rc;
}

/* ---- start-up ---- */

static bool same_urls(char *const *a, size_t na, const struct config_urls *b) {
    if (na != b->n)
        return false;
    for (size_t i = 0; i < na; i++) {
        size_t k = 0;
        while (k < b->n && strcmp(a[i], b->v[k].text) != 0)
            k++;
        if (k == b->n)
            return false;
    }
    return true;
}

/* Appends "id=url,url " for each member, for error messages. */
static void describe(const struct member_set *set, struct util_buf *b) {
    for (size_t i = 0; i < set->n; i++) {
        util_buf_printf(b, "%s%" PRIx64 "=", i ? " " : "", set->v[i].id);
        for (size_t k = 0; k < set->v[i].n_peer_urls; k++)
            util_buf_printf(b, "%s%s", k ? "," : "", set->v[i].peer_urls[k]);
    }
    util_buf_append(b, "", 1);
}

/* --initial-cluster-state existing: asks the members named in
 * --initial-cluster for the cluster (etcd fetches /members from them), checks
 * that the local list matches it (etcd's ValidateClusterAndAssignIDs), and
 * takes this member's id and the cluster id from it. Fills *boot with the
 * set the cluster was bootstrapped with and *current with its members. */
/* Asks the members of --initial-cluster, in turn, for the cluster id, its
 * members and its bootstrap set (the first that answers). */
static int fetch_cluster(struct server *s, uint64_t *cid, struct member_set *boot,
                         struct member_set *current, struct util_err *err) {
    const struct config *cfg = s->cfg;
    struct util_buf ans = {0};
    uint64_t from = 0;
    int rc = -ENOENT;
    for (size_t i = 0; i < cfg->n_initial_cluster && rc != 0; i++) {
        const struct config_member *cm = &cfg->initial_cluster[i];
        if (strcmp(cm->name, cfg->name) == 0)
            continue;
        for (size_t k = 0; k < cm->peer_urls.n && rc != 0; k++) {
            struct util_err e = {0};
            ans.len = 0;
            rc = peer_ask(cm->peer_urls.v[k].text, PEER_ASK_MEMBERS, 0, JOIN_FETCH_MS, cid, &from,
                          &ans, &e);
            if (rc != 0)
                LOG_WARN(s->lg, "cannot get the cluster's members from a peer",
                         LOG_STR("error", e.msg));
        }
    }
    if (rc != 0) {
        util_buf_free(&ans);
        return util_errorf(err, -ENOENT,
                           "cannot fetch cluster info from peer urls: could not retrieve cluster "
                           "information from the given URLs");
    }
    /* The answer: the current set's length (4 bytes), it, the bootstrap set. */
    const uint8_t *p = (const uint8_t *)ans.data;
    size_t n = ans.len, first = 0;
    for (size_t i = 0; i < 4 && n >= 4; i++)
        first = first << 8 | p[i];
    *boot = *current = (struct member_set){0};
    rc = n >= 4 && first <= n - 4 ? members_decode_set(p + 4, first, current) : -EINVAL;
    if (rc == 0)
        rc = members_decode_set(p + 4 + first, n - 4 - first, boot);
    util_buf_free(&ans);
    if (rc != 0) {
        members_free(current);
        return util_errorf(err, -EPROTO, "the member list a peer sent cannot be read");
    }
    return 0;
}

static int join(struct server *s, struct member_set *boot, struct member_set *current,
                struct util_err *err) {
    const struct config *cfg = s->cfg;
    uint64_t cid = 0;
    int rc = fetch_cluster(s, &cid, boot, current, err);
    if (rc != 0)
        return rc;
    /* etcd's ValidateClusterAndAssignIDs, in etcd's words. */
    struct util_buf d = {0};
    describe(current, &d);
    const char *why = NULL;
    uint64_t self = 0;
    if (current->n != cfg->n_initial_cluster)
        why = "member count is unequal";
    for (size_t i = 0; !why && i < current->n; i++) {
        const struct member *m = &current->v[i];
        size_t k = 0;
        while (k < cfg->n_initial_cluster &&
               !same_urls(m->peer_urls, m->n_peer_urls, &cfg->initial_cluster[k].peer_urls))
            k++;
        if (k == cfg->n_initial_cluster)
            why = "PeerURLs: no match found for existing member";
        else if (strcmp(cfg->initial_cluster[k].name, cfg->name) == 0)
            self = m->id;
    }
    const struct member *me = self ? members_find(current, self) : NULL;
    if (!why && !me)
        why = "no member of the cluster has this member's peer URLs";
    if (!why && me && me->name[0])
        why = "this member has already been bootstrapped (its name is published)";
    if (why)
        rc = util_errorf(err, -EINVAL,
                         "error validating peerURLs (cluster %" PRIx64 ", members %s): %s", cid,
                         d.data ? d.data : "", why);
    util_buf_free(&d);
    if (rc != 0) {
        members_free(current);
        members_free(boot);
        return rc;
    }
    s->member_id = self;
    s->cluster_id = cid;
    LOG_INFO(s->lg, "joining an existing cluster", LOG_UINT("member-id", self),
             LOG_UINT("cluster-id", cid), LOG_UINT("members", current->n));
    return 0;
}

/* A restart that finds no member in the store: the key space was lost (a
 * power cut can take LMDB's unsynced pages; the member rebuilds it from a WAL
 * that starts at index 1). The bootstrap set is written again — the identity
 * file's; for a directory from before it recorded one, the flags' when they
 * make this cluster's id, else the other members' — and the log replays every
 * change since. Takes *recorded. */
static int rebuild_store(struct server *s, struct member_set *recorded, struct util_err *err) {
    struct member_set boot = *recorded, current = {0};
    uint64_t theirs = s->cluster_id;
    int rc = 0;
    *recorded = (struct member_set){0};
    if (boot.n == 0 && s->cfg->initial_cluster_new && s->cfg->cluster_id == s->cluster_id)
        rc = members_initial_set(s->cfg, &boot);
    else if (boot.n == 0)
        rc = fetch_cluster(s, &theirs, &boot, &current, err);
    members_free(&current);
    if (rc == 0 && theirs != s->cluster_id)
        rc = util_errorf(err, -EINVAL,
                         "the member store is empty and the members asked belong to cluster "
                         "%" PRIx64 ", not %" PRIx64,
                         theirs, s->cluster_id);
    if (rc == 0 && (rc = members_store_replace(s->db, s->members_dbi, &boot, s->cluster_id)) != 0)
        util_errorf(err, rc, "cannot write the member store: %s", mvcc_strerror(rc));
    if (rc == 0)
        LOG_WARN(s->lg, "the member store was empty; rebuilt it from the bootstrap members",
                 LOG_UINT("members", boot.n));
    members_free(&boot);
    return rc;
}

int v3_cluster_open(struct server *s, struct raft_conf_state *cs, struct util_err *err) {
    const char *dir = server_datadir_path(s->dd);
    int rc = members_store_open(s->db, &s->members_dbi);
    if (rc != 0)
        return util_errorf(err, rc, "cannot open the member store: %s", mvcc_strerror(rc));
    uint64_t mid = 0, cid = 0;
    struct member_set current = {0}, set = {0}, recorded = {0};
    rc = members_identity_read(dir, &mid, &cid, &recorded, err);
    if (rc == 0) {
        /* A restart: the store says who the members are, not the flags. */
        s->member_id = mid;
        s->cluster_id = cid;
    } else if (rc == -ENOENT) {
        struct member_set first;
        if (s->cfg->initial_cluster_new) {
            rc = members_initial_set(s->cfg, &first);
            if (rc != 0)
                return util_errorf(err, rc, "out of memory");
        } else if ((rc = join(s, &first, &current, err)) != 0) {
            return rc;
        }
        rc = members_store_replace(s->db, s->members_dbi, &first, s->cluster_id);
        if (rc != 0)
            util_errorf(err, rc, "cannot write the member store: %s", mvcc_strerror(rc));
        else
            rc = members_identity_write(dir, s->member_id, s->cluster_id, &first, err);
        members_free(&first);
        if (rc != 0) {
            members_free(&current);
            return rc;
        }
    } else {
        return rc;
    }
    rc = members_store_read(s->db, s->members_dbi, &set, &cid, NULL);
    if (rc == 0 && set.n == 0) {
        members_free(&set);
        if ((rc = rebuild_store(s, &recorded, err)) == 0)
            rc = members_store_read(s->db, s->members_dbi, &set, &cid, NULL);
    }
    members_free(&recorded);
    if (rc != 0) {
        members_free(&current);
        return err && err->code
                   ? rc
                   : util_errorf(err, rc, "cannot read the member store: %s", mvcc_strerror(rc));
    }
    members_conf_state(&set, cs);
    /* A member that joined but stopped before replaying its own addition
     * needs today's members to reach the leader (best effort). */
    if (!members_find(&set, s->member_id) && current.n == 0) {
        struct member_set boot;
        struct util_err e = {0};
        uint64_t theirs = 0;
        if (fetch_cluster(s, &theirs, &boot, &current, &e) == 0) {
            members_free(&boot);
            if (theirs != s->cluster_id)
                members_free(&current);
        }
    }
    uint64_t *gone = NULL;
    size_t n_gone = 0;
    mvcc_read_t *rd;
    if ((rc = mvcc_read_begin(s->db, &rd)) == 0) {
        rc = members_store_removed(mvcc_read_txn(rd), s->members_dbi, &gone, &n_gone);
        mvcc_read_end(rd);
    }
    for (size_t i = 0; rc == 0 && i < n_gone; i++) {
        if (gone[i] == s->member_id)
            rc = util_errorf(err, -EINVAL,
                             "the member has been permanently removed from the cluster");
        else
            peer_transport_remove_peer(s->peer, gone[i]);
    }
    free(gone);
    if (rc != 0) {
        members_free(&set);
        members_free(&current);
        return rc;
    }
    /* A member joining talks to today's members while it replays the log
     * from the bootstrap set; the log's changes then bring the transport to
     * the same set. */
    rc = set_peers(s, &set, err);
    if (rc == 0)
        rc = set_peers(s, &current, err);
    members_free(&current);
    if (rc == 0)
        s->raft_members = set;
    else
        members_free(&set);
    return rc;
}
