"""The statistical latency gate: ``python -m loadtests gate check|update-baseline|prove``.

commands.py runs the load and writes the baseline, compare.py is the rule
(ChatStore p95 / raw p95 of the same run against baseline.json), prove.py shows
the gate fails on an injected slow query (slow_query.py) and passes without.
"""
