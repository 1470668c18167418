/* Fixture of the lease tests: a real mvcc store in a temporary directory with
 * the lease layer on it, and one-call wrappers that apply a lease request in
 * its own batch the way the apply thread will. Times are parameters: the
 * tests drive both clocks by hand. */
#ifndef QUOIN_TESTS_LEASE_HELPERS_H
#define QUOIN_TESTS_LEASE_HELPERS_H

#include <stdbool.h>
#include <stdint.h>

#include "lease/lease.h"

#define SEC 1000000000ull
/* Arbitrary clock origins, far from 0 so underflow bugs would show. */
#define MONO0 (1000 * SEC)
#define WALL0 (1700000000 * SEC)

struct fx {
    char dir[64];
    char path[96];
    struct lease_options opt;
    mvcc_t *db;
    lease_t *ls;
};

/* Opens a fresh store and lease layer (asserts on failure). */
void fx_open(struct fx *f, const struct lease_options *opt);
/* Closes both and opens them again on the same file: a member restart. */
void fx_restart(struct fx *f);
/* Closes both and removes the files. */
void fx_close(struct fx *f);

/* cmocka setup/teardown: the test's initial state is a const struct
 * lease_options *, replaced by an open struct fx *. */
int fx_setup(void **state);
int fx_teardown(void **state);
#define FX_TEST(fn, opt)                                                                           \
    cmocka_unit_test_prestate_setup_teardown(fn, fx_setup, fx_teardown, (void *)(opt))

/* Each applies one request in its own committed batch, ending the lease
 * batch at now_mono; returns the request's code. */
int fx_grant(struct fx *f, int64_t id, int64_t ttl, uint64_t wall, uint64_t now_mono,
             int64_t *granted);
int fx_revoke(struct fx *f, int64_t id, uint64_t now_mono, mvcc_result_t **out);
int fx_checkpoint(struct fx *f, const struct lease_checkpoint *cps, size_t n, uint64_t now_mono);
int fx_exists(struct fx *f, int64_t id);

/* Puts key=value with a lease (0: none); returns the header revision. */
int64_t fx_put(struct fx *f, const char *key, int64_t lease);
/* Whether key is live now. */
bool fx_has_key(struct fx *f, const char *key);
/* The store's current revision. */
int64_t fx_revision(struct fx *f);
/* Whether lease id is among lease_list's ids. */
bool fx_listed(struct fx *f, int64_t id);

#endif
