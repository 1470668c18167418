/* The linearizability search of lincheck (see lincheck.h for what is decided):
 * partitioning by key with union-find, the etcd key-space model, and Lowe's
 * just-in-time depth-first search with memoisation, one partition at a time. */
#include "lincheck_int.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define LC_DEFAULT_STEPS 20000000ull
#define LC_DEFAULT_MS 20000ull
/* Operations of a failing linearization shown in a report. */
#define LC_SHOW_TAIL 6
#define LC_SHOW_OPEN 8

/* Model state words: [0] = lower bound of the global revision, then one word
 * per lease (alive), then LC_KW words per key. */
enum { LC_KV_VALUE, LC_KV_VER, LC_KV_MOD, LC_KV_CREATE, LC_KV_LO, LC_KV_HI, LC_KV_LEASE, LC_KW };
/* mod/create of a key written by the op being stepped, fixed once its
 * revision is settled. A 0 mod on a present key means "unknown, in [lo, hi]":
 * the key was written by an operation whose revision was never reported. */
#define LC_PENDING (-2)

/* One partition: its operations and its keys and leases, both as local
 * indices into the state. */
struct lc_part {
    const struct lincheck_history *h;
    const struct lc_op **ops;
    uint64_t *ret;      /* latest times to take effect (lc_learned.by; LC_NEVER: none) */
    unsigned char *opt; /* may never take effect (timed out, not observed) */
    int64_t *rev;       /* revisions, known or learned; 0 unknown */
    size_t n;
    int *keys, *leases; /* local -> global */
    size_t nk, nl;
    const int *kloc, *lloc;        /* global -> local, valid for this partition's members */
    const struct lc_learned *gaps; /* NULL in an open world */
    const int64_t *vver;           /* per value: the version its write made, 0 unknown */
    size_t S;                      /* state words */
};

static void lc_part_free(struct lc_part *p) {
    free(p->ops);
    free(p->ret);
    free(p->opt);
    free(p->rev);
    free(p->keys);
    free(p->leases);
}

static int64_t *lc_key(const struct lc_part *p, int64_t *st, int gkey) {
    return st + 1 + p->nl + (size_t)p->kloc[gkey] * LC_KW;
}

static void lc_key_clear(int64_t *k) {
    memset(k, 0, LC_KW * sizeof(*k));
    k[LC_KV_VALUE] = LC_ABSENT;
}

/* Evaluates a compare: 1 true, 0 false, -1 depends on an unknown revision. */
static int lc_cmp_eval(const int64_t *k, const struct lc_cmp *c) {
    int exists = k[LC_KV_VALUE] != LC_ABSENT;
    int64_t x;
    if (c->target == LC_T_VALUE) {
        /* etcd: a value compare on a missing key is false, whatever the operator. */
        if (!exists)
            return 0;
        return (k[LC_KV_VALUE] == c->value) == (c->op == LC_EQ);
    }
    if (c->target == LC_T_VERSION) {
        x = k[LC_KV_VER];
    } else {
        x = exists ? k[c->target == LC_T_MOD ? LC_KV_MOD : LC_KV_CREATE] : 0;
        if (exists && x <= 0)
            return -1;
    }
    switch (c->op) {
    case LC_EQ:
        return x == c->num;
    case LC_NE:
        return x != c->num;
    case LC_LT:
        return x < c->num;
    default:
        return x > c->num;
    }
}

/* Checks that key state k agrees with what a read returned, learning an
 * unknown revision from it. R is the op's revision (0 unknown). */
static int lc_match(int64_t *st, int64_t *k, const struct lc_kv *res, int64_t R) {
    if (res->value == LC_ABSENT)
        return k[LC_KV_VALUE] == LC_ABSENT;
    if (k[LC_KV_VALUE] != res->value)
        return 0;
    if (res->version > 0 && k[LC_KV_VER] != res->version)
        return 0;
    if (res->mod > 0) {
        if (k[LC_KV_MOD] == LC_PENDING) {
            if (R > 0 && res->mod != R)
                return 0;
        } else if (k[LC_KV_MOD] == 0) {
            if (res->mod < k[LC_KV_LO] || res->mod > k[LC_KV_HI])
                return 0;
            k[LC_KV_MOD] = res->mod;
            if (st[0] < res->mod)
                st[0] = res->mod;
        } else if (k[LC_KV_MOD] != res->mod) {
            return 0;
        }
    }
    if (res->create > 0) {
        if (k[LC_KV_CREATE] == 0)
            k[LC_KV_CREATE] = res->create;
        else if (k[LC_KV_CREATE] != LC_PENDING && k[LC_KV_CREATE] != res->create)
            return 0;
    }
    return res->lease < 0 || k[LC_KV_LEASE] == res->lease;
}

/* Settles the revision of a step: a write takes revision R (or an unknown one
 * above the floor), a read sees the store at R. Keys with unknown revisions
 * get their bounds narrowed. Returns 0 when R is impossible here. */
static int lc_settle(const struct lc_part *p, int64_t *st, int wrote, int64_t R) {
    if (wrote) {
        if (R > 0 && R <= st[0])
            return 0;
        st[0] = R > 0 ? R : p->gaps != NULL ? lc_next_gap(p->gaps, st[0]) : st[0] + 1;
    } else if (R > 0) {
        if (R < st[0])
            return 0;
        st[0] = R;
    }
    for (size_t i = 0; i < p->nk; i++) {
        int64_t *k = st + 1 + p->nl + i * LC_KW;
        if (k[LC_KV_VALUE] == LC_ABSENT)
            continue;
        if (k[LC_KV_CREATE] == LC_PENDING)
            k[LC_KV_CREATE] = R;
        if (k[LC_KV_MOD] == LC_PENDING) {
            k[LC_KV_MOD] = R;
            k[LC_KV_LO] = R > 0 ? 0 : st[0];
            k[LC_KV_HI] = R > 0 ? 0 : INT64_MAX;
        } else if (k[LC_KV_MOD] == 0 && R > 0) {
            int64_t hi = wrote ? R - 1 : R;
            if (hi < k[LC_KV_HI])
                k[LC_KV_HI] = hi;
            if (k[LC_KV_HI] < k[LC_KV_LO])
                return 0;
        }
    }
    return 1;
}

/* Deletes every key attached to lease id lease (revoke or expiry); returns
 * whether there was any. */
static int lc_drop_lease(const struct lc_part *p, int64_t *st, int64_t lease) {
    int any = 0;
    for (size_t i = 0; i < p->nk; i++) {
        int64_t *k = st + 1 + p->nl + i * LC_KW;
        if (k[LC_KV_VALUE] != LC_ABSENT && k[LC_KV_LEASE] == lease) {
            lc_key_clear(k);
            any = 1;
        }
    }
    return any;
}

/* The txn step. An op whose outcome is recorded must reproduce it; an
 * indeterminate one runs whichever branch the state selects (a compare on an
 * unknown revision counts as false there: the one approximation the model makes). */
static int lc_step_txn(const struct lc_part *p, int64_t *st, const struct lc_op *op, int64_t R) {
    int taken = 1, unknown = 0, wrote = 0;
    for (size_t i = 0; i < op->ncmps; i++) {
        int r = lc_cmp_eval(lc_key(p, st, op->cmps[i].key), &op->cmps[i]);
        if (r == 0)
            taken = 0;
        else if (r < 0)
            unknown = 1;
    }
    int branch = taken && !unknown;
    if (op->succeeded >= 0) {
        if (op->succeeded && !taken)
            return 0;
        if (!op->succeeded && taken && !unknown)
            return 0;
        if (op->succeeded && unknown) {
            /* Learn the unknown revisions the compares pinned down. */
            for (size_t i = 0; i < op->ncmps; i++) {
                const struct lc_cmp *c = &op->cmps[i];
                int64_t *k = lc_key(p, st, c->key);
                if (lc_cmp_eval(k, c) >= 0 || c->op != LC_EQ)
                    continue;
                if (c->target == LC_T_CREATE) {
                    k[LC_KV_CREATE] = c->num;
                } else if (c->num < k[LC_KV_LO] || c->num > k[LC_KV_HI]) {
                    return 0;
                } else {
                    k[LC_KV_MOD] = c->num;
                    if (st[0] < c->num)
                        st[0] = c->num;
                }
            }
        }
        branch = op->succeeded;
    }
    for (size_t i = 0; i < op->nsubs[branch]; i++) {
        const struct lc_sub *s = &op->subs[branch][i];
        int64_t *k = lc_key(p, st, s->key);
        int recorded = op->status == LC_OK;
        switch (s->kind) {
        case LC_GET:
            if (recorded && !lc_match(st, k, &s->res, R))
                return 0;
            break;
        case LC_PUT:
            if (s->lease != 0 && !st[1 + p->lloc[s->lidx]])
                return 0; /* etcd refuses a put on a lease that is gone */
            /* A read of this value showed the version the put made: refusing
             * the put here, rather than at that read, makes the search place
             * the delete or lease expiry it needed first without backtracking
             * across everything linearized in between. */
            if (p->vver[s->value] > 0 &&
                p->vver[s->value] != 1 + (k[LC_KV_VALUE] == LC_ABSENT ? 0 : k[LC_KV_VER]))
                return 0;
            if (k[LC_KV_VALUE] == LC_ABSENT) {
                k[LC_KV_VER] = 0;
                k[LC_KV_CREATE] = LC_PENDING;
            }
            k[LC_KV_VALUE] = s->value;
            k[LC_KV_VER]++;
            k[LC_KV_MOD] = LC_PENDING;
            k[LC_KV_LEASE] = s->lease;
            wrote = 1;
            break;
        case LC_DEL: {
            int had = k[LC_KV_VALUE] != LC_ABSENT;
            if (recorded && s->deleted >= 0 && s->deleted != had)
                return 0;
            if (had) {
                lc_key_clear(k);
                wrote = 1;
            }
            break;
        }
        }
    }
    return lc_settle(p, st, wrote, R);
}

/* Applies op, at revision R (0 unknown), to state st in place; returns 1 if
 * the model allows it. */
static int lc_step(const struct lc_part *p, int64_t *st, const struct lc_op *op, int64_t R) {
    int64_t *alive = op->kind == LC_TXN ? NULL : &st[1 + p->lloc[op->lidx]];
    switch (op->kind) {
    case LC_TXN:
        return lc_step_txn(p, st, op, R);
    case LC_GRANT:
        if (*alive)
            return 0;
        *alive = 1;
        return 1;
    case LC_REVOKE:
    case LC_EXPIRE:
        if (!*alive)
            return 0;
        *alive = 0;
        /* The header revision of a revoke is not used: only the keys' fate is. */
        return lc_settle(p, st, lc_drop_lease(p, st, op->lease), 0);
    case LC_EXPIRED:
        return !*alive;
    case LC_ALIVE:
        return *alive != 0;
    default:
        assert(0 && "operation kind outside the search");
        return 0;
    }
}

/* --- union-find over keys and leases ------------------------------------ */

static int lc_find(int *parent, int x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

static void lc_union(int *parent, int a, int b) {
    a = lc_find(parent, a);
    b = lc_find(parent, b);
    if (a != b)
        parent[a < b ? b : a] = a < b ? a : b;
}

/* The unit (key or lease) an op is filed under; -1 for ops not searched. */
static int lc_op_unit(const struct lincheck_history *h, const struct lc_op *op) {
    if (op->kind == LC_TXN) {
        for (int b = 0; b < 2; b++)
            if (op->nsubs[b] > 0)
                return op->subs[b][0].key;
        return op->ncmps > 0 ? op->cmps[0].key : -1;
    }
    return (int)h->keys.n + op->lidx;
}

/* Whether op takes part in the search: failed ops had no effect, an
 * indeterminate op that cannot write has no effect anyone can see, and a
 * serializable read promises no recency. */
static int lc_op_searched(const struct lc_op *op) {
    if (op->status == LC_FAIL || op->serializable)
        return 0;
    switch (op->kind) {
    case LC_TXN:
        if (op->ncmps + op->nsubs[0] + op->nsubs[1] == 0)
            return 0;
        if (op->status == LC_OK)
            return 1;
        for (int b = 0; b < 2; b++)
            for (size_t i = 0; i < op->nsubs[b]; i++)
                if (op->subs[b][i].kind != LC_GET)
                    return 1;
        return 0;
    case LC_GRANT:
    case LC_REVOKE:
        return 1;
    case LC_EXPIRED:
    case LC_ALIVE:
        return op->status == LC_OK;
    default:
        return 0;
    }
}

/* --- reports -------------------------------------------------------------- */

int lc_report_op(struct util_buf *b, const struct lincheck_history *h, const struct lc_op *op) {
    if (op->kind == LC_EXPIRE)
        return util_buf_printf(b, "    (lease %lld expires, granted at line %d)\n",
                               (long long)h->leases[op->lidx], op->line);
    return util_buf_printf(b, "    line %d: %s\n", op->line, op->text);
}

int lc_report_anomaly(struct lincheck_result *res, unsigned kind, const char *fmt, ...) {
    static const char *const names[] = {"NONLINEARIZABLE",
                                        "CLIENT-REVISION-BACKWARDS",
                                        "REVISION-VS-REAL-TIME",
                                        "DUPLICATE-REVISION",
                                        "BAD-RESULT",
                                        "LOST-WRITE",
                                        "LEASE-KEY-SURVIVED",
                                        "WATCH-GAP",
                                        "WATCH-DUPLICATE",
                                        "WATCH-ORDER",
                                        "WATCH-PHANTOM",
                                        "PROGRESS-AHEAD",
                                        "REVISION-SKIPPED"};
    int bit = __builtin_ctz(kind);
    va_list ap;
    char line[1024];
    res->anomalies |= kind;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    return util_buf_printf(&res->report, "\n%s: %s\n", names[bit], line);
}

static int lc_report_key(struct util_buf *b, const struct lincheck_history *h, int k) {
    return util_buf_printf(b, "\"%.*s\"", (int)(h->keys.len[k] > 60 ? 60 : h->keys.len[k]),
                           h->keys.str[k]);
}

static int lc_report_state(struct util_buf *b, const struct lc_part *p, const int64_t *st) {
    int rc =
        util_buf_printf(b, "  model state there (global revision >= %lld):\n", (long long)st[0]);
    for (size_t i = 0; i < p->nk && rc == 0; i++) {
        const int64_t *k = st + 1 + p->nl + i * LC_KW;
        rc = util_buf_printf(b, "    ");
        if (rc == 0)
            rc = lc_report_key(b, p->h, p->keys[i]);
        if (rc != 0)
            break;
        if (k[LC_KV_VALUE] == LC_ABSENT)
            rc = util_buf_printf(b, " absent\n");
        else if (k[LC_KV_MOD] > 0)
            rc = util_buf_printf(b, " = \"%s\" (mod_rev %lld, version %lld)\n",
                                 p->h->values.str[k[LC_KV_VALUE]], (long long)k[LC_KV_MOD],
                                 (long long)k[LC_KV_VER]);
        else
            rc = util_buf_printf(b, " = \"%s\" (mod_rev unknown in [%lld, %lld], version %lld)\n",
                                 p->h->values.str[k[LC_KV_VALUE]], (long long)k[LC_KV_LO],
                                 (long long)k[LC_KV_HI], (long long)k[LC_KV_VER]);
    }
    for (size_t i = 0; i < p->nl && rc == 0; i++)
        rc = util_buf_printf(b, "    lease %lld %s\n", (long long)p->h->leases[p->leases[i]],
                             st[1 + i] ? "alive" : "gone");
    return rc;
}

/* --- the search ------------------------------------------------------------ */

struct lc_ent {
    int op;     /* index into the partition's ops */
    int is_ret; /* 0 = invocation, 1 = completion */
    uint64_t t;
};

static int lc_ent_cmp(const void *a, const void *b) {
    const struct lc_ent *x = a, *y = b;
    if (x->t != y->t)
        return x->t < y->t ? -1 : 1;
    /* At equal times invocations first: touching intervals count as concurrent. */
    if (x->is_ret != y->is_ret)
        return x->is_ret - y->is_ret;
    return x->op - y->op;
}

/* The memo: the (set of linearized ops, model state) pairs already explored,
 * kept as 128-bit fingerprints rather than whole bitsets, so a record costs 16
 * bytes whatever the partition size. The set's part is a Zobrist hash kept up
 * to date move by move. A false match needs a 128-bit collision. */
struct lc_memo {
    uint64_t *fp; /* 2 words per slot, {0, 0} = free */
    size_t nslots, count;
};

static uint64_t lc_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void lc_memo_put(uint64_t *fp, size_t nslots, uint64_t a, uint64_t b) {
    size_t j = a & (nslots - 1);
    while (fp[2 * j] != 0)
        j = (j + 1) & (nslots - 1);
    fp[2 * j] = a;
    fp[2 * j + 1] = b;
}

/* Adds fingerprint (a, b); returns 1 if new, 0 if seen, -ENOMEM. */
static int lc_memo_add(struct lc_memo *m, uint64_t a, uint64_t b) {
    a |= 1; /* never the free marker */
    if ((m->count + 1) * 2 > m->nslots) {
        size_t nslots = m->nslots ? m->nslots * 2 : 4096;
        uint64_t *fp = calloc(nslots * 2, sizeof(*fp));
        if (fp == NULL)
            return -ENOMEM;
        for (size_t j = 0; j < m->nslots; j++)
            if (m->fp[2 * j] != 0)
                lc_memo_put(fp, nslots, m->fp[2 * j], m->fp[2 * j + 1]);
        free(m->fp);
        m->fp = fp;
        m->nslots = nslots;
    }
    for (size_t j = a & (m->nslots - 1); m->fp[2 * j] != 0; j = (j + 1) & (m->nslots - 1))
        if (m->fp[2 * j] == a && m->fp[2 * j + 1] == b)
            return 0;
    lc_memo_put(m->fp, m->nslots, a, b);
    m->count++;
    return 1;
}

/* Everything one search needs; freed by lc_search_free. */
struct lc_search {
    struct lc_ent *ent; /* 1..2n, [0] = list head */
    int *next, *prev, *match;
    uint64_t *zob; /* two Zobrist words per op */
    int64_t *st, *cand, *stack_st, *best_st;
    int *stack, *best_seq, *best_open;
    /* Ops with a known revision, by the highest floor under which each can
     * still be linearized (a write at R: R - 1; a read at R: R), to refuse
     * early any move that raises the floor past one of them still to come. */
    int64_t *wlim; /* per op */
    int *wop, *wpos;
    size_t nw, wptr;      /* wop[0..wptr) are all linearized */
    unsigned char *lin;   /* per op */
    unsigned char *never; /* per stack entry: a "never happened" move */
    int *blocked;         /* per depth: the op whose completion its node could not pass */
    size_t best_len, best_nseq, best_nopen;
    int best_block;
    struct lc_memo memo;
};

static void lc_search_free(struct lc_search *s) {
    free(s->ent);
    free(s->next);
    free(s->prev);
    free(s->match);
    free(s->zob);
    free(s->st);
    free(s->cand);
    free(s->stack_st);
    free(s->best_st);
    free(s->stack);
    free(s->never);
    free(s->blocked);
    free(s->wop);
    free(s->wlim);
    free(s->wpos);
    free(s->lin);
    free(s->best_seq);
    free(s->best_open);
    free(s->memo.fp);
}

static void lc_lift(struct lc_search *s, int e) {
    int m = s->match[e];
    s->next[s->prev[e]] = s->next[e];
    s->prev[s->next[e]] = s->prev[e];
    s->next[s->prev[m]] = s->next[m];
    if (s->next[m] >= 0)
        s->prev[s->next[m]] = s->prev[m];
}

static void lc_unlift(struct lc_search *s, int e) {
    int m = s->match[e];
    if (s->next[m] >= 0)
        s->prev[s->next[m]] = m;
    s->next[s->prev[m]] = m;
    s->prev[s->next[e]] = e;
    s->next[s->prev[e]] = e;
}

static int lc_wop_cmp(const void *a, const void *b, void *arg) {
    const int64_t *lim = arg;
    int64_t x = lim[*(const int *)a], y = lim[*(const int *)b];
    return (x > y) - (x < y);
}

/* The highest floor every op with a known revision still to be linearized
 * allows, op o aside. */
static int64_t lc_floor_limit(const struct lc_search *s, int o) {
    for (size_t i = s->wptr; i < s->nw; i++)
        if (!s->lin[s->wop[i]] && s->wop[i] != o)
            return s->wlim[s->wop[i]];
    return INT64_MAX;
}

static uint64_t lc_state_hash(const int64_t *st, size_t S, uint64_t seed) {
    uint64_t x = seed;
    for (size_t i = 0; i < S; i++)
        x = lc_mix(x ^ (uint64_t)st[i]);
    return x;
}

/* Remembers the deepest point the search reached: the ops linearized, the
 * state, the op whose completion could not be passed, and the open ops. */
static void lc_note_best(struct lc_search *s, const struct lc_part *p, size_t depth, int e) {
    s->best_len = depth;
    s->best_nseq = 0;
    for (size_t i = 0; i < depth; i++)
        if (!s->never[i])
            s->best_seq[s->best_nseq++] = s->ent[s->stack[i]].op;
    memcpy(s->best_st, s->st, p->S * sizeof(int64_t));
    s->best_block = s->ent[e].op;
    s->best_nopen = 0;
    for (int x = s->next[0]; x != e && x >= 0; x = s->next[x])
        if (!s->ent[x].is_ret && s->ent[x].op != s->best_block)
            s->best_open[s->best_nopen++] = s->ent[x].op;
}

static int lc_search_init(struct lc_search *s, const struct lc_part *p) {
    size_t n = p->n;
    memset(s, 0, sizeof(*s));
    s->best_block = -1; /* no dead end met yet */
    s->ent = calloc(2 * n + 1, sizeof(*s->ent));
    s->next = calloc(2 * n + 1, sizeof(int));
    s->prev = calloc(2 * n + 1, sizeof(int));
    s->match = calloc(2 * n + 1, sizeof(int));
    s->zob = calloc(2 * n + 1, sizeof(uint64_t));
    s->st = calloc(p->S, sizeof(int64_t));
    s->cand = calloc(p->S, sizeof(int64_t));
    s->stack_st = calloc(n * p->S, sizeof(int64_t));
    s->best_st = calloc(p->S, sizeof(int64_t));
    s->stack = calloc(n, sizeof(int));
    s->never = calloc(n + 1, 1);
    s->blocked = calloc(n + 1, sizeof(int));
    s->wop = calloc(n + 1, sizeof(int));
    s->wlim = calloc(n + 1, sizeof(int64_t));
    s->wpos = calloc(n + 1, sizeof(int));
    s->lin = calloc(n + 1, 1);
    s->best_seq = calloc(n, sizeof(int));
    s->best_open = calloc(n, sizeof(int));
    if (!s->ent || !s->next || !s->prev || !s->match || !s->zob || !s->st || !s->cand ||
        !s->stack_st || !s->best_st || !s->stack || !s->never || !s->blocked || !s->wop ||
        !s->wlim || !s->wpos || !s->lin || !s->best_seq || !s->best_open)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        s->ent[2 * i + 1] = (struct lc_ent){(int)i, 0, p->ops[i]->call};
        s->ent[2 * i + 2] = (struct lc_ent){(int)i, 1, p->ret[i]};
        s->zob[2 * i] = lc_mix(2 * i + 17);
        s->zob[2 * i + 1] = lc_mix(lc_mix(2 * i + 1));
    }
    qsort(s->ent + 1, 2 * n, sizeof(*s->ent), lc_ent_cmp);
    for (size_t i = 0; i < n; i++) {
        const struct lc_op *op = p->ops[i];
        if (p->rev[i] <= 0 || op->kind != LC_TXN)
            continue;
        /* A timed-out op has a revision only when seen written. */
        s->wlim[i] = p->rev[i] - (op->status != LC_OK || lc_txn_wrote(op) == 1);
        s->wop[s->nw++] = (int)i;
    }
    qsort_r(s->wop, s->nw, sizeof(int), lc_wop_cmp, s->wlim);
    for (size_t i = 0; i < n; i++)
        s->wpos[i] = -1;
    for (size_t i = 0; i < s->nw; i++)
        s->wpos[s->wop[i]] = (int)i;
    int *call_at = s->best_seq; /* scratch: op -> its invocation entry */
    for (size_t e = 1; e <= 2 * n; e++)
        if (!s->ent[e].is_ret)
            call_at[s->ent[e].op] = (int)e;
    for (size_t e = 1; e <= 2 * n; e++) {
        if (s->ent[e].is_ret) {
            s->match[call_at[s->ent[e].op]] = (int)e;
            s->match[e] = call_at[s->ent[e].op];
        }
        s->prev[e] = (int)e - 1;
        s->next[e] = e == 2 * n ? -1 : (int)e + 1;
    }
    s->next[0] = n > 0 ? 1 : -1;
    /* Initial state: no key, revision floor 0, leases never granted count as alive. */
    for (size_t i = 0; i < p->nl; i++) {
        s->st[1 + i] = 1;
        for (size_t j = 0; j < n; j++)
            if (p->ops[j]->kind == LC_GRANT && p->ops[j]->lidx == p->leases[i])
                s->st[1 + i] = 0;
    }
    for (size_t i = 0; i < p->nk; i++)
        lc_key_clear(s->st + 1 + p->nl + i * LC_KW);
    return 0;
}

/* Whether a lease's expiry can help at the current node. Only a completion
 * that cannot be passed sends the search to optional moves; a lease expiry
 * that deletes no key is only ever needed by an observation of that lease
 * gone (nothing else can tell a lease gone from one that expires later: no
 * put on it, "alive" or revoke of it may follow the expiry), so it is tried
 * only when that observation is what blocks. Trying it anywhere else would
 * make each of hundreds of idle leases alive or gone in turn. */
static int lc_expiry_helps(const struct lc_search *s, const struct lc_part *p,
                           const struct lc_op *op, size_t depth) {
    const struct lc_op *b = p->ops[s->blocked[depth]];
    if (b->kind == LC_EXPIRED && b->lidx == op->lidx)
        return 1;
    for (size_t i = 0; i < p->nk; i++) {
        const int64_t *k = s->st + 1 + p->nl + i * LC_KW;
        if (k[LC_KV_VALUE] != LC_ABSENT && k[LC_KV_LEASE] == op->lease)
            return 1;
    }
    return 0;
}

/* Tries move o (a step, or "never" for an optional op) from the current
 * node; on success pushes it (c = its invocation entry) and returns 1. */
static int lc_try(struct lc_search *s, const struct lc_part *p, int o, int c, int never,
                  size_t *depth, uint64_t *za, uint64_t *zb) {
    size_t S = p->S;
    if (!never && p->ops[o]->kind == LC_EXPIRE && !lc_expiry_helps(s, p, p->ops[o], *depth))
        return 0;
    memcpy(s->cand, s->st, S * sizeof(int64_t));
    if (!never &&
        !(lc_step(p, s->cand, p->ops[o], p->rev[o]) && s->cand[0] <= lc_floor_limit(s, o)))
        return 0;
    /* An optional op without effect here is the same as one that never
     * happens, which stays possible: taking it would only multiply the
     * linearized sets the memo tells apart. */
    if (!never && p->opt[o] && memcmp(s->cand, s->st, S * sizeof(int64_t)) == 0)
        return 0;
    uint64_t a = *za ^ s->zob[2 * o], b = *zb ^ s->zob[2 * o + 1];
    int fresh = lc_memo_add(&s->memo, a ^ lc_state_hash(s->cand, S, 0x51ed27f1u),
                            b ^ lc_state_hash(s->cand, S, 0x2545f4914f6cdd1dull));
    if (fresh <= 0)
        return fresh;
    memcpy(s->stack_st + *depth * S, s->st, S * sizeof(int64_t));
    s->never[*depth] = (unsigned char)never;
    s->stack[(*depth)++] = c;
    memcpy(s->st, s->cand, S * sizeof(int64_t));
    *za = a;
    *zb = b;
    lc_lift(s, c);
    s->lin[o] = 1;
    while (s->wptr < s->nw && s->lin[s->wop[s->wptr]])
        s->wptr++;
    return 1;
}

/* Searches one partition. Returns 1 linearizable, 0 not (best_* filled), 2
 * out of budget, -ENOMEM.
 *
 * Each node first tries the operations that must take effect, walking
 * invocations forward as Lowe's algorithm does, up to the first completion.
 * If that completion is an optional (timed-out) operation's deadline, the
 * next move is "it never happened". Only then are optional operations tried,
 * walking backward from that point: the most recent first, since one that is
 * needed now most likely happened lately, while old ones mostly never did.
 * So an optional operation is placed by backtracking from the first result
 * that needs it instead of being carried along the whole history. */
static int lc_search(struct lc_search *s, const struct lc_part *p, uint64_t max_steps,
                     uint64_t deadline, uint64_t *steps) {
    size_t depth = 0;
    uint64_t za = 0, zb = 0, used = 0; /* Zobrist hash of the linearized set */
    int e = s->next[0], phase = 0, noted = 0, r;
    while (s->next[0] >= 0) {
        ++*steps;
        if (++used > max_steps || ((used & 4095) == 0 && util_now_mono_ns() > deadline))
            return 2;
        if (phase == 0) {
            assert(e > 0); /* a completion always ends the list */
            int o = s->ent[e].op;
            if (!s->ent[e].is_ret) {
                if (!p->opt[o] && (r = lc_try(s, p, o, e, 0, &depth, &za, &zb)) != 0) {
                    if (r < 0)
                        return r;
                    e = s->next[0];
                    continue;
                }
                e = s->next[e];
                continue;
            }
            if (p->ret[o] == LC_NEVER)
                return 1; /* only optional ops are left: they may never happen */
            if (p->opt[o] && (r = lc_try(s, p, o, s->match[e], 1, &depth, &za, &zb)) != 0) {
                if (r < 0)
                    return r;
                e = s->next[0];
                continue;
            }
            phase = 1;
            s->blocked[depth] = o;
            e = s->prev[e];
            continue;
        }
        if (e > 0) {
            int o = s->ent[e].op;
            if (p->opt[o] && (r = lc_try(s, p, o, e, 0, &depth, &za, &zb)) != 0) {
                if (r < 0)
                    return r;
                phase = 0;
                e = s->next[0];
                continue;
            }
            e = s->prev[e];
            continue;
        }
        /* Every move from this node failed: back up one. */
        if (!noted || depth > s->best_len) {
            int blk = s->next[0];
            while (!s->ent[blk].is_ret)
                blk = s->next[blk];
            lc_note_best(s, p, depth, blk);
            noted = 1;
        }
        if (depth == 0)
            return 0;
        int top = s->stack[--depth], o = s->ent[top].op;
        memcpy(s->st, s->stack_st + depth * p->S, p->S * sizeof(int64_t));
        za ^= s->zob[2 * o];
        zb ^= s->zob[2 * o + 1];
        lc_unlift(s, top);
        s->lin[o] = 0;
        if (s->wpos[o] >= 0 && (size_t)s->wpos[o] < s->wptr)
            s->wptr = (size_t)s->wpos[o];
        if (s->never[depth]) {
            phase = 1;
            s->blocked[depth] = o;
            e = s->prev[s->match[top]];
        } else if (p->opt[o]) {
            phase = 1;
            e = s->prev[top];
        } else {
            phase = 0;
            e = s->next[top];
        }
    }
    return 1;
}

/* Reports a partition without linearization, or (unknown) one whose search
 * ran out of budget, from the deepest point the search reached. */
static int lc_report_nonlin(struct lincheck_result *res, const struct lc_part *p,
                            const struct lc_search *s, int unknown) {
    struct util_buf *b = &res->report, keys = {0};
    int rc = 0;
    for (size_t i = 0; i < p->nk && rc == 0; i++) {
        rc = util_buf_printf(&keys, i == 0 ? "keys " : ", ");
        if (rc == 0)
            rc = lc_report_key(&keys, p->h, p->keys[i]);
    }
    for (size_t i = 0; i < p->nl && rc == 0; i++)
        rc = util_buf_printf(&keys, "%slease %lld", i == 0 && p->nk == 0 ? "" : ", ",
                             (long long)p->h->leases[p->leases[i]]);
    if (rc == 0 && unknown)
        rc = util_buf_printf(b,
                             "\nUNKNOWN: the search over the %zu operations on %s ran out of "
                             "budget (raise --max-steps/--max-ms; a watcher of every key lets "
                             "the checker place timed-out writes)\n",
                             p->n, keys.data);
    else if (rc == 0)
        rc = lc_report_anomaly(res, LINCHECK_A_NONLINEARIZABLE,
                               "no linearization of the %zu operations on %s", p->n, keys.data);
    util_buf_free(&keys);
    if (s->best_block < 0)
        return rc;
    if (rc == 0)
        rc = util_buf_printf(b,
                             "  the longest valid order found holds %zu operations; this "
                             "one then completed without any way to place it:\n",
                             s->best_nseq);
    if (rc == 0)
        rc = lc_report_op(b, p->h, p->ops[s->best_block]);
    if (rc == 0 && s->best_nopen > 0)
        rc = util_buf_printf(b, "  operations still open at that point (none fits either):\n");
    for (size_t i = 0; i < s->best_nopen && i < LC_SHOW_OPEN && rc == 0; i++)
        if (s->best_open[i] != s->best_block)
            rc = lc_report_op(b, p->h, p->ops[s->best_open[i]]);
    if (rc == 0)
        rc = lc_report_state(b, p, s->best_st);
    if (rc == 0 && s->best_nseq > 0)
        rc = util_buf_printf(b, "  last operations of that order:\n");
    size_t from = s->best_nseq > LC_SHOW_TAIL ? s->best_nseq - LC_SHOW_TAIL : 0;
    for (size_t i = from; i < s->best_nseq && rc == 0; i++)
        rc = lc_report_op(b, p->h, p->ops[s->best_seq[i]]);
    return rc;
}

/* Operations made up for the search: per-key reads split from range reads,
 * and one possible expiry per granted lease. */
struct lc_synth {
    struct lc_op *ops;
    struct lc_sub *subs;
    size_t n;
};

static int lc_synth_build(const struct lincheck_history *h, struct lc_synth *sy) {
    size_t nsplit = 0, nsub = 0;
    for (size_t i = 0; i < h->nops; i++)
        if (h->ops[i].kind == LC_RANGE && h->ops[i].status == LC_OK && !h->ops[i].serializable)
            for (size_t k = 0; k < h->keys.n; k++)
                nsplit += (size_t)lc_in_range(h, &h->ops[i], (int)k);
    sy->ops = calloc(nsplit + h->nleases + 1, sizeof(*sy->ops));
    sy->subs = calloc(nsplit + 1, sizeof(*sy->subs));
    if (sy->ops == NULL || sy->subs == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < h->nops; i++) {
        const struct lc_op *r = &h->ops[i];
        if (r->kind != LC_RANGE || r->status != LC_OK || r->serializable)
            continue;
        /* A range read is checked as one read per key it covers: per-key
         * linearizability, not the atomicity of the whole range. */
        for (size_t k = 0; k < h->keys.n; k++) {
            if (!lc_in_range(h, r, (int)k))
                continue;
            struct lc_op *o = &sy->ops[sy->n++];
            struct lc_sub *s = &sy->subs[nsub++];
            *o = *r;
            o->kind = LC_TXN;
            o->succeeded = 1;
            o->ncmps = 0;
            o->subs[0] = NULL;
            o->nsubs[0] = 0;
            o->subs[1] = s;
            o->nsubs[1] = 1;
            s->kind = LC_GET;
            s->key = (int)k;
            s->deleted = -1;
            s->res = (struct lc_kv){(int)k, LC_ABSENT, 0, 0, 0, -1};
            for (size_t j = 0; j < r->nkvs; j++)
                if (r->kvs[j].key == (int)k)
                    s->res = r->kvs[j];
        }
    }
    for (size_t l = 0; l < h->nleases; l++) {
        const struct lc_op *grant = NULL;
        for (size_t i = 0; i < h->nops && grant == NULL; i++)
            if (h->ops[i].kind == LC_GRANT && h->ops[i].lidx == (int)l &&
                h->ops[i].status != LC_FAIL)
                grant = &h->ops[i];
        if (grant == NULL)
            continue;
        struct lc_op *o = &sy->ops[sy->n++];
        *o = *grant;
        o->kind = LC_EXPIRE;
        o->status = LC_INDET;
        o->ret = LC_NEVER;
        o->rev = 0;
    }
    return 0;
}

/* The keys and leases an op touches, as units for union-find. */
static void lc_union_op(const struct lincheck_history *h, int *parent, const struct lc_op *op) {
    int u = lc_op_unit(h, op);
    if (u < 0 || op->kind != LC_TXN)
        return;
    for (size_t i = 0; i < op->ncmps; i++)
        lc_union(parent, u, op->cmps[i].key);
    for (int b = 0; b < 2; b++)
        for (size_t i = 0; i < op->nsubs[b]; i++) {
            lc_union(parent, u, op->subs[b][i].key);
            if (op->subs[b][i].kind == LC_PUT && op->subs[b][i].lease != 0)
                lc_union(parent, u, (int)h->keys.n + op->subs[b][i].lidx);
        }
}

/* What the search uses of op: its revision, the latest time it takes
 * effect, and whether it may never. Synthetic ops are not in the history. */
static void lc_op_facts(const struct lincheck_history *h, const struct lc_learned *l,
                        const struct lc_op *op, int64_t *rev, uint64_t *ret, unsigned char *opt) {
    if (op >= h->ops && op < h->ops + h->nops) {
        size_t i = (size_t)(op - h->ops);
        *rev = l->rev[i];
        *ret = l->by[i];
        *opt = !l->must[i];
    } else {
        *rev = op->status == LC_OK ? op->rev : 0;
        *ret = op->ret;
        *opt = op->status != LC_OK;
    }
}

/* Searches every partition and reports the failing ones. */
static int lc_check_lin(const struct lincheck_history *h, const struct lc_learned *learned,
                        const struct lincheck_options *opt, struct lincheck_result *res) {
    size_t nk = h->keys.n, U = nk + h->nleases, nall = 0;
    struct lc_synth sy = {0};
    const struct lc_op **all = NULL;
    int *parent = NULL, *order = NULL, *start = NULL, *units = NULL, *ustart = NULL, *loc = NULL;
    uint64_t max_steps = opt && opt->max_steps ? opt->max_steps : LC_DEFAULT_STEPS;
    uint64_t max_ms = opt && opt->max_ms ? opt->max_ms : LC_DEFAULT_MS;
    int rc = lc_synth_build(h, &sy);
    if (rc != 0)
        goto err;
    rc = -ENOMEM;
    all = calloc(h->nops + sy.n + 1, sizeof(*all));
    parent = calloc(U + 1, sizeof(int));
    start = calloc(U + 2, sizeof(int));
    ustart = calloc(U + 2, sizeof(int));
    units = calloc(U + 1, sizeof(int));
    loc = calloc(U + 1, sizeof(int));
    order = calloc(h->nops + sy.n + 1, sizeof(int));
    if (!all || !parent || !start || !ustart || !units || !loc || !order)
        goto err;
    for (size_t i = 0; i < h->nops; i++)
        if (lc_op_searched(&h->ops[i]))
            all[nall++] = &h->ops[i];
    for (size_t i = 0; i < sy.n; i++)
        all[nall++] = &sy.ops[i];
    for (size_t u = 0; u < U; u++)
        parent[u] = (int)u;
    for (size_t i = 0; i < nall; i++)
        lc_union_op(h, parent, all[i]);
    /* Bucket ops and units by their root (counting sort keeps history order). */
    for (size_t i = 0; i < nall; i++)
        start[lc_find(parent, lc_op_unit(h, all[i])) + 1]++;
    for (size_t u = 0; u < U; u++) {
        start[u + 1] += start[u];
        ustart[lc_find(parent, (int)u) + 1]++;
    }
    for (size_t u = 0; u < U; u++)
        ustart[u + 1] += ustart[u];
    {
        int *fill = loc; /* scratch for the fill pointers, rebuilt below */
        for (size_t u = 0; u < U; u++)
            fill[u] = start[u];
        for (size_t i = 0; i < nall; i++)
            order[fill[lc_find(parent, lc_op_unit(h, all[i]))]++] = (int)i;
        for (size_t u = 0; u < U; u++)
            fill[u] = ustart[u];
        for (size_t u = 0; u < U; u++)
            units[fill[lc_find(parent, (int)u)]++] = (int)u;
    }
    for (size_t root = 0; root < U; root++) {
        size_t n = (size_t)(start[root + 1] - start[root]);
        if (n == 0)
            continue;
        size_t nu = (size_t)(ustart[root + 1] - ustart[root]);
        struct lc_part p = {.h = h, .n = n};
        struct lc_search s;
        p.ops = calloc(n, sizeof(*p.ops));
        p.ret = calloc(n, sizeof(*p.ret));
        p.opt = calloc(n, 1);
        p.rev = calloc(n, sizeof(*p.rev));
        p.keys = calloc(nu + 1, sizeof(int));
        p.leases = calloc(nu + 1, sizeof(int));
        if (!p.ops || !p.ret || !p.opt || !p.rev || !p.keys || !p.leases) {
            lc_part_free(&p);
            goto err;
        }
        for (size_t i = 0; i < n; i++) {
            p.ops[i] = all[order[start[root] + (int)i]];
            lc_op_facts(h, learned, p.ops[i], &p.rev[i], &p.ret[i], &p.opt[i]);
        }
        for (int i = ustart[root]; i < ustart[root + 1]; i++) {
            int u = units[i];
            if ((size_t)u < nk) {
                loc[u] = (int)p.nk;
                p.keys[p.nk++] = u;
            } else {
                loc[u] = (int)p.nl;
                p.leases[p.nl++] = u - (int)nk;
            }
        }
        p.gaps = opt != NULL && opt->open_world ? NULL : learned;
        p.vver = learned->vver;
        p.kloc = loc;
        p.lloc = loc + nk;
        p.S = 1 + p.nl + p.nk * LC_KW;
        int r = lc_search_init(&s, &p);
        if (r == 0)
            r = lc_search(&s, &p, max_steps, util_now_mono_ns() + max_ms * 1000000ull, &res->steps);
        res->partitions++;
        if (r == 0)
            r = lc_report_nonlin(res, &p, &s, 0);
        else if (r == 2) {
            res->unknown_parts++;
            r = lc_report_nonlin(res, &p, &s, 1);
        } else if (r == 1) {
            r = 0;
        }
        lc_search_free(&s);
        lc_part_free(&p);
        if (r != 0) {
            rc = r;
            goto err;
        }
    }
    rc = 0;
err:
    free(all);
    free(parent);
    free(start);
    free(ustart);
    free(units);
    free(loc);
    free(order);
    free(sy.ops);
    free(sy.subs);
    return rc;
}

int lincheck_check(struct lincheck_history *h, const struct lincheck_options *opt,
                   struct lincheck_result *res) {
    memset(res, 0, sizeof(*res));
    res->ops = h->nops;
    struct lc_learned learned;
    int rc = lc_learn(h, &learned);
    if (rc == 0)
        rc = lc_check_lin(h, &learned, opt, res);
    if (rc == 0)
        rc = lc_check_global(h, &learned, opt != NULL && opt->open_world, res);
    lc_learned_free(&learned);
    if (rc != 0)
        return rc;
    if (res->anomalies != 0)
        res->verdict = LINCHECK_VIOLATION;
    else if (res->unknown_parts != 0)
        res->verdict = LINCHECK_UNKNOWN;
    else
        res->verdict = LINCHECK_OK;
    return 0;
}

void lincheck_result_free(struct lincheck_result *res) {
    util_buf_free(&res->report);
}
