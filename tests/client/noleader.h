/* A member without a leader, for the failover tests: an api server (src/api)
 * on its own thread that answers every KV.Put with etcd's
 * Unavailable "etcdserver: no leader". */
#ifndef QUOIN_TESTS_CLIENT_NOLEADER_H
#define QUOIN_TESTS_CLIENT_NOLEADER_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#include "api/api.h"

struct noleader {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    api_server_t *srv;
    char endpoint[64];
    atomic_int puts; /* Put calls answered */
};

/* Starts on a free port in 20000-29999. 0 or -1. */
int noleader_start(struct noleader *n);
void noleader_stop(struct noleader *n);

#endif
