# mvcc benchmark: `make bench-mvcc` (never part of `make test`). Builds the
# release binary and runs it niced on databases under BENCH_MVCC_DIR, removed
# afterwards. BENCH_MVCC_KEYS lists extra database sizes for the open test.
BENCH_MVCC_DIR ?= /tmp/quoin-bench-mvcc
BENCH_MVCC_KEYS ?= 5000000

.PHONY: bench-mvcc
bench-mvcc:
	@$(MAKE) --no-print-directory MODE=release build/tests/mvcc/bench_mvcc
	@mkdir -p $(BENCH_MVCC_DIR)
	nice ./build/tests/mvcc/bench_mvcc $(BENCH_MVCC_DIR) $(BENCH_MVCC_KEYS); \
	  rc=$$?; rm -rf $(BENCH_MVCC_DIR); exit $$rc

build/tests/mvcc/bench_mvcc: build/obj/tests/mvcc/bench_mvcc.o build/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The fault-injection test wraps the allocator of the code it links statically.
$(B)/tests/mvcc/test_mvcc_fault: LDFLAGS += -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc

# The threaded mvcc tests under ThreadSanitizer: `make tsan-mvcc` (not part
# of `make test`; ASan and TSan cannot share a build).
TSAN_MVCC_SRCS := $(wildcard src/mvcc/*.c) src/util/util.c src/log/log.c tests/mvcc/helpers.c \
                  tests/mvcc/test_mvcc_maint.c
.PHONY: tsan-mvcc
tsan-mvcc:
	@mkdir -p build/tsan
	$(CC) -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=thread -Isrc $(TSAN_MVCC_SRCS) \
	  -o build/tsan/test_mvcc_maint $(shell pkg-config --libs lmdb) -lcmocka -lpthread
	./build/tsan/test_mvcc_maint
