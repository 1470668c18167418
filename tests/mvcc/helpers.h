/* Shared helpers of the mvcc tests: a store in a fresh temporary file, and
 * one-line requests. */
#ifndef QUOIN_TESTS_MVCC_HELPERS_H
#define QUOIN_TESTS_MVCC_HELPERS_H

#include <stdbool.h>
#include <stdint.h>

#include "mvcc/mvcc.h"

struct tdb {
    char dir[64];
    char path[96];
    mvcc_t *db;
};

/* Opens a store in a new temporary directory (asserts on failure). */
void tdb_open(struct tdb *t, const struct mvcc_options *opt);
/* Closes and reopens the same file. */
void tdb_reopen(struct tdb *t, const struct mvcc_options *opt);
/* Closes the store and removes its files. */
void tdb_close(struct tdb *t);
/* cmocka fixtures: a fresh store (no_sync) per test in *state. */
int tdb_setup(void **state);
int tdb_teardown(void **state);
mvcc_t *tdb_db(void **state);
#define TDB_TEST(f) cmocka_unit_test_setup_teardown(f, tdb_setup, tdb_teardown)

/* Applies one request in its own batch; returns the mvcc code, *out the
 * result (caller frees) when out is not NULL. */
int t_apply(mvcc_t *db, const struct mvcc_op *op, mvcc_result_t **out);
/* Requests of NUL-terminated strings (end NULL: the single key). */
struct mvcc_op t_op_put(const char *k, const char *v);
struct mvcc_op t_op_range(const char *k, const char *end);
struct mvcc_op t_op_del(const char *k);
/* Applies a put in a batch (asserts success). */
void t_batch_put(mvcc_batch_t *b, const char *key, const char *value, int64_t lease);
/* Put of NUL-terminated strings; returns the header revision (asserts ok). */
int64_t t_put(mvcc_t *db, const char *key, const char *value);
int64_t t_put_lease(mvcc_t *db, const char *key, const char *value, int64_t lease);
/* Delete of [key, end) (end NULL: the key); returns the deleted count. */
int64_t t_del(mvcc_t *db, const char *key, const char *end);
/* Range on a fresh snapshot; returns the mvcc code. */
int t_range(mvcc_t *db, const struct mvcc_range_req *req, mvcc_result_t **out);
/* Builds a range request of NUL-terminated strings (end may be NULL; "\\0"
 * is passed as T_ALL). */
struct mvcc_range_req t_rreq(const char *key, const char *end);
extern const char T_ALL[];
/* Compacts at rev and runs the sweep to the end; returns the code. */
int t_compact(mvcc_t *db, int64_t rev);
bool kv_is(const struct mvcc_kv *kv, const char *key, const char *value);

#endif
