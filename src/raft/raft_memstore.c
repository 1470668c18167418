/* raft_memstore: the in-memory raft log storage. It is the reference
 * implementation of raft_storage_ops and stands in for the WAL in tests, the
 * simulator and the benchmark. Entry data is kept in per-entry allocations so
 * that pointers handed to raft stay valid while the entry array grows. */
#include "raft/raft_int.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct raft_memstore {
    struct raft_hard_state hs;
    struct raft_snapshot_meta snap; /* latest snapshot */
    uint8_t *snap_data;
    size_t snap_len;
    /* ents[0] is a placeholder for the entry at `off` (the compaction point):
     * only its index and term mean anything. */
    struct raft_evec e;
};

static uint64_t ms_off(const raft_memstore_t *ms) {
    return ms->e.v[0].index;
}

int raft_memstore_new(raft_memstore_t **out) {
    raft_memstore_t *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return -ENOMEM;
    if (raft_evec_reserve(&ms->e, 64) < 0) {
        free(ms);
        return -ENOMEM;
    }
    ms->e.v[0] = (struct raft_entry){0};
    ms->e.n = 1;
    *out = ms;
    return 0;
}

static void free_range(raft_memstore_t *ms, size_t from, size_t to) {
    for (size_t i = from; i < to; i++)
        free(ms->e.v[i].data);
}

void raft_memstore_free(raft_memstore_t *ms) {
    if (!ms)
        return;
    free_range(ms, 1, ms->e.n);
    raft_evec_free(&ms->e);
    free(ms->snap_data);
    free(ms);
}

void raft_memstore_bootstrap(raft_memstore_t *ms, const struct raft_conf_state *cs) {
    ms->snap.conf = *cs;
}

void raft_memstore_set_hard_state(raft_memstore_t *ms, const struct raft_hard_state *hs) {
    ms->hs = *hs;
}

void raft_memstore_hard_state(const raft_memstore_t *ms, struct raft_hard_state *hs) {
    *hs = ms->hs;
}

uint64_t raft_memstore_last_index(const raft_memstore_t *ms) {
    return ms_off(ms) + ms->e.n - 1;
}

int raft_memstore_append(raft_memstore_t *ms, const struct raft_entry *ents, size_t n) {
    if (n == 0)
        return 0;
    uint64_t off = ms_off(ms);
    uint64_t first = ents[0].index;
    if (first <= off || first > raft_memstore_last_index(ms) + 1)
        return -EINVAL;
    size_t at = (size_t)(first - off);
    if (raft_evec_reserve(&ms->e, at + n) < 0)
        return -ENOMEM;
    /* Copy the data first so a failure leaves the store untouched. */
    uint8_t **copies = malloc(n * sizeof(*copies));
    if (!copies)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        copies[i] = NULL;
        if (ents[i].len) {
            copies[i] = malloc(ents[i].len);
            if (!copies[i]) {
                while (i--)
                    free(copies[i]);
                free(copies);
                return -ENOMEM;
            }
            memcpy(copies[i], ents[i].data, ents[i].len);
        }
    }
    free_range(ms, at, ms->e.n);
    for (size_t i = 0; i < n; i++) {
        assert(ents[i].index == first + i);
        ms->e.v[at + i] = ents[i];
        ms->e.v[at + i].data = copies[i];
    }
    ms->e.n = at + n;
    free(copies);
    return 0;
}

int raft_memstore_apply_snapshot(raft_memstore_t *ms, const struct raft_snapshot *snap) {
    if (snap->meta.index <= ms->snap.index && ms->snap.index != 0)
        return -EINVAL;
    uint8_t *d;
    if (raft_dup_bytes(snap->data, snap->len, &d) < 0)
        return -ENOMEM;
    free(ms->snap_data);
    ms->snap_data = d;
    ms->snap_len = snap->len;
    ms->snap = snap->meta;
    free_range(ms, 1, ms->e.n);
    ms->e.n = 1;
    ms->e.v[0] = (struct raft_entry){.index = snap->meta.index, .term = snap->meta.term};
    return 0;
}

int raft_memstore_create_snapshot(raft_memstore_t *ms, uint64_t index,
                                  const struct raft_conf_state *cs, const uint8_t *data,
                                  size_t len) {
    uint64_t off = ms_off(ms);
    if (index <= ms->snap.index || index < off || index > raft_memstore_last_index(ms))
        return -EINVAL;
    uint8_t *d;
    if (raft_dup_bytes(data, len, &d) < 0)
        return -ENOMEM;
    free(ms->snap_data);
    ms->snap_data = d;
    ms->snap_len = len;
    ms->snap.index = index;
    ms->snap.term = ms->e.v[index - off].term;
    ms->snap.conf = *cs;
    return 0;
}

int raft_memstore_compact(raft_memstore_t *ms, uint64_t index) {
    uint64_t off = ms_off(ms);
    if (index <= off)
        return 0;
    if (index > ms->snap.index)
        return -EINVAL;
    size_t k = (size_t)(index - off);
    free_range(ms, 1, k + 1);
    struct raft_entry dummy = {.index = index, .term = ms->e.v[k].term};
    memmove(&ms->e.v[1], &ms->e.v[k + 1], (ms->e.n - k - 1) * sizeof(*ms->e.v));
    ms->e.n -= k;
    ms->e.v[0] = dummy;
    return 0;
}

static int ms_initial_state(void *ctx, struct raft_hard_state *hs, struct raft_conf_state *cs) {
    raft_memstore_t *ms = ctx;
    *hs = ms->hs;
    *cs = ms->snap.conf;
    return 0;
}

static int ms_entries(void *ctx, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      struct raft_entry *out, size_t *n) {
    raft_memstore_t *ms = ctx;
    uint64_t off = ms_off(ms);
    if (lo <= off)
        return RAFT_ECOMPACTED;
    if (hi > raft_memstore_last_index(ms) + 1)
        return RAFT_EUNAVAILABLE;
    uint64_t size = 0;
    size_t k = 0;
    for (uint64_t i = lo; i < hi; i++) {
        const struct raft_entry *e = &ms->e.v[i - off];
        size += e->len;
        if (k > 0 && size > max_bytes)
            break;
        out[k++] = *e;
    }
    *n = k;
    return 0;
}

static int ms_term(void *ctx, uint64_t i, uint64_t *term) {
    raft_memstore_t *ms = ctx;
    uint64_t off = ms_off(ms);
    if (i < off)
        return RAFT_ECOMPACTED;
    if (i > raft_memstore_last_index(ms))
        return RAFT_EUNAVAILABLE;
    *term = ms->e.v[i - off].term;
    return 0;
}

static uint64_t ms_first_index(void *ctx) {
    return ms_off(ctx) + 1;
}

static uint64_t ms_last_index(void *ctx) {
    return raft_memstore_last_index(ctx);
}

static int ms_snapshot(void *ctx, struct raft_snapshot *out) {
    raft_memstore_t *ms = ctx;
    out->meta = ms->snap;
    out->data = ms->snap_data;
    out->len = ms->snap_len;
    return 0;
}

static const struct raft_storage_ops memstore_ops = {
    .initial_state = ms_initial_state,
    .entries = ms_entries,
    .term = ms_term,
    .first_index = ms_first_index,
    .last_index = ms_last_index,
    .snapshot = ms_snapshot,
};

struct raft_storage raft_memstore_storage(raft_memstore_t *ms) {
    return (struct raft_storage){.ops = &memstore_ops, .ctx = ms};
}
