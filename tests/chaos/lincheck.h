/* lincheck: checks a history of client operations recorded against an
 * etcd-compatible server (the JSON-lines format of docs/testing.md) for
 * linearizability and for the revision, watch and lease guarantees etcd gives.
 * It is test tooling: nothing in the server links it.
 *
 * How it decides:
 *  - Linearizability, Wing–Gong style with Lowe's just-in-time linearization
 *    (as Porcupine does): operations are partitioned by the keys they touch
 *    (a multi-key txn, a lease and the keys put with it share one partition,
 *    by union-find), and each partition is searched depth-first over the orders
 *    the real-time intervals allow, memoising (set of linearized ops, model
 *    state). The model is etcd's key space: value, version, mod_revision,
 *    create_revision and lease per key, plus a lower bound of the global
 *    revision. Because revisions are global, a partition only checks the
 *    relaxed rule: revisions of its writes increase in linearization order, a
 *    read's header revision is at least that of every write linearized before
 *    it, and a read sees the value written at the mod_revision it reports.
 *  - Operations that timed out ("indeterminate") may be linearized anywhere after
 *    their invocation, or never; a lease may expire at any point after its grant.
 *    What the history shows of them is used first: a timed-out write whose
 *    (unique) value was read or watched happened, at the revision seen.
 *  - Closed world by default: the history holds every write the store saw, so
 *    a write of unknown revision took one no known write took.
 *  - Global checks outside the search: per-client header revisions never go
 *    back, real-time order agrees with revision order, distinct writes never
 *    share a revision, reads never report a mod_revision above their header
 *    revision, a final read keeps every acknowledged write and drops the keys
 *    of revoked/expired leases, watchers see every event of their range exactly
 *    once, in order, with no gap, across reconnects, and no progress
 *    notification runs ahead of an undelivered event; in a closed world,
 *    revisions are dense (every one was taken by some write).
 *  - A partition whose search exceeds its step or time budget is reported as
 *    unknown rather than guessed.
 *
 * Threading: a history and a result belong to one thread at a time; separate
 * histories may be checked in parallel. */
#ifndef QUOIN_LINCHECK_H
#define QUOIN_LINCHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util/util.h"

struct lincheck_history;

/* Verdicts, also the CLI's exit codes. */
enum lincheck_verdict {
    LINCHECK_OK = 0,        /* every check passed */
    LINCHECK_VIOLATION = 1, /* at least one anomaly was found */
    LINCHECK_UNKNOWN = 2,   /* no anomaly found, but some search ran out of budget */
};

/* Anomaly kinds, as bits of lincheck_result.anomalies. */
enum lincheck_anomaly {
    LINCHECK_A_NONLINEARIZABLE = 1 << 0, /* a partition has no linearization */
    LINCHECK_A_CLIENT_REV_BACK = 1 << 1, /* a client saw its header revision go back */
    LINCHECK_A_REALTIME_REV = 1 << 2,    /* op started after another ended, lower revision */
    LINCHECK_A_DUP_REV = 1 << 3,         /* two distinct writes share a revision */
    LINCHECK_A_BAD_RESULT = 1 << 4,      /* a result contradicts itself */
    LINCHECK_A_LOST_WRITE = 1 << 5,      /* an acknowledged write is missing at the end */
    LINCHECK_A_LEASE_KEY = 1 << 6,       /* a revoked/expired lease's key survived */
    LINCHECK_A_WATCH_GAP = 1 << 7,       /* a watcher missed an event of its range */
    LINCHECK_A_WATCH_DUP = 1 << 8,       /* a watcher got an event twice */
    LINCHECK_A_WATCH_ORDER = 1 << 9,     /* a watcher got events out of revision order */
    LINCHECK_A_WATCH_PHANTOM = 1 << 10,  /* an event matches no write of the history */
    LINCHECK_A_PROGRESS_AHEAD = 1 << 11, /* progress notify before an event it covers */
    LINCHECK_A_REV_SKIPPED = 1 << 12,    /* revisions no write of the history took */
};

struct lincheck_options {
    uint64_t max_steps; /* search steps per partition; 0 = 20 million */
    uint64_t max_ms;    /* wall time per partition in ms; 0 = 20000 */
    /* By default the history is taken to hold every write the store saw (test
     * clients on a cluster of their own), so a timed-out write can only have
     * taken a revision that no acknowledged write took. Set open_world when
     * other writers may have been at work: the search then only knows that
     * such a write took some revision above the ones before it. */
    int open_world;
};

struct lincheck_result {
    enum lincheck_verdict verdict;
    unsigned anomalies;     /* OR of enum lincheck_anomaly */
    size_t ops;             /* operations read from the history */
    size_t partitions;      /* partitions searched */
    size_t unknown_parts;   /* partitions whose search ran out of budget */
    uint64_t steps;         /* search steps, all partitions */
    struct util_buf report; /* human-readable report, one finding per paragraph */
};

/* An empty history. Returns 0 or -ENOMEM. */
int lincheck_history_new(struct lincheck_history **out);

/* Adds one line of the history format (an empty or blank line is skipped).
 * Returns 0, -EINVAL with err naming the line and the problem, or -ENOMEM. */
int lincheck_history_add_line(struct lincheck_history *h, const char *line, size_t n,
                              struct util_err *err);

/* Reads a whole history file ("-" = stdin). Returns 0, -EINVAL for a bad line,
 * -errno when the file cannot be read, -ENOMEM; err says which. */
int lincheck_history_load(const char *path, struct lincheck_history **out, struct util_err *err);

void lincheck_history_free(struct lincheck_history *h);

/* Runs every check over h (opt may be NULL for the defaults) and fills res,
 * which the caller frees with lincheck_result_free. Returns 0 or -ENOMEM; the
 * verdict is in res. */
int lincheck_check(struct lincheck_history *h, const struct lincheck_options *opt,
                   struct lincheck_result *res);

void lincheck_result_free(struct lincheck_result *res);

/* The checker's command line: `lincheck [--max-steps N] [--max-ms N] [--open-world] FILE`.
 * Prints the report and a last line "verdict: ..." to out, usage errors to
 * errout, and returns the exit code (an enum lincheck_verdict, or 64 for bad
 * usage or an unreadable history). */
int lincheck_cli(int argc, char **argv, FILE *out, FILE *errout);

#endif
