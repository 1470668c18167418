/* mvcc record encodings, the key scan that every read is built on, and the
 * arena that owns a result's memory.
 *
 * The kv database orders entries by (user key, revision) through a custom
 * comparator, so all versions of a key sit together, oldest first. A scan
 * walks them forward; a key with many versions is skipped with two seeks
 * instead of a walk, so reading at an old or the current revision costs about
 * the same whatever the history length. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mvcc/mvcc_int.h"

void mv_enc_u64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

uint64_t mv_dec_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

void mv_enc_rev(uint8_t *p, int64_t main, int64_t sub) {
    mv_enc_u64(p, (uint64_t)main);
    uint32_t s = (uint32_t)sub;
    p[8] = (uint8_t)(s >> 24);
    p[9] = (uint8_t)(s >> 16);
    p[10] = (uint8_t)(s >> 8);
    p[11] = (uint8_t)s;
}

void mv_dec_rev(const uint8_t *p, int64_t *main, int64_t *sub) {
    *main = (int64_t)mv_dec_u64(p);
    *sub = (int64_t)(((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) |
                     (uint32_t)p[11]);
}

/* Orders kv keys by user key, then revision; every kv key ends in REV_LEN
 * revision bytes. */
int mv_kv_key_cmp(const MDB_val *a, const MDB_val *b) {
    size_t la = a->mv_size - REV_LEN, lb = b->mv_size - REV_LEN;
    int c = memcmp(a->mv_data, b->mv_data, la < lb ? la : lb);
    if (c != 0)
        return c;
    if (la != lb)
        return la < lb ? -1 : 1;
    return memcmp((const uint8_t *)a->mv_data + la, (const uint8_t *)b->mv_data + lb, REV_LEN);
}

int mv_rec_decode(const MDB_val *k, const MDB_val *v, struct rec *r) {
    if (k->mv_size < REV_LEN || v->mv_size < 1)
        return MVCC_ECORRUPT;
    const uint8_t *kp = k->mv_data, *vp = v->mv_data;
    r->key = kp;
    r->key_len = k->mv_size - REV_LEN;
    mv_dec_rev(kp + r->key_len, &r->main, &r->sub);
    r->tomb = (vp[0] & REC_TOMB) != 0;
    if (r->tomb) {
        r->create = r->version = r->lease = 0;
        r->value = NULL;
        r->value_len = 0;
        return 0;
    }
    if (v->mv_size < REC_HDR)
        return MVCC_ECORRUPT;
    r->create = (int64_t)mv_dec_u64(vp + 1);
    r->version = (int64_t)mv_dec_u64(vp + 9);
    r->lease = (int64_t)mv_dec_u64(vp + 17);
    r->value = vp + REC_HDR;
    r->value_len = v->mv_size - REC_HDR;
    return 0;
}

int mv_lmdb_err(int rc) {
    switch (rc) {
    case 0:
        return 0;
    case MDB_MAP_FULL:
        return -ENOSPC;
    case MDB_READERS_FULL:
        return -EAGAIN;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return MVCC_ECORRUPT;
    case MDB_TXN_FULL:
    case MDB_CURSOR_FULL:
    case MDB_PAGE_FULL:
        return -ENOMEM;
    case MDB_BAD_VALSIZE:
        return -EINVAL;
    default:
        return rc > 0 ? -rc : -EIO;
    }
}

void mv_bounds_init(struct bounds *b, const uint8_t *key, size_t key_len, const uint8_t *end,
                    size_t end_len) {
    b->start = key;
    b->start_len = key_len;
    b->end = end;
    b->end_len = end_len;
    b->single = end == NULL || end_len == 0;
    b->end_inf = end_len == 1 && end[0] == 0;
}

/* memcmp order on byte strings of different lengths. */
static int bytes_cmp(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    int c = memcmp(a, b, la < lb ? la : lb);
    if (c != 0)
        return c;
    return la < lb ? -1 : la > lb;
}

static bool past_end(const struct bounds *b, const uint8_t *key, size_t key_len) {
    if (b->single)
        return bytes_cmp(key, key_len, b->start, b->start_len) != 0;
    if (b->end_inf)
        return false;
    return bytes_cmp(key, key_len, b->end, b->end_len) >= 0;
}

bool mv_bounds_contains(const struct bounds *b, const uint8_t *key, size_t key_len) {
    if (bytes_cmp(key, key_len, b->start, b->start_len) < 0)
        return false;
    return !past_end(b, key, key_len);
}

/* Positions the cursor on the first entry >= (key, rev bytes). */
static int seek(struct kscan *s, const uint8_t *key, size_t key_len, int64_t main, int64_t sub,
                bool max) {
    assert(key_len + REV_LEN <= sizeof(s->seek));
    memmove(s->seek, key, key_len);
    if (max)
        memset(s->seek + key_len, 0xff, REV_LEN);
    else
        mv_enc_rev(s->seek + key_len, main, sub);
    s->k.mv_data = s->seek;
    s->k.mv_size = key_len + REV_LEN;
    int rc = mdb_cursor_get(s->cur, &s->k, &s->v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) {
        s->have = false;
        return 0;
    }
    if (rc != 0)
        return mv_lmdb_err(rc);
    s->have = true;
    return 0;
}

int mv_kscan_open(struct kscan *s, const struct view *v, const struct bounds *b, int64_t rev) {
    s->b = *b;
    s->rev = rev;
    s->have = false;
    /* A start longer than any stored key: seek to its longest prefix a key
     * can have and skip what sorts below the start. */
    size_t seek_len = b->start_len;
    s->check_start = seek_len + REV_LEN > sizeof(s->seek);
    if (s->check_start)
        seek_len = sizeof(s->seek) - REV_LEN;
    int rc = mdb_cursor_open(v->txn, v->db->kv, &s->cur);
    if (rc != 0)
        return mv_lmdb_err(rc);
    rc = seek(s, b->start, seek_len, 0, 0, false);
    if (rc != 0)
        mv_kscan_close(s);
    return rc;
}

void mv_kscan_close(struct kscan *s) {
    if (s->cur != NULL)
        mdb_cursor_close(s->cur);
    s->cur = NULL;
}

static int step(struct kscan *s) {
    int rc = mdb_cursor_get(s->cur, &s->k, &s->v, MDB_NEXT);
    if (rc == MDB_NOTFOUND) {
        s->have = false;
        return 0;
    }
    if (rc != 0)
        return mv_lmdb_err(rc);
    return 0;
}

/* Versions of one key walked one by one before seeking past them. */
#define WALK_MAX 8

int mv_kscan_next(struct kscan *s, struct rec *out) {
    while (s->have) {
        struct rec cur;
        int rc = mv_rec_decode(&s->k, &s->v, &cur);
        if (rc != 0)
            return rc;
        if (past_end(&s->b, cur.key, cur.key_len)) {
            s->have = false;
            return 0;
        }
        if (s->check_start && bytes_cmp(cur.key, cur.key_len, s->b.start, s->b.start_len) < 0) {
            if ((rc = seek(s, cur.key, cur.key_len, 0, 0, true)) != 0)
                return rc;
            continue;
        }
        const uint8_t *gk = cur.key;
        size_t gl = cur.key_len;
        bool found = false, skip = false;
        int n = 0;
        /* Walk this key's versions (oldest first) keeping the newest <= rev. */
        while (s->have) {
            if (cur.key_len != gl || memcmp(cur.key, gk, gl) != 0)
                break;
            if (cur.main > s->rev) {
                skip = true;
                break;
            }
            *out = cur;
            found = true;
            if (++n >= WALK_MAX) {
                /* Long history: find the newest <= rev with a seek. */
                MDB_val k, v;
                if ((rc = seek(s, gk, gl, s->rev + 1, 0, false)) != 0)
                    return rc;
                rc = mdb_cursor_get(s->cur, &k, &v, s->have ? MDB_PREV : MDB_LAST);
                if (rc != 0)
                    return mv_lmdb_err(rc);
                if ((rc = mv_rec_decode(&k, &v, out)) != 0)
                    return rc;
                assert(out->key_len == gl && memcmp(out->key, gk, gl) == 0);
                skip = true;
                break;
            }
            if ((rc = step(s)) != 0)
                return rc;
            if (s->have && (rc = mv_rec_decode(&s->k, &s->v, &cur)) != 0)
                return rc;
        }
        if (skip && (rc = seek(s, gk, gl, 0, 0, true)) != 0)
            return rc;
        if (found && !out->tomb)
            return 1;
    }
    return 0;
}

int mv_latest_rec(MDB_cursor *cur, const uint8_t *key, size_t key_len, struct rec *r) {
    uint8_t buf[SEEK_MAX];
    if (key_len + REV_LEN > sizeof(buf))
        return MVCC_EKEYTOOLONG;
    memcpy(buf, key, key_len);
    memset(buf + key_len, 0xff, REV_LEN);
    MDB_val k = {.mv_size = key_len + REV_LEN, .mv_data = buf}, d;
    int rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(cur, &k, &d, MDB_LAST);
    else if (rc == 0)
        rc = mdb_cursor_get(cur, &k, &d, MDB_PREV);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return mv_lmdb_err(rc);
    if ((rc = mv_rec_decode(&k, &d, r)) != 0)
        return rc;
    return r->key_len == key_len && memcmp(r->key, key, key_len) == 0;
}

/* ---- growable arrays, arena and results ---- */

int mv_vec_grow(void *arrp, size_t *cap, size_t n, size_t size) {
    void **arr = arrp;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *v = realloc(*arr, ncap * size);
    if (v == NULL)
        return -ENOMEM;
    *arr = v;
    *cap = ncap;
    return 0;
}

int mv_arena_grow(struct mvcc_arena *a, void *arrp, size_t *cap, size_t n, size_t size) {
    void **arr = arrp;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *v = mv_arena_alloc(a, ncap * size);
    if (v == NULL)
        return -ENOMEM;
    if (n > 0)
        memcpy(v, *arr, n * size);
    *arr = v;
    *cap = ncap;
    return 0;
}

void mv_cursors_close(MDB_cursor *a, MDB_cursor *b) {
    if (a != NULL)
        mdb_cursor_close(a);
    if (b != NULL)
        mdb_cursor_close(b);
}

struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
};

struct mvcc_arena {
    struct chunk *head;
    size_t events_cap;
};

struct mvcc_arena *mv_arena_new(void) {
    return calloc(1, sizeof(struct mvcc_arena));
}

void *mv_arena_alloc(struct mvcc_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    struct chunk *c = a->head;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > 8192 ? n : 8192;
        c = malloc(sizeof(*c) + cap);
        if (c == NULL)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    void *p = (uint8_t *)c->data + c->used;
    c->used += n;
    return p;
}

void mv_arena_free(struct mvcc_arena *a) {
    if (a == NULL)
        return;
    struct chunk *c = a->head;
    while (c != NULL) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

mvcc_result_t *mv_result_new(void) {
    mvcc_result_t *res = calloc(1, sizeof(*res));
    if (res == NULL)
        return NULL;
    res->arena = mv_arena_new();
    if (res->arena == NULL) {
        free(res);
        return NULL;
    }
    return res;
}

void mvcc_result_free(mvcc_result_t *res) {
    if (res == NULL)
        return;
    free(res->events);
    mv_arena_free(res->arena);
    free(res);
}

int mv_result_add_event(mvcc_result_t *res, const struct mvcc_event *ev) {
    int rc = mv_vec_grow(&res->events, &res->arena->events_cap, res->n_events, sizeof(*ev));
    if (rc != 0)
        return rc;
    res->events[res->n_events++] = *ev;
    return 0;
}

/* A record as a kv pointing into LMDB's pages (no copy). */
void mv_rec_to_kv(const struct rec *r, bool keys_only, struct mvcc_kv *kv) {
    kv->key = r->key;
    kv->key_len = r->key_len;
    kv->value = keys_only ? NULL : r->value;
    kv->value_len = keys_only ? 0 : r->value_len;
    kv->create_revision = r->create;
    kv->mod_revision = r->main;
    kv->version = r->version;
    kv->lease = r->lease;
}

/* Copies a live record into the arena as a kv (the copy outlives the txn). */
int mv_kv_from_rec(struct mvcc_arena *a, const struct rec *r, bool keys_only, struct mvcc_kv *kv) {
    size_t vl = keys_only ? 0 : r->value_len;
    uint8_t *p = mv_arena_alloc(a, r->key_len + vl + 1);
    if (p == NULL)
        return -ENOMEM;
    memcpy(p, r->key, r->key_len);
    if (vl > 0)
        memcpy(p + r->key_len, r->value, vl);
    kv->key = p;
    kv->key_len = r->key_len;
    kv->value = vl > 0 ? p + r->key_len : NULL;
    kv->value_len = vl;
    kv->create_revision = r->create;
    kv->mod_revision = r->main;
    kv->version = r->version;
    kv->lease = r->lease;
    return 0;
}
