/* Test servers for the client tests (see srv.h). */
#include "srv.h"

#include <errno.h>
#include <signal.h>
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

static int pick_port(void) {
    static const int span = 10000;
    return 20000 + (int)(((unsigned)getpid() * 7919u + (unsigned)rand()) % span);
}

static int spawn(struct srv *s) {
    char name[] = "n1", curl[64], purl[64], cluster[96], log[320];
    const char *bin = s->kind == SRV_QUOIN ? quoin_path() : "etcd";
    pid_t pid;
    snprintf(curl, sizeof curl, "http://127.0.0.1:%d", s->client_port);
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d", s->peer_port);
    snprintf(cluster, sizeof cluster, "%s=%s", name, purl);
    snprintf(log, sizeof log, "%s/server.log", s->tmp);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        (void)f;
        dup2(1, 2);
        execlp(bin, bin, "--name", name, "--data-dir", s->dir, "--listen-client-urls", curl,
               "--advertise-client-urls", curl, "--listen-peer-urls", purl,
               "--initial-advertise-peer-urls", purl, "--initial-cluster", cluster, (char *)NULL);
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

int srv_start(struct srv *s, enum srv_kind kind) {
    memset(s, 0, sizeof *s);
    s->kind = kind;
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    snprintf(s->tmp, sizeof s->tmp, "/tmp/quoin-client-XXXXXX");
    if (!mkdtemp(s->tmp))
        return -1;
    snprintf(s->dir, sizeof s->dir, "%s/data", s->tmp);
    for (int attempt = 0; attempt < 5; attempt++) {
        s->client_port = pick_port();
        s->peer_port = pick_port();
        if (s->peer_port == s->client_port)
            continue;
        snprintf(s->endpoint, sizeof s->endpoint, "127.0.0.1:%d", s->client_port);
        if (spawn(s) < 0)
            return -1;
        if (wait_ready(s) == 0)
            return 0;
        srv_stop(s, 1); /* likely a port in use: try others */
    }
    return -1;
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
