/* restore: `quoin snapshot restore` — a new member's data directory from a
 * file `etcdctl snapshot save` wrote from a quoin member (the LMDB copy
 * followed by the SHA-256 of it), as etcdctl 3.4's `snapshot restore` makes
 * one from an etcd snapshot. docs/cluster.md ("Operations: back up and
 * restore") tells what is kept and what is replaced. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <lmdb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lease/lease.h"
#include "mvcc/mvcc.h"
#include "server/members.h"
#include "server/server.h"
#include "wal/wal.h"

#define SHA_LEN 32
/* The restored log starts after this raft index and term: every member
 * restored from one file with one --initial-cluster starts alike. */
#define RESTORE_INDEX 1
#define RESTORE_TERM 1
/* Where the meta page's magic sits (after the page header), in LMDB files
 * and in bbolt ones (etcd's snapshots). */
#define MAGIC_OFFSET 16
#define LMDB_MAGIC 0xBEEFC0DEu
#define BBOLT_MAGIC 0xED0CDAEDu

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Makes a rename into path's directory durable (best effort: the data is
 * synced already, and a lost rename leaves no data directory at all). */
static void sync_parent(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    server_sync_dir(dir);
}

static void hex(const uint8_t *p, size_t n, char *out) {
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

/* Copies the first len bytes of in to the new file path, checking them
 * against the SHA-256 `want` (NULL: not checked). */
static int copy_checked(const char *file, int in, uint64_t len, const uint8_t *want,
                        const char *path, struct util_err *err) {
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    size_t cap = 1 << 20;
    uint8_t *buf = malloc(cap);
    int rc = 0;
    if (out < 0)
        rc = util_errorf(err, -errno, "cannot create %s: %s", path, strerror(errno));
    else if (!sha || !buf || !EVP_DigestInit_ex(sha, EVP_sha256(), NULL))
        rc = util_errorf(err, -ENOMEM, "out of memory");
    for (uint64_t done = 0; rc == 0 && done < len;) {
        size_t want_n = len - done < cap ? (size_t)(len - done) : cap;
        ssize_t got = pread(in, buf, want_n, (off_t)done);
        if (got <= 0) {
            rc = util_errorf(err, got < 0 ? -errno : -EIO, "cannot read %s: %s", file,
                             got < 0 ? strerror(errno) : "file shrank while read");
            break;
        }
        EVP_DigestUpdate(sha, buf, (size_t)got);
        if (write(out, buf, (size_t)got) != got)
            rc = util_errorf(err, -EIO, "cannot write %s: %s", path, strerror(errno));
        done += (uint64_t)got;
    }
    uint8_t sum[EVP_MAX_MD_SIZE];
    unsigned int sum_len = 0;
    if (rc == 0 && want && EVP_DigestFinal_ex(sha, sum, &sum_len) &&
        memcmp(sum, want, SHA_LEN) != 0) {
        char a[2 * SHA_LEN + 1], b[2 * SHA_LEN + 1];
        hex(want, SHA_LEN, a);
        hex(sum, SHA_LEN, b);
        rc = util_errorf(err, -EBADMSG,
                         "%s is corrupt: it ends with the SHA-256 %s but its content hashes to "
                         "%s; take a new snapshot (etcdctl snapshot save) and restore that",
                         file, a, b);
    }
    if (rc == 0 && out >= 0 && fsync(out) != 0)
        rc = util_errorf(err, -errno, "cannot sync %s: %s", path, strerror(errno));
    if (out >= 0)
        close(out);
    EVP_MD_CTX_free(sha);
    free(buf);
    return rc;
}

/* Refuses a file that is not an LMDB store of quoin's: a bbolt file (etcd's
 * snapshots) by name, anything else as foreign. */
static int check_quoin_store(const char *file, int in, const char *db_path, struct util_err *err) {
    uint8_t m[4];
    if (pread(in, m, 4, MAGIC_OFFSET) != 4)
        return util_errorf(err, -EBADMSG, "%s is not a quoin snapshot: it is too short", file);
    uint32_t magic =
        (uint32_t)m[0] | (uint32_t)m[1] << 8 | (uint32_t)m[2] << 16 | (uint32_t)m[3] << 24;
    if (magic == BBOLT_MAGIC)
        return util_errorf(err, -EBADMSG,
                           "%s is an etcd snapshot (a bbolt database), not a quoin one: restore "
                           "it into etcd with etcdctl snapshot restore, or copy the keys over "
                           "(etcdctl make-mirror) into a quoin cluster",
                           file);
    if (magic != LMDB_MAGIC)
        return util_errorf(err, -EBADMSG,
                           "%s is not a quoin snapshot (no LMDB database in it): give a file "
                           "that etcdctl snapshot save wrote from a quoin member",
                           file);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, 64);
    if (rc == 0)
        rc = mdb_env_open(env, db_path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK, 0600);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "mvcc.meta", 0, &dbi);
    if (txn)
        mdb_txn_abort(txn);
    mdb_env_close(env);
    if (rc == MDB_NOTFOUND)
        return util_errorf(err, -EBADMSG,
                           "%s is an LMDB database without quoin's key space: give a file that "
                           "etcdctl snapshot save wrote from a quoin member",
                           file);
    if (rc != 0)
        return util_errorf(err, -EBADMSG, "%s is not a usable quoin snapshot: %s", file,
                           mdb_strerror(rc));
    return 0;
}

/* Replaces the old cluster's member store (members, removed ids, bootstrap
 * set, cluster id) by the new cluster's, so the member needs no cluster
 * flags at its first start, as etcd's restore writes its member bucket. */
static int rewrite_members(mvcc_t *db, const struct config *cfg, struct util_err *err) {
    MDB_dbi dbi;
    struct member_set set = {0};
    int rc = members_store_open(db, &dbi);
    if (rc == 0 && (rc = members_initial_set(cfg, &set)) == 0)
        rc = members_store_replace(db, dbi, &set, cfg->cluster_id);
    members_free(&set);
    return rc ? util_errorf(err, rc, "cannot write the member store: %s", mvcc_strerror(rc)) : 0;
}

/* Rewrites what belongs to the old cluster: in one batch, the applied raft
 * index (the new log starts after RESTORE_INDEX) and the leases' deadlines
 * (cleared, so the new leader gives each lease its full TTL, as etcd's
 * restore does); then the member store (rewrite_members). */
static int rewrite_store(const char *db_path, uint64_t db_len, const struct config *cfg, log_t *lg,
                         int64_t *revision, struct util_err *err) {
    struct mvcc_options mopts = {.quota_bytes = db_len > (1ull << 30) ? db_len * 2 : 0};
    mvcc_t *db = NULL;
    lease_t *ls = NULL;
    int64_t *ids = NULL;
    size_t n = 0;
    struct lease_checkpoint *cps = NULL;
    int rc = mvcc_open(db_path, &mopts, lg, &db, err);
    struct lease_options lopts = {.min_ttl = 1};
    if (rc == 0)
        rc = lease_open(db, &lopts, lg, &ls, err);
    if (rc == 0 && (rc = lease_list(ls, &ids, &n)) != 0)
        util_errorf(err, rc, "cannot read the leases: %s", lease_strerror(rc));
    if (rc == 0 && n && !(cps = calloc(n, sizeof(*cps))))
        rc = util_errorf(err, -ENOMEM, "out of memory");
    mvcc_batch_t *b = NULL;
    if (rc == 0 && (rc = mvcc_batch_begin(db, &b)) != 0)
        util_errorf(err, rc, "cannot write the key space: %s", mvcc_strerror(rc));
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            cps[i] = (struct lease_checkpoint){.id = ids[i]};
        lease_batch_t *lb = lease_batch_begin(ls, b);
        rc = lease_checkpoint(lb, cps, n);
        mvcc_batch_set_applied(b, RESTORE_INDEX, RESTORE_TERM);
        if (rc == 0)
            rc = mvcc_batch_commit(b);
        else
            mvcc_batch_abort(b);
        lease_batch_end(lb, rc == 0, 0);
        if (rc != 0)
            util_errorf(err, rc, "cannot write the key space: %s", mvcc_strerror(rc));
    }
    if (rc == 0)
        rc = rewrite_members(db, cfg, err);
    if (rc == 0 && (rc = mvcc_sync(db)) != 0)
        util_errorf(err, rc, "cannot sync the key space: %s", mvcc_strerror(rc));
    if (rc == 0) {
        mvcc_state(db, NULL, NULL, revision, NULL);
        LOG_INFO(lg, "restored the key space", LOG_INT("revision", *revision),
                 LOG_UINT("leases", n));
    }
    free(cps);
    free(ids);
    lease_close(ls);
    mvcc_close(db);
    return rc;
}

/* A log that starts after the restored index, with the hard state that
 * commits it. */
static int write_wal(const char *dir, log_t *lg, struct util_err *err) {
    struct wal_options wopts = {.log = lg, .no_spare = 1};
    struct wal_recovery rec;
    wal_t *w = NULL;
    int rc = wal_open(dir, &wopts, &w, &rec, err);
    if (rc != 0)
        return rc;
    wal_recovery_free(&rec);
    struct wal_snapshot snap = {.index = RESTORE_INDEX, .term = RESTORE_TERM};
    struct wal_hard_state hs = {.term = RESTORE_TERM, .commit = RESTORE_INDEX};
    uint64_t seq = 0;
    if ((rc = wal_save_snapshot(w, &snap, WAL_SNAPSHOT_DISCARD_LOG, NULL)) == 0 &&
        (rc = wal_append(w, NULL, 0, &hs, &seq)) == 0)
        rc = wal_wait(w, seq);
    int crc = wal_close(w);
    if (rc == 0)
        rc = crc;
    return rc ? util_errorf(err, rc, "cannot write the WAL in %s: %s", dir, strerror(-rc)) : 0;
}

/* Builds the directory at tmp: the store, the WAL, and the identity that
 * says which member of which cluster it is. */
static int build(const char *file, int in, uint64_t db_len, const uint8_t *want, const char *tmp,
                 const struct config *cfg, log_t *lg, int64_t *revision, struct util_err *err) {
    server_datadir_t *dd = NULL;
    char path[4096 + 16];
    int rc = server_datadir_open(tmp, lg, &dd, err);
    if (rc != 0)
        return rc;
    snprintf(path, sizeof(path), "%s/db", tmp);
    if ((rc = copy_checked(file, in, db_len, want, path, err)) == 0 &&
        (rc = check_quoin_store(file, in, path, err)) == 0 &&
        (rc = rewrite_store(path, db_len, cfg, lg, revision, err)) == 0) {
        snprintf(path, sizeof(path), "%s/wal", tmp);
        rc = write_wal(path, lg, err);
    }
    if (rc == 0)
        /* No bootstrap set: the restored log starts at a snapshot, so a lost
         * store cannot be rebuilt by replaying it from index 1. */
        rc = members_identity_write(tmp, cfg->member_id, cfg->cluster_id, NULL, err);
    snprintf(path, sizeof(path), "%s/snap", tmp);
    if (rc == 0 && mkdir(path, 0700) != 0)
        rc = util_errorf(err, -errno, "cannot create %s: %s", path, strerror(errno));
    server_datadir_close(dd);
    return rc;
}

int server_snapshot_restore(const char *file, const struct config *cfg, bool skip_hash_check,
                            log_t *lg, struct util_err *err) {
    struct stat st;
    if (stat(cfg->data_dir, &st) == 0)
        return util_errorf(err, -EEXIST,
                           "data-dir %s exists: restore into a new directory (remove it first "
                           "if it belonged to the member being replaced)",
                           cfg->data_dir);
    int in = open(file, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return util_errorf(err, -errno, "cannot open %s: %s", file, strerror(errno));
    int rc = 0;
    uint8_t want[SHA_LEN];
    bool has_hash = false;
    uint64_t size = 0;
    if (fstat(in, &st) != 0) {
        rc = util_errorf(err, -errno, "cannot read %s: %s", file, strerror(errno));
        goto out;
    }
    size = (uint64_t)st.st_size;
    /* etcd's rule: a snapshot file is whole pages plus the 32-byte SHA-256. */
    has_hash = size % 512 == SHA_LEN;
    if (!has_hash && !skip_hash_check) {
        rc = util_errorf(err, -EBADMSG,
                         "%s does not end with the SHA-256 etcdctl snapshot save appends: it was "
                         "cut short, or is not a snapshot file (pass --skip-hash-check only "
                         "for a database file copied by hand)",
                         file);
        goto out;
    }
    if (has_hash && pread(in, want, SHA_LEN, (off_t)(size - SHA_LEN)) != SHA_LEN) {
        rc = util_errorf(err, -EIO, "cannot read %s: %s", file, strerror(errno));
        goto out;
    }
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.restoring-%d", cfg->data_dir, (int)getpid()) >=
        sizeof(tmp)) {
        rc = util_errorf(err, -ENAMETOOLONG, "data-dir path too long");
        goto out;
    }
    int64_t revision = 0;
    rc = build(file, in, has_hash ? size - SHA_LEN : size,
               has_hash && !skip_hash_check ? want : NULL, tmp, cfg, lg, &revision, err);
    if (rc == 0 && rename(tmp, cfg->data_dir) != 0)
        rc = util_errorf(err, -errno, "cannot move %s to %s: %s", tmp, cfg->data_dir,
                         strerror(errno));
    if (rc == 0)
        sync_parent(cfg->data_dir);
    if (rc != 0) {
        nftw(tmp, remove_one, 16, FTW_DEPTH | FTW_PHYS);
        goto out;
    }
    char mid[17], cid[17];
    snprintf(mid, sizeof(mid), "%016" PRIx64, cfg->member_id);
    snprintf(cid, sizeof(cid), "%016" PRIx64, cfg->cluster_id);
    LOG_INFO(lg, "restored a member's data directory from a snapshot", LOG_STR("file", file),
             LOG_STR("data-dir", cfg->data_dir), LOG_STR("name", cfg->name),
             LOG_STR("member-id", mid), LOG_STR("cluster-id", cid), LOG_INT("revision", revision),
             LOG_UINT("members", cfg->n_initial_cluster));
out:
    close(in);
    return rc;
}
