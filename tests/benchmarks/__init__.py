"""Benchmarks: scripts run by hand (``python -m tests.benchmarks.bench_NAME``), never by pytest.

They start the same test-bed daemons as the tests, measure, print, and report in
docs/benchmarks.md. Nothing here asserts a time.
"""
