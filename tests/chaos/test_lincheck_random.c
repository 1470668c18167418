/* lincheck against random histories: a sequential model of etcd's key space
 * (put, get, CAS on value and on mod_revision, delete, a two-key txn) runs
 * random operations, each given a random interval around its linearization
 * point and some left indeterminate (applied or not). Such a history must
 * pass; the same history with one result changed must nearly always fail. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lincheck.h"
#include "util/util.h"

#define MAX_KEYS 10

enum { R_PUT, R_GET, R_CAS_VALUE, R_CAS_MOD, R_DEL, R_TXN, R_KINDS };

/* One operation as generated: the request, its interval and its result. */
struct rec {
    int kind, key, key2, value, client, indet;
    uint64_t call, ret;
    int expect_value; /* R_CAS_VALUE, -1 = compare against a missing key */
    int64_t expect_mod, rev;
    int succeeded, found, rvalue, deleted;
    int64_t rmod, rcreate, rver;
};

/* A change of the key space, as a watcher of every key sees it. */
struct wev {
    int64_t rev;
    int key, value, del, acked; /* acked: made by an acknowledged operation */
};

struct model {
    uint64_t rng;
    int64_t rev;
    int nkeys, next_value, acked;
    struct wev *ev;
    int nev;
    struct {
        int present, value;
        int64_t ver, mod, create;
    } k[MAX_KEYS];
};

static uint64_t rnd(struct model *m, uint64_t n) {
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return m->rng % n;
}

static void model_put(struct model *m, int k, int value) {
    m->rev++;
    if (!m->k[k].present) {
        m->k[k].present = 1;
        m->k[k].ver = 0;
        m->k[k].create = m->rev;
    }
    m->k[k].value = value;
    m->k[k].ver++;
    m->k[k].mod = m->rev;
    m->ev[m->nev++] = (struct wev){m->rev, k, value, 0, m->acked};
}

static void model_read(struct model *m, int k, struct rec *r) {
    r->found = m->k[k].present;
    r->rvalue = m->k[k].value;
    r->rmod = m->k[k].mod;
    r->rcreate = m->k[k].create;
    r->rver = m->k[k].ver;
}

/* Runs r against the model at its linearization point, filling its result. */
static void model_apply(struct model *m, struct rec *r) {
    int k = r->key;
    switch (r->kind) {
    case R_PUT:
        model_put(m, k, r->value);
        break;
    case R_GET:
        model_read(m, k, r);
        break;
    case R_CAS_VALUE:
    case R_CAS_MOD:
        r->succeeded = m->k[k].present && (r->kind == R_CAS_VALUE ? m->k[k].value == r->expect_value
                                                                  : m->k[k].mod == r->expect_mod);
        if (r->kind == R_CAS_MOD && !m->k[k].present)
            r->succeeded = r->expect_mod == 0;
        if (r->succeeded)
            model_put(m, k, r->value);
        break;
    case R_DEL:
        r->deleted = m->k[k].present;
        if (r->deleted) {
            m->rev++;
            m->ev[m->nev++] = (struct wev){m->rev, k, 0, 1, m->acked};
            m->k[k].present = 0;
            m->k[k].ver = m->k[k].mod = m->k[k].create = 0;
        }
        break;
    default: /* if key has version > 0 then put key2 else get key2 */
        r->succeeded = m->k[k].ver > 0;
        if (r->succeeded)
            model_put(m, r->key2, r->value);
        else
            model_read(m, r->key2, r);
        break;
    }
    r->rev = m->rev;
}

/* A random request on the model's current state (so CAS often matches). */
static void make_request(struct model *m, struct rec *r) {
    memset(r, 0, sizeof(*r));
    r->kind = (int)rnd(m, R_KINDS);
    r->key = (int)rnd(m, (uint64_t)m->nkeys);
    r->key2 = (int)((r->key + 1 + rnd(m, (uint64_t)m->nkeys - 1)) % (uint64_t)m->nkeys);
    r->value = m->next_value++;
    int fresh = rnd(m, 3) != 0;
    r->expect_value =
        fresh && m->k[r->key].present ? m->k[r->key].value : (int)rnd(m, (uint64_t)m->next_value);
    r->expect_mod = fresh ? m->k[r->key].mod : (int64_t)rnd(m, (uint64_t)m->rev + 1);
}

static int render(const struct rec *r, char *buf, size_t n) {
    char head[160], tail[160] = "";
    snprintf(head, sizeof(head), "{\"client\":%d,\"call\":%llu,", r->client,
             (unsigned long long)r->call);
    if (r->indet)
        snprintf(tail, sizeof(tail), "\"status\":\"indeterminate\"}\n");
    else
        snprintf(tail, sizeof(tail), "\"return\":%llu,\"status\":\"ok\",\"rev\":%lld}\n",
                 (unsigned long long)r->ret, (long long)r->rev);
    char res[200] = "";
    if (r->found)
        snprintf(res, sizeof(res),
                 "\"found\":true,\"value\":\"v%d\",\"mod_rev\":%lld,\"create_rev\":%lld,"
                 "\"version\":%lld",
                 r->rvalue, (long long)r->rmod, (long long)r->rcreate, (long long)r->rver);
    else
        snprintf(res, sizeof(res), "\"found\":false");
    switch (r->kind) {
    case R_PUT:
        return snprintf(buf, n, "%s\"op\":\"put\",\"key\":\"k%d\",\"value\":\"v%d\",%s", head,
                        r->key, r->value, tail);
    case R_GET:
        return snprintf(buf, n, "%s\"op\":\"get\",\"key\":\"k%d\",%s%s%s", head, r->key,
                        r->indet ? "" : res, r->indet ? "" : ",", tail);
    case R_CAS_VALUE:
    case R_CAS_MOD: {
        char expect[40];
        if (r->kind == R_CAS_VALUE)
            snprintf(expect, sizeof(expect), "\"value\",\"expect\":\"v%d\"", r->expect_value);
        else
            snprintf(expect, sizeof(expect), "\"mod_rev\",\"expect\":%lld",
                     (long long)r->expect_mod);
        return snprintf(buf, n,
                        "%s\"op\":\"cas\",\"key\":\"k%d\",\"cmp\":%s,\"value\":\"v%d\","
                        "\"succeeded\":%s,%s",
                        head, r->key, expect, r->value, r->succeeded ? "true" : "false", tail);
    }
    case R_DEL:
        return snprintf(buf, n, "%s\"op\":\"delete\",\"key\":\"k%d\",\"deleted\":%d,%s", head,
                        r->key, r->deleted, tail);
    default: {
        char results[240] = "[{}]";
        if (!r->succeeded)
            snprintf(results, sizeof(results), "[{%s}]", res);
        return snprintf(buf, n,
                        "%s\"op\":\"txn\",\"if\":[{\"key\":\"k%d\",\"target\":\"version\","
                        "\"cmp\":\">\",\"value\":0}],\"then\":[{\"op\":\"put\",\"key\":\"k%d\","
                        "\"value\":\"v%d\"}],\"else\":[{\"op\":\"get\",\"key\":\"k%d\"}],"
                        "\"succeeded\":%s,\"results\":%s,%s",
                        head, r->key, r->key2, r->value, r->key2, r->succeeded ? "true" : "false",
                        results, tail);
    }
    }
}

/* A generated history: its operations, and every change in revision order. */
struct gen {
    struct rec *recs;
    int n;
    struct wev *ev;
    int nev;
};

/* Generates n operations over nkeys keys: operation i takes effect at time
 * 1000 i + 500 inside a random interval up to `spread` either side; a client
 * runs one operation at a time; one in `indet` times out (and takes effect or
 * not). */
static struct gen generate(uint64_t seed, int n, int nkeys, uint64_t spread, uint64_t indet) {
    struct model m = {.rng = seed * 0x9e3779b97f4a7c15ull + 1, .rev = 1, .nkeys = nkeys};
    struct gen g = {calloc((size_t)n, sizeof(struct rec)), n,
                    calloc((size_t)n + 1, sizeof(struct wev)), 0};
    uint64_t busy[256] = {0};
    assert_non_null(g.recs);
    assert_non_null(g.ev);
    m.ev = g.ev;
    for (int i = 0; i < n; i++) {
        struct rec *r = &g.recs[i];
        uint64_t at = 1000 * (uint64_t)i + 500 + spread;
        make_request(&m, r);
        r->call = at - rnd(&m, spread + 1);
        r->ret = at + rnd(&m, spread + 1);
        r->indet = indet > 0 && rnd(&m, indet) == 0;
        m.acked = !r->indet;
        if (!r->indet || rnd(&m, 2) == 0)
            model_apply(&m, r);
        int c = 0;
        while (busy[c] >= r->call)
            c++;
        assert_true(c < 256);
        r->client = c;
        busy[c] = r->ret; /* after a timeout, the client goes on */
    }
    g.nev = m.nev;
    return g;
}

static void gen_free(struct gen *g) {
    free(g->recs);
    free(g->ev);
}

/* A watcher of every key from revision 2 that saw g's events, then a
 * progress notification at the last revision. */
static void render_watch(const struct gen *g, struct util_buf *b) {
    int64_t last = g->nev > 0 ? g->ev[g->nev - 1].rev : 1;
    assert_int_equal(util_buf_printf(b,
                                     "{\"client\":\"w\",\"op\":\"watch\",\"key\":\"k\","
                                     "\"range_end\":\"l\",\"start_rev\":2,\"call\":0,"
                                     "\"return\":%d,\"status\":\"ok\",\"events\":[",
                                     1000 * g->n + 100000),
                     0);
    for (int i = 0; i < g->nev; i++) {
        const struct wev *e = &g->ev[i];
        if (e->del)
            assert_int_equal(util_buf_printf(b,
                                             "{\"type\":\"delete\",\"key\":\"k%d\","
                                             "\"mod_rev\":%lld},",
                                             e->key, (long long)e->rev),
                             0);
        else
            assert_int_equal(util_buf_printf(b,
                                             "{\"type\":\"put\",\"key\":\"k%d\",\"value\":"
                                             "\"v%d\",\"mod_rev\":%lld},",
                                             e->key, e->value, (long long)e->rev),
                             0);
    }
    assert_int_equal(util_buf_printf(b, "{\"type\":\"progress\",\"rev\":%lld}]}", (long long)last),
                     0);
}

/* Checks g's history (with its watcher when watch is set); returns the
 * verdict and, in *anomalies, what was found. */
static enum lincheck_verdict run(const struct gen *g, int watch, unsigned *anomalies) {
    struct lincheck_history *h;
    struct lincheck_result res;
    struct util_err err;
    struct util_buf w = {0};
    char line[1024];
    assert_int_equal(lincheck_history_new(&h), 0);
    for (int i = 0; i < g->n; i++) {
        int len = render(&g->recs[i], line, sizeof(line));
        assert_true(len > 0 && (size_t)len < sizeof(line));
        if (lincheck_history_add_line(h, line, (size_t)len - 1, &err) != 0)
            fail_msg("%s: %s", err.msg, line);
    }
    if (watch) {
        render_watch(g, &w);
        if (lincheck_history_add_line(h, w.data, w.len, &err) != 0)
            fail_msg("%s", err.msg);
        util_buf_free(&w);
    }
    assert_int_equal(lincheck_check(h, NULL, &res), 0);
    enum lincheck_verdict v = res.verdict;
    if (getenv("LINCHECK_VERBOSE") != NULL && res.report.len > 0)
        fprintf(stderr, "%s\n", res.report.data);
    if (anomalies != NULL)
        *anomalies = res.anomalies;
    lincheck_result_free(&res);
    lincheck_history_free(h);
    return v;
}

/* Changes one result of an acknowledged operation to one a buggy server
 * could plausibly return. Returns 0 if op i has nothing to change. */
static int mutate(struct rec *recs, int i, uint64_t pick) {
    struct rec *r = &recs[i];
    if (r->indet)
        return 0;
    switch (r->kind) {
    case R_PUT:
        r->rev += pick % 2 ? 1 : -1;
        return 1;
    case R_GET:
        if (!r->found || pick % 2) {
            r->found = !r->found;
            if (r->found) {
                /* A value of another key: present somewhere, never here. */
                r->rvalue = recs[(i + 1) % 2].value;
                r->rmod = r->rcreate = r->rev > 1 ? r->rev - 1 : 1;
                r->rver = 1;
            }
            return 1;
        }
        r->rvalue = r->rvalue + 1; /* the next value written, by whatever op */
        return 1;
    case R_CAS_VALUE:
    case R_CAS_MOD:
        r->succeeded = !r->succeeded;
        r->rev += r->succeeded ? 1 : -1;
        return 1;
    case R_DEL:
        r->deleted = !r->deleted;
        r->rev += r->deleted ? 1 : -1;
        return 1;
    default:
        return 0;
    }
}

static void random_histories_pass(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 150; seed++) {
        struct gen g = generate(seed, 200, 3, 3000, 50);
        if (run(&g, seed % 2, NULL) != LINCHECK_OK)
            fail_msg("seed %llu: a linearizable history was rejected", (unsigned long long)seed);
        gen_free(&g);
    }
}

/* Over many seeds, one changed result is found at least 95% of the time (a
 * few mutations are legitimately invisible, e.g. a stale read that overlaps
 * the write replacing it). */
static void mutated_histories_fail(void **state) {
    (void)state;
    int tried = 0, caught = 0;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        struct gen g = generate(seed, 200, 3, 3000, 50);
        struct model pick = {.rng = seed * 7919 + 3};
        int i;
        do
            i = (int)rnd(&pick, 200);
        while (!mutate(g.recs, i, rnd(&pick, 1000)));
        tried++;
        caught += run(&g, 0, NULL) == LINCHECK_VIOLATION;
        gen_free(&g);
    }
    print_message("mutations caught: %d of %d\n", caught, tried);
    assert_true(caught * 100 >= tried * 95);
}

/* A watcher that misses, repeats or swaps one event of an acknowledged write
 * is always caught, and named for what it did. */
static void mutated_watches_fail(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 60; seed++) {
        struct gen g = generate(seed, 200, 3, 3000, 50);
        struct model pick = {.rng = seed * 104729 + 7};
        int j, kind = (int)(seed % 3);
        unsigned found = 0;
        do
            j = (int)rnd(&pick, (uint64_t)g.nev - 1);
        while (!g.ev[j].acked || !g.ev[j + 1].acked);
        if (kind == 0) {
            memmove(&g.ev[j], &g.ev[j + 1], (size_t)(g.nev - j - 1) * sizeof(*g.ev));
            g.nev--;
        } else if (kind == 1) {
            memmove(&g.ev[j + 1], &g.ev[j], (size_t)(g.nev - j) * sizeof(*g.ev));
            g.nev++;
        } else {
            struct wev t = g.ev[j];
            g.ev[j] = g.ev[j + 1];
            g.ev[j + 1] = t;
        }
        assert_int_equal(run(&g, 1, &found), LINCHECK_VIOLATION);
        assert_true(found & (kind == 0   ? LINCHECK_A_WATCH_GAP
                             : kind == 1 ? LINCHECK_A_WATCH_DUP
                                         : LINCHECK_A_WATCH_ORDER));
        gen_free(&g);
    }
}

/* The size the checker is built for: 10k operations over 10 keys, 2% of them
 * timed out, all in one partition (the two-key txns join every key), checked
 * without a watcher and with one. */
static void large_history_passes(void **state) {
    (void)state;
    struct gen g = generate(42, 10000, 10, 4000, 50);
    assert_int_equal(run(&g, 0, NULL), LINCHECK_OK);
    assert_int_equal(run(&g, 1, NULL), LINCHECK_OK);
    gen_free(&g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_histories_pass),
        cmocka_unit_test(mutated_histories_fail),
        cmocka_unit_test(mutated_watches_fail),
        cmocka_unit_test(large_history_passes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
