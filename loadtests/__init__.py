"""Locust load tests for relay: protocol clients, users, scenarios, thresholds and the runner
(``loadtests/run.py``, ``make loadtest``). See loadtests/README.md."""
