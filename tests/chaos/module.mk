# tests/chaos: the history checker (lincheck) and its tests. The checker is a
# program of its own so test clients can run it on a recorded history:
#   make MODE=san build-san/tests/chaos/lincheck && build-san/tests/chaos/lincheck h.jsonl
# It is added to EXTRA_TEST_BINS so `make test` builds it before pytest runs
# tests/chaos/test_history_format.py and test_etcd_reference.py.

LINCHECK_SRCS := $(filter-out tests/chaos/test_%,$(wildcard tests/chaos/*.c))

$(B)/tests/chaos/lincheck: $(patsubst %.c,$(B)/obj/%.o,$(LINCHECK_SRCS)) $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

EXTRA_TEST_BINS += $(B)/tests/chaos/lincheck

# `make chaos`: a long fault-injection run (tests/chaos/harness.py) against a
# real cluster; the report goes to tests/chaos/out/<time>/ (or CHAOS_OUT).
#   make chaos CHAOS_DURATION=1800 CHAOS_MEMBERS=5 CHAOS_FAULTS=all
#   make chaos CHAOS_TARGET=etcd CHAOS_FAULTS=net,process
#   make chaos CHAOS_ARGS="--clients 20 --keys 4 --op-timeout 1 --seed 7"
# Both builds are made first: the optimised server runs the members, the test
# build (fault hooks) runs them for power cuts and disk faults.
CHAOS_DURATION ?= 600
CHAOS_MEMBERS ?= 5
CHAOS_FAULTS ?= all
CHAOS_TARGET ?= quoin
CHAOS_OUT ?=
CHAOS_ARGS ?=

.PHONY: chaos
chaos:
	@$(MAKE) --no-print-directory MODE=release all build/tests/chaos/lincheck
	@$(MAKE) --no-print-directory MODE=san all
	nice /usr/bin/python3 tests/chaos/harness.py --target $(CHAOS_TARGET) \
	  --members $(CHAOS_MEMBERS) --duration $(CHAOS_DURATION) --faults $(CHAOS_FAULTS) \
	  $(if $(CHAOS_OUT),--out $(CHAOS_OUT)) $(CHAOS_ARGS)
