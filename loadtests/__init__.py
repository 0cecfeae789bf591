"""The load harness: Locust chat clients on ChatStore (and a raw asyncpg reference).

``python -m loadtests run --help`` (``make loadtest``) lists the options; see cli.py
for the run's steps, locustfile.py for the simulated user, bridge.py for how
gevent greenlets drive the asyncio package.
"""
