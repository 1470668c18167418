/* quoin-bench: load generator for etcd v3 servers (quoin or etcd), built on
 * libquoin's asynchronous API. One libuv loop drives every connection; each of
 * the concurrent clients keeps one request in flight. Latencies go into a
 * log-linear histogram (HdrHistogram's layout: 64 linear sub-buckets per power
 * of two, so every recorded value is kept within 1/64 of its size).
 *
 *   quoin-bench [options] put|range|txn-put|watch-latency|lease-keepalive|mix */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "client/quoin.h"
#include "util/util.h"

/* ---- histogram ---- */

#define H_SUB_BITS 6
#define H_SUB (1u << H_SUB_BITS) /* linear sub-buckets per power of two */
#define H_BUCKETS (2 * H_SUB + 58 * H_SUB)

struct hist {
    uint64_t counts[H_BUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t min;
    double sum;
};

/* Values below 2*H_SUB have a bucket each; above, the top H_SUB_BITS+1 bits
 * select the bucket within the value's power of two. */
static unsigned hist_index(uint64_t v) {
    unsigned msb, shift;
    if (v < 2 * H_SUB)
        return (unsigned)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    shift = msb - H_SUB_BITS;
    return 2 * H_SUB + (shift - 1) * H_SUB + (unsigned)((v >> shift) - H_SUB);
}

/* The highest value that falls in bucket i. */
static uint64_t hist_upper(unsigned i) {
    unsigned shift;
    if (i < 2 * H_SUB)
        return i;
    shift = (i - 2 * H_SUB) / H_SUB + 1;
    return ((uint64_t)((i - 2 * H_SUB) % H_SUB + H_SUB + 1) << shift) - 1;
}

static void hist_add(struct hist *h, uint64_t v) {
    h->counts[hist_index(v)]++;
    h->total++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
    if (h->total == 1 || v < h->min)
        h->min = v;
}

static uint64_t hist_pct(const struct hist *h, double p) {
    uint64_t want = (uint64_t)ceil(p / 100.0 * (double)h->total), seen = 0;
    if (!h->total)
        return 0;
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t u = hist_upper(i);
            return u < h->max ? u : h->max;
        }
    }
    return h->max;
}

/* ---- configuration ---- */

enum workload { W_PUT, W_RANGE, W_TXN_PUT, W_WATCH, W_LEASE_KA, W_MIX };

struct conf {
    const char *endpoints;
    enum workload w;
    const char *wname;
    int conns;
    int clients;
    int key_size;
    int val_size;
    uint64_t key_space;
    int sequential;
    uint64_t total;
    double duration;
    int serializable;
    int watchers;
    int rate;
    double read_ratio;
    int json;
    int deadline_ms;
    const char *prefix;
};

struct bench;

struct slot {
    struct bench *b;
    uint64_t t0;
    int64_t lease;
};

struct bench {
    struct conf cf;
    uv_loop_t loop;
    quoin_client_t **cl;
    struct slot *slots;
    struct hist h;
    uint64_t issued, done, errors;
    uint64_t start_ns, stop_ns, end_at_ns;
    uint64_t seq;
    uint64_t rng;
    char *value;
    quoin_error_t last_err;
    int stopping;
    int live;
    /* watch-latency */
    quoin_watch_t **watches;
    uint64_t *sent_ns;
    uint64_t watch_events, watch_expected;
    uv_timer_t put_timer;
    int watches_ready;
};

static uint64_t next_rand(struct bench *b) {
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return b->rng;
}

static void make_key(struct bench *b, uint64_t n, char *out) {
    int len = snprintf(out, 64, "%s%0*" PRIu64, b->cf.prefix,
                       b->cf.key_size - (int)strlen(b->cf.prefix), n);
    (void)len;
}

static uint64_t pick(struct bench *b) {
    uint64_t n = b->cf.sequential ? b->seq++ : next_rand(b);
    return n % b->cf.key_space;
}

static int more_to_do(struct bench *b) {
    if (b->stopping)
        return 0;
    if (b->cf.total)
        return b->issued < b->cf.total;
    return util_now_mono_ns() < b->end_at_ns;
}

static void issue(struct slot *s);

static void on_done(void *arg, quoin_resp_t *resp, const quoin_error_t *err) {
    struct slot *s = arg;
    struct bench *b = s->b;
    uint64_t now = util_now_mono_ns();
    quoin_error_t gone = {.code = QUOIN_NOT_FOUND};
    /* a refresh answered with TTL <= 0 kept nothing alive: not a success */
    if (!err && b->cf.w == W_LEASE_KA && resp->ttl <= 0) {
        snprintf(gone.message, sizeof gone.message, "lease %" PRId64 " answered TTL %" PRId64,
                 s->lease, resp->ttl);
        err = &gone;
    }
    quoin_resp_free(resp);
    b->done++;
    if (err) {
        b->errors++;
        b->last_err = *err;
    } else {
        hist_add(&b->h, now - s->t0);
    }
    b->stop_ns = now;
    if (more_to_do(b))
        issue(s);
    else
        b->live--;
}

static void issue(struct slot *s) {
    struct bench *b = s->b;
    quoin_client_t *c = b->cl[(size_t)(s - b->slots) % (size_t)b->cf.conns];
    char key[64];
    quoin_op_t op = {.type = QUOIN_OP_PUT};
    int rc;
    make_key(b, pick(b), key);
    op.key = key;
    op.key_len = strlen(key);
    b->issued++;
    s->t0 = util_now_mono_ns();
    switch (b->cf.w) {
    case W_MIX:
        if ((double)(next_rand(b) % 10000) < b->cf.read_ratio * 10000.0)
            op.type = QUOIN_OP_RANGE;
        /* fallthrough */
    case W_PUT:
        op.value = b->value;
        op.value_len = (size_t)b->cf.val_size;
        rc = quoin_do_async(c, &op, b->cf.deadline_ms, on_done, s);
        break;
    case W_RANGE:
        op.type = QUOIN_OP_RANGE;
        op.serializable = b->cf.serializable;
        rc = quoin_do_async(c, &op, b->cf.deadline_ms, on_done, s);
        break;
    case W_TXN_PUT: {
        /* compare-and-swap shape: a compare on the key, a put if it holds */
        quoin_cmp_t cmp = {.key = key,
                           .key_len = op.key_len,
                           .target = QUOIN_CMP_VERSION,
                           .result = QUOIN_CMP_GREATER,
                           .number = -1};
        op.value = b->value;
        op.value_len = (size_t)b->cf.val_size;
        rc = quoin_txn_async(c, &cmp, 1, &op, 1, NULL, 0, b->cf.deadline_ms, on_done, s);
        break;
    }
    case W_LEASE_KA:
        rc = quoin_lease_keepalive_once_async(c, s->lease, b->cf.deadline_ms, on_done, s);
        break;
    default:
        rc = -EINVAL;
    }
    if (rc < 0) {
        quoin_error_t e = {.code = 13};
        snprintf(e.message, sizeof e.message, "submit: %s", strerror(-rc));
        on_done(s, NULL, &e);
    }
}

/* ---- watch-latency: one writer at a fixed rate, every watcher sees every put ---- */

static void watch_cb(void *arg, const quoin_header_t *h, const quoin_event_t *ev, size_t n,
                     int64_t compact, const quoin_error_t *err) {
    struct bench *b = arg;
    uint64_t now = util_now_mono_ns();
    size_t plen = strlen(b->cf.prefix);
    (void)h;
    (void)compact;
    if (err) {
        if (err->code != QUOIN_CANCELLED) {
            b->errors++;
            b->last_err = *err;
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char num[64];
        uint64_t seq;
        if (ev[i].kv.key_len <= plen || ev[i].kv.key_len - plen >= sizeof num)
            continue;
        memcpy(num, ev[i].kv.key + plen, ev[i].kv.key_len - plen);
        num[ev[i].kv.key_len - plen] = 0;
        seq = strtoull(num, NULL, 10);
        if (seq >= b->seq)
            continue;
        hist_add(&b->h, now - b->sent_ns[seq]);
        b->watch_events++;
        b->stop_ns = now;
    }
}

static void watch_put_done(void *arg, quoin_resp_t *resp, const quoin_error_t *err) {
    struct bench *b = arg;
    quoin_resp_free(resp);
    b->done++;
    if (err) {
        b->errors++;
        b->last_err = *err;
        b->watch_expected -= (uint64_t)b->cf.watchers;
    }
}

static void watch_tick(uv_timer_t *t) {
    struct bench *b = t->data;
    char key[64];
    quoin_op_t op = {.type = QUOIN_OP_PUT};
    if (b->seq >= b->cf.total) {
        /* done once every watcher saw every put, or 10 s after the last put */
        if (b->watch_events >= b->watch_expected ||
            util_now_mono_ns() > b->stop_ns + 10000000000ull) {
            for (int i = 0; i < b->cf.watchers; i++)
                quoin_watch_cancel(b->watches[i]);
            uv_timer_stop(t);
            uv_close((uv_handle_t *)t, NULL);
        }
        return;
    }
    make_key(b, b->seq, key);
    op.key = key;
    op.key_len = strlen(key);
    op.value = b->value;
    op.value_len = (size_t)b->cf.val_size;
    b->sent_ns[b->seq++] = b->stop_ns = util_now_mono_ns();
    if (b->seq == 1)
        b->start_ns = b->stop_ns;
    b->issued++;
    quoin_do_async(b->cl[0], &op, b->cf.deadline_ms, watch_put_done, b);
}

static int run_watch(struct bench *b) {
    int period_ms;
    b->watches = calloc((size_t)b->cf.watchers, sizeof *b->watches);
    b->sent_ns = calloc(b->cf.total ? b->cf.total : 1, sizeof *b->sent_ns);
    if (!b->watches || !b->sent_ns)
        return -ENOMEM;
    b->watch_expected = b->cf.total * (uint64_t)b->cf.watchers;
    for (int i = 0; i < b->cf.watchers; i++) {
        char end[64];
        quoin_watch_options_t o = {0};
        snprintf(end, sizeof end, "%s", b->cf.prefix);
        end[strlen(end) - 1]++;
        o.range_end = end;
        o.range_end_len = strlen(end);
        if (quoin_watch(b->cl[(size_t)i % (size_t)b->cf.conns], b->cf.prefix, strlen(b->cf.prefix),
                        &o, watch_cb, b, &b->watches[i]) < 0)
            return -ENOMEM;
    }
    period_ms = b->cf.rate > 0 ? 1000 / b->cf.rate : 10;
    uv_timer_init(&b->loop, &b->put_timer);
    b->put_timer.data = b;
    /* the first put waits a second, for every watch to be created */
    uv_timer_start(&b->put_timer, watch_tick, 1000, (uint64_t)(period_ms > 0 ? period_ms : 1));
    return 0;
}

/* ---- lease-keepalive: one lease per client, refreshed back to back ---- */

static int grant_leases(struct bench *b) {
    for (int i = 0; i < b->cf.clients; i++) {
        quoin_client_t *c;
        quoin_resp_t *r = NULL;
        quoin_error_t e;
        if (quoin_client_new(b->cf.endpoints, NULL, &c) < 0)
            return -1;
        if (quoin_lease_grant(c, 600, 0, 5000, &r, &e) < 0) {
            fprintf(stderr, "quoin-bench: lease grant: %s\n", e.message);
            quoin_client_free(c);
            return -1;
        }
        b->slots[i].lease = r->lease_id;
        quoin_resp_free(r);
        quoin_client_free(c);
    }
    return 0;
}

/* ---- output ---- */

static void report(struct bench *b) {
    double secs = (double)(b->stop_ns - b->start_ns) / 1e9;
    uint64_t n = b->cf.w == W_WATCH ? b->h.total : b->done - b->errors;
    double ops = secs > 0 ? (double)(b->cf.w == W_WATCH ? b->issued : n) / secs : 0;
    double ms = 1e6;
    if (b->cf.json) {
        printf("{\"workload\":\"%s\",\"conns\":%d,\"clients\":%d,\"ops\":%" PRIu64
               ",\"errors\":%" PRIu64 ",\"seconds\":%.3f,\"ops_per_sec\":%.1f,\"latency_ms\":{"
               "\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,"
               "\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}",
               b->cf.wname, b->cf.conns, b->cf.clients, n, b->errors, secs, ops,
               b->h.total ? b->h.sum / (double)b->h.total / ms : 0,
               (double)hist_pct(&b->h, 50) / ms, (double)hist_pct(&b->h, 90) / ms,
               (double)hist_pct(&b->h, 99) / ms, (double)hist_pct(&b->h, 99.9) / ms,
               (double)b->h.max / ms);
        if (b->errors) {
            printf(",\"last_error\":{\"code\":%d,\"message\":\"", b->last_err.code);
            for (const char *p = b->last_err.message; *p; p++)
                if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
                    putchar(*p);
            printf("\"}");
        }
        printf("}\n");
        return;
    }
    printf("workload %s: %" PRIu64 " ops in %.2f s, %.1f ops/s, %" PRIu64 " errors\n", b->cf.wname,
           n, secs, ops, b->errors);
    printf("latency ms: mean %.3f p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f max %.3f\n",
           b->h.total ? b->h.sum / (double)b->h.total / ms : 0, (double)hist_pct(&b->h, 50) / ms,
           (double)hist_pct(&b->h, 90) / ms, (double)hist_pct(&b->h, 99) / ms,
           (double)hist_pct(&b->h, 99.9) / ms, (double)b->h.max / ms);
    if (b->errors)
        printf("last error: code %d: %s\n", b->last_err.code, b->last_err.message);
}

static void usage(FILE *f) {
    fprintf(f, "usage: quoin-bench [options] put|range|txn-put|watch-latency|lease-keepalive|mix\n"
               "  --endpoints LIST      comma-separated host:port (default 127.0.0.1:2379)\n"
               "  --conns N             connections (default 1); connection i first tries\n"
               "                        endpoint i mod (number of endpoints)\n"
               "  --clients N           concurrent requests in flight (default 16)\n"
               "  --key-size N          key bytes (default 8)\n"
               "  --val-size N          value bytes (default 256)\n"
               "  --key-space N         distinct keys (default 10000)\n"
               "  --sequential          keys in order (default: random)\n"
               "  --total N             requests to make (default 10000)\n"
               "  --duration S          run for S seconds instead of --total\n"
               "  --consistency l|s     range: linearizable (default) or serializable\n"
               "  --watchers N          watch-latency: watchers (default 10)\n"
               "  --rate N              watch-latency: puts per second (default 100)\n"
               "  --read-ratio R        mix: share of reads (default 0.9)\n"
               "  --prefix P            key prefix (default k)\n"
               "  --deadline-ms N       per-request deadline (default 10000)\n"
               "  -w json               one JSON object instead of text\n");
}

static int parse(int argc, char **argv, struct conf *cf) {
    static const struct option opts[] = {{"endpoints", 1, 0, 'e'},
                                         {"conns", 1, 0, 'c'},
                                         {"clients", 1, 0, 'n'},
                                         {"key-size", 1, 0, 'k'},
                                         {"val-size", 1, 0, 'v'},
                                         {"key-space", 1, 0, 's'},
                                         {"sequential", 0, 0, 'q'},
                                         {"total", 1, 0, 't'},
                                         {"duration", 1, 0, 'd'},
                                         {"consistency", 1, 0, 'l'},
                                         {"watchers", 1, 0, 'W'},
                                         {"rate", 1, 0, 'r'},
                                         {"read-ratio", 1, 0, 'R'},
                                         {"prefix", 1, 0, 'p'},
                                         {"deadline-ms", 1, 0, 'D'},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    static const char *const names[] = {"put",           "range",           "txn-put",
                                        "watch-latency", "lease-keepalive", "mix"};
    int ch;
    *cf = (struct conf){.endpoints = "127.0.0.1:2379",
                        .conns = 1,
                        .clients = 16,
                        .key_size = 8,
                        .val_size = 256,
                        .key_space = 10000,
                        .total = 10000,
                        .watchers = 10,
                        .rate = 100,
                        .read_ratio = 0.9,
                        .prefix = "k",
                        .deadline_ms = 10000};
    while ((ch = getopt_long(argc, argv, "w:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            cf->endpoints = optarg;
            break;
        case 'c':
            cf->conns = atoi(optarg);
            break;
        case 'n':
            cf->clients = atoi(optarg);
            break;
        case 'k':
            cf->key_size = atoi(optarg);
            break;
        case 'v':
            cf->val_size = atoi(optarg);
            break;
        case 's':
            cf->key_space = strtoull(optarg, NULL, 10);
            break;
        case 'q':
            cf->sequential = 1;
            break;
        case 't':
            cf->total = strtoull(optarg, NULL, 10);
            break;
        case 'd':
            cf->duration = atof(optarg);
            cf->total = 0;
            break;
        case 'l':
            cf->serializable = optarg[0] == 's';
            break;
        case 'W':
            cf->watchers = atoi(optarg);
            break;
        case 'r':
            cf->rate = atoi(optarg);
            break;
        case 'R':
            cf->read_ratio = atof(optarg);
            break;
        case 'p':
            cf->prefix = optarg;
            break;
        case 'D':
            cf->deadline_ms = atoi(optarg);
            break;
        case 'w':
            if (strcmp(optarg, "json") != 0) {
                fprintf(stderr, "quoin-bench: -w takes json\n");
                return -1;
            }
            cf->json = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            return -1;
        }
    }
    if (optind != argc - 1)
        return -1;
    cf->wname = argv[optind];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(names[i], cf->wname))
            cf->w = (enum workload)i, cf->wname = names[i];
    if (strcmp(names[cf->w], cf->wname) != 0) {
        fprintf(stderr, "quoin-bench: unknown workload %s\n", cf->wname);
        return -1;
    }
    if (cf->conns < 1 || cf->clients < 1 || cf->key_space < 1 || cf->watchers < 1 || !*cf->prefix ||
        cf->key_size < (int)strlen(cf->prefix) + 1 || cf->key_size > 60 || cf->val_size < 0 ||
        (!cf->total && cf->duration <= 0) || (cf->w == W_WATCH && !cf->total)) {
        fprintf(stderr, "quoin-bench: bad option values (watch-latency needs --total)\n");
        return -1;
    }
    return 0;
}

/* The endpoint list starting at its (i mod n)-th entry, so that connection i
 * first talks to member i mod n: the connections spread over a cluster as
 * etcd's own benchmark spreads them. Returns a string to free, or NULL. */
static char *rotated_endpoints(const char *list, int i) {
    size_t len = strlen(list), n = 1, at = 0;
    char *out = malloc(len + 2);
    for (const char *p = list; *p; p++)
        n += *p == ',';
    if (!out)
        return NULL;
    for (size_t skip = (size_t)i % n; skip > 0; skip--)
        at = (size_t)(strchr(list + at, ',') - list) + 1;
    if (at == 0) {
        memcpy(out, list, len + 1);
        return out;
    }
    /* "c,a,b" from "a,b,c": the tail, a comma, then the head without its comma */
    snprintf(out, len + 2, "%s,%.*s", list + at, (int)(at - 1), list);
    return out;
}

int main(int argc, char **argv) {
    struct bench *b = calloc(1, sizeof *b);
    int rc = 1;
    signal(SIGPIPE, SIG_IGN); /* the clients run on this thread's loop */
    if (!b || parse(argc, argv, &b->cf) < 0) {
        usage(stderr);
        free(b);
        return 2;
    }
    b->rng = 0x9e3779b97f4a7c15ull ^ util_now_wall_ns();
    b->value = malloc((size_t)b->cf.val_size + 1);
    b->cl = calloc((size_t)b->cf.conns, sizeof *b->cl);
    b->slots = calloc((size_t)b->cf.clients, sizeof *b->slots);
    if (!b->value || !b->cl || !b->slots || uv_loop_init(&b->loop) < 0)
        goto out;
    memset(b->value, 'v', (size_t)b->cf.val_size);
    for (int i = 0; i < b->cf.conns; i++) {
        char *eps = rotated_endpoints(b->cf.endpoints, i);
        int made = eps ? quoin_client_new_on_loop(&b->loop, eps, NULL, &b->cl[i]) : -ENOMEM;
        free(eps);
        if (made < 0) {
            fprintf(stderr, "quoin-bench: bad endpoints %s\n", b->cf.endpoints);
            goto out;
        }
    }
    if (b->cf.w == W_LEASE_KA && grant_leases(b) < 0)
        goto out;
    if (b->cf.w == W_WATCH) {
        if (run_watch(b) < 0)
            goto out;
    } else {
        b->start_ns = util_now_mono_ns();
        b->end_at_ns = b->start_ns + (uint64_t)(b->cf.duration * 1e9);
        for (int i = 0; i < b->cf.clients && more_to_do(b); i++) {
            b->slots[i].b = b;
            b->live++;
            issue(&b->slots[i]);
        }
    }
    uv_run(&b->loop, UV_RUN_DEFAULT);
    report(b);
    rc = b->errors ? 1 : 0;
out:
    for (int i = 0; b->cl && i < b->cf.conns; i++)
        quoin_client_free(b->cl[i]);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    uv_loop_close(&b->loop);
    free(b->watches);
    free(b->sent_ns);
    free(b->value);
    free(b->cl);
    free(b->slots);
    free(b);
    return rc;
}
