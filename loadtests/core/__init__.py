"""What the harness, the gate and the benchmarks share: the workload's
vocabulary (workload.py), the two backends (backends.py: ChatStore and the one
raw asyncpg reference), the pacer, the percentile, the seed and the database
set-up, the CLI's checked option types."""
