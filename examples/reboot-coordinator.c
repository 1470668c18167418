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
 * Prints "acquired <monotonic ns>" when it holds a slot and "released <ns>"
 * after holding it for S seconds (the "reboot"). The two times bracket the
 * real holding: the first is taken before the winning transaction is sent,
 * the second after the release is acknowledged. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/quoin.h"

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One attempt: 1 taken, 0 all slots busy (or lost a race), -1 error. */
static int try_acquire(quoin_client_t *c, const char *prefix, const char *id, int slots,
                       int64_t lease, uint64_t *sent_ns, quoin_error_t *err) {
    char holders[256], holders_end[256], gate[256], mine[512];
    quoin_resp_t *r = NULL;
    int64_t gate_rev = 0, count;
    int rc;
    snprintf(holders, sizeof holders, "%sholders/", prefix);
    snprintf(holders_end, sizeof holders_end, "%sholders0", prefix); /* '/' + 1 */
    snprintf(gate, sizeof gate, "%sgate", prefix);
    snprintf(mine, sizeof mine, "%s%s", holders, id);

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
    if (quoin_txn(c, NULL, 0, reads, 2, NULL, 0, 0, &r, err) < 0)
        return -1;
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
    *sent_ns = mono_ns();
    if (quoin_txn(c, &cmp, 1, take, 2, NULL, 0, 0, &r, err) < 0)
        return -1;
    rc = r->succeeded ? 1 : 0;
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
    int64_t lease;
    uint64_t t_acquire = 0;
    int got;
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
    /* a lease that lives while this process does */
    srand((unsigned)getpid());
    if (quoin_lease_grant(c, 5, 0, 0, &r, &e) < 0)
        goto err;
    lease = r->lease_id;
    quoin_resp_free(r);
    if (quoin_keepalive(c, lease, NULL, NULL, &ka) < 0)
        goto err;
    while ((got = try_acquire(c, prefix, id, slots, lease, &t_acquire, &e)) == 0)
        usleep(20000 + (useconds_t)(rand() % 30000));
    if (got < 0)
        goto err;
    printf("acquired %" PRIu64 "\n", t_acquire);
    fflush(stdout);
    usleep((useconds_t)(hold * 1e6));
    /* revoking the lease deletes the holder key: the slot is free */
    quoin_keepalive_stop(ka);
    if (quoin_lease_revoke(c, lease, 0, &e) < 0)
        goto err;
    printf("released %" PRIu64 "\n", mono_ns());
    fflush(stdout);
    quoin_client_free(c);
    return 0;
err:
    fprintf(stderr, "reboot-coordinator: %s (code %d)\n", e.message, e.code);
    quoin_client_free(c);
    return 1;
}
