/* wal formats and files: the log-state rules, segment headers, record
 * encoding and decoding, segment names, segment creation, and the system-call
 * wrappers through which every write, sync and preallocation goes (so that the
 * test build can fail any of them). All integers on disk are little-endian. */
#include "wal/wal_int.h"

#include <assert.h>
#include <ctype.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void put32(uint8_t *p, uint32_t v) {
    v = htole32(v);
    memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v) {
    v = htole64(v);
    memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

int wal_ls_check_entries(const struct wal_logstate *ls, uint64_t first) {
    return first > ls->snap.index && first <= ls->last + 1 ? 0 : -EINVAL;
}

int wal_ls_check_snapshot(const struct wal_logstate *ls, const struct wal_snapshot *snap,
                          uint32_t mode) {
    if (mode != WAL_SNAPSHOT_KEEP_LOG && mode != WAL_SNAPSHOT_DISCARD_LOG)
        return -EINVAL;
    return snap->index >= ls->snap.index ? 0 : -EINVAL;
}

/* An entry at or below the last index drops everything from its index on:
 * the log is always "entries up to this one". */
void wal_ls_entry(struct wal_logstate *ls, uint64_t index, uint64_t term) {
    assert(wal_ls_check_entries(ls, index) == 0);
    ls->last = index;
    ls->last_term = term;
}

void wal_ls_snapshot(struct wal_logstate *ls, const struct wal_snapshot *snap, uint32_t mode) {
    assert(wal_ls_check_snapshot(ls, snap, mode) == 0);
    ls->snap = *snap;
    if (mode == WAL_SNAPSHOT_DISCARD_LOG || snap->index > ls->last) {
        ls->last = snap->index;
        ls->last_term = snap->term;
    }
}

/* Header layout: magic[8] version u32, size u32, seq, first_index, last_term,
 * hs.term, hs.vote, hs.commit, snap.index, snap.term (u64 each), zeros, and
 * the crc32c of bytes [0, 124) in the last four bytes. */
void wal_seg_hdr_encode(uint8_t out[WAL_SEG_HDR_SIZE], const struct wal_seg_hdr *h) {
    memset(out, 0, WAL_SEG_HDR_SIZE);
    memcpy(out, WAL_MAGIC, 8);
    put32(out + 8, WAL_VERSION);
    put32(out + 12, WAL_SEG_HDR_SIZE);
    put64(out + 16, h->seq);
    put64(out + 24, h->first_index);
    put64(out + 32, h->ls.last_term);
    put64(out + 40, h->ls.hs.term);
    put64(out + 48, h->ls.hs.vote);
    put64(out + 56, h->ls.hs.commit);
    put64(out + 64, h->ls.snap.index);
    put64(out + 72, h->ls.snap.term);
    put32(out + WAL_SEG_HDR_SIZE - 4, wal_crc32c(0, out, WAL_SEG_HDR_SIZE - 4));
}

const char *wal_seg_hdr_decode(const uint8_t *p, size_t n, struct wal_seg_hdr *h) {
    if (n < WAL_SEG_HDR_SIZE)
        return "file shorter than a segment header";
    if (memcmp(p, WAL_MAGIC, 8) != 0)
        return "bad magic (not a quoin WAL segment)";
    if (get32(p + WAL_SEG_HDR_SIZE - 4) != wal_crc32c(0, p, WAL_SEG_HDR_SIZE - 4))
        return "header checksum mismatch";
    if (get32(p + 8) != WAL_VERSION || get32(p + 12) != WAL_SEG_HDR_SIZE)
        return "unsupported segment version";
    h->seq = get64(p + 16);
    h->first_index = get64(p + 24);
    h->ls.last = h->first_index - 1;
    h->ls.last_term = get64(p + 32);
    h->ls.hs.term = get64(p + 40);
    h->ls.hs.vote = get64(p + 48);
    h->ls.hs.commit = get64(p + 56);
    h->ls.snap.index = get64(p + 64);
    h->ls.snap.term = get64(p + 72);
    if (h->first_index == 0 || h->ls.snap.index > h->ls.last)
        return "inconsistent segment header";
    return NULL;
}

/* Writes a record header and payload (in two parts, so entry data is copied
 * once) and zero padding; returns the record size. */
static size_t enc_record(uint8_t *dst, uint8_t type, const uint8_t *fixed, size_t nfixed,
                         const void *data, size_t ndata) {
    size_t len = nfixed + ndata;
    size_t size = wal_rec_size(len);
    assert(len <= WAL_MAX_PAYLOAD);
    put32(dst, 0);
    put32(dst + 4, (uint32_t)len);
    dst[8] = type;
    dst[9] = dst[10] = dst[11] = 0; /* flags: see wal_rec_mark_end */
    memcpy(dst + WAL_REC_HDR, fixed, nfixed);
    if (ndata)
        memcpy(dst + WAL_REC_HDR + nfixed, data, ndata);
    memset(dst + WAL_REC_HDR + len, 0, size - WAL_REC_HDR - len);
    return size;
}

size_t wal_enc_entry(uint8_t *dst, const struct wal_entry *e) {
    uint8_t f[WAL_ENTRY_FIXED];
    put64(f, e->index);
    put64(f + 8, e->term);
    put32(f + 16, e->type);
    return enc_record(dst, WAL_REC_ENTRY, f, sizeof(f), e->data, e->len);
}

size_t wal_enc_hardstate(uint8_t *dst, const struct wal_hard_state *hs) {
    uint8_t f[WAL_HARDSTATE_SIZE];
    put64(f, hs->term);
    put64(f + 8, hs->vote);
    put64(f + 16, hs->commit);
    return enc_record(dst, WAL_REC_HARDSTATE, f, sizeof(f), NULL, 0);
}

size_t wal_enc_snapshot(uint8_t *dst, const struct wal_snapshot *s, uint32_t mode) {
    uint8_t f[WAL_SNAPSHOT_SIZE];
    put64(f, s->index);
    put64(f + 8, s->term);
    put32(f + 16, mode);
    return enc_record(dst, WAL_REC_SNAPSHOT, f, sizeof(f), NULL, 0);
}

void wal_rec_mark_end(uint8_t *rec) {
    rec[9] |= WAL_REC_F_END;
}

void wal_seal(uint8_t *buf, size_t n) {
    size_t off = 0;
    while (off < n) {
        size_t size = wal_rec_size(get32(buf + off + 4));
        assert(off + size <= n);
        put32(buf + off, wal_crc32c(0, buf + off + 4, size - 4));
        off += size;
    }
}

const char *wal_rec_decode(const uint8_t *p, size_t n, struct wal_rec *r) {
    static const uint8_t zero[WAL_REC_HDR];
    if (n < WAL_REC_HDR)
        return "partial record header";
    if (memcmp(p, zero, WAL_REC_HDR) == 0)
        return "zeroed space";
    uint32_t len = get32(p + 4);
    uint8_t type = p[8];
    if (type < WAL_REC_ENTRY || type > WAL_REC_SNAPSHOT || (p[9] & ~WAL_REC_F_END) || p[10] ||
        p[11])
        return "unknown record type";
    if (len > WAL_MAX_PAYLOAD || wal_rec_size(len) > n)
        return "record runs past the end of the file";
    size_t size = wal_rec_size(len);
    if (get32(p) != wal_crc32c(0, p + 4, size - 4))
        return "checksum mismatch";
    if ((type == WAL_REC_ENTRY && len < WAL_ENTRY_FIXED) ||
        (type == WAL_REC_HARDSTATE && len != WAL_HARDSTATE_SIZE) ||
        (type == WAL_REC_SNAPSHOT && len != WAL_SNAPSHOT_SIZE))
        return "bad length for the record type";
    r->type = type;
    r->flags = p[9];
    r->len = len;
    r->payload = p + WAL_REC_HDR;
    r->size = size;
    return NULL;
}

void wal_rec_entry(const struct wal_rec *r, struct wal_entry *e) {
    e->index = get64(r->payload);
    e->term = get64(r->payload + 8);
    e->type = get32(r->payload + 16);
    e->len = r->len - WAL_ENTRY_FIXED;
    e->data = r->payload + WAL_ENTRY_FIXED;
}

void wal_rec_hardstate(const struct wal_rec *r, struct wal_hard_state *hs) {
    hs->term = get64(r->payload);
    hs->vote = get64(r->payload + 8);
    hs->commit = get64(r->payload + 16);
}

void wal_rec_snapshot(const struct wal_rec *r, struct wal_snapshot *s, uint32_t *mode) {
    s->index = get64(r->payload);
    s->term = get64(r->payload + 8);
    *mode = get32(r->payload + 16);
}

void wal_seg_name(char *out, uint64_t seq, uint64_t first_index) {
    snprintf(out, WAL_NAME_MAX, "%016" PRIx64 "-%016" PRIx64 ".wal", seq, first_index);
}

int wal_seg_parse_name(const char *name, uint64_t *seq, uint64_t *first_index) {
    if (strlen(name) != 37 || name[16] != '-' || strcmp(name + 33, ".wal") != 0)
        return -EINVAL;
    for (int i = 0; i < 33; i++)
        if (i != 16 && !isxdigit((unsigned char)name[i]))
            return -EINVAL;
    *seq = strtoull(name, NULL, 16);
    *first_index = strtoull(name + 17, NULL, 16);
    return 0;
}

#ifdef QUOIN_TESTING
/* Counts a call of op and says which fault, if any, to inject into it. */
static int fault_hit(struct wal *w, enum wal_fault_op op, enum wal_fault_kind *kind) {
    int hit = 0;
    pthread_mutex_lock(&w->mu);
    w->calls[op]++;
    if (w->fault.op == op && w->calls[op] == w->fault.nth) {
        *kind = w->fault.kind;
        w->fault.op = WAL_FAULT_NONE;
        hit = 1;
    }
    pthread_mutex_unlock(&w->mu);
    return hit;
}

static int fault_code(enum wal_fault_kind kind) {
    return kind == WAL_FAULT_ENOSPC ? -ENOSPC : -EIO;
}

/* The error the fault hook injects into this call of op, or 0. */
static int fault_check(struct wal *w, enum wal_fault_op op) {
    enum wal_fault_kind kind;
    return fault_hit(w, op, &kind) ? fault_code(kind) : 0;
}
#else
/* The server build has no hook (and no names for its operations). */
#define fault_check(w, op) ((void)(w), 0)
#endif

int wal_io_pwrite(struct wal *w, int fd, const void *buf, size_t n, uint64_t off) {
    const uint8_t *p = buf;
    while (n > 0) {
        size_t ask = n;
#ifdef QUOIN_TESTING
        enum wal_fault_kind kind;
        if (fault_hit(w, WAL_FAULT_WRITE, &kind)) {
            if (kind == WAL_FAULT_CRASH) {
                /* Some whole pages and part of the next, as a crash leaves. */
                ask = n > 4096 ? n / 4096 * 4096 / 2 + 1000 : n / 3;
                if (pwrite(fd, p, ask, (off_t)off) >= 0)
                    raise(SIGKILL);
                return -EIO;
            }
            if (kind != WAL_FAULT_SHORT || n < 2)
                return fault_code(kind);
            ask = n / 2;
        }
#else
        (void)w;
#endif
        ssize_t r = pwrite(fd, p, ask, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -EIO;
        p += r;
        off += (uint64_t)r;
        n -= (size_t)r;
    }
    return 0;
}

/* Shared by the two syncs: both count as WAL_FAULT_FDATASYNC. */
static int io_sync(struct wal *w, int fd, int (*fn)(int)) {
    int rc = fault_check(w, WAL_FAULT_FDATASYNC);
    if (rc)
        return rc;
    return fn(fd) < 0 ? -errno : 0;
}

int wal_io_fdatasync(struct wal *w, int fd) {
    return io_sync(w, fd, fdatasync);
}

int wal_io_fsync(struct wal *w, int fd) {
    return io_sync(w, fd, fsync);
}

int wal_io_fallocate(struct wal *w, int fd, uint64_t len) {
    int rc = fault_check(w, WAL_FAULT_FALLOCATE);
    if (rc)
        return rc;
    return -posix_fallocate(fd, 0, (off_t)len);
}

int wal_grow(void *arrp, size_t *cap, size_t n, size_t elem) {
    void *p;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    memcpy(&p, arrp, sizeof(p)); /* arrp may point to any object pointer type */
    p = realloc(p, ncap * elem);
    if (!p)
        return -ENOMEM;
    memcpy(arrp, &p, sizeof(p));
    *cap = ncap;
    return 0;
}

int wal_segs_push(struct wal *w, uint64_t seq, uint64_t first_index) {
    if (wal_grow(&w->segs, &w->cap_segs, w->n_segs, sizeof(*w->segs)) < 0)
        return -ENOMEM;
    assert(w->n_segs == 0 || w->segs[w->n_segs - 1].seq + 1 == seq);
    w->segs[w->n_segs++] = (struct wal_seg){.seq = seq, .first_index = first_index};
    return 0;
}

int wal_seg_prepare(struct wal *w, const char *tmp, int *out, struct util_err *err) {
    int rc, fd = openat(w->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return util_errorf(err, -errno, "wal: cannot create %s/%s: %s", w->dir, tmp,
                           strerror(errno));
    if ((rc = wal_io_fallocate(w, fd, w->segment_size)) < 0) {
        close(fd);
        unlinkat(w->dirfd, tmp, 0);
        return util_errorf(err, rc, "wal: cannot preallocate %s/%s: %s", w->dir, tmp,
                           strerror(-rc));
    }
    *out = fd;
    return 0;
}

int wal_seg_install(struct wal *w, int fd, const char *tmp, const struct wal_seg_hdr *h,
                    struct util_err *err) {
    char name[WAL_NAME_MAX];
    uint8_t hdr[WAL_SEG_HDR_SIZE];
    int rc;

    wal_seg_name(name, h->seq, h->first_index);
    wal_seg_hdr_encode(hdr, h);
    if ((rc = wal_io_pwrite(w, fd, hdr, sizeof(hdr), 0)) < 0 || (rc = wal_io_fdatasync(w, fd)) < 0)
        goto err;
    if (renameat(w->dirfd, tmp, w->dirfd, name) < 0) {
        rc = -errno;
        goto err;
    }
    if ((rc = wal_io_fsync(w, w->dirfd)) < 0) {
        /* The name may or may not be durable: take it back, so a failed
         * creation leaves nothing behind that recovery would have to read. */
        unlinkat(w->dirfd, name, 0);
        close(fd);
        return util_errorf(err, rc, "wal: cannot sync directory %s: %s", w->dir, strerror(-rc));
    }
    return 0;

err:
    close(fd);
    unlinkat(w->dirfd, tmp, 0);
    return util_errorf(err, rc, "wal: cannot create segment %s/%s: %s", w->dir, name,
                       strerror(-rc));
}

int wal_seg_create(struct wal *w, const struct wal_seg_hdr *h, int *out, struct util_err *err) {
    char tmp[WAL_NAME_MAX + 4];
    wal_seg_name(tmp, h->seq, h->first_index);
    strcat(tmp, ".tmp");
    int rc = wal_seg_prepare(w, tmp, out, err);
    if (rc == 0 && (rc = wal_seg_install(w, *out, tmp, h, err)) < 0)
        *out = -1;
    return rc;
}
