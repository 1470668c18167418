/* codec: struct raft_msg to and from raftpb.Message (etcd's field numbers), and
 * the frame header every peer frame starts with. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "peer/peer_int.h"
#include "peer/proto/raft.pb-c.h"

void peer_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t peer_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

const char *peer_hex(uint64_t id, char *buf) {
    snprintf(buf, 17, "%" PRIx64, id);
    return buf;
}

size_t peer_vtext(char *buf, const char *fmt, va_list ap) {
    int n = vsnprintf(buf, UTIL_ERR_MAX, fmt, ap);
    return n < 0 ? 0 : n >= UTIL_ERR_MAX ? UTIL_ERR_MAX - 1 : (size_t)n;
}

void peer_frame_header(uint8_t *p, uint8_t type, uint32_t len) {
    p[0] = PEER_MAGIC0;
    p[1] = PEER_MAGIC1;
    p[2] = PEER_VERSION;
    p[3] = type;
    p[4] = (uint8_t)(len >> 24);
    p[5] = (uint8_t)(len >> 16);
    p[6] = (uint8_t)(len >> 8);
    p[7] = (uint8_t)len;
}

/* etcd's gogoproto fields are non-nullable, so etcd writes them even when
 * zero; every has_ flag is set to produce the same bytes. */
int peer_msg_encode(const struct raft_msg *m, uint8_t type, struct peer_frame **out) {
    int rc = -ENOMEM;
    struct peer_frame *f = NULL;
    Raftpb__Entry *ents = NULL, **ptrs = NULL;
    Raftpb__Message pm = RAFTPB__MESSAGE__INIT;
    Raftpb__Snapshot ps = RAFTPB__SNAPSHOT__INIT;
    Raftpb__SnapshotMetadata pmeta = RAFTPB__SNAPSHOT_METADATA__INIT;
    Raftpb__ConfState pcs = RAFTPB__CONF_STATE__INIT;
    uint8_t ctx[8];

    pm.has_type = pm.has_to = pm.has_from = pm.has_term = pm.has_logterm = pm.has_index = 1;
    pm.has_commit = pm.has_reject = pm.has_rejecthint = 1;
    pm.type = (Raftpb__MessageType)m->type;
    pm.to = m->to;
    pm.from = m->from;
    pm.term = m->term;
    pm.logterm = m->log_term;
    pm.index = m->index;
    pm.commit = m->commit;
    pm.reject = m->reject;
    pm.rejecthint = m->reject_hint;
    if (m->context) {
        peer_put_u64(ctx, m->context);
        pm.has_context = 1;
        pm.context = (ProtobufCBinaryData){.len = 8, .data = ctx};
    }
    if (m->n_entries) {
        ents = calloc(m->n_entries, sizeof(*ents));
        ptrs = calloc(m->n_entries, sizeof(*ptrs));
        if (!ents || !ptrs)
            goto err;
        for (size_t i = 0; i < m->n_entries; i++) {
            const struct raft_entry *e = &m->entries[i];
            raftpb__entry__init(&ents[i]);
            ents[i].has_type = ents[i].has_term = ents[i].has_index = ents[i].has_data = 1;
            ents[i].type = (Raftpb__EntryType)e->type;
            ents[i].term = e->term;
            ents[i].index = e->index;
            ents[i].data = (ProtobufCBinaryData){.len = e->len, .data = e->data};
            ptrs[i] = &ents[i];
        }
        pm.n_entries = m->n_entries;
        pm.entries = ptrs;
    }
    if (m->type == RAFT_MSG_SNAP && m->snapshot) {
        const struct raft_snapshot_meta *sm = &m->snapshot->meta;
        pcs.n_voters = sm->conf.n_voters;
        pcs.voters = (uint64_t *)sm->conf.voters;
        pcs.n_learners = sm->conf.n_learners;
        pcs.learners = (uint64_t *)sm->conf.learners;
        pcs.has_auto_leave = 1;
        pmeta.conf_state = &pcs;
        pmeta.has_index = pmeta.has_term = 1;
        pmeta.index = sm->index;
        pmeta.term = sm->term;
        ps.metadata = &pmeta;
        pm.snapshot = &ps;
    }
    size_t n = raftpb__message__get_packed_size(&pm);
    if (n > PEER_MAX_FRAME) {
        rc = -EINVAL;
        goto err;
    }
    f = malloc(sizeof(*f) + PEER_FRAME_HDR + n);
    if (!f)
        goto err;
    f->next = NULL;
    f->len = PEER_FRAME_HDR + n;
    peer_frame_header(f->data, type, (uint32_t)n);
    size_t packed = raftpb__message__pack(&pm, f->data + PEER_FRAME_HDR);
    assert(packed == n);
    (void)packed;
    free(ents);
    free(ptrs);
    *out = f;
    return 0;
err:
    free(ents);
    free(ptrs);
    return rc;
}

static bool local_type(uint32_t t) {
    return t == RAFT_MSG_HUP || t == RAFT_MSG_BEAT || t == RAFT_MSG_UNREACHABLE ||
           t == RAFT_MSG_SNAP_STATUS || t == RAFT_MSG_CHECK_QUORUM || t > RAFT_MSG_PRE_VOTE_RESP;
}

/* The event, its entries, their data, the snapshot and the path share one
 * allocation, so the raft thread frees a message with one call. */
int peer_msg_decode(const uint8_t *p, size_t len, const char *snap_path, uint64_t snap_len,
                    struct peer_box **out) {
    Raftpb__Message *pm = raftpb__message__unpack(NULL, len, p);
    if (!pm)
        return -EINVAL;
    int rc = -EINVAL;
    if (local_type(pm->type) || (pm->has_context && pm->context.len > 8))
        goto err;
    const Raftpb__SnapshotMetadata *meta = pm->snapshot ? pm->snapshot->metadata : NULL;
    const Raftpb__ConfState *cs = meta ? meta->conf_state : NULL;
    if (((uint32_t)pm->type == RAFT_MSG_SNAP) != (meta != NULL))
        goto err;
    if (cs && (cs->n_voters > RAFT_MAX_MEMBERS || cs->n_learners > RAFT_MAX_MEMBERS ||
               cs->n_voters_outgoing || cs->n_learners_next))
        goto err;
    size_t size = sizeof(struct peer_box) + pm->n_entries * sizeof(struct raft_entry);
    for (size_t i = 0; i < pm->n_entries; i++) {
        if (pm->entries[i]->data.len > UINT32_MAX ||
            (uint32_t)pm->entries[i]->type > RAFT_ENTRY_CONF_CHANGE)
            goto err;
        size += pm->entries[i]->data.len;
    }
    if (meta)
        size += sizeof(struct raft_snapshot) + (snap_path ? strlen(snap_path) + 1 : 0);
    rc = -ENOMEM;
    struct peer_box *b = calloc(1, size);
    if (!b)
        goto err;
    b->size = size;
    struct peer_event *ev = &b->ev;
    ev->type = PEER_EV_MSG;
    ev->peer = pm->from;
    struct raft_msg *m = &ev->msg;
    m->type = pm->type;
    m->to = pm->to;
    m->from = pm->from;
    m->term = pm->term;
    m->log_term = pm->logterm;
    m->index = pm->index;
    m->commit = pm->commit;
    m->reject = pm->reject;
    m->reject_hint = pm->rejecthint;
    for (size_t i = 0; pm->has_context && i < pm->context.len; i++)
        m->context = m->context << 8 | pm->context.data[i];
    uint8_t *cur = (uint8_t *)(b + 1);
    if (meta) {
        struct raft_snapshot *s = (struct raft_snapshot *)cur;
        cur += sizeof(*s);
        s->meta.index = meta->index;
        s->meta.term = meta->term;
        if (cs) {
            s->meta.conf.n_voters = (uint32_t)cs->n_voters;
            s->meta.conf.n_learners = (uint32_t)cs->n_learners;
            for (size_t i = 0; i < cs->n_voters; i++)
                s->meta.conf.voters[i] = cs->voters[i];
            for (size_t i = 0; i < cs->n_learners; i++)
                s->meta.conf.learners[i] = cs->learners[i];
        }
        m->snapshot = s;
    }
    if (pm->n_entries) {
        struct raft_entry *ents = (struct raft_entry *)cur;
        cur += pm->n_entries * sizeof(*ents);
        for (size_t i = 0; i < pm->n_entries; i++) {
            const Raftpb__Entry *pe = pm->entries[i];
            ents[i] = (struct raft_entry){.term = pe->term,
                                          .index = pe->index,
                                          .type = pe->type,
                                          .len = (uint32_t)pe->data.len,
                                          .data = cur};
            if (pe->data.len)
                memcpy(cur, pe->data.data, pe->data.len);
            cur += pe->data.len;
        }
        m->entries = ents;
        m->n_entries = pm->n_entries;
    }
    if (meta && snap_path) {
        struct raft_snapshot *s = (struct raft_snapshot *)m->snapshot;
        strcpy((char *)cur, snap_path);
        ev->snap_path = (const char *)cur;
        ev->snap_size = snap_len;
        s->data = cur;
        s->len = strlen(snap_path);
    }
    raftpb__message__free_unpacked(pm, NULL);
    *out = b;
    return 0;
err:
    raftpb__message__free_unpacked(pm, NULL);
    return rc;
}
