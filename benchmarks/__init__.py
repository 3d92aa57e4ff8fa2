"""Benchmarks: each ``bench_NAME.py`` times our code against a baseline measured in the same
run and prints ratios. Run ``python -m benchmarks NAME [options]``."""
