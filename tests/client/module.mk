# client: `make bench` runs quoin and etcd 3.4 side by side with quoin-bench
# (bench/bench.py; about 10 minutes on 2 cores). Never part of `make test`.
# BENCH_KEYS and BENCH_SCALE tune its size (see bench/bench.py).
.PHONY: bench
bench:
	@$(MAKE) --no-print-directory MODE=release all
	/usr/bin/python3 bench/bench.py
