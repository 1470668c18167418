/* v3_alarm: etcd's alarms. A write that would take the key space past
 * --quota-backend-bytes raises the NOSPACE alarm through raft; once applied,
 * every member refuses writes that add data ("etcdserver: mvcc: database space
 * exceeded") until an operator compacts, defragments and disarms it
 * (`etcdctl alarm disarm`), as in etcd. Alarms are stored in the LMDB database
 * "alarm" (member id, 8 bytes, then type, 4 bytes, big-endian), so a restart
 * keeps them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/v3.h"

static void alarm_key(uint64_t member, uint32_t type, uint8_t k[12]) {
    for (int i = 0; i < 8; i++)
        k[i] = (uint8_t)(member >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        k[8 + i] = (uint8_t)(type >> (24 - 8 * i));
}

static void alarm_decode(const MDB_val *k, uint64_t *member, uint32_t *type) {
    const uint8_t *p = k->mv_data;
    *member = 0;
    *type = 0;
    for (int i = 0; i < 8; i++)
        *member = *member << 8 | p[i];
    for (int i = 8; i < 12; i++)
        *type = *type << 8 | p[i];
}

/* Whether any NOSPACE alarm is stored, as txn sees the store. */
static int nospace_raised(struct server *s, MDB_txn *txn, bool *raised) {
    MDB_cursor *cur;
    *raised = false;
    int rc = mdb_cursor_open(txn, s->alarm_dbi, &cur);
    if (rc != 0)
        return -EIO;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t member;
        uint32_t type;
        if (k.mv_size != 12)
            continue;
        alarm_decode(&k, &member, &type);
        if (type == ETCDSERVERPB__ALARM_TYPE__NOSPACE)
            *raised = true;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : -EIO;
}

int v3_alarm_open(struct server *s, struct util_err *err) {
    int rc = mvcc_dbi_open(s->db, "alarm", &s->alarm_dbi);
    if (rc != 0)
        return util_errorf(err, rc, "cannot open the alarm store: %s", mvcc_strerror(rc));
    if ((rc = v3_alarm_reload(s)) != 0)
        return util_errorf(err, rc, "cannot read the alarm store");
    return 0;
}

int v3_alarm_reload(struct server *s) {
    mvcc_read_t *rd;
    bool raised = false;
    int rc = mvcc_read_begin(s->db, &rd);
    if (rc == 0) {
        rc = nospace_raised(s, mvcc_read_txn(rd), &raised);
        mvcc_read_end(rd);
    }
    if (rc != 0)
        return rc;
    if (raised)
        LOG_WARN(s->lg, "the NOSPACE alarm is raised: writes are refused until it is disarmed");
    mvcc_set_capped(s->db, raised);
    atomic_store(&s->nospace_active, raised);
    return 0;
}

int v3_alarm_apply(struct server *s, mvcc_batch_t *b, uint64_t id, const uint8_t *p, size_t len,
                   struct apply_done *done) {
    Etcdserverpb__AlarmRequest *q = etcdserverpb__alarm_request__unpack(NULL, len, p);
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (!a) {
        etcdserverpb__alarm_request__free_unpacked(q, NULL);
        return -ENOMEM;
    }
    *a = (struct v3_applied){.s = s, .id = id, .kind = V3_ENTRY_ALARM};
    int rc = 0;
    if (q && q->action != ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET) {
        uint8_t kb[12];
        alarm_key(q->memberid, (uint32_t)q->alarm, kb);
        MDB_val k = {.mv_size = sizeof(kb), .mv_data = kb}, v = {.mv_size = 0, .mv_data = kb};
        MDB_txn *txn = mvcc_batch_txn(b);
        bool activate = q->action == ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE;
        int mrc =
            activate ? mdb_put(txn, s->alarm_dbi, &k, &v, 0) : mdb_del(txn, s->alarm_dbi, &k, NULL);
        if (mrc != 0 && mrc != MDB_NOTFOUND)
            rc = -EIO;
        a->alarm_changed = mrc == 0;
        a->alarm_member = q->memberid;
        a->alarm_type = (int)q->alarm;
        if (!activate)
            atomic_store(&s->nospace_proposed, false); /* a new excess raises it again */
        bool raised = false;
        if (rc == 0 && (rc = nospace_raised(s, txn, &raised)) == 0) {
            mvcc_set_capped(s->db, raised);
            atomic_store(&s->nospace_active, raised);
        }
    }
    etcdserverpb__alarm_request__free_unpacked(q, NULL);
    return v3_applied_hand_over(s, a, rc, done);
}

/* Answers with the alarms of `list` (n of them). */
static void answer_alarms(api_call_t *call, const Etcdserverpb__AlarmMember *list, size_t n) {
    Etcdserverpb__AlarmMember **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    if (!ptrs) {
        v3_fail(call, -ENOMEM);
        return;
    }
    for (size_t i = 0; i < n; i++)
        ptrs[i] = (Etcdserverpb__AlarmMember *)&list[i];
    /* etcd sends alarm answers without a header. */
    Etcdserverpb__AlarmResponse r = ETCDSERVERPB__ALARM_RESPONSE__INIT;
    r.n_alarms = n;
    r.alarms = ptrs;
    api_call_reply(call, &r.base);
    free(ptrs);
}

/* The alarm a write changed (ACTIVATE: the one raised; DEACTIVATE: the one
 * removed, none if it was not raised), as etcd answers. */
static void answer_changed(struct server *s, api_call_t *call, struct v3_applied *a) {
    (void)s;
    Etcdserverpb__AlarmMember m = ETCDSERVERPB__ALARM_MEMBER__INIT;
    m.memberid = a->alarm_member;
    m.alarm = (Etcdserverpb__AlarmType)a->alarm_type;
    answer_alarms(call, &m, a->alarm_changed ? 1 : 0);
}

int v3_alarm_list(struct server *s, uint64_t member, uint32_t type, Etcdserverpb__AlarmMember **out,
                  size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(s->db, &rd);
    if (rc != 0)
        return rc;
    Etcdserverpb__AlarmMember *list = NULL;
    size_t n = 0;
    MDB_cursor *cur;
    if (mdb_cursor_open(mvcc_read_txn(rd), s->alarm_dbi, &cur) == 0) {
        MDB_val k, v;
        for (int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
             mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            uint64_t m;
            uint32_t t;
            if (k.mv_size != 12)
                continue;
            alarm_decode(&k, &m, &t);
            if ((member && m != member) || (type && t != type))
                continue;
            Etcdserverpb__AlarmMember *grown = realloc(list, (n + 1) * sizeof(*list));
            if (!grown) {
                rc = -ENOMEM;
                break;
            }
            list = grown;
            etcdserverpb__alarm_member__init(&list[n]);
            list[n].memberid = m;
            list[n].alarm = (Etcdserverpb__AlarmType)t;
            n++;
        }
        mdb_cursor_close(cur);
    }
    mvcc_read_end(rd);
    if (rc != 0) {
        free(list);
        return rc;
    }
    *out = list;
    *n_out = n;
    return 0;
}

/* Lists the stored alarms matching member and type (0 / NONE: any). */
static void answer_list(struct server *s, api_call_t *call, uint64_t member, uint32_t type) {
    Etcdserverpb__AlarmMember *list;
    size_t n;
    int rc = v3_alarm_list(s, member, type, &list, &n);
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    answer_alarms(call, list, n);
    free(list);
}

static void on_alarm(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                     void *arg) {
    struct server *s = arg;
    Etcdserverpb__AlarmRequest *q = (Etcdserverpb__AlarmRequest *)msg;
    bool get = q->action == ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET;
    uint64_t member = q->memberid;
    uint32_t type = (uint32_t)q->alarm;
    protobuf_c_message_free_unpacked(msg, NULL);
    if (get)
        answer_list(s, call, member, type);
    else
        v3_propose(s, call, V3_ENTRY_ALARM, data, len, answer_changed);
}

void v3_alarm_raise_nospace(struct server *s) {
    if (atomic_exchange(&s->nospace_proposed, true))
        return;
    LOG_WARN(s->lg, "database space exceeded: raising the NOSPACE alarm",
             LOG_INT("quota-backend-bytes", s->cfg->quota_backend_bytes));
    Etcdserverpb__AlarmRequest q = ETCDSERVERPB__ALARM_REQUEST__INIT;
    q.action = ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE;
    q.memberid = s->member_id;
    q.alarm = ETCDSERVERPB__ALARM_TYPE__NOSPACE;
    uint8_t e[V3_ENTRY_HEADER + 32];
    uint64_t id = server_next_id(s);
    e[0] = V3_ENTRY_FORMAT;
    e[1] = V3_ENTRY_ALARM;
    for (int i = 0; i < 8; i++)
        e[2 + i] = (uint8_t)(id >> (56 - 8 * i));
    size_t n = etcdserverpb__alarm_request__pack(&q, e + V3_ENTRY_HEADER);
    if (server_node_propose(s->node, e, V3_ENTRY_HEADER + n) != 0)
        atomic_store(&s->nospace_proposed, false); /* the next refused write retries */
}

int v3_alarm_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Maintenance/Alarm",
         .request = &etcdserverpb__alarm_request__descriptor,
         .response = &etcdserverpb__alarm_response__descriptor,
         .on_message = on_alarm,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
