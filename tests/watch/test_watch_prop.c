/* The watch property test: random puts, deletes, txns and compactions go
 * through mvcc batches and are published as the apply thread will, while
 * watchers come and go on several streams at random start revisions (current,
 * past, compacted, future), some of them behind tiny budgets with clients
 * that rarely read, so they keep falling back to history. Every response is
 * checked against the model — the list of every event in revision order —
 * as it is popped:
 *   - each watcher's events are exactly the model's events of its range and
 *     filters from its start revision: no gap, duplicate or reorder;
 *   - a response's header revision R is never ahead: every model event of the
 *     watcher up to R was received (for a stream-wide progress notification,
 *     by every watcher of the stream), so a revision is never split outside
 *     fragments;
 *   - a compacted response comes exactly when the watcher needed a revision
 *     at or below a compaction, with compact_revision = that compaction + 1;
 *   - at the end, once every client has read everything, every watcher not
 *     canceled and not compacted has received its whole list.
 * WATCH_SEEDS and WATCH_OPS scale the run (`make watch-long`); a failing
 * seed is printed and WATCH_SEED=n replays it alone. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* A run: the model plus the clients' behaviour. */
struct sim {
    struct model m;
    int drain[MODEL_STREAMS]; /* responses popped per round (0: rarely reads) */
    size_t budget[MODEL_STREAMS];
    bool faults; /* allocation failures injected on the delivery paths */
};

static void drain(struct sim *s, int k, int max) {
    struct watch_response *r;
    for (int n = 0; n < max && watch_stream_pop(s->m.st[k], &r) == 0; n++) {
        model_on_response(&s->m, k, r);
        watch_response_free(r);
    }
}

static void sync_some(struct sim *s) {
    int rc = watch_hub_sync_step(s->m.t.hub, 1 + (size_t)model_rn(&s->m, 64));
    assert_true(rc == 0 || rc == 1 || (s->faults && rc == -ENOMEM));
}

static void request_progress(struct sim *s, int k) {
    assert_int_equal(watch_stream_request_progress(s->m.st[k]), 0);
    s->m.ctrl[k]++;
}

static void progress_tick(struct sim *s, int k) {
    watch_stream_progress_tick(s->m.st[k]);
    for (size_t i = 0; i < s->m.n_w; i++)
        s->m.ctrl[k] += s->m.w[i].stream == k;
}

/* A slow client's queue is bounded by its budget, one revision (values here
 * are at most 300 bytes, a batch's revision at most 4 events) and the control
 * responses — never by the number of writes. */
static void assert_memory_bound(struct sim *s, int k) {
    size_t bound = s->budget[k] + 4 * 400 + 64 * s->m.ctrl[k];
    size_t q = watch_stream_queued_bytes(s->m.st[k]);
    if (q > bound)
        fail_msg("stream %d: %zu bytes queued, bound %zu", k, q, bound);
}

static void run_seed(uint64_t seed, int n_ops, struct totals *tot) {
    struct sim *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    struct model *m = &s->m;
    struct watch_hub_options o = {.max_response_bytes = 250 + (size_t)(seed * 7919 % 600)};
    model_init(m, seed, &o);
    m->n_streams = MODEL_STREAMS;
    s->faults = seed % 3 == 0;
    if (s->faults)
        watch_hub_inject_faults(m->t.hub, 20, seed);
    for (int k = 0; k < MODEL_STREAMS; k++) {
        bool slow = model_rn(m, 2);
        s->budget[k] = slow ? 100 + (size_t)model_rn(m, 600) : 1u << 20;
        s->drain[k] = slow ? 0 : 1 + model_rn(m, 8);
        assert_int_equal(watch_stream_open(m->t.hub, s->budget[k], NULL, NULL, &m->st[k]), 0);
    }
    for (int op = 0; op < n_ops; op++) {
        int a = model_rn(m, 100);
        if (a < 40)
            model_random_write(m);
        else if (a < 52)
            model_create_watcher(m);
        else if (a < 56)
            model_cancel_watcher(m);
        else if (a < 58 && model_rn(m, 3) == 0)
            model_random_compaction(m);
        else if (a < 64)
            model_sweep_some(m);
        else if (a < 78)
            sync_some(s);
        else if (a < 82)
            request_progress(s, model_rn(m, MODEL_STREAMS));
        else if (a < 84)
            progress_tick(s, model_rn(m, MODEL_STREAMS));
        else if (a < 85)
            watch_hub_restore(m->t.hub, watch_hub_revision(m->t.hub));
        for (int k = 0; k < MODEL_STREAMS; k++) {
            drain(s, k,
                  s->drain[k] ? s->drain[k] : (model_rn(m, 12) == 0 ? 1 + model_rn(m, 4) : 0));
            assert_memory_bound(s, k);
        }
    }
    /* Quiesce: every client reads everything, catch-up runs to the end. */
    watch_hub_inject_faults(m->t.hub, 0, 0);
    struct watch_hub_stats st;
    for (int round = 0;; round++) {
        assert_true(round < 100000);
        for (int k = 0; k < MODEL_STREAMS; k++)
            drain(s, k, 1 << 30);
        int rc = watch_hub_sync_step(m->t.hub, 1 + (size_t)model_rn(m, 128));
        assert_true(rc >= 0);
        watch_hub_stats(m->t.hub, &st);
        if (rc == 0 && st.unsynced == 0 && st.queued_bytes == 0)
            break;
    }
    model_check_end(m, tot);
    for (int k = 0; k < MODEL_STREAMS; k++)
        watch_stream_close(m->st[k]);
    model_finish(m, tot);
    free(s);
}

static void test_watch_property(void **state) {
    (void)state;
    long one = wt_env_long("WATCH_SEED", -1);
    long seeds = wt_env_long("WATCH_SEEDS", 150), ops = wt_env_long("WATCH_OPS", 800);
    struct totals tot = {0};
    long n = 0;
    for (long seed = one >= 0 ? one : 1; seed <= (one >= 0 ? one : seeds); seed++, n++) {
        if (getenv("WATCH_VERBOSE") != NULL || one >= 0)
            print_message("seed %ld\n", seed);
        run_seed((uint64_t)seed, (int)ops, &tot);
    }
    model_print_totals(&tot, n, ops);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_property),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
