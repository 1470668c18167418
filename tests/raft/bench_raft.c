/* bench_raft: raft's own throughput — three nodes in one process, no I/O, the
 * memory store as disk, messages handed straight from one node to another.
 * The leader is given batches of 100-byte entries; the figure is entries
 * committed (and applied on the leader) per second of one core. Everything
 * else a server does (fsync, network, state machine) is left out on purpose:
 * this measures the consensus core's own cost per entry.
 *
 *   bench_raft [ENTRIES [BATCH]]      defaults: 5000000 entries, batches of 1000 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raft/raft.h"
#include "util/util.h"

#define NODES 3
#define ENTRY_SIZE 100

struct bnode {
    raft_t *r;
    raft_memstore_t *ms;
    uint64_t applied;
};

static struct bnode nodes[NODES];

/* CPU time of this process: on a shared machine it is what "one core" means. */
static uint64_t cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int rc) {
    fprintf(stderr, "bench_raft: %s: %s\n", what, raft_strerror(rc));
    exit(1);
}

/* Handles one Ready of node i: persist, deliver (the receiver copies what it
 * keeps, so delivery happens before advance), apply, advance. */
static int handle(int i) {
    struct bnode *n = &nodes[i];
    if (!raft_has_ready(n->r))
        return 0;
    struct raft_ready rd;
    int rc = raft_ready(n->r, &rd);
    if (rc)
        die("ready", rc);
    if (rd.snapshot && (rc = raft_memstore_apply_snapshot(n->ms, rd.snapshot)))
        die("snapshot", rc);
    if (rd.n_entries && (rc = raft_memstore_append(n->ms, rd.entries, rd.n_entries)))
        die("append", rc);
    if (rd.hard_state_changed)
        raft_memstore_set_hard_state(n->ms, &rd.hard_state);
    for (size_t k = 0; k < rd.n_msgs; k++) {
        const struct raft_msg *m = &rd.msgs[k];
        if ((rc = raft_step(nodes[m->to - 1].r, m)))
            die("step", rc);
    }
    if (rd.n_committed)
        n->applied = rd.committed[rd.n_committed - 1].index;
    if ((rc = raft_advance(n->r, &rd)))
        die("advance", rc);
    return 1;
}

static void pump(void) {
    for (int busy = 1; busy;) {
        busy = 0;
        for (int i = 0; i < NODES; i++)
            busy |= handle(i);
    }
}

/* Keeps memory flat: snapshot and compact each store behind its applied index. */
static void compact(void) {
    for (int i = 0; i < NODES; i++) {
        struct bnode *n = &nodes[i];
        struct raft_conf_state cs;
        raft_conf_state(n->r, &cs);
        if (n->applied < 2 || raft_memstore_create_snapshot(n->ms, n->applied - 1, &cs, NULL, 0))
            continue;
        raft_memstore_compact(n->ms, n->applied - 1);
    }
}

int main(int argc, char **argv) {
    uint64_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 5000000;
    size_t batch = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000;
    struct raft_conf_state cs = {.n_voters = NODES};
    for (int i = 0; i < NODES; i++)
        cs.voters[i] = (uint64_t)i + 1;
    for (int i = 0; i < NODES; i++) {
        int rc = raft_memstore_new(&nodes[i].ms);
        if (rc)
            die("memstore", rc);
        raft_memstore_bootstrap(nodes[i].ms, &cs);
        struct raft_config c = {.id = (uint64_t)i + 1,
                                .election_tick = 10,
                                .heartbeat_tick = 1,
                                .storage = raft_memstore_storage(nodes[i].ms),
                                .max_size_per_msg = 1 << 20,
                                .max_inflight_msgs = 256,
                                .check_quorum = true,
                                .pre_vote = true,
                                .seed = (uint64_t)i + 42};
        if ((rc = raft_new(&c, &nodes[i].r)))
            die("new", rc);
    }
    raft_campaign(nodes[0].r);
    pump();
    struct raft_status st;
    raft_status(nodes[0].r, &st);
    if (st.role != RAFT_LEADER) {
        fprintf(stderr, "bench_raft: node 1 did not become leader\n");
        return 1;
    }
    uint8_t *payload = malloc(batch * ENTRY_SIZE);
    const uint8_t **data = malloc(batch * sizeof(*data));
    uint32_t *len = malloc(batch * sizeof(*len));
    if (!payload || !data || !len)
        die("malloc", -12);
    for (size_t k = 0; k < batch; k++) {
        memset(payload + k * ENTRY_SIZE, (int)k, ENTRY_SIZE);
        data[k] = payload + k * ENTRY_SIZE;
        len[k] = ENTRY_SIZE;
    }
    uint64_t start_index = nodes[0].applied;
    uint64_t t0 = util_now_mono_ns(), c0 = cpu_ns();
    uint64_t proposed = 0;
    unsigned rounds = 0;
    while (nodes[0].applied - start_index < total) {
        if (proposed < total) {
            int rc = raft_propose(nodes[0].r, data, len, batch);
            if (rc)
                die("propose", rc);
            proposed += batch;
        }
        pump();
        if (++rounds % 64 == 0)
            compact();
    }
    uint64_t ns = util_now_mono_ns() - t0, cns = cpu_ns() - c0;
    uint64_t done = nodes[0].applied - start_index;
    printf("bench-raft: %d nodes in memory, %d-byte entries in batches of %zu: %llu entries "
           "committed; %.3f s CPU = %.0f entries/s per core (%.3f s wall = %.0f/s)\n",
           NODES, ENTRY_SIZE, batch, (unsigned long long)done, (double)cns / 1e9,
           (double)done * 1e9 / (double)cns, (double)ns / 1e9, (double)done * 1e9 / (double)ns);
    for (int i = 0; i < NODES; i++) {
        raft_free(nodes[i].r);
        raft_memstore_free(nodes[i].ms);
    }
    free(payload);
    free(data);
    free(len);
    return 0;
}
