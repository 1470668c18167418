# api tests: the test-double server the process-level tests (tests/api/*.py)
# drive with etcdctl, etcd3 and grpc. Built with the unit tests.
API_FAKE_SERVER := $(B)/tests/api/fake_api_server

$(API_FAKE_SERVER): $(B)/obj/tests/api/fakeserver/fake_api_server.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

unit-test-bins: $(API_FAKE_SERVER)

# bench-api: transport throughput, in process (numbers only, never in `make test`).
API_BENCH := $(B)/tests/api/bench_grpc

$(API_BENCH): $(B)/obj/tests/api/bench_grpc.o $(B)/obj/tests/api/harness.o \
    $(B)/obj/tests/api/h2client.o $(B)/libquoin-core.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

.PHONY: bench-api
bench-api: $(API_BENCH)
	./$(API_BENCH)

# soak-api: many clients against the sanitizer build of the test double for a
# minute (numbers and failures only; never in `make test`).
.PHONY: soak-api
soak-api:
	@$(MAKE) --no-print-directory MODE=san build-san/tests/api/fake_api_server
	/usr/bin/python3 tests/api/soak_api.py $(or $(SOAK_SECONDS),60)
