/* The watch engine under its real threading: this thread is the apply
 * thread (writes, publish, compactions) and also creates and cancels
 * watchers; one thread per stream drains it when its ready callback fires
 * (two of them slow, behind tiny budgets); one thread runs sync steps when
 * the hub's sync_wanted callback fires. Every popped response goes through
 * the same model checker as the property test, so a race between publish,
 * catch-up and draining shows up as a gap, a duplicate, a reorder or a
 * progress notification ahead of an event. Every other run injects
 * allocation failures into delivery and catch-up. WATCH_THREAD_RUNS scales
 * it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "model.h"

/* A thread that sleeps until its callback pokes it (or 2 ms pass). */
struct waker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool poked;
};

static void waker_init(struct waker *w) {
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->poked = false;
}

static void waker_destroy(struct waker *w) {
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

static void poke(void *arg) {
    struct waker *w = arg;
    pthread_mutex_lock(&w->mu);
    w->poked = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void wait_poke(struct waker *w) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 2000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&w->mu);
    if (!w->poked)
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    w->poked = false;
    pthread_mutex_unlock(&w->mu);
}

struct consumer {
    struct model *m;
    int k;
    bool slow;
    atomic_bool fast; /* the run is over: read at full speed */
    atomic_bool stop;
    struct waker wake;
    pthread_t th;
    unsigned seed;
};

static void *consume(void *arg) {
    struct consumer *c = arg;
    for (;;) {
        bool stopping = atomic_load(&c->stop);
        struct watch_response *r;
        while (watch_stream_pop(c->m->st[c->k], &r) == 0) {
            model_on_response(c->m, c->k, r);
            watch_response_free(r);
            if (c->slow && !atomic_load(&c->fast) && rand_r(&c->seed) % 4 == 0)
                usleep((useconds_t)(rand_r(&c->seed) % 300));
        }
        if (stopping)
            return NULL;
        wait_poke(&c->wake);
    }
}

struct syncer {
    watch_hub_t *hub;
    atomic_bool stop;
    struct waker wake;
    pthread_t th;
    atomic_int errors;
};

static void *run_sync(void *arg) {
    struct syncer *s = arg;
    unsigned seed = 7;
    while (!atomic_load(&s->stop)) {
        int rc;
        while ((rc = watch_hub_sync_step(s->hub, 1 + rand_r(&seed) % 200)) == 1)
            ;
        if (rc < 0 && rc != -ENOMEM) /* -ENOMEM: injected faults */
            atomic_fetch_add(&s->errors, 1);
        wait_poke(&s->wake);
    }
    return NULL;
}

static void run(uint64_t seed, int n_ops, struct totals *tot) {
    struct model *m = calloc(1, sizeof(*m));
    struct consumer *cs = calloc(MODEL_STREAMS, sizeof(*cs));
    struct syncer *sy = calloc(1, sizeof(*sy));
    assert_non_null(m);
    assert_non_null(cs);
    assert_non_null(sy);
    pthread_mutex_t lock;
    pthread_mutex_init(&lock, NULL);
    waker_init(&sy->wake);
    struct watch_hub_options o = {
        .max_response_bytes = 400, .sync_wanted = poke, .sync_arg = &sy->wake};
    model_init(m, seed, &o);
    m->lock = &lock;
    m->n_streams = MODEL_STREAMS;
    sy->hub = m->t.hub;
    if (seed % 2 == 0)
        watch_hub_inject_faults(m->t.hub, 25, seed);
    for (int k = 0; k < MODEL_STREAMS; k++) {
        struct consumer *c = &cs[k];
        c->m = m;
        c->k = k;
        c->slow = k < 2;
        c->seed = (unsigned)(seed * 31 + (uint64_t)k);
        waker_init(&c->wake);
        assert_int_equal(watch_stream_open(m->t.hub, c->slow ? 300 : 0, poke, &c->wake, &m->st[k]),
                         0);
        assert_int_equal(pthread_create(&c->th, NULL, consume, c), 0);
    }
    assert_int_equal(pthread_create(&sy->th, NULL, run_sync, sy), 0);
    for (int op = 0; op < n_ops; op++) {
        int a = model_rn(m, 100);
        if (a < 50)
            model_random_write(m);
        else if (a < 65)
            model_create_watcher(m);
        else if (a < 70)
            model_cancel_watcher(m);
        else if (a < 71 && model_rn(m, 4) == 0)
            model_random_compaction(m);
        else if (a < 80)
            model_sweep_some(m);
        else if (a < 85)
            assert_int_equal(watch_stream_request_progress(m->st[model_rn(m, MODEL_STREAMS)]), 0);
        else if (a < 87)
            watch_stream_progress_tick(m->st[model_rn(m, MODEL_STREAMS)]);
        else if (a < 88)
            watch_hub_restore(m->t.hub, watch_hub_revision(m->t.hub));
        else if (a < 90)
            usleep(100);
    }
    /* Quiesce: clients read at full speed until nothing is left anywhere. */
    watch_hub_inject_faults(m->t.hub, 0, 0);
    for (int k = 0; k < MODEL_STREAMS; k++) {
        atomic_store(&cs[k].fast, true);
        poke(&cs[k].wake);
    }
    poke(&sy->wake);
    struct watch_hub_stats st;
    int quiet = 0;
    for (int i = 0; quiet < 3; i++) {
        assert_true(i < 20000);
        usleep(1000);
        watch_hub_stats(m->t.hub, &st);
        quiet = st.unsynced == 0 && st.queued_bytes == 0 ? quiet + 1 : 0;
    }
    atomic_store(&sy->stop, true);
    poke(&sy->wake);
    pthread_join(sy->th, NULL);
    for (int k = 0; k < MODEL_STREAMS; k++) {
        atomic_store(&cs[k].stop, true);
        poke(&cs[k].wake);
        pthread_join(cs[k].th, NULL);
    }
    assert_int_equal(atomic_load(&sy->errors), 0);
    model_check_end(m, tot);
    for (int k = 0; k < MODEL_STREAMS; k++) {
        watch_stream_close(m->st[k]);
        waker_destroy(&cs[k].wake);
    }
    model_finish(m, tot);
    waker_destroy(&sy->wake);
    pthread_mutex_destroy(&lock);
    free(sy);
    free(cs);
    free(m);
}

static void test_watch_threads(void **state) {
    (void)state;
    long runs = wt_env_long("WATCH_THREAD_RUNS", 6), ops = wt_env_long("WATCH_OPS", 1500);
    struct totals tot = {0};
    for (long i = 1; i <= runs; i++)
        run((uint64_t)i, (int)ops, &tot);
    model_print_totals(&tot, runs, ops);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
