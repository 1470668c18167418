/* wait: internal to src/server — the table of requests waiting for their raft
 * entry to be applied, keyed by the request id carried in the entry. Register
 * before proposing; the apply thread triggers; a request that gives up (client
 * gone, deadline) cancels. Each waiter fires at most once. Any thread. */
#ifndef QUOIN_SERVER_WAIT_H
#define QUOIN_SERVER_WAIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct server_wait server_wait_t;

/* Called once with what the trigger passed, or with NULL when cancelled or
 * when the table is freed. */
typedef void (*wait_fn)(void *ctx, void *result);

int server_wait_new(server_wait_t **out);

/* Frees the table, calling every remaining waiter with NULL. */
void server_wait_free(server_wait_t *w);

/* Returns 0, -EEXIST (id in use) or -ENOMEM. */
int server_wait_register(server_wait_t *w, uint64_t id, wait_fn fn, void *ctx);

/* Fires and removes the waiter of id with result; returns whether there was
 * one (a member applies entries other members proposed: none waits). */
bool server_wait_trigger(server_wait_t *w, uint64_t id, void *result);

/* Removes the waiter of id and calls it with NULL; returns whether there was
 * one (false: it fired or is firing). */
bool server_wait_cancel(server_wait_t *w, uint64_t id);

#endif
