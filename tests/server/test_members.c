/* Tests of the member store: the record and set encodings (round trips,
 * every truncation refused), etcd's checks of a membership change, the store
 * across a reopen of the LMDB environment, removed ids, and the identity
 * file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/members.h"

static char *urls_a[] = {"http://10.0.0.1:2380", "http://10.0.0.1:2381"};
static char *urls_b[] = {"http://10.0.0.2:2380"};
static char *client_a[] = {"http://10.0.0.1:2379"};

static struct member mk(uint64_t id, const char *name, char **peers, size_t n, bool learner) {
    return (struct member){
        .id = id, .name = (char *)name, .peer_urls = peers, .n_peer_urls = n, .learner = learner};
}

static void assert_same(const struct member *a, const struct member *b) {
    assert_int_equal(a->id, b->id);
    assert_int_equal(a->learner, b->learner);
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->n_peer_urls, b->n_peer_urls);
    for (size_t i = 0; i < a->n_peer_urls; i++)
        assert_string_equal(a->peer_urls[i], b->peer_urls[i]);
    assert_int_equal(a->n_client_urls, b->n_client_urls);
    for (size_t i = 0; i < a->n_client_urls; i++)
        assert_string_equal(a->client_urls[i], b->client_urls[i]);
}

static void test_record_round_trip_and_truncation(void **state) {
    (void)state;
    struct member m = mk(7, "node-a", urls_a, 2, true);
    m.client_urls = client_a;
    m.n_client_urls = 1;
    struct util_buf b = {0};
    assert_int_equal(members_encode(&m, &b), 0);
    struct member got;
    assert_int_equal(members_decode((uint8_t *)b.data, b.len, &got), 0);
    got.id = 7;
    assert_same(&m, &got);
    member_free(&got);
    /* Every proper prefix is refused, never read past. */
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(members_decode((uint8_t *)b.data, n, &got), -EINVAL);
    b.data[0] = 9; /* an unknown version */
    assert_int_equal(members_decode((uint8_t *)b.data, b.len, &got), -EINVAL);
    util_buf_free(&b);
}

static void test_set_round_trip(void **state) {
    (void)state;
    struct member_set set = {0};
    struct member a = mk(1, "a", urls_a, 2, false), c = mk(2, "", urls_b, 1, true);
    assert_int_equal(members_put(&set, &a), 0);
    assert_int_equal(members_put(&set, &c), 0);
    struct util_buf b = {0};
    assert_int_equal(members_encode_set(&set, &b), 0);
    struct member_set got;
    assert_int_equal(members_decode_set((uint8_t *)b.data, b.len, &got), 0);
    assert_int_equal(got.n, 2);
    assert_same(members_find(&got, 1), &a);
    assert_same(members_find(&got, 2), &c);
    members_free(&got);
    for (size_t n = 0; n < b.len; n++)
        assert_int_not_equal(members_decode_set((uint8_t *)b.data, n, &got), 0);
    struct raft_conf_state cs;
    members_conf_state(&set, &cs);
    assert_int_equal(cs.n_voters, 1);
    assert_int_equal(cs.voters[0], 1);
    assert_int_equal(cs.n_learners, 1);
    assert_int_equal(cs.learners[0], 2);
    util_buf_free(&b);
    members_free(&set);
}

/* etcd's ValidateConfigurationChange, case by case. */
static void test_checks_are_etcds(void **state) {
    (void)state;
    struct member_set set = {0};
    struct member a = mk(1, "a", urls_a, 2, false);
    assert_int_equal(members_put(&set, &a), 0);
    struct member dup = mk(9, "", urls_a + 1, 1, false), fresh = mk(9, "", urls_b, 1, true);
    assert_int_equal(members_check(&set, MEMBERS_OP_ADD, 1, &fresh), MEMBERS_EEXIST);
    assert_int_equal(members_check(&set, MEMBERS_OP_ADD, 9, &dup), MEMBERS_EPEEREXIST);
    assert_int_equal(members_check(&set, MEMBERS_OP_ADD, 9, &fresh), 0);
    assert_int_equal(members_check(&set, MEMBERS_OP_REMOVE, 9, NULL), MEMBERS_ENOTFOUND);
    assert_int_equal(members_check(&set, MEMBERS_OP_PROMOTE, 9, NULL), MEMBERS_ENOTFOUND);
    assert_int_equal(members_check(&set, MEMBERS_OP_PROMOTE, 1, NULL), MEMBERS_ENOTLEARNER);
    assert_int_equal(members_apply(&set, MEMBERS_OP_ADD, 9, &fresh), 0);
    assert_true(members_find(&set, 9)->learner);
    /* One learner at a time, as etcd 3.4. */
    struct member other = mk(10, "", (char *[]){"http://10.0.0.3:1"}, 1, true);
    assert_int_equal(members_check(&set, MEMBERS_OP_ADD, 10, &other), MEMBERS_ETOOMANYLEARNERS);
    other.learner = false;
    assert_int_equal(members_check(&set, MEMBERS_OP_ADD, 10, &other), 0);
    /* An update may keep the member's own URLs, not take another's. */
    struct member upd = mk(9, "", urls_b, 1, false);
    assert_int_equal(members_check(&set, MEMBERS_OP_UPDATE, 9, &upd), 0);
    upd.peer_urls = urls_a;
    assert_int_equal(members_check(&set, MEMBERS_OP_UPDATE, 9, &upd), MEMBERS_EPEEREXIST);
    assert_int_equal(members_check(&set, MEMBERS_OP_UPDATE, 5, &upd), MEMBERS_ENOTFOUND);
    upd.peer_urls = (char *[]){"http://10.0.0.9:7"};
    assert_int_equal(members_apply(&set, MEMBERS_OP_UPDATE, 9, &upd), 0);
    assert_string_equal(members_find(&set, 9)->peer_urls[0], "http://10.0.0.9:7");
    assert_int_equal(members_check(&set, MEMBERS_OP_PROMOTE, 9, NULL), 0);
    assert_int_equal(members_apply(&set, MEMBERS_OP_PROMOTE, 9, NULL), 0);
    assert_false(members_find(&set, 9)->learner);
    assert_int_equal(members_apply(&set, MEMBERS_OP_REMOVE, 1, NULL), 0);
    assert_null(members_find(&set, 1));
    assert_int_equal(set.n, 1);
    members_free(&set);
}

struct fx {
    char dir[64];
    char path[128];
    mvcc_t *db;
    MDB_dbi dbi;
};

static void fx_open(struct fx *f) {
    struct util_err err = {0};
    struct mvcc_options opt = {0};
    assert_int_equal(mvcc_open(f->path, &opt, NULL, &f->db, &err), 0);
    assert_int_equal(members_store_open(f->db, &f->dbi), 0);
}

static int setup(void **state) {
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/quoin-members-XXXXXX");
    if (!f || !mkdtemp(f->dir))
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    mvcc_close(f->db);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

static void test_store_survives_reopen(void **state) {
    struct fx *f = *state;
    fx_open(f);
    struct member_set set = {0};
    struct member a = mk(1, "a", urls_a, 2, false), b = mk(2, "b", urls_b, 1, false);
    assert_int_equal(members_put(&set, &a), 0);
    assert_int_equal(members_put(&set, &b), 0);
    assert_int_equal(members_store_replace(f->db, f->dbi, &set, 0xc1), 0);
    /* A change inside a batch, as the apply thread makes it. */
    mvcc_batch_t *bt;
    assert_int_equal(mvcc_batch_begin(f->db, &bt), 0);
    struct member c = mk(3, "", (char *[]){"http://10.0.0.3:2380"}, 1, true);
    assert_int_equal(members_store_put(mvcc_batch_txn(bt), f->dbi, &c), 0);
    assert_int_equal(members_store_del(mvcc_batch_txn(bt), f->dbi, 2), 0);
    assert_int_equal(members_store_add_removed(mvcc_batch_txn(bt), f->dbi, 2), 0);
    mvcc_batch_set_applied(bt, 5, 1);
    assert_int_equal(mvcc_batch_commit(bt), 0);
    mvcc_close(f->db);
    f->db = NULL;
    fx_open(f);

    struct member_set got, boot;
    uint64_t cid;
    assert_int_equal(members_store_read(f->db, f->dbi, &got, &cid, &boot), 0);
    assert_int_equal(cid, 0xc1);
    assert_int_equal(got.n, 2);
    assert_same(members_find(&got, 1), &a);
    assert_same(members_find(&got, 3), &c);
    assert_null(members_find(&got, 2));
    /* The bootstrap set is the one the store was set up with. */
    assert_int_equal(boot.n, 2);
    assert_same(members_find(&boot, 2), &b);
    mvcc_read_t *rd;
    uint64_t *ids;
    size_t n;
    assert_int_equal(mvcc_read_begin(f->db, &rd), 0);
    assert_int_equal(members_store_removed(mvcc_read_txn(rd), f->dbi, &ids, &n), 0);
    mvcc_read_end(rd);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 2);
    free(ids);
    uint64_t applied;
    mvcc_state(f->db, &applied, NULL, NULL, NULL);
    assert_int_equal(applied, 5);

    /* Replacing (snapshot restore) leaves the applied index alone and forgets
     * the removed ids. */
    assert_int_equal(members_store_replace(f->db, f->dbi, &set, 0xc2), 0);
    members_free(&got);
    members_free(&boot);
    assert_int_equal(members_store_read(f->db, f->dbi, &got, &cid, NULL), 0);
    assert_int_equal(cid, 0xc2);
    assert_int_equal(got.n, 2);
    mvcc_state(f->db, &applied, NULL, NULL, NULL);
    assert_int_equal(applied, 5);
    assert_int_equal(mvcc_read_begin(f->db, &rd), 0);
    assert_int_equal(members_store_removed(mvcc_read_txn(rd), f->dbi, &ids, &n), 0);
    mvcc_read_end(rd);
    assert_int_equal(n, 0);
    members_free(&got);
    members_free(&set);
}

static void test_identity_file(void **state) {
    struct fx *f = *state;
    struct util_err err = {0};
    uint64_t m, c;
    struct member_set boot;
    assert_int_equal(members_identity_read(f->dir, &m, &c, &boot, &err), -ENOENT);
    assert_int_equal(members_identity_write(f->dir, 0xabcdef0123456789ull, 42, NULL, &err), 0);
    assert_int_equal(members_identity_read(f->dir, &m, &c, &boot, &err), 0);
    assert_int_equal(m, 0xabcdef0123456789ull);
    assert_int_equal(c, 42);
    assert_int_equal(boot.n, 0); /* none recorded: the caller falls back to asking */
    char path[160];
    snprintf(path, sizeof(path), "%s/identity", f->dir);
    FILE *fp = fopen(path, "w");
    fputs("garbage\n", fp);
    fclose(fp);
    assert_int_equal(members_identity_read(f->dir, &m, &c, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "identity"));
}

/* The bootstrap set survives in the identity file, and a damaged one is an
 * error that names the file rather than an empty set. */
static void test_identity_keeps_the_bootstrap_set(void **state) {
    struct fx *f = *state;
    struct util_err err = {0};
    struct member_set set = {0}, got = {0};
    struct member a = mk(1, "a", urls_a, 2, false), b = mk(2, "", urls_b, 1, true);
    assert_int_equal(members_put(&set, &a), 0);
    assert_int_equal(members_put(&set, &b), 0);
    assert_int_equal(members_identity_write(f->dir, 7, 9, &set, &err), 0);
    uint64_t m, c;
    assert_int_equal(members_identity_read(f->dir, &m, &c, &got, &err), 0);
    assert_int_equal(m, 7);
    assert_int_equal(c, 9);
    assert_int_equal(got.n, 2);
    assert_same(members_find(&got, 1), &a);
    assert_same(members_find(&got, 2), &b);
    members_free(&got);

    char path[160];
    snprintf(path, sizeof(path), "%s/identity", f->dir);
    FILE *fp = fopen(path, "r+");
    assert_int_equal(fseek(fp, -5, SEEK_END), 0);
    fputs("zz", fp); /* not hex */
    fclose(fp);
    assert_int_equal(members_identity_read(f->dir, &m, &c, &got, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "bootstrap member list"));
    assert_int_equal(got.n, 0);
    members_free(&set);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_round_trip_and_truncation),
        cmocka_unit_test(test_set_round_trip),
        cmocka_unit_test(test_checks_are_etcds),
        cmocka_unit_test_setup_teardown(test_store_survives_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_keeps_the_bootstrap_set, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
