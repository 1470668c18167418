/* wal recovery: reads every segment of a log directory in order, rebuilds the
 * log (hard state, snapshot marker, entries after it), repairs a torn tail of
 * the last segment and refuses anything else that is damaged, naming the file
 * and byte offset. docs/storage.md ("Recovery") gives the rules and why. */
#include "wal/wal_int.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A segment file while it is being read. */
struct segfile {
    uint64_t seq, first;
    char name[WAL_NAME_MAX];
    int fd;
    uint8_t *map;
    size_t size;
};

/* The log being rebuilt. Invariant: n > 0 implies ents cover [lo, ls.last]. */
struct replay {
    struct wal_logstate ls;
    struct wal_entry *ents;
    size_t n, cap;
    uint64_t lo;
};

static int cmp_seq(const void *a, const void *b) {
    const struct segfile *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Lists the segments of the directory, sorted, and removes leftovers of
 * segment creations that did not finish (never named, so never written to). */
static int list_segments(struct wal *w, struct segfile **out, size_t *n_out, struct util_err *err) {
    struct segfile *v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    DIR *d = opendir(w->dir);
    if (!d)
        return util_errorf(err, -errno, "wal: cannot read directory %s: %s", w->dir,
                           strerror(errno));
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len > 8 && strcmp(de->d_name + len - 8, ".wal.tmp") == 0) {
            LOG_INFO(w->log, "wal: removing an unfinished segment", LOG_STR("dir", w->dir),
                     LOG_STR("file", de->d_name));
            unlinkat(w->dirfd, de->d_name, 0);
            continue;
        }
        uint64_t seq, first;
        if (wal_seg_parse_name(de->d_name, &seq, &first) < 0)
            continue;
        if (wal_grow(&v, &cap, n, sizeof(*v)) < 0) {
            rc = util_errorf(err, -ENOMEM, "wal: out of memory listing %s", w->dir);
            goto err;
        }
        v[n] = (struct segfile){.seq = seq, .first = first, .fd = -1};
        memcpy(v[n].name, de->d_name, len + 1);
        n++;
    }
    closedir(d);
    d = NULL;
    if (n)
        qsort(v, n, sizeof(*v), cmp_seq);
    for (size_t i = 1; i < n; i++) {
        if (v[i].seq != v[i - 1].seq + 1) {
            rc =
                util_errorf(err, -EBADMSG,
                            "wal: %s: segment %016llx is missing between %s and %s; "
                            "refusing to start",
                            w->dir, (unsigned long long)v[i - 1].seq + 1, v[i - 1].name, v[i].name);
            goto err;
        }
    }
    *out = v;
    *n_out = n;
    return 0;

err:
    if (d)
        closedir(d);
    free(v);
    return rc;
}

int wal_exists(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d)) != NULL) {
        uint64_t seq, first;
        found = wal_seg_parse_name(de->d_name, &seq, &first) == 0;
    }
    closedir(d);
    return found;
}

static int map_segment(struct wal *w, struct segfile *s, int writable, struct util_err *err) {
    struct stat st;
    s->fd = openat(w->dirfd, s->name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &st) < 0)
        return util_errorf(err, -errno, "wal: cannot open %s/%s: %s", w->dir, s->name,
                           strerror(errno));
    s->size = (size_t)st.st_size;
    if (s->size == 0)
        return 0;
    s->map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return util_errorf(err, -errno, "wal: cannot map %s/%s: %s", w->dir, s->name,
                           strerror(errno));
    }
    if (!writable) {
        /* The mapping stays valid; a long log does not hold a descriptor per segment. */
        close(s->fd);
        s->fd = -1;
    }
    return 0;
}

/* Applies one valid record. Returns 0, -ENOMEM, or -EBADMSG with *why set
 * when the record cannot follow the log (a checksummed record that makes no
 * sense is damage or a bug, never a torn write). */
static int apply(struct replay *rp, const struct wal_rec *r, const char **why) {
    if (r->type == WAL_REC_HARDSTATE) {
        wal_rec_hardstate(r, &rp->ls.hs);
        return 0;
    }
    if (r->type == WAL_REC_SNAPSHOT) {
        struct wal_snapshot s;
        uint32_t mode;
        wal_rec_snapshot(r, &s, &mode);
        if (wal_ls_check_snapshot(&rp->ls, &s, mode) < 0) {
            *why = "snapshot marker goes back before the previous one";
            return -EBADMSG;
        }
        if (mode == WAL_SNAPSHOT_DISCARD_LOG || s.index > rp->ls.last) {
            rp->n = 0;
        } else if (rp->n > 0 && s.index >= rp->lo) {
            size_t drop = (size_t)(s.index - rp->lo + 1);
            memmove(rp->ents, rp->ents + drop, (rp->n - drop) * sizeof(*rp->ents));
            rp->n -= drop;
            rp->lo = s.index + 1;
        }
        wal_ls_snapshot(&rp->ls, &s, mode);
        return 0;
    }
    struct wal_entry e;
    wal_rec_entry(r, &e);
    if (wal_ls_check_entries(&rp->ls, e.index) < 0) {
        *why = "entry index does not follow the log";
        return -EBADMSG;
    }
    if (rp->n > 0 && e.index >= rp->lo) {
        rp->n = (size_t)(e.index - rp->lo);
    } else {
        rp->n = 0;
        rp->lo = e.index;
    }
    if (wal_grow(&rp->ents, &rp->cap, rp->n, sizeof(*rp->ents)) < 0)
        return -ENOMEM;
    rp->ents[rp->n++] = e;
    wal_ls_entry(&rp->ls, e.index, e.term);
    assert(rp->lo + rp->n - 1 == rp->ls.last);
    return 0;
}

#define ZERO_CHUNK 4096

static int all_zero(const uint8_t *p, size_t from, size_t to) {
    static const uint8_t zeros[ZERO_CHUNK];
    while (from < to) {
        size_t n = to - from < ZERO_CHUNK ? to - from : ZERO_CHUNK;
        if (memcmp(p + from, zeros, n) != 0)
            return 0;
        from += n;
    }
    return 1;
}

/* The first offset after `from` (on the record alignment) where a valid record
 * starts, or 0 if there is none. Whole pages of zeros (the rest of a
 * preallocated segment) are skipped a page at a time. */
static size_t valid_record_after(const uint8_t *p, size_t size, size_t from) {
    struct wal_rec r;
    size_t off = from + WAL_REC_ALIGN;
    while (off + WAL_REC_HDR <= size) {
        if (off % ZERO_CHUNK == 0 && off + ZERO_CHUNK <= size &&
            all_zero(p, off, off + ZERO_CHUNK)) {
            off += ZERO_CHUNK;
            continue;
        }
        if (wal_rec_decode(p + off, size - off, &r) == NULL)
            return off;
        off += WAL_REC_ALIGN;
    }
    return 0;
}

/* Whether [from, to) holds a whole 4 KiB page of zeros: a page the kernel never
 * wrote back before a crash. */
static int has_zero_page(const uint8_t *p, size_t from, size_t to) {
    for (size_t pg = (from + ZERO_CHUNK - 1) & ~(size_t)(ZERO_CHUNK - 1); pg + ZERO_CHUNK <= to;
         pg += ZERO_CHUNK)
        if (all_zero(p, pg, pg + ZERO_CHUNK))
            return 1;
    return 0;
}

/* Decides whether a bad record at `off` of the last segment may be cut, and
 * sets *next to the offset of a valid record after it (0 if none). Records
 * are written in order and a sync covers everything before its end, so
 * anything after a hole the kernel never wrote was never reported durable: a
 * tail (nothing valid follows) or a hole (a zeroed header, or a zeroed page
 * before the next valid record) may be cut. A damaged record with valid
 * records after it and no hole is a flipped bit in acknowledged data: refuse. */
static int judge_tail(struct wal *w, const struct segfile *s, size_t off, const char *why,
                      size_t *next, struct util_err *err) {
    *next = valid_record_after(s->map, s->size, off);
    if (*next && strcmp(why, "zeroed space") != 0 && !has_zero_page(s->map, off, *next))
        return util_errorf(err, -EBADMSG,
                           "wal: %s/%s: corrupt record at byte offset %zu (%s), followed by a "
                           "valid record at byte offset %zu, so it is not a torn write; "
                           "refusing to start (restore this member from a peer or a backup)",
                           w->dir, s->name, off, why, *next);
    return 0;
}

/* Applies the records of one call, [from, to), all known valid. */
static int apply_call(struct wal *w, struct replay *rp, const struct segfile *s, size_t from,
                      size_t to, struct util_err *err) {
    while (from < to) {
        struct wal_rec r;
        const char *why = wal_rec_decode(s->map + from, s->size - from, &r);
        assert(why == NULL);
        int rc = apply(rp, &r, &why);
        if (rc == -ENOMEM)
            return util_errorf(err, rc, "wal: out of memory reading %s/%s", w->dir, s->name);
        if (rc < 0)
            return util_errorf(err, rc, "wal: %s/%s: byte offset %zu: %s; refusing to start",
                               w->dir, s->name, from, why);
        from += r.size;
    }
    return 0;
}

/* Reads the records of one segment into rp, a call at a time (a call's
 * records count once its last one is there). For the last segment *end gets
 * the offset where the last whole call ends, and *dirty whether anything but
 * zeros follows it (to be cut). */
static int replay_segment(struct wal *w, struct replay *rp, const struct segfile *s, int first,
                          int last, size_t *end, int *dirty, struct util_err *err) {
    struct wal_seg_hdr h;
    const char *why = wal_seg_hdr_decode(s->map, s->size, &h);
    if (!why && (h.seq != s->seq || h.first_index != s->first))
        why = "header does not match the file name";
    if (why)
        return util_errorf(err, -EBADMSG, "wal: %s/%s: byte offset 0: %s; refusing to start",
                           w->dir, s->name, why);
    if (first) {
        rp->ls = h.ls;
    } else if (memcmp(&h.ls, &rp->ls, sizeof(h.ls)) != 0) {
        return util_errorf(err, -EBADMSG,
                           "wal: %s/%s: byte offset 0: the header does not continue the "
                           "previous segment (records are missing at its end); refusing to start",
                           w->dir, s->name);
    }
    size_t off = WAL_SEG_HDR_SIZE, call = off, next = 0;
    int rc;
    while (off < s->size) {
        struct wal_rec r;
        if ((why = wal_rec_decode(s->map + off, s->size - off, &r)) != NULL)
            break;
        off += r.size;
        if (r.flags & WAL_REC_F_END) {
            if ((rc = apply_call(w, rp, s, call, off, err)) < 0)
                return rc;
            call = off;
        }
    }
    if (!last) {
        if (why)
            return util_errorf(err, -EBADMSG,
                               "wal: %s/%s: corrupt record at byte offset %zu (%s) in a "
                               "segment that is not the last; refusing to start",
                               w->dir, s->name, off, why);
        if (call != off)
            return util_errorf(err, -EBADMSG,
                               "wal: %s/%s: byte offset %zu: the segment ends inside a call, in "
                               "a segment that is not the last; refusing to start",
                               w->dir, s->name, call);
        return 0;
    }
    if (why && !all_zero(s->map, off, s->size) && (rc = judge_tail(w, s, off, why, &next, err)) < 0)
        return rc;
    *end = call;
    *dirty = !all_zero(s->map, call, s->size);
    if (*dirty) {
        const char *reason = call < off ? "unfinished call" : why;
        assert(reason); /* bytes after the last call, yet every record whole: impossible */
        LOG_WARN(w->log, "wal: truncating a torn tail", LOG_STR("dir", w->dir),
                 LOG_STR("file", s->name), LOG_UINT("offset", call),
                 LOG_UINT("bytes", s->size - call), LOG_STR("reason", reason),
                 LOG_BOOL("valid_records_after_hole", next != 0));
    }
    return 0;
}

/* Copies the surviving entries' data out of the mapped files into rec. */
static int fill_recovery(struct wal *w, const struct replay *rp, struct wal_recovery *rec,
                         struct util_err *err) {
    size_t total = 0;
    memset(rec, 0, sizeof(*rec));
    if (rp->ls.last > rp->ls.snap.index && (rp->n == 0 || rp->lo != rp->ls.snap.index + 1))
        return util_errorf(err, -EBADMSG,
                           "wal: %s: entries %llu to %llu are missing (a segment was deleted or "
                           "lost); refusing to start",
                           w->dir, (unsigned long long)rp->ls.snap.index + 1,
                           (unsigned long long)(rp->n ? rp->lo - 1 : rp->ls.last));
    for (size_t i = 0; i < rp->n; i++)
        total += rp->ents[i].len;
    if (rp->n) {
        rec->entries = malloc(rp->n * sizeof(*rec->entries));
        rec->mem = malloc(total ? total : 1);
        if (!rec->entries || !rec->mem) {
            wal_recovery_free(rec);
            return util_errorf(err, -ENOMEM, "wal: out of memory recovering %s", w->dir);
        }
    }
    uint8_t *p = rec->mem;
    for (size_t i = 0; i < rp->n; i++) {
        rec->entries[i] = rp->ents[i];
        if (rp->ents[i].len)
            memcpy(p, rp->ents[i].data, rp->ents[i].len);
        rec->entries[i].data = p;
        p += rp->ents[i].len;
    }
    rec->n_entries = rp->n;
    rec->hard_state = rp->ls.hs;
    rec->snapshot = rp->ls.snap;
    rec->last_index = rp->ls.last;
    rec->last_term = rp->ls.last_term;
    return 0;
}

/* Cuts the last segment at the end of its valid records and preallocates it
 * again, so stale bytes after that point can never be read as records. Then
 * syncs it even when nothing changed: a process that died before its last
 * fdatasync left records that only the page cache holds, and the caller is
 * about to treat everything recovered as stable. */
static int repair_last(struct wal *w, struct segfile *s, size_t end, int cut,
                       struct util_err *err) {
    int rc = 0;
    if (cut && ftruncate(s->fd, (off_t)end) < 0)
        return util_errorf(err, -errno, "wal: cannot truncate %s/%s: %s", w->dir, s->name,
                           strerror(errno));
    if ((cut || s->size < w->segment_size) &&
        (rc = wal_io_fallocate(w, s->fd, w->segment_size)) < 0)
        return util_errorf(err, rc, "wal: cannot preallocate %s/%s: %s", w->dir, s->name,
                           strerror(-rc));
    if ((rc = wal_io_fsync(w, s->fd)) < 0)
        return util_errorf(err, rc, "wal: cannot sync %s/%s: %s", w->dir, s->name, strerror(-rc));
    return 0;
}

static int recover_empty(struct wal *w, struct wal_recovery *rec, struct util_err *err) {
    struct wal_seg_hdr h = {.seq = 0, .first_index = 1};
    int rc = wal_seg_create(w, &h, &w->fd, err);
    if (rc < 0)
        return rc;
    if (wal_segs_push(w, 0, 1) < 0)
        return util_errorf(err, -ENOMEM, "wal: out of memory");
    memset(rec, 0, sizeof(*rec));
    memset(&w->ls, 0, sizeof(w->ls));
    w->off = w->synced_off = w->vseg_off = WAL_SEG_HDR_SIZE;
    w->vseg_seq = 0;
    return 0;
}

int wal_recover(struct wal *w, struct wal_recovery *rec, struct util_err *err) {
    struct segfile *segs = NULL;
    size_t n = 0, end = 0;
    struct replay rp = {0};
    int rc, cut = 0;

    if ((rc = list_segments(w, &segs, &n, err)) < 0)
        return rc;
    if (n == 0) {
        free(segs);
        return recover_empty(w, rec, err);
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = map_segment(w, &segs[i], i == n - 1, err)) < 0)
            goto err;
        if ((rc = replay_segment(w, &rp, &segs[i], i == 0, i == n - 1, &end, &cut, err)) < 0)
            goto err;
        if ((rc = wal_segs_push(w, segs[i].seq, segs[i].first)) < 0) {
            rc = util_errorf(err, rc, "wal: out of memory");
            goto err;
        }
    }
    if ((rc = fill_recovery(w, &rp, rec, err)) < 0)
        goto err;

    struct segfile *last = &segs[n - 1];
    for (size_t i = 0; i < n; i++) {
        if (segs[i].map)
            munmap(segs[i].map, segs[i].size);
        segs[i].map = NULL;
    }
    if ((rc = repair_last(w, last, end, cut, err)) < 0) {
        wal_recovery_free(rec);
        goto err;
    }
    w->ls = rp.ls;
    w->fd = last->fd;
    last->fd = -1;
    w->off = w->synced_off = w->vseg_off = end;
    w->vseg_seq = last->seq;
    rc = 0;

err:
    for (size_t i = 0; i < n; i++) {
        if (segs[i].map)
            munmap(segs[i].map, segs[i].size);
        if (segs[i].fd >= 0)
            close(segs[i].fd);
    }
    free(segs);
    free(rp.ents);
    return rc;
}
