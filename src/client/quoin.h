/* libquoin: a C client of the etcd v3 API (quoin or etcd itself), over gRPC on
 * HTTP/2 cleartext (h2c, prior knowledge) with nghttp2 on libuv.
 *
 * Handles and requests, libuv style:
 *   - quoin_client_t is long-lived: an endpoint list, one HTTP/2 connection to
 *     the current endpoint, and the calls running on it. When the connection is
 *     lost, or a server answers Unavailable ("etcdserver: no leader"), the client
 *     moves to the next endpoint.
 *   - a call is a short-lived request: it ends exactly once, with a response or
 *     an error, at the latest at its deadline (sent to the server as grpc-timeout).
 *   - quoin_watch_t and quoin_keepalive_t are long-lived streams that survive
 *     reconnects: a watch resumes from the last revision it delivered + 1, so no
 *     event is missed or delivered twice; a keep-alive keeps refreshing its lease.
 *
 * Two ways to run a client:
 *   - quoin_client_new(): the client runs its own libuv loop on a thread of its
 *     own. The blocking calls (quoin_put, quoin_get, ...) may be made from any
 *     number of threads at once. The asynchronous calls (..._async) may be made
 *     from any thread too; their callbacks run on the client's thread.
 *   - quoin_client_new_on_loop(): the client lives on the caller's uv_loop_t
 *     (made on, and afterwards driven by, that loop's thread). Only the
 *     asynchronous calls are allowed (from any thread: calls from other threads
 *     are handed over with a uv_async_t), and callbacks run on the loop thread.
 *     A blocking call on such a client, or a blocking call made from a client's
 *     own loop thread (inside a callback), returns -EDEADLK. The client keeps
 *     the loop alive only while it has calls, watches or keep-alives. As with
 *     any libuv socket, the loop's thread must ignore or block SIGPIPE (a
 *     server closing a connection mid-write raises it); the client's own
 *     thread (quoin_client_new) blocks it itself.
 *   quoin_client_free() must not run concurrently with any other call on the
 *   same client (on_loop clients: call it from the loop thread).
 *
 * Errors: every function returns 0 or a negative errno-style code, and fills a
 * quoin_error_t when given one: `code` is the gRPC status code (etcd's server
 * codes, e.g. 3 InvalidArgument, 5 NotFound, 11 OutOfRange for a compacted
 * revision, 4 DeadlineExceeded, 14 Unavailable) and `message` the server's text
 * ("etcdserver: requested lease not found"). Return codes:
 *   0            success (code == 0)
 *   -ETIMEDOUT   the deadline passed (code 4, "context deadline exceeded")
 *   -EIO         the server answered with a gRPC error (code, message), or
 *                the connection was lost after a write was sent (code 14)
 *   -EINVAL      bad arguments; -ENOMEM out of memory; -EDEADLK see above
 *
 * Responses (quoin_resp_t) are owned by the caller and freed with
 * quoin_resp_free(); the pointers inside stay valid until then. */
#ifndef QUOIN_CLIENT_H
#define QUOIN_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;

typedef struct quoin_client quoin_client_t;
typedef struct quoin_watch quoin_watch_t;
typedef struct quoin_keepalive quoin_keepalive_t;

/* gRPC status codes a caller is likely to test. */
enum {
    QUOIN_OK = 0,
    QUOIN_CANCELLED = 1,
    QUOIN_INVALID_ARGUMENT = 3,
    QUOIN_DEADLINE_EXCEEDED = 4,
    QUOIN_NOT_FOUND = 5,
    QUOIN_FAILED_PRECONDITION = 9,
    QUOIN_OUT_OF_RANGE = 11,
    QUOIN_UNAVAILABLE = 14,
};

typedef struct quoin_error {
    int code;          /* gRPC status code, QUOIN_OK when there is no error */
    char message[256]; /* the server's grpc-message, or the client's own text */
} quoin_error_t;

typedef struct quoin_header {
    uint64_t cluster_id;
    uint64_t member_id;
    int64_t revision;
    uint64_t raft_term;
} quoin_header_t;

typedef struct quoin_kv {
    const char *key; /* not NUL-terminated: use key_len */
    size_t key_len;
    const char *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
} quoin_kv_t;

typedef struct quoin_member {
    uint64_t id;
    const char *name;
    const char *const *peer_urls;
    size_t n_peer_urls;
    const char *const *client_urls;
    size_t n_client_urls;
    int is_learner;
} quoin_member_t;

enum quoin_op_type { QUOIN_OP_RANGE = 0, QUOIN_OP_PUT = 1, QUOIN_OP_DELETE = 2 };

/* One KV operation, for quoin_do() and the branches of a transaction. Zeroed
 * fields are etcd's defaults. `range_end` NULL means the single key `key`; a
 * range_end of one zero byte (QUOIN_ALL, 1) means every key >= key. */
typedef struct quoin_op {
    enum quoin_op_type type;
    const void *key;
    size_t key_len;
    const void *range_end; /* RANGE and DELETE */
    size_t range_end_len;
    const void *value; /* PUT */
    size_t value_len;
    int64_t lease;    /* PUT */
    int prev_kv;      /* PUT, DELETE: return the previous key-value(s) */
    int64_t limit;    /* RANGE: 0 = no limit */
    int64_t revision; /* RANGE: read at this revision, 0 = current */
    int serializable; /* RANGE: local read, no consensus round */
    int keys_only;    /* RANGE */
    int count_only;   /* RANGE */
    int sort_order;   /* RANGE: 0 none, 1 ascend, 2 descend */
    int sort_target;  /* RANGE: 0 key, 1 version, 2 create, 3 mod, 4 value */
} quoin_op_t;

enum quoin_cmp_target {
    QUOIN_CMP_VERSION = 0,
    QUOIN_CMP_CREATE = 1,
    QUOIN_CMP_MOD = 2,
    QUOIN_CMP_VALUE = 3,
    QUOIN_CMP_LEASE = 4,
};
enum quoin_cmp_result {
    QUOIN_CMP_EQUAL = 0,
    QUOIN_CMP_GREATER = 1,
    QUOIN_CMP_LESS = 2,
    QUOIN_CMP_NOT_EQUAL = 3
};

/* One comparison of a transaction: `target` of key (or every key of
 * [key, range_end)) `result` the given number (or value for QUOIN_CMP_VALUE). */
typedef struct quoin_cmp {
    const void *key;
    size_t key_len;
    const void *range_end;
    size_t range_end_len;
    enum quoin_cmp_target target;
    enum quoin_cmp_result result;
    int64_t number; /* version, create/mod revision or lease */
    const void *value;
    size_t value_len;
} quoin_cmp_t;

/* A response. Which fields are set depends on the call; the rest are zero. */
typedef struct quoin_resp quoin_resp_t;
struct quoin_resp {
    quoin_header_t header;
    enum quoin_op_type op; /* for KV ops and each element of `ops` */
    quoin_kv_t *kvs;       /* RANGE: the kvs; PUT/DELETE with prev_kv: previous ones */
    size_t n_kvs;
    int more;          /* RANGE: the limit cut the answer short */
    int64_t count;     /* RANGE: keys in the range */
    int64_t deleted;   /* DELETE */
    int succeeded;     /* txn: the compares held */
    quoin_resp_t *ops; /* txn: one response per op of the branch that ran */
    size_t n_ops;
    int64_t lease_id;              /* lease grant / time-to-live / keep-alive */
    int64_t ttl;                   /* seconds left; -1 when the lease does not exist */
    int64_t granted_ttl;           /* time-to-live */
    const char *const *lease_keys; /* time-to-live with keys (not NUL-safe: use lens) */
    const size_t *lease_key_lens;
    size_t n_lease_keys;
    quoin_member_t *members; /* member list */
    size_t n_members;
    const char *version; /* status */
    int64_t db_size;
    uint64_t leader;
    uint64_t raft_index;
    uint64_t raft_term;
    void *priv_; /* owned storage; do not touch */
};

/* Client options. Zero values are defaults. */
typedef struct quoin_options {
    int dial_timeout_ms;     /* one connection attempt; default 2000 */
    int default_deadline_ms; /* used when a call passes deadline_ms <= 0; default 5000 */
} quoin_options_t;

/* Failover: calls wait while the client (re)connects, trying the endpoints in
 * turn (a full round of failed dials waits 100 ms before the next). An
 * unreachable cluster is thus reported as a deadline (code 4), like etcd's
 * clients do. A call that the server answers Unavailable is sent again on the
 * next endpoint when there is more than one. A call lost with its connection is
 * sent again if it had not left completely, or if it is a read (range, status,
 * member list, lease time-to-live); a write that had left is answered code 14,
 * since it may or may not have been applied.
 *
 * Makes a client over `endpoints` ("127.0.0.1:2379" or "http://host:port",
 * comma-separated), connecting lazily. Runs its own loop thread.
 * Returns 0, -EINVAL (bad endpoint), -ENOMEM or a libuv/pthread error. */
int quoin_client_new(const char *endpoints, const quoin_options_t *opts, quoin_client_t **out);

/* The same on the caller's loop (asynchronous calls only, from that thread). */
int quoin_client_new_on_loop(struct uv_loop_s *loop, const char *endpoints,
                             const quoin_options_t *opts, quoin_client_t **out);

/* Ends every call (callbacks get code 1 Cancelled), stops every watch and
 * keep-alive, closes the connection, joins the thread if there is one. On an
 * on_loop client the handles close during the next loop iterations; the loop
 * must run until they have. NULL is allowed. */
void quoin_client_free(quoin_client_t *c);

/* The endpoint (as given) that the client currently talks to. */
const char *quoin_client_endpoint(const quoin_client_t *c);

void quoin_resp_free(quoin_resp_t *r);

/* ---- blocking calls. deadline_ms <= 0: the client's default deadline. ---- */

/* Any KV op; put/get/delete below are shorthands. */
int quoin_do(quoin_client_t *c, const quoin_op_t *op, int deadline_ms, quoin_resp_t **resp,
             quoin_error_t *err);
int quoin_put(quoin_client_t *c, const char *key, const char *value, int64_t lease, int deadline_ms,
              quoin_error_t *err);
/* Gets the single key (NUL-terminated); *resp has n_kvs 0 or 1. */
int quoin_get(quoin_client_t *c, const char *key, int deadline_ms, quoin_resp_t **resp,
              quoin_error_t *err);
/* Deletes the single key; *deleted (may be NULL) says how many were. */
int quoin_delete(quoin_client_t *c, const char *key, int64_t *deleted, int deadline_ms,
                 quoin_error_t *err);
int quoin_txn(quoin_client_t *c, const quoin_cmp_t *cmps, size_t n_cmps, const quoin_op_t *then_ops,
              size_t n_then, const quoin_op_t *else_ops, size_t n_else, int deadline_ms,
              quoin_resp_t **resp, quoin_error_t *err);
int quoin_compact(quoin_client_t *c, int64_t revision, int physical, int deadline_ms,
                  quoin_error_t *err);
/* id 0: the server picks one; *resp->lease_id is the lease, resp->ttl its TTL. */
int quoin_lease_grant(quoin_client_t *c, int64_t ttl, int64_t id, int deadline_ms,
                      quoin_resp_t **resp, quoin_error_t *err);
int quoin_lease_revoke(quoin_client_t *c, int64_t id, int deadline_ms, quoin_error_t *err);
int quoin_lease_ttl(quoin_client_t *c, int64_t id, int keys, int deadline_ms, quoin_resp_t **resp,
                    quoin_error_t *err);
/* Refreshes a lease once; resp->ttl is its new TTL, 0 or less if it is gone. */
int quoin_lease_keepalive_once(quoin_client_t *c, int64_t id, int deadline_ms, quoin_resp_t **resp,
                               quoin_error_t *err);
int quoin_status(quoin_client_t *c, int deadline_ms, quoin_resp_t **resp, quoin_error_t *err);
int quoin_member_list(quoin_client_t *c, int deadline_ms, quoin_resp_t **resp, quoin_error_t *err);

/* ---- asynchronous calls: `cb` runs once, on the client's loop thread, with
 * either a response (which it owns) or an error (resp NULL). ---- */
typedef void (*quoin_cb)(void *arg, quoin_resp_t *resp, const quoin_error_t *err);

int quoin_do_async(quoin_client_t *c, const quoin_op_t *op, int deadline_ms, quoin_cb cb,
                   void *arg);
int quoin_txn_async(quoin_client_t *c, const quoin_cmp_t *cmps, size_t n_cmps,
                    const quoin_op_t *then_ops, size_t n_then, const quoin_op_t *else_ops,
                    size_t n_else, int deadline_ms, quoin_cb cb, void *arg);
int quoin_compact_async(quoin_client_t *c, int64_t revision, int physical, int deadline_ms,
                        quoin_cb cb, void *arg);
int quoin_lease_grant_async(quoin_client_t *c, int64_t ttl, int64_t id, int deadline_ms,
                            quoin_cb cb, void *arg);
int quoin_lease_revoke_async(quoin_client_t *c, int64_t id, int deadline_ms, quoin_cb cb,
                             void *arg);
int quoin_lease_ttl_async(quoin_client_t *c, int64_t id, int keys, int deadline_ms, quoin_cb cb,
                          void *arg);
int quoin_lease_keepalive_once_async(quoin_client_t *c, int64_t id, int deadline_ms, quoin_cb cb,
                                     void *arg);
int quoin_status_async(quoin_client_t *c, int deadline_ms, quoin_cb cb, void *arg);
int quoin_member_list_async(quoin_client_t *c, int deadline_ms, quoin_cb cb, void *arg);

/* ---- watch ---- */

enum quoin_event_type { QUOIN_EVENT_PUT = 0, QUOIN_EVENT_DELETE = 1 };

typedef struct quoin_event {
    enum quoin_event_type type;
    quoin_kv_t kv;      /* DELETE: key and mod_revision only */
    quoin_kv_t prev_kv; /* when asked for; key_len 0 otherwise */
} quoin_event_t;

/* Called on the loop thread for each batch of events (in revision order), and
 * once with err set when the watch ends for good (canceled by the server, e.g.
 * code 11 with compact_revision when the resume revision was compacted, or
 * quoin_watch_cancel: code 1). The events are valid during the call only. */
typedef void (*quoin_watch_cb)(void *arg, const quoin_header_t *h, const quoin_event_t *events,
                               size_t n, int64_t compact_revision, const quoin_error_t *err);

typedef struct quoin_watch_options {
    const void *range_end; /* as in quoin_op_t */
    size_t range_end_len;
    int64_t start_revision; /* 0: from now on */
    int prev_kv;
} quoin_watch_options_t;

/* Starts a watch of key (key_len bytes). Events reach cb until the watch is
 * canceled. After a reconnect (the same or another endpoint) the watch is made
 * again from the last delivered revision + 1. Any thread; *out is valid until
 * quoin_watch_cancel. Returns 0, -EINVAL, -ENOMEM. */
int quoin_watch(quoin_client_t *c, const void *key, size_t key_len,
                const quoin_watch_options_t *opts, quoin_watch_cb cb, void *arg,
                quoin_watch_t **out);
/* Stops and frees the watch, from any thread, exactly once per watch (also
 * after the server ended it). Unless the watch had already ended, cb runs a
 * last time with code 1 (Cancelled) on the loop thread. */
void quoin_watch_cancel(quoin_watch_t *w);

/* ---- keep-alive ---- */

/* Called on the loop thread after each keep-alive answer: ttl > 0 is the TTL
 * the lease got; ttl <= 0 (and err NULL) means the lease is gone, and the
 * keep-alive stops (the callback runs no more). */
typedef void (*quoin_keepalive_cb)(void *arg, int64_t lease_id, int64_t ttl);

/* Keeps lease `id` alive in the background, refreshing every TTL/3 (at least
 * every 500 ms), across reconnects. cb may be NULL. Any thread. */
int quoin_keepalive(quoin_client_t *c, int64_t id, quoin_keepalive_cb cb, void *arg,
                    quoin_keepalive_t **out);
/* Stops the keep-alive and frees it (the lease then expires by itself); also
 * needed after the lease is gone. Any thread, once per keep-alive. */
void quoin_keepalive_stop(quoin_keepalive_t *k);

#endif
