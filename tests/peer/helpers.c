/* Fixture of the peer tests (see helpers.h). */
#include "helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#define PORTS_PER_PROGRAM 50

static bool port_free(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

void tport_pick(void) {
    unsigned slots = 10000 / PORTS_PER_PROGRAM;
    unsigned first = ((unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL)) % slots;
    for (unsigned i = 0; i < slots; i++) {
        int base = 20000 + (int)((first + i) % slots) * PORTS_PER_PROGRAM;
        bool all = true;
        for (int k = 0; k < PORTS_PER_PROGRAM && all; k++)
            all = port_free(base + k);
        if (all) {
            char v[16];
            snprintf(v, sizeof(v), "%d", base);
            setenv("QUOIN_PEER_TEST_PORT", v, 1);
            return;
        }
    }
    fail_msg("no free range of %d ports in 20000-29999", PORTS_PER_PROGRAM);
}

int tport(int k) {
    const char *v = getenv("QUOIN_PEER_TEST_PORT");
    assert_non_null(v);
    assert_true(k < PORTS_PER_PROGRAM);
    return atoi(v) + k;
}

void msleep(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

size_t dir_count(const char *path, const char *part) {
    DIR *d = opendir(path);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.' && (!part || strstr(e->d_name, part));
    closedir(d);
    return n;
}

int fd_count(void) {
    return (int)dir_count("/proc/self/fd", NULL) - 1; /* the DIR's own descriptor */
}

void tmain_setup(void) {
    /* libuv opens process-wide descriptors with its first loop; open them
     * before any test takes its descriptor baseline. */
    uv_loop_t warm;
    uv_loop_init(&warm);
    uv_loop_close(&warm);
    tport_pick();
}

static void on_notify(void *arg) {
    struct tnode *n = arg;
    pthread_mutex_lock(&n->mu);
    n->notified++;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

void tnode_start(struct tnode *n, uint64_t cluster, uint64_t id, int port,
                 const struct peer_config *cfg) {
    char dir[64];
    bool keep = n->dir[0] != 0;
    memcpy(dir, n->dir, sizeof(dir));
    memset(n, 0, sizeof(*n));
    if (keep) {
        memcpy(n->dir, dir, sizeof(dir));
    } else {
        snprintf(n->dir, sizeof(n->dir), "/tmp/quoin-peer-XXXXXX");
        assert_non_null(mkdtemp(n->dir));
    }
    n->cluster = cluster;
    n->id = id;
    n->port = port;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cv, NULL);
    struct peer_config c = {.backoff_min_ms = 20, .backoff_max_ms = 200};
    if (cfg)
        c = *cfg;
    c.cluster_id = cluster;
    c.member_id = id;
    c.snap_dir = n->dir;
    c.notify = on_notify;
    c.notify_arg = n;
    struct util_err err = {0};
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    const char *out = getenv("QUOIN_PEER_TEST_LOG");
    assert_int_equal(log_open(LOG_LEVEL_DEBUG, out ? out : "/dev/null", &n->lg, &err), 0);
    assert_int_equal(peer_transport_new(NULL, n->lg, &n->pt, &err), 0);
    int rc = peer_transport_listen(n->pt, url, &err);
    if (rc != 0)
        fail_msg("listen %s: %s", url, err.msg);
    assert_int_equal(peer_transport_start(n->pt, &c, &err), 0);
}

void tnode_clear(struct tnode *n) {
    for (size_t i = 0; i < n->n_evs; i++)
        peer_event_free(n->evs[i]);
    free(n->evs);
    n->evs = NULL;
    n->n_evs = n->cap_evs = 0;
}

static void rm_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(path);
}

void tnode_stop(struct tnode *n, bool keep_dir) {
    peer_transport_close(n->pt, NULL, NULL);
    n->pt = NULL;
    log_close(n->lg);
    n->lg = NULL;
    tnode_clear(n);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->cv);
    if (!keep_dir) {
        rm_dir(n->dir);
        n->dir[0] = 0;
    }
}

void tnode_know(struct tnode *n, uint64_t id, int port) {
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    const char *urls[] = {url};
    assert_int_equal(peer_transport_set_peer(n->pt, id, urls, 1), 0);
}

static void drain(struct tnode *n) {
    struct peer_event *batch[64];
    size_t got;
    while ((got = peer_transport_recv_batch(n->pt, batch, 64)) > 0) {
        if (n->n_evs + got > n->cap_evs) {
            n->cap_evs = (n->n_evs + got) * 2;
            n->evs = realloc(n->evs, n->cap_evs * sizeof(*n->evs));
            assert_non_null(n->evs);
        }
        memcpy(n->evs + n->n_evs, batch, got * sizeof(*batch));
        n->n_evs += got;
    }
}

bool tnode_wait(struct tnode *n, bool (*pred)(struct tnode *, void *), void *arg, int timeout_ms) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long deadline = now.tv_sec * 1000LL + now.tv_nsec / 1000000 + timeout_ms;
    for (;;) {
        drain(n);
        if (pred(n, arg))
            return true;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec * 1000LL + now.tv_nsec / 1000000 >= deadline)
            return false;
        /* The notify only fires on empty -> not empty; a short sleep covers
         * conditions that are not about the inbox (connections). */
        pthread_mutex_lock(&n->mu);
        if (!n->notified) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&n->cv, &n->mu, &ts);
        }
        n->notified = 0;
        pthread_mutex_unlock(&n->mu);
    }
}

size_t tnode_count(const struct tnode *n, enum peer_event_type type, int msg_type) {
    size_t c = 0;
    for (size_t i = 0; i < n->n_evs; i++)
        c += n->evs[i]->type == type &&
             (type != PEER_EV_MSG || msg_type < 0 || n->evs[i]->msg.type == (uint32_t)msg_type);
    return c;
}

struct conn_arg {
    uint64_t id;
};

static bool is_connected(struct tnode *n, void *arg) {
    struct peer_stats st;
    return peer_transport_stats(n->pt, ((struct conn_arg *)arg)->id, &st) == 0 && st.connected;
}

bool tnode_connected(struct tnode *a, uint64_t b, int timeout_ms) {
    struct conn_arg arg = {b};
    return tnode_wait(a, is_connected, &arg, timeout_ms);
}

struct error_arg {
    uint64_t id;
    const char *text;
};

static bool has_peer_error(struct tnode *n, void *arg) {
    const struct error_arg *e = arg;
    struct peer_stats st;
    return peer_transport_stats(n->pt, e->id, &st) == 0 && strstr(st.last_error, e->text);
}

bool tnode_peer_error(struct tnode *n, uint64_t id, const char *text, int timeout_ms) {
    struct error_arg arg = {id, text};
    return tnode_wait(n, has_peer_error, &arg, timeout_ms);
}
