/* wait: a chained hash table of waiters under one mutex. Request ids of one
 * member are consecutive, so the low bits spread well over the buckets. */
#include "server/wait.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#define WAIT_BUCKETS 4096 /* a power of two */

struct waiter {
    uint64_t id;
    wait_fn fn;
    void *ctx;
    struct waiter *next;
};

struct server_wait {
    pthread_mutex_t mu;
    struct waiter *buckets[WAIT_BUCKETS];
};

int server_wait_new(server_wait_t **out) {
    server_wait_t *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    pthread_mutex_init(&w->mu, NULL);
    *out = w;
    return 0;
}

void server_wait_free(server_wait_t *w) {
    if (!w)
        return;
    for (size_t i = 0; i < WAIT_BUCKETS; i++) {
        while (w->buckets[i]) {
            struct waiter *x = w->buckets[i];
            w->buckets[i] = x->next;
            x->fn(x->ctx, NULL);
            free(x);
        }
    }
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int server_wait_register(server_wait_t *w, uint64_t id, wait_fn fn, void *ctx) {
    struct waiter *x = malloc(sizeof(*x));
    if (!x)
        return -ENOMEM;
    *x = (struct waiter){.id = id, .fn = fn, .ctx = ctx};
    pthread_mutex_lock(&w->mu);
    struct waiter **b = &w->buckets[id & (WAIT_BUCKETS - 1)];
    for (struct waiter *y = *b; y; y = y->next) {
        if (y->id == id) {
            pthread_mutex_unlock(&w->mu);
            free(x);
            return -EEXIST;
        }
    }
    x->next = *b;
    *b = x;
    pthread_mutex_unlock(&w->mu);
    return 0;
}

/* Unlinks and returns the waiter of id, or NULL. */
static struct waiter *take(server_wait_t *w, uint64_t id) {
    pthread_mutex_lock(&w->mu);
    struct waiter **p = &w->buckets[id & (WAIT_BUCKETS - 1)];
    while (*p && (*p)->id != id)
        p = &(*p)->next;
    struct waiter *x = *p;
    if (x)
        *p = x->next;
    pthread_mutex_unlock(&w->mu);
    return x;
}

bool server_wait_trigger(server_wait_t *w, uint64_t id, void *result) {
    struct waiter *x = take(w, id);
    if (!x)
        return false;
    x->fn(x->ctx, result);
    free(x);
    return true;
}

bool server_wait_cancel(server_wait_t *w, uint64_t id) {
    return server_wait_trigger(w, id, NULL);
}
