/* raft_int: internals shared by the files of the raft layer — the log view
 * (caller's stable storage plus raft's own not-yet-persisted tail) and a
 * growable entry vector. Not for callers outside src/raft/. */
#ifndef QUOIN_RAFT_INT_H
#define QUOIN_RAFT_INT_H

#include "raft/raft.h"

/* A growable array of entry headers (data pointers are borrowed). */
struct raft_evec {
    struct raft_entry *v;
    size_t n, cap;
};

int raft_evec_reserve(struct raft_evec *ev, size_t need);

/* *out = a malloc'd copy of n bytes (NULL when n is 0). 0 or -ENOMEM. */
int raft_dup_bytes(const uint8_t *p, size_t n, uint8_t **out);
void raft_evec_free(struct raft_evec *ev);

struct raft_ublock;

/* The log as raft sees it: storage (durable, owned by the caller), then an
 * unstable snapshot and/or unstable entries that raft owns until the caller
 * has persisted them (raft_advance). Unstable entries own their data. */
struct raft_log {
    struct raft_storage st;
    bool has_usnap;
    struct raft_snapshot usnap; /* data owned (malloc) when has_usnap */
    struct raft_entry *ue;      /* unstable entries; ue[k].index == uoff + k */
    struct raft_ublock **ublk;  /* ublk[k]: the shared data block of ue[k] */
    size_t un, ucap;
    uint64_t uoff;
    uint64_t committed;
    uint64_t applied;
};

int raft_log_init(struct raft_log *l, struct raft_storage st);
void raft_log_destroy(struct raft_log *l);
uint64_t raft_log_first(const struct raft_log *l);
uint64_t raft_log_last(const struct raft_log *l);
/* 0, RAFT_ECOMPACTED or RAFT_EUNAVAILABLE. */
int raft_log_get_term(const struct raft_log *l, uint64_t i, uint64_t *t);
uint64_t raft_log_term_or0(const struct raft_log *l, uint64_t i);
uint64_t raft_log_last_term(const struct raft_log *l);
bool raft_log_match_term(const struct raft_log *l, uint64_t i, uint64_t t);
bool raft_log_up_to_date(const struct raft_log *l, uint64_t last, uint64_t term);
/* Appends entries [lo, hi) capped at max_bytes (at least one entry) to ev.
 * Returns 0, RAFT_ECOMPACTED, RAFT_EUNAVAILABLE or -ENOMEM. */
int raft_log_slice(const struct raft_log *l, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                   struct raft_evec *ev);
/* Appends (copies) entries to the unstable tail, truncating what conflicts.
 * The first entry's index must be > committed. Returns 0 or -ENOMEM. */
int raft_log_append(struct raft_log *l, const struct raft_entry *ents, size_t n);
/* The follower's AppendEntries check and append. *last_new is set on success;
 * returns 1 (appended/matched), 0 (mismatch) or -ENOMEM. */
int raft_log_maybe_append(struct raft_log *l, uint64_t index, uint64_t log_term, uint64_t commit,
                          const struct raft_entry *ents, size_t n, uint64_t *last_new);
void raft_log_commit_to(struct raft_log *l, uint64_t c);
/* Largest index <= i whose term is <= term (the conflict hint). */
uint64_t raft_log_conflict_by_term(const struct raft_log *l, uint64_t i, uint64_t term);
/* Installs a snapshot as the unstable snapshot (data copied). 0 or -ENOMEM. */
int raft_log_restore(struct raft_log *l, const struct raft_snapshot *snap);
void raft_log_stable_to(struct raft_log *l, uint64_t i, uint64_t t);
void raft_log_stable_snap_to(struct raft_log *l, uint64_t i);
/* Highest index whose entry is durable (stable storage). */
uint64_t raft_log_stable_last(const struct raft_log *l);

#endif
