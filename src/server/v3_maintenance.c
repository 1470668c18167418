/* v3_maintenance: etcd's Maintenance service: Status, Hash, HashKV,
 * Defragment, Snapshot, MoveLeader (v3_move_leader.c), and GET /health. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

/* etcd's Status of this member: raft's view (leader, commit index, term,
 * applied index, learner), the database sizes, and as errors "etcdserver: no
 * leader" when none is known and each raised alarm as etcd prints one. */
static void on_status(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                      void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    Etcdserverpb__AlarmMember *alarms = NULL;
    size_t n_alarms = 0;
    int rc = v3_alarm_list(s, 0, 0, &alarms, &n_alarms);
    char **errors = calloc(n_alarms + 1, sizeof(*errors));
    char *text = malloc((n_alarms + 1) * 64);
    if (rc == 0 && (!errors || !text))
        rc = -ENOMEM;
    if (rc != 0) {
        free(alarms);
        free(errors);
        free(text);
        v3_fail(call, rc);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    v3_header_msg(s, 0, &h);
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
    r.islearner = st.is_learner;
    if (!st.leader)
        errors[r.n_errors++] = "etcdserver: no leader";
    for (size_t i = 0; i < n_alarms; i++) {
        /* Go's compact text form of an AlarmMember, trailing space included. */
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
            &etcdserverpb__alarm_type__descriptor, (int)alarms[i].alarm);
        char *t = text + 64 * i;
        snprintf(t, 64, "memberID:%llu alarm:%s ", (unsigned long long)alarms[i].memberid,
                 v ? v->name : "NONE");
        errors[r.n_errors++] = t;
    }
    r.errors = errors;
    api_call_reply(call, &r.base);
    free(alarms);
    free(errors);
    free(text);
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
    v3_header_msg(s, cur, &h);
    Etcdserverpb__HashKVResponse r = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
    r.header = &h;
    r.hash = hash;
    r.compact_revision = compact;
    api_call_reply(call, &r.base);
}

/* etcd's Hash covers its whole backend file; quoin's equivalent is the key
 * space's own hash at the current revision (the other tables are derived from
 * it or are per member), so equal histories give equal answers. */
static void on_hash(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                    void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    uint32_t hash = 0;
    int64_t cur = 0, compact = 0;
    int rc = mvcc_hash_kv(s->db, 0, &hash, &cur, &compact);
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    v3_header_msg(s, cur, &h);
    Etcdserverpb__HashResponse r = ETCDSERVERPB__HASH_RESPONSE__INIT;
    r.header = &h;
    r.hash = hash;
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
    v3_header_msg(s, 0, &h);
    Etcdserverpb__DefragmentResponse r = ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
    r.header = &h;
    api_call_reply(call, &r.base);
}

/* ---- Snapshot ----------------------------------------------------------------
 * A consistent copy of the key space is written to an unnamed temporary file
 * in the data directory on a worker thread (writers go on meanwhile), then
 * streamed in 32 KiB messages as etcd does, followed by one message holding
 * the SHA-256 of everything sent, which etcd's tools check. A slow client
 * holds only the stream's bounded buffer: sending resumes on on_writable. */

#define SNAPSHOT_CHUNK (32 * 1024)

struct snapshot {
    uv_work_t work;
    struct server *s;
    api_call_t *call;
    int fd;
    int copy_rc;
    uint64_t size, sent;
    EVP_MD_CTX *sha;
    bool digest_sent;
};

static void snapshot_free(struct snapshot *sn) {
    if (sn->fd >= 0)
        close(sn->fd);
    EVP_MD_CTX_free(sn->sha);
    free(sn);
}

static void snapshot_copy(uv_work_t *req) {
    struct snapshot *sn = req->data;
    sn->copy_rc = mvcc_snapshot_to_fd(sn->s->db, sn->fd);
    struct stat st;
    if (sn->copy_rc == 0 && fstat(sn->fd, &st) != 0)
        sn->copy_rc = -errno;
    sn->size = sn->copy_rc == 0 ? (uint64_t)st.st_size : 0;
}

/* Sends chunks until the stream's buffer is full or everything is sent. */
static void snapshot_pump(struct snapshot *sn) {
    uint8_t buf[SNAPSHOT_CHUNK];
    for (;;) {
        Etcdserverpb__SnapshotResponse r = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
        unsigned char digest[EVP_MAX_MD_SIZE];
        size_t n;
        if (sn->sent < sn->size) {
            ssize_t got = pread(sn->fd, buf, SNAPSHOT_CHUNK, (off_t)sn->sent);
            if (got <= 0) {
                api_call_finish(sn->call, API_GRPC_INTERNAL, "snapshot: cannot read the copy");
                snapshot_free(sn);
                return;
            }
            n = (size_t)got;
            r.blob.data = buf;
            r.blob.len = n;
            r.remaining_bytes = sn->size - sn->sent - n;
        } else if (!sn->digest_sent) {
            unsigned int dlen = 0;
            EVP_DigestFinal_ex(sn->sha, digest, &dlen);
            n = 0;
            r.blob.data = digest;
            r.blob.len = dlen;
        } else {
            api_call_finish(sn->call, API_GRPC_OK, NULL);
            snapshot_free(sn);
            return;
        }
        int rc = api_call_send(sn->call, &r.base);
        if (rc == -EAGAIN)
            return; /* resumed by on_writable; nothing of this chunk was taken */
        if (rc != 0) {
            api_call_finish(sn->call, API_GRPC_CANCELLED, "snapshot: client went away");
            snapshot_free(sn);
            return;
        }
        if (n) {
            EVP_DigestUpdate(sn->sha, buf, n);
            sn->sent += n;
        } else {
            sn->digest_sent = true;
        }
    }
}

static void snapshot_copied(uv_work_t *req, int status) {
    struct snapshot *sn = req->data;
    if (status != 0 || sn->copy_rc != 0) {
        LOG_WARN(sn->s->lg, "snapshot copy failed", LOG_STR("error", mvcc_strerror(sn->copy_rc)));
        api_call_finish(sn->call, API_GRPC_INTERNAL, "snapshot: cannot copy the database");
        snapshot_free(sn);
        return;
    }
    LOG_INFO(sn->s->lg, "sending database snapshot", LOG_UINT("size", sn->size));
    api_call_set_data(sn->call, sn);
    snapshot_pump(sn);
}

static void on_snapshot_writable(api_call_t *call, void *arg) {
    (void)arg;
    struct snapshot *sn = api_call_data(call);
    if (sn)
        snapshot_pump(sn);
}

static void on_snapshot_open(api_call_t *call, void *arg) {
    (void)call;
    (void)arg;
}

static void on_snapshot(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                        void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    protobuf_c_message_free_unpacked(msg, NULL);
    struct snapshot *sn = calloc(1, sizeof(*sn));
    if (!sn) {
        v3_fail(call, -ENOMEM);
        return;
    }
    *sn = (struct snapshot){.s = s, .call = call, .fd = -1};
    sn->work.data = sn;
    sn->fd = server_open_temp(server_datadir_path(s->dd));
    sn->sha = EVP_MD_CTX_new();
    if (sn->fd < 0 || !sn->sha || !EVP_DigestInit_ex(sn->sha, EVP_sha256(), NULL) ||
        uv_queue_work(&s->loop, &sn->work, snapshot_copy, snapshot_copied) != 0) {
        api_call_finish(call, API_GRPC_INTERNAL, "snapshot: cannot start the copy");
        snapshot_free(sn);
    }
}

/* ---- /health ------------------------------------------------------------------ */

/* The waiter of the health check's read index. Any thread. */
static void health_read_done(void *ctx, void *result) {
    const struct read_outcome *o = result;
    api_health_report(ctx, o && o->code == 0);
}

static void on_health(api_http_req_t *req, void *arg) {
    struct server *s = arg;
    struct node_status st;
    server_node_status(s->node, &st);
    if (st.leader == 0 || atomic_load(&s->nospace_active)) {
        api_health_report(req, false);
        return;
    }
    uint64_t id = server_next_id(s);
    if (server_wait_register(s->reads, id, health_read_done, req) != 0) {
        api_health_report(req, false);
        return;
    }
    if (server_node_read_index(s->node, id) != 0)
        server_wait_cancel(s->reads, id); /* answers unhealthy */
}

void v3_health_register(struct server *s) {
    api_server_set_health_check(s->api, on_health, s);
}

int v3_maintenance_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Maintenance/Status",
         .request = &etcdserverpb__status_request__descriptor,
         .response = &etcdserverpb__status_response__descriptor,
         .on_message = on_status,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/HashKV",
         .request = &etcdserverpb__hash_kvrequest__descriptor,
         .response = &etcdserverpb__hash_kvresponse__descriptor,
         .on_message = on_hash_kv,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/Hash",
         .request = &etcdserverpb__hash_request__descriptor,
         .response = &etcdserverpb__hash_response__descriptor,
         .on_message = on_hash,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/Defragment",
         .request = &etcdserverpb__defragment_request__descriptor,
         .response = &etcdserverpb__defragment_response__descriptor,
         .on_message = on_defragment,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/Snapshot",
         .server_streaming = true,
         .request = &etcdserverpb__snapshot_request__descriptor,
         .response = &etcdserverpb__snapshot_response__descriptor,
         .on_open = on_snapshot_open,
         .on_message = on_snapshot,
         .on_writable = on_snapshot_writable,
         .arg = s},
        {.path = "/etcdserverpb.Maintenance/MoveLeader",
         .request = &etcdserverpb__move_leader_request__descriptor,
         .response = &etcdserverpb__move_leader_response__descriptor,
         .on_message = v3_move_leader,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
