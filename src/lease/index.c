/* The leader's lease index: an id table and two min-heaps over the same
 * entries (next expiry check, next checkpoint), each entry remembering its
 * position in each heap so a renewal moves it in O(log n). Also the record
 * codec of the "lease" database. */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lease/lease_int.h"

void lrec_key(uint8_t out[8], int64_t id) {
    uint64_t be = htobe64((uint64_t)id);
    memcpy(out, &be, 8);
}

static void put64(uint8_t *p, uint64_t v) {
    uint64_t be = htobe64(v);
    memcpy(p, &be, 8);
}

static uint64_t get64(const uint8_t *p) {
    uint64_t be;
    memcpy(&be, p, 8);
    return be64toh(be);
}

int64_t lrec_id(const uint8_t key[8]) {
    return (int64_t)get64(key);
}

void lrec_encode(uint8_t out[REC_LEN], const struct lrec *r) {
    out[0] = REC_FORMAT;
    put64(out + 1, (uint64_t)r->ttl);
    put64(out + 9, (uint64_t)r->remaining);
    put64(out + 17, r->deadline);
}

int lrec_decode(const uint8_t *p, size_t len, struct lrec *r) {
    if (len != REC_LEN || p[0] != REC_FORMAT)
        return MVCC_ECORRUPT;
    r->ttl = (int64_t)get64(p + 1);
    r->remaining = (int64_t)get64(p + 9);
    r->deadline = get64(p + 17);
    if (r->ttl < 1 || r->ttl > LEASE_MAX_TTL || r->remaining < 0 || r->remaining > LEASE_MAX_TTL)
        return MVCC_ECORRUPT;
    return 0;
}

uint64_t lsat_add(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t lttl_ns(int64_t ttl) {
    assert(ttl >= 0 && ttl <= LEASE_MAX_TTL);
    return (uint64_t)ttl * NS_PER_S;
}

/* ---- heaps ---- */

static bool less(const struct heap *h, size_t a, size_t b) {
    return h->v[a]->hkey[h->which] < h->v[b]->hkey[h->which];
}

static void place(struct heap *h, size_t i, struct ent *e) {
    h->v[i] = e;
    e->hpos[h->which] = i;
}

static void swap(struct heap *h, size_t a, size_t b) {
    struct ent *t = h->v[a];
    place(h, a, h->v[b]);
    place(h, b, t);
}

static void sift_up(struct heap *h, size_t i) {
    while (i > 0 && less(h, i, (i - 1) / 2)) {
        swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void sift_down(struct heap *h, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && less(h, l, m))
            m = l;
        if (r < h->n && less(h, r, m))
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

int lheap_set(struct heap *h, struct ent *e, uint64_t key) {
    size_t i = e->hpos[h->which];
    if (i == HEAP_NONE) {
        if (util_buf_append(&h->buf, &e, sizeof(e)) != 0)
            return -ENOMEM;
        h->v = (struct ent **)(void *)h->buf.data;
        e->hkey[h->which] = key;
        place(h, h->n++, e);
        sift_up(h, h->n - 1);
        return 0;
    }
    assert(h->v[i] == e);
    e->hkey[h->which] = key;
    sift_up(h, i);
    sift_down(h, e->hpos[h->which]);
    return 0;
}

void lheap_remove(struct heap *h, struct ent *e) {
    size_t i = e->hpos[h->which];
    if (i == HEAP_NONE)
        return;
    assert(h->v[i] == e);
    e->hpos[h->which] = HEAP_NONE;
    h->buf.len -= sizeof(e);
    if (--h->n == i)
        return;
    struct ent *moved = h->v[h->n];
    place(h, i, moved);
    sift_up(h, i);
    sift_down(h, moved->hpos[h->which]);
}

struct ent *lheap_top(const struct heap *h) {
    return h->n > 0 ? h->v[0] : NULL;
}

void lheap_free(struct heap *h) {
    util_buf_free(&h->buf);
    h->v = NULL;
    h->n = 0;
}

/* ---- id table ---- */

static size_t slot_of(const struct table *t, int64_t id) {
    uint64_t x = (uint64_t)id; /* splitmix64's finaliser: ids may be sequential */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return (size_t)x & (t->cap - 1);
}

struct ent *ltab_get(const struct table *t, int64_t id) {
    if (t->cap == 0)
        return NULL;
    for (size_t i = slot_of(t, id);; i = (i + 1) & (t->cap - 1)) {
        struct ent *e = t->slots[i];
        if (e == NULL || e->id == id)
            return e;
    }
}

static void insert(struct table *t, struct ent *e) {
    size_t i = slot_of(t, e->id);
    while (t->slots[i] != NULL)
        i = (i + 1) & (t->cap - 1);
    t->slots[i] = e;
    t->n++;
}

int ltab_put(struct table *t, struct ent *e) {
    assert(ltab_get(t, e->id) == NULL);
    /* Kept at most half full so probes stay short. */
    if (2 * (t->n + 1) > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct ent **old = t->slots;
        size_t ocap = t->cap;
        if ((t->slots = calloc(cap, sizeof(*t->slots))) == NULL) {
            t->slots = old;
            return -ENOMEM;
        }
        t->cap = cap;
        t->n = 0;
        for (size_t i = 0; i < ocap; i++)
            if (old[i] != NULL)
                insert(t, old[i]);
        free(old);
    }
    insert(t, e);
    return 0;
}

void ltab_del(struct table *t, int64_t id) {
    if (t->cap == 0)
        return;
    size_t mask = t->cap - 1, i = slot_of(t, id);
    while (t->slots[i] != NULL && t->slots[i]->id != id)
        i = (i + 1) & mask;
    if (t->slots[i] == NULL)
        return;
    t->slots[i] = NULL;
    t->n--;
    /* Backward shift: move up every later entry of the run whose home slot
     * does not lie (cyclically) between the hole and itself. */
    for (size_t j = (i + 1) & mask; t->slots[j] != NULL; j = (j + 1) & mask) {
        size_t home = slot_of(t, t->slots[j]->id);
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            t->slots[j] = NULL;
            i = j;
        }
    }
}

void ltab_free(struct table *t) {
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i]);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}
