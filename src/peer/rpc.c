/* rpc: requests between members outside raft, and their answers. A call is
 * registered under a fresh id before its REQ frame is queued on the caller's
 * stream; the peer's RESP frame, arriving on the peer's stream to us, finds it
 * by id. A timer on the transport loop fails calls whose deadline passed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "peer/peer_int.h"

/* How often waiting calls are checked for their deadline. */
#define CALLS_SWEEP_MS 50

static void unlink_call(peer_transport_t *pt, struct peer_call *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        pt->calls_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        pt->calls_tail = c->prev;
    c->next = c->prev = NULL;
    pt->n_calls--;
}

/* Builds a frame: header, `hdr` bytes of fixed fields, body. */
static struct peer_frame *frame_new(uint8_t type, const uint8_t *hdr, size_t hlen, const void *body,
                                    size_t len) {
    if (hlen + len > PEER_MAX_FRAME)
        return NULL;
    struct peer_frame *f = malloc(sizeof(*f) + PEER_FRAME_HDR + hlen + len);
    if (!f)
        return NULL;
    f->next = NULL;
    f->len = PEER_FRAME_HDR + hlen + len;
    peer_frame_header(f->data, type, (uint32_t)(hlen + len));
    memcpy(f->data + PEER_FRAME_HDR, hdr, hlen);
    if (len)
        memcpy(f->data + PEER_FRAME_HDR + hlen, body, len);
    return f;
}

int peer_transport_call(peer_transport_t *pt, uint64_t to, uint8_t method, const void *body,
                        size_t len, unsigned timeout_ms, peer_call_cb cb, void *arg) {
    if (PEER_REQ_HDR + len > PEER_MAX_FRAME)
        return -EINVAL;
    struct peer_call *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (struct peer_call){.to = to,
                            .deadline = util_now_mono_ns() + (uint64_t)timeout_ms * 1000000u,
                            .cb = cb,
                            .arg = arg};
    pthread_mutex_lock(&pt->mu);
    int rc = pt->closing ? -ESHUTDOWN : pt->n_calls >= PEER_MAX_CALLS ? -EAGAIN : 0;
    if (rc == 0) {
        c->id = ++pt->next_call_id;
        c->prev = pt->calls_tail;
        if (pt->calls_tail)
            pt->calls_tail->next = c;
        else
            pt->calls_head = c;
        pt->calls_tail = c;
        pt->n_calls++;
    }
    pthread_mutex_unlock(&pt->mu);
    if (rc != 0) {
        free(c);
        return rc;
    }
    uint8_t hdr[PEER_REQ_HDR];
    peer_put_u64(hdr, c->id);
    hdr[8] = method;
    hdr[9] = (uint8_t)(timeout_ms >> 24);
    hdr[10] = (uint8_t)(timeout_ms >> 16);
    hdr[11] = (uint8_t)(timeout_ms >> 8);
    hdr[12] = (uint8_t)timeout_ms;
    /* Registered first: the answer may arrive before this returns. */
    rc = peer_queue_frame(pt, to, frame_new(PEER_F_REQ, hdr, sizeof(hdr), body, len), false);
    if (rc != 0) {
        /* Not sent, so no answer can have claimed it: it is still listed,
         * unless the transport closed and failed it meanwhile. */
        bool listed = false;
        pthread_mutex_lock(&pt->mu);
        for (struct peer_call *x = pt->calls_tail; x && !listed; x = x->prev)
            listed = x == c;
        if (listed)
            unlink_call(pt, c);
        pthread_mutex_unlock(&pt->mu);
        if (!listed)
            return 0; /* the close path called cb with -ESHUTDOWN */
        free(c);
    }
    return rc;
}

int peer_transport_reply(peer_transport_t *pt, uint64_t to, uint64_t id, uint8_t status,
                         const void *body, size_t len) {
    if (PEER_RESP_HDR + len > PEER_MAX_FRAME)
        return -EINVAL;
    uint8_t hdr[PEER_RESP_HDR];
    peer_put_u64(hdr, id);
    hdr[8] = status;
    return peer_queue_frame(pt, to, frame_new(PEER_F_RESP, hdr, sizeof(hdr), body, len), false);
}

int peer_rpc_on_frame(struct peer_conn *c, uint8_t type, const uint8_t *p, size_t len) {
    peer_transport_t *pt = c->pt;
    if ((type == PEER_F_REQ && len < PEER_REQ_HDR) ||
        (type == PEER_F_RESP && len < PEER_RESP_HDR)) {
        LOG_WARN(pt->lg, "closing a peer stream: malformed request frame",
                 PEER_LOG_ID("remote-peer-id", c->remote_id));
        peer_conn_close(c);
        return -1;
    }
    uint64_t id = peer_get_u64(p);
    if (type == PEER_F_REQ) {
        uint32_t ms = (uint32_t)p[9] << 24 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 8 | p[12];
        if (pt->cfg.on_request)
            pt->cfg.on_request(pt->cfg.request_arg, c->remote_id, id, p[8],
                               util_now_mono_ns() + (uint64_t)ms * 1000000u, p + PEER_REQ_HDR,
                               len - PEER_REQ_HDR);
        return 0;
    }
    /* Answers mostly come back in the order asked: the oldest call is near
     * the head. */
    pthread_mutex_lock(&pt->mu);
    struct peer_call *call = pt->calls_head;
    while (call && !(call->id == id && call->to == c->remote_id))
        call = call->next;
    if (call)
        unlink_call(pt, call);
    pthread_mutex_unlock(&pt->mu);
    if (call) {
        call->cb(call->arg, 0, p[8], p + PEER_RESP_HDR, len - PEER_RESP_HDR);
        free(call);
    }
    return 0;
}

/* Fails every call taken off the table with rc. */
static void fail_calls(struct peer_call *list, int rc) {
    while (list) {
        struct peer_call *next = list->next;
        list->cb(list->arg, rc, 0, NULL, 0);
        free(list);
        list = next;
    }
}

static void on_sweep(uv_timer_t *t) {
    peer_transport_t *pt = t->data;
    uint64_t now = util_now_mono_ns();
    struct peer_call *expired = NULL, **tail = &expired;
    pthread_mutex_lock(&pt->mu);
    for (struct peer_call *c = pt->calls_head, *next; c; c = next) {
        next = c->next;
        if (c->deadline > now)
            continue;
        unlink_call(pt, c);
        *tail = c;
        tail = &c->next;
    }
    pthread_mutex_unlock(&pt->mu);
    fail_calls(expired, -ETIMEDOUT);
}

void peer_rpc_init(peer_transport_t *pt) {
    uv_timer_init(pt->loop, &pt->calls_timer);
    pt->calls_timer.data = pt;
    pt->open_handles++;
}

void peer_rpc_start(peer_transport_t *pt) {
    uv_timer_start(&pt->calls_timer, on_sweep, CALLS_SWEEP_MS, CALLS_SWEEP_MS);
}

static void on_timer_closed(uv_handle_t *h) {
    peer_fs_done(h->data);
}

void peer_rpc_close(peer_transport_t *pt) {
    uv_close((uv_handle_t *)&pt->calls_timer, on_timer_closed);
    pthread_mutex_lock(&pt->mu);
    struct peer_call *all = pt->calls_head;
    pt->calls_head = pt->calls_tail = NULL;
    pt->n_calls = 0;
    pthread_mutex_unlock(&pt->mu);
    fail_calls(all, -ESHUTDOWN);
}
