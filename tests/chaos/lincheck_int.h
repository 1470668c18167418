/* The checker's internal representation of a history, shared by the parser
 * (lincheck_history.c), the linearizability search (lincheck.c) and the global
 * checks (lincheck_global.c). Every single-key operation is stored as a txn, so
 * the model has one step function: a put is a txn with no compare and one put, a
 * CAS a txn with one compare and one put, and so on. */
#ifndef QUOIN_LINCHECK_INT_H
#define QUOIN_LINCHECK_INT_H

#include <stddef.h>
#include <stdint.h>

#include "lincheck.h"

/* Completion time of an operation that never completed (indeterminate). */
#define LC_NEVER UINT64_MAX
/* A value id meaning "no such key". */
#define LC_ABSENT (-1)

/* LC_EXPIRED and LC_ALIVE are observations of a lease (gone, or still there);
 * LC_EXPIRE is the checker's own "the lease may expire here". */
enum lc_kind { LC_TXN, LC_RANGE, LC_GRANT, LC_REVOKE, LC_EXPIRED, LC_ALIVE, LC_EXPIRE, LC_WATCH };
enum lc_status { LC_OK, LC_FAIL, LC_INDET };
enum lc_sub_kind { LC_GET, LC_PUT, LC_DEL };
enum lc_target { LC_T_VALUE, LC_T_MOD, LC_T_CREATE, LC_T_VERSION };
enum lc_cmpop { LC_EQ, LC_NE, LC_LT, LC_GT };
enum lc_ev_type { LC_EV_PUT, LC_EV_DEL, LC_EV_PROGRESS, LC_EV_RECONNECT };

/* A key-value as a read returned it; value LC_ABSENT when not found. Revision
 * fields are 0 and lease -1 when the history did not record them. */
struct lc_kv {
    int key;
    int value;
    int64_t mod, create, version, lease;
};

struct lc_sub {
    enum lc_sub_kind kind;
    int key;
    int value;     /* put */
    int64_t lease; /* put, 0 = none */
    int lidx;      /* put with a lease: its lease number */
    struct lc_kv res;
    int64_t deleted; /* delete: keys deleted, -1 unrecorded */
};

struct lc_cmp {
    int key;
    enum lc_target target;
    enum lc_cmpop op;
    int value;   /* LC_T_VALUE */
    int64_t num; /* the others */
};

/* One entry of a watch stream: an event, a progress notification (rev) or a
 * reconnect (rev = the start revision asked for). */
struct lc_wev {
    enum lc_ev_type type;
    int key, value;
    int64_t rev, create, version;
};

struct lc_op {
    int line;
    int client;
    enum lc_kind kind;
    enum lc_status status;
    uint64_t call, ret;
    int64_t rev; /* header revision, 0 when unknown */
    /* LC_TXN */
    struct lc_cmp *cmps;
    size_t ncmps;
    struct lc_sub *subs[2]; /* [1] = then (success), [0] = else (failure) */
    size_t nsubs[2];
    int succeeded;    /* 1, 0, or -1 unknown */
    int serializable; /* a get or range that may be served stale */
    /* LC_RANGE and LC_WATCH: keys in [from, to); to_all = no upper bound */
    char *from, *to;
    size_t fromlen, tolen;
    int single, to_all, final;
    struct lc_kv *kvs;
    size_t nkvs;
    /* leases */
    int64_t lease, ttl;
    int lidx; /* lease number of lease */
    /* LC_WATCH */
    struct lc_wev *evs;
    size_t nevs;
    int64_t start_rev;
    char *text; /* the history line, for reports */
};

/* Interned strings: equal strings get equal small ids. */
struct lc_strtab {
    char **str;
    size_t *len;
    size_t n, cap;
    int *slots; /* open addressing, id+1, 0 = free */
    size_t nslots;
};

struct lincheck_history {
    struct lc_op *ops;
    size_t nops, cap;
    struct lc_strtab keys, values, clients;
    int64_t *leases; /* lease ids seen, index = lease number */
    size_t nleases, capleases;
    int line;
};

int lc_strtab_intern(struct lc_strtab *t, const char *s, size_t n);
/* The lease number of lease id (adding it), or -ENOMEM. */
int lc_lease_index(struct lincheck_history *h, int64_t id);
/* Whether key id k lies in op's range (LC_RANGE, LC_WATCH). */
int lc_in_range(const struct lincheck_history *h, const struct lc_op *op, int k);

/* Whether an ok txn wrote: 1 yes, 0 no, -1 a delete with an unrecorded count. */
int lc_txn_wrote(const struct lc_op *op);

/* Appends an excerpt naming op (its line of the history) to the report. */
int lc_report_op(struct util_buf *b, const struct lincheck_history *h, const struct lc_op *op);
/* Appends a headline for a finding and counts it in res. */
int lc_report_anomaly(struct lincheck_result *res, unsigned kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What the history reveals about each operation (lincheck_learn.c), per
 * index into the history's ops, and the revisions known taken. */
struct lc_learned {
    int64_t *rev;        /* the revision it took, 0 unknown */
    uint64_t *by;        /* the latest time it can take effect, LC_NEVER if none */
    unsigned char *must; /* it certainly took effect (else it may never have) */
    /* per value: earliest time seen, revision seen at, operations writing it */
    uint64_t *seen;
    int64_t *vrev;
    int64_t *vver; /* the key's version the value's write made, 0 unknown */
    int *writers;
    /* revisions taken by known writes, sorted, with the end of each run */
    int64_t *used, *run_end;
    size_t nused;
};

/* Fills l (freed with lc_learned_free, also on failure). Returns 0 or -ENOMEM. */
int lc_learn(const struct lincheck_history *h, struct lc_learned *l);
void lc_learned_free(struct lc_learned *l);
/* The lowest revision above floor that no known write took. */
int64_t lc_next_gap(const struct lc_learned *l, int64_t floor);

/* The global checks (lincheck_global.c): revisions, final read, watches. */
int lc_check_global(const struct lincheck_history *h, const struct lc_learned *l, int open_world,
                    struct lincheck_result *res);

#endif
