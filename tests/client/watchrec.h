/* A watch recorder for the client tests: a quoin_watch_cb that keeps the
 * events it was given (key, revision), notices a gap or a repeat in their
 * revisions, and the watch's end; with waits on both. */
#ifndef QUOIN_TESTS_CLIENT_WATCHREC_H
#define QUOIN_TESTS_CLIENT_WATCHREC_H

#include <pthread.h>
#include <stdint.h>

#include "client/quoin.h"

#define WATCHREC_MAX 64

struct watchrec {
    pthread_mutex_t mu;
    int64_t revs[WATCHREC_MAX];
    char keys[WATCHREC_MAX][16];
    int n;
    int dup_or_gap; /* two events whose revisions do not follow each other */
    int ended;
    int end_code;
};

void watchrec_init(struct watchrec *w);
void watchrec_destroy(struct watchrec *w);
/* The quoin_watch_cb; arg is the struct watchrec. */
void watchrec_cb(void *arg, const quoin_header_t *h, const quoin_event_t *ev, size_t n,
                 int64_t compact, const quoin_error_t *err);
int watchrec_count(struct watchrec *w);
/* Waits up to ms for n events; returns how many arrived. */
int watchrec_wait(struct watchrec *w, int n, int ms);
/* Waits up to ms for the watch's final callback; returns its code, or -1. */
int watchrec_wait_end(struct watchrec *w, int ms);
/* 1 if the events are exactly <prefix>0 .. <prefix>(n-1), once each, at
 * consecutive revisions. */
int watchrec_is_sequence(struct watchrec *w, const char *prefix, int n);

#endif
