# Raft layer extras (never part of `make test`):
#   make bench-raft                              3 in-memory nodes, entries committed/s
#   make sim-long SEEDS=N STEPS=M NODES=5        long simulator sweep, prints totals
# Both build optimised (MODE=release, asserts kept); the sweep runs under nice.

.PHONY: bench-raft sim-long

$(B)/tests/raft/bench_raft: $(B)/obj/tests/raft/bench_raft.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

bench-raft:
	@$(MAKE) --no-print-directory MODE=release build/tests/raft/bench_raft
	./build/tests/raft/bench_raft $(BENCH_ARGS)

SEEDS ?= 10000
STEPS ?= 2000
NODES ?= 5
FIRST_SEED ?= 1

sim-long:
	@$(MAKE) --no-print-directory MODE=release build/tests/raft/test_sim
	nice -n 10 ./build/tests/raft/test_sim --sweep $(SEEDS) $(STEPS) $(NODES) $(FIRST_SEED)
