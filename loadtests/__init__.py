"""Load tests, the latency gate and the benchmarks: ``python -m loadtests <command>``.

Three jobs over one core (``core/``: the workload's vocabulary, the ChatStore
backend and the raw asyncpg reference, the pacer, the percentile, the seed):

* ``harness/``: the Locust harness (``run``, ``honesty``);
* ``gate/``: the statistical latency gate (``gate check|update-baseline|prove``);
* ``bench/``: the benchmarks (``bench driver|instrumentation|network|pool|scale``).

``python -m loadtests --help`` lists the commands; README.md describes them.
"""
