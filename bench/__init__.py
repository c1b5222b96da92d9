"""`make bench`: the gateway, the federation and the disclosure rules, each against its target and, where
there is one, a ceiling measured in the same run.

Run with ``python -m bench --help``. One run writes ``docs/benchmarks.md`` and, dated,
``docs/benchmarks/<date>-<commit>.md`` and ``.json`` (``bench/report.py``), judged against the
targets in ``bench/targets.py``; ``bench/results/`` holds caches and ``latest.json``.
"""
