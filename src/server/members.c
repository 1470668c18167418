/* members: the member set, its encoding, etcd's checks of a change, the
 * member store and the identity file (see members.h). */
#include "server/members.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RECORD_VERSION 1
#define KEY_CLUSTER "cluster"
#define KEY_BOOT "boot"
#define KEY_REMOVED "removed"

/* ---- the set ---- */

static void free_strs(char **v, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void member_free(struct member *m) {
    free(m->name);
    free_strs(m->peer_urls, m->n_peer_urls);
    free_strs(m->client_urls, m->n_client_urls);
    memset(m, 0, sizeof(*m));
}

static int copy_strs(char ***dst, char *const *src, size_t n) {
    *dst = calloc(n ? n : 1, sizeof(**dst));
    if (!*dst)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (!((*dst)[i] = strdup(src[i])))
            return -ENOMEM;
    return 0;
}

int member_copy(struct member *dst, const struct member *src) {
    *dst = (struct member){.id = src->id,
                           .learner = src->learner,
                           .n_peer_urls = src->n_peer_urls,
                           .n_client_urls = src->n_client_urls};
    dst->name = strdup(src->name ? src->name : "");
    if (!dst->name || copy_strs(&dst->peer_urls, src->peer_urls, src->n_peer_urls) != 0 ||
        copy_strs(&dst->client_urls, src->client_urls, src->n_client_urls) != 0) {
        member_free(dst);
        return -ENOMEM;
    }
    return 0;
}

void members_free(struct member_set *set) {
    for (size_t i = 0; i < set->n; i++)
        member_free(&set->v[i]);
    free(set->v);
    set->v = NULL;
    set->n = 0;
}

int members_copy(struct member_set *dst, const struct member_set *src) {
    *dst = (struct member_set){0};
    for (size_t i = 0; i < src->n; i++)
        if (members_put(dst, &src->v[i]) != 0) {
            members_free(dst);
            return -ENOMEM;
        }
    return 0;
}

struct member *members_find(const struct member_set *set, uint64_t id) {
    for (size_t i = 0; i < set->n; i++)
        if (set->v[i].id == id)
            return &set->v[i];
    return NULL;
}

int members_put(struct member_set *set, const struct member *m) {
    struct member c;
    if (member_copy(&c, m) != 0)
        return -ENOMEM;
    struct member *old = members_find(set, m->id);
    if (old) {
        member_free(old);
        *old = c;
        return 0;
    }
    struct member *v = realloc(set->v, (set->n + 1) * sizeof(*v));
    if (!v) {
        member_free(&c);
        return -ENOMEM;
    }
    set->v = v;
    set->v[set->n++] = c;
    return 0;
}

void members_remove(struct member_set *set, uint64_t id) {
    struct member *m = members_find(set, id);
    if (!m)
        return;
    member_free(m);
    *m = set->v[--set->n];
}

void members_conf_state(const struct member_set *set, struct raft_conf_state *cs) {
    memset(cs, 0, sizeof(*cs));
    for (size_t i = 0; i < set->n && i < RAFT_MAX_MEMBERS; i++) {
        if (set->v[i].learner)
            cs->learners[cs->n_learners++] = set->v[i].id;
        else
            cs->voters[cs->n_voters++] = set->v[i].id;
    }
}

/* ---- encoding ---- */

static void put_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static uint64_t get_be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

static int put_str(struct util_buf *b, const char *s) {
    size_t n = strlen(s);
    uint8_t h[2];
    if (n > UINT16_MAX)
        return -EINVAL;
    put_be(h, n, 2);
    int rc = util_buf_append(b, h, 2);
    return rc ? rc : util_buf_append(b, s, n);
}

static int put_list(struct util_buf *b, char *const *v, size_t n) {
    uint8_t c = (uint8_t)n;
    if (n > UINT8_MAX)
        return -EINVAL;
    int rc = util_buf_append(b, &c, 1);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = put_str(b, v[i]);
    return rc;
}

int members_encode(const struct member *m, struct util_buf *out) {
    uint8_t h[2] = {RECORD_VERSION, m->learner ? 1 : 0};
    int rc = util_buf_append(out, h, 2);
    if (rc == 0)
        rc = put_str(out, m->name ? m->name : "");
    if (rc == 0)
        rc = put_list(out, m->peer_urls, m->n_peer_urls);
    if (rc == 0)
        rc = put_list(out, m->client_urls, m->n_client_urls);
    return rc;
}

/* A reader over a record that fails once, then stays failed. */
struct rd {
    const uint8_t *p;
    size_t left;
    int rc;
};

static const uint8_t *take(struct rd *r, size_t n) {
    if (r->rc || r->left < n) {
        r->rc = -EINVAL;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static char *get_str(struct rd *r) {
    const uint8_t *h = take(r, 2);
    size_t n = h ? (size_t)get_be(h, 2) : 0;
    const uint8_t *p = take(r, n);
    if (!p)
        return NULL;
    char *s = malloc(n + 1);
    if (!s) {
        r->rc = -ENOMEM;
        return NULL;
    }
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static char **get_list(struct rd *r, size_t *n) {
    const uint8_t *c = take(r, 1);
    *n = 0;
    if (!c)
        return NULL;
    char **v = calloc(*c ? *c : 1, sizeof(*v));
    if (!v) {
        r->rc = -ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < *c && r->rc == 0; i++) {
        v[i] = get_str(r);
        *n = i + 1;
    }
    return v;
}

int members_decode(const uint8_t *p, size_t len, struct member *out) {
    struct rd r = {.p = p, .left = len};
    *out = (struct member){0};
    const uint8_t *h = take(&r, 2);
    if (h && h[0] != RECORD_VERSION)
        r.rc = -EINVAL;
    if (r.rc == 0) {
        out->learner = h[1] & 1;
        out->name = get_str(&r);
        out->peer_urls = get_list(&r, &out->n_peer_urls);
        out->client_urls = get_list(&r, &out->n_client_urls);
    }
    if (r.rc != 0)
        member_free(out);
    return r.rc;
}

int members_encode_set(const struct member_set *set, struct util_buf *out) {
    uint8_t h[8];
    put_be(h, set->n, 4);
    int rc = util_buf_append(out, h, 4);
    for (size_t i = 0; rc == 0 && i < set->n; i++) {
        size_t at = out->len;
        put_be(h, set->v[i].id, 8);
        /* Room for the length, filled in once the record is written. */
        if ((rc = util_buf_append(out, h, 4)) == 0 && (rc = util_buf_append(out, h, 8)) == 0 &&
            (rc = members_encode(&set->v[i], out)) == 0)
            put_be((uint8_t *)out->data + at, out->len - at - 4, 4);
    }
    return rc;
}

int members_decode_set(const uint8_t *p, size_t len, struct member_set *out) {
    struct rd r = {.p = p, .left = len};
    *out = (struct member_set){0};
    const uint8_t *h = take(&r, 4);
    size_t n = h ? (size_t)get_be(h, 4) : 0;
    if (n > RAFT_MAX_MEMBERS * 4)
        r.rc = -EINVAL;
    for (size_t i = 0; i < n && r.rc == 0; i++) {
        const uint8_t *lh = take(&r, 4);
        size_t rl = lh ? (size_t)get_be(lh, 4) : 0;
        const uint8_t *rec = take(&r, rl);
        struct member m;
        if (!rec || rl < 8 || (r.rc = members_decode(rec + 8, rl - 8, &m)) != 0) {
            if (r.rc == 0)
                r.rc = -EINVAL;
            break;
        }
        m.id = get_be(rec, 8);
        r.rc = members_put(out, &m);
        member_free(&m);
    }
    if (r.rc != 0)
        members_free(out);
    return r.rc;
}

/* ---- etcd's checks ---- */

static bool url_taken(const struct member_set *set, uint64_t except, const char *url) {
    for (size_t i = 0; i < set->n; i++) {
        if (set->v[i].id == except)
            continue;
        for (size_t k = 0; k < set->v[i].n_peer_urls; k++)
            if (strcmp(set->v[i].peer_urls[k], url) == 0)
                return true;
    }
    return false;
}

int members_check(const struct member_set *set, enum members_op op, uint64_t id,
                  const struct member *m) {
    const struct member *cur = members_find(set, id);
    switch (op) {
    case MEMBERS_OP_ADD: {
        if (cur)
            return MEMBERS_EEXIST;
        for (size_t k = 0; k < m->n_peer_urls; k++)
            if (url_taken(set, 0, m->peer_urls[k]))
                return MEMBERS_EPEEREXIST;
        size_t learners = 0;
        for (size_t i = 0; i < set->n; i++)
            learners += set->v[i].learner;
        if (m->learner && learners + 1 > MEMBERS_MAX_LEARNERS)
            return MEMBERS_ETOOMANYLEARNERS;
        return set->n < RAFT_MAX_MEMBERS ? 0 : -ENOSPC;
    }
    case MEMBERS_OP_PROMOTE:
        if (!cur)
            return MEMBERS_ENOTFOUND;
        return cur->learner ? 0 : MEMBERS_ENOTLEARNER;
    case MEMBERS_OP_REMOVE:
        return cur ? 0 : MEMBERS_ENOTFOUND;
    case MEMBERS_OP_UPDATE:
        if (!cur)
            return MEMBERS_ENOTFOUND;
        for (size_t k = 0; k < m->n_peer_urls; k++)
            if (url_taken(set, id, m->peer_urls[k]))
                return MEMBERS_EPEEREXIST;
        return 0;
    }
    return -EINVAL;
}

int members_apply(struct member_set *set, enum members_op op, uint64_t id, const struct member *m) {
    struct member *cur = members_find(set, id);
    switch (op) {
    case MEMBERS_OP_ADD: {
        struct member c = *m;
        c.id = id;
        return members_put(set, &c);
    }
    case MEMBERS_OP_PROMOTE:
        if (cur)
            cur->learner = false;
        return 0;
    case MEMBERS_OP_REMOVE:
        members_remove(set, id);
        return 0;
    case MEMBERS_OP_UPDATE: {
        if (!cur)
            return 0;
        char **urls;
        if (copy_strs(&urls, m->peer_urls, m->n_peer_urls) != 0)
            return -ENOMEM;
        free_strs(cur->peer_urls, cur->n_peer_urls);
        cur->peer_urls = urls;
        cur->n_peer_urls = m->n_peer_urls;
        return 0;
    }
    }
    return -EINVAL;
}

/* ---- the store ---- */

int members_store_open(mvcc_t *db, MDB_dbi *dbi) {
    return mvcc_dbi_open(db, "members", dbi);
}

int members_store_load(MDB_txn *txn, MDB_dbi dbi, struct member_set *out, uint64_t *cluster_id,
                       struct member_set *boot) {
    *out = (struct member_set){0};
    if (boot)
        *boot = (struct member_set){0};
    *cluster_id = 0;
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, dbi, &cur) != 0)
        return -EIO;
    MDB_val k, v;
    int rc = 0, mrc;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && rc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size == 8) {
            struct member m;
            if ((rc = members_decode(v.mv_data, v.mv_size, &m)) != 0)
                break;
            m.id = get_be(k.mv_data, 8);
            rc = members_put(out, &m);
            member_free(&m);
        } else if (k.mv_size == strlen(KEY_CLUSTER) && v.mv_size == 8 &&
                   memcmp(k.mv_data, KEY_CLUSTER, k.mv_size) == 0) {
            *cluster_id = get_be(v.mv_data, 8);
        } else if (boot && k.mv_size == strlen(KEY_BOOT) &&
                   memcmp(k.mv_data, KEY_BOOT, k.mv_size) == 0) {
            rc = members_decode_set(v.mv_data, v.mv_size, boot);
        }
    }
    mdb_cursor_close(cur);
    if (rc == 0 && mrc != MDB_NOTFOUND)
        rc = -EIO;
    if (rc != 0) {
        members_free(out);
        if (boot)
            members_free(boot);
    }
    return rc;
}

int members_store_read(mvcc_t *db, MDB_dbi dbi, struct member_set *out, uint64_t *cluster_id,
                       struct member_set *boot) {
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(db, &rd);
    if (rc != 0)
        return rc;
    rc = members_store_load(mvcc_read_txn(rd), dbi, out, cluster_id, boot);
    mvcc_read_end(rd);
    return rc;
}

static int put_raw(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t klen, const void *val,
                   size_t vlen) {
    MDB_val k = {.mv_size = klen, .mv_data = (void *)key};
    MDB_val v = {.mv_size = vlen, .mv_data = (void *)val};
    return mdb_put(txn, dbi, &k, &v, 0) == 0 ? 0 : -EIO;
}

int members_store_removed(MDB_txn *txn, MDB_dbi dbi, uint64_t **ids, size_t *n) {
    MDB_val k = {.mv_size = strlen(KEY_REMOVED), .mv_data = KEY_REMOVED}, v;
    *ids = NULL;
    *n = 0;
    int mrc = mdb_get(txn, dbi, &k, &v);
    if (mrc == MDB_NOTFOUND || (mrc == 0 && v.mv_size < 8))
        return 0;
    if (mrc != 0)
        return -EIO;
    if (!(*ids = malloc(v.mv_size)))
        return -ENOMEM;
    *n = v.mv_size / 8;
    for (size_t i = 0; i < *n; i++)
        (*ids)[i] = get_be((const uint8_t *)v.mv_data + 8 * i, 8);
    return 0;
}

int members_store_add_removed(MDB_txn *txn, MDB_dbi dbi, uint64_t id) {
    uint64_t *ids;
    size_t n;
    int rc = members_store_removed(txn, dbi, &ids, &n);
    if (rc != 0)
        return rc;
    uint8_t *v = malloc((n + 1) * 8);
    rc = v ? 0 : -ENOMEM;
    if (v) {
        for (size_t i = 0; i < n; i++)
            put_be(v + 8 * i, ids[i], 8);
        put_be(v + 8 * n, id, 8);
        rc = put_raw(txn, dbi, KEY_REMOVED, strlen(KEY_REMOVED), v, (n + 1) * 8);
    }
    free(v);
    free(ids);
    return rc;
}

int members_store_put(MDB_txn *txn, MDB_dbi dbi, const struct member *m) {
    struct util_buf b = {0};
    uint8_t key[8];
    put_be(key, m->id, 8);
    int rc = members_encode(m, &b);
    if (rc == 0)
        rc = put_raw(txn, dbi, key, 8, b.data, b.len);
    util_buf_free(&b);
    return rc;
}

int members_store_del(MDB_txn *txn, MDB_dbi dbi, uint64_t id) {
    uint8_t key[8];
    put_be(key, id, 8);
    MDB_val k = {.mv_size = 8, .mv_data = key};
    int mrc = mdb_del(txn, dbi, &k, NULL);
    return mrc == 0 || mrc == MDB_NOTFOUND ? 0 : -EIO;
}

int members_store_replace(mvcc_t *db, MDB_dbi dbi, const struct member_set *set,
                          uint64_t cluster_id) {
    mvcc_batch_t *b;
    int rc = mvcc_batch_begin(db, &b);
    if (rc != 0)
        return rc;
    MDB_txn *txn = mvcc_batch_txn(b);
    struct util_buf boot = {0};
    uint8_t cid[8];
    put_be(cid, cluster_id, 8);
    rc = mdb_drop(txn, dbi, 0) == 0 ? 0 : -EIO;
    for (size_t i = 0; rc == 0 && i < set->n; i++)
        rc = members_store_put(txn, dbi, &set->v[i]);
    if (rc == 0)
        rc = members_encode_set(set, &boot);
    if (rc == 0)
        rc = put_raw(txn, dbi, KEY_BOOT, strlen(KEY_BOOT), boot.data, boot.len);
    if (rc == 0)
        rc = put_raw(txn, dbi, KEY_CLUSTER, strlen(KEY_CLUSTER), cid, 8);
    util_buf_free(&boot);
    if (rc != 0) {
        mvcc_batch_abort(b);
        return rc;
    }
    if ((rc = mvcc_batch_commit(b)) == 0)
        rc = mvcc_sync(db);
    return rc;
}

int members_initial_set(const struct config *cfg, struct member_set *set) {
    *set = (struct member_set){0};
    for (size_t i = 0; i < cfg->n_initial_cluster; i++) {
        const struct config_member *cm = &cfg->initial_cluster[i];
        char *urls[16];
        struct member m = {.id = cm->id, .name = cm->name, .peer_urls = urls};
        for (size_t k = 0; k < cm->peer_urls.n && k < 16; k++)
            urls[m.n_peer_urls++] = cm->peer_urls.v[k].text;
        if (members_put(set, &m) != 0) {
            members_free(set);
            return -ENOMEM;
        }
    }
    return 0;
}

/* ---- the identity file ---- */

/* Reads the optional "bootstrap <hex>" line: the set the member started from. */
static int identity_read_boot(FILE *f, const char *path, struct member_set *boot,
                              struct util_err *err) {
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        if (strncmp(line, "bootstrap ", 10) != 0)
            continue;
        const char *hex = line + 10;
        size_t n = strcspn(hex, "\n");
        uint8_t *raw = malloc(n / 2 + 1);
        rc = !raw ? -ENOMEM : n % 2 == 0 ? 0 : -EINVAL;
        for (size_t i = 0; rc == 0 && i < n / 2; i++) {
            unsigned v;
            if (sscanf(hex + 2 * i, "%2x", &v) != 1)
                rc = -EINVAL;
            raw[i] = (uint8_t)v;
        }
        if (rc == 0)
            rc = members_decode_set(raw, n / 2, boot);
        free(raw);
        break;
    }
    free(line);
    if (rc != 0)
        return util_errorf(err, rc == -ENOMEM ? rc : -EINVAL,
                           "%s: its bootstrap member list cannot be read", path);
    return 0;
}

int members_identity_read(const char *dir, uint64_t *member_id, uint64_t *cluster_id,
                          struct member_set *boot, struct util_err *err) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/identity", dir);
    if (boot)
        *boot = (struct member_set){0};
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT)
            return -ENOENT;
        return util_errorf(err, -errno, "cannot read %s: %s", path, strerror(errno));
    }
    int got = fscanf(f, "member-id %" SCNx64 " cluster-id %" SCNx64, member_id, cluster_id);
    int rc = 0;
    if (got != 2 || *member_id == 0)
        rc = util_errorf(err, -EINVAL, "%s does not name this member and its cluster", path);
    else if (boot)
        rc = identity_read_boot(f, path, boot, err);
    fclose(f);
    return rc;
}

int members_identity_write(const char *dir, uint64_t member_id, uint64_t cluster_id,
                           const struct member_set *boot, struct util_err *err) {
    char path[4096], tmp[4200];
    struct util_buf text = {0}, raw = {0};
    snprintf(path, sizeof(path), "%s/identity", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int rc = util_buf_printf(&text, "member-id %016" PRIx64 "\ncluster-id %016" PRIx64 "\n",
                             member_id, cluster_id);
    if (rc == 0 && boot && boot->n > 0 && (rc = members_encode_set(boot, &raw)) == 0) {
        rc = util_buf_printf(&text, "bootstrap ");
        for (size_t i = 0; rc == 0 && i < raw.len; i++)
            rc = util_buf_printf(&text, "%02x", (unsigned)(uint8_t)raw.data[i]);
        if (rc == 0)
            rc = util_buf_printf(&text, "\n");
    }
    util_buf_free(&raw);
    if (rc != 0) {
        util_buf_free(&text);
        return util_errorf(err, -ENOMEM, "out of memory");
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        util_buf_free(&text);
        return util_errorf(err, rc, "cannot write %s: %s", tmp, strerror(-rc));
    }
    errno = 0;
    bool written = write(fd, text.data, text.len) == (ssize_t)text.len && fsync(fd) == 0;
    rc = written ? 0 : -(errno ? errno : EIO);
    util_buf_free(&text);
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    int dfd = rc == 0 ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    if (rc != 0) {
        unlink(tmp);
        return util_errorf(err, rc ? rc : -EIO, "cannot write %s: %s", path, strerror(-rc));
    }
    return 0;
}
