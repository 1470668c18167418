/* v3_compact: removing compacted history in the background, and etcd's
 * auto-compaction. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "server/v3.h"

/* Records removed per LMDB transaction, and the pause between two, as etcd's
 * --experimental-compaction-batch-limit (1000) and its 10 ms: a writer waits
 * one short step at most, and the sweep leaves the writer room. */
#define COMPACT_STEP_RECORDS 1000
#define COMPACT_STEP_PAUSE_NS 10000000L

struct v3_compaction {
    uv_work_t work;
    struct server *s;
    api_call_t *call; /* answered once done; NULL: nobody waits */
};

void v3_answer_header_only(struct server *s, api_call_t *call, int64_t revision) {
    struct pbw_header h;
    v3_header(s, revision, &h);
    struct util_buf b = {0};
    if (pbw_header(&b, 1, &h) == 0)
        api_call_send_raw(call, b.data, b.len);
    api_call_finish(call, API_GRPC_OK, NULL);
    util_buf_free(&b);
}

static void compaction_work(uv_work_t *req) {
    struct v3_compaction *c = req->data;
    bool done = false;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = COMPACT_STEP_PAUSE_NS};
    while (mvcc_compact_step(c->s->db, COMPACT_STEP_RECORDS, &done) == 0 && !done)
        nanosleep(&pause, NULL);
}

static void compaction_after(uv_work_t *req, int status) {
    (void)status;
    struct v3_compaction *c = req->data;
    if (c->call)
        v3_answer_header_only(c->s, c->call, 0);
    free(c);
}

static void compaction_queue(void *ctx) {
    struct v3_compaction *c = ctx;
    c->work.data = c;
    if (uv_queue_work(&c->s->loop, &c->work, compaction_work, compaction_after) != 0)
        compaction_after(&c->work, -1);
}

struct v3_compaction *v3_compaction_new(struct server *s) {
    struct v3_compaction *c = calloc(1, sizeof(*c));
    if (c)
        c->s = s;
    return c;
}

void v3_compaction_answer_when_done(struct v3_compaction *c, api_call_t *call) {
    c->call = call;
}

void v3_compaction_start(struct server *s, struct v3_compaction *c) {
    if (server_post(s, compaction_queue, c) != 0) {
        if (c->call)
            v3_fail(c->call, -ENOMEM);
        free(c);
    }
}

void v3_compaction_resume(struct server *s) {
    bool pending = false;
    if (mvcc_compact_pending(s->db, &pending) != 0 || !pending)
        return;
    struct v3_compaction *c = v3_compaction_new(s);
    if (c)
        v3_compaction_start(s, c);
}

/* ---- auto-compaction ---------------------------------------------------------
 * revision mode: every 5 s (etcd: every 5 minutes) the leader compacts at the
 * current revision minus the retention, when that moved.
 * periodic mode: the leader samples the revision every tenth of the retention
 * (at least every second, at most every hour) and compacts at the revision it
 * sampled one retention ago, as etcd 3.4's periodic compactor does. */

#define REVISION_CHECK_NS 5000000000ull

static void propose_compaction(struct server *s, int64_t revision) {
    Etcdserverpb__CompactionRequest q = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    q.revision = revision;
    uint8_t e[V3_ENTRY_HEADER + 16];
    uint64_t id = server_next_id(s);
    e[0] = V3_ENTRY_FORMAT;
    e[1] = V3_ENTRY_COMPACT;
    for (int i = 0; i < 8; i++)
        e[2 + i] = (uint8_t)(id >> (56 - 8 * i));
    size_t n = etcdserverpb__compaction_request__pack(&q, e + V3_ENTRY_HEADER);
    if (server_node_propose(s->node, e, V3_ENTRY_HEADER + n) == 0) {
        s->last_auto_compact = revision;
        LOG_INFO(s->lg, "auto-compaction proposed", LOG_INT("revision", revision));
    }
}

void v3_autocompact_tick(struct server *s) {
    const struct config *cfg = s->cfg;
    if (!cfg->auto_compaction_retention_ns && !cfg->auto_compaction_retention_revs)
        return;
    struct node_status st;
    server_node_status(s->node, &st);
    uint64_t now = util_now_mono_ns();
    if (!st.is_leader || now < s->next_compact_check_ns)
        return;
    uint64_t idx, term;
    int64_t rev, compacted;
    mvcc_state(s->db, &idx, &term, &rev, &compacted);
    if (cfg->auto_compaction_retention_revs) {
        s->next_compact_check_ns = now + REVISION_CHECK_NS;
        int64_t target = rev - cfg->auto_compaction_retention_revs;
        if (target > compacted && target > s->last_auto_compact)
            propose_compaction(s, target);
        return;
    }
    uint64_t retention = cfg->auto_compaction_retention_ns;
    uint64_t every = retention / 10;
    every = every < 1000000000ull      ? 1000000000ull
            : every > 3600000000000ull ? 3600000000000ull
                                       : every;
    s->next_compact_check_ns = now + every;
    size_t cap = sizeof(s->compact_samples) / sizeof(s->compact_samples[0]);
    if (s->n_compact_samples == cap) {
        for (size_t i = 1; i < cap; i++)
            s->compact_samples[i - 1] = s->compact_samples[i];
        s->n_compact_samples--;
    }
    s->compact_samples[s->n_compact_samples].at_ns = now;
    s->compact_samples[s->n_compact_samples].revision = rev;
    s->n_compact_samples++;
    /* The newest sample at least one retention old. */
    int64_t target = 0;
    for (size_t i = 0; i < s->n_compact_samples; i++)
        if (now - s->compact_samples[i].at_ns >= retention)
            target = s->compact_samples[i].revision;
    if (target > compacted && target > s->last_auto_compact)
        propose_compaction(s, target);
}
