/* watch interval index: a treap of watchers ordered by their range start,
 * each node knowing the largest range end in its subtree, so "which watchers
 * hold this key" costs O(log n + matches) instead of a pass over every
 * watcher. A single-key watcher is the range [key, key "\0"). */
#include <assert.h>
#include <string.h>

#include "watch/watch_int.h"

int index_bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/* Whether w's range ends after `key` (the range holds it if it starts at or
 * before it). A NULL end is unbounded. */
static bool ends_after(const struct watcher *w, const uint8_t *key, size_t len) {
    return w->end == NULL || index_bytes_cmp(key, len, w->end, w->end_len) < 0;
}

/* Whether a's end is beyond b's. */
static bool end_greater(const struct watcher *a, const struct watcher *b) {
    if (b->end == NULL)
        return false;
    if (a->end == NULL)
        return true;
    return index_bytes_cmp(a->end, a->end_len, b->end, b->end_len) > 0;
}

static bool order_less(const struct watcher *a, const struct watcher *b) {
    int c = index_bytes_cmp(a->key, a->key_len, b->key, b->key_len);
    if (c != 0)
        return c < 0;
    return (uintptr_t)a < (uintptr_t)b;
}

static void fix(struct watcher *n) {
    struct watcher *m = n;
    if (n->left != NULL && end_greater(n->left->maxw, m))
        m = n->left->maxw;
    if (n->right != NULL && end_greater(n->right->maxw, m))
        m = n->right->maxw;
    n->maxw = m;
}

static struct watcher *rot_right(struct watcher *n) {
    struct watcher *l = n->left;
    n->left = l->right;
    l->right = n;
    fix(n);
    fix(l);
    return l;
}

static struct watcher *rot_left(struct watcher *n) {
    struct watcher *r = n->right;
    n->right = r->left;
    r->left = n;
    fix(n);
    fix(r);
    return r;
}

uint32_t index_prio(watch_hub_t *hub) {
    /* xorshift64: priorities only need to look random to keep the treap
     * balanced in expectation. */
    uint64_t x = hub->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    hub->rng = x;
    return (uint32_t)(x >> 32);
}

static struct watcher *insert(struct watcher *n, struct watcher *w) {
    if (n == NULL) {
        w->left = w->right = NULL;
        w->maxw = w;
        return w;
    }
    if (order_less(w, n)) {
        n->left = insert(n->left, w);
        if (n->left->prio > n->prio)
            return rot_right(n);
    } else {
        n->right = insert(n->right, w);
        if (n->right->prio > n->prio)
            return rot_left(n);
    }
    fix(n);
    return n;
}

void index_insert(struct watcher **root, struct watcher *w) {
    *root = insert(*root, w);
}

/* Joins two treaps, every key of a below every key of b. */
static struct watcher *merge(struct watcher *a, struct watcher *b) {
    if (a == NULL)
        return b;
    if (b == NULL)
        return a;
    if (a->prio > b->prio) {
        a->right = merge(a->right, b);
        fix(a);
        return a;
    }
    b->left = merge(a, b->left);
    fix(b);
    return b;
}

static struct watcher *remove_node(struct watcher *n, struct watcher *w) {
    assert(n != NULL);
    if (n == w) {
        struct watcher *m = merge(w->left, w->right);
        w->left = w->right = w->maxw = NULL;
        return m;
    }
    if (order_less(w, n))
        n->left = remove_node(n->left, w);
    else
        n->right = remove_node(n->right, w);
    fix(n);
    return n;
}

void index_remove(struct watcher **root, struct watcher *w) {
    *root = remove_node(*root, w);
}

void index_stab(struct watcher *n, const uint8_t *key, size_t len,
                void (*fn)(struct watcher *w, void *arg), void *arg) {
    while (n != NULL && ends_after(n->maxw, key, len)) {
        index_stab(n->left, key, len, fn, arg);
        /* Everything right of a node starting after the key starts after it. */
        if (index_bytes_cmp(n->key, n->key_len, key, len) > 0)
            return;
        if (ends_after(n, key, len))
            fn(n, arg);
        n = n->right;
    }
}

void index_walk(struct watcher *n, void (*fn)(struct watcher *w, void *arg), void *arg) {
    while (n != NULL) {
        index_walk(n->left, fn, arg);
        struct watcher *r = n->right;
        fn(n, arg);
        n = r;
    }
}
