/* peer_int.h: internal to src/peer — the frame format, the transport's
 * structures shared by peer.c (connections, queues, inbox), snap.c (snapshot
 * streaming) and codec.c (raftpb <-> struct raft_msg). */
#ifndef QUOIN_PEER_INT_H
#define QUOIN_PEER_INT_H

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>

#include "peer/peer.h"

/* Frame: 'q' 'r' | version u8 | type u8 | payload length u32 big-endian |
 * payload. A frame longer than PEER_MAX_FRAME closes the connection. */
#define PEER_FRAME_HDR 8
#define PEER_MAGIC0 'q'
#define PEER_MAGIC1 'r'
#define PEER_VERSION 1
#define PEER_MAX_FRAME (64u << 20)
#define PEER_SHA_LEN 32
#define PEER_SNAP_CHUNK (256u << 10)

enum peer_frame_type {
    PEER_F_HELLO = 1,      /* cluster u64 | from u64 | to u64 | kind u8 */
    PEER_F_HELLO_ACK = 2,  /* status u8 | cluster u64 | member u64 | text */
    PEER_F_MSG = 3,        /* raftpb.Message */
    PEER_F_SNAP_BEGIN = 4, /* raftpb.Message (MsgSnap, no data) */
    PEER_F_SNAP_CHUNK = 5, /* sha256(data) | data */
    PEER_F_SNAP_END = 6,   /* total bytes u64 | sha256(all data) */
    PEER_F_SNAP_ACK = 7,   /* status u8 | text */
    PEER_F_REQ = 8,        /* id u64 | method u8 | timeout ms u32 | body */
    PEER_F_RESP = 9,       /* id u64 | status u8 | body */
};
#define PEER_REQ_HDR 13
#define PEER_RESP_HDR 9

/* Kinds from PEER_ASK_MEMBERS on are questions (enum peer_question): the
 * asker need not know the cluster id (a member joining knows neither it nor
 * its own id); the HELLO's `to` field is what the question is about, the
 * answer a HELLO_ACK whose text is cfg.answer's bytes, then the connection
 * closes. */
enum peer_conn_kind { PEER_KIND_STREAM = 0, PEER_KIND_SNAP = 1 };

enum peer_ack_status {
    PEER_ACK_OK = 0,
    PEER_ACK_CLUSTER_MISMATCH = 1,
    PEER_ACK_TO_MISMATCH = 2,
    PEER_ACK_UNKNOWN_SENDER = 3,
    PEER_ACK_FAILED = 4,
    PEER_ACK_REMOVED = 5, /* the sender was removed from the cluster */
};

/* An encoded frame waiting in a peer's queue. */
struct peer_frame {
    struct peer_frame *next;
    size_t len;
    uint8_t data[];
};

/* Another member, as set by peer_transport_set_peer. */
struct peer_remote {
    struct peer_remote *next;
    peer_transport_t *pt;
    uint64_t id;
    /* Guarded by pt->mu. */
    char **urls;
    size_t n_urls;
    bool redial; /* URLs changed */
    bool removed;
    struct peer_frame *q_head, *q_tail; /* not yet handed to a write */
    size_t q_msgs, q_bytes;             /* counts in-flight frames too */
    bool connected;
    bool unreachable_pending;
    uint64_t sent, dropped, received;
    char last_error[UTIL_ERR_MAX];
    /* Transport thread only. */
    struct peer_conn *out;
    uv_timer_t timer;
    bool timer_ready;
    unsigned backoff_ms;
    size_t url_next;
    struct peer_frame *inflight;
    size_t inflight_msgs, inflight_bytes;
    uv_write_t wreq;
    bool writing;
};

enum peer_conn_state { PEER_CONN_HANDSHAKE, PEER_CONN_OPEN, PEER_CONN_CLOSING };

/* A snapshot on its way out (snap.c). */
struct peer_snap_send {
    struct peer_snap_send *next; /* pt->snap_pending, under pt->mu */
    peer_transport_t *pt;
    uint64_t to;
    int fd;
    struct peer_frame *begin; /* the MsgSnap, sent first */
    struct peer_conn *conn;   /* NULL once closed */
    EVP_MD_CTX *whole;
    uint64_t sent;
    uv_fs_t fsreq;
    uv_write_t wreq;
    bool reading;   /* fsreq in flight: freed by its callback */
    bool writing;   /* wreq in flight: likewise */
    bool done;      /* outcome reported */
    uint8_t *chunk; /* frame header | sha256 | data */
};

/* A snapshot on its way in (snap.c). */
struct peer_snap_recv {
    peer_transport_t *pt;
    struct peer_conn *conn; /* NULL once closed */
    uint8_t *begin;         /* the MsgSnap payload, decoded at the end */
    size_t begin_len;
    char *path; /* the .partial file */
    int fd;
    EVP_MD_CTX *whole;
    uint64_t got;
    uint32_t chunks;
    uv_fs_t fsreq;
    bool syncing;
};

/* One TCP connection, incoming or outgoing (transport thread only). */
struct peer_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    peer_transport_t *pt;
    struct peer_conn *next, *prev;
    enum peer_conn_kind kind;
    enum peer_conn_state state;
    bool outgoing;
    uint64_t remote_id;
    struct peer_remote *remote; /* outgoing stream */
    struct peer_snap_send *ss;  /* outgoing snapshot */
    struct peer_snap_recv *sr;  /* incoming snapshot */
    char addr[UTIL_ADDR_MAX];
    struct util_buf rbuf;
    bool paused; /* reading stopped: the inbox is full */
};

/* An inbox entry: the public event first, so peer_event_free can free it. */
struct peer_box {
    struct peer_event ev;
    struct peer_box *next;
    size_t size;
};

struct peer_listener;

/* A call waiting for its answer (rpc.c); in pt->calls, oldest first. */
struct peer_call {
    struct peer_call *next, *prev;
    uint64_t id, to;
    uint64_t deadline; /* monotonic ns */
    peer_call_cb cb;
    void *arg;
};

struct peer_transport {
    uv_loop_t own_loop;
    uv_loop_t *loop;
    bool own_thread;
    bool thread_started;
    pthread_t thread;
    log_t *lg;
    uv_async_t wake;
    struct peer_listener *listeners;
    struct peer_conn *conns;
    int open_handles; /* for close on a caller's loop */
    bool started;
    bool closed_handles;
    void (*close_cb)(void *);
    void *close_arg;
    struct peer_config cfg; /* snap_dir owned */
    uint64_t rng;

    pthread_mutex_t mu; /* guards what is marked so in the structs, and: */
    bool closing;
    struct peer_remote *peers;
    struct peer_snap_send *snap_pending;
    struct peer_box *in_head, *in_tail;
    size_t in_msgs, in_bytes;
    bool in_paused; /* streams stopped reading until the inbox drains by half */
    uint64_t refused;
    char last_refusal[UTIL_ERR_MAX];
    /* Members removed (peer_transport_remove_peer): refused as such, so a
     * removed member that missed its removal learns it; a ring. */
    uint64_t removed_ids[64];
    size_t n_removed;
    bool removed_self;                         /* a peer refused this member as removed */
    struct peer_call *calls_head, *calls_tail; /* calls waiting for an answer */
    size_t n_calls;
    uint64_t next_call_id;
    uv_timer_t calls_timer; /* transport thread: times calls out */
#ifdef QUOIN_TESTING
    uint64_t corrupt_at; /* UINT64_MAX: none */
#endif
};

/* A member id in a log line, as etcd writes it (hex); the buffer lives as
 * long as the enclosing block. */
#define PEER_LOG_ID(k, id) LOG_STR((k), peer_hex((id), (char[17]){0}))

/* codec.c */
const char *peer_hex(uint64_t id, char *buf);
void peer_put_u64(uint8_t *p, uint64_t v);
uint64_t peer_get_u64(const uint8_t *p);
void peer_frame_header(uint8_t *p, uint8_t type, uint32_t len);
/* Formats a refusal's text into buf (UTIL_ERR_MAX bytes); returns its length
 * without the NUL, truncated to fit. */
size_t peer_vtext(char *buf, const char *fmt, va_list ap);
/* Encodes m as a frame of the given type (PEER_F_MSG or PEER_F_SNAP_BEGIN).
 * Returns 0, -EINVAL (too large) or -ENOMEM. */
int peer_msg_encode(const struct raft_msg *m, uint8_t type, struct peer_frame **out);
/* Decodes a raftpb.Message into a fresh inbox entry; snap_path (may be NULL)
 * and snap_len describe a MsgSnap's received file (see struct peer_event).
 * Returns 0, -EINVAL or -ENOMEM. */
int peer_msg_decode(const uint8_t *p, size_t len, const char *snap_path, uint64_t snap_len,
                    struct peer_box **out);

/* peer.c, for snap.c */
struct peer_conn *peer_conn_dial(peer_transport_t *pt, struct peer_remote *r,
                                 enum peer_conn_kind kind);
void peer_conn_close(struct peer_conn *c);
/* Writes a copy of a frame built from hdr type and payload; close_after closes
 * the connection once it is written. Returns 0 or a negative code. */
int peer_conn_send(struct peer_conn *c, uint8_t type, const void *payload, size_t len,
                   bool close_after, uv_write_cb cb);
void peer_inbox_push(peer_transport_t *pt, struct peer_box *b);
void peer_report_snapshot(peer_transport_t *pt, uint64_t id, bool failed);
struct peer_remote *peer_find(peer_transport_t *pt, uint64_t id);
/* A file-system request (or another handle of the transport) started /
 * finished: close waits for them. */
void peer_fs_started(peer_transport_t *pt);
void peer_fs_done(peer_transport_t *pt);

/* Queues frame f (owned from here on) on member to's stream. report: a
 * failure also queues PEER_EV_UNREACHABLE for raft. Returns as
 * peer_transport_send. */
int peer_queue_frame(peer_transport_t *pt, uint64_t to, struct peer_frame *f, bool report);

/* rpc.c */
/* The timer that times calls out: init at creation, started with the
 * transport, closed with its handles (failing what waits with -ESHUTDOWN). */
void peer_rpc_init(peer_transport_t *pt);
void peer_rpc_start(peer_transport_t *pt);
void peer_rpc_close(peer_transport_t *pt);
/* A REQ or RESP frame on an incoming stream; returns 0, or -1 if it closed c. */
int peer_rpc_on_frame(struct peer_conn *c, uint8_t type, const uint8_t *p, size_t len);

/* snap.c */
/* Builds a send (fd owned from here on); returns 0 or -ENOMEM/-EINVAL. */
int peer_snap_send_new(peer_transport_t *pt, const struct raft_msg *m, int fd,
                       struct peer_snap_send **out);
/* Dials the target (transport thread). */
void peer_snap_start(struct peer_snap_send *ss);
/* Frees a send that never started (closing), without an outcome. */
void peer_snap_send_free(struct peer_snap_send *ss);
/* A snapshot connection finished its handshake. */
void peer_snap_on_open(struct peer_conn *c);
/* A frame on a snapshot connection; returns 0, or -1 if it closed c. */
int peer_snap_on_frame(struct peer_conn *c, uint8_t type, const uint8_t *p, size_t len);
/* A snapshot connection is gone. */
void peer_snap_on_close(struct peer_conn *c);

#endif
