# client: `make bench` runs quoin and etcd 3.4 side by side with quoin-bench
# (bench/bench.py: 1 member, 3 members, then the leader-stability run; about
# 15 minutes on 2 cores). `make bench-elections` runs only the leader-stability
# part (bench/elections.py, about 3 minutes). Never part of `make test`.
# BENCH_KEYS, BENCH_SCALE, BENCH_ELECTIONS(_SECS) tune them (see bench/bench.py).
.PHONY: bench bench-elections
bench:
	@$(MAKE) --no-print-directory MODE=release all
	/usr/bin/python3 bench/bench.py

bench-elections:
	@$(MAKE) --no-print-directory MODE=release all
	/usr/bin/python3 bench/elections.py
