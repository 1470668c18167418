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
