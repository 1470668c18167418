/* peer: the peer listen sockets of a member. */
#include "peer/peer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

struct peer_listener {
    uv_tcp_t tcp;
    peer_transport_t *pt;
    struct peer_listener *next;
    char addr[UTIL_ADDR_MAX];
};

struct peer_transport {
    uv_loop_t *loop;
    log_t *lg;
    struct peer_listener *listeners;
    int open_handles; /* listeners and refused connections not yet closed */
    int closing;
    void (*close_cb)(void *);
    void *close_arg;
};

static void maybe_finish(peer_transport_t *pt) {
    if (!pt->closing || pt->open_handles > 0)
        return;
    void (*cb)(void *) = pt->close_cb;
    void *arg = pt->close_arg;
    free(pt);
    if (cb)
        cb(arg);
}

static void on_handle_closed(uv_handle_t *h) {
    peer_transport_t *pt = h->data;
    free(h);
    pt->open_handles--;
    maybe_finish(pt);
}

static void on_listener_closed(uv_handle_t *h) {
    struct peer_listener *l = h->data;
    peer_transport_t *pt = l->pt;
    free(l);
    pt->open_handles--;
    maybe_finish(pt);
}

/* A member alone in its cluster has no peers: whoever connects is told so by a
 * closed connection and a line in the log. */
static void on_connection(uv_stream_t *ls, int status) {
    struct peer_listener *l = ls->data;
    peer_transport_t *pt = l->pt;
    if (status < 0) {
        LOG_WARN(pt->lg, "peer listener error", LOG_STR("address", l->addr),
                 LOG_STR("error", uv_strerror(status)));
        return;
    }
    uv_tcp_t *c = malloc(sizeof(*c));
    if (!c || uv_tcp_init(pt->loop, c) != 0) {
        free(c);
        return;
    }
    c->data = pt;
    pt->open_handles++;
    if (uv_accept(ls, (uv_stream_t *)c) == 0)
        LOG_WARN(pt->lg, "refused a peer connection: this member has no peers in its cluster",
                 LOG_STR("address", l->addr));
    uv_close((uv_handle_t *)c, on_handle_closed);
}

int peer_transport_new(uv_loop_t *loop, log_t *lg, peer_transport_t **out, struct util_err *err) {
    peer_transport_t *pt = calloc(1, sizeof(*pt));
    if (!pt)
        return util_errorf(err, -ENOMEM, "out of memory");
    pt->loop = loop;
    pt->lg = lg;
    *out = pt;
    return 0;
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

void peer_transport_close(peer_transport_t *pt, void (*cb)(void *arg), void *arg) {
    pt->closing = 1;
    pt->close_cb = cb;
    pt->close_arg = arg;
    for (struct peer_listener *l = pt->listeners; l; l = l->next)
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    pt->listeners = NULL;
    maybe_finish(pt);
}
