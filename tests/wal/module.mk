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
