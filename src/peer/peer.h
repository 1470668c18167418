/* peer: the member-to-member transport. It binds the member's peer URLs, keeps
 * one outgoing TCP connection to every other member, carries raft messages as
 * length-prefixed protobuf (etcd's raftpb field numbers) and streams snapshots
 * in checksummed chunks. docs/cluster.md ("Peer transport") describes the wire.
 *
 * THREADS
 * =======
 * The transport does its socket I/O on one libuv loop:
 *   - peer_transport_new(NULL, ...) gives the transport its own loop, run by a
 *     thread that peer_transport_start creates ("the transport thread");
 *   - peer_transport_new(loop, ...) runs it on the caller's loop instead
 *     (start, listen and close are then called on that loop's thread, and
 *     the process must ignore SIGPIPE: the own thread blocks it itself).
 * The raft loop thread never touches a socket: peer_transport_send serialises
 * the message into the peer's queue and returns; received messages, "peer
 * unreachable" reports and snapshot outcomes wait in a bounded inbox that the
 * raft thread drains with peer_transport_recv_batch, woken by cfg.notify.
 *
 *   function                         thread
 *   peer_transport_new               any (once)
 *   peer_transport_listen            creator, before peer_transport_start
 *   peer_transport_start             creator (own loop) / loop thread
 *   peer_transport_set_peer,
 *   peer_transport_remove_peer,
 *   peer_transport_send,
 *   peer_transport_send_snapshot,
 *   peer_transport_recv_batch,
 *   peer_transport_stats,
 *   peer_transport_call,
 *   peer_transport_reply             any thread, after start (thread safe)
 *   peer_transport_close             creator, not the transport thread
 *   cfg.notify                       transport thread, or in peer_transport_send
 *   cfg.on_request, peer_call_cb     transport thread
 *
 * THE RAFT LOOP'S SIDE
 * ====================
 *   1. For each rd.msgs[i] of a Ready: peer_transport_send (or, for
 *      RAFT_MSG_SNAP, peer_transport_send_snapshot with a descriptor holding
 *      the snapshot data). Both copy what they need before returning, so
 *      raft_advance may follow at once. A failure is never fatal: the message
 *      is dropped and a PEER_EV_UNREACHABLE (or a failed PEER_EV_SNAP_STATUS)
 *      is queued for the next step — raft forbids reporting it inside a Ready.
 *   2. When cfg.notify fires (or on every loop turn), outside a Ready, drain
 *      peer_transport_recv_batch and for each event:
 *        PEER_EV_MSG          raft_step(r, &ev->msg)   (RAFT_MSG_SNAP: the
 *                             snapshot's data is the path of the received
 *                             file, see struct peer_event)
 *        PEER_EV_UNREACHABLE  raft_report_unreachable(r, ev->peer)
 *        PEER_EV_SNAP_STATUS  raft_report_snapshot(r, ev->peer, ev->failed)
 *      then peer_event_free(ev).
 *
 * FAILURE BEHAVIOUR
 * =================
 * A message is dropped, never waited for, when its peer is unknown, not
 * connected, or its queue holds cfg.max_queue_msgs messages or
 * cfg.max_queue_bytes bytes (counted until the kernel took them); Raft
 * retransmits. A disconnected peer is redialled with exponential backoff and
 * jitter. A full inbox stops the transport reading from its peers (TCP flow
 * control then fills the senders' queues, whose sends fail as above) until
 * the raft thread has drained it by half; it overshoots its bound by at most
 * what one read of each stream held (64 KiB, or one large frame). Reports are
 * at most one pending "unreachable" per peer and one outcome per snapshot.
 *
 * ERRORS: 0 or a negative errno-style code, as listed per function.
 */
#ifndef QUOIN_PEER_H
#define QUOIN_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log/log.h"
#include "raft/raft.h"
#include "util/util.h"

typedef struct peer_transport peer_transport_t;

/* Questions a member asks another on its peer port outside the streams,
 * before or without a cluster id (peer_ask). The answers are the caller's
 * (cfg.answer). */
enum peer_question {
    PEER_ASK_MEMBERS = 2,  /* a member joining: who are the members? */
    PEER_ASK_PROGRESS = 3, /* to the leader: how far is member `about`? */
};

struct peer_config {
    uint64_t cluster_id; /* both ends of a connection must agree */
    uint64_t member_id;  /* this member, nonzero */
    /* Directory where received snapshots are written (must exist, same file
     * system as where the server keeps them, so it can rename them). */
    const char *snap_dir;
    size_t max_queue_msgs;  /* per peer; 0: 4096 */
    size_t max_queue_bytes; /* per peer; 0: 64 MiB */
    /* Received and not yet drained: at this bound the transport stops
     * reading its streams until the inbox is half empty again. */
    size_t max_inbox_msgs;   /* 0: 8192 */
    size_t max_inbox_bytes;  /* 0: 128 MiB */
    unsigned backoff_min_ms; /* first redial delay; 0: 100 */
    unsigned backoff_max_ms; /* cap of the doubling delay; 0: 5000 */
    /* A dialled peer that has not answered the handshake by then is
     * dropped and redialled (a wrong port that accepts); 0: 5000. */
    unsigned handshake_timeout_ms;
    /* Called when the inbox goes from empty to not empty — on the transport
     * thread, or inside peer_transport_send when it queues a report: typically
     * uv_async_send on the raft loop. Must not block and must not call into
     * the transport. May be NULL (the caller polls). */
    void (*notify)(void *arg);
    void *notify_arg;
    /* Appends the answer to a peer's question (peer_ask) about member
     * `about`: opaque bytes to the transport. Transport thread; returns 0 or
     * a negative code (the asker is then told it failed). May be NULL (an
     * empty answer). */
    int (*answer)(void *arg, enum peer_question q, uint64_t about, struct util_buf *out);
    void *answer_arg;
    /* A request from another member (its peer_transport_call), on the
     * transport thread: body is valid during the call only. deadline_mono is
     * when the caller gives up, on this member's monotonic clock (the caller
     * sends a timeout, not a time: clocks of members differ). Answer it once,
     * from any thread, with peer_transport_reply(from, id, ...), or not at
     * all (the caller times out). Must not block. NULL: requests are dropped. */
    void (*on_request)(void *arg, uint64_t from, uint64_t id, uint8_t method,
                       uint64_t deadline_mono, const uint8_t *body, size_t len);
    void *request_arg;
};

/* Creates a transport. loop NULL: the transport gets its own loop and thread
 * (started by peer_transport_start); otherwise it runs on loop. lg may be
 * NULL. Returns 0, -ENOMEM or a libuv code, with err filled. */
int peer_transport_new(uv_loop_t *loop, log_t *lg, peer_transport_t **out, struct util_err *err);

/* Listens on an etcd-style peer URL ("http://127.0.0.1:2380"). Returns 0, or
 * the codes of util_listen_addr / util_tcp_listen with err worded as Go's
 * ("listen tcp 127.0.0.1:2380: bind: address already in use"). Until
 * peer_transport_start, a connection that arrives is closed (a member alone in
 * its cluster has no peers). */
int peer_transport_listen(peer_transport_t *pt, const char *url, struct util_err *err);

/* Gives the transport its identity and starts it (cfg is copied). Files
 * "snap-*.partial" in cfg->snap_dir (transfers cut short by a crash) are
 * removed. Returns 0, -EINVAL (member_id 0, no snap_dir, already started),
 * -ENOENT or another errno (snap_dir cannot be read), -ENOMEM, or a pthread
 * or libuv code, with err filled. */
int peer_transport_start(peer_transport_t *pt, const struct peer_config *cfg, struct util_err *err);

/* Adds member id with its peer URLs ("http://10.0.0.2:2380", tried in turn),
 * or replaces the URLs of a known member (its connection is then redialled).
 * Returns 0, -EINVAL (id 0 or this member, no URL) or -ENOMEM. */
int peer_transport_set_peer(peer_transport_t *pt, uint64_t id, const char *const *urls,
                            size_t n_urls);

/* Forgets member id: its queue is dropped and its connections closed; its
 * incoming connections are refused from now on, as a removed member's
 * (etcd's "the member has been permanently removed from the cluster"; the
 * refused member's stats then say `removed`). An id the transport does not
 * know is remembered as removed too. Returns 0 or -ENOENT (not known). */
int peer_transport_remove_peer(peer_transport_t *pt, uint64_t id);

/* Queues m for m->to (serialised here; m's memory may change once this
 * returns). Returns 0 (queued; delivery is not guaranteed), -EINVAL (local
 * type, RAFT_MSG_SNAP, or too large for a frame), -ENOENT (unknown peer),
 * -ENOTCONN (peer not connected), -EAGAIN (queue full), -ESHUTDOWN (closing)
 * or -ENOMEM. On -ENOTCONN, -EAGAIN and -ENOMEM for a known peer a
 * PEER_EV_UNREACHABLE for m->to is queued (one waits at a time). */
int peer_transport_send(peer_transport_t *pt, const struct raft_msg *m);

/* Sends the RAFT_MSG_SNAP m to m->to on a connection of its own, with the
 * snapshot data read from fd (from its current offset to end of file;
 * m->snapshot->data is ignored). The transport owns fd from this call on and
 * closes it. The outcome arrives as a PEER_EV_SNAP_STATUS for m->to: failed
 * unless the receiver verified every checksum and stored the file. Returns 0,
 * or -EINVAL (not a snapshot message), -ESHUTDOWN, -ENOMEM — fd is then
 * closed and a failed PEER_EV_SNAP_STATUS is queued (except for -ESHUTDOWN). */
int peer_transport_send_snapshot(peer_transport_t *pt, const struct raft_msg *m, int fd);

/* ---- Requests between members ----------------------------------------------
 * Besides raft messages a member may ask another one something directly: a
 * follower forwards lease renewals and TimeToLive to the leader, as etcd does
 * over its peer HTTP handler. A request travels on the caller's stream to the
 * peer and the answer on the peer's stream back, each a frame with the
 * request's id; `method` and `status` are the caller's, opaque here. Requests
 * are not retried: the caller decides what a timeout means. */

/* The answer to a call, on the transport thread: rc 0 with the peer's status
 * and body (valid during the call only), or -ETIMEDOUT (no answer in time:
 * the peer may or may not have acted) or -ESHUTDOWN (the transport closed). */
typedef void (*peer_call_cb)(void *arg, int rc, uint8_t status, const uint8_t *body, size_t len);

/* Most calls waiting for an answer at once; more are refused with -EAGAIN. */
#define PEER_MAX_CALLS 4096

/* Sends request `method` with body to member `to` (body copied), to be
 * answered within timeout_ms. Returns 0: cb runs exactly once, later, on the
 * transport thread (never inside this call). Or, with cb never called:
 * -ENOENT (unknown peer), -ENOTCONN (not connected), -EAGAIN (its queue or
 * the table of waiting calls is full), -EINVAL (too large), -ESHUTDOWN,
 * -ENOMEM. Any thread, after start. */
int peer_transport_call(peer_transport_t *pt, uint64_t to, uint8_t method, const void *body,
                        size_t len, unsigned timeout_ms, peer_call_cb cb, void *arg);

/* Answers request `id` of member `to` (cfg.on_request) with status and body
 * (copied). Returns 0 (queued; delivery not guaranteed) or the codes of
 * peer_transport_call; an answer that cannot be queued is dropped, and the
 * caller times out. Any thread, after start. */
int peer_transport_reply(peer_transport_t *pt, uint64_t to, uint64_t id, uint8_t status,
                         const void *body, size_t len);

enum peer_event_type {
    PEER_EV_MSG = 1,         /* a message from a peer: raft_step(&ev->msg) */
    PEER_EV_UNREACHABLE = 2, /* raft_report_unreachable(ev->peer) */
    PEER_EV_SNAP_STATUS = 3, /* raft_report_snapshot(ev->peer, ev->failed) */
};

/* One inbox entry. Every pointer in it (msg.entries and their data,
 * msg.snapshot, snap_path) lives in the same allocation, until
 * peer_event_free. */
struct peer_event {
    enum peer_event_type type;
    uint64_t peer; /* the sender (MSG), or the member the report is about */
    bool failed;   /* SNAP_STATUS */
    struct raft_msg msg;
    /* RAFT_MSG_SNAP only: the file holding the received, verified, fsynced
     * snapshot data (snap_size bytes). The file is the caller's: rename it
     * into place or unlink it. Raft treats snapshot data as opaque bytes and
     * copies them, so msg.snapshot->data/len are the path itself (NUL not
     * counted): raft_step(&ev->msg) works as is, and the Ready that installs
     * the snapshot hands the path back in rd.snapshot->data. */
    const char *snap_path;
    uint64_t snap_size;
};

/* Moves up to max events from the inbox into out, oldest first; returns how
 * many. Messages from one peer come out in the order that peer sent them. */
size_t peer_transport_recv_batch(peer_transport_t *pt, struct peer_event **out, size_t max);

void peer_event_free(struct peer_event *ev);

/* Counters, for metrics and tests. */
struct peer_stats {
    bool connected;     /* outgoing stream up (id 0: to every peer) */
    size_t queued_msgs; /* waiting or being written */
    size_t queued_bytes;
    uint64_t sent_msgs;            /* handed to the kernel */
    uint64_t dropped_msgs;         /* refused by send, or lost with a broken stream */
    uint64_t received_msgs;        /* delivered to the inbox */
    char last_error[UTIL_ERR_MAX]; /* why the last dial or handshake failed */
    bool removed;                  /* a peer refused this member: removed from the cluster */
};

/* Fills st for member id (id 0: totals over every peer, last_error being the
 * last connection this member refused, e.g. "request cluster ID mismatch
 * ..."). Returns 0 or -ENOENT. */
int peer_transport_stats(peer_transport_t *pt, uint64_t id, struct peer_stats *st);

/* Closes every socket, drops what is queued, stops the transport thread (own
 * loop: joins it, then cb runs on the calling thread; caller's loop: cb runs
 * on it once libuv has released the handles), frees pt and the inbox, then
 * calls cb(arg) (which may be NULL). Received snapshot files are left. No
 * other call on pt may run concurrently with or after this one: stop the
 * raft thread first. */
void peer_transport_close(peer_transport_t *pt, void (*cb)(void *arg), void *arg);

/* Asks the member listening at peer URL `url` question q about member
 * `about` (its cfg.answer answers), with no transport and no cluster id
 * needed. Blocking (at most timeout_ms); any thread. Fills *cluster_id and
 * *member_id with the answering member's and appends the answer to out.
 * Returns 0, or -ETIMEDOUT, -ECONNREFUSED, -EPROTO (not a quoin peer, or it
 * could not answer), -EINVAL (bad URL) or another errno, with err filled. */
int peer_ask(const char *url, enum peer_question q, uint64_t about, unsigned timeout_ms,
             uint64_t *cluster_id, uint64_t *member_id, struct util_buf *out, struct util_err *err);

#ifdef QUOIN_TESTING
/* Flips one byte of the next snapshot sent, at offset `at` of its data, after
 * the checksums were computed (so the receiver must notice). */
void peer_transport_test_corrupt_snapshot(peer_transport_t *pt, uint64_t at);
#endif

#endif
