/* lincheck against hand-written histories: each anomaly it promises to find
 * is fed to it in its smallest form and must be named in the verdict, and
 * the correct histories next to them (overlapping operations, timed-out
 * operations that did or did not happen, reconnects, lease expiry) must pass. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lincheck.h"

/* Checks a history given as newline-separated lines; returns the anomaly bits
 * (or 1 << 30 for an UNKNOWN verdict) and prints the report when asked. */
static unsigned check_opts(const char *text, const struct lincheck_options *opt) {
    struct lincheck_history *h;
    struct lincheck_result res;
    struct util_err err;
    assert_int_equal(lincheck_history_new(&h), 0);
    for (const char *p = text; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        int rc = lincheck_history_add_line(h, p, n, &err);
        if (rc != 0)
            fail_msg("%s", err.msg);
        p += n + (nl != NULL);
    }
    assert_int_equal(lincheck_check(h, opt, &res), 0);
    if (getenv("LINCHECK_VERBOSE") != NULL && res.report.len > 0)
        fprintf(stderr, "%s\n", res.report.data);
    unsigned out = res.anomalies;
    assert_int_equal(res.verdict, out != 0            ? LINCHECK_VIOLATION
                                  : res.unknown_parts ? LINCHECK_UNKNOWN
                                                      : LINCHECK_OK);
    if (res.verdict == LINCHECK_UNKNOWN)
        out = 1u << 30;
    lincheck_result_free(&res);
    lincheck_history_free(h);
    return out;
}

static unsigned check(const char *text) {
    return check_opts(text, NULL);
}

#define PUT(c, k, v, t0, t1, rev)                                                                  \
    "{\"client\":" #c ",\"op\":\"put\",\"key\":\"" k "\",\"value\":\"" v "\",\"call\":" #t0        \
    ",\"return\":" #t1 ",\"status\":\"ok\",\"rev\":" #rev "}\n"
#define GET(c, k, v, mod, ver, t0, t1, rev)                                                        \
    "{\"client\":" #c ",\"op\":\"get\",\"key\":\"" k "\",\"value\":\"" v "\",\"mod_rev\":" #mod    \
    ",\"version\":" #ver ",\"call\":" #t0 ",\"return\":" #t1 ",\"status\":\"ok\",\"rev\":" #rev    \
    "}\n"
#define CAS(c, k, cmp, expect, v, t0, t1, rev, ok)                                                 \
    "{\"client\":" #c ",\"op\":\"cas\",\"key\":\"" k "\",\"cmp\":\"" cmp "\",\"expect\":" expect   \
    ",\"value\":\"" v "\",\"call\":" #t0 ",\"return\":" #t1 ",\"status\":\"ok\",\"rev\":" #rev     \
    ",\"succeeded\":" #ok "}\n"
#define MISS(c, k, t0, t1, rev)                                                                    \
    "{\"client\":" #c ",\"op\":\"get\",\"key\":\"" k "\",\"found\":false,\"call\":" #t0            \
    ",\"return\":" #t1 ",\"status\":\"ok\",\"rev\":" #rev "}\n"

/* --- histories that must fail ---------------------------------------------- */

static void stale_read_after_acknowledged_write(void **state) {
    (void)state;
    assert_int_equal(check(PUT(1, "a", "1", 10, 20, 2) PUT(1, "a", "2", 30, 40, 3)
                               GET(2, "a", "1", 2, 1, 50, 60, 3)),
                     LINCHECK_A_NONLINEARIZABLE);
    /* The same read with the header revision of its stale value is also caught by
     * the real-time revision rule. */
    assert_true(check(PUT(1, "a", "1", 10, 20, 2) PUT(1, "a", "2", 30, 40, 3)
                          GET(2, "a", "1", 2, 1, 50, 60, 2)) &
                LINCHECK_A_REALTIME_REV);
}

static void lost_write_in_final_read(void **state) {
    (void)state;
    unsigned a =
        check(PUT(1, "a", "1", 10, 20, 2)
                  PUT(1, "a", "2", 30, 40,
                      3) "{\"client\":9,\"op\":\"range\",\"key\":\"a\",\"range_end\":\"\\u0000\","
                         "\"final\":true,\"call\":50,\"return\":60,\"status\":\"ok\",\"rev\":3,"
                         "\"kvs\":[{\"key\":\"a\",\"value\":\"1\",\"mod_rev\":2,\"version\":1}]}");
    assert_true(a & LINCHECK_A_LOST_WRITE);
    assert_true(a & LINCHECK_A_NONLINEARIZABLE);
    a = check(PUT(1, "b", "1", 10, 20, 2) "{\"client\":9,\"op\":\"range\",\"key\":\"a\","
                                          "\"range_end\":\"z\",\"final\":true,\"call\":50,"
                                          "\"return\":60,\"status\":\"ok\",\"rev\":2,\"kvs\":[]}");
    assert_true(a & LINCHECK_A_LOST_WRITE);
    /* An acknowledged delete undone: the old version is back. */
    a = check(PUT(1, "a", "1", 10, 20, 2) "{\"client\":1,\"op\":\"delete\",\"key\":\"a\","
                                          "\"deleted\":1,\"call\":30,\"return\":40,\"status\":"
                                          "\"ok\",\"rev\":3}\n"
                                          "{\"client\":9,\"op\":\"range\",\"key\":\"a\","
                                          "\"range_end\":\"z\",\"final\":true,\"call\":50,"
                                          "\"return\":60,\"status\":\"ok\",\"rev\":3,\"kvs\":"
                                          "[{\"key\":\"a\",\"value\":\"1\",\"mod_rev\":2}]}");
    assert_true(a & LINCHECK_A_LOST_WRITE);
}

static void write_skew_in_cas(void **state) {
    (void)state;
    /* Both CAS expect "0" and both claim success, though they overlap. */
    assert_int_equal(check(PUT(1, "a", "0", 10, 20, 2)
                               CAS(2, "a", "value", "\"0\"", "x", 30, 50, 3, true)
                                   CAS(3, "a", "value", "\"0\"", "y", 31, 51, 4, true)),
                     LINCHECK_A_NONLINEARIZABLE);
    /* CAS on mod_rev: the second one compares against a revision already replaced. */
    assert_int_equal(check(PUT(1, "a", "0", 10, 20, 2)
                               CAS(2, "a", "mod_rev", "2", "x", 30, 40, 3, true)
                                   CAS(3, "a", "mod_rev", "2", "y", 50, 60, 4, true)),
                     LINCHECK_A_NONLINEARIZABLE);
}

static void reordered_and_shared_revisions(void **state) {
    (void)state;
    /* The second put starts after the first completed but got a lower revision. */
    unsigned a = check(PUT(1, "a", "1", 10, 20, 5) PUT(2, "b", "1", 30, 40, 4));
    assert_int_equal(a, LINCHECK_A_REALTIME_REV);
    /* Same key: also no valid linearization. */
    a = check(PUT(1, "a", "1", 10, 20, 5) PUT(2, "a", "2", 30, 40, 4));
    assert_true(a & LINCHECK_A_NONLINEARIZABLE);
    /* Two distinct writes, concurrent, with one revision. */
    a = check(PUT(1, "a", "1", 10, 40, 3) PUT(2, "b", "1", 20, 30, 3));
    assert_int_equal(a, LINCHECK_A_DUP_REV);
    /* A timed-out write seen at the revision an acknowledged one took. */
    a = check(PUT(1, "a", "1", 10, 20, 2) "{\"client\":2,\"op\":\"put\",\"key\":\"b\",\"value\":"
                                          "\"x\",\"call\":5,\"status\":\"indeterminate\"}\n" GET(
                                              3, "b", "x", 2, 1, 30, 40, 2));
    assert_true(a & LINCHECK_A_DUP_REV);
    /* A read returning a value modified after the revision it was read at. */
    a = check(PUT(1, "a", "1", 10, 20, 3) GET(2, "a", "1", 3, 1, 30, 40, 2));
    assert_true(a & LINCHECK_A_BAD_RESULT);
}

/* A delete of nothing that moved the revision: revision 3 belongs to no
 * write. Only a closed world can tell. */
static void revision_skipped(void **state) {
    (void)state;
    const char *h =
        PUT(1, "a", "1", 10, 20, 2) "{\"client\":1,\"op\":\"delete\",\"key\":\"b\","
                                    "\"deleted\":0,\"call\":30,\"return\":40,"
                                    "\"status\":\"ok\",\"rev\":3}\n" PUT(1, "a", "2", 50, 60, 4);
    struct lincheck_options open = {.open_world = 1};
    assert_int_equal(check(h), LINCHECK_A_REV_SKIPPED);
    assert_int_equal(check_opts(h, &open), 0);
    /* A put that timed out may have taken it. */
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s%s", h,
             "{\"client\":2,\"op\":\"put\",\"key\":\"c\",\"value\":\"x\",\"call\":25,"
             "\"status\":\"indeterminate\"}\n");
    assert_int_equal(check(buf), 0);
}

static void client_revision_goes_backwards(void **state) {
    (void)state;
    /* Client 2's two reads overlap the writes, so each alone is linearizable. */
    unsigned a = check(PUT(1, "a", "1", 10, 20, 4) PUT(1, "b", "1", 30, 40, 5)
                           GET(2, "b", "1", 5, 1, 35, 45, 5) GET(2, "a", "1", 4, 1, 46, 50, 4));
    assert_true(a & LINCHECK_A_CLIENT_REV_BACK);
}

static void lease_key_survives_revoke(void **state) {
    (void)state;
    unsigned a =
        check("{\"client\":1,\"op\":\"lease_grant\",\"lease\":77,\"ttl\":5,\"call\":1,"
              "\"return\":2,\"status\":\"ok\",\"rev\":1}\n"
              "{\"client\":1,\"op\":\"put\",\"key\":\"l\",\"value\":\"v\",\"lease\":77,"
              "\"call\":3,\"return\":4,\"status\":\"ok\",\"rev\":2}\n"
              "{\"client\":1,\"op\":\"lease_revoke\",\"lease\":77,\"call\":5,\"return\":6,"
              "\"status\":\"ok\",\"rev\":3}\n"
              "{\"client\":1,\"op\":\"range\",\"key\":\"\\u0000\",\"range_end\":\"\\u0000\","
              "\"final\":true,\"call\":7,\"return\":8,\"status\":\"ok\",\"rev\":3,"
              "\"kvs\":[{\"key\":\"l\",\"value\":\"v\",\"mod_rev\":2,\"lease\":77}]}\n");
    assert_true(a & LINCHECK_A_LEASE_KEY);
    assert_true(a & LINCHECK_A_NONLINEARIZABLE);
}

/* Writes of "a" at revisions 2, 3, 4 and a watcher whose stream is given. */
static unsigned watch(const char *events) {
    char buf[2048];
    snprintf(
        buf, sizeof(buf),
        PUT(1, "a", "1", 10, 20, 2)
            PUT(1, "a", "2", 30, 40,
                3) "{\"client\":1,\"op\":\"delete\",\"key\":\"a\",\"deleted\":1,\"call\":50,"
                   "\"return\":60,\"status\":\"ok\",\"rev\":4}\n"
                   "{\"client\":\"w\",\"op\":\"watch\",\"key\":\"a\",\"range_end\":\"b\","
                   "\"start_rev\":2,\"call\":5,\"return\":100,\"status\":\"ok\",\"events\":[%s]}\n",
        events);
    return check(buf);
}

#define EV1 "{\"type\":\"put\",\"key\":\"a\",\"value\":\"1\",\"mod_rev\":2}"
#define EV2 "{\"type\":\"put\",\"key\":\"a\",\"value\":\"2\",\"mod_rev\":3}"
#define EV3 "{\"type\":\"delete\",\"key\":\"a\",\"mod_rev\":4}"
#define PROG(r) "{\"type\":\"progress\",\"rev\":" #r "}"
#define RECON(r) "{\"type\":\"reconnect\",\"start_rev\":" #r "}"

static void watch_anomalies(void **state) {
    (void)state;
    assert_int_equal(watch(EV1 "," EV2 "," EV3), 0);
    assert_int_equal(watch(EV1 "," EV3), LINCHECK_A_WATCH_GAP);
    assert_int_equal(watch(EV1 "," EV2 "," EV2 "," EV3), LINCHECK_A_WATCH_DUP);
    assert_int_equal(watch(EV1 "," EV3 "," EV2), LINCHECK_A_WATCH_ORDER);
    assert_int_equal(watch(EV1 "," PROG(4) "," EV2 "," EV3), LINCHECK_A_PROGRESS_AHEAD);
    /* Progress past an event that never comes is a gap. */
    assert_int_equal(watch(EV1 "," PROG(3)), LINCHECK_A_WATCH_GAP);
    /* An event no write explains, and one that contradicts its write. */
    assert_int_equal(watch(EV1 "," EV2 "," EV3 ",{\"type\":\"put\",\"key\":\"a\",\"value\":"
                               "\"9\",\"mod_rev\":9}"),
                     LINCHECK_A_WATCH_PHANTOM);
    assert_int_equal(
        watch(EV1 ",{\"type\":\"put\",\"key\":\"a\",\"value\":\"9\",\"mod_rev\":3}," EV3),
        LINCHECK_A_WATCH_PHANTOM);
    /* Reconnects: resuming after the last event is fine; skipping one is a gap,
     * going back and receiving it again a duplicate. */
    assert_int_equal(watch(EV1 "," RECON(3) "," EV2 "," EV3), 0);
    assert_int_equal(watch(EV1 "," RECON(4) "," EV3), LINCHECK_A_WATCH_GAP);
    assert_int_equal(watch(EV1 "," EV2 "," RECON(3) "," EV2 "," EV3), LINCHECK_A_WATCH_DUP);
    /* Progress after everything, and a stream that simply has not caught up yet. */
    assert_int_equal(watch(EV1 "," EV2 "," EV3 "," PROG(4)), 0);
    assert_int_equal(watch(EV1 "," PROG(2)), 0);
}

/* --- histories that must pass --------------------------------------------- */

static void concurrent_overlapping_ops_pass(void **state) {
    (void)state;
    /* Reads overlapping a put may see either side of it, consistently. */
    assert_int_equal(check(PUT(1, "a", "1", 10, 50, 2) MISS(2, "a", 20, 30, 1)
                               GET(3, "a", "1", 2, 1, 25, 60, 2) MISS(4, "a", 5, 70, 1)),
                     0);
    /* A read that overlaps nothing must see the latest value; a miss before any write. */
    assert_int_equal(check(MISS(2, "a", 1, 5, 1) PUT(1, "a", "1", 10, 20, 2)
                               PUT(1, "a", "2", 30, 40, 3) GET(2, "a", "2", 3, 2, 50, 60, 3)),
                     0);
    /* Overlapping CAS: one wins, the other sees the new value. */
    assert_int_equal(
        check(PUT(1, "a", "0", 10, 20, 2) CAS(2, "a", "value", "\"0\"", "x", 30, 50, 3, true) CAS(
            3, "a", "value", "\"0\"", "y", 31, 51, 3, false) GET(1, "a", "x", 3, 2, 60, 70, 3)),
        0);
    /* A multi-key txn moves a token from a to b atomically; readers see it once. */
    assert_int_equal(
        check(PUT(
            1, "a", "t", 1, 2,
            2) "{\"client\":1,\"op\":\"txn\",\"if\":[{\"key\":\"a\",\"target\":\"version\","
               "\"cmp\":\">\",\"value\":0}],\"then\":[{\"op\":\"delete\",\"key\":\"a\"},"
               "{\"op\":\"put\",\"key\":\"b\",\"value\":\"t\"}],\"else\":[{\"op\":\"get\","
               "\"key\":\"b\"}],\"call\":10,\"return\":30,\"status\":\"ok\",\"rev\":3,"
               "\"succeeded\":true,\"results\":[{\"deleted\":1},{}]}\n"
               "{\"client\":2,\"op\":\"txn\",\"then\":[{\"op\":\"get\",\"key\":\"a\"},{\"op\":"
               "\"get\",\"key\":\"b\"}],\"call\":11,\"return\":29,\"status\":\"ok\",\"rev\":2,"
               "\"succeeded\":true,\"results\":[{\"found\":true,\"value\":\"t\",\"mod_rev\":2},"
               "{\"found\":false}]}\n" MISS(3, "a", 31, 32, 3) GET(3, "b", "t", 3, 1, 33, 34, 3)),
        0);
    /* ...and a reader that sees the token in both places is caught. */
    assert_int_equal(
        check(PUT(
            1, "a", "t", 1, 2,
            2) "{\"client\":1,\"op\":\"txn\",\"then\":[{\"op\":\"delete\",\"key\":\"a\"},"
               "{\"op\":\"put\",\"key\":\"b\",\"value\":\"t\"}],\"call\":10,\"return\":30,"
               "\"status\":\"ok\",\"rev\":3,\"succeeded\":true,\"results\":[{\"deleted\":1},{}]}\n"
               "{\"client\":2,\"op\":\"txn\",\"then\":[{\"op\":\"get\",\"key\":\"a\"},{\"op\":"
               "\"get\",\"key\":\"b\"}],\"call\":11,\"return\":29,\"status\":\"ok\",\"rev\":3,"
               "\"succeeded\":true,\"results\":[{\"found\":true,\"value\":\"t\",\"mod_rev\":2},"
               "{\"found\":true,\"value\":\"t\",\"mod_rev\":3}]}\n"),
        LINCHECK_A_NONLINEARIZABLE);
}

static void indeterminate_ops_pass(void **state) {
    (void)state;
    const char *took = "{\"client\":1,\"op\":\"put\",\"key\":\"a\",\"value\":\"1\",\"call\":10,"
                       "\"status\":\"indeterminate\"}\n";
    /* It happened: a later read sees it, and learns its revision. */
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s%s%s", took, GET(2, "a", "1", 7, 1, 100, 110, 7),
             GET(2, "a", "1", 7, 1, 120, 130, 9));
    assert_int_equal(check(buf), 0);
    /* It did not happen (yet): reads see the older value, even long after. */
    snprintf(buf, sizeof(buf), "%s%s%s", PUT(1, "a", "0", 1, 2, 2), took,
             GET(2, "a", "0", 2, 1, 100, 110, 2));
    assert_int_equal(check(buf), 0);
    /* It happened late, after reads of the old value. */
    snprintf(buf, sizeof(buf), "%s%s%s%s", PUT(1, "a", "0", 1, 2, 2), took,
             GET(2, "a", "0", 2, 1, 100, 110, 2), GET(2, "a", "1", 3, 2, 200, 210, 3));
    assert_int_equal(check(buf), 0);
    /* But not before it was invoked. */
    snprintf(buf, sizeof(buf), "%s%s", GET(2, "a", "1", 7, 1, 1, 5, 7), took);
    assert_int_equal(check(buf), LINCHECK_A_NONLINEARIZABLE);
    /* Nor can a learned revision contradict the revisions around it: its
     * mod_rev (3) is below a read that saw the old value at revision 5. */
    snprintf(buf, sizeof(buf), "%s%s%s%s", PUT(1, "a", "0", 1, 2, 2), took,
             GET(2, "a", "0", 2, 1, 100, 110, 5), GET(2, "a", "1", 3, 2, 200, 210, 6));
    assert_int_equal(check(buf), LINCHECK_A_NONLINEARIZABLE);
    /* A serializable read may be stale; the same read linearizable may not. */
    assert_int_equal(check(PUT(1, "a", "0", 1, 2, 2) PUT(
                         1, "a", "1", 3, 4,
                         3) "{\"client\":2,\"op\":\"get\",\"key\":\"a\",\"serializable\":true,"
                            "\"value\":\"0\",\"mod_rev\":2,\"call\":10,\"return\":11,"
                            "\"status\":\"ok\",\"rev\":2}"),
                     0);
    assert_int_equal(check(PUT(1, "a", "0", 1, 2, 2) PUT(1, "a", "1", 3, 4, 3)
                               GET(2, "a", "0", 2, 1, 10, 11, 3)),
                     LINCHECK_A_NONLINEARIZABLE);
    /* A failed op had no effect at all. */
    assert_int_equal(
        check(
            "{\"client\":1,\"op\":\"put\",\"key\":\"a\",\"value\":\"1\",\"call\":10,"
            "\"return\":20,\"status\":\"fail\",\"error\":\"etcdserver: request timed out\"}\n" MISS(
                2, "a", 30, 40, 1)),
        0);
}

/* A timed-out delete that a watcher saw happen did happen, at that revision. */
static void indeterminate_delete_seen_by_watcher(void **state) {
    (void)state;
    const char *base =
        PUT(1, "a", "1", 10, 20,
            2) "{\"client\":1,\"op\":\"delete\",\"key\":\"a\",\"call\":30,"
               "\"status\":\"indeterminate\"}\n" PUT(
                   2, "b", "x", 40, 50,
                   4) "{\"client\":\"w\",\"op\":\"watch\",\"key\":\"a\",\"range_end\":\"c\","
                      "\"start_rev\":2,"
                      "\"call\":1,\"return\":200,\"status\":\"ok\",\"events\":[" EV1 ",{\"type\":"
                      "\"delete\",\"key\":\"a\",\"mod_rev\":3},{\"type\":\"put\",\"key\":\"b\","
                      "\"value\":\"x\",\"mod_rev\":4}]}\n";
    char buf[2048];
    snprintf(buf, sizeof(buf), "%s%s", base, MISS(3, "a", 60, 70, 4));
    assert_int_equal(check(buf), 0);
    /* A read after the watcher's delete event still sees the value: the delete
     * cannot have been skipped. */
    snprintf(buf, sizeof(buf), "%s%s", base, GET(3, "a", "1", 2, 1, 210, 220, 4));
    assert_int_equal(check(buf), LINCHECK_A_NONLINEARIZABLE);
}

/* A lease granted, a key put with it, the lease expiring (seen by a read, a
 * TimeToLive and a watcher). */
static const char LEASE_HISTORY[] =
    "{\"client\":1,\"op\":\"lease_grant\",\"lease\":5,\"ttl\":1,\"call\":1,"
    "\"return\":2,\"status\":\"ok\",\"rev\":1}\n"
    "{\"client\":1,\"op\":\"put\",\"key\":\"l\",\"value\":\"v\",\"lease\":5,"
    "\"call\":3,\"return\":4,\"status\":\"ok\",\"rev\":2}\n"
    "{\"client\":2,\"op\":\"get\",\"key\":\"l\",\"value\":\"v\",\"mod_rev\":2,"
    "\"lease\":5,\"call\":5,\"return\":6,\"status\":\"ok\",\"rev\":2}\n"
    "{\"client\":2,\"op\":\"get\",\"key\":\"l\",\"found\":false,\"call\":10,"
    "\"return\":11,\"status\":\"ok\",\"rev\":3}\n"
    "{\"client\":2,\"op\":\"lease_expired\",\"lease\":5,\"call\":12,"
    "\"return\":13,\"status\":\"ok\"}\n"
    "{\"client\":\"w\",\"op\":\"watch\",\"key\":\"l\",\"start_rev\":2,\"call\":1,"
    "\"return\":20,\"status\":\"ok\",\"events\":[{\"type\":\"put\",\"key\":\"l\","
    "\"value\":\"v\",\"mod_rev\":2},{\"type\":\"delete\",\"key\":\"l\","
    "\"mod_rev\":3}]}\n";

static void lease_expiry_passes(void **state) {
    (void)state;
    const char *h = LEASE_HISTORY;
    assert_int_equal(check(h), 0);
    /* A key that vanished is explained by its lease expiring, unless the
     * lease was seen alive afterwards. */
    const char *vanished = "{\"client\":1,\"op\":\"lease_grant\",\"lease\":5,\"ttl\":1,\"call\":1,"
                           "\"return\":2,\"status\":\"ok\",\"rev\":1}\n"
                           "{\"client\":1,\"op\":\"put\",\"key\":\"l\",\"value\":\"v\",\"lease\":5,"
                           "\"call\":3,\"return\":4,\"status\":\"ok\",\"rev\":2}\n"
                           "{\"client\":2,\"op\":\"get\",\"key\":\"l\",\"found\":false,\"call\":5,"
                           "\"return\":6,\"status\":\"ok\",\"rev\":3}\n";
    char alive[1024];
    snprintf(alive, sizeof(alive), "%s%s", vanished,
             "{\"client\":2,\"op\":\"lease_alive\",\"lease\":5,\"call\":7,\"return\":8,"
             "\"status\":\"ok\",\"rev\":3}\n");
    assert_int_equal(check(vanished), 0);
    assert_int_equal(check(alive), LINCHECK_A_NONLINEARIZABLE);
    /* A put on a lease observed gone cannot have succeeded. */
    char buf[2048];
    snprintf(buf, sizeof(buf), "%s%s", h,
             "{\"client\":1,\"op\":\"put\",\"key\":\"m\",\"value\":\"v\",\"lease\":5,"
             "\"call\":30,\"return\":31,\"status\":\"ok\",\"rev\":4}\n");
    assert_int_equal(check(buf), LINCHECK_A_NONLINEARIZABLE);
}

/* Lease clients taking turns on one key, n times: grant a lease, put the key
 * with it, read it back (each put replaces the last before its lease
 * expires, so every earlier lease is left idle: alive or gone, nothing says
 * which). Then the key is found gone — its last lease expired — and every
 * lease is observed gone at the end. With contradiction, that last lease is
 * also seen alive after the key vanished. Returns a malloc'd history. */
static char *lease_turns(int n, int contradiction) {
    size_t cap = (size_t)n * 1024 + 2048, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < n; i++) {
        int t = 100 * i + 10, rev = i + 2;
        len += (size_t)snprintf(
            buf + len, cap - len,
            "{\"client\":1,\"op\":\"lease_grant\",\"lease\":%d,\"ttl\":1,\"call\":%d,"
            "\"return\":%d,\"status\":\"ok\",\"rev\":%d}\n"
            "{\"client\":1,\"op\":\"put\",\"key\":\"l\",\"value\":\"v%d\",\"lease\":%d,"
            "\"call\":%d,\"return\":%d,\"status\":\"ok\",\"rev\":%d}\n"
            "{\"client\":2,\"op\":\"get\",\"key\":\"l\",\"value\":\"v%d\",\"mod_rev\":%d,"
            "\"create_rev\":2,\"version\":%d,\"lease\":%d,\"call\":%d,\"return\":%d,"
            "\"status\":\"ok\",\"rev\":%d}\n",
            1000 + i, t, t + 1, rev - 1, i, 1000 + i, t + 2, t + 3, rev, i, rev, i + 1, 1000 + i,
            t + 4, t + 5, rev);
    }
    int t = 100 * n + 10;
    len += (size_t)snprintf(buf + len, cap - len,
                            "{\"client\":2,\"op\":\"get\",\"key\":\"l\",\"found\":false,"
                            "\"call\":%d,\"return\":%d,\"status\":\"ok\",\"rev\":%d}\n",
                            t, t + 1, n + 2);
    if (contradiction)
        len += (size_t)snprintf(buf + len, cap - len,
                                "{\"client\":3,\"op\":\"lease_alive\",\"lease\":%d,"
                                "\"call\":%d,\"return\":%d,\"status\":\"ok\",\"rev\":%d}\n",
                                1000 + n - 1, t + 2, t + 3, n + 2);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len,
                                "{\"client\":9,\"op\":\"lease_expired\",\"lease\":%d,"
                                "\"call\":%d,\"return\":%d,\"status\":\"ok\"}\n",
                                1000 + i, t + 10 + 2 * i, t + 11 + 2 * i);
    return buf;
}

/* Forty idle leases, each expiring at some unrecorded moment: the search must
 * not try them alive or gone in every combination, so a small budget decides
 * the history both ways. */
static void many_idle_leases_are_decided(void **state) {
    (void)state;
    struct lincheck_options opt = {.max_steps = 200000};
    char *h = lease_turns(40, 0);
    assert_int_equal(check_opts(h, &opt), 0);
    free(h);
    h = lease_turns(40, 1);
    assert_int_equal(check_opts(h, &opt), LINCHECK_A_NONLINEARIZABLE);
    free(h);
}

/* A history too concurrent for a tiny budget is UNKNOWN, not a guess. */
static void budget_gives_unknown(void **state) {
    (void)state;
    char *buf = malloc(64 * 200);
    size_t n = 0;
    assert_non_null(buf);
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(buf + n, 200,
                              "{\"client\":%d,\"op\":\"put\",\"key\":\"a\",\"value\":\"%d\","
                              "\"call\":%d,\"return\":1000,\"status\":\"ok\",\"rev\":%d}\n",
                              i, i, i, 40 - i + 1);
    struct lincheck_options opt = {.max_steps = 50};
    assert_int_equal(check_opts(buf, &opt), 1u << 30);
    free(buf);
}

static void bad_lines_are_refused(void **state) {
    (void)state;
    static const char *const bad[] = {
        "{\"client\":1,\"op\":\"put\",\"key\":\"a\"",
        "{\"client\":1,\"op\":\"frob\",\"key\":\"a\",\"call\":1,\"return\":2,\"status\":\"ok\"}",
        "{\"client\":1,\"op\":\"get\",\"key\":\"a\",\"call\":5,\"return\":2,\"status\":\"ok\"}",
        "{\"client\":1,\"op\":\"cas\",\"key\":\"a\",\"cmp\":\"value\",\"expect\":\"x\","
        "\"value\":\"y\",\"call\":1,\"return\":2,\"status\":\"ok\"}",
        "[1,2]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct lincheck_history *h;
        struct util_err err;
        assert_int_equal(lincheck_history_new(&h), 0);
        assert_int_equal(lincheck_history_add_line(h, "", 0, &err), 0);
        assert_int_equal(lincheck_history_add_line(h, bad[i], strlen(bad[i]), &err), -EINVAL);
        assert_non_null(strstr(err.msg, "history line 2"));
        lincheck_history_free(h);
    }
}

/* Every prefix of valid lines, and lines with bytes changed at random, are
 * either read (and then checked) or refused with -EINVAL: never a crash
 * (ASan and UBSan watch). */
static void parser_survives_garbage(void **state) {
    (void)state;
    static const char *const good[] = {
        "{\"client\":\"w\",\"op\":\"watch\",\"key\":\"a\",\"range_end\":\"\\u0000\",\"start_rev\":"
        "2,"
        "\"call\":1,\"return\":9,\"status\":\"ok\",\"events\":[{\"type\":\"put\",\"key\":\"a\","
        "\"value\":\"\\ud83d\\ude00\\n\",\"mod_rev\":2},{\"type\":\"progress\",\"rev\":2}]}",
        "{\"client\":1,\"op\":\"txn\",\"if\":[{\"key\":\"a\",\"target\":\"mod_rev\",\"cmp\":\"<\","
        "\"value\":-3}],\"then\":[{\"op\":\"get\",\"key\":\"a\"}],\"else\":[],\"call\":1,"
        "\"return\":2,\"status\":\"ok\",\"rev\":1,\"succeeded\":true,\"results\":[{\"found\":false}"
        "]}",
    };
    uint64_t x = 88172645463325252ull;
    for (size_t g = 0; g < sizeof(good) / sizeof(good[0]); g++) {
        size_t n = strlen(good[g]);
        char *buf = malloc(n + 1);
        assert_non_null(buf);
        for (size_t cut = 0; cut <= n + 2000; cut++) {
            struct lincheck_history *h;
            struct util_err err;
            size_t len = cut <= n ? cut : n;
            memcpy(buf, good[g], n + 1);
            if (cut > n) {
                /* Past the prefixes: flip one to three random bytes of the whole line. */
                for (int k = 0; k < 3; k++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    buf[x % n] = (char)(x >> 24);
                }
            }
            assert_int_equal(lincheck_history_new(&h), 0);
            int rc = lincheck_history_add_line(h, buf, len, &err);
            assert_true(rc == 0 || rc == -EINVAL);
            if (rc == 0) {
                struct lincheck_result res;
                assert_int_equal(lincheck_check(h, NULL, &res), 0);
                lincheck_result_free(&res);
            }
            lincheck_history_free(h);
        }
        free(buf);
    }
    /* A whole history with one line damaged at random, many times over. */
    char *hist = malloc(sizeof(LEASE_HISTORY));
    assert_non_null(hist);
    for (int round = 0; round < 2000; round++) {
        memcpy(hist, LEASE_HISTORY, sizeof(LEASE_HISTORY));
        for (int k = 0; k < 2; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t at = x % (sizeof(LEASE_HISTORY) - 1);
            if (hist[at] != '\n')
                hist[at] = (char)(x >> 24) == '\n' ? ' ' : (char)(x >> 24);
        }
        struct lincheck_history *h;
        struct util_err err;
        int ok = 1;
        assert_int_equal(lincheck_history_new(&h), 0);
        for (char *line = hist, *nl; ok && (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
            int rc = lincheck_history_add_line(h, line, (size_t)(nl - line), &err);
            assert_true(rc == 0 || rc == -EINVAL);
            ok = rc == 0;
        }
        if (ok) {
            struct lincheck_result res;
            assert_int_equal(lincheck_check(h, NULL, &res), 0);
            lincheck_result_free(&res);
        }
        lincheck_history_free(h);
    }
    free(hist);
}

/* The command line: exit code and last line carry the verdict. */
static void cli_reports_verdict(void **state) {
    (void)state;
    char path[] = "/tmp/lincheck-cli-XXXXXX", *out = NULL;
    size_t outlen = 0;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *h = PUT(1, "a", "1", 10, 20, 2) MISS(2, "a", 30, 40, 2);
    assert_int_equal(write(fd, h, strlen(h)), (ssize_t)strlen(h));
    close(fd);
    FILE *o = open_memstream(&out, &outlen);
    assert_non_null(o);
    char *argv[] = {"lincheck", "--max-steps", "1000", path, NULL};
    assert_int_equal(lincheck_cli(4, argv, o, o), LINCHECK_VIOLATION);
    fclose(o);
    assert_non_null(strstr(out, "NONLINEARIZABLE"));
    assert_non_null(strstr(out, "line 2: "));
    assert_non_null(strstr(out, "verdict: VIOLATION\n"));
    free(out);
    char *usage[] = {"lincheck", NULL};
    o = open_memstream(&out, &outlen);
    assert_int_equal(lincheck_cli(1, usage, o, o), 64);
    fclose(o);
    free(out);
    unlink(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stale_read_after_acknowledged_write),
        cmocka_unit_test(lost_write_in_final_read),
        cmocka_unit_test(write_skew_in_cas),
        cmocka_unit_test(reordered_and_shared_revisions),
        cmocka_unit_test(revision_skipped),
        cmocka_unit_test(client_revision_goes_backwards),
        cmocka_unit_test(lease_key_survives_revoke),
        cmocka_unit_test(watch_anomalies),
        cmocka_unit_test(concurrent_overlapping_ops_pass),
        cmocka_unit_test(indeterminate_ops_pass),
        cmocka_unit_test(indeterminate_delete_seen_by_watcher),
        cmocka_unit_test(lease_expiry_passes),
        cmocka_unit_test(many_idle_leases_are_decided),
        cmocka_unit_test(budget_gives_unknown),
        cmocka_unit_test(bad_lines_are_refused),
        cmocka_unit_test(parser_survives_garbage),
        cmocka_unit_test(cli_reports_verdict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
