"""Locust scenario files (``locust -f loadtests/scenarios/<name>.py``); see loadtests/README.md."""
