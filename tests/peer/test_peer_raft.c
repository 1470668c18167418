/* The transport under real raft nodes, driven the way the server's raft loop
 * will drive it (raft.h's loop contract, peer.h's "raft loop's side"): three
 * members elect a leader and replicate over TCP, and a member cut off while
 * the leader compacted its log catches up through a streamed snapshot. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#define CLUSTER 0x7a7au
#define K 3
#define TICK_MS 10

struct rnode {
    struct tnode t;
    raft_t *r;
    raft_memstore_t *ms;
    uint64_t next_seq; /* the sequence number the next applied proposal must carry */
    uint64_t applied;
    bool up; /* transport running */
};

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void start_transport(struct rnode *nodes, int i) {
    tnode_start(&nodes[i].t, CLUSTER, (uint64_t)i + 1, tport(30 + i), NULL);
    for (int j = 0; j < K; j++)
        if (j != i)
            tnode_know(&nodes[i].t, (uint64_t)j + 1, tport(30 + j));
    nodes[i].up = true;
}

static void start_cluster(struct rnode *nodes) {
    memset(nodes, 0, sizeof(*nodes) * K);
    struct raft_conf_state cs = {.n_voters = K};
    for (int i = 0; i < K; i++)
        cs.voters[i] = (uint64_t)i + 1;
    for (int i = 0; i < K; i++) {
        assert_int_equal(raft_memstore_new(&nodes[i].ms), 0);
        raft_memstore_bootstrap(nodes[i].ms, &cs);
        struct raft_config cfg = {.id = (uint64_t)i + 1,
                                  .election_tick = 10,
                                  .heartbeat_tick = 1,
                                  .storage = raft_memstore_storage(nodes[i].ms),
                                  .max_size_per_msg = 1 << 20,
                                  .max_inflight_msgs = 64,
                                  .check_quorum = true,
                                  .pre_vote = true,
                                  .seed = (uint64_t)i * 7919 + 1};
        assert_int_equal(raft_new(&cfg, &nodes[i].r), 0);
        nodes[i].next_seq = 1;
        start_transport(nodes, i);
    }
}

static void stop_cluster(struct rnode *nodes) {
    for (int i = 0; i < K; i++) {
        if (nodes[i].up)
            tnode_stop(&nodes[i].t, false);
        raft_free(nodes[i].r);
        raft_memstore_free(nodes[i].ms);
    }
}

/* A snapshot's data travels as a descriptor: the memstore's bytes in a memfd. */
static int snapshot_fd(struct rnode *n) {
    struct raft_storage stg = raft_memstore_storage(n->ms);
    struct raft_snapshot s;
    assert_int_equal(stg.ops->snapshot(stg.ctx, &s), 0);
    int fd = memfd_create("snap", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s.data, s.len), (ssize_t)s.len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

/* A received MsgSnap steps as is: its snapshot data is the file's path,
 * which raft copies and hands back in the Ready that installs it. */
static void step_snapshot(struct rnode *n, const struct peer_event *ev) {
    assert_int_equal(raft_step(n->r, &ev->msg), 0);
}

/* Installing that Ready's snapshot: this test's storage is memory, so it
 * loads the file named by the data into a copy of the snapshot. */
static void install(struct rnode *n, const struct raft_snapshot *rs) {
    char path[256];
    assert_true(rs->len < sizeof(path));
    memcpy(path, rs->data, rs->len);
    path[rs->len] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    off_t size = lseek(fd, 0, SEEK_END);
    assert_true(size > 0);
    uint8_t *buf = malloc((size_t)size);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)size, 0), (ssize_t)size);
    close(fd);
    unlink(path);
    struct raft_snapshot s = *rs;
    s.data = buf;
    s.len = (size_t)size;
    assert_int_equal(raft_memstore_apply_snapshot(n->ms, &s), 0);
    n->applied = s.meta.index;
    /* The snapshot's data is the sequence number reached, then filler. */
    memcpy(&n->next_seq, buf, sizeof(n->next_seq));
    free(buf);
}

static void apply(struct rnode *n, const struct raft_entry *e) {
    n->applied = e->index;
    if (e->type != RAFT_ENTRY_NORMAL || e->len == 0)
        return;
    uint64_t seq;
    assert_int_equal(e->len, sizeof(seq));
    memcpy(&seq, e->data, sizeof(seq));
    assert_int_equal(seq, n->next_seq); /* in order, none lost, none twice */
    n->next_seq++;
}

/* One turn of node n's raft loop. */
static void turn(struct rnode *n) {
    struct peer_event *evs[64];
    size_t got;
    while (n->up && (got = peer_transport_recv_batch(n->t.pt, evs, 64)) > 0) {
        for (size_t i = 0; i < got; i++) {
            struct peer_event *ev = evs[i];
            if (ev->type == PEER_EV_MSG && ev->msg.type == RAFT_MSG_SNAP)
                step_snapshot(n, ev);
            else if (ev->type == PEER_EV_MSG)
                assert_int_equal(raft_step(n->r, &ev->msg), 0);
            else if (ev->type == PEER_EV_UNREACHABLE)
                raft_report_unreachable(n->r, ev->peer);
            else
                raft_report_snapshot(n->r, ev->peer, ev->failed);
            peer_event_free(ev);
        }
    }
    while (raft_has_ready(n->r)) {
        struct raft_ready rd;
        assert_int_equal(raft_ready(n->r, &rd), 0);
        if (rd.snapshot)
            install(n, rd.snapshot);
        if (rd.n_entries)
            assert_int_equal(raft_memstore_append(n->ms, rd.entries, rd.n_entries), 0);
        if (rd.hard_state_changed)
            raft_memstore_set_hard_state(n->ms, &rd.hard_state);
        for (size_t i = 0; n->up && i < rd.n_msgs; i++) {
            if (rd.msgs[i].type == RAFT_MSG_SNAP)
                peer_transport_send_snapshot(n->t.pt, &rd.msgs[i], snapshot_fd(n));
            else
                peer_transport_send(n->t.pt, &rd.msgs[i]); /* failures come back as events */
        }
        for (size_t i = 0; i < rd.n_committed; i++)
            apply(n, &rd.committed[i]);
        assert_int_equal(raft_advance(n->r, &rd), 0);
    }
}

/* Runs every node's loop for up to ms, ticking every TICK_MS, until done(). */
static bool run(struct rnode *nodes, int ms, bool (*done)(struct rnode *, void *), void *arg) {
    long long end = now_ms() + ms, next_tick = now_ms();
    while (now_ms() < end) {
        /* No catching up after a slow turn: a burst of ticks would expire
         * election timers faster than heartbeats can travel. */
        if (now_ms() >= next_tick) {
            for (int i = 0; i < K; i++)
                assert_int_equal(raft_tick(nodes[i].r), 0);
            next_tick = now_ms() + TICK_MS;
        }
        for (int i = 0; i < K; i++)
            turn(&nodes[i]);
        if (done(nodes, arg))
            return true;
        msleep(1);
    }
    return false;
}

static int leader_of(struct rnode *nodes) {
    for (int i = 0; i < K; i++) {
        struct raft_status st;
        raft_status(nodes[i].r, &st);
        if (st.role == RAFT_LEADER)
            return i;
    }
    return -1;
}

static bool has_leader(struct rnode *nodes, void *arg) {
    (void)arg;
    return leader_of(nodes) >= 0;
}

/* Every node in mask has applied all proposals up to *arg. */
struct want {
    uint64_t seq;
    unsigned mask;
};

static bool all_applied(struct rnode *nodes, void *arg) {
    struct want *w = arg;
    for (int i = 0; i < K; i++)
        if ((w->mask >> i & 1) && nodes[i].next_seq <= w->seq)
            return false;
    return true;
}

/* The two nodes named by arg have applied the same index. */
static bool same_applied(struct rnode *nodes, void *arg) {
    const int *two = arg;
    return nodes[two[0]].applied == nodes[two[1]].applied;
}

static void propose(struct rnode *n, uint64_t from, uint64_t to) {
    for (uint64_t seq = from; seq <= to; seq++) {
        const uint8_t *data[1] = {(const uint8_t *)&seq};
        uint32_t len[1] = {sizeof(seq)};
        assert_int_equal(raft_propose(n->r, data, len, 1), 0);
    }
}

static void test_replication_over_tcp(void **state) {
    (void)state;
    int fds = fd_count();
    struct rnode nodes[K];
    start_cluster(nodes);
    assert_true(run(nodes, 10000, has_leader, NULL));
    int l = leader_of(nodes);
    propose(&nodes[l], 1, 500);
    struct want w = {.seq = 500, .mask = 7};
    assert_true(run(nodes, 20000, all_applied, &w));
    for (int i = 0; i < K; i++) {
        assert_int_equal(nodes[i].next_seq, 501);
        struct peer_stats st;
        assert_int_equal(peer_transport_stats(nodes[i].t.pt, 0, &st), 0);
        assert_true(st.received_msgs > 0);
    }
    stop_cluster(nodes);
    assert_int_equal(fd_count(), fds);
}

static void test_snapshot_catch_up(void **state) {
    (void)state;
    int fds = fd_count();
    struct rnode nodes[K];
    start_cluster(nodes);
    assert_true(run(nodes, 10000, has_leader, NULL));
    int l = leader_of(nodes);
    int cut = (l + 1) % K;
    propose(&nodes[l], 1, 50);
    struct want w = {.seq = 50, .mask = 7};
    assert_true(run(nodes, 20000, all_applied, &w));

    /* Cut one follower off; the others go on, then both snapshot the same
     * state and compact their logs past everything the cut-off member has,
     * so whichever leads must send the snapshot. */
    tnode_stop(&nodes[cut].t, false);
    nodes[cut].up = false;
    propose(&nodes[l], 51, 300);
    w = (struct want){.seq = 300, .mask = 7 & ~(1u << cut)};
    assert_true(run(nodes, 20000, all_applied, &w));
    int other = (l + 2) % K;
    assert_true(run(nodes, 5000, same_applied, (int[]){l, other}));
    size_t len = (2u << 20) + 999;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 31 + 7);
    uint64_t next = nodes[l].next_seq;
    memcpy(data, &next, sizeof(next));
    struct raft_conf_state cs;
    raft_conf_state(nodes[l].r, &cs);
    for (int i = 0; i < K; i++) {
        if (i == cut)
            continue;
        assert_int_equal(
            raft_memstore_create_snapshot(nodes[i].ms, nodes[i].applied, &cs, data, len), 0);
        assert_int_equal(raft_memstore_compact(nodes[i].ms, nodes[i].applied), 0);
    }

    start_transport(nodes, cut);
    propose(&nodes[l], 301, 320);
    w = (struct want){.seq = 320, .mask = 7};
    assert_true(run(nodes, 20000, all_applied, &w));
    struct raft_storage stg = raft_memstore_storage(nodes[cut].ms);
    struct raft_snapshot got;
    assert_int_equal(stg.ops->snapshot(stg.ctx, &got), 0);
    assert_int_equal(got.len, len);
    assert_memory_equal(got.data, data, len);
    free(data);
    stop_cluster(nodes);
    assert_int_equal(fd_count(), fds);
}

int main(void) {
    tmain_setup();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replication_over_tcp),
        cmocka_unit_test(test_snapshot_catch_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
