/* mvcc: quoin's multi-version key space, etcd's revision model on LMDB.
 *
 * Every write request that changes something gets one *main revision* (the
 * store's revision counter plus one); each change inside it gets a
 * *sub-revision* 0, 1, 2, ... A key carries create_revision, mod_revision,
 * version and lease; deleting it writes a tombstone, so the next put starts a
 * new generation (version 1, a fresh create_revision). A fresh store is at
 * revision 1, so its first write is revision 2, exactly as in etcd. Reads may
 * name any revision between the compaction revision and the current one.
 *
 * Handles and their lifetimes (libuv style: long-lived handles, short-lived
 * requests):
 *   mvcc_t          the store; opened once, shared by every thread.
 *   mvcc_batch_t    one LMDB write transaction on the apply thread: many
 *                   requests, then the applied raft index/term, then commit.
 *   mvcc_read_t     one LMDB read snapshot; any thread, one thread at a time.
 *   mvcc_range_it_t a streaming range over a read snapshot.
 *   mvcc_result_t   what one applied request returned (responses, events);
 *                   owns its memory, freed with mvcc_result_free.
 *
 * Threading: exactly one batch exists at a time (mvcc_batch_begin waits for
 * the previous one, and for a compaction step or the short defrag swap).
 * Read snapshots never wait for writers and writers never wait for readers.
 * Every function below says where it may run.
 *
 * Errors: 0 (or a count) on success, else a negative code: either a negative
 * errno (-ENOMEM, -EIO, -EINVAL, ...) or one of the MVCC_E* codes below, whose
 * mvcc_strerror() text is etcd's error string. Inside a batch, MVCC_E* codes
 * other than MVCC_ECORRUPT reject that one request and leave the batch
 * usable; any other error (-ENOMEM, -ENOSPC for a full LMDB map, -EIO, ...)
 * leaves the batch unusable: abort it and re-apply its raft entries (the
 * applied index in LMDB did not move, so replay is exact).
 *
 * Byte strings (keys, values, range ends) are pointer + length and may hold
 * NUL bytes. Keys must be non-empty and at most mvcc_max_key_len() bytes. */
#ifndef QUOIN_MVCC_H
#define QUOIN_MVCC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "log/log.h"
#include "util/util.h"

/* Request-level errors, with etcd's strings from mvcc_strerror(). */
#define MVCC_ECOMPACTED (-20001)   /* revision below the compaction revision */
#define MVCC_EFUTURE (-20002)      /* revision above the current revision */
#define MVCC_EKEYNOTFOUND (-20003) /* put ignore_value/ignore_lease on a missing key */
#define MVCC_ENOSPACE (-20004)     /* quota exceeded (capped mode, or quota check) */
#define MVCC_EDUPKEY (-20005)      /* mvcc_txn_check_duplicates: key written twice */
#define MVCC_EKEYTOOLONG (-20006)  /* key longer than mvcc_max_key_len() */
#define MVCC_ECORRUPT (-20007)     /* a record in LMDB does not decode */

/* etcd's error string for MVCC_E* codes ("etcdserver: mvcc: required revision
 * has been compacted", ...), strerror() text for errno codes. Any thread. */
const char *mvcc_strerror(int code);

typedef struct mvcc mvcc_t;
typedef struct mvcc_batch mvcc_batch_t;
typedef struct mvcc_read mvcc_read_t;
typedef struct mvcc_range_it mvcc_range_it_t;
typedef struct mvcc_result mvcc_result_t;

/* ---- Opening ---------------------------------------------------------- */

struct mvcc_options {
    /* Size quota in bytes (etcd's --quota-backend-bytes); 0 means etcd's
     * default of 2 GiB. The LMDB map is made larger than the quota (a quarter
     * more, at least 64 MiB) so writes already admitted never hit a full map. */
    uint64_t quota_bytes;
    /* LMDB sync policy. The WAL is the durability source, so the server opens
     * with no_sync and calls mvcc_sync() at checkpoints. no_meta_sync syncs
     * data but not the meta page on each commit. */
    bool no_sync;
    bool no_meta_sync;
    /* LMDB's MDB_WRITEMAP: commits write straight into the memory map instead
     * of pwrite(2), about twice the put throughput with random keys. The
     * file then shows the map size (sparse), and a full disk shows up as
     * SIGBUS on a write instead of an error. */
    bool write_map;
    /* Maximum concurrent read snapshots (LMDB reader slots); 0 means 1024. */
    unsigned max_readers;
};

/* Opens (creating if needed) the store in the single file `path` (LMDB also
 * keeps `path`-lock next to it). Opening reads a few meta records only: its
 * time and memory do not depend on the database size. One process at a time.
 * Returns 0, -ENOMEM, -EIO, MVCC_ECORRUPT or an LMDB-derived errno, with err
 * filled. Call from one thread, before any other call on the handle. If a
 * compaction was interrupted, mvcc_compact_pending() says so after open; the
 * files of an interrupted defragmentation are removed. */
int mvcc_open(const char *path, const struct mvcc_options *opt, log_t *lg, mvcc_t **out,
              struct util_err *err);

/* Closes the store. No batch, read snapshot or iterator may be open. NULL is a
 * no-op. */
void mvcc_close(mvcc_t *db);

/* Longest key the store accepts (LMDB's key size limit minus the revision
 * suffix; 499 with a stock liblmdb). Any thread. */
size_t mvcc_max_key_len(const mvcc_t *db);

/* Flushes everything committed to disk (fsync). For checkpoints when opened
 * with no_sync: once it returns, the WAL may be truncated up to the applied
 * index read before the call. Any thread; may wait on a running commit. */
int mvcc_sync(mvcc_t *db);

/* The last committed applied raft index and term (0, 0 for a new store), and
 * the current and compaction revisions. Any thread. */
int mvcc_state(mvcc_t *db, uint64_t *applied_index, uint64_t *applied_term, int64_t *revision,
               int64_t *compact_revision);

/* ---- Key-values, requests, results ------------------------------------ */

/* A key-value as etcd's mvccpb.KeyValue. The pointers are valid as long as the
 * object that handed it out (read snapshot or result) lives. */
struct mvcc_kv {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
};

enum mvcc_sort_order { MVCC_SORT_NONE, MVCC_SORT_ASCEND, MVCC_SORT_DESCEND };
enum mvcc_sort_target {
    MVCC_SORT_KEY,
    MVCC_SORT_VERSION,
    MVCC_SORT_CREATE,
    MVCC_SORT_MOD,
    MVCC_SORT_VALUE
};

/* etcd's RangeRequest. range_end: NULL/empty for the single key `key`; the one
 * byte "\0" for every key >= key; otherwise [key, range_end). revision <= 0
 * reads the current revision. limit <= 0 means no limit. As in etcd 3.4:
 * `count` is the number of keys in the range at the revision, before the
 * min/max filters and the limit; a sort target other than KEY with order NONE
 * sorts ascending; sorting and filters apply to the whole range before the
 * limit, and equal sort values keep ascending key order. */
struct mvcc_range_req {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end;
    size_t range_end_len;
    int64_t limit;
    int64_t revision;
    enum mvcc_sort_order sort_order;
    enum mvcc_sort_target sort_target;
    bool keys_only;
    bool count_only;
    int64_t min_mod_revision, max_mod_revision; /* 0 = no bound */
    int64_t min_create_revision, max_create_revision;
};

/* etcd's PutRequest. ignore_value/ignore_lease keep the key's current value or
 * lease and fail with MVCC_EKEYNOTFOUND when the key does not exist. Whether
 * the lease exists is the lease layer's check, made before calling. */
struct mvcc_put_req {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *value;
    size_t value_len;
    int64_t lease;
    bool prev_kv;
    bool ignore_value;
    bool ignore_lease;
};

/* etcd's DeleteRangeRequest; range_end as in mvcc_range_req. The result holds
 * a copy of every deleted kv (the events' prev_kv), so its memory grows with
 * the range, as etcd's does. */
struct mvcc_delete_req {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end;
    size_t range_end_len;
    bool prev_kv;
};

enum mvcc_cmp_result { MVCC_CMP_EQUAL, MVCC_CMP_GREATER, MVCC_CMP_LESS, MVCC_CMP_NOT_EQUAL };
enum mvcc_cmp_target {
    MVCC_CMP_VERSION,
    MVCC_CMP_CREATE,
    MVCC_CMP_MOD,
    MVCC_CMP_VALUE,
    MVCC_CMP_LEASE
};

/* etcd's Compare. With a range_end every key of the range must satisfy it; an
 * empty range compares as one absent key (all numbers 0) except that a VALUE
 * compare on it is false. `number` is the version/create/mod/lease operand. */
struct mvcc_compare {
    enum mvcc_cmp_result result;
    enum mvcc_cmp_target target;
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end;
    size_t range_end_len;
    const uint8_t *value;
    size_t value_len;
    int64_t number;
};

enum mvcc_op_type { MVCC_OP_RANGE, MVCC_OP_PUT, MVCC_OP_DELETE, MVCC_OP_TXN };

struct mvcc_txn_req;

/* One request (etcd's RequestOp). */
struct mvcc_op {
    enum mvcc_op_type type;
    union {
        struct mvcc_range_req range;
        struct mvcc_put_req put;
        struct mvcc_delete_req del;
        const struct mvcc_txn_req *txn;
    } u;
};

/* etcd's TxnRequest. All compares, nested txns' included, are evaluated on the
 * state before the txn; the chosen ops then run in order, each seeing the
 * previous ones' writes, and all writes share one main revision. */
struct mvcc_txn_req {
    const struct mvcc_compare *compares;
    size_t n_compares;
    const struct mvcc_op *success;
    size_t n_success;
    const struct mvcc_op *failure;
    size_t n_failure;
};

struct mvcc_range_resp {
    int64_t count;
    bool more;
    struct mvcc_kv *kvs;
    size_t n_kvs;
};

struct mvcc_put_resp {
    bool has_prev;
    struct mvcc_kv prev_kv; /* when asked and the key existed */
};

struct mvcc_delete_resp {
    int64_t deleted;
    struct mvcc_kv *prev_kvs; /* when asked */
    size_t n_prev_kvs;
};

struct mvcc_op_resp;

struct mvcc_txn_resp {
    bool succeeded;
    struct mvcc_op_resp *responses;
    size_t n_responses;
};

/* One response (etcd's ResponseOp) and its header revision. */
struct mvcc_op_resp {
    enum mvcc_op_type type;
    int64_t revision;
    union {
        struct mvcc_range_resp range;
        struct mvcc_put_resp put;
        struct mvcc_delete_resp del;
        struct mvcc_txn_resp txn;
    } u;
};

enum mvcc_event_type { MVCC_EVENT_PUT, MVCC_EVENT_DELETE };

/* A watch event. A DELETE's kv holds the key and mod_revision only (as etcd
 * sends it). prev_kv is the key's value before the change, when it had one. */
struct mvcc_event {
    enum mvcc_event_type type;
    struct mvcc_kv kv;
    bool has_prev;
    struct mvcc_kv prev_kv;
};

/* What an applied request produced: the response, and the events of every
 * change in order (for watchers). Every pointer inside lives until
 * mvcc_result_free. */
struct mvcc_result {
    struct mvcc_op_resp resp;
    struct mvcc_event *events;
    size_t n_events;
    struct mvcc_arena *arena; /* private */
};

/* Frees a result. NULL is a no-op. Any thread. */
void mvcc_result_free(mvcc_result_t *res);

/* ---- Writing: the apply thread --------------------------------------- */

/* Starts a write batch (one LMDB write transaction). Waits while another batch,
 * a compaction step or a defrag swap holds the writer. Returns 0, -ENOMEM or an
 * LMDB-derived errno. Apply thread. */
int mvcc_batch_begin(mvcc_t *db, mvcc_batch_t **out);

/* Applies one request (put, delete range, txn, or a range read at the batch's
 * state) and returns its result in *out (NULL on error). Results do not depend
 * on the batch size: applying entries one per batch or a thousand per batch
 * gives the same responses and revisions.
 * Returns 0; MVCC_EKEYNOTFOUND, MVCC_ENOSPACE (capped mode), MVCC_ECOMPACTED,
 * MVCC_EFUTURE, MVCC_EKEYTOOLONG, -EINVAL (empty key, bad enum) rejecting just
 * this request with nothing changed; or another error leaving the batch
 * unusable. Apply thread. */
int mvcc_apply(mvcc_batch_t *b, const struct mvcc_op *op, mvcc_result_t **out);

/* Schedules a compaction at `revision` (etcd's Compact request, applied in
 * order like a write): from now on reads below it fail with MVCC_ECOMPACTED.
 * The history is then removed by mvcc_compact_step() in small transactions.
 * Returns 0, MVCC_ECOMPACTED (revision <= the compaction revision),
 * MVCC_EFUTURE (above the current revision) or a batch-breaking error.
 * Apply thread. */
int mvcc_compact(mvcc_batch_t *b, int64_t revision);

/* Records the raft index and term of the last entry applied in this batch;
 * they commit atomically with the data. Apply thread. */
void mvcc_batch_set_applied(mvcc_batch_t *b, uint64_t index, uint64_t term);

/* The revision the batch has reached. Apply thread. */
int64_t mvcc_batch_revision(const mvcc_batch_t *b);

/* The LMDB write transaction of the batch, for layers (lease, auth, members)
 * that keep their own named databases (open them with mvcc_dbi_open) and want
 * their state in the same atomic commit. Do not commit or abort it. */
MDB_txn *mvcc_batch_txn(mvcc_batch_t *b);

/* Commits the batch (frees it, whatever the result). Returns 0 or an
 * LMDB-derived errno; on failure nothing of the batch is stored. */
int mvcc_batch_commit(mvcc_batch_t *b);

/* Discards the batch. NULL is a no-op. */
void mvcc_batch_abort(mvcc_batch_t *b);

/* Opens (creating) a named LMDB database of another layer, e.g. "lease".
 * Names starting with "mvcc." are reserved. Call once at start-up, before any
 * batch or read. Returns 0 or an LMDB-derived errno. */
int mvcc_dbi_open(mvcc_t *db, const char *name, MDB_dbi *out);

/* ---- Reading: any thread --------------------------------------------- */

/* Opens a read snapshot: the state as of the last committed batch. Never waits
 * for the writer. Keep it short: LMDB cannot reuse pages a snapshot still
 * sees. Returns 0, -ENOMEM, or -EAGAIN when every reader slot is taken. */
int mvcc_read_begin(mvcc_t *db, mvcc_read_t **out);

/* The snapshot's current and compaction revisions (0 = never compacted). */
int64_t mvcc_read_revision(const mvcc_read_t *rd);
int64_t mvcc_read_compact_revision(const mvcc_read_t *rd);

/* The snapshot's LMDB transaction, for other layers' databases. */
MDB_txn *mvcc_read_txn(mvcc_read_t *rd);

/* Ends the snapshot; every kv and iterator taken from it becomes invalid (close
 * iterators first). NULL is a no-op. */
void mvcc_read_end(mvcc_read_t *rd);

/* Starts a range read on a snapshot. Keys come out one at a time straight from
 * LMDB's memory map, so a range of millions of keys costs no copy and bounded
 * memory. Sorting by anything but ascending key holds one 64-byte entry per
 * matching key, or per returned key when there is a limit. The same request
 * opened twice on one snapshot gives the same keys: a caller can size a
 * message in a first pass and write it in a second, without a copy. Returns 0, MVCC_EFUTURE,
 * MVCC_ECOMPACTED, -EINVAL or -ENOMEM. Same thread as the snapshot. */
int mvcc_range_open(mvcc_read_t *rd, const struct mvcc_range_req *req, mvcc_range_it_t **out);

/* Next key-value: returns 1 with *kv filled (valid until mvcc_read_end), 0 at
 * the end, or a negative error. */
int mvcc_range_next(mvcc_range_it_t *it, struct mvcc_kv *kv);

/* After mvcc_range_next returned 0: etcd's count, more, and the header
 * revision (the snapshot's current revision, whatever revision was read). */
void mvcc_range_summary(const mvcc_range_it_t *it, int64_t *count, bool *more, int64_t *revision);

/* Frees the iterator. NULL is a no-op. */
void mvcc_range_close(mvcc_range_it_t *it);

/* A whole range copied into a result (resp.u.range, resp.revision): for small
 * reads and tests. Same returns as mvcc_range_open. */
int mvcc_range(mvcc_read_t *rd, const struct mvcc_range_req *req, mvcc_result_t **out);

/* Where a history read resumes: the next (main, sub) revision to read. */
struct mvcc_history_pos {
    int64_t main;
    int64_t sub;
};

/* Watch catch-up: the events of keys in [key, range_end) (range_end as in
 * mvcc_range_req) at revisions from *pos on, in revision order, at most
 * max_events, into evs (pointers valid until mvcc_read_end). Reads at most
 * 16 * max_events history records per call, so a narrow range over a long
 * history returns pages of fewer events; *pos advances past what was read and
 * *done becomes true once the snapshot's current revision is reached. With
 * with_prev each event carries the key's previous value (if not compacted).
 * Returns the number of events, MVCC_ECOMPACTED if pos->main is below the
 * compaction revision (etcd's watch rule), or a negative error. */
int mvcc_history_read(mvcc_read_t *rd, const uint8_t *key, size_t key_len, const uint8_t *range_end,
                      size_t range_end_len, bool with_prev, struct mvcc_history_pos *pos,
                      struct mvcc_event *evs, size_t max_events, bool *done);

/* etcd's HashKV: CRC-32C over the key space at `revision` (0 = current), with
 * etcd 3.4's exact input bytes, so equal histories give equal hashes across
 * members and against etcd itself. Fills the current revision and, as etcd
 * does, the compaction revision or -1 if the store was never compacted.
 * Returns 0, MVCC_ECOMPACTED, MVCC_EFUTURE or an error. Any thread; reads the
 * whole history on its own snapshot. */
int mvcc_hash_kv(mvcc_t *db, int64_t revision, uint32_t *hash, int64_t *cur_rev,
                 int64_t *compact_rev);

/* ---- Maintenance ------------------------------------------------------- */

/* Removes up to `max_records` history records below the scheduled compaction
 * in one short write transaction, so writers wait at most one step. Sets *done
 * when the compaction is finished (also when none is pending). Returns 0 or an
 * error, -EBUSY while a defragmentation runs. Any thread except while that
 * thread holds a batch. */
int mvcc_compact_step(mvcc_t *db, size_t max_records, bool *done);

/* Whether a scheduled compaction has history left to remove. Returns 0 or an
 * error (then *pending is false). Any thread. */
int mvcc_compact_pending(mvcc_t *db, bool *pending);

/* Sizes: `size` is the database's high-water mark in bytes (what etcd calls
 * the db size; only defragmentation lowers it), `in_use` excludes free
 * pages. Any thread. */
int mvcc_size(mvcc_t *db, uint64_t *size, uint64_t *in_use);

/* etcd's quota cost of a request (0 for reads and deletes; puts count key,
 * value and 256 bytes; a txn counts its larger branch's top-level puts). */
uint64_t mvcc_request_cost(const struct mvcc_op *op);

/* The proposal-side quota check: 0 if a request of that cost fits under the
 * quota, else MVCC_ENOSPACE (the server then raises etcd's NOSPACE alarm
 * through raft). Any thread. */
int mvcc_quota_check(mvcc_t *db, uint64_t cost);

/* Capped mode, entered when the NOSPACE alarm is applied and left when it is
 * disarmed, so every member rejects the same requests: puts and txns with a
 * cost fail with MVCC_ENOSPACE, deletes, reads and compactions still work.
 * Apply thread. */
void mvcc_set_capped(mvcc_t *db, bool capped);

/* Defragments without stopping the world: rewrites the store in key order
 * (full pages) into `path`.defragN while readers and writers go on, replays the
 * writes committed meanwhile, then holds writers only to replay the last few
 * and swap files. Read snapshots opened before the swap keep the old file
 * until they end. *writes_held_ns (may be NULL) says how long writers waited.
 * No compaction may be pending (returns -EBUSY). Any thread except while that
 * thread holds a batch or a snapshot. Returns 0 or an error (the old file is
 * kept on any failure). */
int mvcc_defrag(mvcc_t *db, uint64_t *writes_held_ns, struct util_err *err);

/* Replaces the store by `file`, written by mvcc_snapshot_to_fd (on this or
 * another member): the file is renamed over the store's path, so it must be
 * on the same file system (next to it in the data directory). Snapshots
 * opened before keep reading the old content until they end. Takes the writer
 * (so not while this thread holds a batch); -EBUSY during a defragmentation.
 * Returns 0 or an error, the store unchanged. */
int mvcc_snapshot_install(mvcc_t *db, const char *file, struct util_err *err);

/* etcd's server-side txn check ("etcdserver: duplicate key given in txn
 * request"): a key put twice, or put and deleted, in the same branch nesting.
 * Returns 0 or MVCC_EDUPKEY; -ENOMEM. Pure function, any thread. As in etcd
 * 3.4, a delete whose range_end is "\0" is not taken into account. */
int mvcc_txn_check_duplicates(const struct mvcc_txn_req *txn);

/* Writes a consistent, compacted copy of the whole store (an LMDB file as of
 * one read snapshot) to fd, from its current offset. Writers are not held.
 * Returns 0 or an LMDB-derived errno. Any thread except while that thread
 * holds a batch. */
int mvcc_snapshot_to_fd(mvcc_t *db, int fd);

/* The applied index and term a copy made by mvcc_snapshot_to_fd holds, read
 * back from the copy in fd (written from offset 0): the copy runs on a read
 * snapshot of its own, so only the copy knows which index it stopped at.
 * Returns 0, MVCC_ECORRUPT (not a store) or an LMDB-derived errno. Any
 * thread. */
int mvcc_snapshot_fd_state(int fd, uint64_t *applied_index, uint64_t *applied_term);

/* ---- Lease index ------------------------------------------------------- */

/* Called once per key; return 0 to go on, anything else to stop. */
typedef int (*mvcc_lease_key_fn)(void *arg, const uint8_t *key, size_t key_len);

/* Calls fn for every live key whose current version is attached to `lease`,
 * in ascending key byte order, as `txn` sees the store (a batch's
 * mvcc_batch_txn or a snapshot's mvcc_read_txn). `key` is valid only during
 * the call: copy it before writing through the batch. Returns 0, fn's non-zero
 * value if it stopped the walk, or an LMDB-derived error. Thread of txn. */
int mvcc_lease_keys(mvcc_t *db, MDB_txn *txn, int64_t lease, mvcc_lease_key_fn fn, void *arg);

#endif
