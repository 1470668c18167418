/* Test servers for the client tests: a quoin or a real etcd 3.4 process on
 * 127.0.0.1 (ports 20000-29999), its own data directory, stopped by PID. */
#ifndef QUOIN_TESTS_CLIENT_SRV_H
#define QUOIN_TESTS_CLIENT_SRV_H

#include <sys/types.h>

enum srv_kind { SRV_QUOIN, SRV_ETCD };

struct srv {
    enum srv_kind kind;
    pid_t pid;
    int client_port, peer_port;
    char dir[300]; /* data directory (inside a temporary directory) */
    char tmp[256]; /* the temporary directory, removed by srv_destroy */
    char endpoint[64];
};

/* Starts a server and waits (up to 20 s) until it answers Status. 0 or -1. */
int srv_start(struct srv *s, enum srv_kind kind);
/* Stops with SIGKILL (hard = 1) or SIGTERM, waits for the process. */
void srv_stop(struct srv *s, int hard);
/* Starts again on the same data directory and ports. 0 or -1. */
int srv_restart(struct srv *s);
/* Stops if running and removes the data. */
void srv_destroy(struct srv *s);
const char *srv_name(const struct srv *s);

#endif
