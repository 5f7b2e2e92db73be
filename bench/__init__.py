"""Benchmarks through the real paths; each script prints its figures as ratios against a baseline
measured in the same run."""
