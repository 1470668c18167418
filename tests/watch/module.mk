# Long watch sweeps: many more seeds and operations than `make test` runs
# (WATCH_SEEDS / WATCH_OPS / WATCH_THREAD_RUNS override).
.PHONY: watch-long
watch-long:
	@$(MAKE) --no-print-directory MODE=san build-san/tests/watch/test_watch_prop \
	    build-san/tests/watch/test_watch_threads
	WATCH_SEEDS=$${WATCH_SEEDS:-1500} WATCH_OPS=$${WATCH_OPS:-2000} \
	    nice ./build-san/tests/watch/test_watch_prop
	WATCH_THREAD_RUNS=$${WATCH_THREAD_RUNS:-100} WATCH_OPS=$${WATCH_OPS:-3000} \
	    nice ./build-san/tests/watch/test_watch_threads

# Publish cost as watchers grow (release build; figures only, never a test).
.PHONY: bench-watch
bench-watch:
	@$(MAKE) --no-print-directory MODE=release build/tests/watch/bench_watch
	./build/tests/watch/bench_watch

$(B)/tests/watch/bench_watch: $(B)/obj/tests/watch/bench_watch.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The threaded watch test under ThreadSanitizer: data races the model checker
# cannot see. (ASLR off: TSan cannot map its shadow with high-entropy ASLR.)
.PHONY: watch-tsan
watch-tsan:
	@mkdir -p build-san/tsan
	$(CC) -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=thread -DQUOIN_TESTING -Isrc \
	    src/watch/*.c src/mvcc/*.c src/util/*.c src/log/*.c \
	    tests/watch/test_watch_threads.c tests/watch/model.c tests/watch/wt.c \
	    -o build-san/tsan/test_watch_threads $(PKG_CFLAGS) $(PKG_LIBS) -lcmocka -lpthread -lm
	setarch -R nice ./build-san/tsan/test_watch_threads
