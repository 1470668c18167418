/* wal: quoin's write-ahead log — the durability source of a raft node.
 *
 * The log holds three kinds of records: raft log entries (index, term, type and
 * opaque data), the raft hard state (term, vote, commit) and snapshot markers
 * (index, term). Records go into append-only, preallocated segment files in one
 * directory; each record carries a CRC32C. docs/storage.md ("WAL") describes
 * the formats, the durability argument and the recovery steps.
 *
 * Life of a handle:
 *
 *   wal_open()          recovers the directory (repairing a torn tail) and hands
 *                       back hard state, last snapshot marker and the entries
 *                       after it; starts the wal thread.
 *   wal_append()        queues entries and/or a hard state; returns at once with
 *   wal_save_snapshot() a sequence number (seq). Never touches the disk.
 *   wal_durable()       says which seq (and so which log index) is on disk; the
 *   wal_event_fd()      eventfd becomes readable whenever that advances, and an
 *   on_durable          optional callback runs on the wal thread.
 *   wal_release_to()    deletes segments a durable snapshot covers.
 *   wal_close()         flushes what is queued, stops the thread, frees.
 *
 * A raft node's loop, with the WAL:
 *
 *   wal_open(dir, &opts, &w, &rec, &err);        restore raft from rec
 *   on each Ready:
 *     if (ready has a snapshot)  wal_save_snapshot(w, &snap, mode, NULL);
 *     wal_append(w, ready.entries, n, hard_state_changed ? &hs : NULL, &seq);
 *     send the messages that need not wait for the disk (a leader's appends
 *     to its followers); hold the others (acknowledgements, votes) under seq
 *   when wal_event_fd(w) is readable: read it, wal_durable(w, &d); everything
 *     appended with seq <= d.seq is stable: send the messages held under those
 *     seqs and tell raft its log is stable up to (d.index, d.term)
 *   after a snapshot is durable in the state machine and in the WAL:
 *     wal_release_to(w, snapshot index);
 *   on -EAGAIN: stop taking proposals until the eventfd fires, then retry.
 *
 * Group commit: one wal thread takes everything queued, writes it with as few
 * write(2) calls as the segment boundaries allow, then runs one fdatasync(2).
 * Whatever is queued while that fdatasync runs goes into the next one. Appending
 * is a copy into a bounded in-memory queue under a mutex; CRCs are computed on
 * the wal thread.
 *
 * Threading contract:
 *   - wal_append, wal_save_snapshot, wal_durable, wal_event_fd, wal_wait and
 *     wal_release_to may be called from any threads, concurrently. The records
 *     of one call are queued contiguously and the call gets one seq; seqs are
 *     1, 2, 3... (from each wal_open) in the order the calls took the queue
 *     lock. The queue lock is never held across I/O: besides wal_open, only
 *     wal_wait and wal_close wait for the disk.
 *   - Log validity (indices, see wal_append) is checked against the order in
 *     which calls take the lock, so concurrent appenders that choose indices
 *     must serialise that choice themselves (a raft node has one appender).
 *   - wal_open and wal_close must not race with any other call on the handle.
 *   - The on_durable callback runs on the wal thread with no lock held. It may
 *     call wal_append, wal_save_snapshot, wal_durable and wal_release_to, but
 *     not wal_wait (it would wait for itself) nor wal_close, and it should return
 *     quickly: the next fdatasync waits for it.
 *
 * Durability contract: when wal_durable() reports seq S, every call that
 * returned a seq <= S is on stable storage, and nothing from a later call is
 * reported durable. Each call is atomic across crashes: recovery applies a
 * call's records only when all of them reached the disk, so a crash leaves
 * whole calls, in order (a Ready's entries and hard state together). A failed
 * write, fdatasync or fallocate is never retried (after a failed fdatasync the
 * page cache may hold unwritten pages that look clean): the handle turns
 * failed, the durable seq stops, every later call returns the error, and the
 * caller must wal_close and wal_open again, which recovers every call that
 * was reported durable.
 */
#ifndef QUOIN_WAL_H
#define QUOIN_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "util/util.h"

typedef struct wal wal_t;

/* Largest data of one entry. */
#define WAL_MAX_ENTRY_DATA (64u << 20)

/* One raft log entry. The WAL never looks inside `type` or `data`. */
struct wal_entry {
    uint64_t index;
    uint64_t term;
    uint32_t type;
    uint32_t len;     /* bytes in data, at most WAL_MAX_ENTRY_DATA */
    const void *data; /* may be NULL when len is 0 */
};

struct wal_hard_state {
    uint64_t term;
    uint64_t vote;
    uint64_t commit;
};

/* A snapshot the node has made or installed: it covers the log up to `index`. */
struct wal_snapshot {
    uint64_t index;
    uint64_t term;
};

/* What wal_save_snapshot does to the entries after the snapshot index. Raft
 * keeps them when its own log has the snapshot's last entry (it compacted its
 * log, or a snapshot it received matches its log) and discards them otherwise
 * (a snapshot it received replaces a log that conflicts with it). */
enum wal_snapshot_mode {
    WAL_SNAPSHOT_KEEP_LOG = 0,
    WAL_SNAPSHOT_DISCARD_LOG = 1,
};

/* Where durability stands. `seq` is the highest seq on disk; `index`/`term`
 * are those of the last entry of the log as of that seq (the snapshot's when
 * the log has no entry after it; this index can go down when a later call
 * overwrote a suffix); `snapshot_index` is the newest snapshot marker on disk;
 * `error` is 0, or the negative code that failed the handle. */
struct wal_durable {
    uint64_t seq;
    uint64_t index;
    uint64_t term;
    uint64_t snapshot_index;
    int error;
};

typedef void (*wal_durable_cb)(void *arg, const struct wal_durable *d);

#ifdef QUOIN_TESTING
/* Test-only fault injection, SQLite style: the nth call (1-based, counted from
 * wal_open, or from wal_test_set_fault) of one operation fails. The wal's
 * directory fsyncs count as WAL_FAULT_FDATASYNC. WAL_FAULT_SHORT makes a
 * write(2) write half of what it was asked (the WAL must carry on);
 * WAL_FAULT_CRASH makes it write part of it and then kills the process with
 * SIGKILL, leaving the torn write a crash would. On fdatasync and fallocate
 * both act as WAL_FAULT_EIO. */
enum wal_fault_op { WAL_FAULT_NONE, WAL_FAULT_WRITE, WAL_FAULT_FDATASYNC, WAL_FAULT_FALLOCATE };
enum wal_fault_kind { WAL_FAULT_ENOSPC, WAL_FAULT_EIO, WAL_FAULT_SHORT, WAL_FAULT_CRASH };
struct wal_fault {
    enum wal_fault_op op;
    unsigned nth;
    enum wal_fault_kind kind;
};
#endif

/* Options of wal_open. Zeroed fields take the defaults. */
struct wal_options {
    uint64_t segment_size; /* preallocated bytes per segment; default 64 MiB, min 4 KiB */
    /* Bytes of encoded records that may wait for the wal thread (as many again
     * may be in flight); default 16 MiB. */
    size_t queue_size;
    wal_durable_cb on_durable; /* optional, see the threading contract */
    void *cb_arg;
    log_t *log; /* repairs and failures are logged here; NULL = silent */
    /* Do not keep the next segment preallocated in advance (by a second
     * thread, in a file named spare.wal.tmp): saves that disk space, but a
     * roll-over then stalls durability while a segment file is made. */
    int no_spare;
#ifdef QUOIN_TESTING
    struct wal_fault fault;
    /* Power-cut simulation (tests/chaos): after every fdatasync that made
     * the active segment durable, this file is rewritten to hold one line,
     * "<segment file name> <durable bytes of it>". A harness that kills the
     * process can cut the log back there, as a power loss would. */
    const char *test_sync_mark;
    /* A deliberate bug (QUOIN_BUG=ack-before-fsync): batches are reported
     * durable once written, and fdatasync runs at most once a second. */
    int test_lazy_sync;
#endif
};

/* What wal_open found: the last hard state (zeros if none), the newest snapshot
 * marker (zeros if none) and the entries after it, in index order with no gap,
 * starting at snapshot.index + 1. Entry data points into memory the recovery
 * owns until wal_recovery_free. `last_index`/`last_term` describe the end of
 * the log (the snapshot's when there are no entries). */
struct wal_recovery {
    struct wal_hard_state hard_state;
    struct wal_snapshot snapshot;
    struct wal_entry *entries;
    size_t n_entries;
    uint64_t last_index;
    uint64_t last_term;
    void *mem;
};

/* Opens (creating if missing, mode 0700) the log in `dir` and recovers it:
 * a torn or corrupt tail of the last segment (a partial record, a bad checksum
 * after the last good record, zeroed preallocated space) is truncated and
 * logged as a warning; a bad record anywhere else, a bad segment header or a
 * missing segment refuses to open, and err names the file and byte offset.
 * Takes an exclusive lock on the directory. opts may be NULL. On success
 * fills *rec (free with wal_recovery_free) and *out.
 * Returns 0, -EBADMSG (corrupt log, err says where), -EWOULDBLOCK (another
 * process holds the log), -ENOMEM, or the negative errno of a failed system
 * call; err is filled on every failure. */
int wal_open(const char *dir, const struct wal_options *opts, wal_t **out, struct wal_recovery *rec,
             struct util_err *err);

/* Frees what rec holds and zeroes it (safe on a zeroed rec, or NULL). */
void wal_recovery_free(struct wal_recovery *rec);

/* Whether dir holds a log (at least one segment): how a node tells its first
 * start from a restart before wal_open creates one. Returns 1, 0 (also when
 * dir does not exist), or the negative errno of failing to read dir. */
int wal_exists(const char *dir);

/* Queues n entries (which may be 0) and, if hs is not NULL, a hard state to be
 * written after them; *seq (may be NULL) receives the call's seq. Entries must
 * have consecutive indices, the first one in (snapshot index, last index + 1]:
 * a first index at or below the last index overwrites the log from there on
 * (raft's conflicting suffix). Data is copied; the caller keeps ownership.
 * Never blocks on the disk. A call with no entries and no hard state still
 * gets a seq (a barrier: durable when everything before it is).
 * Returns 0; -EINVAL (bad index, bad argument); -EMSGSIZE (the call is larger
 * than the whole queue); -EAGAIN (the queue is full: nothing was queued; wait
 * for durability to advance and retry); -ENOMEM; or the error that failed the
 * handle (-EIO, -ENOSPC, ...). */
int wal_append(wal_t *w, const struct wal_entry *ents, size_t n, const struct wal_hard_state *hs,
               uint64_t *seq);

/* Queues a snapshot marker. Its index may not go below the previous marker's.
 * With WAL_SNAPSHOT_KEEP_LOG, entries after snap->index stay (if the log ends
 * before it, the log now ends at the snapshot); with WAL_SNAPSHOT_DISCARD_LOG
 * the log ends at the snapshot. Return codes as wal_append. */
int wal_save_snapshot(wal_t *w, const struct wal_snapshot *snap, enum wal_snapshot_mode mode,
                      uint64_t *seq);

/* Copies where durability stands. Never blocks on the disk. */
void wal_durable(wal_t *w, struct wal_durable *out);

/* An eventfd (EFD_NONBLOCK) that becomes readable when wal_durable() changes
 * (durability advanced, or the handle failed). Read 8 bytes from it to reset
 * it, then call wal_durable. Owned by the handle; valid until wal_close. */
int wal_event_fd(const wal_t *w);

/* Blocks until seq is durable. Returns 0, -EINVAL (seq was never issued), or
 * the error that failed the handle (then seq may never become durable). */
int wal_wait(wal_t *w, uint64_t seq);

/* Asks the wal thread to delete the segments that hold nothing after `index`:
 * every segment whose successor starts at or below index + 1. The segment being
 * written is never deleted. index must not exceed the newest durable snapshot
 * marker (wal_durable().snapshot_index), else -EINVAL: recovery needs that
 * marker to skip what was deleted. The deletion happens on the wal thread soon
 * after (before wal_close returns); failures there are logged, never fatal.
 * Returns 0, -EINVAL, or the error that failed the handle. */
int wal_release_to(wal_t *w, uint64_t index);

/* Writes and syncs everything queued, finishes any pending release, stops the
 * wal thread, closes the files and frees the handle. Returns 0 if everything
 * queued became durable, else the error that failed the handle. NULL is a
 * no-op returning 0. */
int wal_close(wal_t *w);

#ifdef QUOIN_TESTING
/* Arms a fault counted from now (replaces any armed one). */
void wal_test_set_fault(wal_t *w, const struct wal_fault *f);
/* How many calls of op were made since wal_open or wal_test_set_fault. */
unsigned wal_test_calls(wal_t *w, enum wal_fault_op op);
#endif

#endif
