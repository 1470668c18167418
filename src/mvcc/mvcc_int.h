/* mvcc internals shared by the files of src/mvcc: the store handle, the
 * on-disk encodings (see docs/mvcc.md) and the key scan every read uses. */
#ifndef QUOIN_MVCC_INT_H
#define QUOIN_MVCC_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "mvcc/mvcc.h"

/* A revision as stored: main (8 bytes) then sub (4 bytes), big-endian, so
 * byte order is revision order. */
#define REV_LEN 12
/* Longest key buffer a seek needs: LMDB's key limit is at most this. */
#define SEEK_MAX 1024
/* Record flags (first byte of a kv record and of a log record). */
#define REC_TOMB 0x01
/* kv record header after the flags byte: create, version, lease. */
#define REC_HDR (1 + 8 + 8 + 8)

#define EXTRA_DBI_MAX 16

/* An LMDB environment and the snapshots still using it: defragmentation
 * swaps the store to a new environment while older snapshots finish on the
 * old one. */
struct mvcc_env {
    MDB_env *env;
    int refs;     /* open snapshots, plus one while it is the current env */
    char *unlink; /* file to remove once closed (the old lock file), or NULL */
};

struct mvcc {
    struct mvcc_env *cur; /* guarded by envmu */
    pthread_mutex_t envmu;
    /* The writer (a batch, a compaction step, the defrag hold), handed out
     * in arrival order: mv_writer_lock / mv_writer_unlock. */
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    uint64_t w_next, w_serving;
    MDB_dbi kv, log, lease, meta;
    char *extra_names[EXTRA_DBI_MAX];
    MDB_dbi extra_dbis[EXTRA_DBI_MAX];
    size_t n_extra;
    char *path;
    log_t *lg;
    struct mvcc_options opt;
    uint64_t map_size;
    size_t max_key;
    atomic_bool capped;
    atomic_bool defragging;
    unsigned defrag_gen; /* written only by the running defragmentation */
};

struct mvcc_batch {
    mvcc_t *db;
    MDB_txn *txn;
    int64_t rev;
    int64_t compact_rev;
    int64_t committed_rev;
    uint64_t applied_index, applied_term;
    bool applied_set;
};

struct mvcc_read {
    mvcc_t *db;
    struct mvcc_env *e;
    MDB_txn *txn;
    int64_t rev;
    int64_t compact_rev;
};

/* Where reads run: a transaction (read snapshot or batch) and the revision
 * its "current" means. */
struct view {
    const mvcc_t *db;
    MDB_txn *txn;
    int64_t rev;
    int64_t compact_rev;
};

/* A decoded kv record. Pointers are into LMDB pages (valid for a read
 * snapshot's life, or in a batch until the next change). */
struct rec {
    const uint8_t *key;
    size_t key_len;
    int64_t main, sub;
    bool tomb;
    int64_t create, version, lease;
    const uint8_t *value;
    size_t value_len;
};

/* Key bounds of a range: keys >= start and < end; end_inf for no end. */
struct bounds {
    const uint8_t *start;
    size_t start_len;
    const uint8_t *end;
    size_t end_len;
    bool end_inf;
    bool single; /* exactly the key `start` */
};

/* Walks the keys of a range as of a revision, yielding each live key's latest
 * version at or below it. */
struct kscan {
    MDB_cursor *cur;
    struct bounds b;
    int64_t rev;
    bool have;        /* the cursor stands on an entry not yet looked at */
    bool check_start; /* the start key was too long to seek to */
    MDB_val k, v;
    uint8_t seek[SEEK_MAX];
};

/* Encodings */
void mv_enc_u64(uint8_t *p, uint64_t v);
uint64_t mv_dec_u64(const uint8_t *p);
void mv_enc_rev(uint8_t *p, int64_t main, int64_t sub);
void mv_dec_rev(const uint8_t *p, int64_t *main, int64_t *sub);
int mv_rec_decode(const MDB_val *k, const MDB_val *v, struct rec *r);
int mv_kv_key_cmp(const MDB_val *a, const MDB_val *b);

/* LMDB error code to a negative errno (or MVCC_ECORRUPT / MVCC_ENOSPACE). */
int mv_lmdb_err(int rc);

void mv_bounds_init(struct bounds *b, const uint8_t *key, size_t key_len, const uint8_t *end,
                    size_t end_len);
bool mv_bounds_contains(const struct bounds *b, const uint8_t *key, size_t key_len);

int mv_kscan_open(struct kscan *s, const struct view *v, const struct bounds *b, int64_t rev);
/* Returns 1 with *r filled, 0 at the end, or an error. */
int mv_kscan_next(struct kscan *s, struct rec *r);
void mv_kscan_close(struct kscan *s);

/* The newest record of a key (tombstone included) at the view's state;
 * returns 1 found, 0 none, or an error. */
int mv_latest_rec(MDB_cursor *cur, const uint8_t *key, size_t key_len, struct rec *r);

/* A chunked allocator owning a result's memory. */
struct mvcc_arena;
struct mvcc_arena *mv_arena_new(void);
void *mv_arena_alloc(struct mvcc_arena *a, size_t n);
void mv_arena_free(struct mvcc_arena *a);
/* Make room for element n of an array (malloc'ed, or in an arena) whose
 * capacity is *cap; `arrp` points to the array pointer. 0 or -ENOMEM. */
int mv_vec_grow(void *arrp, size_t *cap, size_t n, size_t size);
int mv_arena_grow(struct mvcc_arena *a, void *arrp, size_t *cap, size_t n, size_t size);
void mv_cursors_close(MDB_cursor *a, MDB_cursor *b);
mvcc_result_t *mv_result_new(void);
int mv_result_add_event(mvcc_result_t *res, const struct mvcc_event *ev);
void mv_rec_to_kv(const struct rec *r, bool keys_only, struct mvcc_kv *kv);
int mv_kv_from_rec(struct mvcc_arena *a, const struct rec *r, bool keys_only, struct mvcc_kv *kv);

/* A range read in progress (the public mvcc_range_it_t). */
struct mvcc_range_it {
    struct kscan scan;
    struct mvcc_range_req req;
    int64_t header_rev;
    bool sorted, descend, collected, done;
    struct mvcc_kv *arr; /* sorted mode: every matching kv */
    size_t n, cap, pos;
    int64_t count, matched, yielded;
};

int mv_range_check_rev(const struct view *v, int64_t want, int64_t *rev);
int mv_range_it_init(struct mvcc_range_it *it, const struct view *v,
                     const struct mvcc_range_req *req);
int mv_range_it_next(struct mvcc_range_it *it, struct mvcc_kv *kv);
void mv_range_it_summary(const struct mvcc_range_it *it, int64_t *count, bool *more, int64_t *rev);
void mv_range_it_fini(struct mvcc_range_it *it);
/* Runs a whole range into resp, copying every kv into the arena. */
int mv_range_materialize(const struct view *v, const struct mvcc_range_req *req,
                         struct mvcc_arena *a, struct mvcc_op_resp *resp);

void mv_writer_lock(mvcc_t *db);
void mv_writer_unlock(mvcc_t *db);

/* Environments (store.c), shared with defragmentation. */
int mv_env_open(mvcc_t *db, const char *path, MDB_env **out);
int mv_dbis_open(mvcc_t *db, MDB_env *env);
struct mvcc_env *mv_env_get(mvcc_t *db);
void mv_env_put(mvcc_t *db, struct mvcc_env *e);

/* Store meta access. */
int mv_meta_revs(MDB_txn *txn, const mvcc_t *db, int64_t *rev, int64_t *compact_rev);
int mv_meta_get_i64(MDB_txn *txn, MDB_dbi dbi, const char *name, int64_t *out, int64_t dflt);
int mv_meta_put_i64(MDB_txn *txn, MDB_dbi dbi, const char *name, int64_t val);

#define META_REV "rev"
#define META_COMPACT "compact"
#define META_COMPACT_DONE "compact_done"
#define META_COMPACT_POS "compact_pos"
#define META_COMPACT_POS_SUB "compact_pos_sub"
#define META_APPLIED_INDEX "applied_index"
#define META_APPLIED_TERM "applied_term"

#endif
