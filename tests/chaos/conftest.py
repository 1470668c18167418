"""tests/chaos: reports of `make chaos` runs (tests/chaos/out/) hold member
data directories and large histories, never tests."""
collect_ignore = ["out"]
