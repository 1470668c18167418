/* Peer transport benchmark (`make bench-peer`, never part of `make test`):
 * two transports on 127.0.0.1 in one process. Measures raft messages per
 * second from one member to another (MsgApp with one entry of a given size,
 * sent in bursts as a leader's Ready would, drained by a consumer thread as
 * a raft loop would) and the throughput of a streamed snapshot. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "peer/peer.h"

struct side {
    peer_transport_t *pt;
    char dir[64];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool woken;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_notify(void *arg) {
    struct side *s = arg;
    pthread_mutex_lock(&s->mu);
    s->woken = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int start(struct side *s, uint64_t id, int port, int peer_port) {
    struct util_err err = {0};
    char url[64], purl[64];
    snprintf(s->dir, sizeof(s->dir), "/tmp/quoin-bench-peer-XXXXXX");
    if (!mkdtemp(s->dir))
        return -errno;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    snprintf(purl, sizeof(purl), "http://127.0.0.1:%d", peer_port);
    struct peer_config cfg = {.cluster_id = 1,
                              .member_id = id,
                              .snap_dir = s->dir,
                              .backoff_min_ms = 10,
                              .notify = on_notify,
                              .notify_arg = s};
    const char *urls[] = {purl};
    if (peer_transport_new(NULL, NULL, &s->pt, &err) != 0 ||
        peer_transport_listen(s->pt, url, &err) != 0 ||
        peer_transport_start(s->pt, &cfg, &err) != 0 ||
        peer_transport_set_peer(s->pt, id == 1 ? 2 : 1, urls, 1) != 0) {
        fprintf(stderr, "bench-peer: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Drains s until `want` messages (snapshots if snap) arrived, or nothing for
 * `idle` seconds (the inbox drops past its bound); returns how many, *last the
 * time of the last event. */
static uint64_t drain(struct side *s, uint64_t want, bool snap, double deadline, double idle,
                      double *last) {
    struct peer_event *evs[256];
    uint64_t got = 0;
    *last = now_s();
    while (got < want && now_s() < deadline && now_s() - *last < idle) {
        size_t n = peer_transport_recv_batch(s->pt, evs, 256);
        if (n)
            *last = now_s();
        for (size_t i = 0; i < n; i++) {
            got += evs[i]->type == PEER_EV_MSG && (evs[i]->msg.type == RAFT_MSG_SNAP) == snap;
            if (evs[i]->snap_path)
                unlink(evs[i]->snap_path);
            peer_event_free(evs[i]);
        }
        if (n == 0) {
            pthread_mutex_lock(&s->mu);
            if (!s->woken) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 5000000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
            s->woken = false;
            pthread_mutex_unlock(&s->mu);
        }
    }
    return got;
}

struct consumer {
    struct side *s;
    uint64_t want, got;
    double last;
};

static void *consume(void *arg) {
    struct consumer *c = arg;
    c->got = drain(c->s, c->want, false, now_s() + 60, 1.0, &c->last);
    return NULL;
}

static int wait_connected(struct side *a, uint64_t id) {
    struct peer_stats st;
    for (int i = 0; i < 500; i++) {
        peer_transport_stats(a->pt, id, &st);
        if (st.connected)
            return 0;
        usleep(10000);
    }
    return -1;
}

static void bench_messages(struct side *a, struct side *b, uint32_t entry, uint64_t n) {
    uint8_t *data = calloc(1, entry ? entry : 1);
    struct raft_entry e = {.term = 1, .len = entry, .data = data};
    struct raft_msg m = {.type = RAFT_MSG_APP, .to = 2, .from = 1, .entries = &e, .n_entries = 1};
    struct consumer c = {.s = b, .want = n};
    pthread_t th;
    pthread_create(&th, NULL, consume, &c);
    uint64_t sent = 0, refused = 0;
    double t0 = now_s();
    while (sent < n && now_s() - t0 < 60) {
        e.index = m.index = sent + 1;
        int rc = peer_transport_send(a->pt, &m);
        if (rc == 0)
            sent++;
        else if (++refused % 64 == 0)
            usleep(100); /* queue full: a leader would wait for its next Ready */
    }
    pthread_join(th, NULL);
    double dt = c.last - t0;
    printf("messages: %" PRIu64 " MsgApp of %u B in %.3f s: %.0f msg/s, %.1f MiB/s (%" PRIu64
           " refused while the queue was full, %" PRIu64 " delivered)\n",
           sent, entry, dt, (double)c.got / dt, (double)c.got * entry / dt / (1 << 20), refused,
           c.got);
    struct peer_event *evs[64];
    size_t k;
    while ((k = peer_transport_recv_batch(a->pt, evs, 64)) > 0)
        while (k)
            peer_event_free(evs[--k]);
    free(data);
}

static void bench_snapshot(struct side *a, struct side *b, size_t size) {
    int fd = memfd_create("bench-snap", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0)
        return;
    uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    for (size_t i = 0; i < size; i += 4096)
        p[i] = (uint8_t)i;
    munmap(p, size);
    struct raft_snapshot s = {.meta = {.index = 10, .term = 1}};
    struct raft_msg m = {.type = RAFT_MSG_SNAP, .to = 2, .from = 1, .term = 1, .snapshot = &s};
    double t0 = now_s();
    peer_transport_send_snapshot(a->pt, &m, fd);
    double last;
    uint64_t got = drain(b, 1, true, t0 + 120, 120, &last);
    double dt = last - t0;
    printf("snapshot: %zu MiB in %.3f s: %.0f MiB/s (%s)\n", size >> 20, dt,
           (double)size / dt / (1 << 20), got ? "delivered" : "NOT delivered");
}

int main(int argc, char **argv) {
    int base = argc > 1 ? atoi(argv[1]) : 23790;
    struct side a = {0}, b = {0};
    if (start(&a, 1, base, base + 1) != 0 || start(&b, 2, base + 1, base) != 0 ||
        wait_connected(&a, 2) != 0) {
        fprintf(stderr, "bench-peer: transports did not connect\n");
        return 1;
    }
    bench_messages(&a, &b, 0, 1000000);
    bench_messages(&a, &b, 256, 1000000);
    bench_messages(&a, &b, 4096, 200000);
    bench_snapshot(&a, &b, 256u << 20);
    peer_transport_close(a.pt, NULL, NULL);
    peer_transport_close(b.pt, NULL, NULL);
    rmdir(a.dir);
    rmdir(b.dir);
    return 0;
}
