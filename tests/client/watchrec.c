/* The watch recorder of the client tests (see watchrec.h). */
#include "watchrec.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void watchrec_init(struct watchrec *w) {
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
}

void watchrec_destroy(struct watchrec *w) {
    pthread_mutex_destroy(&w->mu);
}

void watchrec_cb(void *arg, const quoin_header_t *h, const quoin_event_t *ev, size_t n,
                 int64_t compact, const quoin_error_t *err) {
    struct watchrec *w = arg;
    (void)h;
    (void)compact;
    pthread_mutex_lock(&w->mu);
    if (err) {
        w->ended = 1;
        w->end_code = err->code;
    }
    for (size_t i = 0; i < n && w->n < WATCHREC_MAX; i++) {
        if (w->n && ev[i].kv.mod_revision != w->revs[w->n - 1] + 1)
            w->dup_or_gap = 1;
        w->revs[w->n] = ev[i].kv.mod_revision;
        snprintf(w->keys[w->n], sizeof w->keys[0], "%.*s", (int)ev[i].kv.key_len, ev[i].kv.key);
        w->n++;
    }
    pthread_mutex_unlock(&w->mu);
}

int watchrec_count(struct watchrec *w) {
    pthread_mutex_lock(&w->mu);
    int n = w->n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

int watchrec_wait(struct watchrec *w, int n, int ms) {
    for (int i = 0; i < ms / 10; i++) {
        int got = watchrec_count(w);
        if (got >= n)
            return got;
        usleep(10000);
    }
    return watchrec_count(w);
}

int watchrec_wait_end(struct watchrec *w, int ms) {
    for (int i = 0; i <= ms / 10; i++) {
        pthread_mutex_lock(&w->mu);
        int ended = w->ended, code = w->end_code;
        pthread_mutex_unlock(&w->mu);
        if (ended)
            return code;
        usleep(10000);
    }
    return -1;
}

int watchrec_is_sequence(struct watchrec *w, const char *prefix, int n) {
    int ok;
    pthread_mutex_lock(&w->mu);
    ok = w->n == n && !w->dup_or_gap;
    for (int i = 0; i < n && ok; i++) {
        char k[sizeof w->keys[0]];
        snprintf(k, sizeof k, "%s%d", prefix, i);
        ok = strcmp(w->keys[i], k) == 0;
    }
    pthread_mutex_unlock(&w->mu);
    return ok;
}
