"""Performance benchmarks: ``python -m loadtests.bench <name> [options]``.

Each command runs in its own scratch database (created, migrated, seeded,
dropped), prints a plain table and writes ``reports/bench-<name>-<UTC
timestamp>/results.json`` and ``table.md``. Figures are for comparison within
one run (variants are interleaved so drift hits all of them); absolute numbers
depend on the machine.
"""
