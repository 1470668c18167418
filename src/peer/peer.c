/* peer: the transport's loop — listeners, the handshake, one outgoing stream
 * per peer with its bounded queue and redial backoff, incoming streams and the
 * inbox the raft thread drains. Snapshot connections are in snap.c. */
#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "peer/peer_int.h"

struct peer_listener {
    uv_tcp_t tcp;
    peer_transport_t *pt;
    struct peer_listener *next;
    char addr[UTIL_ADDR_MAX];
};

/* A control frame being written, with its own copy of the bytes. */
struct peer_wreq {
    uv_write_t req;
    struct peer_conn *conn;
    bool close_after;
    uv_write_cb cb;
    uint8_t data[];
};

#define WRITE_BATCH 64
#define PEER_USER_TIMEOUT_MS 15000
#define PEER_KEEPALIVE_S 10

static void dial(peer_transport_t *pt, struct peer_remote *r);
static void schedule_redial(peer_transport_t *pt, struct peer_remote *r);
static void handle_closed(peer_transport_t *pt);
static void handle_closed_cb(uv_handle_t *h);
static void maybe_free_peer(peer_transport_t *pt, struct peer_remote *r);

/* ---- inbox ---- */

/* Appends b; pt->mu held. Returns whether the inbox was empty (notify). */
static bool inbox_append_locked(peer_transport_t *pt, struct peer_box *b) {
    bool was_empty = pt->in_head == NULL;
    if (pt->in_tail)
        pt->in_tail->next = b;
    else
        pt->in_head = b;
    pt->in_tail = b;
    pt->in_msgs++;
    pt->in_bytes += b->size;
    return was_empty;
}

/* Whether the inbox has reached its bound; pt->mu held. */
static bool inbox_full_locked(const peer_transport_t *pt) {
    return pt->in_msgs >= pt->cfg.max_inbox_msgs || pt->in_bytes >= pt->cfg.max_inbox_bytes;
}

void peer_inbox_push(peer_transport_t *pt, struct peer_box *b) {
    pthread_mutex_lock(&pt->mu);
    if (pt->closing) {
        pthread_mutex_unlock(&pt->mu);
        free(b);
        return;
    }
    bool was_empty = inbox_append_locked(pt, b);
    pthread_mutex_unlock(&pt->mu);
    if (was_empty && pt->cfg.notify)
        pt->cfg.notify(pt->cfg.notify_arg);
}

static struct peer_box *report_new(enum peer_event_type type, uint64_t id, bool failed) {
    struct peer_box *b = calloc(1, sizeof(*b));
    if (b) {
        b->ev.type = type;
        b->ev.peer = id;
        b->ev.failed = failed;
        b->size = sizeof(*b);
    }
    return b;
}

void peer_report_snapshot(peer_transport_t *pt, uint64_t id, bool failed) {
    struct peer_box *b = report_new(PEER_EV_SNAP_STATUS, id, failed);
    if (b)
        peer_inbox_push(pt, b);
}

/* Queues one "unreachable" for r unless one is already waiting; pt->mu held.
 * Returns whether the caller must notify. */
static bool report_unreachable_locked(peer_transport_t *pt, struct peer_remote *r) {
    if (r->unreachable_pending)
        return false;
    struct peer_box *b = report_new(PEER_EV_UNREACHABLE, r->id, false);
    if (!b)
        return false;
    r->unreachable_pending = true;
    return inbox_append_locked(pt, b);
}

size_t peer_transport_recv_batch(peer_transport_t *pt, struct peer_event **out, size_t max) {
    size_t n = 0;
    bool resume = false;
    pthread_mutex_lock(&pt->mu);
    while (n < max && pt->in_head) {
        struct peer_box *b = pt->in_head;
        pt->in_head = b->next;
        if (!pt->in_head)
            pt->in_tail = NULL;
        pt->in_msgs--;
        pt->in_bytes -= b->size;
        if (b->ev.type == PEER_EV_UNREACHABLE) {
            struct peer_remote *r = peer_find(pt, b->ev.peer);
            if (r)
                r->unreachable_pending = false;
        }
        b->next = NULL;
        out[n++] = &b->ev;
    }
    /* Reading resumes once the raft thread has caught up by half, so that
     * paused streams do not flap around the bound. */
    if (pt->in_paused && pt->in_msgs <= pt->cfg.max_inbox_msgs / 2 &&
        pt->in_bytes <= pt->cfg.max_inbox_bytes / 2) {
        pt->in_paused = false;
        resume = true;
    }
    pthread_mutex_unlock(&pt->mu);
    if (resume)
        uv_async_send(&pt->wake);
    return n;
}

void peer_event_free(struct peer_event *ev) {
    free(ev);
}

/* ---- peers ---- */

/* pt->mu held. Removed peers are invisible (they are being torn down). */
struct peer_remote *peer_find(peer_transport_t *pt, uint64_t id) {
    for (struct peer_remote *r = pt->peers; r; r = r->next)
        if (r->id == id && !r->removed)
            return r;
    return NULL;
}

static void free_urls(char **urls, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(urls[i]);
    free(urls);
}

static void free_frames(struct peer_frame *f) {
    while (f) {
        struct peer_frame *next = f->next;
        free(f);
        f = next;
    }
}

int peer_transport_set_peer(peer_transport_t *pt, uint64_t id, const char *const *urls,
                            size_t n_urls) {
    if (id == 0 || id == pt->cfg.member_id || n_urls == 0)
        return -EINVAL;
    char **copy = calloc(n_urls, sizeof(*copy));
    if (!copy)
        return -ENOMEM;
    for (size_t i = 0; i < n_urls; i++) {
        if (!(copy[i] = strdup(urls[i]))) {
            free_urls(copy, n_urls);
            return -ENOMEM;
        }
    }
    pthread_mutex_lock(&pt->mu);
    for (size_t i = 0; i < sizeof(pt->removed_ids) / sizeof(pt->removed_ids[0]); i++)
        if (pt->removed_ids[i] == id)
            pt->removed_ids[i] = 0; /* known again */
    struct peer_remote *r = peer_find(pt, id);
    if (!r) {
        if (!(r = calloc(1, sizeof(*r)))) {
            pthread_mutex_unlock(&pt->mu);
            free_urls(copy, n_urls);
            return -ENOMEM;
        }
        r->id = id;
        r->pt = pt;
        r->backoff_ms = pt->cfg.backoff_min_ms;
        r->next = pt->peers;
        pt->peers = r;
    } else {
        r->redial = true;
    }
    free_urls(r->urls, r->n_urls);
    r->urls = copy;
    r->n_urls = n_urls;
    pthread_mutex_unlock(&pt->mu);
    uv_async_send(&pt->wake);
    return 0;
}

int peer_transport_remove_peer(peer_transport_t *pt, uint64_t id) {
    pthread_mutex_lock(&pt->mu);
    size_t cap = sizeof(pt->removed_ids) / sizeof(pt->removed_ids[0]);
    pt->removed_ids[pt->n_removed++ % cap] = id;
    struct peer_remote *r = peer_find(pt, id);
    if (r) {
        r->removed = true;
        free_frames(r->q_head);
        r->q_head = r->q_tail = NULL;
        r->connected = false;
    }
    pthread_mutex_unlock(&pt->mu);
    if (!r)
        return -ENOENT;
    uv_async_send(&pt->wake);
    return 0;
}

int peer_transport_send(peer_transport_t *pt, const struct raft_msg *m) {
    if (m->type == RAFT_MSG_SNAP || m->type == RAFT_MSG_HUP || m->type == RAFT_MSG_BEAT ||
        m->type == RAFT_MSG_UNREACHABLE || m->type == RAFT_MSG_SNAP_STATUS ||
        m->type == RAFT_MSG_CHECK_QUORUM || m->type > RAFT_MSG_PRE_VOTE_RESP)
        return -EINVAL;
    struct peer_frame *f = NULL;
    int rc = peer_msg_encode(m, PEER_F_MSG, &f);
    if (rc == -EINVAL)
        return rc;
    return rc == 0 ? peer_queue_frame(pt, m->to, f, true) : peer_queue_frame(pt, m->to, NULL, true);
}

int peer_queue_frame(peer_transport_t *pt, uint64_t to, struct peer_frame *f, bool report) {
    int rc = f ? 0 : -ENOMEM;
    bool notify = false;
    pthread_mutex_lock(&pt->mu);
    struct peer_remote *r = peer_find(pt, to);
    if (pt->closing)
        rc = -ESHUTDOWN;
    else if (!r)
        rc = -ENOENT;
    else if (rc == 0 && !r->connected)
        rc = -ENOTCONN;
    else if (rc == 0 &&
             (r->q_msgs >= pt->cfg.max_queue_msgs || r->q_bytes + f->len > pt->cfg.max_queue_bytes))
        rc = -EAGAIN;
    if (rc == 0) {
        if (r->q_tail)
            r->q_tail->next = f;
        else
            r->q_head = f;
        r->q_tail = f;
        r->q_msgs++;
        r->q_bytes += f->len;
        f = NULL;
    } else if (r && rc != -ESHUTDOWN) {
        r->dropped++;
        notify = report && report_unreachable_locked(pt, r);
    }
    pthread_mutex_unlock(&pt->mu);
    free(f);
    if (rc == 0)
        uv_async_send(&pt->wake);
    if (notify && pt->cfg.notify)
        pt->cfg.notify(pt->cfg.notify_arg);
    return rc;
}

int peer_transport_send_snapshot(peer_transport_t *pt, const struct raft_msg *m, int fd) {
    struct peer_snap_send *ss = NULL;
    int rc = m->type == RAFT_MSG_SNAP && m->snapshot ? peer_snap_send_new(pt, m, fd, &ss) : -EINVAL;
    if (rc != 0) {
        close(fd);
        peer_report_snapshot(pt, m->to, true);
        return rc;
    }
    pthread_mutex_lock(&pt->mu);
    bool closing = pt->closing;
    if (!closing) {
        ss->next = pt->snap_pending;
        pt->snap_pending = ss;
    }
    pthread_mutex_unlock(&pt->mu);
    if (closing) {
        peer_snap_send_free(ss);
        return -ESHUTDOWN;
    }
    uv_async_send(&pt->wake);
    return 0;
}

int peer_transport_stats(peer_transport_t *pt, uint64_t id, struct peer_stats *st) {
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&pt->mu);
    int rc = id ? -ENOENT : 0;
    bool all = true, any = false;
    for (struct peer_remote *r = pt->peers; r; r = r->next) {
        if (r->removed || (id && r->id != id))
            continue;
        rc = 0;
        any = true;
        all = all && r->connected;
        st->queued_msgs += r->q_msgs;
        st->queued_bytes += r->q_bytes;
        st->sent_msgs += r->sent;
        st->dropped_msgs += r->dropped;
        st->received_msgs += r->received;
        if (id)
            memcpy(st->last_error, r->last_error, sizeof(st->last_error));
    }
    st->connected = any && all;
    if (!id)
        memcpy(st->last_error, pt->last_refusal, sizeof(st->last_error));
    st->removed = pt->removed_self;
    pthread_mutex_unlock(&pt->mu);
    return rc;
}

/* ---- connections ---- */

static void set_error(peer_transport_t *pt, struct peer_remote *r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(peer_transport_t *pt, struct peer_remote *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&pt->mu);
    vsnprintf(r->last_error, sizeof(r->last_error), fmt, ap);
    pthread_mutex_unlock(&pt->mu);
    va_end(ap);
}

static void on_conn_closed(uv_handle_t *h) {
    struct peer_conn *c = h->data;
    peer_transport_t *pt = c->pt;
    if (c->prev)
        c->prev->next = c->next;
    else
        pt->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->kind == PEER_KIND_SNAP)
        peer_snap_on_close(c);
    struct peer_remote *r = c->remote;
    if (r) {
        r->out = NULL;
        /* What was queued for a broken stream is stale: raft resends. */
        bool notify = false;
        pthread_mutex_lock(&pt->mu);
        bool was = r->connected;
        r->connected = false;
        r->dropped += r->q_msgs - r->inflight_msgs;
        free_frames(r->q_head);
        r->q_head = r->q_tail = NULL;
        r->q_msgs = r->inflight_msgs;
        r->q_bytes = r->inflight_bytes;
        bool closing = pt->closing, removed = r->removed;
        if (was && !removed && !closing)
            notify = report_unreachable_locked(pt, r);
        pthread_mutex_unlock(&pt->mu);
        if (was && !closing)
            LOG_WARN(pt->lg, "lost TCP streaming connection with remote peer",
                     PEER_LOG_ID("remote-peer-id", r->id));
        if (notify && pt->cfg.notify)
            pt->cfg.notify(pt->cfg.notify_arg);
        if (removed)
            maybe_free_peer(pt, r);
        else if (!closing && !pt->closed_handles)
            schedule_redial(pt, r);
    }
    free(c->rbuf.data);
    free(c);
    handle_closed(pt);
}

void peer_conn_close(struct peer_conn *c) {
    if (c->state == PEER_CONN_CLOSING)
        return;
    c->state = PEER_CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static struct peer_conn *conn_new(peer_transport_t *pt) {
    struct peer_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (uv_tcp_init(pt->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    pt->open_handles++;
    c->pt = pt;
    c->tcp.data = c;
    c->next = pt->conns;
    if (pt->conns)
        pt->conns->prev = c;
    pt->conns = c;
    uv_tcp_nodelay(&c->tcp, 1);
    return c;
}

static void on_ctl_written(uv_write_t *req, int status) {
    struct peer_wreq *w = (struct peer_wreq *)req;
    if (w->cb)
        w->cb(req, status);
    if (w->close_after || status < 0)
        peer_conn_close(w->conn);
    free(w);
}

int peer_conn_send(struct peer_conn *c, uint8_t type, const void *payload, size_t len,
                   bool close_after, uv_write_cb cb) {
    struct peer_wreq *w = malloc(sizeof(*w) + PEER_FRAME_HDR + len);
    if (!w)
        return -ENOMEM;
    w->conn = c;
    w->close_after = close_after;
    w->cb = cb;
    w->req.data = c;
    peer_frame_header(w->data, type, (uint32_t)len);
    if (len)
        memcpy(w->data + PEER_FRAME_HDR, payload, len);
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)(PEER_FRAME_HDR + len));
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_ctl_written);
    if (rc != 0)
        free(w);
    return rc;
}

static void flush(peer_transport_t *pt, struct peer_remote *r);

static void on_stream_written(uv_write_t *req, int status) {
    struct peer_remote *r = req->data;
    peer_transport_t *pt = r->pt;
    struct peer_frame *done = r->inflight;
    r->inflight = NULL;
    r->writing = false;
    pthread_mutex_lock(&pt->mu);
    r->q_msgs -= r->inflight_msgs;
    r->q_bytes -= r->inflight_bytes;
    if (status == 0)
        r->sent += r->inflight_msgs;
    else
        r->dropped += r->inflight_msgs;
    pthread_mutex_unlock(&pt->mu);
    r->inflight_msgs = r->inflight_bytes = 0;
    free_frames(done);
    if (status < 0) {
        if (r->out)
            peer_conn_close(r->out);
        return;
    }
    flush(pt, r);
}

/* Hands up to WRITE_BATCH queued frames to one write (transport thread). */
static void flush(peer_transport_t *pt, struct peer_remote *r) {
    if (r->writing || !r->out || r->out->state != PEER_CONN_OPEN)
        return;
    uv_buf_t bufs[WRITE_BATCH];
    unsigned n = 0;
    pthread_mutex_lock(&pt->mu);
    struct peer_frame *head = r->q_head, *last = NULL;
    for (struct peer_frame *f = head; f && n < WRITE_BATCH; f = f->next) {
        bufs[n++] = uv_buf_init((char *)f->data, (unsigned)f->len);
        r->inflight_bytes += f->len;
        last = f;
    }
    if (last) {
        r->q_head = last->next;
        if (!r->q_head)
            r->q_tail = NULL;
        last->next = NULL;
    }
    pthread_mutex_unlock(&pt->mu);
    if (n == 0)
        return;
    r->inflight = head;
    r->inflight_msgs = n;
    r->writing = true;
    r->wreq.data = r;
    int rc = uv_write(&r->wreq, (uv_stream_t *)&r->out->tcp, bufs, n, on_stream_written);
    if (rc != 0)
        on_stream_written(&r->wreq, rc);
}

#define READ_ROOM (64u << 10)

/* Reads go straight into the connection's buffer, sized at once for a frame
 * whose header has arrived, so a large frame is not built by many reallocs. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    struct peer_conn *c = h->data;
    (void)suggested;
    size_t want = c->rbuf.len + READ_ROOM;
    if (c->rbuf.len >= PEER_FRAME_HDR) {
        const uint8_t *p = (const uint8_t *)c->rbuf.data;
        size_t flen = (size_t)p[4] << 24 | (size_t)p[5] << 16 | (size_t)p[6] << 8 | p[7];
        if (flen <= PEER_MAX_FRAME && PEER_FRAME_HDR + flen > want)
            want = PEER_FRAME_HDR + flen;
    }
    if (c->rbuf.cap < want) {
        char *p = realloc(c->rbuf.data, want);
        if (!p) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        c->rbuf.data = p;
        c->rbuf.cap = want;
    }
    *buf = uv_buf_init(c->rbuf.data + c->rbuf.len, (unsigned)(c->rbuf.cap - c->rbuf.len));
}

static void refuse(struct peer_conn *c, uint8_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse(struct peer_conn *c, uint8_t status, const char *fmt, ...) {
    peer_transport_t *pt = c->pt;
    uint8_t ack[17 + UTIL_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    size_t n = peer_vtext((char *)ack + 17, fmt, ap);
    va_end(ap);
    ack[0] = status;
    peer_put_u64(ack + 1, pt->cfg.cluster_id);
    peer_put_u64(ack + 9, pt->cfg.member_id);
    pthread_mutex_lock(&pt->mu);
    pt->refused++;
    memcpy(pt->last_refusal, ack + 17, n + 1);
    pthread_mutex_unlock(&pt->mu);
    LOG_WARN(pt->lg, "refused a peer connection", LOG_STR("error", (char *)ack + 17),
             LOG_STR("address", c->addr));
    if (peer_conn_send(c, PEER_F_HELLO_ACK, ack, 17 + n, true, NULL) != 0)
        peer_conn_close(c);
}

/* A question (enum peer_question): the answer goes out and the connection
 * closes once it is written. */
static int answer_question(struct peer_conn *c, enum peer_question q, uint64_t about) {
    peer_transport_t *pt = c->pt;
    struct util_buf b = {0};
    uint8_t h[17] = {PEER_ACK_OK};
    peer_put_u64(h + 1, pt->cfg.cluster_id);
    peer_put_u64(h + 9, pt->cfg.member_id);
    int rc = util_buf_append(&b, h, sizeof(h));
    if (rc == 0 && pt->cfg.answer)
        rc = pt->cfg.answer(pt->cfg.answer_arg, q, about, &b);
    if (rc != 0)
        b.data[0] = PEER_ACK_FAILED, b.len = sizeof(h);
    LOG_DEBUG(pt->lg, "answered a peer's question", LOG_INT("question", q),
              LOG_STR("address", c->addr));
    if (peer_conn_send(c, PEER_F_HELLO_ACK, b.data, b.len, true, NULL) != 0)
        peer_conn_close(c);
    util_buf_free(&b);
    return -1;
}

/* The receiving side of the handshake: etcd's checks, in etcd's words. */
static int on_hello(struct peer_conn *c, const uint8_t *p, size_t len) {
    peer_transport_t *pt = c->pt;
    if (len < 25 || p[24] > PEER_ASK_PROGRESS) {
        peer_conn_close(c);
        return -1;
    }
    if (p[24] >= PEER_ASK_MEMBERS)
        return answer_question(c, (enum peer_question)p[24], peer_get_u64(p + 16));
    uint64_t cid = peer_get_u64(p), from = peer_get_u64(p + 8), to = peer_get_u64(p + 16);
    if (cid != pt->cfg.cluster_id) {
        refuse(c, PEER_ACK_CLUSTER_MISMATCH,
               "request cluster ID mismatch (local member %" PRIx64 " in cluster %" PRIx64
               ", remote peer %" PRIx64 " in cluster %" PRIx64 ")",
               pt->cfg.member_id, pt->cfg.cluster_id, from, cid);
        return -1;
    }
    if (to != pt->cfg.member_id) {
        refuse(c, PEER_ACK_TO_MISMATCH,
               "to field mismatch (local member ID %" PRIx64 ", remote peer %" PRIx64
               " asked for %" PRIx64 ")",
               pt->cfg.member_id, from, to);
        return -1;
    }
    pthread_mutex_lock(&pt->mu);
    bool known = peer_find(pt, from) != NULL, removed = false;
    size_t cap = sizeof(pt->removed_ids) / sizeof(pt->removed_ids[0]);
    for (size_t i = 0; i < pt->n_removed && i < cap; i++)
        removed |= pt->removed_ids[i] == from;
    pthread_mutex_unlock(&pt->mu);
    if (removed) {
        refuse(c, PEER_ACK_REMOVED, "the member has been permanently removed from the cluster");
        return -1;
    }
    if (!known) {
        refuse(c, PEER_ACK_UNKNOWN_SENDER,
               "sender not found (remote peer %" PRIx64 " is not a member of cluster %" PRIx64
               " as local member %" PRIx64 " knows it)",
               from, cid, pt->cfg.member_id);
        return -1;
    }
    c->remote_id = from;
    c->kind = p[24];
    uint8_t ack[17];
    ack[0] = PEER_ACK_OK;
    peer_put_u64(ack + 1, pt->cfg.cluster_id);
    peer_put_u64(ack + 9, pt->cfg.member_id);
    if (peer_conn_send(c, PEER_F_HELLO_ACK, ack, sizeof(ack), false, NULL) != 0) {
        peer_conn_close(c);
        return -1;
    }
    c->state = PEER_CONN_OPEN;
    return 0;
}

/* The dialling side of the handshake. */
static int on_hello_ack(struct peer_conn *c, const uint8_t *p, size_t len) {
    peer_transport_t *pt = c->pt;
    if (len < 17) {
        peer_conn_close(c);
        return -1;
    }
    uint64_t cid = peer_get_u64(p + 1), member = peer_get_u64(p + 9);
    if (p[0] != PEER_ACK_OK || cid != pt->cfg.cluster_id || member != c->remote_id) {
        int tl = (int)(len - 17);
        if (p[0] == PEER_ACK_REMOVED && cid == pt->cfg.cluster_id) {
            pthread_mutex_lock(&pt->mu);
            pt->removed_self = true;
            pthread_mutex_unlock(&pt->mu);
        }
        char msg[UTIL_ERR_MAX];
        snprintf(msg, sizeof(msg),
                 "request sent was ignored by peer %" PRIx64 " (remote member %" PRIx64
                 " in cluster %" PRIx64 ", local member %" PRIx64 " in cluster %" PRIx64 "): %.*s",
                 c->remote_id, member, cid, pt->cfg.member_id, pt->cfg.cluster_id, tl,
                 (const char *)p + 17);
        LOG_ERROR(pt->lg, "peer refused the connection", LOG_STR("error", msg),
                  PEER_LOG_ID("remote-peer-id", c->remote_id));
        if (c->remote)
            set_error(pt, c->remote, "%s", msg);
        peer_conn_close(c);
        return -1;
    }
    c->state = PEER_CONN_OPEN;
    if (c->kind == PEER_KIND_SNAP) {
        peer_snap_on_open(c);
        return c->state == PEER_CONN_OPEN ? 0 : -1;
    }
    struct peer_remote *r = c->remote;
    pthread_mutex_lock(&pt->mu);
    r->connected = true;
    r->last_error[0] = 0;
    pthread_mutex_unlock(&pt->mu);
    r->backoff_ms = pt->cfg.backoff_min_ms;
    uv_timer_stop(&r->timer);
    LOG_INFO(pt->lg, "established TCP streaming connection with remote peer",
             PEER_LOG_ID("remote-peer-id", r->id));
    flush(pt, r);
    return 0;
}

static int on_stream_msg(struct peer_conn *c, const uint8_t *p, size_t len) {
    peer_transport_t *pt = c->pt;
    struct peer_box *b = NULL;
    int rc = peer_msg_decode(p, len, NULL, 0, &b);
    if (rc == 0 && (b->ev.msg.from != c->remote_id || b->ev.msg.to != pt->cfg.member_id ||
                    b->ev.msg.type == RAFT_MSG_SNAP)) {
        free(b);
        rc = -EINVAL;
    }
    if (rc == -EINVAL) {
        LOG_WARN(pt->lg, "closing a peer stream: malformed message",
                 PEER_LOG_ID("remote-peer-id", c->remote_id));
        peer_conn_close(c);
        return -1;
    }
    if (rc != 0)
        return 0; /* out of memory: the message is lost, raft resends */
    pthread_mutex_lock(&pt->mu);
    struct peer_remote *r = peer_find(pt, c->remote_id);
    if (r)
        r->received++;
    pthread_mutex_unlock(&pt->mu);
    peer_inbox_push(pt, b);
    return 0;
}

static int on_frame(struct peer_conn *c, uint8_t type, const uint8_t *p, size_t len) {
    if (c->state == PEER_CONN_HANDSHAKE) {
        if (!c->outgoing && type == PEER_F_HELLO)
            return on_hello(c, p, len);
        if (c->outgoing && type == PEER_F_HELLO_ACK)
            return on_hello_ack(c, p, len);
    } else if (c->kind == PEER_KIND_SNAP) {
        return peer_snap_on_frame(c, type, p, len);
    } else if (!c->outgoing && type == PEER_F_MSG) {
        return on_stream_msg(c, p, len);
    } else if (!c->outgoing && (type == PEER_F_REQ || type == PEER_F_RESP)) {
        return peer_rpc_on_frame(c, type, p, len);
    }
    LOG_WARN(c->pt->lg, "closing a peer connection: unexpected frame", LOG_INT("type", type),
             LOG_STR("address", c->addr));
    peer_conn_close(c);
    return -1;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct peer_conn *c = s->data;
    (void)buf;
    if (nread < 0 || c->state == PEER_CONN_CLOSING) {
        peer_conn_close(c);
        return;
    }
    c->rbuf.len += (size_t)nread;
    size_t off = 0;
    while (c->rbuf.len - off >= PEER_FRAME_HDR) {
        const uint8_t *h = (const uint8_t *)c->rbuf.data + off;
        uint32_t flen = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
        if (h[0] != PEER_MAGIC0 || h[1] != PEER_MAGIC1 || h[2] != PEER_VERSION ||
            flen > PEER_MAX_FRAME) {
            LOG_WARN(c->pt->lg, "closing a peer connection: not a quoin peer frame of version 1",
                     LOG_STR("address", c->addr));
            peer_conn_close(c);
            return;
        }
        if (c->rbuf.len - off < PEER_FRAME_HDR + (size_t)flen)
            break;
        if (on_frame(c, h[3], h + PEER_FRAME_HDR, flen) != 0)
            return;
        off += PEER_FRAME_HDR + flen;
    }
    memmove(c->rbuf.data, c->rbuf.data + off, c->rbuf.len - off);
    c->rbuf.len -= off;
    /* A full inbox stops reading from the streams: TCP then pushes back to
     * the senders' bounded queues instead of messages being lost here. */
    if (!c->outgoing && c->kind == PEER_KIND_STREAM) {
        pthread_mutex_lock(&c->pt->mu);
        bool full = inbox_full_locked(c->pt);
        if (full)
            c->pt->in_paused = true;
        pthread_mutex_unlock(&c->pt->mu);
        if (full && uv_read_stop((uv_stream_t *)&c->tcp) == 0)
            c->paused = true;
    }
    /* One large frame must not pin its buffer for the connection's life. */
    if (c->rbuf.cap > 16 * READ_ROOM && c->rbuf.len <= READ_ROOM) {
        char *p = realloc(c->rbuf.data, READ_ROOM);
        if (p) {
            c->rbuf.data = p;
            c->rbuf.cap = READ_ROOM;
        }
    }
}

static int send_hello(struct peer_conn *c) {
    uint8_t hello[25];
    peer_put_u64(hello, c->pt->cfg.cluster_id);
    peer_put_u64(hello + 8, c->pt->cfg.member_id);
    peer_put_u64(hello + 16, c->remote_id);
    hello[24] = (uint8_t)c->kind;
    return peer_conn_send(c, PEER_F_HELLO, hello, sizeof(hello), false, NULL);
}

static void on_connect(uv_connect_t *req, int status) {
    struct peer_conn *c = req->data;
    peer_transport_t *pt = c->pt;
    if (status == 0 && c->state != PEER_CONN_CLOSING) {
        /* Unacknowledged data (a peer that vanished without a FIN, or stopped
         * reading) fails the connection after this long instead of the
         * kernel's ~15 minutes, so the stream gets redialled. */
        uv_os_fd_t fd;
        unsigned ms = PEER_USER_TIMEOUT_MS;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
        uv_tcp_keepalive(&c->tcp, 1, PEER_KEEPALIVE_S);
        status = send_hello(c);
        if (status == 0)
            status = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    if (status != 0) {
        if (c->remote && status != UV_ECANCELED)
            set_error(pt, c->remote, "dial tcp %s: connect: %s", c->addr, uv_strerror(status));
        peer_conn_close(c);
    }
}

/* Dials the next URL of r for a stream or a snapshot (transport thread).
 * Returns the connection, or NULL after recording why in r->last_error. */
struct peer_conn *peer_conn_dial(peer_transport_t *pt, struct peer_remote *r,
                                 enum peer_conn_kind kind) {
    struct sockaddr_storage ss;
    char addr[UTIL_ADDR_MAX];
    char url[512];
    struct util_err err = {0};
    pthread_mutex_lock(&pt->mu);
    snprintf(url, sizeof(url), "%s", r->n_urls ? r->urls[r->url_next++ % r->n_urls] : "");
    pthread_mutex_unlock(&pt->mu);
    if (util_listen_addr(url, &ss, addr, sizeof(addr), &err) != 0) {
        set_error(pt, r, "%s", err.msg);
        return NULL;
    }
    struct peer_conn *c = conn_new(pt);
    if (!c) {
        set_error(pt, r, "out of memory");
        return NULL;
    }
    c->outgoing = true;
    c->kind = kind;
    c->remote_id = r->id;
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&ss, on_connect);
    if (rc != 0) {
        set_error(pt, r, "dial tcp %s: connect: %s", addr, uv_strerror(rc));
        peer_conn_close(c);
        return NULL;
    }
    return c;
}

/* Something that accepts connections but never answers the handshake (a
 * wrong port) must not hold the peer's stream forever. */
static void on_handshake_timeout(uv_timer_t *t) {
    struct peer_remote *r = t->data;
    if (!r->out || r->out->state != PEER_CONN_HANDSHAKE)
        return;
    set_error(r->pt, r, "handshake with %s timed out after %u ms", r->out->addr,
              r->pt->cfg.handshake_timeout_ms);
    peer_conn_close(r->out);
}

static void on_redial(uv_timer_t *t) {
    struct peer_remote *r = t->data;
    dial(r->pt, r);
}

/* Exponential backoff with jitter in [d/2, 3d/2), so that members that lost
 * each other at the same moment do not redial in step. */
static void schedule_redial(peer_transport_t *pt, struct peer_remote *r) {
    unsigned base = r->backoff_ms;
    pt->rng ^= pt->rng << 13;
    pt->rng ^= pt->rng >> 7;
    pt->rng ^= pt->rng << 17;
    unsigned delay = base / 2 + (unsigned)(pt->rng % (base ? base : 1));
    r->backoff_ms = base * 2 > pt->cfg.backoff_max_ms ? pt->cfg.backoff_max_ms : base * 2;
    uv_timer_start(&r->timer, on_redial, delay, 0);
}

static void dial(peer_transport_t *pt, struct peer_remote *r) {
    if (r->out || r->removed || pt->closed_handles)
        return;
    struct peer_conn *c = peer_conn_dial(pt, r, PEER_KIND_STREAM);
    if (c) {
        c->remote = r;
        r->out = c;
        uv_timer_start(&r->timer, on_handshake_timeout, pt->cfg.handshake_timeout_ms, 0);
        return;
    }
    schedule_redial(pt, r);
}

/* ---- peer teardown ---- */

/* Frees a removed peer once neither its timer nor its stream holds it. */
static void maybe_free_peer(peer_transport_t *pt, struct peer_remote *r) {
    if (r->timer_ready || r->out || r->writing)
        return;
    pthread_mutex_lock(&pt->mu);
    struct peer_remote **pp = &pt->peers;
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    pthread_mutex_unlock(&pt->mu);
    free_frames(r->q_head);
    free_urls(r->urls, r->n_urls);
    free(r);
}

static void on_timer_closed(uv_handle_t *h) {
    struct peer_remote *r = h->data;
    peer_transport_t *pt = r->pt;
    r->timer_ready = false;
    if (r->removed)
        maybe_free_peer(pt, r);
    handle_closed(pt);
}

static void teardown_peer(peer_transport_t *pt, struct peer_remote *r) {
    if (r->out)
        peer_conn_close(r->out);
    if (r->timer_ready && !uv_is_closing((uv_handle_t *)&r->timer))
        uv_close((uv_handle_t *)&r->timer, on_timer_closed);
    else if (!r->timer_ready)
        maybe_free_peer(pt, r);
}

/* ---- the loop ---- */

static void on_listener_closed(uv_handle_t *h) {
    struct peer_listener *l = h->data;
    peer_transport_t *pt = l->pt;
    free(l);
    handle_closed(pt);
}

static void close_handles(peer_transport_t *pt) {
    if (pt->closed_handles)
        return;
    pt->closed_handles = true;
    for (struct peer_listener *l = pt->listeners; l; l = l->next)
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    pt->listeners = NULL;
    for (struct peer_conn *c = pt->conns; c; c = c->next)
        peer_conn_close(c);
    for (struct peer_remote *r = pt->peers; r; r = r->next)
        if (r->timer_ready && !uv_is_closing((uv_handle_t *)&r->timer))
            uv_close((uv_handle_t *)&r->timer, on_timer_closed);
    peer_rpc_close(pt);
    uv_close((uv_handle_t *)&pt->wake, handle_closed_cb);
}

static void on_wake(uv_async_t *a) {
    peer_transport_t *pt = a->data;
    pthread_mutex_lock(&pt->mu);
    bool closing = pt->closing;
    struct peer_snap_send *snaps = NULL;
    if (!closing) {
        snaps = pt->snap_pending;
        pt->snap_pending = NULL;
    }
    struct peer_remote *r = pt->peers;
    pthread_mutex_unlock(&pt->mu);
    if (closing) {
        close_handles(pt);
        return;
    }
    /* Only this thread unlinks peers, and others only push at the head, so
     * the list can be walked from the head read above. */
    while (r) {
        struct peer_remote *next = r->next;
        pthread_mutex_lock(&pt->mu);
        bool removed = r->removed, redial = r->redial;
        r->redial = false;
        pthread_mutex_unlock(&pt->mu);
        if (removed) {
            teardown_peer(pt, r);
        } else if (!r->timer_ready) {
            uv_timer_init(pt->loop, &r->timer);
            r->timer.data = r;
            r->timer_ready = true;
            pt->open_handles++;
            if (r->backoff_ms == 0)
                r->backoff_ms = pt->cfg.backoff_min_ms;
            dial(pt, r);
        } else if (redial) {
            r->backoff_ms = pt->cfg.backoff_min_ms;
            if (r->out)
                peer_conn_close(r->out);
            else if (uv_timer_stop(&r->timer) == 0)
                dial(pt, r);
        } else {
            flush(pt, r);
        }
        r = next;
    }
    pthread_mutex_lock(&pt->mu);
    bool paused = pt->in_paused;
    pthread_mutex_unlock(&pt->mu);
    for (struct peer_conn *c = pt->conns; c; c = c->next) {
        if (c->outgoing || c->state != PEER_CONN_OPEN)
            continue;
        pthread_mutex_lock(&pt->mu);
        bool known = peer_find(pt, c->remote_id) != NULL;
        pthread_mutex_unlock(&pt->mu);
        if (!known) {
            peer_conn_close(c);
        } else if (c->paused && !paused) {
            c->paused = false;
            if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
                peer_conn_close(c);
        }
    }
    while (snaps) {
        struct peer_snap_send *next = snaps->next;
        peer_snap_start(snaps);
        snaps = next;
    }
}

static void on_connection(uv_stream_t *ls, int status) {
    struct peer_listener *l = ls->data;
    peer_transport_t *pt = l->pt;
    if (status < 0) {
        LOG_WARN(pt->lg, "peer listener error", LOG_STR("address", l->addr),
                 LOG_STR("error", uv_strerror(status)));
        return;
    }
    struct peer_conn *c = conn_new(pt);
    if (!c)
        return;
    snprintf(c->addr, sizeof(c->addr), "%s", l->addr);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        peer_conn_close(c);
        return;
    }
    if (!pt->started) {
        LOG_WARN(pt->lg, "refused a peer connection: this member has no peers in its cluster",
                 LOG_STR("address", l->addr));
        peer_conn_close(c);
        return;
    }
    /* Keepalive probes find connections whose other end vanished. */
    uv_tcp_keepalive(&c->tcp, 1, PEER_KEEPALIVE_S);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        peer_conn_close(c);
}

int peer_transport_new(uv_loop_t *loop, log_t *lg, peer_transport_t **out, struct util_err *err) {
    peer_transport_t *pt = calloc(1, sizeof(*pt));
    if (!pt)
        return util_errorf(err, -ENOMEM, "out of memory");
    int rc;
    pt->lg = lg;
    pt->own_thread = loop == NULL;
    pt->loop = loop ? loop : &pt->own_loop;
#ifdef QUOIN_TESTING
    pt->corrupt_at = UINT64_MAX;
#endif
    if ((rc = pthread_mutex_init(&pt->mu, NULL)) != 0) {
        free(pt);
        return util_errorf(err, -rc, "peer transport: %s", strerror(rc));
    }
    if (pt->own_thread && (rc = uv_loop_init(pt->loop)) != 0)
        goto err;
    if ((rc = uv_async_init(pt->loop, &pt->wake, on_wake)) != 0) {
        if (pt->own_thread)
            uv_loop_close(pt->loop);
        goto err;
    }
    pt->wake.data = pt;
    pt->open_handles = 1;
    peer_rpc_init(pt);
    *out = pt;
    return 0;
err:
    pthread_mutex_destroy(&pt->mu);
    free(pt);
    return util_errorf(err, rc, "peer transport: %s", uv_strerror(rc));
}

int peer_transport_listen(peer_transport_t *pt, const char *url, struct util_err *err) {
    struct sockaddr_storage ss;
    char addr[UTIL_ADDR_MAX];
    int rc = util_listen_addr(url, &ss, addr, sizeof(addr), err);
    if (rc != 0)
        return rc;
    struct peer_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return util_errorf(err, -ENOMEM, "out of memory");
    l->pt = pt;
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    if ((rc = uv_tcp_init(pt->loop, &l->tcp)) != 0) {
        free(l);
        return util_errorf(err, rc, "listen tcp %s: %s", addr, uv_strerror(rc));
    }
    l->tcp.data = l;
    pt->open_handles++;
    if ((rc = util_tcp_listen(&l->tcp, &ss, l->addr, on_connection, err)) != 0) {
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
        return rc;
    }
    l->next = pt->listeners;
    pt->listeners = l;
    LOG_INFO(pt->lg, "listening for peers", LOG_STR("address", l->addr));
    return 0;
}

static void *run_loop(void *arg) {
    peer_transport_t *pt = arg;
    /* A write to a connection the peer closed raises SIGPIPE in the writing
     * thread; blocked here, the write fails with EPIPE instead of killing
     * the process. */
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
    uv_run(pt->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Removes what a transfer cut short by a crash left in dir. */
static int remove_partials(const char *dir, struct util_err *err) {
    DIR *d = opendir(dir);
    if (!d)
        return util_errorf(err, -errno, "open snapshot directory %s: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "snap-", 5) == 0 && n > 8 && !strcmp(e->d_name + n - 8, ".partial"))
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    return 0;
}

int peer_transport_start(peer_transport_t *pt, const struct peer_config *cfg,
                         struct util_err *err) {
    if (pt->started || cfg->member_id == 0 || !cfg->snap_dir || !cfg->snap_dir[0])
        return util_errorf(err, -EINVAL,
                           "peer transport: needs a member id and a snapshot directory");
    int rc = remove_partials(cfg->snap_dir, err);
    if (rc != 0)
        return rc;
    char *dir = strdup(cfg->snap_dir);
    if (!dir)
        return util_errorf(err, -ENOMEM, "out of memory");
    pthread_mutex_lock(&pt->mu);
    pt->cfg = *cfg;
    pt->cfg.snap_dir = dir;
    pt->cfg.max_queue_msgs = cfg->max_queue_msgs ? cfg->max_queue_msgs : 4096;
    pt->cfg.max_queue_bytes = cfg->max_queue_bytes ? cfg->max_queue_bytes : 64u << 20;
    pt->cfg.max_inbox_msgs = cfg->max_inbox_msgs ? cfg->max_inbox_msgs : 8192;
    pt->cfg.max_inbox_bytes = cfg->max_inbox_bytes ? cfg->max_inbox_bytes : 128u << 20;
    pt->cfg.backoff_min_ms = cfg->backoff_min_ms ? cfg->backoff_min_ms : 100;
    pt->cfg.backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000;
    pt->cfg.handshake_timeout_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : 5000;
    if (pt->cfg.backoff_max_ms < pt->cfg.backoff_min_ms)
        pt->cfg.backoff_max_ms = pt->cfg.backoff_min_ms;
    pt->rng = (util_now_mono_ns() ^ cfg->member_id) | 1;
    pt->started = true;
    pthread_mutex_unlock(&pt->mu);
    peer_rpc_start(pt);
    if (pt->own_thread) {
        rc = pthread_create(&pt->thread, NULL, run_loop, pt);
        if (rc != 0) {
            pt->started = false;
            return util_errorf(err, -rc, "peer transport: cannot start its thread: %s",
                               strerror(rc));
        }
        pt->thread_started = true;
    }
    uv_async_send(&pt->wake);
    return 0;
}

static void free_all(peer_transport_t *pt) {
    while (pt->peers) {
        struct peer_remote *r = pt->peers;
        pt->peers = r->next;
        free_frames(r->q_head);
        free_urls(r->urls, r->n_urls);
        free(r);
    }
    while (pt->snap_pending) {
        struct peer_snap_send *ss = pt->snap_pending;
        pt->snap_pending = ss->next;
        peer_snap_send_free(ss);
    }
    while (pt->in_head) {
        struct peer_box *b = pt->in_head;
        pt->in_head = b->next;
        free(b);
    }
    free((char *)pt->cfg.snap_dir);
    pthread_mutex_destroy(&pt->mu);
    free(pt);
}

/* On a caller's loop: the last handle closed finishes the close. */
static void handle_closed(peer_transport_t *pt) {
    pt->open_handles--;
    assert(pt->open_handles >= 0);
    if (!pt->own_thread && pt->closed_handles && pt->open_handles == 0) {
        void (*cb)(void *) = pt->close_cb;
        void *arg = pt->close_arg;
        free_all(pt);
        if (cb)
            cb(arg);
    }
}

static void handle_closed_cb(uv_handle_t *h) {
    handle_closed(h->data);
}

void peer_fs_started(peer_transport_t *pt) {
    pt->open_handles++;
}

void peer_fs_done(peer_transport_t *pt) {
    handle_closed(pt);
}

void peer_transport_close(peer_transport_t *pt, void (*cb)(void *arg), void *arg) {
    pthread_mutex_lock(&pt->mu);
    pt->closing = true;
    pthread_mutex_unlock(&pt->mu);
    pt->close_cb = cb;
    pt->close_arg = arg;
    if (!pt->own_thread) {
        close_handles(pt);
        return;
    }
    if (pt->thread_started) {
        uv_async_send(&pt->wake);
        pthread_join(pt->thread, NULL);
    } else {
        close_handles(pt);
        uv_run(pt->loop, UV_RUN_DEFAULT);
    }
    int rc = uv_loop_close(pt->loop);
    assert(rc == 0);
    (void)rc;
    free_all(pt);
    if (cb)
        cb(arg);
}

#ifdef QUOIN_TESTING
void peer_transport_test_corrupt_snapshot(peer_transport_t *pt, uint64_t at) {
    pthread_mutex_lock(&pt->mu);
    pt->corrupt_at = at;
    pthread_mutex_unlock(&pt->mu);
}
#endif
