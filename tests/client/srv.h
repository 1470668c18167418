/* Test servers for the client tests: a quoin or a real etcd 3.4 process on
 * 127.0.0.1 (ports 20000-29999), its own data directory, stopped by PID; and
 * clusters of them started with the same flags for both kinds. */
#ifndef QUOIN_TESTS_CLIENT_SRV_H
#define QUOIN_TESTS_CLIENT_SRV_H

#include <stddef.h>
#include <sys/types.h>

enum srv_kind { SRV_QUOIN, SRV_ETCD };

struct srv {
    enum srv_kind kind;
    pid_t pid;
    int client_port, peer_port;
    char dir[300]; /* data directory (inside a temporary directory) */
    char tmp[256]; /* the temporary directory, removed by srv_destroy */
    char endpoint[64];
    char name[8];      /* --name */
    char cluster[256]; /* --initial-cluster; empty: this member alone */
};

#define SRV_CLUSTER_MAX 5

struct srv_cluster {
    int n;
    struct srv m[SRV_CLUSTER_MAX];
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

/* Starts n members (n1..nn) of one new cluster and waits (up to 20 s) until
 * every one answers Status and they agree on a leader. 0 or -1. */
int srv_cluster_start(struct srv_cluster *c, enum srv_kind kind, int n);
/* The index of the member that every running member names as leader, waiting
 * up to 10 s for them to agree; -1 if they do not. */
int srv_cluster_leader(struct srv_cluster *c);
/* "ep,ep,ep": the endpoints of members i, j, k, ... (-1 ends the list). */
void srv_cluster_endpoints(const struct srv_cluster *c, char *out, size_t size, ...);
/* Stops every member and removes the data. */
void srv_cluster_destroy(struct srv_cluster *c);

#endif
