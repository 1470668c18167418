# WAL benchmark (never part of `make test`): `make bench-wal`, optionally with
# BENCH_ARGS="seconds directory". Always built optimised into build/, since
# sanitizer timings mean nothing.
.PHONY: bench-wal
bench-wal:
	@$(MAKE) --no-print-directory MODE=release build/tests/wal/bench_wal
	./build/tests/wal/bench_wal $(BENCH_ARGS)

$(B)/tests/wal/bench_wal: $(B)/obj/tests/wal/bench_wal.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Many more crash rounds than `make test` runs: `make wal-crash-long [ROUNDS=n]`.
.PHONY: wal-crash-long
wal-crash-long:
	@$(MAKE) --no-print-directory MODE=san build-san/tests/wal/test_wal_crash
	QUOIN_WAL_CRASH_ROUNDS=$(or $(ROUNDS),2000) nice ./build-san/tests/wal/test_wal_crash
