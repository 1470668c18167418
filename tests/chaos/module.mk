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
