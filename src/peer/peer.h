/* peer: member-to-member transport. Today it holds the member's peer listen
 * sockets, so the peer URLs are bound (and a taken port is reported at start,
 * as etcd does); a member alone in its cluster has no peers, so it closes any
 * connection that arrives. Raft message streams and snapshot transfer come
 * with clustering.
 *
 * Threads: every function runs on the loop thread of the loop given to
 * peer_transport_new. Errors: 0 or a negative errno-style code. */
#ifndef QUOIN_PEER_H
#define QUOIN_PEER_H

#include <uv.h>

#include "log/log.h"
#include "util/util.h"

typedef struct peer_transport peer_transport_t;

/* Creates a transport on loop. lg may be NULL. Returns 0 or -ENOMEM. */
int peer_transport_new(uv_loop_t *loop, log_t *lg, peer_transport_t **out, struct util_err *err);

/* Listens on an etcd-style peer URL ("http://127.0.0.1:2380"). Returns 0, or
 * the codes of util_listen_addr / util_tcp_listen with err worded as Go's
 * ("listen tcp 127.0.0.1:2380: bind: address already in use"). */
int peer_transport_listen(peer_transport_t *pt, const char *url, struct util_err *err);

/* Closes every socket and frees pt once libuv has released them, then calls
 * cb(arg) (which may be NULL) on the loop thread. */
void peer_transport_close(peer_transport_t *pt, void (*cb)(void *arg), void *arg);

#endif
