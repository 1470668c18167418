/* wal internals shared by the files of src/wal: on-disk formats, the handle,
 * the log-state rules that both appending and recovery apply, and the
 * system-call wrappers that carry the test fault hook. Not for other layers. */
#ifndef QUOIN_WAL_INT_H
#define QUOIN_WAL_INT_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "wal/wal.h"

uint32_t wal_crc32c(uint32_t crc, const void *buf, size_t n);
uint32_t wal_crc32c_portable(uint32_t crc, const void *buf, size_t n);

/* Segment header: a fixed block at offset 0 of every segment. */
#define WAL_MAGIC "QUOINWAL"
#define WAL_VERSION 1u
#define WAL_SEG_HDR_SIZE 128u
#define WAL_DEFAULT_SEGMENT (64ull << 20)
#define WAL_MIN_SEGMENT 4096ull
#define WAL_DEFAULT_QUEUE (16u << 20)

/* Record: crc32c u32 | payload length u32 | type u8 | flags u8 | 2 zero bytes |
 * payload | zeros up to a multiple of 8. The crc covers everything after
 * itself, padding included. WAL_REC_F_END marks the last record of a call:
 * recovery applies a call's records only once that one is there, so a crash
 * leaves whole calls. */
#define WAL_REC_HDR 12u
#define WAL_REC_F_END 1u
#define WAL_REC_ALIGN 8u
enum wal_rec_type {
    WAL_REC_ENTRY = 1,     /* index u64, term u64, type u32, data */
    WAL_REC_HARDSTATE = 2, /* term u64, vote u64, commit u64 */
    WAL_REC_SNAPSHOT = 3,  /* index u64, term u64, mode u32 */
};
#define WAL_ENTRY_FIXED 20u
#define WAL_HARDSTATE_SIZE 24u
#define WAL_SNAPSHOT_SIZE 20u
/* No record is larger than this (an entry of WAL_MAX_ENTRY_DATA bytes). */
#define WAL_MAX_PAYLOAD (WAL_MAX_ENTRY_DATA + WAL_ENTRY_FIXED)

static inline size_t wal_rec_size(size_t payload) {
    return (WAL_REC_HDR + payload + WAL_REC_ALIGN - 1) & ~(size_t)(WAL_REC_ALIGN - 1);
}

/* The state of the log that decides what a record means: recovery rebuilds it
 * record by record, appending keeps it current to validate calls, and each
 * segment header stores it as of the segment's start. */
struct wal_logstate {
    struct wal_hard_state hs;
    struct wal_snapshot snap;
    uint64_t last;      /* index of the last entry (the snapshot's if none after it) */
    uint64_t last_term; /* its term */
};

/* Whether entries starting at index `first` may follow the log, and whether a
 * snapshot marker may (0 or -EINVAL); then what each does to it. */
int wal_ls_check_entries(const struct wal_logstate *ls, uint64_t first);
int wal_ls_check_snapshot(const struct wal_logstate *ls, const struct wal_snapshot *snap,
                          uint32_t mode);
void wal_ls_entry(struct wal_logstate *ls, uint64_t index, uint64_t term);
void wal_ls_snapshot(struct wal_logstate *ls, const struct wal_snapshot *snap, uint32_t mode);

/* Segment header contents. */
struct wal_seg_hdr {
    uint64_t seq;
    uint64_t first_index; /* the log's last index + 1 when the segment began */
    struct wal_logstate ls;
};
void wal_seg_hdr_encode(uint8_t out[WAL_SEG_HDR_SIZE], const struct wal_seg_hdr *h);
/* Returns NULL, or why the header is bad. */
const char *wal_seg_hdr_decode(const uint8_t *p, size_t n, struct wal_seg_hdr *h);

/* Record encoding into dst (wal_rec_size(payload) bytes). The crc is left 0:
 * the wal thread seals records before writing them (wal_seal). */
size_t wal_enc_entry(uint8_t *dst, const struct wal_entry *e);
size_t wal_enc_hardstate(uint8_t *dst, const struct wal_hard_state *hs);
size_t wal_enc_snapshot(uint8_t *dst, const struct wal_snapshot *s, uint32_t mode);
/* Marks the record at rec as the last of its call. */
void wal_rec_mark_end(uint8_t *rec);
/* Fills the crc of every record in buf[0, n). */
void wal_seal(uint8_t *buf, size_t n);

/* One decoded record; payload points into the buffer it came from. */
struct wal_rec {
    uint8_t type;
    uint8_t flags;
    uint32_t len;
    const uint8_t *payload;
    size_t size; /* bytes on disk, padding included */
};
/* Decodes the record at p (n bytes available). Returns NULL, or why it is not
 * a valid record. */
const char *wal_rec_decode(const uint8_t *p, size_t n, struct wal_rec *r);
void wal_rec_entry(const struct wal_rec *r, struct wal_entry *e);
void wal_rec_hardstate(const struct wal_rec *r, struct wal_hard_state *hs);
void wal_rec_snapshot(const struct wal_rec *r, struct wal_snapshot *s, uint32_t *mode);

/* Segment file name for seq/first_index into out (at least WAL_NAME_MAX). */
#define WAL_NAME_MAX 48
void wal_seg_name(char *out, uint64_t seq, uint64_t first_index);
/* Parses a segment file name; 0 or -EINVAL. */
int wal_seg_parse_name(const char *name, uint64_t *seq, uint64_t *first_index);

/* A new segment point inside a queued buffer: the records from `off` on go to
 * a new segment with this header. */
struct wal_roll {
    size_t off;
    struct wal_seg_hdr hdr;
};

/* One side of the double-buffered queue. */
struct wal_batch {
    uint8_t *buf;
    size_t len, cap;
    struct wal_roll *rolls;
    size_t n_rolls, cap_rolls;
    struct wal_durable end; /* durability once this batch is synced */
};

/* The spare file's life: the spare thread makes one when NONE (the name is
 * free); the wal thread takes a READY one and frees the name once it has
 * renamed it; after a FAILED attempt the next roll asks again. */
enum wal_spare_state {
    SPARE_OFF,
    SPARE_NONE,
    SPARE_MAKING,
    SPARE_READY,
    SPARE_TAKEN,
    SPARE_FAILED
};

/* A segment on disk, as the wal thread knows it. */
struct wal_seg {
    uint64_t seq;
    uint64_t first_index;
};

struct wal {
    char *dir;
    int dirfd;
    int lockfd;
    int evfd;
    log_t *log;
    uint64_t segment_size;
    size_t queue_size;
    wal_durable_cb on_durable;
    void *cb_arg;

    pthread_t thread;
    pthread_t spare_thread; /* keeps a preallocated file ready for the next segment */
    int spare_started;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* the wal thread waits here for work */
    pthread_cond_t done_cv;  /* wal_wait waits here */
    pthread_cond_t spare_cv; /* the spare thread waits here */

    /* Under mu: the caller side. */
    struct wal_logstate ls; /* as of the last queued call */
    uint64_t next_seq;      /* seq of the last queued call */
    uint64_t vseg_seq;      /* segment the next queued record goes to */
    uint64_t vseg_off;      /* and its offset there */
    struct wal_batch pending;
    uint64_t release_req;
    int stopping;
    /* Under mu: the spare file (WAL_SPARE_NAME) and where it stands. */
    int spare_fd;
    enum wal_spare_state spare_state;
    /* Under mu: published by the wal thread. */
    struct wal_durable durable;

    /* wal thread only (wal_open before it starts). */
    struct wal_batch writing;
    int fd;              /* segment being written */
    uint64_t off;        /* its write offset */
    uint64_t synced_off; /* how much of it is durable */
    struct wal_seg *segs;
    size_t n_segs, cap_segs;
    uint64_t released;

#ifdef QUOIN_TESTING
    struct wal_fault fault;
    unsigned calls[4];
    int mark_fd; /* test_sync_mark, or -1 */
    int lazy_sync;
    uint64_t last_sync_ns;
#endif
};

/* System calls the fault hook can fail. Return 0 or a negative errno. */
int wal_io_pwrite(struct wal *w, int fd, const void *buf, size_t n, uint64_t off);
int wal_io_fdatasync(struct wal *w, int fd);
int wal_io_fsync(struct wal *w, int fd);
int wal_io_fallocate(struct wal *w, int fd, uint64_t len);

/* Makes room in a growable array for one more element after the first n:
 * arrp is the address of the array pointer, *cap its capacity in elements of
 * elem bytes; doubles. Returns 0 or -ENOMEM (array unchanged). */
int wal_grow(void *arrp, size_t *cap, size_t n, size_t elem);

/* Remembers a segment in w->segs (0 or -ENOMEM). */
int wal_segs_push(struct wal *w, uint64_t seq, uint64_t first_index);

/* Creating a segment goes through a temporary name, so a named segment always
 * has a complete header; recovery deletes any *.wal.tmp. wal_seg_prepare
 * creates (or empties) the file `tmp` preallocated to w->segment_size;
 * wal_seg_install writes h into it and gives it its name, durably, or closes
 * fd and removes the file; wal_seg_create does both. */
#define WAL_SPARE_NAME "spare.wal.tmp"
int wal_seg_prepare(struct wal *w, const char *tmp, int *fd, struct util_err *err);
int wal_seg_install(struct wal *w, int fd, const char *tmp, const struct wal_seg_hdr *h,
                    struct util_err *err);
int wal_seg_create(struct wal *w, const struct wal_seg_hdr *h, int *fd, struct util_err *err);

/* Recovery: scans w->dir, fills rec, and leaves w ready to write: fd, off,
 * segs, ls, vseg_*. Defined in recover.c. */
int wal_recover(struct wal *w, struct wal_recovery *rec, struct util_err *err);

#endif
