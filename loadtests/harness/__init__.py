"""The Locust harness: ``python -m loadtests run`` (run.py: migrate, seed, Locust,
report, verdict) and ``honesty`` (the same client script without Locust).

locustfile.py is the simulated user, client.py its behaviour, bridge.py how
gevent greenlets drive the asyncio package, report.py the table, summary and
chart, telemetry.py the OTEL_* tracer provider.
"""
