"""Side-by-side benchmarks of imgfs against its peers (`python -m benchmarks`).

Each benchmark module builds `Case`s (one workload, several contenders); the harness
runs the contenders interleaved, rep by rep, and `report` writes every sample plus a
table of medians and ratios to `benchmarks/results/`. See benchmarks/README.md.
"""
