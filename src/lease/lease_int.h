/* lease internals shared by the files of src/lease: the handle, the leader's
 * per-lease entries with their id table and heaps, and the record format of
 * the "lease" database. */
#ifndef QUOIN_LEASE_INT_H
#define QUOIN_LEASE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "lease/lease.h"

#define NS_PER_S 1000000000ull
#define DEFAULT_CHECKPOINT_INTERVAL (300 * NS_PER_S)
#define DEFAULT_RETRY (3 * NS_PER_S)

/* A record of the "lease" database: key = id, 8 bytes big-endian; value =
 * format byte, TTL, checkpointed remaining TTL, deadline (8 bytes each,
 * big-endian). */
#define REC_FORMAT 1
#define REC_LEN (1 + 8 + 8 + 8)

struct lrec {
    int64_t ttl;
    int64_t remaining;
    uint64_t deadline;
};

void lrec_key(uint8_t out[8], int64_t id);
int64_t lrec_id(const uint8_t key[8]);
void lrec_encode(uint8_t out[REC_LEN], const struct lrec *r);
/* Returns 0 or MVCC_ECORRUPT. */
int lrec_decode(const uint8_t *p, size_t len, struct lrec *r);

/* a + b, saturating at UINT64_MAX (a TTL of LEASE_MAX_TTL seconds overflows a
 * wall-clock deadline otherwise). */
uint64_t lsat_add(uint64_t a, uint64_t b);
uint64_t lttl_ns(int64_t ttl);

/* The heaps a leader keeps: by next expiry check, by next checkpoint. */
enum { H_EXPIRY, H_CHECKPOINT, H_COUNT };
#define HEAP_NONE ((size_t)-1)

/* One lease on the leader. */
struct ent {
    int64_t id;
    int64_t ttl;
    uint64_t deadline; /* persisted wall deadline, 0 = unknown */
    uint64_t promised; /* latest wall deadline a renewal here promised, 0 = none */
    uint64_t expiry;   /* monotonic time this leader revokes it */
    uint64_t hkey[H_COUNT];
    size_t hpos[H_COUNT];
};

/* The array lives in a util_buf: it grows the way every buffer here does. */
struct heap {
    struct util_buf buf;
    struct ent **v; /* buf.data */
    size_t n;
    int which;
};

/* Sets e's key in heap h and moves it into place, inserting it if absent.
 * Returns 0 or -ENOMEM (nothing changed). */
int lheap_set(struct heap *h, struct ent *e, uint64_t key);
void lheap_remove(struct heap *h, struct ent *e);
struct ent *lheap_top(const struct heap *h);
void lheap_free(struct heap *h);

/* Open-addressing id -> entry table (linear probing, backward-shift delete). */
struct table {
    struct ent **slots;
    size_t cap, n;
};

struct ent *ltab_get(const struct table *t, int64_t id);
/* Inserts e (its id must be absent). Returns 0 or -ENOMEM. */
int ltab_put(struct table *t, struct ent *e);
void ltab_del(struct table *t, int64_t id);
/* Frees every entry and the table. */
void ltab_free(struct table *t);

/* A change applied in the open batch, replayed on the leader state once the
 * batch commits. */
enum pend_op { P_GRANT, P_REVOKE, P_CHECKPOINT };

struct pend {
    enum pend_op op;
    int64_t id;
    int64_t ttl;
    uint64_t deadline;
};

struct lease_batch {
    lease_t *ls;
    mvcc_batch_t *b;
    struct util_buf pend; /* struct pend[] */
    bool open;
};

struct lease_mgr {
    mvcc_t *db;
    MDB_dbi dbi;
    log_t *lg;
    struct lease_options opt;
    struct lease_batch batch; /* apply thread only */

#ifdef QUOIN_TESTING
    atomic_long fault_left; /* lease_test_fail_alloc's countdown */
    atomic_long fault_seen;
#endif

    pthread_mutex_t mu; /* guards everything below */
    bool primary;
    struct table tab;
    struct heap heaps[H_COUNT];
};

/* Calls fn for every record of the "lease" database in id-key order; stops
 * at fn's first non-zero return and returns it. */
typedef int (*lrec_fn)(void *arg, int64_t id, const struct lrec *r);
int lrec_walk(lease_t *ls, MDB_txn *txn, lrec_fn fn, void *arg);

/* Fills out->keys / n_keys / data with the keys attached to lease id, from
 * a fresh read snapshot. Returns 0 or an error (out unchanged). */
int lkeys_read(lease_t *ls, int64_t id, struct lease_ttl *out);

/* Before each allocation: whether test builds want it to fail. */
#ifdef QUOIN_TESTING
bool lfault(lease_t *ls);
#else
#define lfault(ls) ((void)(ls), false)
#endif

/* Leader-state replay of one committed change (primary.c). Called with mu. */
void lprimary_apply(lease_t *ls, const struct pend *p, uint64_t now_mono);
/* Drops the leader state. Called with mu. */
void lprimary_clear(lease_t *ls);

#endif
