/* apply: the apply thread (see apply.h). */
#include "server/apply.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How many entries one LMDB write transaction takes at most: large batches
 * amortise the commit, small ones answer clients sooner. */
#define APPLY_MAX_BATCH 1024

struct queued_entry {
    struct raft_entry e; /* data owned */
    char *install;       /* a snapshot to install instead (e.index: its index) */
    struct queued_entry *next;
};

struct read_waiter {
    uint64_t index;
    void (*fn)(void *ctx);
    void *ctx;
    struct read_waiter *next;
};

struct server_apply {
    mvcc_t *db;
    struct apply_hooks hooks;
    log_t *lg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct queued_entry *head, *tail;
    struct read_waiter *waiters; /* unordered: few at a time */
    bool stopping;
    _Atomic uint64_t applied;
    struct apply_done *dones;
};

/* Appends the chain first..last to the queue and wakes the thread. */
static void enqueue(server_apply_t *a, struct queued_entry *first, struct queued_entry *last) {
    pthread_mutex_lock(&a->mu);
    if (a->tail)
        a->tail->next = first;
    else
        a->head = first;
    a->tail = last;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->mu);
}

int server_apply_push(server_apply_t *a, const struct raft_entry *ents, size_t n) {
    struct queued_entry *first = NULL, *last = NULL;
    for (size_t i = 0; i < n; i++) {
        struct queued_entry *q = malloc(sizeof(*q));
        uint8_t *data = ents[i].len ? malloc(ents[i].len) : NULL;
        if (!q || (ents[i].len && !data)) {
            free(q);
            free(data);
            while (first) {
                struct queued_entry *next = first->next;
                free(first->e.data);
                free(first);
                first = next;
            }
            return -ENOMEM;
        }
        q->e = ents[i];
        q->e.data = data;
        q->install = NULL;
        if (data)
            memcpy(data, ents[i].data, ents[i].len);
        q->next = NULL;
        if (last)
            last->next = q;
        else
            first = q;
        last = q;
    }
    if (first)
        enqueue(a, first, last);
    return 0;
}

int server_apply_install(server_apply_t *a, const char *file, uint64_t index) {
    struct queued_entry *q = calloc(1, sizeof(*q));
    char *path = strdup(file);
    if (!q || !path) {
        free(q);
        free(path);
        return -ENOMEM;
    }
    q->e.index = index;
    q->install = path;
    enqueue(a, q, q);
    return 0;
}

uint64_t server_apply_applied(server_apply_t *a) {
    return atomic_load(&a->applied);
}

int server_apply_when_applied(server_apply_t *a, uint64_t index, void (*fn)(void *ctx), void *ctx) {
    pthread_mutex_lock(&a->mu);
    if (atomic_load(&a->applied) >= index) {
        pthread_mutex_unlock(&a->mu);
        fn(ctx);
        return 0;
    }
    struct read_waiter *w = malloc(sizeof(*w));
    if (!w) {
        pthread_mutex_unlock(&a->mu);
        return -ENOMEM;
    }
    *w = (struct read_waiter){.index = index, .fn = fn, .ctx = ctx, .next = a->waiters};
    a->waiters = w;
    pthread_mutex_unlock(&a->mu);
    return 0;
}

/* Takes the waiters whose index is reached (all of them when stopping). Called
 * with the lock held. */
static struct read_waiter *take_ready_waiters(server_apply_t *a, uint64_t applied, bool all) {
    struct read_waiter *ready = NULL, **p = &a->waiters;
    while (*p) {
        struct read_waiter *w = *p;
        if (all || w->index <= applied) {
            *p = w->next;
            w->next = ready;
            ready = w;
        } else {
            p = &w->next;
        }
    }
    return ready;
}

static void run_waiters(struct read_waiter *w) {
    while (w) {
        struct read_waiter *next = w->next;
        w->fn(w->ctx);
        free(w);
        w = next;
    }
}

/* Applies up to APPLY_MAX_BATCH entries from list in one batch; returns the
 * first entry not applied. */
static struct queued_entry *apply_batch(server_apply_t *a, struct queued_entry *list) {
    mvcc_batch_t *b = NULL;
    int rc = mvcc_batch_begin(a->db, &b);
    if (rc == 0 && a->hooks.batch_begin)
        a->hooks.batch_begin(a->hooks.arg, b);
    size_t n = 0;
    uint64_t index = 0, term = 0;
    while (rc == 0 && list && !list->install && n < APPLY_MAX_BATCH) {
        struct queued_entry *q = list;
        a->dones[n] = (struct apply_done){0};
        if (q->e.len > 0)
            rc = a->hooks.entry(a->hooks.arg, b, &q->e, &a->dones[n]);
        if (rc != 0)
            break;
        index = q->e.index;
        term = q->e.term;
        n++;
        list = q->next;
        free(q->e.data);
        free(q);
    }
    bool began = b != NULL;
    if (rc == 0) {
        mvcc_batch_set_applied(b, index, term);
        rc = mvcc_batch_commit(b);
        b = NULL;
    }
    if (rc != 0)
        mvcc_batch_abort(b);
    if (began && a->hooks.batch_end)
        a->hooks.batch_end(a->hooks.arg, rc == 0, index);
    if (rc != 0) {
        LOG_ERROR(a->lg, "cannot apply committed entries to the key space; stopping the member",
                  LOG_STR("error", mvcc_strerror(rc)), LOG_UINT("index", index));
        abort();
    }
    atomic_store(&a->applied, index);
    for (size_t i = 0; i < n; i++)
        if (a->dones[i].fn)
            a->dones[i].fn(a->dones[i].ctx);
    return list;
}

/* Replaces the store by the snapshot q names (see server_apply_install) and
 * frees q. A failure here stops the member: raft already dropped the log the
 * snapshot replaces, so there is no way back. */
static void install(server_apply_t *a, struct queued_entry *q) {
    struct util_err err = {0};
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 10000000};
    int rc;
    /* A defragmentation holds the store for a while: wait for it. */
    while ((rc = mvcc_snapshot_install(a->db, q->install, &err)) == -EBUSY)
        nanosleep(&nap, NULL);
    uint64_t index = 0, term = 0;
    if (rc == 0)
        rc = mvcc_state(a->db, &index, &term, NULL, NULL);
    if (rc != 0 || index < q->e.index) {
        LOG_ERROR(a->lg, "cannot install the raft snapshot; stopping the member",
                  LOG_STR("error", rc ? err.msg : "the copy is older than the snapshot"),
                  LOG_STR("file", q->install), LOG_UINT("snapshot-index", q->e.index),
                  LOG_UINT("copy-index", index));
        abort();
    }
    LOG_INFO(a->lg, "installed a raft snapshot", LOG_UINT("snapshot-index", q->e.index),
             LOG_UINT("applied-index", index));
    atomic_store(&a->applied, index);
    if (a->hooks.restored)
        a->hooks.restored(a->hooks.arg, index);
    free(q->install);
    free(q);
}

/* Applies list in order: batches of entries, snapshot installations, and
 * skips entries the store already holds (those a snapshot brought). */
static void apply_list(server_apply_t *a, struct queued_entry *list) {
    while (list) {
        struct queued_entry *q = list;
        if (q->install) {
            list = q->next;
            install(a, q);
        } else if (q->e.index <= atomic_load(&a->applied)) {
            list = q->next;
            free(q->e.data);
            free(q);
        } else {
            list = apply_batch(a, list);
        }
    }
}

static void *apply_main(void *arg) {
    server_apply_t *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->head && !a->stopping)
            pthread_cond_wait(&a->cond, &a->mu);
        struct queued_entry *list = a->head;
        a->head = a->tail = NULL;
        bool stopping = a->stopping;
        pthread_mutex_unlock(&a->mu);
        apply_list(a, list);
        pthread_mutex_lock(&a->mu);
        struct read_waiter *ready =
            take_ready_waiters(a, atomic_load(&a->applied), stopping && !a->head);
        pthread_mutex_unlock(&a->mu);
        run_waiters(ready);
        pthread_mutex_lock(&a->mu);
        if (stopping && !a->head && !a->waiters)
            break;
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

int server_apply_start(mvcc_t *db, uint64_t applied, const struct apply_hooks *hooks, log_t *lg,
                       server_apply_t **out, struct util_err *err) {
    server_apply_t *a = calloc(1, sizeof(*a));
    if (!a || !(a->dones = calloc(APPLY_MAX_BATCH, sizeof(*a->dones)))) {
        free(a);
        return util_errorf(err, -ENOMEM, "out of memory");
    }
    a->db = db;
    a->hooks = *hooks;
    a->lg = lg;
    atomic_store(&a->applied, applied);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cond, NULL);
    int rc = pthread_create(&a->thread, NULL, apply_main, a);
    if (rc != 0) {
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->mu);
        free(a->dones);
        free(a);
        return util_errorf(err, -rc, "cannot start the apply thread: %s", strerror(rc));
    }
    *out = a;
    return 0;
}

void server_apply_stop(server_apply_t *a) {
    if (!a)
        return;
    pthread_mutex_lock(&a->mu);
    a->stopping = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->mu);
    free(a->dones);
    free(a);
}
