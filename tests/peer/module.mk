# The peer tests under ThreadSanitizer: `make tsan-peer` (not part of
# `make test`; ASan and TSan cannot share a build). The raft loop side and the
# transport thread share the queues and the inbox.
TSAN_PEER_SRCS := $(wildcard src/peer/*.c) $(wildcard src/raft/*.c) src/util/util.c src/util/net.c \
                  src/log/log.c tests/peer/helpers.c
TSAN_PEER_TESTS := test_peer test_peer_snap test_peer_raft test_peer_rpc
.PHONY: tsan-peer
tsan-peer:
	@$(MAKE) --no-print-directory MODE=san build-san/gen/peer/proto/raft.pb-c.c
	@mkdir -p build/tsan
	for t in $(TSAN_PEER_TESTS); do \
	  $(CC) -std=c11 -D_GNU_SOURCE -DQUOIN_TESTING -O1 -g -fsanitize=thread -Isrc -Ibuild-san/gen \
	    $(TSAN_PEER_SRCS) build-san/gen/peer/proto/raft.pb-c.c tests/peer/$$t.c -o build/tsan/$$t \
	    $(shell pkg-config --libs libuv libprotobuf-c openssl) -lcmocka -lpthread -lm || exit 1; \
	  TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/peer/tsan.supp" ./build/tsan/$$t || exit 1; \
	done

# Peer transport benchmark: `make bench-peer` (never part of `make test`).
# Release build, niced; BENCH_PEER_PORT is the first of the two ports it uses.
BENCH_PEER_PORT ?= 23790
.PHONY: bench-peer
bench-peer:
	@$(MAKE) --no-print-directory MODE=release build/tests/peer/bench_peer
	nice ./build/tests/peer/bench_peer $(BENCH_PEER_PORT)

build/tests/peer/bench_peer: build/obj/tests/peer/bench_peer.o build/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
