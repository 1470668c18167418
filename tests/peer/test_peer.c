/* Peer transport tests: real transports on 127.0.0.1 in one process —
 * message exchange of every type, per-peer order, redial after a restart,
 * membership updates, backpressure against a peer that never reads, the
 * cluster-id handshake, and descriptors back to baseline after close. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#define CLUSTER 0xc1u

static bool has_msgs(struct tnode *n, void *arg) {
    return tnode_count(n, PEER_EV_MSG, -1) >= *(size_t *)arg;
}

static bool has_unreachable(struct tnode *n, void *arg) {
    (void)arg;
    return tnode_count(n, PEER_EV_UNREACHABLE, -1) > 0;
}

/* A full mesh of k transports with ids 1..k. */
static void mesh(struct tnode *nodes, int k) {
    for (int i = 0; i < k; i++)
        tnode_start(&nodes[i], CLUSTER, (uint64_t)i + 1, tport(i), NULL);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            if (i != j)
                tnode_know(&nodes[i], (uint64_t)j + 1, tport(j));
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            if (i != j)
                assert_true(tnode_connected(&nodes[i], (uint64_t)j + 1, 5000));
}

static void assert_same_msg(const struct raft_msg *a, const struct raft_msg *b) {
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->to, b->to);
    assert_int_equal(a->from, b->from);
    assert_int_equal(a->term, b->term);
    assert_int_equal(a->log_term, b->log_term);
    assert_int_equal(a->index, b->index);
    assert_int_equal(a->commit, b->commit);
    assert_int_equal(a->reject, b->reject);
    assert_int_equal(a->reject_hint, b->reject_hint);
    assert_int_equal(a->context, b->context);
    assert_int_equal(a->n_entries, b->n_entries);
    for (size_t i = 0; i < a->n_entries; i++) {
        assert_int_equal(a->entries[i].term, b->entries[i].term);
        assert_int_equal(a->entries[i].index, b->entries[i].index);
        assert_int_equal(a->entries[i].type, b->entries[i].type);
        assert_int_equal(a->entries[i].len, b->entries[i].len);
        if (a->entries[i].len)
            assert_memory_equal(a->entries[i].data, b->entries[i].data, a->entries[i].len);
    }
}

static const uint32_t NET_TYPES[] = {
    RAFT_MSG_PROP,          RAFT_MSG_APP,        RAFT_MSG_APP_RESP,        RAFT_MSG_VOTE,
    RAFT_MSG_VOTE_RESP,     RAFT_MSG_HEARTBEAT,  RAFT_MSG_HEARTBEAT_RESP,  RAFT_MSG_TRANSFER_LEADER,
    RAFT_MSG_TIMEOUT_NOW,   RAFT_MSG_READ_INDEX, RAFT_MSG_READ_INDEX_RESP, RAFT_MSG_PRE_VOTE,
    RAFT_MSG_PRE_VOTE_RESP,
};
#define N_TYPES (sizeof(NET_TYPES) / sizeof(NET_TYPES[0]))

/* Every network message type, with entries (empty data and a conf change
 * included), crosses from 1 to 2 and from 3 to 1 with every field intact. */
static void test_every_type_with_entries(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode nodes[3];
    memset(nodes, 0, sizeof(nodes));
    mesh(nodes, 3);
    uint8_t big[3000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    struct raft_entry ents[3] = {
        {.term = 4, .index = 10, .type = RAFT_ENTRY_NORMAL, .len = sizeof(big), .data = big},
        {.term = 4, .index = 11, .type = RAFT_ENTRY_NORMAL, .len = 0, .data = NULL},
        {.term = 5, .index = 12, .type = RAFT_ENTRY_CONF_CHANGE, .len = 5, .data = big + 10},
    };
    struct raft_msg sent[2][N_TYPES];
    for (int dir = 0; dir < 2; dir++) {
        uint64_t from = dir == 0 ? 1 : 3, to = dir == 0 ? 2 : 1;
        for (size_t i = 0; i < N_TYPES; i++) {
            struct raft_msg m = {.type = NET_TYPES[i],
                                 .to = to,
                                 .from = from,
                                 .term = 5 + i,
                                 .log_term = 4,
                                 .index = 100 + i,
                                 .commit = 90 + i,
                                 .reject = i % 2,
                                 .reject_hint = i * 3,
                                 .context = i % 3 == 0 ? 0 : 0x0102030405060708ull + i};
            if (NET_TYPES[i] == RAFT_MSG_APP || NET_TYPES[i] == RAFT_MSG_PROP) {
                m.entries = ents;
                m.n_entries = 3;
            }
            sent[dir][i] = m;
            assert_int_equal(peer_transport_send(nodes[from - 1].pt, &m), 0);
        }
    }
    size_t want = N_TYPES;
    assert_true(tnode_wait(&nodes[1], has_msgs, &want, 5000));
    assert_true(tnode_wait(&nodes[0], has_msgs, &want, 5000));
    for (size_t i = 0; i < N_TYPES; i++) {
        assert_int_equal(nodes[1].evs[i]->type, PEER_EV_MSG);
        assert_int_equal(nodes[1].evs[i]->peer, 1);
        assert_same_msg(&nodes[1].evs[i]->msg, &sent[0][i]);
        assert_same_msg(&nodes[0].evs[i]->msg, &sent[1][i]);
    }
    assert_int_equal(tnode_count(&nodes[2], PEER_EV_MSG, -1), 0);

    /* Local types and snapshots sent the wrong way are refused at once. */
    struct raft_msg local = {.type = RAFT_MSG_HUP, .to = 2, .from = 1};
    assert_int_equal(peer_transport_send(nodes[0].pt, &local), -EINVAL);
    local.type = RAFT_MSG_SNAP;
    assert_int_equal(peer_transport_send(nodes[0].pt, &local), -EINVAL);

    struct peer_stats st;
    assert_int_equal(peer_transport_stats(nodes[0].pt, 2, &st), 0);
    assert_int_equal(st.sent_msgs, N_TYPES);
    assert_int_equal(st.queued_msgs, 0);
    for (int i = 0; i < 3; i++)
        tnode_stop(&nodes[i], false);
    assert_int_equal(fd_count(), fds);
}

/* Messages to one peer arrive in the order they were sent, none lost while
 * the queue bound is not reached, even when two senders interleave. */
static void test_order_per_peer(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode nodes[3];
    memset(nodes, 0, sizeof(nodes));
    mesh(nodes, 3);
    enum { N = 3000 };
    uint8_t payload[100] = {0};
    for (uint64_t i = 1; i <= N; i++) {
        struct raft_entry e = {.term = 1, .index = i, .len = sizeof(payload), .data = payload};
        for (uint64_t from = 1; from <= 3; from += 2) {
            struct raft_msg m = {.type = RAFT_MSG_APP,
                                 .to = 2,
                                 .from = from,
                                 .index = i,
                                 .entries = &e,
                                 .n_entries = 1};
            assert_int_equal(peer_transport_send(nodes[from - 1].pt, &m), 0);
        }
    }
    size_t want = 2 * N;
    assert_true(tnode_wait(&nodes[1], has_msgs, &want, 20000));
    uint64_t next[4] = {0, 1, 0, 1};
    for (size_t i = 0; i < nodes[1].n_evs; i++) {
        const struct peer_event *ev = nodes[1].evs[i];
        assert_int_equal(ev->type, PEER_EV_MSG);
        assert_int_equal(ev->msg.index, next[ev->peer]);
        assert_int_equal(ev->msg.entries[0].index, next[ev->peer]);
        next[ev->peer]++;
    }
    assert_int_equal(next[1], N + 1);
    assert_int_equal(next[3], N + 1);
    for (int i = 0; i < 3; i++)
        tnode_stop(&nodes[i], false);
    assert_int_equal(fd_count(), fds);
}

/* A peer whose listener goes away is reported unreachable, messages to it
 * fail fast, and the stream comes back by itself once it listens again. */
static void test_redial_after_restart(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode nodes[2];
    memset(nodes, 0, sizeof(nodes));
    mesh(nodes, 2);
    tnode_stop(&nodes[1], false);
    assert_true(tnode_wait(&nodes[0], has_unreachable, NULL, 5000));
    struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .to = 2, .from = 1, .term = 7};
    assert_int_equal(peer_transport_send(nodes[0].pt, &m), -ENOTCONN);
    /* Reports are coalesced: one "unreachable" waits at a time. */
    assert_int_equal(peer_transport_send(nodes[0].pt, &m), -ENOTCONN);
    assert_true(tnode_peer_error(&nodes[0], 2, "connect: connection refused", 5000));
    struct peer_stats st;
    assert_int_equal(peer_transport_stats(nodes[0].pt, 2, &st), 0);
    assert_false(st.connected);

    tnode_start(&nodes[1], CLUSTER, 2, tport(1), NULL);
    tnode_know(&nodes[1], 1, tport(0));
    assert_true(tnode_connected(&nodes[0], 2, 5000));
    assert_int_equal(peer_transport_send(nodes[0].pt, &m), 0);
    size_t want = 1;
    assert_true(tnode_wait(&nodes[1], has_msgs, &want, 5000));
    assert_int_equal(nodes[1].evs[0]->msg.term, 7);
    tnode_stop(&nodes[0], false);
    tnode_stop(&nodes[1], false);
    assert_int_equal(fd_count(), fds);
}

/* Membership changes at runtime: a wrong URL is corrected by set_peer, and a
 * removed member can neither be sent to nor send. */
static void test_membership_updates(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    tnode_start(&a, CLUSTER, 1, tport(0), NULL);
    tnode_start(&b, CLUSTER, 2, tport(1), NULL);
    tnode_know(&a, 2, tport(7)); /* nothing listens there */
    tnode_know(&b, 1, tport(0));
    assert_true(tnode_connected(&b, 1, 5000));
    assert_false(tnode_connected(&a, 2, 200));
    tnode_know(&a, 2, tport(1));
    assert_true(tnode_connected(&a, 2, 5000));

    assert_int_equal(peer_transport_remove_peer(a.pt, 2), 0);
    assert_int_equal(peer_transport_remove_peer(a.pt, 2), -ENOENT);
    struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .to = 2, .from = 1};
    assert_int_equal(peer_transport_send(a.pt, &m), -ENOENT);
    /* b's stream to a is refused from now on, and b is told it was removed. */
    assert_true(tnode_wait(&b, has_unreachable, NULL, 5000));
    assert_true(tnode_peer_error(&b, 1, "permanently removed from the cluster", 5000));
    struct peer_stats st;
    assert_int_equal(peer_transport_stats(b.pt, 1, &st), 0);
    assert_false(st.connected);
    assert_int_equal(peer_transport_stats(b.pt, 0, &st), 0);
    assert_true(st.removed);
    const uint64_t self = 1;
    assert_int_equal(peer_transport_set_peer(a.pt, self, (const char *const[]){"http://x:1"}, 1),
                     -EINVAL);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    assert_int_equal(fd_count(), fds);
}

/* A fake member that completes the handshake and then never reads. */
struct sink {
    int lfd, cfd;
    pthread_t th;
};

static void *sink_run(void *arg) {
    struct sink *s = arg;
    s->cfd = accept(s->lfd, NULL, NULL);
    uint8_t hello[8 + 25];
    size_t got = 0;
    while (s->cfd >= 0 && got < sizeof(hello)) {
        ssize_t r = read(s->cfd, hello + got, sizeof(hello) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    uint8_t ack[8 + 17] = {'q', 'r', 1, 2, 0, 0, 0, 17, 0};
    memcpy(ack + 9, hello + 8, 8);       /* its cluster */
    memcpy(ack + 17, hello + 8 + 16, 8); /* the id it asked for */
    if (write(s->cfd, ack, sizeof(ack)) != (ssize_t)sizeof(ack))
        return NULL;
    return NULL;
}

static void test_backpressure_never_reading_peer(void **state) {
    (void)state;
    int fds = fd_count();
    struct sink s = {.cfd = -1};
    s.lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int small = 64 << 10;
    setsockopt(s.lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tport(9))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s.lfd, 4), 0);
    assert_int_equal(pthread_create(&s.th, NULL, sink_run, &s), 0);

    struct tnode a = {0};
    struct peer_config cfg = {.max_queue_msgs = 200,
                              .max_queue_bytes = 1 << 20,
                              .backoff_min_ms = 20,
                              .backoff_max_ms = 200};
    tnode_start(&a, CLUSTER, 1, tport(0), &cfg);
    tnode_know(&a, 2, tport(9));
    assert_true(tnode_connected(&a, 2, 5000));
    pthread_join(s.th, NULL);

    uint8_t *blob = calloc(1, 32 << 10);
    assert_non_null(blob);
    struct raft_entry e = {.term = 1, .index = 1, .len = 32 << 10, .data = blob};
    struct raft_msg m = {.type = RAFT_MSG_APP, .to = 2, .from = 1, .entries = &e, .n_entries = 1};
    int rc = 0, sends = 0;
    /* The kernel's buffers absorb some megabytes first; then the queue fills. */
    for (; sends < 20000 && (rc = peer_transport_send(a.pt, &m)) == 0; sends++)
        if (sends % 50 == 49)
            msleep(2);
    assert_int_equal(rc, -EAGAIN);
    assert_true(tnode_wait(&a, has_unreachable, NULL, 2000));
    /* Keep pushing for a while: the queue bound holds at every moment, and
     * only the socket buffers (which the kernel caps) take more. */
    struct peer_stats st;
    int accepted = 0, refused = 0;
    for (int i = 0; i < 300; i++) {
        rc = peer_transport_send(a.pt, &m);
        if (rc == 0)
            accepted++;
        else
            refused++;
        assert_true(rc == 0 || rc == -EAGAIN);
        assert_int_equal(peer_transport_stats(a.pt, 2, &st), 0);
        assert_true(st.queued_bytes <= cfg.max_queue_bytes);
        assert_true(st.queued_msgs <= cfg.max_queue_msgs);
        if (i % 10 == 9)
            msleep(5);
    }
    assert_true((size_t)(sends + accepted) * e.len < (16u << 20));
    assert_true(refused > 0);
    assert_true(st.connected);
    assert_true(st.dropped_msgs >= (uint64_t)refused);
    /* One report until the raft thread takes it, however many drops. */
    assert_int_equal(tnode_count(&a, PEER_EV_UNREACHABLE, -1), 1);
    /* Close does not wait for the stuck peer. */
    tnode_stop(&a, false);
    free(blob);
    close(s.cfd);
    close(s.lfd);
    assert_int_equal(fd_count(), fds);
}

/* Members of different clusters refuse each other on both sides, each side
 * naming both cluster ids; a dial to the wrong member id is refused too. */
static void test_cluster_id_mismatch(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    tnode_start(&a, 0xaaa1, 1, tport(0), NULL);
    tnode_start(&b, 0xbbb2, 2, tport(1), NULL);
    tnode_know(&a, 2, tport(1));
    tnode_know(&b, 1, tport(0));
    assert_true(tnode_peer_error(&a, 0, "request cluster ID mismatch", 5000));
    assert_true(tnode_peer_error(&b, 0, "request cluster ID mismatch", 5000));
    struct peer_stats st;
    peer_transport_stats(a.pt, 0, &st);
    assert_non_null(strstr(st.last_error, "aaa1"));
    assert_non_null(strstr(st.last_error, "bbb2"));
    for (int side = 0; side < 2; side++) {
        struct tnode *n = side ? &b : &a;
        assert_true(tnode_peer_error(n, side ? 1 : 2, "cluster ID mismatch", 5000));
        assert_int_equal(peer_transport_stats(n->pt, side ? 1 : 2, &st), 0);
        assert_false(st.connected);
        assert_non_null(strstr(st.last_error, "cluster ID mismatch"));
        assert_non_null(strstr(st.last_error, "aaa1"));
        assert_non_null(strstr(st.last_error, "bbb2"));
    }
    struct raft_msg m = {.type = RAFT_MSG_VOTE, .to = 2, .from = 1};
    assert_int_equal(peer_transport_send(a.pt, &m), -ENOTCONN);
    tnode_stop(&b, false);

    /* c believes member 9 listens where member 2 does. */
    struct tnode c = {0};
    tnode_start(&b, 0xaaa1, 2, tport(1), NULL);
    tnode_start(&c, 0xaaa1, 3, tport(2), NULL);
    tnode_know(&b, 3, tport(2));
    tnode_know(&c, 9, tport(1));
    assert_true(tnode_peer_error(&b, 0, "to field mismatch", 5000));
    peer_transport_stats(b.pt, 0, &st);
    assert_non_null(strstr(st.last_error, "asked for 9"));
    assert_true(tnode_peer_error(&c, 9, "to field mismatch", 5000));
    assert_int_equal(peer_transport_stats(c.pt, 9, &st), 0);
    assert_false(st.connected);
    assert_non_null(strstr(st.last_error, "to field mismatch"));
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    tnode_stop(&c, false);
    assert_int_equal(fd_count(), fds);
}

/* Before start a transport only holds its ports: connections are closed. */
static void test_unstarted_refuses(void **state) {
    (void)state;
    int fds = fd_count();
    struct util_err err = {0};
    peer_transport_t *pt;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", tport(3));
    assert_int_equal(peer_transport_new(NULL, NULL, &pt, &err), 0);
    assert_int_equal(peer_transport_listen(pt, url, &err), 0);
    peer_transport_t *pt2;
    assert_int_equal(peer_transport_new(NULL, NULL, &pt2, &err), 0);
    assert_int_equal(peer_transport_listen(pt2, url, &err), -EADDRINUSE);
    char want[96];
    snprintf(want, sizeof(want), "listen tcp 127.0.0.1:%d: bind: address already in use", tport(3));
    assert_string_equal(err.msg, want);
    peer_transport_close(pt2, NULL, NULL);
    struct peer_config cfg = {.member_id = 1};
    assert_int_equal(peer_transport_start(pt, &cfg, &err), -EINVAL);
    peer_transport_close(pt, NULL, NULL);
    assert_int_equal(fd_count(), fds);
}

/* A raft thread that falls behind stops the transport reading its streams
 * at the inbox bound (give or take one read), and nothing is lost: once it
 * drains, every message arrives, in order. */
static void test_inbox_bound(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    struct peer_config small = {.max_inbox_msgs = 10, .backoff_min_ms = 20, .backoff_max_ms = 200};
    tnode_start(&a, CLUSTER, 1, tport(0), NULL);
    tnode_start(&b, CLUSTER, 2, tport(1), &small);
    tnode_know(&a, 2, tport(1));
    tnode_know(&b, 1, tport(0));
    assert_true(tnode_connected(&a, 2, 5000));
    enum { N = 200, ENTRY = 8192 };
    uint8_t *blob = calloc(1, ENTRY);
    assert_non_null(blob);
    struct raft_entry e = {.term = 1, .len = ENTRY, .data = blob};
    for (uint64_t i = 1; i <= N; i++) {
        e.index = i;
        struct raft_msg m = {
            .type = RAFT_MSG_APP, .to = 2, .from = 1, .commit = i, .entries = &e, .n_entries = 1};
        assert_int_equal(peer_transport_send(a.pt, &m), 0);
    }
    /* Wait until b has stopped taking more. */
    struct peer_stats st;
    uint64_t seen = UINT64_MAX;
    for (int i = 0; i < 500; i++) {
        assert_int_equal(peer_transport_stats(b.pt, 1, &st), 0);
        if (st.received_msgs >= 10 && st.received_msgs == seen)
            break;
        seen = st.received_msgs;
        msleep(20);
    }
    /* The bound, plus at most one 64 KiB read of 8 KiB messages. */
    assert_true(st.received_msgs >= 10);
    assert_true(st.received_msgs <= 10 + 64 / 8 + 1);
    size_t want = N;
    assert_true(tnode_wait(&b, has_msgs, &want, 10000));
    assert_int_equal(b.n_evs, N);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(b.evs[i]->msg.commit, i + 1);
    free(blob);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    assert_int_equal(fd_count(), fds);
}

/* A peer address that accepts connections but never answers does not hold
 * the stream: the handshake times out and the peer is redialled. */
static void test_handshake_timeout(void **state) {
    (void)state;
    int fds = fd_count();
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tport(9))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    struct tnode a = {0};
    struct peer_config cfg = {
        .handshake_timeout_ms = 100, .backoff_min_ms = 20, .backoff_max_ms = 50};
    tnode_start(&a, CLUSTER, 1, tport(0), &cfg);
    tnode_know(&a, 2, tport(9));
    assert_true(tnode_peer_error(&a, 2, "timed out after 100 ms", 3000));
    struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .to = 2, .from = 1};
    assert_int_equal(peer_transport_send(a.pt, &m), -ENOTCONN);
    tnode_stop(&a, false);
    close(lfd);
    assert_int_equal(fd_count(), fds);
}

static void on_closed(void *arg) {
    *(int *)arg = 1;
}

/* A transport can also run on the caller's loop (the server's io loop): the
 * same exchange, and close finishes through the loop with its callback. */
static void test_on_callers_loop(void **state) {
    (void)state;
    int fds = fd_count();
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct util_err err = {0};
    peer_transport_t *pt;
    char url[64], dir[] = "/tmp/quoin-peer-XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", tport(4));
    assert_int_equal(peer_transport_new(&loop, NULL, &pt, &err), 0);
    assert_int_equal(peer_transport_listen(pt, url, &err), 0);
    struct peer_config cfg = {.cluster_id = CLUSTER, .member_id = 5, .snap_dir = dir};
    assert_int_equal(peer_transport_start(pt, &cfg, &err), 0);
    struct tnode b = {0};
    tnode_start(&b, CLUSTER, 2, tport(1), NULL);
    tnode_know(&b, 5, tport(4));
    const char *burl[1];
    char bu[64];
    snprintf(bu, sizeof(bu), "http://127.0.0.1:%d", tport(1));
    burl[0] = bu;
    assert_int_equal(peer_transport_set_peer(pt, 2, burl, 1), 0);
    /* Both streams need this loop turning: its own dial and b's handshake. */
    struct peer_stats st = {0}, bst = {0};
    for (int i = 0; i < 1000 && !(st.connected && bst.connected); i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        peer_transport_stats(pt, 2, &st);
        peer_transport_stats(b.pt, 5, &bst);
        msleep(5);
    }
    assert_true(st.connected);
    assert_true(bst.connected);
    struct raft_msg m = {.type = RAFT_MSG_VOTE, .to = 5, .from = 2, .term = 9};
    assert_int_equal(peer_transport_send(b.pt, &m), 0);
    struct peer_event *ev = NULL;
    for (int i = 0; i < 500 && !ev; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        if (peer_transport_recv_batch(pt, &ev, 1) == 0)
            msleep(5);
    }
    assert_non_null(ev);
    assert_int_equal(ev->msg.term, 9);
    peer_event_free(ev);
    int closed = 0;
    peer_transport_close(pt, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(uv_loop_close(&loop), 0);
    tnode_stop(&b, false);
    rmdir(dir);
    assert_int_equal(fd_count(), fds);
}

static int raw_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Reads until the transport closes the connection; returns the bytes read
 * before that (a refusal or an acknowledgement), or -1 on timeout. */
static ssize_t read_until_closed(int fd, uint8_t *buf, size_t cap) {
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return (ssize_t)got;
        if (r < 0)
            return -1;
        got += (size_t)r;
        if (got == cap)
            got = 0;
    }
}

static void put_hello(uint8_t *f, uint64_t cluster, uint64_t from, uint64_t to) {
    const uint8_t hdr[8] = {'q', 'r', 1, 1, 0, 0, 0, 25};
    memcpy(f, hdr, 8);
    for (int i = 0; i < 8; i++) {
        f[8 + i] = (uint8_t)(cluster >> (56 - 8 * i));
        f[16 + i] = (uint8_t)(from >> (56 - 8 * i));
        f[24 + i] = (uint8_t)(to >> (56 - 8 * i));
    }
    f[32] = 0;
}

/* Whatever arrives on the peer port — another protocol, a truncated or
 * oversized frame, a message that is not protobuf, a frame out of turn — the
 * transport closes that connection and goes on serving real members. */
static void test_garbage_input(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    tnode_start(&a, CLUSTER, 1, tport(0), NULL);
    tnode_know(&a, 2, tport(1));
    uint8_t buf[4096];

    int fd = raw_connect(tport(0));
    const char http[] = "GET /raft/stream/message/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(write(fd, http, sizeof(http) - 1), (ssize_t)sizeof(http) - 1);
    assert_int_equal(read_until_closed(fd, buf, sizeof(buf)), 0);
    close(fd);

    uint8_t hello[33];
    put_hello(hello, CLUSTER, 2, 1);
    const uint8_t short_hello[8 + 3] = {'q', 'r', 1, 1, 0, 0, 0, 3, 1, 2, 3};
    const uint8_t huge[8] = {'q', 'r', 1, 3, 0x7f, 0xff, 0xff, 0xff};
    const uint8_t not_pb[8 + 4] = {'q', 'r', 1, 3, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff};
    const uint8_t local_type[8 + 2] = {'q', 'r', 1, 3, 0, 0, 0, 2, 0x08, 0x00}; /* MsgHup */
    const uint8_t out_of_turn[8 + 1] = {'q', 'r', 1, 7, 0, 0, 0, 1, 0};
    struct {
        const uint8_t *frame;
        size_t len;
        bool after_hello;
    } cases[] = {
        {short_hello, sizeof(short_hello), false},
        {huge, sizeof(huge), true},
        {not_pb, sizeof(not_pb), true},
        {local_type, sizeof(local_type), true},
        {out_of_turn, sizeof(out_of_turn), true},
        {hello, sizeof(hello), true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fd = raw_connect(tport(0));
        if (cases[i].after_hello)
            assert_int_equal(write(fd, hello, sizeof(hello)), (ssize_t)sizeof(hello));
        assert_int_equal(write(fd, cases[i].frame, cases[i].len), (ssize_t)cases[i].len);
        ssize_t n = read_until_closed(fd, buf, sizeof(buf));
        /* A HELLO_ACK (8 + 17 bytes) when the handshake was sound, else nothing. */
        assert_int_equal(n, cases[i].after_hello ? 25 : 0);
        close(fd);
    }

    tnode_start(&b, CLUSTER, 2, tport(1), NULL);
    tnode_know(&b, 1, tport(0));
    assert_true(tnode_connected(&b, 1, 5000));
    struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .to = 1, .from = 2, .term = 4};
    assert_int_equal(peer_transport_send(b.pt, &m), 0);
    size_t want = 1;
    assert_true(tnode_wait(&a, has_msgs, &want, 5000));
    assert_int_equal(a.evs[0]->msg.term, 4);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    assert_int_equal(fd_count(), fds);
}

/* A question (a member joining asks for the members): answered with
 * cfg.answer's bytes and the answering member's ids, whatever cluster the
 * asker is in; nothing listening is an error. */
static int answer_blob(void *arg, enum peer_question q, uint64_t about, struct util_buf *out) {
    char text[64];
    snprintf(text, sizeof(text), "%s %d %llu", (const char *)arg, (int)q,
             (unsigned long long)about);
    return util_buf_append(out, text, strlen(text));
}

static void test_members_request(void **state) {
    (void)state;
    struct tnode a = {0};
    struct peer_config cfg = {.answer = answer_blob, .answer_arg = "answer to"};
    tnode_start(&a, CLUSTER, 5, tport(0), &cfg);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", tport(0));
    struct util_buf out = {0};
    struct util_err err = {0};
    uint64_t cid = 0, mid = 0;
    assert_int_equal(peer_ask(url, PEER_ASK_PROGRESS, 77, 2000, &cid, &mid, &out, &err), 0);
    assert_int_equal(cid, CLUSTER);
    assert_int_equal(mid, 5);
    assert_int_equal(out.len, strlen("answer to 3 77"));
    assert_memory_equal(out.data, "answer to 3 77", out.len);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", tport(9));
    assert_int_not_equal(peer_ask(url, PEER_ASK_MEMBERS, 0, 500, &cid, &mid, &out, &err), 0);
    assert_non_null(strstr(err.msg, "cannot reach"));
    util_buf_free(&out);
    tnode_stop(&a, false);
}

int main(void) {
    tmain_setup();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_type_with_entries),
        cmocka_unit_test(test_order_per_peer),
        cmocka_unit_test(test_redial_after_restart),
        cmocka_unit_test(test_membership_updates),
        cmocka_unit_test(test_members_request),
        cmocka_unit_test(test_backpressure_never_reading_peer),
        cmocka_unit_test(test_cluster_id_mismatch),
        cmocka_unit_test(test_unstarted_refuses),
        cmocka_unit_test(test_inbox_bound),
        cmocka_unit_test(test_handshake_timeout),
        cmocka_unit_test(test_on_callers_loop),
        cmocka_unit_test(test_garbage_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
