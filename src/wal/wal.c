/* wal: the handle, the append path, the group-commit thread and the spare
 * thread.
 *
 * Callers encode records into `pending` under the mutex (a copy, no system
 * call) and decide there where segments roll over, since the sizes are known
 * then: each roll point carries the header of the next segment. The wal thread
 * swaps `pending` with `writing`, seals the records' CRCs, writes them, runs
 * one fdatasync and publishes the new durable position. The spare thread keeps
 * the next segment's file preallocated, so a roll-over is cheap. */
#include "wal/wal_int.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* Grows a queue buffer so `need` more bytes fit; the caller has checked the
 * bound, so capacity never exceeds `limit`. */
static int batch_reserve(struct wal_batch *b, size_t need, size_t limit) {
    if (b->len + need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64 * 1024;
    while (cap < b->len + need)
        cap *= 2;
    if (cap > limit)
        cap = limit;
    assert(b->len + need <= cap);
    uint8_t *p = realloc(b->buf, cap);
    if (!p)
        return -ENOMEM;
    b->buf = p;
    b->cap = cap;
    return 0;
}

static void batch_free(struct wal_batch *b) {
    free(b->buf);
    free(b->rolls);
}

/* Reserves room for a call's `size` bytes of records at the queue's virtual
 * position, adding a roll point first when they would overflow a non-empty
 * segment: a call never spans two segments (one larger than a whole segment
 * gets a segment of its own). Called with mu held. */
static int place(struct wal *w, size_t size) {
    if (w->vseg_off > WAL_SEG_HDR_SIZE && w->vseg_off + size > w->segment_size) {
        struct wal_batch *b = &w->pending;
        if (wal_grow(&b->rolls, &b->cap_rolls, b->n_rolls, sizeof(*b->rolls)) < 0)
            return -ENOMEM;
        b->rolls[b->n_rolls++] = (struct wal_roll){
            .off = b->len,
            .hdr = {.seq = w->vseg_seq + 1, .first_index = w->ls.last + 1, .ls = w->ls},
        };
        w->vseg_seq++;
        w->vseg_off = WAL_SEG_HDR_SIZE;
    }
    w->vseg_off += size;
    return 0;
}

/* Checks that a call of `need` bytes can be queued, makes room for it and
 * places it. Called with mu held; changes nothing when it fails. */
static int queue_begin(struct wal *w, size_t need) {
    if (w->durable.error)
        return w->durable.error;
    if (need > w->queue_size)
        return -EMSGSIZE;
    if (w->pending.len + need > w->queue_size)
        return -EAGAIN;
    if (batch_reserve(&w->pending, need, w->queue_size) < 0)
        return -ENOMEM;
    return need ? place(w, need) : 0;
}

/* Gives the queued call its seq and wakes the wal thread. Called with mu held. */
static void queue_commit(struct wal *w, uint64_t *seq) {
    w->next_seq++;
    w->pending.end = (struct wal_durable){
        .seq = w->next_seq,
        .index = w->ls.last,
        .term = w->ls.last_term,
        .snapshot_index = w->ls.snap.index,
    };
    if (seq)
        *seq = w->next_seq;
    pthread_cond_signal(&w->work_cv);
}

int wal_append(wal_t *w, const struct wal_entry *ents, size_t n, const struct wal_hard_state *hs,
               uint64_t *seq) {
    size_t need = hs ? wal_rec_size(WAL_HARDSTATE_SIZE) : 0, last = 0;
    int rc;

    if (n && !ents)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        const struct wal_entry *e = &ents[i];
        if (e->len > WAL_MAX_ENTRY_DATA || (e->len && !e->data) || e->index != ents[0].index + i)
            return -EINVAL;
        need += wal_rec_size(WAL_ENTRY_FIXED + (size_t)e->len);
    }
    pthread_mutex_lock(&w->mu);
    if (n && wal_ls_check_entries(&w->ls, ents[0].index) < 0) {
        rc = -EINVAL;
        goto out;
    }
    if ((rc = queue_begin(w, need)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        last = w->pending.len;
        w->pending.len += wal_enc_entry(w->pending.buf + last, &ents[i]);
        wal_ls_entry(&w->ls, ents[i].index, ents[i].term);
    }
    if (hs) {
        last = w->pending.len;
        w->pending.len += wal_enc_hardstate(w->pending.buf + last, hs);
        w->ls.hs = *hs;
    }
    if (need)
        wal_rec_mark_end(w->pending.buf + last);
    queue_commit(w, seq);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int wal_save_snapshot(wal_t *w, const struct wal_snapshot *snap, enum wal_snapshot_mode mode,
                      uint64_t *seq) {
    size_t need = wal_rec_size(WAL_SNAPSHOT_SIZE);
    int rc;

    if (!snap)
        return -EINVAL;
    pthread_mutex_lock(&w->mu);
    if (wal_ls_check_snapshot(&w->ls, snap, (uint32_t)mode) < 0) {
        rc = -EINVAL;
        goto out;
    }
    if ((rc = queue_begin(w, need)) < 0)
        goto out;
    uint8_t *rec = w->pending.buf + w->pending.len;
    w->pending.len += wal_enc_snapshot(rec, snap, (uint32_t)mode);
    wal_rec_mark_end(rec);
    wal_ls_snapshot(&w->ls, snap, (uint32_t)mode);
    queue_commit(w, seq);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void wal_durable(wal_t *w, struct wal_durable *out) {
    pthread_mutex_lock(&w->mu);
    *out = w->durable;
    pthread_mutex_unlock(&w->mu);
}

int wal_event_fd(const wal_t *w) {
    return w->evfd;
}

int wal_wait(wal_t *w, uint64_t seq) {
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    if (seq > w->next_seq)
        rc = -EINVAL;
    while (!rc && w->durable.seq < seq && !w->durable.error)
        pthread_cond_wait(&w->done_cv, &w->mu);
    if (!rc && w->durable.seq < seq)
        rc = w->durable.error;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int wal_release_to(wal_t *w, uint64_t index) {
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    if (w->durable.error) {
        rc = w->durable.error;
    } else if (index > w->durable.snapshot_index) {
        rc = -EINVAL;
    } else if (index > w->release_req) {
        w->release_req = index;
        pthread_cond_signal(&w->work_cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static void seg_path_name(const struct wal_seg *s, char *name) {
    wal_seg_name(name, s->seq, s->first_index);
}

#ifdef QUOIN_TESTING
/* Records where the log is durable for the chaos harness's power cut (see
 * wal_options.test_sync_mark): the active segment holds `off` synced bytes.
 * The harness reads the file only after killing the process, so a plain
 * rewrite is enough. */
static void test_mark_synced(struct wal *w, uint64_t off) {
    if (w->mark_fd < 0 || w->n_segs == 0)
        return;
    char name[WAL_NAME_MAX], line[WAL_NAME_MAX + 32];
    seg_path_name(&w->segs[w->n_segs - 1], name);
    int n = snprintf(line, sizeof(line), "%s %llu\n", name, (unsigned long long)off);
    if (pwrite(w->mark_fd, line, (size_t)n, 0) != n || ftruncate(w->mark_fd, n) < 0)
        LOG_WARN(w->log, "wal: cannot write the sync mark", LOG_STR("error", strerror(errno)));
    w->last_sync_ns = util_now_mono_ns();
}
#endif

/* Makes the segment described by h from the spare file if one is ready (a
 * header write and a rename), else from scratch. */
static int new_segment(struct wal *w, const struct wal_seg_hdr *h, int *fd, struct util_err *err) {
    int rc, spare = -1;
    pthread_mutex_lock(&w->mu);
    if (w->spare_state == SPARE_READY) {
        spare = w->spare_fd;
        w->spare_fd = -1;
        w->spare_state = SPARE_TAKEN;
    }
    pthread_mutex_unlock(&w->mu);
    if (spare >= 0) {
        rc = wal_seg_install(w, spare, WAL_SPARE_NAME, h, err);
        *fd = rc == 0 ? spare : -1;
    } else {
        rc = wal_seg_create(w, h, fd, err);
    }
    /* The spare's name is free again (renamed, or removed on failure). */
    pthread_mutex_lock(&w->mu);
    if (w->spare_state == SPARE_TAKEN || w->spare_state == SPARE_FAILED) {
        w->spare_state = SPARE_NONE;
        pthread_cond_signal(&w->spare_cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* The spare thread: keeps one preallocated file ready for the next segment,
 * so that a roll-over does not stall durability for a file creation (several
 * milliseconds for 64 MiB, tens on a busy disk). A failure here only costs
 * the wal thread making the segment itself. */
static void *spare_thread(void *arg) {
    struct wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stopping && w->spare_state != SPARE_NONE)
            pthread_cond_wait(&w->spare_cv, &w->mu);
        if (w->stopping)
            break;
        w->spare_state = SPARE_MAKING;
        pthread_mutex_unlock(&w->mu);
        struct util_err err;
        int fd = -1, rc = wal_seg_prepare(w, WAL_SPARE_NAME, &fd, &err);
        if (rc == 0 && (rc = wal_io_fdatasync(w, fd)) < 0) {
            close(fd);
            unlinkat(w->dirfd, WAL_SPARE_NAME, 0);
            util_errorf(&err, rc, "wal: cannot sync %s/%s: %s", w->dir, WAL_SPARE_NAME,
                        strerror(-rc));
        }
        if (rc < 0)
            LOG_WARN(w->log, "wal: cannot prepare the next segment", LOG_STR("error", err.msg));
        pthread_mutex_lock(&w->mu);
        w->spare_fd = fd;
        w->spare_state = rc == 0 ? SPARE_READY : SPARE_FAILED;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Starts the next segment: the current one is synced and cut to its length
 * first (so a segment that is not the last is entirely records), then the new
 * one is created. */
static int roll(struct wal *w, const struct wal_seg_hdr *h) {
    struct util_err err;
    int rc, fd;
    if ((rc = wal_io_fdatasync(w, w->fd)) < 0)
        return rc;
    if (ftruncate(w->fd, (off_t)w->off) < 0)
        return -errno;
    if ((rc = wal_io_fsync(w, w->fd)) < 0)
        return rc;
    /* Listed before it exists, so a failure below is undone by rollback. */
    if ((rc = wal_segs_push(w, h->seq, h->first_index)) < 0)
        return rc;
    if ((rc = new_segment(w, h, &fd, &err)) < 0) {
        LOG_ERROR(w->log, "wal: cannot start a segment", LOG_STR("error", err.msg));
        return rc;
    }
    close(w->fd);
    w->fd = fd;
    w->off = WAL_SEG_HDR_SIZE;
#ifdef QUOIN_TESTING
    test_mark_synced(w, w->off);
#endif
    return 0;
}

/* After a failed flush: takes the files back to the last durable point, so a
 * reopen finds exactly what was reported durable. Best effort: if this fails
 * too, a reopen may also find whole records that were never reported. */
static void rollback(struct wal *w, size_t seg0) {
    char name[WAL_NAME_MAX];
    close(w->fd);
    w->fd = -1;
    while (w->n_segs > seg0 + 1) {
        seg_path_name(&w->segs[--w->n_segs], name);
        if (unlinkat(w->dirfd, name, 0) < 0 && errno != ENOENT)
            LOG_ERROR(w->log, "wal: cannot remove an unsynced segment", LOG_STR("dir", w->dir),
                      LOG_STR("file", name), LOG_STR("error", strerror(errno)));
    }
    seg_path_name(&w->segs[seg0], name);
    int fd = openat(w->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)w->synced_off) < 0 || fsync(fd) < 0 || fsync(w->dirfd) < 0)
        LOG_ERROR(w->log, "wal: cannot cut the log back to its durable end", LOG_STR("dir", w->dir),
                  LOG_STR("file", name), LOG_STR("error", strerror(errno)));
    if (fd >= 0)
        close(fd);
}

static int write_out(struct wal *w, const uint8_t *p, size_t n) {
    if (n == 0)
        return 0;
    int rc = wal_io_pwrite(w, w->fd, p, n, w->off);
    if (rc == 0)
        w->off += n;
    return rc;
}

/* etcd's threshold for its "slow fdatasync" warning. A sync that long holds
 * the raft loop (it waits for each Ready to be durable), so a leader sends no
 * heartbeat meanwhile: the log line explains the election that follows. */
#define WAL_SLOW_SYNC_NS 1000000000ull

static int sync_timed(struct wal *w) {
    uint64_t start = util_now_mono_ns();
    int rc = wal_io_fdatasync(w, w->fd);
    uint64_t took = util_now_mono_ns() - start;
    if (took > WAL_SLOW_SYNC_NS)
        LOG_WARN(w->log, "slow fdatasync", LOG_DOUBLE("took-seconds", (double)took / 1e9),
                 LOG_STR("expected-duration", "1s"), LOG_STR("dir", w->dir));
    return rc;
}

/* Writes one batch and makes it durable: a write per segment it touches and
 * one fdatasync at the end. */
static int flush(struct wal *w, struct wal_batch *b) {
    size_t seg0 = w->n_segs - 1, start = 0;
    int rc = 0;

    wal_seal(b->buf, b->len);
    for (size_t i = 0; i < b->n_rolls && rc == 0; i++) {
        if ((rc = write_out(w, b->buf + start, b->rolls[i].off - start)) == 0)
            rc = roll(w, &b->rolls[i].hdr);
        start = b->rolls[i].off;
    }
    if (rc == 0)
        rc = write_out(w, b->buf + start, b->len - start);
#ifdef QUOIN_TESTING
    /* The ack-before-fsync bug: skip the sync unless a second has passed. */
    bool lazy = w->lazy_sync && util_now_mono_ns() - w->last_sync_ns < 1000000000ull;
    if (rc == 0 && b->len > 0 && !lazy && (rc = sync_timed(w)) == 0)
        test_mark_synced(w, w->off);
#else
    if (rc == 0 && b->len > 0)
        rc = sync_timed(w);
#endif
    if (rc < 0) {
        LOG_ERROR(w->log, "wal: write failed; the log is read-only until reopened",
                  LOG_STR("dir", w->dir), LOG_STR("error", strerror(-rc)));
        rollback(w, seg0);
        return rc;
    }
    w->synced_off = w->off;
    return 0;
}

/* Deletes the oldest segments that hold nothing after `index`, oldest first,
 * so a failure can only leave a shorter prefix, never a gap. */
static void release(struct wal *w, uint64_t index) {
    char name[WAL_NAME_MAX];
    size_t k = 0;
    while (k + 1 < w->n_segs && w->segs[k + 1].first_index <= index + 1) {
        seg_path_name(&w->segs[k], name);
        if (unlinkat(w->dirfd, name, 0) < 0) {
            LOG_WARN(w->log, "wal: cannot remove a released segment", LOG_STR("dir", w->dir),
                     LOG_STR("file", name), LOG_STR("error", strerror(errno)));
            break;
        }
        k++;
    }
    if (k == 0)
        return;
    memmove(w->segs, w->segs + k, (w->n_segs - k) * sizeof(*w->segs));
    w->n_segs -= k;
    int rc = wal_io_fsync(w, w->dirfd);
    LOG_INFO(w->log, "wal: released segments", LOG_STR("dir", w->dir), LOG_UINT("count", k),
             LOG_UINT("index", index), LOG_INT("sync", rc));
}

static void notify(struct wal *w, const struct wal_durable *d) {
    uint64_t one = 1;
    ssize_t r = write(w->evfd, &one, sizeof(one));
    (void)r; /* EAGAIN means the counter is already non-zero: still readable */
    if (w->on_durable)
        w->on_durable(w->cb_arg, d);
}

static int has_work(const struct wal *w) {
    if (w->stopping)
        return 1;
    if (w->durable.error)
        return 0;
    return w->pending.end.seq > w->durable.seq || w->release_req > w->released;
}

static void *wal_thread(void *arg) {
    struct wal *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!has_work(w))
            pthread_cond_wait(&w->work_cv, &w->mu);
        if (!w->durable.error && w->pending.end.seq > w->durable.seq) {
            struct wal_batch t = w->writing;
            w->writing = w->pending;
            w->pending = t;
            w->pending.len = 0;
            w->pending.n_rolls = 0;
            pthread_mutex_unlock(&w->mu);
            int rc = flush(w, &w->writing);
            pthread_mutex_lock(&w->mu);
            if (rc < 0)
                w->durable.error = rc;
            else
                w->durable = w->writing.end;
            struct wal_durable d = w->durable;
            pthread_mutex_unlock(&w->mu);
            /* Woken outside the lock, so waiters do not wake only to block on it. */
            pthread_cond_broadcast(&w->done_cv);
            notify(w, &d);
            pthread_mutex_lock(&w->mu);
        } else if (!w->durable.error && w->release_req > w->released) {
            uint64_t index = w->release_req;
            pthread_mutex_unlock(&w->mu);
            release(w, index);
            pthread_mutex_lock(&w->mu);
            w->released = index;
        } else if (w->stopping) {
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Stops the threads that were started (wal_close and failed opens). */
static void stop_threads(struct wal *w, int wal_thread_started) {
    pthread_mutex_lock(&w->mu);
    w->stopping = 1;
    pthread_cond_signal(&w->work_cv);
    pthread_cond_signal(&w->spare_cv);
    pthread_mutex_unlock(&w->mu);
    if (wal_thread_started)
        pthread_join(w->thread, NULL);
    if (w->spare_started)
        pthread_join(w->spare_thread, NULL);
}

static void wal_free(struct wal *w) {
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        unlinkat(w->dirfd, WAL_SPARE_NAME, 0);
    }
    if (w->fd >= 0)
        close(w->fd);
    if (w->evfd >= 0)
        close(w->evfd);
#ifdef QUOIN_TESTING
    if (w->mark_fd >= 0)
        close(w->mark_fd);
#endif
    if (w->lockfd >= 0)
        close(w->lockfd);
    if (w->dirfd >= 0)
        close(w->dirfd);
    batch_free(&w->pending);
    batch_free(&w->writing);
    free(w->segs);
    free(w->dir);
    pthread_cond_destroy(&w->spare_cv);
    pthread_cond_destroy(&w->done_cv);
    pthread_cond_destroy(&w->work_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* Makes a new directory's own name durable: segments synced inside a
 * directory whose entry is lost would be lost with it. */
static int sync_parent(struct wal *w, const char *dir) {
    char *copy = strdup(dir);
    if (!copy)
        return -ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -errno;
    int rc = wal_io_fsync(w, fd);
    close(fd);
    return rc;
}

int wal_open(const char *dir, const struct wal_options *opts, wal_t **out, struct wal_recovery *rec,
             struct util_err *err) {
    static const struct wal_options defaults;
    struct wal *w;
    int rc;

    memset(rec, 0, sizeof(*rec));
    *out = NULL;
    if (!opts)
        opts = &defaults;
    w = calloc(1, sizeof(*w));
    if (!w)
        return util_errorf(err, -ENOMEM, "wal: out of memory");
    w->fd = w->dirfd = w->lockfd = w->evfd = w->spare_fd = -1;
    w->spare_state = opts->no_spare ? SPARE_OFF : SPARE_NONE;
    /* The mutex first: the fault hook of the test build takes it. */
    pthread_cond_t *cvs[] = {&w->work_cv, &w->done_cv, &w->spare_cv};
    size_t ncv = 0;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return util_errorf(err, -ENOMEM, "wal: cannot create a mutex");
    }
    while (ncv < 3 && pthread_cond_init(cvs[ncv], NULL) == 0)
        ncv++;
    if (ncv < 3) {
        while (ncv--)
            pthread_cond_destroy(cvs[ncv]);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return util_errorf(err, -ENOMEM, "wal: cannot create a condition variable");
    }
    w->log = opts->log;
    w->on_durable = opts->on_durable;
    w->cb_arg = opts->cb_arg;
    w->segment_size = opts->segment_size ? opts->segment_size : WAL_DEFAULT_SEGMENT;
    if (w->segment_size < WAL_MIN_SEGMENT)
        w->segment_size = WAL_MIN_SEGMENT;
    w->queue_size = opts->queue_size ? opts->queue_size : WAL_DEFAULT_QUEUE;
#ifdef QUOIN_TESTING
    w->fault = opts->fault;
    w->lazy_sync = opts->test_lazy_sync;
    w->mark_fd = -1;
    if (opts->test_sync_mark &&
        (w->mark_fd = open(opts->test_sync_mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) < 0) {
        rc = util_errorf(err, -errno, "wal: cannot open %s: %s", opts->test_sync_mark,
                         strerror(errno));
        goto err;
    }
#endif
    if (!(w->dir = strdup(dir))) {
        rc = util_errorf(err, -ENOMEM, "wal: out of memory");
        goto err;
    }
    if (mkdir(dir, 0700) == 0) {
        if ((rc = sync_parent(w, dir)) < 0) {
            util_errorf(err, rc, "wal: cannot sync the directory holding %s: %s", dir,
                        strerror(-rc));
            goto err;
        }
    } else if (errno != EEXIST) {
        rc = util_errorf(err, -errno, "wal: cannot create %s: %s", dir, strerror(errno));
        goto err;
    }
    if ((w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = util_errorf(err, -errno, "wal: cannot open %s: %s", dir, strerror(errno));
        goto err;
    }
    w->lockfd = openat(w->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (w->lockfd < 0 || flock(w->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        util_errorf(err, rc, "wal: cannot lock %s/LOCK: %s%s", dir, strerror(errno),
                    rc == -EWOULDBLOCK ? " (another process uses this log)" : "");
        goto err;
    }
    if ((w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        rc = util_errorf(err, -errno, "wal: eventfd: %s", strerror(errno));
        goto err;
    }
    if ((rc = wal_recover(w, rec, err)) < 0)
        goto err;
    w->durable = (struct wal_durable){
        .index = w->ls.last, .term = w->ls.last_term, .snapshot_index = w->ls.snap.index};
#ifdef QUOIN_TESTING
    test_mark_synced(w, w->synced_off);
#endif
    w->pending.end = w->durable;
    if (!opts->no_spare) {
        if ((rc = pthread_create(&w->spare_thread, NULL, spare_thread, w)) != 0) {
            rc = util_errorf(err, -rc, "wal: cannot start a thread: %s", strerror(rc));
            goto err_rec;
        }
        w->spare_started = 1;
    }
    if ((rc = pthread_create(&w->thread, NULL, wal_thread, w)) != 0) {
        rc = util_errorf(err, -rc, "wal: cannot start the wal thread: %s", strerror(rc));
        goto err_rec;
    }
    *out = w;
    return 0;

err_rec:
    stop_threads(w, 0);
    wal_recovery_free(rec);
err:
    wal_free(w);
    return rc;
}

void wal_recovery_free(struct wal_recovery *rec) {
    if (!rec)
        return;
    free(rec->entries);
    free(rec->mem);
    memset(rec, 0, sizeof(*rec));
}

int wal_close(wal_t *w) {
    if (!w)
        return 0;
    stop_threads(w, 1);
    int rc = w->durable.error;
    assert(rc < 0 || w->durable.seq == w->next_seq);
    wal_free(w);
    return rc;
}

#ifdef QUOIN_TESTING
void wal_test_set_fault(wal_t *w, const struct wal_fault *f) {
    pthread_mutex_lock(&w->mu);
    w->fault = *f;
    memset(w->calls, 0, sizeof(w->calls));
    pthread_mutex_unlock(&w->mu);
}

unsigned wal_test_calls(wal_t *w, enum wal_fault_op op) {
    pthread_mutex_lock(&w->mu);
    unsigned n = w->calls[op];
    pthread_mutex_unlock(&w->mu);
    return n;
}
#endif
