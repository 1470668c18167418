/* reboot-coordinator: lets at most N machines reboot at once (locksmith's
 * idea) on top of the etcd v3 API with libquoin.
 *
 * Each holder of a reboot slot owns a key <prefix>holders/<id> attached to its
 * lease, so a holder that dies frees its slot when the lease expires. Taking a
 * slot is one transaction guarded by the mod revision of <prefix>gate: count
 * the holders, and if there are fewer than N, add ours and bump the gate in the
 * same transaction. Two machines that counted at the same gate revision cannot
 * both succeed, so the number of holders never exceeds N. A release only
 * removes a holder, which cannot break the bound, so it needs no gate.
 *
 *   reboot-coordinator --endpoints E --slots N --id ID [--hold S] [--prefix P]
 *
 * Prints "acquired <revision>" when it holds a slot, holds it for S seconds
 * (the "reboot"), releases it and prints "released <revision>": the
 * revisions at which its holder key was created and deleted, so a checker can
 * count holders at every revision of the cluster's one history (no clocks).
 * The release deletes the holder key, then revokes the lease.
 *
 * Given several endpoints, it rides through the loss of the member it talks
 * to: libquoin moves to the next one, and a write lost with its connection
 * (code 14, applied or not) is settled by reading back what it would have
 * written before trying again. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/quoin.h"

/* Transient failures tolerated in one run before giving up. */
#define MAX_LOST 50

/* An error worth another try once the client has moved to another member:
 * a write lost with its connection, a deadline while a new leader is elected. */
static int transient(int rc, const quoin_error_t *e) {
    return rc == -ETIMEDOUT || (rc == -EIO && e->code == QUOIN_UNAVAILABLE);
}

/* After a lost attempt: 1 if our holder key is there with our lease (the
 * take was applied; *rev its revision), 0 if not, or the read's error code. */
static int holds_slot(quoin_client_t *c, const char *mine, int64_t lease, int64_t *rev,
                      quoin_error_t *err) {
    quoin_resp_t *r = NULL;
    int held, rc;
    if ((rc = quoin_get(c, mine, 0, &r, err)) < 0)
        return rc;
    held = r->n_kvs == 1 && r->kvs[0].lease == lease;
    if (held)
        *rev = r->kvs[0].mod_revision;
    quoin_resp_free(r);
    return held;
}

/* Deletes our holder key; *rev is the revision of that delete. When a lost
 * delete was applied after all, the retry deletes nothing, and its header
 * revision is a bound above the real one (a checker then sees the slot held
 * a little longer, never shorter). 0 or the failed call's code. */
static int release(quoin_client_t *c, const char *mine, int64_t *rev, quoin_error_t *err,
                   int *lost) {
    quoin_op_t del = {.type = QUOIN_OP_DELETE, .key = mine, .key_len = strlen(mine)};
    quoin_resp_t *r = NULL;
    int rc;
    while ((rc = quoin_do(c, &del, 0, &r, err)) < 0)
        if (!transient(rc, err) || ++*lost > MAX_LOST)
            return rc;
    *rev = r->header.revision;
    quoin_resp_free(r);
    return 0;
}

/* One attempt: 1 taken, 0 all slots busy (or lost a race), or the failed
 * call's negative code (err filled). */
static int try_acquire(quoin_client_t *c, const char *prefix, const char *mine, const char *id,
                       int slots, int64_t lease, int64_t *rev, quoin_error_t *err) {
    char holders[256], holders_end[256], gate[256];
    quoin_resp_t *r = NULL;
    int64_t gate_rev = 0, count;
    int rc;
    snprintf(holders, sizeof holders, "%sholders/", prefix);
    snprintf(holders_end, sizeof holders_end, "%sholders0", prefix); /* '/' + 1 */
    snprintf(gate, sizeof gate, "%sgate", prefix);

    /* the gate's revision and the holder count, read in one transaction */
    quoin_op_t reads[2] = {
        {.type = QUOIN_OP_RANGE, .key = gate, .key_len = strlen(gate)},
        {.type = QUOIN_OP_RANGE,
         .key = holders,
         .key_len = strlen(holders),
         .range_end = holders_end,
         .range_end_len = strlen(holders_end),
         .count_only = 1},
    };
    if ((rc = quoin_txn(c, NULL, 0, reads, 2, NULL, 0, 0, &r, err)) < 0)
        return rc;
    if (r->ops[0].n_kvs)
        gate_rev = r->ops[0].kvs[0].mod_revision;
    count = r->ops[1].count;
    quoin_resp_free(r);
    if (count >= slots)
        return 0;

    quoin_cmp_t cmp = {.key = gate,
                       .key_len = strlen(gate),
                       .target = QUOIN_CMP_MOD,
                       .result = QUOIN_CMP_EQUAL,
                       .number = gate_rev};
    quoin_op_t take[2] = {
        {.type = QUOIN_OP_PUT,
         .key = mine,
         .key_len = strlen(mine),
         .value = id,
         .value_len = strlen(id),
         .lease = lease},
        {.type = QUOIN_OP_PUT,
         .key = gate,
         .key_len = strlen(gate),
         .value = id,
         .value_len = strlen(id)},
    };
    if ((rc = quoin_txn(c, &cmp, 1, take, 2, NULL, 0, 0, &r, err)) < 0)
        return rc;
    rc = r->succeeded ? 1 : 0;
    *rev = r->header.revision;
    quoin_resp_free(r);
    return rc;
}

int main(int argc, char **argv) {
    const char *endpoints = "127.0.0.1:2379", *id = NULL, *prefix = "/reboot/";
    int slots = 1, ch;
    double hold = 1;
    static const struct option opts[] = {{"endpoints", 1, 0, 'e'}, {"slots", 1, 0, 'n'},
                                         {"id", 1, 0, 'i'},        {"hold", 1, 0, 'h'},
                                         {"prefix", 1, 0, 'p'},    {0, 0, 0, 0}};
    quoin_client_t *c = NULL;
    quoin_keepalive_t *ka = NULL;
    quoin_resp_t *r = NULL;
    quoin_error_t e;
    int64_t lease, taken = 0, released = 0;
    char mine[512];
    int got, rc, lost = 0;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoints = optarg;
            break;
        case 'n':
            slots = atoi(optarg);
            break;
        case 'i':
            id = optarg;
            break;
        case 'h':
            hold = atof(optarg);
            break;
        case 'p':
            prefix = optarg;
            break;
        default:
            return 2;
        }
    }
    if (!id || slots < 1) {
        fprintf(
            stderr,
            "usage: reboot-coordinator --endpoints E --slots N --id ID [--hold S] [--prefix P]\n");
        return 2;
    }
    if (quoin_client_new(endpoints, NULL, &c) < 0) {
        fprintf(stderr, "bad endpoints %s\n", endpoints);
        return 2;
    }
    /* a lease that lives while this process does (a grant lost on the way
     * is simply made again: the lost lease expires by itself) */
    srand((unsigned)getpid());
    while ((rc = quoin_lease_grant(c, 5, 0, 0, &r, &e)) < 0)
        if (!transient(rc, &e) || ++lost > MAX_LOST)
            goto err;
    lease = r->lease_id;
    quoin_resp_free(r);
    if (quoin_keepalive(c, lease, NULL, NULL, &ka) < 0)
        goto err;
    snprintf(mine, sizeof mine, "%sholders/%s", prefix, id);
    for (;;) {
        got = try_acquire(c, prefix, mine, id, slots, lease, &taken, &e);
        if (got < 0 && (!transient(got, &e) || ++lost > MAX_LOST))
            goto err;
        if (got < 0)
            got = holds_slot(c, mine, lease, &taken, &e);
        if (got == 1)
            break;
        usleep(20000 + (useconds_t)(rand() % 30000));
    }
    printf("acquired %" PRId64 "\n", taken);
    fflush(stdout);
    usleep((useconds_t)(hold * 1e6));
    quoin_keepalive_stop(ka);
    if (release(c, mine, &released, &e, &lost) < 0)
        goto err;
    /* the lease holds no key now; a revoke sent again after a lost one may
     * find it already gone */
    for (int again = 0; (rc = quoin_lease_revoke(c, lease, 0, &e)) < 0; again = 1) {
        if (again && rc == -EIO && e.code == QUOIN_NOT_FOUND)
            break;
        if (!transient(rc, &e) || ++lost > MAX_LOST)
            goto err;
    }
    printf("released %" PRId64 "\n", released);
    fflush(stdout);
    quoin_client_free(c);
    return 0;
err:
    fprintf(stderr, "reboot-coordinator: %s (code %d)\n", e.message, e.code);
    quoin_client_free(c);
    return 1;
}
