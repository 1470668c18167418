/* v3_maintenance: etcd's Maintenance and Cluster services for a member alone
 * in its cluster: Status, Hash, HashKV, Defragment, Alarm, MemberList. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

/* Fills a protobuf-c header (for replies built as messages). */
static void header_msg(struct server *s, int64_t revision, Etcdserverpb__ResponseHeader *h) {
    struct pbw_header ph;
    v3_header(s, revision, &ph);
    h->cluster_id = ph.cluster_id;
    h->member_id = ph.member_id;
    h->revision = ph.revision;
    h->raft_term = ph.raft_term;
}

static void on_status(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                      void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_msg(s, 0, &h);
    struct node_status st;
    server_node_status(s->node, &st);
    uint64_t size = 0, in_use = 0;
    mvcc_size(s->db, &size, &in_use);
    Etcdserverpb__StatusResponse r = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    r.header = &h;
    r.version = (char *)UTIL_ETCD_VERSION;
    r.dbsize = (int64_t)size;
    r.leader = st.leader;
    r.raftindex = st.commit;
    r.raftterm = st.term;
    r.raftappliedindex = server_apply_applied(s->apply);
    r.dbsizeinuse = (int64_t)in_use;
    api_call_reply(call, &r.base);
}

static void on_hash_kv(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                       void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    int64_t want = ((Etcdserverpb__HashKVRequest *)msg)->revision;
    protobuf_c_message_free_unpacked(msg, NULL);
    uint32_t hash = 0;
    int64_t cur = 0, compact = 0;
    int rc = mvcc_hash_kv(s->db, want, &hash, &cur, &compact);
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_msg(s, cur, &h);
    Etcdserverpb__HashKVResponse r = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
    r.header = &h;
    r.hash = hash;
    r.compact_revision = compact;
    api_call_reply(call, &r.base);
}

static void on_defragment(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                          void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    uint64_t held_ns = 0;
    struct util_err err = {0};
    int rc = mvcc_defrag(s->db, &held_ns, &err);
    if (rc != 0) {
        LOG_WARN(s->lg, "defragmentation failed", LOG_STR("error", err.msg));
        api_call_finish(call, API_GRPC_UNKNOWN, err.msg);
        return;
    }
    LOG_INFO(s->lg, "defragmented the key space", LOG_UINT("writes-held-us", held_ns / 1000));
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_msg(s, 0, &h);
    Etcdserverpb__DefragmentResponse r = ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
    r.header = &h;
    api_call_reply(call, &r.base);
}

/* Alarms are raised through raft with the quota (NOSPACE); none can be raised
 * yet, so the list is empty and disarming is a no-op, as on a healthy etcd. */
static void on_alarm(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                     void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_msg(s, 0, &h);
    Etcdserverpb__AlarmResponse r = ETCDSERVERPB__ALARM_RESPONSE__INIT;
    r.header = &h;
    api_call_reply(call, &r.base);
}

static void on_member_list(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                           void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    const struct config *cfg = s->cfg;
    char **peer = calloc(cfg->initial_advertise_peer_urls.n + 1, sizeof(*peer));
    char **client = calloc(cfg->advertise_client_urls.n + 1, sizeof(*client));
    if (!peer || !client) {
        free(peer);
        free(client);
        v3_fail(call, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < cfg->initial_advertise_peer_urls.n; i++)
        peer[i] = cfg->initial_advertise_peer_urls.v[i].text;
    for (size_t i = 0; i < cfg->advertise_client_urls.n; i++)
        client[i] = cfg->advertise_client_urls.v[i].text;
    Etcdserverpb__Member m = ETCDSERVERPB__MEMBER__INIT;
    m.id = s->member_id;
    m.name = cfg->name;
    m.n_peerurls = cfg->initial_advertise_peer_urls.n;
    m.peerurls = peer;
    m.n_clienturls = cfg->advertise_client_urls.n;
    m.clienturls = client;
    Etcdserverpb__Member *members[1] = {&m};
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    header_msg(s, 0, &h);
    h.revision = 0; /* etcd leaves the revision out of cluster responses */
    Etcdserverpb__MemberListResponse r = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    r.header = &h;
    r.n_members = 1;
    r.members = members;
    api_call_reply(call, &r.base);
    free(peer);
    free(client);
}

int v3_maintenance_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Maintenance/Status",
         .request = &etcdserverpb__status_request__descriptor,
         .on_message = on_status,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/HashKV",
         .request = &etcdserverpb__hash_kvrequest__descriptor,
         .on_message = on_hash_kv,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/Defragment",
         .request = &etcdserverpb__defragment_request__descriptor,
         .on_message = on_defragment,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/Alarm",
         .request = &etcdserverpb__alarm_request__descriptor,
         .on_message = on_alarm,
         .arg = s},
        {.path = "/etcdserverpb.Cluster/MemberList",
         .request = &etcdserverpb__member_list_request__descriptor,
         .on_message = on_member_list,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
