"""`make bench`: throughput and latency of the gateway's TES API, measured against a bare ceiling.

Run with ``python -m bench --help``; results go to ``bench/results/`` (raw JSON) and
``docs/benchmarks.md`` (the table).
"""
