/* The simulator sweep: hundreds of seeds of chaos with the safety checker on
 * after every step, and proof that the checker fails when raft breaks a rule
 * (test-only fault switches). Run with arguments it is the long sweep:
 *
 *   test_sim --sweep SEEDS STEPS NODES [FIRST [FAULTS]] run seeds, print totals
 *   test_sim --seed SEED STEPS NODES [FAULTS [--all]] replay one seed with trace
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raft/raft.h"
#include "sim.h"

/* Sized for ASan on a busy 2-core machine (well under 90 s for the file).
 * The short sweep has two halves: everything random including membership
 * changes, and a "hunt" half with fixed membership and a schedule biased to
 * leader churn (new leaders cut off, leaders crashing as they commit), where
 * the checker also verifies that no node lacking a committed entry could
 * still collect a quorum of votes. */
#define SHORT_SEEDS 600
#define SHORT_STEPS 600

static unsigned sweep(uint64_t first, unsigned seeds, unsigned steps, unsigned nodes,
                      bool membership, bool hunt, unsigned faults, FILE *trace,
                      struct sim_stats *tot) {
    unsigned failed = 0;
    for (unsigned i = 0; i < seeds; i++) {
        struct sim_opts o = {.seed = first + i,
                             .nodes = nodes ? nodes : 1 + (unsigned)((first + i) % 7),
                             .steps = steps,
                             .faults = true,
                             .membership = membership,
                             .raft_faults = faults,
                             .hunt = hunt,
                             .trace = trace};
        struct sim_result r;
        if (!sim_run(&o, &r)) {
            failed++;
            if (faults) {
                fprintf(stderr, "  caught by seed %llu: %s\n", (unsigned long long)o.seed, r.msg);
                break; /* one catch proves the point; keep the suite short */
            }
        }
        if (tot)
            sim_stats_add(tot, &r.stats);
    }
    return failed;
}

/* The short sweep: returns how many seeds failed. */
static unsigned short_sweep(unsigned faults, FILE *trace, struct sim_stats *tot) {
    unsigned half = SHORT_SEEDS / 2;
    unsigned failed = sweep(1, half, SHORT_STEPS, 0, true, false, faults, trace, tot);
    if (failed && faults)
        return failed;
    return failed + sweep(100001, half, SHORT_STEPS, 0, false, true, faults, trace, tot);
}

static void test_short_sweep(void **state) {
    (void)state;
    struct sim_stats tot = {0};
    unsigned failed = short_sweep(0, stderr, &tot);
    fprintf(stderr, "short sweep: %u seeds x %u steps, 1-7 nodes: %u failed\n", SHORT_SEEDS,
            SHORT_STEPS, failed);
    sim_stats_print(stderr, &tot);
    assert_int_equal(failed, 0);
    /* The sweep must actually exercise what it claims to. */
    assert_true(tot.mid_ready_crashes > 0 && tot.partitions > 0 && tot.one_way > 0);
    assert_true(tot.conf_changes > 0 && tot.transfers > 0 && tot.snapshots_sent > 0);
    assert_true(tot.reads_done > 0 && tot.duplicated > 0 && tot.applied > 0);
}

#ifdef QUOIN_TESTING
/* Each switch breaks one rule; the same sweep must notice. */
struct fault_case {
    unsigned fault;
    const char *name;
};

static void test_catches_fault(void **state) {
    const struct fault_case *fc = *state;
    unsigned failed = short_sweep(fc->fault, NULL, NULL);
    fprintf(stderr, "fault %s: %s\n", fc->name, failed ? "caught" : "NOT caught");
    assert_true(failed > 0);
}

static struct fault_case double_vote = {RAFT_FAULT_DOUBLE_VOTE, "double vote"};
static struct fault_case commit_old_term = {RAFT_FAULT_COMMIT_OLD_TERM, "commit old term"};
static struct fault_case read_no_heartbeat = {RAFT_FAULT_READ_NO_HEARTBEAT,
                                              "read without heartbeat"};
static struct fault_case apply_unpersisted = {RAFT_FAULT_APPLY_UNPERSISTED, "apply before persist"};
#endif

static int long_sweep(int argc, char **argv) {
    if (argc < 5)
        return 2;
    unsigned seeds = (unsigned)strtoul(argv[2], NULL, 10);
    unsigned steps = (unsigned)strtoul(argv[3], NULL, 10);
    unsigned nodes = (unsigned)strtoul(argv[4], NULL, 10);
    uint64_t first = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    unsigned faults = argc > 6 ? (unsigned)strtoul(argv[6], NULL, 10) : 0;
    struct sim_stats tot = {0};
    unsigned failed = 0;
    for (unsigned done = 0; done < seeds;) {
        unsigned batch = seeds - done < 500 ? seeds - done : 500;
        failed += sweep(first + done, batch, steps, nodes, !getenv("SIM_STATIC"),
                        getenv("SIM_HUNT") != NULL, faults, faults ? NULL : stdout, &tot);
        done += batch;
        printf("sim-long: %u/%u seeds done (%llu..%llu), %u failed\n", done, seeds,
               (unsigned long long)first, (unsigned long long)(first + done - 1), failed);
        fflush(stdout);
    }
    printf("sim-long: seeds %llu..%llu, %u steps each, %u nodes, all faults on: %u failed\n",
           (unsigned long long)first, (unsigned long long)(first + seeds - 1), steps, nodes,
           failed);
    printf("sim-long totals: ");
    sim_stats_print(stdout, &tot);
    return failed ? 1 : 0;
}

static int replay(int argc, char **argv) {
    if (argc < 5)
        return 2;
    struct sim_opts o = {.seed = strtoull(argv[2], NULL, 10),
                         .steps = (unsigned)strtoul(argv[3], NULL, 10),
                         .nodes = (unsigned)strtoul(argv[4], NULL, 10),
                         .faults = true,
                         .membership = !getenv("SIM_STATIC"),
                         .hunt = getenv("SIM_HUNT") != NULL,
                         .raft_faults = argc > 5 ? (unsigned)strtoul(argv[5], NULL, 10) : 0,
                         .trace = stdout,
                         .trace_all = argc > 6 && strcmp(argv[6], "--all") == 0};
    if (o.nodes == 0)
        o.nodes = 1 + (unsigned)(o.seed % 7);
    struct sim_result r;
    bool ok = sim_run(&o, &r);
    printf("seed %llu: %s\n", (unsigned long long)o.seed, ok ? "ok" : r.msg);
    sim_stats_print(stdout, &r.stats);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--sweep") == 0)
        return long_sweep(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--seed") == 0)
        return replay(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_sweep),
#ifdef QUOIN_TESTING
        cmocka_unit_test_prestate(test_catches_fault, &double_vote),
        cmocka_unit_test_prestate(test_catches_fault, &commit_old_term),
        cmocka_unit_test_prestate(test_catches_fault, &read_no_heartbeat),
        cmocka_unit_test_prestate(test_catches_fault, &apply_unpersisted),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
