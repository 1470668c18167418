/* members: internal to src/server — the cluster's member set, its binary
 * encoding, etcd's checks of a membership change, the member store in the
 * key space's LMDB environment, and the member's identity file.
 *
 * The store is the LMDB database "members" beside the key space, so it is
 * written in the same transaction as the applied index (a restart finds the
 * member set exactly as of that index) and travels inside a copy of the
 * environment (snapshots). Its keys:
 *   8 bytes, the member id big-endian   -> a member record (members_encode)
 *   "cluster"                           -> the cluster id, 8 bytes big-endian
 *   "removed"                           -> the ids of removed members, 8 bytes each
 *   "boot"                              -> the member set the cluster was
 *                                          bootstrapped with (members_encode_set):
 *                                          a member joining later starts from
 *                                          it and replays the log from index 1
 *
 * A member record: version (1 byte, 1), flags (1 byte, bit 0 learner), the
 * name, the peer URLs, the client URLs — each string a 2-byte big-endian
 * length then its bytes, each list a 1-byte count then its strings. A set:
 * count (4 bytes) then, per member, its record's length (4 bytes) and record.
 * Integers are big-endian.
 *
 * The identity file `<data-dir>/identity` says which member this data directory
 * is and of which cluster ("member-id <hex>\ncluster-id <hex>\n"), then the
 * bootstrap set the member's log starts from ("bootstrap <hex of
 * members_encode_set>\n"). It is per member, so it lives outside the store (a
 * snapshot from another member replaces the store, never the identity), and
 * outside LMDB so that a member whose store a power cut took can rebuild it
 * alone.
 *
 * Threads: the functions on a struct member_set are plain data and not
 * locked; the store functions run on the thread of the transaction given. */
#ifndef QUOIN_SERVER_MEMBERS_H
#define QUOIN_SERVER_MEMBERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "mvcc/mvcc.h"
#include "raft/raft.h"
#include "util/util.h"

/* etcd's refusals of a membership change (rpctypes' texts: v3_fail). */
#define MEMBERS_EEXIST (-40001)           /* "etcdserver: member ID already exist" */
#define MEMBERS_EPEEREXIST (-40002)       /* "etcdserver: Peer URLs already exists" */
#define MEMBERS_ENOTFOUND (-40003)        /* "etcdserver: member not found" */
#define MEMBERS_EBADURLS (-40004)         /* "etcdserver: given member URLs are invalid" */
#define MEMBERS_ENOTSTARTED (-40005)      /* "... not enough started members" */
#define MEMBERS_ENOTLEARNER (-40006)      /* "etcdserver: can only promote a learner member" */
#define MEMBERS_ETOOMANYLEARNERS (-40007) /* "etcdserver: too many learner members in cluster" */
#define MEMBERS_EUNHEALTHY (-40008)       /* "etcdserver: unhealthy cluster" */

/* etcd 3.4 allows one learner at a time. */
#define MEMBERS_MAX_LEARNERS 1

struct member {
    uint64_t id;
    bool learner;
    char *name; /* "" until the member published its attributes */
    char **peer_urls;
    size_t n_peer_urls;
    char **client_urls;
    size_t n_client_urls;
};

struct member_set {
    struct member *v;
    size_t n;
};

void member_free(struct member *m);
/* Deep copy. Returns 0 or -ENOMEM (dst then empty). */
int member_copy(struct member *dst, const struct member *src);
void members_free(struct member_set *set);
/* Deep copy. Returns 0 or -ENOMEM (dst then empty). */
int members_copy(struct member_set *dst, const struct member_set *src);
struct member *members_find(const struct member_set *set, uint64_t id);
/* Adds a copy of m, or replaces the member with its id. 0 or -ENOMEM. */
int members_put(struct member_set *set, const struct member *m);
void members_remove(struct member_set *set, uint64_t id);
/* Raft's configuration of the set (voters and learners). */
void members_conf_state(const struct member_set *set, struct raft_conf_state *cs);

/* The members of --initial-cluster (ids as config derives them from the
 * peer URLs and the token), every one a voter: a new cluster's first set.
 * Returns 0 or -ENOMEM (set then empty). */
int members_initial_set(const struct config *cfg, struct member_set *set);

/* Encodings (see the top of the file). encode appends to out: 0 or -ENOMEM.
 * decode fills out (free with member_free / members_free): 0, -EINVAL
 * (malformed) or -ENOMEM. */
int members_encode(const struct member *m, struct util_buf *out);
int members_decode(const uint8_t *p, size_t len, struct member *out);
int members_encode_set(const struct member_set *set, struct util_buf *out);
int members_decode_set(const uint8_t *p, size_t len, struct member_set *out);

/* What a membership change does, as carried in a raft conf change's
 * context. */
enum members_op {
    MEMBERS_OP_ADD = 1,     /* RAFT_CC_ADD_NODE or RAFT_CC_ADD_LEARNER, with the member */
    MEMBERS_OP_REMOVE = 2,  /* RAFT_CC_REMOVE_NODE */
    MEMBERS_OP_UPDATE = 3,  /* RAFT_CC_UPDATE_NODE, with the new peer URLs */
    MEMBERS_OP_PROMOTE = 4, /* RAFT_CC_ADD_NODE of a learner */
};

/* etcd's ValidateConfigurationChange: whether `op` on member id (m: the
 * member added, or the one updated with its new peer URLs) is allowed
 * against set. Returns 0 or a MEMBERS_E* code. Pure function: the raft
 * thread and the apply thread reach the same verdict from the same set. */
int members_check(const struct member_set *set, enum members_op op, uint64_t id,
                  const struct member *m);

/* Applies an allowed change to set (learner flag, peer URLs; an added member
 * keeps m's fields). Returns 0 or -ENOMEM. */
int members_apply(struct member_set *set, enum members_op op, uint64_t id, const struct member *m);

/* ---- The store ---- */

/* Opens (creating) the "members" database. Start-up. 0 or an LMDB errno. */
int members_store_open(mvcc_t *db, MDB_dbi *dbi);

/* Reads the member set, the cluster id (0 when none is stored) and, when boot
 * is not NULL, the bootstrap set. Thread of txn. Returns 0, -EINVAL (a
 * malformed record), -ENOMEM or -EIO. */
int members_store_load(MDB_txn *txn, MDB_dbi dbi, struct member_set *out, uint64_t *cluster_id,
                       struct member_set *boot);

/* The same through a fresh read snapshot of db. Any thread. */
int members_store_read(mvcc_t *db, MDB_dbi dbi, struct member_set *out, uint64_t *cluster_id,
                       struct member_set *boot);

/* The ids of the members removed so far (etcd keeps them: a removed member
 * is told so when it comes back). *ids is malloc'd (NULL when none).
 * Thread of txn; 0, -ENOMEM or -EIO. */
int members_store_removed(MDB_txn *txn, MDB_dbi dbi, uint64_t **ids, size_t *n);

/* Records id as removed inside txn. 0, -ENOMEM or -EIO. */
int members_store_add_removed(MDB_txn *txn, MDB_dbi dbi, uint64_t id);

/* Writes or deletes one member inside txn. 0, -ENOMEM or -EIO. */
int members_store_put(MDB_txn *txn, MDB_dbi dbi, const struct member *m);
int members_store_del(MDB_txn *txn, MDB_dbi dbi, uint64_t id);

/* Replaces everything the store holds by `set` (also stored as the
 * bootstrap set) and cluster_id, in one committed batch of db, leaving the
 * applied index as it is: a new cluster's first start, a member joining
 * one, and `quoin snapshot restore` rewriting the members of a restored
 * store. Not while the apply thread runs. Returns 0 or an error. */
int members_store_replace(mvcc_t *db, MDB_dbi dbi, const struct member_set *set,
                          uint64_t cluster_id);

/* ---- The identity file ---- */

/* Reads <dir>/identity; boot (may be NULL) gets the bootstrap set it records,
 * empty for a directory written before it recorded one. Returns 0, -ENOENT (a
 * data directory never started), or -EINVAL / -EIO / -ENOMEM with err filled. */
int members_identity_read(const char *dir, uint64_t *member_id, uint64_t *cluster_id,
                          struct member_set *boot, struct util_err *err);
/* Writes it durably (temporary file, fsync, rename, fsync of dir), with boot
 * (may be NULL) as the bootstrap set: a member whose store is lost replays
 * its log from index 1 on top of it, without asking the other members. */
int members_identity_write(const char *dir, uint64_t member_id, uint64_t cluster_id,
                           const struct member_set *boot, struct util_err *err);

#endif
