/* I/O faults, SQLite style: each write, fdatasync/fsync and fallocate the WAL
 * makes during a workload (open included) fails in turn with ENOSPC or EIO, or
 * writes short. A failure must reach the caller as an error, durability must
 * stop before the failed call, and a reopen must recover exactly what was
 * reported durable. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "walt.h"
#include "wal/wal.h"

#define BATCHES 40
#define MAXLOG 128

/* What the caller was told is durable. */
struct model {
    uint64_t last;
    uint64_t terms[MAXLOG + 1]; /* terms[i] for index i */
    struct wal_hard_state hs;
    uint64_t seq;
};

/* Without the spare-segment thread every call is made by one thread in a fixed
 * order, so each run fails exactly the call it means to. */
static const struct wal_options base = {.segment_size = 4096, .no_spare = 1};

/* Appends BATCHES calls, waiting for each; every fifth overwrites the last two
 * entries with a new term. Returns 0 or the first error. */
static int workload(wal_t *w, struct model *m) {
    uint64_t term = 1;
    for (uint64_t b = 1; b <= BATCHES; b++) {
        uint64_t first = m->last + 1;
        if (b % 5 == 0 && m->last >= 3) {
            first = m->last - 1;
            term++;
        }
        size_t n = 1 + b % 3;
        struct wal_entry e[3];
        uint8_t bufs[3][WALT_MAX_DATA];
        for (size_t i = 0; i < n; i++)
            walt_entry(&e[i], first + i, term, bufs[i]);
        struct wal_hard_state hs = {.term = term, .vote = 1, .commit = b};
        uint64_t seq;
        int rc = wal_append(w, e, n, &hs, &seq);
        if (rc == 0)
            rc = wal_wait(w, seq);
        if (rc != 0)
            return rc;
        for (size_t i = 0; i < n; i++)
            m->terms[first + i] = term;
        m->last = first + n - 1;
        m->hs = hs;
        m->seq = seq;
    }
    return 0;
}

static void expect_model(const char *dir, const struct model *m) {
    struct wal_recovery rec;
    wal_t *w = walt_open(dir, &base, &rec);
    assert_int_equal(rec.n_entries, m->last);
    for (uint64_t i = 1; i <= m->last; i++)
        assert_true(walt_entry_ok(&rec.entries[i - 1], i, m->terms[i]));
    assert_memory_equal(&rec.hard_state, &m->hs, sizeof(m->hs));
    wal_recovery_free(&rec);
    assert_int_equal(wal_close(w), 0);
}

/* Runs the workload with the nth call of op failing; returns whether the
 * fault was reached. With the spare thread on, the failed call may have been
 * the spare's, which costs nothing but a slower roll: the workload may then
 * succeed. */
static int run_one(enum wal_fault_op op, enum wal_fault_kind kind, unsigned nth, int spare) {
    char *dir = walt_tmpdir_mem();
    struct wal_options o = base;
    o.no_spare = !spare;
    o.fault = (struct wal_fault){.op = op, .nth = nth, .kind = kind};
    struct model m = {0};
    struct wal_recovery rec;
    struct util_err err = {0};
    wal_t *w = NULL;
    int want = kind == WAL_FAULT_ENOSPC ? -ENOSPC : -EIO;
    int short_write = op == WAL_FAULT_WRITE && kind == WAL_FAULT_SHORT;
    int reached;

    int rc = wal_open(dir, &o, &w, &rec, &err);
    if (rc != 0) {
        /* Failed while creating the first segment. */
        assert_int_equal(rc, want);
        assert_false(short_write);
        assert_null(w);
        assert_true(err.msg[0] != '\0');
        reached = 1;
    } else {
        wal_recovery_free(&rec);
        rc = workload(w, &m);
        reached = wal_test_calls(w, op) >= nth;
        if (short_write || !reached || (spare && rc == 0)) {
            assert_int_equal(rc, 0);
            assert_int_equal(wal_close(w), 0);
        } else {
            assert_int_equal(rc, want);
            struct wal_durable d;
            wal_durable(w, &d);
            assert_int_equal(d.error, want);
            assert_int_equal(d.seq, m.seq); /* nothing past the failed call */
            assert_int_equal(wal_append(w, NULL, 0, NULL, NULL), want);
            assert_int_equal(wal_release_to(w, 0), want);
            assert_int_equal(wal_close(w), want);
        }
    }
    expect_model(dir, &m);
    walt_rmdir(dir);
    return reached;
}

struct fault_case {
    enum wal_fault_op op;
    enum wal_fault_kind kind;
    int spare;
};

/* Fails each call of one operation in turn, until a whole workload runs
 * without reaching the nth. */
static void sweep(void **state) {
    const struct fault_case *c = *state;
    unsigned nth = 1;
    while (run_one(c->op, c->kind, nth, c->spare))
        nth++;
    print_message("%u calls failed in turn\n", nth - 1);
    assert_true(nth > 3);
}

static const struct fault_case cases[] = {
    {WAL_FAULT_WRITE, WAL_FAULT_ENOSPC, 0},     {WAL_FAULT_WRITE, WAL_FAULT_EIO, 0},
    {WAL_FAULT_WRITE, WAL_FAULT_SHORT, 0},      {WAL_FAULT_FDATASYNC, WAL_FAULT_ENOSPC, 0},
    {WAL_FAULT_FDATASYNC, WAL_FAULT_EIO, 0},    {WAL_FAULT_FALLOCATE, WAL_FAULT_ENOSPC, 0},
    {WAL_FAULT_FALLOCATE, WAL_FAULT_EIO, 0},    {WAL_FAULT_FDATASYNC, WAL_FAULT_EIO, 1},
    {WAL_FAULT_FALLOCATE, WAL_FAULT_ENOSPC, 1},
};

/* Repairing a torn tail at open can fail too: the open reports it and a later
 * open still recovers the log. */
static void repair_fault(void **state) {
    (void)state;
    char *dir = walt_tmpdir_mem();
    struct wal_recovery rec;
    wal_t *w;
    struct model m = {0};
    assert_int_equal(wal_open(dir, &base, &w, &rec, NULL), 0);
    assert_int_equal(workload(w, &m), 0);
    assert_int_equal(wal_close(w), 0);
    char **names, path[512];
    size_t n = walt_segments(dir, &names);
    walt_path(path, sizeof(path), dir, names[n - 1]);
    walt_free_names(names, n);
    uint64_t offs[MAXLOG + 1];
    size_t nrec = walt_record_offsets(path, offs, MAXLOG);
    uint8_t junk[5] = {1, 2, 3, 4, 5};
    walt_write_at(path, offs[nrec] + 16, junk, sizeof(junk));
    enum wal_fault_op ops[] = {WAL_FAULT_FALLOCATE, WAL_FAULT_FDATASYNC};
    for (int i = 0; i < 2; i++) {
        struct wal_options o = base;
        struct util_err err = {0};
        o.fault = (struct wal_fault){.op = ops[i], .nth = 1, .kind = WAL_FAULT_EIO};
        assert_int_equal(wal_open(dir, &o, &w, &rec, &err), -EIO);
        assert_non_null(strstr(err.msg, path));
    }
    expect_model(dir, &m);
    walt_rmdir(dir);
}

#define SWEEP(name, i)                                                                             \
    { name, sweep, NULL, NULL, (void *)&cases[i] }

int main(void) {
    const struct CMUnitTest tests[] = {
        SWEEP("write_enospc", 0),
        SWEEP("write_eio", 1),
        SWEEP("write_short", 2),
        SWEEP("fdatasync_enospc", 3),
        SWEEP("fdatasync_eio", 4),
        SWEEP("fallocate_enospc", 5),
        SWEEP("fallocate_eio", 6),
        SWEEP("fdatasync_eio_spare", 7),
        SWEEP("fallocate_enospc_spare", 8),
        cmocka_unit_test(repair_fault),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
