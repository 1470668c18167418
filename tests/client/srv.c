/* Test servers for the client tests (see srv.h). */
#include "srv.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/quoin.h"

static const char *quoin_path(void) {
    const char *p = getenv("QUOIN_BIN");
    if (p && *p)
        return p;
    return access("build-san/quoin", X_OK) == 0 ? "build-san/quoin" : "build/quoin";
}

const char *srv_name(const struct srv *s) {
    return s->kind == SRV_QUOIN ? "quoin" : "etcd";
}

/* Seeds the port picker; the previous state is mixed in, so that servers
 * started within one second do not get the same ports again. */
static void reseed(void) {
    srand((unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)rand());
}

static int pick_port(void) {
    static const int span = 10000;
    return 20000 + (int)(((unsigned)getpid() * 7919u + (unsigned)rand()) % span);
}

static int spawn(struct srv *s) {
    char curl[64], purl[64], alone[96], log[320];
    const char *bin = s->kind == SRV_QUOIN ? quoin_path() : "etcd";
    pid_t pid;
    snprintf(curl, sizeof curl, "http://127.0.0.1:%d", s->client_port);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d", s->peer_port);
    snprintf(alone, sizeof alone, "%s=%s", s->name, purl);
    snprintf(log, sizeof log, "%s/server.log", s->tmp);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        (void)f;
        dup2(1, 2);
        execlp(bin, bin, "--name", s->name, "--data-dir", s->dir, "--listen-client-urls", curl,
               "--advertise-client-urls", curl, "--listen-peer-urls", purl,
               "--initial-advertise-peer-urls", purl, "--initial-cluster",
               s->cluster[0] ? s->cluster : alone, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    return 0;
}

/* Ready once Status answers; a process that exits early is reported. */
static int wait_ready(struct srv *s) {
    quoin_client_t *c = NULL;
    int rc = -1;
    if (quoin_client_new(s->endpoint, NULL, &c) < 0)
        return -1;
    for (int i = 0; i < 200; i++) {
        quoin_resp_t *r = NULL;
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            break;
        }
        if (quoin_status(c, 500, &r, NULL) == 0) {
            quoin_resp_free(r);
            rc = 0;
            break;
        }
        usleep(100 * 1000);
    }
    quoin_client_free(c);
    return rc;
}

/* Fills in a member's kind, name and fresh temporary directory. 0 or -1. */
static int srv_init(struct srv *s, enum srv_kind kind, int index) {
    memset(s, 0, sizeof *s);
    s->kind = kind;
    snprintf(s->name, sizeof s->name, "n%d", index + 1);
    snprintf(s->tmp, sizeof s->tmp, "/tmp/quoin-client-XXXXXX");
    if (!mkdtemp(s->tmp))
        return -1;
    snprintf(s->dir, sizeof s->dir, "%s/data", s->tmp);
    return 0;
}

static void srv_pick_ports(struct srv *s) {
    do {
        s->client_port = pick_port();
        s->peer_port = pick_port();
    } while (s->peer_port == s->client_port);
    snprintf(s->endpoint, sizeof s->endpoint, "127.0.0.1:%d", s->client_port);
}

int srv_start(struct srv *s, enum srv_kind kind) {
    reseed();
    if (srv_init(s, kind, 0) < 0)
        return -1;
    for (int attempt = 0; attempt < 5; attempt++) {
        srv_pick_ports(s);
        if (spawn(s) < 0)
            return -1;
        if (wait_ready(s) == 0)
            return 0;
        srv_stop(s, 1); /* likely a port in use: try others */
    }
    return -1;
}

int srv_cluster_start(struct srv_cluster *c, enum srv_kind kind, int n) {
    assert(n >= 1 && n <= SRV_CLUSTER_MAX);
    reseed();
    memset(c, 0, sizeof *c);
    c->n = n;
    for (int i = 0; i < n; i++)
        if (srv_init(&c->m[i], kind, i) < 0)
            goto err;
    for (int attempt = 0; attempt < 3; attempt++) {
        char cluster[sizeof c->m[0].cluster] = "";
        int ready = 1;
        for (int i = 0; i < n; i++) {
            size_t len = strlen(cluster);
            srv_pick_ports(&c->m[i]);
            snprintf(cluster + len, sizeof cluster - len, "%s%s=http://127.0.0.1:%d", i ? "," : "",
                     c->m[i].name, c->m[i].peer_port);
        }
        for (int i = 0; i < n; i++) {
            snprintf(c->m[i].cluster, sizeof c->m[i].cluster, "%s", cluster);
            if (spawn(&c->m[i]) < 0)
                goto err;
        }
        for (int i = 0; i < n; i++)
            ready = ready && wait_ready(&c->m[i]) == 0;
        if (ready && srv_cluster_leader(c) >= 0)
            return 0;
        /* a port in use, most likely: start over, on fresh data */
        for (int i = 0; i < n; i++) {
            char cmd[340];
            srv_stop(&c->m[i], 1);
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->m[i].dir);
            if (system(cmd) != 0)
                goto err;
        }
    }
err:
    srv_cluster_destroy(c);
    return -1;
}

int srv_cluster_leader(struct srv_cluster *c) {
    for (int round = 0; round < 100; round++) {
        uint64_t leader = 0;
        int agreed = 1, at = -1;
        for (int i = 0; i < c->n && agreed; i++) {
            quoin_client_t *qc = NULL;
            quoin_resp_t *r = NULL;
            if (c->m[i].pid <= 0)
                continue;
            if (quoin_client_new(c->m[i].endpoint, NULL, &qc) < 0 ||
                quoin_status(qc, 500, &r, NULL) < 0 || r->leader == 0 ||
                (leader && r->leader != leader))
                agreed = 0;
            else {
                leader = r->leader;
                if (r->header.member_id == leader)
                    at = i;
            }
            quoin_resp_free(r);
            quoin_client_free(qc);
        }
        if (agreed && at >= 0)
            return at;
        usleep(100 * 1000);
    }
    return -1;
}

void srv_cluster_endpoints(const struct srv_cluster *c, char *out, size_t size, ...) {
    va_list ap;
    size_t len = 0;
    out[0] = 0;
    va_start(ap, size);
    for (int i = va_arg(ap, int); i >= 0 && len < size; i = va_arg(ap, int)) {
        assert(i < c->n);
        len += (size_t)snprintf(out + len, size - len, "%s%s", len ? "," : "", c->m[i].endpoint);
    }
    va_end(ap);
}

void srv_cluster_destroy(struct srv_cluster *c) {
    for (int i = 0; i < c->n; i++)
        srv_destroy(&c->m[i]);
    c->n = 0;
}

void srv_stop(struct srv *s, int hard) {
    if (s->pid <= 0)
        return;
    kill(s->pid, hard ? SIGKILL : SIGTERM);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

int srv_restart(struct srv *s) {
    if (spawn(s) < 0)
        return -1;
    return wait_ready(s);
}

void srv_destroy(struct srv *s) {
    char cmd[300];
    srv_stop(s, 1);
    if (s->tmp[0] && strncmp(s->tmp, "/tmp/quoin-client-", 18) == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", s->tmp);
    }
}
