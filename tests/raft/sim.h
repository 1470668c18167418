/* sim: a deterministic simulator of a raft cluster built from src/raft/. One
 * seed drives everything — message delay, loss, duplication and reordering,
 * partitions (symmetric and one-way), crashes that lose unpersisted state
 * (also halfway through a Ready), client proposals, reads, membership changes,
 * leadership transfers and snapshots — and the safety properties are checked
 * after every step. Re-running a seed reproduces the run exactly. */
#ifndef QUOIN_TESTS_RAFT_SIM_H
#define QUOIN_TESTS_RAFT_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct sim_opts {
    uint64_t seed;
    unsigned nodes;       /* initial voters, 1..7 */
    unsigned steps;       /* ticks of chaos before the quiet phase */
    bool faults;          /* network faults, partitions and crashes */
    bool membership;      /* random conf changes and leadership transfers */
    unsigned raft_faults; /* RAFT_FAULT_* bits (test builds only) */
    bool hunt;            /* bias the schedule towards leader churn (Figure 8) */
    FILE *trace;          /* where to print the trace of a failing run (NULL: none) */
    bool trace_all;       /* print every event as it happens */
};

/* What a run did, for the sweep's totals. */
struct sim_stats {
    uint64_t steps, delivered, dropped, duplicated, partitions, one_way, heals, crashes,
        mid_ready_crashes, restarts, proposals, applied, conf_changes, transfers, snapshots_sent,
        snapshots_made, reads_done, elections;
};

struct sim_result {
    bool ok;
    char msg[512]; /* the violated property, when !ok */
    uint64_t fail_step;
    struct sim_stats stats;
};

/* Runs one seed. Returns true when every check passed. With o->trace set, a
 * failing run is replayed with tracing on and the last events are printed. */
bool sim_run(const struct sim_opts *o, struct sim_result *res);

void sim_stats_add(struct sim_stats *into, const struct sim_stats *s);
void sim_stats_print(FILE *f, const struct sim_stats *s);

#endif
