/* Snapshot streaming tests: a few MiB cross between two transports and land
 * verified in the receiver's directory; a byte flipped in transit is caught,
 * the partial file removed and the sender told; descriptors come back. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "helpers.h"

#define CLUSTER 0x5a5au
#define SNAP_SIZE ((3u << 20) + 12345u)

static bool has_snap_msg(struct tnode *n, void *arg) {
    (void)arg;
    return tnode_count(n, PEER_EV_MSG, RAFT_MSG_SNAP) > 0;
}

static bool has_status(struct tnode *n, void *arg) {
    (void)arg;
    return tnode_count(n, PEER_EV_SNAP_STATUS, -1) > 0;
}

/* A temporary file holding len pseudo-random bytes, opened for reading at
 * offset 0; *data receives a copy. */
static int snap_file(size_t len, uint8_t **data) {
    char path[] = "/tmp/quoin-peer-snap-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    uint8_t *d = malloc(len);
    assert_non_null(d);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d[i] = (uint8_t)x;
    }
    assert_int_equal(write(fd, d, len), (ssize_t)len);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    *data = d;
    return fd;
}

static void pair(struct tnode *a, struct tnode *b) {
    tnode_start(a, CLUSTER, 1, tport(20), NULL);
    tnode_start(b, CLUSTER, 2, tport(21), NULL);
    tnode_know(a, 2, tport(21));
    tnode_know(b, 1, tport(20));
    assert_true(tnode_connected(a, 2, 5000));
}

static struct raft_msg snap_msg(struct raft_snapshot *s) {
    memset(s, 0, sizeof(*s));
    s->meta.index = 500;
    s->meta.term = 3;
    s->meta.conf.n_voters = 3;
    s->meta.conf.voters[0] = 1;
    s->meta.conf.voters[1] = 2;
    s->meta.conf.voters[2] = 3;
    s->meta.conf.n_learners = 1;
    s->meta.conf.learners[0] = 4;
    return (struct raft_msg){.type = RAFT_MSG_SNAP, .to = 2, .from = 1, .term = 3, .snapshot = s};
}

static void test_snapshot_transfer(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    pair(&a, &b);
    uint8_t *data;
    int fd = snap_file(SNAP_SIZE, &data);
    struct raft_snapshot s;
    struct raft_msg m = snap_msg(&s);
    assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), 0);
    /* Heartbeats keep flowing beside the snapshot's own connection. */
    struct raft_msg hb = {.type = RAFT_MSG_HEARTBEAT, .to = 2, .from = 1, .term = 3};
    assert_int_equal(peer_transport_send(a.pt, &hb), 0);

    assert_true(tnode_wait(&b, has_snap_msg, NULL, 20000));
    assert_true(tnode_wait(&a, has_status, NULL, 5000));
    assert_int_equal(a.evs[0]->type, PEER_EV_SNAP_STATUS);
    assert_int_equal(a.evs[0]->peer, 2);
    assert_false(a.evs[0]->failed);

    const struct peer_event *ev = NULL;
    for (size_t i = 0; i < b.n_evs; i++)
        if (b.evs[i]->type == PEER_EV_MSG && b.evs[i]->msg.type == RAFT_MSG_SNAP)
            ev = b.evs[i];
    assert_non_null(ev);
    assert_int_equal(ev->peer, 1);
    assert_int_equal(ev->msg.term, 3);
    const struct raft_snapshot *rs = ev->msg.snapshot;
    assert_non_null(rs);
    assert_int_equal(ev->snap_size, SNAP_SIZE);
    assert_int_equal(rs->len, strlen(ev->snap_path));
    assert_memory_equal(rs->data, ev->snap_path, rs->len);
    assert_int_equal(rs->meta.index, 500);
    assert_int_equal(rs->meta.term, 3);
    assert_int_equal(rs->meta.conf.n_voters, 3);
    assert_int_equal(rs->meta.conf.voters[2], 3);
    assert_int_equal(rs->meta.conf.n_learners, 1);
    assert_int_equal(rs->meta.conf.learners[0], 4);
    assert_non_null(ev->snap_path);
    assert_memory_equal(ev->snap_path, b.dir, strlen(b.dir));
    assert_null(strstr(ev->snap_path, ".partial"));
    int rfd = open(ev->snap_path, O_RDONLY);
    assert_true(rfd >= 0);
    uint8_t *back = malloc(SNAP_SIZE + 1);
    assert_non_null(back);
    assert_int_equal(read(rfd, back, SNAP_SIZE + 1), (ssize_t)SNAP_SIZE);
    assert_memory_equal(back, data, SNAP_SIZE);
    close(rfd);
    free(back);
    free(data);
    assert_int_equal(dir_count(b.dir, NULL), 1);
    assert_int_equal(tnode_count(&b, PEER_EV_MSG, RAFT_MSG_HEARTBEAT), 1);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    assert_int_equal(fd_count(), fds);
}

/* One byte flipped after the sender computed the checksums: the receiver
 * refuses the chunk, keeps no file and delivers nothing; the sender reports
 * the failure. Then a clean retry goes through. */
static void test_snapshot_corruption_detected(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0}, b = {0};
    pair(&a, &b);
    uint8_t *data;
    int fd = snap_file(SNAP_SIZE, &data);
    struct raft_snapshot s;
    struct raft_msg m = snap_msg(&s);
    peer_transport_test_corrupt_snapshot(a.pt, (1u << 20) + 77);
    assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), 0);
    assert_true(tnode_wait(&a, has_status, NULL, 20000));
    assert_true(a.evs[0]->failed);
    assert_int_equal(a.evs[0]->peer, 2);
    msleep(100);
    assert_false(tnode_wait(&b, has_snap_msg, NULL, 100));
    assert_int_equal(dir_count(b.dir, NULL), 0);
    tnode_clear(&a);
    free(data);

    fd = snap_file(SNAP_SIZE, &data);
    assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), 0);
    assert_true(tnode_wait(&a, has_status, NULL, 20000));
    assert_false(a.evs[0]->failed);
    assert_true(tnode_wait(&b, has_snap_msg, NULL, 5000));
    free(data);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
    assert_int_equal(fd_count(), fds);
}

/* A snapshot for a member the transport does not know fails at once, and
 * the descriptor handed over is closed either way. */
static void test_snapshot_unknown_peer(void **state) {
    (void)state;
    int fds = fd_count();
    struct tnode a = {0};
    tnode_start(&a, CLUSTER, 1, tport(20), NULL);
    uint8_t *data;
    int fd = snap_file(1000, &data);
    free(data);
    struct raft_snapshot s;
    struct raft_msg m = snap_msg(&s);
    m.to = 7;
    assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), 0);
    assert_true(tnode_wait(&a, has_status, NULL, 5000));
    assert_true(a.evs[0]->failed);
    assert_int_equal(a.evs[0]->peer, 7);
    fd = snap_file(10, &data);
    free(data);
    m.type = RAFT_MSG_APP;
    assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), -EINVAL);
    tnode_stop(&a, false);
    assert_int_equal(fd_count(), fds);
}

/* A transfer cut short by a crash leaves a .partial file; the next start
 * removes it and leaves delivered snapshots alone. */
static void test_partial_files_removed_at_start(void **state) {
    (void)state;
    struct tnode a = {0};
    tnode_start(&a, CLUSTER, 1, tport(20), NULL);
    tnode_stop(&a, true);
    char partial[128], kept[128];
    snprintf(partial, sizeof(partial), "%s/snap-0000000000000003-00000000000001f4-abcdef.partial",
             a.dir);
    snprintf(kept, sizeof(kept), "%s/snap-0000000000000003-00000000000001f4-abcdef", a.dir);
    int fd = open(partial, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    fd = open(kept, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    tnode_start(&a, CLUSTER, 1, tport(20), NULL);
    assert_int_equal(access(partial, F_OK), -1);
    assert_int_equal(access(kept, F_OK), 0);
    tnode_stop(&a, false);
}

/* Closing either side in the middle of transfers leaks nothing (ASan),
 * leaves no partial file and no descriptor. */
static void test_close_during_transfer(void **state) {
    (void)state;
    int fds = fd_count();
    for (int round = 0; round < 2; round++) {
        struct tnode a = {0}, b = {0};
        pair(&a, &b);
        struct raft_snapshot s;
        struct raft_msg m = snap_msg(&s);
        for (int i = 0; i < 3; i++) {
            uint8_t *data;
            int fd = snap_file(SNAP_SIZE, &data);
            free(data);
            assert_int_equal(peer_transport_send_snapshot(a.pt, &m, fd), 0);
        }
        msleep(5);
        if (round == 0) {
            tnode_stop(&a, false);
            for (int i = 0; i < 500 && dir_count(b.dir, ".partial") > 0; i++)
                msleep(10);
            assert_int_equal(dir_count(b.dir, ".partial"), 0);
            tnode_stop(&b, false);
        } else {
            tnode_stop(&b, false);
            assert_true(tnode_wait(&a, has_status, NULL, 5000));
            tnode_stop(&a, false);
        }
    }
    assert_int_equal(fd_count(), fds);
}

int main(void) {
    tmain_setup();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_transfer),
        cmocka_unit_test(test_snapshot_corruption_detected),
        cmocka_unit_test(test_snapshot_unknown_peer),
        cmocka_unit_test(test_partial_files_removed_at_start),
        cmocka_unit_test(test_close_during_transfer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
