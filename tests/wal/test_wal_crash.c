/* Crash test: a child process appends as fast as group commit lets it (entries,
 * overwrites, hard states, snapshot markers, releases) and reports each durable
 * seq to the parent over a pipe; the parent kills it with SIGKILL at a random
 * moment or, every other round, the fault hook kills it in the middle of a
 * random write (a torn write, as a power cut leaves); the parent then reopens
 * the log and checks it. Round after round on the same
 * directory, so each child also recovers what the previous one left.
 *
 * The child's calls are a pure function of a seed and the state it recovered,
 * so the parent replays them and requires the recovered log to equal the state
 * after some call at or beyond the last reported seq: every reported write is
 * there, in order, bytes intact, and what follows is whole calls made after
 * it, never part of one. QUOIN_WAL_CRASH_ROUNDS sets the number of
 * rounds (default 30). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "walt.h"
#include "wal/wal.h"

static const struct wal_options crash_opts = {.segment_size = 8192, .queue_size = 32768};

/* The log as the child sees it: terms[k] is the term of index snap + 1 + k,
 * for the last - snap entries after the snapshot. */
struct model {
    struct wal_snapshot snap;
    uint64_t last, last_term, cur_term;
    struct wal_hard_state hs;
    uint64_t *terms;
    size_t cap;
};

/* One call: a snapshot marker, or entries [first, first+n) then a hard state. */
struct op {
    int is_snap;
    struct wal_snapshot snap;
    enum wal_snapshot_mode mode;
    uint64_t first, term;
    size_t n;
    int has_hs;
    struct wal_hard_state hs;
};

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void m_entry(struct model *m, uint64_t index, uint64_t term) {
    assert_true(index > m->snap.index && index <= m->last + 1);
    size_t k = (size_t)(index - m->snap.index - 1);
    if (k >= m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->terms = realloc(m->terms, m->cap * sizeof(*m->terms));
        assert_non_null(m->terms);
    }
    m->terms[k] = term;
    m->last = index;
    m->last_term = term;
    if (term > m->cur_term)
        m->cur_term = term;
}

static void m_snap(struct model *m, const struct wal_snapshot *s, enum wal_snapshot_mode mode) {
    if (mode == WAL_SNAPSHOT_DISCARD_LOG || s->index > m->last) {
        m->last = s->index;
        m->last_term = s->term;
    } else {
        size_t drop = (size_t)(s->index - m->snap.index);
        memmove(m->terms, m->terms + drop, (size_t)(m->last - s->index) * sizeof(*m->terms));
    }
    m->snap = *s;
    if (s->term > m->cur_term)
        m->cur_term = s->term;
}

static void m_from_recovery(struct model *m, const struct wal_recovery *rec) {
    free(m->terms);
    memset(m, 0, sizeof(*m));
    m->snap = rec->snapshot;
    m->hs = rec->hard_state;
    m->last = m->snap.index;
    m->last_term = m->snap.term;
    for (size_t i = 0; i < rec->n_entries; i++)
        m_entry(m, rec->entries[i].index, rec->entries[i].term);
    assert_int_equal(m->last, rec->last_index);
    assert_int_equal(m->last_term, rec->last_term);
    m->cur_term = m->hs.term > m->last_term ? m->hs.term : m->last_term;
}

static void gen_op(const struct model *m, uint64_t *rng, struct op *op) {
    uint64_t r = rnd(rng) % 100;
    memset(op, 0, sizeof(*op));
    op->first = m->last + 1;
    op->term = m->cur_term ? m->cur_term : 1;
    if (r < 60) {
        op->n = 1 + rnd(rng) % 8;
        op->has_hs = 1;
        op->hs =
            (struct wal_hard_state){op->term, 1, m->last > m->hs.commit ? m->last : m->hs.commit};
    } else if (r < 70) {
        uint64_t back = rnd(rng) % 4;
        if (m->last > m->snap.index + back)
            op->first = m->last - back;
        op->term++;
        op->n = 1 + rnd(rng) % 4;
    } else if (r < 80) {
        op->has_hs = 1;
        op->hs = (struct wal_hard_state){op->term, rnd(rng) % 3, m->hs.commit};
    } else if (r < 97) {
        if (m->last > m->snap.index) {
            op->is_snap = 1;
            op->snap.index = m->snap.index + 1 + rnd(rng) % (m->last - m->snap.index);
            op->snap.term = m->terms[op->snap.index - m->snap.index - 1];
            op->mode = WAL_SNAPSHOT_KEEP_LOG;
        }
    } else {
        op->is_snap = 1;
        op->snap = (struct wal_snapshot){m->last + rnd(rng) % 3, op->term};
        op->mode = WAL_SNAPSHOT_DISCARD_LOG;
    }
}

static int do_op(wal_t *w, const struct op *op) {
    if (op->is_snap)
        return wal_save_snapshot(w, &op->snap, op->mode, NULL);
    struct wal_entry e[8];
    uint8_t bufs[8][WALT_MAX_DATA];
    for (size_t i = 0; i < op->n; i++)
        walt_entry(&e[i], op->first + i, op->term, bufs[i]);
    return wal_append(w, e, op->n, op->has_hs ? &op->hs : NULL, NULL);
}

/* The model after a call. */
static void apply_op(struct model *m, const struct op *op) {
    if (op->is_snap) {
        m_snap(m, &op->snap, op->mode);
        return;
    }
    for (size_t k = 0; k < op->n; k++)
        m_entry(m, op->first + k, op->term);
    if (op->has_hs)
        m->hs = op->hs;
}

/* Tells the parent how far durability got, and releases what a durable
 * snapshot covers. */
static void report(wal_t *w, int fd, uint64_t *reported, uint64_t *released) {
    struct wal_durable d;
    wal_durable(w, &d);
    if (d.error)
        _exit(5);
    if (d.seq > *reported) {
        if (write(fd, &d.seq, sizeof(d.seq)) != (ssize_t)sizeof(d.seq))
            _exit(6);
        *reported = d.seq;
    }
    if (d.snapshot_index > *released) {
        if (wal_release_to(w, d.snapshot_index) != 0)
            _exit(7);
        *released = d.snapshot_index;
    }
}

/* Runs calls until killed: by the parent's timer, or (when tear_at is not 0)
 * by the fault hook in the middle of that write. */
static void child(const char *dir, uint64_t seed, unsigned tear_at, int fd) {
    struct wal_recovery rec;
    struct model m = {0};
    struct wal_options o = crash_opts;
    wal_t *w;
    uint64_t reported = 0, released = 0;
    if (tear_at)
        o.fault = (struct wal_fault){WAL_FAULT_WRITE, tear_at, WAL_FAULT_CRASH};
    if (wal_open(dir, &o, &w, &rec, NULL) != 0)
        _exit(3);
    m_from_recovery(&m, &rec);
    wal_recovery_free(&rec);
    for (;;) {
        struct op op;
        gen_op(&m, &seed, &op);
        int rc;
        while ((rc = do_op(w, &op)) == -EAGAIN) {
            struct pollfd p = {.fd = wal_event_fd(w), .events = POLLIN};
            uint64_t v;
            poll(&p, 1, 10);
            if (read(p.fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                _exit(8);
            report(w, fd, &reported, &released);
        }
        if (rc != 0)
            _exit(4);
        apply_op(&m, &op);
        report(w, fd, &reported, &released);
    }
}

static int same(const struct model *m, const struct wal_recovery *rec) {
    if (rec->last_index != m->last || rec->last_term != m->last_term ||
        memcmp(&rec->hard_state, &m->hs, sizeof(m->hs)) != 0 ||
        memcmp(&rec->snapshot, &m->snap, sizeof(m->snap)) != 0 ||
        rec->n_entries != m->last - m->snap.index)
        return 0;
    for (size_t k = 0; k < rec->n_entries; k++)
        if (!walt_entry_ok(&rec->entries[k], m->snap.index + 1 + k, m->terms[k]))
            return 0;
    return 1;
}

/* Replays the child's calls from `start`; the recovered log must be the
 * state after some call at or after call `reported`. */
static void verify(const struct model *start, uint64_t seed, uint64_t reported,
                   const struct wal_recovery *rec, int round) {
    struct model sim = *start;
    sim.terms = malloc((start->cap ? start->cap : 1) * sizeof(*sim.terms));
    assert_non_null(sim.terms);
    if (start->cap)
        memcpy(sim.terms, start->terms, start->cap * sizeof(*sim.terms));
    int found = reported == 0 && same(&sim, rec);
    for (uint64_t call = 1; call <= reported + 100000 && !found; call++) {
        struct op op;
        gen_op(&sim, &seed, &op);
        apply_op(&sim, &op);
        found = call >= reported && same(&sim, rec);
    }
    if (!found)
        fail_msg("round %d: recovered log (last %llu, snapshot %llu, %zu entries) is not a "
                 "state after a call at or after durable call %llu",
                 round, (unsigned long long)rec->last_index,
                 (unsigned long long)rec->snapshot.index, rec->n_entries,
                 (unsigned long long)reported);
    free(sim.terms);
}

static void crash_rounds(void **state) {
    (void)state;
    const char *env = getenv("QUOIN_WAL_CRASH_ROUNDS");
    int rounds = env ? atoi(env) : 30;
    char *dir = walt_tmpdir(), logpath[] = "/tmp/quoin-wal-crash-log-XXXXXX";
    int lfd = mkstemp(logpath);
    assert_true(lfd >= 0);
    close(lfd);
    log_t *lg;
    assert_int_equal(log_open(LOG_LEVEL_INFO, logpath, &lg, NULL), 0);
    struct wal_options o = crash_opts;
    o.log = lg;
    struct model known = {0};
    uint64_t rng = 0x5eed ^ (uint64_t)getpid(), total = 0;
    for (int round = 0; round < rounds; round++) {
        uint64_t seed = rnd(&rng) | 1;
        unsigned tear_at = round % 2 ? 1 + (unsigned)(rnd(&rng) % 40) : 0;
        int p[2];
        assert_int_equal(pipe(p), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            child(dir, seed, tear_at, p[1]);
        }
        close(p[1]);
        /* A tearing child is killed by its own write; the timer is a backstop. */
        uint64_t deadline =
            util_now_mono_ns() + (tear_at ? 2000000000ull : 100000 + rnd(&rng) % 40000000);
        uint64_t reported = 0, v;
        for (;;) {
            uint64_t now = util_now_mono_ns();
            struct pollfd pf = {.fd = p[0], .events = POLLIN};
            if (now >= deadline || poll(&pf, 1, (int)((deadline - now) / 1000000) + 1) == 0)
                break;
            ssize_t r = read(p[0], &v, sizeof(v));
            if (r <= 0)
                break; /* the child died */
            assert_int_equal(r, sizeof(v));
            if (v > reported)
                reported = v;
        }
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("round %d: child exited by itself (status %d)", round, status);
        while (read(p[0], &v, sizeof(v)) == (ssize_t)sizeof(v))
            if (v > reported)
                reported = v;
        close(p[0]);

        struct wal_recovery rec;
        struct util_err err = {0};
        wal_t *w = NULL;
        int rc = wal_open(dir, &o, &w, &rec, &err);
        if (rc != 0)
            fail_msg("round %d: reopen failed: %s", round, err.msg);
        verify(&known, seed, reported, &rec, round);
        m_from_recovery(&known, &rec);
        total += reported;
        wal_recovery_free(&rec);
        assert_int_equal(wal_close(w), 0);
    }
    log_close(lg);
    size_t n;
    char *text = (char *)walt_read_file(logpath, &n);
    unsigned torn = 0, unfinished = 0;
    for (char *q = text; (q = memmem(q, (size_t)(text + n - q), "torn tail", 9)) != NULL; q++)
        torn++;
    for (char *q = text; (q = memmem(q, (size_t)(text + n - q), "unfinished", 10)) != NULL; q++)
        unfinished++;
    free(text);
    unlink(logpath);
    print_message("%d crash rounds, %llu durable calls checked, %u torn tails repaired, %u "
                  "unfinished segments removed, log ends at %llu\n",
                  rounds, (unsigned long long)total, torn, unfinished,
                  (unsigned long long)known.last);
    free(known.terms);
    walt_rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crash_rounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
