"""Speed measurements with in-run baselines: each script runs alone, `python -m benchmarks` runs them together."""
