/* Fixture of the peer tests: transports on 127.0.0.1 in one process, each
 * with its own loop thread, its notify callback signalling a condition
 * variable, and its received events collected for the test to inspect. */
#ifndef QUOIN_TESTS_PEER_HELPERS_H
#define QUOIN_TESTS_PEER_HELPERS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "peer/peer.h"

struct tnode {
    peer_transport_t *pt;
    log_t *lg; /* debug level, to $QUOIN_PEER_TEST_LOG or /dev/null: every log line runs */
    uint64_t cluster, id;
    int port;
    char dir[64]; /* snapshot directory, removed by tnode_stop */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int notified;
    struct peer_event **evs; /* drained so far, oldest first */
    size_t n_evs, cap_evs;
};

/* Picks, once from main(), a range of 50 ports in 20000-29999 that are free
 * now (starting from a slot chosen by process id and time, so concurrent test
 * programs rarely race for the same one); tport(k) is its k-th port. */
void tport_pick(void);
int tport(int k);

/* Starts a transport listening on 127.0.0.1:port (asserts). cfg may be NULL
 * for the test defaults (fast backoff); its ids and snap_dir are set here. */
void tnode_start(struct tnode *n, uint64_t cluster, uint64_t id, int port,
                 const struct peer_config *cfg);
/* Closes the transport and frees collected events; keep_dir keeps the
 * snapshot directory (a restart on the same node). */
void tnode_stop(struct tnode *n, bool keep_dir);
/* Tells n where member id listens. */
void tnode_know(struct tnode *n, uint64_t id, int port);
/* Drains n's inbox until pred(n, arg) holds or timeout_ms passed; returns pred. */
bool tnode_wait(struct tnode *n, bool (*pred)(struct tnode *, void *), void *arg, int timeout_ms);
/* Frees the collected events. */
void tnode_clear(struct tnode *n);
/* How many collected events have this type (and, for MSG, raft type; -1 any). */
size_t tnode_count(const struct tnode *n, enum peer_event_type type, int msg_type);
/* Waits until a's stream to b is up. */
bool tnode_connected(struct tnode *a, uint64_t b, int timeout_ms);

/* Waits until n's stats for member id (0: the transport's own refusals)
 * carry an error containing text. */
bool tnode_peer_error(struct tnode *n, uint64_t id, const char *text, int timeout_ms);

/* Entries of directory path (dot files aside) whose name contains part
 * (NULL: all). */
size_t dir_count(const char *path, const char *part);
/* Open descriptors of this process. */
int fd_count(void);
/* What every test program's main() does first: opens libuv's process-wide
 * descriptors (so that descriptor baselines are stable) and picks ports. */
void tmain_setup(void);
/* Sleeps ms milliseconds. */
void msleep(int ms);

#endif
