/* Reading the history format (docs/testing.md) into lincheck's operations:
 * every line is one JSON object; single-key operations become txns. */
#include "lincheck_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lincheck_json.h"

/* Longest excerpt of a line kept for reports. */
#define LC_TEXT_MAX 400

static uint64_t lc_hash_bytes(const char *s, size_t n) {
    uint64_t x = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        x = (x ^ (unsigned char)s[i]) * 1099511628211ull;
    return x;
}

static int lc_strtab_grow(struct lc_strtab *t) {
    size_t nslots = t->nslots ? t->nslots * 2 : 64;
    int *slots = calloc(nslots, sizeof(*slots));
    if (slots == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < t->n; i++) {
        size_t j = lc_hash_bytes(t->str[i], t->len[i]) & (nslots - 1);
        while (slots[j] != 0)
            j = (j + 1) & (nslots - 1);
        slots[j] = (int)i + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

int lc_strtab_intern(struct lc_strtab *t, const char *s, size_t n) {
    if ((t->n + 1) * 2 > t->nslots && lc_strtab_grow(t) != 0)
        return -ENOMEM;
    size_t j = lc_hash_bytes(s, n) & (t->nslots - 1);
    while (t->slots[j] != 0) {
        int id = t->slots[j] - 1;
        if (t->len[id] == n && memcmp(t->str[id], s, n) == 0)
            return id;
        j = (j + 1) & (t->nslots - 1);
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 32;
        char **str = realloc(t->str, cap * sizeof(*str));
        if (str == NULL)
            return -ENOMEM;
        t->str = str;
        size_t *len = realloc(t->len, cap * sizeof(*len));
        if (len == NULL)
            return -ENOMEM;
        t->len = len;
        t->cap = cap;
    }
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, s, n);
    copy[n] = '\0';
    t->str[t->n] = copy;
    t->len[t->n] = n;
    t->slots[j] = (int)t->n + 1;
    return (int)t->n++;
}

static void lc_strtab_free(struct lc_strtab *t) {
    for (size_t i = 0; i < t->n; i++)
        free(t->str[i]);
    free(t->str);
    free(t->len);
    free(t->slots);
}

int lc_lease_index(struct lincheck_history *h, int64_t id) {
    for (size_t i = 0; i < h->nleases; i++)
        if (h->leases[i] == id)
            return (int)i;
    if (h->nleases == h->capleases) {
        size_t cap = h->capleases ? h->capleases * 2 : 16;
        int64_t *l = realloc(h->leases, cap * sizeof(*l));
        if (l == NULL)
            return -ENOMEM;
        h->leases = l;
        h->capleases = cap;
    }
    h->leases[h->nleases] = id;
    return (int)h->nleases++;
}

/* Byte-wise order of keys, shorter first on a common prefix (etcd's order). */
static int lc_bytes_cmp(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0)
        return c;
    return an < bn ? -1 : an > bn;
}

int lc_in_range(const struct lincheck_history *h, const struct lc_op *op, int k) {
    const char *s = h->keys.str[k];
    size_t n = h->keys.len[k];
    if (op->single)
        return n == op->fromlen && memcmp(s, op->from, n) == 0;
    if (lc_bytes_cmp(s, n, op->from, op->fromlen) < 0)
        return 0;
    return op->to_all || lc_bytes_cmp(s, n, op->to, op->tolen) < 0;
}

int lc_txn_wrote(const struct lc_op *op) {
    int r = 0;
    if (op->kind != LC_TXN || op->status != LC_OK || op->succeeded < 0)
        return 0;
    for (size_t i = 0; i < op->nsubs[op->succeeded]; i++) {
        const struct lc_sub *s = &op->subs[op->succeeded][i];
        if (s->kind == LC_PUT || (s->kind == LC_DEL && s->deleted > 0))
            return 1;
        if (s->kind == LC_DEL && s->deleted < 0)
            r = -1;
    }
    return r;
}

int lincheck_history_new(struct lincheck_history **out) {
    *out = calloc(1, sizeof(**out));
    return *out == NULL ? -ENOMEM : 0;
}

static void lc_op_free(struct lc_op *op) {
    free(op->cmps);
    free(op->subs[0]);
    free(op->subs[1]);
    free(op->from);
    free(op->to);
    free(op->kvs);
    free(op->evs);
    free(op->text);
}

void lincheck_history_free(struct lincheck_history *h) {
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->nops; i++)
        lc_op_free(&h->ops[i]);
    free(h->ops);
    lc_strtab_free(&h->keys);
    lc_strtab_free(&h->values);
    lc_strtab_free(&h->clients);
    free(h->leases);
    free(h);
}

/* Parsing context for one line: the history, the error sink and the line. */
struct lc_parse {
    struct lincheck_history *h;
    struct util_err *err;
};

static int lc_bad(struct lc_parse *p, const char *what, const char *field) {
    return util_errorf(p->err, -EINVAL, "history line %d: %s \"%s\"", p->h->line, what, field);
}

/* An integer (or, with type LCJ_BOOL, a boolean as 0/1) member; absent or
 * null leaves *out at dflt. */
static int lc_scalar(struct lc_parse *p, const struct lcj *o, const char *name, enum lcj_type type,
                     int64_t dflt, int64_t *out) {
    const struct lcj *v = lcj_get(o, name);
    *out = dflt;
    if (v == NULL || v->type == LCJ_NULL)
        return 0;
    if (v->type != type)
        return lc_bad(p, type == LCJ_INT ? "expected an integer in" : "expected true or false in",
                      name);
    *out = v->num;
    return 0;
}

/* Revisions, versions and times: bounded so that the checker's arithmetic on
 * them (a revision + 1, a bound - 1) can never overflow. */
#define LC_INT_LIMIT ((int64_t)1 << 62)

static int lc_int(struct lc_parse *p, const struct lcj *o, const char *name, int64_t dflt,
                  int64_t *out) {
    int rc = lc_scalar(p, o, name, LCJ_INT, dflt, out);
    if (rc == 0 && (*out >= LC_INT_LIMIT || *out <= -LC_INT_LIMIT))
        return lc_bad(p, "number out of range in", name);
    return rc;
}

/* A lease id: any int64 (etcd makes them from member ids and time). */
static int lc_lease_id(struct lc_parse *p, const struct lcj *o, int64_t dflt, int64_t *out) {
    return lc_scalar(p, o, "lease", LCJ_INT, dflt, out);
}

static int lc_bool(struct lc_parse *p, const struct lcj *o, const char *name, int dflt, int *out) {
    int64_t v;
    int rc = lc_scalar(p, o, name, LCJ_BOOL, dflt, &v);
    *out = (int)v;
    return rc;
}

/* Interns string member name into t; absent is -EINVAL when required, else
 * *out = LC_ABSENT. */
static int lc_str(struct lc_parse *p, const struct lcj *o, const char *name, int required,
                  struct lc_strtab *t, int *out) {
    const struct lcj *v = lcj_get(o, name);
    *out = LC_ABSENT;
    if (v == NULL || v->type == LCJ_NULL)
        return required ? lc_bad(p, "missing string", name) : 0;
    if (v->type != LCJ_STR)
        return lc_bad(p, "expected a string in", name);
    int id = lc_strtab_intern(t, v->str, v->len);
    if (id < 0)
        return id;
    *out = id;
    return 0;
}

/* A key-value as a read returned it: "found" (default: whether "value" is
 * present), "value", "mod_rev", "create_rev", "version", "lease". */
static int lc_kv_parse(struct lc_parse *p, const struct lcj *o, int key, struct lc_kv *kv) {
    int found, rc;
    kv->key = key;
    if ((rc = lc_str(p, o, "value", 0, &p->h->values, &kv->value)) != 0 ||
        (rc = lc_bool(p, o, "found", kv->value != LC_ABSENT, &found)) != 0 ||
        (rc = lc_int(p, o, "mod_rev", 0, &kv->mod)) != 0 ||
        (rc = lc_int(p, o, "create_rev", 0, &kv->create)) != 0 ||
        (rc = lc_int(p, o, "version", 0, &kv->version)) != 0 ||
        (rc = lc_lease_id(p, o, -1, &kv->lease)) != 0)
        return rc;
    if (found && kv->value == LC_ABSENT)
        return lc_bad(p, "a found key needs", "value");
    if (!found)
        kv->value = LC_ABSENT;
    return 0;
}

/* A sub-operation ("get", "put" or "delete" as kind says) from object o. */
static int lc_sub_parse(struct lc_parse *p, const struct lcj *o, const char *kind,
                        struct lc_sub *s) {
    int rc;
    memset(s, 0, sizeof(*s));
    s->deleted = -1;
    s->res.value = LC_ABSENT;
    s->res.lease = -1;
    if ((rc = lc_str(p, o, "key", 1, &p->h->keys, &s->key)) != 0)
        return rc;
    s->res.key = s->key;
    if (strcmp(kind, "get") == 0) {
        s->kind = LC_GET;
    } else if (strcmp(kind, "put") == 0) {
        s->kind = LC_PUT;
        if ((rc = lc_str(p, o, "value", 1, &p->h->values, &s->value)) != 0 ||
            (rc = lc_lease_id(p, o, 0, &s->lease)) != 0)
            return rc;
        if (s->lease != 0 && (s->lidx = lc_lease_index(p->h, s->lease)) < 0)
            return -ENOMEM;
    } else if (strcmp(kind, "delete") == 0) {
        s->kind = LC_DEL;
    } else {
        return lc_bad(p, "unknown txn operation", kind);
    }
    return 0;
}

/* Reads a sub-operation's result ("results" of a txn, or the line itself for
 * put/get/delete). */
static int lc_sub_result(struct lc_parse *p, const struct lcj *o, struct lc_sub *s) {
    if (s->kind == LC_GET)
        return lc_kv_parse(p, o, s->key, &s->res);
    if (s->kind == LC_DEL)
        return lc_int(p, o, "deleted", -1, &s->deleted);
    return 0;
}

/* Checks that arr is a list (what says whose, field which) and returns one
 * zeroed element of size bytes per member (NULL for an empty list), their
 * number in *n; *rc is 0, -EINVAL or -ENOMEM. */
static void *lc_list(struct lc_parse *p, const struct lcj *arr, const char *what, const char *field,
                     size_t size, size_t *n, int *rc) {
    void *mem = NULL;
    *rc = 0;
    if (arr == NULL || arr->type != LCJ_ARR)
        *rc = lc_bad(p, what, field);
    else if (arr->len > 0 && (mem = calloc(arr->len, size)) == NULL)
        *rc = -ENOMEM;
    else
        *n = arr->len;
    return mem;
}

static int lc_subs_parse(struct lc_parse *p, const struct lcj *arr, struct lc_sub **out,
                         size_t *n) {
    if (arr == NULL || arr->type == LCJ_NULL)
        return 0;
    int rc;
    *out = lc_list(p, arr, "expected a list in", "then/else", sizeof(**out), n, &rc);
    for (size_t i = 0; i < *n && rc == 0; i++) {
        const struct lcj *kind = lcj_get(arr->items[i], "op");
        rc = kind != NULL && kind->type == LCJ_STR
                 ? lc_sub_parse(p, arr->items[i], kind->str, &(*out)[i])
                 : lc_bad(p, "txn operation needs", "op");
    }
    return rc;
}

static int lc_cmp_parse(struct lc_parse *p, const struct lcj *o, const char *target, const char *op,
                        const struct lcj *value, struct lc_cmp *c) {
    static const char *const targets[] = {"value", "mod_rev", "create_rev", "version"};
    static const char *const ops[] = {"=", "!=", "<", ">"};
    int rc, i;
    if ((rc = lc_str(p, o, "key", 1, &p->h->keys, &c->key)) != 0)
        return rc;
    for (i = 0; i < 4 && strcmp(targets[i], target) != 0; i++)
        ;
    if (i == 4)
        return lc_bad(p, "unknown compare target", target);
    c->target = (enum lc_target)i;
    for (i = 0; i < 4 && strcmp(ops[i], op) != 0; i++)
        ;
    if (i == 4)
        return lc_bad(p, "unknown compare operator", op);
    c->op = (enum lc_cmpop)i;
    if (c->target == LC_T_VALUE) {
        if (value == NULL || value->type != LCJ_STR)
            return lc_bad(p, "a value compare needs a string", "value");
        int id = lc_strtab_intern(&p->h->values, value->str, value->len);
        if (id < 0)
            return id;
        c->value = id;
        if (c->op == LC_LT || c->op == LC_GT)
            return lc_bad(p, "value compares support = and != only, not", op);
    } else {
        if (value == NULL || value->type != LCJ_INT || value->num >= LC_INT_LIMIT ||
            value->num <= -LC_INT_LIMIT)
            return lc_bad(p, "a revision compare needs an integer in range", "value");
        c->num = value->num;
    }
    return 0;
}

/* "txn": "if" compares, "then"/"else" sub-operations, "succeeded", and
 * "results" for the branch that ran. */
static int lc_txn_parse(struct lc_parse *p, const struct lcj *o, struct lc_op *op) {
    const struct lcj *cmps = lcj_get(o, "if");
    int rc;
    if (cmps != NULL && cmps->type == LCJ_ARR && cmps->len > 0) {
        op->cmps = calloc(cmps->len, sizeof(*op->cmps));
        if (op->cmps == NULL)
            return -ENOMEM;
        op->ncmps = cmps->len;
        for (size_t i = 0; i < cmps->len; i++) {
            const struct lcj *c = cmps->items[i];
            const struct lcj *t = lcj_get(c, "target"), *r = lcj_get(c, "cmp");
            if (t == NULL || t->type != LCJ_STR || r == NULL || r->type != LCJ_STR)
                return lc_bad(p, "a compare needs", "target and cmp");
            rc = lc_cmp_parse(p, c, t->str, r->str, lcj_get(c, "value"), &op->cmps[i]);
            if (rc != 0)
                return rc;
        }
    }
    if ((rc = lc_subs_parse(p, lcj_get(o, "then"), &op->subs[1], &op->nsubs[1])) != 0 ||
        (rc = lc_subs_parse(p, lcj_get(o, "else"), &op->subs[0], &op->nsubs[0])) != 0)
        return rc;
    if (op->status != LC_OK)
        return 0;
    if ((rc = lc_bool(p, o, "succeeded", -1, &op->succeeded)) != 0)
        return rc;
    if (op->succeeded < 0)
        return lc_bad(p, "an ok txn needs", "succeeded");
    const struct lcj *res = lcj_get(o, "results");
    size_t n = op->nsubs[op->succeeded];
    if (res == NULL || res->type != LCJ_ARR || res->len != n)
        return lc_bad(p, "an ok txn needs one entry per operation of its branch in", "results");
    for (size_t i = 0; i < n; i++)
        if ((rc = lc_sub_result(p, res->items[i], &op->subs[op->succeeded][i])) != 0)
            return rc;
    return 0;
}

/* Single-key put/get/delete/cas become one-branch txns. */
static int lc_single_parse(struct lc_parse *p, const struct lcj *o, const char *kind,
                           struct lc_op *op) {
    struct lc_sub *s = calloc(1, sizeof(*s));
    int rc;
    if (s == NULL)
        return -ENOMEM;
    op->subs[1] = s;
    op->nsubs[1] = 1;
    op->succeeded = op->status == LC_OK ? 1 : -1;
    if ((rc = lc_sub_parse(p, o, strcmp(kind, "cas") == 0 ? "put" : kind, s)) != 0)
        return rc;
    if (strcmp(kind, "cas") == 0) {
        const struct lcj *t = lcj_get(o, "cmp");
        op->cmps = calloc(1, sizeof(*op->cmps));
        if (op->cmps == NULL)
            return -ENOMEM;
        op->ncmps = 1;
        if (t == NULL || t->type != LCJ_STR)
            return lc_bad(p, "a cas needs", "cmp");
        rc = lc_cmp_parse(p, o, t->str, "=", lcj_get(o, "expect"), op->cmps);
        if (rc != 0)
            return rc;
        if (op->status == LC_OK) {
            if ((rc = lc_bool(p, o, "succeeded", -1, &op->succeeded)) != 0)
                return rc;
            if (op->succeeded < 0)
                return lc_bad(p, "an ok cas needs", "succeeded");
        }
        return 0;
    }
    return op->status == LC_OK ? lc_sub_result(p, o, s) : 0;
}

/* Reads "key" and "range_end" as etcd does: no range_end = one key,
 * range_end "\u0000" = every key from key on. */
static int lc_range_parse(struct lc_parse *p, const struct lcj *o, struct lc_op *op) {
    const struct lcj *k = lcj_get(o, "key"), *e = lcj_get(o, "range_end");
    if (k == NULL || k->type != LCJ_STR)
        return lc_bad(p, "missing string", "key");
    op->from = malloc(k->len + 1);
    if (op->from == NULL)
        return -ENOMEM;
    memcpy(op->from, k->str, k->len + 1);
    op->fromlen = k->len;
    if (e == NULL || e->type == LCJ_NULL) {
        op->single = 1;
        return lc_strtab_intern(&p->h->keys, k->str, k->len) < 0 ? -ENOMEM : 0;
    }
    if (e->type != LCJ_STR)
        return lc_bad(p, "expected a string in", "range_end");
    if (e->len == 1 && e->str[0] == '\0') {
        op->to_all = 1;
        return 0;
    }
    op->to = malloc(e->len + 1);
    if (op->to == NULL)
        return -ENOMEM;
    memcpy(op->to, e->str, e->len + 1);
    op->tolen = e->len;
    return 0;
}

static int lc_kvs_parse(struct lc_parse *p, const struct lcj *arr, struct lc_op *op) {
    int rc;
    op->kvs = lc_list(p, arr, "an ok range needs a list", "kvs", sizeof(*op->kvs), &op->nkvs, &rc);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < op->nkvs; i++) {
        int key;
        if ((rc = lc_str(p, arr->items[i], "key", 1, &p->h->keys, &key)) != 0 ||
            (rc = lc_kv_parse(p, arr->items[i], key, &op->kvs[i])) != 0)
            return rc;
    }
    return 0;
}

static int lc_events_parse(struct lc_parse *p, const struct lcj *arr, struct lc_op *op) {
    static const char *const types[] = {"put", "delete", "progress", "reconnect"};
    int rc;
    op->evs = lc_list(p, arr, "a watch needs a list", "events", sizeof(*op->evs), &op->nevs, &rc);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < op->nevs; i++) {
        const struct lcj *e = arr->items[i], *t = lcj_get(e, "type");
        struct lc_wev *w = &op->evs[i];
        int j;
        if (t == NULL || t->type != LCJ_STR)
            return lc_bad(p, "a watch entry needs", "type");
        for (j = 0; j < 4 && strcmp(types[j], t->str) != 0; j++)
            ;
        if (j == 4)
            return lc_bad(p, "unknown watch entry type", t->str);
        w->type = (enum lc_ev_type)j;
        w->value = LC_ABSENT;
        if (w->type == LC_EV_PROGRESS) {
            rc = lc_int(p, e, "rev", 0, &w->rev);
        } else if (w->type == LC_EV_RECONNECT) {
            rc = lc_int(p, e, "start_rev", 0, &w->rev);
        } else {
            if ((rc = lc_str(p, e, "key", 1, &p->h->keys, &w->key)) != 0 ||
                (rc = lc_int(p, e, "mod_rev", 0, &w->rev)) != 0 ||
                (rc = lc_int(p, e, "create_rev", 0, &w->create)) != 0 ||
                (rc = lc_int(p, e, "version", 0, &w->version)) != 0)
                return rc;
            if (w->type == LC_EV_PUT)
                rc = lc_str(p, e, "value", 1, &p->h->values, &w->value);
        }
        if (rc != 0)
            return rc;
        if (w->rev <= 0)
            return lc_bad(p, "a watch entry needs a positive revision in", t->str);
    }
    return 0;
}

/* Fills op from the parsed line o. */
static int lc_op_parse(struct lc_parse *p, const struct lcj *o, struct lc_op *op) {
    const struct lcj *kind = lcj_get(o, "op"), *st = lcj_get(o, "status"),
                     *client = lcj_get(o, "client");
    int64_t call, ret;
    int rc;
    if (kind == NULL || kind->type != LCJ_STR)
        return lc_bad(p, "missing string", "op");
    if (st == NULL || st->type != LCJ_STR)
        return lc_bad(p, "missing string", "status");
    if (strcmp(st->str, "ok") == 0)
        op->status = LC_OK;
    else if (strcmp(st->str, "fail") == 0)
        op->status = LC_FAIL;
    else if (strcmp(st->str, "indeterminate") == 0)
        op->status = LC_INDET;
    else
        return lc_bad(p, "status must be ok, fail or indeterminate, not", st->str);
    if (client != NULL && client->type == LCJ_INT) {
        char buf[32];
        int n = snprintf(buf, sizeof(buf), "%lld", (long long)client->num);
        op->client = lc_strtab_intern(&p->h->clients, buf, (size_t)n);
    } else if ((rc = lc_str(p, o, "client", 1, &p->h->clients, &op->client)) != 0) {
        return rc;
    }
    if (op->client < 0)
        return -ENOMEM;
    if ((rc = lc_int(p, o, "call", -1, &call)) != 0 ||
        (rc = lc_int(p, o, "return", -1, &ret)) != 0 || (rc = lc_int(p, o, "rev", 0, &op->rev)))
        return rc;
    if (call < 0)
        return lc_bad(p, "missing invocation time", "call");
    op->call = (uint64_t)call;
    op->ret = (uint64_t)ret;
    if (op->status == LC_INDET) {
        op->ret = LC_NEVER;
        op->rev = 0;
    } else if (ret < call) {
        return lc_bad(p, "completion time missing or before invocation", "return");
    }
    op->succeeded = -1;
    const char *k = kind->str;
    if ((strcmp(k, "get") == 0 || strcmp(k, "range") == 0) &&
        (rc = lc_bool(p, o, "serializable", 0, &op->serializable)) != 0)
        return rc;
    if (strcmp(k, "put") == 0 || strcmp(k, "get") == 0 || strcmp(k, "delete") == 0 ||
        strcmp(k, "cas") == 0) {
        op->kind = LC_TXN;
        return lc_single_parse(p, o, k, op);
    }
    if (strcmp(k, "txn") == 0) {
        op->kind = LC_TXN;
        return lc_txn_parse(p, o, op);
    }
    if (strcmp(k, "range") == 0) {
        op->kind = LC_RANGE;
        if ((rc = lc_range_parse(p, o, op)) != 0 || (rc = lc_bool(p, o, "final", 0, &op->final)))
            return rc;
        return op->status == LC_OK ? lc_kvs_parse(p, lcj_get(o, "kvs"), op) : 0;
    }
    if (strcmp(k, "watch") == 0) {
        op->kind = LC_WATCH;
        if ((rc = lc_range_parse(p, o, op)) != 0 ||
            (rc = lc_int(p, o, "start_rev", 0, &op->start_rev)) != 0)
            return rc;
        if (op->start_rev <= 0)
            return lc_bad(p, "a watch needs a positive", "start_rev");
        return lc_events_parse(p, lcj_get(o, "events"), op);
    }
    if (strcmp(k, "lease_grant") == 0)
        op->kind = LC_GRANT;
    else if (strcmp(k, "lease_revoke") == 0)
        op->kind = LC_REVOKE;
    else if (strcmp(k, "lease_expired") == 0)
        op->kind = LC_EXPIRED;
    else if (strcmp(k, "lease_alive") == 0)
        op->kind = LC_ALIVE;
    else
        return lc_bad(p, "unknown operation", k);
    if ((rc = lc_lease_id(p, o, 0, &op->lease)) != 0 ||
        (rc = lc_int(p, o, "ttl", 0, &op->ttl)) != 0)
        return rc;
    if (op->lease == 0)
        return lc_bad(p, "a lease operation needs a non-zero", "lease");
    op->lidx = lc_lease_index(p->h, op->lease);
    return op->lidx < 0 ? -ENOMEM : 0;
}

int lincheck_history_add_line(struct lincheck_history *h, const char *line, size_t n,
                              struct util_err *err) {
    struct lc_parse p = {h, err};
    struct lcj *o = NULL;
    char why[96];
    size_t i;
    int rc;
    h->line++;
    for (i = 0; i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'); i++)
        ;
    if (i == n)
        return 0;
    rc = lcj_parse(line, n, &o, why, sizeof(why));
    if (rc == -EINVAL)
        return util_errorf(err, rc, "history line %d: not JSON: %s", h->line, why);
    if (rc != 0)
        return util_errorf(err, rc, "out of memory reading the history");
    if (o->type != LCJ_OBJ) {
        rc = util_errorf(err, -EINVAL, "history line %d: not a JSON object", h->line);
        goto err;
    }
    if (h->nops == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        struct lc_op *ops = realloc(h->ops, cap * sizeof(*ops));
        if (ops == NULL) {
            rc = util_errorf(err, -ENOMEM, "out of memory reading the history");
            goto err;
        }
        h->ops = ops;
        h->cap = cap;
    }
    struct lc_op *op = &h->ops[h->nops];
    memset(op, 0, sizeof(*op));
    op->line = h->line;
    size_t tn = n < LC_TEXT_MAX ? n : LC_TEXT_MAX;
    op->text = malloc(tn + 4);
    if (op->text == NULL) {
        rc = util_errorf(err, -ENOMEM, "out of memory reading the history");
        goto err;
    }
    memcpy(op->text, line, tn);
    strcpy(op->text + tn, tn < n ? "..." : "");
    rc = lc_op_parse(&p, o, op);
    if (rc == -ENOMEM)
        util_errorf(err, rc, "out of memory reading the history");
    if (rc != 0) {
        lc_op_free(op);
        goto err;
    }
    h->nops++;
    lcj_free(o);
    return 0;
err:
    lcj_free(o);
    return rc;
}

int lincheck_history_load(const char *path, struct lincheck_history **out, struct util_err *err) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    struct lincheck_history *h = NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc;
    if (f == NULL)
        return util_errorf(err, -errno, "cannot open history %s: %s", path, strerror(errno));
    if ((rc = lincheck_history_new(&h)) != 0) {
        util_errorf(err, rc, "out of memory reading the history");
        goto err;
    }
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if ((rc = lincheck_history_add_line(h, line, (size_t)n, err)) != 0)
            goto err;
    }
    if (ferror(f)) {
        rc = util_errorf(err, -EIO, "cannot read history %s", path);
        goto err;
    }
    free(line);
    if (f != stdin)
        fclose(f);
    *out = h;
    return 0;
err:
    free(line);
    if (f != stdin)
        fclose(f);
    lincheck_history_free(h);
    return rc;
}
