/* service-watch: service discovery with libquoin.
 *
 *   service-watch register --endpoints E --ttl S KEY VALUE
 *       announces VALUE (an address) under KEY with a lease kept alive while
 *       the process runs; when it dies the lease expires and KEY goes away.
 *   service-watch watch --endpoints E [--updates N] PREFIX
 *       prints the live list of values under PREFIX ("list: a b c", sorted by
 *       key), first as read, then after every change, using one range and
 *       then a watch from the revision after it (no change missed in between).
 *       Exits after N lists when --updates is given. */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/quoin.h"

/* The current endpoints: key -> value, kept sorted by key. */
struct entry {
    char *key, *value;
};

struct state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct entry *e;
    size_t n;
    int lists_left; /* -1: forever */
    int failed;
};

static int find(const struct state *s, const char *k, size_t kl, size_t *at) {
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(s->e[mid].key, k, kl);
        if (c == 0 && strlen(s->e[mid].key) > kl)
            c = 1;
        if (c == 0) {
            *at = mid;
            return 1;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *at = lo;
    return 0;
}

static int set(struct state *s, const quoin_kv_t *kv) {
    size_t at;
    char *v = strndup(kv->value, kv->value_len);
    if (!v)
        return -1;
    if (find(s, kv->key, kv->key_len, &at)) {
        free(s->e[at].value);
        s->e[at].value = v;
        return 0;
    }
    struct entry *grown = realloc(s->e, (s->n + 1) * sizeof *s->e);
    char *k = strndup(kv->key, kv->key_len);
    if (!grown || !k) {
        free(v);
        free(k);
        if (grown)
            s->e = grown;
        return -1;
    }
    s->e = grown;
    memmove(&s->e[at + 1], &s->e[at], (s->n - at) * sizeof *s->e);
    s->e[at].key = k;
    s->e[at].value = v;
    s->n++;
    return 0;
}

static void drop(struct state *s, const quoin_kv_t *kv) {
    size_t at;
    if (!find(s, kv->key, kv->key_len, &at))
        return;
    free(s->e[at].key);
    free(s->e[at].value);
    memmove(&s->e[at], &s->e[at + 1], (s->n - at - 1) * sizeof *s->e);
    s->n--;
}

static void print_list(struct state *s) {
    printf("list:");
    for (size_t i = 0; i < s->n; i++)
        printf(" %s", s->e[i].value);
    printf("\n");
    fflush(stdout);
    if (s->lists_left > 0 && --s->lists_left == 0)
        pthread_cond_signal(&s->cv);
}

static void on_events(void *arg, const quoin_header_t *h, const quoin_event_t *ev, size_t n,
                      int64_t compact, const quoin_error_t *err) {
    struct state *s = arg;
    (void)h;
    (void)compact;
    pthread_mutex_lock(&s->mu);
    if (err) {
        if (err->code != QUOIN_CANCELLED) {
            fprintf(stderr, "service-watch: watch ended: %s\n", err->message);
            s->failed = 1;
            pthread_cond_signal(&s->cv);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            if (ev[i].type == QUOIN_EVENT_PUT)
                set(s, &ev[i].kv);
            else
                drop(s, &ev[i].kv);
        }
        print_list(s);
    }
    pthread_mutex_unlock(&s->mu);
}

/* The end of a prefix range: the prefix with its last byte plus one. */
static char *prefix_end(const char *p) {
    char *e = strdup(p);
    size_t n = strlen(p);
    if (e && n)
        e[n - 1]++;
    return e;
}

static int do_watch(quoin_client_t *c, const char *prefix, int updates) {
    struct state s = {.lists_left = updates > 0 ? updates : -1};
    quoin_resp_t *r = NULL;
    quoin_watch_t *w = NULL;
    quoin_error_t e;
    char *end = prefix_end(prefix);
    int rc = 1;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    quoin_op_t get = {.type = QUOIN_OP_RANGE,
                      .key = prefix,
                      .key_len = strlen(prefix),
                      .range_end = end,
                      .range_end_len = end ? strlen(end) : 0};
    if (!end || quoin_do(c, &get, 0, &r, &e) < 0) {
        fprintf(stderr, "service-watch: %s\n", end ? e.message : "out of memory");
        goto out;
    }
    pthread_mutex_lock(&s.mu);
    for (size_t i = 0; i < r->n_kvs; i++)
        set(&s, &r->kvs[i]);
    print_list(&s);
    pthread_mutex_unlock(&s.mu);
    quoin_watch_options_t o = {
        .range_end = end, .range_end_len = strlen(end), .start_revision = r->header.revision + 1};
    if (quoin_watch(c, prefix, strlen(prefix), &o, on_events, &s, &w) < 0)
        goto out;
    pthread_mutex_lock(&s.mu);
    while (s.lists_left != 0 && !s.failed)
        pthread_cond_wait(&s.cv, &s.mu);
    rc = s.failed;
    pthread_mutex_unlock(&s.mu);
out:
    quoin_watch_cancel(w);
    quoin_client_free(c); /* after this no callback runs */
    quoin_resp_free(r);
    for (size_t i = 0; i < s.n; i++) {
        free(s.e[i].key);
        free(s.e[i].value);
    }
    free(s.e);
    free(end);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    return rc;
}

/* SIGTERM and SIGINT are blocked in every thread (main blocks them before the
 * client's thread starts): this one takes them with sigwait. */
static int do_register(quoin_client_t *c, int ttl, const char *key, const char *value) {
    quoin_resp_t *r = NULL;
    quoin_keepalive_t *ka;
    quoin_error_t e;
    sigset_t set;
    int sig;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (quoin_lease_grant(c, ttl, 0, 0, &r, &e) < 0)
        goto err;
    quoin_op_t put = {.type = QUOIN_OP_PUT,
                      .key = key,
                      .key_len = strlen(key),
                      .value = value,
                      .value_len = strlen(value),
                      .lease = r->lease_id};
    if (quoin_keepalive(c, r->lease_id, NULL, NULL, &ka) < 0 || quoin_do(c, &put, 0, NULL, &e) < 0)
        goto err;
    printf("registered %s\n", key);
    fflush(stdout);
    sigwait(&set, &sig);
    /* a clean exit deregisters at once rather than at lease expiry */
    quoin_lease_revoke(c, r->lease_id, 0, &e);
    quoin_resp_free(r);
    quoin_client_free(c);
    return 0;
err:
    fprintf(stderr, "service-watch: %s\n", e.message);
    quoin_resp_free(r);
    quoin_client_free(c);
    return 1;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"endpoints", 1, 0, 'e'}, {"ttl", 1, 0, 't'}, {"updates", 1, 0, 'u'}, {0, 0, 0, 0}};
    const char *endpoints = "127.0.0.1:2379";
    int ttl = 5, updates = 0, ch;
    quoin_client_t *c;
    if (argc < 2)
        goto usage;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoints = optarg;
            break;
        case 't':
            ttl = atoi(optarg);
            break;
        case 'u':
            updates = atoi(optarg);
            break;
        default:
            goto usage;
        }
    }
    if (!strcmp(argv[1], "register")) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL); /* inherited by the client's thread */
    }
    if (quoin_client_new(endpoints, NULL, &c) < 0) {
        fprintf(stderr, "service-watch: bad endpoints %s\n", endpoints);
        return 2;
    }
    if (!strcmp(argv[1], "watch") && optind == argc - 1)
        return do_watch(c, argv[optind], updates);
    if (!strcmp(argv[1], "register") && optind == argc - 2)
        return do_register(c, ttl, argv[optind], argv[optind + 1]);
    quoin_client_free(c);
usage:
    fprintf(stderr, "usage: service-watch register --endpoints E --ttl S KEY VALUE\n"
                    "       service-watch watch --endpoints E [--updates N] PREFIX\n");
    return 2;
}
