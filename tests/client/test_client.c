/* libquoin against real servers: every test runs once against quoin and once
 * against etcd 3.4 (the reference), each started fresh on 127.0.0.1. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "client/quoin.h"
#include "noleader.h"
#include "srv.h"
#include "watchrec.h"
#include "util/util.h"

struct fixture {
    struct srv srv;
    quoin_client_t *c;
};

static int setup_kind(void **state, enum srv_kind kind) {
    struct fixture *f = calloc(1, sizeof *f);
    if (!f || srv_start(&f->srv, kind) < 0 || quoin_client_new(f->srv.endpoint, NULL, &f->c) < 0) {
        fprintf(stderr, "cannot start %s\n", kind == SRV_QUOIN ? "quoin" : "etcd");
        if (f)
            srv_destroy(&f->srv);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int setup_quoin(void **state) {
    return setup_kind(state, SRV_QUOIN);
}

static int setup_etcd(void **state) {
    return setup_kind(state, SRV_ETCD);
}

static int teardown(void **state) {
    struct fixture *f = *state;
    quoin_client_free(f->c);
    srv_destroy(&f->srv);
    free(f);
    return 0;
}

static int kv_is(const quoin_kv_t *kv, const char *key, const char *value) {
    return kv->key_len == strlen(key) && !memcmp(kv->key, key, kv->key_len) &&
           (!value || (kv->value_len == strlen(value) && !memcmp(kv->value, value, kv->value_len)));
}

/* An op on NUL-terminated strings; end and value may be NULL. */
static quoin_op_t op_of(enum quoin_op_type type, const char *key, const char *end,
                        const char *value) {
    quoin_op_t op = {.type = type, .key = key, .key_len = strlen(key)};
    if (end) {
        op.range_end = end;
        op.range_end_len = strlen(end);
    }
    if (value) {
        op.value = value;
        op.value_len = strlen(value);
    }
    return op;
}

static void test_kv(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_resp_t *r = NULL;
    int64_t deleted = 0, rev1;
    assert_int_equal(quoin_put(f->c, "kv/a", "1", 0, 0, &e), 0);
    assert_int_equal(quoin_put(f->c, "kv/b", "2", 0, 0, &e), 0);
    assert_int_equal(quoin_put(f->c, "kv/c", "3", 0, 0, &e), 0);
    assert_int_equal(quoin_get(f->c, "kv/b", 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_true(kv_is(&r->kvs[0], "kv/b", "2"));
    assert_int_equal(r->kvs[0].version, 1);
    rev1 = r->header.revision;
    quoin_resp_free(r);

    /* prefix range with a limit, then count only, then serializable */
    quoin_op_t op = op_of(QUOIN_OP_RANGE, "kv/", "kv0", NULL);
    op.limit = 2;
    assert_int_equal(quoin_do(f->c, &op, 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 2);
    assert_true(r->more);
    assert_int_equal(r->count, 3);
    assert_true(kv_is(&r->kvs[0], "kv/a", "1") && kv_is(&r->kvs[1], "kv/b", "2"));
    quoin_resp_free(r);
    op.limit = 0;
    op.count_only = 1;
    op.serializable = 1;
    assert_int_equal(quoin_do(f->c, &op, 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 0);
    assert_int_equal(r->count, 3);
    quoin_resp_free(r);

    /* overwrite with prev_kv, read the old revision */
    quoin_op_t put = op_of(QUOIN_OP_PUT, "kv/b", NULL, "22");
    put.prev_kv = 1;
    assert_int_equal(quoin_do(f->c, &put, 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 1);
    assert_true(kv_is(&r->kvs[0], "kv/b", "2"));
    quoin_resp_free(r);
    quoin_op_t old = {.type = QUOIN_OP_RANGE, .key = "kv/b", .key_len = 4, .revision = rev1};
    assert_int_equal(quoin_do(f->c, &old, 0, &r, &e), 0);
    assert_true(kv_is(&r->kvs[0], "kv/b", "2"));
    quoin_resp_free(r);

    assert_int_equal(quoin_delete(f->c, "kv/a", &deleted, 0, &e), 0);
    assert_int_equal(deleted, 1);
    assert_int_equal(quoin_delete(f->c, "kv/a", &deleted, 0, &e), 0);
    assert_int_equal(deleted, 0);
    quoin_op_t del = op_of(QUOIN_OP_DELETE, "kv/", "kv0", NULL);
    del.prev_kv = 1;
    assert_int_equal(quoin_do(f->c, &del, 0, &r, &e), 0);
    assert_int_equal(r->deleted, 2);
    assert_int_equal(r->n_kvs, 2);
    quoin_resp_free(r);
    assert_int_equal(quoin_get(f->c, "kv/c", 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 0);
    quoin_resp_free(r);
}

static void test_txn(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_resp_t *r = NULL;
    assert_int_equal(quoin_put(f->c, "txn/k", "old", 0, 0, &e), 0);
    quoin_cmp_t cmp = {.key = "txn/k",
                       .key_len = 5,
                       .target = QUOIN_CMP_VALUE,
                       .result = QUOIN_CMP_EQUAL,
                       .value = "old",
                       .value_len = 3};
    quoin_op_t then = {
        .type = QUOIN_OP_PUT, .key = "txn/k", .key_len = 5, .value = "new", .value_len = 3};
    quoin_op_t els = {.type = QUOIN_OP_RANGE, .key = "txn/k", .key_len = 5};
    assert_int_equal(quoin_txn(f->c, &cmp, 1, &then, 1, &els, 1, 0, &r, &e), 0);
    assert_true(r->succeeded);
    assert_int_equal(r->n_ops, 1);
    assert_int_equal(r->ops[0].op, QUOIN_OP_PUT);
    quoin_resp_free(r);
    /* the same compare-and-swap now fails and runs the else branch */
    assert_int_equal(quoin_txn(f->c, &cmp, 1, &then, 1, &els, 1, 0, &r, &e), 0);
    assert_false(r->succeeded);
    assert_int_equal(r->n_ops, 1);
    assert_int_equal(r->ops[0].op, QUOIN_OP_RANGE);
    assert_int_equal(r->ops[0].n_kvs, 1);
    assert_true(kv_is(&r->ops[0].kvs[0], "txn/k", "new"));
    quoin_resp_free(r);
    /* create-if-absent: version == 0 */
    quoin_cmp_t absent = {
        .key = "txn/new", .key_len = 7, .target = QUOIN_CMP_VERSION, .result = QUOIN_CMP_EQUAL};
    quoin_op_t create = {
        .type = QUOIN_OP_PUT, .key = "txn/new", .key_len = 7, .value = "x", .value_len = 1};
    assert_int_equal(quoin_txn(f->c, &absent, 1, &create, 1, NULL, 0, 0, &r, &e), 0);
    assert_true(r->succeeded);
    quoin_resp_free(r);
    assert_int_equal(quoin_txn(f->c, &absent, 1, &create, 1, NULL, 0, 0, &r, &e), 0);
    assert_false(r->succeeded);
    quoin_resp_free(r);
}

static void test_compact(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_resp_t *r = NULL;
    int64_t rev;
    assert_int_equal(quoin_put(f->c, "cmp/k", "1", 0, 0, &e), 0);
    assert_int_equal(quoin_get(f->c, "cmp/k", 0, &r, &e), 0);
    rev = r->header.revision;
    quoin_resp_free(r);
    assert_int_equal(quoin_put(f->c, "cmp/k", "2", 0, 0, &e), 0);
    assert_int_equal(quoin_put(f->c, "cmp/k", "3", 0, 0, &e), 0);
    assert_int_equal(quoin_compact(f->c, rev + 1, 1, 0, &e), 0);
    quoin_op_t old = {.type = QUOIN_OP_RANGE, .key = "cmp/k", .key_len = 5, .revision = rev};
    assert_int_equal(quoin_do(f->c, &old, 0, &r, &e), -EIO);
    assert_null(r);
    assert_int_equal(e.code, QUOIN_OUT_OF_RANGE);
    assert_string_equal(e.message, "etcdserver: mvcc: required revision has been compacted");
    /* compacting again at the same revision is refused the same way */
    assert_int_equal(quoin_compact(f->c, rev + 1, 0, 0, &e), -EIO);
    assert_int_equal(e.code, QUOIN_OUT_OF_RANGE);
}

static void test_lease(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_resp_t *r = NULL;
    int64_t id;
    assert_int_equal(quoin_lease_grant(f->c, 60, 0, 0, &r, &e), 0);
    id = r->lease_id;
    assert_true(id != 0);
    assert_int_equal(r->ttl, 60);
    quoin_resp_free(r);
    assert_int_equal(quoin_put(f->c, "lease/k", "v", id, 0, &e), 0);
    assert_int_equal(quoin_lease_ttl(f->c, id, 1, 0, &r, &e), 0);
    assert_int_equal(r->granted_ttl, 60);
    assert_true(r->ttl > 50 && r->ttl <= 60);
    assert_int_equal(r->n_lease_keys, 1);
    assert_int_equal(r->lease_key_lens[0], 7);
    assert_memory_equal(r->lease_keys[0], "lease/k", 7);
    quoin_resp_free(r);
    assert_int_equal(quoin_lease_keepalive_once(f->c, id, 0, &r, &e), 0);
    assert_true(r->lease_id == id);
    assert_int_equal(r->ttl, 60);
    quoin_resp_free(r);
    assert_int_equal(quoin_lease_revoke(f->c, id, 0, &e), 0);
    assert_int_equal(quoin_lease_keepalive_once(f->c, id, 0, &r, &e), 0);
    assert_true(r->ttl <= 0);
    quoin_resp_free(r);
    assert_int_equal(quoin_get(f->c, "lease/k", 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 0);
    quoin_resp_free(r);
    assert_int_equal(quoin_lease_revoke(f->c, id, 0, &e), -EIO);
    assert_int_equal(e.code, QUOIN_NOT_FOUND);
    assert_string_equal(e.message, "etcdserver: requested lease not found");
    assert_int_equal(quoin_lease_ttl(f->c, id, 0, 0, &r, &e), 0);
    assert_int_equal(r->ttl, -1);
    quoin_resp_free(r);
    /* a put with a lease that does not exist */
    assert_int_equal(quoin_put(f->c, "lease/k", "v", id, 0, &e), -EIO);
    assert_int_equal(e.code, QUOIN_NOT_FOUND);
}

static void test_status_members(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_resp_t *r = NULL;
    uint64_t member;
    assert_int_equal(quoin_status(f->c, 0, &r, &e), 0);
    assert_non_null(r->version);
    assert_true(strncmp(r->version, "3.4.", 4) == 0);
    assert_true(r->db_size > 0);
    assert_int_equal(r->leader, r->header.member_id);
    member = r->header.member_id;
    quoin_resp_free(r);
    assert_int_equal(quoin_member_list(f->c, 0, &r, &e), 0);
    assert_int_equal(r->n_members, 1);
    assert_true(r->members[0].id == member);
    assert_string_equal(r->members[0].name, "n1");
    assert_int_equal(r->members[0].n_client_urls, 1);
    assert_int_equal(r->members[0].n_peer_urls, 1);
    quoin_resp_free(r);
}

/* Bad arguments never reach the server. */
static void test_bad_args(void **state) {
    struct fixture *f = *state;
    quoin_error_t e;
    quoin_op_t op = {.type = 7, .key = "k", .key_len = 1};
    assert_int_equal(quoin_do(f->c, &op, 0, NULL, &e), -EINVAL);
    op.type = QUOIN_OP_PUT;
    op.key = NULL;
    assert_int_equal(quoin_do(f->c, &op, 0, NULL, &e), -EINVAL);
    /* an empty key is the server's to refuse, with etcd's words */
    op.key_len = 0;
    assert_int_equal(quoin_do(f->c, &op, 0, NULL, &e), -EIO);
    assert_int_equal(e.code, QUOIN_INVALID_ARGUMENT);
    assert_string_equal(e.message, "etcdserver: key is not provided");
}

/* ---- blocking calls from several threads on one client ---- */

struct thread_arg {
    quoin_client_t *c;
    int id;
    int bad;
};

static void *thread_main(void *p) {
    struct thread_arg *t = p;
    for (int i = 0; i < 50; i++) {
        char k[32], v[32];
        quoin_resp_t *r = NULL;
        snprintf(k, sizeof k, "thr/%d/%d", t->id, i);
        snprintf(v, sizeof v, "v%d.%d", t->id, i);
        if (quoin_put(t->c, k, v, 0, 0, NULL) != 0 || quoin_get(t->c, k, 0, &r, NULL) != 0 ||
            r->n_kvs != 1 || !kv_is(&r->kvs[0], k, v))
            t->bad++;
        quoin_resp_free(r);
    }
    return NULL;
}

static void test_threads(void **state) {
    struct fixture *f = *state;
    pthread_t th[4];
    struct thread_arg args[4];
    quoin_resp_t *r = NULL;
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){.c = f->c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].bad, 0);
    }
    quoin_op_t all = {.type = QUOIN_OP_RANGE,
                      .key = "thr/",
                      .key_len = 4,
                      .range_end = "thr0",
                      .range_end_len = 4,
                      .count_only = 1};
    assert_int_equal(quoin_do(f->c, &all, 0, &r, NULL), 0);
    assert_int_equal(r->count, 200);
    quoin_resp_free(r);
}

/* ---- asynchronous use on the caller's loop ---- */

struct async_state {
    quoin_client_t *c;
    int step;
    int bad_step; /* first step whose answer was wrong, -1 if none */
    int64_t revision, lease;
    quoin_error_t err;
};

/* Every asynchronous call in turn, each started from the previous one's
 * callback (on the loop thread). */
static void async_cb(void *arg, quoin_resp_t *r, const quoin_error_t *err) {
    struct async_state *a = arg;
    quoin_client_t *c = a->c;
    int ok = 1;
    if (err) {
        a->err = *err;
        quoin_client_free(c);
        return;
    }
    switch (a->step) {
    case 0: { /* put */
        quoin_op_t get = {.type = QUOIN_OP_RANGE, .key = "async/k", .key_len = 7};
        quoin_do_async(c, &get, 0, async_cb, a);
        break;
    }
    case 1: { /* get */
        quoin_cmp_t cmp = {.key = "async/k",
                           .key_len = 7,
                           .target = QUOIN_CMP_VERSION,
                           .result = QUOIN_CMP_GREATER,
                           .number = 0};
        quoin_op_t get = {.type = QUOIN_OP_RANGE, .key = "async/k", .key_len = 7};
        ok = r->n_kvs == 1 && kv_is(&r->kvs[0], "async/k", "v");
        a->revision = ok ? r->kvs[0].mod_revision : 0;
        quoin_txn_async(c, &cmp, 1, &get, 1, NULL, 0, 0, async_cb, a);
        break;
    }
    case 2: /* txn */
        ok = r->succeeded && r->n_ops == 1 && r->ops[0].n_kvs == 1;
        quoin_lease_grant_async(c, 30, 0, 0, async_cb, a);
        break;
    case 3: /* lease grant */
        a->lease = r->lease_id;
        ok = r->ttl == 30;
        quoin_lease_ttl_async(c, a->lease, 0, 0, async_cb, a);
        break;
    case 4: /* time to live */
        ok = r->granted_ttl == 30 && r->ttl > 0;
        quoin_lease_keepalive_once_async(c, a->lease, 0, async_cb, a);
        break;
    case 5: /* keep-alive once */
        ok = r->lease_id == a->lease && r->ttl == 30;
        quoin_lease_revoke_async(c, a->lease, 0, async_cb, a);
        break;
    case 6: /* revoke */
        quoin_status_async(c, 0, async_cb, a);
        break;
    case 7: /* status */
        ok = r->version && r->leader == r->header.member_id;
        quoin_member_list_async(c, 0, async_cb, a);
        break;
    case 8: /* member list */
        ok = r->n_members == 1;
        quoin_compact_async(c, a->revision, 0, 0, async_cb, a);
        break;
    default: /* compact */
        quoin_client_free(c);
        break;
    }
    if (!ok && a->bad_step < 0)
        a->bad_step = a->step;
    a->step++;
    quoin_resp_free(r);
}

static void test_async_on_loop(void **state) {
    struct fixture *f = *state;
    uv_loop_t loop;
    struct async_state a = {.bad_step = -1};
    quoin_op_t put = {
        .type = QUOIN_OP_PUT, .key = "async/k", .key_len = 7, .value = "v", .value_len = 1};
    sigset_t pipe, was;
    /* the loop runs on this thread: SIGPIPE is blocked here meanwhile, as the
     * header asks; every other test relies on the client's own thread */
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &was);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(quoin_client_new_on_loop(&loop, f->srv.endpoint, NULL, &a.c), 0);
    /* blocking calls are refused on such a client */
    assert_int_equal(quoin_put(a.c, "x", "y", 0, 0, NULL), -EDEADLK);
    assert_int_equal(quoin_do_async(a.c, &put, 0, async_cb, &a), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_sigmask(SIG_SETMASK, &was, NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(a.err.code, 0);
    assert_int_equal(a.step, 10);
    assert_int_equal(a.bad_step, -1);
}

/* ---- deadlines ---- */

/* A listener that accepts TCP (kernel backlog) and never answers. */
static int blackhole(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 50 && fd >= 0; i++) {
        *port = 20000 + rand() % 10000;
        sa.sin_port = htons((uint16_t)*port);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 16) == 0)
            return fd;
    }
    if (fd >= 0)
        close(fd);
    return -1;
}

static void test_deadline(void **state) {
    struct fixture *f = *state;
    quoin_client_t *c;
    quoin_error_t e;
    quoin_resp_t *r = (quoin_resp_t *)1;
    char ep[64];
    int port, fd = blackhole(&port);
    uint64_t t0, ms;
    assert_true(fd >= 0);
    snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
    assert_int_equal(quoin_client_new(ep, NULL, &c), 0);
    t0 = util_now_mono_ns();
    assert_int_equal(quoin_get(c, "k", 300, &r, &e), -ETIMEDOUT);
    ms = (util_now_mono_ns() - t0) / 1000000;
    assert_null(r);
    assert_int_equal(e.code, QUOIN_DEADLINE_EXCEEDED);
    assert_string_equal(e.message, "context deadline exceeded");
    assert_true(ms >= 290 && ms < 2000);
    quoin_client_free(c);
    close(fd);
    /* a live server answers well within a short deadline; the call after a
     * fired deadline on the same client still works */
    assert_int_equal(quoin_get(f->c, "k", 2000, &r, &e), 0);
    quoin_resp_free(r);
    /* a deadline too long for 8 digits of milliseconds is still valid gRPC */
    assert_int_equal(quoin_get(f->c, "k", 200000000, &r, &e), 0);
    quoin_resp_free(r);
}

static void record_cb(void *arg, quoin_resp_t *resp, const quoin_error_t *err) {
    quoin_error_t *out = arg;
    quoin_resp_free(resp);
    out->code = err ? err->code : 0;
    snprintf(out->message, sizeof out->message, "%s", err ? err->message : "");
}

/* Freeing a client with calls in flight answers them with Cancelled. */
static void test_free_cancels(void **state) {
    (void)state;
    quoin_client_t *c;
    quoin_error_t e = {.code = -1};
    char ep[64];
    int port, fd = blackhole(&port);
    assert_true(fd >= 0);
    snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
    assert_int_equal(quoin_client_new(ep, NULL, &c), 0);
    assert_int_equal(quoin_status_async(c, 10000, record_cb, &e), 0);
    usleep(100000);
    quoin_client_free(c);
    close(fd);
    assert_int_equal(e.code, QUOIN_CANCELLED);
    assert_string_equal(e.message, "client closed");
}

/* ---- watch across a restart ---- */

/* Puts until one succeeds (the server may still be starting). */
static void put_retry(quoin_client_t *c, const char *k, const char *v) {
    quoin_error_t e;
    for (int i = 0; i < 100; i++) {
        if (quoin_put(c, k, v, 0, 1000, &e) == 0)
            return;
        usleep(50000);
    }
    fail_msg("put %s: %s", k, e.message);
}

static void test_watch_restart(void **state) {
    struct fixture *f = *state;
    struct watchrec w;
    quoin_watch_t *h;
    quoin_watch_options_t o = {.range_end = "wr0", .range_end_len = 3};
    char k[16];
    watchrec_init(&w);
    assert_int_equal(quoin_watch(f->c, "wr/", 3, &o, watchrec_cb, &w, &h), 0);
    usleep(300000); /* the watch is created before the first put */
    for (int i = 0; i < 5; i++) {
        snprintf(k, sizeof k, "wr/%d", i);
        put_retry(f->c, k, "v");
    }
    assert_int_equal(watchrec_wait(&w, 5, 5000), 5);
    srv_stop(&f->srv, 0);
    assert_int_equal(srv_restart(&f->srv), 0);
    /* these land before the watch's stream is back: it must catch up on them */
    for (int i = 5; i < 10; i++) {
        snprintf(k, sizeof k, "wr/%d", i);
        put_retry(f->c, k, "v");
    }
    assert_int_equal(watchrec_wait(&w, 10, 10000), 10);
    usleep(200000);
    assert_true(watchrec_is_sequence(&w, "wr/", 10));
    quoin_watch_cancel(h);
    assert_int_equal(watchrec_wait_end(&w, 1000), QUOIN_CANCELLED);
    watchrec_destroy(&w);
}

/* A watch from a compacted revision ends with the compaction error. */
static void test_watch_compacted(void **state) {
    struct fixture *f = *state;
    struct watchrec w;
    quoin_watch_t *h;
    quoin_resp_t *r;
    quoin_error_t e;
    watchrec_init(&w);
    put_retry(f->c, "wc/k", "1");
    put_retry(f->c, "wc/k", "2");
    assert_int_equal(quoin_get(f->c, "wc/k", 0, &r, &e), 0);
    int64_t rev = r->header.revision;
    quoin_resp_free(r);
    assert_int_equal(quoin_compact(f->c, rev, 0, 0, &e), 0);
    quoin_watch_options_t o = {.start_revision = rev - 1};
    assert_int_equal(quoin_watch(f->c, "wc/k", 4, &o, watchrec_cb, &w, &h), 0);
    assert_int_equal(watchrec_wait_end(&w, 3000), QUOIN_OUT_OF_RANGE);
    quoin_watch_cancel(h);
    usleep(50000);
    watchrec_destroy(&w);
}

/* A watch cancelled at once, before the client's thread has even made it,
 * still ends with exactly one Cancelled callback. */
static void test_watch_cancel_at_once(void **state) {
    struct fixture *f = *state;
    struct watchrec w;
    quoin_watch_t *h;
    watchrec_init(&w);
    assert_int_equal(quoin_watch(f->c, "wq", 2, NULL, watchrec_cb, &w, &h), 0);
    quoin_watch_cancel(h);
    assert_int_equal(watchrec_wait_end(&w, 1000), QUOIN_CANCELLED);
    put_retry(f->c, "wq", "v");
    usleep(100000);
    assert_int_equal(watchrec_count(&w), 0);
    watchrec_destroy(&w);
}

/* ---- keep-alive across a restart ---- */

static void test_keepalive_restart(void **state) {
    struct fixture *f = *state;
    quoin_keepalive_t *ka;
    quoin_resp_t *r = NULL;
    quoin_error_t e;
    int64_t id;
    assert_int_equal(quoin_lease_grant(f->c, 3, 0, 0, &r, &e), 0);
    id = r->lease_id;
    quoin_resp_free(r);
    put_retry(f->c, "ka/k", "v");
    quoin_op_t put = {.type = QUOIN_OP_PUT,
                      .key = "ka/k",
                      .key_len = 4,
                      .value = "v",
                      .value_len = 1,
                      .lease = id};
    assert_int_equal(quoin_do(f->c, &put, 0, NULL, &e), 0);
    assert_int_equal(quoin_keepalive(f->c, id, NULL, NULL, &ka), 0);
    usleep(1500000);
    srv_stop(&f->srv, 0);
    assert_int_equal(srv_restart(&f->srv), 0);
    usleep(4000000); /* longer than the TTL: only the keep-alive holds the lease */
    assert_int_equal(quoin_get(f->c, "ka/k", 0, &r, &e), 0);
    assert_int_equal(r->n_kvs, 1);
    quoin_resp_free(r);
    assert_int_equal(quoin_lease_ttl(f->c, id, 0, 0, &r, &e), 0);
    assert_true(r->ttl > 0);
    quoin_resp_free(r);
    quoin_keepalive_stop(ka);
    assert_int_equal(quoin_lease_revoke(f->c, id, 0, &e), 0);
}

/* ---- calls in flight while the server restarts ---- */

struct load {
    quoin_client_t *c;
    atomic_int stop;
    int reads, read_errors, writes, write_unavailable, write_other;
    quoin_error_t last;
};

static void *load_main(void *p) {
    struct load *l = p;
    while (!atomic_load(&l->stop)) {
        quoin_resp_t *r = NULL;
        quoin_error_t e;
        if (quoin_get(l->c, "load/k", 8000, &r, &e) == 0)
            l->reads++;
        else
            l->read_errors++, l->last = e;
        quoin_resp_free(r);
        int rc = quoin_put(l->c, "load/k", "v", 0, 8000, &e);
        l->writes++;
        if (rc != 0 && e.code == QUOIN_UNAVAILABLE)
            l->write_unavailable++;
        else if (rc != 0)
            l->write_other++, l->last = e;
    }
    return NULL;
}

/* Reads ride through a restart (sent again on the new connection); a write
 * that may have been applied is reported Unavailable, never anything else. */
static void test_restart_under_load(void **state) {
    struct fixture *f = *state;
    struct load l[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        l[i] = (struct load){.c = f->c};
        atomic_init(&l[i].stop, 0);
        assert_int_equal(pthread_create(&th[i], NULL, load_main, &l[i]), 0);
    }
    usleep(300000);
    srv_stop(&f->srv, 0);
    assert_int_equal(srv_restart(&f->srv), 0);
    usleep(300000);
    for (int i = 0; i < 4; i++) {
        atomic_store(&l[i].stop, 1);
        pthread_join(th[i], NULL);
        if (l[i].read_errors || l[i].write_other)
            print_message("last error: %d %s\n", l[i].last.code, l[i].last.message);
        assert_int_equal(l[i].read_errors, 0);
        assert_int_equal(l[i].write_other, 0);
        assert_true(l[i].reads > 0 && l[i].writes > l[i].write_unavailable);
    }
}

/* ---- failover to a second endpoint (two independent single members: the
 * connection only; test_client_cluster.c fails over within a cluster) ---- */

static void test_failover(void **state) {
    struct fixture *f = *state;
    struct srv second;
    quoin_client_t *c;
    quoin_error_t e;
    char eps[160];
    assert_int_equal(srv_start(&second, f->srv.kind), 0);
    snprintf(eps, sizeof eps, "%s,%s", f->srv.endpoint, second.endpoint);
    assert_int_equal(quoin_client_new(eps, NULL, &c), 0);
    assert_int_equal(quoin_put(c, "fo/k", "first", 0, 0, &e), 0);
    assert_string_equal(quoin_client_endpoint(c), f->srv.endpoint);
    srv_stop(&f->srv, 1);
    assert_int_equal(quoin_put(c, "fo/k", "second", 0, 3000, &e), 0);
    assert_string_equal(quoin_client_endpoint(c), second.endpoint);
    quoin_client_free(c);
    srv_destroy(&second);
    assert_int_equal(srv_restart(&f->srv), 0);
}

/* A member that answers "etcdserver: no leader": with one endpoint the caller
 * gets etcd's error; with a second endpoint the call moves on and succeeds. */
static void test_no_leader_failover(void **state) {
    struct fixture *f = *state;
    struct noleader nl;
    quoin_client_t *c;
    quoin_error_t e;
    char eps[160];
    assert_int_equal(noleader_start(&nl), 0);
    assert_int_equal(quoin_client_new(nl.endpoint, NULL, &c), 0);
    assert_int_equal(quoin_put(c, "nl/k", "v", 0, 2000, &e), -EIO);
    assert_int_equal(e.code, QUOIN_UNAVAILABLE);
    assert_string_equal(e.message, "etcdserver: no leader");
    quoin_client_free(c);
    snprintf(eps, sizeof eps, "%s,%s", nl.endpoint, f->srv.endpoint);
    assert_int_equal(quoin_client_new(eps, NULL, &c), 0);
    assert_int_equal(quoin_put(c, "nl/k", "v", 0, 3000, &e), 0);
    assert_string_equal(quoin_client_endpoint(c), f->srv.endpoint);
    assert_int_equal(atomic_load(&nl.puts), 2);
    quoin_client_free(c);
    noleader_stop(&nl);
}

#define CLIENT_TESTS                                                                               \
    cmocka_unit_test(test_kv), cmocka_unit_test(test_txn), cmocka_unit_test(test_compact),         \
        cmocka_unit_test(test_lease), cmocka_unit_test(test_status_members),                       \
        cmocka_unit_test(test_bad_args), cmocka_unit_test(test_threads),                           \
        cmocka_unit_test(test_async_on_loop), cmocka_unit_test(test_deadline),                     \
        cmocka_unit_test(test_free_cancels), cmocka_unit_test(test_watch_restart),                 \
        cmocka_unit_test(test_watch_compacted), cmocka_unit_test(test_watch_cancel_at_once),       \
        cmocka_unit_test(test_keepalive_restart), cmocka_unit_test(test_restart_under_load),       \
        cmocka_unit_test(test_failover), cmocka_unit_test(test_no_leader_failover)

int main(void) {
    const struct CMUnitTest tests[] = {CLIENT_TESTS};
    int failed = cmocka_run_group_tests_name("client against quoin", tests, setup_quoin, teardown);
    failed += cmocka_run_group_tests_name("client against etcd 3.4", tests, setup_etcd, teardown);
    return failed;
}
