# client: `make bench` runs quoin and etcd 3.4 side by side with quoin-bench
# (bench/bench.py: 1 member, 3 members, then the leader-stability run; about
# 8 minutes on 2 cores). `make bench-elections` runs only the leader-stability
# part (bench/elections.py, about 2.5 minutes). Never part of `make test`.
# docs/bench.md describes both and their environment variables.
.PHONY: bench bench-elections
bench:
	@$(MAKE) --no-print-directory MODE=release all
	/usr/bin/python3 bench/bench.py

bench-elections:
	@$(MAKE) --no-print-directory MODE=release all
	/usr/bin/python3 bench/elections.py
