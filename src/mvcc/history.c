/* mvcc history: reading events in revision order (watch catch-up), etcd's
 * HashKV, and the compaction sweep that removes history in small steps.
 * All three walk the log database (revision → key) and look records up in
 * the kv database. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mvcc/mvcc_int.h"

/* A log entry and, looked up from it, its kv record; `kvc` is left on it. */
static int log_lookup(MDB_cursor *kvc, const MDB_val *lk, const MDB_val *ld, struct rec *r) {
    if (lk->mv_size != REV_LEN || ld->mv_size < 1)
        return MVCC_ECORRUPT;
    size_t klen = ld->mv_size - 1;
    uint8_t buf[SEEK_MAX];
    if (klen + REV_LEN > sizeof(buf))
        return MVCC_ECORRUPT;
    memcpy(buf, (const uint8_t *)ld->mv_data + 1, klen);
    memcpy(buf + klen, lk->mv_data, REV_LEN);
    MDB_val k = {.mv_size = klen + REV_LEN, .mv_data = buf}, d;
    int rc = mdb_cursor_get(kvc, &k, &d, MDB_SET_KEY);
    if (rc == MDB_NOTFOUND)
        return MVCC_ECORRUPT;
    if (rc != 0)
        return mv_lmdb_err(rc);
    return mv_rec_decode(&k, &d, r);
}

/* Whether the key of the record under `kvc` has a newer version at or below
 * `rev` (then the record is history at rev). Moves the cursor. */
static int superseded(MDB_cursor *kvc, const struct rec *r, int64_t rev) {
    MDB_val k, d;
    int rc = mdb_cursor_get(kvc, &k, &d, MDB_NEXT);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return mv_lmdb_err(rc);
    struct rec n;
    if ((rc = mv_rec_decode(&k, &d, &n)) != 0)
        return rc;
    return n.key_len == r->key_len && memcmp(n.key, r->key, r->key_len) == 0 && n.main <= rev;
}

/* The version of the event's key just before the record under `kvc`. */
static int find_prev(MDB_cursor *kvc, const struct rec *rec, struct mvcc_event *ev) {
    MDB_val pk, pd;
    struct rec prev;
    int p = mdb_cursor_get(kvc, &pk, &pd, MDB_PREV);
    if (p == MDB_NOTFOUND)
        return 0;
    if (p != 0)
        return mv_lmdb_err(p);
    int rc = mv_rec_decode(&pk, &pd, &prev);
    if (rc != 0)
        return rc;
    if (!prev.tomb && prev.key_len == rec->key_len &&
        memcmp(prev.key, rec->key, rec->key_len) == 0) {
        ev->has_prev = true;
        mv_rec_to_kv(&prev, false, &ev->prev_kv);
    }
    return 0;
}

int mvcc_history_read(mvcc_read_t *rd, const uint8_t *key, size_t key_len, const uint8_t *range_end,
                      size_t range_end_len, bool with_prev, struct mvcc_history_pos *pos,
                      struct mvcc_event *evs, size_t max_events, bool *done) {
    *done = false;
    if (key_len == 0 || max_events == 0)
        return -EINVAL;
    if (pos->main < rd->compact_rev)
        return MVCC_ECOMPACTED;
    mvcc_t *db = rd->db;
    struct bounds b;
    mv_bounds_init(&b, key, key_len, range_end, range_end_len);
    MDB_cursor *lc = NULL, *kvc = NULL;
    int rc = mv_lmdb_err(mdb_cursor_open(rd->txn, db->log, &lc));
    if (rc == 0)
        rc = mv_lmdb_err(mdb_cursor_open(rd->txn, db->kv, &kvc));
    if (rc != 0)
        goto out;
    uint8_t start[REV_LEN];
    mv_enc_rev(start, pos->main < 0 ? 0 : pos->main, pos->sub);
    MDB_val lk = {.mv_size = REV_LEN, .mv_data = start}, ld;
    size_t n = 0, budget = 16 * max_events;
    bool end = false;
    int r = mdb_cursor_get(lc, &lk, &ld, MDB_SET_RANGE);
    for (; n < max_events && budget > 0; budget--) {
        if (r == MDB_NOTFOUND) {
            end = true;
            break;
        }
        if (r != 0) {
            rc = mv_lmdb_err(r);
            goto out;
        }
        int64_t main, sub;
        mv_dec_rev(lk.mv_data, &main, &sub);
        if (main > rd->rev) {
            end = true;
            break;
        }
        pos->main = main;
        pos->sub = sub + 1;
        const uint8_t *k = (const uint8_t *)ld.mv_data + 1;
        if (ld.mv_size >= 1 && mv_bounds_contains(&b, k, ld.mv_size - 1)) {
            struct rec rec;
            if ((rc = log_lookup(kvc, &lk, &ld, &rec)) != 0)
                goto out;
            struct mvcc_event *ev = &evs[n++];
            memset(ev, 0, sizeof(*ev));
            ev->type = rec.tomb ? MVCC_EVENT_DELETE : MVCC_EVENT_PUT;
            mv_rec_to_kv(&rec, false, &ev->kv);
            if (with_prev && (rc = find_prev(kvc, &rec, ev)) != 0)
                goto out;
        }
        r = mdb_cursor_get(lc, &lk, &ld, MDB_NEXT);
    }
    if (end) {
        *done = true;
        if (pos->main <= rd->rev) {
            pos->main = rd->rev + 1;
            pos->sub = 0;
        }
    }
    rc = (int)n;
out:
    mv_cursors_close(lc, kvc);
    return rc;
}

/* ---- HashKV ---- */

struct crc {
    uint32_t table[256];
    uint32_t v;
};

/* CRC-32C (Castagnoli), reflected, as Go's hash/crc32 computes it. */
static void crc_init(struct crc *c) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t x = i;
        for (int j = 0; j < 8; j++)
            x = (x >> 1) ^ (0x82F63B78u & (0u - (x & 1)));
        c->table[i] = x;
    }
    c->v = 0xffffffffu;
}

static void crc_add(struct crc *c, const void *p, size_t n) {
    const uint8_t *b = p;
    uint32_t v = c->v;
    for (size_t i = 0; i < n; i++)
        v = c->table[(v ^ b[i]) & 0xff] ^ (v >> 8);
    c->v = v;
}

static void crc_varint(struct crc *c, uint64_t x) {
    uint8_t buf[10];
    size_t n = 0;
    while (x >= 0x80) {
        buf[n++] = (uint8_t)(x | 0x80);
        x >>= 7;
    }
    buf[n++] = (uint8_t)x;
    crc_add(c, buf, n);
}

static void crc_field_i64(struct crc *c, uint8_t tag, int64_t v) {
    if (v == 0)
        return;
    crc_add(c, &tag, 1);
    crc_varint(c, (uint64_t)v);
}

static void crc_field_bytes(struct crc *c, uint8_t tag, const uint8_t *p, size_t n) {
    if (n == 0)
        return;
    crc_add(c, &tag, 1);
    crc_varint(c, n);
    crc_add(c, p, n);
}

/* Feeds one record as etcd stores it in its "key" bucket: the revision as
 * 8-byte main, '_', 8-byte sub (plus 't' for a tombstone), then the
 * mvccpb.KeyValue protobuf (a tombstone's holds only the key). */
static void crc_record(struct crc *c, const struct rec *r) {
    uint8_t rb[18];
    mv_enc_u64(rb, (uint64_t)r->main);
    rb[8] = '_';
    mv_enc_u64(rb + 9, (uint64_t)r->sub);
    rb[17] = 't';
    crc_add(c, rb, r->tomb ? 18 : 17);
    crc_field_bytes(c, 0x0a, r->key, r->key_len);
    if (r->tomb)
        return;
    crc_field_i64(c, 0x10, r->create);
    crc_field_i64(c, 0x18, r->main);
    crc_field_i64(c, 0x20, r->version);
    crc_field_bytes(c, 0x2a, r->value, r->value_len);
    crc_field_i64(c, 0x30, r->lease);
}

int mvcc_hash_kv(mvcc_t *db, int64_t revision, uint32_t *hash, int64_t *cur_rev,
                 int64_t *compact_rev) {
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(db, &rd);
    if (rc != 0)
        return rc;
    *cur_rev = rd->rev;
    *compact_rev = rd->compact_rev > 0 ? rd->compact_rev : -1;
    MDB_cursor *lc = NULL, *kvc = NULL;
    struct crc *c = NULL;
    if (revision > 0 && revision <= rd->compact_rev) {
        rc = MVCC_ECOMPACTED;
        goto out;
    }
    if (revision > rd->rev) {
        rc = MVCC_EFUTURE;
        goto out;
    }
    int64_t rev = revision > 0 ? revision : rd->rev;
    /* History at or below the compaction revision counts only where etcd's
     * sweep leaves it and its "keep" set takes it: the version live at rev of
     * each key, or, when no key is live at rev, every version live at the
     * compaction revision. That makes the hash independent of how far the
     * sweep has got (etcd's is not, while its sweep runs). */
    struct view v = {.db = db, .txn = rd->txn, .rev = rd->rev, .compact_rev = rd->compact_rev};
    struct bounds all;
    static const uint8_t zero = 0;
    mv_bounds_init(&all, &zero, 1, &zero, 1);
    struct kscan s;
    struct rec r;
    if ((rc = mv_kscan_open(&s, &v, &all, rev)) != 0)
        goto out;
    int any_live = mv_kscan_next(&s, &r);
    mv_kscan_close(&s);
    if (any_live < 0) {
        rc = any_live;
        goto out;
    }
    /* The scan above starts at "\0"; the empty key cannot exist. */
    if ((c = malloc(sizeof(*c))) == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    crc_init(c);
    crc_add(c, "key", 3);
    if ((rc = mv_lmdb_err(mdb_cursor_open(rd->txn, db->log, &lc))) != 0 ||
        (rc = mv_lmdb_err(mdb_cursor_open(rd->txn, db->kv, &kvc))) != 0)
        goto out;
    MDB_val lk, ld;
    int g;
    while ((g = mdb_cursor_get(lc, &lk, &ld, MDB_NEXT)) == 0) {
        if ((rc = log_lookup(kvc, &lk, &ld, &r)) != 0)
            goto out;
        if (r.main > rev)
            break;
        if (r.main <= rd->compact_rev) {
            if (r.tomb)
                continue;
            int sup = superseded(kvc, &r, any_live ? rev : rd->compact_rev);
            if (sup < 0) {
                rc = sup;
                goto out;
            }
            if (sup)
                continue;
        }
        crc_record(c, &r);
    }
    if (g != 0 && g != MDB_NOTFOUND) {
        rc = mv_lmdb_err(g);
        goto out;
    }
    *hash = c->v ^ 0xffffffffu;
out:
    free(c);
    mv_cursors_close(lc, kvc);
    mvcc_read_end(rd);
    return rc;
}

/* ---- compaction sweep ---- */

int mvcc_compact_pending(mvcc_t *db, bool *pending) {
    *pending = false;
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(db, &rd);
    if (rc != 0)
        return rc;
    int64_t done = 0;
    rc = mv_meta_get_i64(rd->txn, db->meta, META_COMPACT_DONE, &done, 0);
    *pending = rc == 0 && done < rd->compact_rev;
    mvcc_read_end(rd);
    return rc;
}

/* One sweep step inside the writer's transaction. */
static int compact_sweep(mvcc_t *db, MDB_txn *txn, size_t max_records, bool *done) {
    int64_t target, finished, pos, pos_sub;
    int rc = mv_meta_get_i64(txn, db->meta, META_COMPACT, &target, 0);
    if (rc == 0)
        rc = mv_meta_get_i64(txn, db->meta, META_COMPACT_DONE, &finished, 0);
    if (rc == 0)
        rc = mv_meta_get_i64(txn, db->meta, META_COMPACT_POS, &pos, 0);
    if (rc == 0)
        rc = mv_meta_get_i64(txn, db->meta, META_COMPACT_POS_SUB, &pos_sub, 0);
    if (rc != 0)
        return rc;
    if (finished >= target) {
        *done = true;
        return 0;
    }
    MDB_cursor *lc = NULL, *kvc = NULL;
    if ((rc = mv_lmdb_err(mdb_cursor_open(txn, db->log, &lc))) != 0 ||
        (rc = mv_lmdb_err(mdb_cursor_open(txn, db->kv, &kvc))) != 0)
        goto out;
    uint8_t start[REV_LEN];
    mv_enc_rev(start, pos, pos_sub);
    MDB_val lk = {.mv_size = REV_LEN, .mv_data = start}, ld;
    int g = mdb_cursor_get(lc, &lk, &ld, MDB_SET_RANGE);
    size_t n = 0;
    int64_t main = pos, sub = pos_sub;
    while (g == 0 && n < max_records) {
        mv_dec_rev(lk.mv_data, &main, &sub);
        if (main > target)
            break;
        struct rec r;
        if ((rc = log_lookup(kvc, &lk, &ld, &r)) != 0)
            goto out;
        int drop = r.tomb;
        if (!drop && (drop = superseded(kvc, &r, target)) < 0) {
            rc = drop;
            goto out;
        }
        if (drop) {
            if ((rc = log_lookup(kvc, &lk, &ld, &r)) != 0 ||
                (rc = mv_lmdb_err(mdb_cursor_del(kvc, 0))) != 0 ||
                (rc = mv_lmdb_err(mdb_cursor_del(lc, 0))) != 0)
                goto out;
        }
        n++;
        g = mdb_cursor_get(lc, &lk, &ld, MDB_NEXT);
    }
    if (g != 0 && g != MDB_NOTFOUND) {
        rc = mv_lmdb_err(g);
        goto out;
    }
    if (g == MDB_NOTFOUND || main > target) {
        rc = mv_meta_put_i64(txn, db->meta, META_COMPACT_DONE, target);
        *done = true;
        LOG_INFO(db->lg, "finished scheduled compaction", LOG_INT("compact-revision", target));
    } else {
        /* Resume at the entry the cursor stands on. */
        mv_dec_rev(lk.mv_data, &main, &sub);
        rc = mv_meta_put_i64(txn, db->meta, META_COMPACT_POS, main);
        if (rc == 0)
            rc = mv_meta_put_i64(txn, db->meta, META_COMPACT_POS_SUB, sub);
    }
out:
    mv_cursors_close(lc, kvc);
    return rc;
}

int mvcc_compact_step(mvcc_t *db, size_t max_records, bool *done) {
    *done = false;
    if (max_records == 0)
        max_records = 1;
    if (atomic_load(&db->defragging))
        return -EBUSY;
    mv_writer_lock(db);
    MDB_txn *txn;
    int rc = mv_lmdb_err(mdb_txn_begin(db->cur->env, NULL, 0, &txn));
    if (rc == 0) {
        rc = compact_sweep(db, txn, max_records, done);
        if (rc == 0)
            rc = mv_lmdb_err(mdb_txn_commit(txn));
        else
            mdb_txn_abort(txn);
    }
    mv_writer_unlock(db);
    if (rc != 0)
        *done = false;
    return rc;
}
